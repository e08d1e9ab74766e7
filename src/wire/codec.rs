//! Payload codec (reference §1.5): every bus message is a complete HTTP/1.1 message.
//!
//! Requests are written in absolute form with `Host` and `Content-Length` and headers sorted by
//! name; they are read in absolute or origin form with `Content-Length` or chunked bodies.
//! The head is parsed by `httparse`.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Uri, Version};

use super::error::WireError;
use super::frame;

/// Most headers a bus message may carry; more is hostile input.
pub const MAX_HEADERS: usize = 256;

/// Encode a request whose URI is absolute (`https://host:port/path?query`).
pub fn encode_request(req: &Request<Bytes>) -> Result<Bytes, WireError> {
    let uri = req.uri();
    let authority = uri
        .authority()
        .ok_or_else(|| WireError::InvalidUrl(format!("{uri} is not absolute")))?;
    let scheme = uri.scheme_str().unwrap_or("https");
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "http" { 80 } else { 443 });
    let host = authority.host();
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let body = req.body();

    let mut out = BytesMut::with_capacity(256 + body.len() + header_bytes(req.headers()));
    let mut digits = itoa::Buffer::new();
    let port = digits.format(port).as_bytes();
    out.put_slice(req.method().as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(scheme.as_bytes());
    out.put_slice(b"://");
    out.put_slice(host.as_bytes());
    out.put_u8(b':');
    out.put_slice(port);
    out.put_slice(path_and_query.as_bytes());
    out.put_slice(b" HTTP/1.1\r\nHost: ");
    out.put_slice(host.as_bytes());
    out.put_u8(b':');
    out.put_slice(port);
    out.put_slice(b"\r\n");
    put_content_length(&mut out, body.len());
    write_sorted_headers(
        &mut out,
        req.headers(),
        &[HOST, CONTENT_LENGTH, TRANSFER_ENCODING],
        &[],
    );
    out.put_slice(b"\r\n");
    out.put_slice(body);
    Ok(out.freeze())
}

/// Encode a response: status line, `Content-Length`, headers sorted by name, body.
pub fn encode_response(res: &Response<Bytes>) -> Bytes {
    encode_response_with_frame(res, &[])
}

/// Encode a response with `frame`'s (lower-case name, value) pairs written among its headers,
/// each in its sorted place: a reply's frame never has to enter the response's map.
pub fn encode_response_with_frame(res: &Response<Bytes>, frame: &[(&str, &[u8])]) -> Bytes {
    let body = res.body();
    let frame_bytes: usize = frame.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let head = header_bytes(res.headers()) + frame_bytes;
    let mut out = BytesMut::with_capacity(128 + body.len() + head);
    write_status_line(&mut out, res.status());
    put_content_length(&mut out, body.len());
    write_sorted_headers(
        &mut out,
        res.headers(),
        &[CONTENT_LENGTH, TRANSFER_ENCODING],
        frame,
    );
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.freeze()
}

/// Encode an ack: no body and no length, `Connection: close`, like Microbus's hand-written acks.
pub fn encode_ack(status: StatusCode, headers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + header_bytes(headers));
    write_status_line(&mut out, status);
    out.put_slice(b"Connection: close\r\n");
    write_sorted_headers(&mut out, headers, &[CONTENT_LENGTH, TRANSFER_ENCODING], &[]);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// Encode an ack from its frame, given as (lower-case name, value) pairs in sorted order, as
/// [`encode_ack`] would write the same headers: straight into the payload, with no map to
/// fill and sort (one ack per call). A value a header could not carry is left out, as
/// `frame::set` leaves it out of a map.
pub fn encode_ack_frame(status: StatusCode, frame: &[(&str, &[u8])]) -> Bytes {
    debug_assert!(frame.windows(2).all(|w| w[0].0 < w[1].0), "sorted frame");
    let size: usize = frame.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let mut out = BytesMut::with_capacity(64 + size);
    write_status_line(&mut out, status);
    out.put_slice(b"Connection: close\r\n");
    for (name, value) in frame {
        if is_header_value(value) {
            put_canonical_name(&mut out, name);
            out.put_slice(b": ");
            out.put_slice(value);
            out.put_slice(b"\r\n");
        }
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// `HeaderValue::from_bytes`'s rule, without making (and allocating) the value.
fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn write_status_line(out: &mut BytesMut, status: StatusCode) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        status
            .canonical_reason()
            .unwrap_or("status code")
            .as_bytes(),
    );
    out.put_slice(b"\r\n");
}

