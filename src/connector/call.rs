//! Calling: unicast with ack-or-fail, multicast with the ack window, and the response inbox.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::defaults::*;
use super::fragment::{split_body, DefragOutcome};
use super::ids::new_msg_id;
use super::inbox::{Delivery, Place};
use super::instance::{Ctx, Inner};
use crate::error::{Error, ErrorKind};
use crate::telemetry::metrics::Outcome;
use crate::telemetry::names::*;
use crate::telemetry::trace::{self, Span, SpanKind, SpanName, Status};
use crate::transport::{
    BusMessage, Carried, MessageHandler, Refused, Subject, TransportError, TransportErrorKind,
};
use crate::wire::codec::Headers;
use crate::wire::frame::{self, Fragment, OpCode};
use crate::wire::reply::{decode_reply, Reply};
use crate::wire::subject::is_valid_instance_id;
use crate::wire::{self, codec, BusUrl, WireError};

impl Ctx {
    /// Unicast: exactly one responder answers; ack-or-fail.
    pub async fn request(&self, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
        unicast(self, req).await
    }

    /// Multicast: every queue group (and every no-queue replica) answers; returns one result
    /// per responder. Nobody answering is an empty list, not an error.
    pub async fn multicast(&self, req: Request<Bytes>) -> Vec<Result<Response<Bytes>, Error>> {
        multicast(self, req).await
    }
}

/// Removes the waiter when the call ends, however it ends.
struct Waiter<'a> {
    inner: &'a Inner,
    msg_id: String,
    place: Place,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.inner.pending.remove(&self.msg_id, self.place);
    }
}

/// A request ready to publish: subject, fragments, and where later fragments go.
struct Outgoing {
    url: BusUrl,
    method: String,
    subject: Subject,
    fragments: Vec<Bytes>,
    /// When this caller stops waiting.
    deadline: Instant,
    /// When the call was prepared: the clock read once for its budget, its first fragment's
    /// `Microbus-Time-Budget` and its span's start (each read cost ~70 instructions).
    prepared_at: Instant,
    /// Whether the deadline is the caller's own (sent as `Microbus-Time-Budget`) rather than
    /// the local [`DEFAULT_CALL_BUDGET`] cap.
    budgeted: bool,
    /// `Microbus-Call-Depth`: one more than the inbound request's.
    depth: u32,
}

fn prepare(ctx: &Ctx, req: &mut Request<Bytes>) -> Result<Outgoing, Error> {
    let inner = &ctx.conn.inner;
    let url =
        BusUrl::from_uri(req.uri()).map_err(|e| Error::bad_request(e.to_string()).caused_by(e))?;
    if ctx.depth >= MAX_CALL_DEPTH {
        return Err(Error::call_depth_overflow());
    }
    let prepared_at = Instant::now();
    let deadline = ctx.deadline.unwrap_or(prepared_at + DEFAULT_CALL_BUDGET);
    if deadline.saturating_duration_since(prepared_at) <= NETWORK_HOP {
        return Err(Error::timeout());
    }
    let method = req.method().as_str().to_owned();
    let subject = wire::request_subject(
        &inner.plane,
        url.port,
        &url.host,
        &method,
        &url.decoded_path(),
    )
    .map_err(|e| match e {
        WireError::SubjectTooLong(_) => Error::with_kind(
            ErrorKind::BadRequest,
            StatusCode::URI_TOO_LONG,
            e.to_string(),
        ),
        e => Error::bad_request(e.to_string()),
    })?;
    if !url.is_written_as(req.uri()) {
        *req.uri_mut() = url.to_uri();
    }

    let headers = req.headers_mut();
    // The connector owns the frame; a caller cannot forge it.
    frame::remove_headers(headers, |k| {
        let k = k.as_str();
        k.starts_with(frame::MICROBUS_PREFIX)
            && !k.starts_with(frame::BAGGAGE_PREFIX)
            && k != frame::CLOCK_SHIFT
    });
    if let Some(inbound) = &ctx.frame {
        inbound.propagate_into(headers);
    }
    // The connector's own frame is written beside these headers by `publish_fragment`.
    let fragments = split_body(req.body(), inner.max_fragment);
    Ok(Outgoing {
        url,
        method,
        subject: Subject::from(subject),
        fragments,
        deadline,
        prepared_at,
        budgeted: ctx.deadline.is_some(),
        depth: ctx.depth + 1,
    })
}

