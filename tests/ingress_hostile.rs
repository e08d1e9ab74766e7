//! Bad and hostile input at the HTTP ingress: each gets its status and the server stays healthy.
//! Also TLS listeners and the secure redirect.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use busgate::ingress::http::context::ConnInfo;
use busgate::ingress::http::middleware::handle;
use busgate::ingress::http::{HttpIngress, IngressConfig, Shared};
use busgate::{examples, Connector, Ctx, Service};
use bytes::Bytes;
use common::http::{build, get, read_response, request, send_on, send_raw, upload, RawResponse};
use common::{make_certs, NatsServer, TempDir};
use http::{Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Stack {
    _nats: NatsServer,
    services: Vec<Connector>,
    ingress: HttpIngress,
    addr: SocketAddr,
}

impl Stack {
    async fn stop(self) {
        self.ingress.shutdown().await;
        for s in self.services {
            s.shutdown().await;
        }
    }

    async fn assert_healthy(&self) {
        let res = get(self.addr, "/hello.example/hello?name=ok").await;
        assert_eq!((res.status, res.text().as_str()), (200, "Hello, ok!"));
    }
}

/// A response larger than the socket buffers of loopback: a client that does not read holds
/// the rest in busgate's hands.
const BIG: usize = 24 << 20;

fn sink() -> Service {
    Service::new("sink.test")
        .post("/length", |_ctx: Ctx, req: Request<Bytes>| async move {
            Ok(Response::new(Bytes::from(req.body().len().to_string())))
        })
        .get("/big", |_ctx: Ctx, _req: Request<Bytes>| async move {
            Ok(Response::new(Bytes::from(vec![b'x'; BIG])))
        })
        .any("/headers", |_ctx: Ctx, req: Request<Bytes>| async move {
            let names: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("?")))
                .collect();
            Ok(Response::builder()
                .header("mIcRoBuS-Leak", "x")
                .header(
                    "TRACEPARENT",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .body(Bytes::from(names.join(",")))
                .unwrap())
        })
}

