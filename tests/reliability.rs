//! Reliability under faults, against real `nats-server` processes on loopback: the server
//! restarted under load, the connection black-holed, a three-node cluster losing the node the
//! ingress is on, service replicas killed and restarted one by one, and slow, stuck and late
//! services. Each test prints its figures (`cargo test --test reliability -- --nocapture`).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use busgate::ingress::http::{HttpIngress, IngressConfig};
use busgate::transport::ConnectionState;
use busgate::wire::{codec, frame};
use busgate::{examples, BusConfig, Connector, Ctx, Service};
use bytes::Bytes;
use common::{free_port, ChildGuard, NatsServer};
use http::{HeaderMap, StatusCode};

/// One request of a load loop: when it started (since the load began), how long it took, and
/// its status (0: the connection to the ingress failed).
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    took: Duration,
    status: u16,
}

/// `conns` loops of sequential GETs of `path` on `addr` until `stop` is set.
fn http_load(
    addr: SocketAddr,
    path: &'static str,
    conns: usize,
    t0: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    (0..conns)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let begun = Instant::now();
                    let req = common::http::build("GET", path, &[], b"");
                    let status = match common::http::send_raw(addr, &req).await {
                        Ok(res) => res.status,
                        Err(_) => 0,
                    };
                    out.push(Sample {
                        at: begun - t0,
                        took: begun.elapsed(),
                        status,
                    });
                }
                out
            })
        })
        .collect()
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>) -> Vec<Sample> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by_key(|s| s.at);
    all
}

fn ingress_config(props: &[(&str, &str)]) -> IngressConfig {
    let mut overrides: Vec<(String, String)> = vec![("Ports".into(), "0".into())];
    overrides.extend(props.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut cfg = IngressConfig::resolve(None, |_| None, &overrides).unwrap();
    cfg.bind_ip = "127.0.0.1".parse().unwrap();
    cfg
}

/// The HTTP ingress on `bus` with a 3 s budget, once it serves hello.example.
async fn serving_ingress(bus: &BusConfig) -> (HttpIngress, SocketAddr) {
    let ingress = HttpIngress::start(ingress_config(&[("TimeBudget", "3s")]), bus)
        .await
        .unwrap();
    let addr = ingress.local_addrs()[0];
    assert_eq!(
        common::http::get(addr, "/hello.example/hello").await.status,
        200
    );
    (ingress, addr)
}

/// Panics anywhere in the process, counted by a hook (tokio catches task panics silently).
fn count_panics() -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
    n
}

/// The number of client connections nats-server reports on its monitoring port.
async fn nats_connections(monitor_port: u16) -> u64 {
    let url = format!("http://127.0.0.1:{monitor_port}/connz");
    let body = curl_get(&url).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["num_connections"].as_u64().unwrap()
}

async fn curl_get(url: &str) -> String {
    let body = try_curl_get(url).await;
    body.unwrap_or_else(|| panic!("curl {url}"))
}

/// The body at `url`, or `None` when curl fails (a monitoring port not listening yet).
async fn try_curl_get(url: &str) -> Option<String> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl").args(["-fsS", &url]).output().unwrap();
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap())
    })
    .await
    .unwrap()
}

async fn wait_state(conn: &Connector, want: impl Fn(ConnectionState) -> bool, within: Duration) {
    let mut state = conn.bus().watch_state();
    tokio::time::timeout(within, state.wait_for(|s| want(*s)))
        .await
        .expect("connection state")
        .unwrap();
}

