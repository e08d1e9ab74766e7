//! Merging Prometheus text expositions from many instances into one: every family's `HELP`
//! and `TYPE` once, then all of its samples (Microbus repeats them per instance; strict
//! parsers reject that).

use std::collections::BTreeMap;

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

#[cfg(test)]
mod tests {
    use super::*;

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
