//! The ingress middleware, one named stage each, in the reference's order (§4.2) from the
//! outside in: telemetry, error printer, blocked paths, access log, secure redirect, CORS,
//! X-Forwarded, internal headers, root path, timeout, cache control, compression, default
//! favicon, then the proxy.
//!
//! Each stage is a plain function of the request, and those that also act on the response
//! have a second one for it: `stages` runs the request halves in order and the response
//! halves in reverse, around the one await (compression, the favicon and the proxy). Nested
//! async stages made a future of 11.6 KB, copied into its box on every request (callgrind:
//! ~11.7k instructions) and polled through thirteen state machines. Compression is
//! tower-http's layer, around the last two stages.
//!
//! Inner stages report an error by returning [`error_response`]: an empty response carrying
//! the [`ResponseError`]; the error printer, outer, renders it once.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use tokio::time::Instant;

use super::compression;
use super::context::{error_response, ConnInfo, Proxied, RequestState, ResponseError};
use super::metrics::Served;
use super::shared::Shared;
use crate::error::Error;
use crate::telemetry::log_scope::{RequestLog, ScopeKind};
use crate::wire::codec;
use crate::wire::error::truncated;
use crate::wire::frame::{self, is_internal_header};

/// The whole middleware chain and the proxy, for one request that came in on `info`.
///
/// As axum's router did before: a response whose body size is known gets its
/// `Content-Length`, and the response to a `HEAD` has no body.
pub async fn handle(shared: &Shared, info: ConnInfo, req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    let mut res = telemetry(shared, RequestState::new(info), req).await;
    if !res.headers().contains_key(header::CONTENT_LENGTH) {
        if let Some(size) = axum::body::HttpBody::size_hint(res.body()).exact() {
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, codec::length_value(size));
        }
    }
    if head {
        *res.body_mut() = Body::empty();
    }
    res
}

/// The client's address: the first `X-Forwarded-For` hop when the peer is a trusted proxy,
/// else the peer itself.
pub fn client_ip(shared: &Shared, info: &ConnInfo, req: &Request) -> IpAddr {
    let peer = info.peer.ip();
    if !shared.config.trusted_proxies.contains(&peer) {
        return peer;
    }
    req.headers()
        .get(X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| {
            let first = first.trim();
            first
                .parse::<IpAddr>()
                .ok()
                .or_else(|| first.parse::<SocketAddr>().ok().map(|s| s.ip()))
        })
        .unwrap_or(peer)
}

/// An IP address as text, IPv4 without the formatting machinery (every request's span has one).
fn ip_text(ip: IpAddr) -> IpText {
    let mut out = IpText {
        bytes: [0; IP_TEXT_MAX],
        len: 0,
    };
    out.push_ip(ip);
    out
}

/// A socket address as `Display` writes it (`10.0.0.1:5432`, `[::1]:80`), IPv4 without the
/// formatting machinery (every request's `X-Forwarded-For` is one).
fn socket_text(addr: SocketAddr) -> IpText {
    let mut out = IpText {
        bytes: [0; IP_TEXT_MAX],
        len: 0,
    };
    match addr {
        SocketAddr::V4(v4) => {
            out.push_ip(IpAddr::V4(*v4.ip()));
            out.push(b":");
            out.push(itoa::Buffer::new().format(v4.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut out.bytes[..]);
            let _ = write!(cursor, "{addr}");
            out.len = cursor.position() as usize;
        }
    }
    out
}

impl IpText {
    fn push_ip(&mut self, ip: IpAddr) {
        let out = self;
        match ip {
            IpAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b".");
                    }
                    out.push(digits.format(octet).as_bytes());
                }
            }
            IpAddr::V6(_) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut out.bytes[..]);
                let _ = write!(cursor, "{ip}");
                out.len = cursor.position() as usize;
            }
        }
    }
}

/// The longest socket address text: `[`, an IPv6 address with an embedded IPv4 one (45),
/// `%` and a scope id (10), `]:` and a port (5).
const IP_TEXT_MAX: usize = 64;

struct IpText {
    bytes: [u8; IP_TEXT_MAX],
    len: usize,
}

