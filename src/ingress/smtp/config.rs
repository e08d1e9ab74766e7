//! SMTP ingress settings, with Microbus's names and defaults (reference §5), read like the HTTP
//! ingress's: `config.yaml` (`smtp.ingress.core:`), then `BUSGATE_SMTP_INGRESS_*` environment
//! variables, then CLI overrides, and validated at start with the name of the bad setting.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    boolean, duration_at_least, int_in, ConfigError, ConfigFile, PropertyTable, Setting, Sources,
};
use crate::connector::DEFAULT_CALL_BUDGET;

/// The ingress's hostname on the bus.
pub const HOSTNAME: &str = "smtp.ingress.core";

/// The port to listen on; 0 binds a free one (tests).
pub const PORT: Setting<u16> = Setting {
    property: "Port",
    env: "BUSGATE_SMTP_INGRESS_PORT",
    default: || 25,
    parse: |v| int_in(v, 0, 65535).map(|p| p as u16),
};

/// Whether the SMTP ingress runs at all.
pub const ENABLED: Setting<bool> = Setting {
    property: "Enabled",
    env: "BUSGATE_SMTP_INGRESS_ENABLED",
    default: || true,
    parse: boolean,
};

/// Bytes of one message, set in megabytes; 0 (`None`) means no limit.
pub const MAX_SIZE: Setting<Option<usize>> = Setting {
    property: "MaxSize",
    env: "BUSGATE_SMTP_INGRESS_MAX_SIZE",
    default: || Some(10 << 20),
    parse: |v| int_in(v, 0, 1024).map(|mb| (mb > 0).then_some((mb as usize) << 20)),
};

/// Concurrent connections; one more is answered `421` and closed.
pub const MAX_CLIENTS: Setting<usize> = Setting {
    property: "MaxClients",
    env: "BUSGATE_SMTP_INGRESS_MAX_CLIENTS",
    default: || 128,
    parse: |v| int_in(v, 1, 1024).map(|n| n as usize),
};

/// Messages being parsed and delivered at once (Microbus's save workers).
pub const WORKERS: Setting<usize> = Setting {
    property: "Workers",
    env: "BUSGATE_SMTP_INGRESS_WORKERS",
    default: || 8,
    parse: |v| int_in(v, 1, 1024).map(|n| n as usize),
};

/// How long a connection may stay silent (between commands or inside DATA) before `421`.
pub const IDLE_TIMEOUT: Setting<Duration> = Setting {
    property: "IdleTimeout",
    env: "BUSGATE_SMTP_INGRESS_IDLE_TIMEOUT",
    default: || Duration::from_secs(5 * 60),
    parse: |v| duration_at_least(v, Duration::from_millis(100)),
};

/// Budget of the `on-incoming-email` event; sinks that have not answered by then defer the mail.
pub const TIME_BUDGET: Setting<Duration> = Setting {
    property: "TimeBudget",
    env: "BUSGATE_SMTP_INGRESS_TIME_BUDGET",
    default: || DEFAULT_CALL_BUDGET,
    // Anything but zero.
    parse: |v| duration_at_least(v, Duration::from_nanos(1)),
};

/// `250` only once a sink has answered the event without error; otherwise `451` (retry later).
pub const REQUIRE_SINK: Setting<bool> = Setting {
    property: "RequireSink",
    env: "BUSGATE_SMTP_INGRESS_REQUIRE_SINK",
    default: || true,
    parse: boolean,
};

/// This component's properties and their variables, in the order they are documented.
pub const PROPERTIES: [(&str, &str); 8] = [
    PORT.names(),
    ENABLED.names(),
    MAX_SIZE.names(),
    MAX_CLIENTS.names(),
    WORKERS.names(),
    IDLE_TIMEOUT.names(),
    TIME_BUDGET.names(),
    REQUIRE_SINK.names(),
];

/// Prefix of the environment variables that override properties: `MaxSize` is
/// `BUSGATE_SMTP_INGRESS_MAX_SIZE`.
pub const ENV_PREFIX: &str = "BUSGATE_SMTP_INGRESS_";

/// This component's `config.yaml` side: its host and its properties.
pub const SETTINGS: PropertyTable = PropertyTable {
    host: HOSTNAME,
    env_prefix: ENV_PREFIX,
    component: "SMTP ingress",
    properties: &PROPERTIES,
};

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
        SmtpConfig::resolve(None, |_| None, &[]).expect("the defaults are valid")
    }
}

impl SmtpConfig {
    /// Defaults, then `file`, then the environment (`lookup`), then `overrides` (CLI).
    pub fn resolve(
        file: Option<&ConfigFile>,
        lookup: impl Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
    ) -> Result<SmtpConfig, ConfigError> {
        let from = Sources::new(&SETTINGS, file, &lookup, overrides)?;
        Ok(SmtpConfig {
            port: from.read(&PORT)?,
            enabled: from.read(&ENABLED)?,
            max_size: from.read(&MAX_SIZE)?,
            max_clients: from.read(&MAX_CLIENTS)?,
            workers: from.read(&WORKERS)?,
            idle_timeout: from.read(&IDLE_TIMEOUT)?,
            time_budget: from.read(&TIME_BUDGET)?,
            require_sink: from.read(&REQUIRE_SINK)?,
            cert_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            server_name: HOSTNAME.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env_name_of;

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
        assert_eq!(MAX_CLIENTS.env, "BUSGATE_SMTP_INGRESS_MAX_CLIENTS");
        for (property, env) in PROPERTIES {
            assert_eq!(env, env_name_of(ENV_PREFIX, property), "{property}");
        }
        let none = |_: &str| None;
        for (name, value) in [
            (PORT.property, "70000"),
            (PORT.property, "x"),
            (ENABLED.property, "maybe"),
            (MAX_SIZE.property, "2000"),
            (MAX_CLIENTS.property, "0"),
            (WORKERS.property, "0"),
            (IDLE_TIMEOUT.property, "1ms"),
            (TIME_BUDGET.property, "0"),
            (REQUIRE_SINK.property, "x"),
        ] {
            let err = SmtpConfig::resolve(None, none, &[(name.into(), value.into())]).unwrap_err();
            assert_eq!(err.name, name, "{value}");
        }
        let err = SmtpConfig::resolve(None, none, &[("Bogus".into(), "1".into())]).unwrap_err();
        assert_eq!(err.name, "Bogus");
    }

    #[test]
    fn timeouts_below_their_minimum_are_refused() {
        assert_eq!(
            (IDLE_TIMEOUT.parse)("100ms"),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            (IDLE_TIMEOUT.parse)("50ms"),
            Err("must be at least 100ms".to_owned())
        );
        assert_eq!((TIME_BUDGET.parse)("1us"), Ok(Duration::from_micros(1)));
        assert_eq!(
            (TIME_BUDGET.parse)("0"),
            Err("must be at least 1ns".to_owned())
        );
    }
}
