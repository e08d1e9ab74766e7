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
    // One pass over the bytes (this runs several times per request): a dot may only end a
    // non-empty label, and the last label must not be empty either.
    let mut label_empty = true;
    for &b in host.as_bytes() {
        if b == b'.' {
            if label_empty {
                return false;
            }
            label_empty = true;
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            label_empty = false;
        } else {
            return false;
        }
    }
    !label_empty
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
        assert!(is_valid_hostname(&"a".repeat(253)));
    }

    #[test]
    fn agrees_with_the_label_rule() {
        // The one-pass check against the rule as written: non-empty labels of [a-zA-Z0-9_-].
        let by_labels = |host: &str| {
            !host.is_empty()
                && host.len() <= MAX_HOSTNAME_LEN
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                })
        };
        let alphabet = ["a", "Z", "0", "_", "-", ".", "*", " ", "é", ">"];
        let mut hosts = vec![String::new()];
        for _ in 0..4 {
            hosts = hosts
                .iter()
                .flat_map(|h| alphabet.iter().map(move |c| format!("{h}{c}")))
                .collect();
            for host in &hosts {
                assert_eq!(is_valid_hostname(host), by_labels(host), "{host:?}");
            }
        }
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
