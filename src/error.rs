//! The bus error: what a handler returns and what a call fails with. It carries an HTTP status
//! across the bus (reference §2.4); callers match on [`ErrorKind`], never on message text.

use std::fmt;
use std::panic::Location;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::wire::error_body::{ErrorBody, StackFrame};

/// What went wrong, classified once where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No responder acknowledged a unicast within the ack timeout (404 `ack timeout`).
    AckTimeout,
    /// The deadline passed, or too little budget was left to try (408 `timeout`).
    Timeout,
    /// The call chain is too deep (508 `call depth overflow`).
    CallDepthOverflow,
    /// A fragmented message stopped arriving (408 `defrag timeout`).
    DefragTimeout,
    /// The request itself is unusable: bad URL, bad arguments (400).
    BadRequest,
    /// The bus is not connected (503).
    Unavailable,
    /// NATS refused to carry the request: the connection's user may not publish to its
    /// subject (403).
    Refused,
    /// A remote handler answered with an `Err` response; the status is the one it sent.
    Remote,
    /// A local handler returned an error with a status of its choosing.
    Handler,
    /// A handler panicked (500).
    Panic,
    /// Anything else that went wrong locally (500).
    Internal,
}

/// A status-carrying error, as Microbus propagates it between services.
///
/// Its source (the transport's or the codec's error it was made from) stays in this process:
/// the wire carries the message, status and stack only. Two errors are equal when what the
/// wire would carry is.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    status: StatusCode,
    message: String,
    stack: Vec<StackFrame>,
    source: Cause,
}

/// The error another one was made from, kept in this process (the wire does not carry it),
/// shared so that errors clone.
#[derive(Clone, Default)]
pub struct Cause(Option<Arc<dyn std::error::Error + Send + Sync>>);

impl Cause {
    pub fn of(source: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause(Some(Arc::new(source)))
    }

    /// For [`std::error::Error::source`].
    pub fn get(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(source) => write!(f, "Some({source:?})"),
            None => f.write_str("None"),
        }
    }
}

/// An error of one layer: a kind callers match on, what was being done, and the error
/// underneath. `TransportError` and `TelemetryError` are this, each with its own kinds.
#[derive(Debug, Clone)]
pub struct KindError<K> {
    kind: K,
    message: String,
    cause: Cause,
}

impl<K: Copy + fmt::Debug> KindError<K> {
    pub fn new(kind: K, message: impl Into<String>) -> KindError<K> {
        KindError {
            kind,
            message: message.into(),
            cause: Cause::default(),
        }
    }

    /// `message` says what was being done; `source` says why it failed.
    pub fn caused_by(
        kind: K,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> KindError<K> {
        KindError {
            kind,
            message: message.into(),
            cause: Cause::of(source),
        }
    }

    pub fn kind(&self) -> K {
        self.kind
    }
}

impl<K: fmt::Debug> fmt::Display for KindError<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)?;
        match self.cause.get() {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl<K: fmt::Debug> std::error::Error for KindError<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.get()
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.kind == other.kind
            && self.status == other.status
            && self.message == other.message
            && self.stack == other.stack
    }
}

impl Eq for Error {}

impl Error {
    /// An error with `status` returned by a handler; records the caller's location as its stack.
    #[track_caller]
    pub fn new(status: StatusCode, message: impl Into<String>) -> Error {
        Error::with_kind(ErrorKind::Handler, status, message)
    }

    #[track_caller]
    pub fn with_kind(kind: ErrorKind, status: StatusCode, message: impl Into<String>) -> Error {
        let loc = Location::caller();
        Error {
            kind,
            status,
            message: message.into(),
            stack: vec![StackFrame {
                file: loc.file().to_owned(),
                function: String::new(),
                line: loc.line(),
            }],
            source: Cause::default(),
        }
    }

