//! Endpoint routes: the subscription path syntax of reference §1.3 and queue groups.

use crate::wire::{is_valid_hostname, WireError};

/// Where a route listens: a host (or the service's own), a port, and a path spec that may hold
/// `{arg}` and a last `{arg+}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// `None` means the service's own hostname.
    pub host: Option<String>,
    /// 0 means any port.
    pub port: u16,
    pub path: String,
}

impl RouteSpec {
    /// Parse `""`, `/x`, `x`, `:1080/x`, `//other.host:417/x` or a full `https://` URL.
    pub fn parse(spec: &str) -> Result<RouteSpec, WireError> {
        let invalid = || WireError::InvalidPathSpec(spec.to_owned());
        if let Some(rest) = spec
            .strip_prefix("https://")
            .or_else(|| spec.strip_prefix("//"))
        {
            return RouteSpec::with_authority(rest, 443, spec);
        }
        if let Some(rest) = spec.strip_prefix("http://") {
            return RouteSpec::with_authority(rest, 80, spec);
        }
        if let Some(rest) = spec.strip_prefix(':') {
            let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            return Ok(RouteSpec {
                host: None,
                port: port.parse().map_err(|_| invalid())?,
                path: normalize_path(path),
            });
        }
        Ok(RouteSpec {
            host: None,
            port: 443,
            path: normalize_path(spec),
        })
    }

    fn with_authority(rest: &str, default_port: u16, spec: &str) -> Result<RouteSpec, WireError> {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| WireError::InvalidPathSpec(spec.to_owned()))?,
            ),
            None => (authority, default_port),
        };
        let host = host.to_ascii_lowercase();
        if !is_valid_hostname(&host) {
            return Err(WireError::InvalidHostname(host));
        }
        Ok(RouteSpec {
            host: Some(host),
            port,
            path: normalize_path(path),
        })
    }

    /// `:<port><path>`, the name of the route in spans and metrics.
    pub fn display(&self) -> String {
        format!(":{}{}", self.port, self.path)
    }
}

fn normalize_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// Which queue group an endpoint's subscription joins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Queue {
    /// The service's own hostname: replicas share the load, other services get their own copy.
    #[default]
    Default,
    /// No queue: every replica gets every message (Microbus's `Pervasive`).
    None,
    /// A custom queue name (`^[a-zA-Z0-9.]+$`).
    Named(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: Option<&str>, port: u16, path: &str) -> RouteSpec {
        RouteSpec {
            host: host.map(str::to_owned),
            port,
            path: path.to_owned(),
        }
    }

    #[test]
    fn parses_route_specs() {
        assert_eq!(RouteSpec::parse("").unwrap(), spec(None, 443, "/"));
        assert_eq!(RouteSpec::parse(":1080/x").unwrap(), spec(None, 1080, "/x"));
        assert_eq!(RouteSpec::parse(":0").unwrap(), spec(None, 0, "/"));
        assert_eq!(
            RouteSpec::parse("//Other.Host:417/x").unwrap(),
            spec(Some("other.host"), 417, "/x")
        );
        assert_eq!(RouteSpec::parse("/x").unwrap(), spec(None, 443, "/x"));
        assert_eq!(
            RouteSpec::parse("x/{y}").unwrap(),
            spec(None, 443, "/x/{y}")
        );
        assert_eq!(
            RouteSpec::parse("https://a.b:8/c").unwrap(),
            spec(Some("a.b"), 8, "/c")
        );
        assert_eq!(
            RouteSpec::parse("http://a.b/c").unwrap(),
            spec(Some("a.b"), 80, "/c")
        );
        assert_eq!(
            RouteSpec::parse("//all:888/ping").unwrap().display(),
            ":888/ping"
        );
        for bad in [":x/y", "//a*b/c", "//a.b:99999/c", ":70000"] {
            assert!(RouteSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
