//! Raw wire exchanges: Go-shaped messages in, hostile messages in, and what goes out.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use busgate::transport::{Bus, BusMessage};
use busgate::wire::{codec, frame::Frame, OpCode};
use busgate::{Ctx, ErrorKind, Service};
use bytes::Bytes;
use common::TestBus;
use http::{Request, Response, StatusCode};

on_every_bus!(
    answers_a_go_shaped_request,
    acked_but_silent_responder_times_out_408,
    reads_go_err_responses,
    hostile_messages_never_crash_or_leak,
    hostile_paths_never_reach_another_endpoint,
    a_caller_whose_fragments_stop_gets_408_defrag_timeout,
    a_response_whose_fragments_stop_fails_the_call_with_defrag_timeout,
);

async fn raw(bus: &TestBus) -> Bus {
    bus.config.transport.connect("raw.test").await.unwrap()
}

/// Collect every message on the plane.
async fn spy(bus: &TestBus, raw: &Bus) -> Arc<Mutex<Vec<BusMessage>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut sub = raw
        .subscribe(format!("{}.>", bus.config.plane), None)
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            s.lock().unwrap().push(m);
        }
    });
    seen
}

async fn next_within(sub: &mut busgate::transport::Subscription, ms: u64) -> Option<BusMessage> {
    tokio::time::timeout(Duration::from_millis(ms), sub.next())
        .await
        .ok()
        .flatten()
}

fn echo_service() -> Service {
    Service::new("beta.example").version(3).post(
        "/echo",
        |_ctx: Ctx, req: Request<Bytes>| async move {
            Ok(Response::builder()
                .header("X-Multi", "one")
                .header("X-Multi", "two")
                .body(req.into_body())
                .unwrap())
        },
    )
}

async fn answers_a_go_shaped_request(bus: TestBus) {
    let svc = echo_service().start(&bus.config).await.unwrap();
    let raw = raw(&bus).await;
    let plane = &bus.config.plane;
    let mut inbox = raw
        .subscribe(format!("{plane}.r.example.alpha.c1goclient"), None)
        .await
        .unwrap();
    raw.flush().await.unwrap();
    // What Go's Request.WriteProxy emits for a Microbus BodyReader: chunked, origin form allowed.
    let go = "POST https://beta.example:443/echo?x=1 HTTP/1.1\r\nHost: beta.example:443\r\n\
Transfer-Encoding: chunked\r\nMicrobus-Call-Depth: 1\r\nMicrobus-From-Host: alpha.example\r\n\
Microbus-From-Id: c1goclient\r\nMicrobus-Msg-Id: 3t0gkasY\r\nMicrobus-Op-Code: Req\r\n\
Microbus-Time-Budget: 19750\r\n\r\n5\r\nHello\r\n0\r\n\r\n";
    raw.publish(
        format!("{plane}.443.example.beta.|.POST.echo").into(),
        Bytes::from_static(go.as_bytes()),
    )
    .await
    .unwrap();
    let ack = next_within(&mut inbox, 2000).await.unwrap().payload;
    // Byte for byte the shape of Microbus's hand-written ack (reference §1.6).
    let expected = format!(
        "HTTP/1.1 202 Accepted\r\nConnection: close\r\nMicrobus-From-Host: beta.example\r\n\
Microbus-From-Id: {}\r\nMicrobus-Msg-Id: 3t0gkasY\r\nMicrobus-Op-Code: Ack\r\n\
Microbus-Queue: beta.example\r\n\r\n",
        svc.id()
    );
    assert_eq!(String::from_utf8_lossy(&ack), expected);
    let ack = codec::decode_response(ack).unwrap();
    assert_eq!(ack.status(), StatusCode::ACCEPTED);
    let f = Frame(ack.headers());
    assert_eq!(f.op_code(), Some(OpCode::Ack));
    assert_eq!(f.msg_id(), Some("3t0gkasY"));
    assert_eq!(f.from_host(), Some("beta.example"));
    assert_eq!(f.from_id(), Some(svc.id()));
    assert_eq!(f.queue(), Some("beta.example"));
    let res = codec::decode_response(next_within(&mut inbox, 2000).await.unwrap().payload).unwrap();
    let f = Frame(res.headers());
    assert_eq!(f.op_code(), Some(OpCode::Res));
    assert_eq!(f.msg_id(), Some("3t0gkasY"));
    assert_eq!(f.from_version(), 3);
    assert_eq!(res.body(), "Hello");
    assert_eq!(res.headers().get_all("x-multi").iter().count(), 2);
    svc.shutdown().await;
}

