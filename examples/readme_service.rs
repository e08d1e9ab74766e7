//! The service of the README's "Writing a service", compiled and run by the test suite
//! (`tests/readme.rs` checks that the README shows this file's code).
//!
//! Run it: `cargo run --example readme_service` (on the in-process bus; set `MICROBUS_NATS`
//! for NATS). It starts `adder.example`, calls its `/add` once and stops.

use busgate::{json, BusConfig, Ctx, Error, Service};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct AddIn {
    x: i64,
    y: i64,
}
#[derive(Serialize)]
struct AddOut {
    sum: i64,
}

async fn add(_ctx: Ctx, input: AddIn) -> Result<AddOut, Error> {
    let sum = input
        .x
        .checked_add(input.y)
        .ok_or_else(|| Error::bad_request("overflow"))?;
    Ok(AddOut { sum })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = BusConfig::from_env(None)?; // MICROBUS_NATS, MICROBUS_PLANE, ...
    let calc = Service::new("adder.example")
        .version(1)
        .any("/add", json(add)) // https://adder.example:443/add
        .start(&config)
        .await?;

    // Calling another service: unicast with ack-or-fail, budget and header propagation.
    let res = calc.ctx().get("https://adder.example/add?x=1&y=2").await?;
    assert_eq!(res.body().as_ref(), br#"{"sum":3}"#);

    calc.shutdown().await; // drains in-flight requests
    Ok(())
}
