//! The Grafana dashboard in docs/ uses only metrics that exist, and shows every one of them.

use std::collections::BTreeSet;

use resumable_sse_core::metrics::ALL;

/// Every `sse_…` name in a PromQL expression, histogram suffixes removed.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sse_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| ALL.iter().any(|(n, _, _)| n == base))
            .unwrap_or(&name);
        out.push(base.to_owned());
    }
    out
}

#[test]
fn the_dashboard_uses_every_metric_and_no_other() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("docs/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut used = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            used.extend(names_in(target["expr"].as_str().expect("an expression")));
        }
    }
    let known: BTreeSet<String> = ALL.iter().map(|(n, _, _)| (*n).to_owned()).collect();
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses unknown metrics: {unknown:?}"
    );
    let missing: Vec<_> = known.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "the dashboard does not show: {missing:?}"
    );
}
