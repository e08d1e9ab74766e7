//! The HTTP ingress end to end: a real nats-server, the example services, test services, and
//! raw HTTP from a TCP socket.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use busgate::ingress::http::{HttpIngress, IngressConfig};
use busgate::{examples, Connector, Ctx, Error, Service};
use bytes::Bytes;
use common::http::{build, build_with_host, get, request, send_raw, RawResponse};
use common::{free_port, NatsServer};
use http::{Request, Response, StatusCode};

struct Stack {
    nats: NatsServer,
    services: Vec<Connector>,
    ingress: HttpIngress,
    addr: SocketAddr,
    counter: Arc<AtomicUsize>,
}

impl Stack {
    async fn stop(self) {
        self.ingress.shutdown().await;
        for s in self.services {
            s.shutdown().await;
        }
    }

    /// The ingress still answers a normal request.
    async fn assert_healthy(&self) {
        let res = get(self.addr, "/hello.example/hello?name=ok").await;
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), "Hello, ok!");
    }
}

fn text(s: impl Into<String>) -> Response<Bytes> {
    Response::new(Bytes::from(s.into()))
}

fn query(req: &Request<Bytes>, name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Test endpoints on `mirror.test`, and the bus's `root` service.
fn mirror(counter: Arc<AtomicUsize>) -> Service {
    Service::new("mirror.test")
        .any("/headers", |_ctx: Ctx, req: Request<Bytes>| async move {
            let mut lines: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{}: {}", k, String::from_utf8_lossy(v.as_bytes())))
                .collect();
            lines.sort();
            let body = format!("{} {}\n{}\n\n", req.method(), req.uri(), lines.join("\n"));
            let mut body = body.into_bytes();
            body.extend_from_slice(req.body());
            Ok(Response::builder()
                .header("X-Multi", "a")
                .header("X-Multi", "b")
                .header("Microbus-Secret", "leak")
                .header(
                    "Traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .body(Bytes::from(body))
                .unwrap())
        })
        .get("/hop", |_ctx: Ctx, _req| async {
            Ok(Response::builder()
                .header("Keep-Alive", "timeout=99")
                .header("Proxy-Connection", "close")
                .header("Trailer", "X-Checksum")
                .header("X-Kept", "yes")
                .body(Bytes::from_static(b"hop"))
                .unwrap())
        })
        .get("/size", |_ctx: Ctx, req: Request<Bytes>| async move {
            let n: usize = query(&req, "n").unwrap().parse().unwrap();
            let mut b = Response::builder();
            if let Some(t) = query(&req, "type") {
                b = b.header("Content-Type", t);
            }
            if let Some(e) = query(&req, "enc") {
                b = b.header("Content-Encoding", e);
            }
            if let Some(c) = query(&req, "cache") {
                b = b.header("Cache-Control", c);
            }
            let body: String = (0..n).map(|i| (b'a' + (i % 7) as u8) as char).collect();
            Ok(b.body(Bytes::from(body)).unwrap())
        })
        .get("/sleep", |_ctx: Ctx, req: Request<Bytes>| async move {
            let ms: u64 = query(&req, "ms").unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(text("slept"))
        })
        .post("/length", |_ctx: Ctx, req: Request<Bytes>| async move {
            Ok(text(req.body().len().to_string()))
        })
        .any("/count", move |_ctx: Ctx, _req| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(text("counted"))
            }
        })
        .get("/panic", |_ctx: Ctx, _req| async { panic!("boom") })
        .get("/teapot", |_ctx: Ctx, _req| async {
            Err::<Response<Bytes>, _>(Error::new(StatusCode::IM_A_TEAPOT, "short and stout"))
        })
        .get(":444/internal", |_ctx: Ctx, _req| async {
            Ok(text("internal"))
        })
        .get("/public", |_ctx: Ctx, _req| async { Ok(text("public")) })
        .get("", |_ctx: Ctx, _req| async { Ok(text("mirror root")) })
}

fn root() -> Service {
    Service::new("root").any("", |_ctx: Ctx, _req| async { Ok(text("the root")) })
}

