//! Manual failover between two nodes, driven through the operator CLI as an operator would:
//! `ferry failover promote` is refused while the active node renews its lease, succeeds at once
//! after `ferry shutdown` released it, waits for a dead node's lease to lapse with
//! `--after-expiry`; a disabled node stays disabled across a restart (even in automatic mode);
//! `ferry failover demote` drains and releases the lease; a trigger request is answered by the
//! active node, not a standby; and the reference hot-standby procedure on the shared cluster
//! (`the_reference_procedure_on_a_shared_cluster`).
//!
//! Each node is five real service processes (`ProcNode`, no network namespace) against one real
//! nats-server, with its own data dir. `node1` starts active, `node2` standby; lease TTL 3 s,
//! fence margin 600 ms.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::de::DeserializeOwned;

mod remote;

use ferry_tests::pair::{NodeSetup, ProcNode};
use ferry_tests::{NatsServer, bin_path, eventually, local_task};
use ferry_wire::{FailoverMode, FailoverStatus, Role, RoleChanged, RunFinished, RunStatus, SchedulerStatus};

const NODE1: &str = "node1";
const NODE2: &str = "node2";
const TTL: Duration = Duration::from_millis(3000);
const MARGIN_MS: u64 = 600;
/// How long a node may take to start its five processes and answer.
const START: Duration = Duration::from_secs(60);

/// Two nodes of separate processes on one nats-server, and the operator's working directory.
struct Pair {
    nats: NatsServer,
    work: tempfile::TempDir,
    node1: ProcNode,
    node2: ProcNode,
}

