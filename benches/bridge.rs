//! The floors busgate is measured against (`benches/compare.sh`), as one small binary:
//!
//! - `bridge <listen> <nats-url> <subject>`: the bare HTTP→NATS bridge. An axum server that turns
//!   every request into one async-nats request/reply on `<subject>` (the path and query as the
//!   payload) and answers with the reply's payload. No frame, no headers, no telemetry: what a
//!   gateway over NATS cannot go below.
//! - `responder <nats-url> <subject>`: answers every request on `<subject>` with
//!   `Hello, <name>!`, as `hello.example/hello?name=` does.
//! - `hello <listen>`: an axum hello world, the floor of the HTTP side alone.
//!
//! Run: `cargo bench --bench bridge -- hello 127.0.0.1:18000` (or `benches/compare.sh`, which
//! builds it and runs every floor beside busgate).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;

#[global_allocator]
static ALLOCATOR: busgate::allocator::Allocator = busgate::allocator::Allocator;

/// The bridge's own budget per request: the same order as busgate's default.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone)]
struct Bridge {
    nats: async_nats::Client,
    subject: String,
}

async fn bridge(State(b): State<Bridge>, req: Request) -> Response {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let body = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
        Ok(body) => body,
        Err(_) => return (StatusCode::BAD_REQUEST, "unreadable body").into_response(),
    };
    let payload = if body.is_empty() {
        Bytes::from(target)
    } else {
        body
    };
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, b.nats.request(b.subject.clone(), payload));
    match reply.await {
        Ok(Ok(msg)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            msg.payload,
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "timeout").into_response(),
    }
}

/// `Hello, <name>!` from a payload `/any/path?name=<name>` (other payloads: `Hello, World!`).
fn greeting(payload: &[u8]) -> Bytes {
    let text = std::str::from_utf8(payload).unwrap_or("");
    let name = text
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .filter(|n| !n.is_empty())
        .unwrap_or("World");
    Bytes::from(format!("Hello, {name}!"))
}

async fn responder(nats: async_nats::Client, subject: String) {
    let mut sub = nats
        .queue_subscribe(subject, "responder".into())
        .await
        .expect("subscribe");
    while let Some(msg) = sub.next().await {
        if let Some(reply) = msg.reply {
            let _ = nats.publish(reply, greeting(&msg.payload)).await;
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bridge bridge <listen> <nats-url> <subject>\n       \
         bridge responder <nats-url> <subject>\n       bridge hello <listen>"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    // `cargo bench` appends `--bench`; nothing else is expected there.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    match args.first().map(String::as_str) {
        Some("bridge") => {
            let nats = async_nats::connect(arg(2)).await.expect("connect to NATS");
            let app = Router::new().fallback(bridge).with_state(Bridge {
                nats,
                subject: arg(3),
            });
            let listener = tokio::net::TcpListener::bind(arg(1)).await.expect("bind");
            axum::serve(listener, app).await.expect("serve");
        }
        Some("responder") => {
            let nats = async_nats::connect(arg(1)).await.expect("connect to NATS");
            responder(nats, arg(2)).await;
        }
        Some("hello") => {
            let app = Router::new().fallback(|| async { "Hello, World!" });
            let listener = tokio::net::TcpListener::bind(arg(1)).await.expect("bind");
            axum::serve(listener, app).await.expect("serve");
        }
        _ => usage(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn greets_by_name() {
        assert_eq!(
            &super::greeting(b"/hello.example/hello?name=w")[..],
            b"Hello, w!"
        );
        assert_eq!(&super::greeting(b"/x?a=1&name=Ann")[..], b"Hello, Ann!");
        assert_eq!(&super::greeting(b"/x")[..], b"Hello, World!");
    }
}
