//! A service instance on the bus (`Connector`), the context of a request (`Ctx`), the
//! builder that starts one (`Service`) and an endpoint's `Handler`. Serving is in `serve`,
//! calling in `call`, both as methods and functions over these types.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::bus_config::BusConfig;
use super::defaults::*;
use super::fragment::Defragmenter;
use super::ids::new_instance_id;
use super::inbound::Inbound;
use super::inbox::{KnownResponders, PendingCalls, ReplyTo};
use super::route::{Queue, RouteSpec};
use crate::config::Deployment;
use crate::error::Error;
use crate::telemetry;
use crate::telemetry::error::TelemetryError;
use crate::telemetry::log_scope::LogOwner;
use crate::telemetry::metrics::ServiceMetrics;
use crate::telemetry::trace::{ServiceIdentity, ServiceTracer, SpanContext};
use crate::transport::{Bus, ConnectionState, HandlerSubscription, TransportError};
use crate::wire::codec::Headers;
use crate::wire::{self, is_valid_service_hostname, WireError};

/// Why a service could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    #[error("invalid hostname '{0}': letters, digits, '-', '_' and dots; 'all' is reserved")]
    InvalidHostname(String),
    #[error("invalid route {route}: {source}")]
    InvalidRoute { route: String, source: WireError },
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("message size limit is too restrictive: max_payload {0} leaves no room for fragments")]
    PayloadLimit(usize),
    #[error("{0}")]
    Telemetry(#[from] TelemetryError),
}

/// The hook that answers `:888/metrics`; the telemetry layer installs it.
pub type MetricsHook =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Response<Bytes>, Error>> + Send + Sync>;
/// The hook that `:888/config-refresh` runs.
pub type RefreshHook = Arc<dyn Fn() -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

/// A service definition: hostname, version and endpoints. [`Service::start`] brings it onto
/// the bus as a [`Connector`].
pub struct Service {
    pub(super) hostname: String,
    pub(super) version: u32,
    pub(super) endpoints: Vec<(String, String, Queue, Arc<dyn Handler>)>,
    pub(super) refresh: Option<RefreshHook>,
}

impl Service {
    pub fn new(hostname: impl Into<String>) -> Service {
        Service {
            hostname: hostname.into().to_ascii_lowercase(),
            version: 0,
            endpoints: Vec::new(),
            refresh: None,
        }
    }

    pub fn version(mut self, version: u32) -> Service {
        self.version = version;
        self
    }

    /// Serve `method` (or `ANY`) on `route`: `/path`, `:port/path`, `//host:port/path`, with
    /// `{arg}` segments and a last `{arg+}`.
    pub fn route(self, method: &str, route: &str, handler: impl Handler) -> Service {
        self.route_with_queue(method, route, Queue::Default, handler)
    }

    pub fn route_with_queue(
        mut self,
        method: &str,
        route: &str,
        queue: Queue,
        handler: impl Handler,
    ) -> Service {
        self.endpoints.push((
            method.to_ascii_uppercase(),
            route.to_owned(),
            queue,
            Arc::new(handler),
        ));
        self
    }

    pub fn get(self, route: &str, handler: impl Handler) -> Service {
        self.route("GET", route, handler)
    }

    pub fn post(self, route: &str, handler: impl Handler) -> Service {
        self.route("POST", route, handler)
    }

    pub fn any(self, route: &str, handler: impl Handler) -> Service {
        self.route("ANY", route, handler)
    }

    /// Handle the event `name` fired by `source` (`POST //source:417/name`); replicas of this
    /// service share one copy, other services get their own.
    pub fn sink(self, source: &str, name: &str, handler: impl Handler) -> Service {
        let route = format!("//{source}:{EVENT_PORT}/{name}");
        self.route("POST", &route, handler)
    }

    pub fn refresh_hook(mut self, hook: RefreshHook) -> Service {
        self.refresh = Some(hook);
        self
    }

    /// Connect, subscribe every endpoint and the control plane, and start serving.
    pub async fn start(self, config: &BusConfig) -> Result<Connector, StartError> {
        if !is_valid_service_hostname(&self.hostname) {
            return Err(StartError::InvalidHostname(self.hostname));
        }
        let mut endpoints = Vec::with_capacity(self.endpoints.len() + 8);
        for (method, route, queue, handler) in self.endpoints {
            let spec = RouteSpec::parse(&route).map_err(|source| StartError::InvalidRoute {
                route: route.clone(),
                source,
            })?;
            // Validate the subject once now so that a bad route fails start, not later.
            let host = spec.host.clone().unwrap_or_else(|| self.hostname.clone());
            wire::subscription_subject(&config.plane, spec.port, &host, &method, &spec.path)
                .map_err(|source| StartError::InvalidRoute {
                    route: route.clone(),
                    source,
                })?;
            if let Queue::Named(q) = &queue {
                if q.is_empty() || !q.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
                    return Err(StartError::InvalidRoute {
                        route,
                        source: WireError::InvalidPathSpec(format!("invalid queue name '{q}'")),
                    });
                }
            }
            endpoints.push(Endpoint {
                method,
                route: spec,
                queue,
                handler,
            });
        }

