//! The connector's behaviour, run against a real nats-server and against the in-process bus.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busgate::examples::calculator::ArithmeticOut;
use busgate::{build_request, examples, Ctx, Error, ErrorKind, Queue, Service};
use bytes::Bytes;
use common::{client, text, TestBus};
use http::{Request, Response, StatusCode};

on_every_bus!(
    unicast_reaches_the_service,
    no_responder_is_ack_timeout_404,
    deadline_is_408,
    runaway_recursion_is_508,
    time_budget_propagates,
    headers_propagate_downstream,
    replicas_share_the_load,
    events_fan_out_to_services_not_replicas,
    ping_all_finds_every_instance,
    sixteen_megabytes_round_trip_through_fragments,
    errors_carry_their_status,
    panics_become_500,
    path_arguments_and_any_port,
    direct_addressing_reaches_one_instance,
    control_plane_answers_on_own_host_and_all,
    locality_prefixed_subjects_reach_the_service,
    repeated_multicasts_return_once_the_known_responders_answered,
    a_request_handed_over_in_memory_needs_no_ack,
    a_subscriber_that_takes_without_acknowledging_is_an_ack_timeout,
    more_headers_than_a_bus_message_carries_is_431,
);

async fn unicast_reaches_the_service(bus: TestBus) {
    let services = examples::start_all(&bus.config).await.unwrap();
    let c = client(&bus).await;
    let res = c
        .ctx()
        .get("https://calculator.example/arithmetic?x=5&op=*&y=-3")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let out: ArithmeticOut = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(out.result, -15);
    assert_eq!(out.op_echo, "*");

    // `+` in a query decodes to a space; the calculator reads it as plus. Through hello.
    let res = c
        .ctx()
        .get("https://hello.example/calculator?x=5&op=+&y=3")
        .await
        .unwrap();
    assert_eq!(res.body(), "5 + 3 = 8");
    let res = c
        .ctx()
        .get("https://hello.example/hello?name=you")
        .await
        .unwrap();
    assert_eq!(res.body(), "Hello, you!");
    let sq: busgate::examples::calculator::SquareOut = c
        .ctx()
        .post_json(
            "https://calculator.example/square",
            &serde_json::json!({"x": 12}),
        )
        .await
        .unwrap();
    assert_eq!(sq.result, 144);
    c.shutdown().await;
    for s in services {
        s.shutdown().await;
    }
}

async fn no_responder_is_ack_timeout_404(bus: TestBus) {
    let c = client(&bus).await;
    let started = std::time::Instant::now();
    let err = c.ctx().get("https://nobody.example/x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AckTimeout);
    assert_eq!(err.status(), StatusCode::NOT_FOUND);
    assert_eq!(err.message(), "ack timeout");
    // The whole point of ack-or-fail: no waiting for the deadline.
    assert!(started.elapsed() < Duration::from_secs(5));
    c.shutdown().await;
}

async fn deadline_is_408(bus: TestBus) {
    let slow = Service::new("slow.test")
        .get("/sleep", |_ctx: Ctx, _req| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(text("late"))
        })
        .start(&bus.config)
        .await
        .unwrap();
    let c = client(&bus).await;
    let err = c
        .ctx()
        .with_timeout(Duration::from_millis(800))
        .get("https://slow.test/sleep")
        .await
        .unwrap_err();
    // The handler's own deadline (budget less one hop) fires first and it answers 408 itself;
    // either way the caller sees the 408 well before the handler would have finished.
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Remote),
        "{err:?}"
    );
    assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(err.message(), "timeout");
    // Too little budget left to even try: 408 at once.
    let err = c
        .ctx()
        .with_timeout(Duration::from_millis(100))
        .get("https://slow.test/sleep")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    c.shutdown().await;
    slow.shutdown().await;
}

