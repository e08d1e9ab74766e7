//! Example services, used by the demo and the tests: `calculator.example`, `hello.example`, and
//! the events pair `eventsource.example` (fires) and `eventsink.example` (sinks, also the SMTP
//! ingress's `on-incoming-email`).
//!
//! Run them: `busgate examples` (in-process bus) or `MICROBUS_NATS=nats://127.0.0.1:4222 busgate examples`.

pub mod calculator;
pub mod eventsink;
pub mod eventsource;
pub mod hello;

use crate::connector::BusConfig;
use crate::connector::{Connector, StartError};

/// Start every example service; on failure the ones already started are shut down.
pub async fn start_all(config: &BusConfig) -> Result<Vec<Connector>, StartError> {
    let mut started = Vec::new();
    for service in [
        calculator::service(),
        hello::service(),
        eventsource::service(),
        eventsink::service(),
    ] {
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