        let id = new_instance_id();
        let starting = std::time::Instant::now();
        let metrics = ServiceMetrics::new(&self.hostname, self.version, &id);
        metrics.set_enabled(config.telemetry.enabled);
        let tracer = ServiceTracer::new(
            &config.telemetry,
            &ServiceIdentity {
                hostname: &self.hostname,
                plane: &config.plane,
                version: self.version,
                id: &id,
                deployment: config.deployment,
            },
        )
        .map_err(StartError::Telemetry)?;
        let bus = config
            .transport
            .connect(&format!("{id}.{}", self.hostname))
            .await?;
        let max_payload = bus.max_payload();
        if max_payload < 2 * FRAGMENT_HEADROOM {
            bus.close().await;
            return Err(StartError::PayloadLimit(max_payload));
        }
        let own_frame = OwnFrame::new(
            &self.hostname,
            &id,
            self.version,
            config.locality.as_deref(),
        );
        let log_owner = Arc::new(LogOwner {
            host: self.hostname.clone(),
            id: id.clone(),
            metrics: metrics.clone(),
        });
        let inner = Arc::new(Inner {
            own_frame,
            log_owner,
            hostname: self.hostname,
            version: self.version,
            id,
            plane: config.plane.clone(),
            locality: config.locality.clone(),
            deployment: config.deployment,
            bus,
            max_fragment: max_payload - FRAGMENT_HEADROOM,
            pending: PendingCalls::default(),
            request_defrag: Defragmenter::new(),
            response_defrag: Defragmenter::new(),
            known_responders: KnownResponders::default(),
            tasks: TaskTracker::new(),
            stop_serving: CancellationToken::new(),
            lifetime: CancellationToken::new(),
            stop_inbox: CancellationToken::new(),
            inbox: Mutex::new(None),
            started: AtomicBool::new(false),
            refresh: self.refresh,
            tracer: Arc::new(tracer),
            metrics,
        });
        let conn = Connector { inner };
        if let Err(e) = conn.activate(endpoints).await {
            conn.inner
                .metrics
                .observe_callback("startup", true, starting.elapsed());
            conn.inner.stop_inbox.cancel();
            conn.inner.stop_serving.cancel();
            conn.inner.bus.close().await;
            return Err(e);
        }
        conn.inner
            .metrics
            .observe_callback("startup", false, starting.elapsed());
        Ok(conn)
    }
}

/// This instance's own frame headers, made once: every call, ack and response carries them,
/// and building them anew (name checked, value copied) cost ~600 instructions each time.
pub(crate) struct OwnFrame {
    pub(super) from_host: Option<HeaderValue>,
    pub(super) from_id: Option<HeaderValue>,
    pub(super) from_version: Option<HeaderValue>,
    pub(super) locality: Option<HeaderValue>,
}

impl OwnFrame {
    fn new(hostname: &str, id: &str, version: u32, locality: Option<&str>) -> OwnFrame {
        let value = |v: &str| HeaderValue::from_str(v).ok();
        OwnFrame {
            from_host: value(hostname),
            from_id: value(id),
            from_version: (version > 0).then(|| value(&version.to_string())).flatten(),
            locality: locality.and_then(value),
        }
    }
}