async fn runaway_recursion_is_508(bus: TestBus) {
    let depth_seen = Arc::new(AtomicUsize::new(0));
    let seen = depth_seen.clone();
    let svc = Service::new("recurse.test")
        .get("/again", move |ctx: Ctx, _req| {
            let seen = seen.clone();
            async move {
                seen.fetch_max(ctx.depth() as usize, Ordering::Relaxed);
                ctx.get("https://recurse.test/again").await
            }
        })
        .start(&bus.config)
        .await
        .unwrap();
    let c = client(&bus).await;
    let err = c
        .ctx()
        .with_timeout(Duration::from_secs(30))
        .get("https://recurse.test/again")
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::LOOP_DETECTED, "{err:?}");
    assert_eq!(err.message(), "call depth overflow");
    assert_eq!(depth_seen.load(Ordering::Relaxed), 64);
    c.shutdown().await;
    svc.shutdown().await;
}

async fn time_budget_propagates(bus: TestBus) {
    // front reports its own budget and the one its downstream call carried.
    let back = Service::new("back.test")
        .get("/budget", |_ctx: Ctx, req: Request<Bytes>| async move {
            let b = req.headers()["microbus-time-budget"]
                .to_str()
                .unwrap()
                .to_owned();
            Ok(text(b))
        })
        .start(&bus.config)
        .await
        .unwrap();
    let front = Service::new("front.test")
        .get("/budget", |ctx: Ctx, req: Request<Bytes>| async move {
            let mine = req.headers()["microbus-time-budget"]
                .to_str()
                .unwrap()
                .to_owned();
            let res = ctx.get("https://back.test/budget").await?;
            Ok(text(format!(
                "{mine} {}",
                String::from_utf8_lossy(res.body())
            )))
        })
        .start(&bus.config)
        .await
        .unwrap();
    let c = client(&bus).await;
    let res = c
        .ctx()
        .with_timeout(Duration::from_secs(5))
        .get("https://front.test/budget")
        .await
        .unwrap();
    let body = String::from_utf8(res.body().to_vec()).unwrap();
    let mut parts = body.split(' ').map(|s| s.parse::<u64>().unwrap());
    let (front_budget, back_budget) = (parts.next().unwrap(), parts.next().unwrap());
    assert!(front_budget <= 5000 && front_budget > 4000, "{body}");
    // The handler's deadline is its budget less one network hop (250 ms).
    assert!(back_budget <= front_budget - 250, "{body}");
    assert!(back_budget > 3500, "{body}");
    c.shutdown().await;
    front.shutdown().await;
    back.shutdown().await;
}

async fn headers_propagate_downstream(bus: TestBus) {
    let back = Service::new("back.test")
        .get("/headers", |_ctx: Ctx, req: Request<Bytes>| async move {
            let mut lines: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{}={}", k, v.to_str().unwrap()))
                .collect();
            lines.sort();
            Ok(text(lines.join("\n")))
        })
        .start(&bus.config)
        .await
        .unwrap();
    let front = Service::new("front.test")
        .get("/call", |ctx: Ctx, _req| async move {
            ctx.get("https://back.test/headers").await
        })
        .start(&bus.config)
        .await
        .unwrap();
    let c = client(&bus).await;
    let req = Request::get("https://front.test/call")
        .header("X-Forwarded-For", "1.2.3.4")
        .header("Microbus-Baggage-Tenant", "acme")
        .header("Accept-Language", "fr")
        .header("Authorization", "secret")
        // A caller cannot forge the frame.
        .header("Microbus-From-Host", "evil.example")
        .body(Bytes::new())
        .unwrap();
    let res = c.request(req).await.unwrap();
    let body = String::from_utf8(res.body().to_vec()).unwrap();
    assert!(body.contains("x-forwarded-for=1.2.3.4"), "{body}");
    assert!(body.contains("microbus-baggage-tenant=acme"), "{body}");
    assert!(body.contains("accept-language=fr"), "{body}");
    assert!(!body.contains("authorization"), "{body}");
    assert!(body.contains("microbus-from-host=front.test"), "{body}");
    assert!(body.contains("microbus-call-depth=2"), "{body}");
    assert!(!body.contains("evil"), "{body}");
    c.shutdown().await;
    front.shutdown().await;
    back.shutdown().await;
}

