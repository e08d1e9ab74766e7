//! NATS through async-nats: authentication, TLS, reconnect forever, observable state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, Subject};
use bytes::Bytes;
use tokio::sync::watch;

use super::inproc::InProcBus;
use super::message::{
    BusMessage, Carried, ConnectionState, MessageHandler, TransportError, TransportErrorKind,
};

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

/// How often the client PINGs the server. async-nats gives up on a connection after two
/// unanswered PINGs, so a black-holed connection (no reset, packets dropped) is noticed 2-3
/// intervals after its last traffic; async-nats's default of 60 s would leave callers on ack
/// timeouts for minutes. One tiny frame per connection every 2 s costs nothing measurable.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);

/// Pending messages per subscription before NATS counts a slow consumer (async-nats default).
pub const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// How to reach and authenticate with NATS. Built from `MICROBUS_NATS*` by the config module.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// One server URL, or several separated by commas (a cluster: any one will do).
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
    /// The short circuit (Microbus's, `MICROBUS_SHORT_CIRCUIT`): a request, ack or response
    /// whose subject a connector of these same options (clones included: one process's
    /// configuration) subscribes to is handed to it in memory, not through NATS. Multicasts
    /// still go through NATS, which reaches every subscriber. `None` sends everything
    /// through NATS.
    pub short_circuit: Option<InProcBus>,
}

impl NatsOptions {
    /// Options for `url`, with the short circuit on (Microbus's default).
    pub fn new(url: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            short_circuit: Some(InProcBus::short_circuit()),
            ..NatsOptions::default()
        }
    }

    /// Turn the short circuit on (a new one, shared by clones made after) or off.
    pub fn with_short_circuit(mut self, on: bool) -> NatsOptions {
        self.short_circuit = on.then(InProcBus::short_circuit);
        self
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
    short_circuit: Option<InProcBus>,
    state: watch::Receiver<ConnectionState>,
    reconnects: Arc<AtomicU64>,
    refusals: Arc<Refusals>,
}

/// What the server refused: NATS answers a publish or subscription outside the user's
/// permissions with an asynchronous `-ERR`, never on the operation itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Publish,
    Subscribe,
}

/// The subjects the server refused lately, so that a call that got no ack, or a start whose
/// subscriptions never took, can say why instead of "ack timeout".
#[derive(Default)]
struct Refusals {
    recent: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, Refused, String)>>,
}

/// How many refusals are remembered, and for how long: enough for the calls waiting on their
/// ack at the time (the ack timeout is 250 ms).
const REFUSALS_KEPT: usize = 256;
const REFUSAL_MEMORY: Duration = Duration::from_secs(10);

impl Refusals {
    /// Record the refusal an `-ERR` describes, e.g. `Permissions Violation for Publish to "a.b"`.
    fn record(&self, error: &str) -> bool {
        let lower = error.to_ascii_lowercase();
        let op = if lower.contains("permissions violation for publish") {
            Refused::Publish
        } else if lower.contains("permissions violation for subscription") {
            Refused::Subscribe
        } else {
            return false;
        };
        let subject = error.split('"').nth(1).unwrap_or_default().to_owned();
        let mut recent = self.recent.lock().expect("refusals lock");
        if recent.len() == REFUSALS_KEPT {
            recent.pop_front();
        }
        recent.push_back((std::time::Instant::now(), op, subject));
        true
    }

