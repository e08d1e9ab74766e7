//! What the ingress's stages tell each other about a request, as request and response
//! extensions: where it came in, its trace, its deadline, bus time and body size, and the
//! error the error printer renders.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
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

/// The ingress span of the request, parent of the bus call.
#[derive(Debug, Clone)]
pub struct TraceContext(pub crate::telemetry::trace::SpanContext);

/// Time spent waiting for the bus, for `Server-Timing`.
#[derive(Debug, Clone, Copy)]
pub struct BusTime(pub Duration);

/// Bytes of the request body that were read.
#[derive(Debug, Clone, Copy)]
pub struct RequestBodySize(pub usize);

/// The deadline of the bus call, set by the timeout layer.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Option<Instant>);

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

/// The connection a request came in on (a request built elsewhere, as in tests, has none).
pub fn conn_info(req: &Request) -> ConnInfo {
    req.extensions()
        .get::<ConnInfo>()
        .copied()
        .unwrap_or(ConnInfo {
            listen_port: 0,
            tls: false,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        })
}