pub(crate) struct Inner {
    pub hostname: String,
    /// Whom the log lines of this instance's requests belong to.
    pub log_owner: Arc<LogOwner>,
    pub version: u32,
    pub id: String,
    pub plane: String,
    pub locality: Option<String>,
    pub own_frame: OwnFrame,
    pub deployment: Deployment,
    pub bus: Bus,
    pub max_fragment: usize,
    /// Outstanding calls by message id, read without a lock.
    pub pending: PendingCalls,
    /// Fragmented requests being served, with where each one's response goes.
    pub request_defrag: Defragmenter<Request<Bytes>, ReplyTo>,
    /// Fragmented responses to this instance's calls, with each one's responder and call
    /// (`From-Id` and `Msg-Id`).
    pub response_defrag: Defragmenter<Response<Bytes>, (String, String)>,
    pub(crate) known_responders: KnownResponders,
    /// Endpoint subscription loops and in-flight handlers.
    pub tasks: TaskTracker,
    /// Cancelled to drain the endpoint subscriptions.
    pub stop_serving: CancellationToken,
    /// Cancelled when in-flight handlers must give up.
    pub lifetime: CancellationToken,
    /// Cancelled to stop sweeping reassemblies, once the calls have ended.
    pub stop_inbox: CancellationToken,
    /// The response inbox's subscription, drained at shutdown.
    pub inbox: Mutex<Option<HandlerSubscription>>,
    pub started: AtomicBool,
    pub refresh: Option<RefreshHook>,
    pub tracer: Arc<ServiceTracer>,
    pub metrics: Arc<ServiceMetrics>,
}

/// A running service instance. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    pub(crate) inner: Arc<Inner>,
}

impl Connector {
    pub fn hostname(&self) -> &str {
        &self.inner.hostname
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Whom this instance's log lines belong to (see [`crate::telemetry::log_scope`]).
    pub fn log_owner(&self) -> &Arc<LogOwner> {
        &self.inner.log_owner
    }

    pub fn version(&self) -> u32 {
        self.inner.version
    }

    pub fn plane(&self) -> &str {
        &self.inner.plane
    }

    pub fn deployment(&self) -> Deployment {
        self.inner.deployment
    }

    pub fn connection_state(&self) -> ConnectionState {
        self.inner.bus.state()
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Whether the instance is serving (started and not shut down).
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::Acquire)
    }

    /// A root context: no inbound frame, no deadline (calls get [`DEFAULT_CALL_BUDGET`]).
    pub fn ctx(&self) -> Ctx {
        Ctx {
            conn: self.clone(),
            frame: None,
            deadline: None,
            depth: 0,
            otel: SpanContext::NONE,
            kept: Headers::All,
        }
    }

    /// This instance's metrics; register custom metrics in its registry to have them carry
    /// `service`, `ver` and `id` and appear on `:888/metrics`.
    pub fn metrics(&self) -> &Arc<ServiceMetrics> {
        &self.inner.metrics
    }

    /// Outgoing calls waiting for an ack or a response (diagnostics: 0 when idle).
    pub fn calls_in_flight(&self) -> usize {
        self.inner.pending.len()
    }

    /// Tasks this instance runs: one per subscription, plus one per request being served
    /// (diagnostics: back to its idle value once the requests are done).
    pub fn running_tasks(&self) -> usize {
        self.inner.tasks.len()
    }

    /// This instance's tracer.
    pub fn tracer(&self) -> &ServiceTracer {
        &self.inner.tracer
    }

    /// Unicast `req` from a root context.
    pub async fn request(&self, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
        self.ctx().request(req).await
    }

    /// Graceful shutdown: drain subscriptions, wait for in-flight handlers, cancel, close.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if !inner.started.swap(false, Ordering::AcqRel) {
            return;
        }
        tracing::info!(host = %inner.hostname, id = %inner.id, "shutting down");
        let begun = std::time::Instant::now();
        inner.stop_serving.cancel();
        inner.tasks.close();
        if tokio::time::timeout(DRAIN_PATIENCE, inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(host = %inner.hostname, pending = inner.tasks.len(), "Stubborn pending operations");
            inner.lifetime.cancel();
            if tokio::time::timeout(CANCEL_PATIENCE, inner.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(host = %inner.hostname, pending = inner.tasks.len(), "Unable to drain pending operations");
            }
        }
        inner.lifetime.cancel();
        inner
            .metrics
            .observe_callback("shutdown", false, begun.elapsed());
        inner.stop_inbox.cancel();
        let inbox = inner.inbox.lock().expect("inbox lock").take();
        if let Some(inbox) = inbox {
            inbox.drain().await;
        }
        inner.bus.close().await;
        // Flushing the exporter blocks on network I/O.
        let conn = self.clone();
        let _ = tokio::task::spawn_blocking(move || conn.inner.tracer.shutdown()).await;
        tracing::info!(host = %inner.hostname, id = %inner.id, "shut down");
    }
}

/// The context of a handler or caller: the inbound frame (for header propagation), the
/// deadline and the call depth.
#[derive(Clone)]
pub struct Ctx {
    pub(super) conn: Connector,
    pub(super) frame: Option<Arc<Inbound>>,
    pub(super) deadline: Option<Instant>,
    pub(super) depth: u32,
    /// The span this work belongs to; outgoing calls are its children.
    pub(super) otel: SpanContext,
    /// Which headers the responses to this context's calls keep.
    pub(super) kept: Headers,
}

