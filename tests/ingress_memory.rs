//! Memory stays bounded: 50 concurrent 20 MB uploads through a `busgate ingress` process with
//! `RequestMemoryLimit` 256 MB. The excess gets 413 and the process's peak RSS (VmHWM) stays
//! under the limit plus a small overhead.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use busgate::{Ctx, Service};
use bytes::Bytes;
use common::http::{build, send_raw, upload};
use common::{ChildGuard, NatsServer};
use http::{Request, Response};

const LIMIT_MB: usize = 256;
/// What the process needs besides request bodies: code, runtime, buffers of 50 connections.
const OVERHEAD_MB: usize = 64;
const UPLOAD: usize = 20 * 1024 * 1024;

fn peak_rss_mb(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_20mb_uploads_stay_within_the_memory_limit() {
    let nats = NatsServer::start();
    let cfg = nats.config();
    let sink = Service::new("sink.test")
        .post("/length", |_ctx: Ctx, req: Request<Bytes>| async move {
            Ok(Response::new(Bytes::from(req.body().len().to_string())))
        })
        .start(&cfg)
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_busgate"))
            .args([
                "ingress",
                "--admin-addr",
                "127.0.0.1:0",
                "--ports",
                &port.to_string(),
                "--set",
                &format!("RequestMemoryLimit={LIMIT_MB}"),
            ])
            .env("MICROBUS_NATS", nats.url())
            .env("MICROBUS_PLANE", &cfg.plane)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "busgate ingress did not start");
    let baseline = peak_rss_mb(child.0.id());

    let body = Bytes::from(vec![b'u'; UPLOAD]);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                upload(addr, "/sink.test/length", &body).await
            } else {
                // Without Expect: the client sends everything at once, refused or not.
                send_raw(addr, &build("POST", "/sink.test/length", &[], &body)).await
            }
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let res = t.await.unwrap().expect("every upload gets an answer");
        match res.status {
            200 => {
                assert_eq!(res.text(), UPLOAD.to_string());
                ok += 1;
            }
            413 => {
                assert!(res.text().contains("insufficient memory"));
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", res.text()),
        }
    }
    let peak = peak_rss_mb(child.0.id());
    println!("uploads: {ok} accepted, {refused} refused with 413; RSS baseline {baseline} MB, peak {peak} MB (limit {LIMIT_MB} MB)");
    assert!(ok >= 1, "some uploads fit");
    assert!(refused >= 1, "the excess is refused");
    assert!(
        peak <= LIMIT_MB + OVERHEAD_MB,
        "peak RSS {peak} MB over {LIMIT_MB}+{OVERHEAD_MB} MB"
    );
    sink.shutdown().await;
}