    #[track_caller]
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::with_kind(ErrorKind::BadRequest, StatusCode::BAD_REQUEST, message)
    }

    #[track_caller]
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(StatusCode::NOT_FOUND, message)
    }

    #[track_caller]
    pub fn internal(message: impl Into<String>) -> Error {
        Error::with_kind(
            ErrorKind::Internal,
            StatusCode::INTERNAL_SERVER_ERROR,
            message,
        )
    }

    #[track_caller]
    pub fn ack_timeout() -> Error {
        Error::with_kind(ErrorKind::AckTimeout, StatusCode::NOT_FOUND, "ack timeout")
    }

    /// NATS refused to publish to `subject` (permissions).
    #[track_caller]
    pub fn refused(subject: &str) -> Error {
        Error::with_kind(
            ErrorKind::Refused,
            StatusCode::FORBIDDEN,
            format!("NATS refused to publish to {subject}: permissions violation"),
        )
    }

    #[track_caller]
    pub fn timeout() -> Error {
        Error::with_kind(ErrorKind::Timeout, StatusCode::REQUEST_TIMEOUT, "timeout")
    }

    #[track_caller]
    pub fn defrag_timeout() -> Error {
        Error::with_kind(
            ErrorKind::DefragTimeout,
            StatusCode::REQUEST_TIMEOUT,
            "defrag timeout",
        )
    }

    #[track_caller]
    pub fn call_depth_overflow() -> Error {
        Error::with_kind(
            ErrorKind::CallDepthOverflow,
            StatusCode::LOOP_DETECTED,
            "call depth overflow",
        )
    }

    #[track_caller]
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::with_kind(
            ErrorKind::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            message,
        )
    }

    #[track_caller]
    pub fn panic(message: impl Into<String>) -> Error {
        Error::with_kind(ErrorKind::Panic, StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The `Err` response that carries this error across the bus: its status and JSON body.
    /// [`Error::from_err_response`] reads it back.
    pub fn to_err_response(&self) -> Response<Bytes> {
        let mut res = Response::new(Bytes::from(self.to_body().to_json()));
        *res.status_mut() = self.status;
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        res
    }

    /// Rebuild the error a remote handler sent in an `Err` response.
    pub fn from_err_response(status: StatusCode, body: &[u8]) -> Error {
        match ErrorBody::from_json(body) {
            Some(b) => Error {
                kind: ErrorKind::Remote,
                status: StatusCode::from_u16(b.status_code)
                    .ok()
                    .filter(|s| b.status_code != 0 && !s.is_informational())
                    .unwrap_or(if status.is_client_error() || status.is_server_error() {
                        status
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }),
                message: b.error,
                stack: b.stack,
                source: Cause::default(),
            },
            None => Error {
                kind: ErrorKind::Remote,
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned(),
                stack: Vec::new(),
                source: Cause::default(),
            },
        }
    }

    /// The same error, remembering the error it was made from (see [`std::error::Error::source`]).
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Cause::of(source);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn stack(&self) -> &[StackFrame] {
        &self.stack
    }

    /// The JSON body of an `Err` response.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message.clone(),
            stack: self.stack.clone(),
            status_code: self.status.as_u16(),
        }
    }

    /// Go's `%+v` rendering: message, `[status]` unless 500, then the stack.
    pub fn verbose(&self) -> String {
        let mut out = self.message.clone();
        if self.status != StatusCode::INTERNAL_SERVER_ERROR {
            out.push_str(&format!("\n[{}]", self.status.as_u16()));
        }
        if !self.stack.is_empty() {
            out.push('\n');
            for frame in &self.stack {
                // Rust knows the file and line of an error but not its function.
                if frame.function.is_empty() {
                    out.push_str(&format!("\n- {}:{}", frame.file, frame.line));
                } else {
                    out.push_str(&format!(
                        "\n- {}\n  {}:{}",
                        frame.function, frame.file, frame.line
                    ));
                }
            }
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Error {{ kind: {:?}, status: {}, message: {:?} }}",
            self.kind,
            self.status.as_u16(),
            self.message
        )
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_error_says_what_failed_and_keeps_why() {
        use std::error::Error as _;
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Kind {
            Connect,
            Disconnected,
        }
        let e = KindError::caused_by(
            Kind::Connect,
            "cannot connect to NATS at nats://x:4222",
            std::io::Error::other("refused"),
        );
        assert_eq!(e.kind(), Kind::Connect);
        assert_eq!(
            e.to_string(),
            "Connect: cannot connect to NATS at nats://x:4222: refused"
        );
        assert_eq!(e.source().unwrap().to_string(), "refused");
        let plain = KindError::new(Kind::Disconnected, "closed");
        assert_eq!(plain.to_string(), "Disconnected: closed");
        assert!(plain.source().is_none());
    }

    #[test]
    fn an_error_keeps_its_source_in_process_only() {
        use std::error::Error as _;
        let io = std::io::Error::other("connection reset");
        // One call site, so that both have the same stack.
        let make = || Error::unavailable("bus unavailable");
        let e = make().caused_by(io);
        assert_eq!(e.source().unwrap().to_string(), "connection reset");
        // What the wire carries is equal; the source is not part of it.
        assert_eq!(e, make());
        assert!(Error::unavailable("x").source().is_none());
    }

    #[test]
    fn round_trips_through_err_body() {
        let e = Error::new(StatusCode::BAD_REQUEST, "division by zero");
        let json = e.to_body().to_json();
        let back = Error::from_err_response(StatusCode::BAD_REQUEST, &json);
        assert_eq!(back.kind(), ErrorKind::Remote);
        assert_eq!(back.status(), StatusCode::BAD_REQUEST);
        assert_eq!(back.message(), "division by zero");
        assert_eq!(back.stack()[0].file, file!());
    }

    #[test]
    fn tolerates_bad_err_bodies() {
        let e = Error::from_err_response(StatusCode::OK, b"<html>oops");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let e = Error::from_err_response(StatusCode::OK, br#"{"error":"x"}"#);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let e = Error::from_err_response(StatusCode::OK, br#"{"error":"x","statusCode":9999}"#);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn verbose_rendering() {
        let e = Error::timeout();
        assert!(e.verbose().starts_with("timeout\n[408]\n\n- "));
    }
}
