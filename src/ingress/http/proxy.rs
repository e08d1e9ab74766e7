//! The proxy itself (reference §4.3): the first path segment names the bus host (and port),
//! the rest is the path; the body is read within the memory budget and sent as a unicast.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use http_body_util::BodyExt;

use super::context::{empty_not_found, error_response, Proxied, RequestState};
use super::shared::Shared;
use crate::connector::CONTROL_PORT;
use crate::error::Error;
use crate::wire::{frame, is_valid_hostname};

/// Whether a header describes one hop's connection and never travels further (as a `match` on
/// the name: it runs for every header in both directions).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

/// The internal host, port and path of an external path `/host[:port]/rest`.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
}

/// Split `/host[:port]/rest`; `None` for an invalid host or port.
pub fn parse_target(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix('/')?;
    // By bytes (twice a request): `find` and `rsplit_once` with a `char` go through char
    // searchers.
    let slash = rest.bytes().position(|b| b == b'/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(slash);
    let (host, port) = match authority.bytes().rposition(|b| b == b':') {
        Some(colon) => (
            &authority[..colon],
            authority[colon + 1..].parse::<u16>().ok()?,
        ),
        None => (authority, 443),
    };
    if !is_valid_hostname(host) {
        return None;
    }
    Some(Target { host, port, path })
}

/// `headers` without those of one hop and without `Host` (the bus request carries its own).
/// Moved, not copied: a copy appended every header again (~24 per request, each hashed).
fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    frame::remove_headers(&mut headers, |name| {
        name == header::HOST || is_hop_by_hop(name)
    });
    headers
}

/// Both framings were sent (see [`super::framing_guard`]).
fn conflicting_framing(headers: &HeaderMap) -> bool {
    headers.contains_key(super::framing_guard::CONFLICT_MARKER_NAME)
        || (headers.contains_key(header::TRANSFER_ENCODING)
            && headers.contains_key(header::CONTENT_LENGTH))
}

/// The request's external port as Go's ingress takes it: the port of its `Host` (the
/// `:authority` over HTTP/2), else 443 over TLS and 80 without. Not the listener's port: behind
/// a load balancer that sends `Host: example.com` to `:8080`, the request is a port-80 one, and
/// `80:*->443` must apply, not `8080:*->*` (which would expose every internal port).
pub fn external_port<'a>(headers: &'a HeaderMap, uri: &'a http::Uri, tls: bool) -> &'a str {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    // `[::1]:8080` and `example.com:8080` have a port after the last colon; `[::1]` has none.
    match host.bytes().rposition(|b| b == b':') {
        Some(i) if !host[i..].contains(']') => &host[i + 1..],
        _ if tls => "443",
        _ => "80",
    }
}

