//! HTTP ingress settings, with Microbus's names and defaults (reference §4.1), read from
//! `config.yaml`, then `BUSGATE_HTTP_INGRESS_*` environment variables, then CLI flags, and
//! validated at start with the name of the bad setting.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{parse_bool, parse_duration, ConfigError, ConfigFile, PropertyTable};

/// The ingress's hostname on the bus.
pub const HOSTNAME: &str = "http.ingress.core";

pub const PORTS: &str = "Ports";
/// 8080 is the trusted development port; production listens on 443/80.
pub const DEFAULT_PORTS: &str = "8080";

pub const PORT_MAPPINGS: &str = "PortMappings";
/// 8080 reaches every internal port; the public ports reach only 443.
pub const DEFAULT_PORT_MAPPINGS: &str = "8080:*->*, 443:*->443, 80:*->443";

pub const TIME_BUDGET: &str = "TimeBudget";
/// Budget of the downstream call; 0 leaves it to the connector's default budget.
pub const DEFAULT_TIME_BUDGET: &str = "20s";

pub const REQUEST_MEMORY_LIMIT: &str = "RequestMemoryLimit";
/// Megabytes for pending request bodies; half of it is usable because a body is held twice
/// (read, then encoded for the bus).
pub const DEFAULT_REQUEST_MEMORY_LIMIT: &str = "4096";

pub const ALLOWED_ORIGINS: &str = "AllowedOrigins";
/// CORS origins; `*` allows all.
pub const DEFAULT_ALLOWED_ORIGINS: &str = "*";

pub const READ_HEADER_TIMEOUT: &str = "ReadHeaderTimeout";
/// Cuts off a client that trickles its headers (slow-loris).
pub const DEFAULT_READ_HEADER_TIMEOUT: &str = "20s";

pub const READ_TIMEOUT: &str = "ReadTimeout";
/// Time to read a whole request body.
pub const DEFAULT_READ_TIMEOUT: &str = "5m";

pub const WRITE_TIMEOUT: &str = "WriteTimeout";
/// Longest a single write to a client may stall.
pub const DEFAULT_WRITE_TIMEOUT: &str = "5m";

pub const MAX_HEADER_BYTES: &str = "MaxHeaderBytes";
/// Request head size before 431; browsers send a few KB, 64 KiB leaves room for big cookies.
pub const DEFAULT_MAX_HEADER_BYTES: &str = "65536";

pub const TRUSTED_PROXIES: &str = "TrustedProxies";
/// Peers whose `X-Forwarded-*` headers are believed; anyone else's are replaced.
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.1, ::1";

pub const TRUST_TRACE_CONTEXT: &str = "TrustTraceContext";
/// Listener ports whose incoming `traceparent` is continued; elsewhere (the public 443/80)
/// every request starts a new trace, so outsiders cannot join or forge traces.
pub const DEFAULT_TRUST_TRACE_CONTEXT: &str = "8080";

pub const BLOCKED_PATHS: &str = "BlockedPaths";
/// Paths that scanners probe; answered 404 without touching the bus (Microbus's list).
pub const DEFAULT_BLOCKED_PATHS: &str = "/geoserver
/console/
/.env
/.amazon_aws
/solr/admin/info/system
/remote/login
/Autodiscover/Autodiscover.xml
/autodiscover/autodiscover.json
/api/v2/static/not.found
/api/sonicos/tfa
/_ignition/execute-solution
/admin.html
/auth.html
/auth1.html
/readme.txt
/__Additional
/Portal0000.htm
/docs/cplugError.html/
/CSS/Miniweb.css
/scripts/WPnBr.dll
/.git/config
/cgi-bin/.%2e/.%2e/.%2e/.%2e/bin/sh
/cgi-bin/luci/;stok=/locale
/actuator/gateway/routes
/actuator/health
/Public/home/js/check.js
/mifs/.;/services/LogService
/dns-query
/ecp/Current/exporttool/microsoft.exchange.ediscovery.exporttool.application
/owa/auth/x.js
/static/admin/javascript/hetong.js
/.git/HEAD
/sslvpnLogin.html
/vpn/index.html
/wsman
/geoserver/web
/remote/logincheck
/epa/scripts/win/nsepa_setup.exe
/.well-known/security.txt
/cf_scripts/scripts/ajax/ckeditor/ckeditor.js
/Temporary_Listen_Addresses/
/manager/html
/logon/LogonPoint/custom.html
/logon/LogonPoint/index.html
/catalog-portal/ui/oauth/verify
/error_log/.git/HEAD
*.cfm
*.asp
*.aspx
*.cgi
*.jsa
*.jsp
*.shtml
*.php
*.jhtml
*.mwsl
*.dll
*.esp
*.exe";

