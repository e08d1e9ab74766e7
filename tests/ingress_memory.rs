//! Memory stays bounded: 50 concurrent 20 MB uploads through a `busgate ingress` process with
//! `RequestMemoryLimit` 256 MB (the excess gets 413 and the process's peak RSS, VmHWM, stays
//! under the limit plus a small overhead); 10,000 idle keep-alive connections held open cost a
//! bounded amount each while other clients are served.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use busgate::{Ctx, Service};
use bytes::Bytes;
use common::http::{build, read_response, send_raw, upload};
use common::{free_port, ChildGuard, NatsServer};
use http::{Request, Response};

const LIMIT_MB: usize = 256;
/// What the process needs besides request bodies: code, runtime, buffers of 50 connections.
const OVERHEAD_MB: usize = 64;
const UPLOAD: usize = 20 * 1024 * 1024;

fn status_kb(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn peak_rss_mb(pid: u32) -> usize {
    status_kb(pid, "VmHWM:") / 1024
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

async fn wait_listening(addr: SocketAddr) {
    for _ in 0..150 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on {addr}");
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
    let port = free_port();
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
                // This test is about memory, not speed: 50 uploads of 20 MB on a shared 2-core
                // machine took close to the default 20 s budget once (one 408 in a full run).
                "--set",
                "TimeBudget=90s",
            ])
            .env("MICROBUS_NATS", nats.url())
            .env("MICROBUS_PLANE", &cfg.plane)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr).await;
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

/// Keep-alive connections held open after one request each.
const HELD: usize = 10_000;
/// Connections that never send a byte (the header timeout ends them later).
const SILENT: usize = 500;
/// What one idle connection may cost the process. Parked, an idle HTTP/1 connection holds no
/// hyper state (its read and write buffers were 16 KiB, and 10,000 connections cost ~30 KiB
/// each before parking); 3 KiB measured, BENCHMARKS.md has the figures.
const MAX_KIB_PER_CONNECTION: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_cost_bounded_memory_and_others_are_served() {
    // This process holds the client ends; busgate raises its own limit at start.
    let needed = (HELD + SILENT + 1000) as u64;
    let limit = rlimit::increase_nofile_limit(needed).unwrap();
    assert!(
        limit >= needed,
        "the test needs {needed} open files but the hard limit is {limit}: raise it (ulimit -Hn)"
    );
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_busgate"));
    // busgate starts with the usual soft limit of 1024 open files, and must raise it itself.
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, 1024, hard));
    }
    let child = ChildGuard(
        command
            .args(["--ports", &port.to_string()])
            // Any free admin port: a port picked in advance was once taken by the time the
            // child bound it ("Address already in use" in a full run).
            .args(["--admin-addr", "127.0.0.1:0"])
            .env_remove("MICROBUS_NATS")
            .env("BUSGATE_SMTP_INGRESS_PORT", free_port().to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr).await;
    let path = "/hello.example/hello?name=idle";
    let keep_alive = Arc::new(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes());
    // Warm the path, then read the baseline.
    let res = send_raw(addr, &keep_alive).await.unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_before, files_before) = (status_kb(pid, "VmRSS:"), open_files(pid));

    let mut held = Vec::with_capacity(HELD);
    // In waves, so that the listen backlog is not what is measured.
    for wave in 0..HELD / 500 {
        let mut tasks = Vec::new();
        for _ in 0..500 {
            let request = keep_alive.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await?;
                use tokio::io::AsyncWriteExt;
                stream.write_all(&request).await?;
                let mut buf = Vec::new();
                let res = tokio::time::timeout(
                    Duration::from_secs(30),
                    read_response(&mut stream, &mut buf),
                )
                .await
                .map_err(|_| std::io::Error::other("no response in 30 s"))??;
                Ok::<_, std::io::Error>((stream, res.status))
            }));
        }
        for t in tasks {
            let (stream, status) = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("wave {wave}: a connection failed: {e}"));
            assert_eq!(status, 200);
            held.push(stream);
        }
    }
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Idle keep-alive connections park one to two PARK_AFTER after their last request.
    tokio::time::sleep(2 * busgate::ingress::http::PARK_AFTER + Duration::from_millis(500)).await;
    let rss_held = status_kb(pid, "VmRSS:");
    let files_held = open_files(pid);

    // Meanwhile another client is served, and so is each held connection once more.
    let started = std::time::Instant::now();
    let res = send_raw(addr, &keep_alive).await.unwrap();
    let other_took = started.elapsed();
    assert_eq!(res.status, 200, "{}", res.text());
    for stream in held.iter_mut().step_by(1000) {
        use tokio::io::AsyncWriteExt;
        stream.write_all(&keep_alive).await.unwrap();
        let mut buf = Vec::new();
        let res = read_response(stream, &mut buf).await.unwrap();
        assert_eq!(res.status, 200, "a held connection was not kept alive");
    }
    let per_connection_kib = (rss_held.saturating_sub(rss_before)) / (HELD + SILENT);
    println!(
        "{HELD} keep-alive + {SILENT} silent connections: RSS {} -> {} MB ({per_connection_kib} KiB each), \
         open files {files_before} -> {files_held}; another request answered in {other_took:?}",
        rss_before / 1024,
        rss_held / 1024,
    );
    assert!(
        files_held >= files_before + HELD + SILENT,
        "the connections were not all open at once ({files_held} files)"
    );
    assert!(
        per_connection_kib <= MAX_KIB_PER_CONNECTION,
        "{per_connection_kib} KiB per idle connection, over {MAX_KIB_PER_CONNECTION} KiB"
    );

    // Closed by the clients, they are all let go.
    drop(held);
    drop(silent);
    let mut files_after = open_files(pid);
    for _ in 0..100 {
        if files_after <= files_before + 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        files_after = open_files(pid);
    }
    assert!(
        files_after <= files_before + 10,
        "{files_after} files still open after the clients left (baseline {files_before})"
    );
    let res = send_raw(addr, &keep_alive).await.unwrap();
    assert_eq!(res.status, 200);
}