fn transport_error(e: TransportError) -> Error {
    match e.kind() {
        TransportErrorKind::PayloadTooLarge => {
            Error::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).caused_by(e)
        }
        _ => Error::unavailable(format!("bus unavailable: {e}")).caused_by(e),
    }
}

/// Whom a fragment is for: every subscriber (a multicast's first), or one.
#[derive(Clone, Copy)]
enum Audience {
    All,
    One,
}

/// Encode fragment `index` (0-based) of `req`, with the connector's frame for message
/// `msg_id`, and publish it to `subject`.
async fn publish_fragment(
    inner: &Inner,
    req: &mut Request<Bytes>,
    out: &Outgoing,
    msg_id: &str,
    (index, subject, audience): (usize, Subject, Audience),
) -> Result<Carried, Error> {
    let total = out.fragments.len();
    let fragment = (total > 1).then(|| {
        Fragment {
            index: index + 1,
            total,
        }
        .render()
    });
    // The first fragment goes out right after the call was prepared.
    let now = if index == 0 {
        out.prepared_at
    } else {
        Instant::now()
    };
    let budget_ms = out.deadline.saturating_duration_since(now).as_millis();
    if budget_ms == 0 {
        return Err(Error::timeout());
    }
    let mut depth = itoa::Buffer::new();
    let mut budget = itoa::Buffer::new();
    let own = &inner.own_frame;
    fn value(v: &Option<HeaderValue>) -> Option<&[u8]> {
        v.as_ref().map(HeaderValue::as_bytes)
    }
    let candidates: [(&str, Option<&[u8]>); 8] = [
        (frame::CALL_DEPTH, Some(depth.format(out.depth).as_bytes())),
        (frame::FRAGMENT, fragment.as_deref().map(str::as_bytes)),
        (frame::FROM_HOST, value(&own.from_host)),
        (frame::FROM_ID, value(&own.from_id)),
        (frame::FROM_VERSION, value(&own.from_version)),
        (frame::MSG_ID, Some(msg_id.as_bytes())),
        (frame::OP_CODE, Some(OpCode::Req.as_str().as_bytes())),
        (
            frame::TIME_BUDGET,
            out.budgeted.then(|| budget.format(budget_ms).as_bytes()),
        ),
    ];
    let mut pairs: [(&str, &[u8]); 8] = [("", &[]); 8];
    let mut len = 0;
    for (name, value) in candidates {
        if let Some(value) = value {
            pairs[len] = (name, value);
            len += 1;
        }
    }
    *req.body_mut() = out.fragments[index].clone();
    let payload = codec::encode_request_with_frame(req, &pairs[..len]).map_err(|e| match e {
        WireError::TooManyHeaders { .. } => Error::with_kind(
            ErrorKind::BadRequest,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            e.to_string(),
        )
        .caused_by(e),
        e => Error::bad_request(e.to_string()).caused_by(e),
    })?;
    match audience {
        // A multicast crosses NATS when there is one (on the in-process bus a flush is nothing).
        Audience::All => inner
            .bus
            .publish(subject, payload)
            .await
            .map(|()| Carried::ByNats),
        Audience::One => inner.bus.publish_to_one(subject, payload).await,
    }
    .map_err(transport_error)
}

/// Wait until the connection has taken a large body's first fragment (async-nats's flush), so
/// that its ack timeout does not count the time it queued behind other large bodies in the
/// client. Bounded: a connection that is reconnecting takes nothing, and the ack timeout then
/// runs as for any call. A fragment delivered in memory was taken already.
async fn first_fragment_taken(inner: &Inner, out: &Outgoing, first: Carried) -> Result<(), Error> {
    if out.fragments.len() <= 1 || first != Carried::ByNats {
        return Ok(());
    }
    let patience = out.deadline.min(Instant::now() + FLUSH_PATIENCE);
    match tokio::time::timeout_at(patience, inner.bus.flush()).await {
        Ok(flushed) => flushed.map_err(transport_error),
        Err(_) => Ok(()),
    }
}

