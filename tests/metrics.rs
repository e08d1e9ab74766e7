//! Metrics end to end: `promtool check metrics` on every exposition, counters that equal the
//! traffic sent, and a real Prometheus scraping busgate.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use busgate::telemetry::names::SERVICE_METRICS;
use std::time::{Duration, Instant};

use busgate::ingress::admin::{AdminServer, AdminTargets};
use busgate::ingress::http::{HttpIngress, IngressConfig};
use busgate::services::metrics_core;
use busgate::{examples, BusConfig, Connector, Deployment};
use common::http::{get, request};
use common::{NatsServer, Prometheus};

struct Stack {
    _nats: NatsServer,
    cfg: BusConfig,
    services: Vec<Connector>,
    ingress: HttpIngress,
    admin: AdminServer,
    addr: SocketAddr,
}

impl Stack {
    async fn stop(self) {
        self.admin.shutdown().await;
        self.ingress.shutdown().await;
        for s in self.services {
            s.shutdown().await;
        }
    }
}

async fn stack(deployment: Deployment, secret: Option<&str>) -> Stack {
    busgate::telemetry::logs::init(Deployment::Testing);
    let nats = NatsServer::start();
    let mut cfg = nats.config();
    cfg.deployment = deployment;
    let mut services = examples::start_all(&cfg).await.unwrap();
    services.push(
        metrics_core::service(secret.map(str::to_owned))
            .start(&cfg)
            .await
            .unwrap(),
    );
    let mut ic = IngressConfig::resolve(None, |_| None, &[("Ports".into(), "0".into())]).unwrap();
    ic.bind_ip = "127.0.0.1".parse().unwrap();
    let ingress = HttpIngress::start(ic, &cfg).await.unwrap();
    let targets = AdminTargets::default();
    for s in &services {
        targets.add(s.clone());
    }
    targets.add(ingress.connector().clone());
    let admin = AdminServer::start("127.0.0.1:0".parse().unwrap(), targets)
        .await
        .unwrap();
    let addr = ingress.local_addrs()[0];
    Stack {
        _nats: nats,
        cfg,
        services,
        ingress,
        admin,
        addr,
    }
}

fn promtool_check(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (apt-get install prometheus)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 3 is lint only. The wire generation's own names are Go's and lint (a gauge named
    // `_total`); anything else is ours to fix.
    let gen1_gauges: Vec<&str> = std::iter::once(SERVICE_METRICS.uptime)
        .chain(SERVICE_METRICS.cache_gauges.iter().copied())
        .collect();
    let ours: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !gen1_gauges.iter().any(|g| {
                l.starts_with(&format!("{g} "))
                    && l.contains("non-counter metrics should not have \"_total\" suffix")
            })
        })
        .collect();
    assert!(
        out.status.success() || (out.status.code() == Some(3) && ours.is_empty()),
        "promtool check metrics: {report}"
    );
}

/// `name{labels}` → value, for the samples of an exposition.
fn samples(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a valid exposition");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let key = format!(
            "{}{{{}}}",
            s.metric,
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        out.insert(key, v);
    }
    out
}

