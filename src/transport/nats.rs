//! NATS through async-nats: authentication, TLS, reconnect forever, observable state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use bytes::Bytes;
use tokio::sync::watch;

use super::{ConnectionState, TransportError, TransportErrorKind};

/// Microbus's default bus address.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How long one connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long startup keeps retrying a server that is not up yet (Microbus's app runner retries
/// failed starts for 20 s) before it gives up with a readable error.
pub const INITIAL_CONNECT_PATIENCE: Duration = Duration::from_secs(20);

/// Reconnect backoff: doubles from the first step up to the cap, with jitter, forever.
pub const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(50);
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

/// Pending messages per subscription before NATS counts a slow consumer (async-nats default).
pub const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// How to reach and authenticate with NATS. Built from `MICROBUS_NATS*` by the config module.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A `.creds` file (JWT + nkey seed).
    pub creds_file: Option<PathBuf>,
    /// An nkey seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// Root CA to trust; turns TLS on.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Give up the initial connect after this long (default [`INITIAL_CONNECT_PATIENCE`]).
    pub initial_connect_patience: Option<Duration>,
}

impl NatsOptions {
    pub fn new(url: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            ..NatsOptions::default()
        }
    }

    /// Take `ca.pem`, `cert.pem` and `key.pem` from `dir` when they exist, as Microbus does
    /// from the working directory; explicit settings win.
    pub fn with_tls_files_from(mut self, dir: &Path) -> NatsOptions {
        let file = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        if self.tls_ca.is_none() {
            self.tls_ca = file("ca.pem");
        }
        if self.tls_cert.is_none() && self.tls_key.is_none() {
            if let (Some(c), Some(k)) = (file("cert.pem"), file("key.pem")) {
                self.tls_cert = Some(c);
                self.tls_key = Some(k);
            }
        }
        self
    }
}

