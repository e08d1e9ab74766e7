//! Prometheus metrics: one registry per service instance with `service`, `ver` and `id` on
//! every series, low-cardinality labels only, and one exposition for the whole process.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

use fnv::FnvBuildHasher;

pub use super::metric_handles::{
    Buffered, BufferedCache, Flushed, HandleCache, MAX_CACHED_HANDLES,
};
use super::names::*;

/// The distinct values of one capped label.
type InternedValues = HashSet<Arc<str>, FnvBuildHasher>;

/// A label value: a fixed one, or one interned by [`ServiceMetrics::capped`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    Static(&'static str),
    Shared(Arc<str>),
}

impl AsRef<str> for Label {
    fn as_ref(&self) -> &str {
        self
    }
}

impl std::ops::Deref for Label {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Label::Static(s) => s,
            Label::Shared(s) => s,
        }
    }
}

/// A label value's identity: interned values and constants keep their address for the life of
/// the registry, so the address stands for the text.
pub(crate) fn label_id(label: &Label) -> usize {
    label.as_ptr() as usize
}

/// Status code and error flag in one word.
fn outcome_id(outcome: &Outcome) -> usize {
    (outcome.code as usize) << 1 | outcome.failed as usize
}

/// The methods of RFC 9110 (and PATCH): a closed set, never capped.
pub(crate) fn standard_method(m: &str) -> Option<&'static str> {
    Some(match m {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => return None,
    })
}

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
pub(crate) fn histogram(
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

pub(crate) fn counter(c: &ConstLabels, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help).const_labels(c.clone()), labels)
        .expect("valid counter definition")
}

pub(crate) fn opts(c: &ConstLabels, name: &str, help: &str) -> Opts {
    Opts::new(name, help).const_labels(c.clone())
}

