//! Distributed tracing: W3C trace context in the HTTP headers of bus messages, one
//! OpenTelemetry tracer per service instance (so that every span carries its own service's
//! resource), OTLP export over HTTP/protobuf or gRPC, and PROD's tail selection.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{Event, TraceContextExt};
pub use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData};
use opentelemetry_sdk::Resource;
use std::time::SystemTime;

use super::export::{Export, SpanBatcher};
use super::names::*;
use super::otlp::{encode_resource, OtlpHttpSender};
use super::tail::{PackedSpan, Selector, Waiting};
use crate::config::{parse_duration, ConfigError, Deployment};
use crate::error::Error;

pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const ENV_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// Extra request headers (`key=value,...`, values percent-encoded), e.g. a collector's API key.
pub const ENV_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const ENV_OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// PEM certificates to trust for an `https://` collector, besides the system's.
pub const ENV_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
pub const ENV_OTLP_TRACES_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE";
/// `off` turns spans and metrics off (for comparison benchmarks); anything else leaves them on.
pub const ENV_TELEMETRY: &str = "BUSGATE_TELEMETRY";
/// PROD also keeps traces with a span slower than this (busgate's setting).
pub const ENV_SLOW_TRACE_THRESHOLD: &str = "BUSGATE_TRACE_SLOW_THRESHOLD";
pub const DEFAULT_SLOW_TRACE_THRESHOLD: Duration = Duration::from_secs(1);

/// How often spans are shipped: soon enough to find a request in Jaeger while looking at it,
/// rarely enough to batch.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest one export may take before it is abandoned.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ended spans PROD holds per service while it waits to learn whether their trace is worth
/// keeping. Errors and `:888/trace` selections arrive within milliseconds, so a small buffer
/// keeps error traces whole; a slow trace's early fast spans need a window as long as the slow
/// threshold (1024 spans are ~1 s at 1k req/s per instance, 60 ms at 16k). Each waiting span
/// holds ~600 bytes, and a larger buffer touches more memory per request (an earlier design
/// measured 64 spans ≈ 6%, 1024 ≈ 12%, 8192 ≈ 17% more CPU per request than telemetry off;
/// measure with `BUSGATE_TRACE_TAIL_BUFFER=<n> cargo bench --bench telemetry`).
pub const DEFAULT_TAIL_BUFFER_SPANS: usize = 1024;
pub const ENV_TAIL_BUFFER_SPANS: &str = "BUSGATE_TRACE_TAIL_BUFFER";

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    Grpc,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Record spans and metrics at all.
    pub enabled: bool,
    /// The full OTLP traces endpoint; `None` keeps tracing local (ids in logs, nothing sent).
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub slow_trace_threshold: Duration,
    /// PROD's tail buffer, in spans per service.
    pub tail_buffer_spans: usize,
    /// Headers sent with every OTLP/HTTP export (gRPC reads the same variables itself).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Extra trusted certificates (PEM) for an OTLP/HTTP collector over `https://`.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            slow_trace_threshold: DEFAULT_SLOW_TRACE_THRESHOLD,
            tail_buffer_spans: DEFAULT_TAIL_BUFFER_SPANS,
            headers: Vec::new(),
            ca_file: None,
        }
    }
}