fn put_content_length(out: &mut BytesMut, len: usize) {
    out.put_slice(b"Content-Length: ");
    out.put_slice(itoa::Buffer::new().format(len).as_bytes());
    out.put_slice(b"\r\n");
}

/// `name` (lowercase, as `HeaderName` keeps it) written in canonical form (`Microbus-Msg-Id`),
/// straight into `out`.
fn put_canonical_name(out: &mut BytesMut, name: &str) {
    let start = out.len();
    out.put_slice(name.as_bytes());
    let mut upper = true;
    for b in &mut out[start..] {
        if upper {
            b.make_ascii_uppercase();
        }
        upper = *b == b'-';
    }
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

/// Headers sorted by name as Go writes them, each name's values in their order. The pairs are
/// sorted (stably) rather than the names: looking each name up again hashed it once more.
/// Each name is keyed by its first 16 bytes read big-endian (zero-padded), so that most
/// comparisons are one integer comparison instead of a `memcmp` call: same order, as a tie on
/// the key falls back to the whole names.
/// `frame`'s (lower-case name, value) pairs are sorted in with the map's, after any of the
/// map's with the same name; a value a header could not carry is left out.
fn write_sorted_headers(
    out: &mut BytesMut,
    headers: &HeaderMap,
    skip: &[HeaderName],
    frame: &[(&str, &[u8])],
) {
    let mut pairs: Vec<(u128, &str, &[u8])> = Vec::with_capacity(headers.len() + frame.len());
    for (name, value) in headers.iter() {
        if !skip.contains(name) {
            pairs.push((sort_key(name.as_str()), name.as_str(), value.as_bytes()));
        }
    }
    for &(name, value) in frame.iter().filter(|(_, v)| is_header_value(v)) {
        pairs.push((sort_key(name), name, value));
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    for (_, name, value) in pairs {
        put_canonical_name(out, name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
}

fn sort_key(name: &str) -> u128 {
    let mut key = [0u8; 16];
    let n = name.len().min(16);
    key[..n].copy_from_slice(&name.as_bytes()[..n]);
    u128::from_be_bytes(key)
}

/// Decode a request in absolute form, or origin form with a `Host` header. The returned
/// request always has an absolute URI, no `Transfer-Encoding` and an exact `Content-Length`.
pub fn decode_request(payload: Bytes) -> Result<Request<Bytes>, WireError> {
    let mut slots = header_slots();
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed
        .parse_with_uninit_headers(&payload, &mut slots)
        .map_err(malformed)?
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Err(WireError::Truncated),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| WireError::InvalidMethod(parsed.method.unwrap_or_default().to_owned()))?;
    let mut framing = Framing::default();
    let headers = collect_headers(parsed.headers, Some(&mut framing), |v| {
        HeaderValue::from_maybe_shared(payload.slice_ref(v))
    })?;
    let target = parsed.path.unwrap_or_default();
    let uri = absolute_uri(target, &headers)?;
    let body = read_body(&payload, head_len, &framing, BodyWithoutLength::Empty)?;

    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    let len = req.body().len();
    put_length(req.headers_mut(), len);
    Ok(req)
}

/// Decode a response (including acks, which have no length and no body).
pub fn decode_response(payload: Bytes) -> Result<Response<Bytes>, WireError> {
    let mut slots = header_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let (status, head_len) = parse_response_head(&payload, &mut parsed, &mut slots)?;
    response_from_head(&payload, &parsed, status, head_len)
}

pub(super) fn has_no_body(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

pub(super) fn parse_response_head<'h, 'b>(
    payload: &'b [u8],
    parsed: &mut httparse::Response<'h, 'b>,
    slots: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> Result<(StatusCode, usize), WireError> {
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(parsed, payload, slots)
        .map_err(malformed)?
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Err(WireError::Truncated),
    };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code)
        .map_err(|_| WireError::Malformed(format!("invalid status code {code}")))?;
    Ok((status, head_len))
}

pub(super) fn response_from_head(
    payload: &Bytes,
    parsed: &httparse::Response<'_, '_>,
    status: StatusCode,
    head_len: usize,
) -> Result<Response<Bytes>, WireError> {
    let mut framing = Framing::default();
    let headers = collect_headers(parsed.headers, Some(&mut framing), |v| {
        HeaderValue::from_maybe_shared(payload.slice_ref(v))
    })?;
    let body = if has_no_body(status) {
        Bytes::new()
    } else {
        read_body(payload, head_len, &framing, BodyWithoutLength::ToEnd)?
    };
    let mut res = Response::new(body);
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    let len = res.body().len();
    put_length(res.headers_mut(), len);
    Ok(res)
}

/// Parse only the head of a request, for routing decisions that must not copy the body.
pub fn decode_request_headers(payload: &[u8]) -> Result<HeaderMap, WireError> {
    let mut slots = header_slots();
    let mut parsed = httparse::Request::new(&mut []);
    match parsed
        .parse_with_uninit_headers(payload, &mut slots)
        .map_err(malformed)?
    {
        httparse::Status::Complete(_) => {
            collect_headers(parsed.headers, None, HeaderValue::from_bytes)
        }
        httparse::Status::Partial => Err(WireError::Truncated),
    }
}

/// Room for [`MAX_HEADERS`] parsed headers, uninitialised: initialising them wrote 8 KiB for
/// every message decoded, three times per call.
pub(super) fn header_slots<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

fn malformed(e: httparse::Error) -> WireError {
    match e {
        httparse::Error::TooManyHeaders => {
            WireError::Malformed(format!("more than {MAX_HEADERS} headers"))
        }
        other => WireError::Malformed(other.to_string()),
    }
}

/// The framing headers of a received message, read from the parsed head: the decoded message
/// carries its own exact `Content-Length` and no `Transfer-Encoding`, so they never enter its
/// map (putting them in, looking them up and removing them again hashed each several times).
pub(super) struct Framing<'a> {
    /// The `Content-Length` values agreed on, or the first fault among them in order.
    content_length: Result<Option<usize>, WireError>,
    /// The first `Transfer-Encoding`, as `HeaderMap::get` would have returned it.
    transfer_encoding: Option<&'a [u8]>,
}

impl Default for Framing<'_> {
    fn default() -> Self {
        Framing {
            content_length: Ok(None),
            transfer_encoding: None,
        }
    }
}

impl<'a> Framing<'a> {
    /// Take `h` if it is a framing header.
    pub(super) fn take(&mut self, h: &httparse::Header<'a>) -> bool {
        if h.name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str()) {
            if let Ok(found) = self.content_length {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok());
                self.content_length = match (n, found) {
                    (None, _) => Err(WireError::Malformed("invalid Content-Length".into())),
                    (Some(n), Some(f)) if f != n => Err(WireError::ConflictingFraming),
                    (Some(n), _) => Ok(Some(n)),
                };
            }
            true
        } else if h.name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str()) {
            self.transfer_encoding.get_or_insert(h.value);
            true
        } else {
            false
        }
    }
}

