//! One client connection, from the accept to the close.
//!
//! Its first bytes say HTTP/2 or HTTP/1 (as hyper-util's `auto` reads them). An HTTP/2
//! connection is one hyper connection to the end. An HTTP/1 keep-alive connection that has
//! been quiet for [`PARK_AFTER`] is *parked*: its hyper connection (an 8 KiB read buffer and
//! an 8 KiB write buffer, held for as long as it lives) is ended without closing the socket,
//! and the connection waits for its next byte with only the framing guard; a new hyper
//! connection takes over when one comes. 10,000 idle keep-alive connections held 327 MB
//! with their hyper connections (BENCHMARKS.md). Only plain TCP parks: a TLS stream can have
//! bytes of the next request decrypted and buffered where the socket's readiness does not
//! show them.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::io_timeout::TimeoutStream;
use axum::body::Body;
use axum::response::Response;
use http::header::{HeaderMap, CONNECTION};
use http::Version;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::context::ConnInfo;
use super::framing_guard::{FramingGuard, Signals};
use super::middleware;
use super::shared::Shared;

/// How long an HTTP/1 keep-alive connection goes without a new request before it gives its
/// hyper connection back (16 KiB of buffers) and waits for its next byte with nothing but
/// the socket. Long enough that a busy client's next request comes first and a connection is
/// not made again per request (a new one costs its two buffers again); short enough that a
/// pool of idle connections is let go within a second. It is parked after one to two of
/// these: the check runs once per period.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// How long a TLS handshake may take before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What every connection of one listener shares.
pub struct Listener {
    pub shared: Arc<Shared>,
    pub port: u16,
    pub tls: Option<TlsAcceptor>,
    /// Cancelled when the ingress shuts down: serving connections finish what they started,
    /// parked ones close.
    pub stop: CancellationToken,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Listener {
    pub fn new(
        shared: Arc<Shared>,
        port: u16,
        tls: Option<TlsAcceptor>,
        stop: CancellationToken,
    ) -> Listener {
        let max_head = shared.config.max_header_bytes;
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // The framing guard times request heads (Go's semantics); hyper's timer (30 s unless
            // set) would also run while a keep-alive connection idles between requests.
            .header_read_timeout(None)
            .max_buf_size(max_head);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(max_head as u32)
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        Listener {
            shared,
            port,
            tls,
            stop,
            http1,
            http2,
        }
    }
}

/// Serve one accepted connection to its end. `watcher` keeps the ingress's graceful
/// shutdown waiting until it has.
pub async fn serve(listener: Arc<Listener>, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
    let shared = &listener.shared;
    let gauges = shared.metrics.listener(listener.port);
    let _open = Counted::new(gauges.open_connections.clone());
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(ConnActivity::default());
    let service = IngressService {
        shared: shared.clone(),
        info: ConnInfo {
            listen_port: listener.port,
            tls: listener.tls.is_some(),
            peer,
        },
        activity: activity.clone(),
    };
    let config = &shared.config;
    let io = timed(stream, config.read_timeout, config.write_timeout);
    match &listener.tls {
        None => {
            let guard = FramingGuard::new(io, config.max_header_bytes, config.read_header_timeout);
            let parking = Parking {
                readable: |io: &TimedStream, cx: &mut Context<'_>| io.get_ref().poll_read_ready(cx),
                parked: gauges.parked_connections.clone(),
            };
            serve_guarded(&listener, guard, service, &activity, Some(parking), watcher).await;
        }
        Some(acceptor) => {
            // Boxed, as HTTP/2 is: the handshake's and TLS's state would otherwise be sized
            // into every connection's task (7.8 KB with both, parked or not).
            Box::pin(serve_tls(
                &listener, acceptor, io, service, &activity, watcher,
            ))
            .await;
        }
    }
}

async fn serve_tls(
    listener: &Listener,
    acceptor: &TlsAcceptor,
    io: TimedStream,
    service: IngressService,
    activity: &ConnActivity,
    watcher: Watcher,
) {
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io));
    let tls_stream = tokio::select! {
        _ = listener.stop.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(s)) => s,
            _ => return,
        },
    };
    let config = &listener.shared.config;
    let guard = FramingGuard::new(
        tls_stream,
        config.max_header_bytes,
        config.read_header_timeout,
    );
    serve_guarded(listener, guard, service, activity, None, watcher).await;
}

