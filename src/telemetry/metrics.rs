//! Prometheus metrics: one registry per service instance with `service`, `ver` and `id` on
//! every series, low-cardinality labels only, and one exposition for the whole process.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use super::names::*;

/// Latency buckets in seconds: a bus hop takes tens of microseconds, a slow call a minute.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Ack round trips: microseconds on a healthy bus, 250 ms is the ack timeout.
pub const ACK_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// Body sizes in bytes, up to the 16 MB that fragmentation carries comfortably.
pub const BODY_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// Distinct values a label fed from outside (hosts, log messages, routes) may take per
/// registry; later ones are counted as [`OVERFLOW_VALUE`].
pub const MAX_LABEL_VALUES: usize = 100;

type ConstLabels = HashMap<String, String>;

// Identity labels go into each metric's own options (not the registry's) so that the
// exposition lists all labels in alphabetical order, as Microbus does.
fn histogram(
    c: &ConstLabels,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help)
            .const_labels(c.clone())
            .buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid histogram definition")
}

fn counter(c: &ConstLabels, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help).const_labels(c.clone()), labels)
        .expect("valid counter definition")
}

fn opts(c: &ConstLabels, name: &str, help: &str) -> Opts {
    Opts::new(name, help).const_labels(c.clone())
}

fn register(registry: &Registry, c: impl Collector + Clone + 'static) -> Box<dyn Collector> {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique per registry");
    Box::new(c)
}

/// How a request or call ended, for the duration histograms.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub code: u16,
    pub failed: bool,
    pub elapsed: Duration,
}

/// The metrics of one service instance.
pub struct ServiceMetrics {
    /// False when telemetry is off: observations are skipped.
    enabled: std::sync::atomic::AtomicBool,
    pub registry: Registry,
    /// `service`, `ver`, `id`: put them on custom metrics too.
    pub const_labels: HashMap<String, String>,
    pub instance_id: String,
    started: Instant,
    pub server_duration: HistogramVec,
    pub server_body: HistogramVec,
    pub client_duration: HistogramVec,
    pub client_ack: HistogramVec,
    pub client_timeouts: IntCounterVec,
    pub callback_duration: HistogramVec,
    pub log_messages: IntCounterVec,
    uptime: Gauge,
    nats_connected: IntGauge,
    nats_reconnects: IntCounter,
    overflows: IntCounterVec,
    seen: std::sync::RwLock<HashMap<&'static str, HashSet<Arc<str>>>>,
}

