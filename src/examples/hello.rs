//! `hello.example`: echo, greetings, a call to the calculator, and a bus-wide ping: plain
//! handlers over `Request<Bytes>`, and calls to other services from inside one.
//!
//! Run it: `cargo run --release` (the ingress on :8080 and the examples, on the in-process
//! bus; `MICROBUS_NATS=nats://127.0.0.1:4222` for NATS), then try:
//!
//! ```text
//! curl 'localhost:8080/hello.example/hello?name=you'          Hello, you!
//! curl 'localhost:8080/hello.example/calculator?x=2&op=%2B&y=3'   2 + 3 = 5 (a call to calculator.example)
//! curl 'localhost:8080/hello.example/ping'                    every instance on the bus, by id
//! curl 'localhost:8080/hello.example/echo'                    the request as it crossed the bus
//! ```

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response};

use super::calculator::{self, ArithmeticOut};
use crate::connector::{query_arg, Ctx, Service};
use crate::error::Error;
use crate::wire::{codec, frame::Frame};

pub const HOSTNAME: &str = "hello.example";

pub fn service() -> Service {
    Service::new(HOSTNAME)
        .version(1)
        .any("/echo", echo)
        .any("/hello", hello)
        .any("/calculator", calculator)
        .any("/ping", ping)
}

fn text(body: String) -> Response<Bytes> {
    let mut res = Response::new(Bytes::from(body));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The request as received, in its wire form.
async fn echo(_ctx: Ctx, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    let wire = codec::encode_request(&req).map_err(|e| Error::internal(e.to_string()))?;
    let mut res = Response::new(wire);
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(res)
}

async fn hello(_ctx: Ctx, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    let name = query_arg(&req, "name")
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "World".to_owned());
    Ok(text(format!("Hello, {name}!")))
}

/// Forward `x`, `op`, `y` to `calculator.example/arithmetic` and render the result.
async fn calculator(ctx: Ctx, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    let query = req.uri().query().unwrap_or("");
    let url = format!("https://{}/arithmetic?{query}", calculator::HOSTNAME);
    let res = ctx.get(&url).await?;
    let out: ArithmeticOut = serde_json::from_slice(res.body())
        .map_err(|e| Error::internal(format!("invalid calculator response: {e}")))?;
    Ok(text(format!(
        "{} {} {} = {}",
        out.x_echo, out.op_echo, out.y_echo, out.result
    )))
}

/// Every instance on the bus, found through `https://all:888/ping`, one `id.host` per line.
async fn ping(ctx: Ctx, _req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
    let req = crate::connector::build_request("POST", "https://all:888/ping", Bytes::new(), None)?;
    let mut found: Vec<String> = ctx
        .multicast(req)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|res| {
            let f = Frame(res.headers());
            Some(format!("{}.{}", f.from_id()?, f.from_host()?))
        })
        .collect();
    found.sort();
    found.dedup();
    Ok(text(found.join("\n")))
}