/// Kill nats-server under steady ingress traffic, start it again on the same port: while it
/// is down every request gets a quick 503, within 2 s of its return requests succeed again,
/// without restarting anything; no panic, no leaked task or connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_under_load() {
    let panics = count_panics();
    let monitor = free_port();
    let mut nats = NatsServer::start_with(&["-m", &monitor.to_string()]);
    let bus = nats.config();
    let services = examples::start_all(&bus).await.unwrap();
    let ingress = HttpIngress::start(ingress_config(&[("TimeBudget", "3s")]), &bus)
        .await
        .unwrap();
    let addr = ingress.local_addrs()[0];
    let baseline_connections = nats_connections(monitor).await;
    // Settle, then count the runtime's tasks with the load stopped.
    for _ in 0..20 {
        assert_eq!(
            common::http::get(addr, "/hello.example/hello").await.status,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline_tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();

    let t0 = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = http_load(addr, "/hello.example/hello", 16, t0, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = t0.elapsed();
    nats.stop();
    wait_state(
        ingress.connector(),
        |s| s != ConnectionState::Connected,
        Duration::from_secs(10),
    )
    .await;
    let noticed = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted_at = t0.elapsed();
    nats.restart();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = collect(load).await;

    // Every request ended within its budget (3 s) plus a network hop.
    let slowest = samples.iter().map(|s| s.took).max().unwrap();
    assert!(slowest < Duration::from_millis(3500), "slowest {slowest:?}");
    // Before the kill: all 200. Requests started while the server was known down: quick 503s.
    let before: Vec<&Sample> = samples.iter().filter(|s| s.at + s.took < killed).collect();
    assert!(
        before.iter().all(|s| s.status == 200),
        "{:?}",
        statuses(&before)
    );
    let down: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at > noticed && s.at + s.took < restarted_at)
        .collect();
    assert!(!down.is_empty());
    assert!(
        down.iter().all(|s| s.status == 503),
        "statuses while down: {:?}",
        statuses(&down)
    );
    let slowest_down = down.iter().map(|s| s.took).max().unwrap();
    assert!(slowest_down < Duration::from_secs(1), "{slowest_down:?}");
    // After the restart: the first success within 2 s, then nothing but successes.
    let first_ok = samples
        .iter()
        .find(|s| s.at > restarted_at && s.status == 200)
        .expect("a success after the restart");
    let recovery = first_ok.at - restarted_at;
    assert!(
        recovery < Duration::from_secs(2),
        "recovered after {recovery:?}"
    );
    let late: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at > restarted_at + Duration::from_secs(2))
        .collect();
    assert!(
        late.iter().all(|s| s.status == 200),
        "after recovery: {:?}",
        statuses(&late)
    );
    eprintln!(
        "nats restart: {} requests; kill noticed after {:?}; {} answered 503 while down (slowest {:?}); \
         first success {:?} after the restart began",
        samples.len(),
        noticed - killed,
        down.len(),
        slowest_down,
        recovery,
    );

    // No leaked connection: the same clients as before, reconnected.
    assert_eq!(nats_connections(monitor).await, baseline_connections);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert!(
        tasks <= baseline_tasks + 2,
        "tasks: {baseline_tasks} before, {tasks} after"
    );
    assert_eq!(panics.load(Ordering::Relaxed), 0, "panics");
    ingress.shutdown().await;
    for s in services {
        s.shutdown().await;
    }
}

fn statuses(samples: &[&Sample]) -> std::collections::BTreeMap<u16, usize> {
    let mut m = std::collections::BTreeMap::new();
    for s in samples {
        *m.entry(s.status).or_insert(0) += 1;
    }
    m
}

/// `busgate examples` as a child process on `url`, ready when its /readyz answers 200.
async fn start_replica(url: &str) -> ChildGuard {
    let admin = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_busgate"))
        .args(["examples", "--nats", url, "--admin-addr"])
        .arg(format!("127.0.0.1:{admin}"))
        .env("RUST_LOG", "warn")
        .env("BUSGATE_TELEMETRY", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-fsS", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{admin}/readyz"))
                .status()
                .is_ok_and(|s| s.success())
        })
        .await
        .unwrap();
        if ok {
            return guard;
        }
        assert!(Instant::now() < deadline, "replica not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(child: &ChildGuard, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

async fn wait_exit(mut child: ChildGuard, within: Duration) -> Option<i32> {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = child.0.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
    .await
    .unwrap()
}

/// Call results of `conns` caller loops through a connector: status (200 on success) and
/// duration, until `stop`.
fn bus_load(
    client: &Connector,
    url: &'static str,
    conns: usize,
    t0: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    (0..conns)
        .map(|_| {
            let ctx = client.ctx();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let begun = Instant::now();
                    let status = match ctx.get(url).await {
                        Ok(res) => res.status().as_u16(),
                        Err(e) => e.status().as_u16(),
                    };
                    out.push(Sample {
                        at: begun - t0,
                        took: begun.elapsed(),
                        status,
                    });
                }
                out
            })
        })
        .collect()
}

