//! Serving: subscriptions per endpoint, ack-or-fail, handler execution, responses.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::time::Instant;

use super::call;
use super::control;
use super::defaults::NETWORK_HOP;
use super::fragment::{split_body, DefragOutcome, DEFRAG_SWEEP_INTERVAL};
use super::inbound::Inbound;
use super::inbox::ReplyTo;
use super::instance::{force_trace, Connector, Ctx, Endpoint, Inner, StartError};
use super::route::Queue;
use crate::error::Error;
use crate::telemetry::handler_spans;
use crate::telemetry::log_scope::{RequestLog, ScopeKind};
use crate::telemetry::metrics::Outcome;
use crate::telemetry::names::*;
use crate::telemetry::trace::{self, SpanKind, SpanName, Status};
use crate::transport::{
    Bus, BusMessage, EndpointSubscription, MessageHandler, Refused, Subject, TransportError,
    TransportErrorKind,
};
use crate::wire::codec::Headers;
use crate::wire::frame::{self, Fragment, Frame, OpCode};
use crate::wire::subject::is_valid_instance_id;
use crate::wire::BusUrl;
use crate::wire::{self, codec, is_valid_hostname};

/// Longest message id accepted from a peer (Microbus uses 8 characters).
const MAX_MSG_ID_LEN: usize = 64;

impl Connector {
    /// Subscribe the inbox, the control plane and every endpoint; then mark the instance started.
    pub(super) async fn activate(&self, endpoints: Vec<Endpoint>) -> Result<(), StartError> {
        let inner = &self.inner;
        let inbox_subject = wire::response_subject(&inner.plane, &inner.hostname, &inner.id)
            .map_err(|source| StartError::InvalidRoute {
                route: "inbox".into(),
                source,
            })?;
        // Queue = own id, as Microbus does, so a second subscriber with the same id never
        // receives a duplicate.
        let probe = inbox_subject.clone();
        let inbox = inner
            .bus
            .subscribe_with_handler(
                inbox_subject,
                Some(inner.id.clone()),
                call::inbox_handler(&self.inner),
            )
            .await?;
        *inner.inbox.lock().expect("inbox lock") = Some(inbox);
        tokio::spawn(sweep_loop(self.inner.clone()));

        let mut all = control::endpoints();
        all.extend(endpoints);
        for ep in all {
            self.subscribe_endpoint(Arc::new(ep)).await?;
        }
        // After a round trip the server has registered every subscription (or refused some).
        let echoed = inner.bus.round_trip(format!("{probe}.ready")).await;
        if let Some(subject) = refused_subscription(&inner.bus).await {
            return Err(StartError::Transport(TransportError::new(
                TransportErrorKind::Rejected,
                format!(
                    "NATS refused the subscription to {subject}: permissions violation \
                     (the user's subscribe permissions must allow this service's subjects)"
                ),
            )));
        }
        echoed?;
        inner.started.store(true, Ordering::Release);
        tracing::info!(
            host = %inner.hostname, id = %inner.id, ver = inner.version, plane = %inner.plane,
            "started"
        );
        Ok(())
    }

    async fn subscribe_endpoint(&self, ep: Arc<Endpoint>) -> Result<(), StartError> {
        let inner = &self.inner;
        let host = ep
            .route
            .host
            .clone()
            .unwrap_or_else(|| inner.hostname.clone());
        let queue = match &ep.queue {
            Queue::Default => Some(inner.hostname.clone()),
            Queue::None => None,
            Queue::Named(q) => Some(q.clone()),
        };
        // The queue an ack reports: the group, or `<id>.<host>` for a no-queue subscription.
        let queue_label: Arc<str> = queue
            .clone()
            .unwrap_or_else(|| format!("{}.{}", inner.id, inner.hostname))
            .into();
        let mut hosts = vec![host.clone(), format!("{}.{host}", inner.id)];
        if let Some(locality) = &inner.locality {
            let labels: Vec<&str> = locality.split('.').collect();
            for n in 1..=labels.len() {
                hosts.push(format!("{}.{host}", labels[labels.len() - n..].join(".")));
            }
        }
        for h in hosts {
            let subject = wire::subscription_subject(
                &inner.plane,
                ep.route.port,
                &h,
                &ep.method,
                &ep.route.path,
            )
            .map_err(|source| StartError::InvalidRoute {
                route: ep.route.display(),
                source,
            })?;
            let local = endpoint_handler(&self.inner, &ep, &queue_label);
            let sub = inner
                .bus
                .subscribe_endpoint(subject, queue.clone(), local)
                .await?;
            inner.tasks.spawn(subscription_loop(
                self.inner.clone(),
                ep.clone(),
                queue_label.clone(),
                sub,
            ));
        }
        Ok(())
    }
}

