//! Every metric name, label and span attribute key, fixed in one place so that code,
//! dashboards and alert rules cannot drift apart.

// Metrics of every service (Microbus Gen 2 names; they pass `promtool check metrics`).
pub const SERVER_REQUEST_DURATION: &str = "microbus_server_request_duration_seconds";
pub const SERVER_RESPONSE_BODY: &str = "microbus_server_response_body_bytes";
pub const CLIENT_REQUEST_DURATION: &str = "microbus_client_request_duration_seconds";
pub const CLIENT_ACK_LATENCY: &str = "microbus_client_ack_roundtrip_latency_seconds";
pub const CLIENT_TIMEOUTS: &str = "microbus_client_timeout_requests_total";
pub const CALLBACK_DURATION: &str = "microbus_callback_duration_seconds";
pub const LOG_MESSAGES: &str = "microbus_log_messages_total";
pub const UPTIME: &str = "microbus_uptime_duration_seconds";

// busgate's own, per connection and per process.
pub const NATS_CONNECTED: &str = "busgate_nats_connected";
pub const NATS_RECONNECTS: &str = "busgate_nats_reconnects_total";
pub const LABEL_OVERFLOWS: &str = "busgate_label_overflow_total";

// Spans and tracers.
/// Instrumentation scope of busgate's own spans (one per hop).
pub const OWN_TRACER_NAME: &str = "busgate";
/// Instrumentation scope of the spans handlers open with `tracing`.
pub const HANDLER_TRACER_NAME: &str = "busgate.handler";
/// busgate's per-request `tracing` spans that carry service, instance and trace id to log
/// lines; not exported (the hop's own span is).
pub const SERVICE_LOG_SPAN: &str = "bus";
pub const INGRESS_LOG_SPAN: &str = "http";

// The HTTP ingress.
pub const INGRESS_REQUEST_DURATION: &str = "busgate_ingress_request_duration_seconds";
pub const INGRESS_IN_FLIGHT: &str = "busgate_ingress_requests_in_flight";
pub const INGRESS_REQUEST_BODY: &str = "busgate_ingress_request_body_bytes";
pub const INGRESS_RESPONSE_BODY: &str = "busgate_ingress_response_body_bytes";

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
pub const L_LABEL: &str = "label";

/// `error` label values.
pub const OK: &str = "OK";
pub const ERROR: &str = "ERROR";

/// The value a capped label takes once it has seen too many distinct values.
pub const OVERFLOW_VALUE: &str = "_other";

// Span attributes (OpenTelemetry semantic conventions, and ours under `microbus.`).
pub const A_HTTP_METHOD: &str = "http.request.method";
pub const A_HTTP_ROUTE: &str = "http.route";
pub const A_HTTP_STATUS: &str = "http.response.status_code";
pub const A_HTTP_REQUEST_BODY_SIZE: &str = "http.request.body.size";
pub const A_HTTP_RESPONSE_BODY_SIZE: &str = "http.response.body.size";
pub const A_URL_PATH: &str = "url.path";
pub const A_URL_QUERY: &str = "url.query";
pub const A_URL_SCHEME: &str = "url.scheme";
pub const A_SERVER_ADDRESS: &str = "server.address";
pub const A_SERVER_PORT: &str = "server.port";
pub const A_CLIENT_ADDRESS: &str = "client.address";
pub const A_USER_AGENT: &str = "user_agent.original";
pub const A_MESSAGING_SYSTEM: &str = "messaging.system";
pub const A_MESSAGING_DESTINATION: &str = "messaging.destination.name";
pub const A_MESSAGING_OPERATION: &str = "messaging.operation.type";
pub const A_MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
pub const A_MESSAGING_BODY_SIZE: &str = "messaging.message.body.size";
pub const A_ACK_LATENCY_MS: &str = "microbus.ack.latency_ms";
pub const A_TIME_BUDGET_MS: &str = "microbus.time_budget_ms";
pub const A_RESPONDERS: &str = "microbus.responders";
pub const A_FROM_HOST: &str = "microbus.from.host";
pub const A_FROM_ID: &str = "microbus.from.id";
pub const A_CALL_DEPTH: &str = "microbus.call_depth";
pub const A_EXCEPTION_TYPE: &str = "exception.type";
pub const A_EXCEPTION_MESSAGE: &str = "exception.message";
pub const A_EXCEPTION_STACKTRACE: &str = "exception.stacktrace";

/// Every span attribute key above: PROD's tail buffer stores a key as its index here.
pub const SPAN_ATTRIBUTES: [&str; 26] = [
    A_HTTP_METHOD,
    A_HTTP_ROUTE,
    A_HTTP_STATUS,
    A_HTTP_REQUEST_BODY_SIZE,
    A_HTTP_RESPONSE_BODY_SIZE,
    A_URL_PATH,
    A_URL_QUERY,
    A_URL_SCHEME,
    A_SERVER_ADDRESS,
    A_SERVER_PORT,
    A_CLIENT_ADDRESS,
    A_USER_AGENT,
    A_MESSAGING_SYSTEM,
    A_MESSAGING_DESTINATION,
    A_MESSAGING_OPERATION,
    A_MESSAGING_MESSAGE_ID,
    A_MESSAGING_BODY_SIZE,
    A_ACK_LATENCY_MS,
    A_TIME_BUDGET_MS,
    A_RESPONDERS,
    A_FROM_HOST,
    A_FROM_ID,
    A_CALL_DEPTH,
    A_EXCEPTION_TYPE,
    A_EXCEPTION_MESSAGE,
    A_EXCEPTION_STACKTRACE,
];

/// The messaging system attribute value.
pub const NATS: &str = "nats";