/// Sum of the samples whose key starts with `metric{` and contains every `label=value`.
fn sum(samples: &HashMap<String, f64>, metric: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{metric}{{")) && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expositions_pass_promtool_and_count_what_was_sent() {
    let s = stack(Deployment::Local, None).await;
    for i in 0..5 {
        assert_eq!(
            get(
                s.addr,
                &format!("/calculator.example/arithmetic?x={i}&op=*&y=2")
            )
            .await
            .status,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            get(s.addr, "/calculator.example/arithmetic?x=1&op=/&y=0")
                .await
                .status,
            400
        );
    }
    for _ in 0..2 {
        assert_eq!(get(s.addr, "/nobody.example/x").await.status, 404);
    }
    assert_eq!(
        request(
            s.addr,
            "GET",
            "/hello.example/hello",
            &[("Request-Timeout", "1")],
            b""
        )
        .await
        .status,
        200
    );

    // The admin endpoint of this process.
    let admin = get(s.admin.local_addr(), "/metrics").await;
    assert_eq!(admin.status, 200);
    assert!(admin
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    promtool_check(&admin.text());
    let m = samples(&admin.text());
    let calc = "handler=calculator.example:443/arithmetic";
    assert_eq!(
        sum(
            &m,
            "microbus_response_duration_seconds_count",
            &[calc, "code=200", "error=OK"]
        ),
        5.0
    );
    assert_eq!(
        sum(
            &m,
            "microbus_response_duration_seconds_count",
            &[calc, "code=400", "error=ERROR"]
        ),
        3.0
    );
    let ingress_client = "service=http.ingress.core";
    assert_eq!(
        sum(
            &m,
            "busgate_client_request_duration_seconds_count",
            &[ingress_client, "host=calculator.example", "code=200"]
        ),
        5.0
    );
    assert_eq!(
        sum(
            &m,
            "busgate_client_request_duration_seconds_count",
            &[
                ingress_client,
                "host=calculator.example",
                "code=400",
                "error=ERROR"
            ]
        ),
        3.0
    );
    assert_eq!(
        sum(
            &m,
            "busgate_client_request_duration_seconds_count",
            &[ingress_client, "host=nobody.example", "code=404"]
        ),
        2.0
    );
    // Go v1.7's request counter: an ack timeout is 404 with error="OK", an Err 400 is ERROR.
    for (labels, expected) in [
        (
            &["host=calculator.example", "code=200", "error=OK"][..],
            5.0,
        ),
        (
            &["host=calculator.example", "code=400", "error=ERROR"][..],
            3.0,
        ),
        (&["host=nobody.example", "code=404", "error=OK"][..], 2.0),
    ] {
        let mut labels = labels.to_vec();
        labels.push(ingress_client);
        assert_eq!(
            sum(&m, "microbus_request_count_total", &labels),
            expected,
            "{labels:?}"
        );
    }
    assert_eq!(
        sum(
            &m,
            "busgate_client_timeout_requests_total",
            &[ingress_client, "host=nobody.example"]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &m,
            "microbus_ack_duration_seconds_count",
            &[ingress_client, "host=calculator.example"]
        ),
        8.0
    );
    assert_eq!(
        sum(
            &m,
            "busgate_ingress_request_duration_seconds_count",
            &["route=calculator.example:443", "code=200"]
        ),
        5.0
    );
    assert_eq!(
        sum(
            &m,
            "busgate_ingress_request_duration_seconds_count",
            &["route=calculator.example:443", "code=400"]
        ),
        3.0
    );
    assert_eq!(
        sum(
            &m,
            "busgate_ingress_request_duration_seconds_count",
            &["route=nobody.example:443", "code=404"]
        ),
        2.0
    );
    assert_eq!(sum(&m, "busgate_ingress_requests_in_flight", &[]), 0.0);
    assert_eq!(
        sum(&m, "busgate_nats_connected", &["service=hello.example"]),
        1.0
    );
    assert!(
        sum(
            &m,
            "microbus_log_messages_total",
            &[
                "service=http.ingress.core",
                "severity=WARN",
                "message=Serving"
            ]
        ) >= 3.0
    );
    assert!(sum(&m, "process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(
        sum(
            &m,
            "microbus_callback_duration_seconds_count",
            &["handler=startup", "service=hello.example"]
        ),
        1.0
    );

    // One service's own endpoint on the bus.
    let client = busgate::Service::new("client.test")
        .start(&s.cfg)
        .await
        .unwrap();
    let res = client
        .ctx()
        .get("https://calculator.example:888/metrics")
        .await
        .unwrap();
    let own = String::from_utf8(res.body().to_vec()).unwrap();
    promtool_check(&own);
    assert!(
        own.contains("service=\"calculator.example\"")
            && !own.contains("service=\"hello.example\"")
    );
    client.shutdown().await;

    // The whole bus through metrics.core, gzipped when asked.
    let res = request(
        s.addr,
        "GET",
        "/metrics.core/collect",
        &[("Accept-Encoding", "gzip")],
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&res.body[..]), &mut text)
        .unwrap();
    promtool_check(&text);
    assert_eq!(
        text.matches("# TYPE microbus_response_duration_seconds histogram")
            .count(),
        1,
        "families merged once"
    );
    for svc in [
        "hello.example",
        "calculator.example",
        "metrics.core",
        "http.ingress.core",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("microbus_uptime_duration_seconds_total{")
                    && l.contains(&format!("service=\"{svc}\""))),
            "{svc} has no uptime"
        );
        assert!(
            text.contains(&format!("service=\"{svc}\"")),
            "{svc} missing from collect"
        );
    }
    let c = samples(&text);
    assert_eq!(
        sum(
            &c,
            "microbus_response_duration_seconds_count",
            &[calc, "code=200"]
        ),
        5.0
    );
    // A filter on one service.
    let only = get(s.addr, "/metrics.core/collect?service=hello.example")
        .await
        .text();
    assert!(
        only.contains("service=\"hello.example\"")
            && !only.contains("service=\"calculator.example\"")
    );
    let bad = get(s.addr, "/metrics.core/collect?service=a*b").await;
    assert_eq!(bad.status, 400);
    // The scrape timeout header bounds the collection.
    let started = Instant::now();
    let res = request(
        s.addr,
        "GET",
        "/metrics.core/collect",
        &[("X-Prometheus-Scrape-Timeout-Seconds", "5")],
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Short timeouts: what arrived in time, or a clear 5xx; never an empty 200 (Prometheus
    // would drop every series while `up` stays 1).
    for secs in ["1", "0.5", "0.3", "0.1"] {
        let res = request(
            s.addr,
            "GET",
            "/metrics.core/collect",
            &[("X-Prometheus-Scrape-Timeout-Seconds", secs)],
            b"",
        )
        .await;
        if res.status == 200 {
            assert!(
                res.text().contains("# TYPE "),
                "{secs} s: a 200 holds metrics: {:?}",
                res.text()
            );
        } else {
            assert!(
                res.status >= 500 && !res.text().is_empty(),
                "{secs} s: {} {}",
                res.status,
                res.text()
            );
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_needs_the_secret_outside_local() {
    let s = stack(Deployment::Prod, Some("s3cret")).await;
    for path in [
        "/metrics.core/collect",
        "/metrics.core/collect?secretKey=wrong",
    ] {
        let res = get(s.addr, path).await;
        assert_eq!(res.status, 404, "{path}");
        assert!(
            res.text().contains("incorrect secret key"),
            "{path}: {}",
            res.text()
        );
    }
    let res = get(s.addr, "/metrics.core/collect?secretKey=s3cret").await;
    assert_eq!(res.status, 200);
    promtool_check(&res.text());
    s.stop().await;
    // No secret configured in PROD: nobody may scrape.
    let s = stack(Deployment::Prod, None).await;
    assert_eq!(get(s.addr, "/metrics.core/collect").await.status, 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_bus() {
    let mut s = stack(Deployment::Local, None).await;
    let admin = s.admin.local_addr();
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.status, 200);
    s._nats.stop();
    let mut ready = true;
    for _ in 0..100 {
        if get(admin, "/readyz").await.status == 503 {
            ready = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!ready, "readyz stayed 200 with NATS down");
    let res = get(admin, "/readyz").await;
    assert!(res.text().contains("disconnected"), "{}", res.text());
    assert_eq!(
        get(admin, "/healthz").await.status,
        200,
        "alive all the same"
    );
    s._nats.restart();
    let mut back = false;
    for _ in 0..200 {
        if get(admin, "/readyz").await.status == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_busgate() {
    let s = stack(Deployment::Local, None).await;
    for _ in 0..3 {
        get(s.addr, "/hello.example/calculator?x=2&op=*&y=3").await;
    }
    let config = format!(
        "global:\n  scrape_interval: 2s\n  scrape_timeout: 1900ms\nscrape_configs:\n  - job_name: busgate\n    static_configs:\n      - targets: ['{admin}']\n  - job_name: bus\n    metrics_path: /metrics.core/collect\n    static_configs:\n      - targets: ['{ingress}']\n",
        admin = s.admin.local_addr(),
        ingress = s.addr,
    );
    let prometheus = Prometheus::start(&config);
    let expected = [
        "calculator.example",
        "hello.example",
        "http.ingress.core",
        "metrics.core",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = serde_json::Value::Null;
    let mut found = false;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !prometheus.is_up().await {
            continue;
        }
        let per_job = prometheus
            .query("count by (job, service) (microbus_uptime_duration_seconds_total)")
            .await;
        last = per_job.clone();
        let results = per_job["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let have = |job: &str, svc: &str| {
            results
                .iter()
                .any(|r| r["metric"]["job"] == job && r["metric"]["service"] == svc)
        };
        if expected
            .iter()
            .all(|svc| have("busgate", svc) && have("bus", svc))
        {
            found = true;
            break;
        }
    }
    assert!(
        found,
        "Prometheus never saw every service through both jobs: {last}"
    );
    let up = prometheus.query("up").await;
    for r in up["data"]["result"].as_array().unwrap() {
        assert_eq!(r["value"][1], "1", "{r}");
    }
    let calls = prometheus.query("sum(microbus_response_duration_seconds_count{job=\"bus\",handler=\"calculator.example:443/arithmetic\"})").await;
    assert_eq!(calls["data"]["result"][0]["value"][1], "3", "{calls}");
    s.stop().await;
}
