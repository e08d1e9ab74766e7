//! HTTP ingress settings, with Microbus's names and defaults (reference §4.1), read from
//! `config.yaml`, then `BUSGATE_HTTP_INGRESS_*` environment variables, then CLI flags, and
//! validated at start with the name of the bad setting.

use std::collections::{HashMap, HashSet};

use fnv::FnvBuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    boolean, duration, duration_at_least, ConfigError, ConfigFile, PropertyTable, Setting, Sources,
};
use crate::connector::DEFAULT_CALL_BUDGET;

/// The ingress's hostname on the bus.
pub const HOSTNAME: &str = "http.ingress.core";

/// Ports to listen on.
pub const PORTS: Setting<Vec<u16>> = Setting {
    property: "Ports",
    env: "BUSGATE_HTTP_INGRESS_PORTS",
    // 8080 is the trusted development port; production listens on 443/80.
    default: || vec![8080],
    parse: |v| {
        let mut ports = Vec::new();
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let port: u16 = p.parse().map_err(|_| "expected ports like 8080,443")?;
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        if ports.is_empty() {
            return Err("at least one port is needed".to_owned());
        }
        Ok(ports)
    },
};

/// Which internal ports an external port reaches (`x:y->z` rules).
pub const PORT_MAPPINGS: Setting<PortMappings> = Setting {
    property: "PortMappings",
    env: "BUSGATE_HTTP_INGRESS_PORT_MAPPINGS",
    // 8080 reaches every internal port; the public ports reach only 443.
    default: || {
        PortMappings::from_rules(&[
            ((Some(8080), None), None),
            ((Some(443), None), Some(443)),
            ((Some(80), None), Some(443)),
        ])
    },
    parse: PortMappings::parse,
};

/// Budget of the downstream call; 0 leaves it to the connector's default budget.
pub const TIME_BUDGET: Setting<Duration> = Setting {
    property: "TimeBudget",
    env: "BUSGATE_HTTP_INGRESS_TIME_BUDGET",
    // The connector's own budget for a call without a deadline: one value, one place.
    default: || DEFAULT_CALL_BUDGET,
    parse: duration,
};

/// Bytes for pending request bodies, set in megabytes.
pub const REQUEST_MEMORY_LIMIT: Setting<usize> = Setting {
    property: "RequestMemoryLimit",
    env: "BUSGATE_HTTP_INGRESS_REQUEST_MEMORY_LIMIT",
    // 4 GiB, of which half is usable: a body is held twice (read, then encoded for the bus).
    default: || 4096 << 20,
    parse: |v| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|mb| *mb >= 1 && *mb <= 1 << 20)
            .map(|mb| mb << 20)
            .ok_or_else(|| "megabytes, at least 1".to_owned())
    },
};

/// CORS origins; `*` allows all.
pub const ALLOWED_ORIGINS: Setting<AllowedOrigins> = Setting {
    property: "AllowedOrigins",
    env: "BUSGATE_HTTP_INGRESS_ALLOWED_ORIGINS",
    default: || AllowedOrigins::Any,
    parse: |v| Ok(AllowedOrigins::parse(v)),
};

/// Cuts off a client that trickles its headers (slow-loris).
pub const READ_HEADER_TIMEOUT: Setting<Duration> = Setting {
    property: "ReadHeaderTimeout",
    env: "BUSGATE_HTTP_INGRESS_READ_HEADER_TIMEOUT",
    default: || Duration::from_secs(20),
    parse: at_least_1s,
};

/// Time to read a whole request body; also how long a keep-alive connection may idle.
pub const READ_TIMEOUT: Setting<Duration> = Setting {
    property: "ReadTimeout",
    env: "BUSGATE_HTTP_INGRESS_READ_TIMEOUT",
    default: || Duration::from_secs(5 * 60),
    parse: at_least_1s,
};

/// Longest a single write to a client may stall.
pub const WRITE_TIMEOUT: Setting<Duration> = Setting {
    property: "WriteTimeout",
    env: "BUSGATE_HTTP_INGRESS_WRITE_TIMEOUT",
    default: || Duration::from_secs(5 * 60),
    parse: at_least_1s,
};

/// Request head size before 431.
pub const MAX_HEADER_BYTES: Setting<usize> = Setting {
    property: "MaxHeaderBytes",
    env: "BUSGATE_HTTP_INGRESS_MAX_HEADER_BYTES",
    // Browsers send a few KB; 64 KiB leaves room for big cookies.
    default: || 65536,
    parse: |v| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 8192)
            .ok_or_else(|| "bytes, at least 8192".to_owned())
    },
};

