//! SMTP ingress settings, with Microbus's names and defaults (reference §5), read like the HTTP
//! ingress's: `config.yaml` (`smtp.ingress.core:`), then `BUSGATE_SMTP_INGRESS_*` environment
//! variables, then CLI overrides, and validated at start with the name of the bad setting.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{parse_bool, parse_duration, ConfigError, ConfigFile, PropertyTable};

/// The ingress's hostname on the bus.
pub const HOSTNAME: &str = "smtp.ingress.core";

pub const PORT: &str = "Port";
pub const DEFAULT_PORT: &str = "25";

pub const ENABLED: &str = "Enabled";
pub const DEFAULT_ENABLED: &str = "true";

pub const MAX_SIZE: &str = "MaxSize";
/// Megabytes of one message (`MB << 20` bytes); 0 means no limit.
pub const DEFAULT_MAX_SIZE: &str = "10";

pub const MAX_CLIENTS: &str = "MaxClients";
/// Concurrent connections; one more is answered `421` and closed.
pub const DEFAULT_MAX_CLIENTS: &str = "128";

pub const WORKERS: &str = "Workers";
/// Messages being parsed and delivered at once (Microbus's save workers).
pub const DEFAULT_WORKERS: &str = "8";

pub const IDLE_TIMEOUT: &str = "IdleTimeout";
/// How long a connection may stay silent (between commands or inside DATA) before `421`.
pub const DEFAULT_IDLE_TIMEOUT: &str = "5m";

pub const TIME_BUDGET: &str = "TimeBudget";
/// Budget of the `on-incoming-email` event; sinks that have not answered by then defer the mail.
pub const DEFAULT_TIME_BUDGET: &str = "20s";

pub const REQUIRE_SINK: &str = "RequireSink";
/// `250` only once a sink has answered the event without error; otherwise `451` (retry later).
pub const DEFAULT_REQUIRE_SINK: &str = "true";

/// Every property with its default, in the order they are documented.
pub const PROPERTIES: [(&str, &str); 8] = [
    (PORT, DEFAULT_PORT),
    (ENABLED, DEFAULT_ENABLED),
    (MAX_SIZE, DEFAULT_MAX_SIZE),
    (MAX_CLIENTS, DEFAULT_MAX_CLIENTS),
    (WORKERS, DEFAULT_WORKERS),
    (IDLE_TIMEOUT, DEFAULT_IDLE_TIMEOUT),
    (TIME_BUDGET, DEFAULT_TIME_BUDGET),
    (REQUIRE_SINK, DEFAULT_REQUIRE_SINK),
];

/// Prefix of the environment variables that override properties: `MaxSize` is
/// `BUSGATE_SMTP_INGRESS_MAX_SIZE`.
pub const ENV_PREFIX: &str = "BUSGATE_SMTP_INGRESS_";

/// This component's settings table (host, environment prefix, properties and defaults).
pub const SETTINGS: PropertyTable = PropertyTable {
    host: HOSTNAME,
    env_prefix: ENV_PREFIX,
    component: "SMTP ingress",
    properties: &PROPERTIES,
};

/// The environment variable of a property.
pub fn env_name(property: &str) -> String {
    SETTINGS.env_name(property)
}

/// The validated settings of the SMTP ingress.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub port: u16,
    pub enabled: bool,
    /// Bytes; `None` is no limit.
    pub max_size: Option<usize>,
    pub max_clients: usize,
    pub workers: usize,
    pub idle_timeout: Duration,
    pub time_budget: Duration,
    pub require_sink: bool,
    /// Where `smtpingress-<port>-cert.pem` and `-key.pem` are looked for.
    pub cert_dir: PathBuf,
    /// The address the listener binds (all interfaces by default).
    pub bind_ip: IpAddr,
    /// The name in the greeting and the EHLO reply.
    pub server_name: String,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig::from_properties(&BTreeMap::new()).expect("the defaults are valid")
    }
}

fn int_in(name: &str, value: &str, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n >= lo && *n <= hi)
        .ok_or_else(|| ConfigError::new(name, value, &format!("an integer in [{lo},{hi}]")))
}