/// One NATS connection.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    state: watch::Receiver<ConnectionState>,
    reconnects: Arc<AtomicU64>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl NatsBus {
    pub async fn connect(opts: &NatsOptions, name: &str) -> Result<NatsBus, TransportError> {
        let patience = opts
            .initial_connect_patience
            .unwrap_or(INITIAL_CONNECT_PATIENCE);
        let started = tokio::time::Instant::now();
        let mut delay = RECONNECT_FIRST_DELAY;
        loop {
            match NatsBus::connect_once(opts, name).await {
                Ok(bus) => return Ok(bus),
                // Authentication and TLS problems do not fix themselves: report them at once.
                Err(e) if e.kind() == TransportErrorKind::Rejected => return Err(e),
                Err(e) if started.elapsed() + delay >= patience => return Err(e),
                Err(e) => {
                    tracing::warn!(url = %opts.url, error = %e, "NATS not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RECONNECT_MAX_DELAY);
                }
            }
        }
    }

    async fn connect_once(opts: &NatsOptions, name: &str) -> Result<NatsBus, TransportError> {
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connected);
        let reconnects = Arc::new(AtomicU64::new(0));
        let mut options = ConnectOptions::new()
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback({
                let reconnects = reconnects.clone();
                let url = opts.url.clone();
                move |event| {
                    let state_tx = state_tx.clone();
                    let reconnects = reconnects.clone();
                    let url = url.clone();
                    async move {
                        match event {
                            Event::Connected => {
                                if reconnects.fetch_add(1, Ordering::Relaxed) == 0 {
                                    tracing::info!(%url, "NATS connected");
                                } else {
                                    tracing::info!(%url, "NATS reconnected");
                                }
                                state_tx.send_replace(ConnectionState::Connected);
                            }
                            Event::Disconnected => {
                                tracing::warn!(%url, "NATS disconnected");
                                state_tx.send_replace(ConnectionState::Disconnected);
                            }
                            Event::Closed => {
                                state_tx.send_replace(ConnectionState::Closed);
                            }
                            Event::SlowConsumer(sid) => {
                                tracing::error!(sid, "NATS slow consumer: messages dropped");
                            }
                            other => tracing::warn!(%url, event = %other, "NATS event"),
                        }
                    }
                }
            });
        if let (Some(user), Some(password)) = (&opts.user, &opts.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &opts.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &opts.nkey_seed {
            options = options.nkey(seed.clone());
        }
        if let Some(creds) = &opts.creds_file {
            options = options.credentials_file(creds).await.map_err(|e| {
                TransportError::new(
                    TransportErrorKind::Rejected,
                    format!("cannot read NATS credentials {}: {e}", creds.display()),
                )
            })?;
        }
        if let Some(ca) = &opts.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&opts.tls_cert, &opts.tls_key) {
            (Some(cert), Some(key)) => {
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => {
                return Err(TransportError::new(
                    TransportErrorKind::Rejected,
                    "a NATS client certificate needs both a certificate and a key",
                ))
            }
        }
        let client = options.connect(opts.url.as_str()).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            // A TLS handshake that fails on certificates surfaces as an I/O error of kind
            // InvalidData; like bad credentials, retrying cannot fix it.
            let bad_tls_data = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData);
            let kind = match e.kind() {
                K::Authentication | K::AuthorizationViolation | K::Tls | K::ServerParse => {
                    TransportErrorKind::Rejected
                }
                K::Io if bad_tls_data => TransportErrorKind::Rejected,
                _ => TransportErrorKind::Connect,
            };
            TransportError::new(kind, format!("cannot connect to NATS at {}: {e}", opts.url))
        })?;
        Ok(NatsBus {
            client,
            state: state_rx,
            reconnects,
        })
    }

    pub async fn publish(&self, subject: String, payload: Bytes) -> Result<(), TransportError> {
        if *self.state.borrow() != ConnectionState::Connected {
            // async-nats would buffer the message until reconnect; a caller with ack-or-fail
            // semantics is better served by an immediate, typed failure.
            return Err(TransportError::new(
                TransportErrorKind::Disconnected,
                "NATS is disconnected",
            ));
        }
        if payload.len() > self.max_payload() {
            return Err(TransportError::new(
                TransportErrorKind::PayloadTooLarge,
                format!("payload of {} bytes exceeds max_payload", payload.len()),
            ));
        }
        // A publish is an enqueue and completes at once, unless the connection died before its
        // state said so and the client's queue is full: then it would wait for a reconnect that
        // may never come (and hold shutdown with it). The timer only starts if it has to wait.
        match tokio::time::timeout(PUBLISH_PATIENCE, self.client.publish(subject, payload)).await {
            Ok(sent) => sent
                .map_err(|e| TransportError::new(TransportErrorKind::Disconnected, e.to_string())),
            Err(_) => Err(TransportError::new(
                TransportErrorKind::Disconnected,
                "NATS did not take the message within 1 s",
            )),
        }
    }

    pub async fn subscribe(
        &self,
        subject: String,
        queue: Option<String>,
    ) -> Result<async_nats::Subscriber, TransportError> {
        let result = match queue {
            Some(q) => self.client.queue_subscribe(subject, q).await,
            None => self.client.subscribe(subject).await,
        };
        result.map_err(|e| TransportError::new(TransportErrorKind::Rejected, e.to_string()))
    }

    pub async fn flush(&self) -> Result<(), TransportError> {
        self.client
            .flush()
            .await
            .map_err(|e| TransportError::new(TransportErrorKind::Disconnected, e.to_string()))
    }

    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    pub fn reconnects(&self) -> u64 {
        // The first Connected event is the initial connection.
        self.reconnects.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Flush and drain, for at most [`CLOSE_PATIENCE`]: with the server gone, both would wait
    /// for it forever.
    pub async fn close(&self) {
        let closing = async {
            if let Err(e) = self.client.flush().await {
                tracing::debug!(error = %e, "flush on close");
            }
            if let Err(e) = self.client.drain().await {
                tracing::debug!(error = %e, "drain on close");
            }
        };
        if tokio::time::timeout(CLOSE_PATIENCE, closing).await.is_err() {
            tracing::warn!(
                "NATS did not answer within {} s while closing: giving up on it (unsent messages are lost)",
                CLOSE_PATIENCE.as_secs()
            );
        }
    }
}

/// Longest a publish may wait for room in the client's queue.
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(1);

/// Longest closing a connection waits for the server to take what is queued.
pub const CLOSE_PATIENCE: Duration = Duration::from_secs(2);

fn reconnect_delay(attempts: usize) -> Duration {
    let exp = RECONNECT_FIRST_DELAY
        .saturating_mul(1u32 << attempts.min(16))
        .min(RECONNECT_MAX_DELAY);
    let jitter = rand::random::<u64>() % (exp.as_millis() as u64 / 4 + 1);
    exp + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert!(reconnect_delay(0) < Duration::from_millis(100));
        assert!(reconnect_delay(3) >= Duration::from_millis(400));
        assert!(reconnect_delay(50) <= RECONNECT_MAX_DELAY + RECONNECT_MAX_DELAY / 4);
    }

    #[test]
    fn tls_files_from_dir() {
        let dir = std::env::temp_dir().join(format!("busgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "x").unwrap();
        let o = NatsOptions::new("nats://x").with_tls_files_from(&dir);
        assert_eq!(o.tls_ca, Some(dir.join("ca.pem")));
        assert!(o.tls_cert.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