/// Peers whose `X-Forwarded-*` headers are believed; anyone else's are replaced.
pub const TRUSTED_PROXIES: Setting<HashSet<IpAddr, FnvBuildHasher>> = Setting {
    property: "TrustedProxies",
    env: "BUSGATE_HTTP_INGRESS_TRUSTED_PROXIES",
    default: || {
        HashSet::from_iter([
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ])
    },
    parse: |v| comma_separated(v, "expected IP addresses"),
};

/// Listener ports whose incoming `traceparent` is continued.
pub const TRUST_TRACE_CONTEXT: Setting<HashSet<u16, FnvBuildHasher>> = Setting {
    property: "TrustTraceContext",
    env: "BUSGATE_HTTP_INGRESS_TRUST_TRACE_CONTEXT",
    // Only the development port: on the public 443/80 every request starts a new trace, so
    // outsiders cannot join or forge traces.
    default: || HashSet::from_iter([8080]),
    parse: |v| comma_separated(v, "expected ports like 8080"),
};

/// Paths answered 404 without touching the bus: exact paths and `*.ext` extensions, one per
/// line.
pub const BLOCKED_PATHS: Setting<BlockedPaths> = Setting {
    property: "BlockedPaths",
    env: "BUSGATE_HTTP_INGRESS_BLOCKED_PATHS",
    default: || BlockedPaths::from_lines(MICROBUS_BLOCKED_PATHS.iter().copied()),
    parse: |v| Ok(BlockedPaths::from_lines(v.lines())),
};

/// The paths that scanners probe, as Microbus blocks them.
pub const MICROBUS_BLOCKED_PATHS: [&str; 59] = [
    "/geoserver",
    "/console/",
    "/.env",
    "/.amazon_aws",
    "/solr/admin/info/system",
    "/remote/login",
    "/Autodiscover/Autodiscover.xml",
    "/autodiscover/autodiscover.json",
    "/api/v2/static/not.found",
    "/api/sonicos/tfa",
    "/_ignition/execute-solution",
    "/admin.html",
    "/auth.html",
    "/auth1.html",
    "/readme.txt",
    "/__Additional",
    "/Portal0000.htm",
    "/docs/cplugError.html/",
    "/CSS/Miniweb.css",
    "/scripts/WPnBr.dll",
    "/.git/config",
    "/cgi-bin/.%2e/.%2e/.%2e/.%2e/bin/sh",
    "/cgi-bin/luci/;stok=/locale",
    "/actuator/gateway/routes",
    "/actuator/health",
    "/Public/home/js/check.js",
    "/mifs/.;/services/LogService",
    "/dns-query",
    "/ecp/Current/exporttool/microsoft.exchange.ediscovery.exporttool.application",
    "/owa/auth/x.js",
    "/static/admin/javascript/hetong.js",
    "/.git/HEAD",
    "/sslvpnLogin.html",
    "/vpn/index.html",
    "/wsman",
    "/geoserver/web",
    "/remote/logincheck",
    "/epa/scripts/win/nsepa_setup.exe",
    "/.well-known/security.txt",
    "/cf_scripts/scripts/ajax/ckeditor/ckeditor.js",
    "/Temporary_Listen_Addresses/",
    "/manager/html",
    "/logon/LogonPoint/custom.html",
    "/logon/LogonPoint/index.html",
    "/catalog-portal/ui/oauth/verify",
    "/error_log/.git/HEAD",
    "*.cfm",
    "*.asp",
    "*.aspx",
    "*.cgi",
    "*.jsa",
    "*.jsp",
    "*.shtml",
    "*.php",
    "*.jhtml",
    "*.mwsl",
    "*.dll",
    "*.esp",
    "*.exe",
];

/// busgate's own: an INFO line "Request received" for every request.
pub const ACCESS_LOG: Setting<bool> = Setting {
    property: "AccessLog",
    env: "BUSGATE_HTTP_INGRESS_ACCESS_LOG",
    // Off: at INFO it cost about 7% of the CPU of a request (benches/compare.sh) and says
    // little that the request metrics and spans do not; errors are logged ("Serving") either
    // way.
    default: || false,
    parse: boolean,
};

