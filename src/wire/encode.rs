//! The payload encoder (reference §1.5): requests in absolute form with `Host` and
//! `Content-Length`, responses and acks, headers sorted by name in Go's canonical case.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode};

use super::error::WireError;

/// Most headers a bus message may carry; more is hostile input, and the decoder refuses it.
pub const MAX_HEADERS: usize = 256;

/// Encode a request whose URI is absolute (`https://host:port/path?query`).
pub fn encode_request(req: &Request<Bytes>) -> Result<Bytes, WireError> {
    encode_request_with_frame(req, &[])
}

/// Refuse a request with more header lines than its subscriber reads ([`MAX_HEADERS`]): it
/// would drop the message unread, and its caller would wait for an answer that never comes.
/// The map's `Host`, `Content-Length` and `Transfer-Encoding` are written as two lines.
fn check_header_count(headers: &HeaderMap, frame_len: usize) -> Result<(), WireError> {
    let upper_bound = headers.len() + frame_len + 2;
    if upper_bound <= MAX_HEADERS {
        return Ok(());
    }
    let replaced: usize = [HOST, CONTENT_LENGTH, TRANSFER_ENCODING]
        .iter()
        .map(|name| headers.get_all(name).iter().count())
        .sum();
    let lines = upper_bound - replaced;
    if lines > MAX_HEADERS {
        return Err(WireError::TooManyHeaders {
            count: lines,
            max: MAX_HEADERS,
        });
    }
    Ok(())
}