impl TelemetryConfig {
    /// The standard `OTEL_EXPORTER_OTLP_*` variables: a signal endpoint is used as is, a base
    /// endpoint gets `/v1/traces` over HTTP.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<TelemetryConfig, ConfigError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let protocol = match get(ENV_OTLP_PROTOCOL).as_deref() {
            None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            Some(other) => {
                return Err(ConfigError::new(
                    ENV_OTLP_PROTOCOL,
                    other,
                    "expected http/protobuf or grpc",
                ))
            }
        };
        let endpoint = match (get(ENV_OTLP_TRACES_ENDPOINT), get(ENV_OTLP_ENDPOINT)) {
            (Some(signal), _) => Some(signal),
            (None, Some(base)) => Some(match protocol {
                OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                OtlpProtocol::Grpc => base,
            }),
            (None, None) => None,
        };
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ConfigError::new(
                    ENV_OTLP_ENDPOINT,
                    e,
                    "expected an http:// or https:// URL",
                ));
            }
        }
        let slow_trace_threshold = match get(ENV_SLOW_TRACE_THRESHOLD) {
            Some(v) => parse_duration(ENV_SLOW_TRACE_THRESHOLD, &v)?,
            None => DEFAULT_SLOW_TRACE_THRESHOLD,
        };
        let tail_buffer_spans = match get(ENV_TAIL_BUFFER_SPANS) {
            Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ConfigError::new(
                    ENV_TAIL_BUFFER_SPANS,
                    &v,
                    "expected a number of spans above 0",
                )
            })?,
            None => DEFAULT_TAIL_BUFFER_SPANS,
        };
        let headers = match (get(ENV_OTLP_TRACES_HEADERS), get(ENV_OTLP_HEADERS)) {
            (Some(v), _) => parse_headers(ENV_OTLP_TRACES_HEADERS, &v)?,
            (None, Some(v)) => parse_headers(ENV_OTLP_HEADERS, &v)?,
            (None, None) => Vec::new(),
        };
        let ca_file = match (get(ENV_OTLP_TRACES_CERTIFICATE), get(ENV_OTLP_CERTIFICATE)) {
            (Some(path), _) => Some((ENV_OTLP_TRACES_CERTIFICATE, path)),
            (None, Some(path)) => Some((ENV_OTLP_CERTIFICATE, path)),
            (None, None) => None,
        };
        let ca_file = match ca_file {
            Some((name, path)) if !std::path::Path::new(&path).is_file() => {
                return Err(ConfigError::new(
                    name,
                    &path,
                    "expected a readable PEM file",
                ));
            }
            other => other.map(|(_, path)| std::path::PathBuf::from(path)),
        };
        let enabled = !get(ENV_TELEMETRY).is_some_and(|v| v.eq_ignore_ascii_case("off"));
        Ok(TelemetryConfig {
            enabled,
            endpoint,
            protocol,
            slow_trace_threshold,
            tail_buffer_spans,
            headers,
            ca_file,
        })
    }
}

/// `key=value` pairs separated by commas, values percent-encoded (the OTLP exporter spec).
fn parse_headers(
    variable: &'static str,
    raw: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    let bad = |why: &str| ConfigError::new(variable, raw, why);
    raw.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad("expected key=value pairs separated by commas"))?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| bad("a value is not UTF-8 once percent-decoded"))?;
            let name = HeaderName::from_bytes(key.trim().as_bytes())
                .map_err(|_| bad("a key is not a valid HTTP header name"))?;
            let value = HeaderValue::from_str(&value)
                .map_err(|_| bad("a value is not a valid HTTP header value"))?;
            Ok((name, value))
        })
        .collect()
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The W3C trace context in `headers` (names are case-insensitive there), marked remote; the
/// invalid [`SpanContext::NONE`] when there is none or it is malformed.
pub fn extract(headers: &HeaderMap) -> SpanContext {
    let Some((trace_id, span_id, flags)) = headers
        .get(TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()))
    else {
        return SpanContext::NONE;
    };
    let trace_state = headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanContext::new(trace_id, span_id, flags, true, trace_state)
}

