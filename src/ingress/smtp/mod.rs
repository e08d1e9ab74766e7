//! The SMTP ingress (`smtp.ingress.core`): mail in over SMTP, the `on-incoming-email` event out.
//!
//! ```text
//! client ──SMTP──▶ listener (:25, STARTTLS when smtpingress-<port>-cert.pem exists)
//!                    └─ mailin state machine ▸ DATA ▸ mail-parser ▸ multicast
//!                       POST https://smtp.ingress.core:417/on-incoming-email ──bus──▶ sinks
//! ```
//!
//! Delivery contract: the reply to the end of DATA is `250` only after at least one sink
//! answered the event without error (with `RequireSink`, the default); no sink, a sink error
//! or a sink that does not answer within `TimeBudget` is `451` and the sender retries. Delivery
//! is at least once: after a `451` caused by one of several sinks, the others see the retry too.

pub mod config;
pub mod email;
mod lines;
pub mod metrics;

use lines::{is_command, parse_mail_from, read_line, strip_rcpt_params, Line};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailin::{Action, SessionBuilder};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use config::SmtpConfig;
pub use email::Email;
use metrics::{reason, SmtpMetrics};

use crate::connector::BusConfig;
use crate::connector::{Connector, Service, StartError};
use crate::error::Error;
use crate::telemetry::names::*;
use crate::telemetry::trace::{self, SpanContext, SpanKind, SpanName, Status};

/// Longest command line accepted (RFC 5321 asks for 512; extensions make them longer).
pub const MAX_COMMAND_LINE: usize = 4096;

/// How long a TLS handshake may take before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Grace after the time budget for sessions to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("{0}")]
    Bus(#[from] StartError),
    #[error("cannot listen on SMTP port {port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("invalid TLS files for SMTP port {port}: {message}")]
    Tls { port: u16, message: String },
}

struct Shared {
    config: SmtpConfig,
    conn: Connector,
    metrics: SmtpMetrics,
    clients: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    tls: Option<TlsAcceptor>,
    /// The bound port (the configured one, or the free one port 0 picked).
    port: u16,
    stop: CancellationToken,
}

/// A running SMTP ingress.
pub struct SmtpIngress {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept_loop: JoinHandle<()>,
    sessions: TaskTracker,
}

