//! A real Prometheus proves the dashboards and the alert rules. It scrapes two nodes (five
//! services each, in this process) on one NATS server over mutual TLS while they work: a local
//! task on a schedule, an upload to a real SFTP server, a task whose SFTP source folder is
//! missing (it fails every run), and a failover — the active node is shut down in manual mode,
//! "no active node" must fire, then the standby is promoted and works. Then every PromQL
//! expression of every dashboard panel and variable and of every alert rule is evaluated
//! through Prometheus's HTTP API and must return data, except the few listed in
//! [`EMPTY_WHEN_HEALTHY`], which must return nothing. The rule file is loaded as it is;
//! `promtool check config` passes on the generated configuration and `promtool check rules` and
//! `promtool test rules` on the rules.
//!
//! The node's NATS client certificate expires in 10 days and its CA in 10 years, so the
//! certificate alert's expression is checked both ways: it names the client certificate and
//! not the CA. Grafana's variables are replaced as `grafana::substitute` says.

mod grafana;
mod remote;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use ferry_service::Settings;
use ferry_service::settings::NatsAuth;
use ferry_testkit::peers::vsftpd::{TestPki, Validity};
use ferry_tests::{NatsServer, Node, SERVICES, eventually, free_port, http_get, settings};
use ferry_wire::{FailoverMode, FailoverStatus, PromoteRequest, Role, RunStatus, subjects};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Expressions that return nothing while Ferry is healthy, by alert name or `<file>: <panel
/// title>`; each must be empty at the end of the workload (and every other one must have data).
/// - `FerryNoActiveNode`: checked with data, and firing, while no node was active;
/// - `FerryMultipleActiveNodes`: must never have data;
/// - `FerryBacklogGrowing`: needs ten minutes of a growing queue (`promtool test rules` shows
///   it firing);
/// - retries and resumed bytes: only after a transient failure in the middle of a file (the
///   remote-hosts tests cause those);
/// - standby replication lag: only a standby site in mirror mode serves it (these two nodes
///   share one NATS server; `standby_mirror.rs` reads it from an attached standby);
/// - standby bundle age: only a file-based standby serves it (`standby_files.rs` reads it).
const EMPTY_WHEN_HEALTHY: [&str; 10] = [
    "FerryNoActiveNode",
    "FerryMultipleActiveNodes",
    "FerryBacklogGrowing",
    "hosts.json: Transfer retries by host",
    "hosts.json: Bytes not sent again thanks to resumed uploads",
    "FerryStandbyReplicationLagging",
    "failover.json: Standby replication lag",
    "failover.json: Standby changes not yet copied",
    "FerryStandbyBundleStale",
    "failover.json: Standby bundle age",
];