/// busgate's own: threads that serve the HTTP connections, each with a single-thread runtime
/// of its own; 0 serves them on the process's runtime with everything else.
pub const THREADS: Setting<usize> = Setting {
    property: "Threads",
    env: "BUSGATE_HTTP_INGRESS_THREADS",
    // One a core: a connection and the in-process calls of its requests then stay on one
    // thread, where the shared runtime's workers parked and woke each other for every request
    // (18-19% more requests a second for 18% less CPU each, BENCHMARKS.md, thirteenth session).
    default: || std::thread::available_parallelism().map_or(1, |n| n.get()),
    parse: |v| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= MAX_THREADS)
            .ok_or_else(|| format!("a number of threads, 0 to {MAX_THREADS}"))
    },
};

/// More connection threads than this is a typo, not a machine.
pub const MAX_THREADS: usize = 1024;

/// A comma-separated set (blanks ignored); `why` when an item does not parse. FNV where one is looked up per request (the
/// peer address, three times a request, and the listener's port): SipHash cost ~150
/// instructions a lookup, and no client adds to these sets.
fn comma_separated<T: std::str::FromStr + Eq + std::hash::Hash, S>(
    v: &str,
    why: &str,
) -> Result<HashSet<T, S>, String>
where
    S: std::hash::BuildHasher + Default,
{
    v.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| item.parse::<T>().map_err(|_| why.to_owned()))
        .collect()
}

fn at_least_1s(v: &str) -> Result<Duration, String> {
    duration_at_least(v, Duration::from_secs(1))
}

/// This component's properties and their variables, in the order they are documented.
pub const PROPERTIES: [(&str, &str); 14] = [
    PORTS.names(),
    PORT_MAPPINGS.names(),
    TIME_BUDGET.names(),
    REQUEST_MEMORY_LIMIT.names(),
    ALLOWED_ORIGINS.names(),
    READ_HEADER_TIMEOUT.names(),
    READ_TIMEOUT.names(),
    WRITE_TIMEOUT.names(),
    MAX_HEADER_BYTES.names(),
    TRUSTED_PROXIES.names(),
    TRUST_TRACE_CONTEXT.names(),
    BLOCKED_PATHS.names(),
    ACCESS_LOG.names(),
    THREADS.names(),
];

/// Prefix of the environment variables that override properties: `Ports` is
/// `BUSGATE_HTTP_INGRESS_PORTS`, `TimeBudget` is `BUSGATE_HTTP_INGRESS_TIME_BUDGET`.
pub const ENV_PREFIX: &str = "BUSGATE_HTTP_INGRESS_";

/// This component's `config.yaml` side: its host and its properties.
pub const SETTINGS: PropertyTable = PropertyTable {
    host: HOSTNAME,
    env_prefix: ENV_PREFIX,
    component: "HTTP ingress",
    properties: &PROPERTIES,
};

/// One `x:y->z` rule: `((x, y), z)`, `None` for `*`.
pub type PortRule = ((Option<u16>, Option<u16>), Option<u16>);

/// `x:y->z` rules: external port x, requested internal port y, forced internal port z; `None`
/// stands for `*`. Kept as numbers so that mapping a request builds no string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
/// Looked up four times a request: FNV, as the keys are the operator's own ports (no table a
/// client can grow, so SipHash's flooding resistance buys nothing).
pub struct PortMappings(HashMap<(Option<u16>, Option<u16>), Option<u16>, FnvBuildHasher>);