async fn stack_with(props: &[(&str, &str)], cert_dir: Option<&std::path::Path>) -> Stack {
    let nats = NatsServer::start();
    let bus = nats.config();
    let mut services = examples::start_all(&bus).await.unwrap();
    services.push(sink().start(&bus).await.unwrap());
    let mut overrides: Vec<(String, String)> = vec![("Ports".into(), "0".into())];
    overrides.extend(props.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut cfg = IngressConfig::resolve(None, |_| None, &overrides).unwrap();
    cfg.bind_ip = "127.0.0.1".parse().unwrap();
    if let Some(dir) = cert_dir {
        cfg.cert_dir = dir.to_owned();
    }
    let ingress = HttpIngress::start(cfg, &bus).await.unwrap();
    let addr = ingress.local_addrs()[0];
    Stack {
        _nats: nats,
        services,
        ingress,
        addr,
    }
}

/// Send raw bytes; `None` when the server closed without a response.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<RawResponse> {
    send_raw(addr, bytes).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400() {
    let s = stack_with(&[], None).await;
    let cases: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /hello.example/hello HTTP/1.1 extra\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET /hello.example/hello HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /hello.example/hello HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
        b"GET /hello.example/he\x00llo HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello.example/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /sink.test/length HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /sink.test/length HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ];
    for case in cases {
        let res = raw(s.addr, case).await;
        let status = res.as_ref().map(|r| r.status);
        assert!(
            matches!(status, Some(400)),
            "{:?} got {status:?}",
            String::from_utf8_lossy(case)
        );
    }
    s.assert_healthy().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let s = stack_with(&[("MaxHeaderBytes", "16384")], None).await;
    let big = "x".repeat(20_000);
    let res = raw(
        s.addr,
        &build("GET", "/hello.example/hello", &[("X-Big", &big)], b""),
    )
    .await;
    assert_eq!(res.map(|r| r.status), Some(431));
    let many: Vec<(String, String)> = (0..200).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let res = raw(s.addr, &build("GET", "/hello.example/hello", &refs, b"")).await;
    assert_eq!(res.map(|r| r.status), Some(431), "too many headers");
    s.assert_healthy().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_with_or_without_length() {
    // 2 MB for bodies, so 1 MB usable (a body is held twice on its way to the bus).
    let s = stack_with(&[("RequestMemoryLimit", "2")], None).await;
    let small = vec![b'a'; 512 * 1024];
    let res = request(s.addr, "POST", "/sink.test/length", &[], &small).await;
    assert_eq!((res.status, res.text()), (200, small.len().to_string()));

    let big = vec![b'b'; 3 * 1024 * 1024];
    // Declared too large: refused before the body is read.
    let res = upload(s.addr, "/sink.test/length", &big).await.unwrap();
    assert_eq!(res.status, 413);
    assert!(res.text().contains("insufficient memory"), "{}", res.text());
    // Sent anyway without waiting: still a clean 413 (the refused body is drained, not kept).
    let res = raw(s.addr, &build("POST", "/sink.test/length", &[], &big))
        .await
        .unwrap();
    assert_eq!(res.status, 413);
    // No length: refused while reading.
    let mut chunked = b"POST /sink.test/length HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in big.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let res = raw(s.addr, &chunked).await.unwrap();
    assert_eq!(res.status, 413);
    // Nothing stays reserved.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.ingress.memory_in_use(), 0);
    let res = request(s.addr, "POST", "/sink.test/length", &[], &small).await;
    assert_eq!(res.status, 200);
    s.assert_healthy().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_is_cut_off() {
    let s = stack_with(&[("ReadHeaderTimeout", "1s"), ("ReadTimeout", "2s")], None).await;
    // Headers trickled one byte at a time never finish: the connection is closed.
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /hello.example/hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        // A closed connection shows as EOF (possibly after a 408) on read.
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(
            Duration::from_millis(1),
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
        )
        .await
        {
            if n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "still open after {:?}", started.elapsed());

    // A body trickled too slowly gets 408.
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"POST /sink.test/length HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b"x").await.is_err() {
                break;
            }
        }
        stream
    });
    let mut stream = writer.await.unwrap();
    let mut buf = Vec::new();
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        read_response(&mut stream, &mut buf),
    )
    .await;
    assert_eq!(res.unwrap().unwrap().status, 408);
    s.assert_healthy().await;
    s.stop().await;
}

