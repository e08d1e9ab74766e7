//! `calculator.example`: integer arithmetic as typed JSON endpoints ([`json`] handlers: the
//! input from the query or a JSON body, the output as JSON, bad input a 400).
//!
//! Run it: `cargo run --release` (the ingress on :8080 and the examples, on the in-process
//! bus; `MICROBUS_NATS=nats://127.0.0.1:4222` for NATS), then try:
//!
//! ```text
//! curl 'localhost:8080/calculator.example/arithmetic?x=5&op=*&y=3'
//!   {"xEcho":5,"opEcho":"*","yEcho":3,"result":15}
//! curl 'localhost:8080/calculator.example/square?x=4'
//!   {"xEcho":4,"result":16}
//! curl 'localhost:8080/calculator.example/arithmetic?x=5&op=/&y=0'
//!   400 division by zero (with the stack and the trace id, for a local client)
//! curl 'localhost:8080/calculator.example/arithmetic?x=a&op=*&y=3'
//!   400 invalid arguments: invalid digit found in string
//! ```

use serde::{Deserialize, Serialize};

use crate::connector::{json, Ctx, Service};
use crate::error::Error;

pub const HOSTNAME: &str = "calculator.example";

#[derive(Debug, Deserialize)]
pub struct ArithmeticIn {
    pub x: i64,
    pub op: String,
    pub y: i64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArithmeticOut {
    pub x_echo: i64,
    pub op_echo: String,
    pub y_echo: i64,
    pub result: i64,
}

#[derive(Debug, Deserialize)]
pub struct SquareIn {
    pub x: i64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SquareOut {
    pub x_echo: i64,
    pub result: i64,
}

pub fn service() -> Service {
    Service::new(HOSTNAME)
        .version(1)
        .any("/arithmetic", json(arithmetic))
        .any("/square", json(square))
}

async fn arithmetic(_ctx: Ctx, input: ArithmeticIn) -> Result<ArithmeticOut, Error> {
    // A `+` in a query string decodes to a space.
    let op = if input.op == " " {
        "+".to_owned()
    } else {
        input.op
    };
    let (x, y) = (input.x, input.y);
    let result = match op.as_str() {
        "+" => x.checked_add(y),
        "-" => x.checked_sub(y),
        "*" => x.checked_mul(y),
        "/" => {
            if y == 0 {
                return Err(Error::bad_request("division by zero"));
            }
            x.checked_div(y)
        }
        other => return Err(Error::bad_request(format!("invalid operator '{other}'"))),
    }
    .ok_or_else(|| Error::bad_request("integer overflow"))?;
    Ok(ArithmeticOut {
        x_echo: x,
        op_echo: op,
        y_echo: y,
        result,
    })
}

async fn square(_ctx: Ctx, input: SquareIn) -> Result<SquareOut, Error> {
    let result = input
        .x
        .checked_mul(input.x)
        .ok_or_else(|| Error::bad_request("integer overflow"))?;
    Ok(SquareOut {
        x_echo: input.x,
        result,
    })
}
