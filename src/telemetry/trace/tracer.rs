//! The tracer of one service instance: starts and ends its spans and hands them to the
//! export, through PROD's tail selection.

use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceFlags, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData};
use opentelemetry_sdk::Resource;

use super::export::{Export, SpanBatcher};
use super::otlp::encode_resource;
use super::packed::PackedSpan;
use super::sender::OtlpHttpSender;
use super::settings::{OtlpProtocol, TelemetryConfig, EXPORT_INTERVAL, EXPORT_TIMEOUT};
use super::span::{Attributes, Recording, Span, SpanName, Waiting};
use super::tail::Selector;
use crate::config::Deployment;
use crate::telemetry::error::{TelemetryError, TelemetryErrorKind};
use crate::telemetry::names::OWN_TRACER_NAME;

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
    ) -> Result<ServiceTracer, TelemetryError> {
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

    /// Start a span of `kind` under `parent` (a new trace when `parent` is invalid). `name` is
    /// written out and `attributes` evaluated only when the span is recorded.
    pub fn start(
        &self,
        parent: &SpanContext,
        kind: SpanKind,
        name: SpanName<'_>,
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
        if sampled && name.is_muffled() {
            // Not recorded, and the flag tells the services downstream not to record.
            sampled = false;
        } else if sampled && self.sink.is_some() {
            // Packed whatever the sink: PROD drops most spans unseen, and the OTLP/HTTP
            // export encodes straight from the bytes.
            let mut packed = PackedSpan::new(parent, kind, &name.to_text(), SystemTime::now());
            attributes(&mut Attributes(&mut packed));
            recording = Recording::Packed(packed);
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
) -> Result<Export, TelemetryError> {
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
                .map_err(|e| {
                    TelemetryError::caused_by(
                        TelemetryErrorKind::Setup,
                        format!("cannot build the OTLP exporter for {endpoint}"),
                        e,
                    )
                })?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
            SpanName::Text(":443/x"),
            |_| {},
        );
        assert!(root.context().is_valid() && root.context().is_sampled());
        // Nowhere to export: ids for propagation and logs, nothing recorded.
        assert!(!root.is_recording());
        let child = tracer.start(
            root.context(),
            SpanKind::Client,
            SpanName::Text("GET x"),
            |_| unreachable!("attributes of an unrecorded span are not built"),
        );
        assert_eq!(child.context().trace_id(), root.context().trace_id());
        assert_ne!(child.context().span_id(), root.context().span_id());
        // The control plane's trace broadcast is not sampled, nor is anything under it.
        let muffled = tracer.start(
            &SpanContext::NONE,
            SpanKind::Server,
            SpanName::Server {
                port: 888,
                path: "/trace",
            },
            |_| {},
        );
        assert!(!muffled.context().is_sampled());
        let under = tracer.start(
            muffled.context(),
            SpanKind::Client,
            SpanName::Text("GET y"),
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
            SpanName::Text(":443/x"),
            |_| unreachable!(),
        );
        assert!(span.context().is_valid() && !span.context().is_sampled());
    }
}
