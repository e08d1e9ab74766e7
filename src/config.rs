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

/// One setting of a component, declared as a constant with its reason beside it (the way
/// linkerd2-proxy's `env.rs` declares them): its property in `config.yaml` and in flags, its
/// environment variable, its typed default, and how its text is read. `parse` says why a
/// value is refused; [`Sources::read`] adds which setting and which value.
pub struct Setting<T: 'static> {
    /// The property (`TimeBudget`); empty for a setting that only the environment sets.
    pub property: &'static str,
    /// The environment variable (`BUSGATE_HTTP_INGRESS_TIME_BUDGET`, `MICROBUS_NATS`).
    pub env: &'static str,
    /// The value when nothing sets it.
    pub default: fn() -> T,
    pub parse: fn(&str) -> Result<T, String>,
}

impl<T> Setting<T> {
    /// Its property and its environment variable, for the component's [`PropertyTable`].
    pub const fn names(&self) -> (&'static str, &'static str) {
        (self.property, self.env)
    }

    /// The name errors give: the property, or the environment variable of an
    /// environment-only setting.
    pub fn name(&self) -> &'static str {
        if self.property.is_empty() {
            self.env
        } else {
            self.property
        }
    }
}

/// The environment variable busgate's convention gives a property under `prefix`:
/// `MaxHeaderBytes` under `BUSGATE_HTTP_INGRESS_` is `BUSGATE_HTTP_INGRESS_MAX_HEADER_BYTES`.
/// The components' tables are checked against it.
#[cfg(test)]
pub(crate) fn env_name_of(prefix: &str, property: &str) -> String {
    let mut out = String::from(prefix);
    for (i, c) in property.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The `config.yaml` side of one component: its host there, and the properties it has (for
/// flags and for reporting unknown ones).
#[derive(Debug, Clone, Copy)]
pub struct PropertyTable {
    pub host: &'static str,
    /// The prefix its variables share: another variable under it is a misspelling.
    pub env_prefix: &'static str,
    /// Named in errors: "unknown HTTP ingress property".
    pub component: &'static str,
    /// Each property and its environment variable ([`Setting::names`]).
    pub properties: &'static [(&'static str, &'static str)],
}

impl PropertyTable {
    fn property_names(&self) -> impl Iterator<Item = &'static str> {
        self.properties.iter().map(|(property, _)| *property)
    }

    /// Properties written under this component's host that it does not have.
    pub fn unknown_in(&self, file: &ConfigFile) -> Vec<UnknownProperty> {
        let known: Vec<&'static str> = self.property_names().collect();
        file.unknown_properties(self.host, &known)
    }

    /// Of `names` (the environment's variables), those under this component's prefix that
    /// are no property's, each with the nearest known one: a misspelt variable would be
    /// ignored silently.
    pub fn unknown_env(&self, names: impl Iterator<Item = String>) -> Vec<UnknownProperty> {
        let known: Vec<&'static str> = self.properties.iter().map(|(_, env)| *env).collect();
        names
            .filter(|n| n.starts_with(self.env_prefix) && !known.contains(&n.as_str()))
            .map(|n| UnknownProperty {
                host: self.host.to_owned(),
                nearest: nearest(&known, &n),
                name: n,
            })
            .collect()
    }
}

/// Where one component's settings come from, in the one order all of them use: the typed
/// default, then `config.yaml` under the component's host, then the environment, then flags.
pub struct Sources<'a> {
    host: &'static str,
    file: Option<&'a ConfigFile>,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Canonical property names and their values.
    flags: Vec<(&'static str, &'a str)>,
}

impl<'a> Sources<'a> {
    /// `flags` name properties in any case; a name `table` does not have is an error.
    pub fn new(
        table: &PropertyTable,
        file: Option<&'a ConfigFile>,
        lookup: &'a dyn Fn(&str) -> Option<String>,
        flags: &'a [(String, String)],
    ) -> Result<Sources<'a>, ConfigError> {
        let flags = flags
            .iter()
            .map(|(name, value)| {
                let property = table
                    .property_names()
                    .find(|p| p.eq_ignore_ascii_case(name))
                    .ok_or_else(|| {
                        ConfigError::new(
                            name,
                            value,
                            &format!("unknown {} property", table.component),
                        )
                    })?;
                Ok((property, value.as_str()))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Sources {
            host: table.host,
            file,
            lookup,
            flags,
        })
    }

    /// The environment only: settings with no `config.yaml` property (`MICROBUS_*`,
    /// `OTEL_EXPORTER_OTLP_*`).
    pub fn environment(lookup: &'a dyn Fn(&str) -> Option<String>) -> Sources<'a> {
        Sources {
            host: "",
            file: None,
            lookup,
            flags: Vec::new(),
        }
    }

    /// The text that sets `setting`, from the most specific source that has it.
    fn text<T>(&self, setting: &Setting<T>) -> Option<String> {
        let property = setting.property;
        let flag = self
            .flags
            .iter()
            .rev()
            .find(|(p, _)| !property.is_empty() && *p == property);
        if let Some((_, value)) = flag {
            return Some((*value).to_owned());
        }
        if let Some(value) = (self.lookup)(setting.env) {
            return Some(value);
        }
        if property.is_empty() {
            return None;
        }
        self.file
            .and_then(|f| f.get(self.host, property))
            .map(str::to_owned)
    }

    /// The value of `setting`: its text read by its parser, or its default when nothing sets it.
    pub fn read<T>(&self, setting: &Setting<T>) -> Result<T, ConfigError> {
        match self.text(setting) {
            None => Ok((setting.default)()),
            Some(text) => {
                (setting.parse)(&text).map_err(|why| ConfigError::new(setting.name(), &text, &why))
            }
        }
    }
}

/// A property under one of busgate's own hosts that no setting of that host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProperty {
    pub host: String,
    /// As written in the file.
    pub name: String,
    /// The known property nearest to it, when one is close (a likely misspelling).
    pub nearest: Option<String>,
}