type TimedStream = Pin<Box<TimeoutStream<TcpStream>>>;

/// How a stream waits for its next byte while parked, and the gauge that counts it then.
struct Parking<S> {
    readable: fn(&S, &mut Context<'_>) -> Poll<io::Result<()>>,
    parked: prometheus::IntGauge,
}

async fn serve_guarded<S>(
    listener: &Listener,
    mut guard: FramingGuard<S>,
    mut service: IngressService,
    activity: &ConnActivity,
    parking: Option<Parking<S>>,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let stop = &listener.stop;
    let h2 = Box::pin(async {
        tokio::select! {
            _ = stop.cancelled() => None,
            // An error is the header timeout, or the client went away: as when hyper reads it.
            h2 = poll_fn(|cx| guard.poll_opens_with_h2_preface(cx)) => h2.ok(),
        }
    });
    let Some(h2) = h2.await else { return };
    if h2 {
        let _ = serve_h2(listener, guard, service, watcher).await;
        return;
    }
    // Held, not handed to hyper-util: the graceful shutdown waits for this connection while it
    // serves and while it is parked, and `stop` tells it when.
    let _watcher = watcher;
    let signals = guard.signals();
    loop {
        let mut conn = Box::new(
            listener
                .http1
                .serve_connection(TokioIo::new(guard), service),
        );
        // Every await of this loop is on a box made by a plain function, and hyper's parts are
        // taken apart in one: what lives across an await is sized into the task, and a parked
        // connection's task should hold only the guard, the service and a few words.
        let may_park = parking.as_ref().map(|_| &*signals);
        match episode(&mut conn, activity, may_park, stop).await {
            Ok(true) => {}
            // hyper ended it (the client's EOF, `Connection: close`, a refused request, the
            // shutdown) and wrote out and shut the socket as it does.
            Ok(false) | Err(_) => return,
        }
        let resumable;
        (guard, service, resumable) = take_apart(*conn);
        if !resumable {
            // Not at a request's start after all: nothing left to follow.
            let _ = Box::pin(guard.shutdown()).await;
            return;
        }
        if guard.holds_bytes() {
            continue;
        }
        let Some(parking) = &parking else { return };
        // Parked: the socket, the guard and this task's state are all that is held. The
        // read timeout still ends an idle connection, counted from here (a little late
        // rather than early: the connection was quiet for one to two PARK_AFTER already).
        let _parked = Counted::new(parking.parked.clone());
        let deadline = Instant::now() + listener.shared.config.read_timeout;
        if !next_byte(&guard, parking.readable, deadline, stop).await {
            return;
        }
    }
}

/// Whether a parked connection's next byte came before its deadline and the shutdown. Boxed by
/// a plain function, as [`serve_h2`] is, so that its timer is not sized into the task.
fn next_byte<'a, S: Sync>(
    guard: &'a FramingGuard<S>,
    readable: fn(&S, &mut Context<'_>) -> Poll<io::Result<()>>,
    deadline: Instant,
    stop: &'a CancellationToken,
) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
    let ready = tokio::time::timeout_at(deadline, poll_fn(move |cx| readable(guard.get_ref(), cx)));
    Box::pin(async move {
        tokio::select! {
            _ = stop.cancelled() => false,
            ready = ready => matches!(ready, Ok(Ok(()))),
        }
    })
}

/// An HTTP/2 connection to its end, boxed by a plain function: built inside the async one, its
/// state (~2.8 KB) stayed in every connection's task, HTTP/1 or parked.
fn serve_h2<S>(
    listener: &Listener,
    guard: FramingGuard<S>,
    service: IngressService,
    watcher: Watcher,
) -> Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(
        watcher.watch(
            listener
                .http2
                .serve_connection(TokioIo::new(guard), service),
        ),
    )
}

/// A hyper connection that has ended, taken apart: the guard, with what hyper read and did not
/// use given back to it, the service, and whether a new hyper connection can take over.
fn take_apart<S>(conn: Http1Connection<S>) -> (FramingGuard<S>, IngressService, bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let parts = conn.into_parts();
    let mut guard = parts.io.into_inner();
    let resumable = guard.resume_at(&parts.read_buf);
    (guard, parts.service, resumable)
}

