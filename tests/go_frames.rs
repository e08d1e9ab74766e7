//! Frames recorded from real Go Microbus v1.7 services (`tests/fixtures/fabric-v1.7/`),
//! replayed against busgate on a real nats-server and on the in-process bus: what a Go peer
//! sends, busgate answers as Go does; what a Go peer answers, busgate reads as Go does.

mod common;

use std::time::Duration;

use busgate::transport::Bus;
use busgate::wire::{codec, response_subject, Frame, OpCode};
use busgate::{Ctx, Service};
use bytes::Bytes;
use common::TestBus;
use http::{Request, Response, StatusCode};

on_both_buses!(
    go_trace_selections_get_empty_json_with_or_without_an_id,
    a_go_error_without_a_message_keeps_its_status,
    a_call_without_a_deadline_sends_no_time_budget,
);

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/fabric-v1.7/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A recorded subject on this test's plane (the recording's plane is `microbus`).
fn on_plane(bus: &TestBus, subject: &[u8]) -> String {
    let s = std::str::from_utf8(subject).unwrap();
    format!(
        "{}{}",
        bus.config.plane,
        s.strip_prefix("microbus")
            .expect("recorded on plane microbus")
    )
}

async fn raw(bus: &TestBus) -> Bus {
    bus.config.transport.connect("raw.test").await.unwrap()
}

async fn next(sub: &mut busgate::transport::Subscription) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an answer within 5 s")
        .expect("subscription open")
        .payload
}

/// Go's control client posts `{"id": ...}` to `:888/trace`; Go's `?id=` form and a body
/// without an id also get `200 {}` (Go's answer is recorded beside the request).
async fn go_trace_selections_get_empty_json_with_or_without_an_id(bus: TestBus) {
    let svc = Service::new("beta.example")
        .start(&bus.config)
        .await
        .unwrap();
    let raw = raw(&bus).await;
    let mut inbox = raw
        .subscribe(on_plane(&bus, b"microbus.r.example.alpha.0eumsmjb6b"), None)
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let go_answer = codec::decode_response(Bytes::from(fixture(
        "s16-control-trace-config-refresh_03-Res.payload",
    )))
    .unwrap();
    let with_body = fixture("s16-control-trace-config-refresh_01-Req.payload");
    let with_query = fixture("s16-control-trace-config-refresh_04-Req.payload");
    // The same request with a body that names no id.
    let without_id = String::from_utf8(with_body.clone())
        .unwrap()
        .replace(
            "29\r\n{\"id\":\"0123456789abcdef0123456789abcdef\"}\r\n",
            "2\r\n{}\r\n",
        )
        .into_bytes();
    assert_ne!(without_id, with_body);
    for (what, payload, subject) in [
        (
            "POST with the id in the body",
            with_body,
            "s16-control-trace-config-refresh_01-Req.subject",
        ),
        (
            "GET ?id=",
            with_query,
            "s16-control-trace-config-refresh_04-Req.subject",
        ),
        (
            "POST without an id",
            without_id,
            "s16-control-trace-config-refresh_01-Req.subject",
        ),
    ] {
        raw.publish(on_plane(&bus, &fixture(subject)), Bytes::from(payload))
            .await
            .unwrap();
        let ack = codec::decode_response(next(&mut inbox).await).unwrap();
        assert_eq!(ack.status(), StatusCode::ACCEPTED, "{what}");
        let res = codec::decode_response(next(&mut inbox).await).unwrap();
        assert_eq!(res.status(), go_answer.status(), "{what}");
        assert_eq!(res.body(), go_answer.body(), "{what}");
        assert_eq!(
            res.headers()["content-type"],
            go_answer.headers()["content-type"]
        );
        assert_eq!(Frame(res.headers()).op_code(), Some(OpCode::Res), "{what}");
    }
    svc.shutdown().await;
}

/// A Go handler returning `errors.Newc(409, "")` sends a body without `error`: the busgate
/// caller sees 409, not 500.
async fn a_go_error_without_a_message_keeps_its_status(bus: TestBus) {
    let raw = raw(&bus).await;
    let mut requests = raw
        .subscribe(
            format!("{}.443.example.beta.|.GET.fail-empty", bus.config.plane),
            None,
        )
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let plane = bus.config.plane.clone();
    let go = tokio::spawn(async move {
        let req = codec::decode_request(next(&mut requests).await).unwrap();
        let f = Frame(req.headers());
        let msg_id = f.msg_id().unwrap().to_owned();
        let inbox = response_subject(&plane, f.from_host().unwrap(), f.from_id().unwrap()).unwrap();
        // Go's recorded ack and Err, with this call's message id.
        for name in [
            "s04-err-empty-message_02-Ack.payload",
            "s04-err-empty-message_03-Err.payload",
        ] {
            let payload = String::from_utf8(fixture(name))
                .unwrap()
                .replace("3tK7q7Gr", &msg_id);
            raw.publish(inbox.clone(), Bytes::from(payload))
                .await
                .unwrap();
            raw.flush().await.unwrap();
        }
    });
    let client = common::client(&bus).await;
    let err = client
        .ctx()
        .get("https://beta.example/fail-empty")
        .await
        .expect_err("an Err response");
    assert_eq!(err.status(), StatusCode::CONFLICT, "{err:?}");
    go.await.unwrap();
    client.shutdown().await;
}

/// Go sends `Microbus-Time-Budget` only when the caller has a deadline (the recorded Go
/// request has none); so does busgate, and a deadline is sent when there is one.
async fn a_call_without_a_deadline_sends_no_time_budget(bus: TestBus) {
    let go =
        codec::decode_request(Bytes::from(fixture("s02-get-no-deadline_01-Req.payload"))).unwrap();
    assert!(Frame(go.headers()).time_budget_ms().is_none());
    let svc = Service::new("beta.example")
        .get("/budget", |_ctx: Ctx, req: Request<Bytes>| async move {
            let budget = req
                .headers()
                .get("microbus-time-budget")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| "none".into());
            Ok(Response::new(Bytes::from(budget)))
        })
        .start(&bus.config)
        .await
        .unwrap();
    let client = common::client(&bus).await;
    let res = client
        .ctx()
        .get("https://beta.example/budget")
        .await
        .unwrap();
    assert_eq!(res.body(), "none");
    let res = client
        .ctx()
        .with_timeout(Duration::from_secs(5))
        .get("https://beta.example/budget")
        .await
        .unwrap();
    let sent: u64 = std::str::from_utf8(res.body()).unwrap().parse().unwrap();
    assert!(sent > 4000 && sent <= 5000, "{sent}");
    client.shutdown().await;
    svc.shutdown().await;
}
