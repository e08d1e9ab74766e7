//! Subject codec (reference §1.2): how a URL becomes a NATS subject.
//!
//! `<plane>.<port>.<rev-host>.|.<METHOD>.<path-tokens>` for requests and subscriptions,
//! `<plane>.r.<rev-host>.<id>` for response inboxes.

use std::fmt::Write as _;

use super::error::WireError;
use super::hostname::is_valid_hostname;

/// The plane used when none is configured (`MICROBUS_PLANE`).
pub const DEFAULT_PLANE: &str = "microbus";

/// Port 0 in a subscription means "any port"; it is written `*`.
pub const ANY_PORT: u16 = 0;

/// The method that subscribes to every method; it is written `*`.
pub const ANY_METHOD: &str = "ANY";

/// Longest subject published or subscribed. NATS closes a connection whose protocol line
/// exceeds `max_control_line` (4 KiB by default); one overlong path must not cut off a client.
pub const MAX_SUBJECT_LEN: usize = 3072;

fn check_length(subject: String) -> Result<String, WireError> {
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(WireError::SubjectTooLong(subject.len()));
    }
    Ok(subject)
}

/// Whether `plane` matches Microbus's `^[0-9a-zA-Z]*$` (and is not empty).
pub fn is_valid_plane(plane: &str) -> bool {
    !plane.is_empty() && plane.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The subject a request to `host:port` with `method` and the *decoded* `path` is published to.
///
/// Every path segment is escaped, so no character of the path can act as a NATS wildcard or
/// token separator. The host must be a valid hostname.
pub fn request_subject(
    plane: &str,
    port: u16,
    host: &str,
    method: &str,
    path: &str,
) -> Result<String, WireError> {
    if !is_valid_hostname(host) {
        return Err(WireError::InvalidHostname(host.to_owned()));
    }
    validate_method(method)?;
    // Built in place, the subject its only allocation: this runs for every call.
    let mut subject = String::with_capacity(plane.len() + host.len() + path.len() + 24);
    subject.push_str(plane);
    subject.push('.');
    subject.push_str(itoa::Buffer::new().format(port));
    subject.push('.');
    push_reverse_host(&mut subject, host);
    subject.push_str(".|.");
    push_in_case(&mut subject, method, str::make_ascii_uppercase);
    push_path_tokens(&mut subject, path, false);
    check_length(subject)
}

/// `text` appended to `out` and brought to a case there (no `String` of its own).
fn push_in_case(out: &mut String, text: &str, to_case: fn(&mut str)) {
    let start = out.len();
    out.push_str(text);
    to_case(&mut out[start..]);
}

/// `host`'s labels in reverse order, lower-cased, appended to `out`: `www.Example.com` →
/// `com.example.www`.
/// By bytes: `rsplit('.')` went through a char searcher, ~150 instructions a label (two
/// subjects a call).
fn push_reverse_host(out: &mut String, host: &str) {
    let start = out.len();
    let mut end = host.len();
    while let Some(dot) = host.as_bytes()[..end].iter().rposition(|&b| b == b'.') {
        out.push_str(&host[dot + 1..end]);
        out.push('.');
        end = dot;
    }
    out.push_str(&host[..end]);
    str::make_ascii_lowercase(&mut out[start..]);
}

/// The subject a subscription for `host:port` with `method` and the path `spec` listens on.
///
/// `port` 0 and method `ANY` become `*`; a segment `{name}` becomes `*` and a last segment
/// `{name+}` becomes `>`.
pub fn subscription_subject(
    plane: &str,
    port: u16,
    host: &str,
    method: &str,
    spec: &str,
) -> Result<String, WireError> {
    if !is_valid_hostname(host) {
        return Err(WireError::InvalidHostname(host.to_owned()));
    }
    validate_path_spec(spec)?;
    let mut subject = String::with_capacity(plane.len() + host.len() + spec.len() + 24);
    subject.push_str(plane);
    subject.push('.');
    if port == ANY_PORT {
        subject.push('*');
    } else {
        let _ = write!(subject, "{port}");
    }
    subject.push('.');
    push_reverse_host(&mut subject, host);
    subject.push_str(".|.");
    let method = method.to_ascii_uppercase();
    if method == ANY_METHOD {
        subject.push('*');
    } else {
        validate_method(&method)?;
        subject.push_str(&method);
    }
    push_path_tokens(&mut subject, spec, true);
    check_length(subject)
}

/// The response inbox of instance `id` of `host`: `<plane>.r.<rev-host>.<id>`.
pub fn response_subject(plane: &str, host: &str, id: &str) -> Result<String, WireError> {
    if !is_valid_hostname(host) {
        return Err(WireError::InvalidHostname(host.to_owned()));
    }
    if !is_valid_instance_id(id) {
        return Err(WireError::InvalidInstanceId(id.to_owned()));
    }
    let mut subject = String::with_capacity(plane.len() + host.len() + id.len() + 4);
    subject.push_str(plane);
    subject.push_str(".r.");
    push_reverse_host(&mut subject, host);
    subject.push('.');
    push_in_case(&mut subject, id, str::make_ascii_lowercase);
    Ok(subject)
}

/// Instance ids are generated as 10 chars of `[0-9a-v]`; peers may use other alphanumerics,
/// but nothing that could split or wildcard a subject.
pub fn is_valid_instance_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn validate_method(method: &str) -> Result<(), WireError> {
    if method.is_empty() || method.len() > 32 || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(WireError::InvalidMethod(method.to_owned()));
    }
    Ok(())
}

