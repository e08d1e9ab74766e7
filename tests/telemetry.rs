//! Traces end to end into a real OTLP receiver (HTTP and gRPC), trusted and untrusted trace
//! context, PROD's tail selection.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use busgate::ingress::http::{HttpIngress, IngressConfig};
use busgate::telemetry::trace::{SpanContext, SpanKind, SpanName};
use busgate::telemetry::{OtlpProtocol, TelemetryConfig};
use busgate::{examples, BusConfig, Connector, Ctx, Deployment, Error, Service};
use bytes::Bytes;
use common::http::{get, request};
use common::otlp::{grpc_receiver, http_receiver, https_receiver, ReceivedSpan, Spans};
use common::{free_port, NatsServer};
use http::{Response, StatusCode};

const INTERNAL: i32 = 1;
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

fn traced(nats: &NatsServer, endpoint: String, protocol: OtlpProtocol) -> BusConfig {
    let mut cfg = nats.config();
    cfg.telemetry = TelemetryConfig {
        endpoint: Some(endpoint),
        protocol,
        ..TelemetryConfig::default()
    };
    cfg
}

struct Chain {
    services: Vec<Connector>,
    ingress: HttpIngress,
    trusted: SocketAddr,
    public: SocketAddr,
}

async fn chain(cfg: &BusConfig) -> Chain {
    let services = examples::start_all(cfg).await.unwrap();
    let (t, p) = (free_port(), free_port());
    let mut ic = IngressConfig::resolve(
        None,
        |_| None,
        &[
            ("Ports".into(), format!("{t},{p}")),
            ("TrustTraceContext".into(), t.to_string()),
        ],
    )
    .unwrap();
    ic.bind_ip = "127.0.0.1".parse().unwrap();
    let ingress = HttpIngress::start(ic, cfg).await.unwrap();
    Chain {
        services,
        ingress,
        trusted: format!("127.0.0.1:{t}").parse().unwrap(),
        public: format!("127.0.0.1:{p}").parse().unwrap(),
    }
}

impl Chain {
    /// Shut everything down, which flushes every exporter.
    async fn stop(self) {
        self.ingress.shutdown().await;
        for s in self.services {
            s.shutdown().await;
        }
    }
}