/// `version-traceid-parentid-flags`, lowercase hex, as W3C Trace Context level 1 defines it;
/// versions after 00 may append fields.
fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[0..2])? as u8;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = hex(&v[3..35])?;
    let span_id = hex(&v[36..52])? as u64;
    let flags = hex(&v[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((
        TraceId::from(trace_id),
        SpanId::from(span_id),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

/// Lowercase hex digits (at most 32) as a number.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | v as u128)
    })
}

fn put_hex(out: &mut [u8], mut n: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// Write `Traceparent` (and a non-empty `Tracestate`) for `cx`, replacing what was there.
pub fn inject(cx: &SpanContext, headers: &mut HeaderMap) {
    if !cx.is_valid() {
        return;
    }
    let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(
        &mut tp[3..35],
        u128::from_be_bytes(cx.trace_id().to_bytes()),
    );
    put_hex(
        &mut tp[36..52],
        u64::from_be_bytes(cx.span_id().to_bytes()) as u128,
    );
    put_hex(&mut tp[53..55], cx.trace_flags().to_u8() as u128);
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_bytes(&tp).expect("hex digits are a valid header value"),
    );
    // An empty `tracestate` says nothing; Microbus does not send it either.
    let state = cx.trace_state().header();
    match HeaderValue::from_str(&state) {
        Ok(v) if !state.is_empty() => {
            headers.insert(TRACESTATE, v);
        }
        _ => {
            headers.remove(TRACESTATE);
        }
    }
}

/// The 32-hex trace id of `cx`.
pub fn trace_id(cx: &SpanContext) -> String {
    // Twice per request (ingress and service log spans); `{:032x}` cost ~750 instructions.
    hex::encode(cx.trace_id().to_bytes())
}

/// An OpenTelemetry context holding `cx` as a remote parent, for code that records its own
/// spans with an OpenTelemetry tracer.
pub fn otel_context(cx: &SpanContext) -> Context {
    Context::new().with_remote_span_context(cx.clone())
}

/// `:<port><path>`, the name of SERVER spans (built without the formatting machinery: this
/// runs for every recorded hop).
pub fn server_span_name(port: u16, path: &str) -> String {
    let mut digits = itoa::Buffer::new();
    let port = digits.format(port);
    let mut name = String::with_capacity(1 + port.len() + path.len());
    name.push(':');
    name.push_str(port);
    name.push_str(path);
    name
}

/// `<METHOD> <host>:<port><path>`, the name of CLIENT spans.
pub fn client_span_name(method: &str, host: &str, port: u16, path: &str) -> String {
    let mut digits = itoa::Buffer::new();
    let port = digits.format(port);
    let mut name = String::with_capacity(method.len() + host.len() + port.len() + path.len() + 2);
    for part in [method, " ", host, ":", port, path] {
        name.push_str(part);
    }
    name
}

/// Spans nobody wants to see: the `:888/trace` broadcast and metrics scrapes (their children
/// follow, because they are not sampled).
fn is_muffled(name: &str) -> bool {
    name == ":888/trace"
        || name.ends_with("/metrics.core/collect")
        || name.ends_with("/metrics.core:443/collect")
}

/// A span being recorded. Request paths own it outright (no locks, no shared state) and hand it
/// to [`ServiceTracer::end`]; a span that is dropped instead is not exported.
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    recording: Recording,
}

/// How a span is being recorded.
#[derive(Debug)]
enum Recording {
    /// Not recorded (telemetry off, nowhere to export, not sampled): the span still has ids,
    /// for propagation and logs.
    Off,
    /// As bytes, written in place: what almost every span stays.
    Packed(Box<PackedSpan>),
    /// As the SDK exports it: a span with an error (status message, `exception` event).
    Data(Box<SpanData>),
}

/// Attributes of a span being started, written as bytes into the span (no allocation per
/// value).
pub struct Attributes<'a>(&'a mut PackedSpan);

impl Attributes<'_> {
    pub fn str(&mut self, key: SpanKey, value: &str) {
        self.0.push_str(key, value);
    }

    pub fn int(&mut self, key: SpanKey, value: i64) {
        self.0.push_i64(key, value);
    }
}

impl Span {
    /// The context children and outgoing messages carry.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether attributes are kept; skip building expensive ones otherwise.
    pub fn is_recording(&self) -> bool {
        !matches!(self.recording, Recording::Off)
    }

    pub fn set_int(&mut self, key: SpanKey, value: i64) {
        match &mut self.recording {
            Recording::Off => {}
            Recording::Data(d) => d.attributes.push(KeyValue::new(key, value)),
            Recording::Packed(p) => p.push_i64(key, value),
        }
    }

