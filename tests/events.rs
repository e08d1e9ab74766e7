//! Events: `eventsource.example` fires, sinks veto or are told; replicas of one sink service
//! share one copy, different sink services get one each; `eventsink.example` keeps the mails
//! of the SMTP ingress readable over HTTP.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use busgate::examples::eventsink;
use busgate::examples::eventsource::{
    self, OnAllowRegisterIn, OnAllowRegisterOut, OnRegisteredIn, OnRegisteredOut, RegisterOut,
};
use busgate::ingress::http::{HttpIngress, IngressConfig};
use busgate::ingress::smtp::{SmtpConfig, SmtpIngress};
use busgate::{json, Connector, Ctx, Error, Service};
use common::{client, TestBus};

on_every_bus!(
    a_veto_from_one_of_two_sinks_stops_the_registration,
    replicas_of_one_sink_service_share_one_copy_and_other_services_get_their_own,
    a_failing_sink_is_no_consent,
    typed_fire_returns_every_sinks_answer,
);

/// A sink service `host` that allows every registration and counts the events it takes.
async fn counting_sink(
    bus: &TestBus,
    host: &str,
    asked: Arc<AtomicUsize>,
    told: Arc<AtomicUsize>,
) -> Connector {
    Service::new(host)
        .sink(
            eventsource::HOSTNAME,
            eventsource::ON_ALLOW_REGISTER,
            json(move |_ctx: Ctx, _i: OnAllowRegisterIn| {
                let asked = asked.clone();
                async move {
                    asked.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Error>(OnAllowRegisterOut { allow: true })
                }
            }),
        )
        .sink(
            eventsource::HOSTNAME,
            eventsource::ON_REGISTERED,
            json(move |_ctx: Ctx, _i: OnRegisteredIn| {
                let told = told.clone();
                async move {
                    told.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Error>(OnRegisteredOut {})
                }
            }),
        )
        .start(&bus.config)
        .await
        .unwrap()
}

async fn register(c: &Connector, email: &str) -> Result<RegisterOut, Error> {
    let res = c
        .ctx()
        .get(&format!(
            "https://{}/register?email={email}",
            eventsource::HOSTNAME
        ))
        .await?;
    Ok(serde_json::from_slice(res.body()).unwrap())
}

async fn registered(c: &Connector) -> Vec<String> {
    let res = c
        .ctx()
        .get(&format!("https://{}/registered", eventsink::HOSTNAME))
        .await
        .unwrap();
    serde_json::from_slice(res.body()).unwrap()
}

async fn a_veto_from_one_of_two_sinks_stops_the_registration(bus: TestBus) {
    let source = eventsource::service().start(&bus.config).await.unwrap();
    let sink = eventsink::service().start(&bus.config).await.unwrap();
    let (asked, told) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let other = counting_sink(&bus, "allowall.test", asked.clone(), told.clone()).await;
    let c = client(&bus).await;

    let out = register(&c, "ann@gmail.com").await.unwrap();
    assert!(!out.allowed, "eventsink.example vetoes gmail.com");
    assert_eq!(asked.load(Ordering::SeqCst), 1, "both sinks were asked");
    assert_eq!(
        told.load(Ordering::SeqCst),
        0,
        "no on-registered after a veto"
    );
    assert!(registered(&c).await.is_empty());

    let out = register(&c, "Bob@Example.com").await.unwrap();
    assert!(out.allowed);
    assert_eq!(told.load(Ordering::SeqCst), 1);
    assert_eq!(registered(&c).await, ["bob@example.com"]);

    let err = register(&c, "not-an-email").await.unwrap_err();
    assert_eq!(err.status().as_u16(), 400);
    for conn in [c, other, sink, source] {
        conn.shutdown().await;
    }
}