/// Two replicas in their own processes; one is killed (SIGKILL) mid-load: the calls it had
/// taken fail within the budget (404 ack timeout or 408), the other replica takes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_costs_only_its_calls_in_flight() {
    let nats = NatsServer::start();
    let url = nats.url();
    // The replicas run on the default plane: the caller too.
    let bus = BusConfig::nats(&url);
    let a = start_replica(&url).await;
    let b = start_replica(&url).await;
    let client = Service::new("caller.test").start(&bus).await.unwrap();
    let t0 = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let budget_url = "https://hello.example/hello?name=k";
    let load = bus_load(&client, budget_url, 16, t0, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = t0.elapsed();
    signal(&a, "-KILL");
    let _ = wait_exit(a, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = collect(load).await;
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    eprintln!(
        "replica kill: {} calls, {} failed {:?}, the slowest failure took {:?}",
        samples.len(),
        failed.len(),
        statuses(&failed),
        failed.iter().map(|s| s.took).max()
    );
    // Only calls already under way at the kill failed, each with a timeout status within the
    // 20 s default budget... and in practice the ack timeout or the deadline of the call.
    for s in &failed {
        assert!(
            s.status == 404 || s.status == 408,
            "failure status {}",
            s.status
        );
        assert!(
            s.at <= killed + Duration::from_millis(50),
            "{s:?} started after the kill"
        );
        assert!(s.took < Duration::from_secs(21), "{s:?}");
    }
    assert!(
        failed.len() <= 16,
        "more failures than callers: {}",
        failed.len()
    );
    // The survivor took everything after the kill.
    let after = samples
        .iter()
        .filter(|s| s.at > killed + Duration::from_millis(50))
        .count();
    assert!(after > 100, "only {after} calls after the kill");
    client.shutdown().await;
    drop(b);
    drop(nats);
}

/// Restart both replicas one after the other with SIGTERM (graceful shutdown) under load:
/// not one call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_call() {
    let nats = NatsServer::start();
    let url = nats.url();
    let bus = BusConfig::nats(&url);
    let mut replicas = vec![start_replica(&url).await, start_replica(&url).await];
    let client = Service::new("caller.test").start(&bus).await.unwrap();
    let t0 = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = bus_load(
        &client,
        "https://hello.example/hello?name=r",
        16,
        t0,
        stop.clone(),
    );
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let leaving = replicas.remove(0);
        signal(&leaving, "-TERM");
        let code = wait_exit(leaving, Duration::from_secs(30)).await;
        assert_eq!(code, Some(0), "round {round}: graceful exit");
        replicas.push(start_replica(&url).await);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = collect(load).await;
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    eprintln!(
        "rolling restart: {} calls, {} failed {:?}",
        samples.len(),
        failed.len(),
        statuses(&failed)
    );
    assert!(samples.len() > 500, "only {} calls", samples.len());
    assert!(failed.is_empty(), "failed: {failed:?}");
    client.shutdown().await;
    drop(replicas);
}

