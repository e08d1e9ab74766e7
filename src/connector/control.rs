//! The control plane on port 888 (reference §3): every replica answers, on its own host and
//! on `all`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};

use super::route::{Endpoint, Handler, Queue, RouteSpec};
use super::{Ctx, CONTROL_PORT};
use crate::error::Error;
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

fn json(body: &'static str) -> Response<Bytes> {
    let mut res = Response::new(Bytes::from_static(body.as_bytes()));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

async fn ping(_ctx: Ctx, _req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    Ok(json(r#"{"pong":0}"#))
}

async fn config_refresh(ctx: Ctx, _req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    if let Some(hook) = ctx.connector().inner.refresh.clone() {
        hook().await?;
    }
    Ok(json("{}"))
}

async fn metrics(ctx: Ctx, _req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    match ctx.connector().inner.metrics.clone() {
        Some(hook) => hook().await,
        None => Err(Error::new(
            StatusCode::NOT_IMPLEMENTED,
            "no metrics registry",
        )),
    }
}

async fn trace(_ctx: Ctx, _req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    // Selecting a trace matters only to the PROD tail sampler, which the telemetry layer adds.
    Ok(json("{}"))
}
