//! The connector: one microservice instance on the bus, serving endpoints and calling others.
//!
//! ```no_run
//! use busgate::{BusConfig, Ctx, Error, Service};
//! use bytes::Bytes;
//! use http::{Request, Response};
//!
//! async fn hello(_ctx: Ctx, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
//!     Ok(Response::new(Bytes::from(format!("Hello from {}", req.uri().path()))))
//! }
//!
//! # async fn run() -> Result<(), busgate::StartError> {
//! let conn = Service::new("hello.example")
//!     .get("/hello", hello)
//!     .start(&BusConfig::in_process())
//!     .await?;
//! conn.shutdown().await;
//! # Ok(()) }
//! ```

//!
//! The files, from the bottom: `defaults` (timings, limits, ports), `ids`, `route` (path
//! specs), `inbox` (what calls wait on), `inbound` (the request a handler's context keeps),
//! `fragment` (large bodies), `bus_config` (the `MICROBUS_*` settings); `instance` (the
//! types); `call` and `serve` (the two directions); `control` (the `:888` endpoints).

mod bus_config;
mod call;
mod control;
mod defaults;
pub(crate) mod fragment;
mod ids;
mod inbound;
mod inbox;
mod instance;
mod route;
mod serve;

pub use bus_config::BusConfig;
pub use defaults::*;
pub use ids::{new_instance_id, new_msg_id};
pub(crate) use instance::force_trace;
pub use instance::{
    build_request, json, query_arg, Connector, Ctx, Handler, HandlerFuture, MetricsHook,
    RefreshHook, Service, StartError,
};
pub use route::{Queue, RouteSpec};
