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
pub mod context;
pub mod framing_guard;
pub mod memory;
pub mod metrics;
pub mod middleware;
pub mod proxy;
pub mod shared;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use config::IngressConfig;
use context::ConnInfo;
use framing_guard::FramingGuard;
use memory::MemoryBudget;
pub use shared::Shared;

use crate::connector::BusConfig;
use crate::connector::{Connector, Service, StartError};
use metrics::IngressMetrics;

pub use compression::COMPRESSION_MIN_BYTES;

/// How long a TLS handshake may take before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// A running HTTP ingress.
pub struct HttpIngress {
    shared: Arc<Shared>,
    addrs: Vec<(u16, SocketAddr)>,
    stop: CancellationToken,
    accept_loops: Vec<JoinHandle<()>>,
    graceful: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
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
            tracing::info!(%addr, tls = tls.is_some(), "HTTP ingress listening");
            addrs.push((port, addr));
            accept_loops.push(tokio::spawn(accept_loop(
                listener,
                addr.port(),
                tls,
                shared.clone(),
                stop.clone(),
                graceful.clone(),
            )));
        }
        Ok(HttpIngress {
            shared,
            addrs,
            stop,
            accept_loops,
            graceful,
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
        self.shared.conn.shutdown().await;
    }
}

/// The ingress as hyper sees it on one connection: each request goes through the middleware
/// chain ([`middleware::handle`]) with the connection's [`ConnInfo`], one boxed future each.
#[derive(Clone)]
pub struct IngressService {
    shared: Arc<Shared>,
    info: ConnInfo,
}

impl IngressService {
    pub fn new(shared: Arc<Shared>, info: ConnInfo) -> IngressService {
        IngressService { shared, info }
    }
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for IngressService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        let info = self.info;
        Box::pin(async move { Ok(middleware::handle(&shared, info, req.map(Body::new)).await) })
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

/// HTTP/2 limits, set here rather than left to hyper's defaults so that they are seen and
/// tested (tests/ingress_hostile.rs). Streams one connection may have open at once: each is a
/// bus call in flight, and one client should not hold more than a busy browser does.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may open and reset before they are served ("rapid reset", CVE-2023-44487)
/// before the connection is closed with ENHANCE_YOUR_CALM.
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server had to reset for a client's protocol errors before it gives up on the
/// connection (CVE-2024-27316-style floods of bad frames).
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// PING an idle HTTP/2 connection this often, and drop it when a PING is not answered in time:
/// a vanished client should not hold its streams and memory.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    listen_port: u16,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    graceful: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The framing guard times request heads (Go's semantics); hyper's timer (30 s unless
        // set) would also run while a keep-alive connection idles between requests.
        .header_read_timeout(None)
        .max_buf_size(shared.config.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(shared.config.max_header_bytes as u32)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
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
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            listen_port,
            tls: tls.is_some(),
            peer,
        };
        let service = IngressService::new(shared.clone(), info);
        let Some(watcher) = graceful
            .lock()
            .expect("graceful lock")
            .as_ref()
            .map(|g| g.watcher())
        else {
            return;
        };
        let builder = builder.clone();
        let tls = tls.clone();
        let config = &shared.config;
        let (read_timeout, write_timeout) = (config.read_timeout, config.write_timeout);
        let max_head = config.max_header_bytes;
        let header_timeout = config.read_header_timeout;
        let open = OpenConnection::new(shared.metrics.listener(listen_port).open_connections);
        tokio::spawn(async move {
            let _open = open;
            let io = timed(stream, read_timeout, write_timeout);
            match tls {
                None => {
                    let io = FramingGuard::new(io, max_head, header_timeout);
                    let conn = builder.serve_connection(TokioIo::new(io), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(acceptor) => {
                    let tls_stream = match tokio::time::timeout(
                        TLS_HANDSHAKE_TIMEOUT,
                        acceptor.accept(io),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        _ => return,
                    };
                    let io = FramingGuard::new(tls_stream, max_head, header_timeout);
                    let conn = builder.serve_connection(TokioIo::new(io), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
}

/// Counts a client connection in `busgate_ingress_open_connections` while it lives, however
/// its task ends.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(gauge: prometheus::IntGauge) -> OpenConnection {
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A stream whose reads and writes fail after stalling this long: idle keep-alive connections
/// close after the read timeout, and a client that stops reading cannot pin a response.
fn timed(
    stream: TcpStream,
    read: Duration,
    write: Duration,
) -> std::pin::Pin<Box<TimeoutStream<TcpStream>>> {
    let mut io = TimeoutStream::new(stream);
    io.set_read_timeout(Some(read));
    io.set_write_timeout(Some(write));
    Box::pin(io)
}