pub const ACCESS_LOG: &str = "AccessLog";
/// busgate's own: an INFO line "Request received" for every request. Off by default: at
/// INFO it cost about 7% of the CPU of a request (benches/compare.sh) and says little that the
/// request metrics and spans do not; errors are logged ("Serving") either way.
pub const DEFAULT_ACCESS_LOG: &str = "false";

/// Every property with its default, in the order they are documented.
pub const PROPERTIES: [(&str, &str); 13] = [
    (PORTS, DEFAULT_PORTS),
    (PORT_MAPPINGS, DEFAULT_PORT_MAPPINGS),
    (TIME_BUDGET, DEFAULT_TIME_BUDGET),
    (REQUEST_MEMORY_LIMIT, DEFAULT_REQUEST_MEMORY_LIMIT),
    (ALLOWED_ORIGINS, DEFAULT_ALLOWED_ORIGINS),
    (READ_HEADER_TIMEOUT, DEFAULT_READ_HEADER_TIMEOUT),
    (READ_TIMEOUT, DEFAULT_READ_TIMEOUT),
    (WRITE_TIMEOUT, DEFAULT_WRITE_TIMEOUT),
    (MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_BYTES),
    (TRUSTED_PROXIES, DEFAULT_TRUSTED_PROXIES),
    (TRUST_TRACE_CONTEXT, DEFAULT_TRUST_TRACE_CONTEXT),
    (BLOCKED_PATHS, DEFAULT_BLOCKED_PATHS),
    (ACCESS_LOG, DEFAULT_ACCESS_LOG),
];

/// Prefix of the environment variables that override properties: `Ports` is
/// `BUSGATE_HTTP_INGRESS_PORTS`, `TimeBudget` is `BUSGATE_HTTP_INGRESS_TIME_BUDGET`.
pub const ENV_PREFIX: &str = "BUSGATE_HTTP_INGRESS_";

/// This component's settings table (host, environment prefix, properties and defaults).
pub const SETTINGS: PropertyTable = PropertyTable {
    host: HOSTNAME,
    env_prefix: ENV_PREFIX,
    component: "HTTP ingress",
    properties: &PROPERTIES,
};

/// The environment variable of a property.
pub fn env_name(property: &str) -> String {
    SETTINGS.env_name(property)
}

/// `x:y->z` rules: external port x, requested internal port y, forced internal port z; `None`
/// stands for `*`. Kept as numbers so that mapping a request builds no string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortMappings(HashMap<(Option<u16>, Option<u16>), Option<u16>>);