/// A raw subscriber on `subject` that answers every request with the messages of
/// `reply(msg_id)`, as a Go service (or a broken one) would.
async fn fake_responder(bus: &TestBus, subject: &str, reply: fn(&str) -> Vec<String>) {
    let raw = raw(bus).await;
    let plane = bus.config.plane.clone();
    let mut sub = raw
        .subscribe(format!("{plane}.{subject}"), None)
        .await
        .unwrap();
    raw.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let req = codec::decode_request(m.payload).unwrap();
            let f = Frame(req.headers());
            let inbox = busgate::wire::response_subject(
                &plane,
                f.from_host().unwrap(),
                f.from_id().unwrap(),
            )
            .unwrap();
            for message in reply(f.msg_id().unwrap()) {
                raw.publish(inbox.clone().into(), Bytes::from(message))
                    .await
                    .unwrap();
            }
        }
    });
}

async fn acked_but_silent_responder_times_out_408(bus: TestBus) {
    fake_responder(&bus, "443.example.silent.|.GET.x", |msg_id| {
        vec![format!(
            "HTTP/1.1 202 Accepted\r\nConnection: close\r\nMicrobus-Op-Code: Ack\r\n\
Microbus-From-Host: silent.example\r\nMicrobus-From-Id: s1\r\nMicrobus-Msg-Id: {msg_id}\r\n\r\n"
        )]
    })
    .await;
    let c = Service::new("client.test")
        .start(&bus.config)
        .await
        .unwrap();
    let err = c
        .ctx()
        .with_timeout(Duration::from_millis(900))
        .get("https://silent.example/x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
    c.shutdown().await;
}

/// A caller that sends the first of three fragments and then stops is told so, with Go's
/// `408 defrag timeout`, instead of waiting out its budget for nothing. Fragments that come
/// after that are dropped, unanswered.
async fn a_caller_whose_fragments_stop_gets_408_defrag_timeout(bus: TestBus) {
    let svc = echo_service().start(&bus.config).await.unwrap();
    let raw = raw(&bus).await;
    let plane = &bus.config.plane;
    let mut inbox = raw
        .subscribe(format!("{plane}.r.example.alpha.c1goclient"), None)
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let fragment = |index: usize, body: &str| {
        Bytes::from(format!(
            "POST https://beta.example:443/echo HTTP/1.1\r\nHost: beta.example:443\r\n\
Content-Length: {}\r\nMicrobus-From-Host: alpha.example\r\nMicrobus-From-Id: c1goclient\r\n\
Microbus-Msg-Id: frag0001\r\nMicrobus-Op-Code: Req\r\nMicrobus-Fragment: {index}/3\r\n\
Microbus-Time-Budget: 20000\r\n\r\n{body}",
            body.len()
        ))
    };
    raw.publish(
        format!("{plane}.443.example.beta.|.POST.echo").into(),
        fragment(1, "aaa"),
    )
    .await
    .unwrap();
    let ack = next_within(&mut inbox, 2000).await.expect("an ack");
    let ack = codec::decode_response(ack.payload).unwrap();
    assert_eq!(ack.status(), StatusCode::CONTINUE);

    let answer = next_within(&mut inbox, 5000)
        .await
        .expect("an answer when the fragments stop, not silence");
    let res = codec::decode_response(answer.payload).unwrap();
    let f = Frame(res.headers());
    assert_eq!(f.op_code(), Some(OpCode::Err));
    assert_eq!(f.msg_id(), Some("frag0001"));
    assert_eq!(f.from_id(), Some(svc.id()));
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    let err = busgate::Error::from_err_response(res.status(), res.body());
    assert_eq!(err.message(), "defrag timeout");

    // The rest, too late, to the instance that acknowledged: dropped, and nothing more sent.
    let direct = format!("{plane}.443.example.beta.{}.|.POST.echo", svc.id());
    for index in [2, 3] {
        raw.publish(direct.clone().into(), fragment(index, "bbb"))
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();
    assert!(
        next_within(&mut inbox, 1000).await.is_none(),
        "late fragments are not served"
    );
    svc.shutdown().await;
}

/// A response that sends the first of three fragments and then stops fails its call with
/// `defrag timeout` at once, not with `timeout` at the end of the call's budget.
async fn a_response_whose_fragments_stop_fails_the_call_with_defrag_timeout(bus: TestBus) {
    fake_responder(&bus, "443.example.halfway.|.GET.x", |msg_id| {
        let frame = format!(
            "Microbus-From-Host: halfway.example\r\nMicrobus-From-Id: h1\r\nMicrobus-Msg-Id: {msg_id}\r\n"
        );
        vec![
            format!("HTTP/1.1 202 Accepted\r\nConnection: close\r\n{frame}Microbus-Op-Code: Ack\r\n\r\n"),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n{frame}Microbus-Op-Code: Res\r\n\
Microbus-Fragment: 1/3\r\n\r\nabc"
            ),
        ]
    })
    .await;
    let c = Service::new("client.test")
        .start(&bus.config)
        .await
        .unwrap();
    let err = c
        .ctx()
        .with_timeout(Duration::from_secs(15))
        .get("https://halfway.example/x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DefragTimeout, "{err}");
    assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);

    // A multicast counts that responder as answered, with the same error.
    let req =
        busgate::build_request("GET", "https://halfway.example/x", Bytes::new(), None).unwrap();
    let results = c
        .ctx()
        .with_timeout(Duration::from_secs(15))
        .multicast(req)
        .await;
    assert_eq!(results.len(), 1, "one responder, one result");
    let err = results[0].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DefragTimeout, "{err}");
    c.shutdown().await;
}