async fn stack_with(props: &[(&str, &str)]) -> Stack {
    let nats = NatsServer::start();
    let bus = nats.config();
    let counter = Arc::new(AtomicUsize::new(0));
    let mut services = examples::start_all(&bus).await.unwrap();
    services.push(mirror(counter.clone()).start(&bus).await.unwrap());
    services.push(root().start(&bus).await.unwrap());
    let mut overrides: Vec<(String, String)> = vec![("Ports".into(), "0".into())];
    overrides.extend(props.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut cfg = IngressConfig::resolve(None, |_| None, &overrides).unwrap();
    cfg.bind_ip = "127.0.0.1".parse().unwrap();
    let ingress = HttpIngress::start(cfg, &bus).await.unwrap();
    let addr = ingress.local_addrs()[0];
    Stack {
        nats,
        services,
        ingress,
        addr,
        counter,
    }
}

async fn stack() -> Stack {
    stack_with(&[]).await
}

fn body_has_trace(res: &RawResponse) -> bool {
    let t = res.text();
    t.contains("{trace/") && t.trim_end().ends_with('}')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_paths_to_bus_hosts() {
    let s = stack().await;
    let res = get(s.addr, "/hello.example/hello?name=you").await;
    assert_eq!((res.status, res.text().as_str()), (200, "Hello, you!"));
    let res = get(s.addr, "/hello.example:443/hello?name=port").await;
    assert_eq!(res.text(), "Hello, port!");
    // `/` is the service `root`; `/host` and `/host/` are that service's root.
    assert_eq!(get(s.addr, "/").await.text(), "the root");
    assert_eq!(get(s.addr, "/?x=1").await.text(), "the root");
    assert_eq!(get(s.addr, "/mirror.test").await.text(), "mirror root");
    assert_eq!(get(s.addr, "/mirror.test/").await.text(), "mirror root");
    // Port 888 is never reachable, an invalid host is an empty 404: neither is an error page.
    for path in [
        "/hello.example:888/ping",
        "/all:888/ping",
        "/%3Fterms=1",
        "/hello.*/hello",
        "/a..b/x",
    ] {
        let res = get(s.addr, path).await;
        assert_eq!(res.status, 404, "{path}");
        assert!(res.body.is_empty(), "{path}: {}", res.text());
    }
    // Method, query, body and repeated headers go through; repeated headers come back.
    let res = request(
        s.addr,
        "PUT",
        "/mirror.test/headers?a=1&a=2",
        &[
            ("X-Multi", "one"),
            ("X-Multi", "two"),
            ("Content-Type", "text/plain"),
        ],
        b"the body",
    )
    .await;
    assert_eq!(res.status, 200);
    let t = res.text();
    assert!(
        t.starts_with("PUT https://mirror.test:443/headers?a=1&a=2\n"),
        "{t}"
    );
    assert!(t.contains("x-multi: one\nx-multi: two"), "{t}");
    assert!(t.contains("content-type: text/plain"), "{t}");
    assert!(t.ends_with("\n\nthe body"), "{t}");
    assert_eq!(res.headers_named("x-multi"), ["a", "b"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_from_the_bus() {
    let s = stack().await;
    let cases: &[(&str, u16, &str)] = &[
        ("/nobody.example/x", 404, "ack timeout"),
        (
            "/calculator.example/arithmetic?x=1&op=/&y=0",
            400,
            "division by zero",
        ),
        (
            "/calculator.example/arithmetic?x=a&op=*&y=1",
            400,
            "invalid arguments",
        ),
        ("/mirror.test/teapot", 418, "short and stout"),
        ("/mirror.test/panic", 500, "handler panicked: boom"),
    ];
    for (path, status, msg) in cases {
        let res = get(s.addr, path).await;
        assert_eq!(res.status, *status, "{path}");
        assert!(res.text().contains(msg), "{path}: {}", res.text());
        assert!(body_has_trace(&res), "{path}: {}", res.text());
        assert_eq!(
            res.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(res.header("cache-control"), Some("no-store"));
        // The downstream JSON error body never passes through.
        assert!(!res.text().contains("statusCode"), "{path}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_show_details_only_to_localhost() {
    let s = stack().await;
    // Through a trusted (loopback) proxy for a remote client: the short form.
    let res = request(
        s.addr,
        "GET",
        "/nobody.example/x",
        &[
            ("X-Forwarded-For", "203.0.113.5"),
            ("X-Forwarded-Host", "public.example"),
        ],
        b"",
    )
    .await;
    assert_eq!(res.status, 404);
    let t = res.text();
    let id = t.split(' ').nth(2).unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(t, format!("Not Found {id} {{trace/{id}}}"));
    assert!(!t.contains("call.rs"));
    // Directly from localhost: the full error with its location.
    let res = get(s.addr, "/nobody.example/x").await;
    assert!(
        res.text().starts_with("ack timeout\n[404]\n\n- "),
        "{}",
        res.text()
    );
    s.stop().await;

    // A forged X-Forwarded-For from an untrusted peer does not hide that it is local.
    let s = stack_with(&[("TrustedProxies", "192.0.2.1")]).await;
    let res = request(
        s.addr,
        "GET",
        "/nobody.example/x",
        &[("X-Forwarded-For", "203.0.113.5")],
        b"",
    )
    .await;
    assert!(res.text().starts_with("ack timeout"), "{}", res.text());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_paths_and_favicon() {
    let s = stack().await;
    for path in [
        "/.env",
        "/.git/config",
        "/wp/index.php",
        "/x/y.ASPX",
        "/cgi-bin/.%2e/.%2e/.%2e/.%2e/bin/sh",
    ] {
        let res = get(s.addr, path).await;
        assert_eq!(res.status, 404, "{path}");
        assert!(res.text().contains("not found"), "{path}: {}", res.text());
    }
    let s2 = stack_with(&[("BlockedPaths", "/mirror.test/public\n*.secret")]).await;
    assert_eq!(get(s2.addr, "/mirror.test/public").await.status, 404);
    assert_eq!(get(s2.addr, "/mirror.test/x.secret").await.status, 404);
    assert_eq!(
        get(s2.addr, "/.env").await.status,
        404,
        "no service named .env either"
    );
    s2.stop().await;

    let res = get(s.addr, "/favicon.ico").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("image/x-icon"));
    assert_eq!(res.header("cache-control"), Some("public, max-age=86400"));
    assert_eq!(&res.body[..4], &[0, 0, 1, 0], "an ICO header");
    // The icon did not come off the bus: its timing has no bus part.
    let timing = res.header("server-timing").unwrap_or_default();
    assert!(
        timing.starts_with("total;dur=") && !timing.contains("bus;dur="),
        "{timing}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors() {
    let s = stack_with(&[(
        "AllowedOrigins",
        "https://good.example, https://other.example",
    )])
    .await;
    let res = request(
        s.addr,
        "GET",
        "/mirror.test/count",
        &[("Origin", "https://good.example")],
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://good.example")
    );
    assert_eq!(res.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(res.header("access-control-allow-methods"), Some("*"));
    assert_eq!(res.header("access-control-expose-headers"), Some("*"));
    assert_eq!(s.counter.load(Ordering::Relaxed), 1);
    // A preflight is answered here and never reaches the bus.
    let res = request(
        s.addr,
        "OPTIONS",
        "/mirror.test/count",
        &[
            ("Origin", "https://good.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    )
    .await;
    assert_eq!(res.status, 204);
    assert!(res.body.is_empty());
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://good.example")
    );
    assert_eq!(s.counter.load(Ordering::Relaxed), 1);
    // A disallowed origin is refused, preflight or not.
    for method in ["GET", "OPTIONS"] {
        let res = request(
            s.addr,
            method,
            "/mirror.test/count",
            &[("Origin", "https://evil.example")],
            b"",
        )
        .await;
        assert_eq!(res.status, 403);
        assert!(
            res.text()
                .contains("disallowed origin 'https://evil.example'"),
            "{}",
            res.text()
        );
    }
    assert_eq!(s.counter.load(Ordering::Relaxed), 1);
    // Without an Origin, no CORS headers at all.
    let res = get(s.addr, "/mirror.test/count").await;
    assert!(res.header("access-control-allow-origin").is_none());
    s.stop().await;
}

/// Headers of one hop (RFC 9110 §7.6.1) and `Host` stay on their hop, in both directions;
/// every other header crosses, repeated ones with all their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stay_on_their_hop() {
    let s = stack_with(&[]).await;
    let res = request(
        s.addr,
        "GET",
        "/mirror.test/headers",
        &[
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("X-Kept", "yes"),
            ("X-Twice", "1"),
            ("X-Twice", "2"),
        ],
        b"",
    )
    .await;
    let t = res.text();
    for gone in ["keep-alive:", "proxy-connection:", "te:", "connection:"] {
        assert!(!t.contains(&format!("\n{gone}")), "{gone} crossed: {t}");
    }
    assert!(t.contains("x-kept: yes"), "{t}");
    assert!(t.contains("x-twice: 1\nx-twice: 2"), "{t}");
    assert!(
        t.contains("host: mirror.test:443"),
        "the bus request's own Host: {t}"
    );
    assert!(!t.contains(&format!("\nhost: {}", s.addr)), "{t}");

    let res = get(s.addr, "/mirror.test/hop").await;
    assert_eq!(res.text(), "hop");
    assert_eq!(res.header("x-kept"), Some("yes"));
    for gone in ["keep-alive", "proxy-connection", "trailer"] {
        assert!(res.header(gone).is_none(), "{gone} crossed back");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_and_internal_headers() {
    let s = stack_with(&[("TrustedProxies", "192.0.2.1")]).await;
    let res = request(
        s.addr,
        "GET",
        "/mirror.test/headers",
        &[
            ("X-Forwarded-Host", "forged.example"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Microbus-From-Host", "evil.example"),
            ("Microbus-Baggage-Role", "admin"),
            ("MICROBUS-MSG-ID", "forged"),
            (
                "Traceparent",
                "00-11111111111111111111111111111111-2222222222222222-01",
            ),
            ("Tracestate", "x=y"),
            ("Accept-Language", "fr"),
        ],
        b"",
    )
    .await;
    let t = res.text();
    // An untrusted peer's X-Forwarded-* are replaced by what the ingress saw.
    assert!(
        t.contains(&format!("x-forwarded-host: {}\n", s.addr)),
        "X-Forwarded-Host is the request's Host: {t}"
    );
    assert!(t.contains("x-forwarded-for: 127.0.0.1:"), "{t}");
    assert!(t.contains("x-forwarded-proto: http"), "{t}");
    assert!(t.contains("x-forwarded-prefix: \n"), "{t}");
    assert!(t.contains("x-forwarded-path: /mirror.test/headers"), "{t}");
    assert!(!t.contains("forged") && !t.contains("6.6.6.6"), "{t}");
    // Client-sent internal headers never reach the service (the frame is the ingress's own).
    assert!(
        !t.contains("evil") && !t.contains("admin") && !t.contains("1111111111"),
        "{t}"
    );
    assert!(!t.contains("tracestate"), "{t}");
    assert!(t.contains("microbus-from-host: http.ingress.core"), "{t}");
    assert!(t.contains("accept-language: fr"), "{t}");
    // And the service's internal headers never leak back.
    for (k, _) in &res.headers {
        let k = k.to_ascii_lowercase();
        assert!(
            !k.starts_with("microbus-") && k != "traceparent",
            "leaked {k}"
        );
    }
    s.stop().await;

    // A trusted proxy's forwarded headers are kept.
    let s = stack().await;
    let t = request(
        s.addr,
        "GET",
        "/mirror.test/headers",
        &[
            ("X-Forwarded-Host", "public.example"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
        ],
        b"",
    )
    .await
    .text();
    assert!(t.contains("x-forwarded-host: public.example"), "{t}");
    assert!(t.contains("x-forwarded-for: 203.0.113.9"), "{t}");
    assert!(t.contains("x-forwarded-proto: https"), "{t}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_budget_and_request_timeout() {
    let s = stack_with(&[("TimeBudget", "1s")]).await;
    let started = Instant::now();
    let res = get(s.addr, "/mirror.test/sleep?ms=3000").await;
    assert_eq!(res.status, 408);
    assert!(res.text().contains("timeout"));
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "answered before the handler finished"
    );
    // A client may ask for more (whole seconds).
    let res = request(
        s.addr,
        "GET",
        "/mirror.test/sleep?ms=1500",
        &[("Request-Timeout", "4")],
        b"",
    )
    .await;
    assert_eq!((res.status, res.text().as_str()), (200, "slept"));
    // Nonsense values are ignored.
    let res = request(
        s.addr,
        "GET",
        "/mirror.test/sleep?ms=1500",
        &[("Request-Timeout", "soon")],
        b"",
    )
    .await;
    assert_eq!(res.status, 408);
    s.stop().await;
}

fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("deflate") => {
            // HTTP "deflate" is zlib-wrapped.
            flate2::read::ZlibDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        None => out = body.to_vec(),
        Some(other) => panic!("unexpected encoding {other}"),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_and_cache_control() {
    let s = stack().await;
    let plain = get(s.addr, "/mirror.test/size?n=4096&type=text/plain").await;
    assert_eq!(plain.body.len(), 4096);
    assert!(plain.header("content-encoding").is_none());
    assert_eq!(plain.header("cache-control"), Some("no-store"));
    for enc in ["br", "deflate", "gzip"] {
        let res = request(
            s.addr,
            "GET",
            "/mirror.test/size?n=4096&type=text/plain",
            &[("Accept-Encoding", enc)],
            b"",
        )
        .await;
        assert_eq!(res.header("content-encoding"), Some(enc));
        assert!(res.body.len() < 4096, "{enc} did not shrink the body");
        assert_eq!(decode(Some(enc), &res.body), plain.body, "{enc}");
    }
    let res = request(
        s.addr,
        "GET",
        "/mirror.test/size?n=4096&type=text/plain",
        &[("Accept-Encoding", "gzip;q=0.5, br;q=1.0")],
        b"",
    )
    .await;
    assert_eq!(
        res.header("content-encoding"),
        Some("br"),
        "the client's preference wins"
    );
    // Not for small bodies, media, or bodies already encoded.
    for (path, why) in [
        ("/mirror.test/size?n=1000&type=text/plain", "under 1 KB"),
        ("/mirror.test/size?n=4096&type=image/png", "image"),
        ("/mirror.test/size?n=4096&type=video/mp4", "video"),
        ("/mirror.test/size?n=4096&type=audio/ogg", "audio"),
    ] {
        let res = request(s.addr, "GET", path, &[("Accept-Encoding", "gzip, br")], b"").await;
        assert!(res.header("content-encoding").is_none(), "{why}");
    }
    let res = request(
        s.addr,
        "GET",
        "/mirror.test/size?n=4096&enc=identity-custom",
        &[("Accept-Encoding", "gzip")],
        b"",
    )
    .await;
    assert_eq!(res.header("content-encoding"), Some("identity-custom"));
    assert_eq!(res.body.len(), 4096);
    // A service's own cache policy stands.
    let res = get(s.addr, "/mirror.test/size?n=10&cache=max-age%3D60").await;
    assert_eq!(res.header("cache-control"), Some("max-age=60"));
    s.stop().await;
}

/// The mirror service on a fresh NATS behind an ingress with these `Ports` and `PortMappings`.
async fn mirror_behind_ingress(
    ports: &str,
    mappings: &str,
) -> (NatsServer, busgate::Connector, HttpIngress) {
    let nats = NatsServer::start();
    let bus = nats.config();
    let svc = mirror(Arc::new(AtomicUsize::new(0)))
        .start(&bus)
        .await
        .unwrap();
    let mut cfg = IngressConfig::resolve(
        None,
        |_| None,
        &[
            ("Ports".into(), ports.into()),
            ("PortMappings".into(), mappings.into()),
        ],
    )
    .unwrap();
    cfg.bind_ip = "127.0.0.1".parse().unwrap();
    let ingress = HttpIngress::start(cfg, &bus).await.unwrap();
    (nats, svc, ingress)
}

/// Go's ingress takes the external port from the request's `Host` (80, or 443 over TLS,
/// when it has none), not from the listener: behind a load balancer that sends
/// `Host: example.com` to `:8080`, the default `80:*->443` applies and internal ports stay
/// closed, where the listener's `8080:*->*` would open them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_mappings_follow_the_host_header_not_the_listener() {
    // The defaults, and a `*` value that the search passes over.
    let (_nats, svc, ingress) = mirror_behind_ingress(
        "0",
        "8080:*->*, 443:*->443, 80:*->443, 9000:444->*, 9000:*->443",
    )
    .await;
    let addr = ingress.local_addrs()[0];
    let with_host = |host: &'static str| async move {
        send_raw(
            addr,
            &build_with_host(host, "GET", "/mirror.test:444/internal", &[], b""),
        )
        .await
        .unwrap()
    };
    for (host, reaches_444) in [
        ("example.com", false),      // port 80: 80:*->443
        ("", false),                 // no Host: port 80
        ("example.com:443", false),  // 443:*->443
        ("example.com:8080", true),  // 8080:*->*
        ("example.com:9000", false), // 9000:444->* passed over, then 9000:*->443
        ("example.com:7000", true),  // no rule: the port is kept
        ("[::1]", false),            // an IPv6 host without a port: 80
        ("[::1]:8080", true),
    ] {
        let res = with_host(host).await;
        if reaches_444 {
            assert_eq!(res.text(), "internal", "Host {host:?}");
        } else {
            assert_eq!(res.status, 404, "Host {host:?}: {}", res.text());
        }
    }
    ingress.shutdown().await;
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_mappings_with_two_listeners() {
    let (trusted, public) = (free_port(), free_port());
    let (nats, svc, ingress) = mirror_behind_ingress(
        &format!("{trusted},{public}"),
        &format!("{trusted}:*->*, {public}:*->443"),
    )
    .await;
    let t: SocketAddr = format!("127.0.0.1:{trusted}").parse().unwrap();
    let p: SocketAddr = format!("127.0.0.1:{public}").parse().unwrap();
    assert_eq!(get(t, "/mirror.test:444/internal").await.text(), "internal");
    // The public listener is forced to :443, where there is no /internal.
    let res = get(p, "/mirror.test:444/internal").await;
    assert_eq!(res.status, 404);
    assert!(res.text().contains("ack timeout"));
    assert_eq!(get(p, "/mirror.test:444/public").await.text(), "public");
    assert_eq!(get(p, "/mirror.test/public").await.text(), "public");
    ingress.shutdown().await;
    svc.shutdown().await;
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests() {
    let s = stack().await;
    let mut tasks = Vec::new();
    for i in 0..1000i64 {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let res = get(
                addr,
                &format!("/calculator.example/arithmetic?x={i}&op=*&y=3"),
            )
            .await;
            (i, res)
        }));
    }
    for t in tasks {
        let (i, res) = t.await.unwrap();
        assert_eq!(res.status, 200, "{}", res.text());
        let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        assert_eq!(v["result"], i * 3);
        assert_eq!(v["xEcho"], i);
    }
    s.assert_healthy().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_is_a_quick_503() {
    let mut s = stack().await;
    s.assert_healthy().await;
    s.nats.stop();
    let mut state = s.ingress.connector().bus().watch_state();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|st| *st != busgate::transport::ConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    let started = Instant::now();
    let res = get(s.addr, "/hello.example/hello").await;
    assert_eq!(res.status, 503);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(body_has_trace(&res));
    s.nats.restart();
    tokio::time::timeout(
        Duration::from_secs(20),
        state.wait_for(|st| *st == busgate::transport::ConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        if get(s.addr, "/hello.example/hello").await.status == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let s = stack().await;
    let addr = s.addr;
    let slow = tokio::spawn(async move { get(addr, "/mirror.test/sleep?ms=1000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ingress = s.ingress;
    let stopping = tokio::spawn(async move {
        ingress.shutdown().await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No new connections once shutdown began.
    assert!(
        send_raw(addr, &build("GET", "/hello.example/hello", &[], b""))
            .await
            .is_err()
    );
    let res = slow.await.unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "slept"));
    stopping.await.unwrap();
    for svc in s.services {
        svc.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_fails_start_clearly() {
    let nats = NatsServer::start();
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg =
        IngressConfig::resolve(None, |_| None, &[("Ports".into(), port.to_string())]).unwrap();
    let err = HttpIngress::start(cfg, &nats.config()).await.err().unwrap();
    assert!(
        err.to_string()
            .contains(&format!("cannot listen on port {port}")),
        "{err}"
    );
}
