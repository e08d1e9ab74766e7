//! Telemetry: traces (OpenTelemetry, exported over OTLP), metrics (Prometheus) and logs
//! (`tracing`), with every name fixed in [`names`].

pub mod error;
pub mod exposition;
pub mod handler_spans;
pub mod log_scope;
pub mod logs;
pub mod metric_handles;
pub mod metrics;
pub mod names;
pub mod trace;

pub use trace::{OtlpProtocol, TelemetryConfig};
