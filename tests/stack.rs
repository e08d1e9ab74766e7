//! The telemetry stack run for real, natively: the closest thing to
//! `docker compose -f compose/observability.yml up` without a Docker engine. The processes
//! and files are the compose file's own: a nats-server, the `busgate` binary with the compose
//! service's command and environment, Prometheus with `compose/prometheus/prometheus.yml` and
//! the alert rules, and Jaeger with `compose/jaeger/config.yaml`; only host names and ports
//! are moved to free ports on 127.0.0.1. Then, under traffic through the ingress:
//! - a healthy stack fires no alert, in Prometheus and in promtool's unit test of the rules
//!   over the healthy process's full exposition, held for hours;
//! - with mail through the SMTP ingress beside the HTTP traffic (accepted, deferred, rejected,
//!   a protocol error), every dashboard query returns data;
//! - the trace of a request is found in Jaeger, parents and services right, and Jaeger's UI
//!   answers.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use busgate::ingress::smtp::email::{self, Email};
use busgate::{BusConfig, Ctx, Error, Service};
use bytes::Bytes;
use common::http::{build, get, send_raw};
use common::jaeger::{spans, Jaeger};
use common::{free_port, ChildGuard, NatsServer, Prometheus, TempDir};
use http::{Response, StatusCode};
use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Yaml {
    serde_yaml_ng::from_str(&std::fs::read_to_string(repo().join(path)).unwrap()).unwrap()
}

/// The stack's processes, each killed when the test ends.
struct Stack {
    nats: NatsServer,
    jaeger: Jaeger,
    _busgate: ChildGuard,
    busgate_log: PathBuf,
    _workdir: TempDir,
    ingress: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    smtp: std::net::SocketAddr,
    secret: String,
}