/// An endpoint's requests from the short circuit, read and handed to a task of their own by
/// their publisher, in its task. Through the subscription's task each cost a channel and a
/// wake-up of that task, and the request moved to whichever worker that task ran on; from the
/// publisher, 7-9% more requests a second for 7% less CPU each (BENCHMARKS.md, thirteenth
/// session). Polling the handler right there instead of spawning it made fewer requests a
/// second: the whole call then ran on its connection's worker. The handler holds the instance
/// weakly: the transport keeps the handler, and the instance keeps the transport.
fn endpoint_handler(
    inner: &Arc<Inner>,
    ep: &Arc<Endpoint>,
    queue_label: &Arc<str>,
) -> MessageHandler {
    let inner = Arc::downgrade(inner);
    let (ep, queue_label) = (ep.clone(), queue_label.clone());
    Arc::new(move |msg: BusMessage| {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let (ep, queue_label) = (ep.clone(), queue_label.clone());
        let tasks = inner.tasks.clone();
        // Boxed before the future is made, as in `dispatch`.
        let slot = Box::new_uninit();
        let request = Box::into_pin(Box::write(slot, async move {
            if let Some(accepted) = accept_request(&inner, &queue_label, msg).await {
                serve_request(inner, ep, accepted).await;
            }
        }));
        tasks.spawn(request);
    })
}

async fn subscription_loop(
    inner: Arc<Inner>,
    ep: Arc<Endpoint>,
    queue_label: Arc<str>,
    mut sub: EndpointSubscription,
) {
    // One wait for the stop, registered once: a new one per message registered with the
    // token and left it again (two locks a request).
    let stopped = inner.stop_serving.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            msg = sub.next() => match msg {
                Some(msg) => dispatch(&inner, &ep, &queue_label, msg).await,
                None => return,
            },
        }
    }
    // Unsubscribe at the server, but keep handling what was already on its way.
    sub.drain().await;
    while let Some(msg) = sub.next().await {
        dispatch(&inner, &ep, &queue_label, msg).await;
    }
}

/// The inbox subject of the last caller served on this thread: requests mostly come from the
/// same few callers, and the subject cost ~1,000 instructions and two allocations a request to
/// build and hand to the client. Per thread, as requests are read on any worker.
#[derive(Default)]
struct LastInbox {
    plane: String,
    from_host: String,
    from_id: String,
    subject: Option<Subject>,
}

thread_local! {
    static LAST_INBOX: std::cell::RefCell<LastInbox> = std::cell::RefCell::default();
}

fn inbox_of(plane: &str, from_host: &str, from_id: &str) -> Option<Subject> {
    LAST_INBOX.with_borrow_mut(|last| {
        if let Some(subject) = &last.subject {
            if last.from_id == from_id && last.from_host == from_host && last.plane == plane {
                return Some(subject.clone());
            }
        }
        let subject = Subject::from(wire::response_subject(plane, from_host, from_id).ok()?);
        for (kept, now) in [
            (&mut last.plane, plane),
            (&mut last.from_host, from_host),
            (&mut last.from_id, from_id),
        ] {
            kept.clear();
            kept.push_str(now);
        }
        last.subject = Some(subject.clone());
        Some(subject)
    })
}

/// Ack right here, in arrival order and ahead of any handler work, so that a busy instance
/// still acknowledges within the caller's ack timeout; then run the handler in its own task.
async fn dispatch(inner: &Arc<Inner>, ep: &Arc<Endpoint>, queue_label: &Arc<str>, msg: BusMessage) {
    let accepted = accept_request(inner, queue_label, msg).await;
    if let Some(accepted) = accepted {
        // Boxed: the task then holds a pointer, not the ~2.7 KB future, which tokio's spawn
        // and task cell otherwise copy several times (~1,500 instructions per request). The
        // box is allocated before the future is made, so that only its captures are written,
        // straight into it: `Box::pin` made it on the stack and copied it whole.
        let slot = Box::new_uninit();
        let request = Box::into_pin(Box::write(
            slot,
            serve_request(inner.clone(), ep.clone(), accepted),
        ));
        inner.tasks.spawn(request);
    }
}