/// Send fragments 2..N to the instance that acknowledged fragment 1.
async fn publish_rest(
    inner: &Inner,
    req: &mut Request<Bytes>,
    out: &Outgoing,
    msg_id: &str,
    responder: &str,
) -> Result<(), Error> {
    if !is_valid_instance_id(responder) {
        return Err(Error::internal("invalid responder id in ack"));
    }
    let direct = wire::request_subject(
        &inner.plane,
        out.url.port,
        &format!("{responder}.{}", out.url.host),
        &out.method,
        &out.url.decoded_path(),
    )
    .map_err(|e| Error::bad_request(e.to_string()).caused_by(e))?;
    let direct = Subject::from(direct);
    for i in 1..out.fragments.len() {
        let fragment = (i, direct.clone(), Audience::One);
        publish_fragment(inner, req, out, msg_id, fragment).await?;
    }
    Ok(())
}

/// The CLIENT span and metrics of one outgoing call.
struct Observed {
    span: Span,
    started: std::time::Instant,
    acked: bool,
}

impl Observed {
    fn start(ctx: &Ctx, req: &mut Request<Bytes>, out: &Outgoing, msg_id: &str) -> Observed {
        let inner = &ctx.conn.inner;
        let span = inner.tracer.start(
            &ctx.otel,
            SpanKind::Client,
            SpanName::Client {
                method: &out.method,
                host: &out.url.host,
                port: out.url.port,
                path: &out.url.path,
            },
            |a| {
                a.str(A_MESSAGING_SYSTEM, NATS);
                a.str(A_MESSAGING_DESTINATION, &out.subject);
                a.str(A_MESSAGING_OPERATION, "send");
                a.str(A_MESSAGING_MESSAGE_ID, msg_id);
                a.int(A_MESSAGING_BODY_SIZE, req.body().len() as i64);
                a.str(A_HTTP_METHOD, &out.method);
                a.str(A_SERVER_ADDRESS, &out.url.host);
                a.int(A_SERVER_PORT, out.url.port as i64);
                a.int(
                    A_TIME_BUDGET_MS,
                    out.deadline
                        .saturating_duration_since(out.prepared_at)
                        .as_millis() as i64,
                );
            },
        );
        trace::inject(span.context(), req.headers_mut());
        Observed {
            span,
            started: out.prepared_at.into_std(),
            acked: false,
        }
    }

    /// The first ack: its round trip goes on the span and in the ack histogram.
    fn ack(&mut self, inner: &Inner, host: &str) {
        if self.acked {
            return;
        }
        self.acked = true;
        let rtt = self.started.elapsed();
        self.span
            .set_f64(A_ACK_LATENCY_MS, rtt.as_secs_f64() * 1000.0);
        inner.metrics.observe_ack(host, rtt);
    }

    fn finish(
        mut self,
        inner: &Inner,
        out: &Outgoing,
        result: Result<(StatusCode, usize), &Error>,
    ) {
        let span = &mut self.span;
        // `gen1_error`: the `error` label Go v1.7 gives this result in its request counter.
        let (code, failed, gen1_error) = match result {
            Ok((status, responders)) => {
                span.set_int(A_HTTP_STATUS, status.as_u16() as i64);
                span.set_int(A_RESPONDERS, responders as i64);
                span.set_status(Status::Ok);
                (status.as_u16(), false, false)
            }
            Err(e) => {
                span.record_error(e);
                let timed_out = matches!(e.kind(), ErrorKind::AckTimeout | ErrorKind::Timeout);
                if timed_out {
                    inner
                        .metrics
                        .count_timeout(&out.url.host, out.url.port, &out.method);
                }
                let code = e.status().as_u16();
                (code, true, !timed_out && code != 404)
            }
        };
        inner.tracer.end(self.span);
        inner.metrics.observe_client(
            &out.url.host,
            out.url.port,
            &out.method,
            Outcome {
                code,
                failed,
                elapsed: self.started.elapsed(),
            },
            gen1_error,
        );
    }
}