impl Stack {
    /// nats-server, Jaeger and busgate as compose starts them (in its dependency order).
    async fn start() -> Stack {
        let nats = NatsServer::start();
        let jaeger = Jaeger::start().await;
        let compose = yaml("compose/observability.yml");
        let service = &compose["services"]["busgate"];
        let (ingress_port, admin_port, smtp_port) = (free_port(), free_port(), free_port());
        // Host names of the compose network become this machine's ports.
        let relocate = |s: &str| {
            s.replace("nats://nats:4222", &nats.url())
                .replace("http://jaeger:4318", &jaeger.otlp_http_endpoint())
                .replace("http://jaeger:4317", &jaeger.otlp_grpc_endpoint())
                .replace("0.0.0.0:9464", &format!("127.0.0.1:{admin_port}"))
        };
        let mut args: Vec<String> = service["command"]
            .as_sequence()
            .expect("the busgate service has a command")
            .iter()
            .map(|a| relocate(a.as_str().unwrap()))
            .collect();
        let ports = args
            .iter()
            .position(|a| a == "--ports")
            .expect("compose passes --ports");
        assert_eq!(args[ports + 1], "8080", "compose's ingress port");
        args[ports + 1] = ingress_port.to_string();
        let mut env: BTreeMap<String, String> = service["environment"]
            .as_mapping()
            .expect("the busgate service has an environment map")
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Yaml::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().unwrap().to_owned(), relocate(&v))
            })
            .collect();
        for (k, v) in &env {
            assert!(
                !v.contains("//nats:") && !v.contains("//jaeger:"),
                "{k}={v} names a compose host this test does not relocate"
            );
        }
        let smtp_env = env
            .get_mut("BUSGATE_SMTP_INGRESS_PORT")
            .expect("compose sets the SMTP port");
        assert_eq!(smtp_env.as_str(), "2525", "compose's SMTP port");
        *smtp_env = smtp_port.to_string();
        let secret = env
            .get("BUSGATE_METRICS_SECRET_KEY")
            .cloned()
            .unwrap_or_default();
        let workdir = TempDir::new("stack");
        let busgate_log = workdir.0.join("busgate.log");
        let child = Command::new(env!("CARGO_BIN_EXE_busgate"))
            .args(&args)
            .envs(&env)
            .env_remove("BUSGATE_ADMIN_ADDR")
            .current_dir(&workdir.0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&busgate_log).unwrap())
            .spawn()
            .expect("the busgate binary runs");
        let stack = Stack {
            nats,
            jaeger,
            _busgate: ChildGuard(child),
            busgate_log,
            _workdir: workdir,
            ingress: format!("127.0.0.1:{ingress_port}").parse().unwrap(),
            admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
            smtp: format!("127.0.0.1:{smtp_port}").parse().unwrap(),
            secret,
        };
        // compose's health check: `busgate probe http://127.0.0.1:9464/readyz`.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = Command::new(env!("CARGO_BIN_EXE_busgate"))
                .args(["probe", &format!("http://{}/readyz", stack.admin)])
                .output()
                .unwrap();
            if probe.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "busgate never became ready:\n{}",
                stack.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stack
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.busgate_log).unwrap_or_default()
    }

    /// Prometheus with the stack's configuration: scrape targets moved to this stack, the
    /// rules from the repo, intervals shortened so that a test sees several scrapes.
    /// `extra_bus_targets`: more targets of the `bus` job (a Go service's exposition).
    fn prometheus(&self, extra_bus_targets: &[String]) -> Prometheus {
        let mut config = yaml("compose/prometheus/prometheus.yml");
        config["global"]["scrape_interval"] = Yaml::from("1s");
        config["global"]["scrape_timeout"] = Yaml::from("900ms");
        config["global"]["evaluation_interval"] = Yaml::from("1s");
        let rules = repo().join("compose/prometheus/rules");
        let files: Vec<Yaml> = config["rule_files"]
            .as_sequence()
            .expect("the config loads the rules")
            .iter()
            .map(|f| {
                let f = f.as_str().unwrap();
                let name = f
                    .strip_prefix("/etc/prometheus/rules/")
                    .unwrap_or_else(|| panic!("rule file {f} is not what compose mounts"));
                Yaml::from(rules.join(name).display().to_string())
            })
            .collect();
        config["rule_files"] = Yaml::Sequence(files);
        for job in config["scrape_configs"].as_sequence_mut().unwrap() {
            let name = job["job_name"].as_str().unwrap().to_owned();
            if name == "bus" {
                job["scrape_interval"] = Yaml::from("2s");
                job["scrape_timeout"] = Yaml::from("1900ms");
            } else {
                job.as_mapping_mut().unwrap().remove("scrape_timeout");
            }
            for sc in job["static_configs"].as_sequence_mut().unwrap() {
                for t in sc["targets"].as_sequence_mut().unwrap() {
                    let moved = match t.as_str().unwrap() {
                        "busgate:9464" => self.admin.to_string(),
                        "busgate:8080" => self.ingress.to_string(),
                        other => panic!("scrape target {other} is not busgate's"),
                    };
                    *t = Yaml::from(moved);
                }
                if name == "bus" {
                    let targets = sc["targets"].as_sequence_mut().unwrap();
                    targets.extend(extra_bus_targets.iter().map(|t| Yaml::from(t.clone())));
                }
            }
        }
        Prometheus::start(&serde_yaml_ng::to_string(&config).unwrap())
    }
}

