//! Bus URLs: `https://host:port/path?query`, the address of every bus request.

use http::uri::Authority;
use http::Uri;
use percent_encoding::percent_decode_str;

use super::error::{truncated, WireError};
use super::hostname::is_valid_hostname;

/// A parsed bus URL with the port filled in and the host lower-cased and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusUrl {
    pub host: String,
    pub port: u16,
    /// The path as written (percent-encoded), always starting with `/`.
    pub path: String,
    pub query: Option<String>,
}

impl BusUrl {
    /// Parse `https://host[:port]/path?query` (or `http://`, default port 80).
    pub fn parse(s: &str) -> Result<BusUrl, WireError> {
        let uri: Uri = s
            .parse()
            .map_err(|_| WireError::InvalidUrl(truncated(s, 256).to_owned()))?;
        BusUrl::from_uri(&uri)
    }

    pub fn from_uri(uri: &Uri) -> Result<BusUrl, WireError> {
        let (host, port) = Self::host_and_port(uri)?;
        let host = host.to_ascii_lowercase();
        let path = match uri.path() {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        Ok(BusUrl {
            host,
            port,
            path,
            query: uri.query().map(str::to_owned),
        })
    }

    /// The port of the bus URL `uri` would parse to, without copying its parts.
    pub fn port_of(uri: &Uri) -> Result<u16, WireError> {
        Self::host_and_port(uri).map(|(_, port)| port)
    }

    /// The validated host (in its own case) and port, the default filled in.
    fn host_and_port(uri: &Uri) -> Result<(&str, u16), WireError> {
        let invalid = || WireError::InvalidUrl(truncated(&uri.to_string(), 256).to_owned());
        let default_port = match uri.scheme_str() {
            Some("https") | None => 443,
            Some("http") => 80,
            Some(_) => return Err(invalid()),
        };
        let authority = uri.authority().ok_or_else(invalid)?;
        if authority.as_str().contains('@') {
            return Err(invalid());
        }
        // Valid in any case: the check allows both.
        let (host, port) = host_and_port_of(authority);
        if !is_valid_hostname(host) {
            return Err(WireError::InvalidHostname(host.to_ascii_lowercase()));
        }
        Ok((host, port.unwrap_or(default_port)))
    }

    /// The path with percent-escapes decoded, as the subject codec expects (Go's `URL.Path`).
    pub fn decoded_path(&self) -> std::borrow::Cow<'_, str> {
        percent_decode_str(&self.path).decode_utf8_lossy()
    }

    /// Whether `uri` is already written as [`BusUrl::to_uri`] would write this URL (a
    /// rendering and a parse saved for every call that already has it).
    pub fn is_written_as(&self, uri: &Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return false;
        };
        uri.scheme_str() == Some("https")
            && host_and_port_of(authority) == (self.host.as_str(), Some(self.port))
            && authority.as_str().len() == self.host.len() + 1 + port_digits(self.port)
            && uri.path() == self.path
            && uri.query() == self.query.as_deref()
    }

    /// `https://host:port/path?query`, the form written on the wire.
    pub fn to_uri(&self) -> Uri {
        let mut s = format!("https://{}:{}{}", self.host, self.port, self.path);
        if let Some(q) = &self.query {
            s.push('?');
            s.push_str(q);
        }
        // Every part was validated or came out of a parsed Uri.
        s.parse().expect("a BusUrl always renders a valid URI")
    }
}

/// `authority.host()` and `authority.port_u16()`, by bytes for the common form
/// `host[:port]`: http's own go through char searchers (`rsplit('@')`, `split(':')`,
/// `rfind(':')`), ~500 instructions, twice a call.
pub(super) fn host_and_port_of(authority: &Authority) -> (&str, Option<u16>) {
    let text = authority.as_str();
    if text.bytes().any(|b| b == b'@' || b == b'[') {
        return (authority.host(), authority.port_u16());
    }
    match text.bytes().position(|b| b == b':') {
        Some(colon) => (&text[..colon], text[colon + 1..].parse().ok()),
        None => (text, None),
    }
}

fn port_digits(port: u16) -> usize {
    itoa::Buffer::new().format(port).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_as_http_reads_them() {
        for text in [
            "calc.example",
            "calc.example:443",
            "Calc.Example:8080",
            "calc.example:",
            "calc.example:99999",
            "calc.example:+5",
            "calc.example:0",
            "1.2.3.4:80",
            "[::1]",
            "[::1]:8080",
            "user@calc.example:81",
            "user:pw@calc.example",
        ] {
            let authority: Authority = text.parse().unwrap();
            assert_eq!(
                host_and_port_of(&authority),
                (authority.host(), authority.port_u16()),
                "{text}"
            );
        }
    }

    #[test]
    fn parses_and_defaults_ports() {
        let u = BusUrl::parse("https://Calc.Example/add?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("calc.example", 443, "/add")
        );
        assert_eq!(u.query.as_deref(), Some("x=1"));
        assert_eq!(BusUrl::parse("http://a.b/").unwrap().port, 80);
        assert_eq!(BusUrl::parse("https://a.b:888").unwrap().path, "/");
        assert_eq!(
            BusUrl::parse("https://a.b/x%2Fy%20z")
                .unwrap()
                .decoded_path(),
            "/x/y z"
        );
        assert_eq!(
            BusUrl::parse("https://a.b:0/x").unwrap().to_uri(),
            "https://a.b:0/x"
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in ["ftp://a.b/", "https://u@a.b/", "https://a..b/", "/x"] {
            let uri: Uri = bad.parse().unwrap();
            assert_eq!(
                BusUrl::port_of(&uri),
                BusUrl::from_uri(&uri).map(|u| u.port),
                "{bad}"
            );
            assert!(BusUrl::port_of(&uri).is_err(), "{bad}");
        }
        for bad in [
            "ftp://a.b/",
            "https://a*b/",
            "https://u@a.b/",
            "/x",
            "https://a..b/",
        ] {
            assert!(BusUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn written_as_exactly_when_rendering_gives_the_same_uri() {
        for text in [
            "https://a.b:443/x?y=1",
            "https://a.b/x",
            "https://A.b:443/x",
            "http://a.b:443/x",
            "https://a.b:0443/x",
            "https://a.b:443",
            "https://a.b:443/x?",
            "https://a.b:443/x?y=2",
            "https://a.b:8080/x%20y",
            "https://a.b:0/",
        ] {
            let uri: Uri = text.parse().unwrap();
            let url = BusUrl::from_uri(&uri).unwrap();
            let same = url.to_uri().to_string() == uri.to_string();
            assert_eq!(url.is_written_as(&uri), same, "{text}");
            assert_eq!(BusUrl::port_of(&uri), Ok(url.port), "{text}");
        }
    }
}