async fn reads_go_err_responses(bus: TestBus) {
    fake_responder(&bus, "443.example.goerr.|.GET.x", |msg_id| {
        let body = "{\n\t\"error\": \"record not found\",\n\t\"stack\": [\n\t\t{\n\t\t\t\"file\": \"/src/service.go\",\n\t\t\t\"function\": \"calculator.(*Service).Square\",\n\t\t\t\"line\": 75\n\t\t}\n\t],\n\t\"statusCode\": 404\n}";
        vec![format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\
Microbus-From-Host: goerr.example\r\nMicrobus-From-Id: g1\r\nMicrobus-Msg-Id: {msg_id}\r\nMicrobus-Op-Code: Err\r\n\r\n{body}",
            body.len()
        )]
    })
    .await;
    let c = Service::new("client.test")
        .start(&bus.config)
        .await
        .unwrap();
    let err = c.ctx().get("https://goerr.example/x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote);
    assert_eq!(err.status(), StatusCode::NOT_FOUND);
    assert_eq!(err.message(), "record not found");
    assert_eq!(err.stack()[0].function, "calculator.(*Service).Square");
    c.shutdown().await;
}

async fn hostile_messages_never_crash_or_leak(bus: TestBus) {
    let svc = echo_service().start(&bus.config).await.unwrap();
    let raw = raw(&bus).await;
    let seen = spy(&bus, &raw).await;
    let plane = &bus.config.plane;
    let target = format!("{plane}.443.example.beta.|.POST.echo");
    let req = |extra: &str, body: &str| {
        format!(
            "POST https://beta.example:443/echo HTTP/1.1\r\nHost: beta.example:443\r\n\
Content-Length: {}\r\nMicrobus-Op-Code: Req\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let ret = "Microbus-From-Host: evil.example\r\nMicrobus-From-Id: e1\r\nMicrobus-Msg-Id: m1\r\n";
    let hostile: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\x00\xff\xfe garbage \r\n\r\n".to_vec(),
        b"POST https://beta.example:443/echo HTTP/1.1\r\n".to_vec(),
        req("", "no return address").into_bytes(),
        req("Microbus-From-Host: evil.>\r\nMicrobus-From-Id: e1\r\nMicrobus-Msg-Id: m2\r\n", "").into_bytes(),
        req("Microbus-From-Host: evil.example\r\nMicrobus-From-Id: *\r\nMicrobus-Msg-Id: m3\r\n", "").into_bytes(),
        req("Microbus-From-Host: a b\r\nMicrobus-From-Id: e1\r\nMicrobus-Msg-Id: m4\r\n", "").into_bytes(),
        req(&format!("{ret}Microbus-Fragment: 2/3\r\n"), "orphan").into_bytes(),
        req(&format!("{ret}Microbus-Fragment: 1/999999999\r\n"), "huge").into_bytes(),
        req(&format!("{ret}Microbus-Fragment: 7/3\r\n"), "bad").into_bytes(),
        req(&format!("{ret}Microbus-Time-Budget: -5\r\n"), "negative budget").into_bytes(),
        req(&format!("{ret}Microbus-Call-Depth: 99999999999999999999\r\n"), "deep").into_bytes(),
        format!("POST https://beta.example:443/echo HTTP/1.1\r\n{ret}Content-Length: 99\r\n\r\nshort").into_bytes(),
        format!("POST https://beta.example:443/echo HTTP/1.1\r\n{ret}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n").into_bytes(),
        format!("POST https://beta.example:443/echo HTTP/1.1\r\n{ret}{}\r\n", "X-Pad: y\r\n".repeat(300)).into_bytes(),
    ];
    for payload in hostile {
        raw.publish(target.clone().into(), Bytes::from(payload))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Still serving.
    let c = Service::new("client.test")
        .start(&bus.config)
        .await
        .unwrap();
    let res = c
        .request(
            busgate::build_request(
                "POST",
                "https://beta.example/echo",
                Bytes::from_static(b"ok"),
                None,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.body(), "ok");

    // Nothing was published to a subject built from hostile input: only the service's own
    // subject, the evil.example inbox (valid return address) and the client's traffic.
    let evil_inbox = format!("{plane}.r.example.evil.e1");
    for m in seen.lock().unwrap().iter() {
        let s: &str = &m.subject;
        assert!(
            !s.contains('>') && !s.split('.').any(|t| t == "*"),
            "wildcard subject {s}"
        );
        assert!(
            s == target || s == evil_inbox || s.contains(".client.") || s.contains(c.id()),
            "unexpected subject {s}"
        );
        if s == evil_inbox {
            let res = codec::decode_response(m.payload.clone()).unwrap();
            let op = Frame(res.headers()).op_code();
            // Acks, a rejected fragment count, a 408 for nothing left... never a crash.
            assert!(matches!(
                op,
                Some(OpCode::Ack) | Some(OpCode::Err) | Some(OpCode::Res)
            ));
        }
    }
    c.shutdown().await;
    svc.shutdown().await;
}

async fn hostile_paths_never_reach_another_endpoint(bus: TestBus) {
    let svc = Service::new("paths.test")
        .get("/b", |_ctx: Ctx, _req| async {
            Ok(Response::new(Bytes::from_static(b"b")))
        })
        .get("/a/{x}", |_ctx: Ctx, req: Request<Bytes>| async move {
            Ok(Response::new(Bytes::from(req.uri().path().to_owned())))
        })
        .start(&bus.config)
        .await
        .unwrap();
    let c = Service::new("client.test")
        .start(&bus.config)
        .await
        .unwrap();
    for path in [
        "/b.>",
        "/b/*",
        "/b/%3E",
        "/b%2E",
        "/%2e%2e/b",
        "/./b",
        "/b/",
        "/b%00",
        "/%E2%98%83/b",
        "/b%20",
        "/a/x/y",
        "/a",
        "/*",
        "/>",
        "/b/..",
    ] {
        let err = c
            .ctx()
            .get(&format!("https://paths.test{path}"))
            .await
            .expect_err(path);
        // Either the URL itself is refused (`>` is not a URL character) or its escaped subject
        // has no subscriber; never does another endpoint answer.
        assert!(
            matches!(err.kind(), ErrorKind::AckTimeout | ErrorKind::BadRequest),
            "{path}: {err:?}"
        );
    }
    // A single segment, however odd, is exactly what `{x}` means.
    for (path, seen) in [
        ("/a/%2A", "/a/%2A"),
        ("/a/%3E", "/a/%3E"),
        ("/a/%E2%98%83", "/a/%E2%98%83"),
    ] {
        let res = c
            .ctx()
            .get(&format!("https://paths.test{path}"))
            .await
            .unwrap();
        assert_eq!(res.body(), seen);
    }
    for host in ["paths.*", "paths.>", "pa%20ths.test", "all.>"] {
        let err = c.ctx().get(&format!("https://{host}/b")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadRequest, "{host}");
    }
    c.shutdown().await;
    svc.shutdown().await;
}
