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

on_every_bus!(
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
        raw.publish(
            on_plane(&bus, &fixture(subject)).into(),
            Bytes::from(payload),
        )
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
            raw.publish(inbox.clone().into(), Bytes::from(payload))
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

/// The families of a Prometheus text exposition: name → (type, label names, bucket bounds).
fn families(
    text: &str,
) -> std::collections::BTreeMap<String, (String, std::collections::BTreeSet<String>, Vec<String>)> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut out: BTreeMap<String, (String, BTreeSet<String>, Vec<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (name, kind) = (w.next().unwrap(), w.next().unwrap());
            out.entry(name.to_owned()).or_default().0 = kind.to_owned();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels) = line.split_once('{').unwrap_or((line, ""));
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| out.contains_key(*f)))
            .unwrap_or(name);
        let Some(entry) = out.get_mut(family) else {
            continue;
        };
        let labels = labels.rsplit_once('}').map_or("", |(l, _)| l);
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                if k == "le" {
                    let v = v.trim_end_matches('"').to_owned();
                    if !entry.2.contains(&v) {
                        entry.2.push(v);
                    }
                } else {
                    entry.1.insert(k.to_owned());
                }
            }
        }
    }
    out
}

/// busgate's expositions carry exactly the families of Go v1.7 services, with the same type,
/// labels and buckets (recorded from a Go service and a Go caller), so that one dashboard
/// panel and one alert cover Go and Rust services alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_metrics_are_the_families_of_go_v1_7() {
    // Log lines are counted (Go counts its "Startup" line; busgate its "started").
    busgate::telemetry::logs::init(busgate::Deployment::Testing);
    let bus = TestBus::nats();
    let svc = Service::new("beta.example")
        .get("/x", |_ctx: Ctx, _req| async {
            Ok(Response::new(Bytes::from_static(b"x")))
        })
        .start(&bus.config)
        .await
        .unwrap();
    let caller = common::client(&bus).await;
    caller.ctx().get("https://beta.example/x").await.unwrap();
    let _ = caller.ctx().get("https://nobody.example/x").await;
    let ours = |conn: &busgate::Connector| {
        let url = format!("https://{}:888/metrics", conn.hostname());
        let conn = conn.clone();
        async move {
            let res = conn.ctx().get(&url).await.unwrap();
            families(std::str::from_utf8(res.body()).unwrap())
        }
    };
    // A first scrape, so that each has handled a request (the scrape itself) like Go's had.
    ours(&svc).await;
    ours(&caller).await;
    let body = |name: &str| {
        let frame = fixture(name);
        let at = frame.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        String::from_utf8(frame[at + 4..].to_vec()).unwrap()
    };
    let go_service = families(&body("s15-control-metrics_03-Res.payload"));
    let go_caller = families(&body("s22-metrics-of-a-caller_06-Res.payload"));
    for (go, rust) in [
        (&go_service, ours(&svc).await),
        (&go_caller, ours(&caller).await),
    ] {
        for (name, (kind, labels, buckets)) in go {
            let Some((our_kind, our_labels, our_buckets)) = rust.get(name) else {
                panic!("busgate lacks Go's {name}");
            };
            assert_eq!(our_kind, kind, "{name}");
            assert_eq!(our_labels, labels, "{name}: labels");
            if !buckets.is_empty() && !our_buckets.is_empty() {
                assert_eq!(our_buckets, buckets, "{name}: buckets, as text");
            }
        }
        // Whatever else busgate writes is Go's too, or busgate's own under busgate_.
        for name in rust.keys() {
            assert!(
                go_service.contains_key(name)
                    || go_caller.contains_key(name)
                    || name.starts_with("busgate_"),
                "{name} is neither Go's nor busgate's own"
            );
        }
    }
    caller.shutdown().await;
    svc.shutdown().await;
}