/// [`serve_until_parked`], boxed.
fn episode<'a, S>(
    conn: &'a mut Http1Connection<S>,
    activity: &'a ConnActivity,
    parking: Option<&'a Signals>,
    stop: &'a CancellationToken,
) -> Pin<Box<dyn Future<Output = hyper::Result<bool>> + Send + 'a>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(serve_until_parked(conn, activity, parking, stop))
}

type Http1Connection<S> = http1::Connection<TokioIo<FramingGuard<S>>, IngressService>;

/// Drive one hyper connection until hyper ends it (`Ok(false)`, or its error) or it has been
/// quiet long enough to park (`Ok(true)`: hyper was idle and let the socket go unclosed).
/// Until a park is asked for, hyper runs as it always does, writing out what it holds and
/// shutting the socket down when it ends; only then is it ended without that, and only when
/// it holds nothing to write (`poll_without_shutdown` drops what is unsent).
async fn serve_until_parked<S>(
    conn: &mut Http1Connection<S>,
    activity: &ConnActivity,
    parking: Option<&Signals>,
    stop: &CancellationToken,
) -> hyper::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut stopping = false;
    let mut parked = false;
    // One timer per hyper connection, reset once a period: nothing per request.
    let mut check = parking.map(|_| Box::pin(tokio::time::sleep(PARK_AFTER)));
    let first = activity.started();
    let mut seen = activity.changes();
    poll_fn(|cx| loop {
        if !stopping && stopped.as_mut().poll(cx).is_ready() {
            // In-flight requests finish (with `Connection: close`), an idle connection closes.
            stopping = true;
            Pin::new(&mut *conn).graceful_shutdown();
        }
        if parked {
            return conn.poll_without_shutdown(cx).map_ok(|()| true);
        }
        if let Poll::Ready(ended) = Pin::new(&mut *conn).poll(cx) {
            return Poll::Ready(ended.map(|()| false));
        }
        let (Some(timer), Some(signals)) = (check.as_mut(), parking) else {
            return Poll::Pending;
        };
        if stopping || timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let changes = activity.changes();
        // Park only a connection that served a request on this hyper connection (hyper is
        // idle between requests then; before its first it would answer that one with
        // `Connection: close`), with no request begun or ended since the last check, none in
        // flight (its body written to the end), none that asked to close, the guard still
        // following requests and nothing of hyper's waiting to be written.
        if activity.started() == first
            || changes != seen
            || !activity.is_quiet()
            || !signals.may_hand_over()
        {
            seen = changes;
            timer.as_mut().reset(Instant::now() + PARK_AFTER);
            continue;
        }
        // Idle, hyper closes at once and writes nothing more.
        parked = true;
        Pin::new(&mut *conn).graceful_shutdown();
    })
    .await
}

/// What a connection's requests tell its serving loop, updated by [`IngressService`] around
/// each request: relaxed atomics, as the service and the loop run on the connection's task.
#[derive(Debug, Default)]
pub struct ConnActivity {
    started: AtomicU32,
    /// Requests begun plus requests ended: unchanged between two checks, the connection was
    /// quiet in between.
    changes: AtomicU32,
    in_flight: AtomicU32,
    /// A request or its response asked for the connection to close after it (hyper does): such
    /// a connection is not parked, so that the client sees the close it expects.
    closing: AtomicBool,
}

impl ConnActivity {
    fn started(&self) -> u32 {
        self.started.load(Ordering::Relaxed)
    }

    fn changes(&self) -> u32 {
        self.changes.load(Ordering::Relaxed)
    }

    fn is_quiet(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && !self.closing.load(Ordering::Relaxed)
    }
}

/// A request of a connection in flight: counted from the service's call to the end (or the
/// drop) of its response future, or of its response body when that is not written whole at
/// once ([`Counting`]).
struct InFlight(Arc<ConnActivity>);

impl InFlight {
    fn start(activity: &Arc<ConnActivity>, closes: bool) -> InFlight {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.changes.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        if closes {
            activity.closing.store(true, Ordering::Relaxed);
        }
        InFlight(activity.clone())
    }

