//! The Grafana dashboards (`charts/ferry/dashboards/*.json`) are valid for Grafana and show
//! exactly the metrics Ferry declares: every panel and variable is checked (layout on the
//! 24-column grid, unique ids and uids, the `datasource` variable everywhere, a description on
//! every panel), every `ferry_*` metric a query names is declared by a service (`metrics.rs` of
//! each service, `libs/hosts/src/measured.rs`), and every declared metric is on some dashboard.
//!
//! That the services really serve these metrics, with data, is `prometheus.rs`: a real
//! Prometheus scrapes two nodes through a workload and evaluates every query. This test needs
//! no node, so it runs in a second and points at the dashboard line that is wrong.

mod grafana;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, ensure};

/// Where metrics are declared: one file per crate.
const DECLARED_IN: [&str; 6] = [
    "services/scheduler/src/metrics.rs",
    "services/file-collector/src/metrics.rs",
    "services/transfer/src/metrics.rs",
    "services/cert-handler/src/metrics.rs",
    "services/failover-coordinator/src/metrics.rs",
    "libs/hosts/src/measured.rs",
];

#[test]
fn every_dashboard_is_valid_and_shows_every_declared_metric_and_nothing_else() -> anyhow::Result<()> {
    let queries = grafana::load_all()?;
    let declared = declared_metrics()?;
    let histograms: BTreeSet<String> = declared
        .iter()
        .filter(|(_, kind)| **kind == "histogram")
        .map(|(name, _)| name.clone())
        .collect();
    let mut shown = BTreeSet::new();
    let mut unknown = Vec::new();
    for q in &queries {
        for series in grafana::ferry_series(&q.expr) {
            let family = grafana::family_of(&series, &histograms);
            if !declared.contains_key(&family) {
                unknown.push(format!("{}: {series}", q.origin));
            }
            shown.insert(family);
        }
    }
    ensure!(
        unknown.is_empty(),
        "queries name metrics no service declares: {unknown:#?}\ndeclared: {:?}",
        declared.keys().collect::<Vec<_>>()
    );
    let missing: Vec<&String> = declared.keys().filter(|m| !shown.contains(*m)).collect();
    ensure!(
        missing.is_empty(),
        "metrics declared but on no dashboard: {missing:?}"
    );
    eprintln!(
        "{} queries on {} dashboards show all {} declared metric families",
        queries.len(),
        grafana::DASHBOARDS.len(),
        declared.len()
    );
    Ok(())
}

/// Every `"ferry_…"` name given to a metric constructor in [`DECLARED_IN`], with its kind
/// (`histogram` for `HistogramOpts`, else `other`).
fn declared_metrics() -> anyhow::Result<BTreeMap<String, &'static str>> {
    let mut declared = BTreeMap::new();
    for file in DECLARED_IN {
        let path = grafana::workspace().join(file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {file}"))?;
        let mut rest = text.as_str();
        while let Some(at) = rest.find("\"ferry_") {
            let name_start = at + 1;
            let len = rest[name_start..]
                .find('"')
                .with_context(|| format!("{file}: an unterminated string"))?;
            let name = &rest[name_start..name_start + len];
            // The constructor call the literal is the first argument of.
            let before = rest[..at].trim_end();
            let constructor = before.rsplit(['\n', ' ']).next().unwrap_or_default();
            let is_metric = constructor.ends_with("::new(") || constructor.ends_with("::with_opts(");
            if is_metric && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                let kind = if constructor.starts_with("HistogramOpts") {
                    "histogram"
                } else {
                    "other"
                };
                declared.insert(name.to_string(), kind);
            }
            rest = &rest[name_start + len + 1..];
        }
    }
    ensure!(
        declared.len() >= 20,
        "found only {declared:?}: has the declaration style changed?"
    );
    Ok(declared)
}

#[test]
fn series_names_brackets_and_grafana_variables_are_read_from_promql() {
    assert_eq!(
        grafana::ferry_series("histogram_quantile(0.5, sum by (le) (rate(ferry_a_bucket[5m]))) / ferry_b"),
        vec!["ferry_a_bucket", "ferry_b"]
    );
    assert!(grafana::ferry_series("not_ferry_x").is_empty());
    assert!(grafana::balanced(
        r#"sum by (task) (increase(ferry_x{outcome="failed"}[1m]))"#
    ));
    assert!(!grafana::balanced("sum(rate(ferry_x[1m])"));
    assert!(!grafana::balanced(r#"ferry_x{a="b}"#));
    assert_eq!(
        grafana::substitute(
            r#"rate(ferry_x{host=~"$host"}[$__rate_interval]) + increase(ferry_y[$__range])"#
        ),
        r#"rate(ferry_x{host=~".+"}[30s]) + increase(ferry_y[10m])"#
    );
    assert_eq!(
        grafana::substitute("label_values(ferry_x_count, host)"),
        "count by (host) (ferry_x_count)"
    );
}
