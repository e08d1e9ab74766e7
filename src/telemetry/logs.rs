//! Logs through `tracing-subscriber`: readable text in LOCAL/TESTING, JSON in LAB/PROD,
//! filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::Deployment;

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Install the global subscriber; a second call is a no-op (tests share a process).
pub fn init(deployment: Deployment) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match deployment {
        Deployment::Local | Deployment::Testing => builder.try_init(),
        Deployment::Lab | Deployment::Prod => builder.json().try_init(),
    };
}
