#!/usr/bin/env python3
"""Generates the Grafana dashboards in dashboards/ (run from the repo root: scripts/gen-dashboards.py).

Every panel has a unit, a description and a legend; queries use only metric names from
src/telemetry/names.rs (tests/stack.rs checks that they exist in busgate's exposition and
that every query returns data from a real Prometheus; tests/dashboards.rs checks the structure).
Service metrics carry the exact names of Microbus fabric v1.7 ("Gen 1", the wire generation
busgate speaks), so Go v1.7 services and busgate services share these panels. Their handling
latency buckets are v1.7's, from 5 ms; the gateway's own latency (busgate_ingress_*) and
busgate's outgoing call latency (busgate_client_*) are finer, from 50 µs.
Datasources are template variables whose defaults are the import inputs DS_PROMETHEUS and
DS_JAEGER, so a dashboard imports through Grafana's UI and also works when provisioned.

Template variables (queries match them with `=~`, so that multi-select and All work):
- `$job`: the scrape job (single value).
- `$service`: service names, multi-select, All = `.*` (Service and System dashboards).
- `$instance`: multi-select, All = `.*`. On the Gateway and System dashboards it is a busgate
  process (Prometheus's `instance` label: one per admin listener of job `busgate`); on the
  Service dashboard it is a service instance (the `id` label).

Thresholds mean something: the server error ratio (5xx) turns red at 0.1 %, the error budget
of a 99.9 % availability SLO; the any-error ratio turns orange at 5 %, p99 latency red at 1 s
and the SMTP deferral ratio (mails answered 451) orange at 10 %, where the alert rules in
compose/prometheus/rules/busgate.yml fire.

The Gateway overview ends with a group of SMTP panels: the SMTP ingress (`smtp.ingress.core`,
busgate_smtp_*), selected like the HTTP panels by `$job` and `$instance`. `$instance` lists the
processes that run the HTTP ingress; with All, a `busgate smtp` process (SMTP only) shows too.

Latency and error panels link, per series, to a Jaeger search of that series' service and
route (`${__field.labels.*}`), not to one hard-coded service.
"""
import json
import os
import urllib.parse

PROM = {"type": "prometheus", "uid": "${datasource}"}
R = "$__rate_interval"
ALL = ".*"
INGRESS = "http.ingress.core"
SMTP = "smtp.ingress.core"

# Service metrics: the exact names of Microbus fabric v1.7, the wire generation busgate speaks
# (src/telemetry/names.rs, GEN1_METRICS), so that Go v1.7 services and busgate services fill
# the same panels. Labels `service`, `ver`, `id` on every series.
RESPONSE_DURATION = "microbus_response_duration_seconds"  # handler, port, method, code, error
RESPONSE_SIZE = "microbus_response_size_bytes"  # same labels
REQUEST_COUNT = "microbus_request_count_total"  # outgoing calls: method, host, port, code, error
ACK_DURATION = "microbus_ack_duration_seconds"  # host
CALLBACK_DURATION = "microbus_callback_duration_seconds"  # handler, error
LOG_MESSAGES = "microbus_log_messages_total"  # message, severity
UPTIME = "microbus_uptime_duration_seconds_total"  # a gauge despite `_total`, as in v1.7
CACHE_HITS = "microbus_cache_hits_total"  # gauges (cumulative counts set at each scrape)
CACHE_MISSES = "microbus_cache_misses_total"
CACHE_WEIGHT = "microbus_cache_weight_total"
CACHE_LEN = "microbus_cache_len_total"
# busgate's own, finer than v1.7 (which has neither): outgoing call latency from 50 µs, and
# the calls that ended in an ack timeout or a deadline.
CLIENT_DURATION = "busgate_client_request_duration_seconds"  # host, port, method, code, error
CLIENT_TIMEOUTS = "busgate_client_timeout_requests_total"  # host, port, method

# The SMTP ingress (src/telemetry/names.rs; `reason` values in src/ingress/smtp/metrics.rs).
SMTP_RECEIVED = "busgate_smtp_messages_received_total"  # every message whose DATA ended
SMTP_ACCEPTED = "busgate_smtp_messages_accepted_total"  # answered 250
SMTP_DEFERRED = "busgate_smtp_messages_deferred_total"  # answered 451, by reason (no_sink, sink_error, timeout)
SMTP_REJECTED = "busgate_smtp_messages_rejected_total"  # 552, 554, by reason (too_large, unparseable)
SMTP_ERRORS = "busgate_smtp_errors_total"  # protocol errors, refused and dropped connections, by reason
SMTP_MESSAGE_BYTES = "busgate_smtp_message_bytes"  # histogram, buckets 64 B to 16 MiB
SMTP_SESSION = "busgate_smtp_session_duration_seconds"  # histogram, 1 ms to 15 min
SMTP_SINKS = "busgate_smtp_event_sinks_reached"  # histogram, sinks that took one message
SMTP_OPEN = "busgate_smtp_open_connections"  # gauge

# v1.7's handling-latency buckets start at 5 ms: said wherever a panel shows them.
V17_BUCKETS_TEXT = ("Service handling latency has v1.7's buckets (5 ms, 10 ms, 25 ms, 50 ms, 100 ms, 250 ms, "
                    "500 ms, 1 s, 5 s, 15 s, 30 s, 60 s): quantiles below 5 ms or between 1 s and 5 s are "
                    "interpolated, so read them as coarse.")

# Thresholds. SLO: 99.9 % of requests without a server error.
SLO_ERROR_RATIO = 0.001
ALERT_ERROR_RATIO = 0.05  # BusgateServiceErrorRatioHigh
ALERT_P99 = 1.0  # BusgateServiceLatencyP99High
ALERT_SMTP_DEFERRAL_RATIO = 0.10  # BusgateSmtpDeferralsSustained

