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

mod remote;

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
    /// With [`Sites::start_linked`]: the leaf-node connection and beta's direct connection to
    /// alpha's NATS go through these, so that the test can cut the sites apart.
    links: Option<(ferry_testkit::Link, ferry_testkit::Link)>,
}

impl Sites {
    fn setup(work: &Path, id: &str, nats_url: String, initial_role: &'static str) -> NodeSetup {
        Self::setup_with(work, id, nats_url, initial_role, false)
    }

    fn setup_with(
        work: &Path,
        id: &str,
        nats_url: String,
        initial_role: &'static str,
        start_with_scheduler_disabled: bool,
    ) -> NodeSetup {
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
            start_with_scheduler_disabled,
            // One keymat for both, as after `ferry keymat import` on the standby.
            keymat: Some(work.join("keymat")),
            nats_keys: None,
        }
    }

    async fn start() -> anyhow::Result<Self> {
        Self::start_with(false, false).await
    }

    /// The two sites joined through links the test can cut ([`Sites::cut`]).
    async fn start_linked() -> anyhow::Result<Self> {
        Self::start_with(false, true).await
    }

    /// The two sites; `beta_scheduler_disabled`: beta starts with its scheduler disabled;
    /// `linked`: the sites are joined through [`ferry_testkit::Link`]s.
    async fn start_with(beta_scheduler_disabled: bool, linked: bool) -> anyhow::Result<Self> {
        let work = tempfile::Builder::new().prefix("ferry-mirror-").tempdir()?;
        let leaf = free_port();
        // `no_advertise`: the standby site's server dials only the URL it is given (else it
        // learns the primary's real leaf address and would go round a link the test cuts).
        let nats_p = NatsServer::start_site(
            "site_p",
            &format!("leafnodes {{ listen: \"127.0.0.1:{leaf}\", no_advertise: true }}"),
        )?;
        let links = if linked {
            let client: std::net::SocketAddr = nats_p.url().trim_start_matches("nats://").parse()?;
            Some((
                ferry_testkit::Link::start(format!("127.0.0.1:{leaf}").parse()?).await?,
                ferry_testkit::Link::start(client).await?,
            ))
        } else {
            None
        };
        let leaf_port = links.as_ref().map(|(l, _)| l.port()).unwrap_or(leaf);
        let nats_s = NatsServer::start_site(
            "site_s",
            &format!(
                "leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\", deny_imports: {DENY}, deny_exports: {DENY} }} ] }}"
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
            links,
            work,
            nats_p,
            nats_s,
        };
        sites
            .wait_role(ALPHA, "active", |s| s.role == Role::Active && s.lease_valid)
            .await?;
        // beta starts once alpha has created the shared keymat.
        sites.beta = Some(ProcNode::start_with_env(
            Self::setup_with(
                sites.work.path(),
                BETA,
                sites.nats_s.url(),
                "standby",
                beta_scheduler_disabled,
            ),
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

    /// The primary's NATS URL as `node` reaches it from its site (through the link, if any).
    fn primary_url_for(&self, node: &str) -> String {
        match (&self.links, node) {
            (Some((_, client)), BETA) => format!("nats://127.0.0.1:{}", client.port()),
            _ => self.url(Self::other(node)),
        }
    }

    /// Cut (`true`) or heal the links between the sites.
    fn partition(&self, cut: bool) {
        let (leaf, client) = self.links.as_ref().expect("the sites are linked");
        for link in [leaf, client] {
            if cut { link.cut() } else { link.heal() }
        }
    }

    fn other(node: &str) -> &'static str {
        if node == ALPHA { BETA } else { ALPHA }
    }

    /// The site of `node` dies: its five processes and its NATS server are killed.
    fn kill_site(&mut self, node: &str) -> ProcNode {
        let (proc, nats) = if node == ALPHA {
            (&mut self.alpha, &mut self.nats_p)
        } else {
            (&mut self.beta, &mut self.nats_s)
        };
        let mut proc = proc.take().expect("the node runs");
        proc.kill_all();
        nats.kill();
        proc
    }

    /// The dead site of `node` comes back: its NATS on the same port and store, and its node
    /// disabled (its role file said active: an operator resets it before starting the node,
    /// so that it does not take its own site's lease).
    async fn restart_site_disabled(&mut self, node: &str, dead: ProcNode) -> anyhow::Result<()> {
        if node == ALPHA {
            self.nats_p.restart()?;
        } else {
            self.nats_s.restart()?;
        }
        std::fs::remove_file(dead.setup.data_dir.join("failover-role.json"))?;
        let mut setup = dead.setup.clone();
        setup.initial_role = "disabled";
        let extra_env = dead.extra_env.clone();
        drop(dead);
        let restarted = Some(ProcNode::start_with_env(
            setup,
            None,
            &self
                .work
                .path()
                .join(format!("logs-{node}-{}", uuid::Uuid::now_v7().simple())),
            extra_env,
        )?);
        if node == ALPHA {
            self.alpha = restarted;
        } else {
            self.beta = restarted;
        }
        self.wait_role(node, "disabled", |s| s.role == Role::Disabled)
            .await?;
        Ok(())
    }

    /// `ferry standby attach` on `node` to the other node's site, retried while the link
    /// between the sites comes back.
    async fn attach(&self, node: &str) -> anyhow::Result<StandbyStatus> {
        let primary = self.primary_url_for(node);
        eventually(Duration::from_secs(20), &format!("{node} attached"), || async {
            self.try_json::<StandbyStatus>(node, &["standby", "attach", "--primary", &primary])
        })
        .await
        .with_context(|| describe(&self.ferry(node, &["standby", "attach", "--primary", &primary])))
    }

    fn ferry(&self, node: &str, args: &[&str]) -> Output {
        self.ferry_env(node, args, &[])
    }

    /// [`Sites::ferry`] with `env` added.
    fn ferry_env(&self, node: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(bin_path("ferry"))
            .arg("--nats-url")
            .arg(self.url(node))
            .arg("--node")
            .arg(node)
            .args(args)
            .current_dir(self.work.path())
            .env_remove("FERRY_CONFIG")
            .envs(env.iter().copied())
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

/// Automatic failover between two sites is refused: each site has its own NATS and its own
/// lease, so a standby that took its own site's lease when the link broke would be active beside
/// the primary. An attached standby's coordinator restarted in automatic mode refuses to start
/// (saying why), and the primary stays the only active node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn automatic_failover_across_sites_is_refused_at_start_up() -> anyhow::Result<()> {
    let mut sites = Sites::start().await?;
    sites.attach(BETA).await?;
    let mut beta = sites.beta.take().expect("beta runs");
    beta.kill_all();
    let mut env = beta.setup.env();
    env.extend(beta.extra_env.clone());
    env.insert("FERRY_FAILOVER_COORDINATOR__MODE".into(), "automatic".into());
    let logs = sites.work.path().join("logs-beta-automatic");
    std::fs::create_dir_all(&logs)?;
    let mut coordinator = ferry_tests::ServiceProcess::start("failover-coordinator", &env, &logs)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while coordinator.is_running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&coordinator.log)?;
    assert!(
        !coordinator.is_running(),
        "the coordinator must refuse to start: {log}"
    );
    assert!(
        log.contains("runs in automatic failover mode") && log.contains("Set failover_coordinator.mode"),
        "{log}"
    );
    let status: FailoverStatus = sites.json(ALPHA, &["failover", "status"]);
    assert_eq!(status.role, Role::Active, "the primary stays active: {status:?}");
    Ok(())
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
    // Attach answers once the stores are copied, not merely created.
    for b in &attached.buckets {
        assert_eq!(b.lag_messages, Some(0), "{b:?}");
        assert_eq!(Some(b.replicated_seq), b.primary_seq, "{b:?}");
    }

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
    // (Both rings: the public key and the secret key are two stores, copied each on its own.)
    replicated(&js_p, &js_s, topology::KV_PGP_SECRET).await?;
    replicated(&js_p, &js_s, topology::KV_PGP_PUBLIC).await?;
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
    let alpha = sites.kill_site(ALPHA);
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
    sites.restart_site_disabled(ALPHA, alpha).await?;
    let js_p = js(&sites.nats_p.url()).await?;
    let back = sites.attach(ALPHA).await?;
    assert_eq!(back.primary_domain.as_deref(), Some("site_s"));
    replicated(&js_s, &js_p, topology::KV_CONFIG).await?;
    replicated(&js_s, &js_p, topology::KV_STATE).await?;
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

/// The reference procedure (section 7) in mirror mode: the primary runs a scheduled
/// new-files-only task to a real sshd, keeps a Certs Backup, and its stores are mirrored to the
/// standby site (beta: manual mode, its scheduler disabled at start); a file arrives after the
/// last change copied; alpha is stopped with `ferry shutdown`; beta is promoted, its scheduler
/// still stopped; Certs Restore runs there; `ferry config verify` against the primary's NATS says
/// identical; `ferry scheduler start`; beta delivers the late file once and none of alpha's again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_procedure_over_mirrors() -> anyhow::Result<()> {
    let dest = remote::Remote::sftp()?;
    let mut sites = Sites::start_with(true, false).await?;
    let (js_p, js_s) = (js(&sites.nats_p.url()).await?, js(&sites.nats_s.url()).await?);
    let w = sites.work.path().to_path_buf();
    let (inbox, config) = ferry_tests::procedure_primary(
        &w,
        &dest.host("partner", true),
        &dest.folder("out"),
        TASK,
        |args, env| sites.ferry_env(ALPHA, args, env),
    )?;
    let applied = sites.ferry(ALPHA, &["apply", "-f", &config.to_string_lossy()]);
    assert!(
        applied.status.success(),
        "{}\n{}",
        describe(&applied),
        sites.logs()
    );
    sites.attach(BETA).await?;

    // alpha delivers a1 and a2 on its schedule and keeps a Certs Backup.
    for name in ["a1.csv", "a2.csv"] {
        std::fs::write(inbox.join(name), format!("{name} before the failure\n"))?;
    }
    eventually(Duration::from_secs(30), "alpha to deliver a1 and a2", || async {
        (dest.hashes("out").await.len() == 2).then_some(())
    })
    .await?;
    let backup: RunFinished = sites.json(
        ALPHA,
        &["task", "run", "certs-backup", "--wait", "--timeout", "60s"],
    );
    assert_eq!(backup.status, RunStatus::Succeeded, "{backup:?}");
    // alpha's scheduler stops (so nothing more is certain to be delivered by it), every change
    // is copied, then b1 arrives and alpha is shut down.
    let stopped = sites.ferry(ALPHA, &["scheduler", "stop"]);
    assert!(stopped.status.success(), "{}", describe(&stopped));
    for bucket in topology::MIRRORED {
        replicated(&js_p, &js_s, bucket).await?;
    }
    std::fs::write(inbox.join("b1.csv"), "b1 after the last change copied\n")?;
    let alpha_runs = ferry_tests::finished_runs(&js_p, TASK).await?;
    let _: FailoverStatus = sites.json(ALPHA, &["shutdown", "--drain-timeout", "10s"]);
    let mut alpha = sites.alpha.take().expect("alpha runs");
    eventually(Duration::from_secs(20), "alpha's services to stop", || {
        let running = alpha.running().is_empty();
        async move { running.then_some(()) }
    })
    .await?;

    // beta: promoted, its scheduler still stopped; Certs Restore; verify; scheduler start.
    let promoted: FailoverStatus = sites.json(BETA, &["failover", "promote"]);
    assert_eq!(promoted.role, Role::Active, "{promoted:?}");
    let scheduler: ferry_wire::SchedulerStatus = sites.json(BETA, &["scheduler", "status"]);
    assert!(
        !scheduler.enabled,
        "beta starts with its scheduler disabled: {scheduler:?}"
    );
    let restore: RunFinished = sites.json(
        BETA,
        &["task", "run", "certs-restore", "--wait", "--timeout", "60s"],
    );
    assert_eq!(
        (restore.status, restore.files_delivered),
        (RunStatus::Succeeded, 2),
        "{restore:?}"
    );
    let listed = sites.ferry(BETA, &["certs", "list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("CN=partner"),
        "{}",
        describe(&listed)
    );
    let verified = sites.ferry(BETA, &["config", "verify", "--against", &sites.nats_p.url()]);
    assert!(
        verified.status.success() && String::from_utf8_lossy(&verified.stdout).starts_with("identical:"),
        "{}",
        describe(&verified)
    );
    let started = sites.ferry(BETA, &["scheduler", "start"]);
    assert!(started.status.success(), "{}", describe(&started));
    eventually(Duration::from_secs(30), "beta to deliver b1", || async {
        (dest.hashes("out").await.len() == 3).then_some(())
    })
    .await?;
    // Two more slots: a re-send would show now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (on_alpha, on_beta) = (
        ferry_tests::deliveries(&alpha_runs),
        ferry_tests::deliveries(&ferry_tests::finished_runs(&js_s, TASK).await?),
    );
    assert_eq!(
        on_beta,
        BTreeMap::from([("b1.csv".to_string(), 1)]),
        "beta: only b1, once"
    );
    assert_eq!(
        on_alpha,
        BTreeMap::from([("a1.csv".to_string(), 1), ("a2.csv".to_string(), 1)]),
        "alpha"
    );
    let got = dest.hashes("out").await;
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a1.csv", "a2.csv", "b1.csv"]
    );
    alpha.kill_all();
    Ok(())
}

/// A partition between the sites while the primary is active (manual mode): the leaf-node
/// connection and beta's direct connection to alpha's NATS go through links the test cuts for
/// over three lease TTLs. beta stays standby the whole time and says the primary cannot be
/// reached; alpha stays active and keeps delivering and taking changes; once the link heals,
/// what alpha changed meanwhile is on beta.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_between_the_sites_does_not_make_the_standby_active() -> anyhow::Result<()> {
    let sites = Sites::start_linked().await?;
    let (js_p, js_s) = (js(&sites.nats_p.url()).await?, js(&sites.nats_s.url()).await?);
    let (src, dst, file) = sites.write_task("")?;
    let applied = sites.ferry(ALPHA, &["apply", "-f", &file]);
    assert!(applied.status.success(), "{}", describe(&applied));
    sites.attach(BETA).await?;
    replicated(&js_p, &js_s, topology::KV_CONFIG).await?;
    let before = last_seq(&js_s, topology::KV_CONFIG).await?;

    sites.partition(true);
    let cut_at = Instant::now();
    let started = Instant::now();
    // alpha goes on: a change and a delivery during the partition.
    let other = local_task(
        "other",
        &sites.work.path().join("other-in"),
        &sites.work.path().join("other-out"),
        "",
        "",
    );
    let (_, _, changed) = sites.write_task(&other)?;
    let applied = sites.ferry(ALPHA, &["apply", "-f", &changed]);
    assert!(applied.status.success(), "{}", describe(&applied));
    std::fs::write(src.join("during.txt"), b"sent while the sites are apart")?;
    let run: RunFinished = sites.json(ALPHA, &["task", "run", TASK, "--wait", "--timeout", "60s"]);
    assert_eq!(
        (run.status, run.files_delivered),
        (RunStatus::Succeeded, 1),
        "{run:?}"
    );
    assert!(dst.join("during.txt").exists());
    eprintln!(
        "alpha applied and delivered during the partition in {:?}",
        started.elapsed()
    );
    // Over three lease TTLs (3 s each): beta never becomes active, alpha stays active.
    while cut_at.elapsed() < Duration::from_secs(10) {
        let beta: FailoverStatus = sites.json(BETA, &["failover", "status"]);
        assert_eq!(beta.role, Role::Standby, "beta during the partition: {beta:?}");
        assert!(!beta.lease_valid, "{beta:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let alpha: FailoverStatus = sites.json(ALPHA, &["failover", "status"]);
    assert!(alpha.role == Role::Active && alpha.lease_valid, "{alpha:?}");
    let status: StandbyStatus = sites.json(BETA, &["standby", "status"]);
    assert!(
        status.primary_error.is_some() || status.buckets.iter().any(|b| b.error.is_some()),
        "beta says the primary cannot be reached: {status:?}"
    );
    assert_eq!(
        last_seq(&js_s, topology::KV_CONFIG).await?,
        before,
        "nothing crossed the cut link"
    );

    // Healed: what alpha changed meanwhile is copied.
    eprintln!("partition held for {:?}", cut_at.elapsed());
    sites.partition(false);
    let healed_at = Instant::now();
    let want = last_seq(&js_p, topology::KV_CONFIG).await?;
    assert!(want > before);
    // (The server retries a mirror whose origin went away with a back-off of tens of seconds.)
    eventually(
        Duration::from_secs(90),
        "beta to catch up after the partition",
        || async { (last_seq(&js_s, topology::KV_CONFIG).await.ok()? >= want).then_some(()) },
    )
    .await
    .with_context(|| sites.logs())?;
    eprintln!("caught up {:?} after the link healed", healed_at.elapsed());
    let beta: FailoverStatus = sites.json(BETA, &["failover", "status"]);
    assert_eq!(beta.role, Role::Standby, "{beta:?}");
    Ok(())
}

/// The report's section this bench rewrites (`make bench`), between these marker lines.
const BENCH_BEGIN: &str = "<!-- standby-mirror:begin -->";
const BENCH_END: &str = "<!-- standby-mirror:end -->";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn summary(samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {}",
        percentile(&sorted, 0.5).as_secs_f64() * 1e3,
        percentile(&sorted, 0.99).as_secs_f64() * 1e3,
        sorted.last().expect("samples").as_secs_f64() * 1e3,
        sorted.len()
    )
}

/// Mirror mode's figures: replication lag of configuration changes (applied on the primary;
/// from the primary's commit to the change's arrival in the standby's mirror, both stamped by
/// this machine's clock) and the RTO of a site failover (the active site killed → a script
/// promotes the standby and runs the task → the file is delivered), alternating between the
/// sites (the dead one comes back disabled and is attached to the new primary). 10 changes and
/// 2 failovers as a test; `FERRY_STANDBY_BENCH_OUT=docs/BENCHMARKS.md` (`make bench`): 100 and
/// 20, and the section between the report's markers is rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replication_lag_and_site_failover_rto() -> anyhow::Result<()> {
    let out = std::env::var_os("FERRY_STANDBY_BENCH_OUT").map(PathBuf::from);
    let (changes, failovers) = if out.is_some() { (100, 20) } else { (10, 2) };
    let mut sites = Sites::start().await?;
    sites.attach(BETA).await?;
    let (src, dst, file) = sites.write_task("")?;
    let applied = sites.ferry(ALPHA, &["apply", "-f", &file]);
    assert!(applied.status.success(), "{}", describe(&applied));

    // Every arrival in the standby's mirror, stamped as it comes.
    let js_p = js(&sites.nats_p.url()).await?;
    let js_s = js(&sites.nats_s.url()).await?;
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(
        BTreeMap::<u64, std::time::SystemTime>::new(),
    ));
    let mut watch = js_s
        .get_key_value(topology::KV_CONFIG)
        .await?
        .watch(topology::CONFIG_KEY)
        .await?;
    let seen = arrivals.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(entry)) = watch.next().await {
            seen.lock()
                .expect("not poisoned")
                .insert(entry.revision, std::time::SystemTime::now());
        }
    });
    let client_p = async_nats::connect(sites.nats_p.url()).await?;
    let kv_p = js_p.get_key_value(topology::KV_CONFIG).await?;
    let task = local_task(TASK, &src, &dst, "new_files_only = true", "");
    let mut lags = Vec::new();
    for round in 0..changes {
        let toml = format!("[parameters]\nround = \"{round}\"\n{task}");
        let response = ferry_tests::apply_via(&client_p, ALPHA, &toml).await?;
        let ferry_wire::ApplyResponse::Applied { revision, .. } = response else {
            anyhow::bail!("round {round}: {response:?}");
        };
        let committed: std::time::SystemTime = kv_p
            .entry_for_revision(topology::CONFIG_KEY, revision)
            .await?
            .context("the applied revision")?
            .created
            .into();
        let arrived = eventually(
            VISIBLE,
            &format!("revision {revision} on the standby"),
            || async { arrivals.lock().expect("not poisoned").get(&revision).copied() },
        )
        .await?;
        lags.push(arrived.duration_since(committed).unwrap_or_default());
    }
    watcher.abort();
    let lag = summary(&lags);
    eprintln!("replication lag: {lag}");
    let mut sorted = lags.clone();
    sorted.sort();
    assert!(
        percentile(&sorted, 0.99) <= Duration::from_secs(1),
        "replication lag {lag}"
    );

    // Site failovers, alternating: kill the active site, promote the other by script, deliver.
    let mut rtos = Vec::new();
    let mut active = ALPHA;
    for trial in 0..failovers {
        let standby = Sites::other(active);
        let name = format!("rto-{trial}.txt");
        std::fs::write(src.join(&name), format!("trial {trial}"))?;
        let started = Instant::now();
        let dead = sites.kill_site(active);
        let promoted = sites.ferry(standby, &["failover", "promote"]);
        assert!(
            promoted.status.success(),
            "trial {trial}: {}\n{}",
            describe(&promoted),
            sites.logs()
        );
        let run = sites.ferry(standby, &["task", "run", TASK, "--wait", "--timeout", "60s"]);
        assert!(
            run.status.success(),
            "trial {trial}: {}\n{}",
            describe(&run),
            sites.logs()
        );
        assert!(dst.join(&name).exists(), "trial {trial}: {name} not delivered");
        rtos.push(started.elapsed());
        sites.restart_site_disabled(active, dead).await?;
        sites.attach(active).await?;
        // A standby promoted before its mirrors caught up would start from less: wait, as an
        // operator would check `ferry standby status`.
        eventually(VISIBLE * 5, "the re-attached site caught up", || async {
            sites
                .try_json::<StandbyStatus>(active, &["standby", "status"])
                .filter(|s| {
                    s.buckets
                        .iter()
                        .all(|b| b.lag_messages == Some(0) && b.primary_seq.is_some())
                })
        })
        .await?;
        let enabled = sites.ferry(active, &["failover", "enable"]);
        assert!(enabled.status.success(), "{}", describe(&enabled));
        active = standby;
    }
    let rto = summary(&rtos);
    eprintln!("site failover RTO: {rto}");

    if let Some(out) = out {
        let block = format!(
            "{BENCH_BEGIN}\n## Standby site in mirror mode\n\n\
             `FERRY_STANDBY_BENCH_OUT=$PWD/docs/BENCHMARKS.md cargo nextest run -p ferry-tests --test standby_mirror replication_lag_and_site_failover_rto --no-capture` \
             (run by `make bench`; debug builds; two nats-servers on loopback, each its own JetStream domain, joined by a leaf node).\n\n\
             | measure | result |\n|---|---|\n\
             | replication lag: `ferry apply` on the primary → the revision in the standby's mirror | {lag} |\n\
             | site failover RTO: active site killed → `ferry failover promote` + `ferry task run --wait` on the standby → file delivered | {rto} |\n\
             {BENCH_END}\n"
        );
        let doc = std::fs::read_to_string(&out).unwrap_or_default();
        let doc = match (doc.find(BENCH_BEGIN), doc.find(BENCH_END)) {
            (Some(b), Some(e)) if b < e => {
                let end = e + BENCH_END.len() + doc[e + BENCH_END.len()..].find('\n').map_or(0, |n| n + 1);
                format!("{}{block}{}", &doc[..b], &doc[end..])
            }
            (None, None) => format!("{}\n{block}", doc.trim_end_matches('\n').to_string() + "\n"),
            _ => anyhow::bail!("{}: unmatched {BENCH_BEGIN} / {BENCH_END}", out.display()),
        };
        std::fs::write(&out, doc)?;
    }
    Ok(())
}