impl IpText {
    fn push(&mut self, b: &[u8]) {
        self.bytes[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    fn as_str(&self) -> &str {
        // Digits, dots, colons and hex letters only.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

/// The trace id of error pages written outside any span (none was started).
fn new_trace_id() -> opentelemetry::trace::TraceId {
    opentelemetry::trace::TraceId::from(rand::random::<u128>())
}

/// The root SERVER span of every request `:<port><path>`, continued from the client's
/// `traceparent` only on trusted listeners; `Server-Timing` with total and bus time; the
/// ingress metrics per listener and target.
async fn telemetry(shared: &Shared, mut state: RequestState, req: Request) -> Response {
    use crate::telemetry::names::*;
    use crate::telemetry::trace::{self, SpanContext, SpanKind, Status};

    let started = std::time::Instant::now();
    let info = state.info;
    let parent = if shared
        .config
        .trust_trace_context
        .contains(&info.listen_port)
    {
        trace::extract(req.headers())
    } else {
        SpanContext::NONE
    };
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    let route = super::proxy::parse_target(&path)
        .map(|t| {
            let mut route = String::with_capacity(t.host.len() + 6);
            route.push_str(t.host);
            route.push(':');
            route.push_str(itoa::Buffer::new().format(t.port));
            route
        })
        .unwrap_or_else(|| ROUTE_INVALID.to_owned());
    let tracer = shared.conn.tracer();
    let mut span = tracer.start(
        &parent,
        SpanKind::Server,
        trace::SpanName::Server {
            port: info.listen_port,
            path: &path,
        },
        |a| {
            a.str(A_HTTP_METHOD, &method);
            a.str(A_URL_PATH, &path);
            a.str(A_URL_SCHEME, if info.tls { "https" } else { "http" });
            a.int(A_SERVER_PORT, info.listen_port as i64);
            a.str(
                A_CLIENT_ADDRESS,
                ip_text(client_ip(shared, &info, &req)).as_str(),
            );
            a.str(A_HTTP_ROUTE, &route);
            if let Some(q) = req.uri().query() {
                a.str(A_URL_QUERY, q);
            }
            if let Some(ua) = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
            {
                a.str(A_USER_AGENT, ua);
            }
        },
    );
    state.trace = Some(span.context().clone());

    let listener = shared.metrics.listener(info.listen_port);
    listener.in_flight.inc();
    // Every line written on the way carries the ingress, its instance and the trace.
    let log = RequestLog::open(
        ScopeKind::Ingress,
        shared.conn.log_owner(),
        span.context().trace_id(),
    );
    let (mut res, proxied) = log.scope(stages(shared, state, req)).await;
    listener.in_flight.dec();

    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    let response_size = axum::body::HttpBody::size_hint(res.body())
        .exact()
        .unwrap_or(0);
    let request_size = proxied.map_or(0, |p| p.request_body_size);
    span.set_int(A_HTTP_STATUS, status as i64);
    span.set_int(A_HTTP_REQUEST_BODY_SIZE, request_size as i64);
    span.set_int(A_HTTP_RESPONSE_BODY_SIZE, response_size as i64);
    match res.extensions().get::<ResponseError>() {
        Some(ResponseError(err)) => {
            span.record_error(err);
            crate::connector::force_trace(&shared.conn, span.context());
        }
        None if status >= 500 => span.set_status(Status::error(format!("status {status}"))),
        None => span.set_status(Status::Ok),
    }
    tracer.end(span);

    let service_metrics = shared.conn.metrics();
    if service_metrics.enabled() {
        let route = if res.extensions().get::<Blocked>().is_some() {
            ROUTE_BLOCKED
        } else {
            &route
        };
        let route = service_metrics.capped(L_ROUTE, route);
        let method = service_metrics.capped(L_METHOD, &method);
        shared.metrics.observe(Served {
            port: info.listen_port,
            route: &route,
            method: &method,
            status,
            elapsed,
            request_size: request_size as u64,
            response_size,
        });
    }

    let mut timing = String::with_capacity(40);
    timing.push_str("total;dur=");
    push_millis(&mut timing, elapsed);
    if let Some(proxied) = proxied {
        timing.push_str(", bus;dur=");
        push_millis(&mut timing, proxied.bus_time);
    }
    if let Ok(v) = HeaderValue::from_str(&timing) {
        res.headers_mut().insert(SERVER_TIMING, v);
    }
    res
}

/// What the stages that also act on the response took from the request. Each part is set only
/// when its stage ran, so a stage that answers early skips the response half of exactly the
/// stages inside it, as nested layers would.
#[derive(Default)]
struct Unwind {
    /// Error printer: the trace id and whether the client is local.
    printer: Option<(opentelemetry::trace::TraceId, bool)>,
    /// Access log: the request's URI.
    access_log: Option<Uri>,
    /// CORS: the allowed origin to echo.
    cors_origin: Option<HeaderValue>,
    /// Internal headers: strip them from the response too.
    internal_headers: bool,
    /// Cache control: `no-store` unless the service says otherwise.
    cache_control: bool,
}

/// The stages inside telemetry, one future: the request halves in order, compression around
/// the favicon and the proxy (the only await), then the response halves in reverse order.
/// The request's state and what the proxy measured travel beside the request and the
/// response, not in their extensions: each extension map is a box, a table and a box per
/// value (two inserts cost ~1,400 instructions a request with their drops).
async fn stages(
    shared: &Shared,
    mut state: RequestState,
    mut req: Request,
) -> (Response, Option<Proxied>) {
    let mut unwind = Unwind::default();
    // Set by the favicon stage from the proxy's own result: compression hands back only the
    // response.
    let proxied = std::sync::OnceLock::new();
    let res = match request_stages(shared, &mut state, &mut req, &mut unwind) {
        Some(early) => early,
        None => {
            let state = &state;
            let proxied = &proxied;
            compression::compress(req, move |req| default_favicon(shared, state, req, proxied))
                .await
        }
    };
    (response_stages(unwind, res), proxied.into_inner())
}

/// The request half of each stage from the error printer to cache control; `Some` when a
/// stage answers the request itself.
fn request_stages(
    shared: &Shared,
    state: &mut RequestState,
    req: &mut Request,
    unwind: &mut Unwind,
) -> Option<Response> {
    unwind.printer = Some(error_printer(shared, state, req));
    if let Some(res) = blocked_paths(shared, req) {
        return Some(res);
    }
    unwind.access_log = Some(access_log(shared, req));
    if let Some(res) = secure_redirect(shared, &state.info, req) {
        return Some(res);
    }
    match cors(shared, req) {
        Cors::NoOrigin => {}
        Cors::Refused(res) => return Some(res),
        Cors::Preflight(origin) => {
            unwind.cors_origin = Some(origin);
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::NO_CONTENT;
            return Some(res);
        }
        Cors::Allowed(origin) => unwind.cors_origin = Some(origin),
    }
    x_forward(shared, &state.info, req);
    strip_internal_headers(req.headers_mut());
    unwind.internal_headers = true;
    root_path(req);
    state.deadline = timeout(shared, req);
    unwind.cache_control = true;
    None
}

/// The response halves, innermost first.
fn response_stages(unwind: Unwind, mut res: Response) -> Response {
    if unwind.cache_control {
        res.headers_mut()
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    if unwind.internal_headers {
        strip_internal_headers(res.headers_mut());
    }
    if let Some(origin) = unwind.cors_origin {
        cors_headers(&mut res, origin);
    }
    if let Some(uri) = unwind.access_log {
        access_log_result(&uri, &res);
    }
    match unwind.printer {
        Some((trace_id, local)) => print_error(trace_id, local, res),
        None => res,
    }
}

/// Error printer, request half: the trace id every error page names, and whether the client
/// may see the full error.
/// The trace id is the request span's (read from its context, written out only on an error
/// page: as a `String` of its own it cost an allocation, a clone and two extension inserts).
fn error_printer(
    shared: &Shared,
    state: &RequestState,
    req: &Request,
) -> (opentelemetry::trace::TraceId, bool) {
    let trace_id = state
        .trace
        .as_ref()
        .map(|cx| cx.trace_id())
        .unwrap_or_else(new_trace_id);
    (trace_id, client_ip(shared, &state.info, req).is_loopback())
}

/// Renders an [`ResponseError`] as `text/plain`: the full error and stack for a client on
/// localhost, `<status text> <trace id>` for anyone else; every error page names its trace.
fn print_error(
    trace_id: opentelemetry::trace::TraceId,
    local: bool,
    mut res: Response,
) -> Response {
    // Left in place: the telemetry layer records it on the span.
    let Some(ResponseError(err)) = res.extensions().get::<ResponseError>().cloned() else {
        return res;
    };
    let id = &trace_id;
    let body = if local {
        format!("{}\n\n{{trace/{id}}}", err.verbose())
    } else {
        format!(
            "{} {id} {{trace/{id}}}",
            err.status().canonical_reason().unwrap_or("Error")
        )
    };
    let headers = res.headers_mut();
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    *res.body_mut() = Body::from(body);
    res
}

/// Paths that scanners probe get a 404 without reaching the bus.
fn blocked_paths(shared: &Shared, req: &Request) -> Option<Response> {
    if !shared.config.blocked_paths.blocks(req.uri().path()) {
        return None;
    }
    let mut res = error_response(Error::not_found("not found"));
    res.extensions_mut().insert(Blocked);
    Some(res)
}

/// Marks the response to a blocked path, so that its metrics say `route="_blocked"`.
#[derive(Clone, Copy)]
struct Blocked;

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
}

/// "Request received" for every request but metrics scrapes when `AccessLog` is on; the URI
/// is kept for [`access_log_result`] (a clone shares its bytes: no copy unless a line is
/// written).
fn access_log(shared: &Shared, req: &Request) -> Uri {
    let uri = req.uri();
    if shared.config.access_log && !path_and_query(uri).starts_with("/metrics.core") {
        tracing::info!(path = truncated(path_and_query(uri), 512), method = %req.method(), "Request received");
    }
    uri.clone()
}

/// "Serving" with the error when one happened: 404 at INFO, other 4xx at WARN, 5xx at ERROR.
fn access_log_result(uri: &Uri, res: &Response) {
    let Some(ResponseError(err)) = res.extensions().get::<ResponseError>() else {
        return;
    };
    let status = err.status().as_u16();
    if status == 404 {
        tracing::info!(error = %err, path = truncated(path_and_query(uri), 512), status, "Serving");
    } else if status < 500 {
        tracing::warn!(error = %err, path = truncated(path_and_query(uri), 512), status, "Serving");
    } else {
        tracing::error!(error = %err, path = truncated(path_and_query(uri), 2048), status, "Serving");
    }
}

/// Plain `GET` on port 80 (the `Host`'s port, as Go takes it) goes to `https://` when TLS
/// serves port 443.
fn secure_redirect(shared: &Shared, info: &ConnInfo, req: &Request) -> Option<Response> {
    if info.tls
        || super::proxy::external_port(req.headers(), req.uri(), info.tls) != "80"
        || req.method() != Method::GET
        || !shared.tls_ports.contains(&443)
    {
        return None;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("");
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = HeaderValue::from_str(&format!("https://{host}{pq}")).ok()?;
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    res.headers_mut().insert(header::LOCATION, location);
    Some(res)
}

/// What Microbus's CORS makes of a request.
enum Cors {
    /// No `Origin`: not a CORS request.
    NoOrigin,
    /// A disallowed origin: 403.
    Refused(Response),
    /// An allowed origin's preflight `OPTIONS`, answered 204 here.
    Preflight(HeaderValue),
    /// An allowed origin: echoed on the response.
    Allowed(HeaderValue),
}

/// Microbus's CORS: only with an `Origin`; a disallowed origin is 403, an allowed one is
/// echoed (never `*`) with credentials; a preflight `OPTIONS` is answered 204 here.
/// (tower-http's CorsLayer omits headers instead of refusing, so this one is ours.)
fn cors(shared: &Shared, req: &Request) -> Cors {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Cors::NoOrigin;
    };
    let origin_str = origin.to_str().unwrap_or("");
    if !shared.config.allowed_origins.allows(origin_str) {
        return Cors::Refused(error_response(Error::new(
            StatusCode::FORBIDDEN,
            format!("disallowed origin '{}'", truncated(origin_str, 256)),
        )));
    }
    if req.method() == Method::OPTIONS {
        Cors::Preflight(origin.clone())
    } else {
        Cors::Allowed(origin.clone())
    }
}

fn cors_headers(res: &mut Response, origin: HeaderValue) {
    let star = HeaderValue::from_static("*");
    let h = res.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, star.clone());
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, star.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, star);
}

const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_FORWARDED_PATH: HeaderName = HeaderName::from_static("x-forwarded-path");

/// `X-Forwarded-*` from a trusted proxy are kept; from anyone else they are replaced by what
/// this ingress saw. `X-Forwarded-Path` is always the external path.
fn x_forward(shared: &Shared, info: &ConnInfo, req: &mut Request) {
    let trusted = shared.config.trusted_proxies.contains(&info.peer.ip());
    let path = HeaderValue::from_str(req.uri().path());
    let headers = req.headers_mut();
    if !trusted {
        let forged: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-forwarded-"))
            .cloned()
            .collect();
        for k in forged {
            headers.remove(k);
        }
    }
    if !headers.contains_key(X_FORWARDED_HOST) {
        let host = headers.get(header::HOST).cloned();
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        if let Ok(v) = HeaderValue::from_str(socket_text(info.peer).as_str()) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if info.tls { "https" } else { "http" }),
        );
        headers.insert(X_FORWARDED_PREFIX, HeaderValue::from_static(""));
    }
    if let Ok(v) = path {
        headers.insert(X_FORWARDED_PATH, v);
    }
}

