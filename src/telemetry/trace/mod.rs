//! Distributed tracing: W3C trace context in the HTTP headers of bus messages, one tracer per
//! service instance (so that every span carries its own service's resource), PROD's tail
//! selection, and OTLP export over HTTP/protobuf (encoded here) or gRPC (the SDK's).
//!
//! From the request path down: [`tracer`] starts and ends [`span`]s, recorded as [`packed`]
//! bytes; ended spans go through [`tail`] (PROD) to [`export`], which batches them, encodes
//! them with [`otlp`] (over [`protobuf`]) and posts them with [`sender`]. [`propagation`]
//! reads and writes `traceparent`; [`settings`] reads the environment.

pub mod export;
pub mod otlp;
pub mod packed;
pub mod propagation;
pub mod protobuf;
pub mod sender;
pub mod settings;
pub mod span;
pub mod tail;
pub mod tracer;

pub use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
pub use propagation::{extract, inject, otel_context, parse_trace_id, trace_id};
pub use settings::*;
pub use span::{Attributes, Span, SpanName};
pub use tracer::{ServiceIdentity, ServiceTracer};