impl Ctx {
    pub fn connector(&self) -> &Connector {
        &self.conn
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The call depth of the inbound request (0 at the root).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// A header of the inbound request, e.g. `X-Forwarded-For` or a `Microbus-Baggage-*`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.frame.as_ref().and_then(|f| f.header(name))
    }

    /// The trace this work belongs to (32 hex digits).
    pub fn trace_id(&self) -> String {
        telemetry::trace::trace_id(&self.otel)
    }

    /// The span this work belongs to.
    pub fn span_context(&self) -> &SpanContext {
        &self.otel
    }

    /// This context as part of the trace of `cx` (the ingress's root span, say): outgoing
    /// calls become children of that span.
    pub fn with_span_context(&self, cx: SpanContext) -> Ctx {
        let mut ctx = self.clone();
        ctx.otel = cx;
        ctx
    }

    /// The current span as an OpenTelemetry context, for handlers that record their own spans
    /// with an OpenTelemetry tracer.
    pub fn trace_context(&self) -> opentelemetry::Context {
        telemetry::trace::otel_context(&self.otel)
    }

    /// This context as part of the trace of the span in an OpenTelemetry context.
    pub fn with_trace_context(&self, cx: &opentelemetry::Context) -> Ctx {
        use opentelemetry::trace::TraceContextExt;
        self.with_span_context(cx.span().span_context().clone())
    }

    /// Keep this trace even where only selected traces are exported (PROD), here and on every
    /// service that took part (`https://all:888/trace?id=`).
    pub fn force_trace(&self) {
        force_trace(&self.conn, &self.otel);
    }

    /// This context for a caller that sends the responses of its calls off the bus (the
    /// ingress): they keep none of the bus's internal headers, which such a caller would only
    /// remove ([`Headers::External`]).
    pub fn for_external_responses(&self) -> Ctx {
        let mut ctx = self.clone();
        ctx.kept = Headers::External;
        ctx
    }

    /// This context with a deadline no later than `timeout` from now.
    pub fn with_timeout(&self, timeout: Duration) -> Ctx {
        self.with_deadline(Instant::now() + timeout)
    }

    pub fn with_deadline(&self, deadline: Instant) -> Ctx {
        let mut ctx = self.clone();
        ctx.deadline = Some(match self.deadline {
            Some(d) => d.min(deadline),
            None => deadline,
        });
        ctx
    }