/// The headers of a parsed message, each value made by `value_of` (from the payload's shared
/// bytes where there is one: no copy); the names of
/// the Microbus frame are taken from a table instead of being lowercased anew each time.
/// With `framing`, `Content-Length` and `Transfer-Encoding` go there instead of the map.
fn collect_headers<'a>(
    raw: &[httparse::Header<'a>],
    mut framing: Option<&mut Framing<'a>>,
    value_of: impl Fn(&[u8]) -> Result<HeaderValue, http::header::InvalidHeaderValue>,
) -> Result<HeaderMap, WireError> {
    let mut headers = HeaderMap::with_capacity(raw.len());
    for h in raw {
        if let Some(framing) = framing.as_deref_mut() {
            if framing.take(h) {
                continue;
            }
        }
        let name = match frame::known_header_name(h.name) {
            Some(name) => name.clone(),
            None => HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| WireError::InvalidHeader(h.name.to_owned()))?,
        };
        let value = value_of(h.value).map_err(|_| WireError::InvalidHeader(h.name.to_owned()))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn absolute_uri(target: &str, headers: &HeaderMap) -> Result<Uri, WireError> {
    let invalid = || WireError::InvalidUrl(target.chars().take(256).collect());
    let uri: Uri = if target.starts_with("https://") || target.starts_with("http://") {
        target.parse().map_err(|_| invalid())?
    } else if target.starts_with('/') {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| WireError::InvalidUrl(format!("origin-form {target} without Host")))?;
        format!("https://{host}{target}")
            .parse()
            .map_err(|_| invalid())?
    } else {
        return Err(invalid());
    };
    // No userinfo: Go writes none (`Request.WriteProxy`), the encoder would drop it, and a
    // credential has no place in a bus subject or log.
    match uri.authority() {
        Some(a) if !a.as_str().contains('@') => Ok(uri),
        _ => Err(invalid()),
    }
}