impl SmtpConfig {
    /// Defaults, then `file`, then the environment (`lookup`), then `overrides` (CLI).
    pub fn resolve(
        file: Option<&ConfigFile>,
        lookup: impl Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
    ) -> Result<SmtpConfig, ConfigError> {
        let props = SETTINGS.layer(file, lookup, overrides)?;
        SmtpConfig::from_properties(&props)
    }

    /// Build from property values; a missing property takes its default.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<SmtpConfig, ConfigError> {
        let get = |name: &str| SETTINGS.get(props, name);
        let boolean = |name: &str| parse_bool(name, &get(name));
        // Port 0 binds a free port (tests); Microbus's range is [1,65535].
        let port = int_in(PORT, &get(PORT), 0, 65535)? as u16;
        let max_mb = int_in(MAX_SIZE, &get(MAX_SIZE), 0, 1024)? as usize;
        let idle = get(IDLE_TIMEOUT);
        let idle_timeout = parse_duration(IDLE_TIMEOUT, &idle)?;
        if idle_timeout < Duration::from_millis(100) {
            return Err(ConfigError::new(
                IDLE_TIMEOUT,
                &idle,
                "must be at least 100ms",
            ));
        }
        let budget = get(TIME_BUDGET);
        let time_budget = parse_duration(TIME_BUDGET, &budget)?;
        if time_budget.is_zero() {
            return Err(ConfigError::new(
                TIME_BUDGET,
                &budget,
                "must be more than 0",
            ));
        }
        Ok(SmtpConfig {
            port,
            enabled: boolean(ENABLED)?,
            max_size: (max_mb > 0).then_some(max_mb << 20),
            max_clients: int_in(MAX_CLIENTS, &get(MAX_CLIENTS), 1, 1024)? as usize,
            workers: int_in(WORKERS, &get(WORKERS), 1, 1024)? as usize,
            idle_timeout,
            time_budget,
            require_sink: boolean(REQUIRE_SINK)?,
            cert_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            server_name: HOSTNAME.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_microbus() {
        let c = SmtpConfig::default();
        assert_eq!(c.port, 25);
        assert!(c.enabled);
        assert_eq!(c.max_size, Some(10 << 20));
        assert_eq!(c.max_clients, 128);
        assert_eq!(c.workers, 8);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.time_budget, Duration::from_secs(20));
        assert!(c.require_sink);
    }

    #[test]
    fn layering_and_validation() {
        let file = ConfigFile::parse("smtp.ingress.core:\n  Port: 2525\n  MaxSize: 1\n").unwrap();
        let env = |k: &str| (k == "BUSGATE_SMTP_INGRESS_MAX_SIZE").then(|| "2".to_owned());
        let c = SmtpConfig::resolve(Some(&file), env, &[]).unwrap();
        assert_eq!(c.port, 2525);
        assert_eq!(c.max_size, Some(2 << 20));
        let c = SmtpConfig::resolve(Some(&file), env, &[("maxsize".into(), "0".into())]).unwrap();
        assert_eq!(c.max_size, None);
        assert_eq!(env_name("MaxClients"), "BUSGATE_SMTP_INGRESS_MAX_CLIENTS");
        assert_eq!(env_name("RequireSink"), "BUSGATE_SMTP_INGRESS_REQUIRE_SINK");
        let none = |_: &str| None;
        for (name, value) in [
            (PORT, "70000"),
            (PORT, "x"),
            (ENABLED, "maybe"),
            (MAX_SIZE, "2000"),
            (MAX_CLIENTS, "0"),
            (WORKERS, "0"),
            (IDLE_TIMEOUT, "1ms"),
            (TIME_BUDGET, "0"),
            (REQUIRE_SINK, "x"),
        ] {
            let err = SmtpConfig::resolve(None, none, &[(name.into(), value.into())]).unwrap_err();
            assert_eq!(err.name, name, "{value}");
        }
        let err = SmtpConfig::resolve(None, none, &[("Bogus".into(), "1".into())]).unwrap_err();
        assert_eq!(err.name, "Bogus");
    }
}