pub(crate) fn register(
    registry: &Registry,
    c: impl Collector + Clone + 'static,
) -> Box<dyn Collector> {
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
    // Observed through each thread's buffer, registered `Flushed` (see `BufferedCache`): read
    // them through the registry.
    server_duration: HistogramVec,
    server_body: HistogramVec,
    client_duration: HistogramVec,
    /// The generation's count of outgoing calls by result.
    client_requests: IntCounterVec,
    client_ack: HistogramVec,
    pub client_timeouts: IntCounterVec,
    pub client_late_responses: IntCounter,
    pub callback_duration: HistogramVec,
    pub log_messages: IntCounterVec,
    uptime: Gauge,
    /// The generation's distributed-cache gauges: registered, always 0 (no such cache here).
    _cache: Vec<Gauge>,
    nats_connected: IntGauge,
    nats_reconnects: IntCounter,
    /// The NATS series are registered on the first scrape of an instance on NATS: on the
    /// in-process bus there is no connection to report.
    nats_registered: std::sync::Once,
    overflows: IntCounterVec,
    server_handles: Arc<BufferedCache<[usize; 4], (Histogram, Histogram)>>,
    client_handles: Arc<BufferedCache<[usize; 4], (Histogram, IntCounter)>>,
    ack_handles: Arc<BufferedCache<usize, Histogram>>,
    /// Values seen per capped label (a handful of labels: a list beats a map).
    seen: std::sync::RwLock<Vec<(&'static str, InternedValues)>>,
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
        let names = SERVICE_METRICS;
        let cache: Vec<Gauge> = names
            .cache_gauges
            .iter()
            .map(|name| {
                Gauge::with_opts(opts(
                    c,
                    name,
                    "Distributed cache (none in busgate: always 0).",
                ))
                .expect("valid gauge")
            })
            .collect();
        let m = ServiceMetrics {
            enabled: std::sync::atomic::AtomicBool::new(true),
            instance_id: id.to_owned(),
            started: Instant::now(),
            server_duration: histogram(
                c,
                names.response_duration,
                "Time to handle a bus request, by route and outcome.",
                &server_labels,
                names.latency_buckets,
            ),
            server_body: histogram(
                c,
                names.response_size,
                "Size of response bodies sent on the bus.",
                &server_labels,
                names.size_buckets,
            ),
            client_duration: histogram(
                c,
                CLIENT_REQUEST_DURATION,
                "Time of outgoing bus calls until the response, by target and outcome.",
                &client_labels,
                LATENCY_BUCKETS,
            ),
            client_requests: counter(
                c,
                names.request_count,
                "Outgoing bus calls by target and result.",
                &client_labels,
            ),
            client_ack: histogram(
                c,
                names.ack_duration,
                "Time from publishing a request to its first ack.",
                &[L_HOST],
                names.ack_buckets,
            ),
            client_timeouts: counter(
                c,
                CLIENT_TIMEOUTS,
                "Outgoing calls that ended in an ack timeout or a deadline.",
                &[L_HOST, L_PORT, L_METHOD],
            ),
            client_late_responses: IntCounter::with_opts(opts(
                c,
                CLIENT_LATE_RESPONSES,
                "Responses that arrived after their caller had given up, dropped.",
            ))
            .expect("valid counter"),
            callback_duration: histogram(
                c,
                names.callback_duration,
                "Time of lifecycle callbacks (startup, shutdown).",
                &[L_HANDLER, L_ERROR],
                names.latency_buckets,
            ),
            log_messages: counter(
                c,
                names.log_messages,
                "Log lines, by severity and message.",
                &[L_SEVERITY, L_MESSAGE],
            ),
            uptime: Gauge::with_opts(opts(c, names.uptime, "Seconds since the instance started."))
                .expect("valid gauge"),
            _cache: cache.clone(),
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
            nats_registered: std::sync::Once::new(),
            seen: std::sync::RwLock::new(Vec::new()),
            server_handles: Arc::default(),
            client_handles: Arc::default(),
            ack_handles: Arc::default(),
            const_labels: labels.clone(),
            registry,
        };
        let (server, client) = (m.server_handles.clone(), m.client_handles.clone());
        register(
            &m.registry,
            Flushed::new(m.server_duration.clone(), server.clone()),
        );
        register(&m.registry, Flushed::new(m.server_body.clone(), server));
        register(
            &m.registry,
            Flushed::new(m.client_duration.clone(), client.clone()),
        );
        register(&m.registry, Flushed::new(m.client_requests.clone(), client));
        register(
            &m.registry,
            Flushed::new(m.client_ack.clone(), m.ack_handles.clone()),
        );
        for g in cache {
            register(&m.registry, g);
        }
        register(&m.registry, m.client_timeouts.clone());
        register(&m.registry, m.client_late_responses.clone());
        register(&m.registry, m.callback_duration.clone());
        register(&m.registry, m.log_messages.clone());
        register(&m.registry, m.uptime.clone());
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
    /// Standard HTTP methods pass as they are; a value seen before costs a read lock, one FNV
    /// hash and no allocation (this runs several times per request).
    pub fn capped(&self, label: &'static str, value: &str) -> Label {
        if label == L_METHOD {
            if let Some(m) = standard_method(value) {
                return Label::Static(m);
            }
        }
        if let Some(known) = self
            .seen
            .read()
            .expect("seen lock")
            .iter()
            .find(|(l, _)| *l == label)
            .and_then(|(_, values)| values.get(value))
        {
            return Label::Shared(known.clone());
        }
        let mut seen = self.seen.write().expect("seen lock");
        let at = match seen.iter().position(|(l, _)| *l == label) {
            Some(at) => at,
            None => {
                seen.push((label, Default::default()));
                seen.len() - 1
            }
        };
        let values = &mut seen[at].1;
        if let Some(known) = values.get(value) {
            return Label::Shared(known.clone());
        }
        if values.len() < MAX_LABEL_VALUES {
            let v: Arc<str> = Arc::from(value);
            values.insert(v.clone());
            return Label::Shared(v);
        }
        drop(seen);
        self.overflows.with_label_values(&[label]).inc();
        Label::Static(OVERFLOW_VALUE)
    }

    /// A handled bus request. `route` identifies the endpoint for the life of the service
    /// (its address); `handler` names it and is only called the first time a label set is seen.
    pub fn observe_server(
        &self,
        route: usize,
        handler: impl FnOnce() -> String,
        port: u16,
        method: &str,
        outcome: Outcome,
        body: usize,
    ) {
        if !self.enabled() {
            return;
        }
        let method = self.capped(L_METHOD, method);
        let key = [
            route,
            port as usize,
            label_id(&method),
            outcome_id(&outcome),
        ];
        let resolve = || {
            let handler = handler();
            let (mut port_buf, mut code_buf) = (itoa::Buffer::new(), itoa::Buffer::new());
            let labels = [
                handler.as_str(),
                port_buf.format(port),
                &method,
                code_buf.format(outcome.code),
                if outcome.failed { ERROR } else { OK },
            ];
            (
                self.server_duration.with_label_values(&labels),
                self.server_body.with_label_values(&labels),
            )
        };
        self.server_handles
            .observe(key, resolve, |(duration, body_size)| {
                duration.observe(outcome.elapsed.as_secs_f64());
                body_size.observe(body as f64);
            });
    }

    /// An outgoing call: busgate's latency histogram and the generation's request counter,
    /// resolved together. Go v1.7 counts an ack timeout as `404`, a deadline as `408` and an
    /// `Err` 404 all with `error="OK"`: `counted_as_error` says what Go would say.
    pub fn observe_client(
        &self,
        host: &str,
        port: u16,
        method: &str,
        outcome: Outcome,
        counted_as_error: bool,
    ) {
        if !self.enabled() {
            return;
        }
        let host = self.capped(L_HOST, host);
        let method = self.capped(L_METHOD, method);
        let key = [
            label_id(&host),
            port as usize,
            label_id(&method),
            outcome_id(&outcome) << 1 | counted_as_error as usize,
        ];
        let resolve = || {
            let (mut port_buf, mut code_buf) = (itoa::Buffer::new(), itoa::Buffer::new());
            let (port, code) = (port_buf.format(port), code_buf.format(outcome.code));
            (
                self.client_duration.with_label_values(&[
                    &*host,
                    port,
                    &method,
                    code,
                    if outcome.failed { ERROR } else { OK },
                ]),
                self.client_requests.with_label_values(&[
                    &*host,
                    port,
                    &method,
                    code,
                    if counted_as_error { ERROR } else { OK },
                ]),
            )
        };
        self.client_handles
            .observe(key, resolve, |(duration, count)| {
                duration.observe(outcome.elapsed.as_secs_f64());
                count.inc();
            });
    }

    pub fn observe_ack(&self, host: &str, elapsed: Duration) {
        if !self.enabled() {
            return;
        }
        let host = self.capped(L_HOST, host);
        self.ack_handles.observe(
            label_id(&host),
            || self.client_ack.with_label_values(&[&host]),
            |ack| ack.observe(elapsed.as_secs_f64()),
        );
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

    pub fn count_late_response(&self) {
        if self.enabled() {
            self.client_late_responses.inc();
        }
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

    /// Refresh the gauges that are read at scrape time; `nats` is the connection's state and
    /// reconnect count ([`crate::transport::Bus::nats_connection`]), `None` on the in-process bus.
    pub fn refresh(&self, nats: Option<(bool, u64)>) {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let Some((connected, reconnects)) = nats else {
            return;
        };
        self.nats_registered.call_once(|| {
            register(&self.registry, self.nats_connected.clone());
            register(&self.registry, self.nats_reconnects.clone());
        });
        self.nats_connected.set(connected as i64);
        let counted = self.nats_reconnects.get();
        if reconnects > counted {
            self.nats_reconnects.inc_by(reconnects - counted);
        }
    }

    /// This registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        crate::telemetry::exposition::encode_families(self.registry.gather())
    }
}

/// Live instances by id: log lines find their service's counters here.
/// Looked up for every log span; keys are this process's own instance ids.
type LiveServices = Mutex<HashMap<String, Weak<ServiceMetrics>, FnvBuildHasher>>;

fn live() -> &'static LiveServices {
    static LIVE: OnceLock<LiveServices> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashMap::default()))
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
        let tasks = IntGauge::new(
            RUNTIME_ALIVE_TASKS,
            "Tasks alive on the tokio runtime of the process.",
        )
        .expect("valid gauge");
        r.register(Box::new(RuntimeTasks(tasks)))
            .expect("the runtime gauge registers once");
        r
    })
}