#[derive(Clone, Copy)]
pub(super) enum BodyWithoutLength {
    /// Requests without framing headers have no body.
    Empty,
    /// Responses without framing headers run to the end of the payload.
    ToEnd,
}

pub(super) fn read_body(
    payload: &Bytes,
    head_len: usize,
    framing: &Framing<'_>,
    without_length: BodyWithoutLength,
) -> Result<Bytes, WireError> {
    let rest = payload.slice(head_len..);
    let content_length = framing.content_length.clone()?;
    let chunked = match framing.transfer_encoding {
        None => false,
        Some(te) => {
            // Read as the map's value would have been (rare: only chunked bodies come here).
            let te = HeaderValue::from_bytes(te).unwrap_or(HeaderValue::from_static(""));
            let te = te.to_str().unwrap_or_default().trim().to_ascii_lowercase();
            if te != "chunked" {
                return Err(WireError::UnsupportedTransferEncoding(te));
            }
            true
        }
    };
    match (chunked, content_length) {
        (true, Some(_)) => Err(WireError::ConflictingFraming),
        (true, None) => decode_chunked(&rest),
        (false, Some(n)) => {
            if rest.len() < n {
                return Err(WireError::Truncated);
            }
            Ok(rest.slice(..n))
        }
        (false, None) => Ok(match without_length {
            BodyWithoutLength::Empty => Bytes::new(),
            BodyWithoutLength::ToEnd => rest,
        }),
    }
}

fn decode_chunked(mut buf: &[u8]) -> Result<Bytes, WireError> {
    let mut body = BytesMut::new();
    loop {
        let (consumed, size) = match httparse::parse_chunk_size(buf)
            .map_err(|_| WireError::Malformed("invalid chunk size".into()))?
        {
            httparse::Status::Complete(v) => v,
            httparse::Status::Partial => return Err(WireError::Truncated),
        };
        buf = &buf[consumed..];
        if size == 0 {
            // Trailers are ignored; the body is complete.
            return Ok(body.freeze());
        }
        let size = usize::try_from(size).map_err(|_| WireError::Truncated)?;
        if buf.len() < size + 2 {
            return Err(WireError::Truncated);
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(WireError::Malformed("chunk not terminated by CRLF".into()));
        }
        buf = &buf[size + 2..];
    }
}