/// A subscription the server refused. Its `-ERR` came before the round trip's echo, but is
/// recorded on another task: give that a moment.
async fn refused_subscription(bus: &Bus) -> Option<String> {
    for _ in 0..5 {
        if let Some(subject) = bus.refused(Refused::Subscribe, None) {
            return Some(subject);
        }
        if !matches!(bus, Bus::Nats(_)) {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    None
}

async fn sweep_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(DEFRAG_SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = inner.stop_inbox.cancelled() => return,
            _ = tick.tick() => {
                for (key, reply) in inner.request_defrag.sweep() {
                    tracing::warn!(host = %inner.hostname, key, "defrag timeout: request fragments stopped arriving");
                    // The caller would otherwise wait out its whole budget for nothing.
                    respond(&inner, &reply, Err(Error::defrag_timeout())).await;
                }
                call::fail_stale_responses(&inner);
            }
        }
    }
}

/// A request that was parsed, validated and acknowledged.
struct Accepted {
    reply: ReplyTo,
    req: Request<Bytes>,
    /// What the handler's context keeps of it.
    inbound: Inbound,
}

async fn accept_request(
    inner: &Inner,
    queue_label: &Arc<str>,
    msg: BusMessage,
) -> Option<Accepted> {
    let payload = msg.payload;
    let message = payload.clone();
    let req = match codec::decode_request(payload) {
        Ok(req) => req,
        Err(e) => {
            tracing::warn!(host = %inner.hostname, error = %e, "dropping malformed request");
            return None;
        }
    };
    let f = Frame(req.headers());
    let (Some(msg_id), Some(from_host), Some(from_id)) = (f.msg_id(), f.from_host(), f.from_id())
    else {
        tracing::warn!(host = %inner.hostname, "dropping request without Msg-Id, From-Host or From-Id");
        return None;
    };
    // The return address becomes a subject: it must not be able to wildcard or split it.
    if !is_valid_hostname(from_host)
        || !is_valid_instance_id(from_id)
        || msg_id.len() > MAX_MSG_ID_LEN
    {
        tracing::warn!(host = %inner.hostname, "dropping request with an invalid return address");
        return None;
    }
    let reply = ReplyTo {
        inbox: inbox_of(&inner.plane, from_host, from_id)?,
        msg_id: msg_id.to_owned(),
        queue: queue_label.clone(),
    };
    let fragment = f.fragment().filter(|fr| fr.total > 1);
    // Reassemble inline: fragment 1 must be registered before its ack lets the caller send
    // the others, which arrive on another subscription.
    let req = match fragment {
        None => {
            let inbound = Inbound::message(message, &req);
            Some((req, inbound))
        }
        Some(fr) => match inner
            .request_defrag
            .add(format!("{from_id}|{msg_id}"), fr, req, || reply.clone())
        {
            DefragOutcome::Complete(req) => {
                let headers = req.headers().clone();
                Some((req, Inbound::Headers(headers)))
            }
            DefragOutcome::Pending => None,
            DefragOutcome::Orphan => {
                // Its reassembly was dropped, and its caller told so then.
                tracing::debug!(host = %inner.hostname, msg_id = %reply.msg_id, "dropping a fragment of a dropped reassembly");
                return None;
            }
            DefragOutcome::Rejected(why) => {
                tracing::warn!(host = %inner.hostname, why, "rejecting fragmented request");
                respond(inner, &reply, Err(Error::bad_request(why))).await;
                return None;
            }
        },
    };
    // A whole request handed over in memory was acknowledged by its delivery (see
    // `Bus::subscribe_endpoint`); a first fragment's ack names this instance for the rest.
    if fragment.is_some_and(|fr| fr.index == 1) {
        publish_ack(inner, &reply, StatusCode::CONTINUE).await;
    } else if fragment.is_none() && !msg.acknowledged {
        publish_ack(inner, &reply, StatusCode::ACCEPTED).await;
    }
    req.map(|(req, inbound)| Accepted {
        reply,
        req,
        inbound,
    })
}