/// Go's timeouts: a head must arrive within ReadHeaderTimeout (from the accept, then from its
/// first byte), while a keep-alive connection may idle between requests up to ReadTimeout (Go's
/// IdleTimeout default). A load balancer's pooled connections must not be closed under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_idles_up_to_the_read_timeout_and_silent_clients_are_cut_off() {
    let s = stack_with(&[("ReadHeaderTimeout", "1s"), ("ReadTimeout", "4s")], None).await;
    let hello = b"GET /hello.example/hello?name=idle HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut kept = TcpStream::connect(s.addr).await.unwrap();
    assert_eq!(send_on(&mut kept, hello).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        send_on(&mut kept, hello).await.unwrap().status,
        200,
        "closed while idle for longer than ReadHeaderTimeout"
    );
    let idle_from = Instant::now();

    // A client that connects and says nothing is closed after ReadHeaderTimeout.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    let started = Instant::now();
    let more = next_bytes(&mut silent, Duration::from_secs(10)).await;
    let silent_for = started.elapsed();
    assert_eq!(more, Some(Vec::new()), "a silent client is closed");
    assert!(
        silent_for >= Duration::from_millis(900) && silent_for < Duration::from_secs(3),
        "a silent client was closed after {silent_for:?}, not ReadHeaderTimeout"
    );

    // The kept connection ends once idle for ReadTimeout.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), read_response(&mut kept, &mut rest))
        .await
        .expect("an idle keep-alive connection is closed after ReadTimeout");
    assert!(closed.is_err(), "a response nobody asked for");
    let idle_for = idle_from.elapsed();
    assert!(
        idle_for >= Duration::from_millis(3500),
        "closed after {idle_for:?} idle, before ReadTimeout"
    );
    s.assert_healthy().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_are_refused() {
    let s = stack_with(&[], None).await;
    let cases: &[&[u8]] = &[
        b"POST /sink.test/length HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hello.example/hello HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /sink.test/length HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"POST /sink.test/length HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"POST /sink.test/length HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ];
    for case in cases {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        let res = send_on(&mut stream, case).await;
        let status = res.as_ref().map(|r| r.status).ok();
        assert_eq!(status, Some(400), "{:?}", String::from_utf8_lossy(case));
        // The connection is closed: no second request is read from the smuggled bytes.
        let mut buf = Vec::new();
        let next =
            tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream, &mut buf))
                .await;
        assert!(matches!(next, Ok(Err(_))), "a second response followed");
    }
    s.assert_healthy().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_and_hosts() {
    let s = stack_with(&[], None).await;
    let long = format!("/hello.example{}", "/a".repeat(10_000));
    let cases: Vec<(String, &[u16])> = vec![
        ("/hello.example/*".into(), &[404]),
        ("/hello.example/>".into(), &[400, 404]),
        ("/hello.example/hello.>".into(), &[400, 404]),
        ("/hello.example/./hello".into(), &[404]),
        ("/hello.example/../hello".into(), &[404]),
        ("/hello.example/%2e%2e/hello".into(), &[404]),
        ("/hello.example/%2E/hello".into(), &[404]),
        ("/hello.example/hello%00".into(), &[404]),
        ("/hello.example/%ff%fe".into(), &[404]),
        ("/hello.example/%E2%98%83".into(), &[404]),
        ("/hello.example/hello%20".into(), &[404]),
        (long, &[414]),
        ("/hello.*/hello".into(), &[404]),
        ("/*/hello".into(), &[404]),
        ("/hello.%2a/hello".into(), &[404]),
        ("/%3E/x".into(), &[404]),
        ("/hel lo/x".into(), &[400]),
        ("*".into(), &[400, 404]),
    ];
    for (path, expected) in &cases {
        let bytes = build("GET", path, &[], b"");
        let res = raw(s.addr, &bytes).await;
        let status = res.as_ref().map(|r| r.status);
        assert!(
            status.is_some_and(|st| expected.contains(&st)),
            "{}: {status:?} {:?}",
            &path[..path.len().min(60)],
            res.map(|r| r.text())
        );
    }
    s.assert_healthy().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_headers_in_any_case_never_cross() {
    let s = stack_with(&[], None).await;
    let res = request(
        s.addr,
        "GET",
        "/sink.test/headers",
        &[
            ("mIcRoBuS-Op-Code", "Err"),
            ("MICROBUS-FRAGMENT", "2/2"),
            ("microbus-time-budget", "1"),
            ("TrAcEpArEnT", "x"),
        ],
        b"",
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // Only the ingress's own frame headers reach the service.
    let seen = res.text();
    assert!(
        !seen.contains("microbus-fragment")
            && !seen.contains("=Err")
            && !seen.contains("traceparent=x")
            && !seen.contains("microbus-time-budget=1,"),
        "{seen}"
    );
    // The traceparent the service sees is the ingress's own span.
    assert!(seen.contains("traceparent=00-"), "{seen}");
    assert!(res
        .headers
        .iter()
        .all(|(k, _)| !k.to_ascii_lowercase().starts_with("microbus-")
            && !k.eq_ignore_ascii_case("traceparent")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_from_cert_files() {
    let dir = TempDir::new("ingress-tls");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    make_certs(&dir.0);
    for (from, to) in [("server-cert.pem", "cert"), ("server-key.pem", "key")] {
        std::fs::rename(
            dir.0.join(from),
            dir.0.join(format!("httpingress-{port}-{to}.pem")),
        )
        .unwrap();
    }
    let s = stack_with(&[("Ports", &port.to_string())], Some(&dir.0)).await;

    use rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(dir.0.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let mut tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let res = send_on(&mut tls, &build("GET", "/sink.test/headers", &[], b""))
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    // Plain HTTP on a TLS port gets nowhere.
    assert!(raw(s.addr, &build("GET", "/hello.example/hello", &[], b""))
        .await
        .is_none_or(|r| r.status == 400));
    s.stop().await;

    // A broken key file fails the start with a clear error.
    std::fs::write(
        dir.0.join(format!("httpingress-{port}-key.pem")),
        "not a key",
    )
    .unwrap();
    let nats = NatsServer::start();
    let mut cfg =
        IngressConfig::resolve(None, |_| None, &[("Ports".into(), port.to_string())]).unwrap();
    cfg.cert_dir = dir.0.clone();
    let err = HttpIngress::start(cfg, &nats.config()).await.err().unwrap();
    assert!(
        err.to_string()
            .contains(&format!("invalid TLS files for port {port}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_redirect_when_tls_serves_443() {
    let conn = Service::new("redirect.test")
        .start(&busgate::BusConfig::in_process())
        .await
        .unwrap();
    let shared = Arc::new(Shared {
        metrics: busgate::ingress::http::metrics::IngressMetrics::register(conn.metrics()),
        config: IngressConfig::default(),
        conn: conn.clone(),
        memory: busgate::ingress::http::memory::MemoryBudget::new(1 << 20),
        tls_ports: [443].into_iter().collect(),
    });
    // The port is the Host's (80 when it has none), as in Go; the listener's does not matter.
    let request = |method: &str, host: &str, tls: bool| {
        let req = http::Request::builder()
            .method(method)
            .uri("/hello.example/hello?name=x")
            .header("host", host)
            .body(axum::body::Body::empty())
            .unwrap();
        let info = ConnInfo {
            listen_port: 8080,
            tls,
            peer: "198.51.100.1:5000".parse().unwrap(),
        };
        (info, req)
    };
    for host in ["www.example.com:80", "www.example.com"] {
        let (info, req) = request("GET", host, false);
        let res = handle(&shared, info, req).await;
        assert_eq!(res.status(), 307, "{host}");
        assert_eq!(
            res.headers()["location"],
            "https://www.example.com/hello.example/hello?name=x"
        );
    }
    // Not for other methods, ports, or TLS connections.
    for (method, host, tls) in [
        ("POST", "www.example.com:80", false),
        ("GET", "www.example.com:8080", false),
        ("GET", "www.example.com:80", true),
    ] {
        let (info, req) = request(method, host, tls);
        let res = handle(&shared, info, req).await;
        assert_ne!(res.status(), 307, "{method} {host} {tls}");
    }
    conn.shutdown().await;
}

/// One HTTP/2 frame: 3-byte length, type, flags, stream id.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const H2_HEADERS: u8 = 1;
const H2_RST_STREAM: u8 = 3;
const H2_GOAWAY: u8 = 7;
const H2_CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// A prior-knowledge HTTP/2 connection: preface and empty SETTINGS sent.
async fn h2_connect(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&h2_frame(4, 0, 0, &[])).await.unwrap();
    stream
}

/// `GET /hello.example/hello` as HPACK: `:method GET`, `:scheme http` indexed, `:path` and
/// `:authority` as literals without indexing.
fn h2_get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    for (index, value) in [(4u8, "/hello.example/hello"), (1, "localhost")] {
        b.push(index);
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// Read frames until the connection ends; the GOAWAY error code if one came.
async fn h2_goaway(stream: &mut TcpStream, within: Duration) -> Option<u32> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let deadline = Instant::now() + within;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = ((buf[0] as usize) << 16) | ((buf[1] as usize) << 8) | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == H2_GOAWAY && len >= 8 {
                return Some(u32::from_be_bytes(buf[13..17].try_into().unwrap()));
            }
            buf.drain(..9 + len);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// HTTP/2 hostile input: an endless CONTINUATION of one header block, and the "rapid reset"
/// of streams opened and cancelled at once. hyper's limits (set explicitly in the ingress) end
/// each such connection with a GOAWAY; other clients are served all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_end_their_connection() {
    let s = stack_with(&[], None).await;
    // A plain HTTP/2 request works (the same framing as the floods below).
    let mut ok = h2_connect(s.addr).await;
    ok.write_all(&h2_frame(
        H2_HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &h2_get_block(),
    ))
    .await
    .unwrap();
    let mut head = [0u8; 9];
    use tokio::io::AsyncReadExt;
    // The server's SETTINGS, then (after its ack and our request) a HEADERS frame for stream 1.
    let mut saw_response = false;
    for _ in 0..8 {
        if tokio::time::timeout(Duration::from_secs(5), ok.read_exact(&mut head))
            .await
            .is_err()
        {
            break;
        }
        let len = ((head[0] as usize) << 16) | ((head[1] as usize) << 8) | head[2] as usize;
        let mut payload = vec![0u8; len];
        ok.read_exact(&mut payload).await.unwrap();
        if head[3] == H2_HEADERS && u32::from_be_bytes(head[5..9].try_into().unwrap()) == 1 {
            saw_response = true;
            break;
        }
    }
    assert!(saw_response, "no HTTP/2 response to a plain GET");

    // CONTINUATION flood: one header block that never ends, 16 KiB at a time. The server
    // must stop reading long before 64 MiB: with MaxHeaderBytes 64 KiB it may buffer little.
    let mut flood = h2_connect(s.addr).await;
    flood
        .write_all(&h2_frame(H2_HEADERS, END_STREAM, 1, &h2_get_block()))
        .await
        .unwrap();
    let junk = vec![0x40u8; 16 * 1024];
    let mut sent = 0usize;
    while sent < 64 << 20 {
        let frame = h2_frame(H2_CONTINUATION, 0, 1, &junk);
        match tokio::time::timeout(Duration::from_secs(5), flood.write_all(&frame)).await {
            Ok(Ok(())) => sent += junk.len(),
            _ => break,
        }
    }
    let code = h2_goaway(&mut flood, Duration::from_secs(5)).await;
    eprintln!("CONTINUATION flood: {} KiB accepted before the server stopped reading; GOAWAY code {code:?}", sent >> 10);
    assert!(
        sent < 64 << 20,
        "the server read 64 MiB of one header block"
    );
    s.assert_healthy().await;

    // Rapid reset: open and cancel 5,000 streams.
    let mut resets = h2_connect(s.addr).await;
    let block = h2_get_block();
    let mut batch = Vec::new();
    let mut stream_id = 1u32;
    let mut written = 0;
    for _ in 0..5_000 {
        batch.extend(h2_frame(
            H2_HEADERS,
            END_STREAM | END_HEADERS,
            stream_id,
            &block,
        ));
        batch.extend(h2_frame(H2_RST_STREAM, 0, stream_id, &8u32.to_be_bytes()));
        stream_id += 2;
        if batch.len() > 32 * 1024 {
            if resets.write_all(&batch).await.is_err() {
                break;
            }
            written += 1;
            batch.clear();
        }
    }
    let _ = resets.write_all(&batch).await;
    let code = h2_goaway(&mut resets, Duration::from_secs(10)).await;
    eprintln!("rapid reset: {written} batches written; GOAWAY code {code:?}");
    // ENHANCE_YOUR_CALM (0xb): too many streams reset before they were served.
    assert_eq!(
        code,
        Some(0xb),
        "the rapid-reset connection was not told to calm down"
    );
    s.assert_healthy().await;
    s.stop().await;
}

/// After a 4xx on a keep-alive connection, the bytes of the refused request's body are never
/// read as a request of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_smuggling_after_a_4xx_on_keep_alive() {
    let s = stack_with(&[], None).await;
    let hidden = b"GET /hello.example/hello?name=SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n";
    // Refusals: a blocked scanner path and a path that names no bus host (answered before the
    // body would be read), a route no service has (404 ack timeout after the body was read);
    // below, a body over the limit.
    let refused = [
        "/wp-login.php",
        "/not_a_host!/x",
        "/hello.example/no-such-route",
    ];
    let len = hidden.len();
    for path in refused {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        let mut req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes();
        req.extend_from_slice(hidden);
        stream.write_all(&req).await.unwrap();
        let mut buf = Vec::new();
        let first =
            tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream, &mut buf))
                .await
                .unwrap()
                .unwrap();
        assert!(
            (400..500).contains(&first.status),
            "{path}: {}",
            first.status
        );
        // Then a real request on the same connection, if the server kept it: its answer must
        // be the real one, never the hidden request's.
        let next =
            b"GET /hello.example/hello?name=real HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let _ = stream.write_all(next).await;
        let mut answers = Vec::new();
        while let Ok(Ok(res)) =
            tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream, &mut buf)).await
        {
            answers.push(res.text());
        }
        assert!(
            answers.iter().all(|a| !a.contains("SMUGGLED")),
            "{path}: the body was served as a request: {answers:?}"
        );
        assert!(answers.len() <= 1, "{path}: {answers:?}");
        if let Some(a) = answers.first() {
            assert_eq!(a, "Hello, real!", "{path}");
        }
    }
    // A body over the memory limit, refused before it is read, closes the connection.
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let mut req =
        b"POST /sink.test/length HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n"
            .to_vec();
    req.extend_from_slice(hidden);
    stream.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream, &mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, 413);
    // The ingress drains a refused body for up to LINGER_TIMEOUT (5 s) so that a client still
    // sending reads its 413; the hidden request is swallowed as body, then the connection ends.
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        read_response(&mut stream, &mut buf),
    )
    .await;
    match next {
        Ok(Err(_)) => {}
        Ok(Ok(res)) => panic!(
            "a second response followed a 413: {} {}",
            res.status,
            res.text()
        ),
        Err(_) => panic!("the connection stayed open after a 413 with an unread body"),
    }
    s.assert_healthy().await;
    s.stop().await;
}

/// What the server sends next on `stream` within `within`: `Some` of no bytes when it closed
/// (or reset) the connection, `None` when it sent nothing and kept it open.
async fn next_bytes(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(within, tokio::io::AsyncReadExt::read(stream, &mut buf))
        .await
        .ok()?
        .unwrap_or(0);
    Some(buf[..n].to_vec())
}

/// The ingress's `busgate_ingress_parked_connections`, all listeners.
fn parked(s: &Stack) -> i64 {
    s.ingress
        .connector()
        .metrics()
        .registry
        .gather()
        .iter()
        .filter(|f| f.name() == "busgate_ingress_parked_connections")
        .flat_map(|f| f.metric.iter())
        .map(|m| m.gauge.value() as i64)
        .sum()
}

/// Waits until `n` connections are parked (a connection parks one to two PARK_AFTER after its
/// last request); panics with the count after 10 s.
async fn until_parked(s: &Stack, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while parked(s) != n {
        assert!(Instant::now() < deadline, "{} parked, not {n}", parked(s));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const KEEP_ALIVE_HELLO: &[u8] = b"GET /hello.example/hello?name=kept HTTP/1.1\r\nHost: x\r\n\r\n";

/// An idle keep-alive connection gives up its HTTP state and is served as before when it
/// speaks again: one request, a head cut in two around a park, pipelined requests, a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_park_and_are_served_again() {
    let s = stack_with(&[("ReadHeaderTimeout", "5s")], None).await;
    let mut kept = TcpStream::connect(s.addr).await.unwrap();
    let res = send_on(&mut kept, KEEP_ALIVE_HELLO).await.unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "Hello, kept!"));
    until_parked(&s, 1).await;

    // Served again on the same connection, which is no longer parked while it is.
    let res = send_on(&mut kept, KEEP_ALIVE_HELLO).await.unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "Hello, kept!"));
    until_parked(&s, 1).await;

    // A head that starts while parked and ends later.
    let (first, rest) = KEEP_ALIVE_HELLO.split_at(20);
    kept.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(parked(&s), 0, "a connection with half a head is not parked");
    let res = send_on(&mut kept, rest).await.unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "Hello, kept!"));
    until_parked(&s, 1).await;

    // Three pipelined requests, a body among them, written at once to a parked connection.
    let mut pipelined = KEEP_ALIVE_HELLO.to_vec();
    pipelined.extend_from_slice(
        b"POST /sink.test/length HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    );
    pipelined.extend_from_slice(b"GET /hello.example/hello?name=third HTTP/1.1\r\nHost: x\r\n\r\n");
    kept.write_all(&pipelined).await.unwrap();
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let res = tokio::time::timeout(Duration::from_secs(10), read_response(&mut kept, &mut buf))
            .await
            .expect("a pipelined request answered")
            .unwrap();
        answers.push((res.status, res.text()));
    }
    assert_eq!(
        answers,
        [
            (200, "Hello, kept!".to_string()),
            (200, "5".to_string()),
            (200, "Hello, third!".to_string())
        ]
    );
    until_parked(&s, 1).await;

    // The client leaves: the parked connection is let go.
    drop(kept);
    until_parked(&s, 0).await;
    s.assert_healthy().await;
    s.stop().await;
}

