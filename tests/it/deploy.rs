//! The compose stack, the README's configuration table and the code agree.

use std::collections::BTreeSet;

fn config_keys() -> BTreeSet<String> {
    let v = serde_json::to_value(latchkey_core::Config::default()).unwrap();
    v.as_object().unwrap().keys().map(|k| format!("LATCHKEY_{}", k.to_uppercase())).collect()
}

fn latchkey_vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("LATCHKEY_") {
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].trim_end_matches('_').to_owned());
        rest = &tail[end..];
    }
    out
}

/// The top-level services of a compose file: two-space-indented keys under `services:`.
fn services(compose: &str) -> Vec<(String, String)> {
    let mut in_services = false;
    let mut current: Option<(String, String)> = None;
    let mut out = Vec::new();
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            in_services = line.trim_end() == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ') && l.trim_end().ends_with(':')) {
            if let Some(done) = current.take() {
                out.push(done);
            }
            current = Some((name.trim_end().trim_end_matches(':').to_owned(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out.extend(current);
    out
}

#[test]
fn compose_runs_the_documented_stack() {
    let compose = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml")).unwrap();
    let services = services(&compose);
    let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["postgres", "redis", "mailpit", "api", "worker", "prometheus"]);
    let body = |name: &str| services.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone()).unwrap();
    assert!(body("api").contains(r#"command: ["serve", "--no-worker"]"#));
    assert!(body("api").contains("\"8080:8080\"") && body("api").contains("LATCHKEY_LISTEN: 0.0.0.0:8080"));
    assert!(body("worker").contains(r#"command: ["worker"]"#));
    assert!(body("worker").contains("LATCHKEY_LISTEN: 0.0.0.0:9100"));
    assert!(body("mailpit").contains("8025"), "the SMTP catcher's web UI is published");
    assert!(compose.contains("LATCHKEY_SMTP_URL: smtp://mailpit:1025"));
    assert!(compose.contains("LATCHKEY_DATABASE_URL: postgres://latchkey:latchkey@postgres:5432/latchkey"));
    assert!(compose.contains("LATCHKEY_QUEUE_URL: redis://redis:6379/0"));
    // Every variable the stack sets is a real configuration key.
    let known = config_keys();
    for var in latchkey_vars(&compose) {
        assert!(known.contains(&var) || var == "LATCHKEY_ADMIN_PASSWORD", "{var} is not a configuration key");
    }
    let prometheus = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus.yml")).unwrap();
    assert!(
        prometheus.contains("api:8080") && prometheus.contains("worker:9100"),
        "Prometheus scrapes the API and the worker"
    );
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    assert!(dockerfile.contains("USER latchkey"), "the image runs as a non-root user");
}

#[test]
fn the_readme_documents_every_configuration_key() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let documented = latchkey_vars(&readme);
    for key in config_keys() {
        let argon = key.starts_with("LATCHKEY_ARGON2_") && documented.contains("LATCHKEY_ARGON2_MEMORY_KIB");
        assert!(documented.contains(&key) || argon, "{key} is missing from the README");
    }
    let lines: Vec<&str> = readme.lines().filter(|l| l.starts_with("cargo ")).take(2).collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with("cargo run --release -- serve") && lines[1].starts_with("cargo test --workspace"),
        "{lines:?}"
    );
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == "cargo test --workspace"), ".ci/run runs the README's test command");
}

#[test]
fn the_grafana_dashboard_queries_real_metrics() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let registered = latchkey_core::metrics::Metrics::new().unwrap().render().unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    assert!(exprs.len() >= 8);
    for expr in exprs {
        let metric = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("latchkey_"))
            .unwrap()
            .to_owned();
        let base = metric.trim_end_matches("_bucket").to_owned();
        let http = base.starts_with("latchkey_http_");
        assert!(http || registered.contains(&base), "{metric} is not exported");
    }
}