impl ServiceMetrics {
    pub fn new(service: &str, version: u32, id: &str) -> Arc<ServiceMetrics> {
        let labels: HashMap<String, String> = [
            (L_SERVICE.to_owned(), service.to_owned()),
            (L_VERSION.to_owned(), version.to_string()),
            (L_ID.to_owned(), id.to_owned()),
        ]
        .into();
        let c = &labels;
        let registry = Registry::new();
        let server_labels = [L_HANDLER, L_PORT, L_METHOD, L_CODE, L_ERROR];
        let client_labels = [L_HOST, L_PORT, L_METHOD, L_CODE, L_ERROR];
        let m = ServiceMetrics {
            enabled: std::sync::atomic::AtomicBool::new(true),
            instance_id: id.to_owned(),
            started: Instant::now(),
            server_duration: histogram(
                c,
                SERVER_REQUEST_DURATION,
                "Time to handle a bus request, by route and outcome.",
                &server_labels,
                LATENCY_BUCKETS,
            ),
            server_body: histogram(
                c,
                SERVER_RESPONSE_BODY,
                "Size of response bodies sent on the bus.",
                &server_labels,
                BODY_BUCKETS,
            ),
            client_duration: histogram(
                c,
                CLIENT_REQUEST_DURATION,
                "Time of outgoing bus calls until the response, by target and outcome.",
                &client_labels,
                LATENCY_BUCKETS,
            ),
            client_ack: histogram(
                c,
                CLIENT_ACK_LATENCY,
                "Time from publishing a request to its first ack.",
                &[L_HOST],
                ACK_BUCKETS,
            ),
            client_timeouts: counter(
                c,
                CLIENT_TIMEOUTS,
                "Outgoing calls that ended in an ack timeout or a deadline.",
                &[L_HOST, L_PORT, L_METHOD],
            ),
            callback_duration: histogram(
                c,
                CALLBACK_DURATION,
                "Time of lifecycle callbacks (startup, shutdown).",
                &[L_HANDLER, L_ERROR],
                LATENCY_BUCKETS,
            ),
            log_messages: counter(
                c,
                LOG_MESSAGES,
                "Log lines, by severity and message.",
                &[L_SEVERITY, L_MESSAGE],
            ),
            uptime: Gauge::with_opts(opts(c, UPTIME, "Seconds since the instance started."))
                .expect("valid gauge"),
            nats_connected: IntGauge::with_opts(opts(
                c,
                NATS_CONNECTED,
                "1 while the instance's bus connection is up.",
            ))
            .expect("valid gauge"),
            nats_reconnects: IntCounter::with_opts(opts(
                c,
                NATS_RECONNECTS,
                "Times the bus connection was re-established.",
            ))
            .expect("valid counter"),
            overflows: counter(
                c,
                LABEL_OVERFLOWS,
                "Label values replaced by _other because a label had too many distinct values.",
                &[L_LABEL],
            ),
            seen: std::sync::RwLock::new(HashMap::new()),
            const_labels: labels.clone(),
            registry,
        };
        register(&m.registry, m.server_duration.clone());
        register(&m.registry, m.server_body.clone());
        register(&m.registry, m.client_duration.clone());
        register(&m.registry, m.client_ack.clone());
        register(&m.registry, m.client_timeouts.clone());
        register(&m.registry, m.callback_duration.clone());
        register(&m.registry, m.log_messages.clone());
        register(&m.registry, m.uptime.clone());
        register(&m.registry, m.nats_connected.clone());
        register(&m.registry, m.nats_reconnects.clone());
        register(&m.registry, m.overflows.clone());
        let m = Arc::new(m);
        let mut live = live().lock().expect("live lock");
        live.retain(|_, w| w.strong_count() > 0);
        live.insert(id.to_owned(), Arc::downgrade(&m));
        drop(live);
        m
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// `value`, or [`OVERFLOW_VALUE`] once `label` has seen [`MAX_LABEL_VALUES`] others.
    /// A value seen before costs a read lock and no allocation.
    pub fn capped(&self, label: &'static str, value: &str) -> Arc<str> {
        if let Some(known) = self
            .seen
            .read()
            .expect("seen lock")
            .get(label)
            .and_then(|values| values.get(value))
        {
            return known.clone();
        }
        let mut seen = self.seen.write().expect("seen lock");
        let values = seen.entry(label).or_default();
        if let Some(known) = values.get(value) {
            return known.clone();
        }
        if values.len() < MAX_LABEL_VALUES {
            let v: Arc<str> = Arc::from(value);
            values.insert(v.clone());
            return v;
        }
        drop(seen);
        self.overflows.with_label_values(&[label]).inc();
        Arc::from(OVERFLOW_VALUE)
    }

    pub fn observe_server(
        &self,
        handler: &str,
        port: u16,
        method: &str,
        outcome: Outcome,
        body: usize,
    ) {
        if !self.enabled() {
            return;
        }
        let method = self.capped(L_METHOD, method);
        let (mut port_buf, mut code_buf) = (itoa::Buffer::new(), itoa::Buffer::new());
        let labels = [
            handler,
            port_buf.format(port),
            &method,
            code_buf.format(outcome.code),
            if outcome.failed { ERROR } else { OK },
        ];
        self.server_duration
            .with_label_values(&labels)
            .observe(outcome.elapsed.as_secs_f64());
        self.server_body
            .with_label_values(&labels)
            .observe(body as f64);
    }

    pub fn observe_client(&self, host: &str, port: u16, method: &str, outcome: Outcome) {
        if !self.enabled() {
            return;
        }
        let host = self.capped(L_HOST, host);
        let method = self.capped(L_METHOD, method);
        let (mut port_buf, mut code_buf) = (itoa::Buffer::new(), itoa::Buffer::new());
        self.client_duration
            .with_label_values(&[
                &*host,
                port_buf.format(port),
                &method,
                code_buf.format(outcome.code),
                if outcome.failed { ERROR } else { OK },
            ])
            .observe(outcome.elapsed.as_secs_f64());
    }

    pub fn observe_ack(&self, host: &str, elapsed: Duration) {
        if !self.enabled() {
            return;
        }
        let host = self.capped(L_HOST, host);
        self.client_ack
            .with_label_values(&[&host])
            .observe(elapsed.as_secs_f64());
    }

    pub fn count_timeout(&self, host: &str, port: u16, method: &str) {
        if !self.enabled() {
            return;
        }
        let host = self.capped(L_HOST, host);
        let method = self.capped(L_METHOD, method);
        self.client_timeouts
            .with_label_values(&[&*host, itoa::Buffer::new().format(port), &method])
            .inc();
    }

    pub fn observe_callback(&self, name: &str, failed: bool, elapsed: Duration) {
        if !self.enabled() {
            return;
        }
        self.callback_duration
            .with_label_values(&[name, if failed { ERROR } else { OK }])
            .observe(elapsed.as_secs_f64());
    }

    pub fn count_log(&self, severity: &str, message: &str) {
        if !self.enabled() {
            return;
        }
        let message: String = message.chars().take(128).collect();
        let message = self.capped(L_MESSAGE, &message);
        self.log_messages
            .with_label_values(&[severity, &message])
            .inc();
    }

    /// Refresh the gauges that are read at scrape time.
    pub fn refresh(&self, connected: bool, reconnects: u64) {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        self.nats_connected.set(connected as i64);
        let counted = self.nats_reconnects.get();
        if reconnects > counted {
            self.nats_reconnects.inc_by(reconnects - counted);
        }
    }

    /// This registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        encode_families(self.registry.gather())
    }
}

