//! The `busgate` command line: arguments, flags over `config.yaml` and the environment, and
//! the wiring of the components a command runs.

mod probe;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, ConfigFile, Sources};
use crate::ingress::admin::{AdminServer, AdminTargets, DEFAULT_ADMIN_ADDR};
use crate::ingress::http::{HttpIngress, IngressConfig};
use crate::ingress::smtp::{SmtpConfig, SmtpIngress};
use crate::services::metrics_core;
use crate::{examples, telemetry, BusConfig, Connector, Deployment};

#[derive(Parser)]
#[command(
    name = "busgate",
    version,
    about = "Microbus gateway and services over NATS"
)]
struct Cli {
    /// NATS URL; overrides MICROBUS_NATS. Without either, an in-process bus is used.
    #[arg(long, global = true)]
    nats: Option<String>,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long, global = true, env = "BUSGATE_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR)]
    admin_addr: std::net::SocketAddr,
    #[command(flatten)]
    ingress: IngressArgs,
    #[command(flatten)]
    smtp: SmtpArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the example services (hello.example, calculator.example, eventsource.example, eventsink.example).
    Examples,
    /// Run the HTTP ingress (and metrics.core) only.
    Ingress,
    /// Run the SMTP ingress (smtp.ingress.core) only.
    Smtp,
    /// Exit 0 when `GET <url>` answers 2xx (container health checks).
    Probe { url: String },
}

#[derive(Args)]
struct IngressArgs {
    /// Microbus config.yaml (`http.ingress.core: {Ports: ..}`); ./config.yaml when present.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// HTTP ingress ports, comma-separated (property Ports).
    #[arg(long, global = true)]
    ports: Option<String>,
    /// Budget of each request through the ingress, e.g. 20s (property TimeBudget).
    #[arg(long, global = true)]
    time_budget: Option<String>,
    /// Any HTTP ingress property, e.g. --set AllowedOrigins=https://a.example (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", global = true)]
    set: Vec<String>,
}

#[derive(Args)]
struct SmtpArgs {
    /// SMTP ingress port (property Port of smtp.ingress.core; 25 by default).
    #[arg(long, global = true)]
    smtp_port: Option<String>,
    /// Any SMTP ingress property, e.g. --smtp-set MaxSize=20 (repeatable).
    #[arg(long = "smtp-set", value_name = "NAME=VALUE", global = true)]
    smtp_set: Vec<String>,
}

/// The `NAME=VALUE` arguments of a repeatable `flag`.
fn name_values(flag: &str, args: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    args.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .ok_or_else(|| ConfigError::new(flag, kv, "expected NAME=VALUE"))
        })
        .collect()
}

impl SmtpArgs {
    fn resolve(&self, file: Option<&ConfigFile>) -> Result<SmtpConfig, ConfigError> {
        let mut overrides = Vec::new();
        if let Some(p) = &self.smtp_port {
            overrides.push(("Port".to_owned(), p.clone()));
        }
        overrides.extend(name_values("--smtp-set", &self.smtp_set)?);
        SmtpConfig::resolve(file, |k| std::env::var(k).ok(), &overrides)
    }
}

impl IngressArgs {
    fn file(&self) -> Result<Option<ConfigFile>, ConfigError> {
        Ok(match &self.config {
            Some(path) => Some(ConfigFile::load(path)?),
            None => {
                let default = PathBuf::from("config.yaml");
                default
                    .is_file()
                    .then(|| ConfigFile::load(&default))
                    .transpose()?
            }
        })
    }

    fn resolve(&self, file: Option<&ConfigFile>) -> Result<IngressConfig, ConfigError> {
        let mut overrides = Vec::new();
        if let Some(p) = &self.ports {
            overrides.push(("Ports".to_owned(), p.clone()));
        }
        if let Some(t) = &self.time_budget {
            overrides.push(("TimeBudget".to_owned(), t.clone()));
        }
        overrides.extend(name_values("--set", &self.set)?);
        IngressConfig::resolve(file, |k| std::env::var(k).ok(), &overrides)
    }
}

