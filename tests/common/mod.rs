//! Test harness: a real `nats-server` on a free port per test, killed on drop, and helpers
//! to run one behaviour suite on NATS and on the in-process bus.
#![allow(dead_code)]

pub mod http;
use ::http as http_types;
pub mod jaeger;
pub mod otlp;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use busgate::transport::{InProcBus, NatsOptions, Transport};
use busgate::BusConfig;

/// A `nats-server` child process on 127.0.0.1.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
}

impl NatsServer {
    /// Start on a free port chosen by the server (`-p -1`).
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// Start the given nats-server program (e.g. [`DEBIAN_NATS_SERVER`]).
    pub fn start_program(bin: &str) -> NatsServer {
        let (child, port) = spawn_bin(bin, -1, &[]);
        NatsServer {
            child: Some(child),
            port,
            args: Vec::new(),
        }
    }

    /// Start with extra arguments (auth, TLS, config file).
    pub fn start_with(extra: &[&str]) -> NatsServer {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, port) = spawn(-1, &args);
        NatsServer {
            child: Some(child),
            port,
            args,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A configuration whose every request, ack and response crosses this server: the short
    /// circuit is off, so that tests of the NATS path test it.
    pub fn config(&self) -> BusConfig {
        BusConfig::on(Transport::Nats(Box::new(self.options())))
            .with_plane(&unique_plane())
            .unwrap()
    }

    /// As busgate runs by default: connectors started with (clones of) this configuration
    /// reach each other through the short circuit.
    pub fn config_with_short_circuit(&self) -> BusConfig {
        BusConfig::nats(&self.url())
            .with_plane(&unique_plane())
            .unwrap()
    }

    /// Options for this server, short circuit off.
    pub fn options(&self) -> NatsOptions {
        NatsOptions::new(self.url()).with_short_circuit(false)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port (after [`stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let (child, port) = spawn(self.port as i32, &self.args);
        assert_eq!(port, self.port);
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The program `name` the tests run: `$env_var` when set (scripts/test sets it), else the
/// build of `scripts/go-tools` in its cache, else `name` on the PATH.
pub fn tool_bin(name: &str, env_var: &str) -> String {
    if let Ok(bin) = std::env::var(env_var) {
        return bin;
    }
    let cache = std::env::var_os("BUSGATE_TOOLS_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("busgate/tools"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/busgate/tools"))
        });
    match cache.map(|c| c.join(name)).filter(|p| p.exists()) {
        Some(p) => p.display().to_string(),
        None => name.to_owned(),
    }
}

/// Debian's nats-server 2.9, for the test that the bus still works on it.
pub const DEBIAN_NATS_SERVER: &str = "/usr/sbin/nats-server";

fn spawn(port: i32, extra: &[String]) -> (Child, u16) {
    spawn_bin(&tool_bin("nats-server", "NATS_SERVER_BIN"), port, extra)
}

fn spawn_bin(bin: &str, port: i32, extra: &[String]) -> (Child, u16) {
    let bin = bin.to_owned();
    let mut last_err = String::new();
    // Restarting on a port the old process just left can race its release: retry briefly.
    for _ in 0..50 {
        let mut child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin}: {e}; install nats-server (apt-get install nats-server)")
            });
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                        let port: u16 = rest.trim().rsplit(':').next().unwrap().parse().unwrap();
                        let _ = tx.send(Ok(port));
                        sent = true;
                    } else if line.contains("[FTL]") || line.contains("[ERR]") {
                        let _ = tx.send(Err(line.clone()));
                        sent = true;
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(port)) => return (child, port),
            Ok(Err(line)) => last_err = line,
            Err(_) => last_err = "nats-server did not start within 10 s".into(),
        }
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nats-server failed to start: {last_err}");
}

/// A plane of its own for every test, so that tests sharing a server never see each other.
pub fn unique_plane() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The bus a behaviour test runs on; holds the server alive for the test's duration.
pub struct TestBus {
    pub config: BusConfig,
    pub server: Option<NatsServer>,
}

impl TestBus {
    /// NATS, every message through the server.
    pub fn nats() -> TestBus {
        let server = NatsServer::start();
        TestBus {
            config: server.config(),
            server: Some(server),
        }
    }

    /// NATS with the short circuit, as busgate runs by default.
    pub fn short_circuit() -> TestBus {
        let server = NatsServer::start();
        TestBus {
            config: server.config_with_short_circuit(),
            server: Some(server),
        }
    }

    pub fn inproc() -> TestBus {
        TestBus {
            config: BusConfig::on(Transport::InProc(InProcBus::new()))
                .with_plane(&unique_plane())
                .unwrap(),
            server: None,
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("busgate-{tag}-{}", unique_plane()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run each listed `async fn name(bus: TestBus)` on a fresh NATS server and on the in-process bus.
#[macro_export]
macro_rules! on_every_bus {
    ($($name:ident),* $(,)?) => {
        mod on_nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::TestBus::nats()).await
                }
            )*
        }
        mod on_short_circuit {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::TestBus::short_circuit()).await
                }
            )*
        }
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::TestBus::inproc()).await
                }
            )*
        }
    };
}

/// A port that was free a moment ago (for listeners whose port must be known up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, however it ends.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `openssl` in `dir` (test certificates).
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed to make test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus on a free port with the given scrape configuration.
pub struct Prometheus {
    _child: ChildGuard,
    _dir: TempDir,
    pub addr: std::net::SocketAddr,
}

impl Prometheus {
    /// `config` is a whole prometheus.yml.
    pub fn start(config: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let port = free_port();
        std::fs::write(dir.0.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .args([
                &format!("--config.file={}", dir.0.join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", dir.0.join("data").display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is needed (apt-get install prometheus)");
        Prometheus {
            _child: ChildGuard(child),
            _dir: dir,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }

    pub async fn is_up(&self) -> bool {
        tokio::net::TcpStream::connect(self.addr).await.is_ok()
    }

    /// An instant query through the HTTP API.
    pub async fn query(&self, promql: &str) -> serde_json::Value {
        let q = serde_urlencoded::to_string([("query", promql)]).unwrap();
        let res = http::get(self.addr, &format!("/api/v1/query?{q}")).await;
        serde_json::from_slice(&res.body)
            .unwrap_or_else(|_| panic!("{promql}: {} {}", res.status, res.text()))
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
pub fn make_certs(dir: &std::path::Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=busgate test CA",
        ],
    );
    for who in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}-key.pem"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &format!("{who}-cert.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
}

/// A plain-text response body, for test handlers.
pub fn text(s: impl Into<String>) -> http_types::Response<bytes::Bytes> {
    http_types::Response::new(bytes::Bytes::from(s.into()))
}

/// A service at `host` whose `POST /echo` answers with the request's body.
pub fn echo(host: &str) -> busgate::Service {
    busgate::Service::new(host).post(
        "/echo",
        |_ctx: busgate::Ctx, req: http_types::Request<bytes::Bytes>| async move {
            Ok(http_types::Response::new(req.into_body()))
        },
    )
}

/// A service with no endpoints, to call others from.
pub async fn client(bus: &TestBus) -> busgate::Connector {
    busgate::Service::new("client.test")
        .start(&bus.config)
        .await
        .unwrap()
}

/// Run a Python script (`python3 -c`, e.g. smtplib as the real SMTP client); it must succeed.
pub async fn python(script: &str) {
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .await
        .expect("python3 is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
