//! Telemetry: logs now; traces and metrics join here.

pub mod logs;
