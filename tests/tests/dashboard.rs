//! The Grafana dashboard (`charts/ferry/dashboards/ferry.json`) shows what a running node
//! exposes: every `ferry_*` metric its queries name is served by one of the five services, every
//! metric the services serve is on the dashboard, and the JSON is well-formed for Grafana.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_tests::{NatsServer, Node, ferry_cli, free_port, http_get, local_task, settings};
use ferry_wire::RunStatus;

const DASHBOARD: &str = "charts/ferry/dashboards/ferry.json";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_every_metric_a_node_serves_and_nothing_else() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join(DASHBOARD)).with_context(|| format!("read {DASHBOARD}"))?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {DASHBOARD}"))?;
    let queried = check_layout_and_collect_queries(&dashboard)?;

    // A node that has run a task, so that the metrics labelled by task, outcome, status and
    // trigger have series.
    let nats = NatsServer::start()?;
    let mut s = settings(&nats.url());
    let ports: BTreeMap<&str, u16> = [
        "scheduler",
        "file-collector",
        "transfer",
        "cert-handler",
        "failover-coordinator",
    ]
    .into_iter()
    .map(|name| (name, free_port()))
    .collect();
    let addr = |name: &str| -> std::net::SocketAddr {
        format!("127.0.0.1:{}", ports[name]).parse().expect("an address")
    };
    s.scheduler.metrics_addr = addr("scheduler");
    s.file_collector.metrics_addr = addr("file-collector");
    s.transfer.metrics_addr = addr("transfer");
    s.cert_handler.metrics_addr = addr("cert-handler");
    s.failover_coordinator.metrics_addr = addr("failover-coordinator");
    let node = Node::start(s).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("a.txt"), b"hello")?;
    node.apply(&local_task("demo", &src, &dst, "", "")).await?;
    let finished = node.run_task("demo", Duration::from_secs(60)).await?;
    ensure!(finished.status == RunStatus::Succeeded, "{:?}", finished.error);
    // And has changed roles (demote, then promote again), for the role-transition counter.
    for args in [["failover", "demote"], ["failover", "promote"]] {
        let out = ferry_cli(&nats.url(), &args, work.path());
        ensure!(
            out.status.success(),
            "ferry {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Metric families as the services declare them (`# TYPE name kind`).
    let mut served: BTreeMap<String, String> = BTreeMap::new();
    for (name, port) in &ports {
        let (status, body) = http_get(*port, "/metrics").with_context(|| format!("{name} /metrics"))?;
        ensure!(status == 200, "{name} /metrics answered {status}");
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ")
                && let Some((family, kind)) = rest.split_once(' ')
                && family.starts_with("ferry_")
            {
                served.insert(family.to_string(), kind.to_string());
            }
        }
    }
    node.shutdown().await;

    // A histogram's series are `<family>_bucket`, `_sum` and `_count`.
    let family_of = |series: &str| -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = series.strip_suffix(suffix)
                && served.get(base).map(String::as_str) == Some("histogram")
            {
                return base.to_string();
            }
        }
        series.to_string()
    };
    let shown: BTreeSet<String> = queried.iter().map(|s| family_of(s)).collect();
    let unknown: Vec<&String> = shown.iter().filter(|f| !served.contains_key(*f)).collect();
    ensure!(
        unknown.is_empty(),
        "the dashboard queries metrics no service serves: {unknown:?} (served: {:?})",
        served.keys().collect::<Vec<_>>()
    );
    let missing: Vec<&String> = served.keys().filter(|f| !shown.contains(*f)).collect();
    ensure!(
        missing.is_empty(),
        "metrics served but not on the dashboard: {missing:?}"
    );
    eprintln!(
        "{} metric families served and shown: {:?}",
        served.len(),
        served.keys().collect::<Vec<_>>()
    );
    Ok(())
}

/// Check what Grafana needs (unique panel ids, a 24-column grid, every query on the dashboard's
/// Prometheus data-source variable) and return the `ferry_*` series every query names.
fn check_layout_and_collect_queries(dashboard: &serde_json::Value) -> anyhow::Result<BTreeSet<String>> {
    ensure!(
        dashboard["uid"].is_string() && dashboard["title"].is_string(),
        "uid and title"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("templating.list")?;
    ensure!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus data-source variable named `datasource`"
    );
    let panels = dashboard["panels"].as_array().context("panels")?;
    let mut ids = BTreeSet::new();
    let mut series = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().context("every panel has a title")?;
        let id = panel["id"].as_u64().with_context(|| format!("{title}: id"))?;
        ensure!(ids.insert(id), "{title}: panel id {id} is not unique");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        ensure!(
            matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24)
                && grid["y"].is_u64()
                && grid["h"].is_u64(),
            "{title}: gridPos {grid} is not inside Grafana's 24 columns"
        );
        if panel["type"] == "row" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == "${datasource}",
            "{title}: the panel's data source is not the `datasource` variable"
        );
        ensure!(
            panel["description"].is_string(),
            "{title}: a description says what it shows"
        );
        let targets = panel["targets"]
            .as_array()
            .with_context(|| format!("{title}: targets"))?;
        ensure!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("{title}: expr"))?;
            ensure!(
                target["datasource"]["uid"] == "${datasource}",
                "{title}: query {expr:?} does not use the `datasource` variable"
            );
            ensure!(balanced(expr), "{title}: unbalanced brackets in {expr:?}");
            let named = ferry_series(expr);
            ensure!(!named.is_empty(), "{title}: {expr:?} names no ferry_* metric");
            series.extend(named);
        }
    }
    Ok(series)
}

/// The `ferry_*` identifiers in a PromQL expression.
fn ferry_series(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ferry_") {
        let preceded = rest[..at].chars().next_back().is_some_and(is_ident);
        let end = rest[at..]
            .find(|c: char| !is_ident(c))
            .map_or(rest.len(), |n| at + n);
        if !preceded {
            found.push(rest[at..end].to_string());
        }
        rest = &rest[end..];
    }
    found
}

/// Brackets, braces and parentheses pair up (outside quoted label values).
fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && !quoted
}

#[test]
fn series_names_and_brackets_are_read_from_promql() {
    assert_eq!(
        ferry_series("histogram_quantile(0.5, sum by (le) (rate(ferry_a_bucket[5m]))) / ferry_b"),
        vec!["ferry_a_bucket", "ferry_b"]
    );
    assert!(ferry_series("not_ferry_x").is_empty());
    assert!(balanced(
        r#"sum by (task) (increase(ferry_x{outcome="failed"}[1m]))"#
    ));
    assert!(!balanced("sum(rate(ferry_x[1m])"));
    assert!(!balanced(r#"ferry_x{a="b}"#));
}
