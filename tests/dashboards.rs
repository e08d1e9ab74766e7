//! The telemetry stack's files: dashboards checked as JSON (their queries run against a real
//! Prometheus in `tests/stack.rs`); Prometheus config and alert rules through promtool; the
//! compose file validated and cross-checked.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            out.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 3,
        "gateway overview, service and system dashboards"
    );
    out
}

fn panels(d: &Value) -> Vec<&Value> {
    d["panels"].as_array().unwrap().iter().collect()
}

#[test]
fn dashboards_are_well_formed() {
    for (name, d) in dashboards() {
        let vars: HashMap<&str, &Value> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        // Datasources are variables whose defaults are the import inputs.
        let inputs: Vec<&str> = d["__inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert!(
            inputs.contains(&"DS_PROMETHEUS") && inputs.contains(&"DS_JAEGER"),
            "{name}"
        );
        assert_eq!(vars["datasource"]["type"], "datasource");
        assert_eq!(vars["datasource"]["query"], "prometheus");
        assert_eq!(vars["datasource"]["current"]["value"], "${DS_PROMETHEUS}");
        assert_eq!(vars["traces"]["query"], "jaeger");
        assert_eq!(vars["traces"]["current"]["value"], "${DS_JAEGER}");
        let resolvable = |ds: &Value, what: &str| {
            let uid = ds["uid"].as_str().unwrap_or_default();
            let var = uid
                .strip_prefix("${")
                .and_then(|u| u.strip_suffix('}'))
                .unwrap_or("");
            assert!(
                vars.get(var).is_some_and(|v| v["type"] == "datasource"),
                "{name}: {what} uses datasource {uid}"
            );
        };

        let mut ids = HashSet::new();
        let mut cells: HashSet<(u64, u64)> = HashSet::new();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: duplicate id in {title}"
            );
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_u64().unwrap(),
                g["y"].as_u64().unwrap(),
                g["w"].as_u64().unwrap(),
                g["h"].as_u64().unwrap(),
            );
            assert!(
                x + w <= 24 && w > 0 && h > 0,
                "{name}: {title} outside the grid"
            );
            for cx in x..x + w {
                for cy in y..y + h {
                    assert!(
                        cells.insert((cx, cy)),
                        "{name}: {title} overlaps another panel at {cx},{cy}"
                    );
                }
            }
            assert!(
                !p["description"].as_str().unwrap_or("").is_empty(),
                "{name}: {title} has no description"
            );
            assert!(
                !p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .unwrap_or("")
                    .is_empty(),
                "{name}: {title} has no unit"
            );
            resolvable(&p["datasource"], title);
            for t in p["targets"].as_array().unwrap() {
                resolvable(&t["datasource"], title);
                if p["type"] == "timeseries" {
                    assert!(
                        !t["legendFormat"].as_str().unwrap_or("").is_empty(),
                        "{name}: {title} has no legend"
                    );
                }
            }
            for link in p["fieldConfig"]["defaults"]["links"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert!(
                    link["url"].as_str().unwrap().contains("%24%7Btraces%7D")
                        || link["url"].as_str().unwrap().contains("${traces}"),
                    "{name}: {title} links to Jaeger"
                );
            }
        }
        for v in vars.values().filter(|v| v["type"] == "query") {
            resolvable(&v["datasource"], v["name"].as_str().unwrap());
        }
    }
    // Generated, and in sync with the generator.
    let before: Vec<_> = dashboards();
    let out = Command::new("python3")
        .arg(repo().join("scripts/gen-dashboards.py"))
        .output();
    if let Ok(out) = out {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            before,
            dashboards(),
            "dashboards/ differs from scripts/gen-dashboards.py: regenerate and commit"
        );
    }
}

fn compose() -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("compose/observability.yml")).unwrap(),
    )
    .unwrap()
}

