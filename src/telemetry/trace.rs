//! Distributed tracing: W3C trace context in the HTTP headers of bus messages, one
//! OpenTelemetry tracer per service instance (so that every span carries its own service's
//! resource), OTLP export over HTTP/protobuf or gRPC, and PROD's tail selection.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Link, SpanKind, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, SdkTracer,
    SdkTracerProvider, ShouldSample, SpanData, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use super::names::*;
use crate::config::{parse_duration, ConfigError, Deployment};
use crate::error::Error;

pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const ENV_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `off` turns spans and metrics off (for comparison benchmarks); anything else leaves them on.
pub const ENV_TELEMETRY: &str = "BUSGATE_TELEMETRY";
/// PROD also keeps traces with a span slower than this (busgate's setting).
pub const ENV_SLOW_TRACE_THRESHOLD: &str = "BUSGATE_TRACE_SLOW_THRESHOLD";
pub const DEFAULT_SLOW_TRACE_THRESHOLD: Duration = Duration::from_secs(1);

/// How often the batch processor ships spans: soon enough to find a request in Jaeger while
/// looking at it, rarely enough to batch.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest one export may take before it is abandoned.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ended spans PROD holds while it waits to learn whether their trace is worth keeping.
pub const TAIL_BUFFER_SPANS: usize = 8192;
/// Traces PROD remembers as selected, and for how long after the last selection.
pub const SELECTED_TRACES_MAX: usize = 8192;
pub const SELECTION_TTL: Duration = Duration::from_secs(20);

/// Attributes a span holds at most in practice (start and end together).
const SPAN_ATTRIBUTE_CAPACITY: usize = 20;

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
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            slow_trace_threshold: DEFAULT_SLOW_TRACE_THRESHOLD,
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
        let enabled = !get(ENV_TELEMETRY).is_some_and(|v| v.eq_ignore_ascii_case("off"));
        Ok(TelemetryConfig {
            enabled,
            endpoint,
            protocol,
            slow_trace_threshold,
        })
    }
}

/// Reads W3C headers from an HTTP header map (names are case-insensitive there).
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes W3C headers into an HTTP header map.
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing; Microbus does not send it either.
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The trace context in `headers`, or an empty context.
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Write `Traceparent` (and `Tracestate`) for the span in `cx`.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The 32-hex trace id of the span in `cx`.
pub fn trace_id(cx: &Context) -> String {
    cx.span().span_context().trace_id().to_string()
}

/// Mark the span in `cx` failed with `err`: status, HTTP status and an `exception` event.
pub fn record_error(cx: &Context, err: &Error) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(A_HTTP_STATUS, err.status().as_u16() as i64));
    span.add_event(
        "exception",
        vec![
            KeyValue::new(A_EXCEPTION_TYPE, format!("{:?}", err.kind())),
            KeyValue::new(A_EXCEPTION_MESSAGE, err.message().to_owned()),
            KeyValue::new(A_EXCEPTION_STACKTRACE, err.verbose()),
        ],
    );
    span.set_status(Status::error(err.message().to_owned()));
}

/// Drops the spans nobody wants to see: the `:888/trace` broadcast and metrics scrapes
/// (children follow through `ParentBased`).
#[derive(Debug, Clone)]
struct Muffler;

