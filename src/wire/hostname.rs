//! Hostnames on the bus (reference §1.1): `^[a-z0-9_\-]+(\.[a-z0-9_\-]+)*$` after lower-casing.

/// The reserved hostname that every connector also answers on for control requests.
pub const ALL_HOSTS: &str = "all";

/// Longest hostname accepted; NATS subjects have no hard limit but nothing legitimate is longer.
pub const MAX_HOSTNAME_LEN: usize = 253;

/// Whether `host` is a valid bus hostname (case-insensitive).
pub fn is_valid_hostname(host: &str) -> bool {
    if host.is_empty() || host.len() > MAX_HOSTNAME_LEN {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Whether `host` may be a service's own hostname: valid, and not `all` or `*.all`.
pub fn is_valid_service_hostname(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    is_valid_hostname(&lower) && lower != ALL_HOSTS && !lower.ends_with(".all")
}

/// The hostname lower-cased with its labels reversed: `www.example.com` → `com.example.www`.
pub fn reverse_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    let mut out = String::with_capacity(lower.len());
    for (i, label) in lower.rsplit('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(label);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_hostnames() {
        for ok in ["a", "calc.example", "My-Host_1.Example", "all", "x.all"] {
            assert!(is_valid_hostname(ok), "{ok}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a b", "a*", "a.>", "é", "a/b", "a:1", "%2e",
        ] {
            assert!(!is_valid_hostname(bad), "{bad}");
        }
        assert!(!is_valid_hostname(&"a".repeat(254)));
    }

    #[test]
    fn reserves_all() {
        assert!(!is_valid_service_hostname("all"));
        assert!(!is_valid_service_hostname("ALL"));
        assert!(!is_valid_service_hostname("x.all"));
        assert!(is_valid_service_hostname("allx.example"));
    }

    #[test]
    fn reverses() {
        assert_eq!(reverse_host("www.Example.com"), "com.example.www");
        assert_eq!(reverse_host("single"), "single");
    }
}