/// Serves the `:888/metrics` answer of a Go v1.7 service (`beta.example`), recorded, at the
/// `bus` job's path.
async fn go_service_exposition() -> std::net::SocketAddr {
    let frame =
        std::fs::read(repo().join("tests/fixtures/fabric-v1.7/s15-control-metrics_03-Res.payload"))
            .unwrap();
    let at = frame.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let body = Bytes::from(frame[at + 4..].to_vec());
    let app = axum::Router::new().route(
        "/metrics.core/collect",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The subject of the mails that `mixed.test`'s sink fails, so that the SMTP ingress defers
/// them (451, `sink_error`).
const DEFERRED_SUBJECT: &str = "defer me";

/// A user's service beside the examples, with every outcome a dashboard shows; also a sink of
/// `on-incoming-email` beside eventsink.example, which fails the mails titled
/// [`DEFERRED_SUBJECT`].
fn mixed() -> Service {
    Service::new("mixed.test")
        .sink(
            email::SOURCE,
            email::ON_INCOMING_EMAIL,
            email::sink(|_ctx: Ctx, mail: Email| async move {
                if mail.headers.subject == DEFERRED_SUBJECT {
                    Err(Error::internal("mixed.test defers this mail"))
                } else {
                    Ok(())
                }
            }),
        )
        .get("/ok", |_ctx: Ctx, _req| async {
            Ok(Response::new(Bytes::from_static(b"ok")))
        })
        .get("/bad", |_ctx: Ctx, _req| async {
            Err::<Response<Bytes>, _>(Error::bad_request("bad input"))
        })
        .get("/boom", |_ctx: Ctx, _req| async {
            Err::<Response<Bytes>, _>(Error::new(StatusCode::INTERNAL_SERVER_ERROR, "it broke"))
        })
        .get("/call", |ctx: Ctx, _req| async move {
            let _ = ctx.get("https://nobody.example/x").await;
            ctx.get("https://calculator.example/square?x=3").await
        })
        .get("/slow", |_ctx: Ctx, _req| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(Response::new(Bytes::from_static(b"slow")))
        })
}

const HEALTHY: [&str; 3] = [
    "/hello.example/hello?name=stack",
    "/hello.example/calculator?x=2&op=*&y=3",
    "/calculator.example/arithmetic?x=5&op=%2B&y=3",
];

const MIXED: [&str; 8] = [
    "/hello.example/calculator?x=2&op=*&y=3",
    "/calculator.example/arithmetic?x=1&op=/&y=0",
    "/mixed.test/ok",
    "/mixed.test/bad",
    "/mixed.test/boom",
    "/mixed.test/call",
    "/nobody.example/x",
    "/mixed.test/slow",
];

/// Requests to `paths`, round after round, until stopped; a GET with a body too when
/// `with_body` (request body metrics).
fn traffic(
    addr: std::net::SocketAddr,
    paths: &'static [&'static str],
    with_body: bool,
) -> Traffic<BTreeMap<(String, u16), u32>> {
    let running = Arc::new(AtomicBool::new(true));
    let flag = running.clone();
    let task = tokio::spawn(async move {
        let mut statuses = BTreeMap::new();
        while flag.load(Ordering::Relaxed) {
            for p in paths {
                let req = if with_body {
                    build("GET", p, &[("Content-Type", "text/plain")], b"x")
                } else {
                    build("GET", p, &[], b"")
                };
                if let Ok(res) = send_raw(addr, &req).await {
                    *statuses.entry((p.to_string(), res.status)).or_insert(0u32) += 1;
                }
            }
        }
        statuses
    });
    Traffic { running, task }
}

struct Traffic<T> {
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<T>,
}

impl<T> Traffic<T> {
    async fn stop(self) -> T {
        self.running.store(false, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("traffic stops")
            .unwrap()
    }
}

/// One SMTP session of every outcome the SMTP panels show, with Python's smtplib as the client
/// (as in tests/smtp.rs): a mail accepted (eventsink.example and mixed.test take it), one
/// deferred (mixed.test's sink fails it: 451), one unparseable (554) and one declared over
/// MaxSize (552 at MAIL), and an unknown command (500). The script asserts each reply.
fn mail_round_script(addr: std::net::SocketAddr) -> String {
    format!(
        r#"
import smtplib
s = smtplib.SMTP("{ip}", {port}, timeout=30)
s.ehlo("stack.test")
s.sendmail("ann@client.test", ["bob@stack.test"], b"Subject: stack\r\n\r\nHello\r\n")
def refused(msg, code):
    try:
        s.sendmail("ann@client.test", ["bob@stack.test"], msg)
    except smtplib.SMTPDataError as e:
        assert e.smtp_code == code, (code, e.smtp_code, e.smtp_error)
    else:
        raise AssertionError("accepted, expected %d" % code)
refused(b"Subject: {deferred}\r\n\r\nretry me\r\n", 451)
refused(b"no header here, just words\r\n", 554)
code, text = s.mail("ann@client.test", ["SIZE=999999999"])
assert code == 552, (code, text)
s.rset()
code, text = s.docmd("HELLO there")
assert code == 500, (code, text)
s.quit()
"#,
        ip = addr.ip(),
        port = addr.port(),
        deferred = DEFERRED_SUBJECT,
    )
}

/// SMTP sessions of [`mail_round_script`], one after another, until stopped; the number of
/// sessions. A failed session fails the test when it is stopped.
fn mail_traffic(addr: std::net::SocketAddr) -> Traffic<u32> {
    let running = Arc::new(AtomicBool::new(true));
    let flag = running.clone();
    let script = mail_round_script(addr);
    let task = tokio::spawn(async move {
        let mut sessions = 0;
        while flag.load(Ordering::Relaxed) {
            common::python(&script).await;
            sessions += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        sessions
    });
    Traffic { running, task }
}

fn results(v: &Value) -> Vec<Value> {
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Wait until `promql` has a series with a value of at least `min` (at most 90 s).
async fn wait_for(prometheus: &Prometheus, promql: &str, min: f64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if prometheus.is_up().await {
            let v = prometheus.query(promql).await;
            if results(&v)
                .iter()
                .any(|s| s["value"][1].as_str().and_then(|x| x.parse::<f64>().ok()) >= Some(min))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had {promql} >= {min}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The alert names of the rule files.
fn alert_names() -> BTreeSet<String> {
    let rules =
        std::fs::read_to_string(repo().join("compose/prometheus/rules/busgate.yml")).unwrap();
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// A promtool rules test holding every series of `expositions` (job, instance, text) steady
/// for four hours (counters and histograms growing at a constant rate, gauges constant) and
/// `up` at 1, expecting no alert at any of several times.
fn healthy_rules_test(expositions: &[(&str, String, String)]) -> String {
    let mut series = Vec::new();
    for (job, instance, text) in expositions {
        let mut types: HashMap<&str, &str> = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split_whitespace();
                types.insert(w.next().unwrap(), w.next().unwrap());
            }
        }
        series.push((
            format!("up{{job=\"{job}\",instance=\"{instance}\"}}"),
            "1x240".to_owned(),
        ));
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (selector, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            let name = selector.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(f) == Some(&"histogram"))
                })
                .unwrap_or(name);
            let growing = matches!(types.get(family), Some(&"counter") | Some(&"histogram"));
            let labels = format!("job=\"{job}\",instance=\"{instance}\"");
            let selector = match selector.split_once('{') {
                Some((n, rest)) => format!("{n}{{{labels},{rest}"),
                None => format!("{selector}{{{labels}}}"),
            };
            let values = if growing {
                format!("{value}+{value}x240")
            } else {
                format!("{value}x240")
            };
            series.push((selector, values));
        }
    }
    let mut out = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
        repo().join("compose/prometheus/rules/busgate.yml").display()
    );
    for (s, v) in &series {
        out.push_str(&format!(
            "      - series: '{}'\n        values: '{v}'\n",
            s.replace('\'', "''")
        ));
    }
    out.push_str("    alert_rule_test:\n");
    for at in ["5m", "30m", "1h", "2h", "4h"] {
        for alert in alert_names() {
            out.push_str(&format!(
                "      - eval_time: {at}\n        alertname: {alert}\n        exp_alerts: []\n"
            ));
        }
    }
    out
}

