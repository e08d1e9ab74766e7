//! Every metric name, label and span attribute key, fixed in one place so that code,
//! dashboards and alert rules cannot drift apart.

// Metrics of every service: the families, labels and buckets of the wire generation busgate
// speaks, so that Go Microbus services of that generation and busgate services share
// dashboards and alerts. A later generation swaps this one table.

/// The standard metrics of every service instance, as one Microbus generation names them.
#[derive(Debug, Clone, Copy)]
pub struct ServiceMetricNames {
    /// Handled bus requests: histogram by `handler`, `port`, `method`, `code`, `error`.
    pub response_duration: &'static str,
    /// Response body sizes, same labels.
    pub response_size: &'static str,
    /// Outgoing calls by result: counter by `method`, `host`, `port`, `code`, `error`.
    pub request_count: &'static str,
    /// Publish to first ack: histogram by `host`.
    pub ack_duration: &'static str,
    /// Lifecycle callbacks: histogram by `handler`, `error`.
    pub callback_duration: &'static str,
    /// Log lines: counter by `severity`, `message`.
    pub log_messages: &'static str,
    /// Seconds since start, a gauge set at each scrape.
    pub uptime: &'static str,
    /// Distributed-cache gauges (busgate has no such cache: they stay 0).
    pub cache_gauges: &'static [&'static str],
    pub latency_buckets: &'static [f64],
    pub size_buckets: &'static [f64],
    pub ack_buckets: &'static [f64],
}

/// Microbus fabric v1.7 (`connector/metrics.go`), reference §6.1. Some names do not pass
/// `promtool check metrics` (a gauge ending in `_total`): they are Go's, kept as they are.
pub const GEN1_METRICS: ServiceMetricNames = ServiceMetricNames {
    response_duration: "microbus_response_duration_seconds",
    response_size: "microbus_response_size_bytes",
    request_count: "microbus_request_count_total",
    ack_duration: "microbus_ack_duration_seconds",
    callback_duration: "microbus_callback_duration_seconds",
    log_messages: "microbus_log_messages_total",
    uptime: "microbus_uptime_duration_seconds_total",
    cache_gauges: &[
        "microbus_cache_hits_total",
        "microbus_cache_misses_total",
        "microbus_cache_weight_total",
        "microbus_cache_len_total",
    ],
    latency_buckets: &[
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0,
    ],
    size_buckets: &[16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0],
    ack_buckets: &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
};

/// The generation on busgate's wire, and so in its expositions.
pub const SERVICE_METRICS: &ServiceMetricNames = &GEN1_METRICS;

// busgate's own, finer than the generation's: outgoing call latency from 50 µs (Gen 1 has
// none), and the calls that ended in an ack timeout or a deadline.
pub const CLIENT_REQUEST_DURATION: &str = "busgate_client_request_duration_seconds";
pub const CLIENT_TIMEOUTS: &str = "busgate_client_timeout_requests_total";
/// Responses that arrived after their caller had given up (a counter, not a log line each:
/// a stuck downstream would otherwise flood the log).
pub const CLIENT_LATE_RESPONSES: &str = "busgate_client_late_responses_total";

// busgate's own, per connection and per process.
pub const NATS_CONNECTED: &str = "busgate_nats_connected";
pub const NATS_RECONNECTS: &str = "busgate_nats_reconnects_total";
pub const LABEL_OVERFLOWS: &str = "busgate_label_overflow_total";
/// Log lines outside any service (no `service` label).
pub const PROCESS_LOG_MESSAGES: &str = "busgate_process_log_messages_total";
/// Tasks alive on the process's tokio runtime: steady under steady load, or something leaks.
pub const RUNTIME_ALIVE_TASKS: &str = "busgate_runtime_alive_tasks";

// Spans and tracers.
/// Instrumentation scope of busgate's own spans (one per hop).
pub const OWN_TRACER_NAME: &str = "busgate";
/// Instrumentation scope of the spans handlers open with `tracing`.
pub const HANDLER_TRACER_NAME: &str = "busgate.handler";
/// The names of busgate's per-request log scopes, written as spans before the log lines inside
/// a request with the service, instance and trace id (`telemetry::log_scope`); real `tracing`
/// spans only when `RUST_LOG` selects spans, and never exported (the hop's own span is).
pub const SERVICE_LOG_SPAN: &str = "bus";
pub const INGRESS_LOG_SPAN: &str = "http";
/// The fields of those spans, recorded as `&str` and written bare (`host=calc.example`).
pub const LOG_SPAN_FIELDS: [&str; 3] = ["host", "id", "trace_id"];

// The HTTP ingress.
pub const INGRESS_REQUEST_DURATION: &str = "busgate_ingress_request_duration_seconds";
pub const INGRESS_IN_FLIGHT: &str = "busgate_ingress_requests_in_flight";
pub const INGRESS_OPEN_CONNECTIONS: &str = "busgate_ingress_open_connections";
/// Of those, the idle HTTP/1 keep-alive ones parked without their HTTP state
/// (`ingress::http::connection`).
pub const INGRESS_PARKED_CONNECTIONS: &str = "busgate_ingress_parked_connections";
pub const INGRESS_REQUEST_BODY: &str = "busgate_ingress_request_body_bytes";
pub const INGRESS_RESPONSE_BODY: &str = "busgate_ingress_response_body_bytes";