impl PortMappings {
    pub fn parse(value: &str) -> Result<PortMappings, String> {
        let mut rules = HashMap::default();
        for rule in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let bad = || format!("expected x:y->z, e.g. 443:*->443 (not '{rule}')");
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

    pub fn from_rules(rules: &[PortRule]) -> PortMappings {
        PortMappings(rules.iter().copied().collect())
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
/// Looked up for every request; FNV, as the sets are configuration that clients cannot grow.
pub struct BlockedPaths {
    exact: HashSet<String, FnvBuildHasher>,
    extensions: HashSet<String, FnvBuildHasher>,
}

impl BlockedPaths {
    pub fn from_lines<'a>(lines: impl Iterator<Item = &'a str>) -> BlockedPaths {
        let mut b = BlockedPaths::default();
        for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
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
        // By bytes (every request): `rfind` and `contains` with a char go through char
        // searchers (~230 instructions a request).
        match path.bytes().rposition(|b| b == b'.') {
            Some(i) if !path.as_bytes()[i..].contains(&b'/') => {
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
    pub trusted_proxies: HashSet<IpAddr, FnvBuildHasher>,
    pub trust_trace_context: HashSet<u16, FnvBuildHasher>,
    pub blocked_paths: BlockedPaths,
    /// Whether every request is logged ("Request received").
    pub access_log: bool,
    /// Threads of their own for the connections (see [`THREADS`]); 0 for none.
    pub threads: usize,
    /// Where `httpingress-<port>-cert.pem` and `-key.pem` are looked for.
    pub cert_dir: PathBuf,
    /// The address the listeners bind (all interfaces by default).
    pub bind_ip: IpAddr,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig::resolve(None, |_| None, &[]).expect("the defaults are valid")
    }
}

impl IngressConfig {
    /// Defaults, then `file`, then the environment (`lookup`), then `overrides` (CLI).
    pub fn resolve(
        file: Option<&ConfigFile>,
        lookup: impl Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
    ) -> Result<IngressConfig, ConfigError> {
        let from = Sources::new(&SETTINGS, file, &lookup, overrides)?;
        Ok(IngressConfig {
            ports: from.read(&PORTS)?,
            port_mappings: from.read(&PORT_MAPPINGS)?,
            time_budget: from.read(&TIME_BUDGET)?,
            request_memory_limit_bytes: from.read(&REQUEST_MEMORY_LIMIT)?,
            allowed_origins: from.read(&ALLOWED_ORIGINS)?,
            read_header_timeout: from.read(&READ_HEADER_TIMEOUT)?,
            read_timeout: from.read(&READ_TIMEOUT)?,
            write_timeout: from.read(&WRITE_TIMEOUT)?,
            max_header_bytes: from.read(&MAX_HEADER_BYTES)?,
            trusted_proxies: from.read(&TRUSTED_PROXIES)?,
            trust_trace_context: from.read(&TRUST_TRACE_CONTEXT)?,
            blocked_paths: from.read(&BLOCKED_PATHS)?,
            access_log: from.read(&ACCESS_LOG)?,
            threads: from.read(&THREADS)?,
            cert_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            bind_ip: IpAddr::from([0, 0, 0, 0]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env_name_of;

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
        assert_eq!(MICROBUS_BLOCKED_PATHS.len(), 59);
    }

    #[test]
    fn access_log_is_off_unless_asked_and_bad_values_are_named() {
        assert!(!IngressConfig::default().access_log);
        let with = |v: &str| {
            IngressConfig::resolve(None, |_| None, &[(ACCESS_LOG.property.into(), v.into())])
        };
        assert!(with("true").unwrap().access_log);
        assert!(!with("off").unwrap().access_log);
        let err = with("maybe").unwrap_err().to_string();
        assert!(
            err.contains(ACCESS_LOG.property) && err.contains("maybe"),
            "{err}"
        );
    }

    #[test]
    fn port_mapping_precedence() {
        let defaults = (PORT_MAPPINGS.default)();
        assert_eq!(
            defaults,
            PortMappings::parse("8080:*->*, 443:*->443, 80:*->443").unwrap()
        );
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
        for (property, env) in PROPERTIES {
            assert_eq!(env, env_name_of(ENV_PREFIX, property), "{property}");
        }

        let none = |_: &str| None;
        for (name, value) in [
            (PORTS.property, "80,x"),
            (PORTS.property, ""),
            (TIME_BUDGET.property, "soon"),
            (READ_TIMEOUT.property, "10ms"),
            (REQUEST_MEMORY_LIMIT.property, "0"),
            (MAX_HEADER_BYTES.property, "10"),
            (TRUSTED_PROXIES.property, "localhost"),
            (PORT_MAPPINGS.property, "1->2"),
            (TRUST_TRACE_CONTEXT.property, "x"),
        ] {
            let err =
                IngressConfig::resolve(None, none, &[(name.into(), value.into())]).unwrap_err();
            assert_eq!(err.name, name, "{value}");
        }
        let err = IngressConfig::resolve(None, none, &[("Bogus".into(), "1".into())]).unwrap_err();
        assert_eq!(err.name, "Bogus");
    }

    #[test]
    fn timeouts_below_a_second_are_refused() {
        for setting in [READ_HEADER_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT] {
            assert_eq!((setting.parse)("1s"), Ok(Duration::from_secs(1)));
            assert_eq!(
                (setting.parse)("999ms"),
                Err("must be at least 1s".to_owned())
            );
        }
    }
}
