//! `eventsource.example`: fires events that other services sink.
//!
//! Run it: `cargo run --release` (the ingress on :8080 and the examples, on the in-process
//! bus; `MICROBUS_NATS=nats://127.0.0.1:4222` for NATS), then try:
//!
//! ```text
//! curl 'localhost:8080/eventsource.example/register?email=ann@example.com'   {"allowed":true}
//! curl 'localhost:8080/eventsource.example/register?email=bob@gmail.com'     {"allowed":false}
//! curl 'localhost:8080/eventsink.example/registered'                         ["ann@example.com"]
//! ```
//!
//! `GET /eventsource.example/register?email=ann@example.com` fires `on-allow-register` to every
//! sink (any sink may veto by answering `{"allow": false}`), then, when nobody vetoed,
//! `on-registered`. The answer is `{"allowed": true|false}`.
//!
//! Sinks subscribe with [`Service::sink`]:
//!
//! ```no_run
//! use busgate::examples::eventsource::{self, OnAllowRegisterIn, OnAllowRegisterOut};
//! use busgate::{json, Ctx, Error, Service};
//!
//! async fn allow(_ctx: Ctx, i: OnAllowRegisterIn) -> Result<OnAllowRegisterOut, Error> {
//!     Ok(OnAllowRegisterOut { allow: !i.email.ends_with("@spam.example") })
//! }
//! let sink = Service::new("guard.example").sink(
//!     eventsource::HOSTNAME,
//!     eventsource::ON_ALLOW_REGISTER,
//!     json(allow),
//! );
//! ```

use serde::{Deserialize, Serialize};

use crate::connector::{json, Ctx, Service};
use crate::error::Error;

pub const HOSTNAME: &str = "eventsource.example";
/// Asked before a registration; any sink may veto.
pub const ON_ALLOW_REGISTER: &str = "on-allow-register";
/// Told after a registration.
pub const ON_REGISTERED: &str = "on-registered";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterIn {
    pub email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterOut {
    pub allowed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnAllowRegisterIn {
    pub email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnAllowRegisterOut {
    pub allow: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnRegisteredIn {
    pub email: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OnRegisteredOut {}

pub fn service() -> Service {
    Service::new(HOSTNAME)
        .version(1)
        .any("/register", json(register))
}

/// Fire `on-allow-register`: every sink's verdict (an error where a sink failed).
pub async fn fire_on_allow_register(
    ctx: &Ctx,
    email: &str,
) -> Result<Vec<Result<bool, Error>>, Error> {
    let answers: Vec<Result<OnAllowRegisterOut, Error>> = ctx
        .fire_event_json(
            ON_ALLOW_REGISTER,
            &OnAllowRegisterIn {
                email: email.to_owned(),
            },
        )
        .await?;
    Ok(answers.into_iter().map(|a| a.map(|o| o.allow)).collect())
}

/// Fire `on-registered`: one result per sink.
pub async fn fire_on_registered(ctx: &Ctx, email: &str) -> Result<Vec<Result<(), Error>>, Error> {
    let answers: Vec<Result<OnRegisteredOut, Error>> = ctx
        .fire_event_json(
            ON_REGISTERED,
            &OnRegisteredIn {
                email: email.to_owned(),
            },
        )
        .await?;
    Ok(answers.into_iter().map(|a| a.map(|_| ())).collect())
}

async fn register(ctx: Ctx, input: RegisterIn) -> Result<RegisterOut, Error> {
    let email = input.email.trim().to_ascii_lowercase();
    match email.split_once('@') {
        Some((user, domain)) if !user.is_empty() && domain.contains('.') => {}
        _ => {
            return Err(Error::bad_request(format!(
                "invalid email '{}'",
                input.email
            )))
        }
    }
    for verdict in fire_on_allow_register(&ctx, &email).await? {
        // A sink that cannot answer cannot be taken as consent.
        if !verdict? {
            tracing::info!(%email, "registration vetoed");
            return Ok(RegisterOut { allowed: false });
        }
    }
    for told in fire_on_registered(&ctx, &email).await? {
        if let Err(e) = told {
            tracing::warn!(%email, error = %e, "a sink of on-registered failed");
        }
    }
    Ok(RegisterOut { allowed: true })
}
