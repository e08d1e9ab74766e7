//! Telemetry's error: a kind callers match on, what was being done, and the error underneath.

use std::fmt;
use std::sync::Arc;

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

/// A telemetry error.
#[derive(Debug, Clone)]
pub struct TelemetryError {
    kind: TelemetryErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl TelemetryError {
    pub fn new(kind: TelemetryErrorKind, message: impl Into<String>) -> TelemetryError {
        TelemetryError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// `message` says what was being done; `source` says why it failed.
    pub fn caused_by(
        kind: TelemetryErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> TelemetryError {
        TelemetryError {
            kind,
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    pub fn kind(&self) -> TelemetryErrorKind {
        self.kind
    }
}

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for TelemetryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_telemetry_error_has_a_kind_and_its_source() {
        let e = TelemetryError::caused_by(
            TelemetryErrorKind::Export,
            "OTLP export to http://c:4318/v1/traces",
            std::io::Error::other("timed out"),
        );
        assert_eq!(e.kind(), TelemetryErrorKind::Export);
        assert_eq!(
            e.to_string(),
            "OTLP export to http://c:4318/v1/traces: timed out"
        );
        assert_eq!(e.source().unwrap().to_string(), "timed out");
    }
}
