//! NATS subject permissions of the reference's reversed-host kind (`microbus.*.example.hello.>`):
//! each busgate process allowed only its own hosts and inboxes. Everything permitted works; a
//! publish outside the permissions is a clear 403 at once, not an ack timeout; a service whose
//! subscriptions are refused does not start, and says why.

mod common;

use std::time::{Duration, Instant};

use busgate::ingress::http::{HttpIngress, IngressConfig};
use busgate::transport::{NatsOptions, Transport};
use busgate::{BusConfig, Ctx, Service};
use common::{NatsServer, TempDir};

/// Users with permissions on the default plane `microbus`:
/// - `gateway` runs the HTTP ingress (`http.ingress.core`) and may call hello.example only;
/// - `hello` runs hello.example, `calc` runs calculator.example and may call itself;
///   every user may answer any caller's inbox and join the `all` control plane.
const PERMISSIONS: &str = r#"
authorization {
  users = [
    { user: gateway, password: gw, permissions: {
        publish: { allow: ["microbus.443.example.hello.>", "microbus.r.>"] },
        subscribe: { allow: ["microbus.*.core.ingress.http.>", "microbus.r.core.ingress.http.>", "microbus.888.all.>"] } } },
    { user: hello, password: hw, permissions: {
        publish: { allow: ["microbus.r.>"] },
        subscribe: { allow: ["microbus.*.example.hello.>", "microbus.r.example.hello.>", "microbus.888.all.>"] } } },
    { user: calc, password: cw, permissions: {
        publish: { allow: ["microbus.r.>", "microbus.443.example.calculator.>"] },
        subscribe: { allow: ["microbus.*.example.calculator.>", "microbus.r.example.calculator.>", "microbus.888.all.>"] } } }
  ]
}
"#;

fn as_user(nats: &NatsServer, user: &str, password: &str) -> BusConfig {
    let mut opts = NatsOptions::new(nats.url());
    opts.user = Some(user.into());
    opts.password = Some(password.into());
    BusConfig::on(Transport::Nats(Box::new(opts)))
}

fn hello(host: &str) -> Service {
    Service::new(host).get("/hello", |_ctx: Ctx, _req| async {
        Ok(common::text("Hello!"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_only_its_own_subjects() {
    let dir = TempDir::new("acl");
    let conf = dir.0.join("nats.conf");
    std::fs::write(&conf, PERMISSIONS).unwrap();
    let nats = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);

    let hello_svc = hello("hello.example")
        .start(&as_user(&nats, "hello", "hw"))
        .await
        .unwrap();
    let calc = hello("calculator.example")
        .get("/arithmetic", |_ctx: Ctx, _req| async {
            Ok(common::text("4"))
        })
        .start(&as_user(&nats, "calc", "cw"))
        .await
        .unwrap();
    let mut overrides: Vec<(String, String)> = vec![("Ports".into(), "0".into())];
    overrides.push(("TimeBudget".into(), "3s".into()));
    let mut cfg = IngressConfig::resolve(None, |_| None, &overrides).unwrap();
    cfg.bind_ip = "127.0.0.1".parse().unwrap();
    let ingress = HttpIngress::start(cfg, &as_user(&nats, "gateway", "gw"))
        .await
        .unwrap();
    let addr = ingress.local_addrs()[0];

    // Permitted: through the ingress to hello.example.
    let res = common::http::get(addr, "/hello.example/hello").await;
    assert_eq!((res.status, res.text().as_str()), (200, "Hello!"));

    // Not permitted: the gateway may not publish to calculator.example. A clear 403 that names
    // the subject, within the ack timeout, instead of 404 "ack timeout".
    let started = Instant::now();
    let res = common::http::get(addr, "/calculator.example/arithmetic?x=2&op=%2B&y=2").await;
    let took = started.elapsed();
    assert_eq!(res.status, 403, "{}", res.text());
    assert!(
        res.text()
            .contains("NATS refused to publish to microbus.443.example.calculator.|.GET.arithmetic: permissions violation"),
        "{}",
        res.text()
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // The refusal is that call's alone: the next permitted call works.
    assert_eq!(
        common::http::get(addr, "/hello.example/hello").await.status,
        200
    );
    // calculator.example itself is up: its own user reaches it.
    let direct = calc
        .ctx()
        .get("https://calculator.example/arithmetic")
        .await
        .unwrap();
    assert_eq!(direct.body(), "4");

    // A service whose user may not subscribe to its subjects does not start, and says why.
    let err = hello("rogue.example")
        .start(&as_user(&nats, "hello", "hw"))
        .await
        .err()
        .expect("refused subscriptions fail the start");
    let msg = err.to_string();
    assert!(
        msg.contains("NATS refused the subscription to microbus.")
            && msg.contains("permissions violation"),
        "{msg}"
    );

    ingress.shutdown().await;
    calc.shutdown().await;
    hello_svc.shutdown().await;
}