impl PortMappings {
    pub fn parse(value: &str) -> Result<PortMappings, ConfigError> {
        let mut rules = HashMap::new();
        for rule in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let bad = || ConfigError::new(PORT_MAPPINGS, rule, "expected x:y->z, e.g. 443:*->443");
            let (from, to) = rule.split_once("->").ok_or_else(bad)?;
            let (x, y) = from.trim().split_once(':').ok_or_else(bad)?;
            let port = |part: &str| match part.trim() {
                "*" => Ok(None),
                p => p.parse::<u16>().map(Some).map_err(|_| bad()),
            };
            rules.insert((port(x)?, port(y)?), port(to)?);
        }
        Ok(PortMappings(rules))
    }

    /// The internal port for a request to internal port `y` whose external port is `x` (the
    /// port of its `Host`, as Go's ingress takes it): rules `x:y`, `*:y`, `x:*`, `*:*` in that
    /// order, the first whose value is a port wins; a `*` value is passed over and the search
    /// goes on (Go's `resolveInternalURL`); no rule keeps `y`. An `x` that is not a port
    /// matches only the `*` rules.
    pub fn map(&self, x: &str, y: u16) -> u16 {
        let x = x.parse::<u16>().ok();
        let keys = [(x, Some(y)), (None, Some(y)), (x, None), (None, None)];
        for key in keys {
            if let Some(Some(z)) = self.0.get(&key) {
                return *z;
            }
        }
        y
    }
}

/// CORS origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    Any,
    Only(HashSet<String>),
}

impl AllowedOrigins {
    pub fn parse(value: &str) -> AllowedOrigins {
        let list: HashSet<String> = value
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        if list.contains("*") {
            AllowedOrigins::Any
        } else {
            AllowedOrigins::Only(list)
        }
    }

    pub fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::Only(list) => {
                list.contains(&origin.trim_end_matches('/').to_ascii_lowercase())
            }
        }
    }
}

/// Exact paths and `*.ext` extensions that get a 404.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockedPaths {
    exact: HashSet<String>,
    extensions: HashSet<String>,
}

impl BlockedPaths {
    pub fn parse(value: &str) -> BlockedPaths {
        let mut b = BlockedPaths::default();
        for line in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match line.strip_prefix('*') {
                Some(ext) if ext.starts_with('.') => {
                    b.extensions.insert(ext.to_ascii_lowercase());
                }
                _ => {
                    b.exact.insert(line.to_owned());
                }
            }
        }
        b
    }

    /// Whether the external path (as sent, not decoded) is blocked.
    pub fn blocks(&self, path: &str) -> bool {
        if self.exact.contains(path) {
            return true;
        }
        match path.rfind('.') {
            Some(i) if !path[i..].contains('/') => {
                self.extensions.contains(&path[i..].to_ascii_lowercase())
            }
            _ => false,
        }
    }
}

/// The validated settings of the HTTP ingress.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub ports: Vec<u16>,
    pub port_mappings: PortMappings,
    /// Zero: no ingress budget (the connector's default applies).
    pub time_budget: Duration,
    pub request_memory_limit_bytes: usize,
    pub allowed_origins: AllowedOrigins,
    pub read_header_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_header_bytes: usize,
    pub trusted_proxies: HashSet<IpAddr>,
    pub trust_trace_context: HashSet<u16>,
    pub blocked_paths: BlockedPaths,
    /// Whether every request is logged ("Request received").
    pub access_log: bool,
    /// Where `httpingress-<port>-cert.pem` and `-key.pem` are looked for.
    pub cert_dir: PathBuf,
    /// The address the listeners bind (all interfaces by default).
    pub bind_ip: IpAddr,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig::from_properties(&BTreeMap::new()).expect("the defaults are valid")
    }
}

impl IngressConfig {
    /// Defaults, then `file`, then the environment (`lookup`), then `overrides` (CLI).
    pub fn resolve(
        file: Option<&ConfigFile>,
        lookup: impl Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
    ) -> Result<IngressConfig, ConfigError> {
        let props = SETTINGS.layer(file, lookup, overrides)?;
        IngressConfig::from_properties(&props)
    }