async fn serve_request(inner: Arc<Inner>, ep: Arc<Endpoint>, accepted: Accepted) {
    let Accepted {
        reply,
        req,
        inbound,
    } = accepted;
    let f = Frame(req.headers());
    let budget = f.time_budget_ms().map(std::time::Duration::from_millis);
    if budget.is_some_and(|b| b <= NETWORK_HOP) {
        // Too little time left to do anything useful; tell the caller instead of going silent.
        respond(&inner, &reply, Err(Error::timeout())).await;
        return;
    }
    let started = std::time::Instant::now();
    let deadline = budget.map(|b| Instant::from_std(started) + b - NETWORK_HOP);
    let port = BusUrl::port_of(req.uri()).unwrap_or(ep.route.port);
    // A standard method is copied as its tag, not as a new `String`.
    let method = req.method().clone();
    let mut span = inner.tracer.start(
        &trace::extract(req.headers()),
        SpanKind::Server,
        SpanName::Server {
            port,
            path: &ep.route.path,
        },
        |a| {
            // The service's own name is the span's resource (`service.name`).
            a.str(A_HTTP_METHOD, method.as_str());
            a.str(A_HTTP_ROUTE, &ep.route.path);
            a.str(A_URL_PATH, req.uri().path());
            a.int(A_SERVER_PORT, port as i64);
            a.str(A_MESSAGING_SYSTEM, NATS);
            a.str(A_MESSAGING_OPERATION, "process");
            a.str(A_MESSAGING_MESSAGE_ID, &reply.msg_id);
            a.str(A_FROM_HOST, f.from_host().unwrap_or_default());
            a.str(A_FROM_ID, f.from_id().unwrap_or_default());
            a.int(A_CALL_DEPTH, f.call_depth() as i64);
        },
    );
    // Every log line of the handler carries the service, the instance and the trace.
    let log = RequestLog::open(
        ScopeKind::Service,
        &inner.log_owner,
        span.context().trace_id(),
    );
    let conn = Connector {
        inner: inner.clone(),
    };
    let ctx = Ctx {
        conn: conn.clone(),
        frame: Some(Arc::new(inbound)),
        deadline,
        depth: f.call_depth(),
        otel: span.context().clone(),
        kept: Headers::All,
    };
    let handled = log.scope(run_handler(&inner, &ep, ctx, req, deadline));
    // Spans the handler opens with `tracing` become children of this hop (exported with it).
    let result = if span.is_recording() && handler_spans::installed() {
        let cx = handler_spans::handler_context(&inner.tracer, span.context());
        opentelemetry::context::FutureExt::with_context(handled, cx).await
    } else {
        handled.await
    };
    let (code, body) = match &result {
        Ok(res) => (res.status().as_u16(), res.body().len()),
        Err(e) => (e.status().as_u16(), 0),
    };
    span.set_int(A_HTTP_STATUS, code as i64);
    match &result {
        Ok(_) => span.set_status(Status::Ok),
        Err(e) => {
            span.record_error(e);
            force_trace(&conn, span.context());
            log.in_scope(|| {
                if e.status().is_server_error() {
                    tracing::error!(route = %ep.route.display(), status = code, error = %e, "Handling request");
                } else {
                    tracing::info!(route = %ep.route.display(), status = code, error = %e, "Handling request");
                }
            });
        }
    }
    inner.tracer.end(span);
    inner.metrics.observe_server(
        Arc::as_ptr(&ep) as usize,
        || {
            format!(
                "{}:{port}{}",
                ep.route.host.as_deref().unwrap_or(&inner.hostname),
                ep.route.path
            )
        },
        port,
        method.as_str(),
        Outcome {
            code,
            failed: result.is_err(),
            elapsed: started.elapsed(),
        },
        body,
    );
    respond(&inner, &reply, result).await;
}

async fn run_handler(
    inner: &Inner,
    ep: &Endpoint,
    ctx: Ctx,
    req: Request<Bytes>,
    deadline: Option<Instant>,
) -> Result<Response<Bytes>, Error> {
    // Building the future may panic as well as polling it.
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| ep.handler.call(ctx, req))) {
        Ok(fut) => fut,
        Err(panic) => return Err(panic_error(panic)),
    };
    let guarded = AssertUnwindSafe(fut).catch_unwind();
    let expiry = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    // The handler first: one that finishes in its first turn (most do) then never registers
    // the deadline's timer nor a wait for the shutdown.
    tokio::select! {
        biased;
        r = guarded => r.unwrap_or_else(|panic| Err(panic_error(panic))),
        _ = expiry => Err(Error::timeout()),
        _ = inner.lifetime.cancelled() => Err(Error::unavailable("service is shutting down")),
    }
}

fn panic_error(panic: Box<dyn std::any::Any + Send>) -> Error {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    Error::panic(format!("handler panicked: {msg}"))
}

