//! Mirror mode (issue 12): a standby site with its own NATS whose stores are continuous
//! JetStream mirrors of the primary's, driven through the operator CLI.
//!
//! Two sites, each a real nats-server with its own JetStream domain (`site_p`, `site_s`), joined
//! by a leaf node that denies Ferry's subjects both ways; on each a node of five real service
//! processes (`alpha` on P, active; `beta` on S, standby, manual mode), sharing one keymat as
//! after `ferry keymat import`. `ferry standby attach` on beta makes its stores mirrors of
//! alpha's: an apply, a generated PGP key and a delivered file's new-files-only state show up on
//! beta within two seconds; writes on beta are refused with the reason; alpha's site dies;
//! `ferry failover promote` on beta detaches and promotes, and beta runs alpha's task without
//! re-sending the file alpha delivered; alpha comes back disabled and is attached the other way
//! round.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use ferry_tests::pair::{NodeSetup, ProcNode};
use ferry_tests::{NatsServer, bin_path, eventually, free_port, http_get, local_task, metric_sum};
use ferry_wire::standby::{ReplicationMode, StandbyStatus};
use ferry_wire::{FailoverStatus, Role, RunFinished, RunStatus, topology};

const ALPHA: &str = "alpha";
const BETA: &str = "beta";
const TASK: &str = "payroll";
const START: Duration = Duration::from_secs(60);
/// How soon a change on the primary must be visible on the standby.
const VISIBLE: Duration = Duration::from_secs(2);
/// Subjects the leaf node between the sites must not pass (each site's streams would capture
/// the other's messages).
const DENY: &str = r#"["ferry.>", "$KV.>", "$O.>"]"#;

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Sites {
    work: tempfile::TempDir,
    nats_p: NatsServer,
    nats_s: NatsServer,
    alpha: Option<ProcNode>,
    beta: Option<ProcNode>,
    beta_metrics: u16,
}

impl Sites {
    fn setup(work: &Path, id: &str, nats_url: String, initial_role: &'static str) -> NodeSetup {
        NodeSetup {
            id: id.to_string(),
            nats_url,
            data_dir: work.join(format!("data-{id}")),
            ledger: None,
            mode: "manual",
            initial_role,
            lease_ttl_ms: 3000,
            fence_margin_ms: 600,
            replicas: 1,
            start_with_scheduler_disabled: false,
            // One keymat for both, as after `ferry keymat import` on the standby.
            keymat: Some(work.join("keymat")),
            nats_keys: None,
        }
    }

    async fn start() -> anyhow::Result<Self> {
        let work = tempfile::Builder::new().prefix("ferry-mirror-").tempdir()?;
        let leaf = free_port();
        let nats_p =
            NatsServer::start_site("site_p", &format!("leafnodes {{ listen: \"127.0.0.1:{leaf}\" }}"))?;
        let nats_s = NatsServer::start_site(
            "site_s",
            &format!(
                "leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf}\", deny_imports: {DENY}, deny_exports: {DENY} }} ] }}"
            ),
        )?;
        let alpha = ProcNode::start(
            Self::setup(work.path(), ALPHA, nats_p.url(), "active"),
            None,
            &work.path().join("logs-alpha"),
        )?;
        let mut sites = Self {
            alpha: Some(alpha),
            beta: None,
            beta_metrics: free_port(),
            work,
            nats_p,
            nats_s,
        };
        sites
            .wait_role(ALPHA, "active", |s| s.role == Role::Active && s.lease_valid)
            .await?;
        // beta starts once alpha has created the shared keymat.
        sites.beta = Some(ProcNode::start_with_env(
            Self::setup(sites.work.path(), BETA, sites.nats_s.url(), "standby"),
            None,
            &sites.work.path().join("logs-beta"),
            BTreeMap::from([(
                "FERRY_FAILOVER_COORDINATOR__METRICS_ADDR".to_string(),
                format!("127.0.0.1:{}", sites.beta_metrics),
            )]),
        )?);
        sites
            .wait_role(BETA, "standby", |s| s.role == Role::Standby)
            .await?;
        Ok(sites)
    }