    pub fn set_f64(&mut self, key: SpanKey, value: f64) {
        match &mut self.recording {
            Recording::Off => {}
            Recording::Data(d) => d.attributes.push(KeyValue::new(key, value)),
            Recording::Packed(p) => p.push_f64(key, value),
        }
    }

    pub fn set_attribute(&mut self, attribute: KeyValue) {
        match &mut self.recording {
            Recording::Off => {}
            Recording::Data(d) => d.attributes.push(attribute),
            Recording::Packed(p) => p.push(attribute),
        }
    }

    pub fn set_status(&mut self, status: Status) {
        match (&mut self.recording, status) {
            (Recording::Off, _) => {}
            (Recording::Packed(p), Status::Ok) => p.set_ok(true),
            (Recording::Packed(p), Status::Unset) => p.set_ok(false),
            (_, status) => {
                if let Some(d) = self.data() {
                    d.status = status;
                }
            }
        }
    }

    /// The span as SDK data, unpacking a packed one (errors are rare: they take this path).
    fn data(&mut self) -> Option<&mut SpanData> {
        if let Recording::Packed(p) = &self.recording {
            // The tracer sets the scope when the span ends.
            let data = p.unpack(&InstrumentationScope::default());
            self.recording = Recording::Data(Box::new(data));
        }
        match &mut self.recording {
            Recording::Data(d) => Some(d),
            _ => None,
        }
    }

    /// Mark the span failed with `err`: status, HTTP status and an `exception` event.
    pub fn record_error(&mut self, err: &Error) {
        let Some(d) = self.data() else {
            return;
        };
        d.attributes
            .push(KeyValue::new(A_HTTP_STATUS, err.status().as_u16() as i64));
        d.events.events.push(Event::new(
            "exception",
            SystemTime::now(),
            vec![
                KeyValue::new(A_EXCEPTION_TYPE, format!("{:?}", err.kind())),
                KeyValue::new(A_EXCEPTION_MESSAGE, err.message().to_owned()),
                KeyValue::new(A_EXCEPTION_STACKTRACE, err.verbose()),
            ],
            0,
        ));
        d.status = Status::error(err.message().to_owned());
    }
}

fn nonzero_random<T: Default + PartialEq>(mut draw: impl FnMut() -> T) -> T {
    loop {
        let v = draw();
        if v != T::default() {
            return v;
        }
    }
}

/// Where ended spans go.
#[derive(Debug)]
enum Sink {
    /// Every span, batched to the exporter (LOCAL, LAB, TESTING).
    All(Export),
    /// PROD's tail selection in front of the batch.
    Selected(Box<Selector>),
}

/// Identity of the service whose spans a tracer produces.
pub struct ServiceIdentity<'a> {
    pub hostname: &'a str,
    pub plane: &'a str,
    pub version: u32,
    pub id: &'a str,
    pub deployment: Deployment,
}

/// The tracer of one service instance. Spans are plain [`SpanData`] built in place and handed
/// to the SDK's batch processor (and OTLP exporter) when they end: the SDK's span machinery
/// (shared span handles behind a lock, a sampler per span, a context map) cost more than the
/// rest of a bus hop's telemetry together.
#[derive(Debug)]
pub struct ServiceTracer {
    /// Telemetry on: spans are sampled and carry the sampled flag.
    enabled: bool,
    /// Where spans go; `None` records nothing (ids only).
    sink: Option<Sink>,
    scope: InstrumentationScope,
}