/// Metrics only a standby at another site serves, in mirror mode or file-based (see
/// [`EMPTY_WHEN_HEALTHY`]).
const STANDBY_ONLY: [&str; 3] = [
    "ferry_standby_replication_lag_seconds",
    "ferry_standby_replication_lag_messages",
    "ferry_standby_bundle_age_seconds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_and_alert_rule_has_data_in_a_real_prometheus() -> anyhow::Result<()> {
    let started = Instant::now();
    let queries = grafana::load_all()?;
    let alerts = grafana::alert_rules()?;
    let root = grafana::workspace();
    promtool(&["check", "rules", &root.join(grafana::RULES).to_string_lossy()])?;
    promtool(&["test", "rules", &root.join(grafana::RULE_TESTS).to_string_lossy()])?;

    let work = tempfile::Builder::new().prefix("ferry-prometheus-").tempdir()?;
    // A CA and a server certificate for 127.0.0.1 valid for 10 years, and the nodes' NATS client
    // certificate, valid for 10 days (the expiring-certificate alert must name it alone).
    let pki = TestPki::generate_valid(
        &work.path().join("pki"),
        Validity {
            ca_days: 3650,
            server_days: 3650,
            client_days: 10,
        },
    )?;
    let nats = NatsServer::start_with(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_cert.display()
    ))?;
    let url = format!("tls://127.0.0.1:{}", nats.port());
    let keymat = work.path().join("keymat");
    let (alpha_settings, alpha_ports) = node_settings("alpha", Role::Active, &url, &pki, &keymat);
    let (beta_settings, beta_ports) = node_settings("beta", Role::Standby, &url, &pki, &keymat);

    let prometheus = Prometheus::start(work.path(), &[("alpha", &alpha_ports), ("beta", &beta_ports)])?;
    let alpha = Node::start(alpha_settings).await?;
    let beta = Node::start(beta_settings).await?;

    // The workload: a scheduled local task, an upload to SFTP, a task failing every 2 s.
    let sftp = remote::Remote::sftp()?;
    sftp.make_folder("incoming").await;
    let dir = |name: &str| -> anyhow::Result<PathBuf> {
        let d = work.path().join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    let (local_in, local_out, up_in, broken_out) = (
        dir("local-in")?,
        dir("local-out")?,
        dir("up-in")?,
        dir("broken-out")?,
    );
    std::fs::write(local_in.join("a.csv"), "local file\n")?;
    // A folder on the SFTP server its user may not write to: files sent there fail.
    let locked_in = dir("locked-in")?;
    std::fs::write(locked_in.join("refused.csv"), "nobody may write this there\n")?;
    std::fs::create_dir_all(sftp.backing("locked").context("sftp serves a local folder")?)?;
    for i in 0..3 {
        std::fs::write(
            up_in.join(format!("up-{i}.csv")),
            format!("upload {i}\n").repeat(100),
        )?;
    }
    let config = format!(
        r#"{sftp_host}
[[host]]
name = "archive"
kind = "ftp"
address = "127.0.0.1"
port = 2121
user = "ferry"
password = "an-archive-password-1"
tls = "explicit"
ca_file = "{ca}"

[[task]]
name = "local-copy"
[[task.source]]
host = "local"
folder = "{local_in}"
[[task.destination]]
host = "local"
folder = "{local_out}"
[[task.schedule]]
cron = "*/2 * * * * *"

[[task]]
name = "upload"
[[task.source]]
host = "local"
folder = "{up_in}"
[[task.destination]]
host = "vault"
folder = "{incoming}"

[[task]]
name = "locked-out"
[[task.source]]
host = "local"
folder = "{locked_in}"
[[task.destination]]
host = "vault"
folder = "{locked}"

[[task]]
name = "broken"
[[task.source]]
host = "vault"
folder = "{missing}"
[[task.destination]]
host = "local"
folder = "{broken_out}"
[[task.schedule]]
cron = "*/2 * * * * *"
"#,
        sftp_host = sftp.host("vault", true),
        ca = pki.ca_cert.display(),
        local_in = local_in.display(),
        local_out = local_out.display(),
        up_in = up_in.display(),
        incoming = sftp.folder("incoming"),
        missing = sftp.folder("missing"),
        broken_out = broken_out.display(),
        locked_in = locked_in.display(),
        locked = sftp.folder("locked"),
    );
    alpha.apply(&config).await?;
    let upload = alpha.run_task("upload", Duration::from_secs(60)).await?;
    ensure!(
        (upload.status, upload.files_delivered) == (RunStatus::Succeeded, 3),
        "upload on alpha: {upload:?}"
    );
    // Three failed runs in a row reach FerryTaskFailing's threshold.
    prometheus
        .wait_for(
            "the broken task failing 3 runs in a row",
            r#"max(ferry_file_collector_consecutive_failed_runs{task="broken"}) >= 3"#,
            Duration::from_secs(40),
        )
        .await?;

    // Failover in manual mode: the active node stops, nobody is active until the standby is
    // promoted, and Prometheus says so.
    alpha.shutdown().await;
    let no_active = alerts
        .iter()
        .find(|(name, _)| name == "FerryNoActiveNode")
        .context("the rule FerryNoActiveNode")?;
    prometheus
        .wait_for("no node reporting active", &no_active.1, Duration::from_secs(20))
        .await?;
    let fired = Instant::now();
    eventually(Duration::from_secs(60), "FerryNoActiveNode firing", || async {
        prometheus
            .firing()
            .await
            .ok()
            .filter(|f| f.contains("FerryNoActiveNode"))
    })
    .await
    .with_context(|| format!("rules: {:?}", prometheus.api("/api/v1/rules")))?;
    eprintln!(
        "FerryNoActiveNode fired {:?} after the test first saw no active node",
        fired.elapsed()
    );
    let promoted: FailoverStatus = beta
        .call(
            subjects::service::FAILOVER_COORDINATOR,
            subjects::api::PROMOTE,
            &PromoteRequest {
                after_expiry: true,
                wait_ms: 15_000,
                by: "prometheus test".into(),
                skip_import: false,
            },
        )
        .await?;
    ensure!(promoted.role == Role::Active, "beta promoted: {promoted:?}");
    for i in 3..5 {
        std::fs::write(
            up_in.join(format!("up-{i}.csv")),
            format!("upload {i}\n").repeat(100),
        )?;
    }
    let upload = beta.run_task("upload", Duration::from_secs(60)).await?;
    ensure!(
        (upload.status, upload.files_delivered) == (RunStatus::Succeeded, 2),
        "upload on beta: {upload:?}"
    );
    let refused = beta.run_task("locked-out", Duration::from_secs(60)).await?;
    ensure!(
        (refused.status, refused.files_failed) == (RunStatus::Failed, 1),
        "a file sent to a folder the SFTP user may not write to fails: {refused:?}"
    );
    std::fs::write(local_in.join("b.csv"), "after the failover\n")?;
    eventually(
        Duration::from_secs(20),
        "a scheduled run on beta to copy b.csv",
        || async { local_out.join("b.csv").exists().then_some(()) },
    )
    .await?;
    // The scheduled tasks fire on beta now: wait until its series are scraped.
    prometheus
        .wait_for(
            "beta's scheduler lag, failures and delivered files",
            // The transfer's series too: under load one of its scrapes can miss, and the rates
            // below need two samples of it in their window (a rate of 0 is data).
            r#"sum(rate(ferry_scheduler_lag_seconds_count{node="beta"}[30s])) > 0 and on() sum(increase(ferry_file_collector_runs_total{node="beta", status="failed"}[30s])) > 0 and on() sum(rate(ferry_transfer_files_total{node="beta"}[30s]))"#,
            Duration::from_secs(30),
        )
        .await?;

    // Every expression, now.
    let mut checked = 0;
    let mut problems = Vec::new();
    let mut empty_seen = BTreeSet::new();
    let everything = queries
        .iter()
        .map(|q| (q.origin.clone(), q.expr.clone()))
        .chain(alerts.iter().cloned());
    for (origin, expr) in everything {
        let promql = grafana::substitute(&expr);
        let result = prometheus
            .query(&promql)
            .await
            .with_context(|| format!("{origin}: {promql}"))?;
        checked += 1;
        let empty_when_healthy = EMPTY_WHEN_HEALTHY.contains(&origin.as_str());
        if empty_when_healthy {
            empty_seen.insert(origin.clone());
        }
        match (empty_when_healthy, result.is_empty()) {
            (false, true) => problems.push(format!("{origin}: no data for {promql}")),
            (true, false) => problems.push(format!(
                "{origin}: should be empty but has {result:?} for {promql}"
            )),
            _ => {}
        }
    }
    let unknown: Vec<&str> = EMPTY_WHEN_HEALTHY
        .iter()
        .copied()
        .filter(|o| !empty_seen.contains(*o))
        .collect();
    ensure!(
        unknown.is_empty(),
        "EMPTY_WHEN_HEALTHY names no query: {unknown:?}"
    );
    ensure!(
        problems.is_empty(),
        "{} of {checked} expressions:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // An alert that is empty when healthy still names metrics that exist (a typo would make it
    // silent for good).
    for (name, expr) in &alerts {
        for metric in grafana::ferry_series(expr) {
            if STANDBY_ONLY.contains(&metric.as_str()) {
                continue;
            }
            let series = prometheus.query(&format!("count({metric})")).await?;
            ensure!(!series.is_empty(), "{name}: no series of {metric}");
        }
    }

    // The certificate alert both ways: the 10-day client certificate, not the 10-year CA or
    // server certificate; and the FTPS host's CA bundle from the stored configuration.
    let (_, expiring) = alerts
        .iter()
        .find(|(name, _)| name == "FerryCertificateExpiringSoon")
        .context("the rule FerryCertificateExpiringSoon")?;
    let subjects: BTreeSet<String> = prometheus
        .query(expiring)
        .await?
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["metric"]["source"].as_str().unwrap_or("?"),
                s["metric"]["subject"].as_str().unwrap_or("?")
            )
        })
        .collect();
    ensure!(
        subjects == BTreeSet::from(["nats.cert_file CN=ferry-test-client".to_string()]),
        "expiring within 30 days: {subjects:?}"
    );
    let sources: BTreeSet<String> = prometheus
        .query(r#"count by (source) (ferry_cert_handler_certificate_expiry_timestamp_seconds{node="beta"})"#)
        .await?
        .iter()
        .filter_map(|s| s["metric"]["source"].as_str().map(str::to_string))
        .collect();
    ensure!(
        sources
            == BTreeSet::from([
                "host/archive/ca_file".into(),
                "nats.ca_file".into(),
                "nats.cert_file".into()
            ]),
        "certificate sources: {sources:?}"
    );

    // Both directions between the dashboards and what the services served.
    let served = prometheus.metric_names().await?;
    let histograms: BTreeSet<String> = served
        .iter()
        .filter_map(|n| n.strip_suffix("_bucket").map(str::to_string))
        .collect();
    let served_families: BTreeSet<String> = served
        .iter()
        .map(|n| grafana::family_of(n, &histograms))
        .collect();
    let shown: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| grafana::ferry_series(&q.expr))
        .map(|s| grafana::family_of(&s, &histograms))
        .collect();
    // Served only after a transient failure (see EMPTY_WHEN_HEALTHY).
    let mut fault_only = BTreeSet::from([
        "ferry_transfer_retries_total".to_string(),
        "ferry_transfer_resumed_bytes_total".to_string(),
    ]);
    fault_only.extend(STANDBY_ONLY.map(str::to_string));
    let not_served: Vec<&String> = shown
        .iter()
        .filter(|m| !served_families.contains(*m) && !fault_only.contains(*m))
        .collect();
    ensure!(
        not_served.is_empty(),
        "dashboards query metrics no service served: {not_served:?}"
    );
    let not_shown: Vec<&String> = served_families.iter().filter(|m| !shown.contains(*m)).collect();
    ensure!(not_shown.is_empty(), "served but on no dashboard: {not_shown:?}");

    beta.shutdown().await;
    drop(prometheus);
    eprintln!(
        "{checked} expressions checked ({} empty when healthy), {} metric families served; {:?} in all",
        EMPTY_WHEN_HEALTHY.len(),
        served_families.len(),
        started.elapsed()
    );
    Ok(())
}

