//! The `busgate` binary: a thin command line over the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use busgate::config::{ConfigError, ConfigFile};
use busgate::ingress::http::{HttpIngress, IngressConfig};
use busgate::{examples, telemetry, BusConfig, Connector};

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
    #[command(flatten)]
    ingress: IngressArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the example services (hello.example, calculator.example).
    Examples,
    /// Run the HTTP ingress only.
    Ingress,
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

impl IngressArgs {
    fn resolve(&self) -> Result<IngressConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => Some(ConfigFile::load(path)?),
            None => {
                let default = PathBuf::from("config.yaml");
                default
                    .is_file()
                    .then(|| ConfigFile::load(&default))
                    .transpose()?
            }
        };
        let mut overrides = Vec::new();
        if let Some(p) = &self.ports {
            overrides.push(("Ports".to_owned(), p.clone()));
        }
        if let Some(t) = &self.time_budget {
            overrides.push(("TimeBudget".to_owned(), t.clone()));
        }
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ConfigError::new("--set", kv, "expected NAME=VALUE"))?;
            overrides.push((k.trim().to_owned(), v.to_owned()));
        }
        IngressConfig::resolve(file.as_ref(), |k| std::env::var(k).ok(), &overrides)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match BusConfig::from_env(cli.nats.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("busgate: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let run_ingress = !matches!(cli.command, Some(Command::Examples));
    let run_examples = !matches!(cli.command, Some(Command::Ingress));
    let ingress_config = match run_ingress.then(|| cli.ingress.resolve()).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("busgate: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::logs::init(config.deployment);
    tracing::info!(
        bus = %config.transport.describe(),
        plane = %config.plane,
        deployment = %config.deployment,
        "busgate starting"
    );

    let mut services: Vec<Connector> = Vec::new();
    if run_examples {
        match examples::start_all(&config).await {
            Ok(s) => services = s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the example services");
                return std::process::ExitCode::from(1);
            }
        }
    }
    let mut ingress = None;
    if let Some(ic) = ingress_config {
        match HttpIngress::start(ic, &config).await {
            Ok(i) => ingress = Some(i),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the HTTP ingress");
                for conn in services.iter().rev() {
                    conn.shutdown().await;
                }
                return std::process::ExitCode::from(1);
            }
        }
    }

    wait_for_signal().await;
    // The ingress first, so that requests in flight can still reach the services.
    if let Some(i) = &ingress {
        i.shutdown().await;
    }
    for conn in services.iter().rev() {
        conn.shutdown().await;
    }
    std::process::ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("signal received; shutting down");
}