    /// Build from property values; a missing property takes its default.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<IngressConfig, ConfigError> {
        let get = |name: &str| SETTINGS.get(props, name);
        let ports_value = get(PORTS);
        let mut ports = Vec::new();
        for p in ports_value
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let port: u16 = p.parse().map_err(|_| {
                ConfigError::new(PORTS, &ports_value, "expected ports like 8080,443")
            })?;
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        if ports.is_empty() {
            return Err(ConfigError::new(
                PORTS,
                &ports_value,
                "at least one port is needed",
            ));
        }
        let memory = get(REQUEST_MEMORY_LIMIT);
        let memory_mb: usize = memory
            .trim()
            .parse()
            .ok()
            .filter(|mb| *mb >= 1 && *mb <= 1 << 20)
            .ok_or_else(|| {
                ConfigError::new(REQUEST_MEMORY_LIMIT, &memory, "megabytes, at least 1")
            })?;
        let at_least_1s = |name: &str| -> Result<Duration, ConfigError> {
            let v = get(name);
            let d = parse_duration(name, &v)?;
            if d < Duration::from_secs(1) {
                return Err(ConfigError::new(name, &v, "must be at least 1s"));
            }
            Ok(d)
        };
        let header = get(MAX_HEADER_BYTES);
        let max_header_bytes: usize = header
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 8192)
            .ok_or_else(|| ConfigError::new(MAX_HEADER_BYTES, &header, "bytes, at least 8192"))?;
        let proxies = get(TRUSTED_PROXIES);
        let mut trusted_proxies = HashSet::new();
        for p in proxies.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            trusted_proxies.insert(p.parse::<IpAddr>().map_err(|_| {
                ConfigError::new(TRUSTED_PROXIES, &proxies, "expected IP addresses")
            })?);
        }
        let trust_value = get(TRUST_TRACE_CONTEXT);
        let mut trust_trace_context = HashSet::new();
        for p in trust_value
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            trust_trace_context.insert(p.parse::<u16>().map_err(|_| {
                ConfigError::new(
                    TRUST_TRACE_CONTEXT,
                    &trust_value,
                    "expected ports like 8080",
                )
            })?);
        }
        Ok(IngressConfig {
            trust_trace_context,
            ports,
            port_mappings: PortMappings::parse(&get(PORT_MAPPINGS))?,
            time_budget: parse_duration(TIME_BUDGET, &get(TIME_BUDGET))?,
            request_memory_limit_bytes: memory_mb << 20,
            allowed_origins: AllowedOrigins::parse(&get(ALLOWED_ORIGINS)),
            read_header_timeout: at_least_1s(READ_HEADER_TIMEOUT)?,
            read_timeout: at_least_1s(READ_TIMEOUT)?,
            write_timeout: at_least_1s(WRITE_TIMEOUT)?,
            max_header_bytes,
            trusted_proxies,
            blocked_paths: BlockedPaths::parse(&get(BLOCKED_PATHS)),
            access_log: parse_bool(ACCESS_LOG, &get(ACCESS_LOG))?,
            cert_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            bind_ip: IpAddr::from([0, 0, 0, 0]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_microbus() {
        let c = IngressConfig::default();
        assert_eq!(c.ports, [8080]);
        assert_eq!(c.time_budget, Duration::from_secs(20));
        assert_eq!(c.request_memory_limit_bytes, 4096 << 20);
        assert_eq!(c.read_timeout, Duration::from_secs(300));
        assert_eq!(c.allowed_origins, AllowedOrigins::Any);
        assert!(c.blocked_paths.blocks("/.env"));
        assert!(c.blocked_paths.blocks("/x/index.PHP"));
        assert!(!c.blocked_paths.blocks("/x.php/y"));
        assert!(!c.blocked_paths.blocks("/hello.example/hello"));
        assert_eq!(DEFAULT_BLOCKED_PATHS.lines().count(), 59);
    }

    #[test]
    fn access_log_is_off_unless_asked_and_bad_values_are_named() {
        assert!(!IngressConfig::default().access_log);
        let with =
            |v: &str| IngressConfig::resolve(None, |_| None, &[(ACCESS_LOG.into(), v.into())]);
        assert!(with("true").unwrap().access_log);
        assert!(!with("off").unwrap().access_log);
        let err = with("maybe").unwrap_err().to_string();
        assert!(err.contains(ACCESS_LOG) && err.contains("maybe"), "{err}");
    }

    #[test]
    fn port_mapping_precedence() {
        let defaults = PortMappings::parse(DEFAULT_PORT_MAPPINGS).unwrap();
        let m = |x: u16, y| defaults.map(&x.to_string(), y);
        assert_eq!(m(8080, 444), 444);
        assert_eq!(m(443, 444), 443);
        assert_eq!(m(80, 888), 443);
        assert_eq!(m(9999, 555), 555, "no rule passes the port through");
        let rules = PortMappings::parse("4040:*->*, 4443:*->443, *:555->556, 4443:80->81").unwrap();
        let t = |x: u16, y| rules.map(&x.to_string(), y);
        assert_eq!(t(4443, 555), 556, "*:y beats x:*");
        assert_eq!(t(4443, 80), 81, "x:y beats everything");
        assert_eq!(t(4040, 555), 556);
        assert_eq!(t(4443, 1), 443);
        // A Host port that is not a number matches only the `*` rules.
        assert_eq!(rules.map("abc", 555), 556);
        assert_eq!(rules.map("", 80), 80);
        assert_eq!(defaults.map("x", 444), 444);
        for bad in ["8080", "a:*->*", "1:2->x", "70000:*->*"] {
            assert!(PortMappings::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_star_value_is_passed_over_and_the_search_goes_on() {
        // Go's resolveInternalURL: `x:y->*` does not stop the search; `*:*->443` then applies.
        let rules = PortMappings::parse("4040:444->*, *:*->443").unwrap();
        assert_eq!(rules.map("4040", 444), 443);
        let rules = PortMappings::parse("4040:*->*").unwrap();
        assert_eq!(
            rules.map("4040", 444),
            444,
            "only `*` values: the port is kept"
        );
        // A Host port that is no number matches only the `*:` rules.
        let rules = PortMappings::parse("8080:*->*, *:*->443").unwrap();
        assert_eq!(rules.map("x", 444), 443);
    }

    #[test]
    fn layering_and_validation() {
        let file =
            ConfigFile::parse("http.ingress.core:\n  Ports: 4040, 4443\n  TimeBudget: 30s\n")
                .unwrap();
        let env = |k: &str| (k == "BUSGATE_HTTP_INGRESS_TIME_BUDGET").then(|| "40s".to_owned());
        let c = IngressConfig::resolve(Some(&file), env, &[]).unwrap();
        assert_eq!(c.ports, [4040, 4443]);
        assert_eq!(c.time_budget, Duration::from_secs(40));
        let c = IngressConfig::resolve(Some(&file), env, &[("timebudget".into(), "50s".into())])
            .unwrap();
        assert_eq!(c.time_budget, Duration::from_secs(50));
        assert_eq!(
            env_name("RequestMemoryLimit"),
            "BUSGATE_HTTP_INGRESS_REQUEST_MEMORY_LIMIT"
        );

        let none = |_: &str| None;
        for (name, value) in [
            (PORTS, "80,x"),
            (PORTS, ""),
            (TIME_BUDGET, "soon"),
            (READ_TIMEOUT, "10ms"),
            (REQUEST_MEMORY_LIMIT, "0"),
            (MAX_HEADER_BYTES, "10"),
            (TRUSTED_PROXIES, "localhost"),
            (PORT_MAPPINGS, "1->2"),
            (TRUST_TRACE_CONTEXT, "x"),
        ] {
            let err =
                IngressConfig::resolve(None, none, &[(name.into(), value.into())]).unwrap_err();
            assert_eq!(err.name, name, "{value}");
        }
        let err = IngressConfig::resolve(None, none, &[("Bogus".into(), "1".into())]).unwrap_err();
        assert_eq!(err.name, "Bogus");
    }
}