/// Settings of one test node over mutual TLS, sharing `keymat` with the other node (so either
/// opens the configuration's secrets), manual failover with a 3 s lease; and its metrics ports.
fn node_settings(
    id: &str,
    role: Role,
    url: &str,
    pki: &TestPki,
    keymat: &Path,
) -> (Settings, BTreeMap<&'static str, u16>) {
    let mut s = settings(url);
    s.node_id = id.to_string();
    s.keymat = Some(keymat.to_path_buf());
    s.nats = NatsAuth {
        ca_file: Some(pki.ca_cert.display().to_string()),
        cert_file: Some(pki.client_cert.display().to_string()),
        key_file: Some(pki.client_key.display().to_string()),
        ..NatsAuth::default()
    };
    s.failover_coordinator.mode = FailoverMode::Manual;
    s.failover_coordinator.initial_role = role;
    s.failover_coordinator.lease_ttl_ms = 3000;
    s.failover_coordinator.fence_margin_ms = 600;
    let ports: BTreeMap<&'static str, u16> = SERVICES.into_iter().map(|name| (name, free_port())).collect();
    let addr = |name: &str| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], ports[name])) };
    s.scheduler.metrics_addr = addr("scheduler");
    s.file_collector.metrics_addr = addr("file-collector");
    s.transfer.metrics_addr = addr("transfer");
    s.cert_handler.metrics_addr = addr("cert-handler");
    s.failover_coordinator.metrics_addr = addr("failover-coordinator");
    (s, ports)
}