fn whoami() -> Service {
    Service::new("who.test").get("/", |ctx: Ctx, _req| async move {
        Ok(text(ctx.connector().id().to_owned()))
    })
}

async fn replicas_share_the_load(bus: TestBus) {
    let a = whoami().start(&bus.config).await.unwrap();
    let b = whoami().start(&bus.config).await.unwrap();
    let c = client(&bus).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let res = c.ctx().get("https://who.test/").await.unwrap();
        *counts
            .entry(String::from_utf8(res.body().to_vec()).unwrap())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.contains_key(a.id()) && counts.contains_key(b.id()));
    for conn in [c, a, b] {
        conn.shutdown().await;
    }
}

fn sink(name: &str, counter: Arc<Mutex<HashMap<String, usize>>>) -> Service {
    Service::new(name).sink(
        "source.test",
        "on-thing",
        move |ctx: Ctx, req: Request<Bytes>| {
            let counter = counter.clone();
            async move {
                assert_eq!(req.body(), "payload");
                let key = format!("{}/{}", ctx.connector().hostname(), ctx.connector().id());
                *counter.lock().unwrap().entry(key).or_default() += 1;
                Ok(text("{}"))
            }
        },
    )
}

async fn events_fan_out_to_services_not_replicas(bus: TestBus) {
    let counter = Arc::new(Mutex::new(HashMap::new()));
    let mut conns = Vec::new();
    for name in ["x.sink", "x.sink", "y.sink", "y.sink"] {
        conns.push(
            sink(name, counter.clone())
                .start(&bus.config)
                .await
                .unwrap(),
        );
    }
    let source = Service::new("source.test")
        .start(&bus.config)
        .await
        .unwrap();
    const FIRED: usize = 20;
    for _ in 0..FIRED {
        let results = source
            .ctx()
            .fire_event("on-thing", Bytes::from_static(b"payload"), None)
            .await
            .unwrap();
        assert_eq!(results.len(), 2, "one response per sink service");
        assert!(results.iter().all(|r| r.is_ok()));
    }
    let counts = counter.lock().unwrap().clone();
    let per_service = |svc: &str| -> usize {
        counts
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{svc}/")))
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(per_service("x.sink"), FIRED, "{counts:?}");
    assert_eq!(per_service("y.sink"), FIRED, "{counts:?}");
    // Nobody listening: an empty result, not an error.
    let other = Service::new("lonely.test")
        .start(&bus.config)
        .await
        .unwrap();
    let results = other
        .ctx()
        .fire_event("on-nothing", Bytes::new(), None)
        .await
        .unwrap();
    assert!(results.is_empty());
    other.shutdown().await;
    source.shutdown().await;
    for c in conns {
        c.shutdown().await;
    }
}

async fn ping_all_finds_every_instance(bus: TestBus) {
    let services = examples::start_all(&bus.config).await.unwrap();
    let extra = whoami().start(&bus.config).await.unwrap();
    let c = client(&bus).await;
    let res = c.ctx().get("https://hello.example/ping").await.unwrap();
    let body = String::from_utf8(res.body().to_vec()).unwrap();
    for conn in services.iter().chain([&extra, &c]) {
        let expected = format!("{}.{}", conn.id(), conn.hostname());
        assert!(
            body.lines().any(|l| l == expected),
            "{expected} missing in {body}"
        );
    }
    assert_eq!(body.lines().count(), services.len() + 2, "{body}");
    c.shutdown().await;
    extra.shutdown().await;
    for s in services {
        s.shutdown().await;
    }
}

async fn sixteen_megabytes_round_trip_through_fragments(bus: TestBus) {
    let echo = Service::new("echo.test")
        .post("/body", |_ctx: Ctx, req: Request<Bytes>| async move {
            Ok(Response::new(req.into_body()))
        })
        .start(&bus.config)
        .await
        .unwrap();
    let c = client(&bus).await;
    let body: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let body = Bytes::from(body);
    let req = build_request("POST", "https://echo.test/body", body.clone(), None).unwrap();
    let res = c
        .ctx()
        .with_timeout(Duration::from_secs(60))
        .request(req)
        .await
        .unwrap();
    assert_eq!(res.body().len(), body.len());
    assert!(res.body() == &body, "body differs after the round trip");
    assert_eq!(res.headers()["content-length"], body.len().to_string());
    assert!(res.headers().get("microbus-fragment").is_none());
    c.shutdown().await;
    echo.shutdown().await;
}

async fn errors_carry_their_status(bus: TestBus) {
    let services = examples::start_all(&bus.config).await.unwrap();
    let c = client(&bus).await;
    let cases = [
        (
            "https://calculator.example/arithmetic?x=1&op=/&y=0",
            "division by zero",
        ),
        (
            "https://calculator.example/arithmetic?x=abc&op=*&y=1",
            "invalid arguments",
        ),
        (
            "https://calculator.example/arithmetic?x=1&op=%25&y=1",
            "invalid operator",
        ),
        (
            "https://calculator.example/square?x=9999999999",
            "integer overflow",
        ),
        (
            "https://hello.example/calculator?x=1&op=/&y=0",
            "division by zero",
        ),
    ];
    for (url, msg) in cases {
        let err = c.ctx().get(url).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Remote, "{url}");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{url}");
        assert!(err.message().contains(msg), "{url}: {}", err.message());
    }
    // A handler status of its choosing travels as is, with the handler's stack.
    let teapot = Service::new("teapot.test")
        .get("/", |_ctx: Ctx, _req| async {
            Err::<Response<Bytes>, _>(Error::new(StatusCode::IM_A_TEAPOT, "short and stout"))
        })
        .start(&bus.config)
        .await
        .unwrap();
    let err = c.ctx().get("https://teapot.test/").await.unwrap_err();
    assert_eq!(err.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(err.message(), "short and stout");
    assert!(err.stack()[0].file.ends_with("bus.rs"));
    teapot.shutdown().await;
    c.shutdown().await;
    for s in services {
        s.shutdown().await;
    }
}

async fn panics_become_500(bus: TestBus) {
    let svc = Service::new("panic.test")
        .get("/boom", |_ctx: Ctx, _req| async { panic!("kaboom") })
        .get("/fine", |_ctx: Ctx, _req| async { Ok(text("fine")) })
        .start(&bus.config)
        .await
        .unwrap();
    let c = client(&bus).await;
    for _ in 0..3 {
        let err = c.ctx().get("https://panic.test/boom").await.unwrap_err();
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err.message().contains("kaboom"), "{}", err.message());
    }
    let res = c.ctx().get("https://panic.test/fine").await.unwrap();
    assert_eq!(res.body(), "fine");
    c.shutdown().await;
    svc.shutdown().await;
}