fn run(cmd: &str, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    let dir = repo().join("compose/prometheus");
    let (ok, out) = run(
        "promtool",
        &["check", "config", "--syntax-only", "prometheus.yml"],
        &dir,
    );
    assert!(ok, "{out}");
    let (ok, out) = run("promtool", &["check", "rules", "rules/busgate.yml"], &dir);
    assert!(ok, "{out}");
    // Every alert fires and resolves in the unit tests.
    let (ok, out) = run(
        "promtool",
        &["test", "rules", "tests/busgate_test.yml"],
        &dir,
    );
    assert!(ok, "{out}");
    let rules = std::fs::read_to_string(dir.join("rules/busgate.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("tests/busgate_test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
}

#[test]
fn compose_file_validates_and_matches_the_repo() {
    let dir = repo().join("compose");
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    // Published ports are exactly the stack's.
    let mut published = BTreeSet::new();
    for (_, svc) in services {
        for p in svc["ports"].as_sequence().into_iter().flatten() {
            let host = p
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .parse::<u16>()
                .unwrap();
            assert!(published.insert(host), "port {host} published twice");
        }
    }
    let expected: BTreeSet<u16> = [4222, 8222, 8080, 2525, 9090, 3000, 16686, 4317, 4318, 9464]
        .into_iter()
        .collect();
    assert_eq!(published, expected);
    // Images pinned by tag, never latest.
    for (name, svc) in services {
        if let Some(image) = svc["image"].as_str().filter(|_| svc.get("build").is_none()) {
            let tag = image.rsplit(':').next().unwrap();
            assert!(
                image.contains(':') && tag != "latest",
                "{name:?} image {image} is not pinned"
            );
        }
    }
    // Every file mounted from the repo exists.
    for (name, svc) in services {
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let source = v.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    dir.join(source).exists(),
                    "{name:?} mounts {source}, which does not exist"
                );
            }
        }
    }
    // Prometheus scrapes busgate's admin port and its ingress, as compose runs them.
    let prom: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let busgate = &c["services"]["busgate"];
    let command: Vec<&str> = busgate["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let container_ports: Vec<String> = busgate["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().rsplit(':').next().unwrap().to_owned())
        .collect();
    // The SMTP ingress listens where its environment says (not 25: the image runs as an
    // unprivileged user), and that port is published.
    let smtp_port = busgate["environment"]["BUSGATE_SMTP_INGRESS_PORT"]
        .as_str()
        .expect("compose sets BUSGATE_SMTP_INGRESS_PORT, as a string");
    assert!(
        container_ports.contains(&smtp_port.to_owned()),
        "busgate does not publish its SMTP port {smtp_port}"
    );
    for job in prom["scrape_configs"].as_sequence().unwrap() {
        for target in job["static_configs"][0]["targets"].as_sequence().unwrap() {
            let (host, port) = target.as_str().unwrap().split_once(':').unwrap();
            assert!(
                c["services"].get(host).is_some(),
                "scrape target {host} is no compose service"
            );
            assert!(
                container_ports.contains(&port.to_owned()),
                "busgate does not publish {port}"
            );
            assert!(
                command
                    .iter()
                    .any(|a| a.ends_with(port) || a.contains(&format!(":{port}"))),
                "busgate does not listen on {port}: {command:?}"
            );
        }
    }
    // Grafana's datasources point at compose services.
    let ds = std::fs::read_to_string(dir.join("grafana/provisioning/datasources/datasources.yml"))
        .unwrap();
    assert!(ds.contains("url: http://prometheus:9090") && ds.contains("url: http://jaeger:16686"));
    // The files validate with docker-compose and against the compose-spec schema.
    let (ok, out) = run(
        "docker-compose",
        &["-f", "observability.yml", "config", "-q"],
        &dir,
    );
    assert!(ok, "docker-compose config: {out}");
    let (ok, out) = run(
        "check-jsonschema",
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "observability.yml",
        ],
        &dir,
    );
    assert!(ok, "compose-spec schema: {out}");
}
