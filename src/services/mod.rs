//! Core services busgate ships besides the ingresses.

pub mod metrics_core;
