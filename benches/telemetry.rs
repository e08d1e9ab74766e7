//! Telemetry cost and metrics collection, measured in one run so that the ratios hold on a
//! noisy shared machine.
//!
//! Run: `cargo bench --bench telemetry` (needs `nats-server` and `wrk`). Writes
//! `benches/RESULTS.md`.
//!
//! 1. Ingress + bus throughput and p99 at 64 connections (wrk, 2 threads) for
//!    `GET /calculator.example/arithmetic`: telemetry off, on in PROD (tail selection), and on
//!    exporting every span over OTLP/HTTP to a local sink; rounds alternate and medians count.
//! 2. The time to answer `GET /metrics.core/collect` with 20 service instances on the bus.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use busgate::ingress::http::{HttpIngress, IngressConfig};
use busgate::services::metrics_core;
use busgate::telemetry::TelemetryConfig;
use busgate::{examples, BusConfig, Connector, Ctx, Deployment, Service};
use bytes::Bytes;

#[global_allocator]
static ALLOCATOR: busgate::allocator::Allocator = busgate::allocator::Allocator;

/// Alternating rounds per configuration and seconds per round (`BENCH_ROUNDS`, `BENCH_SECONDS`
/// shorten a quick look; the figures in RESULTS.md use the defaults).
// Many short rounds: the shared machine's load drifts, and a cost paired within a round and
// taken as the median over many rounds resists that drift best.
const ROUNDS: usize = 15;
const SECONDS: u32 = 4;
const CONNECTIONS: u32 = 64;
const COLLECT_INSTANCES: usize = 20;
const COLLECT_RUNS: usize = 10;

struct Nats(Child, u16);
impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats() -> Nats {
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", "-1"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server is needed");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                let _ = tx.send(
                    rest.trim()
                        .rsplit(':')
                        .next()
                        .unwrap()
                        .parse::<u16>()
                        .unwrap(),
                );
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("nats-server started");
    Nats(child, port)
}

/// An OTLP/HTTP endpoint that accepts and discards spans, counting bytes.
async fn otlp_sink() -> (String, Arc<AtomicU64>) {
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(body.len() as u64, Ordering::Relaxed);
                (
                    [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                    Bytes::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1/traces"), bytes)
}

struct Stack {
    services: Vec<Connector>,
    ingress: HttpIngress,
    addr: SocketAddr,
}

async fn stack(
    nats_port: u16,
    plane: &str,
    telemetry: TelemetryConfig,
    deployment: Deployment,
) -> Stack {
    let mut cfg = BusConfig::nats(&format!("nats://127.0.0.1:{nats_port}"))
        .with_plane(plane)
        .unwrap();
    cfg.telemetry = telemetry;
    cfg.deployment = deployment;
    let mut services = examples::start_all(&cfg).await.unwrap();
    services.push(metrics_core::service(None).start(&cfg).await.unwrap());
    let mut ic = IngressConfig::resolve(None, |_| None, &[("Ports".into(), "0".into())]).unwrap();
    ic.bind_ip = "127.0.0.1".parse().unwrap();
    let ingress = HttpIngress::start(ic, &cfg).await.unwrap();
    let addr = ingress.local_addrs()[0];
    Stack {
        services,
        ingress,
        addr,
    }
}

struct Wrk {
    rps: f64,
    p99_ms: f64,
    errors: bool,
    requests: f64,
    /// CPU time of this process (every stack, the OTLP sink) during the run, in seconds.
    cpu_s: f64,
}

/// User + system CPU time of this process so far, in seconds (`/proc/self/stat`).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SECOND
}

/// `getconf CLK_TCK` on Linux.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

fn millis(s: &str) -> f64 {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().unwrap() / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap()
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().unwrap() * 1000.0
    } else {
        f64::NAN
    }
}