async fn path_arguments_and_any_port(bus: TestBus) {
    let svc = Service::new("args.test")
        .get(
            "/item/{id}/part/{rest+}",
            |_ctx: Ctx, req: Request<Bytes>| async move { Ok(text(req.uri().path().to_owned())) },
        )
        .route(
            "ANY",
            ":0/anyport",
            |_ctx: Ctx, req: Request<Bytes>| async move {
                Ok(text(format!(
                    "{} {}",
                    req.method(),
                    req.uri().port_u16().unwrap()
                )))
            },
        )
        .start(&bus.config)
        .await
        .unwrap();
    let c = client(&bus).await;
    let res = c
        .ctx()
        .get("https://args.test/item/7/part/a/b/c")
        .await
        .unwrap();
    assert_eq!(res.body(), "/item/7/part/a/b/c");
    let res = c.ctx().get("https://args.test:1234/anyport").await.unwrap();
    assert_eq!(res.body(), "GET 1234");
    let req = build_request(
        "DELETE",
        "https://args.test:444/anyport",
        Bytes::new(),
        None,
    )
    .unwrap();
    assert_eq!(c.request(req).await.unwrap().body(), "DELETE 444");
    // An argument spans exactly one segment.
    let err = c
        .ctx()
        .get("https://args.test/item/7/part")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AckTimeout);
    // Wrong port for a :443 route.
    let err = c
        .ctx()
        .get("https://args.test:8/item/7/part/x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AckTimeout);
    c.shutdown().await;
    svc.shutdown().await;
}