/// A peer on the bus that acks every request for `slow.test/late` and answers only after
/// `delay` (after the caller gave up), as a stuck or overloaded Go service would.
async fn late_peer(bus_url: &str, plane: &str, delay: Duration) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let nc = async_nats::connect(bus_url).await.unwrap();
    let subject =
        busgate::wire::subscription_subject(plane, 443, "slow.test", "GET", "/late").unwrap();
    let mut sub = nc
        .queue_subscribe(subject, "slow.test".into())
        .await
        .unwrap();
    nc.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let req = codec::decode_request(msg.payload).unwrap();
            let f = frame::Frame(req.headers());
            let (msg_id, from_host, from_id) = (
                f.msg_id().unwrap().to_owned(),
                f.from_host().unwrap().to_owned(),
                f.from_id().unwrap().to_owned(),
            );
            let inbox =
                busgate::wire::response_subject(plane_of(&msg.subject), &from_host, &from_id)
                    .unwrap();
            let mut h = HeaderMap::new();
            frame::set(&mut h, frame::names::MSG_ID, &msg_id);
            frame::set(&mut h, frame::names::FROM_HOST, "slow.test");
            frame::set(&mut h, frame::names::FROM_ID, "latepeer");
            frame::set(&mut h, frame::names::QUEUE, "slow.test");
            frame::set(&mut h, frame::names::OP_CODE, "Ack");
            nc.publish(inbox.clone(), codec::encode_ack(StatusCode::ACCEPTED, &h))
                .await
                .unwrap();
            let nc = nc.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                frame::set(&mut h, frame::names::OP_CODE, "Res");
                let mut res = http::Response::new(Bytes::from_static(b"too late"));
                *res.headers_mut() = h;
                let _ = nc.publish(inbox, codec::encode_response(&res)).await;
            });
        }
    })
}

fn plane_of(subject: &str) -> &str {
    subject.split('.').next().unwrap()
}

/// A handler that sleeps past the budget, one that never answers, and a peer that answers
/// after the caller gave up: callers time out at the budget (408), late answers are dropped
/// and counted in `busgate_client_late_responses_total`, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_stuck_and_late_services() {
    let nats = NatsServer::start();
    let bus = nats.config();
    let handled = Arc::new(Mutex::new(0usize));
    let h = handled.clone();
    let slow = Service::new("slow.test")
        .get("/sleepy", |_ctx: Ctx, _req| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(common::text("woke"))
        })
        .get("/stuck", move |_ctx: Ctx, _req| {
            *h.lock().unwrap() += 1;
            std::future::pending()
        })
        .start(&bus)
        .await
        .unwrap();
    let running = slow.running_tasks();
    let peer = late_peer(&nats.url(), slow.plane(), Duration::from_millis(700)).await;
    let client = Service::new("caller.test").start(&bus).await.unwrap();

    let budget = Duration::from_millis(400);
    for path in ["sleepy", "stuck", "late"] {
        let mut calls = Vec::new();
        for _ in 0..50 {
            let ctx = client.ctx().with_timeout(budget);
            calls.push(tokio::spawn(async move {
                let begun = Instant::now();
                let r = ctx.get(&format!("https://slow.test/{path}")).await;
                (r.map(|r| r.status().as_u16()), begun.elapsed())
            }));
        }
        for c in calls {
            let (r, took) = c.await.unwrap();
            let err = r.expect_err(path);
            assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT, "{path}: {err}");
            // The handler's deadline is the budget less one network hop (its 408 comes
            // then); the caller's own deadline is the budget.
            let hop = busgate::connector::NETWORK_HOP;
            assert!(
                took >= budget - hop - Duration::from_millis(20)
                    && took < budget + Duration::from_millis(200),
                "{path}: took {took:?}"
            );
        }
    }
    assert_eq!(*handled.lock().unwrap(), 50);
    // The late answers arrive 300 ms after their callers gave up.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let exposition = client.metrics().encode();
    let late = exposition
        .lines()
        .find(|l| l.starts_with("busgate_client_late_responses_total"))
        .unwrap_or_else(|| panic!("no late-response counter in:\n{exposition}"));
    assert!(late.ends_with(" 50"), "{late}");
    // Nothing waits any more: no call, no handler (the server side cancelled at the deadline).
    assert_eq!(client.calls_in_flight(), 0);
    assert_eq!(slow.running_tasks(), running);
    peer.abort();
    client.shutdown().await;
    slow.shutdown().await;
}