impl ShouldSample for Muffler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        _trace_id: TraceId,
        name: &str,
        _kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let muffled = name == ":888/trace"
            || name.ends_with("/metrics.core/collect")
            || name.ends_with("/metrics.core:443/collect");
        SamplingResult {
            decision: if muffled {
                SamplingDecision::Drop
            } else {
                SamplingDecision::RecordAndSample
            },
            attributes: Vec::new(),
            trace_state: parent
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// PROD's tail selection: ended spans wait in a bounded buffer; a trace is exported once it
/// holds an error, a slow span, or is selected by `:888/trace`, and stays selected for
/// [`SELECTION_TTL`].
#[derive(Debug)]
pub struct Selector {
    inner: BatchSpanProcessor,
    slow: Duration,
    state: Mutex<SelectorState>,
}

#[derive(Debug, Default)]
struct SelectorState {
    buffer: VecDeque<SpanData>,
    selected: HashMap<TraceId, Instant>,
}

impl Selector {
    /// Export `trace_id`'s buffered spans and its future ones.
    pub fn select(&self, trace_id: TraceId) {
        let flushed: Vec<SpanData> = {
            let mut st = self.state.lock().expect("selector lock");
            if st.selected.len() >= SELECTED_TRACES_MAX {
                st.selected.retain(|_, at| at.elapsed() < SELECTION_TTL);
                if st.selected.len() >= SELECTED_TRACES_MAX {
                    // Forget the oldest selection rather than grow without bound.
                    if let Some(oldest) = st
                        .selected
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(t, _)| *t)
                    {
                        st.selected.remove(&oldest);
                    }
                }
            }
            st.selected.insert(trace_id, Instant::now());
            let (keep, flush): (VecDeque<SpanData>, VecDeque<SpanData>) =
                std::mem::take(&mut st.buffer)
                    .into_iter()
                    .partition(|s| s.span_context.trace_id() != trace_id);
            st.buffer = keep;
            flush.into()
        };
        for span in flushed {
            self.inner.on_end(span);
        }
    }

    pub fn is_selected(&self, trace_id: TraceId) -> bool {
        self.state
            .lock()
            .expect("selector lock")
            .selected
            .get(&trace_id)
            .is_some_and(|at| at.elapsed() < SELECTION_TTL)
    }

    fn on_end(&self, span: SpanData) {
        let trace_id = span.span_context.trace_id();
        let failed = matches!(span.status, Status::Error { .. });
        let slow = span
            .end_time
            .duration_since(span.start_time)
            .is_ok_and(|d| d >= self.slow);
        if self.is_selected(trace_id) {
            self.inner.on_end(span);
        } else if failed || slow {
            self.select(trace_id);
            self.inner.on_end(span);
        } else {
            let mut st = self.state.lock().expect("selector lock");
            if st.buffer.len() >= TAIL_BUFFER_SPANS {
                st.buffer.pop_front();
            }
            st.buffer.push_back(span);
        }
    }
}

#[derive(Debug)]
struct SelectiveProcessor(Arc<Selector>);

impl SpanProcessor for SelectiveProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.inner.shutdown_with_timeout(timeout)
    }
}

/// Identity of the service whose spans a tracer produces.
pub struct ServiceIdentity<'a> {
    pub hostname: &'a str,
    pub plane: &'a str,
    pub version: u32,
    pub id: &'a str,
    pub deployment: Deployment,
}

/// The tracer of one service instance.
pub struct ServiceTracer {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    selector: Option<Arc<Selector>>,
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
        let sampler = if config.enabled {
            Sampler::ParentBased(Box::new(Muffler))
        } else {
            Sampler::AlwaysOff
        };
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_resource(resource.clone());
        let mut selector = None;
        if let Some(endpoint) = config.endpoint.as_ref().filter(|_| config.enabled) {
            let batch = BatchSpanProcessor::builder(build_exporter(config, endpoint, &resource)?)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(EXPORT_INTERVAL)
                        .build(),
                )
                .build();
            if who.deployment == Deployment::Prod {
                let s = Arc::new(Selector {
                    inner: batch,
                    slow: config.slow_trace_threshold,
                    state: Mutex::new(SelectorState::default()),
                });
                builder = builder.with_span_processor(SelectiveProcessor(s.clone()));
                selector = Some(s);
            } else {
                builder = builder.with_span_processor(batch);
            }
        }
        let provider = builder.build();
        let tracer = provider.tracer("busgate");
        Ok(ServiceTracer {
            tracer,
            provider,
            selector,
        })
    }

    /// Start a span of `kind` under `parent` and return the context holding it.
    pub fn start(
        &self,
        parent: &Context,
        name: String,
        kind: SpanKind,
        attributes: impl IntoIterator<Item = KeyValue>,
    ) -> Context {
        // Room for the attributes set when the span ends, so they do not reallocate.
        let mut all = Vec::with_capacity(SPAN_ATTRIBUTE_CAPACITY);
        all.extend(attributes);
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(all)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// Keep `trace_id` (PROD); a no-op where everything is exported anyway.
    pub fn select(&self, trace_id: TraceId) {
        if let Some(s) = &self.selector {
            s.select(trace_id);
        }
    }

    pub fn is_selected(&self, trace_id: TraceId) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.is_selected(trace_id))
    }

    /// Whether this tracer drops traces unless they are selected.
    pub fn is_selective(&self) -> bool {
        self.selector.is_some()
    }

    /// Export everything still buffered and stop. Blocks: call it off the async runtime.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "tracer shutdown");
        }
    }
}

fn build_exporter(
    config: &TelemetryConfig,
    endpoint: &str,
    resource: &Resource,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::trace::SpanExporter as _;
    let built = match config.protocol {
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    };
    let mut exporter =
        built.map_err(|e| format!("cannot build the OTLP exporter for {endpoint}: {e}"))?;
    exporter.set_resource(resource);
    Ok(exporter)
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
}
