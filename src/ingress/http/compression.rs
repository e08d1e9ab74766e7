//! Response compression: tower-http's (br, deflate, gzip) for responses over
//! [`COMPRESSION_MIN_BYTES`], except media and event streams.
//!
//! A request without `Accept-Encoding` gets what tower-http sends it, identity, without going
//! through tower-http: its layer wrapped every body in a `CompressionBody` of ~580 bytes, moved
//! into a new box (`axum::body::Body::new`), and its future through a `tower::Oneshot` (~3k
//! instructions a request in all under callgrind).

use std::future::Future;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::header::{self, HeaderValue};
use tower::{Layer, ServiceExt};
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;

/// Responses smaller than this are not worth compressing (Microbus's threshold).
pub const COMPRESSION_MIN_BYTES: u64 = 1024;

/// Which responses are compressed (for a client that accepts an encoding).
fn compress_when() -> impl Predicate {
    SizeAbove::new(COMPRESSION_MIN_BYTES)
        .and(NotForContentType::const_new("image/"))
        .and(NotForContentType::const_new("video/"))
        .and(NotForContentType::const_new("audio/"))
        .and(NotForContentType::const_new("text/event-stream"))
}

/// `inner`'s response to `req`, compressed as the client accepts.
pub async fn compress<Fut>(req: Request, inner: impl FnOnce(Request) -> Fut) -> Response
where
    Fut: Future<Output = Response>,
{
    if !req.headers().contains_key(header::ACCEPT_ENCODING) {
        return as_identity(inner(req).await);
    }
    let mut inner = Some(inner);
    let service = tower::service_fn(move |req: Request| {
        let inner = inner.take().expect("a oneshot service is called once");
        async move { Ok::<_, std::convert::Infallible>(inner(req).await) }
    });
    let compressed = CompressionLayer::new()
        .br(true)
        .deflate(true)
        .gzip(true)
        .compress_when(compress_when())
        .layer(service);
    match compressed.oneshot(req).await {
        Ok(res) => res.map(Body::new),
        Err(never) => match never {},
    }
}

/// `res` as tower-http's layer sends it to a client without `Accept-Encoding`: uncompressed,
/// with `Vary: Accept-Encoding` where a client that accepts an encoding would have had it
/// compressed.
fn as_identity(mut res: Response) -> Response {
    let headers = res.headers();
    let compressible = !headers.contains_key(header::CONTENT_ENCODING)
        && !headers.contains_key(header::CONTENT_RANGE)
        && compress_when().should_compress(&res);
    let varies = headers
        .get_all(header::VARY)
        .iter()
        .any(|v| names_accept_encoding(v.as_bytes()));
    if compressible && !varies {
        res.headers_mut().append(
            header::VARY,
            HeaderValue::from_static(header::ACCEPT_ENCODING.as_str()),
        );
    }
    res
}

/// Whether a `Vary` value mentions `accept-encoding` (in any case), as tower-http checks it.
fn names_accept_encoding(value: &[u8]) -> bool {
    let needle = header::ACCEPT_ENCODING.as_str().as_bytes();
    value
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn response(headers: &[(&str, &str)], body: Vec<u8>) -> Response {
        let mut res = Response::new(Body::from(body));
        for (k, v) in headers {
            res.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        res
    }

    /// What tower-http's layer itself sends for `res`, with the client's `accept_encoding`.
    async fn through_tower_http(accept_encoding: Option<&str>, res: Response) -> Response {
        let mut req = Request::new(Body::empty());
        if let Some(ae) = accept_encoding {
            req.headers_mut()
                .insert(header::ACCEPT_ENCODING, HeaderValue::from_str(ae).unwrap());
        }
        let mut res = Some(res);
        let service = tower::service_fn(move |_: Request| {
            let res = res.take().expect("called once");
            async move { Ok::<_, std::convert::Infallible>(res) }
        });
        let layer = CompressionLayer::new()
            .br(true)
            .deflate(true)
            .gzip(true)
            .compress_when(compress_when());
        layer
            .layer(service)
            .oneshot(req)
            .await
            .unwrap()
            .map(Body::new)
    }

    async fn parts(res: Response) -> (http::StatusCode, http::HeaderMap, Vec<u8>) {
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.status, parts.headers, body)
    }

    #[tokio::test]
    async fn without_accept_encoding_responses_are_what_tower_http_sends() {
        let big = vec![b'a'; COMPRESSION_MIN_BYTES as usize + 1];
        type Headers = &'static [(&'static str, &'static str)];
        let cases: Vec<(Headers, Vec<u8>)> = vec![
            (&[], b"small".to_vec()),
            (&[], big.clone()),
            (&[("content-type", "text/plain")], big.clone()),
            (&[("content-type", "image/png")], big.clone()),
            (&[("content-type", "text/event-stream")], big.clone()),
            (&[("content-encoding", "gzip")], big.clone()),
            (&[("content-range", "bytes 0-1/2")], big.clone()),
            (&[("vary", "Origin")], big.clone()),
            (&[("vary", "origin, ACCEPT-ENCODING")], big.clone()),
            (
                &[("vary", "Origin"), ("vary", "accept-encoding")],
                big.clone(),
            ),
            (&[], Vec::new()),
        ];
        let mut varied = 0;
        for (headers, body) in cases {
            let ours = parts(as_identity(response(headers, body.clone()))).await;
            let theirs =
                parts(through_tower_http(None, response(headers, body.clone())).await).await;
            assert_eq!(ours, theirs, "{headers:?}, {} bytes", body.len());
            let sent = headers.iter().filter(|(k, _)| *k == "vary").count();
            varied += usize::from(ours.1.get_all(header::VARY).iter().count() > sent);
        }
        // The rule was exercised both ways: `Vary` added to some, not to others.
        assert_eq!(varied, 3);
    }

    #[tokio::test]
    async fn a_client_that_accepts_an_encoding_still_gets_it() {
        let big = vec![b'a'; 4096];
        for (ae, encoding) in [("gzip", "gzip"), ("br", "br"), ("deflate", "deflate")] {
            let mut req = Request::new(Body::empty());
            req.headers_mut()
                .insert(header::ACCEPT_ENCODING, HeaderValue::from_static(ae));
            let body = big.clone();
            let res = compress(req, |_| async move { response(&[], body) }).await;
            assert_eq!(res.headers()[header::CONTENT_ENCODING], encoding);
            let (_, _, compressed) = parts(res).await;
            assert!(compressed.len() < big.len() / 4, "{ae}");
        }
        // A client that refuses identity and every encoding on offer: 406, as before.
        let mut req = Request::new(Body::empty());
        req.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity;q=0"),
        );
        let res = compress(req, |_| async { response(&[], b"x".to_vec()) }).await;
        assert_eq!(res.status(), http::StatusCode::NOT_ACCEPTABLE);
    }
}
