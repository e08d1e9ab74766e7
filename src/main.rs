//! The `busgate` binary: a thin command line over the library.

use clap::{Parser, Subcommand};

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the example services (hello.example, calculator.example).
    Examples,
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
    telemetry::logs::init(config.deployment);
    tracing::info!(
        bus = %config.transport.describe(),
        plane = %config.plane,
        deployment = %config.deployment,
        "busgate starting"
    );
    let result = match cli.command {
        None | Some(Command::Examples) => examples::start_all(&config).await,
    };
    let services: Vec<Connector> = match result {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return std::process::ExitCode::from(1);
        }
    };
    wait_for_signal().await;
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
