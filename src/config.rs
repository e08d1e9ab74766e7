//! Settings: the deployment, `config.yaml`'s property tables and the parsers and error every
//! component's settings share.

use std::fmt;
use std::str::FromStr;

pub const ENV_DEPLOYMENT: &str = "MICROBUS_DEPLOYMENT";

/// Microbus deployment environments; they decide log format and trace export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    Prod,
    Lab,
    Local,
    Testing,
}

impl Deployment {
    pub fn as_str(self) -> &'static str {
        match self {
            Deployment::Prod => "PROD",
            Deployment::Lab => "LAB",
            Deployment::Local => "LOCAL",
            Deployment::Testing => "TESTING",
        }
    }

    /// Microbus's default: LOCAL, unless NATS is set to a non-local address, then PROD.
    pub fn default_for(nats_url: Option<&str>) -> Deployment {
        match nats_url {
            Some(url)
                if !["/127.0.0.1:", "/0.0.0.0:", "/localhost:"]
                    .iter()
                    .any(|local| url.contains(local)) =>
            {
                Deployment::Prod
            }
            _ => Deployment::Local,
        }
    }
}

impl FromStr for Deployment {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PROD" => Ok(Deployment::Prod),
            "LAB" => Ok(Deployment::Lab),
            "LOCAL" => Ok(Deployment::Local),
            "TESTING" => Ok(Deployment::Testing),
            _ => Err(ConfigError::new(
                ENV_DEPLOYMENT,
                s,
                "expected PROD, LAB, LOCAL or TESTING",
            )),
        }
    }
}

impl fmt::Display for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A setting with an unusable value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {name}='{value}': {why}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub why: String,
}

impl ConfigError {
    pub fn new(name: &str, value: &str, why: &str) -> ConfigError {
        ConfigError {
            name: name.to_owned(),
            value: value.to_owned(),
            why: why.to_owned(),
        }
    }
}

/// `config.yaml` in Microbus's format: `host: {Property: value}`, names case-insensitive. A
/// service reads the most specific domain that has the property (`http.ingress.core`, then
/// `ingress.core`, then `core`), then `all` (reference §1.10).
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    hosts: std::collections::HashMap<String, std::collections::HashMap<String, String>>,
    /// Property names as written, per host (lower-cased keys above), for messages.
    spelled: std::collections::HashMap<String, Vec<String>>,
}

/// The settings of one busgate component: its host in config.yaml, the prefix of its
/// environment variables and every property with its default. One layering for all of them:
/// defaults, then config.yaml, then the environment, then flags.
#[derive(Debug, Clone, Copy)]
pub struct PropertyTable {
    pub host: &'static str,
    /// `Ports` under prefix `BUSGATE_HTTP_INGRESS_` is `BUSGATE_HTTP_INGRESS_PORTS`.
    pub env_prefix: &'static str,
    /// Named in errors: "unknown HTTP ingress property".
    pub component: &'static str,
    pub properties: &'static [(&'static str, &'static str)],
}

impl PropertyTable {
    /// The environment variable of a property: `MaxHeaderBytes` → `<prefix>MAX_HEADER_BYTES`.
    pub fn env_name(&self, property: &str) -> String {
        let mut out = String::from(self.env_prefix);
        for (i, c) in property.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> {
        self.properties.iter().map(|(n, _)| *n)
    }

    /// The values set by `file`, then the environment (`lookup`), then `overrides` (flags,
    /// names case-insensitive; an unknown name is an error).
    pub fn layer(
        &self,
        file: Option<&ConfigFile>,
        lookup: impl Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
    ) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
        let mut props = std::collections::BTreeMap::new();
        for name in self.names() {
            if let Some(v) = file.and_then(|f| f.get(self.host, name)) {
                props.insert(name.to_owned(), v.to_owned());
            }
            if let Some(v) = lookup(&self.env_name(name)) {
                props.insert(name.to_owned(), v);
            }
        }
        for (name, value) in overrides {
            let canonical = self
                .names()
                .find(|p| p.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    ConfigError::new(name, value, &format!("unknown {} property", self.component))
                })?;
            props.insert(canonical.to_owned(), value.clone());
        }
        Ok(props)
    }

    /// The value of `name` in `props`, else its default.
    pub fn get(&self, props: &std::collections::BTreeMap<String, String>, name: &str) -> String {
        props.get(name).cloned().unwrap_or_else(|| {
            self.properties
                .iter()
                .find(|(p, _)| *p == name)
                .map(|(_, d)| d.to_string())
                .unwrap_or_default()
        })
    }

    /// Properties written under this component's host that it does not have.
    pub fn unknown_in(&self, file: &ConfigFile) -> Vec<UnknownProperty> {
        let known: Vec<&'static str> = self.names().collect();
        file.unknown_properties(self.host, &known)
    }
}

