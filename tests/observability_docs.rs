//! docs/observability.md is what the code generates (every `/status` field
//! and metric), and the Grafana dashboard in docs/ charts every metric and
//! only metrics that exist. `UPDATE_DOCS=1 cargo test --test
//! observability_docs` rewrites the page.

use std::path::Path;

use walrep::status::metrics::{MetricKind, METRICS, PREFIX};

fn doc(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name)
}

#[test]
fn the_committed_reference_is_current() {
    let text = walrep::status::reference::reference_markdown();
    let path = doc("observability.md");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/observability.md is stale; regenerate it with\n  UPDATE_DOCS=1 cargo test --test observability_docs"
    );
    for m in METRICS {
        assert!(
            text.contains(&format!("`{PREFIX}_{}", m.name)),
            "{} undocumented",
            m.name
        );
    }
}

#[test]
fn the_grafana_dashboard_charts_every_metric_and_no_other() {
    let text = std::fs::read_to_string(doc("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    assert!(!exprs.is_empty());
    let exposed: Vec<String> = METRICS
        .iter()
        .map(|m| {
            let suffix = if m.kind == MetricKind::Counter {
                "_total"
            } else {
                ""
            };
            format!("{PREFIX}_{}{suffix}", m.name)
        })
        .collect();
    for name in &exposed {
        assert!(
            exprs.iter().any(|e| e.contains(&format!("{name}{{"))),
            "{name} is on no panel of the dashboard"
        );
    }
    for e in &exprs {
        let used: Vec<&str> = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("walrep_"))
            .collect();
        for u in used {
            assert!(
                exposed.iter().any(|n| n == u),
                "the dashboard queries {u}, which walrep does not expose"
            );
        }
    }
}
