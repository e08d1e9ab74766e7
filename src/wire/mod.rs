//! The Microbus wire protocol (reference §1): subjects, frame headers, the HTTP/1.1 payload
//! codec, bus URLs and the error body. Pure functions, no I/O.

pub mod codec;
pub mod error_body;
pub mod frame;
pub mod hostname;
pub mod subject;
pub mod url;

pub use codec::{decode_request, decode_response, encode_ack, encode_request, encode_response};
pub use frame::{Fragment, Frame, OpCode};
pub use hostname::{is_valid_hostname, is_valid_service_hostname, ALL_HOSTS};
pub use subject::{request_subject, response_subject, subscription_subject, DEFAULT_PLANE};
pub use url::BusUrl;

/// Why a subject, URL or payload could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("invalid hostname '{0}'")]
    InvalidHostname(String),
    #[error("invalid method '{0}'")]
    InvalidMethod(String),
    #[error("invalid path spec: {0}")]
    InvalidPathSpec(String),
    #[error("subject of {0} bytes is longer than the bus accepts")]
    SubjectTooLong(usize),
    #[error("invalid instance id '{0}'")]
    InvalidInstanceId(String),
    #[error("invalid URL '{0}'")]
    InvalidUrl(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("truncated message")]
    Truncated,
    #[error("invalid header '{0}'")]
    InvalidHeader(String),
    #[error("conflicting Content-Length and Transfer-Encoding")]
    ConflictingFraming,
    #[error("unsupported Transfer-Encoding '{0}'")]
    UnsupportedTransferEncoding(String),
}