impl ServiceTracer {
    pub fn new(
        config: &TelemetryConfig,
        who: &ServiceIdentity<'_>,
    ) -> Result<ServiceTracer, String> {
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", who.hostname.to_owned()),
                KeyValue::new("service.namespace", who.plane.to_owned()),
                KeyValue::new("service.version", who.version.to_string()),
                KeyValue::new("service.instance.id", who.id.to_owned()),
                KeyValue::new("deployment.environment.name", who.deployment.as_str()),
            ])
            .build();
        let scope = InstrumentationScope::builder(OWN_TRACER_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let sink = match config.endpoint.as_ref().filter(|_| config.enabled) {
            None => None,
            Some(endpoint) => {
                let export = build_export(config, endpoint, &resource, &scope)?;
                Some(if who.deployment == Deployment::Prod {
                    Sink::Selected(Box::new(Selector::new(
                        export,
                        scope.clone(),
                        config.slow_trace_threshold,
                        config.tail_buffer_spans,
                    )))
                } else {
                    Sink::All(export)
                })
            }
        };
        Ok(ServiceTracer {
            enabled: config.enabled,
            sink,
            scope,
        })
    }

    /// Start a span of `kind` under `parent` (a new trace when `parent` is invalid). `name` and
    /// `attributes` are only evaluated when the span is recorded.
    pub fn start(
        &self,
        parent: &SpanContext,
        kind: SpanKind,
        name: impl FnOnce() -> String,
        attributes: impl FnOnce(&mut Attributes<'_>),
    ) -> Span {
        let trace_id = if parent.is_valid() {
            parent.trace_id()
        } else {
            TraceId::from(nonzero_random(rand::random::<u128>))
        };
        let span_id = SpanId::from(nonzero_random(rand::random::<u64>));
        let mut sampled = if parent.is_valid() {
            parent.is_sampled()
        } else {
            self.enabled
        };
        let mut recording = Recording::Off;
        if sampled && self.sink.is_some() {
            let name = name();
            if is_muffled(&name) {
                sampled = false;
            } else {
                // Packed whatever the sink: PROD drops most spans unseen, and the OTLP/HTTP
                // export encodes straight from the bytes.
                let mut packed = PackedSpan::new(parent, kind, &name, SystemTime::now());
                attributes(&mut Attributes(&mut packed));
                recording = Recording::Packed(packed);
            }
        } else if sampled && is_muffled(&name()) {
            // Not recorded here, but the flag tells the services downstream not to record.
            sampled = false;
        }
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context = SpanContext::new(
            trace_id,
            span_id,
            flags,
            false,
            parent.trace_state().clone(),
        );
        Span { context, recording }
    }

    /// End `span` now and hand it on for export.
    pub fn end(&self, span: Span) {
        let Some(sink) = &self.sink else {
            return;
        };
        let Span { context, recording } = span;
        let waiting = match recording {
            Recording::Off => return,
            Recording::Data(mut d) => {
                d.span_context = context;
                d.end_time = SystemTime::now();
                d.instrumentation_scope = self.scope.clone();
                Waiting::Data(d)
            }
            Recording::Packed(mut p) => {
                p.context = context;
                p.end_time = SystemTime::now();
                Waiting::Packed(p)
            }
        };
        match sink {
            Sink::Selected(selector) => selector.on_end(waiting),
            Sink::All(export) => export.on_end(waiting, &self.scope),
        }
    }

    /// Hand on a span recorded elsewhere for this service (a handler's own `tracing` span),
    /// as if it were one of its own: exported, or held by PROD's tail selection.
    pub fn export(&self, data: SpanData) {
        match &self.sink {
            None => {}
            Some(Sink::All(export)) => export.on_end(Waiting::Data(Box::new(data)), &self.scope),
            Some(Sink::Selected(selector)) => selector.on_end(Waiting::Data(Box::new(data))),
        }
    }

    /// Keep `trace_id` (PROD); a no-op where everything is exported anyway.
    pub fn select(&self, trace_id: TraceId) {
        if let Some(Sink::Selected(s)) = &self.sink {
            s.select(trace_id);
        }
    }

    pub fn is_selected(&self, trace_id: TraceId) -> bool {
        matches!(&self.sink, Some(Sink::Selected(s)) if s.is_selected(trace_id))
    }

    /// Whether this tracer drops traces unless they are selected.
    pub fn is_selective(&self) -> bool {
        matches!(self.sink, Some(Sink::Selected(_)))
    }

    /// Export everything still buffered and stop. Blocks: call it off the async runtime.
    pub fn shutdown(&self) {
        let export = match &self.sink {
            None => return,
            Some(Sink::All(e)) => e,
            Some(Sink::Selected(s)) => s.exporter(),
        };
        if let Err(e) = export.shutdown() {
            tracing::warn!(error = %e, "Span export did not finish at shutdown");
        }
    }
}

