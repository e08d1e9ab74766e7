//! The telemetry a request pays for, one hot path at a time, in nanoseconds per operation:
//! span start/end as PROD records it (tail buffer) and when nothing is exported, W3C
//! inject + extract, the metrics of one bus hop, and a request's log scope.
//!
//! Run: `cargo bench --bench hot_paths` (no network needed); writes
//! `benches/RESULTS-hot-paths.md`. Each figure is the median of 7 batches, measured in one run;
//! compare them with each other and with the per-request CPU time of `benches/telemetry.rs`,
//! not with figures from another machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use busgate::telemetry::log_scope::{LogOwner, RequestLog, ScopeKind};
use busgate::telemetry::metrics::{Outcome, ServiceMetrics};
use busgate::telemetry::names;
use busgate::telemetry::trace::{
    self, ServiceIdentity, ServiceTracer, SpanContext, SpanKind, SpanName, Status,
};
use busgate::telemetry::TelemetryConfig;
use busgate::Deployment;
use http::HeaderMap;

#[global_allocator]
static ALLOCATOR: busgate::allocator::Allocator = busgate::allocator::Allocator;

const BATCHES: usize = 7;
const ITERATIONS: u32 = 50_000;

thread_local! {
    static REPORT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Median nanoseconds per call of `op`.
fn measure(name: &str, mut op: impl FnMut()) -> f64 {
    for _ in 0..ITERATIONS / 10 {
        op();
    }
    let mut per_op: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..ITERATIONS {
                op();
            }
            t.elapsed().as_nanos() as f64 / ITERATIONS as f64
        })
        .collect();
    per_op.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = per_op[BATCHES / 2];
    println!("{name:<48} {median:>9.0} ns");
    REPORT.with(|r| {
        r.borrow_mut()
            .push_str(&format!("| {name} | {median:.0} |\n"))
    });
    median
}

fn tracer(deployment: Deployment, endpoint: Option<&str>) -> ServiceTracer {
    tracer_with(
        TelemetryConfig {
            // Nothing listens there: PROD exports nothing from plain fast traces, and the
            // exporter only connects when a batch is due.
            endpoint: endpoint.map(str::to_owned),
            ..TelemetryConfig::default()
        },
        deployment,
    )
}

fn tracer_with(config: TelemetryConfig, deployment: Deployment) -> ServiceTracer {
    ServiceTracer::new(
        &config,
        &ServiceIdentity {
            hostname: "calculator.example",
            plane: "bench",
            version: 1,
            id: "abcdef1234",
            deployment,
        },
    )
    .unwrap()
}

/// One span with attributes like a bus hop's SERVER span.
fn span(tracer: &ServiceTracer, parent: &SpanContext) -> SpanContext {
    let mut span = tracer.start(
        parent,
        SpanKind::Server,
        SpanName::Server {
            port: 443,
            path: "/arithmetic",
        },
        |a| {
            a.str(names::A_HTTP_METHOD, "GET");
            a.str(names::A_HTTP_ROUTE, "/arithmetic");
            a.str(names::A_URL_PATH, "/arithmetic");
            a.str(names::A_SERVER_ADDRESS, "calculator.example");
            a.int(names::A_SERVER_PORT, 443);
            a.str(names::A_MESSAGING_MESSAGE_ID, "a1b2c3d4e5");
        },
    );
    span.set_int(names::A_HTTP_STATUS, 200);
    span.set_status(Status::Ok);
    let cx = span.context().clone();
    tracer.end(span);
    cx
}

fn main() {
    println!("telemetry hot paths, ns per operation (median of {BATCHES} x {ITERATIONS})");
    let parent = span(&tracer(Deployment::Local, None), &SpanContext::NONE);

    let unrecorded = tracer(Deployment::Local, None);
    measure("span start+end, nothing to export", || {
        black_box(span(&unrecorded, &parent));
    });
    let prod = tracer(Deployment::Prod, Some("http://127.0.0.1:9/v1/traces"));
    measure("span start+end, PROD tail buffer", || {
        black_box(span(&prod, &parent));
    });
    let off = tracer_with(
        TelemetryConfig {
            enabled: false,
            ..TelemetryConfig::default()
        },
        Deployment::Prod,
    );
    measure("span start+end, telemetry off", || {
        black_box(span(&off, &parent));
    });

    let mut headers = HeaderMap::new();
    measure("traceparent inject + extract", || {
        trace::inject(&parent, &mut headers);
        black_box(trace::extract(&headers));
    });
    measure("trace id as hex (log field, error page)", || {
        black_box(trace::trace_id(&parent));
    });

    let metrics = ServiceMetrics::new("calculator.example", 1, "abcdef1234");
    let outcome = Outcome {
        code: 200,
        failed: false,
        elapsed: Duration::from_micros(80),
    };
    let observe_server = || {
        metrics.observe_server(
            1,
            || "calculator.example:443/arithmetic".into(),
            443,
            "GET",
            outcome,
            42,
        )
    };
    measure("metrics of one hop (server, client, ack)", || {
        observe_server();
        metrics.observe_client("calculator.example", 443, "GET", outcome, false);
        metrics.observe_ack("calculator.example", Duration::from_micros(30));
    });

    measure("  of which ack (1 capped label)", || {
        metrics.observe_ack("calculator.example", Duration::from_micros(30));
    });
    measure("  of which server (2 histograms)", observe_server);
    let h = prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new("ack", "A shared histogram.")
            .buckets(busgate::telemetry::metrics::ACK_BUCKETS.to_vec()),
    )
    .expect("valid histogram");
    measure("  shared histogram observe alone", || {
        h.observe(0.00003);
    });
    measure("  capped alone", || {
        black_box(metrics.capped("host", "calculator.example"));
    });
    busgate::telemetry::logs::init(Deployment::Prod);
    let owner = std::sync::Arc::new(LogOwner {
        host: "calculator.example".into(),
        id: "abcdef1234".into(),
        metrics: metrics.clone(),
    });
    measure("request log scope (JSON, nothing logged)", || {
        let log = RequestLog::open(ScopeKind::Service, &owner, parent.trace_id());
        log.in_scope(|| black_box(&log));
    });
    measure(
        "  a tracing span instead (what a span-selecting RUST_LOG gets)",
        || {
            let span = tracing::error_span!(
                "bus",
                host = %"calculator.example",
                id = %"abcdef1234",
                trace_id = %trace::trace_id(&parent),
            );
            black_box(span);
        },
    );

    let table = REPORT.with(|r| r.borrow().clone());
    let report = format!(
        "# Telemetry hot paths\n\nMeasured by `cargo bench --bench hot_paths` ({BATCHES} batches of \
{ITERATIONS} operations, medians, one run). Nanoseconds per operation on this shared 2-core machine: \
compare the rows with each other.\n\n| operation | ns |\n|---|---|\n{table}"
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/RESULTS-hot-paths.md");
    std::fs::write(path, report).unwrap();
    println!("written to {path}");
}