/// Encode a request with `frame`'s (lower-case name, value) pairs written among its headers,
/// each in its sorted place, as [`encode_response_with_frame`] does: the caller's frame never
/// enters the request's map (six inserts, values and drops per call).
pub fn encode_request_with_frame(
    req: &Request<Bytes>,
    frame: &[(&str, &[u8])],
) -> Result<Bytes, WireError> {
    let uri = req.uri();
    let authority = uri
        .authority()
        .ok_or_else(|| WireError::InvalidUrl(format!("{uri} is not absolute")))?;
    let scheme = uri.scheme_str().unwrap_or("https");
    // By bytes: `Authority::host` and `port_u16` go through char searchers (~500 a call).
    let (host, port) = super::url::host_and_port_of(authority);
    let port = port.unwrap_or(if scheme == "http" { 80 } else { 443 });
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let body = req.body();
    check_header_count(req.headers(), frame.len())?;

    let frame_bytes: usize = frame.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let head = header_bytes(req.headers()) + frame_bytes;
    let mut out = BytesMut::with_capacity(256 + body.len() + head);
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
        frame,
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
pub(super) fn is_header_value(value: &[u8]) -> bool {
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
/// straight into `out`: a known name as the frame's table spells it, any other upper-cased
/// byte by byte.
fn put_canonical_name(out: &mut BytesMut, name: &str) {
    if let Some(canonical) = super::frame::canonical_of_lowercase(name) {
        out.put_slice(canonical.as_bytes());
        return;
    }
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
/// `frame`'s (lower-case name, value) pairs come sorted and are merged in with the map's, after
/// any of the map's with the same name: sorting them again with the map's cost ~1,000
/// instructions a call. A value a header could not carry is left out.
fn write_sorted_headers(
    out: &mut BytesMut,
    headers: &HeaderMap,
    skip: &[HeaderName],
    frame: &[(&str, &[u8])],
) {
    debug_assert!(frame.windows(2).all(|w| w[0].0 <= w[1].0), "sorted frame");
    let mut pairs: Vec<(u128, &str, &[u8])> = Vec::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        if !skip.contains(name) {
            pairs.push((sort_key(name.as_str()), name.as_str(), value.as_bytes()));
        }
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let mut frame = frame
        .iter()
        .filter(|(_, v)| is_header_value(v))
        .map(|&(name, value)| (sort_key(name), name, value))
        .peekable();
    for pair in pairs {
        while let Some(before) = frame.next_if(|f| (f.0, f.1) < (pair.0, pair.1)) {
            put_header(out, before);
        }
        put_header(out, pair);
    }
    frame.for_each(|pair| put_header(out, pair));
}

fn put_header(out: &mut BytesMut, (_, name, value): (u128, &str, &[u8])) {
    put_canonical_name(out, name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn sort_key(name: &str) -> u128 {
    let mut key = [0u8; 16];
    let n = name.len().min(16);
    key[..n].copy_from_slice(&name.as_bytes()[..n]);
    u128::from_be_bytes(key)
}

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;

    use super::*;
    use crate::wire::codec::tests::GOLDEN_ACK;

    #[test]
    fn canonical_names_are_those_upper_cased_after_each_dash() {
        let by_bytes = |name: &str| {
            let mut upper = true;
            name.bytes()
                .map(|b| {
                    let c = if upper { b.to_ascii_uppercase() } else { b };
                    upper = b == b'-';
                    c as char
                })
                .collect::<String>()
        };
        for name in [
            "microbus-msg-id",
            "microbus-from-host",
            "microbus-from-id",
            "microbus-from-version",
            "microbus-op-code",
            "microbus-time-budget",
            "microbus-call-depth",
            "microbus-queue",
            "microbus-fragment",
            "microbus-locality",
            "microbus-clock-shift",
            "microbus-baggage-x",
            "traceparent",
            "tracestate",
            "x-forwarded-host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-prefix",
            "x-forwarded-path",
            "x-forwarded-protocol",
            // In a known name's slot (same length, last and tenth byte), but not that name.
            "microbus-mxg-id",
            "x-forwarded-hast",
            "content-type",
            "accept",
            "user-agent",
            "x",
            "m",
            "t-",
            "-a",
        ] {
            let mut out = BytesMut::new();
            put_canonical_name(&mut out, name);
            assert_eq!(std::str::from_utf8(&out).unwrap(), by_bytes(name), "{name}");
        }
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
            // A name in both: the map's value first, as an append to the map would have it.
            h.insert("microbus-queue", HeaderValue::from_static("from-map"));
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
        // A value left out in the middle of the frame: the rest still merge in their places.
        let mut holed = frame;
        holed[2].1 = b"a\rb";
        let mut in_map = res();
        in_map.headers_mut().extend(
            frame
                .iter()
                .filter(|(n, _)| *n != "microbus-from-version")
                .map(|(n, v)| {
                    (
                        HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        HeaderValue::from_bytes(v).unwrap(),
                    )
                }),
        );
        assert_eq!(
            encode_response_with_frame(&res(), &holed),
            encode_response(&in_map)
        );

        // A request's frame the same way, among the request's own headers and around them.
        let req = || {
            let mut req = Request::get("https://alpha.example:443/p?q=1")
                .body(Bytes::from_static(b"body"))
                .unwrap();
            let h = req.headers_mut();
            h.insert("accept", HeaderValue::from_static("*/*"));
            h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
            h.append("microbus-baggage-z", HeaderValue::from_static("1"));
            h.append("microbus-baggage-z", HeaderValue::from_static("2"));
            h.insert("zz-last", HeaderValue::from_static("z"));
            req
        };
        let frame: [(&str, &[u8]); 8] = [
            ("microbus-call-depth", b"2"),
            ("microbus-fragment", b"1/3"),
            ("microbus-from-host", b"alpha.example"),
            ("microbus-from-id", b"rouq0u0mf4"),
            ("microbus-from-version", b"7"),
            ("microbus-msg-id", b"3t0gkasY"),
            ("microbus-op-code", b"Req"),
            ("microbus-time-budget", b"19999"),
        ];
        let mut in_map = req();
        in_map.headers_mut().extend(frame.map(|(n, v)| {
            (
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            )
        }));
        let direct = encode_request_with_frame(&req(), &frame).unwrap();
        assert_eq!(direct, encode_request(&in_map).unwrap());
        assert_eq!(
            encode_request_with_frame(&req(), &bad).unwrap(),
            encode_request(&req()).unwrap()
        );
    }
}
