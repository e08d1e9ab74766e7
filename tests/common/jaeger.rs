//! A real Jaeger (v2 all-in-one, built from the Go module proxy by `scripts/go-tools`) on free
//! ports, run with the stack's own configuration file (`compose/jaeger/config.yaml`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, tool_bin, ChildGuard};

pub struct Jaeger {
    _child: ChildGuard,
    /// OTLP over HTTP (`http://{otlp_http}/v1/traces`).
    pub otlp_http: SocketAddr,
    /// OTLP over gRPC.
    pub otlp_grpc: SocketAddr,
    /// The query API and UI.
    pub query: SocketAddr,
    pub health: SocketAddr,
}

impl Jaeger {
    /// Start and wait until its health check answers (at most 60 s).
    pub async fn start() -> Jaeger {
        let bin = tool_bin("jaeger", "JAEGER_BIN");
        let config = format!("{}/compose/jaeger/config.yaml", env!("CARGO_MANIFEST_DIR"));
        let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
        let (http, grpc, query, query_grpc, health) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let child = Command::new(&bin)
            .args(["--config", &config])
            .env("JAEGER_LISTEN_HOST", "127.0.0.1")
            .env("JAEGER_OTLP_HTTP_PORT", http.to_string())
            .env("JAEGER_OTLP_GRPC_PORT", grpc.to_string())
            .env("JAEGER_QUERY_PORT", query.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", query_grpc.to_string())
            .env("JAEGER_HEALTH_PORT", health.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}; build it with scripts/go-tools"));
        let jaeger = Jaeger {
            _child: ChildGuard(child),
            otlp_http: addr(http),
            otlp_grpc: addr(grpc),
            query: addr(query),
            health: addr(health),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = tokio::time::timeout(
                Duration::from_secs(2),
                super::http::send_raw(
                    jaeger.health,
                    &super::http::build("GET", "/status", &[], b""),
                ),
            )
            .await;
            if matches!(up, Ok(Ok(ref r)) if r.status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Jaeger did not become healthy in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        jaeger
    }

    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://{}", self.otlp_http)
    }

    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://{}", self.otlp_grpc)
    }

    /// `GET /api/traces/<id>`: the trace's JSON (`data[0]`), once it holds at least
    /// `min_spans` spans, or `None` after `wait`.
    pub async fn trace(&self, trace_id: &str, min_spans: usize, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let res = super::http::get(self.query, &format!("/api/traces/{trace_id}")).await;
            if res.status == 200 {
                let v: Value = serde_json::from_slice(&res.body).unwrap();
                let spans = v["data"][0]["spans"].as_array().map_or(0, Vec::len);
                if spans >= min_spans {
                    return Some(v["data"][0].clone());
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `GET /api/traces?service=..&operation=..`: the traces found (most recent first).
    pub async fn search(&self, service: &str, operation: Option<&str>) -> Vec<Value> {
        let mut q = vec![("service", service), ("limit", "50"), ("lookback", "1h")];
        if let Some(op) = operation {
            q.push(("operation", op));
        }
        let q = serde_urlencoded::to_string(q).unwrap();
        let res = super::http::get(self.query, &format!("/api/traces?{q}")).await;
        if res.status != 200 {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&res.body).unwrap();
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// The services Jaeger has spans of.
    pub async fn services(&self) -> Vec<String> {
        let res = super::http::get(self.query, "/api/services").await;
        let v: Value = serde_json::from_slice(&res.body).unwrap_or(Value::Null);
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    }
}

/// A span of a Jaeger trace JSON, with its process's service name.
pub struct JaegerSpan<'a> {
    pub span: &'a Value,
    pub service: String,
}

impl<'a> JaegerSpan<'a> {
    pub fn name(&self) -> &str {
        self.span["operationName"].as_str().unwrap_or("")
    }
    pub fn id(&self) -> &str {
        self.span["spanID"].as_str().unwrap_or("")
    }
    /// The CHILD_OF parent's span id.
    pub fn parent(&self) -> Option<&str> {
        self.span["references"]
            .as_array()?
            .iter()
            .find(|r| r["refType"] == "CHILD_OF")
            .and_then(|r| r["spanID"].as_str())
    }
    pub fn tag(&self, key: &str) -> Option<&Value> {
        self.span["tags"]
            .as_array()?
            .iter()
            .find(|t| t["key"] == key)
            .map(|t| &t["value"])
    }
}

/// Every span of a trace with its service.
pub fn spans(trace: &Value) -> Vec<JaegerSpan<'_>> {
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|span| {
            let pid = span["processID"].as_str().unwrap_or("");
            let service = trace["processes"][pid]["serviceName"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            JaegerSpan { span, service }
        })
        .collect()
}