/// A connection whose client asked to close is closed after its response, parked or not; an
/// HTTP/1.0 client's too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_ask_to_close_are_closed_not_parked() {
    let s = stack_with(&[], None).await;
    for request in [
        &b"GET /hello.example/hello?name=bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET /hello.example/hello?name=bye HTTP/1.0\r\nHost: x\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        let res = send_on(&mut stream, request).await.unwrap();
        assert_eq!((res.status, res.text().as_str()), (200, "Hello, bye!"));
        let more = next_bytes(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(more, Some(Vec::new()), "not closed after the response");
    }
    assert_eq!(parked(&s), 0);
    s.stop().await;
}

/// Parked connections do not hold the shutdown: they are closed at once, while a request in
/// flight on another connection is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_parked_connections_at_once() {
    let s = stack_with(&[("ReadTimeout", "60s")], None).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        assert_eq!(
            send_on(&mut stream, KEEP_ALIVE_HELLO).await.unwrap().status,
            200
        );
        idle.push(stream);
    }
    until_parked(&s, 3).await;
    let started = Instant::now();
    s.stop().await;
    let took = started.elapsed();
    for mut stream in idle {
        let more = next_bytes(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(
            more,
            Some(Vec::new()),
            "a parked connection not closed at shutdown"
        );
    }
    // The ingress's patience is the time budget plus a grace of seconds; parked connections
    // must not be what it waits for (their read timeout is a minute here).
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
}

