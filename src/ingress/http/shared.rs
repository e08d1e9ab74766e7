//! The state every request of the HTTP ingress shares.

use std::collections::HashSet;
use std::sync::Arc;

use super::config::IngressConfig;
use super::memory::MemoryBudget;
use super::metrics::IngressMetrics;
use crate::connector::Connector;

/// State shared by every request.
pub struct Shared {
    pub config: IngressConfig,
    pub conn: Connector,
    pub metrics: IngressMetrics,
    pub memory: Arc<MemoryBudget>,
    /// Listener ports that serve TLS.
    pub tls_ports: HashSet<u16>,
}