    fn closes(&self) {
        self.0.closing.store(true, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.changes.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether hyper may close the connection after this exchange: a `Connection: close` on
/// either side (RFC 9112, 9.3), or an HTTP/1.0 request (kept alive only when it asks and the
/// response's length is known; such rare clients are simply not parked).
fn may_close(version: Version, headers: &HeaderMap) -> bool {
    version < Version::HTTP_11 || has_close(headers)
}

fn has_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// The ingress as hyper sees it on one connection: each request goes through the middleware
/// chain ([`middleware::handle`]) with the connection's [`ConnInfo`], one boxed future each.
#[derive(Clone)]
pub struct IngressService {
    shared: Arc<Shared>,
    info: ConnInfo,
    activity: Arc<ConnActivity>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for IngressService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Counting;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let closes = may_close(req.version(), req.headers());
        Counting {
            response: respond(self.shared.clone(), self.info, req),
            in_flight: Some(InFlight::start(&self.activity, closes)),
        }
    }
}

/// The request through the middleware chain, boxed. The future is ~8 KB; its box is allocated
/// before it is made, so that only its captures (~300 bytes) are written, straight into the box.
/// `Box::pin` made it on the stack and copied it whole: the allocation may unwind, and the
/// future must be there to be dropped then (+8k instructions a request under callgrind).
fn respond(
    shared: Arc<Shared>,
    info: ConnInfo,
    req: http::Request<hyper::body::Incoming>,
) -> Pin<Box<dyn Future<Output = Response> + Send>> {
    boxed_in_place(
        move || async move { middleware::handle(&shared, info, req.map(Body::new)).await },
    )
}

/// `make()`'s future in a box allocated before it is made.
fn boxed_in_place<F>(make: impl FnOnce() -> F) -> Pin<Box<dyn Future<Output = Response> + Send>>
where
    F: Future<Output = Response> + Send + 'static,
{
    let slot = Box::<F>::new_uninit();
    let future: Box<F> = Box::write(slot, make());
    Box::into_pin(future)
}

/// A request's response future, counted in its connection's activity until hyper drops it; a
/// body of unknown length (tower-http's compression streams) keeps the count until it ends,
/// as hyper writes it over many turns. Every other body of the ingress is whole (`Bytes`),
/// written with its head in the turn the future ends, and is not wrapped.
pub struct Counting {
    response: Pin<Box<dyn Future<Output = Response> + Send>>,
    in_flight: Option<InFlight>,
}

impl Future for Counting {
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = std::task::ready!(self.response.as_mut().poll(cx));
        let in_flight = self.in_flight.take().expect("polled after its end");
        if has_close(res.headers()) {
            in_flight.closes();
        }
        if hyper::body::Body::size_hint(res.body()).exact().is_some() {
            return Poll::Ready(Ok(res));
        }
        Poll::Ready(Ok(res.map(|body| {
            Body::new(CountedBody {
                body,
                _in_flight: in_flight,
            })
        })))
    }
}

/// A response body that keeps its request in flight until hyper drops it.
struct CountedBody {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Counts one in a gauge while it lives (a connection open, a connection parked), however
/// its task ends.
struct Counted(prometheus::IntGauge);

impl Counted {
    fn new(gauge: prometheus::IntGauge) -> Counted {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A stream whose reads and writes fail after stalling this long: idle keep-alive connections
/// close after the read timeout, and a client that stops reading cannot pin a response.
fn timed(stream: TcpStream, read: Duration, write: Duration) -> TimedStream {
    Box::pin(TimeoutStream::new(stream, Some(read), Some(write)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn close_is_read_as_hyper_reads_it() {
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(CONNECTION, HeaderValue::from_str(v).unwrap());
            }
            headers
        };
        for closes in [
            &["close"][..],
            &["Close"],
            &["keep-alive, close"],
            &[" CLOSE "],
            &["x", "close"],
        ] {
            assert!(may_close(Version::HTTP_11, &with(closes)), "{closes:?}");
        }
        for keeps in [
            &[][..],
            &["keep-alive"],
            &["closed"],
            &["upgrade, http2-settings"],
            &["x-close"],
        ] {
            assert!(!may_close(Version::HTTP_11, &with(keeps)), "{keeps:?}");
        }
        assert!(may_close(Version::HTTP_10, &with(&["keep-alive"])));
        assert!(may_close(Version::HTTP_09, &with(&[])));
        assert!(!may_close(Version::HTTP_2, &with(&[])));
    }
}