fn register<'a>(inner: &'a Inner, ctx: &Ctx) -> (Waiter<'a>, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (msg_id, place) = inner.pending.register(tx, ctx.kept, new_msg_id);
    (
        Waiter {
            inner,
            msg_id,
            place,
        },
        rx,
    )
}

fn outcome(op_code: Option<OpCode>, res: Response<Bytes>) -> Result<Response<Bytes>, Error> {
    match op_code {
        Some(OpCode::Err) => Err(Error::from_err_response(res.status(), res.body())),
        _ => Ok(res),
    }
}

pub(crate) async fn unicast(ctx: &Ctx, mut req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    let inner = &ctx.conn.inner;
    let out = prepare(ctx, &mut req)?;
    let (waiter, mut rx) = register(inner, ctx);
    let mut observed = Observed::start(ctx, &mut req, &out, &waiter.msg_id);
    let result = unicast_exchange(
        inner,
        &mut req,
        &out,
        &waiter.msg_id,
        &mut rx,
        &mut observed,
    )
    .await;
    match &result {
        Ok(res) => observed.finish(inner, &out, Ok((res.status(), 1))),
        Err(e) => observed.finish(inner, &out, Err(e)),
    }
    result
}

async fn unicast_exchange(
    inner: &Inner,
    req: &mut Request<Bytes>,
    out: &Outgoing,
    msg_id: &str,
    rx: &mut mpsc::UnboundedReceiver<Delivery>,
    observed: &mut Observed,
) -> Result<Response<Bytes>, Error> {
    let first = (0, out.subject.clone(), Audience::One);
    let carried = publish_fragment(inner, req, out, msg_id, first).await?;
    first_fragment_taken(inner, out, carried).await?;
    let ack_deadline = Instant::now() + ACK_TIMEOUT;
    // A whole request taken in memory by an endpoint is acknowledged by that: no ack comes.
    let mut acked = carried == Carried::Acknowledged && out.fragments.len() == 1;
    if acked {
        observed.ack(inner, &out.url.host);
    }
    // One timer for the call: the ack's deadline (or the call's, when sooner) until the ack
    // comes, then the call's. Two new timers on every turn of the loop cost ~1,000
    // instructions a call. Boxed: held across `publish_rest` it would grow every ingress
    // request's future (moved into its box once per request) by its size.
    let first_wait = if acked {
        out.deadline
    } else {
        ack_deadline.min(out.deadline)
    };
    let mut timer = Box::pin(tokio::time::sleep_until(first_wait));
    loop {
        tokio::select! {
            delivery = rx.recv() => match delivery {
                Some(Delivery::Ack { from_id, proceed, .. }) => {
                    observed.ack(inner, &out.url.host);
                    if !acked && proceed && out.fragments.len() > 1 {
                        publish_rest(inner, req, out, msg_id, &from_id).await?;
                    }
                    if !acked {
                        timer.as_mut().reset(out.deadline);
                    }
                    acked = true;
                }
                Some(Delivery::Response { res, op_code, .. }) => {
                    observed.ack(inner, &out.url.host);
                    return outcome(op_code, res);
                }
                Some(Delivery::Failed { error, .. }) => return Err(error),
                None => return Err(Error::internal("response channel closed")),
            },
            _ = &mut timer => {
                if acked || out.deadline < ack_deadline {
                    return Err(Error::timeout());
                }
                // No ack because NATS never carried the request: say so.
                if inner.bus.refused(Refused::Publish, Some(&out.subject)).is_some() {
                    return Err(Error::refused(&out.subject));
                }
                return Err(Error::ack_timeout());
            }
        }
    }
}