/// iptables rules that drop every packet to and from a loopback port (no reset: a black hole),
/// removed on drop however the test ends.
struct BlackHole {
    port: u16,
}

impl BlackHole {
    fn rules(port: u16) -> [Vec<String>; 2] {
        let p = port.to_string();
        [
            [
                "INPUT", "-i", "lo", "-p", "tcp", "--dport", &p, "-j", "DROP",
            ],
            [
                "INPUT", "-i", "lo", "-p", "tcp", "--sport", &p, "-j", "DROP",
            ],
        ]
        .map(|r| r.iter().map(|s| s.to_string()).collect())
    }

    fn iptables(op: &str, rule: &[String]) -> bool {
        Command::new("iptables")
            .arg(op)
            .args(rule)
            .status()
            .is_ok_and(|s| s.success())
    }

    fn drop_port(port: u16) -> BlackHole {
        for rule in BlackHole::rules(port) {
            assert!(
                BlackHole::iptables("-I", &rule),
                "this test needs iptables and root (the partition is an iptables DROP rule): \
                 `iptables -I {}` failed",
                rule.join(" ")
            );
        }
        BlackHole { port }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        for rule in BlackHole::rules(self.port) {
            BlackHole::iptables("-D", &rule);
        }
    }
}

/// The NATS connection black-holed (packets dropped, no reset): busgate notices within its
/// ping interval (2-3 × `PING_INTERVAL`), answers 503, and recovers when the path is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_noticed_and_healed() {
    let nats = NatsServer::start();
    let bus = nats.config();
    let services = examples::start_all(&bus).await.unwrap();
    let (ingress, addr) = serving_ingress(&bus).await;
    let t0 = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = http_load(addr, "/hello.example/hello", 8, t0, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut = t0.elapsed();
    let hole = BlackHole::drop_port(nats.port);
    wait_state(
        ingress.connector(),
        |s| s != ConnectionState::Connected,
        Duration::from_secs(30),
    )
    .await;
    let noticed = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let healed = t0.elapsed();
    drop(hole);
    wait_state(
        ingress.connector(),
        |s| s == ConnectionState::Connected,
        Duration::from_secs(30),
    )
    .await;
    let reconnected = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(15)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = collect(load).await;

    let detection = noticed - cut;
    let ping = busgate::transport::nats::PING_INTERVAL;
    assert!(
        detection <= ping * 3 + Duration::from_millis(500),
        "noticed after {detection:?}"
    );
    // Until noticed, calls end in the ack timeout (404) or the deadline (408); once noticed,
    // a quick 503. Nothing hangs past the 3 s budget.
    let slowest = samples.iter().map(|s| s.took).max().unwrap();
    assert!(slowest < Duration::from_millis(3500), "slowest {slowest:?}");
    let blind: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at > cut && s.at < noticed)
        .collect();
    assert!(
        blind
            .iter()
            .all(|s| [200, 404, 408, 503].contains(&s.status)),
        "{:?}",
        statuses(&blind)
    );
    let down: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at > noticed + Duration::from_millis(600) && s.at < healed)
        .collect();
    assert!(!down.is_empty());
    assert!(
        down.iter()
            .all(|s| s.status == 503 && s.took < Duration::from_secs(1)),
        "{:?}",
        statuses(&down)
    );
    // Healed: once reconnected, calls succeed again (the server may route a few to the old
    // connection's subscriptions until it learns that connection is gone).
    let first_ok = samples
        .iter()
        .find(|s| s.at > healed && s.status == 200)
        .expect("a success after the partition healed");
    // The last failure after the heal: from then on every call succeeds.
    let last_failure = samples
        .iter()
        .filter(|s| s.at > healed && s.status != 200)
        .map(|s| s.at + s.took - healed)
        .max()
        .unwrap_or_default();
    eprintln!("partition: last failure {last_failure:?} after the heal");
    let settled: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at > healed + last_failure)
        .collect();
    assert!(
        settled.len() > 100,
        "{} calls after the last failure",
        settled.len()
    );
    eprintln!(
        "partition: noticed after {detection:?} (ping interval {ping:?}); calls before that: {:?}; \
         {} quick 503s while known down; path back -> reconnected after {:?}, first success {:?} after the heal; \
         after the heal: {:?}",
        statuses(&blind),
        down.len(),
        reconnected - healed,
        first_ok.at - healed,
        statuses(&samples.iter().filter(|s| s.at > healed).collect::<Vec<_>>()),
    );
    ingress.shutdown().await;
    for s in services {
        s.shutdown().await;
    }
}

