//! Merging Prometheus text expositions from many instances into one: every family's `HELP`
//! and `TYPE` once, then all of its samples (Microbus repeats them per instance; strict
//! parsers reject that), and the exposition as an HTTP response.

use std::collections::BTreeMap;

use prometheus::{Encoder, TextEncoder};

#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Whether sample `name` belongs to family `family` (histogram and summary series carry
/// suffixes).
fn belongs(name: &str, family: &str) -> bool {
    name == family
        || name
            .strip_prefix(family)
            .is_some_and(|s| matches!(s, "_bucket" | "_sum" | "_count" | "_total" | "_created"))
}

/// One exposition with each family once. Expositions that are not valid text are skipped
/// line by line; the result is sorted by family name.
pub fn merge<S: AsRef<str>>(texts: &[S]) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for text in texts {
        let mut current: Option<String> = None;
        for line in text.as_ref().lines() {
            let line = line.trim_end();
            let meta = [("# HELP ", true), ("# TYPE ", false)]
                .into_iter()
                .find_map(|(prefix, help)| line.strip_prefix(prefix).map(|rest| (rest, help)));
            if let Some((rest, is_help)) = meta {
                let name = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let family = families.entry(name.clone()).or_default();
                let slot = if is_help {
                    &mut family.help
                } else {
                    &mut family.kind
                };
                slot.get_or_insert_with(|| line.to_owned());
                current = Some(name);
            } else if line.is_empty() || line.starts_with('#') {
                continue;
            } else {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let name = &line[..name_end];
                let family = match &current {
                    Some(f) if belongs(name, f) => f.clone(),
                    _ => name.to_owned(),
                };
                families
                    .entry(family)
                    .or_default()
                    .samples
                    .push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for (_, f) in families {
        if f.samples.is_empty() {
            continue;
        }
        for line in [f.help, f.kind].into_iter().flatten() {
            out.push_str(&line);
            out.push('\n');
        }
        for s in f.samples {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

/// The content type of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request's `Accept-Encoding` allows gzip.
pub fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// An exposition as an HTTP response, gzipped when the scraper accepts it.
pub fn exposition_response(text: String, gzip: bool) -> http::Response<bytes::Bytes> {
    use std::io::Write;
    let mut res = http::Response::new(bytes::Bytes::new());
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(TEXT_CONTENT_TYPE),
    );
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(text.len() / 4),
            flate2::Compression::fast(),
        );
        if enc.write_all(text.as_bytes()).is_ok() {
            if let Ok(zipped) = enc.finish() {
                res.headers_mut().insert(
                    http::header::CONTENT_ENCODING,
                    http::HeaderValue::from_static("gzip"),
                );
                *res.body_mut() = bytes::Bytes::from(zipped);
                return res;
            }
        }
    }
    *res.body_mut() = bytes::Bytes::from(text);
    res
}

/// The text format of `families`, with bucket bounds written as Go writes them.
pub fn encode_families(families: Vec<prometheus::proto::MetricFamily>) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding of gathered metrics");
    go_bucket_bounds(String::from_utf8(out).expect("the text format is UTF-8"))
}

/// Bucket bounds (`le`) written as Go's client writes them (`1.048576e+06`, `5e-05`): `le`
/// is a label, so Go and Rust series of one histogram add up in `sum by (le)` only when the
/// text is the same.
fn go_bucket_bounds(text: String) -> String {
    const LE: &str = "le=\"";
    if !text.contains(LE) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + text.len() / 64);
    let mut rest = text.as_str();
    while let Some(at) = rest.find(LE) {
        let (head, tail) = rest.split_at(at + LE.len());
        out.push_str(head);
        let end = tail.find('"').unwrap_or(tail.len());
        let bound = &tail[..end];
        match bound.parse::<f64>() {
            Ok(v) if v.is_finite() => out.push_str(&go_float(v)),
            _ => out.push_str(bound),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)`: the shortest digits, in exponent form when the
/// exponent is below -4 or at least 6 (two exponent digits at least, with a sign).
fn go_float(v: f64) -> String {
    if v == 0.0 {
        return "0".to_owned();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if (-4..6).contains(&exp) {
        format!("{v}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_are_written_as_go_writes_them() {
        for (v, go) in [
            (0.005, "0.005"),
            (0.00005, "5e-05"),
            (0.0001, "0.0001"),
            (1.0, "1"),
            (60.0, "60"),
            (262144.0, "262144"),
            (1048576.0, "1.048576e+06"),
            (4194304.0, "4.194304e+06"),
            (16777216.0, "1.6777216e+07"),
            (1e6, "1e+06"),
        ] {
            assert_eq!(go_float(v), go, "{v}");
        }
        let text = "x_bucket{a=\"1\",le=\"1048576\"} 3\nx_bucket{le=\"+Inf\"} 4\n".to_owned();
        assert_eq!(
            go_bucket_bounds(text),
            "x_bucket{a=\"1\",le=\"1.048576e+06\"} 3\nx_bucket{le=\"+Inf\"} 4\n"
        );
    }

    #[test]
    fn families_merge_once() {
        let a = "# HELP x_seconds Time.\n# TYPE x_seconds histogram\nx_seconds_bucket{id=\"a\",le=\"1\"} 1\nx_seconds_sum{id=\"a\"} 0.5\nx_seconds_count{id=\"a\"} 1\n# HELP up Up.\n# TYPE up gauge\nup{id=\"a\"} 1\n";
        let b = "# HELP up Up.\n# TYPE up gauge\nup{id=\"b\"} 1\n# HELP x_seconds Time.\n# TYPE x_seconds histogram\nx_seconds_bucket{id=\"b\",le=\"1\"} 0\nx_seconds_sum{id=\"b\"} 0\nx_seconds_count{id=\"b\"} 0\n";
        let m = merge(&[a, b]);
        assert_eq!(m.matches("# HELP up").count(), 1);
        assert_eq!(m.matches("# TYPE x_seconds histogram").count(), 1);
        assert!(m.contains("up{id=\"a\"} 1\nup{id=\"b\"} 1\n"), "{m}");
        assert!(m.starts_with("# HELP up Up.\n# TYPE up gauge\n"), "{m}");
        assert_eq!(m.lines().filter(|l| l.starts_with("x_seconds")).count(), 6);
        assert_eq!(merge::<&str>(&[]), "");
        // Garbage lines do not break the rest.
        assert!(merge(&["garbage line\n# HELP up Up.\nup 1\n"]).contains("up 1"));
    }
}