pub(crate) async fn multicast(
    ctx: &Ctx,
    mut req: Request<Bytes>,
) -> Vec<Result<Response<Bytes>, Error>> {
    let inner = &ctx.conn.inner;
    let out = match prepare(ctx, &mut req) {
        Ok(out) => out,
        Err(e) => return vec![Err(e)],
    };
    let (waiter, mut rx) = register(inner, ctx);
    let mut observed = Observed::start(ctx, &mut req, &out, &waiter.msg_id);
    let results = multicast_exchange(
        inner,
        &mut req,
        &out,
        &waiter.msg_id,
        &mut rx,
        &mut observed,
    )
    .await;
    // Responses the inbox handed over before the waiter left came too late for this call:
    // like those that come after, they mean the responders changed (known responders).
    let msg_id = waiter.msg_id.clone();
    drop(waiter);
    while let Ok(delivery) = rx.try_recv() {
        if matches!(delivery, Delivery::Response { .. }) {
            inner.known_responders.late_response(&msg_id);
            inner.metrics.count_late_response();
        }
    }
    match results.iter().find_map(|r| r.as_ref().err()) {
        Some(e) if results.len() == 1 => observed.finish(inner, &out, Err(e)),
        _ => observed.finish(inner, &out, Ok((StatusCode::OK, results.len()))),
    }
    results
}

async fn multicast_exchange(
    inner: &Inner,
    req: &mut Request<Bytes>,
    out: &Outgoing,
    msg_id: &str,
    rx: &mut mpsc::UnboundedReceiver<Delivery>,
    observed: &mut Observed,
) -> Vec<Result<Response<Bytes>, Error>> {
    let first = (0, out.subject.clone(), Audience::All);
    let carried = match publish_fragment(inner, req, out, msg_id, first).await {
        Ok(carried) => carried,
        Err(e) => return vec![Err(e)],
    };
    if let Err(e) = first_fragment_taken(inner, out, carried).await {
        return vec![Err(e)];
    }
    let known = &inner.known_responders;
    let expected = known.expected(&out.subject);
    let window_end = Instant::now() + ACK_TIMEOUT;
    let mut window_passed = false;
    let mut acked: HashSet<String> = HashSet::new();
    let mut responded: HashSet<String> = HashSet::new();
    let mut queues: HashSet<String> = HashSet::new();
    let mut results = Vec::new();
    loop {
        if window_passed && acked.is_subset(&responded) {
            if acked.is_empty() {
                known.forget(&out.subject);
            } else {
                known.remember(&out.subject, queues);
                known.finished(msg_id, &out.subject);
            }
            return results;
        }
        let delivery = tokio::select! {
            delivery = rx.recv() => delivery,
            _ = tokio::time::sleep_until(window_end), if !window_passed => {
                window_passed = true;
                continue;
            }
            _ = tokio::time::sleep_until(out.deadline) => {
                known.forget(&out.subject);
                results.push(Err(Error::timeout()));
                return results;
            }
        };
        let queue = match delivery {
            Some(Delivery::Ack {
                from_id,
                queue,
                proceed,
            }) => {
                observed.ack(inner, &out.url.host);
                if proceed && out.fragments.len() > 1 && !acked.contains(&from_id) {
                    if let Err(e) = publish_rest(inner, req, out, msg_id, &from_id).await {
                        results.push(Err(e));
                    }
                }
                acked.insert(from_id);
                queue
            }
            Some(Delivery::Response {
                from_id,
                queue,
                op_code,
                res,
            }) => {
                acked.insert(from_id.clone());
                responded.insert(from_id);
                results.push(outcome(op_code, res));
                queue
            }
            Some(Delivery::Failed { from_id, error }) => {
                acked.insert(from_id.clone());
                responded.insert(from_id);
                results.push(Err(error));
                None
            }
            None => return results,
        };
        if let Some(q) = queue {
            queues.insert(q);
        }
        // The responders of last time have all acknowledged: no one else is expected.
        if !window_passed && expected.as_ref().is_some_and(|e| *e == queues) {
            window_passed = true;
        }
    }
}

