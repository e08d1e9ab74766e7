//! Bus settings from the environment, with Microbus's names (reference §2.7).

use std::path::PathBuf;

use crate::config::{ConfigError, Deployment, ENV_DEPLOYMENT};
use crate::telemetry::TelemetryConfig;
use crate::transport::{InProcBus, NatsOptions, Transport};
use crate::wire::is_valid_hostname;
use crate::wire::subject::{is_valid_plane, DEFAULT_PLANE};

pub const ENV_NATS: &str = "MICROBUS_NATS";
pub const ENV_NATS_USER: &str = "MICROBUS_NATS_USER";
pub const ENV_NATS_PASSWORD: &str = "MICROBUS_NATS_PASSWORD";
pub const ENV_NATS_TOKEN: &str = "MICROBUS_NATS_TOKEN";
/// busgate extensions for NATS auth and TLS beyond Microbus's files in the working directory.
pub const ENV_NATS_CREDS: &str = "MICROBUS_NATS_CREDS";
pub const ENV_NATS_NKEY: &str = "MICROBUS_NATS_NKEY";
pub const ENV_NATS_TLS_CA: &str = "MICROBUS_NATS_TLS_CA";
pub const ENV_NATS_TLS_CERT: &str = "MICROBUS_NATS_TLS_CERT";
pub const ENV_NATS_TLS_KEY: &str = "MICROBUS_NATS_TLS_KEY";
pub const ENV_PLANE: &str = "MICROBUS_PLANE";
pub const ENV_LOCALITY: &str = "MICROBUS_LOCALITY";

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
        if !is_valid_plane(plane) {
            return Err(ConfigError::new(
                ENV_PLANE,
                plane,
                "letters and digits only",
            ));
        }
        self.plane = plane.to_owned();
        Ok(self)
    }

    pub fn with_locality(mut self, locality: &str) -> Result<BusConfig, ConfigError> {
        let locality = locality.trim().to_ascii_lowercase();
        if locality.is_empty() {
            self.locality = None;
            return Ok(self);
        }
        if !is_valid_hostname(&locality) {
            return Err(ConfigError::new(
                ENV_LOCALITY,
                &locality,
                "dot-separated labels of letters, digits, '-' and '_'",
            ));
        }
        self.locality = Some(locality);
        Ok(self)
    }

    /// Read `MICROBUS_*` from `lookup` (the process environment in production). Without
    /// `MICROBUS_NATS` (or `nats_override`) the bus is in-process.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        nats_override: Option<&str>,
        cwd: PathBuf,
    ) -> Result<BusConfig, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let nats_url = nats_override.map(str::to_owned).or_else(|| get(ENV_NATS));
        let transport = match &nats_url {
            None => Transport::InProc(InProcBus::new()),
            Some(url) => {
                let mut o = NatsOptions::new(url.trim());
                o.user = get(ENV_NATS_USER);
                o.password = get(ENV_NATS_PASSWORD);
                if o.user.is_some() != o.password.is_some() {
                    return Err(ConfigError::new(
                        ENV_NATS_USER,
                        o.user.as_deref().unwrap_or(""),
                        "user and password must be set together",
                    ));
                }
                o.token = get(ENV_NATS_TOKEN);
                o.creds_file = get(ENV_NATS_CREDS).map(PathBuf::from);
                o.nkey_seed = get(ENV_NATS_NKEY);
                o.tls_ca = get(ENV_NATS_TLS_CA).map(PathBuf::from);
                o.tls_cert = get(ENV_NATS_TLS_CERT).map(PathBuf::from);
                o.tls_key = get(ENV_NATS_TLS_KEY).map(PathBuf::from);
                Transport::Nats(Box::new(o.with_tls_files_from(&cwd)))
            }
        };
        let deployment = match get(ENV_DEPLOYMENT) {
            Some(d) => d.parse()?,
            None => Deployment::default_for(nats_url.as_deref()),
        };
        let mut cfg = BusConfig::on(transport);
        cfg.deployment = deployment;
        cfg.telemetry = TelemetryConfig::from_lookup(&lookup)?;
        if let Some(plane) = get(ENV_PLANE) {
            cfg = cfg.with_plane(plane.trim())?;
        }
        if let Some(locality) = get(ENV_LOCALITY) {
            cfg = cfg.with_locality(&locality)?;
        }
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
            (ENV_NATS, "nats://10.0.0.1:4222"),
            (ENV_NATS_USER, "u"),
            (ENV_NATS_PASSWORD, "p"),
            (ENV_PLANE, "plane2"),
            (ENV_LOCALITY, "1.B.west.us"),
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
        let local = cfg(&[(ENV_NATS, "nats://127.0.0.1:4222")]).unwrap();
        assert_eq!(local.deployment, Deployment::Local);
    }

    #[test]
    fn rejects_bad_settings_with_their_names() {
        let e = cfg(&[(ENV_PLANE, "a.b")]).unwrap_err();
        assert_eq!(e.name, ENV_PLANE);
        let e = cfg(&[(ENV_DEPLOYMENT, "staging")]).unwrap_err();
        assert_eq!(e.name, ENV_DEPLOYMENT);
        let e = cfg(&[(ENV_LOCALITY, "a.>")]).unwrap_err();
        assert_eq!(e.name, ENV_LOCALITY);
        let e = cfg(&[(ENV_NATS, "nats://x:1"), (ENV_NATS_USER, "u")]).unwrap_err();
        assert_eq!(e.name, ENV_NATS_USER);
    }
}