impl fmt::Display for UnknownProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.contains('_') {
            write!(f, "unknown variable {} of {}", self.name, self.host)?;
        } else {
            write!(f, "unknown property {} under {}", self.name, self.host)?;
        }
        match &self.nearest {
            Some(n) => write!(f, " (did you mean {n}?); it is ignored"),
            None => write!(f, "; it is ignored"),
        }
    }
}

/// The name of `known` nearest to `name`, when it is close enough to be a misspelling.
fn nearest<K: AsRef<str>>(known: &[K], name: &str) -> Option<String> {
    known
        .iter()
        .map(|k| (edit_distance(k.as_ref(), name), k.as_ref()))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k.to_owned())
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
                nearest: nearest(known, n),
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

    const TABLE: PropertyTable = PropertyTable {
        host: "unit.test",
        env_prefix: "BUSGATE_UNIT_",
        component: "unit test",
        // A variable need not follow the naming convention: the table says which it is.
        properties: &[BUDGET.names(), ("Ports", "BUSGATE_UNIT_PORT_LIST")],
    };

    const BUDGET: Setting<std::time::Duration> = Setting {
        property: "TimeBudget",
        env: "BUSGATE_UNIT_TIME_BUDGET",
        default: || std::time::Duration::from_secs(20),
        parse: duration,
    };

    #[test]
    fn a_setting_is_read_from_flags_then_environment_then_file_then_its_default() {
        use std::time::Duration;
        let file = ConfigFile::parse("unit.test:\n  TimeBudget: 1s\n").unwrap();
        let env = |k: &str| (k == "BUSGATE_UNIT_TIME_BUDGET").then(|| "2s".to_owned());
        let none = |_: &str| None;
        let flags = [("timebudget".to_owned(), "3s".to_owned())];
        let read = |file: Option<&ConfigFile>, env: &dyn Fn(&str) -> Option<String>, flags| {
            Sources::new(&TABLE, file, env, flags)
                .unwrap()
                .read(&BUDGET)
                .unwrap()
        };
        assert_eq!(read(None, &none, &[]), Duration::from_secs(20));
        assert_eq!(read(Some(&file), &none, &[]), Duration::from_secs(1));
        assert_eq!(read(Some(&file), &env, &[]), Duration::from_secs(2));
        assert_eq!(read(Some(&file), &env, &flags), Duration::from_secs(3));
        // A bad value names its setting and the value; an unknown flag is refused.
        let bad = [("TimeBudget".to_owned(), "soon".to_owned())];
        let e = Sources::new(&TABLE, None, &none, &bad)
            .unwrap()
            .read(&BUDGET)
            .unwrap_err();
        assert_eq!((e.name.as_str(), e.value.as_str()), ("TimeBudget", "soon"));
        let unknown = [("Budget".to_owned(), "1s".to_owned())];
        let e = Sources::new(&TABLE, None, &none, &unknown).err().unwrap();
        assert_eq!(e.why, "unknown unit test property");
    }

    #[test]
    fn misspelt_variables_are_named_with_the_nearest_known_one() {
        let vars = [
            "BUSGATE_UNIT_TIME_BUDGET",
            "BUSGATE_UNIT_PORT_LIST",
            "BUSGATE_UNIT_TIMEBUDGET",
            "BUSGATE_UNIT_COLOUR",
            "BUSGATE_OTHER_PORTS",
            "PATH",
        ];
        let unknown = TABLE.unknown_env(vars.iter().map(|v| v.to_string()));
        let names: Vec<(&str, Option<&str>)> = unknown
            .iter()
            .map(|u| (u.name.as_str(), u.nearest.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("BUSGATE_UNIT_TIMEBUDGET", Some("BUSGATE_UNIT_TIME_BUDGET")),
                ("BUSGATE_UNIT_COLOUR", None),
            ]
        );
        assert_eq!(
            unknown[0].to_string(),
            "unknown variable BUSGATE_UNIT_TIMEBUDGET of unit.test (did you mean BUSGATE_UNIT_TIME_BUDGET?); it is ignored"
        );
    }

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
                    nearest: Some("TimeBudget".into()),
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
    boolean(value).map_err(|why| ConfigError::new(name, value, &why))
}

/// A [`Setting`]'s parser for `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
pub fn boolean(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// A [`Setting`]'s parser for a Go-style duration (see [`parse_duration`]).
pub fn duration(value: &str) -> Result<std::time::Duration, String> {
    parse_duration("", value).map_err(|e| e.why)
}

/// A [`Setting`]'s parser for a Go-style duration of at least `min`.
pub fn duration_at_least(
    value: &str,
    min: std::time::Duration,
) -> Result<std::time::Duration, String> {
    let d = duration(value)?;
    if d < min {
        return Err(format!(
            "must be at least {}",
            humantime::format_duration(min)
        ));
    }
    Ok(d)
}

/// An integer in `min..=max`.
pub fn int_in(value: &str, min: u64, max: u64) -> Result<u64, String> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("an integer in [{min},{max}]"))
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

    #[test]
    fn durations_below_their_minimum_are_refused_with_the_minimum() {
        use std::time::Duration;
        let min = Duration::from_millis(100);
        assert_eq!(duration_at_least("100ms", min), Ok(min));
        assert_eq!(duration_at_least("2m", min), Ok(Duration::from_secs(120)));
        for low in ["99ms", "0", "1us"] {
            assert_eq!(
                duration_at_least(low, min),
                Err("must be at least 100ms".to_owned()),
                "{low}"
            );
        }
        assert!(duration_at_least("soon", min).is_err());
    }
}