fn encode_families(families: Vec<prometheus::proto::MetricFamily>) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding of gathered metrics");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Metrics of the HTTP ingress, in the ingress connector's registry.
pub struct IngressMetrics {
    pub duration: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub request_body: HistogramVec,
    pub response_body: HistogramVec,
}

impl IngressMetrics {
    pub fn register(service: &ServiceMetrics) -> IngressMetrics {
        let c = &service.const_labels;
        let m = IngressMetrics {
            duration: histogram(c, INGRESS_REQUEST_DURATION, "Time from request to response at the HTTP ingress, by listener, target and status.", &[L_PORT, L_ROUTE, L_METHOD, L_CODE], LATENCY_BUCKETS),
            in_flight: IntGaugeVec::new(opts(c, INGRESS_IN_FLIGHT, "HTTP requests being served, by listener."), &[L_PORT]).expect("valid gauge"),
            request_body: histogram(c, INGRESS_REQUEST_BODY, "Size of request bodies received by the HTTP ingress.", &[L_PORT], BODY_BUCKETS),
            response_body: histogram(c, INGRESS_RESPONSE_BODY, "Size of response bodies sent by the HTTP ingress.", &[L_PORT], BODY_BUCKETS),
        };
        register(&service.registry, m.duration.clone());
        register(&service.registry, m.in_flight.clone());
        register(&service.registry, m.request_body.clone());
        register(&service.registry, m.response_body.clone());
        m
    }
}

/// Live instances by id: log lines find their service's counters here.
fn live() -> &'static Mutex<HashMap<String, Weak<ServiceMetrics>>> {
    static LIVE: OnceLock<Mutex<HashMap<String, Weak<ServiceMetrics>>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The registry of the process itself: process metrics and log lines outside any service.
pub fn process_registry() -> &'static Registry {
    static PROCESS: OnceLock<Registry> = OnceLock::new();
    PROCESS.get_or_init(|| {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector registers once");
        r
    })
}

/// The metrics of a live service instance by its id.
pub fn live_service(id: &str) -> Option<Arc<ServiceMetrics>> {
    live()
        .lock()
        .expect("live lock")
        .get(id)
        .and_then(Weak::upgrade)
}

/// One exposition for the process: process metrics, log lines outside services, and the
/// given services, each family once.
pub fn gather(services: &[Arc<ServiceMetrics>]) -> String {
    let mut merged: Vec<prometheus::proto::MetricFamily> = process_registry().gather();
    let process_logs = super::logs::process_metrics();
    for svc in std::iter::once(&process_logs).chain(services) {
        for mut family in svc.registry.gather() {
            match merged.iter_mut().find(|f| f.name() == family.name()) {
                Some(existing) => existing.mut_metric().extend(family.take_metric()),
                None => merged.push(family),
            }
        }
    }
    merged.sort_by(|a, b| a.name().cmp(b.name()));
    encode_families(merged)
}

/// The content type of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request's `Accept-Encoding` allows gzip.
pub fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// An exposition as an HTTP response, gzipped when the scraper accepts it.
pub fn exposition_response(text: String, gzip: bool) -> http::Response<bytes::Bytes> {
    use std::io::Write;
    let mut res = http::Response::new(bytes::Bytes::new());
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(TEXT_CONTENT_TYPE),
    );
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(text.len() / 4),
            flate2::Compression::fast(),
        );
        if enc.write_all(text.as_bytes()).is_ok() {
            if let Ok(zipped) = enc.finish() {
                res.headers_mut().insert(
                    http::header::CONTENT_ENCODING,
                    http::HeaderValue::from_static("gzip"),
                );
                *res.body_mut() = bytes::Bytes::from(zipped);
                return res;
            }
        }
    }
    *res.body_mut() = bytes::Bytes::from(text);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_carries_service_labels() {
        let m = ServiceMetrics::new("unit.test", 3, "abc123");
        m.observe_server(
            "unit.test:443/x",
            443,
            "GET",
            Outcome {
                code: 200,
                failed: false,
                elapsed: Duration::from_micros(40),
            },
            10,
        );
        m.refresh(true, 0);
        let text = m.encode();
        assert!(text.contains(
            r#"microbus_server_request_duration_seconds_bucket{code="200",error="OK",handler="unit.test:443/x",id="abc123",method="GET",port="443",service="unit.test",ver="3",le="0.00005"} 1"#
        ), "{text}");
        assert!(
            text.contains(r#"busgate_nats_connected{id="abc123",service="unit.test",ver="3"} 1"#)
        );
        assert!(live_service("abc123").is_some());
    }

    #[test]
    fn outside_labels_are_capped() {
        let m = ServiceMetrics::new("cap.test", 0, "cap1");
        for i in 0..MAX_LABEL_VALUES + 10 {
            m.observe_ack(&format!("h{i}.example"), Duration::from_millis(1));
        }
        let text = m.encode();
        assert!(text.contains(r#"host="_other""#));
        assert!(text.contains(r#"busgate_label_overflow_total{id="cap1",label="host",service="cap.test",ver="0"} 10"#), "{text}");
    }
}
