//! What the ingress's stages tell each other about a request: where it came in, its trace and
//! its deadline ([`RequestState`]), bus time and body size ([`Proxied`]), handed beside the
//! request and the response; the error the error printer renders, as a response extension
//! (only an error pays for it).

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::StatusCode;
use tokio::time::Instant;

use crate::error::Error;

/// Where a request came in: set per connection by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub listen_port: u16,
    pub tls: bool,
    pub peer: SocketAddr,
}

/// What the stages know about a request, handed from stage to stage beside it (not in its
/// extensions: a box, a table and a box for the value per request).
#[derive(Debug, Clone)]
pub struct RequestState {
    pub info: ConnInfo,
    /// The ingress span of the request, parent of the bus call.
    pub trace: Option<crate::telemetry::trace::SpanContext>,
    /// The deadline of the bus call, set by the timeout stage.
    pub deadline: Option<Instant>,
}

impl RequestState {
    pub fn new(info: ConnInfo) -> RequestState {
        RequestState {
            info,
            trace: None,
            deadline: None,
        }
    }
}

/// What the proxy measured, for the telemetry stage.
#[derive(Debug, Clone, Copy)]
pub struct Proxied {
    /// Time spent waiting for the bus, for `Server-Timing`.
    pub bus_time: Duration,
    /// Bytes of the request body that were read.
    pub request_body_size: usize,
}

/// An error to be rendered by the error printer.
#[derive(Debug, Clone)]
pub struct ResponseError(pub Error);

/// An empty response that carries `err` to the error printer.
pub fn error_response(err: Error) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = err.status();
    res.extensions_mut().insert(ResponseError(err));
    res
}

/// An empty-body 404 that is not an error (bad host, internal port), as Microbus answers.
pub fn empty_not_found() -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::NOT_FOUND;
    res
}
