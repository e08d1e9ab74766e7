//! NATS transport: authentication, TLS, reconnection and the observable connection state.

mod common;

use std::time::{Duration, Instant};

use busgate::transport::{ConnectionState, NatsOptions, Transport, TransportErrorKind};
use busgate::{BusConfig, Ctx, ErrorKind, Service, StartError};
use bytes::Bytes;
use common::{make_certs, unique_plane, NatsServer, TempDir};
use http::Response;

fn config(opts: NatsOptions) -> BusConfig {
    BusConfig::on(Transport::Nats(Box::new(opts)))
        .with_plane(&unique_plane())
        .unwrap()
}

fn pong() -> Service {
    Service::new("pong.test").get("/", |_ctx: Ctx, _req| async {
        Ok(Response::new(Bytes::from_static(b"pong")))
    })
}

async fn assert_round_trip(cfg: &BusConfig) {
    let svc = pong().start(cfg).await.unwrap();
    let c = Service::new("client.test").start(cfg).await.unwrap();
    let res = c.ctx().get("https://pong.test/").await.unwrap();
    assert_eq!(res.body(), "pong");
    c.shutdown().await;
    svc.shutdown().await;
}

fn rejected(err: StartError) -> bool {
    matches!(err, StartError::Transport(ref t) if t.kind() == TransportErrorKind::Rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    let server = NatsServer::start_with(&["--user", "alice", "--pass", "s3cret"]);
    let mut opts = server.options();
    opts.user = Some("alice".into());
    opts.password = Some("s3cret".into());
    assert_round_trip(&config(opts.clone())).await;

    opts.password = Some("wrong".into());
    let started = Instant::now();
    let err = pong().start(&config(opts)).await.err().unwrap();
    assert!(rejected(err.clone()), "{err}");
    // Bad credentials are reported at once, not retried for the whole patience window.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token() {
    let server = NatsServer::start_with(&["--auth", "t0ken"]);
    let mut opts = server.options();
    opts.token = Some("t0ken".into());
    assert_round_trip(&config(opts.clone())).await;
    opts.token = None;
    let err = pong().start(&config(opts)).await.err().unwrap();
    assert!(rejected(err.clone()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    let dir = TempDir::new("tls");
    make_certs(&dir.0);
    let p = |f: &str| dir.0.join(f).to_string_lossy().into_owned();

    let server = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &p("server-cert.pem"),
        "--tlskey",
        &p("server-key.pem"),
    ]);
    // ca.pem in the working directory, as Microbus finds it.
    let opts = server.options().with_tls_files_from(&dir.0);
    assert_eq!(opts.tls_ca.as_deref(), Some(dir.0.join("ca.pem").as_path()));
    assert_round_trip(&config(opts)).await;
    // Without the CA the server's certificate is not trusted.
    let err = pong().start(&config(server.options())).await.err().unwrap();
    assert!(rejected(err.clone()), "{err}");

    let mtls = NatsServer::start_with(&[
        "--tlsverify",
        "--tlscert",
        &p("server-cert.pem"),
        "--tlskey",
        &p("server-key.pem"),
        "--tlscacert",
        &p("ca.pem"),
    ]);
    let mut opts = mtls.options();
    opts.tls_ca = Some(dir.0.join("ca.pem"));
    opts.tls_cert = Some(dir.0.join("client-cert.pem"));
    opts.tls_key = Some(dir.0.join("client-key.pem"));
    assert_round_trip(&config(opts)).await;
}

async fn wait_for(state: ConnectionState, rx: &mut tokio::sync::watch::Receiver<ConnectionState>) {
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| *s == state))
        .await
        .unwrap_or_else(|_| panic!("never reached {state:?}"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_server_restart() {
    let mut server = NatsServer::start();
    let cfg = server.config();
    let svc = pong().start(&cfg).await.unwrap();
    let c = Service::new("client.test").start(&cfg).await.unwrap();
    assert_eq!(
        c.ctx().get("https://pong.test/").await.unwrap().body(),
        "pong"
    );

    let mut state = c.bus().watch_state();
    let mut svc_state = svc.bus().watch_state();
    server.stop();
    wait_for(ConnectionState::Disconnected, &mut state).await;
    assert_eq!(c.connection_state(), ConnectionState::Disconnected);
    // While disconnected a call fails fast with 503 instead of hanging.
    let started = Instant::now();
    let err = c.ctx().get("https://pong.test/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(1));

    server.restart();
    wait_for(ConnectionState::Connected, &mut state).await;
    wait_for(ConnectionState::Connected, &mut svc_state).await;
    assert!(c.bus().reconnects() >= 1);
    // Subscriptions are restored by the client: the service answers again.
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(res) = c.ctx().get("https://pong.test/").await {
            assert_eq!(res.body(), "pong");
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "service never answered after the restart");
    c.shutdown().await;
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails_start_with_a_clear_error() {
    let mut opts = NatsOptions::new("nats://127.0.0.1:1");
    opts.initial_connect_patience = Some(Duration::from_millis(500));
    let err = pong().start(&config(opts)).await.err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_max_payload_still_fragments() {
    let dir = TempDir::new("conf");
    let conf = dir.0.join("nats.conf");
    std::fs::write(&conf, "max_payload: 200000\n").unwrap();
    let server = NatsServer::start_with(&["-c", &conf.to_string_lossy()]);
    let cfg = server.config();
    let svc = Service::new("echo.test")
        .post("/", |_ctx: Ctx, req: http::Request<Bytes>| async move {
            Ok(Response::new(req.into_body()))
        })
        .start(&cfg)
        .await
        .unwrap();
    let c = Service::new("client.test").start(&cfg).await.unwrap();
    let body = Bytes::from(vec![7u8; 1_000_000]);
    let req = busgate::build_request("POST", "https://echo.test/", body.clone(), None).unwrap();
    let res = c.request(req).await.unwrap();
    assert!(res.body() == &body);
    c.shutdown().await;
    svc.shutdown().await;

    let tiny = dir.0.join("tiny.conf");
    std::fs::write(&tiny, "max_payload: 100000\n").unwrap();
    let server = NatsServer::start_with(&["-c", &tiny.to_string_lossy()]);
    let err = pong().start(&server.config()).await.err().unwrap();
    assert!(matches!(err, StartError::PayloadLimit(100000)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_authentication() {
    let user = nkeys::KeyPair::new_user();
    let dir = TempDir::new("nkey");
    let conf = dir.0.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let server = NatsServer::start_with(&["-c", &conf.to_string_lossy()]);
    let mut opts = server.options();
    opts.nkey_seed = Some(user.seed().unwrap());
    assert_round_trip(&config(opts)).await;
    let mut opts = server.options();
    opts.nkey_seed = Some(nkeys::KeyPair::new_user().seed().unwrap());
    let err = pong().start(&config(opts)).await.err().unwrap();
    assert!(rejected(err.clone()), "{err}");
}