/// A reply's frame as (lower-case name, value) pairs in the encoder's order, written into the
/// payload without entering a header map: `From-Host`, `-Id`, `-Version` (not on acks),
/// `Locality` when there is one, `Msg-Id`, `Op-Code`, `Queue`.
struct ReplyFrame<'a> {
    pairs: [(&'static str, &'a [u8]); 7],
    len: usize,
}

impl<'a> ReplyFrame<'a> {
    fn new(inner: &'a Inner, reply: &'a ReplyTo, op: OpCode) -> ReplyFrame<'a> {
        let own = &inner.own_frame;
        let version = if op == OpCode::Ack {
            None
        } else {
            header_bytes(&own.from_version)
        };
        let all = [
            (frame::FROM_HOST, header_bytes(&own.from_host)),
            (frame::FROM_ID, header_bytes(&own.from_id)),
            (frame::FROM_VERSION, version),
            (frame::LOCALITY, header_bytes(&own.locality)),
            (frame::MSG_ID, Some(reply.msg_id.as_bytes())),
            (frame::OP_CODE, Some(op.as_str().as_bytes())),
            (frame::QUEUE, Some(reply.queue.as_bytes())),
        ];
        let mut out = ReplyFrame {
            pairs: [("", &[]); 7],
            len: 0,
        };
        for (name, value) in all {
            if let Some(value) = value {
                out.pairs[out.len] = (name, value);
                out.len += 1;
            }
        }
        out
    }

    fn pairs(&self) -> &[(&'static str, &'a [u8])] {
        &self.pairs[..self.len]
    }
}

async fn publish_ack(inner: &Inner, reply: &ReplyTo, status: StatusCode) {
    let payload =
        codec::encode_ack_frame(status, ReplyFrame::new(inner, reply, OpCode::Ack).pairs());
    if let Err(e) = inner.bus.publish_to_one(reply.inbox.clone(), payload).await {
        tracing::warn!(host = %inner.hostname, error = %e, "cannot publish ack");
    }
}

fn header_bytes(value: &Option<HeaderValue>) -> Option<&[u8]> {
    value.as_ref().map(HeaderValue::as_bytes)
}

async fn respond(inner: &Inner, reply: &ReplyTo, result: Result<Response<Bytes>, Error>) {
    let (mut res, op) = match result {
        Ok(mut res) => {
            strip_frame_headers(res.headers_mut());
            (res, OpCode::Res)
        }
        Err(e) => (e.to_err_response(), OpCode::Err),
    };
    let own = ReplyFrame::new(inner, reply, op);
    let parts = split_body(res.body(), inner.max_fragment);
    let total = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        if total > 1 {
            let fr = Fragment {
                index: i + 1,
                total,
            };
            frame::set(res.headers_mut(), frame::names::FRAGMENT, &fr.render());
        }
        *res.body_mut() = part;
        let payload = codec::encode_response_with_frame(&res, own.pairs());
        if let Err(e) = inner.bus.publish_to_one(reply.inbox.clone(), payload).await {
            tracing::warn!(host = %inner.hostname, error = %e, "cannot publish response");
            return;
        }
    }
}

/// A handler must not forge the frame headers that route its own response.
fn strip_frame_headers(headers: &mut HeaderMap) {
    use frame::*;
    frame::remove_headers(headers, |name| {
        matches!(
            name.as_str(),
            MSG_ID | FROM_HOST | FROM_ID | FROM_VERSION | QUEUE | OP_CODE | FRAGMENT | LOCALITY
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_inbox_is_the_last_callers_on_its_plane() {
        let subject = |plane, host, id| inbox_of(plane, host, id).map(|s| s.to_string());
        let first = subject("p1", "caller.example", "abc");
        assert_eq!(first.as_deref(), Some("p1.r.example.caller.abc"));
        // Kept, then replaced by another caller, another instance and another plane.
        assert_eq!(subject("p1", "caller.example", "abc"), first);
        assert_eq!(
            subject("p1", "other.example", "abc").as_deref(),
            Some("p1.r.example.other.abc")
        );
        assert_eq!(
            subject("p1", "other.example", "xyz").as_deref(),
            Some("p1.r.example.other.xyz")
        );
        assert_eq!(
            subject("p2", "other.example", "xyz").as_deref(),
            Some("p2.r.example.other.xyz")
        );
        // A return address that is no subject is none, and the kept one stays right.
        assert_eq!(subject("p2", "bad host", "xyz"), None);
        assert_eq!(
            subject("p2", "other.example", "xyz").as_deref(),
            Some("p2.r.example.other.xyz")
        );
    }
}