/// The export of the configured OTLP protocol.
fn build_export(
    config: &TelemetryConfig,
    endpoint: &str,
    resource: &Resource,
    scope: &InstrumentationScope,
) -> Result<Export, String> {
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::SpanExporter as _;
    match config.protocol {
        OtlpProtocol::HttpProtobuf => {
            let sender = OtlpHttpSender::new(
                endpoint,
                config.headers.clone(),
                config.ca_file.as_deref(),
                EXPORT_TIMEOUT,
            )?;
            Ok(Export::Http(SpanBatcher::new(
                sender,
                encode_resource(resource),
                resource.schema_url().unwrap_or_default().to_owned(),
                scope.clone(),
                EXPORT_INTERVAL,
            )?))
        }
        OtlpProtocol::Grpc => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| format!("cannot build the OTLP exporter for {endpoint}: {e}"))?;
            exporter.set_resource(resource);
            Ok(Export::Sdk(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(
                        BatchConfigBuilder::default()
                            .with_scheduled_delay(EXPORT_INTERVAL)
                            .build(),
                    )
                    .build(),
            ))
        }
    }
}

/// Parse a 32-hex trace id, as `:888/trace?id=` carries it.
pub fn parse_trace_id(hex: &str) -> Option<TraceId> {
    if hex.len() != 32 {
        return None;
    }
    TraceId::from_hex(hex)
        .ok()
        .filter(|t| *t != TraceId::INVALID)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn otel_environment() {
        let cfg = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            TelemetryConfig::from_lookup(|k| map.get(k).cloned())
        };
        assert_eq!(cfg(&[]).unwrap().endpoint, None);
        let c = cfg(&[(ENV_OTLP_HEADERS, "api-key=s%20cret, x-team = core ,")]).unwrap();
        assert_eq!(c.headers.len(), 2);
        assert_eq!(
            (c.headers[0].0.as_str(), c.headers[0].1.to_str().unwrap()),
            ("api-key", "s cret")
        );
        assert_eq!(
            (c.headers[1].0.as_str(), c.headers[1].1.to_str().unwrap()),
            ("x-team", "core")
        );
        let c = cfg(&[(ENV_OTLP_HEADERS, "a=1"), (ENV_OTLP_TRACES_HEADERS, "b=2")]).unwrap();
        assert_eq!(
            c.headers[0].0.as_str(),
            "b",
            "the signal's own variable wins"
        );
        for bad in ["novalue", "bad name=1", "k=%0a"] {
            assert_eq!(
                cfg(&[(ENV_OTLP_HEADERS, bad)]).unwrap_err().name,
                ENV_OTLP_HEADERS,
                "{bad}"
            );
        }
        let c = cfg(&[(ENV_OTLP_ENDPOINT, "http://jaeger:4318/")]).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://jaeger:4318/v1/traces"));
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        let c = cfg(&[
            (ENV_OTLP_ENDPOINT, "http://jaeger:4317"),
            (ENV_OTLP_PROTOCOL, "grpc"),
        ])
        .unwrap();
        assert_eq!(
            (c.endpoint.as_deref(), c.protocol),
            (Some("http://jaeger:4317"), OtlpProtocol::Grpc)
        );
        let c = cfg(&[
            (ENV_OTLP_ENDPOINT, "http://a:1"),
            (ENV_OTLP_TRACES_ENDPOINT, "http://b:2/custom"),
        ])
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://b:2/custom"));
        assert_eq!(
            cfg(&[(ENV_OTLP_PROTOCOL, "http/json")]).unwrap_err().name,
            ENV_OTLP_PROTOCOL
        );
        assert_eq!(
            cfg(&[(ENV_OTLP_ENDPOINT, "jaeger:4318")]).unwrap_err().name,
            ENV_OTLP_ENDPOINT
        );
        assert_eq!(
            cfg(&[(ENV_SLOW_TRACE_THRESHOLD, "250ms")])
                .unwrap()
                .slow_trace_threshold,
            Duration::from_millis(250)
        );
        assert_eq!(
            cfg(&[(ENV_TAIL_BUFFER_SPANS, "1024")])
                .unwrap()
                .tail_buffer_spans,
            1024
        );
        for bad in ["0", "-1", "many"] {
            assert_eq!(
                cfg(&[(ENV_TAIL_BUFFER_SPANS, bad)]).unwrap_err().name,
                ENV_TAIL_BUFFER_SPANS
            );
        }
    }

    #[test]
    fn context_round_trips_through_headers_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert(
            "TRACEPARENT",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let cx = extract(&h);
        assert_eq!(trace_id(&cx), "0af7651916cd43dd8448eb211c80319c");
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(
            out["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert!(parse_trace_id("0af7651916cd43dd8448eb211c80319c").is_some());
        for bad in [
            "",
            "xyz",
            "00000000000000000000000000000000",
            "0af7651916cd43dd8448eb211c80319",
        ] {
            assert!(parse_trace_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        for bad in [
            "",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_str(bad).unwrap());
            assert!(!extract(&h).is_valid(), "{bad}");
        }
        // A later version may append fields; flags other than sampled are not carried on.
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static(
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-future",
            ),
        );
        let cx = extract(&h);
        assert!(cx.is_valid() && cx.is_remote() && cx.is_sampled());
        assert_eq!(cx.trace_flags(), TraceFlags::SAMPLED);
        h.insert("traceparent", HeaderValue::from_static(valid));
        h.insert("tracestate", HeaderValue::from_static("vendor=abc,other=1"));
        let cx = extract(&h);
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out["traceparent"], valid);
        assert_eq!(out["tracestate"], "vendor=abc,other=1");
        // Injecting a context without state removes a stale one.
        inject(
            &SpanContext::new(
                cx.trace_id(),
                cx.span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            &mut out,
        );
        assert!(out.get("tracestate").is_none());
    }

    fn identity() -> ServiceIdentity<'static> {
        ServiceIdentity {
            hostname: "unit.test",
            plane: "unit",
            version: 1,
            id: "abc",
            deployment: Deployment::Local,
        }
    }

    #[test]
    fn spans_inherit_the_trace_and_its_sampling_decision() {
        let tracer = ServiceTracer::new(&TelemetryConfig::default(), &identity()).unwrap();
        let root = tracer.start(
            &SpanContext::NONE,
            SpanKind::Server,
            || ":443/x".into(),
            |_| {},
        );
        assert!(root.context().is_valid() && root.context().is_sampled());
        // Nowhere to export: ids for propagation and logs, nothing recorded.
        assert!(!root.is_recording());
        let child = tracer.start(
            root.context(),
            SpanKind::Client,
            || "GET x".into(),
            |_| unreachable!("attributes of an unrecorded span are not built"),
        );
        assert_eq!(child.context().trace_id(), root.context().trace_id());
        assert_ne!(child.context().span_id(), root.context().span_id());
        // The control plane's trace broadcast is not sampled, nor is anything under it.
        let muffled = tracer.start(
            &SpanContext::NONE,
            SpanKind::Server,
            || ":888/trace".into(),
            |_| {},
        );
        assert!(!muffled.context().is_sampled());
        let under = tracer.start(
            muffled.context(),
            SpanKind::Client,
            || "GET y".into(),
            |_| {},
        );
        assert!(!under.context().is_sampled());
        // Telemetry off: nothing sampled, ids still there.
        let off = TelemetryConfig {
            enabled: false,
            ..TelemetryConfig::default()
        };
        let tracer = ServiceTracer::new(&off, &identity()).unwrap();
        let span = tracer.start(
            &SpanContext::NONE,
            SpanKind::Server,
            || unreachable!(),
            |_| unreachable!(),
        );
        assert!(span.context().is_valid() && !span.context().is_sampled());
    }
}