/// The decoded message's own length (its framing headers were kept out of the map).
fn put_length(headers: &mut HeaderMap, len: usize) {
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Bytes> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Bytes::from(body.to_owned())).unwrap()
    }

    // Reference §1.5/§1.6: a request from alpha.example (id c1) to beta.example/echo.
    const GOLDEN_REQUEST: &str = "POST https://beta.example:443/echo?x=1 HTTP/1.1\r\n\
Host: beta.example:443\r\n\
Content-Length: 5\r\n\
Content-Type: text/plain\r\n\
Microbus-Call-Depth: 1\r\n\
Microbus-From-Host: alpha.example\r\n\
Microbus-From-Id: c1\r\n\
Microbus-Msg-Id: 3t0gkasY\r\n\
Microbus-Op-Code: Req\r\n\
Microbus-Time-Budget: 19750\r\n\
\r\n\
Hello";

    pub(crate) const GOLDEN_ACK: &str = "HTTP/1.1 202 Accepted\r\n\
Connection: close\r\n\
Microbus-From-Host: beta.example\r\n\
Microbus-From-Id: rouq0u0mf4\r\n\
Microbus-Locality: 1.b.west.us\r\n\
Microbus-Msg-Id: 3t0gkasY\r\n\
Microbus-Op-Code: Ack\r\n\
Microbus-Queue: beta.example\r\n\
\r\n";

    pub(crate) const GOLDEN_RESPONSE: &str = "HTTP/1.1 200 OK\r\n\
Content-Length: 5\r\n\
Content-Type: text/plain\r\n\
Microbus-From-Host: beta.example\r\n\
Microbus-From-Id: rouq0u0mf4\r\n\
Microbus-Msg-Id: 3t0gkasY\r\n\
Microbus-Op-Code: Res\r\n\
Microbus-Queue: beta.example\r\n\
\r\n\
Hello";

    #[test]
    fn golden_request_is_byte_exact() {
        // Headers are given out of order and in odd case: the encoder sorts and canonicalizes.
        let req = request(
            "POST",
            "https://beta.example/echo?x=1",
            &[
                ("microbus-time-budget", "19750"),
                ("Microbus-Op-Code", "Req"),
                ("MICROBUS-MSG-ID", "3t0gkasY"),
                ("Microbus-From-Id", "c1"),
                ("Microbus-From-Host", "alpha.example"),
                ("Microbus-Call-Depth", "1"),
                ("Content-Type", "text/plain"),
            ],
            "Hello",
        );
        assert_eq!(
            std::str::from_utf8(&encode_request(&req).unwrap()).unwrap(),
            GOLDEN_REQUEST
        );
        let back = decode_request(Bytes::from_static(GOLDEN_REQUEST.as_bytes())).unwrap();
        assert_eq!(back.uri(), "https://beta.example:443/echo?x=1");
        assert_eq!(back.headers()["microbus-msg-id"], "3t0gkasY");
        assert_eq!(back.body(), "Hello");
    }

    #[test]
    fn golden_ack_and_response() {
        let ack = decode_response(Bytes::from_static(GOLDEN_ACK.as_bytes())).unwrap();
        assert_eq!(ack.status(), 202);
        assert!(ack.body().is_empty());
        let mut headers = ack.headers().clone();
        headers.remove("connection");
        headers.remove(CONTENT_LENGTH);
        assert_eq!(
            std::str::from_utf8(&encode_ack(StatusCode::ACCEPTED, &headers)).unwrap(),
            GOLDEN_ACK
        );

        let res = decode_response(Bytes::from_static(GOLDEN_RESPONSE.as_bytes())).unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.body(), "Hello");
        assert_eq!(
            std::str::from_utf8(&encode_response(&res)).unwrap(),
            GOLDEN_RESPONSE
        );
    }

    #[test]
    fn reads_go_chunked_origin_form_and_repeated_headers() {
        let go = "POST /echo HTTP/1.1\r\nHost: beta.example\r\nTransfer-Encoding: chunked\r\n\
X-Multi: a\r\nx-multi: b\r\n\r\n5\r\nHello\r\n6\r\n, you!\r\n0\r\n\r\n";
        let req = decode_request(Bytes::from_static(go.as_bytes())).unwrap();
        assert_eq!(req.uri(), "https://beta.example/echo");
        assert_eq!(req.body(), "Hello, you!");
        assert_eq!(req.headers()[CONTENT_LENGTH], "11");
        assert!(req.headers().get(TRANSFER_ENCODING).is_none());
        let multi: Vec<_> = req.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        let again = decode_request(encode_request(&req).unwrap()).unwrap();
        assert_eq!(again.body(), "Hello, you!");
        assert_eq!(again.headers().get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn get_without_body() {
        let raw = "GET https://calc.example:443/add?x=1 HTTP/1.1\r\nHost: calc.example:443\r\n\r\n";
        let req = decode_request(Bytes::from_static(raw.as_bytes())).unwrap();
        assert_eq!(req.method(), Method::GET);
        assert!(req.body().is_empty());
    }

    #[test]
    fn rejects_malformed_payloads() {
        let cases: &[&[u8]] = &[
            b"",
            b"garbage",
            b"GET https://a:443/ HTTP/1.1\r\nHost: a\r\n",
            b"GET /x HTTP/1.1\r\n\r\n",
            b"GET x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST https://a:443/ HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            b"POST https://a:443/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST https://a:443/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST https://a:443/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST https://a:443/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
            b"POST https://a:443/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"POST https://a:443/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET https://a:443/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET https://a:443/ HTTP/1.1\r\nX: \x01\r\n\r\n",
            b"GET https://user:pw@a:443/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
        ];
        for case in cases {
            assert!(
                decode_request(Bytes::copy_from_slice(case)).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(case)
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let raw = format!("GET https://a:443/ HTTP/1.1\r\n{many}\r\n");
        assert!(decode_request(Bytes::from(raw)).is_err());
        assert!(decode_response(Bytes::from_static(b"HTTP/1.1 abc\r\n\r\n")).is_err());
    }

    #[test]
    fn framing_faults_are_told_apart_and_agreeing_framing_is_read() {
        let req = |head: &str, body: &str| {
            decode_request(Bytes::from(format!(
                "POST https://a:443/ HTTP/1.1\r\n{head}\r\n{body}"
            )))
        };
        let malformed = WireError::Malformed("invalid Content-Length".into());
        for (head, expected) in [
            ("Content-Length: x\r\n", malformed.clone()),
            (
                "Content-Length: 2\r\nContent-Length: x\r\n",
                malformed.clone(),
            ),
            // The first fault in order is the one told.
            (
                "Content-Length: 2\r\nContent-Length: 3\r\nContent-Length: x\r\n",
                WireError::ConflictingFraming,
            ),
            (
                "content-length: 2\r\nTransfer-Encoding: chunked\r\n",
                WireError::ConflictingFraming,
            ),
            (
                "Transfer-Encoding: GZip \r\n",
                WireError::UnsupportedTransferEncoding("gzip".into()),
            ),
            // Only the first Transfer-Encoding counts, as `HeaderMap::get` read it.
            (
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                WireError::UnsupportedTransferEncoding("gzip".into()),
            ),
        ] {
            assert_eq!(req(head, "ab").unwrap_err(), expected, "{head:?}");
        }
        // Equal lengths agree; the decoded message has one exact length and no framing left.
        let ok = req("Content-Length: 2\r\nCONTENT-LENGTH:  2 \r\n", "abcd").unwrap();
        assert_eq!(ok.body().as_ref(), b"ab");
        assert_eq!(ok.headers().get_all(CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(ok.headers()[CONTENT_LENGTH], "2");
        let chunked = req("TRANSFER-ENCODING: Chunked\r\n", "2\r\nab\r\n0\r\n\r\n").unwrap();
        assert_eq!(chunked.body().as_ref(), b"ab");
        assert!(chunked.headers().get(TRANSFER_ENCODING).is_none());
        assert_eq!(chunked.headers()[CONTENT_LENGTH], "2");
        // A response without framing runs to the end; with a bad length it is refused.
        let res = decode_response(Bytes::from_static(b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\nrest"));
        let res = res.unwrap();
        assert_eq!(res.body().as_ref(), b"rest");
        assert_eq!(res.headers()[CONTENT_LENGTH], "4");
        let bad = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(
            decode_response(Bytes::from_static(bad)).unwrap_err(),
            WireError::ConflictingFraming
        );
        // Head-only decoding keeps the framing headers as they came.
        let head =
            decode_request_headers(b"GET https://a:443/ HTTP/1.1\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(head.unwrap()[CONTENT_LENGTH], "7");
    }

    #[test]
    fn sort_keys_order_names_as_their_bytes_do() {
        let names = [
            "",
            "a",
            "a-",
            "a-b",
            "ab",
            "b",
            "microbus-from-host",
            "microbus-from-id",
            "microbus-from-version",
            "microbus-fragmen",
            "microbus-fragment",
            "microbus-fragmentx",
            "x-forwarded-prefix",
            "x-forwarded-proto",
            "x-forwarded-protocol",
            "0",
            "~",
        ];
        for a in names {
            for b in names {
                let by_key = sort_key(a).cmp(&sort_key(b)).then_with(|| a.cmp(b));
                assert_eq!(by_key, a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn ack_frames_encode_as_the_map_would() {
        let frame: [(&str, &[u8]); 6] = [
            ("microbus-from-host", b"beta.example"),
            ("microbus-from-id", b"rouq0u0mf4"),
            ("microbus-locality", b"1.b.west.us"),
            ("microbus-msg-id", b"3t0gkasY"),
            ("microbus-op-code", b"Ack"),
            ("microbus-queue", b"beta.example"),
        ];
        let direct = encode_ack_frame(StatusCode::ACCEPTED, &frame);
        assert_eq!(direct, GOLDEN_ACK.as_bytes());
        let mut map = HeaderMap::new();
        for (name, value) in frame {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            map.insert(name, HeaderValue::from_bytes(value).unwrap());
        }
        assert_eq!(encode_ack(StatusCode::ACCEPTED, &map), direct);
        // The byte rule is `HeaderValue`'s, for every byte (38 bytes: the ack without headers).
        for b in 0..=255u8 {
            let one: [(&str, &[u8]); 1] = [("x", &[b])];
            let written = encode_ack_frame(StatusCode::OK, &one).len() > 38;
            assert_eq!(written, HeaderValue::from_bytes(&[b]).is_ok(), "{b:#x}");
        }
        // A value no header could carry is left out, as `frame::set` leaves it out of a map.
        let bad: [(&str, &[u8]); 2] = [
            ("microbus-msg-id", b"a\r\nX: y"),
            ("microbus-op-code", b"Ack"),
        ];
        assert_eq!(
            encode_ack_frame(StatusCode::CONTINUE, &bad),
            "HTTP/1.1 100 Continue\r\nConnection: close\r\nMicrobus-Op-Code: Ack\r\n\r\n"
                .as_bytes()
        );
    }

    #[test]
    fn a_frame_beside_the_map_encodes_as_the_frame_in_the_map() {
        let res = || {
            let mut res = Response::new(Bytes::from_static(b"Hello"));
            let h = res.headers_mut();
            h.insert("content-type", HeaderValue::from_static("text/plain"));
            h.append("x-multi", HeaderValue::from_static("1"));
            h.append("x-multi", HeaderValue::from_static("2"));
            h.insert("microbus-baggage-a", HeaderValue::from_static("b"));
            res
        };
        let frame: [(&str, &[u8]); 6] = [
            ("microbus-from-host", b"beta.example"),
            ("microbus-from-id", b"rouq0u0mf4"),
            ("microbus-from-version", b"3"),
            ("microbus-msg-id", b"3t0gkasY"),
            ("microbus-op-code", b"Res"),
            ("microbus-queue", b"beta.example"),
        ];
        let mut in_map = res();
        in_map.headers_mut().extend(frame.map(|(n, v)| {
            (
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            )
        }));
        let direct = encode_response_with_frame(&res(), &frame);
        assert_eq!(direct, encode_response(&in_map));
        let bad: [(&str, &[u8]); 1] = [("microbus-msg-id", b"a\nb")];
        let plain = encode_response(&res());
        assert_eq!(encode_response_with_frame(&res(), &bad), plain);
    }
}
