//! `metrics.core`: one Prometheus scrape target for the whole bus. `GET /metrics.core/collect`
//! through the ingress pings the bus, pulls `:888/metrics` from every instance in parallel, and
//! returns one exposition with each family once.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
use http::{Request, Response, StatusCode};

use crate::config::{Deployment, PropertyTable, Setting};
use crate::connector::{build_request, query_arg, Ctx, Service, CONTROL_PORT};
use crate::error::Error;
use crate::telemetry::exposition;
use crate::telemetry::exposition::{accepts_gzip, exposition_response};
use crate::wire::frame::Frame;
use crate::wire::{is_valid_hostname, ALL_HOSTS};

pub const HOSTNAME: &str = "metrics.core";
/// The secret a scraper passes as `?secretKey=`; needed outside LOCAL and TESTING.
/// The key a scraper must pass (`?secretKey=`) outside LOCAL and TESTING.
pub const SECRET_KEY: Setting<Option<String>> = Setting {
    property: "SecretKey",
    env: ENV_SECRET_KEY,
    default: || None,
    parse: |v| Ok(Some(v.to_owned())),
};

/// This service's `config.yaml` side.
pub const SETTINGS: PropertyTable = PropertyTable {
    host: HOSTNAME,
    env_prefix: "BUSGATE_METRICS_",
    component: "metrics.core",
    properties: &[SECRET_KEY.names()],
};
pub const ENV_SECRET_KEY: &str = "BUSGATE_METRICS_SECRET_KEY";
/// Prometheus tells how long it will wait; we answer a little before that: a tenth of it,
/// at most half a second.
pub const SCRAPE_TIMEOUT_HEADER: &str = "x-prometheus-scrape-timeout-seconds";
pub const SCRAPE_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);

/// The budget for a scrape that Prometheus waits `secs` for.
fn scrape_budget(secs: f64) -> Duration {
    let wait = Duration::from_secs_f64(secs.min(3600.0));
    wait.saturating_sub((wait / 10).min(SCRAPE_TIMEOUT_MARGIN))
}

pub fn service(secret_key: Option<String>) -> Service {
    let secret = secret_key.filter(|k| !k.is_empty());
    Service::new(HOSTNAME)
        .version(1)
        .any("/collect", move |ctx: Ctx, req: Request<Bytes>| {
            let secret = secret.clone();
            async move { collect(ctx, req, secret.as_deref()).await }
        })
}

async fn collect(
    ctx: Ctx,
    req: Request<Bytes>,
    secret: Option<&str>,
) -> Result<Response<Bytes>, Error> {
    let given = query_arg(&req, "secretKey").or_else(|| query_arg(&req, "secretkey"));
    let open = matches!(
        ctx.connector().deployment(),
        Deployment::Local | Deployment::Testing
    );
    match secret {
        Some(s) if given.as_deref() == Some(s) => {}
        None if open => {}
        _ => return Err(Error::new(StatusCode::NOT_FOUND, "incorrect secret key")),
    }
    let target = query_arg(&req, "service").unwrap_or_else(|| ALL_HOSTS.to_owned());
    if !is_valid_hostname(&target) {
        return Err(Error::bad_request(format!("invalid service '{target}'")));
    }
    let mut ctx = ctx;
    if let Some(secs) = req
        .headers()
        .get(SCRAPE_TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
    {
        ctx = ctx.with_timeout(scrape_budget(secs));
    }

    let ping = build_request(
        "POST",
        &format!("https://{target}:{CONTROL_PORT}/ping"),
        Bytes::new(),
        None,
    )?;
    let mut hosts: Vec<String> = ctx
        .multicast(ping)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|res| Frame(res.headers()).from_host().map(str::to_owned))
        .collect();
    hosts.sort();
    hosts.dedup();

    let pulls = hosts.iter().map(|host| {
        let ctx = ctx.clone();
        async move {
            let mut req = build_request(
                "GET",
                &format!("https://{host}:{CONTROL_PORT}/metrics"),
                Bytes::new(),
                None,
            )?;
            req.headers_mut()
                .insert(ACCEPT_ENCODING, http::HeaderValue::from_static("gzip"));
            Ok::<_, Error>(ctx.multicast(req).await)
        }
    });
    let mut texts = Vec::new();
    let mut failures = 0usize;
    for pulled in join_all(pulls).await {
        for res in pulled?.into_iter() {
            match res.and_then(|r| body_text(&r)) {
                Ok(text) => texts.push(text),
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "an instance's metrics could not be collected")
                }
            }
        }
    }
    // An empty 200 would make Prometheus drop every series while `up` stays 1: say instead
    // that nothing arrived in time. What did arrive is served, even if some instances missed.
    if texts.is_empty() {
        return Err(Error::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no instance's metrics were collected in time ({} found, {failures} failed)",
                hosts.len()
            ),
        ));
    }
    Ok(exposition_response(
        exposition::merge(&texts),
        accepts_gzip(req.headers()),
    ))
}

fn body_text(res: &Response<Bytes>) -> Result<String, Error> {
    let gzipped = res
        .headers()
        .get(CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if !gzipped {
        return String::from_utf8(res.body().to_vec())
            .map_err(|_| Error::internal("metrics are not UTF-8"));
    }
    let mut text = String::new();
    flate2::read::GzDecoder::new(res.body().as_ref())
        .read_to_string(&mut text)
        .map_err(|e| Error::internal(format!("cannot gunzip metrics: {e}")).caused_by(e))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_a_tenth_at_most_half_a_second() {
        assert_eq!(scrape_budget(10.0), Duration::from_millis(9500));
        assert_eq!(scrape_budget(1.0), Duration::from_millis(900));
        assert_eq!(scrape_budget(0.5), Duration::from_millis(450));
    }
}
