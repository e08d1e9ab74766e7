//! Example services: `calculator.example` and `hello.example`, used by the demo and the tests.
//!
//! Run them: `busgate examples` (in-process bus) or `MICROBUS_NATS=nats://127.0.0.1:4222 busgate examples`.

pub mod calculator;
pub mod hello;

use crate::config::BusConfig;
use crate::connector::{Connector, StartError};

/// Start every example service; on failure the ones already started are shut down.
pub async fn start_all(config: &BusConfig) -> Result<Vec<Connector>, StartError> {
    let mut started = Vec::new();
    for service in [calculator::service(), hello::service()] {
        match service.start(config).await {
            Ok(conn) => started.push(conn),
            Err(e) => {
                for conn in started.iter().rev() {
                    conn.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    Ok(started)
}