/// The response inbox's handler: each ack and response is read and handed to its call on the
/// transport's task, as it arrives. A task of its own, fed by the subscription's channel, cost
/// a channel hop and a wake-up for each of a call's two replies. It holds the instance weakly:
/// the transport keeps the handler, and the instance keeps the transport.
pub(crate) fn inbox_handler(inner: &Arc<Inner>) -> MessageHandler {
    let inner = Arc::downgrade(inner);
    Arc::new(move |msg: BusMessage| {
        if let Some(inner) = inner.upgrade() {
            read_reply(&inner, msg);
        }
    })
}

/// Read one message of the response inbox: an ack or a response (reassembled when it comes in
/// fragments), routed by message id.
fn read_reply(inner: &Inner, msg: BusMessage) {
    let kept = |msg_id: Option<&str>| {
        msg_id
            .and_then(|id| inner.pending.with(id, |p| p.kept))
            .unwrap_or(Headers::All)
    };
    let reply = match decode_reply(msg.payload, kept) {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(host = %inner.hostname, error = %e, "dropping malformed response");
            return;
        }
    };
    let (res, frame) = match reply {
        Reply::Ack(ack) => {
            let (Some(msg_id), Some(from_id)) = (ack.frame.msg_id, ack.frame.from_id) else {
                tracing::warn!(host = %inner.hostname, "dropping response without Msg-Id or From-Id");
                return;
            };
            let delivery = Delivery::Ack {
                proceed: ack.status == StatusCode::CONTINUE,
                from_id,
                queue: ack.frame.queue,
            };
            deliver(inner, &msg_id, delivery);
            return;
        }
        Reply::Response(res, frame) => (res, frame),
    };
    let (Some(msg_id), Some(from_id)) = (frame.msg_id, frame.from_id) else {
        tracing::warn!(host = %inner.hostname, "dropping response without Msg-Id or From-Id");
        return;
    };
    let (queue, op_code) = (frame.queue, frame.op_code);
    let delivery = match frame.fragment.filter(|fr| fr.total > 1) {
        None => Delivery::Response {
            from_id,
            queue,
            op_code,
            res,
        },
        Some(fr) => {
            let key = format!("{from_id}|{msg_id}");
            let waiting = || (from_id.clone(), msg_id.clone());
            match inner.response_defrag.add(key, fr, res, waiting) {
                DefragOutcome::Complete(res) => Delivery::Response {
                    from_id,
                    queue,
                    op_code,
                    res,
                },
                DefragOutcome::Pending => return,
                DefragOutcome::Orphan => {
                    // Its reassembly was dropped, and its call failed then.
                    tracing::debug!(host = %inner.hostname, %msg_id, "dropping a fragment of a dropped reassembly");
                    return;
                }
                DefragOutcome::Rejected(why) => {
                    tracing::warn!(host = %inner.hostname, %msg_id, why, "dropping response fragment");
                    return;
                }
            }
        }
    };
    deliver(inner, &msg_id, delivery);
}

/// Fail the calls whose response fragments stopped arriving, at once: without this they would
/// wait out their whole budget for fragments that no longer have a reassembly.
pub(super) fn fail_stale_responses(inner: &Inner) {
    for (key, (from_id, msg_id)) in inner.response_defrag.sweep() {
        tracing::warn!(host = %inner.hostname, key, "defrag timeout: response fragments stopped arriving");
        let delivery = Delivery::Failed {
            from_id,
            error: Error::defrag_timeout(),
        };
        deliver(inner, &msg_id, delivery);
    }
}

/// Hand a reply to the call waiting for `msg_id`; a response nobody waits for is a late one.
fn deliver(inner: &Inner, msg_id: &str, delivery: Delivery) {
    let mut delivery = Some(delivery);
    // A call that stopped listening gives its reply back, dropped here, not while the call's
    // slot counts this reader (a response body may be large).
    let delivered = inner.pending.with(msg_id, |p| {
        p.tx.send(delivery.take().expect("delivered once")).err()
    });
    match (delivered, delivery) {
        (Some(_), _) | (None, None) => {}
        (None, Some(delivery)) => {
            if matches!(delivery, Delivery::Response { .. }) {
                inner.known_responders.late_response(msg_id);
                inner.metrics.count_late_response();
                tracing::debug!(host = %inner.hostname, %msg_id, "Response received after timeout");
            }
        }
    }
}