/// Whether a path segment of a subscription spec is a `{name}` argument.
pub fn is_path_argument(segment: &str) -> bool {
    segment.len() >= 2 && segment.starts_with('{') && segment.ends_with('}')
}

/// Whether a path segment of a subscription spec is a greedy `{name+}` argument.
pub fn is_greedy_argument(segment: &str) -> bool {
    is_path_argument(segment) && segment.ends_with("+}")
}

/// A greedy argument must be the last segment; arguments must span whole segments.
fn validate_path_spec(spec: &str) -> Result<(), WireError> {
    let trimmed = spec.strip_prefix('/').unwrap_or(spec);
    let segments: Vec<&str> = trimmed.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        if is_greedy_argument(segment) && !is_last {
            return Err(WireError::InvalidPathSpec(format!(
                "greedy argument {segment} must be the last segment of {spec}"
            )));
        }
        if !is_path_argument(segment) && (segment.contains('{') || segment.contains('}')) {
            return Err(WireError::InvalidPathSpec(format!(
                "path argument in {spec} must span a whole segment"
            )));
        }
    }
    Ok(())
}

fn push_path_tokens(subject: &mut String, path: &str, is_subscription: bool) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() {
        subject.push_str("._");
        return;
    }
    for segment in trimmed.split('/') {
        subject.push('.');
        if segment.is_empty() {
            subject.push('_');
        } else if is_subscription && (segment == "*" || is_path_argument(segment)) {
            subject.push(if is_greedy_argument(segment) {
                '>'
            } else {
                '*'
            });
        } else {
            escape_segment(subject, segment);
        }
    }
}

