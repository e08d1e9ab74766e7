//! Spans that handler code opens with `tracing` (`info_span!("query")`), exported through
//! `tracing-opentelemetry` as children of the hop that ran them, under that service's resource.
//!
//! busgate's own spans (one per hop) are built by [`ServiceTracer`] directly; this is the way in
//! for everything else. While a handler runs, the OpenTelemetry context current on its task
//! holds the hop's SERVER span and a [`HandlerScope`] naming the service's tracer. The layer's
//! SDK tracer samples only spans under such a scope (and only when the hop is sampled), and its
//! processor hands each ended span to the tracer of the service that opened it, so the span
//! lands in that service's export (or PROD's tail selection) with its own resource.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, Span, SpanData,
    SpanProcessor,
};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, Filtered};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::names::{HANDLER_TRACER_NAME, INGRESS_LOG_SPAN, SERVICE_LOG_SPAN};
use super::trace::{otel_context, ServiceTracer};

/// Set once the layer is part of the global subscriber: until then handlers run without the
/// context (nobody would read it).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether handler spans are collected at all (the layer is installed).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Record that [`layer`] is part of the global subscriber.
pub(super) fn mark_installed() {
    INSTALLED.store(true, Ordering::Relaxed);
}

/// The context value naming the service whose handler is running.
#[derive(Clone)]
pub struct HandlerScope(pub Arc<ServiceTracer>);

impl std::fmt::Debug for HandlerScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerScope")
    }
}

/// The OpenTelemetry context a handler of `tracer`'s service runs in, under `hop`.
pub fn handler_context(tracer: &Arc<ServiceTracer>, hop: &SpanContext) -> Context {
    otel_context(hop).with_value(HandlerScope(tracer.clone()))
}

/// The `tracing` layer that turns handler spans into OpenTelemetry spans. busgate's own log
/// spans (one per request, carrying the service and trace id for log lines) are not exported:
/// the hop's span already is.
pub fn layer<S>() -> Filtered<impl Layer<S>, impl tracing_subscriber::layer::Filter<S>, S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let provider = SdkTracerProvider::builder()
        .with_sampler(UnderHandlerScope)
        .with_span_processor(RouteToService::default())
        .build();
    let tracer = provider.tracer(HANDLER_TRACER_NAME);
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter_fn(|m: &Metadata<'_>| !is_own_log_span(m)))
}

fn is_own_log_span(m: &Metadata<'_>) -> bool {
    m.is_span()
        && m.target().starts_with("busgate::")
        && (m.name() == SERVICE_LOG_SPAN || m.name() == INGRESS_LOG_SPAN)
}

/// Samples a span only inside a handler of a sampled hop: spans opened elsewhere (start-up,
/// background tasks) belong to no service's trace, and an unsampled hop's children are not
/// recorded either (ParentBased semantics, as for the hops themselves).
#[derive(Debug, Clone)]
struct UnderHandlerScope;

impl ShouldSample for UnderHandlerScope {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        _trace_id: TraceId,
        _name: &str,
        _kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let scoped = parent.filter(|cx| cx.get::<HandlerScope>().is_some());
        let sampled = scoped.is_some_and(|cx| cx.span().span_context().is_sampled());
        SamplingResult {
            decision: if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: scoped
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// Remembers, from start to end, which service each recorded handler span belongs to.
#[derive(Debug, Default)]
struct RouteToService {
    open: Mutex<HashMap<SpanId, Arc<ServiceTracer>>>,
}

impl SpanProcessor for RouteToService {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        use opentelemetry::trace::Span as _;
        // The sampler let only scoped spans through; children inherit the scope with the context.
        if let Some(scope) = cx.get::<HandlerScope>() {
            let id = span.span_context().span_id();
            self.lock().insert(id, scope.0.clone());
        }
    }

    fn on_end(&self, span: SpanData) {
        let owner = self.lock().remove(&span.span_context.span_id());
        if let Some(tracer) = owner {
            tracer.export(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Each service's tracer flushes its own pipeline at shutdown.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl RouteToService {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SpanId, Arc<ServiceTracer>>> {
        // A panic elsewhere while holding the map leaves it usable: entries are independent.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}
