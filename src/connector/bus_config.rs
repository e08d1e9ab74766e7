//! Bus settings from the environment, with Microbus's names (reference §2.7).

use std::path::PathBuf;

use crate::config::{ConfigError, Deployment, Setting, Sources, ENV_DEPLOYMENT};
use crate::telemetry::TelemetryConfig;
use crate::transport::{InProcBus, NatsOptions, Transport};
use crate::wire::is_valid_hostname;
use crate::wire::subject::{is_valid_plane, DEFAULT_PLANE};

/// The NATS server; without it the bus is in-process.
pub const NATS: Setting<Option<String>> = env_text("MICROBUS_NATS");
/// NATS user and password, set together.
pub const NATS_USER: Setting<Option<String>> = env_text("MICROBUS_NATS_USER");
pub const NATS_PASSWORD: Setting<Option<String>> = env_text("MICROBUS_NATS_PASSWORD");
pub const NATS_TOKEN: Setting<Option<String>> = env_text("MICROBUS_NATS_TOKEN");
/// busgate's own, beyond Microbus's files in the working directory: a `.creds` file, an NKey
/// seed, and TLS files.
pub const NATS_CREDS: Setting<Option<PathBuf>> = env_path("MICROBUS_NATS_CREDS");
pub const NATS_NKEY: Setting<Option<String>> = env_text("MICROBUS_NATS_NKEY");
pub const NATS_TLS_CA: Setting<Option<PathBuf>> = env_path("MICROBUS_NATS_TLS_CA");
pub const NATS_TLS_CERT: Setting<Option<PathBuf>> = env_path("MICROBUS_NATS_TLS_CERT");
pub const NATS_TLS_KEY: Setting<Option<PathBuf>> = env_path("MICROBUS_NATS_TLS_KEY");

/// Microbus's short circuit: `0` or `false` sends every request, ack and response through
/// NATS, even between connectors of this process (see [`NatsOptions::short_circuit`]).
pub const SHORT_CIRCUIT: Setting<bool> = Setting {
    property: "",
    env: "MICROBUS_SHORT_CIRCUIT",
    default: || true,
    parse: |v| match v.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        v if v.eq_ignore_ascii_case("false") => Ok(false),
        v if v.eq_ignore_ascii_case("true") => Ok(true),
        _ => Err("1, true, 0 or false".to_owned()),
    },
};

/// The plane: deployments that share a NATS stay apart by it.
pub const PLANE: Setting<String> = Setting {
    property: "",
    env: "MICROBUS_PLANE",
    default: || DEFAULT_PLANE.to_owned(),
    parse: |v| {
        let plane = v.trim();
        if !is_valid_plane(plane) {
            return Err("letters and digits only".to_owned());
        }
        Ok(plane.to_owned())
    },
};

/// LOCAL, LAB, PROD or TESTING; unset, it follows from the NATS URL
/// ([`Deployment::default_for`]).
pub const DEPLOYMENT: Setting<Option<Deployment>> = Setting {
    property: "",
    env: ENV_DEPLOYMENT,
    default: || None,
    parse: |v| v.parse::<Deployment>().map(Some).map_err(|e| e.why),
};

/// Where this instance runs, most specific first (`1.b.west.us`); calls prefer nearby replicas.
pub const LOCALITY: Setting<Option<String>> = Setting {
    property: "",
    env: "MICROBUS_LOCALITY",
    default: || None,
    parse: |v| {
        let locality = v.trim().to_ascii_lowercase();
        if locality.is_empty() {
            return Ok(None);
        }
        if !is_valid_hostname(&locality) {
            return Err("dot-separated labels of letters, digits, '-' and '_'".to_owned());
        }
        Ok(Some(locality))
    },
};

/// An environment-only text setting, unset by default.
const fn env_text(env: &'static str) -> Setting<Option<String>> {
    Setting {
        property: "",
        env,
        default: || None,
        parse: |v| Ok(Some(v.to_owned())),
    }
}

/// An environment-only file setting, unset by default.
const fn env_path(env: &'static str) -> Setting<Option<PathBuf>> {
    Setting {
        property: "",
        env,
        default: || None,
        parse: |v| Ok(Some(PathBuf::from(v))),
    }
}

/// Everything a connector needs to join a bus.
#[derive(Clone, Debug)]
pub struct BusConfig {
    pub plane: String,
    pub deployment: Deployment,
    /// Dot-separated, most specific first (`1.b.west.us`).
    pub locality: Option<String>,
    pub transport: Transport,
    /// Trace export (`OTEL_EXPORTER_OTLP_*`).
    pub telemetry: TelemetryConfig,
}

impl BusConfig {
    /// A fresh in-process bus with the default plane, for embedding and tests.
    pub fn in_process() -> BusConfig {
        BusConfig::on(Transport::InProc(InProcBus::new()))
    }

    /// A NATS bus at `url`, with the default plane.
    pub fn nats(url: &str) -> BusConfig {
        BusConfig::on(Transport::Nats(Box::new(NatsOptions::new(url))))
    }