/// After a request with `Upgrade` (curl's `--http2` and Java's HttpClient send `Upgrade: h2c`
/// over plain HTTP) the guard passes everything through: such a connection is not parked,
/// and is kept alive past a quiet period like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_guard_no_longer_follows_stay_open_unparked() {
    let s = stack_with(&[], None).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let upgrade = b"GET /hello.example/hello?name=h2c HTTP/1.1\r\nHost: x\r\n\
Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    let res = send_on(&mut stream, upgrade).await.unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "Hello, h2c!"));
    tokio::time::sleep(4 * busgate::ingress::http::PARK_AFTER).await;
    assert_eq!(parked(&s), 0);
    let res = send_on(&mut stream, KEEP_ALIVE_HELLO).await.unwrap();
    assert_eq!((res.status, res.text().as_str()), (200, "Hello, kept!"));
    s.stop().await;
}

/// A client that reads a large response slowly gets all of it, whether it asked to close
/// (hyper writes out what it holds before it closes) or keeps the connection (it is not
/// parked while busgate still holds bytes for it), and a kept connection serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_large_responses_get_all_of_them() {
    let s = stack_with(&[], None).await;
    for (request, closes) in [
        (
            &b"GET /sink.test/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
            true,
        ),
        (b"GET /sink.test/big HTTP/1.1\r\nHost: x\r\n\r\n", false),
    ] {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        // Long enough for several park checks while the rest waits in busgate.
        tokio::time::sleep(6 * busgate::ingress::http::PARK_AFTER).await;
        let mut buf = Vec::new();
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            read_response(&mut stream, &mut buf),
        )
        .await
        .expect("the response in 30 s")
        .unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.body.len(), BIG, "closes: {closes}");
        if closes {
            let more = next_bytes(&mut stream, Duration::from_secs(5)).await;
            assert_eq!(more, Some(Vec::new()), "not closed after the response");
        } else {
            let res = send_on(&mut stream, KEEP_ALIVE_HELLO).await.unwrap();
            assert_eq!((res.status, res.text().as_str()), (200, "Hello, kept!"));
        }
    }
    s.stop().await;
}