impl Pair {
    /// `node1` (initial role active) and `node2` (standby), both manual mode; `tweak_node2`
    /// adjusts node2's setup before it starts.
    fn start(tweak_node2: impl FnOnce(&mut NodeSetup)) -> anyhow::Result<Self> {
        let nats = NatsServer::start()?;
        let work = tempfile::Builder::new().prefix("ferry-failover-").tempdir()?;
        let setup = |id: &str, initial_role: &'static str| NodeSetup {
            id: id.to_string(),
            nats_url: nats.url(),
            data_dir: work.path().join(format!("data-{id}")),
            ledger: None,
            mode: "manual",
            initial_role,
            lease_ttl_ms: TTL.as_millis() as u64,
            fence_margin_ms: MARGIN_MS,
            replicas: 1,
            start_with_scheduler_disabled: false,
            keymat: None,
            nats_keys: None,
        };
        let node1 = ProcNode::start(setup(NODE1, "active"), None, &work.path().join("logs-node1"))?;
        let mut setup2 = setup(NODE2, "standby");
        tweak_node2(&mut setup2);
        let node2 = ProcNode::start(setup2, None, &work.path().join("logs-node2"))?;
        Ok(Self {
            nats,
            work,
            node1,
            node2,
        })
    }

    /// `ferry --nats-url URL --node NODE ARGS`, in the operator's working directory.
    fn ferry(&self, node: &str, args: &[&str]) -> Output {
        self.ferry_env(node, args, &[])
    }

    /// [`Pair::ferry`] with `env` added.
    fn ferry_env(&self, node: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(bin_path("ferry"))
            .arg("--nats-url")
            .arg(self.nats.url())
            .arg("--node")
            .arg(node)
            .args(args)
            .current_dir(self.work.path())
            .env_remove("FERRY_CONFIG")
            .envs(env.iter().copied())
            .output()
            .expect("run the ferry CLI")
    }

    /// `ferry --json ARGS` on `node`, parsed; `None` if it failed or printed something else.
    fn try_json<T: DeserializeOwned>(&self, node: &str, args: &[&str]) -> Option<T> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ferry(node, &all);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// `ferry --json ARGS` on `node`; it must succeed and print one `T`.
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
                "`ferry --node {node} {}` printed no {}: {e}\n{}",
                all.join(" "),
                std::any::type_name::<T>(),
                describe(&out)
            )
        })
    }

    fn status(&self, node: &str) -> FailoverStatus {
        self.json(node, &["failover", "status"])
    }

    /// Poll `ferry failover status` on `node` until `wanted` holds.
    async fn wait_status(
        &self,
        node: &str,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&FailoverStatus) -> bool,
    ) -> anyhow::Result<FailoverStatus> {
        eventually(timeout, &format!("{node}: {what}"), || async {
            self.try_json::<FailoverStatus>(node, &["failover", "status"])
                .filter(&wanted)
        })
        .await
        .with_context(|| {
            format!(
                "last status of {node}: {:?}\n{}",
                self.try_json::<FailoverStatus>(node, &["failover", "status"]),
                self.logs()
            )
        })
    }

    /// Both nodes up: node1 active with a valid lease, node2 standby seeing node1 hold it.
    async fn wait_started(&self) -> anyhow::Result<FailoverStatus> {
        let s1 = self
            .wait_status(NODE1, "active with a valid lease", START, |s| {
                s.role == Role::Active && s.lease_valid && s.epoch > 0
            })
            .await?;
        self.wait_status(NODE2, "standby, node1 holding the lease", START, |s| {
            s.role == Role::Standby && s.lease_holder.as_deref() == Some(NODE1)
        })
        .await?;
        Ok(s1)
    }

    /// A local → local task `name` applied with `ferry apply` through node1: (inbox, outbox).
    async fn apply_task(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (src, dst) = (self.work.path().join("inbox"), self.work.path().join("outbox"));
        std::fs::create_dir_all(&src)?;
        std::fs::create_dir_all(&dst)?;
        let file = self.work.path().join("ferry.toml");
        std::fs::write(&file, local_task(name, &src, &dst, "", ""))?;
        let file = file.to_string_lossy().into_owned();
        eventually(Duration::from_secs(30), "`ferry apply` to succeed", || async {
            self.ferry(NODE1, &["apply", "-f", &file])
                .status
                .success()
                .then_some(())
        })
        .await
        .with_context(|| {
            format!(
                "last attempt: {}\n{}",
                describe(&self.ferry(NODE1, &["apply", "-f", &file])),
                self.logs()
            )
        })?;
        Ok((src, dst))
    }

    /// `ferry failover promote` on `node` with extra `args`, timed; must succeed.
    fn promote(&self, node: &str, args: &[&str]) -> (FailoverStatus, Duration) {
        let started = Instant::now();
        let mut all = vec!["failover", "promote"];
        all.extend_from_slice(args);
        let status = self.json(node, &all);
        (status, started.elapsed())
    }

    /// Role changes recorded in the audit trail, once `wanted` holds for them (they are
    /// published in the background of the change).
    async fn history_with(
        &self,
        what: &str,
        wanted: impl Fn(&[RoleChanged]) -> bool,
    ) -> anyhow::Result<Vec<RoleChanged>> {
        eventually(Duration::from_secs(15), what, || async {
            self.try_json::<Vec<RoleChanged>>(NODE2, &["failover", "history"])
                .filter(|h| wanted(h))
        })
        .await
        .with_context(|| {
            format!(
                "history: {:#?}",
                self.try_json::<Vec<RoleChanged>>(NODE2, &["failover", "history"])
            )
        })
    }

    fn logs(&self) -> String {
        format!(
            "node1 logs:\n{}\nnode2 logs:\n{}",
            self.node1.log_tails(25),
            self.node2.log_tails(25)
        )
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A refused `ferry failover promote`: non-zero exit, the reason on stderr.
fn refused(pair: &Pair, node: &str, args: &[&str]) -> String {
    let mut all = vec!["failover", "promote"];
    all.extend_from_slice(args);
    let out = pair.ferry(node, &all);
    assert!(
        !out.status.success(),
        "`ferry --node {node} {}` must be refused: {}\n{}",
        all.join(" "),
        describe(&out),
        pair.logs()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The refusal names the live holder.
fn assert_refused_live_lease(stderr: &str, holder: &str) {
    assert!(
        stderr.contains(&format!("node {holder}")) && stderr.contains("live lease"),
        "the refusal names the holder {holder} and says its lease is live: {stderr}"
    );
}

/// Wait (polling) until every process of `node` has exited by itself, at most `within`.
async fn wait_exited(node: &mut ProcNode, within: Duration) -> Result<Duration, Vec<&'static str>> {
    let started = Instant::now();
    loop {
        let running = node.running();
        if running.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(running);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_is_refused_while_the_primary_renews_and_succeeds_at_once_after_its_shutdown()
-> anyhow::Result<()> {
    let mut pair = Pair::start(|node2| node2.start_with_scheduler_disabled = true)?;
    let first = pair.wait_started().await?;
    let (inbox, outbox) = pair.apply_task("move").await?;

    // node1 holds and renews the lease: a promotion of node2 is refused, also after more than
    // one TTL (so it is not a lease that merely has not lapsed yet).
    let stderr = refused(&pair, NODE2, &[]);
    eprintln!("refused promotion: {}", stderr.trim());
    assert_refused_live_lease(&stderr, NODE1);
    tokio::time::sleep(TTL + Duration::from_millis(700)).await;
    let stderr = refused(&pair, NODE2, &[]);
    assert_refused_live_lease(&stderr, NODE1);

    let s1 = pair.status(NODE1);
    assert!(
        s1.role == Role::Active && s1.lease_valid && s1.epoch == first.epoch,
        "node1 kept its lease (same epoch {}) across the refused promotions: {s1:#?}",
        first.epoch
    );
    let s2 = pair.status(NODE2);
    assert_eq!(s2.role, Role::Standby, "node2 stays standby: {s2:#?}");
    assert_eq!(s2.epoch, 0, "node2 holds no lease: {s2:#?}");
    assert!(!s2.lease_valid, "node2 may do no work: {s2:#?}");
    assert_eq!(s2.lease_holder.as_deref(), Some(NODE1), "{s2:#?}");
    assert_eq!(s2.lease_epoch, first.epoch, "{s2:#?}");
    assert!(
        s2.other_nodes
            .iter()
            .any(|n| n.node == NODE1 && n.role == Role::Active),
        "node2 sees node1 as active among the other nodes: {s2:#?}"
    );

    // The operator shuts node1 down: it drains, releases the lease and stops every service.
    let out = pair.ferry(NODE1, &["shutdown", "--drain-timeout", "10s"]);
    assert!(
        out.status.success(),
        "`ferry --node node1 shutdown` succeeds: {}\n{}",
        describe(&out),
        pair.logs()
    );
    // The lease was released: node2's promotion, right after `ferry shutdown` returned,
    // succeeds at once, under a newer epoch.
    let (promoted, took) = pair.promote(NODE2, &[]);
    eprintln!("promotion after the shutdown took {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "the promotion after a clean shutdown succeeds immediately, took {took:?}"
    );
    if let Err(running) = wait_exited(&mut pair.node1, Duration::from_secs(10)).await {
        panic!(
            "node1's services still run 10 s after `ferry shutdown`: {running:?}\n{}",
            pair.logs()
        );
    }
    assert_eq!(promoted.role, Role::Active, "{promoted:#?}");
    assert!(promoted.lease_valid, "{promoted:#?}");
    assert!(
        promoted.epoch > first.epoch,
        "node2's epoch {} is newer than node1's {}",
        promoted.epoch,
        first.epoch
    );
    let s2 = pair.status(NODE2);
    assert!(
        s2.role == Role::Active
            && s2.lease_valid
            && s2.epoch == promoted.epoch
            && s2.lease_holder.as_deref() == Some(NODE2)
            && s2.lease_epoch == promoted.epoch,
        "node2 is active and holds the lease it was promoted with: {s2:#?}"
    );

    // start_with_scheduler_disabled: after the promotion the schedules stay stopped…
    let scheduler: SchedulerStatus = eventually(
        Duration::from_secs(10),
        "node2's scheduler to see the new epoch",
        || async {
            pair.try_json::<SchedulerStatus>(NODE2, &["scheduler", "status"])
                .filter(|s| s.epoch >= promoted.epoch)
        },
    )
    .await?;
    assert!(
        !scheduler.enabled,
        "with start_with_scheduler_disabled the scheduler stays stopped after a promotion: {scheduler:?}"
    );
    let s2 = pair.status(NODE2);
    assert_eq!(
        s2.scheduler, "stopped",
        "`ferry failover status` reports the stopped scheduler: {s2:#?}"
    );

    // …but a manual run works and moves a file.
    std::fs::write(inbox.join("after-failover.txt"), b"moved by node2")?;
    let run: RunFinished = eventually(Duration::from_secs(30), "a manual run on node2", || async {
        let out = pair.ferry(
            NODE2,
            &["--json", "task", "run", "move", "--wait", "--timeout", "60s"],
        );
        // A refused request (node not yet taking work) prints nothing on stdout; a run that
        // finished, succeeded or not, prints its RunFinished.
        serde_json::from_slice(&out.stdout).ok()
    })
    .await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(run.node, NODE2, "the run ran on node2: {run:#?}");
    assert_eq!(run.epoch, promoted.epoch, "under node2's epoch: {run:#?}");
    assert_eq!(run.files_delivered, 1, "{run:#?}");
    assert_eq!(
        std::fs::read_to_string(outbox.join("after-failover.txt")).context("the moved file")?,
        "moved by node2"
    );

    // The audit trail records the promotion.
    let history = pair
        .history_with("node2's promotion in the role history", |h| {
            h.iter().any(|c| {
                c.node == NODE2
                    && c.from == Role::Standby
                    && c.to == Role::Active
                    && c.reason.contains("promoted")
            })
        })
        .await?;
    let change = history
        .iter()
        .find(|c| c.node == NODE2 && c.to == Role::Active)
        .expect("found above");
    assert_eq!(change.epoch, promoted.epoch, "{change:?}");
    assert!(
        history
            .iter()
            .any(|c| c.node == NODE1 && c.reason.contains("shut down")),
        "node1's shutdown is in the role history too: {history:#?}"
    );

    // Regression: a shutting-down node must not take its just-released lease straight back
    // (its driver saw "active without a lease" and created a new one before the process stopped).
    let reacquired: Vec<&RoleChanged> = history
        .iter()
        .filter(|c| c.node == NODE1 && c.to == Role::Active && c.epoch != first.epoch && c.epoch != 0)
        .collect();
    assert!(
        reacquired.is_empty(),
        "node1 acquired no new lease after `ferry shutdown` released its own (epoch {}): {reacquired:#?}",
        first.epoch
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_after_expiry_waits_for_a_dead_primary() -> anyhow::Result<()> {
    let mut pair = Pair::start(|_| {})?;
    let first = pair.wait_started().await?;

    // SIGKILL: node1 cannot release its lease; it lapses one TTL after its last renewal.
    pair.node1.kill_all();
    let killed = Instant::now();
    let stderr = refused(&pair, NODE2, &[]);
    let refused_after = killed.elapsed();
    assert!(
        refused_after < TTL - TTL / 3,
        "the plain promotion ran while node1's lease was surely live ({refused_after:?} after the kill)"
    );
    assert_refused_live_lease(&stderr, NODE1);

    let (promoted, _) = pair.promote(NODE2, &["--after-expiry", "--wait", "20s"]);
    let took = killed.elapsed();
    eprintln!("promote --after-expiry succeeded {took:?} after the kill");
    assert_eq!(promoted.role, Role::Active, "{promoted:#?}");
    assert!(promoted.lease_valid, "{promoted:#?}");
    assert!(
        promoted.epoch > first.epoch,
        "node2's epoch {} is newer than node1's {}",
        promoted.epoch,
        first.epoch
    );
    // node1 renewed at most TTL/3 before the kill, so its lease lapses between TTL − TTL/3 and
    // TTL after it (plus the bucket's expiry delay).
    assert!(
        took >= Duration::from_secs(1),
        "--after-expiry waited for the lease to lapse, but succeeded {took:?} after the kill"
    );
    assert!(
        took <= TTL + Duration::from_secs(3),
        "--after-expiry succeeded soon after the lapse, not {took:?} after the kill"
    );
    let s2 = pair.status(NODE2);
    assert_eq!(s2.lease_holder.as_deref(), Some(NODE2), "{s2:#?}");
    assert_eq!(s2.lease_epoch, promoted.epoch, "{s2:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disabled_node_stays_disabled_across_a_restart() -> anyhow::Result<()> {
    let mut pair = Pair::start(|_| {})?;
    pair.wait_started().await?;

    let disabled: FailoverStatus = pair.json(NODE2, &["failover", "disable"]);
    assert_eq!(disabled.role, Role::Disabled, "{disabled:#?}");
    assert_eq!(pair.status(NODE2).role, Role::Disabled);

    // Restart every process of node2 with the same data dir; this time in automatic mode, which
    // would take a lapsed lease over by itself if the node were standby.
    pair.node2.terminate_all(Duration::from_secs(20));
    assert!(
        pair.node2.running().is_empty(),
        "node2's services stopped on SIGTERM"
    );
    pair.node2.setup.mode = "automatic";
    pair.node2.start_missing()?;
    let restarted = pair
        .wait_status(NODE2, "answering again after the restart", START, |_| true)
        .await?;
    assert_eq!(
        restarted.role,
        Role::Disabled,
        "the role survives the restart (initial_role standby applies to a first start only): {restarted:#?}"
    );
    assert_eq!(restarted.mode, FailoverMode::Automatic, "{restarted:#?}");

    let stderr = refused(&pair, NODE2, &[]);
    eprintln!("refused promotion of a disabled node: {}", stderr.trim());
    assert!(
        stderr.contains("disabled") && stderr.contains("ferry failover enable"),
        "the refusal says to enable the node first: {stderr}"
    );

    // node1 dies; its lease lapses; node2 never takes it.
    pair.node1.kill_all();
    let killed = Instant::now();
    let mut lapsed_at = None;
    loop {
        let s2 = pair.status(NODE2);
        assert!(
            s2.role == Role::Disabled && s2.epoch == 0 && !s2.lease_valid,
            "a disabled node never becomes active ({:?} after node1 was killed): {s2:#?}\n{}",
            killed.elapsed(),
            pair.logs()
        );
        assert_ne!(
            s2.lease_holder.as_deref(),
            Some(NODE2),
            "a disabled node never holds the lease: {s2:#?}"
        );
        if s2.lease_holder.is_none() && lapsed_at.is_none() {
            lapsed_at = Some(Instant::now());
        }
        // Watch until TTL + 2 s after the kill and at least 1 s after the lapse was seen
        // (automatic mode retries every 200 ms).
        let watched_past_lapse = lapsed_at.is_some_and(|at| at.elapsed() >= Duration::from_secs(1));
        if killed.elapsed() >= TTL + Duration::from_secs(2) && watched_past_lapse {
            eprintln!(
                "node1's lease lapsed {:?} after the kill; node2 still disabled {:?} after it",
                lapsed_at.map(|at| at - killed),
                killed.elapsed()
            );
            break;
        }
        assert!(
            killed.elapsed() < TTL + Duration::from_secs(10),
            "node1's lease did not lapse within {:?} of the kill: {s2:#?}",
            TTL + Duration::from_secs(10)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // node1 comes back and takes the lease again; enabling node2 makes it a standby.
    pair.node1.start_missing()?;
    pair.wait_status(NODE1, "active again after its restart", START, |s| {
        s.role == Role::Active && s.lease_valid
    })
    .await?;
    let enabled: FailoverStatus = pair.json(NODE2, &["failover", "enable"]);
    assert_eq!(enabled.role, Role::Standby, "{enabled:#?}");
    let s2 = pair.status(NODE2);
    assert_eq!(s2.role, Role::Standby, "{s2:#?}");
    assert_eq!(s2.lease_holder.as_deref(), Some(NODE1), "{s2:#?}");

    // Enabled again, the automatic standby takes over once node1's lease lapses.
    pair.node1.kill_all();
    pair.wait_status(
        NODE2,
        "active (automatic takeover after enable)",
        TTL + Duration::from_secs(5),
        |s| s.role == Role::Active && s.lease_valid,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demote_drains_and_releases() -> anyhow::Result<()> {
    let mut pair = Pair::start(|_| {})?;
    let first = pair.wait_started().await?;

    let demoted: FailoverStatus = pair.json(NODE1, &["failover", "demote"]);
    assert_eq!(demoted.role, Role::Standby, "{demoted:#?}");
    assert_eq!(demoted.epoch, 0, "{demoted:#?}");
    assert!(!demoted.lease_valid, "{demoted:#?}");
    let s1 = pair.status(NODE1);
    assert!(
        s1.role == Role::Standby && s1.epoch == 0 && !s1.lease_valid,
        "node1 is a standby without a lease: {s1:#?}"
    );
    assert_eq!(
        pair.node1.running().len(),
        5,
        "a demotion stops no service of node1"
    );

    // The lease key was deleted, not left to lapse.
    let s2 = pair.status(NODE2);
    assert_eq!(
        s2.lease_holder, None,
        "node1 released the lease on demote: {s2:#?}"
    );
    assert_eq!(s2.lease_epoch, 0, "{s2:#?}");

    let (promoted, took) = pair.promote(NODE2, &[]);
    eprintln!("promotion after the demotion took {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "the promotion after a demotion succeeds immediately, took {took:?}"
    );
    assert!(
        promoted.role == Role::Active && promoted.lease_valid && promoted.epoch > first.epoch,
        "node2 active under an epoch newer than node1's {}: {promoted:#?}",
        first.epoch
    );
    // node1 (manual mode) stays a standby and sees node2 hold the lease.
    let s1 = pair.status(NODE1);
    assert_eq!(s1.role, Role::Standby, "{s1:#?}");
    assert_eq!(s1.lease_holder.as_deref(), Some(NODE2), "{s1:#?}");

    pair.history_with("node1's demotion in the role history", |h| {
        h.iter().any(|c| {
            c.node == NODE1 && c.from == Role::Active && c.to == Role::Standby && c.reason.contains("demoted")
        })
    })
    .await?;
    // Every role change is also an event on `ferry.event.role.<node>` (stream FERRY_EVENTS), for
    // whoever hangs an email on it.
    let client = async_nats::connect(pair.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    eventually(Duration::from_secs(10), "role events of both nodes", || async {
        let events: Vec<RoleChanged> = ferry_service::streams::read(
            &js,
            ferry_wire::topology::STREAM_EVENTS,
            &ferry_wire::subjects::role_changed("*"),
            None,
        )
        .await
        .ok()?;
        let demoted = events.iter().any(|e| e.node == NODE1 && e.to == Role::Standby);
        let promoted = events.iter().any(|e| e.node == NODE2 && e.to == Role::Active);
        (demoted && promoted).then_some(())
    })
    .await?;
    Ok(())
}

/// Stopping the active node's coordinator with SIGTERM (a service manager restarting it) revokes
/// its services' grants, waits until they say they hold none, and releases the lease instead of
/// leaving it to lapse: the standby can be promoted at once, and the old node's services stay idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_on_the_active_coordinator_releases_its_lease() -> anyhow::Result<()> {
    let mut pair = Pair::start(|_| {})?;
    let first = pair.wait_started().await?;
    assert_eq!(first.role, Role::Active, "{first:#?}");
    pair.apply_task("move").await?;
    pair.node1
        .terminate("failover-coordinator", Duration::from_secs(15))?;
    let s2 = pair.status(NODE2);
    assert_eq!(
        s2.lease_holder,
        None,
        "node1 released its lease on SIGTERM rather than leaving it to lapse: {s2:#?}\n{}",
        pair.logs()
    );
    let logs = pair.node1.log_tails(100);
    assert!(
        logs.contains("lease released (every service confirmed it holds no grant)"),
        "node1's coordinator released the lease once its services confirmed:\n{logs}"
    );
    let (promoted, took) = pair.promote(NODE2, &[]);
    assert!(
        took < Duration::from_secs(2) && promoted.role == Role::Active && promoted.epoch > first.epoch,
        "promotion right after node1's coordinator stopped: took {took:?}, {promoted:#?}"
    );
    // node1's scheduler, without its coordinator, holds no grant: it refuses to run anything.
    let out = pair.ferry(NODE1, &["task", "run", "move"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("fenced"),
        "{}",
        describe(&out)
    );
    Ok(())
}

/// With two nodes, a trigger sent as a request is answered by the active node (with the run it
/// started), never by the standby; with no node active, a standby answers with a clear error after
/// about a second, instead of leaving the requester to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trigger_is_answered_by_the_active_node_and_refused_clearly_without_one() -> anyhow::Result<()> {
    let pair = Pair::start(|_| {})?;
    pair.wait_started().await?;
    let (inbox, _outbox) = pair.apply_task("move").await?;
    let client = async_nats::connect(pair.nats.url()).await?;
    let ask = || async {
        let asked = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(ferry_wire::subjects::trigger("move"), "{}".into()),
        )
        .await
        .context("no answer within 10 s")??;
        let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        anyhow::Ok((v, asked.elapsed()))
    };
    for i in 0..5 {
        std::fs::write(inbox.join(format!("t{i}.txt")), "x")?;
        let (v, _) = ask().await?;
        assert!(
            v["run_id"].is_string(),
            "request {i}: the active node answers with its run, not the standby with an error: {v}"
        );
    }

    let _: FailoverStatus = pair.json(NODE1, &["failover", "demote"]);
    let (v, took) = ask().await?;
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not active"),
        "with no node active the answer says so: {v}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "a standby answers after its grace of a second, took {took:?}"
    );
    Ok(())
}

/// The reference procedure (section 7) on one NATS cluster (replication mode 1: one set of
/// stores, nothing to copy): node1 runs a scheduled new-files-only task to a real sshd and keeps
/// a Certs Backup; node2 (standby, the same keymat, its scheduler disabled at start) waits; a
/// file arrives; node1 is stopped with `ferry shutdown`; node2 is promoted, its scheduler still
/// stopped; Certs Restore runs there; `ferry config verify` says identical; `ferry scheduler
/// start`; node2 delivers the late file once and none of node1's again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_procedure_on_a_shared_cluster() -> anyhow::Result<()> {
    let dest = remote::Remote::sftp()?;
    let mut pair = Pair::start(|node2| {
        node2.start_with_scheduler_disabled = true;
        // One keymat, as after `ferry keymat import` on the standby.
        let work = node2.data_dir.parent().expect("the work dir").to_path_buf();
        node2.keymat = Some(work.join(format!("data-{NODE1}")).join("keymat"));
    })?;
    pair.wait_started().await?;
    let w = pair.work.path().to_path_buf();
    let (inbox, config) = ferry_tests::procedure_primary(
        &w,
        &dest.host("partner", true),
        &dest.folder("out"),
        "payroll",
        |args, env| pair.ferry_env(NODE1, args, env),
    )?;
    let applied = pair.ferry(NODE1, &["apply", "-f", &config.to_string_lossy()]);
    assert!(
        applied.status.success(),
        "{}\n{}",
        describe(&applied),
        pair.logs()
    );

    for name in ["a1.csv", "a2.csv"] {
        std::fs::write(inbox.join(name), format!("{name} before the failure\n"))?;
    }
    eventually(Duration::from_secs(30), "node1 to deliver a1 and a2", || async {
        (dest.hashes("out").await.len() == 2).then_some(())
    })
    .await?;
    let backup: RunFinished = pair.json(
        NODE1,
        &["task", "run", "certs-backup", "--wait", "--timeout", "60s"],
    );
    assert_eq!(backup.status, RunStatus::Succeeded, "{backup:?}");
    // node1's scheduler stops, so that b1 is certainly not delivered by it; node1 shuts down.
    let stopped = pair.ferry(NODE1, &["scheduler", "stop"]);
    assert!(stopped.status.success(), "{}", describe(&stopped));
    std::fs::write(inbox.join("b1.csv"), "b1 after node1's last run\n")?;
    let js = async_nats::jetstream::new(async_nats::connect(pair.nats.url()).await?);
    let node1_runs = ferry_tests::finished_runs(&js, "payroll").await?;
    let out = pair.ferry(NODE1, &["shutdown", "--drain-timeout", "10s"]);
    assert!(out.status.success(), "{}", describe(&out));
    if let Err(running) = wait_exited(&mut pair.node1, Duration::from_secs(10)).await {
        panic!("node1 still runs {running:?}\n{}", pair.logs());
    }

    // node2: promoted with its scheduler stopped; Certs Restore; verify; scheduler start.
    let (promoted, _) = pair.promote(NODE2, &[]);
    assert_eq!(promoted.role, Role::Active, "{promoted:?}");
    let scheduler: SchedulerStatus = pair.json(NODE2, &["scheduler", "status"]);
    assert!(!scheduler.enabled, "{scheduler:?}");
    let restore: RunFinished = eventually(Duration::from_secs(30), "Certs Restore on node2", || async {
        let out = pair.ferry(
            NODE2,
            &[
                "--json",
                "task",
                "run",
                "certs-restore",
                "--wait",
                "--timeout",
                "60s",
            ],
        );
        serde_json::from_slice(&out.stdout).ok()
    })
    .await?;
    assert_eq!(
        (restore.status, restore.files_delivered, restore.node.as_str()),
        (RunStatus::Succeeded, 2, NODE2),
        "{restore:?}"
    );
    let verified = pair.ferry(NODE2, &["config", "verify", "--against", &pair.nats.url()]);
    assert!(
        verified.status.success() && String::from_utf8_lossy(&verified.stdout).starts_with("identical:"),
        "{}",
        describe(&verified)
    );
    let started = pair.ferry(NODE2, &["scheduler", "start"]);
    assert!(started.status.success(), "{}", describe(&started));
    eventually(Duration::from_secs(30), "node2 to deliver b1", || async {
        (dest.hashes("out").await.len() == 3).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let all = ferry_tests::finished_runs(&js, "payroll").await?;
    let on_node2: Vec<RunFinished> = all.into_iter().filter(|r| r.node == NODE2).collect();
    assert_eq!(
        ferry_tests::deliveries(&on_node2),
        std::collections::BTreeMap::from([("b1.csv".to_string(), 1)]),
        "node2: only b1, once"
    );
    assert_eq!(
        ferry_tests::deliveries(&node1_runs),
        std::collections::BTreeMap::from([("a1.csv".to_string(), 1), ("a2.csv".to_string(), 1)]),
    );
    let got = dest.hashes("out").await;
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a1.csv", "a2.csv", "b1.csv"]
    );
    Ok(())
}