/// `Microbus-*`, `Traceparent` and `Tracestate` never cross the ingress, in either direction.
fn strip_internal_headers(headers: &mut http::HeaderMap) {
    frame::remove_headers(headers, |k| is_internal_header(k.as_str()));
}

/// `/` is the service `root`.
fn root_path(req: &mut Request) {
    if req.uri().path() != "/" {
        return;
    }
    let pq = match req.uri().query() {
        Some(q) => format!("/root?{q}"),
        None => "/root".to_owned(),
    };
    if let Ok(uri) = pq.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
}

/// The header a client uses to ask for a different budget, in whole seconds.
pub const REQUEST_TIMEOUT_HEADER: &str = "request-timeout";
/// Looked up by a `HeaderName`: a `&str` is parsed into one on every lookup (~150 instructions).
const REQUEST_TIMEOUT: HeaderName = HeaderName::from_static(REQUEST_TIMEOUT_HEADER);

/// The deadline: `TimeBudget`, or `Request-Timeout` seconds when the client sends a positive one.
fn timeout(shared: &Shared, req: &Request) -> Option<Instant> {
    let asked = req
        .headers()
        .get(REQUEST_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    let budget = asked.or(Some(shared.config.time_budget).filter(|b| !b.is_zero()));
    budget.map(|b| Instant::now() + b)
}

static FAVICON: &[u8] = include_bytes!("favicon.ico");

/// A service-less `/favicon.ico` gets a built-in icon instead of a 404.
async fn default_favicon(
    shared: &Shared,
    state: &RequestState,
    req: Request,
    proxied: &std::sync::OnceLock<Proxied>,
) -> Response {
    let is_favicon = req.uri().path() == "/favicon.ico";
    let (res, measured) = super::proxy::proxy(shared, state, req).await;
    if is_favicon
        && res
            .extensions()
            .get::<ResponseError>()
            .is_some_and(|e| e.0.status() == StatusCode::NOT_FOUND)
    {
        let mut icon = Response::new(Body::from(FAVICON));
        icon.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("image/x-icon"),
        );
        icon.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=86400"),
        );
        // Not off the bus: no `bus;dur` in its `Server-Timing`, no request body counted.
        return icon;
    }
    if let Some(m) = measured {
        // Set once: the proxy runs once per request.
        let _ = proxied.set(m);
    }
    res
}

