//! Payload codec (reference §1.5): every bus message is a complete HTTP/1.1 message.
//!
//! Requests are written in absolute form with `Host` and `Content-Length` and headers sorted by
//! name ([`super::encode`]); they are read in absolute or origin form with `Content-Length` or
//! chunked bodies. The head is parsed by `httparse`.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Uri, Version};

pub use super::encode::{
    encode_ack, encode_ack_frame, encode_request, encode_request_with_frame, encode_response,
    encode_response_with_frame,
};
use super::error::WireError;
use super::frame;

pub use super::encode::MAX_HEADERS;

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
    let headers = collect_headers(parsed.headers, Some(&mut framing), Headers::All, |v| {
        HeaderValue::from_maybe_shared(payload.slice_ref(v))
    })?;
    let target = parsed.path.unwrap_or_default();
    let uri = absolute_uri(&payload, target, &headers)?;
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
    response_from_head(&payload, &parsed, status, head_len, Headers::All)
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

/// Which headers a decoded message's map keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Headers {
    All,
    /// All but the bus's internal ones ([`frame::is_internal_header`]), for a response that
    /// is going to leave the bus through the ingress: they are checked as if they were kept
    /// (a message is refused for the same faults) but never put into the map, which would
    /// only have them removed again (~8 per response).
    External,
}

pub(super) fn response_from_head(
    payload: &Bytes,
    parsed: &httparse::Response<'_, '_>,
    status: StatusCode,
    head_len: usize,
    kept: Headers,
) -> Result<Response<Bytes>, WireError> {
    let mut framing = Framing::default();
    let headers = collect_headers(parsed.headers, Some(&mut framing), kept, |v| {
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
            collect_headers(parsed.headers, None, Headers::All, HeaderValue::from_bytes)
        }
        httparse::Status::Partial => Err(WireError::Truncated),
    }
}

/// Each header of a request's head, name as sent and raw value, in order; nothing when the
/// head does not parse (callers read payloads [`decode_request`] accepted).
pub fn for_each_request_header<'b>(payload: &'b [u8], mut each: impl FnMut(&'b str, &'b [u8])) {
    let mut slots = header_slots();
    let mut parsed = httparse::Request::new(&mut []);
    if let Ok(httparse::Status::Complete(_)) = parsed.parse_with_uninit_headers(payload, &mut slots)
    {
        for h in parsed.headers.iter() {
            each(h.name, h.value);
        }
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
    kept: Headers,
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
        if kept == Headers::External && frame::is_internal_header(name.as_str()) {
            if !super::encode::is_header_value(h.value) {
                return Err(WireError::InvalidHeader(h.name.to_owned()));
            }
            continue;
        }
        let value = value_of(h.value).map_err(|_| WireError::InvalidHeader(h.name.to_owned()))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The request's URI: an absolute target shares the payload's bytes (parsing a `&str` copied
/// it into a new buffer first).
fn absolute_uri(payload: &Bytes, target: &str, headers: &HeaderMap) -> Result<Uri, WireError> {
    let invalid = || WireError::InvalidUrl(target.chars().take(256).collect());
    let uri: Uri = if target.starts_with("https://") || target.starts_with("http://") {
        Uri::from_maybe_shared(payload.slice_ref(target.as_bytes())).map_err(|_| invalid())?
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
    headers.insert(CONTENT_LENGTH, length_value(len as u64));
}

/// A `Content-Length` value: `0` shared, any other one allocation of its digits.
/// `HeaderValue::from(usize)` made two (a 20-byte buffer, then a box to share it), on
/// every decoded message.
pub fn length_value(len: u64) -> HeaderValue {
    if len == 0 {
        return HeaderValue::from_static("0");
    }
    HeaderValue::from_bytes(itoa::Buffer::new().format(len).as_bytes())
        .expect("decimal digits make a header value")
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
    fn length_values_read_as_the_numbers() {
        for n in [0u64, 1, 9, 10, 1024, 16 << 20, u64::MAX] {
            assert_eq!(length_value(n), HeaderValue::from(n), "{n}");
        }
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
}