fn promtool(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(PROMTOOL)
        .args(args)
        .output()
        .context("run promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {}: {text}", args.join(" "));
    Ok(text)
}

/// A real Prometheus on a random loopback port, storing in a temp dir, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrape every service of `nodes` (each target labelled with its node) every second,
    /// evaluate the rule file as it is every second.
    fn start(parent: &Path, nodes: &[(&str, &BTreeMap<&'static str, u16>)]) -> anyhow::Result<Prometheus> {
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir_in(parent)?;
        let rules = grafana::workspace().join(grafana::RULES).canonicalize()?;
        let mut groups = String::new();
        for (node, ports) in nodes {
            let targets: Vec<String> = ports.values().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
            groups.push_str(&format!(
                "      - targets: [{}]\n        labels:\n          node: {node}\n",
                targets.join(", ")
            ));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: ferry\n    static_configs:\n{groups}",
            rules.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        promtool(&["check", "config", &config_path.to_string_lossy()])?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        // A port picked by `free_port` can be taken before Prometheus binds it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log.try_clone()?)
                .spawn()
                .context("start prometheus")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait()? {
                    eprintln!("prometheus exited with {status}, trying another port");
                    break;
                }
                if matches!(http_get(port, "/-/ready"), Ok((200, _))) {
                    return Ok(Prometheus {
                        child,
                        port,
                        _dir: dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!(
            "prometheus did not become ready: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        )
    }

    fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = http_get(self.port, path)?;
        let value: Value = serde_json::from_str(&body).with_context(|| format!("{path}: {status} {body}"))?;
        ensure!(value["status"] == "success", "{path}: {body}");
        Ok(value["data"].clone())
    }

    /// The result of an instant query now: its samples (empty: no data).
    async fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        Ok(match &data["result"] {
            Value::Array(samples) => samples.clone(),
            // A scalar or a string is data.
            other => vec![other.clone()],
        })
    }

    /// Wait until `promql` has data.
    async fn wait_for(&self, what: &str, promql: &str, timeout: Duration) -> anyhow::Result<()> {
        eventually(timeout, what, || async {
            self.query(promql).await.ok().filter(|r| !r.is_empty())
        })
        .await
        .map(|_| ())
    }

    /// The names of the alerts firing now.
    async fn firing(&self) -> anyhow::Result<String> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str())
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Every `ferry_*` metric name Prometheus has scraped.
    async fn metric_names(&self) -> anyhow::Result<BTreeSet<String>> {
        let data = self.api("/api/v1/label/__name__/values")?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|n| n.starts_with("ferry_"))
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encode a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