// The SMTP ingress.
/// Messages whose DATA ended (every outcome).
pub const SMTP_MESSAGES_RECEIVED: &str = "busgate_smtp_messages_received_total";
/// Messages answered `250` (delivered to the sinks).
pub const SMTP_MESSAGES_ACCEPTED: &str = "busgate_smtp_messages_accepted_total";
/// Messages answered `451` (the sender retries), by `reason`.
pub const SMTP_MESSAGES_DEFERRED: &str = "busgate_smtp_messages_deferred_total";
/// Messages refused for good (`552`, `554`), by `reason`.
pub const SMTP_MESSAGES_REJECTED: &str = "busgate_smtp_messages_rejected_total";
/// Protocol errors and refused connections (`421`, `500`, `503`, ...), by `reason`.
pub const SMTP_ERRORS: &str = "busgate_smtp_errors_total";
/// Size of the messages received.
pub const SMTP_MESSAGE_BYTES: &str = "busgate_smtp_message_bytes";
/// Time from connect to disconnect.
pub const SMTP_SESSION_DURATION: &str = "busgate_smtp_session_duration_seconds";
/// Sinks that answered the event of one message without error.
pub const SMTP_SINKS_REACHED: &str = "busgate_smtp_event_sinks_reached";
/// Client connections open.
pub const SMTP_OPEN_CONNECTIONS: &str = "busgate_smtp_open_connections";
/// busgate's per-session `tracing` span of the SMTP ingress.
pub const SMTP_LOG_SPAN: &str = "smtp";
/// `reason` label of the SMTP counters.
pub const L_REASON: &str = "reason";

// Labels. `service`, `ver` and `id` are on every series of a service.
pub const L_SERVICE: &str = "service";
pub const L_VERSION: &str = "ver";
pub const L_ID: &str = "id";
pub const L_HANDLER: &str = "handler";
pub const L_PORT: &str = "port";
pub const L_METHOD: &str = "method";
pub const L_CODE: &str = "code";
pub const L_ERROR: &str = "error";
pub const L_HOST: &str = "host";
pub const L_SEVERITY: &str = "severity";
pub const L_MESSAGE: &str = "message";
pub const L_ROUTE: &str = "route";
/// `route` of a request whose path names no valid bus host.
pub const ROUTE_INVALID: &str = "_invalid";
/// `route` of a request refused as a blocked (scanner) path.
pub const ROUTE_BLOCKED: &str = "_blocked";
pub const L_LABEL: &str = "label";

/// `error` label values.
pub const OK: &str = "OK";
pub const ERROR: &str = "ERROR";

/// The value a capped label takes once it has seen too many distinct values.
pub const OVERFLOW_VALUE: &str = "_other";

// Span attributes (OpenTelemetry semantic conventions, and ours under `microbus.`).

/// A span attribute key with its index in [`SPAN_ATTRIBUTES`], fixed at compile time: PROD's
/// packed spans store a key as that one byte without looking it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanKey {
    pub name: &'static str,
    pub index: u8,
}

impl SpanKey {
    /// [`SpanKey::index`] of keys not in [`SPAN_ATTRIBUTES`].
    pub const CUSTOM: u8 = u8::MAX;

    /// A key of the handler's own (stored by name).
    pub const fn custom(name: &'static str) -> SpanKey {
        SpanKey {
            name,
            index: SpanKey::CUSTOM,
        }
    }
}

impl From<SpanKey> for opentelemetry::Key {
    fn from(k: SpanKey) -> opentelemetry::Key {
        opentelemetry::Key::from_static_str(k.name)
    }
}

/// Numbers the keys in order and lists them in `SPAN_ATTRIBUTES`.
macro_rules! span_keys {
    ($($name:ident = $value:literal,)*) => {
        span_keys!(@each 0u8; $($name = $value,)*);
        /// Every span attribute key above, in index order.
        pub const SPAN_ATTRIBUTES: [&str; [$($value),*].len()] = [$($value),*];
    };
    (@each $i:expr; $name:ident = $value:literal, $($rest:ident = $rv:literal,)*) => {
        pub const $name: SpanKey = SpanKey { name: $value, index: $i };
        span_keys!(@each $i + 1; $($rest = $rv,)*);
    };
    (@each $i:expr;) => {};
}

span_keys! {
    A_HTTP_METHOD = "http.request.method",
    A_HTTP_ROUTE = "http.route",
    A_HTTP_STATUS = "http.response.status_code",
    A_HTTP_REQUEST_BODY_SIZE = "http.request.body.size",
    A_HTTP_RESPONSE_BODY_SIZE = "http.response.body.size",
    A_URL_PATH = "url.path",
    A_URL_QUERY = "url.query",
    A_URL_SCHEME = "url.scheme",
    A_SERVER_ADDRESS = "server.address",
    A_SERVER_PORT = "server.port",
    A_CLIENT_ADDRESS = "client.address",
    A_USER_AGENT = "user_agent.original",
    A_MESSAGING_SYSTEM = "messaging.system",
    A_MESSAGING_DESTINATION = "messaging.destination.name",
    A_MESSAGING_OPERATION = "messaging.operation.type",
    A_MESSAGING_MESSAGE_ID = "messaging.message.id",
    A_MESSAGING_BODY_SIZE = "messaging.message.body.size",
    A_ACK_LATENCY_MS = "microbus.ack.latency_ms",
    A_TIME_BUDGET_MS = "microbus.time_budget_ms",
    A_RESPONDERS = "microbus.responders",
    A_FROM_HOST = "microbus.from.host",
    A_FROM_ID = "microbus.from.id",
    A_CALL_DEPTH = "microbus.call_depth",
    A_EXCEPTION_TYPE = "exception.type",
    A_EXCEPTION_MESSAGE = "exception.message",
    A_EXCEPTION_STACKTRACE = "exception.stacktrace",
    A_CLIENT_PORT = "client.port",
    A_EMAIL_SUBJECT = "email.subject",
    A_EMAIL_FROM = "email.from",
    A_EMAIL_MESSAGE_ID = "email.message_id",
}

/// The messaging system attribute value.
pub const NATS: &str = "nats";
