//! Telemetry's error: a kind callers match on, what was being done, and the error underneath.

use crate::error::KindError;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryErrorKind {
    /// The export could not be set up: the collector's TLS files, the HTTP client, the export
    /// thread, the gRPC exporter.
    Setup,
    /// An export did not reach the collector, or the collector refused it.
    Export,
    /// Shutdown could not flush what was queued.
    Shutdown,
}

/// A telemetry error: its kind, what was being done, and the error underneath.
pub type TelemetryError = KindError<TelemetryErrorKind>;
