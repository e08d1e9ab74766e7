//! The HTTP ingress's connection threads (`Threads`, one a core by default): a connection and
//! the calls its requests make to services in the same process are served on one of them, in
//! turn, and they end with the ingress. A test binary of its own: it counts the process's
//! threads, on a real nats-server with the short circuit, as busgate runs by default.

mod common;

use std::time::{Duration, Instant};

use busgate::ingress::http::{HttpIngress, IngressConfig};
use busgate::{Ctx, Service};
use bytes::Bytes;
use common::{text, TestBus};
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Threads of this process whose name starts with `http-ingress-`.
fn ingress_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("http-ingress-"))
        .count()
}

/// The body of `GET path` on a connection of its own.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

async fn ingress(bus: &TestBus, threads: &str) -> HttpIngress {
    let overrides = [
        ("Ports".to_owned(), "0".to_owned()),
        ("Threads".to_owned(), threads.to_owned()),
    ];
    let mut cfg = IngressConfig::resolve(None, |_| None, &overrides).unwrap();
    cfg.bind_ip = "127.0.0.1".parse().unwrap();
    HttpIngress::start(cfg, &bus.config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_their_in_process_calls_run_on_the_ingress_threads() {
    let bus = TestBus::short_circuit();
    // Answers with the name of the thread its handler runs on.
    let service = Service::new("where.test")
        .get("/thread", |_ctx: Ctx, _req: Request<Bytes>| async {
            Ok(text(std::thread::current().name().unwrap_or("-")))
        })
        .start(&bus.config)
        .await
        .unwrap();

    let http = ingress(&bus, "2").await;
    assert_eq!(ingress_threads(), 2);
    let addr = http.local_addrs()[0];
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get(addr, "/where.test/thread").await);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "http-ingress-0",
            "http-ingress-0",
            "http-ingress-1",
            "http-ingress-1"
        ],
        "connections go to the threads in turn, and the handler runs on its caller's"
    );
    http.shutdown().await;
    let waited = Instant::now();
    while ingress_threads() > 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "the ingress threads outlived it"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // `Threads=0`: connections on the process's own runtime, as before.
    let http = ingress(&bus, "0").await;
    assert_eq!(ingress_threads(), 0);
    let body = get(http.local_addrs()[0], "/where.test/thread").await;
    // tokio's own worker thread ("tokio-rt-worker").
    assert!(body.starts_with("tokio-"), "{body}");
    http.shutdown().await;
    service.shutdown().await;
}

#[test]
fn a_bad_thread_count_is_refused_with_its_name() {
    for bad in ["-1", "many", "1025"] {
        let overrides = [("Threads".to_owned(), bad.to_owned())];
        let err = IngressConfig::resolve(None, |_| None, &overrides)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("Threads") && err.contains("0 to 1024"),
            "{bad}: {err}"
        );
    }
}