    fn find(&self, op: Refused, subject: Option<&str>) -> Option<String> {
        let recent = self.recent.lock().expect("refusals lock");
        recent
            .iter()
            .rev()
            .take_while(|(at, ..)| at.elapsed() < REFUSAL_MEMORY)
            .find(|(_, o, s)| *o == op && subject.is_none_or(|want| want == s))
            .map(|(_, _, s)| s.clone())
    }
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
        let refusals = Arc::new(Refusals::default());
        let mut options = ConnectOptions::new()
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            .ping_interval(PING_INTERVAL)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback({
                let reconnects = reconnects.clone();
                let refusals = refusals.clone();
                let url = opts.url.clone();
                move |event| {
                    let state_tx = state_tx.clone();
                    let reconnects = reconnects.clone();
                    let refusals = refusals.clone();
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
                            Event::ServerError(async_nats::ServerError::Other(e))
                                if refusals.record(&e) =>
                            {
                                tracing::warn!(%url, error = %e, "NATS refused an operation: check the user's permissions");
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
        // One URL or a comma-separated list (the nodes of a cluster), as nats.go accepts.
        let servers: Vec<&str> = opts
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let client = options.connect(servers.as_slice()).await.map_err(|e| {
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
            TransportError::caused_by(kind, format!("cannot connect to NATS at {}", opts.url), e)
        })?;
        Ok(NatsBus {
            client,
            short_circuit: opts.short_circuit.clone(),
            state: state_rx,
            reconnects,
            refusals,
        })
    }

    /// Publish to one subscriber (a request, an ack or a response): in memory when a
    /// connector on the short circuit subscribes to `subject` (one member of each queue
    /// group), else through NATS.
    pub async fn publish_to_one(
        &self,
        subject: Subject,
        payload: Bytes,
    ) -> Result<Carried, TransportError> {
        if let Some(local) = &self.short_circuit {
            if let Some(carried) = local.deliver_if_subscribed(&subject, &payload)? {
                return Ok(carried);
            }
        }
        self.publish(subject, payload).await?;
        Ok(Carried::ByNats)
    }

    /// The short circuit, when on.
    pub fn short_circuit(&self) -> Option<&InProcBus> {
        self.short_circuit.as_ref()
    }

    pub async fn publish(&self, subject: Subject, payload: Bytes) -> Result<(), TransportError> {
        if *self.state.borrow() != ConnectionState::Connected && !self.reconnects_soon().await {
            // async-nats would buffer the message until reconnect; a caller with ack-or-fail
            // semantics is better served by a quick, typed failure.
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
        // may never come (and hold shutdown with it). The timer is made only if it has to wait
        // (a timeout reads the clock as it is made: ~150 instructions a publish).
        let failed =
            |e| TransportError::caused_by(TransportErrorKind::Disconnected, "publish failed", e);
        let mut publish = std::pin::pin!(self.client.publish(subject, payload));
        if let std::task::Poll::Ready(sent) = futures::poll!(publish.as_mut()) {
            return sent.map_err(failed);
        }
        match tokio::time::timeout(PUBLISH_PATIENCE, publish).await {
            Ok(sent) => sent.map_err(failed),
            Err(_) => Err(TransportError::new(
                TransportErrorKind::Disconnected,
                "NATS did not take the message within 1 s",
            )),
        }
    }

    /// Wait up to [`RECONNECT_GRACE`] for the connection to come back.
    async fn reconnects_soon(&self) -> bool {
        let mut state = self.state.clone();
        let back = tokio::time::timeout(
            RECONNECT_GRACE,
            state.wait_for(|s| *s == ConnectionState::Connected),
        )
        .await;
        matches!(back, Ok(Ok(_)))
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
        result.map_err(|e| {
            TransportError::caused_by(TransportErrorKind::Rejected, "subscribe failed", e)
        })
    }

    /// Subscribe with `handler` called on the connection's task (see [`MessageHandler`]).
    pub async fn subscribe_with_handler(
        &self,
        subject: String,
        queue: Option<String>,
        handler: MessageHandler,
    ) -> Result<async_nats::HandlerSubscription, TransportError> {
        let handler = Box::new(move |m: async_nats::Message| {
            handler(BusMessage {
                subject: m.subject,
                payload: m.payload,
                acknowledged: false,
            })
        });
        self.client
            .subscribe_with_handler(subject, queue, handler)
            .await
            .map_err(|e| {
                TransportError::caused_by(TransportErrorKind::Rejected, "subscribe failed", e)
            })
    }

    /// Whether the server refused to let this connection publish to `subject` (or to
    /// subscribe to anything, with `None`) in the last seconds.
    pub fn refused(&self, op: Refused, subject: Option<&str>) -> Option<String> {
        self.refusals.find(op, subject)
    }

    /// A round trip through the server on `probe` (a subject this connection may publish and
    /// subscribe to): when the message comes back, the server has processed everything sent
    /// before it, subscriptions included. async-nats's `flush` only writes the socket.
    pub async fn round_trip(&self, probe: String) -> Result<(), TransportError> {
        use futures::StreamExt;
        let mut sub = self.subscribe(probe.clone(), None).await?;
        self.publish(Subject::from(probe.as_str()), Bytes::new())
            .await?;
        // A refused probe subscription never echoes: stop waiting once its refusal is in.
        let refused = async {
            while self.refused(Refused::Subscribe, Some(&probe)).is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let back = tokio::select! {
            back = tokio::time::timeout(ROUND_TRIP_PATIENCE, sub.next()) => back.ok().flatten().is_some(),
            _ = refused => false,
        };
        let _ = sub.unsubscribe().await;
        if back {
            return Ok(());
        }
        Err(TransportError::new(
            TransportErrorKind::Disconnected,
            format!(
                "NATS did not echo a message on {probe} within {} s",
                ROUND_TRIP_PATIENCE.as_secs()
            ),
        ))
    }

    pub async fn flush(&self) -> Result<(), TransportError> {
        self.client.flush().await.map_err(|e| {
            TransportError::caused_by(TransportErrorKind::Disconnected, "flush failed", e)
        })
    }

    pub fn max_payload(&self) -> usize {
        // The client keeps the negotiated limit in an atomic (updated on every INFO); `server_info`
        // would clone the whole INFO for one field.
        self.client.max_payload()
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

/// Longest a publish waits for a lost connection to come back before it fails: a cluster
/// failover to another node takes tens of milliseconds (tests/reliability.rs), and a request
/// that arrives meanwhile should ride it out; a server that is really gone still gets a quick
/// 503.
pub const RECONNECT_GRACE: Duration = Duration::from_millis(500);

/// Longest a publish may wait for room in the client's queue.
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(1);

/// Longest a round trip through the server may take at start.
pub const ROUND_TRIP_PATIENCE: Duration = Duration::from_secs(5);

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
