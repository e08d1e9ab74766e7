#!/usr/bin/env python3
"""Generates the Grafana dashboards in dashboards/ (run from the repo root: scripts/gen-dashboards.py).

Every panel has a unit, a description and a legend; queries use only metric names from
src/telemetry/names.rs (tests/dashboards.rs checks that they exist in busgate's exposition).
Datasources are template variables whose defaults are the import inputs DS_PROMETHEUS and
DS_JAEGER, so a dashboard imports through Grafana's UI and also works when provisioned.
"""
import json
import os
import urllib.parse

PROM = {"type": "prometheus", "uid": "${datasource}"}
R = "$__rate_interval"


def jaeger_link(service_expr):
    pane = {
        "a": {
            "datasource": "${traces}",
            "queries": [{
                "refId": "A",
                "datasource": {"type": "jaeger", "uid": "${traces}"},
                "queryType": "search",
                "service": service_expr,
            }],
            "range": {"from": "${__from}", "to": "${__to}"},
        }
    }
    return {
        "title": "Traces of " + service_expr + " in Jaeger",
        "url": "/explore?schemaVersion=1&panes=" + urllib.parse.quote(json.dumps(pane, separators=(",", ":")), safe="${}_.:"),
        "targetBlank": True,
    }


class Board:
    def __init__(self, uid, title, description, variables):
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.panels = []
        self.x = self.y = self.row_h = 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def newline(self):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0

    def panel(self, kind, title, description, unit, targets, w, h, links=None, mappings=None, decimals=None):
        p = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": PROM,
            "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": PROM, "expr": expr, "legendFormat": legend, "range": True}
                for i, (expr, legend) in enumerate(targets)
            ],
            "options": {},
        }
        if decimals is not None:
            p["fieldConfig"]["defaults"]["decimals"] = decimals
        if kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
            p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        else:
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "value", "graphMode": "area", "textMode": "auto"}
            for t in p["targets"]:
                t["range"], t["instant"] = False, True
        if mappings:
            p["fieldConfig"]["defaults"]["mappings"] = mappings
        if links:
            p["fieldConfig"]["defaults"]["links"] = links
        self.panels.append(p)

    def stat(self, title, description, unit, expr, legend="", **kw):
        self.panel("stat", title, description, unit, [(expr, legend)], kw.pop("w", 4), 4, **kw)

    def series(self, title, description, unit, targets, w=12, h=8, **kw):
        self.panel("timeseries", title, description, unit, targets, w, h, **kw)

    def json(self):
        templating = [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {"text": "${DS_PROMETHEUS}", "value": "${DS_PROMETHEUS}"}, "hide": 0, "refresh": 1, "options": []},
            {"name": "traces", "label": "Jaeger", "type": "datasource", "query": "jaeger",
             "current": {"text": "${DS_JAEGER}", "value": "${DS_JAEGER}"}, "hide": 0, "refresh": 1, "options": []},
        ] + self.variables
        return {
            "__inputs": [
                {"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "Prometheus that scrapes busgate",
                 "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"},
                {"name": "DS_JAEGER", "label": "Jaeger", "description": "Jaeger that receives busgate's traces",
                 "type": "datasource", "pluginId": "jaeger", "pluginName": "Jaeger"},
            ],
            "__requires": [
                {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
                {"type": "datasource", "id": "jaeger", "name": "Jaeger", "version": "1.0.0"},
                {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
                {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            ],
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["busgate", "microbus"],
            "editable": True,
            "graphTooltip": 1,
            "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"},
            "timezone": "browser",
            "schemaVersion": 39,
            "version": 1,
            "links": [{"title": "busgate dashboards", "type": "dashboards", "tags": ["busgate"], "asDropdown": True}],
            "templating": {"list": templating},
            "annotations": {"list": []},
            "panels": self.panels,
        }


def query_var(name, label, query, include_all=False):
    return {"name": name, "label": label, "type": "query", "datasource": PROM,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": query, "refresh": 2, "sort": 1, "hide": 0, "multi": False,
            "includeAll": include_all, "current": {}, "options": []}


JOB = query_var("job", "Job", "label_values(microbus_uptime_duration_seconds, job)")
ING = 'job="$job"'


def gateway():
    b = Board("busgate-gateway", "busgate / Gateway overview",
              "The HTTP ingress: traffic, errors, latency per listener and route, and its bus connection.", [JOB])
    c = "busgate_ingress_request_duration_seconds"
    b.stat("Requests/s", "HTTP requests served by the ingress per second, all listeners.", "reqps",
           f"sum(rate({c}_count{{{ING}}}[{R}]))")
    b.stat("5xx ratio", "Share of ingress responses with a 5xx status.", "percentunit",
           f'sum(rate({c}_count{{{ING},code=~"5.."}}[{R}]) or vector(0)) / sum(rate({c}_count{{{ING}}}[{R}]))')
    b.stat("4xx ratio", "Share of ingress responses with a 4xx status (bad requests, unknown hosts, timeouts).", "percentunit",
           f'sum(rate({c}_count{{{ING},code=~"4.."}}[{R}]) or vector(0)) / sum(rate({c}_count{{{ING}}}[{R}]))')
    b.stat("p99 latency", "99th percentile of time from request to response at the ingress.", "s",
           f"histogram_quantile(0.99, sum by (le) (rate({c}_bucket{{{ING}}}[{R}])))")
    b.stat("In flight", "HTTP requests being served right now.", "short",
           f"sum(busgate_ingress_requests_in_flight{{{ING}}})", decimals=0)
    b.stat("NATS", "Whether the ingress is connected to NATS (1) or not (0).", "short",
           f'min(busgate_nats_connected{{{ING},service="http.ingress.core"}})',
           mappings=[{"type": "value", "options": {"0": {"text": "Disconnected", "color": "red"},
                                                    "1": {"text": "Connected", "color": "green"}}}])
    b.newline()
    b.series("Requests/s by listener and route", "Ingress requests per second, by listener port and target bus host.", "reqps",
             [(f"sum by (port, route) (rate({c}_count{{{ING}}}[{R}]))", ":{{port}} {{route}}")])
    b.series("Responses by status", "Ingress responses per second by HTTP status code.", "reqps",
             [(f"sum by (code) (rate({c}_count{{{ING}}}[{R}]))", "{{code}}")])
    b.series("Latency by listener", "p50, p95 and p99 of ingress request time per listener port.", "s",
             [(f"histogram_quantile({q}, sum by (le, port) (rate({c}_bucket{{{ING}}}[{R}])))", f"p{int(q*100)} :{{{{port}}}}")
              for q in (0.5, 0.95, 0.99)],
             links=[jaeger_link("http.ingress.core")])
    b.series("p99 latency by route", "99th percentile of ingress request time per target bus host; follow the link to its traces.", "s",
             [(f"histogram_quantile(0.99, sum by (le, route) (rate({c}_bucket{{{ING}}}[{R}])))", "{{route}}")],
             links=[jaeger_link("http.ingress.core")])
    b.series("Bytes in and out", "Request and response body bytes per second through the ingress, per listener.", "Bps",
             [(f"sum by (port) (rate(busgate_ingress_request_body_bytes_sum{{{ING}}}[{R}]))", "in :{{port}}"),
              (f"sum by (port) (rate(busgate_ingress_response_body_bytes_sum{{{ING}}}[{R}]))", "out :{{port}}")])
    b.series("In flight by listener", "HTTP requests being served, per listener.", "short",
             [(f"sum by (port) (busgate_ingress_requests_in_flight{{{ING}}})", ":{{port}}")])
    b.series("Bus latency by target", "Time from publishing a request on the bus to its response, p50 and p99 per target host.", "s",
             [(f'histogram_quantile({q}, sum by (le, host) (rate(microbus_client_request_duration_seconds_bucket{{{ING},service="http.ingress.core"}}[{R}])))', f"p{int(q*100)} {{{{host}}}}")
              for q in (0.5, 0.99)])
    b.series("Ack latency", "Time from publishing a request to the responder's ack (the bus round trip), p50 and p99.", "s",
             [(f'histogram_quantile({q}, sum by (le) (rate(microbus_client_ack_roundtrip_latency_seconds_bucket{{{ING},service="http.ingress.core"}}[{R}])))', f"p{int(q*100)}")
              for q in (0.5, 0.99)])
    b.series("NATS connection", "1 while each instance's bus connection is up; reconnects as they happen.", "short",
             [(f"min by (service) (busgate_nats_connected{{{ING}}})", "connected {{service}}"),
              (f"sum(increase(busgate_nats_reconnects_total{{{ING}}}[{R}])) or vector(0)", "reconnects")])
    b.series("Timeouts and unknown hosts", "Ingress calls that got no ack (no such service) or ran out of time, per target.", "reqps",
             [(f'sum by (host) (rate(microbus_client_timeout_requests_total{{{ING},service="http.ingress.core"}}[{R}])) or vector(0)', "{{host}}")])
    return b


def service():
    svc = query_var("service", "Service", 'label_values(microbus_uptime_duration_seconds{job="$job"}, service)')
    b = Board("busgate-service", "busgate / Service",
              "One service on the bus: rate, errors and duration per handler, its calls to others, logs and replicas.", [JOB, svc])
    s = 'job="$job",service="$service"'
    srv = "microbus_server_request_duration_seconds"
    b.stat("Requests/s", "Requests handled per second (control plane excluded).", "reqps",
           f'sum(rate({srv}_count{{{s},port!="888"}}[{R}]))')
    b.stat("Error ratio", "Share of handled requests that ended in an error.", "percentunit",
           f'sum(rate({srv}_count{{{s},port!="888",error="ERROR"}}[{R}]) or vector(0)) / sum(rate({srv}_count{{{s},port!="888"}}[{R}]))')
    b.stat("p99", "99th percentile of handling time.", "s",
           f'histogram_quantile(0.99, sum by (le) (rate({srv}_bucket{{{s},port!="888"}}[{R}])))')
    b.stat("Replicas", "Instances of the service reporting now.", "short",
           f"count(microbus_uptime_duration_seconds{{{s}}})", decimals=0)
    b.stat("Uptime", "Time since the youngest instance started.", "s",
           f"min(microbus_uptime_duration_seconds{{{s}}})")
    b.stat("Errors logged/s", "ERROR log lines per second.", "short",
           f'sum(rate(microbus_log_messages_total{{{s},severity="ERROR"}}[{R}])) or vector(0)')
    b.newline()
    b.series("Rate by handler", "Requests handled per second, by handler and method.", "reqps",
             [(f'sum by (handler, method) (rate({srv}_count{{{s},port!="888"}}[{R}]))', "{{method}} {{handler}}")],
             links=[jaeger_link("${service}")])
    b.series("Errors by handler", "Failed requests per second, by handler and status code.", "reqps",
             [(f'sum by (handler, code) (rate({srv}_count{{{s},port!="888",error="ERROR"}}[{R}])) or vector(0)', "{{code}} {{handler}}")],
             links=[jaeger_link("${service}")])
    b.series("Duration by handler", "p50, p95 and p99 of handling time per handler; follow the link to the traces.", "s",
             [(f'histogram_quantile({q}, sum by (le, handler) (rate({srv}_bucket{{{s},port!="888"}}[{R}])))', f"p{int(q*100)} {{{{handler}}}}")
              for q in (0.5, 0.95, 0.99)],
             links=[jaeger_link("${service}")])
    b.series("Response size by handler", "95th percentile of response body size per handler.", "bytes",
             [(f'histogram_quantile(0.95, sum by (le, handler) (rate(microbus_server_response_body_bytes_bucket{{{s},port!="888"}}[{R}])))', "p95 {{handler}}")])
    b.series("Calls to other services", "Outgoing bus calls per second, by target host and status.", "reqps",
             [(f"sum by (host, code) (rate(microbus_client_request_duration_seconds_count{{{s}}}[{R}]))", "{{host}} {{code}}")])
    b.series("Call latency by target", "99th percentile of outgoing call time per target host.", "s",
             [(f"histogram_quantile(0.99, sum by (le, host) (rate(microbus_client_request_duration_seconds_bucket{{{s}}}[{R}])))", "p99 {{host}}")])
    b.series("Timeouts", "Outgoing calls per second that got no ack or ran out of time, per target.", "reqps",
             [(f"sum by (host) (rate(microbus_client_timeout_requests_total{{{s}}}[{R}])) or vector(0)", "{{host}}")])
    b.series("Ack latency by target", "99th percentile of the ack round trip per target host.", "s",
             [(f"histogram_quantile(0.99, sum by (le, host) (rate(microbus_client_ack_roundtrip_latency_seconds_bucket{{{s}}}[{R}])))", "p99 {{host}}")])
    b.series("Logs by severity", "Log lines per second by severity.", "short",
             [(f"sum by (severity) (rate(microbus_log_messages_total{{{s}}}[{R}]))", "{{severity}}")])
    b.series("Top log messages", "The ten most frequent log messages over the dashboard's range.", "short",
             [(f"topk(10, sum by (severity, message) (increase(microbus_log_messages_total{{{s}}}[$__range])))", "{{severity}} {{message}}")])
    b.series("Replicas and uptime", "Uptime of each instance; a reset is a restart.", "s",
             [(f"max by (id, ver) (microbus_uptime_duration_seconds{{{s}}})", "{{id}} v{{ver}}")])
    b.series("Startup and shutdown", "Average time of lifecycle callbacks per instance.", "s",
             [(f"sum by (handler, id) (microbus_callback_duration_seconds_sum{{{s}}}) / sum by (handler, id) (microbus_callback_duration_seconds_count{{{s}}})", "{{handler}} {{id}}")])
    return b


def system():
    b = Board("busgate-system", "busgate / System",
              "Every service on the bus at a glance: traffic, errors, latency, replicas, logs, and the busgate processes.", [JOB])
    j = 'job="$job"'
    srv = "microbus_server_request_duration_seconds"
    b.stat("Requests/s", "Requests handled per second by all services (control plane excluded).", "reqps",
           f'sum(rate({srv}_count{{{j},port!="888"}}[{R}]))', w=6)
    b.stat("Error ratio", "Share of all handled requests that ended in an error.", "percentunit",
           f'sum(rate({srv}_count{{{j},port!="888",error="ERROR"}}[{R}]) or vector(0)) / sum(rate({srv}_count{{{j},port!="888"}}[{R}]))', w=6)
    b.stat("Services", "Distinct services reporting.", "short",
           f"count(count by (service) (microbus_uptime_duration_seconds{{{j}}}))", w=6, decimals=0)
    b.stat("Instances", "Service instances reporting.", "short",
           f"count(microbus_uptime_duration_seconds{{{j}}})", w=6, decimals=0)
    b.series("Requests/s by service", "Requests handled per second, per service.", "reqps",
             [(f'sum by (service) (rate({srv}_count{{{j},port!="888"}}[{R}]))', "{{service}}")])
    b.series("Error ratio by service", "Share of requests that ended in an error, per service.", "percentunit",
             [(f'sum by (service) (rate({srv}_count{{{j},port!="888",error="ERROR"}}[{R}])) / sum by (service) (rate({srv}_count{{{j},port!="888"}}[{R}]))', "{{service}}")])
    b.series("p99 by service", "99th percentile of handling time per service; follow the link to the ingress traces.", "s",
             [(f'histogram_quantile(0.99, sum by (le, service) (rate({srv}_bucket{{{j},port!="888"}}[{R}])))', "{{service}}")],
             links=[jaeger_link("http.ingress.core")])
    b.series("Replicas by service", "Instances per service.", "short",
             [(f"count by (service) (microbus_uptime_duration_seconds{{{j}}})", "{{service}}")])
    b.series("Errors and warnings logged", "ERROR and WARN log lines per second, per service.", "short",
             [(f'sum by (service, severity) (rate(microbus_log_messages_total{{{j},severity=~"ERROR|WARN"}}[{R}])) or vector(0)', "{{severity}} {{service}}")])
    b.series("Timeouts by service", "Outgoing calls per second that got no ack or ran out of time, per calling service.", "reqps",
             [(f"sum by (service) (rate(microbus_client_timeout_requests_total{{{j}}}[{R}])) or vector(0)", "{{service}}")])
    b.series("NATS connection by service", "1 while every instance of the service is connected to NATS.", "short",
             [(f"min by (service) (busgate_nats_connected{{{j}}})", "{{service}}")])
    b.series("Uptime by service", "Time since the youngest instance of each service started.", "s",
             [(f"min by (service) (microbus_uptime_duration_seconds{{{j}}})", "{{service}}")])
    b.series("busgate process memory", "Resident memory of each busgate process (from its admin listener).", "bytes",
             [("sum by (instance) (process_resident_memory_bytes)", "{{instance}}")])
    b.series("busgate process CPU", "CPU seconds per second used by each busgate process.", "percentunit",
             [(f"sum by (instance) (rate(process_cpu_seconds_total[{R}]))", "{{instance}}")])
    return b


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dashboards")
    for name, board in [("gateway-overview", gateway()), ("service", service()), ("system", system())]:
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(board.json(), f, indent=2)
            f.write("\n")
        print("wrote", name + ".json", len(board.panels), "panels")