/// The innermost stage: the request to the bus, its response back, and what it measured
/// (for the telemetry stage) when the request went onto the bus.
pub async fn proxy(
    shared: &Shared,
    state: &RequestState,
    req: Request,
) -> (Response, Option<Proxied>) {
    let (mut parts, body) = req.into_parts();
    if conflicting_framing(&parts.headers) {
        // Request smuggling: the two framings could be read differently by another hop.
        let mut res = error_response(Error::bad_request(
            "conflicting Content-Length and Transfer-Encoding",
        ));
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return (res, None);
    }
    let tls = state.info.tls;
    let Some(target) = parse_target(parts.uri.path()) else {
        return (empty_not_found(), None);
    };
    let external_port = external_port(&parts.headers, &parts.uri, tls);
    let port = shared.config.port_mappings.map(external_port, target.port);
    if port == CONTROL_PORT {
        return (empty_not_found(), None);
    }
    // Pushed piece by piece: `format!` cost ~1,200 instructions here, once a request.
    let query = parts.uri.query();
    let mut url = String::with_capacity(
        16 + target.host.len() + target.path.len() + query.map_or(0, |q| q.len() + 1),
    );
    url.push_str("https://");
    url.push_str(target.host);
    url.push(':');
    url.push_str(itoa::Buffer::new().format(port));
    url.push_str(target.path);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }

    let mut body = body;
    let (body, _reservation) = match read_body(shared, &parts.headers, &mut body).await {
        Ok(read) => read,
        Err(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                tokio::spawn(linger(body));
            }
            return (error_response(e), None);
        }
    };
    let mut bus_req = match http::Request::builder()
        .method(parts.method.clone())
        .uri(&url)
        .body(body)
    {
        Ok(r) => r,
        Err(_) => return (empty_not_found(), None),
    };
    *bus_req.headers_mut() = end_to_end(std::mem::take(&mut parts.headers));

    let request_body_size = bus_req.body().len();
    // The response leaves the bus here: its internal headers never enter its map.
    let mut ctx = shared.conn.ctx().for_external_responses();
    if let Some(deadline) = state.deadline {
        ctx = ctx.with_deadline(deadline);
    }
    if let Some(cx) = &state.trace {
        ctx = ctx.with_span_context(cx.clone());
    }
    let bus_started = std::time::Instant::now();
    let result = ctx.request(bus_req).await;
    let bus_time = bus_started.elapsed();
    let out = match result {
        Ok(res) => {
            let (res_parts, res_body) = res.into_parts();
            let mut out = Response::new(Body::from(res_body));
            *out.status_mut() = res_parts.status;
            *out.headers_mut() = end_to_end(res_parts.headers);
            out
        }
        Err(e) => error_response(e),
    };
    let proxied = Proxied {
        bus_time,
        request_body_size,
    };
    (out, Some(proxied))
}

/// Most bytes of a refused body read and thrown away so that the client, still sending,
/// receives its 413 instead of a connection reset.
pub const LINGER_MAX_BYTES: usize = 64 << 20;
/// Longest a refused body is drained.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

async fn linger(mut body: Body) {
    let mut drained = 0usize;
    let drain = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                drained += data.len();
                if drained > LINGER_MAX_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
}

/// Read the whole body within the memory budget and the read timeout.
async fn read_body(
    shared: &Shared,
    headers: &HeaderMap,
    body: &mut Body,
) -> Result<(Bytes, super::memory::Reservation), Error> {
    let insufficient = || Error::new(StatusCode::PAYLOAD_TOO_LARGE, "insufficient memory");
    let declared: Option<usize> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let mut reservation = shared
        .memory
        .reserve(declared.unwrap_or(0))
        .ok_or_else(insufficient)?;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Error::bad_request(format!("cannot read request body: {e}")).caused_by(e)
            })?;
            if let Ok(data) = frame.into_data() {
                let needed = (buf.len() + data.len()).saturating_sub(reservation.held());
                if needed > 0 && !reservation.grow(needed) {
                    return Err(insufficient());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(shared.config.read_timeout, read).await {
        Ok(Ok(())) => Ok((buf.freeze(), reservation)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::new(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = |p| parse_target(p);
        assert_eq!(
            t("/calc.example/add"),
            Some(Target {
                host: "calc.example",
                port: 443,
                path: "/add"
            })
        );
        assert_eq!(
            t("/calc.example:1234/x/y"),
            Some(Target {
                host: "calc.example",
                port: 1234,
                path: "/x/y"
            })
        );
        assert_eq!(
            t("/calc.example"),
            Some(Target {
                host: "calc.example",
                port: 443,
                path: ""
            })
        );
        assert_eq!(
            t("/calc.example/"),
            Some(Target {
                host: "calc.example",
                port: 443,
                path: "/"
            })
        );
        for bad in [
            "/%3Fterms=1",
            "/a*b/x",
            "/a.>/x",
            "/a:x/",
            "/a:70000/",
            "/",
            "",
            "/a..b/c",
            "/%2e%2e/x",
            "/[::1]:80/x",
            "/a:/x",
            "/a:1:2/x",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