/// The command line: parse the arguments, run what they ask for, say how it ended.
pub async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Probe { url }) = &cli.command {
        return match probe::probe(url).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("busgate probe: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // Before anything else starts: a signal that arrives once busgate is up (ready, or half started)
    // must reach this handler, not the default one that kills the process.
    let mut signals = Signals::install();
    let config = match BusConfig::from_env(cli.nats.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("busgate: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let run_ingress = matches!(cli.command, None | Some(Command::Ingress));
    let run_examples = matches!(cli.command, None | Some(Command::Examples));
    let smtp_only = matches!(cli.command, Some(Command::Smtp));
    let run_smtp = matches!(cli.command, None | Some(Command::Smtp));
    let resolved = cli.ingress.file().and_then(|file| {
        let ingress = run_ingress
            .then(|| cli.ingress.resolve(file.as_ref()))
            .transpose()?;
        let env = |k: &str| std::env::var(k).ok();
        let secret = Sources::new(&metrics_core::SETTINGS, file.as_ref(), &env, &[])?
            .read(&metrics_core::SECRET_KEY)?;
        let smtp = run_smtp
            .then(|| cli.smtp.resolve(file.as_ref()))
            .transpose()?;
        // Misspelt keys under busgate's own hosts, and misspelt variables under their
        // prefixes, would be ignored silently.
        let tables = [
            crate::ingress::http::config::SETTINGS,
            crate::ingress::smtp::config::SETTINGS,
            metrics_core::SETTINGS,
        ];
        let mut unknown = Vec::new();
        for table in &tables {
            if let Some(f) = &file {
                unknown.extend(table.unknown_in(f));
            }
            unknown.extend(table.unknown_env(std::env::vars().map(|(k, _)| k)));
        }
        Ok((ingress, secret, smtp, unknown))
    });
    let (ingress_config, secret_key, smtp_config, unknown_properties) = match resolved {
        Ok(r) => r,
        Err(e) => {
            eprintln!("busgate: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::logs::init(config.deployment);
    // As Go's runtime does: every client is an open file, and the usual soft limit (1024) would
    // refuse connections long before memory runs out. The hard limit stays the operator's.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    for u in &unknown_properties {
        tracing::warn!(host = %u.host, property = %u.name, "{u}");
    }
    tracing::info!(
        bus = %config.transport.describe(),
        plane = %config.plane,
        deployment = %config.deployment,
        traces = config.telemetry.endpoint.as_deref().unwrap_or("not exported"),
        "busgate starting"
    );

    let targets = AdminTargets::default();
    let mut services: Vec<Connector> = Vec::new();
    let mut ingress = None;
    let mut smtp = None;
    let started: Result<(), String> = async {
        if run_examples {
            services.extend(examples::start_all(&config).await.map_err(|e| format!("cannot start the example services: {e}"))?);
        }
        if let Some(ic) = ingress_config {
            if secret_key.is_none() && !matches!(config.deployment, Deployment::Local | Deployment::Testing) {
                tracing::warn!("metrics.core has no SecretKey: /metrics.core/collect refuses every scrape outside LOCAL");
            }
            services.push(
                metrics_core::service(secret_key)
                    .start(&config)
                    .await
                    .map_err(|e| format!("cannot start metrics.core: {e}"))?,
            );
            let i = HttpIngress::start(ic, &config)
                .await
                .map_err(|e| format!("cannot start the HTTP ingress: {e}"))?;
            targets.add(i.connector().clone());
            ingress = Some(i);
        }
        match smtp_config {
            Some(sc) if !sc.enabled => {
                tracing::info!("SMTP ingress disabled (smtp.ingress.core Enabled=false)");
            }
            Some(sc) => {
                let port = sc.port;
                match SmtpIngress::start(sc, &config).await {
                    Ok(s) => {
                        targets.add(s.connector().clone());
                        smtp = Some(s);
                    }
                    // `busgate smtp` exists to receive mail: there, not listening is fatal.
                    Err(e) if smtp_only => return Err(format!("cannot start the SMTP ingress: {e}")),
                    // The all-in-one keeps serving HTTP without it.
                    Err(e) => {
                        let hint = if port < 1024 {
                            "; ports below 1024 need privileges (root or CAP_NET_BIND_SERVICE): set another one with --smtp-port 2525, BUSGATE_SMTP_INGRESS_PORT=2525 or `smtp.ingress.core: {Port: 2525}` in config.yaml".to_owned()
                        } else {
                            String::new()
                        };
                        tracing::error!(error = %e, "SMTP ingress not started; the rest runs without it{hint}");
                    }
                }
            }
            None => {}
        }
        Ok(())
    }
    .await;
    for s in &services {
        targets.add(s.clone());
    }
    let admin = match started {
        Ok(()) => AdminServer::start(cli.admin_addr, targets)
            .await
            .map_err(|e| format!("cannot listen on the admin address {}: {e}", cli.admin_addr)),
        Err(e) => Err(e),
    };
    let admin = match admin {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            stop_components(smtp.as_ref(), ingress.as_ref(), &services).await;
            return std::process::ExitCode::from(1);
        }
    };

    signals.recv().await;
    // A second signal means now: an orchestrator or a person that will not wait.
    tokio::spawn(async move {
        signals.recv().await;
        eprintln!("busgate: second signal: exiting at once");
        std::process::exit(130);
    });
    let shutdown = async {
        stop_components(smtp.as_ref(), ingress.as_ref(), &services).await;
        admin.shutdown().await;
    };
    match tokio::time::timeout(SHUTDOWN_LIMIT, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => {
            tracing::error!(
                "shutdown did not finish within {} s; exiting anyway",
                SHUTDOWN_LIMIT.as_secs()
            );
            std::process::ExitCode::from(3)
        }
    }
}

/// The longest a graceful shutdown may take before the process exits anyway (code 3): each
/// service drains for at most 8 + 4 s (Microbus's bounds) and gives NATS 2 s to close.
/// Stop what started: the ingresses first, so that requests in flight can still reach the
/// services, then the services in the reverse order of their start.
async fn stop_components(
    smtp: Option<&SmtpIngress>,
    ingress: Option<&HttpIngress>,
    services: &[Connector],
) {
    if let Some(s) = smtp {
        s.shutdown().await;
    }
    if let Some(i) = ingress {
        i.shutdown().await;
    }
    for conn in services.iter().rev() {
        conn.shutdown().await;
    }
}

const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(25);

/// SIGTERM and SIGINT (Ctrl-C), their handlers installed at once.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
                interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.interrupt.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received; shutting down");
    }
}