/// `d` in milliseconds with three decimals (`1.234`), as Server-Timing reads it; integer
/// formatting: `{:.3}` of a float cost ~1,500 instructions per request.
fn push_millis(out: &mut String, d: Duration) {
    let micros = d.as_micros();
    out.push_str(itoa::Buffer::new().format(micros / 1000));
    out.push('.');
    let frac = (micros % 1000) as u16;
    out.push(char::from(b'0' + (frac / 100) as u8));
    out.push(char::from(b'0' + (frac / 10 % 10) as u8));
    out.push(char::from(b'0' + (frac % 10) as u8));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_millis() {
        for (micros, text) in [
            (0, "0.000"),
            (7, "0.007"),
            (1_234, "1.234"),
            (20_000_050, "20000.050"),
        ] {
            let mut out = String::new();
            push_millis(&mut out, Duration::from_micros(micros));
            assert_eq!(out, text);
        }
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.20.3.4",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.168.100.200",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn socket_text_matches_display() {
        for addr in [
            "127.0.0.1:0",
            "255.255.255.255:65535",
            "10.20.3.4:8080",
            "[::1]:80",
            "[::ffff:192.168.100.200]:443",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(socket_text(addr).as_str(), addr.to_string());
        }
        let widest = std::net::SocketAddrV6::new(
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                .parse()
                .unwrap(),
            65535,
            0,
            u32::MAX,
        );
        let widest = SocketAddr::V6(widest);
        assert_eq!(socket_text(widest).as_str(), widest.to_string());
    }
}
