//! Ferry's Grafana dashboards (`charts/ferry/dashboards/*.json`) as the tests read them: each
//! checked for what Grafana needs, and every query (panel targets and template variables) with
//! where it comes from. Shared by `dashboard.rs` and `prometheus.rs`.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};

pub const DIR: &str = "charts/ferry/dashboards";
pub const RULES: &str = "charts/ferry/rules/ferry.rules.yml";
pub const RULE_TESTS: &str = "charts/ferry/rules/ferry.rules.test.yml";

/// The dashboards, by file name; each must exist and be the only JSON files there.
pub const DASHBOARDS: [&str; 4] = [
    "overview.json",
    "failover.json",
    "hosts.json",
    "certificates.json",
];

/// One PromQL expression of a dashboard: `"<file>: <panel title>"` or `"<file>: variable <name>"`.
#[derive(Debug, Clone)]
pub struct Query {
    pub origin: String,
    pub expr: String,
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every dashboard, checked (see [`check`]), and all their queries.
pub fn load_all() -> anyhow::Result<Vec<Query>> {
    let dir = workspace().join(DIR);
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    on_disk.retain(|n| n.ends_with(".json"));
    on_disk.sort();
    let mut wanted: Vec<String> = DASHBOARDS.iter().map(|s| s.to_string()).collect();
    wanted.sort();
    ensure!(on_disk == wanted, "{DIR} holds {on_disk:?}, expected {wanted:?}");
    let mut uids = BTreeSet::new();
    let mut queries = Vec::new();
    for file in DASHBOARDS {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let dashboard: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        let uid = dashboard["uid"]
            .as_str()
            .with_context(|| format!("{file}: uid"))?;
        ensure!(uids.insert(uid.to_string()), "{file}: uid {uid} is used twice");
        queries.extend(check(file, &dashboard).context(file)?);
    }
    Ok(queries)
}

/// Check what Grafana needs — a title, a uid, a schema version, a Prometheus data-source variable
/// named `datasource` that every panel, query and query variable uses, unique panel ids, panels
/// on the 24-column grid that do not overlap, a description on every panel — and return the
/// dashboard's queries.
pub fn check(file: &str, dashboard: &serde_json::Value) -> anyhow::Result<Vec<Query>> {
    ensure!(dashboard["title"].is_string(), "a title");
    ensure!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion (36 or later: data sources by uid)"
    );
    let uses_variable = |ds: &serde_json::Value| ds["uid"] == "${datasource}" && ds["type"] == "prometheus";
    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("templating.list")?;
    ensure!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus data-source variable named `datasource`"
    );
    let mut queries = Vec::new();
    for v in variables {
        let name = v["name"].as_str().context("a variable without a name")?;
        if v["type"] == "query" {
            ensure!(
                uses_variable(&v["datasource"]),
                "variable {name}: its data source is not the `datasource` variable"
            );
            let expr = v["query"]
                .as_str()
                .or_else(|| v["query"]["query"].as_str())
                .with_context(|| format!("variable {name}: query"))?;
            queries.push(Query {
                origin: format!("{file}: variable {name}"),
                expr: expr.to_string(),
            });
        }
    }
    let panels = dashboard["panels"].as_array().context("panels")?;
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().context("every panel has a title")?;
        let id = panel["id"].as_u64().with_context(|| format!("{title}: id"))?;
        ensure!(ids.insert(id), "{title}: panel id {id} is not unique");
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64(),
            grid["y"].as_u64(),
            grid["w"].as_u64(),
            grid["h"].as_u64(),
        );
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else {
            anyhow::bail!("{title}: gridPos {grid} lacks x, y, w or h");
        };
        ensure!(
            w > 0 && h > 0 && x + w <= 24,
            "{title}: gridPos {grid} is not inside Grafana's 24 columns"
        );
        for cx in x..x + w {
            for cy in y..y + h {
                ensure!(
                    cells.insert((cx, cy)),
                    "{title}: overlaps another panel at ({cx}, {cy})"
                );
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        ensure!(
            uses_variable(&panel["datasource"]),
            "{title}: the panel's data source is not the `datasource` variable"
        );
        ensure!(
            panel["description"].as_str().is_some_and(|d| d.len() > 20),
            "{title}: a description says what question it answers"
        );
        let targets = panel["targets"]
            .as_array()
            .with_context(|| format!("{title}: targets"))?;
        ensure!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("{title}: expr"))?;
            ensure!(
                uses_variable(&target["datasource"]),
                "{title}: query {expr:?} does not use the `datasource` variable"
            );
            let r = target["refId"]
                .as_str()
                .with_context(|| format!("{title}: refId"))?;
            ensure!(refs.insert(r.to_string()), "{title}: refId {r} twice");
            ensure!(balanced(expr), "{title}: unbalanced brackets in {expr:?}");
            ensure!(
                !ferry_series(expr).is_empty(),
                "{title}: {expr:?} names no ferry_* metric"
            );
            queries.push(Query {
                origin: format!("{file}: {title}"),
                expr: expr.to_string(),
            });
        }
    }
    Ok(queries)
}

/// An expression as Prometheus evaluates it now, with Grafana's variables replaced as Grafana
/// would for a dashboard looking at the test's few minutes:
/// - `$__rate_interval` → `30s` (Grafana's is at least 4 scrape intervals; the test scrapes
///   every second, and 30 s holds every series of the node that is still up);
/// - `$__interval` → `15s`;
/// - `$__range` → `10m` (the whole test);
/// - `$host` (the Hosts dashboard's variable, "All") → `.+`;
/// - `label_values(METRIC, LABEL)` (a variable's query, Grafana's own syntax) → `count by
///   (LABEL) (METRIC)`, which has data exactly when the variable would have values.
///
/// `${datasource}` appears only in data-source fields, never in an expression.
pub fn substitute(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "30s")
        .replace("$__interval", "15s")
        .replace("$__range", "10m")
        .replace("$host", ".+");
    match expr
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|args| args.rsplit_once(','))
    {
        Some((metric, label)) => format!("count by ({}) ({})", label.trim(), metric.trim()),
        None => expr,
    }
}

/// The `ferry_*` identifiers in a PromQL expression.
pub fn ferry_series(expr: &str) -> Vec<String> {
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

/// The metric family of a series name: a histogram's `_bucket`, `_sum` and `_count` series
/// belong to the family `histograms` names.
pub fn family_of(series: &str, histograms: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = series.strip_suffix(suffix)
            && histograms.contains(base)
        {
            return base.to_string();
        }
    }
    series.to_string()
}

/// Brackets, braces and parentheses pair up (outside quoted label values).
pub fn balanced(expr: &str) -> bool {
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

/// Every alert of the rule file: (name, expression).
pub fn alert_rules() -> anyhow::Result<Vec<(String, String)>> {
    let path = workspace().join(RULES);
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let rules: serde_norway::Value =
        serde_norway::from_str(&text).with_context(|| format!("parse {RULES}"))?;
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().context("groups")? {
        for rule in group["rules"].as_sequence().context("rules")? {
            let name = rule["alert"].as_str().context("only alerting rules")?;
            let expr = rule["expr"].as_str().with_context(|| format!("{name}: expr"))?;
            alerts.push((name.to_string(), expr.trim().to_string()));
        }
    }
    Ok(alerts)
}