/// Read at each scrape from the runtime the scrape runs on (the process has one).
struct RuntimeTasks(IntGauge);

impl Collector for RuntimeTasks {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.0.set(runtime.metrics().num_alive_tasks() as i64);
        }
        self.0.collect()
    }
}

/// The metrics of a live service instance by its id.
pub fn live_service(id: &str) -> Option<Arc<ServiceMetrics>> {
    live()
        .lock()
        .expect("live lock")
        .get(id)
        .and_then(Weak::upgrade)
}

/// Log lines written outside any service (process start, listeners), in the process registry:
/// they carry no `service` label rather than a made-up one.
pub struct ProcessLogs {
    lines: IntCounterVec,
    messages: Mutex<std::collections::HashSet<String>>,
}

impl ProcessLogs {
    pub fn get() -> &'static ProcessLogs {
        static LOGS: OnceLock<ProcessLogs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let lines = IntCounterVec::new(
                prometheus::Opts::new(
                    PROCESS_LOG_MESSAGES,
                    "Log lines written outside any service, by severity and message.",
                ),
                &[L_SEVERITY, L_MESSAGE],
            )
            .expect("valid counter");
            register(process_registry(), lines.clone());
            ProcessLogs {
                lines,
                messages: Mutex::new(std::collections::HashSet::new()),
            }
        })
    }

    pub fn count(&self, severity: &str, message: &str) {
        let message: String = message.chars().take(128).collect();
        let label = {
            let mut seen = self.messages.lock().expect("process log labels");
            if seen.contains(&message) || seen.len() < MAX_LABEL_VALUES {
                seen.insert(message.clone());
                message
            } else {
                OVERFLOW_VALUE.to_owned()
            }
        };
        self.lines.with_label_values(&[severity, &label]).inc();
    }
}