SLO_TEXT = ("Green below 0.1 %, red at or above it: 0.1 % is the error budget of a 99.9 % "
            "availability SLO (only server errors, 5xx, count against it; 4xx are the client's).")


def thresholds(*steps, base="green"):
    return {"mode": "absolute",
            "steps": [{"color": base, "value": None}] + [{"color": c, "value": v} for v, c in steps]}


SLO_THRESHOLDS = thresholds((SLO_ERROR_RATIO, "red"))
ALERT_RATIO_THRESHOLDS = thresholds((ALERT_ERROR_RATIO, "orange"))
LATENCY_THRESHOLDS = thresholds((ALERT_P99 / 2, "yellow"), (ALERT_P99, "red"))
SMTP_DEFERRAL_THRESHOLDS = thresholds((ALERT_SMTP_DEFERRAL_RATIO, "orange"))


def explore_url(query):
    pane = {
        "a": {
            "datasource": "${traces}",
            "queries": [dict({"refId": "A", "datasource": {"type": "jaeger", "uid": "${traces}"},
                              "queryType": "search", "limit": 20}, **query)],
            "range": {"from": "${__from}", "to": "${__to}"},
        }
    }
    # `${...}` stays as is for Grafana to interpolate (it URI-encodes the values it puts in).
    return "/explore?schemaVersion=1&panes=" + urllib.parse.quote(json.dumps(pane, separators=(",", ":")), safe="${}_.:")


def jaeger_link(title, service, operation=None, tags=None):
    """A data link to a Jaeger search; `service`, `operation` and `tags` (logfmt) may name the
    clicked series' labels as `${__field.labels.<label>}`."""
    query = {"service": service}
    if operation:
        query["operation"] = operation
    if tags:
        query["tags"] = tags
    return {"title": title, "url": explore_url(query), "targetBlank": True}


def lbl(name):
    return "${__field.labels." + name + "}"


# The links of the series of a query that keeps the label(s) named.
def ingress_route_traces(errors=False, code=False):
    tags = f'http.route="{lbl("route")}"'
    if code:
        tags += f" http.response.status_code={lbl('code')}"
    if errors:
        tags += " error=true"
    what = "Failed traces" if errors else "Traces"
    suffix = f" with status {lbl('code')}" if code else ""
    return [jaeger_link(f"{what} through {lbl('route')}{suffix} in Jaeger", lbl("service"), tags=tags)]


def handler_traces(errors=False):
    """Needs `service` and `operation` (see with_operation) on the series."""
    what = "Failed traces" if errors else "Traces"
    return [jaeger_link(f"{what} of {lbl('handler')} in Jaeger", lbl("service"), operation=lbl("operation"),
                        tags="error=true" if errors else None)]


def service_traces(label="service", errors=False):
    what = "Failed traces" if errors else "Traces"
    return [jaeger_link(f"{what} of {lbl(label)} in Jaeger", lbl(label), tags="error=true" if errors else None)]


def service_dashboard_link():
    return {"title": "Service dashboard of " + lbl("service"),
            "url": "/d/busgate-service/busgate-service?var-datasource=${datasource}&var-traces=${traces}"
                   "&var-job=${job}&var-service=" + lbl("service") + "&${__url_time_range}"}


def with_operation(expr):
    """Adds the label `operation`, the handler's span name in Jaeger: the handler label is
    `<host>:<port><path>`, the service's SERVER span `:<port><path>`."""
    return f'label_replace({expr}, "operation", "$1", "handler", "[^:]*(:.*)")'


def with_class(expr):
    """Adds the label `class`, the first digit of the status code (legend `{{class}}xx`)."""
    return f'label_replace({expr}, "class", "$1", "code", "([0-9]).*")'


def ratio(metric, sel, bad, by=None):
    """Share of `metric` rates matching `bad`; per `by` group, 0 for the groups without any."""
    if by is None:
        return f"sum(rate({metric}{{{sel},{bad}}}[{R}]) or vector(0)) / sum(rate({metric}{{{sel}}}[{R}]))"
    return (f"(sum by ({by}) (rate({metric}{{{sel},{bad}}}[{R}])) or 0 * sum by ({by}) (rate({metric}{{{sel}}}[{R}])))"
            f" / sum by ({by}) (rate({metric}{{{sel}}}[{R}]))")


def quantile(q, metric, sel, by=""):
    by = ", ".join(["le"] + ([by] if by else []))
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{sel}}}[{R}])))"


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

    def panel(self, kind, title, description, unit, targets, w, h, links=None, mappings=None, decimals=None,
              thresholds=None, min=None):
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
        defaults = p["fieldConfig"]["defaults"]
        if decimals is not None:
            defaults["decimals"] = decimals
        if min is not None:
            defaults["min"] = min
        if kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
            defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
            if thresholds:
                defaults["custom"]["thresholdsStyle"] = {"mode": "dashed"}
        else:
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "value", "graphMode": "area", "textMode": "auto"}
            for t in p["targets"]:
                t["range"], t["instant"] = False, True
        if thresholds:
            defaults["thresholds"] = thresholds
        if mappings:
            defaults["mappings"] = mappings
        if links:
            defaults["links"] = links
        self.panels.append(p)

    def stat(self, title, description, unit, expr, legend="", w=4, **kw):
        self.panel("stat", title, description, unit, [(expr, legend)], w, 4, **kw)

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
            "links": [{"title": "busgate dashboards", "type": "dashboards", "tags": ["busgate"], "asDropdown": True,
                       "keepTime": True}],
            "templating": {"list": templating},
            "annotations": {"list": []},
            "panels": self.panels,
        }


