//! busgate on both nats-server generations the project meets: the current one from the Go
//! module proxy (what the other tests run on) and Debian's 2.9: unicast with an ack,
//! multicast to every replica, 1 MB bodies through fragments, and the ingress in front.

mod common;

use std::process::Command;

use busgate::ingress::http::{HttpIngress, IngressConfig};
use busgate::{examples, BusConfig, Ctx, Service};
use bytes::Bytes;
use common::http::get;
use common::{tool_bin, unique_plane, NatsServer, DEBIAN_NATS_SERVER};
use http::Response;

fn version(bin: &str) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn the_bus_works_on(server: NatsServer) {
    let config = BusConfig::nats(&server.url())
        .with_plane(&unique_plane())
        .unwrap();
    let echo = || {
        Service::new("echo.versions")
            .post("/echo", |_ctx: Ctx, req: http::Request<Bytes>| async move {
                Ok(Response::new(req.into_body()))
            })
    };
    let a = echo().start(&config).await.unwrap();
    let b = echo().start(&config).await.unwrap();
    let services = examples::start_all(&config).await.unwrap();

    // Unicast with a body larger than a fragment (the server's max_payload is 1 MB).
    let body = Bytes::from(vec![b'z'; 3 << 20]);
    let res = a
        .ctx()
        .request(
            http::Request::post("https://echo.versions/echo")
                .body(body.clone())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.body().len(), body.len());
    // Multicast reaches both replicas (control plane, no queue).
    let pongs = a
        .ctx()
        .multicast(
            http::Request::post("https://echo.versions:888/ping")
                .body(Bytes::new())
                .unwrap(),
        )
        .await;
    assert_eq!(pongs.len(), 2, "both replicas answer the ping");
    assert!(pongs.iter().all(Result::is_ok), "{pongs:?}");

    // The ingress in front of the example services.
    let mut ic = IngressConfig::resolve(None, |_| None, &[("Ports".into(), "0".into())]).unwrap();
    ic.bind_ip = "127.0.0.1".parse().unwrap();
    let ingress = HttpIngress::start(ic, &config).await.unwrap();
    let res = get(
        ingress.local_addrs()[0],
        "/hello.example/calculator?x=6&op=*&y=7",
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.text().contains("42"), "{}", res.text());

    ingress.shutdown().await;
    for s in services {
        s.shutdown().await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_current_nats_server() {
    let bin = tool_bin("nats-server", "NATS_SERVER_BIN");
    let v = version(&bin);
    assert!(
        v.contains("v2.1") && !v.contains("v2.9."),
        "the tests run on a current nats-server (scripts/go-tools), not {v}"
    );
    the_bus_works_on(NatsServer::start_program(&bin)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_debians_nats_server_2_9() {
    let v = version(DEBIAN_NATS_SERVER);
    assert!(v.contains("v2.9."), "Debian's nats-server is 2.9: {v}");
    the_bus_works_on(NatsServer::start_program(DEBIAN_NATS_SERVER)).await;
}
