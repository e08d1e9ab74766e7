//! What both transports hand the connector: messages, the connection's state and errors.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// A message as the transport delivers it.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
}

/// Whether the transport can currently move messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Connected,
    Disconnected,
    Closed,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Closed => "closed",
        }
    }
}

/// What went wrong in a transport operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// Could not connect (bad URL, refused, authentication, TLS).
    Connect,
    /// The connection is down or closed; nothing was sent.
    Disconnected,
    /// The payload is larger than the server accepts.
    PayloadTooLarge,
    /// The server or client refused the subscription or publish.
    Rejected,
}

/// The error a transport error came from (the NATS client's), shared so the error clones.
pub type ErrorSource = Arc<dyn std::error::Error + Send + Sync>;

/// A transport error: its kind (what callers match on), what was being done, and the error
/// of the client underneath when there is one.
#[derive(Debug, Clone)]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
    source: Option<ErrorSource>,
}

impl TransportError {
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> TransportError {
        TransportError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// `message` says what was being done; `source` says why it failed.
    pub fn caused_by(
        kind: TransportErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> TransportError {
        TransportError {
            kind,
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)?;
        match &self.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for TransportError {
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
    fn a_transport_error_says_what_failed_and_keeps_why() {
        let e = TransportError::caused_by(
            TransportErrorKind::Connect,
            "cannot connect to NATS at nats://x:4222",
            std::io::Error::other("refused"),
        );
        assert_eq!(e.kind(), TransportErrorKind::Connect);
        assert_eq!(
            e.to_string(),
            "Connect: cannot connect to NATS at nats://x:4222: refused"
        );
        assert_eq!(e.source().unwrap().to_string(), "refused");
        let plain = TransportError::new(TransportErrorKind::Disconnected, "closed");
        assert_eq!(plain.to_string(), "Disconnected: closed");
        assert!(plain.source().is_none());
    }
}