    pub fn on(transport: Transport) -> BusConfig {
        BusConfig {
            plane: DEFAULT_PLANE.to_owned(),
            deployment: Deployment::Local,
            locality: None,
            transport,
            telemetry: TelemetryConfig::default(),
        }
    }

    pub fn with_plane(mut self, plane: &str) -> Result<BusConfig, ConfigError> {
        self.plane =
            (PLANE.parse)(plane).map_err(|why| ConfigError::new(PLANE.env, plane, &why))?;
        Ok(self)
    }

    pub fn with_locality(mut self, locality: &str) -> Result<BusConfig, ConfigError> {
        self.locality = (LOCALITY.parse)(locality)
            .map_err(|why| ConfigError::new(LOCALITY.env, locality, &why))?;
        Ok(self)
    }

    /// Read `MICROBUS_*` from `lookup` (the process environment in production). Without
    /// `MICROBUS_NATS` (or `nats_override`) the bus is in-process.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        nats_override: Option<&str>,
        cwd: PathBuf,
    ) -> Result<BusConfig, ConfigError> {
        // An empty variable is an unset one (`MICROBUS_NATS=` in a compose file).
        let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let from = Sources::environment(&set);
        let nats_url = match nats_override {
            Some(url) => Some(url.to_owned()),
            None => from.read(&NATS)?,
        };
        let transport = match &nats_url {
            None => Transport::InProc(InProcBus::new()),
            Some(url) => {
                let mut o = NatsOptions::new(url.trim());
                o.user = from.read(&NATS_USER)?;
                o.password = from.read(&NATS_PASSWORD)?;
                if o.user.is_some() != o.password.is_some() {
                    return Err(ConfigError::new(
                        NATS_USER.env,
                        o.user.as_deref().unwrap_or(""),
                        "user and password must be set together",
                    ));
                }
                o.token = from.read(&NATS_TOKEN)?;
                o.creds_file = from.read(&NATS_CREDS)?;
                o.nkey_seed = from.read(&NATS_NKEY)?;
                o.tls_ca = from.read(&NATS_TLS_CA)?;
                o.tls_cert = from.read(&NATS_TLS_CERT)?;
                o.tls_key = from.read(&NATS_TLS_KEY)?;
                o = o.with_short_circuit(from.read(&SHORT_CIRCUIT)?);
                Transport::Nats(Box::new(o.with_tls_files_from(&cwd)))
            }
        };
        let mut cfg = BusConfig::on(transport);
        cfg.deployment = from
            .read(&DEPLOYMENT)?
            .unwrap_or_else(|| Deployment::default_for(nats_url.as_deref()));
        cfg.telemetry = TelemetryConfig::from_lookup(&lookup)?;
        cfg.plane = from.read(&PLANE)?;
        cfg.locality = from.read(&LOCALITY)?;
        Ok(cfg)
    }

    pub fn from_env(nats_override: Option<&str>) -> Result<BusConfig, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        BusConfig::from_lookup(|k| std::env::var(k).ok(), nats_override, cwd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<BusConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BusConfig::from_lookup(|k| map.get(k).cloned(), None, std::env::temp_dir())
    }

    #[test]
    fn defaults_to_in_process_local() {
        let c = cfg(&[]).unwrap();
        assert!(matches!(c.transport, Transport::InProc(_)));
        assert_eq!(c.deployment, Deployment::Local);
        assert_eq!(c.plane, "microbus");
    }

    #[test]
    fn reads_nats_settings() {
        let c = cfg(&[
            (NATS.env, "nats://10.0.0.1:4222"),
            (NATS_USER.env, "u"),
            (NATS_PASSWORD.env, "p"),
            (PLANE.env, "plane2"),
            (LOCALITY.env, "1.B.west.us"),
        ])
        .unwrap();
        let Transport::Nats(o) = &c.transport else {
            panic!("expected NATS")
        };
        assert_eq!(o.url, "nats://10.0.0.1:4222");
        assert_eq!(o.user.as_deref(), Some("u"));
        assert_eq!(c.deployment, Deployment::Prod);
        assert_eq!(c.plane, "plane2");
        assert_eq!(c.locality.as_deref(), Some("1.b.west.us"));
        let local = cfg(&[(NATS.env, "nats://127.0.0.1:4222")]).unwrap();
        assert_eq!(local.deployment, Deployment::Local);
    }

    #[test]
    fn rejects_bad_settings_with_their_names() {
        let e = cfg(&[(PLANE.env, "a.b")]).unwrap_err();
        assert_eq!(e.name, PLANE.env);
        let e = cfg(&[(DEPLOYMENT.env, "staging")]).unwrap_err();
        assert_eq!(e.name, DEPLOYMENT.env);
        let e = cfg(&[(LOCALITY.env, "a.>")]).unwrap_err();
        assert_eq!(e.name, LOCALITY.env);
        let e = cfg(&[(NATS.env, "nats://x:1"), (NATS_USER.env, "u")]).unwrap_err();
        assert_eq!(e.name, NATS_USER.env);
    }
}