impl SmtpIngress {
    /// Listen on the configured port, then join the bus as `smtp.ingress.core`. Listening
    /// comes first so that a port that cannot be bound (`:25` without privileges) fails before
    /// anything else happens.
    pub async fn start(config: SmtpConfig, bus: &BusConfig) -> Result<SmtpIngress, SmtpError> {
        let port = config.port;
        let tls = load_tls(&config.cert_dir, port)?;
        let listener = TcpListener::bind(SocketAddr::new(config.bind_ip, port))
            .await
            .map_err(|source| SmtpError::Listen { port, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SmtpError::Listen { port, source })?;
        let conn = Service::new(config::HOSTNAME).start(bus).await?;
        let shared = Arc::new(Shared {
            metrics: SmtpMetrics::register(conn.metrics()),
            clients: Arc::new(Semaphore::new(config.max_clients)),
            workers: Arc::new(Semaphore::new(config.workers)),
            tls,
            port: addr.port(),
            stop: CancellationToken::new(),
            config,
            conn,
        });
        tracing::info!(%addr, starttls = shared.tls.is_some(), "SMTP ingress listening");
        let sessions = TaskTracker::new();
        let accept_loop = tokio::spawn(accept_loop(listener, shared.clone(), sessions.clone()));
        Ok(SmtpIngress {
            shared,
            addr,
            accept_loop,
            sessions,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn connector(&self) -> &Connector {
        &self.shared.conn
    }

    /// Serve one SMTP session over `io` as if `peer` had connected; returns when it ends. The
    /// fuzzer drives sessions this way, without a socket (the client limit is not applied).
    pub async fn serve_stream<S>(&self, io: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        counted_session(&self.shared, Box::new(io), peer).await;
    }

    /// Stop accepting, close idle sessions (`421`), let deliveries in flight finish within
    /// their budget, then leave the bus.
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        self.accept_loop.abort();
        self.sessions.close();
        let patience = self.shared.config.time_budget + SHUTDOWN_GRACE;
        if tokio::time::timeout(patience, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("SMTP sessions still open after the shutdown grace; closing");
        }
        self.shared.conn.shutdown().await;
    }
}

/// One session, counted in the connection gauge and the session-duration histogram.
async fn counted_session(shared: &Arc<Shared>, io: Box<dyn Io>, peer: SocketAddr) {
    let started = Instant::now();
    shared.metrics.open_connections.inc();
    session(shared, io, peer).await;
    shared.metrics.open_connections.dec();
    shared
        .metrics
        .session_duration
        .observe(started.elapsed().as_secs_f64());
}

fn load_tls(dir: &Path, port: u16) -> Result<Option<TlsAcceptor>, SmtpError> {
    let tls = super::tls::server_config(dir, "smtpingress", port)
        .map_err(|message| SmtpError::Tls { port, message })?;
    Ok(tls.map(|tls| TlsAcceptor::from(Arc::new(tls))))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, sessions: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "SMTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = shared.clients.clone().try_acquire_owned() else {
            shared.metrics.error(reason::TOO_MANY_CLIENTS);
            tracing::warn!(%peer, max_clients = shared.config.max_clients, "SMTP client refused: too many clients (421)");
            let name = shared.config.server_name.clone();
            sessions.spawn(async move {
                let mut stream = stream;
                let line = format!("421 4.7.0 {name} Too many connections, try again later\r\n");
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    let _ = stream.write_all(line.as_bytes()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            });
            continue;
        };
        let shared = shared.clone();
        let log_span = tracing::error_span!(
            SMTP_LOG_SPAN,
            host = shared.conn.hostname(),
            id = shared.conn.id(),
            peer = %peer,
        );
        sessions.spawn(
            async move {
                let _permit = permit;
                counted_session(&shared, Box::new(stream), peer).await;
            }
            .instrument(log_span),
        );
    }
}

/// A client connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The message being received, shared with mailin's handler.
#[derive(Default)]
struct Txn {
    data: Vec<u8>,
    /// Bytes received, stored or not.
    size: usize,
    oversize: bool,
    bare_lf: bool,
    ended: bool,
    from: String,
    rcpt: Vec<String>,
}

struct MailHandler {
    txn: Arc<Mutex<Txn>>,
    max_size: Option<usize>,
}

impl mailin::Handler for MailHandler {
    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin::Response {
        let mut t = self.txn.lock().expect("txn lock");
        *t = Txn {
            from: from.to_owned(),
            rcpt: to.to_vec(),
            ..Txn::default()
        };
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut t = self.txn.lock().expect("txn lock");
        t.size += buf.len();
        if self.max_size.is_some_and(|max| t.size > max) {
            // Keep reading to the end of DATA (the connection stays usable), storing nothing.
            t.oversize = true;
            t.data = Vec::new();
        } else {
            t.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> mailin::Response {
        self.txn.lock().expect("txn lock").ended = true;
        mailin::response::OK
    }
}

/// What to write back for a finished message.
struct Outcome {
    reply: String,
}

async fn session(shared: &Arc<Shared>, io: Box<dyn Io>, peer: SocketAddr) {
    let config = &shared.config;
    let txn = Arc::new(Mutex::new(Txn::default()));
    let mut builder = SessionBuilder::new(config.server_name.clone());
    if shared.tls.is_some() {
        builder.enable_start_tls();
    }
    let handler = MailHandler {
        txn: txn.clone(),
        max_size: config.max_size,
    };
    let mut sm = builder.build(peer.ip(), handler);
    let mut reader = BufReader::new(io);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut line = Vec::with_capacity(1024);
    let mut in_data = false;
    let mut tls_active = false;
    out.extend_from_slice(format!("220 {} ESMTP busgate\r\n", config.server_name).as_bytes());
    let data_limit = config.max_size.map(|m| m + 1024).unwrap_or(usize::MAX);
    loop {
        // Pipelining: replies go out in one write once every buffered command is answered.
        if reader.buffer().is_empty() && !out.is_empty() {
            if reader.get_mut().write_all(&out).await.is_err()
                || reader.get_mut().flush().await.is_err()
            {
                return;
            }
            out.clear();
        }
        let limit = if in_data {
            data_limit
        } else {
            MAX_COMMAND_LINE
        };
        let read = tokio::select! {
            r = tokio::time::timeout(config.idle_timeout, read_line(&mut reader, limit, &mut line)) => r,
            _ = shared.stop.cancelled(), if !in_data => {
                shared.metrics.error(reason::SHUTTING_DOWN);
                let _ = reader.get_mut().write_all(format!("421 4.3.2 {} Service shutting down, closing connection\r\n", config.server_name).as_bytes()).await;
                return;
            }
        };
        let read = match read {
            Err(_) => {
                shared.metrics.error(reason::IDLE_TIMEOUT);
                tracing::info!(%peer, in_data, timeout = ?config.idle_timeout, "SMTP client idle; closing (421)");
                let _ = reader.get_mut().write_all(&out).await;
                let _ = reader
                    .get_mut()
                    .write_all(
                        format!(
                            "421 4.4.2 {} Idle timeout, closing connection\r\n",
                            config.server_name
                        )
                        .as_bytes(),
                    )
                    .await;
                return;
            }
            Ok(Err(_)) => return,
            Ok(Ok(r)) => r,
        };
        match read {
            Line::Eof => {
                // Answers to what the client pipelined before it closed (a partial last line
                // keeps them buffered) still go out: one may say its mail was delivered.
                if !out.is_empty() {
                    let _ = reader.get_mut().write_all(&out).await;
                    let _ = reader.get_mut().flush().await;
                }
                if in_data {
                    shared.metrics.error(reason::DISCONNECTED_IN_DATA);
                    tracing::warn!(%peer, "SMTP client disconnected in the middle of DATA; message discarded");
                }
                return;
            }
            Line::TooLong if in_data => {
                // Counted toward the size; the message is refused at its end.
                let mut t = txn.lock().expect("txn lock");
                t.size += limit;
                t.oversize = true;
                t.data = Vec::new();
                continue;
            }
            Line::TooLong => {
                shared.metrics.error(reason::LINE_TOO_LONG);
                tracing::info!(%peer, "SMTP command line too long (500)");
                out.extend_from_slice(b"500 5.5.2 Line too long\r\n");
                continue;
            }
            Line::Whole => {}
        }
        let bare_lf = !line.ends_with(b"\r\n");
        if in_data {
            if bare_lf {
                // Many clients (smtplib given bytes, scripts) end lines with a bare LF: they are
                // taken as line endings and stored as CRLF. Only CRLF.CRLF ends DATA (RFC 5321
                // §4.1.1.4), so a ".<LF>" cannot end a message early (SMTP smuggling): it is a
                // line holding a dot.
                txn.lock().expect("txn lock").bare_lf = true;
                line.pop();
                if line == b"." {
                    line.push(b'.');
                }
                line.extend_from_slice(b"\r\n");
            }
            let res = sm.process(&line);
            let ended = std::mem::take(&mut txn.lock().expect("txn lock").ended);
            if ended {
                in_data = false;
                let t = std::mem::take(&mut *txn.lock().expect("txn lock"));
                if reader.get_mut().write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                let outcome = finish_message(shared, t, peer).await;
                out.extend_from_slice(outcome.reply.as_bytes());
            } else if res.code != 0 {
                // mailin refused the data (it does not, with this handler); pass it on.
                let _ = res.write_to(&mut out);
            }
            continue;
        }
        if bare_lf {
            shared.metrics.error(reason::BARE_LF);
            tracing::info!(%peer, "SMTP command with a bare LF line ending (500)");
            out.extend_from_slice(b"500 5.5.2 Bare LF line endings are not allowed; use CRLF\r\n");
            continue;
        }
        // mailin takes no MAIL/RCPT parameters and no empty reverse path: check SIZE here and
        // hand it the plain command.
        let mut command = line.clone();
        if let Some((path, params)) = parse_mail_from(&line) {
            let declared = params
                .iter()
                .find(|(k, _)| k == "SIZE")
                .and_then(|(_, v)| v.parse::<usize>().ok());
            if let (Some(size), Some(max)) = (declared, config.max_size) {
                if size > max {
                    shared.metrics.rejected(reason::TOO_LARGE);
                    tracing::info!(%peer, size, max, "SMTP message refused: declared SIZE over MaxSize (552)");
                    out.extend_from_slice(
                        format!("552 5.3.4 Message size exceeds fixed maximum message size ({max} bytes)\r\n").as_bytes(),
                    );
                    continue;
                }
            }
            let body = params
                .iter()
                .find(|(k, _)| k == "BODY")
                .map(|(_, v)| format!(" BODY={v}"))
                .unwrap_or_default();
            let path = if path.is_empty() {
                "MAILER-DAEMON".to_owned()
            } else {
                path
            };
            command = format!("MAIL FROM:<{path}>{body}\r\n").into_bytes();
        } else if let Some(rcpt) = strip_rcpt_params(&line) {
            command = rcpt;
        }
        let res = sm.process(&command);
        if res.code == 250 && is_command(&line, "EHLO") {
            let domain = String::from_utf8_lossy(&line[4..]).trim().to_owned();
            let mut ext = vec![
                format!("{} greets {domain}", config.server_name),
                "PIPELINING".to_owned(),
                "8BITMIME".to_owned(),
            ];
            if let Some(max) = config.max_size {
                ext.push(format!("SIZE {max}"));
            }
            if shared.tls.is_some() && !tls_active {
                ext.push("STARTTLS".to_owned());
            }
            let last = ext.len() - 1;
            for (i, e) in ext.iter().enumerate() {
                let sep = if i == last { ' ' } else { '-' };
                out.extend_from_slice(format!("250{sep}{e}\r\n").as_bytes());
            }
            continue;
        }
        let _ = res.write_to(&mut out);
        match res.code {
            354 => in_data = true,
            500 => {
                shared.metrics.error(reason::SYNTAX);
                tracing::info!(%peer, command = %String::from_utf8_lossy(&line).trim_end(), "SMTP syntax error (500)");
            }
            502 | 501 => {
                shared.metrics.error(reason::SYNTAX);
                tracing::info!(%peer, code = res.code, "SMTP command with missing or bad parameters");
            }
            503 => {
                shared.metrics.error(reason::BAD_SEQUENCE);
                tracing::info!(%peer, command = %String::from_utf8_lossy(&line).trim_end(), "SMTP bad sequence of commands (503)");
            }
            c if c >= 500 => {
                shared.metrics.error(reason::REFUSED);
                tracing::info!(%peer, code = c, "SMTP command refused");
            }
            _ => {}
        }
        match res.action {
            Action::Close => {
                let _ = reader.get_mut().write_all(&out).await;
                let _ = reader.get_mut().shutdown().await;
                return;
            }
            Action::UpgradeTls => {
                let Some(acceptor) = shared.tls.clone() else {
                    return;
                };
                if reader.get_mut().write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                // Whatever the client sent after STARTTLS is dropped (RFC 3207 §4.2).
                let io = reader.into_inner();
                let tls =
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(s)) => s,
                        _ => {
                            shared.metrics.error(reason::TLS);
                            tracing::info!(%peer, "SMTP STARTTLS handshake failed");
                            return;
                        }
                    };
                reader = BufReader::new(Box::new(tls) as Box<dyn Io>);
                sm.tls_active();
                tls_active = true;
            }
            Action::Reply | Action::NoReply => {}
        }
    }
}

/// Parse and deliver one message; the reply to the end of its DATA.
async fn finish_message(shared: &Arc<Shared>, t: Txn, peer: SocketAddr) -> Outcome {
    let m = &shared.metrics;
    m.received.inc();
    m.message_bytes.observe(t.size as f64);
    let name = &shared.config.server_name;
    if t.oversize {
        m.rejected(reason::TOO_LARGE);
        let max = shared.config.max_size.unwrap_or(0);
        tracing::info!(%peer, size = t.size, max, "SMTP message refused: over MaxSize (552)");
        return Outcome {
            reply: format!(
                "552 5.3.4 Message size exceeds fixed maximum message size ({max} bytes)\r\n"
            ),
        };
    }
    if t.bare_lf {
        tracing::debug!(%peer, "SMTP message with bare LF line endings (stored as CRLF)");
    }
    let Ok(_worker) = shared.workers.clone().acquire_owned().await else {
        return Outcome {
            reply: format!("421 4.3.2 {name} Service shutting down\r\n"),
        };
    };
    let data = t.data;
    let parsed = tokio::task::spawn_blocking(move || {
        Email::parse(&data).map(|e| {
            let body = e.to_event_body();
            (e, body)
        })
    })
    .await;
    let (mail, body) = match parsed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            m.rejected(reason::UNPARSEABLE);
            tracing::info!(%peer, error = %e, "SMTP message refused: cannot parse it (554)");
            return Outcome {
                reply: format!("554 5.6.0 Error: {e}\r\n"),
            };
        }
        Err(e) => {
            m.rejected(reason::UNPARSEABLE);
            tracing::error!(%peer, error = %e, "SMTP message parser panicked (554)");
            return Outcome {
                reply: "554 5.6.0 Error: the message cannot be parsed\r\n".to_owned(),
            };
        }
    };
    tracing::info!(
        messageID = %mail.headers.message_id,
        date = %mail.headers.date,
        from = %t.from,
        recipients = t.rcpt.len(),
        "Received email"
    );
    deliver(shared, &mail, body, peer).await
}