    /// Resolves when the service is shutting down and in-flight work must give up.
    pub async fn cancelled(&self) {
        self.conn.inner.lifetime.cancelled().await
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Response<Bytes>, Error> {
        self.request(build_request("GET", url, Bytes::new(), None)?)
            .await
    }

    /// `POST url` with a JSON body; the response body parsed as JSON.
    pub async fn post_json<I: Serialize, O: DeserializeOwned>(
        &self,
        url: &str,
        input: &I,
    ) -> Result<O, Error> {
        let body = serde_json::to_vec(input)
            .map_err(|e| Error::bad_request(e.to_string()).caused_by(e))?;
        let res = self
            .request(build_request(
                "POST",
                url,
                Bytes::from(body),
                Some("application/json"),
            )?)
            .await?;
        serde_json::from_slice(res.body()).map_err(|e| {
            Error::internal(format!("invalid JSON response from {url}: {e}")).caused_by(e)
        })
    }

    /// Fire the event `name` of this service: `POST https://<own-host>:417/<name>` to every sink.
    pub async fn fire_event(
        &self,
        name: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Vec<Result<Response<Bytes>, Error>>, Error> {
        let url = format!(
            "https://{}:{EVENT_PORT}/{}",
            self.conn.inner.hostname,
            name.trim_start_matches('/')
        );
        Ok(self
            .multicast(build_request("POST", &url, body, content_type)?)
            .await)
    }

    /// Fire the event `name` of this service with `input` as its JSON body; every sink's
    /// answer, parsed as JSON (an answer that does not parse is that sink's error). No sink is
    /// an empty list.
    pub async fn fire_event_json<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
    ) -> Result<Vec<Result<O, Error>>, Error> {
        let body = serde_json::to_vec(input)
            .map_err(|e| Error::bad_request(e.to_string()).caused_by(e))?;
        let results = self
            .fire_event(name, Bytes::from(body), Some("application/json"))
            .await?;
        Ok(results
            .into_iter()
            .map(|r| {
                r.and_then(|res| {
                    serde_json::from_slice(res.body()).map_err(|e| {
                        Error::internal(format!("invalid JSON answer to event {name}: {e}"))
                    })
                })
            })
            .collect())
    }
}

/// Select the trace of `cx` locally and broadcast the selection to every service.
pub(crate) fn force_trace(conn: &Connector, cx: &SpanContext) {
    if !conn.inner.tracer.is_selective() {
        return;
    }
    let trace_id = cx.trace_id();
    if conn.inner.tracer.is_selected(trace_id) {
        return;
    }
    conn.inner.tracer.select(trace_id);
    let conn = conn.clone();
    tokio::spawn(async move {
        let url = format!("https://all:{CONTROL_PORT}/trace?id={trace_id}");
        if let Ok(req) = build_request("GET", &url, Bytes::new(), None) {
            // The broadcast itself is not traced (a new root the sampler drops).
            conn.ctx().multicast(req).await;
        }
    });
}

/// Build a bus request; a URL that cannot be parsed is a 400.
pub fn build_request(
    method: &str,
    url: &str,
    body: Bytes,
    content_type: Option<&str>,
) -> Result<Request<Bytes>, Error> {
    let mut b = Request::builder().method(method).uri(url);
    if let Some(ct) = content_type {
        b = b.header(http::header::CONTENT_TYPE, ct);
    }
    b.body(body)
        .map_err(|e| Error::bad_request(format!("invalid request to {url}: {e}")).caused_by(e))
}

/// The value of the query argument `name` of `req`, decoded; the first when it repeats.
pub fn query_arg(req: &Request<Bytes>, name: &str) -> Option<String> {
    // The pairs as serde_urlencoded reads them (the same parser), without a `String` for each
    // key and value that is not the one asked for.
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A handler over typed JSON: the input comes from a JSON body, or from the query string when
/// there is no body; the output is the JSON response. Bad input is a 400.
pub fn json<I, O, F, Fut>(f: F) -> impl Handler
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    F: Fn(Ctx, I) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<O, Error>> + Send + 'static,
{
    let f = Arc::new(f);
    move |ctx: Ctx, req: Request<Bytes>| {
        let f = f.clone();
        async move {
            let input: I = if req.body().is_empty() {
                serde_urlencoded::from_str(req.uri().query().unwrap_or("")).map_err(|e| {
                    Error::bad_request(format!("invalid arguments: {e}")).caused_by(e)
                })?
            } else {
                serde_json::from_slice(req.body()).map_err(|e| {
                    Error::bad_request(format!("invalid JSON body: {e}")).caused_by(e)
                })?
            };
            let output = f(ctx, input).await?;
            let body = serde_json::to_vec(&output).map_err(|e| {
                Error::internal(format!("cannot encode response: {e}")).caused_by(e)
            })?;
            Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Bytes::from(body))
                .map_err(|e| Error::internal(e.to_string()).caused_by(e))
        }
    }
}

/// The future a handler returns.
pub type HandlerFuture = BoxFuture<'static, Result<Response<Bytes>, Error>>;

/// An endpoint handler: an async function over the request, with the call context.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, ctx: Ctx, req: Request<Bytes>) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Ctx, Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Bytes>, Error>> + Send + 'static,
{
    fn call(&self, ctx: Ctx, req: Request<Bytes>) -> HandlerFuture {
        Box::pin(self(ctx, req))
    }
}

/// One endpoint of a service.
pub(crate) struct Endpoint {
    pub method: String,
    pub route: RouteSpec,
    pub queue: Queue,
    pub handler: Arc<dyn Handler>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_args_read_as_serde_urlencoded_reads_them() {
        let req = |q: &str| {
            Request::builder()
                .uri(format!("https://a.example/x?{q}"))
                .body(Bytes::new())
                .unwrap()
        };
        for (query, name) in [
            ("name=w", "name"),
            ("a=1&name=first&name=second", "name"),
            ("name=J%C3%BCrgen+M", "name"),
            ("name=%FF%FE", "name"),
            ("na%6De=encoded-key", "name"),
            ("name", "name"),
            ("name=&x=1", "name"),
            ("x=1", "name"),
            ("", "name"),
            ("secretkey=s&secretKey=S", "secretKey"),
        ] {
            let r = req(query);
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_str(query).unwrap_or_default();
            let expected = pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v);
            assert_eq!(query_arg(&r, name), expected, "{query}");
        }
        let no_query = Request::builder()
            .uri("https://a.example/x")
            .body(Bytes::new())
            .unwrap();
        assert_eq!(query_arg(&no_query, "name"), None);
    }
}