/// A property under one of busgate's own hosts that no setting of that host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProperty {
    pub host: String,
    /// As written in the file.
    pub name: String,
    /// The known property nearest to it, when one is close (a likely misspelling).
    pub nearest: Option<&'static str>,
}

impl fmt::Display for UnknownProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown property {} under {}", self.name, self.host)?;
        match self.nearest {
            Some(n) => write!(f, " (did you mean {n}?); it is ignored"),
            None => write!(f, "; it is ignored"),
        }
    }
}

/// Levenshtein distance, ignoring ASCII case.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (
        a.to_ascii_lowercase().chars().collect(),
        b.to_ascii_lowercase().chars().collect(),
    );
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl ConfigFile {
    pub fn parse(yaml: &str) -> Result<ConfigFile, ConfigError> {
        use serde_yaml_ng::Value;
        let root: Value = serde_yaml_ng::from_str(yaml)
            .map_err(|e| ConfigError::new("config.yaml", "", &e.to_string()))?;
        let mut hosts = std::collections::HashMap::new();
        let mut spelled = std::collections::HashMap::new();
        let Value::Mapping(map) = root else {
            if root.is_null() {
                return Ok(ConfigFile::default());
            }
            return Err(ConfigError::new(
                "config.yaml",
                "",
                "expected a mapping of hostnames to properties",
            ));
        };
        for (host, props) in map {
            let host = scalar(&host)
                .ok_or_else(|| ConfigError::new("config.yaml", "", "hostnames must be strings"))?;
            let mut values = std::collections::HashMap::new();
            let mut names = Vec::new();
            if let Value::Mapping(props) = props {
                for (name, value) in props {
                    let name = scalar(&name).ok_or_else(|| {
                        ConfigError::new("config.yaml", &host, "property names must be strings")
                    })?;
                    let value = scalar(&value).ok_or_else(|| {
                        ConfigError::new(&name, "", "property values must be scalars")
                    })?;
                    values.insert(name.to_ascii_lowercase(), value);
                    names.push(name);
                }
            } else if !props.is_null() {
                return Err(ConfigError::new(
                    "config.yaml",
                    &host,
                    "expected a mapping of properties",
                ));
            }
            hosts.insert(host.to_ascii_lowercase(), values);
            spelled.insert(host.to_ascii_lowercase(), names);
        }
        Ok(ConfigFile { hosts, spelled })
    }

    /// The properties written under exactly `host` that are not in `known` (keys under other
    /// hosts are legal: config.yaml is shared by every service).
    pub fn unknown_properties(&self, host: &str, known: &[&'static str]) -> Vec<UnknownProperty> {
        let Some(names) = self.spelled.get(&host.to_ascii_lowercase()) else {
            return Vec::new();
        };
        names
            .iter()
            .filter(|n| !known.iter().any(|k| k.eq_ignore_ascii_case(n)))
            .map(|n| UnknownProperty {
                host: host.to_owned(),
                name: n.clone(),
                nearest: known
                    .iter()
                    .map(|k| (edit_distance(k, n), *k))
                    .filter(|(d, k)| *d <= 2.max(k.len() / 4))
                    .min()
                    .map(|(_, k)| k),
            })
            .collect()
    }

    pub fn load(path: &std::path::Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("config file", &path.display().to_string(), &e.to_string())
        })?;
        ConfigFile::parse(&text)
    }

    /// The value of `property` for `host`, most specific domain first, then `all`.
    pub fn get(&self, host: &str, property: &str) -> Option<&str> {
        let host = host.to_ascii_lowercase();
        let property = property.to_ascii_lowercase();
        let mut domain = host.as_str();
        loop {
            if let Some(v) = self.hosts.get(domain).and_then(|p| p.get(&property)) {
                return Some(v);
            }
            match domain.split_once('.') {
                Some((_, parent)) => domain = parent,
                None => break,
            }
        }
        self.hosts
            .get("all")
            .and_then(|p| p.get(&property))
            .map(String::as_str)
    }
}

