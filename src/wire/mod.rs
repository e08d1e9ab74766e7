//! The Microbus wire protocol (reference §1): subjects, frame headers, the HTTP/1.1 payload
//! codec, bus URLs and the error body. Pure functions, no I/O.

pub mod codec;
pub mod encode;
pub mod error;
pub mod error_body;
pub mod frame;
pub mod hostname;
pub mod reply;
pub mod subject;
pub mod url;

pub use codec::{
    decode_request, decode_response, encode_ack, encode_request, encode_request_with_frame,
    encode_response,
};
pub use error::WireError;
pub use frame::{Fragment, Frame, OpCode};
pub use hostname::{is_valid_hostname, is_valid_service_hostname, ALL_HOSTS};
pub use subject::{request_subject, response_subject, subscription_subject, DEFAULT_PLANE};
pub use url::BusUrl;
