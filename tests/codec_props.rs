//! Round-trip properties of the payload and subject codecs.

use busgate::wire::{codec, request_subject, subscription_subject};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use proptest::prelude::*;

fn host() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,10}(\\.[a-z][a-z0-9_-]{0,10}){0,3}"
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("x-[a-z0-9-]{1,12}", "[!-~]([ -~]{0,30}[!-~])?"), 0..12)
}

/// Undo the per-code-point escaping of one path token. Go writes `%04x`, so a code point
/// above U+FFFF takes 5 or 6 digits and the escaping is not reversible there (a protocol quirk
/// we copy on purpose); below it, every escape is exactly 4 digits.
fn unescape_token(token: &str) -> String {
    let mut out = String::new();
    let mut chars = token.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '_' => out.push('.'),
            '%' => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
            }
            other => out.push(other),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_round_trip(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "REPORT"]),
        host in host(),
        port in any::<u16>(),
        segments in prop::collection::vec(any::<String>(), 0..5),
        query in proptest::option::of("[a-z0-9=&]{1,20}"),
        headers in headers(),
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let path: String = segments.iter().map(|s| format!("/{}", utf8_percent_encode(s, NON_ALPHANUMERIC))).collect();
        let path = if path.is_empty() { "/".to_owned() } else { path };
        let q = query.as_ref().map(|q| format!("?{q}")).unwrap_or_default();
        let uri = format!("https://{host}:{port}{path}{q}");
        let mut b = Request::builder().method(method).uri(&uri);
        for (k, v) in &headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(Bytes::from(body.clone())).unwrap();
        let back = codec::decode_request(codec::encode_request(&req).unwrap()).unwrap();
        prop_assert_eq!(back.method(), req.method());
        prop_assert_eq!(back.uri().to_string(), uri);
        prop_assert_eq!(back.body().as_ref(), &body[..]);
        for (k, _) in &headers {
            let sent: Vec<_> = req.headers().get_all(k.as_str()).iter().collect();
            let got: Vec<_> = back.headers().get_all(k.as_str()).iter().collect();
            prop_assert_eq!(sent, got);
        }
    }

    #[test]
    fn responses_round_trip(
        status in 200u16..600,
        headers in headers(),
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        prop_assume!(status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED);
        let mut b = Response::builder().status(status);
        for (k, v) in &headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let res = b.body(Bytes::from(body.clone())).unwrap();
        let back = codec::decode_response(codec::encode_response(&res)).unwrap();
        prop_assert_eq!(back.status(), status);
        prop_assert_eq!(back.body().as_ref(), &body[..]);
        for (k, _) in &headers {
            prop_assert_eq!(res.headers().get_all(k.as_str()).iter().count(), back.headers().get_all(k.as_str()).iter().count());
        }
    }

    #[test]
    fn chunked_bodies_decode_to_the_same_bytes(
        body in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(1usize..512, 0..16),
    ) {
        let mut raw = b"POST https://a.b:443/x HTTP/1.1\r\nHost: a.b:443\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut rest = &body[..];
        for cut in cuts.iter().chain(std::iter::repeat(&usize::MAX)) {
            if rest.is_empty() { break; }
            let n = (*cut).min(rest.len());
            raw.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            raw.extend_from_slice(&rest[..n]);
            raw.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        let req = codec::decode_request(Bytes::from(raw)).unwrap();
        prop_assert_eq!(req.body().as_ref(), &body[..]);
    }

    #[test]
    fn any_path_escapes_to_safe_reversible_tokens(
        host in host(),
        segments in prop::collection::vec("[\\u{0}-\\u{ffff}]{1,12}", 1..6),
    ) {
        let path: String = segments.iter().map(|s| format!("/{s}")).collect();
        // A request path may contain '/' inside a segment only escaped; split ours on '/'.
        prop_assume!(segments.iter().all(|s| !s.contains('/')));
        let subject = request_subject("p", 443, &host, "GET", &path).unwrap();
        let (_, tail) = subject.split_once(".|.GET.").unwrap();
        let tokens: Vec<&str> = tail.split('.').collect();
        prop_assert_eq!(tokens.len(), segments.len());
        for (token, segment) in tokens.iter().zip(&segments) {
            prop_assert!(!token.is_empty());
            prop_assert!(*token != "*" && *token != ">");
            prop_assert!(token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '%'));
            prop_assert_eq!(&unescape_token(token), segment);
        }
        // And a subscription for the same literal path would produce the same subject.
        if segments.iter().all(|s| !s.contains(['{', '}']) && s != "*") {
            prop_assert_eq!(subscription_subject("p", 443, &host, "GET", &path).unwrap(), subject);
        }
    }
}
