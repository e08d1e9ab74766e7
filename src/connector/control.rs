//! The control plane on port 888 (reference §3): every replica answers, on its own host and
//! on `all`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response};

use super::defaults::CONTROL_PORT;
use super::instance::{Ctx, Endpoint, Handler};
use super::route::{Queue, RouteSpec};
use crate::error::Error;
use crate::telemetry::exposition::{accepts_gzip, exposition_response};
use crate::telemetry::trace::parse_trace_id;
use crate::wire::ALL_HOSTS;

pub const PING: &str = "ping";
pub const CONFIG_REFRESH: &str = "config-refresh";
pub const METRICS: &str = "metrics";
pub const TRACE: &str = "trace";

pub(crate) fn endpoints() -> Vec<Endpoint> {
    let handlers: [(&str, Arc<dyn Handler>); 4] = [
        (PING, Arc::new(ping)),
        (CONFIG_REFRESH, Arc::new(config_refresh)),
        (METRICS, Arc::new(metrics)),
        (TRACE, Arc::new(trace)),
    ];
    let mut out = Vec::with_capacity(8);
    for (path, handler) in handlers {
        for host in [None, Some(ALL_HOSTS.to_owned())] {
            out.push(Endpoint {
                method: "ANY".to_owned(),
                route: RouteSpec {
                    host,
                    port: CONTROL_PORT,
                    path: format!("/{path}"),
                },
                queue: Queue::None,
                handler: handler.clone(),
            });
        }
    }
    out
}

fn json_response(body: &'static str) -> Response<Bytes> {
    let mut res = Response::new(Bytes::from_static(body.as_bytes()));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

async fn ping(_ctx: Ctx, _req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    Ok(json_response(r#"{"pong":0}"#))
}

async fn config_refresh(ctx: Ctx, _req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    if let Some(hook) = ctx.connector().inner.refresh.clone() {
        hook().await?;
    }
    Ok(json_response("{}"))
}

async fn metrics(ctx: Ctx, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    let inner = &ctx.connector().inner;
    inner.metrics.refresh(inner.bus.nats_connection());
    Ok(exposition_response(
        inner.metrics.encode(),
        accepts_gzip(req.headers()),
    ))
}

/// Keep trace `id` (PROD's tail selection): `?id=<32 hex>`, or a JSON body `{"id": ...}` as
/// Go's control client sends it. Like Go, it answers `{}` whatever it was given: a missing or
/// malformed id selects nothing.
async fn trace(ctx: Ctx, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        id: String,
    }
    let from_query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("id="))
        .and_then(parse_trace_id);
    let id = from_query.or_else(|| {
        serde_json::from_slice::<Body>(req.body())
            .ok()
            .and_then(|b| parse_trace_id(&b.id))
    });
    if let Some(id) = id {
        ctx.connector().inner.tracer.select(id);
    }
    Ok(json_response("{}"))
}
