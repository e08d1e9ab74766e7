//! The admin listener, apart from the ingress: `/metrics` (every service in this process and
//! the process itself), `/healthz` (alive) and `/readyz` (bus connected and subscribed).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::connector::Connector;
use crate::telemetry::exposition::{accepts_gzip, exposition_response};
use crate::telemetry::metrics::gather;
use crate::transport::ConnectionState;

/// Where the admin listener binds unless told otherwise (the OpenTelemetry Prometheus port).
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9464";

/// The services this process reports on.
#[derive(Clone, Default)]
pub struct AdminTargets(Arc<Mutex<Vec<Connector>>>);

impl AdminTargets {
    pub fn add(&self, conn: Connector) {
        self.0.lock().expect("targets lock").push(conn);
    }
    pub fn list(&self) -> Vec<Connector> {
        self.0.lock().expect("targets lock").clone()
    }
}

pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    pub async fn start(addr: SocketAddr, targets: AdminTargets) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(targets);
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        tracing::info!(%addr, "admin listener: /metrics /healthz /readyz");
        Ok(AdminServer { addr, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn metrics(State(targets): State<AdminTargets>, headers: HeaderMap) -> Response {
    let services: Vec<_> = targets
        .list()
        .into_iter()
        .map(|c| {
            let m = c.metrics().clone();
            m.refresh(c.bus().nats_connection());
            m
        })
        .collect();
    exposition_response(gather(&services), accepts_gzip(&headers)).map(axum::body::Body::from)
}

async fn readyz(State(targets): State<AdminTargets>) -> Response {
    let list = targets.list();
    let not_ready: Vec<String> = list
        .iter()
        .filter(|c| !c.is_started() || c.connection_state() != ConnectionState::Connected)
        .map(|c| {
            format!(
                "{} ({}): {}",
                c.hostname(),
                c.id(),
                if c.is_started() {
                    c.connection_state().as_str()
                } else {
                    "not started"
                }
            )
        })
        .collect();
    if list.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no services\n").into_response();
    }
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", not_ready.join("\n")),
        )
            .into_response()
    }
}