/// One exposition for the process: process metrics, log lines outside services, and the
/// given services, each family once.
pub fn gather(services: &[Arc<ServiceMetrics>]) -> String {
    ProcessLogs::get();
    let mut merged: Vec<prometheus::proto::MetricFamily> = process_registry().gather();
    for svc in services {
        for mut family in svc.registry.gather() {
            match merged.iter_mut().find(|f| f.name() == family.name()) {
                Some(existing) => existing.mut_metric().extend(family.take_metric()),
                None => merged.push(family),
            }
        }
    }
    merged.sort_by(|a, b| a.name().cmp(b.name()));
    crate::telemetry::exposition::encode_families(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_carries_service_labels() {
        let m = ServiceMetrics::new("unit.test", 3, "abc123");
        let ok = Outcome {
            code: 200,
            failed: false,
            elapsed: Duration::from_micros(40),
        };
        let failed = Outcome {
            code: 500,
            failed: true,
            ..ok
        };
        // Cached handles keep every label set apart: outcome, port (with its handler name) and
        // method.
        for (outcome, port, method) in [
            (ok, 443, "GET"),
            (ok, 443, "GET"),
            (failed, 443, "GET"),
            (ok, 444, "GET"),
            (ok, 443, "POST"),
        ] {
            m.observe_server(
                7,
                || format!("unit.test:{port}/x"),
                port,
                method,
                outcome,
                10,
            );
        }
        m.refresh(Some((true, 0)));
        let text = m.encode();
        for (series, count) in [
            (
                r#"code="200",error="OK",handler="unit.test:443/x",id="abc123",method="GET",port="443""#,
                2,
            ),
            (
                r#"code="500",error="ERROR",handler="unit.test:443/x",id="abc123",method="GET",port="443""#,
                1,
            ),
            (
                r#"code="200",error="OK",handler="unit.test:444/x",id="abc123",method="GET",port="444""#,
                1,
            ),
            (
                r#"code="200",error="OK",handler="unit.test:443/x",id="abc123",method="POST",port="443""#,
                1,
            ),
        ] {
            let line = format!("microbus_response_duration_seconds_count{{{series},service=\"unit.test\",ver=\"3\"}} {count}");
            assert!(text.contains(&line), "{line}\n{text}");
        }
        assert!(text.contains(
            r#"microbus_response_duration_seconds_bucket{code="200",error="OK",handler="unit.test:443/x",id="abc123",method="GET",port="443",service="unit.test",ver="3",le="0.005"} 2"#
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