/// Escape one path segment per code point: `A-Za-z0-9-` stay, `.` becomes `_`, anything else
/// becomes `%` and at least four lower-case hex digits (Go's `%04x` of the rune).
fn escape_segment(subject: &mut String, segment: &str) {
    if segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        // Most segments are plain words: one copy.
        subject.push_str(segment);
        return;
    }
    for c in segment.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' => subject.push(c),
            '.' => subject.push('_'),
            _ => {
                let _ = write!(subject, "%{:04x}", c as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_reverse_as_rsplit_joined_does() {
        for host in [
            "",
            ".",
            "a",
            "www.Example.COM",
            "a..b",
            "a.",
            ".a",
            "x.y.z.w.v",
        ] {
            let mut out = String::from("prefix.");
            push_reverse_host(&mut out, host);
            let labels: Vec<&str> = host.rsplit('.').collect();
            assert_eq!(
                out,
                format!("prefix.{}", labels.join(".").to_ascii_lowercase())
            );
        }
    }

    // The worked examples of reference §1.2 (from connector/subjects_test.go).
    #[test]
    fn golden_subjects() {
        let p = DEFAULT_PLANE;
        assert_eq!(
            subscription_subject(p, 443, "calc.example", "ANY", "/add").unwrap(),
            "microbus.443.example.calc.|.*.add"
        );
        assert_eq!(
            request_subject(p, 443, "calc.example", "GET", "/add").unwrap(),
            "microbus.443.example.calc.|.GET.add"
        );
        assert_eq!(
            request_subject(p, 80, "EXAMPLE.com", "GET", "/PATH/to/file.html").unwrap(),
            "microbus.80.com.example.|.GET.PATH.to.file_html"
        );
        assert_eq!(
            request_subject(p, 443, "example.com", "GET", "/PATH/").unwrap(),
            "microbus.443.com.example.|.GET.PATH._"
        );
        assert_eq!(
            request_subject(p, 443, "www.example.com", "OPTIONS", "").unwrap(),
            "microbus.443.com.example.www.|.OPTIONS._"
        );
        assert_eq!(
            request_subject(p, 443, "www.example.com", "OPTIONS", "/").unwrap(),
            "microbus.443.com.example.www.|.OPTIONS._"
        );
        assert_eq!(
            request_subject(p, 443, "example.com", "GET", "/empty///").unwrap(),
            "microbus.443.com.example.|.GET.empty._._._"
        );
        assert_eq!(
            subscription_subject(p, 0, "metrics.core", "GET", "/openapi.json").unwrap(),
            "microbus.*.core.metrics.|.GET.openapi_json"
        );
        assert_eq!(
            subscription_subject(p, 443, "example.com", "GET", "/foo/{foo}/bar/{bar}").unwrap(),
            "microbus.443.com.example.|.GET.foo.*.bar.*"
        );
        assert_eq!(
            subscription_subject(
                p,
                0,
                "example.com",
                "ANY",
                "/foo/{foo}/bar/{bar}/{appendix+}"
            )
            .unwrap(),
            "microbus.*.com.example.|.*.foo.*.bar.*.>"
        );
        assert_eq!(
            request_subject(p, 443, "example.com", "GET", "/foo/{foo}").unwrap(),
            "microbus.443.com.example.|.GET.foo.%007bfoo%007d"
        );
        assert_eq!(
            subscription_subject(p, 443, "www.example.com", "DELETE", "/{+}").unwrap(),
            "microbus.443.com.example.www.|.DELETE.>"
        );
        assert_eq!(
            response_subject(p, "www.EXAMPLE.com", "ABCD1234").unwrap(),
            "microbus.r.com.example.www.abcd1234"
        );
        assert_eq!(
            subscription_subject(p, 417, "eventsource.example", "POST", "/on-allow-register")
                .unwrap(),
            "microbus.417.example.eventsource.|.POST.on-allow-register"
        );
        assert_eq!(
            request_subject(p, 888, "all", "POST", "/ping").unwrap(),
            "microbus.888.all.|.POST.ping"
        );
        assert_eq!(
            subscription_subject(p, 443, "id123.calc.example", "ANY", "/add").unwrap(),
            "microbus.443.example.calc.id123.|.*.add"
        );
    }

    #[test]
    fn escapes_per_code_point() {
        let s = request_subject("microbus", 443, "a.b", "GET", "/x_!*{é>. 🦀").unwrap();
        assert_eq!(
            s,
            "microbus.443.b.a.|.GET.x%005f%0021%002a%007b%00e9%003e_%0020%1f980"
        );
    }

    #[test]
    fn literal_star_subscribes_to_one_token() {
        assert_eq!(
            subscription_subject("p", 443, "a.b", "GET", "/x/*/y").unwrap(),
            "p.443.b.a.|.GET.x.*.y"
        );
        // In a request, `*` is escaped and can never act as a wildcard.
        assert_eq!(
            request_subject("p", 443, "a.b", "GET", "/x/*/y").unwrap(),
            "p.443.b.a.|.GET.x.%002a.y"
        );
    }

    #[test]
    fn rejects_hostile_hosts_methods_and_specs() {
        for host in [
            "", "a.>", "*.b", "a b", "a..b", ".a", "a.", "é.com", "a|b", "%2e",
        ] {
            assert!(
                request_subject("p", 443, host, "GET", "/").is_err(),
                "host {host:?} accepted"
            );
        }
        for method in ["", "G.T", "G*", "GE T", "GET>"] {
            assert!(request_subject("p", 443, "a.b", method, "/").is_err());
        }
        assert!(subscription_subject("p", 443, "a.b", "GET", "/{x+}/y").is_err());
        assert!(subscription_subject("p", 443, "a.b", "GET", "/a{x}").is_err());
        assert!(response_subject("p", "a.b", "x.>").is_err());
        let long = "/a".repeat(10_000);
        assert!(matches!(
            request_subject("p", 443, "a.b", "GET", &long),
            Err(WireError::SubjectTooLong(_))
        ));
    }

    #[test]
    fn methods_and_plain_segments_in_any_case() {
        assert_eq!(
            request_subject("p", 8080, "A.b-C.d_e", "pAtCh", "/Some-Word/42/x.y").unwrap(),
            "p.8080.d_e.b-c.a.|.PATCH.Some-Word.42.x_y"
        );
        assert_eq!(response_subject("p", "A.B", "Id9").unwrap(), "p.r.b.a.id9");
    }
}