/// The template variables' values a query runs with here.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("${job}", "bus")
        .replace("$job", "bus")
        .replace("${service}", "mixed.test")
        .replace("$service", "mixed.test")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("${route}", ".+")
        .replace("$route", ".+")
}

fn dashboard_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((
                        name.clone(),
                        p["title"].as_str().unwrap_or("").to_owned(),
                        expr.to_owned(),
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_runs_for_real_alerts_stay_quiet_dashboards_fill_and_traces_reach_jaeger() {
    let stack = Stack::start().await;
    // A Go Microbus v1.7 service beside busgate's: its exposition as recorded
    // (tests/fixtures/fabric-v1.7), served where Prometheus's `bus` job scrapes.
    let go = go_service_exposition().await;
    let prometheus = stack.prometheus(&[go.to_string()]);

    // 1. Healthy traffic only: nothing fires, nor is pending.
    let healthy = traffic(stack.ingress, &HEALTHY, false);
    wait_for(
        &prometheus,
        "sum(count_over_time(microbus_response_duration_seconds_count{job=\"bus\",service=\"calculator.example\"}[1m]))",
        4.0,
    )
    .await;
    wait_for(
        &prometheus,
        "count_over_time(busgate_ingress_requests_in_flight{job=\"busgate\"}[1m])",
        4.0,
    )
    .await;
    for job in ["busgate", "bus"] {
        let up = prometheus.query(&format!("up{{job=\"{job}\"}}")).await;
        assert_eq!(
            results(&up).first().map(|s| s["value"][1].clone()),
            Some(Value::from("1")),
            "job {job} is up: {up}"
        );
    }
    // Several rule evaluations over the traffic.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let alerts = prometheus.query("ALERTS").await;
    if !results(&alerts).is_empty() {
        let errors = prometheus
            .query("microbus_response_duration_seconds_count{error=\"ERROR\"}")
            .await;
        panic!(
            "a healthy stack has no alert firing or pending: {alerts}\nerror series: {errors}\n{}",
            stack.log()
        );
    }
    let rules = get(prometheus.addr, "/api/v1/rules").await;
    let rules: Value = serde_json::from_slice(&rules.body).unwrap();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(
                rule["health"], "ok",
                "rule {} evaluates: {}",
                rule["name"], rule["lastError"]
            );
        }
    }
    let loaded: BTreeSet<String> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r["type"] == "alerting")
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        loaded,
        alert_names(),
        "Prometheus loaded every alert of the repo"
    );

    // The healthy process's full exposition, held for hours in promtool: nothing fires.
    let admin_text = get(stack.admin, "/metrics").await.text();
    let bus_text = get(
        stack.ingress,
        &format!("/metrics.core/collect?secretKey={}", stack.secret),
    )
    .await
    .text();
    assert!(
        !admin_text.contains("service=\"busgate\"") && !bus_text.contains("service=\"busgate\""),
        "no pseudo-service in the exposition"
    );
    assert!(
        admin_text.contains("busgate_nats_connected{id="),
        "each NATS connection reports its state"
    );
    let dir = TempDir::new("healthy-rules");
    let test = dir.0.join("healthy_test.yml");
    std::fs::write(
        &test,
        healthy_rules_test(&[
            ("busgate", stack.admin.to_string(), admin_text),
            ("bus", stack.ingress.to_string(), bus_text),
        ]),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&test)
        .output()
        .expect("promtool is needed");
    assert!(
        out.status.success(),
        "an alert fires on a healthy busgate's exposition:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let statuses = healthy.stop().await;
    assert!(
        statuses.keys().all(|(_, s)| *s == 200),
        "healthy traffic is all 200: {statuses:?}"
    );

    // 2. Every outcome, from a user's service beside the examples: every panel has data.
    // Its log lines are counted like any service's (the subscriber counts them).
    busgate::telemetry::logs::init(busgate::Deployment::Testing);
    let user = mixed()
        .start(&BusConfig::nats(&stack.nats.url()))
        .await
        .unwrap();
    let mixed_traffic = traffic(stack.ingress, &MIXED, true);
    // Mail beside it: compose's SMTP port (relocated) takes it. One session first, so that a
    // wrong reply fails here, with the script's message; then sessions until the end.
    assert!(
        tokio::net::TcpStream::connect(stack.smtp).await.is_ok(),
        "the SMTP ingress listens on compose's BUSGATE_SMTP_INGRESS_PORT (moved to {}):\n{}",
        stack.smtp,
        stack.log()
    );
    common::python(&mail_round_script(stack.smtp)).await;
    let mail = mail_traffic(stack.smtp);
    wait_for(
        &prometheus,
        "count_over_time(microbus_response_duration_seconds_count{job=\"bus\",service=\"mixed.test\",handler=\"mixed.test:443/call\"}[1m])",
        4.0,
    )
    .await;
    wait_for(
        &prometheus,
        "count_over_time(busgate_ingress_request_duration_seconds_count{job=\"busgate\",route=\"mixed.test:443\"}[1m])",
        4.0,
    )
    .await;
    // Every outcome of mail, in the `bus` job the dashboard queries read here.
    for series in [
        "busgate_smtp_messages_deferred_total{job=\"bus\",reason=\"sink_error\"}",
        "busgate_smtp_messages_rejected_total{job=\"bus\",reason=\"unparseable\"}",
        "busgate_smtp_messages_rejected_total{job=\"bus\",reason=\"too_large\"}",
        "busgate_smtp_errors_total{job=\"bus\",reason=\"syntax\"}",
    ] {
        wait_for(&prometheus, &format!("count_over_time({series}[1m])"), 4.0).await;
    }
    wait_for(
        &prometheus,
        "increase(busgate_smtp_messages_accepted_total{job=\"bus\",service=\"smtp.ingress.core\"}[1m])",
        1.0,
    )
    .await;
    // Every metric a dashboard names is in busgate's exposition (traffic of every kind made
    // every labelled series appear).
    let exposition = get(stack.admin, "/metrics").await.text()
        + &get(
            stack.ingress,
            &format!("/metrics.core/collect?secretKey={}", stack.secret),
        )
        .await
        .text();
    let families: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for (name, title, expr) in dashboard_queries() {
        let metrics = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|t| {
                ["microbus_", "busgate_", "process_"]
                    .iter()
                    .any(|p| t.starts_with(p))
            });
        for metric in metrics {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| metric.strip_suffix(s).filter(|f| families.contains(f)))
                .unwrap_or(metric);
            assert!(
                families.contains(family),
                "{name}: {title} queries {metric}, which busgate does not export"
            );
        }
    }

    let mut failures = Vec::new();
    for (name, title, expr) in dashboard_queries() {
        let q = substitute(&expr);
        let unknown = q
            .match_indices('$')
            .any(|(i, _)| !q[i + 1..].starts_with(|c: char| c.is_ascii_digit()));
        assert!(!unknown, "{name}: {title}: unknown variable in {q}");
        let v = prometheus.query(&q).await;
        if v["status"] != "success" || results(&v).is_empty() {
            failures.push(format!("{name}: {title}: {q} → {v}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} dashboard queries returned nothing:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // One panel holds the Go service and busgate's side by side: the System dashboard's
    // requests per service.
    let (_, _, per_service) = dashboard_queries()
        .into_iter()
        .find(|(name, title, _)| {
            name == "system.json" && title.starts_with("Requests/s by service")
        })
        .expect("the System dashboard has a requests-per-service panel");
    let side_by_side = prometheus
        .query(&substitute(&per_service).replace("mixed.test", ".*"))
        .await;
    let shown: BTreeSet<String> = results(&side_by_side)
        .iter()
        .filter_map(|s| s["metric"]["service"].as_str().map(str::to_owned))
        .collect();
    assert!(
        shown.contains("beta.example") && shown.contains("hello.example"),
        "the Go service (beta.example) and busgate's (hello.example) on one panel: {shown:?}"
    );

    // 3. Traces in Jaeger. An error page names its trace: the ingress's root span is there.
    let res = get(stack.ingress, "/nobody.example/x").await;
    assert_eq!(res.status, 404);
    let body = res.text();
    let trace_id = body
        .split("{trace/")
        .nth(1)
        .and_then(|r| r.split('}').next())
        .unwrap_or_else(|| panic!("the error page names the trace: {body}"))
        .to_owned();
    let trace = stack
        .jaeger
        .trace(&trace_id, 2, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("trace {trace_id} reached Jaeger\n{}", stack.log()));
    let all = spans(&trace);
    let root = all
        .iter()
        .find(|s| s.parent().is_none())
        .expect("a root span");
    assert_eq!(root.service, "http.ingress.core");
    assert!(
        root.name().ends_with("/nobody.example/x"),
        "{}",
        root.name()
    );
    assert_eq!(
        root.tag("http.response.status_code"),
        Some(&Value::from(404))
    );
    // A call through two services: ingress → hello → calculator, one trace, each hop
    // parented by the one before.
    let deadline = Instant::now() + Duration::from_secs(20);
    let chain = loop {
        let found = stack.jaeger.search("calculator.example", None).await;
        let chain = found.into_iter().find(|t| {
            let s = spans(t);
            ["http.ingress.core", "hello.example", "calculator.example"]
                .iter()
                .all(|svc| s.iter().any(|x| x.service == *svc))
        });
        if let Some(t) = chain {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no trace through ingress, hello and calculator in Jaeger"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let s = spans(&chain);
    let by_id: HashMap<&str, &common::jaeger::JaegerSpan> = s.iter().map(|x| (x.id(), x)).collect();
    let server = |svc: &str| {
        s.iter()
            .find(|x| x.service == svc && x.tag("span.kind") == Some(&Value::from("server")))
            .unwrap_or_else(|| panic!("{svc} has a server span"))
    };
    let calc = server("calculator.example");
    let hello = server("hello.example");
    let ingress = server("http.ingress.core");
    assert!(ingress.parent().is_none(), "the ingress span is the root");
    // Each server span's parent is a client span of the service before it.
    let caller_of = |x: &common::jaeger::JaegerSpan| {
        let parent = by_id[x.parent().expect("parented")];
        assert_eq!(parent.tag("span.kind"), Some(&Value::from("client")));
        parent.service.clone()
    };
    assert_eq!(caller_of(hello), "http.ingress.core");
    assert_eq!(caller_of(calc), "hello.example");
    assert!(calc.name().starts_with(":443/"), "{}", calc.name());
    assert!(
        s.iter().all(|x| x.span["traceID"] == chain["traceID"]),
        "one trace"
    );
    // The UI answers on the query port.
    let ui = get(stack.jaeger.query, "/").await;
    assert_eq!(ui.status, 200);
    assert!(ui.text().to_lowercase().contains("<html"), "Jaeger's UI");

    let _ = mixed_traffic.stop().await;
    let sessions = mail.stop().await;
    assert!(sessions >= 1, "SMTP sessions ran beside the HTTP traffic");
    user.shutdown().await;
}
