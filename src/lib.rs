//! busgate: an observability-first HTTP gateway and Rust connector for the Microbus wire
//! protocol over NATS.
//!
//! - [`wire`]: subjects, frame headers, the HTTP/1.1 payload codec, the error body.
//! - [`transport`]: NATS and the in-process bus behind one [`transport::Bus`].
//! - [`connector`]: a service instance that serves endpoints and calls others.
//! - [`examples`]: the example services the demo and the tests use.

/// The global allocator the binaries and benches install.
pub mod allocator;
pub mod cli;
pub mod config;
pub mod connector;
pub mod error;
pub mod examples;
/// The properties `fuzz/` checks and `tests/fuzz_corpus.rs` replays; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod ingress;
pub mod services;
pub mod telemetry;
pub mod transport;
pub mod wire;

pub use config::Deployment;
pub use connector::{
    build_request, json, BusConfig, Connector, Ctx, Handler, Queue, Service, StartError,
};
pub use error::{Error, ErrorKind};
