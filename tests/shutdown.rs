//! Graceful shutdown under load, on NATS and on the in-process bus. A test binary of its own:
//! it asserts that not one of 300 calls fails, which must not depend on how busy the other
//! tests keep the machine.

mod common;

use std::time::Duration;

use busgate::{Ctx, Service};
use common::{client, text, TestBus};

on_every_bus!(graceful_shutdown_loses_no_accepted_request);

fn slow_echo() -> Service {
    Service::new("drain.test").get("/work", |_ctx: Ctx, _req| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(text("done"))
    })
}

async fn graceful_shutdown_loses_no_accepted_request(bus: TestBus) {
    let a = slow_echo().start(&bus.config).await.unwrap();
    let b = slow_echo().start(&bus.config).await.unwrap();
    let c = client(&bus).await;
    let mut calls = Vec::new();
    for i in 0..300u64 {
        let ctx = c.ctx();
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 3)).await;
            ctx.get("https://drain.test/work").await
        }));
    }
    // Mid-load, replica a leaves: what it accepted it finishes; the rest goes to b.
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.shutdown().await;
    let mut failures = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(res) => assert_eq!(res.body(), "done"),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    c.shutdown().await;
    b.shutdown().await;
}