def query_var(name, label, query, description, multi=False, default=None, regex=""):
    v = {"name": name, "label": label, "description": description, "type": "query", "datasource": PROM,
         "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
         "definition": query, "refresh": 2, "sort": 1, "hide": 0, "regex": regex,
         "multi": multi, "includeAll": multi, "current": {}, "options": []}
    if multi:
        v["allValue"] = ALL
        v["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    elif default:
        v["current"] = {"selected": True, "text": default, "value": default}
    return v


JOB = query_var("job", "Job", f"label_values({UPTIME}, job)",
                "The scrape job: `bus` is every service on the bus through metrics.core, `busgate` the admin "
                "listener of each busgate process.")
SERVICE = query_var("service", "Service", f'label_values({UPTIME}{{job="$job"}}, service)',
                    "Services on the bus (several, or All).", multi=True)
# A busgate process: Prometheus's `instance` of an admin listener, the only targets that export
# process_* next to microbus_* (other exporters' processes are left out).
PROCESS = query_var("instance", "busgate process",
                    f"query_result(count by (instance) (process_resident_memory_bytes and on (job, instance) {UPTIME}))",
                    "busgate processes (their admin listener's Prometheus instance), several or All.", multi=True,
                    regex='/instance="([^"]+)"/')
# On the gateway and system dashboards, busgate's own process metrics.
PROC = 'instance=~"$instance"'
ON_BUSGATE = f"and on (job, instance) {UPTIME}"


def gateway():
    job = query_var("job", "Job", "label_values(busgate_ingress_requests_in_flight, job)",
                    "The scrape job: `busgate` (the admin listener of each busgate process, so that each process is "
                    "an instance below) or `bus` (metrics.core: the ingresses of every process under one instance).",
                    default="busgate")
    instance = query_var("instance", "busgate process", 'label_values(busgate_ingress_requests_in_flight{job="$job"}, instance)',
                         "busgate processes (Prometheus's instance of their admin listener), several or All.", multi=True)
    b = Board("busgate-gateway", "busgate / Gateway overview",
              "The HTTP ingress, as a Traefik or Kong user would watch it: traffic per route and status, errors "
              "against the SLO, latency, connections, bytes, and the bus behind it; per busgate process. The "
              "gateway's own latency (busgate_ingress_*) and its bus call latency (busgate_client_*) have fine "
              "buckets from 50 µs, finer than the services' handling latency, whose buckets are Microbus "
              "v1.7's from 5 ms (Service and System dashboards). At the bottom, the SMTP ingress "
              "(smtp.ingress.core): mails received, accepted, deferred (451) and rejected, protocol errors, "
              "connections, message sizes, session times and the sinks each mail reached.",
              [job, instance])
    s = 'job="$job",instance=~"$instance"'
    bus = f'{s},service="{INGRESS}"'
    c = "busgate_ingress_request_duration_seconds"
    cnt = f"{c}_count"

    b.stat("Requests/s", "HTTP requests served by the ingress per second, all listeners and processes.", "reqps",
           f"sum(rate({cnt}{{{s}}}[{R}]))", w=3)
    b.stat("5xx ratio (SLO 99.9 %)", "Share of ingress responses with a 5xx status. " + SLO_TEXT, "percentunit",
           ratio(cnt, s, 'code=~"5.."'), w=3, thresholds=SLO_THRESHOLDS, decimals=3)
    b.stat("4xx ratio", "Share of ingress responses with a 4xx status (bad requests, unknown hosts, timeouts, blocked "
           "paths). Not counted against the SLO; orange above 5 %: a broken client or a scan.", "percentunit",
           ratio(cnt, s, 'code=~"4.."'), w=3, thresholds=ALERT_RATIO_THRESHOLDS, decimals=2)
    b.stat("p99 latency", "99th percentile of time from request to response at the ingress (busgate_ingress_*, "
           "buckets from 50 µs). Yellow from 0.5 s, red from 1 s (where the latency alert fires for services).", "s",
           quantile(0.99, c, s), w=3, thresholds=LATENCY_THRESHOLDS)
    b.stat("Open connections", "Client TCP connections open now, all listeners and processes.", "short",
           f"sum(busgate_ingress_open_connections{{{s}}})", w=3, decimals=0)
    b.stat("In flight", "HTTP requests being served right now.", "short",
           f"sum(busgate_ingress_requests_in_flight{{{s}}})", w=3, decimals=0)
    b.stat("Processes", "busgate processes (instances) whose ingress reports.", "short",
           f"count(count by (instance) (busgate_ingress_requests_in_flight{{{s}}}))", w=3, decimals=0)
    b.stat("NATS", "Whether every selected ingress is connected to NATS (1) or not (0): while disconnected the "
           "ingress answers 503.", "short",
           f"min(busgate_nats_connected{{{bus}}})", w=3, thresholds=thresholds((1, "green"), base="red"),
           mappings=[{"type": "value", "options": {"0": {"text": "Disconnected", "color": "red"},
                                                    "1": {"text": "Connected", "color": "green"}}}])
    b.newline()

    # Traffic per route and per status.
    b.series("Requests/s by route", "Ingress requests per second by target route (`host:port` on the bus; "
             "`_invalid` for paths that name no target, `_blocked` for refused ones). Click a point for its traces.",
             "reqps", [(f"sum by (service, route) (rate({cnt}{{{s}}}[{R}]))", "{{route}}")],
             links=ingress_route_traces())
    b.series("Requests/s by status class", "Ingress responses per second by status class (2xx, 3xx, 4xx, 5xx).", "reqps",
             [(f"sum by (class) ({with_class(f'rate({cnt}{{{s}}}[{R}])')})", "{{class}}xx")])
    b.series("Responses by status code", "Ingress responses per second by exact HTTP status code.", "reqps",
             [(f"sum by (code) (rate({cnt}{{{s}}}[{R}]))", "{{code}}")])
    b.series("4xx and 5xx by route", "Ingress error responses per second by target route and status code; click a "
             "point for the traces of that route with that status.", "reqps",
             [(f'sum by (service, route, code) (rate({cnt}{{{s},code=~"[45].."}}[{R}]))', "{{code}} {{route}}")],
             links=ingress_route_traces(code=True))
    b.series("5xx ratio by route (SLO)", "Share of each route's responses with a 5xx status. " + SLO_TEXT +
             " Click a point for the failed traces of the route.", "percentunit",
             [(ratio(cnt, s, 'code=~"5.."', by="service, route"), "{{route}}")],
             thresholds=SLO_THRESHOLDS, min=0, links=ingress_route_traces(errors=True))
    b.series("Requests/s by busgate process", "Ingress requests per second per busgate process (is the load "
             "balancer spreading the load?).", "reqps",
             [(f"sum by (instance) (rate({cnt}{{{s}}}[{R}]))", "{{instance}}")])

    # Latency per route.
    for q in (0.5, 0.95, 0.99):
        n = f"p{int(q * 100)}"
        b.series(f"{n} latency by route", f"{int(q * 100)}th percentile of ingress request time per target route; "
                 "click a point for the route's traces." + (" Yellow from 0.5 s, red from 1 s." if q == 0.99 else ""),
                 "s", [(quantile(q, c, s, "service, route"), "{{route}}")], w=8,
                 links=ingress_route_traces(), thresholds=LATENCY_THRESHOLDS if q == 0.99 else None)
    b.series("Latency by listener", "p50, p95 and p99 of ingress request time per listener port.", "s",
             [(quantile(q, c, s, "service, port"), f"p{int(q * 100)} :{{{{port}}}}") for q in (0.5, 0.95, 0.99)],
             links=service_traces())
    b.series("Bus latency by target", "Time from publishing a request on the bus to its response, p50 and p99 per "
             "target host (busgate's own busgate_client_request_duration_seconds, buckets from 50 µs); click a "
             "point for the target service's traces.", "s",
             [(quantile(q, CLIENT_DURATION, bus, "host"), f"p{int(q * 100)} {{{{host}}}}")
              for q in (0.5, 0.99)],
             links=service_traces("host"))

    # Connections and bytes.
    b.series("Open connections by listener", "Client TCP connections open per listener port and process "
             "(keep-alive connections stay open between requests), and of those the idle HTTP/1 ones parked "
             "without their HTTP state (about 3 KiB each instead of about 30 KiB).", "short",
             [(f"sum by (instance, port) (busgate_ingress_open_connections{{{s}}})", ":{{port}} {{instance}}"),
              (f"sum by (instance, port) (busgate_ingress_parked_connections{{{s}}})",
               "parked :{{port}} {{instance}}")])
    b.series("In flight by listener", "HTTP requests being served per listener port and process.", "short",
             [(f"sum by (instance, port) (busgate_ingress_requests_in_flight{{{s}}})", ":{{port}} {{instance}}")])
    b.series("Bytes in and out", "Request and response body bytes per second through the ingress, per listener.", "Bps",
             [(f"sum by (port) (rate(busgate_ingress_request_body_bytes_sum{{{s}}}[{R}]))", "in :{{port}}"),
              (f"sum by (port) (rate(busgate_ingress_response_body_bytes_sum{{{s}}}[{R}]))", "out :{{port}}")])
    b.series("Body sizes", "95th percentile of request and response body size per listener.", "bytes",
             [(quantile(0.95, "busgate_ingress_request_body_bytes", s, "port"), "request p95 :{{port}}"),
              (quantile(0.95, "busgate_ingress_response_body_bytes", s, "port"), "response p95 :{{port}}")])

    # The bus behind it.
    b.series("Ack latency", "Time from publishing a request to the responder's ack (the bus round trip), p50 and p99 "
             "(v1.7's buckets, 5 ms to 1 s).", "s",
             [(quantile(q, ACK_DURATION, bus), f"p{int(q * 100)}")
              for q in (0.5, 0.99)])
    b.series("Bus calls by target and result", "Ingress calls on the bus per second, by target host, status code "
             "and error, counted as Go v1.7 counts them: an ack timeout is 404 and a deadline 408, both with "
             "error=\"OK\"; an error response is error=\"ERROR\" except a 404.", "reqps",
             [(f"sum by (host, code, error) (rate({REQUEST_COUNT}{{{bus}}}[{R}]))", "{{code}} {{error}} {{host}}")])
    b.series("Timeouts and unknown hosts", "Ingress calls per second that got no ack (no such service) or ran out of "
             "time, per target (busgate's own counter; in the v1.7 counter beside it these are 404 and 408 with "
             "error=\"OK\", not told apart from a service's own 404).", "reqps",
             [(f"sum by (host) (rate({CLIENT_TIMEOUTS}{{{bus}}}[{R}])) or vector(0)", "{{host}}")])
    b.series("NATS connection by process", "1 while the ingress of each process (and instance id) is connected to "
             "NATS; reconnects per process as they happen.", "short",
             [(f"min by (instance, id) (busgate_nats_connected{{{bus}}})", "connected {{instance}} {{id}}"),
              (f"sum by (instance) (increase(busgate_nats_reconnects_total{{{bus}}}[{R}])) or vector(0)",
               "reconnects {{instance}}")],
             decimals=0, min=0)

    # The SMTP ingress: mail in, the on-incoming-email event out. Deferred mails (451) come
    # back: the sender retries; rejected ones (552, 554) do not. Deferrals are rare on a
    # healthy gateway, so their reason-labelled series may not exist yet: `or vector(0)`
    # (`or on () vector(0)` per reason: the 0 only while no reason exists).
    m = f'{s},service="{SMTP}"'
    smtp_failed_traces = [jaeger_link("Failed SMTP deliveries in Jaeger", SMTP, tags="error=true")]
    deferred = f"sum(rate({SMTP_DEFERRED}{{{m}}}[{R}])) or vector(0)"
    b.newline()
    b.stat("SMTP messages/s", "Mails received over SMTP per second (every message whose DATA ended, whatever "
           "its outcome), all processes.", "mps",
           f"sum(rate({SMTP_RECEIVED}{{{m}}}[{R}]))", w=4)
    b.stat("SMTP deferral ratio", "Share of received mails answered 451 (no sink, a sink error or a sink timeout): "
           "the sender keeps them and retries. Orange from 10 %, where the deferral alert fires once it lasts "
           "15 minutes.", "percentunit",
           f"({deferred}) / sum(rate({SMTP_RECEIVED}{{{m}}}[{R}]))", w=4,
           thresholds=SMTP_DEFERRAL_THRESHOLDS, decimals=1, links=smtp_failed_traces)
    b.stat("SMTP rejected/s", "Mails refused for good per second (552 over MaxSize, 554 unparseable): the sender "
           "bounces them.", "mps",
           f"sum(rate({SMTP_REJECTED}{{{m}}}[{R}]))", w=4)
    b.stat("SMTP protocol errors/s", "SMTP protocol errors and refused or dropped connections per second (500, 503, "
           "421, ...).", "cps",
           f"sum(rate({SMTP_ERRORS}{{{m}}}[{R}]))", w=4)
    b.stat("Open SMTP connections", "SMTP client connections open now, all processes (each process admits "
           "MaxClients, 128 by default).", "short",
           f"sum({SMTP_OPEN}{{{m}}})", w=4, decimals=0)
    b.stat("SMTP sinks per mail", "Sinks that took each mail of on-incoming-email without error, on average. "
           "Red below 1: some mails reached no sink (with RequireSink, the default, those are deferred).", "short",
           f"sum(rate({SMTP_SINKS}_sum{{{m}}}[{R}])) / sum(rate({SMTP_SINKS}_count{{{m}}}[{R}]))", w=4,
           thresholds=thresholds((1, "green"), base="red"), decimals=2)
    b.newline()
    b.series("SMTP messages/s by outcome", "Mails per second: received (DATA ended), accepted (250, a sink took "
             "them), deferred (451, the sender retries) and rejected (552, 554, for good).", "mps",
             [(f"sum(rate({SMTP_RECEIVED}{{{m}}}[{R}]))", "received"),
              (f"sum(rate({SMTP_ACCEPTED}{{{m}}}[{R}]))", "accepted"),
              (deferred, "deferred"),
              (f"sum(rate({SMTP_REJECTED}{{{m}}}[{R}]))", "rejected")], min=0)
    b.series("SMTP deferral ratio by process", "Share of each process's received mails answered 451; orange line at "
             "10 %, where the deferral alert fires once it lasts 15 minutes. Click a point for the failed "
             "deliveries' traces (a deferred mail's trace is kept in PROD).", "percentunit",
             [(f"(sum by (instance) (rate({SMTP_DEFERRED}{{{m}}}[{R}])) or 0 * sum by (instance) "
               f"(rate({SMTP_RECEIVED}{{{m}}}[{R}]))) / sum by (instance) (rate({SMTP_RECEIVED}{{{m}}}[{R}]))",
               "{{instance}}")],
             thresholds=SMTP_DEFERRAL_THRESHOLDS, min=0, links=smtp_failed_traces)
    b.series("SMTP deferred by reason", "Mails answered 451 per second by reason: `no_sink` (no service sinks "
             "smtp.ingress.core:417/on-incoming-email), `sink_error` (a sink answered an error), `timeout` (a "
             "sink did not answer within TimeBudget). Click a point for the failed deliveries' traces.", "mps",
             [(f"sum by (reason) (rate({SMTP_DEFERRED}{{{m}}}[{R}])) or on () vector(0)", "{{reason}}")],
             min=0, links=smtp_failed_traces)
    b.series("SMTP rejected by reason", "Mails refused for good per second by reason: `too_large` (552, over "
             "MaxSize, declared at MAIL or found at the end of DATA), `unparseable` (554, no RFC 5322 header).",
             "mps", [(f"sum by (reason) (rate({SMTP_REJECTED}{{{m}}}[{R}]))", "{{reason}}")], min=0)
    b.series("SMTP protocol errors by reason", "Protocol errors and refused or dropped connections per second by "
             "reason: `syntax`, `bad_sequence`, `line_too_long`, `bare_lf`, `refused` (5xx to a command), "
             "`too_many_clients` (421 over MaxClients), `idle_timeout`, `disconnected_in_data`, `tls`, "
             "`shutting_down`. A steady trickle of syntax errors is scanners.", "cps",
             [(f"sum by (reason) (rate({SMTP_ERRORS}{{{m}}}[{R}]))", "{{reason}}")], min=0)
    b.series("Open SMTP connections by process", "SMTP client connections open per process; one over MaxClients "
             "(128 by default) is answered 421 and counted as too_many_clients.", "short",
             [(f"sum by (instance) ({SMTP_OPEN}{{{m}}})", "{{instance}}")], decimals=0, min=0)
    b.series("SMTP message size", "p50 and p95 of the size of received mails (buckets 64 B, 256 B, 1 KiB, 4 KiB, "
             "16 KiB, 64 KiB, 256 KiB, 1 MiB, 4 MiB, 16 MiB; MaxSize is 10 MB by default).", "bytes",
             [(quantile(q, SMTP_MESSAGE_BYTES, m), f"p{int(q * 100)}") for q in (0.5, 0.95)], w=8)
    b.series("SMTP session duration", "p50 and p99 of the time from connect to disconnect of SMTP sessions "
             "(buckets 1 ms to 15 min): a quick delivery takes milliseconds, a client left idle up to "
             "IdleTimeout (5 min).", "s",
             [(quantile(q, SMTP_SESSION, m), f"p{int(q * 100)}") for q in (0.5, 0.99)], w=8)
    b.series("SMTP sinks reached per mail", "Sinks that took each mail of on-incoming-email without error, on "
             "average per process. Below 1, some mails reached no sink.", "short",
             [(f"sum by (instance) (rate({SMTP_SINKS}_sum{{{m}}}[{R}])) / sum by (instance) "
               f"(rate({SMTP_SINKS}_count{{{m}}}[{R}]))", "{{instance}}")], w=8, min=0)
    return b


def service():
    instance = query_var("instance", "Instance", f'label_values({UPTIME}{{job="$job",service=~"$service"}}, id)',
                         "Instances (the `id` label) of the selected services, several or All.", multi=True)
    b = Board("busgate-service", "busgate / Service",
              "Services on the bus, busgate's and Go Microbus v1.7's alike (same metric names): rate, status codes, "
              "errors against the SLO and duration per handler, calls to other services, logs, replicas, the "
              "distributed cache. Pick one or several services and instances. " + V17_BUCKETS_TEXT +
              " The gateway's own latency (busgate_ingress_*, Gateway overview) and busgate's outgoing call "
              "latency (busgate_client_*) are finer, from 50 µs.", [JOB, SERVICE, instance])
    s = 'job="$job",service=~"$service",id=~"$instance"'
    srv = RESPONSE_DURATION
    cnt = f"{srv}_count"
    h = f'{s},port!="888"'  # the control plane (:888) left out

    b.stat("Requests/s", "Requests handled per second (control plane excluded).", "reqps",
           f"sum(rate({cnt}{{{h}}}[{R}]))", w=3)
    b.stat("5xx ratio (SLO 99.9 %)", "Share of handled requests that ended in a 5xx status. " + SLO_TEXT, "percentunit",
           ratio(cnt, h, 'code=~"5.."'), w=3, thresholds=SLO_THRESHOLDS, decimals=3)
    b.stat("Error ratio", "Share of handled requests that ended in any error (4xx included). Orange from 5 %, where "
           "the error ratio alert fires.", "percentunit",
           ratio(cnt, h, 'error="ERROR"'), w=3, thresholds=ALERT_RATIO_THRESHOLDS, decimals=2)
    b.stat("p99", "99th percentile of handling time (v1.7 buckets from 5 ms). Yellow from 0.5 s, red from 1 s (the "
           "latency alert).", "s",
           quantile(0.99, srv, h), w=3, thresholds=LATENCY_THRESHOLDS)
    b.stat("Replicas", "Instances of the selected services reporting now.", "short",
           f"count({UPTIME}{{{s}}})", w=3, decimals=0)
    b.stat("Uptime", "Time since the youngest selected instance started.", "s",
           f"min({UPTIME}{{{s}}})", w=3)
    b.stat("Errors logged/s", "ERROR log lines per second.", "short",
           f'sum(rate({LOG_MESSAGES}{{{s},severity="ERROR"}}[{R}])) or vector(0)', w=3,
           thresholds=thresholds((0.001, "orange")))
    b.stat("NATS", "Whether every selected instance is connected to NATS (1) or not (0).", "short",
           f"min(busgate_nats_connected{{{s}}})", w=3, thresholds=thresholds((1, "green"), base="red"),
           mappings=[{"type": "value", "options": {"0": {"text": "Disconnected", "color": "red"},
                                                    "1": {"text": "Connected", "color": "green"}}}])
    b.newline()

    b.series("Requests/s by handler", "Requests handled per second, by handler (`host:port/path`) and method; click "
             "a point for the handler's traces.", "reqps",
             [(with_operation(f"sum by (service, handler, method) (rate({cnt}{{{h}}}[{R}]))"), "{{method}} {{handler}}")],
             links=handler_traces())
    b.series("Requests/s by status class", "Responses per second by service and status class (2xx, 3xx, 4xx, 5xx).",
             "reqps",
             [(f"sum by (service, class) ({with_class(f'rate({cnt}{{{h}}}[{R}])')})", "{{class}}xx {{service}}")])
    b.series("Responses by status code", "Responses per second by service and exact status code.", "reqps",
             [(f"sum by (service, code) (rate({cnt}{{{h}}}[{R}]))", "{{code}} {{service}}")])
    b.series("Errors by handler", "Failed requests per second, by handler and status code; click a point for the "
             "handler's failed traces.", "reqps",
             [(with_operation(f'sum by (service, handler, code) (rate({cnt}{{{h},error="ERROR"}}[{R}]))') + " or vector(0)",
               "{{code}} {{handler}}")],
             links=handler_traces(errors=True))
    b.series("5xx ratio by handler (SLO)", "Share of each handler's requests that ended in a 5xx status. " + SLO_TEXT +
             " Click a point for the handler's failed traces.", "percentunit",
             [(with_operation(ratio(cnt, h, 'code=~"5.."', by="service, handler")), "{{handler}}")],
             thresholds=SLO_THRESHOLDS, min=0, links=handler_traces(errors=True))
    b.series("Error ratio by service", "Share of each service's requests that ended in any error (4xx included); "
             "orange line at 5 %, where the error ratio alert fires. Click a point for the failed traces.", "percentunit",
             [(ratio(cnt, h, 'error="ERROR"', by="service"), "{{service}}")],
             thresholds=ALERT_RATIO_THRESHOLDS, min=0, links=service_traces(errors=True))
    for q in (0.5, 0.95, 0.99):
        n = f"p{int(q * 100)}"
        b.series(f"{n} by handler", f"{int(q * 100)}th percentile of handling time per handler (v1.7 buckets from "
                 "5 ms); click a point for the handler's traces." + (" Yellow from 0.5 s, red from 1 s." if q == 0.99 else ""), "s",
                 [(with_operation(quantile(q, srv, h, "service, handler")), "{{handler}}")], w=8,
                 links=handler_traces(), thresholds=LATENCY_THRESHOLDS if q == 0.99 else None)
    b.series("Response size by handler", "95th percentile of response body size per handler (v1.7 buckets: 16 KiB, "
             "64 KiB, 256 KiB, 1 MiB, 4 MiB).", "bytes",
             [(quantile(0.95, RESPONSE_SIZE, h, "handler"), "p95 {{handler}}")])
    b.series("Calls to other services", "Outgoing bus calls per second, by target host and status, as Go v1.7 counts "
             "them (microbus_request_count_total): an ack timeout counts as 404 and a deadline as 408.", "reqps",
             [(f"sum by (host, code) (rate({REQUEST_COUNT}{{{s}}}[{R}]))", "{{code}} {{host}}")])
    b.series("Call errors by target", "Outgoing calls per second that ended in an error response (error=\"ERROR\" in "
             "Go v1.7's counting: not a 404, an ack timeout or a deadline, see Timeouts), by target host and status; "
             "click a point for the target's failed traces.", "reqps",
             [(f'sum by (host, code) (rate({REQUEST_COUNT}{{{s},error="ERROR"}}[{R}])) or vector(0)', "{{code}} {{host}}")],
             links=service_traces("host", errors=True))
    b.series("Call latency by target", "p50 and p99 of outgoing call time per target host (busgate's own "
             "busgate_client_request_duration_seconds, buckets from 50 µs: busgate services only, Go v1.7 has no "
             "such histogram); click a point for the target's traces.", "s",
             [(quantile(q, CLIENT_DURATION, s, "host"), f"p{int(q * 100)} {{{{host}}}}")
              for q in (0.5, 0.99)],
             links=service_traces("host"))
    b.series("Timeouts", "Outgoing calls per second that got no ack or ran out of time, per target (busgate's own "
             "counter, busgate services only).", "reqps",
             [(f"sum by (host) (rate({CLIENT_TIMEOUTS}{{{s}}}[{R}])) or vector(0)", "{{host}}")])
    b.series("Ack latency by target", "99th percentile of the ack round trip per target host (v1.7 buckets, 5 ms to "
             "1 s).", "s",
             [(quantile(0.99, ACK_DURATION, s, "host"), "p99 {{host}}")])
    b.series("Logs by severity", "Log lines per second by service and severity.", "short",
             [(f"sum by (service, severity) (rate({LOG_MESSAGES}{{{s}}}[{R}]))", "{{severity}} {{service}}")])
    b.series("Top log messages", "The ten most frequent log messages over the dashboard's range.", "short",
             [(f"topk(10, sum by (service, severity, message) (increase({LOG_MESSAGES}{{{s}}}[$__range])))",
               "{{severity}} {{service}}: {{message}}")])
    b.series("Replicas and uptime", "Uptime of each instance; a reset is a restart.", "s",
             [(f"max by (service, id, ver) ({UPTIME}{{{s}}})", "{{service}} {{id}} v{{ver}}")])
    b.series("NATS connection by instance", "1 while the instance's bus connection is up.", "short",
             [(f"min by (service, id) (busgate_nats_connected{{{s}}})", "{{service}} {{id}}")], decimals=0, min=0)
    b.series("Startup and shutdown", "Average time of lifecycle callbacks per instance.", "s",
             [(f"sum by (handler, id) ({CALLBACK_DURATION}_sum{{{s}}}) / sum by (handler, id) ({CALLBACK_DURATION}_count{{{s}}})", "{{handler}} {{id}}")])
    b.series("Distributed cache", "The local shard of each instance's distributed cache: load hits and misses per "
             "second, elements and total weight. Go v1.7 services fill it; busgate services have no distributed "
             "cache and report 0.", "short",
             [(f"sum by (service, id) (rate({CACHE_HITS}{{{s}}}[{R}]))", "hits/s {{service}} {{id}}"),
              (f"sum by (service, id) (rate({CACHE_MISSES}{{{s}}}[{R}]))", "misses/s {{service}} {{id}}"),
              (f"sum by (service, id) ({CACHE_LEN}{{{s}}})", "elements {{service}} {{id}}"),
              (f"sum by (service, id) ({CACHE_WEIGHT}{{{s}}})", "weight {{service}} {{id}}")], min=0)
    return b


def system():
    b = Board("busgate-system", "busgate / System",
              "Every service on the bus at a glance, busgate's and Go Microbus v1.7's alike (same metric names): "
              "traffic, errors against the SLO, latency, replicas, logs, and the busgate processes. " + V17_BUCKETS_TEXT +
              " The gateway's own latency (busgate_ingress_*, Gateway overview) is finer, from 50 µs.",
              [JOB, SERVICE, PROCESS])
    j = 'job="$job",service=~"$service"'
    srv = RESPONSE_DURATION
    cnt = f"{srv}_count"
    h = f'{j},port!="888"'
    b.stat("Requests/s", "Requests handled per second by the selected services (control plane excluded).", "reqps",
           f"sum(rate({cnt}{{{h}}}[{R}]))")
    b.stat("5xx ratio (SLO 99.9 %)", "Share of all handled requests that ended in a 5xx status. " + SLO_TEXT, "percentunit",
           ratio(cnt, h, 'code=~"5.."'), thresholds=SLO_THRESHOLDS, decimals=3)
    b.stat("Error ratio", "Share of all handled requests that ended in any error (4xx included). Orange from 5 %, "
           "where the error ratio alert fires.", "percentunit",
           ratio(cnt, h, 'error="ERROR"'), thresholds=ALERT_RATIO_THRESHOLDS, decimals=2)
    b.stat("p99", "99th percentile of handling time over the selected services (v1.7 buckets from 5 ms). Yellow "
           "from 0.5 s, red from 1 s.", "s",
           quantile(0.99, srv, h), thresholds=LATENCY_THRESHOLDS)
    b.stat("Services", "Distinct services reporting.", "short",
           f"count(count by (service) ({UPTIME}{{{j}}}))", decimals=0)
    b.stat("Instances", "Service instances reporting.", "short",
           f"count({UPTIME}{{{j}}})", decimals=0)
    b.series("Requests/s by service", "Requests handled per second, per service; click a point for its traces or its "
             "Service dashboard.", "reqps",
             [(f"sum by (service) (rate({cnt}{{{h}}}[{R}]))", "{{service}}")],
             links=service_traces() + [service_dashboard_link()])
    b.series("5xx ratio by service (SLO)", "Share of each service's requests that ended in a 5xx status. " + SLO_TEXT +
             " Click a point for the failed traces.", "percentunit",
             [(ratio(cnt, h, 'code=~"5.."', by="service"), "{{service}}")],
             thresholds=SLO_THRESHOLDS, min=0, links=service_traces(errors=True) + [service_dashboard_link()])
    b.series("Error ratio by service", "Share of requests that ended in any error (4xx included), per service; orange "
             "line at 5 %, where the error ratio alert fires.", "percentunit",
             [(ratio(cnt, h, 'error="ERROR"', by="service"), "{{service}}")],
             thresholds=ALERT_RATIO_THRESHOLDS, min=0, links=service_traces(errors=True) + [service_dashboard_link()])
    b.series("p99 by service", "99th percentile of handling time per service (v1.7 buckets from 5 ms; red line at "
             "1 s, the latency alert); click a point for the service's traces.", "s",
             [(quantile(0.99, srv, h, "service"), "{{service}}")],
             thresholds=LATENCY_THRESHOLDS, links=service_traces() + [service_dashboard_link()])
    b.series("Replicas by service", "Instances per service.", "short",
             [(f"count by (service) ({UPTIME}{{{j}}})", "{{service}}")], decimals=0)
    b.series("Errors and warnings logged", "ERROR and WARN log lines per second, per service.", "short",
             [(f'sum by (service, severity) (rate({LOG_MESSAGES}{{{j},severity=~"ERROR|WARN"}}[{R}])) or vector(0)', "{{severity}} {{service}}")])
    b.series("Timeouts by service", "Outgoing calls per second that got no ack or ran out of time, per calling service "
             "(busgate's own counter, busgate services only).", "reqps",
             [(f"sum by (service) (rate({CLIENT_TIMEOUTS}{{{j}}}[{R}])) or vector(0)", "{{service}}")])
    b.series("NATS connection by service", "1 while every instance of the service is connected to NATS.", "short",
             [(f"min by (service) (busgate_nats_connected{{{j}}})", "{{service}}")], decimals=0, min=0)
    b.series("Uptime by service", "Time since the youngest instance of each service started.", "s",
             [(f"min by (service) ({UPTIME}{{{j}}})", "{{service}}")])
    b.series("busgate process memory", "Resident memory of each busgate process (from its admin listener).", "bytes",
             [(f"sum by (instance) (process_resident_memory_bytes{{{PROC}}} {ON_BUSGATE})", "{{instance}}")])
    b.series("busgate process CPU", "CPU seconds per second used by each busgate process.", "percentunit",
             [(f"sum by (instance) (rate(process_cpu_seconds_total{{{PROC}}}[{R}]) {ON_BUSGATE})", "{{instance}}")])
    b.series("busgate process file descriptors", "Open file descriptors of each busgate process (every client "
             "connection holds one) against its limit.", "short",
             [(f"sum by (instance) (process_open_fds{{{PROC}}} {ON_BUSGATE})", "open {{instance}}"),
              (f"sum by (instance) (process_max_fds{{{PROC}}} {ON_BUSGATE})", "limit {{instance}}")], decimals=0)
    b.series("busgate process logs", "Log lines per second outside any service (process start, listeners, the "
             "NATS connection), by process and severity.", "short",
             [(f"sum by (instance, severity) (rate(busgate_process_log_messages_total{{{PROC}}}[{R}])) or vector(0)",
               "{{severity}} {{instance}}")])
    return b


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dashboards")
    for name, board in [("gateway-overview", gateway()), ("service", service()), ("system", system())]:
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(board.json(), f, indent=2)
            f.write("\n")
        print("wrote", name + ".json", len(board.panels), "panels")
