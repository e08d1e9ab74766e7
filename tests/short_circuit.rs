//! The short circuit (Microbus's `MICROBUS_SHORT_CIRCUIT`, on by default): connectors started
//! with one configuration reach each other in memory; calls to anyone else, and every
//! multicast, still go through a real nats-server.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use busgate::transport::{ConnectionState, Transport};
use busgate::{build_request, BusConfig, Ctx, ErrorKind, Queue, Service};
use bytes::Bytes;
use common::{echo, free_port, NatsServer};
use http::Response;

/// Messages the server has received from clients (`/varz` `in_msgs`).
async fn messages_in(monitor: u16) -> u64 {
    let url = format!("http://127.0.0.1:{monitor}/varz");
    let body = tokio::task::spawn_blocking(move || {
        let out = Command::new("curl").args(["-fsS", &url]).output().unwrap();
        assert!(out.status.success(), "curl {url}");
        out.stdout
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["in_msgs"].as_u64().unwrap()
}

/// Answers with the id of the instance that took the request: `/who` in the replicas' queue
/// group (one replica takes each message), `/all` in none (every replica does).
fn whoami(host: &str) -> Service {
    async fn id(ctx: Ctx, _req: http::Request<Bytes>) -> Result<Response<Bytes>, busgate::Error> {
        Ok(Response::new(Bytes::from(ctx.connector().id().to_owned())))
    }
    Service::new(host)
        .any("/who", id)
        .route_with_queue("ANY", "/all", Queue::None, id)
}

/// The same plane on the same server, as another process would have it: its own short circuit.
fn another_process(cfg: &BusConfig, server: &NatsServer) -> BusConfig {
    let mut other = cfg.clone();
    other.transport = Transport::Nats(Box::new(server.options().with_short_circuit(true)));
    other
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_connectors_of_one_configuration_skip_nats() {
    let monitor = free_port();
    let server = NatsServer::start_with(&["-m", &monitor.to_string()]);
    const CALLS: u64 = 50;
    for (cfg, through_nats) in [
        (server.config_with_short_circuit(), false),
        (server.config(), true),
    ] {
        let svc = whoami("who.test").start(&cfg).await.unwrap();
        let c = Service::new("client.test").start(&cfg).await.unwrap();
        let before = messages_in(monitor).await;
        for _ in 0..CALLS {
            let res = c.ctx().get("https://who.test/who").await.unwrap();
            assert_eq!(res.body(), svc.id());
        }
        let carried = messages_in(monitor).await - before;
        if through_nats {
            // Request, ack and response of every call.
            assert!(carried >= 3 * CALLS, "{carried} messages for {CALLS} calls");
        } else {
            assert!(carried < CALLS / 5, "{carried} messages for {CALLS} calls");
        }
        c.shutdown().await;
        svc.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_calls_ride_out_a_nats_outage_while_remote_ones_fail_fast() {
    let mut server = NatsServer::start();
    let cfg = server.config_with_short_circuit();
    let near = echo("near.test").start(&cfg).await.unwrap();
    let far = echo("far.test")
        .start(&another_process(&cfg, &server))
        .await
        .unwrap();
    let c = Service::new("client.test").start(&cfg).await.unwrap();
    // A body of several fragments, both ways: in memory, and through NATS to the other process.
    let body = Bytes::from(vec![5u8; 3_000_000]);
    for host in ["near.test", "far.test"] {
        let url = format!("https://{host}/echo");
        let req = build_request("POST", &url, body.clone(), None).unwrap();
        let res = c.request(req).await.unwrap();
        assert!(res.body() == &body, "{host}");
    }

    let mut state = c.bus().watch_state();
    server.stop();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s != ConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    let small = Bytes::from_static(b"still here");
    let req = build_request("POST", "https://near.test/echo", small.clone(), None).unwrap();
    assert_eq!(c.request(req).await.unwrap().body(), &small);
    // A body of several fragments too, on a budget shorter than the wait for NATS to take a
    // first fragment (1 s): one delivered in memory is not waited for.
    let req = build_request("POST", "https://near.test/echo", body.clone(), None).unwrap();
    let res = c
        .ctx()
        .with_timeout(Duration::from_millis(900))
        .request(req)
        .await
        .unwrap();
    assert!(res.body() == &body);
    let started = Instant::now();
    let req = build_request("POST", "https://far.test/echo", small.clone(), None).unwrap();
    let err = c.request(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));

    server.restart();
    let mut answered = false;
    for _ in 0..100 {
        let req = build_request("POST", "https://far.test/echo", small.clone(), None).unwrap();
        if let Ok(res) = c.request(req).await {
            assert_eq!(res.body(), &small);
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answered,
        "the other process never answered after the restart"
    );
    c.shutdown().await;
    near.shutdown().await;
    far.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unicast_stays_local_and_a_multicast_reaches_every_replica() {
    let server = NatsServer::start();
    let cfg = server.config_with_short_circuit();
    let near = whoami("replica.test").start(&cfg).await.unwrap();
    let far = whoami("replica.test")
        .start(&another_process(&cfg, &server))
        .await
        .unwrap();
    let c = Service::new("client.test").start(&cfg).await.unwrap();
    // As Microbus's: a replica in this process takes every unicast.
    for _ in 0..20 {
        let res = c.ctx().get("https://replica.test/who").await.unwrap();
        assert_eq!(res.body(), near.id());
    }
    // A multicast goes through NATS, which reaches every replica outside a queue group, and
    // one member of each group, wherever it runs.
    let multicast = |path: &'static str| {
        let c = c.clone();
        async move {
            let url = format!("https://replica.test{path}");
            let req = build_request("GET", &url, Bytes::new(), None).unwrap();
            let mut ids: Vec<String> = c
                .ctx()
                .multicast(req)
                .await
                .into_iter()
                .map(|r| String::from_utf8(r.unwrap().into_body().to_vec()).unwrap())
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![near.id().to_owned(), far.id().to_owned()];
    both.sort();
    assert_eq!(multicast("/all").await, both);
    let mut took = Vec::new();
    for _ in 0..20 {
        let ids = multicast("/who").await;
        assert_eq!(ids.len(), 1, "{ids:?}");
        took.extend(ids);
    }
    took.sort();
    took.dedup();
    assert_eq!(took, both, "NATS picks either member of the group");
    // Without a local replica, a unicast goes to the other process.
    near.shutdown().await;
    let res = c.ctx().get("https://replica.test/who").await.unwrap();
    assert_eq!(res.body(), far.id());
    c.shutdown().await;
    far.shutdown().await;
}

#[test]
fn the_setting_turns_it_off_and_refuses_other_values() {
    let read = |value: Option<&str>| {
        let value = value.map(str::to_owned);
        BusConfig::from_lookup(
            |k| match k {
                "MICROBUS_NATS" => Some("nats://127.0.0.1:4222".to_owned()),
                "MICROBUS_SHORT_CIRCUIT" => value.clone(),
                _ => None,
            },
            None,
            std::env::temp_dir(),
        )
    };
    let short_circuit = |cfg: BusConfig| match cfg.transport {
        Transport::Nats(o) => o.short_circuit.is_some(),
        Transport::InProc(_) => panic!("NATS was configured"),
    };
    assert!(short_circuit(read(None).unwrap()));
    for on in ["1", "true", "TRUE"] {
        assert!(short_circuit(read(Some(on)).unwrap()), "{on}");
    }
    for off in ["0", "false", "False"] {
        assert!(!short_circuit(read(Some(off)).unwrap()), "{off}");
    }
    let err = read(Some("maybe")).unwrap_err().to_string();
    assert!(err.contains("MICROBUS_SHORT_CIRCUIT"), "{err}");
    assert!(err.contains("maybe"), "{err}");
}