async fn direct_addressing_reaches_one_instance(bus: TestBus) {
    let a = whoami().start(&bus.config).await.unwrap();
    let b = whoami().start(&bus.config).await.unwrap();
    let c = client(&bus).await;
    for _ in 0..10 {
        let res = c
            .ctx()
            .get(&format!("https://{}.who.test/", b.id()))
            .await
            .unwrap();
        assert_eq!(res.body(), b.id());
    }
    let res = c
        .ctx()
        .get(&format!("https://{}.all:888/ping", a.id()))
        .await
        .unwrap();
    assert_eq!(res.body(), r#"{"pong":0}"#);
    assert_eq!(res.headers()["microbus-from-id"], a.id());
    for conn in [c, a, b] {
        conn.shutdown().await;
    }
}

#[tokio::test]
async fn services_with_unusable_names_or_routes_do_not_start() {
    let bus = TestBus::inproc();
    for name in [
        "all",
        "x.all",
        "",
        "a b",
        "a.>",
        "a.*",
        "bad..name",
        "é.example",
    ] {
        let err = Service::new(name).start(&bus.config).await.err().unwrap();
        assert!(
            matches!(err, busgate::StartError::InvalidHostname(_)),
            "{name}: {err}"
        );
    }
    for route in ["/{a+}/b", "/a{b}", ":99999/x", "//a*b/c"] {
        let err = Service::new("ok.test")
            .get(route, |_ctx: Ctx, _req| async { Ok(text("")) })
            .start(&bus.config)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, busgate::StartError::InvalidRoute { .. }),
            "{route}: {err}"
        );
    }
    let err = Service::new("ok.test")
        .route_with_queue(
            "GET",
            "/x",
            Queue::Named("bad queue".into()),
            |_ctx: Ctx, _req| async { Ok(text("")) },
        )
        .start(&bus.config)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, busgate::StartError::InvalidRoute { .. }));
}