async fn wrk(addr: SocketAddr, path: &str, seconds: u32) -> Wrk {
    let url = format!("http://{addr}{path}");
    let cpu_before = process_cpu_seconds();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{CONNECTIONS}"),
                &format!("-d{seconds}s"),
                "--latency",
                &url,
            ])
            .output()
            .expect("wrk is needed (apt-get install wrk)")
    })
    .await
    .unwrap();
    let cpu_s = process_cpu_seconds() - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or(0.0);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0);
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(millis)
        .unwrap_or(f64::NAN);
    let errors = text.contains("Non-2xx") || text.contains("Socket errors");
    Wrk {
        rps,
        p99_ms,
        errors,
        requests,
        cpu_s,
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// First quartile, median, third quartile.
fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    // Logs as in production at WARN: the request spans exist, nothing is printed per request.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    busgate::telemetry::logs::init(Deployment::Local);
    let nats = nats();
    // Settings such as BUSGATE_TRACE_TAIL_BUFFER apply; the endpoint is the bench's sink.
    let base = TelemetryConfig::from_lookup(|k| std::env::var(k).ok()).expect("telemetry settings");
    let rounds = env_or("BENCH_ROUNDS", ROUNDS);
    let seconds = env_or("BENCH_SECONDS", SECONDS as usize) as u32;
    let (sink, exported) = otlp_sink().await;
    // Off; on in PROD (spans recorded, exported only for errors and slow traces); on exporting
    // every span (LAB/LOCAL).
    let off = stack(
        nats.1,
        "benchoff",
        TelemetryConfig {
            enabled: false,
            ..base.clone()
        },
        Deployment::Local,
    )
    .await;
    let prod = stack(
        nats.1,
        "benchprod",
        TelemetryConfig {
            endpoint: Some(sink.clone()),
            ..base.clone()
        },
        Deployment::Prod,
    )
    .await;
    let all = stack(
        nats.1,
        "benchall",
        TelemetryConfig {
            endpoint: Some(sink.clone()),
            ..base.clone()
        },
        Deployment::Local,
    )
    .await;
    let path = "/calculator.example/arithmetic?x=3&op=*&y=4";
    for s in [&off, &prod, &all] {
        let _ = wrk(s.addr, path, seconds).await;
    }
    let mut runs: Vec<(Vec<f64>, Vec<f64>)> = vec![(vec![], vec![]); 3];
    let mut cpu_per_request: Vec<Vec<f64>> = vec![vec![]; 3];
    let mut errors = false;
    for round in 0..rounds {
        // The order rotates so that no configuration always follows another (the export-all
        // stack keeps exporting for a moment after its round).
        let stacks = [&off, &prod, &all];
        let mut cells = vec![String::new(); 3];
        for k in 0..3 {
            let i = (round + k) % 3;
            let w = wrk(stacks[i].addr, path, seconds).await;
            let cpu_us = w.cpu_s * 1e6 / w.requests.max(1.0);
            cells[i] = format!(
                " {:.0} req/s p99 {:.2} ms {cpu_us:.1} us CPU |",
                w.rps, w.p99_ms
            );
            errors |= w.errors;
            cpu_per_request[i].push(cpu_us);
            runs[i].0.push(w.rps);
            runs[i].1.push(w.p99_ms);
        }
        println!("round {round}:{} (off | prod | export all)", cells.concat());
    }
    // Costs paired within each round (the machine's load drifts between rounds), then the
    // median and quartiles over rounds.
    let paired = |i: usize| {
        let tp: Vec<f64> = (0..rounds)
            .map(|r| (1.0 - runs[i].0[r] / runs[0].0[r]) * 100.0)
            .collect();
        let cpu: Vec<f64> = (0..rounds)
            .map(|r| (cpu_per_request[i][r] / cpu_per_request[0][r] - 1.0) * 100.0)
            .collect();
        (quartiles(tp), quartiles(cpu))
    };
    let (prod_tp, prod_cpu_q) = paired(1);
    let (all_tp, all_cpu_q) = paired(2);
    let (prod_paired_tp, prod_paired_cpu) = (prod_tp.1, prod_cpu_q.1);
    let (all_paired_tp, all_paired_cpu) = (all_tp.1, all_cpu_q.1);
    println!(
        "paired medians: prod {prod_paired_tp:.1}% throughput, {prod_paired_cpu:.1}% CPU | all {all_paired_tp:.1}% throughput, {all_paired_cpu:.1}% CPU"
    );
    let med: Vec<(f64, f64)> = runs
        .into_iter()
        .map(|(r, p)| (median(r), median(p)))
        .collect();
    let ((off_rps, off_p99), (prod_rps, prod_p99), (all_rps, all_p99)) = (med[0], med[1], med[2]);
    let cost = |on: f64| (1.0 - on / off_rps) * 100.0;
    let (prod_cost, all_cost) = (cost(prod_rps), cost(all_rps));
    let cpu: Vec<f64> = cpu_per_request.into_iter().map(median).collect();
    let cpu_cost = |on: f64| (on / cpu[0] - 1.0) * 100.0;
    let (off_cpu, prod_cpu, all_cpu) = (cpu[0], cpu[1], cpu[2]);
    let (prod_cpu_cost, all_cpu_cost) = (cpu_cost(prod_cpu), cpu_cost(all_cpu));
    println!("median: off {off_rps:.0} | prod {prod_rps:.0} ({prod_cost:.1}%) | all {all_rps:.0} ({all_cost:.1}%)");

    // metrics.core/collect with 20 instances on the bus (the "off" plane holds 4 already).
    let cfg = BusConfig::nats(&format!("nats://127.0.0.1:{}", nats.1))
        .with_plane("benchall")
        .unwrap();
    let mut extra = Vec::new();
    for _ in 0..COLLECT_INSTANCES - all.services.len() - 1 {
        extra.push(
            Service::new("replica.bench")
                .get("/x", |_ctx: Ctx, _req| async {
                    Ok(http::Response::new(Bytes::new()))
                })
                .start(&cfg)
                .await
                .unwrap(),
        );
    }
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..COLLECT_RUNS {
        let started = Instant::now();
        let res = reqwest_get(all.addr, "/metrics.core/collect").await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        size = res.len();
    }
    let collect_ms = median(times.clone());
    let instances = COLLECT_INSTANCES;
    println!("collect of {instances} instances: median {collect_ms:.1} ms, {size} bytes");

    let report = format!(
        "# Benchmarks\n\n\
Measured by `cargo bench --bench telemetry` on {date} ({cores} cores; wrk, busgate and nats-server share them, \
so absolute figures are low and noisy; the ratios come from one run, {rounds} alternating rounds of \
`wrk -t2 -c{CONNECTIONS} -d{seconds}s` per configuration in rotating order, medians).\n\n\
## Telemetry cost: ingress + one bus hop (`GET /calculator.example/arithmetic`)\n\n\
| telemetry | req/s | throughput cost | p99 | gateway CPU per request | CPU cost |\n|---|---|---|---|---|---|\n\
| off (`BUSGATE_TELEMETRY=off`) | {off_rps:.0} | | {off_p99:.2} ms | {off_cpu:.1} µs | |\n\
| on, PROD: every span recorded, exported when its trace holds an error or a slow span; metrics | {prod_rps:.0} | {prod_cost:.1}% | {prod_p99:.2} ms | {prod_cpu:.1} µs | {prod_cpu_cost:.1}% |\n\
| on, LAB/LOCAL: every span exported over OTLP/HTTP; metrics | {all_rps:.0} | {all_cost:.1}% | {all_p99:.2} ms | {all_cpu:.1} µs | {all_cpu_cost:.1}% |\n\n\
Paired within rounds (each round's cost against the same round's off run; median over rounds, \
quartiles in brackets; less exposed to the machine's drifting load than the medians above):\n\n\
| telemetry | throughput cost | CPU per request |\n|---|---|---|\n\
| on, PROD | **{prod_paired_tp:.1}%** [{pq1:.1}%, {pq3:.1}%] | **{prod_paired_cpu:.1}%** [{pc1:.1}%, {pc3:.1}%] |\n\
| on, export every span | **{all_paired_tp:.1}%** [{aq1:.1}%, {aq3:.1}%] | **{all_paired_cpu:.1}%** [{ac1:.1}%, {ac3:.1}%] |\n\n\
Gateway CPU per request is the user + system time of the bench process (ingress, the example services, \
and for export-all also the in-process OTLP sink that receives the spans) divided by the requests wrk completed: \
less noisy than req/s on a shared machine. Instructions per request, counted by callgrind and so repeatable \
to the percent, come from `benches/instructions_per_request.sh` (`benches/RESULTS-instructions.md`). \
PROD's tail buffer: {tail} spans per service (`BUSGATE_TRACE_TAIL_BUFFER`).\n\n\
Goal: telemetry costs at most 5% of throughput. {errs}Spans exported: {kb} KB.\n\
Logs are at WARN in all runs (an INFO access line per request is a separate cost).\n\n\
## `metrics.core/collect`\n\n\
{instances} instances on the bus: median **{collect_ms:.0} ms** over {COLLECT_RUNS} scrapes, {size} bytes of exposition. \
Most of it is the two multicast ack windows (ping, then metrics) of 250 ms each.\n",
        date = std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
        cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        errs = if errors { "wrk reported errors or non-2xx answers. " } else { "No errors. " },
        kb = exported.load(Ordering::Relaxed) / 1024,
        tail = base.tail_buffer_spans,
        pq1 = prod_tp.0,
        pq3 = prod_tp.2,
        pc1 = prod_cpu_q.0,
        pc3 = prod_cpu_q.2,
        aq1 = all_tp.0,
        aq3 = all_tp.2,
        ac1 = all_cpu_q.0,
        ac3 = all_cpu_q.2,
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/RESULTS.md");
    std::fs::write(path, report).unwrap();
    println!("written to {path}");

    for c in extra {
        c.shutdown().await;
    }
    for s in [off, prod, all] {
        s.ingress.shutdown().await;
        for c in s.services {
            c.shutdown().await;
        }
    }
}

/// A plain HTTP/1.1 GET over TCP; returns the body.
async fn reqwest_get(addr: SocketAddr, path: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    buf[head_end..].to_vec()
}
