//! The HTTP ingress (`http.ingress.core`): real HTTP in, Microbus requests out.
//!
//! ```text
//! client ──HTTP──▶ listener (:8080, TLS when httpingress-<port>-cert.pem exists)
//!                    └─ telemetry ▸ error printer ▸ blocked paths ▸ access log ▸ secure redirect ▸ CORS
//!                       ▸ X-Forwarded ▸ internal headers ▸ root path ▸ timeout
//!                       ▸ cache control ▸ compression ▸ default favicon ▸ proxy ──bus──▶ service
//! ```

pub mod compression;
pub mod config;
pub mod connection;
pub mod context;
pub mod framing_guard;
pub mod io_timeout;
pub mod memory;
pub mod metrics;
pub mod middleware;
pub mod proxy;
pub mod shared;
pub mod threads;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use config::IngressConfig;
use connection::Listener;
pub use connection::{IngressService, PARK_AFTER, TLS_HANDSHAKE_TIMEOUT};
use memory::MemoryBudget;
pub use shared::Shared;
use threads::ConnectionThreads;

use crate::connector::BusConfig;
use crate::connector::{Connector, Service, StartError};
use metrics::IngressMetrics;

pub use compression::COMPRESSION_MIN_BYTES;

/// Grace after the time budget for in-flight requests to be written out at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("{0}")]
    Bus(#[from] StartError),
    #[error("cannot listen on port {port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("invalid TLS files for port {port}: {message}")]
    Tls { port: u16, message: String },
    #[error("cannot start the HTTP connection threads: {0}")]
    Threads(std::io::Error),
}

/// A running HTTP ingress.
pub struct HttpIngress {
    shared: Arc<Shared>,
    addrs: Vec<(u16, SocketAddr)>,
    stop: CancellationToken,
    accept_loops: Vec<JoinHandle<()>>,
    graceful: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
    /// Where connections are served; ended after them, at shutdown.
    threads: Arc<ConnectionThreads>,
}

impl HttpIngress {
    /// Join the bus as `http.ingress.core` and listen on every configured port.
    pub async fn start(
        config: IngressConfig,
        bus: &BusConfig,
    ) -> Result<HttpIngress, IngressError> {
        let conn = Service::new(config::HOSTNAME).start(bus).await?;
        match HttpIngress::listen(config, conn.clone()).await {
            Ok(ingress) => Ok(ingress),
            Err(e) => {
                conn.shutdown().await;
                Err(e)
            }
        }
    }

    async fn listen(config: IngressConfig, conn: Connector) -> Result<HttpIngress, IngressError> {
        let mut listeners = Vec::new();
        let mut tls_ports = HashSet::new();
        for &port in &config.ports {
            let tls = load_tls(&config.cert_dir, port)?;
            if tls.is_some() {
                tls_ports.insert(port);
            }
            let listener = TcpListener::bind(SocketAddr::new(config.bind_ip, port))
                .await
                .map_err(|source| IngressError::Listen { port, source })?;
            listeners.push((port, listener, tls));
        }
        let threads =
            Arc::new(ConnectionThreads::start(config.threads).map_err(IngressError::Threads)?);
        let shared = Arc::new(Shared {
            metrics: IngressMetrics::register(conn.metrics()),
            memory: MemoryBudget::new(config.request_memory_limit_bytes / 2),
            config,
            conn,
            tls_ports,
        });
        let stop = CancellationToken::new();
        let graceful = Arc::new(std::sync::Mutex::new(Some(GracefulShutdown::new())));
        let mut addrs = Vec::new();
        let mut accept_loops = Vec::new();
        for (port, listener, tls) in listeners {
            let addr = listener
                .local_addr()
                .map_err(|source| IngressError::Listen { port, source })?;
            tracing::info!(%addr, tls = tls.is_some(), threads = threads.len(), "HTTP ingress listening");
            addrs.push((port, addr));
            let each = Arc::new(Listener::new(
                shared.clone(),
                addr.port(),
                tls,
                stop.clone(),
            ));
            accept_loops.push(tokio::spawn(accept_loop(
                listener,
                each,
                graceful.clone(),
                threads.clone(),
            )));
        }
        Ok(HttpIngress {
            shared,
            addrs,
            stop,
            accept_loops,
            graceful,
            threads,
        })
    }

    /// The bound address of each configured port (port 0 binds a free one).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.iter().map(|(_, a)| *a).collect()
    }

    pub fn connector(&self) -> &Connector {
        &self.shared.conn
    }

    /// Bytes of request bodies held right now.
    pub fn memory_in_use(&self) -> usize {
        self.shared.memory.used()
    }

    /// Stop accepting, let in-flight requests finish within their budget, then leave the bus.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        for task in &self.accept_loops {
            task.abort();
        }
        let graceful = self.graceful.lock().expect("graceful lock").take();
        if let Some(graceful) = graceful {
            let patience =
                self.shared.config.time_budget.max(Duration::from_secs(1)) + SHUTDOWN_GRACE;
            if tokio::time::timeout(patience, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("HTTP connections still open after the shutdown grace; closing");
            }
        }
        self.threads.stop();
        self.shared.conn.shutdown().await;
    }
}

fn load_tls(dir: &Path, port: u16) -> Result<Option<TlsAcceptor>, IngressError> {
    let tls = super::tls::server_config(dir, "httpingress", port)
        .map_err(|message| IngressError::Tls { port, message })?;
    Ok(tls.map(|mut tls| {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(tls))
    }))
}

async fn accept_loop(
    listener: TcpListener,
    each: Arc<Listener>,
    graceful: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
    threads: Arc<ConnectionThreads>,
) {
    loop {
        let accepted = tokio::select! {
            _ = each.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(watcher) = graceful
            .lock()
            .expect("graceful lock")
            .as_ref()
            .map(|g| g.watcher())
        else {
            return;
        };
        let each = each.clone();
        threads.serve(stream, move |stream| {
            connection::serve(each, stream, peer, watcher)
        });
    }
}