async fn control_plane_answers_on_own_host_and_all(bus: TestBus) {
    let refreshed = Arc::new(AtomicUsize::new(0));
    let r = refreshed.clone();
    let hook: busgate::connector::RefreshHook = Arc::new(move || {
        r.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    });
    let a = whoami()
        .refresh_hook(hook.clone())
        .start(&bus.config)
        .await
        .unwrap();
    let b = whoami()
        .refresh_hook(hook)
        .start(&bus.config)
        .await
        .unwrap();
    let c = client(&bus).await;
    // Every replica answers its own host's control subject (no queue).
    let req = build_request(
        "POST",
        "https://who.test:888/config-refresh",
        Bytes::from_static(b"{}"),
        None,
    )
    .unwrap();
    let results = c.ctx().multicast(req).await;
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(r.as_ref().unwrap().body(), "{}");
    }
    assert_eq!(refreshed.load(Ordering::Relaxed), 2);
    // `all` reaches every instance on the bus, the caller included.
    let req = build_request("GET", "https://all:888/ping", Bytes::new(), None).unwrap();
    let results = c.ctx().multicast(req).await;
    assert_eq!(results.len(), 3);
    // Each instance serves its own metrics, labelled with its identity.
    let res = c
        .ctx()
        .get(&format!("https://{}.who.test:888/metrics", a.id()))
        .await
        .unwrap();
    let text = String::from_utf8(res.body().to_vec()).unwrap();
    let uptime = format!(
        "microbus_uptime_duration_seconds_total{{id=\"{}\",service=\"who.test\",ver=\"0\"}}",
        a.id()
    );
    assert!(text.contains(&uptime), "{text}");
    assert!(
        text.contains("microbus_callback_duration_seconds_count{error=\"OK\",handler=\"startup\""),
        "{text}"
    );
    // Like Go, `{}` whatever the id: a malformed or missing one selects nothing.
    for url in [
        "https://who.test:888/trace?id=xyz",
        "https://who.test:888/trace",
    ] {
        let res = c.ctx().get(url).await.unwrap();
        assert_eq!(res.body(), "{}", "{url}");
    }
    let res = c
        .ctx()
        .get("https://who.test:888/trace?id=0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    assert_eq!(res.body(), "{}");
    // The control plane is never load-balanced onto a user endpoint and vice versa.
    let err = c.ctx().get("https://who.test:888/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AckTimeout);
    for conn in [c, a, b] {
        conn.shutdown().await;
    }
}

async fn locality_prefixed_subjects_reach_the_service(bus: TestBus) {
    let cfg = bus.config.clone().with_locality("1.b.west.us").unwrap();
    let svc = whoami().start(&cfg).await.unwrap();
    let c = client(&bus).await;
    for host in [
        "us.who.test",
        "west.us.who.test",
        "b.west.us.who.test",
        "1.b.west.us.who.test",
    ] {
        let res = c.ctx().get(&format!("https://{host}/")).await.unwrap();
        assert_eq!(res.body(), svc.id(), "{host}");
        assert_eq!(res.headers()["microbus-locality"], "1.b.west.us");
    }
    let err = c.ctx().get("https://east.us.who.test/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AckTimeout);
    c.shutdown().await;
    svc.shutdown().await;
}

/// Go's known-responders cache: the first multicast waits out the 250 ms ack window; once the
/// same responders have answered, a repeat returns as soon as they all did. A responder that
/// leaves makes the next one wait the window again; one that joins is found within two calls
/// (its late answer clears the cache, as in Go).
async fn repeated_multicasts_return_once_the_known_responders_answered(bus: TestBus) {
    use std::time::Instant;
    let a = whoami().start(&bus.config).await.unwrap();
    let b = whoami().start(&bus.config).await.unwrap();
    let c = client(&bus).await;
    let ping = || async {
        let started = Instant::now();
        let answers = c
            .ctx()
            .multicast(
                http::Request::post("https://who.test:888/ping")
                    .body(Bytes::new())
                    .unwrap(),
            )
            .await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        (answers.len(), started.elapsed())
    };
    let (n, first) = ping().await;
    assert_eq!(n, 2);
    assert!(
        first >= Duration::from_millis(250),
        "the first waits the window: {first:?}"
    );
    // The fastest of a few repeats (a loaded machine stalls now and then) beats the window.
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let (n, took) = ping().await;
        assert_eq!(n, 2);
        fastest = fastest.min(took);
    }
    assert!(
        fastest < Duration::from_millis(200),
        "repeats return once both answered: {fastest:?}"
    );
    b.shutdown().await;
    let (n, took) = ping().await;
    assert_eq!(n, 1, "the one left");
    assert!(
        took >= Duration::from_millis(250),
        "a responder gone: the window again"
    );
    let d = whoami().start(&bus.config).await.unwrap();
    let mut found = 0;
    for _ in 0..3 {
        found = ping().await.0;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if found == 2 {
            break;
        }
    }
    assert_eq!(found, 2, "a new responder is found");
    for s in [a, c, d] {
        s.shutdown().await;
    }
}

/// Every message of `plane` the spy got until `quiet` passed without one: (op code, sender).
async fn frames_seen(
    spy: &mut busgate::transport::Subscription,
    quiet: Duration,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(quiet, spy.next()).await {
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or("")
                .to_owned()
        };
        seen.push((header("Microbus-Op-Code: "), header("Microbus-From-Host: ")));
    }
    seen
}