async fn deliver(
    shared: &Arc<Shared>,
    mail: &Email,
    body: bytes::Bytes,
    peer: SocketAddr,
) -> Outcome {
    let m = &shared.metrics;
    let conn = &shared.conn;
    let tracer = conn.tracer();
    let subject = mail.headers.subject.clone();
    let from = mail
        .headers
        .from
        .first()
        .map(|a| a.address.clone())
        .unwrap_or_default();
    let mut span = tracer.start(
        &SpanContext::NONE,
        SpanKind::Server,
        SpanName::Server {
            port: shared.port,
            path: "",
        },
        |a| {
            a.int(A_SERVER_PORT, shared.port as i64);
            a.str(A_CLIENT_ADDRESS, &ip_text(peer.ip()));
            a.int(A_CLIENT_PORT, peer.port() as i64);
            a.str(A_EMAIL_SUBJECT, &subject);
            a.str(A_EMAIL_FROM, &from);
            a.str(A_EMAIL_MESSAGE_ID, &mail.headers.message_id);
            a.int(A_MESSAGING_BODY_SIZE, body.len() as i64);
        },
    );
    let ctx = conn
        .ctx()
        .with_span_context(span.context().clone())
        .with_timeout(shared.config.time_budget);
    let results = ctx
        .fire_event(email::ON_INCOMING_EMAIL, body, Some("application/json"))
        .await
        .unwrap_or_else(|e| vec![Err(e)]);
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let errors: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    m.sinks_reached.observe(ok as f64);
    let trace_id = trace::trace_id(span.context());
    let (why, failure) = if let Some(e) = errors.iter().find(|e| e.status().as_u16() == 408) {
        (reason::TIMEOUT, Some((*e).clone()))
    } else if let Some(e) = errors.first() {
        (reason::SINK_ERROR, Some((*e).clone()))
    } else if ok == 0 && shared.config.require_sink {
        (
            reason::NO_SINK,
            Some(Error::unavailable(
                "no sink took the on-incoming-email event",
            )),
        )
    } else {
        ("", None)
    };
    let outcome = match failure {
        None => {
            m.accepted.inc();
            span.set_status(Status::Ok);
            tracing::debug!(sinks = ok, trace_id = %trace_id, "email delivered");
            Outcome {
                reply: format!("250 2.0.0 OK: delivered to {ok} sink(s), trace {trace_id}\r\n"),
            }
        }
        Some(e) => {
            m.deferred(why);
            span.record_error(&e);
            crate::connector::force_trace(conn, span.context());
            tracing::warn!(
                reason = why,
                sinks_ok = ok,
                sinks_failed = errors.len(),
                error = %e.message(),
                trace_id = %trace_id,
                "email deferred (451): the sender will retry"
            );
            let text = match why {
                reason::NO_SINK => "no sink took the message".to_owned(),
                reason::TIMEOUT => "a sink did not answer in time".to_owned(),
                _ => format!("a sink failed: {}", e.message().replace(['\r', '\n'], " ")),
            };
            Outcome {
                reply: format!("451 4.3.0 Try again later: {text} (trace {trace_id})\r\n"),
            }
        }
    };
    tracer.end(span);
    outcome
}

fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(|v4| v4.to_string())
            .unwrap_or_else(|| v6.to_string()),
        v4 => v4.to_string(),
    }
}