fn scalar(v: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

#[cfg(test)]
mod unknown_property_tests {
    use super::*;

    #[test]
    fn misspelt_properties_are_named_with_the_nearest_known_one() {
        let file = ConfigFile::parse(
            "http.ingress.core:\n  TimeBudjet: 5s\n  Ports: 8080\n  Colour: blue\nother.service:\n  Anything: 1\n",
        )
        .unwrap();
        let known = ["Ports", "TimeBudget", "ReadTimeout"];
        let unknown = file.unknown_properties("http.ingress.core", &known);
        assert_eq!(
            unknown,
            [
                UnknownProperty {
                    host: "http.ingress.core".into(),
                    name: "TimeBudjet".into(),
                    nearest: Some("TimeBudget"),
                },
                UnknownProperty {
                    host: "http.ingress.core".into(),
                    name: "Colour".into(),
                    nearest: None,
                },
            ]
        );
        assert_eq!(
            unknown[0].to_string(),
            "unknown property TimeBudjet under http.ingress.core (did you mean TimeBudget?); it is ignored"
        );
        assert!(file.unknown_properties("other.service", &known).len() == 1);
        assert!(file.unknown_properties("nobody", &known).is_empty());
    }
}

/// A boolean property: `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any case).
pub fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(name, value, "expected true or false")),
    }
}

/// Parse a Go-style duration: `20s`, `5m`, `1h30m`, `250ms`, or `0`.
pub fn parse_duration(name: &str, value: &str) -> Result<std::time::Duration, ConfigError> {
    let v = value.trim();
    if v == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(v).map_err(|e| {
        ConfigError::new(
            name,
            value,
            &format!("expected a duration like 20s or 5m ({e})"),
        )
    })
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn config_file_resolves_domains_case_insensitively() {
        let f = ConfigFile::parse(
            "http.ingress.core:\n  Ports: 8080,4040\n  TimeBudget: 30s\ncore:\n  ReadTimeout: 1m\nall:\n  Foo: bar\n  TimeBudget: 1s\n",
        )
        .unwrap();
        assert_eq!(f.get("http.ingress.core", "ports"), Some("8080,4040"));
        assert_eq!(f.get("HTTP.Ingress.Core", "TIMEBUDGET"), Some("30s"));
        assert_eq!(f.get("http.ingress.core", "ReadTimeout"), Some("1m"));
        assert_eq!(f.get("http.ingress.core", "Foo"), Some("bar"));
        assert_eq!(f.get("other.host", "TimeBudget"), Some("1s"));
        assert_eq!(f.get("other.host", "Missing"), None);
        assert!(ConfigFile::parse("").unwrap().get("a", "b").is_none());
        assert!(ConfigFile::parse("- a\n- b\n").is_err());
        assert!(ConfigFile::parse("h:\n  P: [1, 2]\n").is_err());
        assert!(ConfigFile::parse("h: [").is_err());
    }

    #[test]
    fn go_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("T", "20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("T", "5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("T", "1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_duration("T", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("T", "0").unwrap(), Duration::ZERO);
        let e = parse_duration("TimeBudget", "soon").unwrap_err();
        assert_eq!(e.name, "TimeBudget");
    }
}