async fn replicas_of_one_sink_service_share_one_copy_and_other_services_get_their_own(
    bus: TestBus,
) {
    let source = eventsource::service().start(&bus.config).await.unwrap();
    let (asked_a, told_a) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (asked_b, told_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sinks = [
        counting_sink(&bus, "replicated.test", asked_a.clone(), told_a.clone()).await,
        counting_sink(&bus, "replicated.test", asked_a.clone(), told_a.clone()).await,
        counting_sink(&bus, "replicated.test", asked_a.clone(), told_a.clone()).await,
        counting_sink(&bus, "single.test", asked_b.clone(), told_b.clone()).await,
    ];
    let c = client(&bus).await;
    for i in 0..10 {
        assert!(
            register(&c, &format!("u{i}@example.com"))
                .await
                .unwrap()
                .allowed
        );
    }
    assert_eq!(
        asked_a.load(Ordering::SeqCst),
        10,
        "one copy per event among the replicas"
    );
    assert_eq!(told_a.load(Ordering::SeqCst), 10);
    assert_eq!(
        asked_b.load(Ordering::SeqCst),
        10,
        "the other service its own"
    );
    assert_eq!(told_b.load(Ordering::SeqCst), 10);
    c.shutdown().await;
    for s in sinks {
        s.shutdown().await;
    }
    source.shutdown().await;
}

async fn a_failing_sink_is_no_consent(bus: TestBus) {
    let source = eventsource::service().start(&bus.config).await.unwrap();
    let broken = Service::new("broken.test")
        .sink(
            eventsource::HOSTNAME,
            eventsource::ON_ALLOW_REGISTER,
            json(|_ctx: Ctx, _i: OnAllowRegisterIn| async {
                Err::<OnAllowRegisterOut, _>(Error::internal("database down"))
            }),
        )
        .start(&bus.config)
        .await
        .unwrap();
    let c = client(&bus).await;
    let err = register(&c, "ann@example.com").await.unwrap_err();
    assert!(err.message().contains("database down"), "{err}");
    for conn in [c, broken, source] {
        conn.shutdown().await;
    }
}

async fn typed_fire_returns_every_sinks_answer(bus: TestBus) {
    // Fire as the source itself (any connector can fire its own events).
    let source = Service::new(eventsource::HOSTNAME)
        .start(&bus.config)
        .await
        .unwrap();
    let none = eventsource::fire_on_allow_register(&source.ctx(), "a@b.example")
        .await
        .unwrap();
    assert!(none.is_empty(), "no sink: no answers, no error");
    let sink = eventsink::service().start(&bus.config).await.unwrap();
    let (asked, told) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let other = counting_sink(&bus, "allowall.test", asked, told).await;
    let mut verdicts: Vec<bool> =
        eventsource::fire_on_allow_register(&source.ctx(), "a@hotmail.com")
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
    verdicts.sort();
    assert_eq!(verdicts, [false, true]);
    for conn in [other, sink, source] {
        conn.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsink_shows_the_mails_of_the_smtp_ingress_over_http() {
    let bus = TestBus::nats();
    let services = busgate::examples::start_all(&bus.config).await.unwrap();
    let mut cfg = IngressConfig::resolve(None, |_| None, &[("Ports".into(), "0".into())]).unwrap();
    cfg.bind_ip = "127.0.0.1".parse().unwrap();
    let http = HttpIngress::start(cfg, &bus.config).await.unwrap();
    let smtp = SmtpIngress::start(
        SmtpConfig {
            port: 0,
            bind_ip: [127, 0, 0, 1].into(),
            ..SmtpConfig::default()
        },
        &bus.config,
    )
    .await
    .unwrap();
    let script = format!(
        r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "Ann <ann@client.test>"
m["To"] = "inbox@smtp.test"
m["Subject"] = "to the inbox"
m.set_content("hello inbox")
m.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="doc.pdf")
s = smtplib.SMTP("127.0.0.1", {port}, timeout=30)
s.send_message(m)
s.quit()
"#,
        port = smtp.local_addr().port()
    );
    common::python(&script).await;
    let res = common::http::get(http.local_addrs()[0], "/eventsink.example/inbox").await;
    assert_eq!(res.status, 200, "{}", res.text());
    let inbox: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    let mail = &inbox[0];
    assert_eq!(mail["subject"], "to the inbox");
    assert_eq!(mail["from"][0], "Ann <ann@client.test>");
    assert_eq!(mail["text"].as_str().unwrap().trim_end(), "hello inbox");
    assert_eq!(mail["files"][0], "doc.pdf (13 bytes)");
    tokio::time::sleep(Duration::from_millis(10)).await;
    smtp.shutdown().await;
    http.shutdown().await;
    for s in services {
        s.shutdown().await;
    }
}