/// A node of a three-node nats-server cluster, with its monitoring port.
struct Node {
    server: NatsServer,
    monitor: u16,
}

async fn cluster() -> Vec<Node> {
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let monitor = free_port();
            let others: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                .collect();
            let server = NatsServer::start_with(&[
                "--cluster_name",
                "busgate-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", routes[i]),
                "--routes",
                &others.join(","),
                "-m",
                &monitor.to_string(),
            ]);
            Node { server, monitor }
        })
        .collect();
    // Formed when every node has its two routes.
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        loop {
            // The monitoring port may come up after the client port the start waited for.
            let body = try_curl_get(&format!("http://127.0.0.1:{}/routez", n.monitor))
                .await
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if v["num_routes"].as_u64().unwrap_or(0) >= 2 {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not form: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    nodes
}

/// Three clustered nodes; the ingress on node 1, two replicas of the services on nodes 2 and
/// 3. Node 1 is killed under load: the ingress fails over to a node it learnt from the
/// cluster, and the only failed requests are those in flight at the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_lost_under_the_ingress() {
    let mut nodes = cluster().await;
    let plane = common::unique_plane();
    let on = |i: usize| {
        BusConfig::nats(&nodes[i].server.url())
            .with_plane(&plane)
            .unwrap()
    };
    let mut services = examples::start_all(&on(1)).await.unwrap();
    services.extend(examples::start_all(&on(2)).await.unwrap());
    let (ingress, addr) = serving_ingress(&on(0)).await;
    let t0 = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = http_load(addr, "/hello.example/hello", 16, t0, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kill_begun = t0.elapsed();
    nodes[0].server.stop();
    let killed = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = collect(load).await;
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    // In flight at the kill: started before the process was gone, ended after it got the signal.
    let in_flight = |s: &Sample| s.at <= killed && s.at + s.took >= kill_begun;
    let after_kill: Vec<&Sample> = failed.iter().copied().filter(|s| !in_flight(s)).collect();
    eprintln!(
        "cluster failover: {} requests, {} in flight at the kill, {} failed {:?} (all in flight at the kill: {}), \
         the slowest failure took {:?}",
        samples.len(),
        samples.iter().filter(|s| in_flight(s)).count(),
        failed.len(),
        statuses(&failed),
        after_kill.is_empty(),
        failed.iter().map(|s| s.took).max(),
    );
    assert!(
        after_kill.is_empty(),
        "failed after the kill: {after_kill:?}"
    );
    assert!(
        samples.iter().filter(|s| s.at > killed).count() > 200,
        "too few requests after the kill"
    );
    // A new process given the whole list still starts with node 1 gone.
    let urls: Vec<String> = nodes.iter().map(|n| n.server.url()).collect();
    let late_comer = Service::new("latecomer.test")
        .start(&BusConfig::nats(&urls.join(",")).with_plane(&plane).unwrap())
        .await
        .unwrap();
    let res = late_comer
        .ctx()
        .get("https://hello.example/hello?name=list")
        .await
        .unwrap();
    assert_eq!(res.body(), "Hello, list!");
    late_comer.shutdown().await;
    ingress.shutdown().await;
    for s in services {
        s.shutdown().await;
    }
}