    fn url(&self, node: &str) -> String {
        if node == ALPHA {
            self.nats_p.url()
        } else {
            self.nats_s.url()
        }
    }

    fn ferry(&self, node: &str, args: &[&str]) -> Output {
        Command::new(bin_path("ferry"))
            .arg("--nats-url")
            .arg(self.url(node))
            .arg("--node")
            .arg(node)
            .args(args)
            .current_dir(self.work.path())
            .env_remove("FERRY_CONFIG")
            .output()
            .expect("run the ferry CLI")
    }

    fn try_json<T: DeserializeOwned>(&self, node: &str, args: &[&str]) -> Option<T> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ferry(node, &all);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn json<T: DeserializeOwned>(&self, node: &str, args: &[&str]) -> T {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ferry(node, &all);
        assert!(
            out.status.success(),
            "`ferry --node {node} {}` failed: {}\n{}",
            all.join(" "),
            describe(&out),
            self.logs()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "`ferry {}` printed no JSON: {e}\n{}",
                all.join(" "),
                describe(&out)
            )
        })
    }

    /// A command that must fail: its stderr.
    fn refused(&self, node: &str, args: &[&str]) -> String {
        let out = self.ferry(node, args);
        assert!(
            !out.status.success(),
            "`ferry --node {node} {}` succeeded: {}",
            args.join(" "),
            describe(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    async fn wait_role(
        &self,
        node: &str,
        what: &str,
        wanted: impl Fn(&FailoverStatus) -> bool,
    ) -> anyhow::Result<FailoverStatus> {
        eventually(START, &format!("{node}: {what}"), || async {
            self.try_json::<FailoverStatus>(node, &["failover", "status"])
                .filter(&wanted)
        })
        .await
        .with_context(|| self.logs())
    }

    fn logs(&self) -> String {
        format!(
            "alpha logs:\n{}\nbeta logs:\n{}",
            self.alpha.as_ref().map(|a| a.log_tails(25)).unwrap_or_default(),
            self.beta.as_ref().map(|b| b.log_tails(25)).unwrap_or_default()
        )
    }

    fn write_task(&self, extra: &str) -> anyhow::Result<(PathBuf, PathBuf, String)> {
        let (src, dst) = (self.work.path().join("inbox"), self.work.path().join("outbox"));
        std::fs::create_dir_all(&src)?;
        std::fs::create_dir_all(&dst)?;
        let file = self.work.path().join("ferry.toml");
        std::fs::write(
            &file,
            format!(
                "{}{extra}",
                local_task(TASK, &src, &dst, "new_files_only = true", "")
            ),
        )?;
        Ok((src, dst, file.to_string_lossy().into_owned()))
    }
}

/// A client of one site's NATS, for looking at its stores directly.
async fn js(url: &str) -> anyhow::Result<async_nats::jetstream::Context> {
    Ok(async_nats::jetstream::new(async_nats::connect(url).await?))
}

/// The last sequence of a bucket's stream (its newest KV revision).
async fn last_seq(js: &async_nats::jetstream::Context, bucket: &str) -> anyhow::Result<u64> {
    Ok(js
        .get_stream(format!("KV_{bucket}"))
        .await?
        .info()
        .await?
        .state
        .last_sequence)
}

/// Every key of a bucket.
async fn keys(js: &async_nats::jetstream::Context, bucket: &str) -> anyhow::Result<BTreeSet<String>> {
    let kv = js.get_key_value(bucket).await?;
    let mut out = BTreeSet::new();
    if let Ok(mut k) = kv.keys().await {
        while let Some(key) = k.next().await {
            out.insert(key?);
        }
    }
    Ok(out)
}

/// Wait until `bucket` on the standby holds the primary's newest revision; how long it took.
async fn replicated(
    primary: &async_nats::jetstream::Context,
    standby: &async_nats::jetstream::Context,
    bucket: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let want = last_seq(primary, bucket).await?;
    eventually(
        VISIBLE,
        &format!("{bucket} revision {want} on the standby"),
        || async { (last_seq(standby, bucket).await.ok()? >= want).then_some(()) },
    )
    .await?;
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mirrored_standby_follows_the_primary_refuses_writes_and_takes_over_without_resending()
-> anyhow::Result<()> {
    let mut sites = Sites::start().await?;
    let (js_p, js_s) = (js(&sites.nats_p.url()).await?, js(&sites.nats_s.url()).await?);

    // The active node refuses to be attached: its stores would be replaced.
    let err = sites.refused(ALPHA, &["standby", "attach", "--primary", &sites.nats_s.url()]);
    assert!(err.contains("node alpha is active"), "{err}");

    let attached: StandbyStatus = sites.json(BETA, &["standby", "attach", "--primary", &sites.nats_p.url()]);
    assert_eq!(attached.mode, ReplicationMode::Mirror, "{attached:?}");
    assert_eq!(attached.primary_domain.as_deref(), Some("site_p"));
    assert_eq!(attached.buckets.len(), topology::MIRRORED.len());

    // A configuration applied on the primary is on the standby within two seconds, and the
    // standby's CLI shows its task.
    let (src, dst, file) = sites.write_task("")?;
    let applied = sites.ferry(ALPHA, &["apply", "-f", &file]);
    assert!(
        applied.status.success(),
        "{}\n{}",
        describe(&applied),
        sites.logs()
    );
    let took = replicated(&js_p, &js_s, topology::KV_CONFIG).await?;
    eprintln!("configuration visible on the standby after {took:?}");
    let shown = sites.ferry(BETA, &["task", "show", TASK]);
    assert!(shown.status.success(), "{}", describe(&shown));

    // A PGP key generated on the primary is in the standby's ring.
    let generated: ferry_wire::keys::PgpKeyInfo = sites.json(
        ALPHA,
        &[
            "pgp",
            "generate",
            "--name",
            "Payroll",
            "--email",
            "payroll@example.com",
        ],
    );
    replicated(&js_p, &js_s, topology::KV_PGP_SECRET).await?;
    let ring: Vec<ferry_wire::keys::PgpKeyInfo> = sites.json(BETA, &["pgp", "list"]);
    assert!(
        ring.iter()
            .any(|k| k.fingerprint == generated.fingerprint && k.has_secret),
        "{ring:?}"
    );

    // A file delivered by the primary: its new-files-only state is on the standby.
    std::fs::write(src.join("a.txt"), b"first payroll")?;
    let run: RunFinished = sites.json(ALPHA, &["task", "run", TASK, "--wait", "--timeout", "60s"]);
    assert_eq!(
        (run.status, run.files_delivered),
        (RunStatus::Succeeded, 1),
        "{run:?}"
    );
    let delivered_at = ferry_tests::mtime_ns(&dst.join("a.txt"));
    replicated(&js_p, &js_s, topology::KV_STATE).await?;
    let state_p = keys(&js_p, topology::KV_STATE).await?;
    assert!(
        !state_p.is_empty(),
        "the primary recorded no new-files-only state"
    );
    assert_eq!(keys(&js_s, topology::KV_STATE).await?, state_p);

    // While attached the standby's copies are read-only, and it says why.
    let err = sites.refused(BETA, &["apply", "-f", &file]);
    let primary = sites.nats_p.url();
    assert!(
        err.contains(&format!(
            "this node's configuration is a mirror of {primary}; apply on the primary or promote this node"
        )),
        "{err}"
    );
    let err = sites.refused(
        BETA,
        &["pgp", "generate", "--name", "X", "--email", "x@example.com"],
    );
    assert!(
        err.contains(&format!(
            "this node's PGP key ring store is a mirror of {primary}"
        )),
        "{err}"
    );

    // Status: caught up on every store, keymat matching, and the lag metric served.
    let status = eventually(VISIBLE, "every store caught up", || async {
        sites
            .try_json::<StandbyStatus>(BETA, &["standby", "status"])
            .filter(|s| {
                s.buckets
                    .iter()
                    .all(|b| b.lag_messages == Some(0) && b.primary_seq.is_some())
            })
    })
    .await?;
    assert_eq!(status.keymat_matches, Some(true), "{status:?}");
    let config_row = status
        .buckets
        .iter()
        .find(|b| b.bucket == topology::KV_CONFIG)
        .expect("the configuration is mirrored");
    assert_eq!(
        config_row.primary_seq,
        Some(last_seq(&js_p, topology::KV_CONFIG).await?)
    );
    let metrics = eventually(Duration::from_secs(5), "the lag metric", || async {
        let (_, body) = http_get(sites.beta_metrics, "/metrics").ok()?;
        body.contains("ferry_standby_replication_lag_seconds{bucket=\"ferry_config\"}")
            .then_some(body)
    })
    .await?;
    assert_eq!(
        metric_sum(
            &metrics,
            "ferry_standby_replication_lag_messages",
            &[("bucket", "ferry_state")]
        ),
        0.0
    );

    // The primary's site dies. The standby is promoted: its copies become its own, and it runs
    // the primary's task without re-sending what the primary delivered.
    let mut alpha = sites.alpha.take().expect("alpha runs");
    alpha.kill_all();
    sites.nats_p.kill();
    let promoted: FailoverStatus = sites.json(BETA, &["failover", "promote"]);
    assert_eq!(promoted.role, Role::Active);
    let after: StandbyStatus = sites.json(BETA, &["standby", "status"]);
    assert_eq!(after.mode, ReplicationMode::None, "{after:?}");
    std::fs::write(src.join("b.txt"), b"second payroll")?;
    let run: RunFinished = sites.json(BETA, &["task", "run", TASK, "--wait", "--timeout", "60s"]);
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    let sent: Vec<&str> = run.files.iter().map(|f| f.source_path.as_str()).collect();
    assert_eq!(run.files_delivered, 1, "{sent:?}");
    assert!(sent.iter().all(|p| p.ends_with("b.txt")), "re-sent: {sent:?}");
    assert_eq!(
        ferry_tests::mtime_ns(&dst.join("a.txt")),
        delivered_at,
        "a.txt was written again"
    );
    assert_eq!(std::fs::read(dst.join("b.txt"))?, b"second payroll");
    // And its configuration is its own now.
    let (_, _, file) = sites.write_task("\n# changed on the new primary\n")?;
    let applied = sites.ferry(BETA, &["apply", "-f", &file]);
    assert!(applied.status.success(), "{}", describe(&applied));

    // The old primary comes back, disabled (its role file said active: an operator resets it
    // before starting the node), and is attached the other way round.
    sites.nats_p.restart()?;
    std::fs::remove_file(alpha.setup.data_dir.join("failover-role.json"))?;
    let mut setup = alpha.setup.clone();
    setup.initial_role = "disabled";
    drop(alpha);
    sites.alpha = Some(ProcNode::start(
        setup,
        None,
        &sites.work.path().join("logs-alpha-2"),
    )?);
    sites
        .wait_role(ALPHA, "disabled", |s| s.role == Role::Disabled)
        .await?;
    let js_p = js(&sites.nats_p.url()).await?;
    let back: StandbyStatus = eventually(Duration::from_secs(20), "alpha attached to beta", || async {
        sites.try_json::<StandbyStatus>(ALPHA, &["standby", "attach", "--primary", &sites.nats_s.url()])
    })
    .await
    .with_context(|| {
        describe(&sites.ferry(ALPHA, &["standby", "attach", "--primary", &sites.nats_s.url()]))
    })?;
    assert_eq!(back.primary_domain.as_deref(), Some("site_s"));
    replicated(&js_s, &js_p, topology::KV_CONFIG).await?;
    assert_eq!(
        keys(&js_p, topology::KV_STATE).await?,
        keys(&js_s, topology::KV_STATE).await?
    );
    let err = sites.refused(ALPHA, &["apply", "-f", &file]);
    assert!(
        err.contains(&format!(
            "this node's configuration is a mirror of {}",
            sites.nats_s.url()
        )),
        "{err}"
    );
    Ok(())
}