/// An endpoint acks every request it reads: one handed to it in memory (the in-process bus,
/// the short circuit) is acknowledged by the handing over, and no ack message is made. Through
/// NATS the request, its ack and the response all cross the bus.
async fn a_request_handed_over_in_memory_needs_no_ack(bus: TestBus) {
    let svc = whoami().start(&bus.config).await.unwrap();
    let c = client(&bus).await;
    let in_memory = match c.bus() {
        busgate::transport::Bus::Nats(nats) => nats.short_circuit().is_some(),
        busgate::transport::Bus::InProc(_) => true,
    };
    let mut spy = c
        .bus()
        .subscribe(format!("{}.>", c.plane()), None)
        .await
        .unwrap();
    c.bus()
        .round_trip(format!("{}.spy.probe", c.plane()))
        .await
        .unwrap();
    let res = c.ctx().get("https://who.test/").await.unwrap();
    assert_eq!(res.body(), svc.id());
    let seen = frames_seen(&mut spy, Duration::from_millis(300)).await;
    assert_eq!(count_of(&seen, "Req", "client.test"), 1, "{seen:?}");
    assert_eq!(count_of(&seen, "Res", "who.test"), 1, "{seen:?}");
    let acks = usize::from(!in_memory);
    assert_eq!(count_of(&seen, "Ack", "who.test"), acks, "{seen:?}");
    // A body of several fragments still has its first one acknowledged: the ack names the
    // instance that takes the rest.
    let body = Bytes::from(vec![7u8; 2_500_000]);
    let echo = common::echo("echo.test").start(&bus.config).await.unwrap();
    let req = build_request("POST", "https://echo.test/echo", body.clone(), None).unwrap();
    let res = c.request(req).await.unwrap();
    assert!(res.body() == &body);
    let seen = frames_seen(&mut spy, Duration::from_millis(300)).await;
    assert_eq!(count_of(&seen, "Ack", "echo.test"), 1, "{seen:?}");
    for conn in [c, svc, echo] {
        conn.shutdown().await;
    }
}

fn count_of(seen: &[(String, String)], op: &str, from: &str) -> usize {
    seen.iter().filter(|(o, f)| o == op && f == from).count()
}

/// A subscriber that is not an endpoint (a raw bus subscription) acknowledges nothing by
/// taking a request: the caller still fails fast with an ack timeout when no ack comes.
async fn a_subscriber_that_takes_without_acknowledging_is_an_ack_timeout(bus: TestBus) {
    let c = client(&bus).await;
    let subject =
        busgate::wire::subscription_subject(c.plane(), 443, "mute.test", "GET", "/").unwrap();
    let mut mute = c
        .bus()
        .subscribe(subject, Some("mute.test".to_owned()))
        .await
        .unwrap();
    c.bus()
        .round_trip(format!("{}.mute.probe", c.plane()))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = c
        .ctx()
        .with_timeout(Duration::from_secs(20))
        .get("https://mute.test/")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AckTimeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        mute.next().await.is_some(),
        "the request reached the mute subscriber"
    );
    c.shutdown().await;
}

/// A request with more headers than its subscriber would read is refused by the caller at
/// once, instead of being dropped unread at the other end while the caller waits.
async fn more_headers_than_a_bus_message_carries_is_431(bus: TestBus) {
    let svc = whoami().start(&bus.config).await.unwrap();
    let c = client(&bus).await;
    let mut req = build_request("GET", "https://who.test/", Bytes::new(), None).unwrap();
    for i in 0..300 {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-h{i}")).unwrap(),
            http::HeaderValue::from_static("v"),
        );
    }
    let err = c.request(req).await.unwrap_err();
    assert_eq!(
        err.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{err}"
    );
    assert!(err.message().contains("at most 256"), "{err}");
    // Up to the limit it goes through.
    let mut req = build_request("GET", "https://who.test/", Bytes::new(), None).unwrap();
    for i in 0..200 {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-h{i}")).unwrap(),
            http::HeaderValue::from_static("v"),
        );
    }
    assert_eq!(c.request(req).await.unwrap().body(), svc.id());
    c.shutdown().await;
    svc.shutdown().await;
}