fn one<'a>(spans: &'a [ReceivedSpan], service: &str, kind: i32, name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.service == service && s.kind == kind && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{service} {kind} {name} in {:#?}",
        spans
            .iter()
            .map(|s| (&s.service, s.kind, &s.name))
            .collect::<Vec<_>>()
    );
    found[0]
}

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// ingress → hello.example/calculator → calculator.example/arithmetic: five spans, parented.
fn assert_chain(spans: &Spans, trace_id: &str, listen_port: u16, plane: &str) {
    let all = spans.of_trace(trace_id);
    assert_eq!(all.len(), 5, "{all:#?}");
    let ingress = one(
        &all,
        "http.ingress.core",
        SERVER,
        &format!(":{listen_port}/hello.example/calculator"),
    );
    let to_hello = one(
        &all,
        "http.ingress.core",
        CLIENT,
        "GET hello.example:443/calculator",
    );
    let hello = one(&all, "hello.example", SERVER, ":443/calculator");
    let to_calc = one(
        &all,
        "hello.example",
        CLIENT,
        "GET calculator.example:443/arithmetic",
    );
    let calc = one(&all, "calculator.example", SERVER, ":443/arithmetic");
    assert_eq!(to_hello.parent_span_id, ingress.span_id);
    assert_eq!(hello.parent_span_id, to_hello.span_id);
    assert_eq!(to_calc.parent_span_id, hello.span_id);
    assert_eq!(calc.parent_span_id, to_calc.span_id);

    assert_eq!(ingress.attributes["http.request.method"], "GET");
    assert_eq!(ingress.attributes["http.response.status_code"], "200");
    assert_eq!(ingress.attributes["server.port"], listen_port.to_string());
    assert_eq!(ingress.attributes["client.address"], "127.0.0.1");
    assert_eq!(ingress.attributes["user_agent.original"], "busgate-test");
    assert!(
        ingress.attributes["http.response.body.size"]
            .parse::<u64>()
            .unwrap()
            > 0
    );
    for client in [to_hello, to_calc] {
        assert_eq!(client.attributes["messaging.system"], "nats");
        assert_eq!(client.attributes["messaging.operation.type"], "send");
        assert_eq!(client.attributes["messaging.message.id"].len(), 8);
        assert!(
            client.attributes.contains_key("microbus.ack.latency_ms"),
            "{client:?}"
        );
        assert!(
            client.attributes["microbus.time_budget_ms"]
                .parse::<i64>()
                .unwrap()
                > 1000
        );
    }
    assert_eq!(
        to_hello.attributes["messaging.destination.name"],
        format!("{plane}.443.example.hello.|.GET.calculator")
    );
    assert_eq!(calc.attributes["http.route"], "/arithmetic");
    assert_eq!(calc.attributes["messaging.system"], "nats");
    assert_eq!(calc.resource["service.namespace"], plane);
    assert_eq!(calc.resource["service.version"], "1");
    assert_eq!(calc.resource["service.instance.id"].len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_three_services_over_otlp_http() {
    let nats = NatsServer::start();
    let (endpoint, spans) = http_receiver().await;
    let mut cfg = traced(&nats, endpoint, OtlpProtocol::HttpProtobuf);
    // As OTEL_EXPORTER_OTLP_HEADERS sets them: a collector's credentials.
    cfg.telemetry.headers = vec![(
        http::HeaderName::from_static("api-key"),
        http::HeaderValue::from_static("s3cret"),
    )];
    let c = chain(&cfg).await;
    let traceparent = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01");
    let headers = [
        ("traceparent", traceparent.as_str()),
        ("User-Agent", "busgate-test"),
    ];
    let path = "/hello.example/calculator?x=5&op=*&y=3";
    // Trusted listener: the caller's trace is continued.
    let res = request(c.trusted, "GET", path, &headers, b"").await;
    assert_eq!((res.status, res.text().as_str()), (200, "5 * 3 = 15"));
    let timing = res.header("server-timing").unwrap();
    assert!(
        timing.starts_with("total;dur=") && timing.contains(", bus;dur="),
        "{timing}"
    );
    // Public listener: the same header starts nothing; a new trace begins.
    let res = request(c.public, "GET", path, &headers, b"").await;
    assert_eq!(res.status, 200);
    let (trusted_port, public_port) = (c.trusted.port(), c.public.port());
    c.stop().await;

    assert_chain(&spans, PARENT_TRACE, trusted_port, &cfg.plane);
    let root = one(
        &spans.of_trace(PARENT_TRACE),
        "http.ingress.core",
        SERVER,
        &format!(":{trusted_port}/hello.example/calculator"),
    )
    .clone();
    assert_eq!(root.parent_span_id, PARENT_SPAN);
    let public_root = spans
        .all()
        .into_iter()
        .find(|s| s.name == format!(":{public_port}/hello.example/calculator"))
        .expect("the public request was traced");
    assert_ne!(public_root.trace_id, PARENT_TRACE);
    assert_eq!(public_root.parent_span_id, "", "a new root");
    assert_chain(&spans, &public_root.trace_id, public_port, &cfg.plane);
    let exports = spans.request_headers();
    assert!(!exports.is_empty());
    for h in exports {
        assert_eq!(h["content-type"], "application/x-protobuf");
        assert_eq!(h["api-key"], "s3cret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_over_otlp_grpc_with_errors_recorded() {
    let nats = NatsServer::start();
    let (endpoint, spans) = grpc_receiver().await;
    let cfg = traced(&nats, endpoint, OtlpProtocol::Grpc);
    let c = chain(&cfg).await;
    let res = request(
        c.trusted,
        "GET",
        "/hello.example/calculator?x=5&op=*&y=3",
        &[("User-Agent", "busgate-test")],
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    let res = get(c.trusted, "/hello.example/calculator?x=1&op=/&y=0").await;
    assert_eq!(res.status, 400);
    // The error page names the trace that holds the error.
    let error_trace = res
        .text()
        .rsplit("{trace/")
        .next()
        .unwrap()
        .trim_end_matches('}')
        .to_owned();
    let port = c.trusted.port();
    c.stop().await;

    let ok_trace = spans
        .all()
        .into_iter()
        .find(|s| {
            s.name == format!(":{port}/hello.example/calculator")
                && s.attributes["http.response.status_code"] == "200"
        })
        .unwrap()
        .trace_id;
    assert_chain(&spans, &ok_trace, port, &cfg.plane);
    let failed = spans.of_trace(&error_trace);
    assert_eq!(failed.len(), 5, "{failed:#?}");
    let calc = one(&failed, "calculator.example", SERVER, ":443/arithmetic");
    assert_eq!(calc.status, STATUS_ERROR);
    assert_eq!(calc.attributes["http.response.status_code"], "400");
    assert!(calc.events.contains(&"exception".to_owned()));
    let ingress = one(
        &failed,
        "http.ingress.core",
        SERVER,
        &format!(":{port}/hello.example/calculator"),
    );
    assert_eq!(ingress.status, STATUS_ERROR);
}

fn prod_service() -> Service {
    Service::new("prod.test")
        .get("/ok", |_ctx: Ctx, _req| async {
            // Recorded, but its trace is plain and fast: never exported.
            let _lookup = tracing::info_span!("lookup").entered();
            Ok(Response::new(Bytes::from_static(b"ok")))
        })
        .get("/fail", |_ctx: Ctx, _req| async {
            // Exported with the error trace it belongs to.
            let _lookup = tracing::info_span!("lookup").entered();
            Err::<Response<Bytes>, _>(Error::new(StatusCode::INTERNAL_SERVER_ERROR, "it broke"))
        })
        .get("/force", |ctx: Ctx, _req| async move {
            ctx.force_trace();
            Ok(Response::new(Bytes::from_static(b"forced")))
        })
        .get("/slow", |_ctx: Ctx, _req| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok(Response::new(Bytes::from_static(b"slow")))
        })
        // Swallows a downstream failure: its own spans are fine, the trace still holds an error.
        .get("/swallow", |ctx: Ctx, _req| async move {
            let _ = ctx.get("https://prod.test/fail").await;
            Ok(Response::new(Bytes::from_static(b"swallowed")))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prod_exports_error_forced_and_slow_traces_only() {
    busgate::telemetry::logs::init(Deployment::Testing);
    let nats = NatsServer::start();
    let (endpoint, spans) = http_receiver().await;
    let mut cfg = traced(&nats, endpoint, OtlpProtocol::HttpProtobuf);
    cfg.deployment = Deployment::Prod;
    cfg.telemetry.slow_trace_threshold = Duration::from_millis(300);
    let svc = prod_service().start(&cfg).await.unwrap();
    let client = Service::new("client.test").start(&cfg).await.unwrap();
    let mut traces = std::collections::HashMap::new();
    for path in ["ok", "fail", "force", "slow", "swallow"] {
        let ctx = client.ctx();
        // A root span per call, so that each call is its own trace.
        let root = client.tracer().start(
            &SpanContext::NONE,
            SpanKind::Internal,
            SpanName::Text(&format!("root {path}")),
            |_| {},
        );
        let ctx = ctx.with_span_context(root.context().clone());
        let _ = ctx.get(&format!("https://prod.test/{path}")).await;
        client.tracer().end(root);
        traces.insert(path, ctx.trace_id());
    }
    // Let the :888/trace broadcasts land before flushing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.shutdown().await;
    svc.shutdown().await;

    assert!(
        spans.of_trace(&traces["ok"]).is_empty(),
        "a plain fast trace is not exported"
    );
    for path in ["force", "slow"] {
        let t = spans.of_trace(&traces[path]);
        // The caller's root and CLIENT spans, and the service's SERVER span.
        assert_eq!(t.len(), 3, "{path}: {t:#?}");
    }
    // /fail's handler span waited in the tail buffer with its hop and left with it.
    let failed = spans.of_trace(&traces["fail"]);
    assert_eq!(failed.len(), 4, "{failed:#?}");
    let hop = one(&failed, "prod.test", SERVER, ":443/fail");
    let lookup = one(&failed, "prod.test", INTERNAL, "lookup");
    assert_eq!(lookup.parent_span_id, hop.span_id);
    let swallowed = spans.of_trace(&traces["swallow"]);
    // root, client→swallow, :443/swallow, swallow→fail, :443/fail and its lookup: the
    // broadcast made every service export its share, though only /fail failed.
    assert_eq!(swallowed.len(), 6, "{swallowed:#?}");
    assert!(swallowed
        .iter()
        .any(|s| s.name == ":443/swallow" && s.status != STATUS_ERROR));
}

/// Spans a handler opens with `tracing` are exported (through `tracing-opentelemetry`) as
/// children of the hop that ran them, under that service's resource, with their fields as
/// attributes and their log lines as events; spans outside any handler are not exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_tracing_spans_are_children_of_their_hop() {
    use tracing::Instrument;
    busgate::telemetry::logs::init(Deployment::Testing);
    let nats = NatsServer::start();
    let (endpoint, spans) = http_receiver().await;
    let cfg = traced(&nats, endpoint, OtlpProtocol::HttpProtobuf);
    let svc = Service::new("spans.test")
        .get("/work", |_ctx: Ctx, _req| async {
            let query = tracing::info_span!("query", db.system = "postgresql");
            async {
                tokio::task::yield_now().await;
                tracing::info!(rows = 3, "fetched");
                let _decode = tracing::info_span!("decode").entered();
            }
            .instrument(query)
            .await;
            Ok(Response::new(Bytes::from_static(b"done")))
        })
        .start(&cfg)
        .await
        .unwrap();
    let client = Service::new("client.test").start(&cfg).await.unwrap();
    // Outside any handler: belongs to no service's trace.
    drop(tracing::info_span!("startup").entered());
    let root = client.tracer().start(
        &SpanContext::NONE,
        SpanKind::Internal,
        SpanName::Text("root"),
        |_| {},
    );
    let ctx = client.ctx().with_span_context(root.context().clone());
    let res = ctx.get("https://spans.test/work").await.unwrap();
    assert_eq!(res.body().as_ref(), b"done");
    client.tracer().end(root);
    client.shutdown().await;
    svc.shutdown().await;

    let t = spans.of_trace(&ctx.trace_id());
    // root, CLIENT, SERVER, and the handler's query and decode.
    assert_eq!(t.len(), 5, "{t:#?}");
    let hop = one(&t, "spans.test", SERVER, ":443/work");
    let query = one(&t, "spans.test", INTERNAL, "query");
    let decode = one(&t, "spans.test", INTERNAL, "decode");
    assert_eq!(query.parent_span_id, hop.span_id);
    assert_eq!(decode.parent_span_id, query.span_id);
    assert_eq!(query.attributes["db.system"], "postgresql");
    assert_eq!(query.events, vec!["fetched".to_owned()], "{query:?}");
    assert_eq!(
        query.resource["service.instance.id"],
        hop.resource["service.instance.id"]
    );
    assert!(
        spans.all().iter().all(|s| s.name != "startup"),
        "a span outside any handler is not exported"
    );
}

/// A collector over `https://` with a private CA: trusted through
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`, it receives the spans; without it the handshake fails and
/// nothing arrives; a certificate file that is not there is a clear start-up error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_https_with_a_private_ca() {
    let nats = NatsServer::start();
    let dir = common::TempDir::new("otlp-tls");
    common::make_certs(&dir.0);
    let (endpoint, spans) = https_receiver(&dir.0).await;
    for trusted in [true, false] {
        let mut cfg = traced(&nats, endpoint.clone(), OtlpProtocol::HttpProtobuf);
        if trusted {
            cfg.telemetry.ca_file = Some(dir.0.join("ca.pem"));
        }
        let client = Service::new("tls.test").start(&cfg).await.unwrap();
        let root = client.tracer().start(
            &SpanContext::NONE,
            SpanKind::Internal,
            SpanName::Text(&format!("trusted {trusted}")),
            |_| {},
        );
        client.tracer().end(root);
        client.shutdown().await;
    }
    let names: Vec<String> = spans.all().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["trusted true"]);

    let map: std::collections::HashMap<&str, String> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            dir.0.join("missing.pem").display().to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let err = TelemetryConfig::from_lookup(|k| map.get(k).cloned()).unwrap_err();
    assert_eq!(err.name, "OTEL_EXPORTER_OTLP_CERTIFICATE");
    // A file that holds no certificate fails the service's start, naming the file.
    let mut cfg = traced(&nats, endpoint, OtlpProtocol::HttpProtobuf);
    cfg.telemetry.ca_file = Some(dir.0.join("server.ext"));
    let err = Service::new("tls.test")
        .start(&cfg)
        .await
        .err()
        .expect("start fails");
    assert!(err.to_string().contains("server.ext"), "{err}");
}

/// The same trace into a real Jaeger (v2, built from the Go module proxy), over OTLP/HTTP and
/// OTLP/gRPC, read back from its query API: services, span names, kinds, parents, attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_a_real_jaeger_over_otlp_http_and_grpc() {
    use common::jaeger::{spans as jaeger_spans, Jaeger};
    use serde_json::Value;

    let jaeger = Jaeger::start().await;
    for (protocol, endpoint) in [
        (
            OtlpProtocol::HttpProtobuf,
            format!("{}/v1/traces", jaeger.otlp_http_endpoint()),
        ),
        (OtlpProtocol::Grpc, jaeger.otlp_grpc_endpoint()),
    ] {
        let nats = NatsServer::start();
        let cfg = traced(&nats, endpoint, protocol);
        let c = chain(&cfg).await;
        let res = get(c.trusted, "/hello.example/calculator?x=1&op=/&y=0").await;
        assert_eq!(res.status, 400, "{protocol:?}");
        let trace_id = res
            .text()
            .rsplit("{trace/")
            .next()
            .unwrap()
            .trim_end_matches('}')
            .to_owned();
        let port = c.trusted.port();
        c.stop().await; // flushes the exporters

        let trace = jaeger
            .trace(&trace_id, 5, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{protocol:?}: trace {trace_id} is in Jaeger"));
        let all = jaeger_spans(&trace);
        assert_eq!(all.len(), 5, "{protocol:?}");
        let find = |service: &str, name: &str| {
            all.iter()
                .find(|s| s.service == service && s.name() == name)
                .unwrap_or_else(|| panic!("{protocol:?}: {service} {name}"))
        };
        let root = find(
            "http.ingress.core",
            &format!(":{port}/hello.example/calculator"),
        );
        let to_hello = find("http.ingress.core", "GET hello.example:443/calculator");
        let hello = find("hello.example", ":443/calculator");
        let to_calc = find("hello.example", "GET calculator.example:443/arithmetic");
        let calc = find("calculator.example", ":443/arithmetic");
        assert_eq!(root.parent(), None);
        assert_eq!(to_hello.parent(), Some(root.id()));
        assert_eq!(hello.parent(), Some(to_hello.id()));
        assert_eq!(to_calc.parent(), Some(hello.id()));
        assert_eq!(calc.parent(), Some(to_calc.id()));
        for (span, kind) in [
            (root, "server"),
            (to_hello, "client"),
            (hello, "server"),
            (to_calc, "client"),
            (calc, "server"),
        ] {
            assert_eq!(span.tag("span.kind"), Some(&Value::from(kind)));
        }
        assert_eq!(
            calc.tag("http.response.status_code"),
            Some(&Value::from(400))
        );
        assert_eq!(calc.tag("error"), Some(&Value::from(true)));
        assert_eq!(calc.tag("http.route"), Some(&Value::from("/arithmetic")));
        assert_eq!(to_calc.tag("messaging.system"), Some(&Value::from("nats")));
        assert_eq!(root.tag("http.request.method"), Some(&Value::from("GET")));
        let process = &trace["processes"][calc.span["processID"].as_str().unwrap()];
        let namespace = process["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == "service.namespace")
            .map(|t| t["value"].clone());
        assert_eq!(namespace, Some(Value::from(cfg.plane.clone())));
    }
}
