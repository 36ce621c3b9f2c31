//! failover-coordinator: holds this node's role and the lease that lets exactly one node work.
//!
//! The lease is key `active` of KV bucket `ferry_lease`, whose `max_age` is the lease TTL. It is
//! written only by `create` (acquire: the create's revision is the new **epoch**) and by
//! compare-and-swap `update` (renew, every TTL/3) and deleted only with the expected revision
//! (release). A holder that cannot renew **fences itself** at `last successful renewal sent + TTL
//! − margin` on the monotonic clock, before the bucket can drop the key and another node create
//! it: from then on it grants its services nothing.
//!
//! The services of this node do no side-effecting work without a grant from this coordinator
//! (`ferry_service::lease`): each holds a grant until `its request's send time + valid_for`,
//! which is never later than this coordinator's fence deadline.
//!
//! Invariants:
//! - The lease key is never written by a blind put; a decision to act rests on the result of a
//!   create or update, never on a read (a direct get may be stale).
//! - A grant is never longer than the time left until this node's fence deadline.
//! - The lease is released (deleted) only after every service that held a grant said it holds
//!   none, or after the fence deadline passed.
//! - The role is persisted before it takes effect; a disabled node never acquires.

mod files;
mod metrics;
mod role;
mod standby;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use ferry_service::ledger::{self, Ledger};
use ferry_service::{Settings, api, http, nats};
use ferry_wire::{
    Epoch, FailoverMode, FailoverStatus, Lease, LeaseAsk, LeaseGrant, NodeSeen, PromoteRequest, Role,
    RoleChanged, RoleRequest, subjects, topology,
};

use metrics::Metrics;
use role::RoleStore;

pub const SERVICE: &str = subjects::service::FAILOVER_COORDINATOR;

/// How often the driver looks at the clock (renewal due, fence deadline, acquisition retry).
const TICK: Duration = Duration::from_millis(100);
/// How often a standby in automatic mode tries to create a lapsed lease (besides the TTL/3 tick).
const ACQUIRE_RETRY: Duration = Duration::from_millis(200);
/// A service that has not asked for its grant for this long no longer holds one.
const GRANTEE_FORGET: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Grantee {
    seen: Instant,
    holding: Epoch,
}

/// What the API handlers and the driver share; short critical sections only, never across awaits.
#[derive(Debug)]
struct Shared {
    role: Role,
    /// Epoch of the lease this node holds (0: none) and the revision of its last write.
    epoch: Epoch,
    revision: u64,
    acquired_at: Option<DateTime<Utc>>,
    /// `last successful renewal sent + TTL − margin`.
    fence_at: Option<Instant>,
    last_renewal: Option<DateTime<Utc>>,
    /// Services may take new work (false while draining).
    accepting: bool,
    /// Grants are withheld although the lease is still held (just before a release).
    revoked_at: Option<Instant>,
    /// The fence deadline passed and was reported (metric, log) once.
    fence_reported: bool,
    /// A demote, disable or shutdown is in progress: acquire nothing, whatever the role says.
    stepping_down: bool,
    grantees: HashMap<String, Grantee>,
    /// The KV revision of this process's last node announcement (0: none yet).
    announced: u64,
}

impl Shared {
    fn valid_for(&self, now: Instant) -> Duration {
        match self.fence_at {
            Some(at) if self.role == Role::Active && self.epoch > 0 && self.revoked_at.is_none() => {
                at.saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        }
    }

    fn grant(&self, node: &str, now: Instant) -> LeaseGrant {
        let valid_for = self.valid_for(now);
        LeaseGrant {
            node: node.to_string(),
            role: self.role,
            epoch: self.epoch,
            valid_for_ms: valid_for.as_millis() as u64,
            accepting: self.accepting && !valid_for.is_zero(),
        }
    }

    fn drop_lease(&mut self) {
        self.epoch = 0;
        self.revision = 0;
        self.acquired_at = None;
        self.fence_at = None;
        self.revoked_at = None;
        self.fence_reported = false;
    }
}

/// The result of one attempt to acquire the lease.
enum Acquire {
    /// This node holds it now (a new epoch, or its own live lease taken up again).
    Held(Epoch),
    /// Another node holds a live lease.
    HeldBy {
        node: String,
        epoch: Epoch,
        acquired_at: DateTime<Utc>,
    },
}

struct Coordinator {
    node: String,
    /// This process, as its node announcements name it.
    instance: String,
    mode: FailoverMode,
    ttl: Duration,
    margin: Duration,
    js: jetstream::Context,
    client: async_nats::Client,
    kv: kv::Store,
    store: RoleStore,
    ledger: Option<Ledger>,
    metrics: Metrics,
    shared: Mutex<Shared>,
    /// Serializes every write of the lease key by this coordinator (driver, promote, release).
    writes: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    /// Mirror mode: this node's stores as mirrors of a primary's at another site.
    standby: standby::Standby,
    /// File-based replication: the import folder the primary ships bundles to.
    files: Option<Arc<files::Files>>,
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, js) = nats::connect(&settings, SERVICE, &shutdown).await?;
    let metrics = Metrics::new()?;
    http::serve(
        settings.failover_coordinator.metrics_addr,
        metrics.registry.clone(),
        http::nats_health(&client),
        shutdown.child_token(),
    )
    .await?;
    let kv = nats::open_kv(&js, topology::KV_LEASE, &shutdown).await?;
    let ttl = lease_ttl(&js, &kv, &settings).await?;
    let instance = format!(
        "pid {} on {}, {}",
        std::process::id(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "an unknown host".into()),
        uuid::Uuid::new_v4().simple()
    );
    refuse_a_twin(&js, &settings.node_id, &instance, ttl, &shutdown).await?;
    // Mirror mode and automatic failover exclude each other (see the constant's text).
    if settings.failover_coordinator.mode == FailoverMode::Automatic
        && standby::Standby::new(&settings, client.clone(), js.clone()).attached()
    {
        anyhow::bail!("{}", standby::AUTOMATIC_ACROSS_SITES);
    }
    let margin = Duration::from_millis(settings.failover_coordinator.fence_margin_ms).min(ttl / 2);
    let store = RoleStore::new(&settings.data_dir);
    let role = match store.load()? {
        Some(role) => role,
        None => {
            let role = settings.failover_coordinator.initial_role;
            store.save(role, "first start: initial_role from settings")?;
            role
        }
    };
    metrics.set_role(role);
    tracing::info!(node = %settings.node_id, %role, mode = settings.failover_coordinator.mode.as_str(), ttl_ms = ttl.as_millis() as u64, "failover coordinator starting");
    let coordinator = Arc::new(Coordinator {
        node: settings.node_id.clone(),
        instance,
        mode: settings.failover_coordinator.mode,
        ttl,
        margin,
        js: js.clone(),
        client: client.clone(),
        kv,
        store,
        ledger: Ledger::open(settings.ledger.as_deref())?,
        metrics,
        shared: Mutex::new(Shared {
            role,
            epoch: 0,
            revision: 0,
            acquired_at: None,
            fence_at: None,
            last_renewal: None,
            accepting: true,
            revoked_at: None,
            fence_reported: false,
            stepping_down: false,
            grantees: HashMap::new(),
            announced: 0,
        }),
        writes: tokio::sync::Mutex::new(()),
        shutdown: shutdown.clone(),
        standby: standby::Standby::new(&settings, client.clone(), js.clone()),
        files: files::Files::new(&settings).map(Arc::new),
    });

    let (service, group) =
        api::register(&client, &settings.node_id, SERVICE, "Ferry failover coordinator").await?;
    let mut endpoints = Vec::new();
    // The lease endpoint outlives `shutdown`: while stopping, services must still be able to say
    // they hold nothing, so that the lease can be released instead of left to lapse.
    let lease_endpoint = CancellationToken::new();
    let c = coordinator.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::LEASE,
            lease_endpoint.clone(),
            move |ask: Option<LeaseAsk>| {
                let grant = c.grant(ask);
                async move { Ok(grant) }
            },
        )
        .await?,
    );
    let c = coordinator.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::STATUS,
            shutdown.child_token(),
            move |(): ()| {
                let c = c.clone();
                async move { Ok(c.status().await) }
            },
        )
        .await?,
    );
    let c = coordinator.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::PROMOTE,
            shutdown.child_token(),
            move |req: PromoteRequest| {
                let c = c.clone();
                async move { c.promote(req).await.map_err(|e| format!("{e:#}")) }
            },
        )
        .await?,
    );
    let c = coordinator.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::STANDBY_ATTACH,
            shutdown.child_token(),
            move |req: ferry_wire::standby::AttachRequest| {
                let c = c.clone();
                async move { c.standby_attach(req).await.map_err(|e| format!("{e:#}")) }
            },
        )
        .await?,
    );
    let c = coordinator.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::STANDBY_DETACH,
            shutdown.child_token(),
            move |req: ferry_wire::standby::DetachRequest| {
                let c = c.clone();
                async move {
                    let _writes = c.writes.lock().await;
                    c.standby.detach(&req.by).await.map_err(|e| format!("{e:#}"))?;
                    Ok(c.standby_status().await)
                }
            },
        )
        .await?,
    );
    let c = coordinator.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::STANDBY_STATUS,
            shutdown.child_token(),
            move |(): ()| {
                let c = c.clone();
                async move { Ok(c.standby_status().await) }
            },
        )
        .await?,
    );
    // Mirror mode's lag metrics, file-based replication's bundle age.
    let c = coordinator.clone();
    let stop = shutdown.child_token();
    tokio::spawn(async move {
        loop {
            c.standby.export(&c.metrics).await;
            if let Some(files) = c.files.clone() {
                let metrics = c.metrics.clone();
                let _ = tokio::task::spawn_blocking(move || files.export(&metrics)).await;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(standby::REFRESH) => {}
            }
        }
    });
    for endpoint in [
        subjects::api::DEMOTE,
        subjects::api::DISABLE,
        subjects::api::ENABLE,
        subjects::api::SHUTDOWN,
    ] {
        let c = coordinator.clone();
        endpoints.push(
            api::serve_json(
                &group,
                endpoint,
                shutdown.child_token(),
                move |req: RoleRequest| {
                    let c = c.clone();
                    async move { c.change(endpoint, req).await.map_err(|e| format!("{e:#}")) }
                },
            )
            .await?,
        );
    }

    // The audit trail's hash chain: every coordinator seals (a seal is stored only if it follows
    // the last one, so sealers on several nodes never fork the chain).
    let sealer = tokio::spawn(ferry_service::audit_seal::run_sealer(
        coordinator.js.clone(),
        settings.node_id.clone(),
        shutdown.child_token(),
    ));
    coordinator.clone().drive(shutdown.clone()).await;
    let _ = sealer.await;
    // Stopping: give the lease up cleanly if every service confirms it holds no grant in time;
    // otherwise leave it to lapse (it is fenced either way).
    coordinator.revoke_and_release(Duration::from_secs(3)).await;
    // A clean stop says so, so that a restart need not wait to be sure no twin is running.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        coordinator.kv.delete(topology::node_key(&coordinator.node)),
    )
    .await;
    lease_endpoint.cancel();
    for endpoint in endpoints {
        let _ = endpoint.await;
    }
    let _ = service.stop().await;
    Ok(())
}

/// Two processes started with one `node_id` would both take the node's lease for theirs (and
/// both serve its services' grant requests): refuse to start while another coordinator instance
/// keeps renewing this node's lease or announcing this node. What a process that died left
/// stops being renewed and lapses within one TTL (the bucket's `max_age`); a clean stop deletes
/// its announcement. Both keys are read through the stream's leader: a replica may lag.
async fn refuse_a_twin(
    js: &jetstream::Context,
    node: &str,
    instance: &str,
    ttl: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stream = ferry_service::epoch::open_lease_stream(js, shutdown).await?;
    // The newest write of `key` by another instance of this node: (revision, that instance).
    let other = |key: String| {
        let stream = stream.clone();
        async move {
            let (revision, value) = ferry_service::epoch::lease_key_by_leader(&stream, &key)
                .await
                .ok()??;
            let value = value?;
            let (owner, writer) = match ferry_wire::decode::<Lease>(&value) {
                Ok(lease) if key == topology::LEASE_KEY => (lease.node, lease.instance),
                _ => {
                    let seen = ferry_wire::decode::<NodeSeen>(&value).ok()?;
                    (seen.node, seen.instance)
                }
            };
            (owner == node && !writer.is_empty() && writer != instance).then_some((revision, writer))
        }
    };
    let keys = [topology::LEASE_KEY.to_string(), topology::node_key(node)];
    let mut first = Vec::new();
    for key in &keys {
        first.push(other(key.clone()).await);
    }
    let Some((_, seen)) = first.iter().flatten().next() else {
        return Ok(());
    };
    tracing::info!(node, other = %seen, "node {node} was held or announced by another process moments ago: waiting up to one lease TTL to see whether it is still running");
    let deadline = Instant::now() + ttl + Duration::from_millis(500);
    while Instant::now() < deadline {
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("shut down while checking for another coordinator of node {node}"),
            _ = tokio::time::sleep(ttl / 10) => {}
        }
        for (key, before) in keys.iter().zip(&first) {
            if let Some((revision, writer)) = other(key.clone()).await
                && before.as_ref().is_none_or(|(r, _)| revision > *r)
            {
                anyhow::bail!(
                    "another failover coordinator is running as node_id {node:?} ({writer}); two nodes configured with one node_id would both take the lease for theirs: give every node its own node_id"
                );
            }
        }
    }
    Ok(())
}

/// The lease TTL is the bucket's `max_age`, whatever this node's settings say (every node must
/// agree, and the bucket is what expires keys). A bucket from before the lease had a TTL gets one.
async fn lease_ttl(js: &jetstream::Context, kv: &kv::Store, settings: &Settings) -> anyhow::Result<Duration> {
    let wanted = settings.topology().lease_ttl;
    let mut info = kv.status().await.context("lease bucket status")?.info;
    if info.config.max_age.is_zero() {
        info.config.max_age = wanted;
        js.update_stream(&info.config)
            .await
            .context("give the lease bucket its max age")?;
        return Ok(wanted);
    }
    if info.config.max_age != wanted {
        tracing::warn!(
            bucket_ms = info.config.max_age.as_millis() as u64,
            setting_ms = wanted.as_millis() as u64,
            "lease_ttl_ms differs from the lease bucket's max age; using the bucket's"
        );
    }
    Ok(info.config.max_age)
}

impl Coordinator {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .expect("coordinator state lock is never poisoned")
    }

    /// The `lease` endpoint: what this node's services may do now.
    fn grant(&self, ask: Option<LeaseAsk>) -> LeaseGrant {
        let now = Instant::now();
        let mut shared = self.shared();
        if let Some(ask) = ask {
            shared
                .grantees
                .retain(|_, g| now.duration_since(g.seen) <= GRANTEE_FORGET);
            shared.grantees.insert(
                ask.instance,
                Grantee {
                    seen: now,
                    holding: ask.holding,
                },
            );
        }
        shared.grant(&self.node, now)
    }

    /// Tell this node's services to ask again now; a revocation applies on receipt.
    async fn announce(&self) {
        let grant = self.shared().grant(&self.node, Instant::now());
        self.metrics.lease_valid.set((grant.valid_for_ms > 0) as i64);
        self.metrics.epoch.set(grant.epoch as i64);
        if let Err(e) = self
            .client
            .publish(subjects::node_lease(&self.node), ferry_wire::encode(&grant))
            .await
        {
            tracing::warn!(error = %e, "announce lease change");
        }
    }

    /// The driver: renew while holding, fence at the deadline, acquire when the role says so.
    async fn drive(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next_renewal = Instant::now();
        let mut next_attempt = Instant::now();
        let mut next_announcement = Instant::now();
        // Standbys watch the key (a release shows as a delete at once) and also retry on the
        // timer: an expiry by max age shows up in no watch.
        let mut view = match ferry_service::epoch::watch_lease(
            &self.js,
            ferry_service::EpochGate::default(),
            shutdown.child_token(),
        )
        .await
        {
            Ok(view) => Some(view),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot watch the lease; retrying on the timer only"
                );
                None
            }
        };
        loop {
            let now = Instant::now();
            let (role, epoch, stepping_down) = {
                let s = self.shared();
                (s.role, s.epoch, s.stepping_down)
            };
            match role {
                _ if stepping_down => {}
                Role::Active if epoch == 0 && now >= next_attempt => {
                    next_attempt = now + ACQUIRE_RETRY;
                    self.acquire_as_active().await;
                    next_renewal = Instant::now() + self.ttl / 3;
                }
                Role::Active if epoch > 0 && now >= next_renewal => {
                    next_renewal = if self.renew().await {
                        Instant::now() + self.ttl / 3
                    } else {
                        Instant::now() + TICK
                    };
                }
                Role::Standby if self.mode == FailoverMode::Automatic && now >= next_attempt => {
                    next_attempt = now + ACQUIRE_RETRY;
                    let _writes = self.writes.lock().await;
                    let still_standby = {
                        let s = self.shared();
                        s.role == Role::Standby && !s.stepping_down
                    };
                    if still_standby && let Ok(Acquire::Held(epoch)) = self.acquire().await {
                        self.set_role(
                            Role::Standby,
                            Role::Active,
                            epoch,
                            "lease lapsed: taken over (automatic mode)",
                        )
                        .await;
                    }
                    next_renewal = Instant::now() + self.ttl / 3;
                }
                _ => {}
            }
            self.report_fence().await;
            if Instant::now() >= next_announcement {
                next_announcement = Instant::now() + self.ttl / 3;
                // Off the driver: a slow write must not delay a renewal.
                let this = self.clone();
                tokio::spawn(async move { this.announce_node().await });
            }
            let released = async {
                match view.as_mut() {
                    Some(v) => {
                        if v.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        v.borrow_and_update().holder.is_none()
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
                r = released => if r { next_attempt = Instant::now() },
            }
        }
    }

    /// Once the fence deadline passes without a renewal: count it, say so, revoke at once.
    async fn report_fence(&self) {
        let newly_fenced = {
            let mut s = self.shared();
            let passed = s.epoch > 0 && s.fence_at.is_some_and(|at| Instant::now() >= at);
            let newly = passed && !s.fence_reported;
            s.fence_reported |= passed;
            newly
        };
        if newly_fenced {
            self.metrics.fence_events.inc();
            tracing::error!(node = %self.node, "lease not renewed in time: fenced (no work is taken or committed until it is renewed or acquired again)");
            self.announce().await;
        }
    }

    /// Role `active` without a lease: acquire, or step down to standby if another node holds it.
    async fn acquire_as_active(&self) {
        let _writes = self.writes.lock().await;
        {
            let s = self.shared();
            if s.role != Role::Active || s.stepping_down {
                return;
            }
        }
        match self.acquire().await {
            Ok(Acquire::Held(epoch)) => {
                tracing::info!(node = %self.node, epoch, "lease acquired");
                self.announce().await;
                self.publish_role(Role::Active, Role::Active, epoch, "lease acquired")
                    .await;
            }
            Ok(Acquire::HeldBy { node, epoch, .. }) => {
                let reason = format!("node {node} holds the lease (epoch {epoch})");
                tracing::warn!(node = %self.node, holder = %node, epoch, "another node is active: becoming standby");
                self.set_role(Role::Active, Role::Standby, 0, &reason).await;
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "acquire lease"),
        }
    }

    /// One attempt: `create` (a new epoch), or take up this node's own live lease again by
    /// compare-and-swap (after a coordinator restart, or a create whose reply was lost).
    /// The caller holds `writes`.
    async fn acquire(&self) -> anyhow::Result<Acquire> {
        let now = Utc::now();
        let lease = Lease {
            node: self.node.clone(),
            acquired_at: now,
            epoch: 0,
            mode: self.mode.as_str().to_string(),
            instance: self.instance.clone(),
        };
        let sent = Instant::now();
        let created = tokio::time::timeout(
            self.ttl / 3,
            self.kv.create(topology::LEASE_KEY, ferry_wire::encode(&lease)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("lease create timed out"))?;
        match created {
            Ok(revision) => {
                self.hold(revision, revision, now, sent);
                if let Some(ledger) = &self.ledger {
                    ledger.record(&ledger::Entry::Grant {
                        node: self.node.clone(),
                        epoch: revision,
                        at_ns: ledger::mono_ns(),
                    });
                }
                return Ok(Acquire::Held(revision));
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).context("create lease"),
        }
        let entry = tokio::time::timeout(self.ttl / 3, self.kv.entry(topology::LEASE_KEY))
            .await
            .map_err(|_| anyhow::anyhow!("lease read timed out"))?
            .context("read lease")?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            anyhow::bail!("lease changed while acquiring; retrying");
        };
        let current: Lease = ferry_wire::decode(&entry.value).context("decode lease")?;
        let epoch = current.epoch_at(entry.revision);
        if current.node != self.node {
            return Ok(Acquire::HeldBy {
                node: current.node,
                epoch,
                acquired_at: current.acquired_at,
            });
        }
        if !current.instance.is_empty() && current.instance != self.instance {
            // Another process of this node id holds it (a predecessor whose lease has not lapsed
            // yet, or a misconfigured twin): never take that up as ours.
            anyhow::bail!(
                "the lease of node {} is held by another coordinator process ({}); waiting for it to lapse",
                self.node,
                current.instance
            );
        }
        let resumed = Lease {
            epoch,
            mode: self.mode.as_str().to_string(),
            instance: self.instance.clone(),
            ..current
        };
        let sent = Instant::now();
        let revision = tokio::time::timeout(
            self.ttl / 3,
            self.kv
                .update(topology::LEASE_KEY, ferry_wire::encode(&resumed), entry.revision),
        )
        .await
        .map_err(|_| anyhow::anyhow!("lease update timed out"))?
        .context("take up own lease")?;
        self.hold(epoch, revision, resumed.acquired_at, sent);
        Ok(Acquire::Held(epoch))
    }

    fn hold(&self, epoch: Epoch, revision: u64, acquired_at: DateTime<Utc>, sent: Instant) {
        let mut s = self.shared();
        s.epoch = epoch;
        s.revision = revision;
        s.acquired_at = Some(acquired_at);
        s.fence_at = Some(sent + self.ttl - self.margin);
        s.last_renewal = Some(Utc::now());
        s.revoked_at = None;
        s.fence_reported = false;
        s.accepting = true;
        // Metrics and services learn of it from the caller's `announce`.
    }

    /// Renew by compare-and-swap. Returns false when it should be retried soon.
    async fn renew(&self) -> bool {
        let _writes = self.writes.lock().await;
        let (epoch, revision, acquired_at, fence_at) = {
            let s = self.shared();
            (s.epoch, s.revision, s.acquired_at, s.fence_at)
        };
        if epoch == 0 {
            return true;
        }
        let lease = Lease {
            node: self.node.clone(),
            acquired_at: acquired_at.unwrap_or_else(Utc::now),
            epoch,
            mode: self.mode.as_str().to_string(),
            instance: self.instance.clone(),
        };
        let sent = Instant::now();
        // Waiting past the fence deadline would gain nothing: the grant has run out by then.
        let limit = fence_at
            .map(|at| at.saturating_duration_since(sent))
            .unwrap_or(self.ttl / 3)
            .clamp(Duration::from_millis(200), self.ttl / 3);
        let result = tokio::time::timeout(
            limit,
            self.kv
                .update(topology::LEASE_KEY, ferry_wire::encode(&lease), revision),
        )
        .await;
        match result {
            Ok(Ok(new_revision)) => {
                self.metrics.renewal_seconds.observe(sent.elapsed().as_secs_f64());
                let was_fenced = {
                    let mut s = self.shared();
                    let was_fenced = s.fence_reported;
                    s.revision = new_revision;
                    s.fence_at = Some(sent + self.ttl - self.margin);
                    s.last_renewal = Some(Utc::now());
                    s.fence_reported = false;
                    was_fenced
                };
                if was_fenced {
                    tracing::info!(node = %self.node, epoch, "lease renewed again after a fence");
                    self.announce().await;
                }
                true
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.metrics.renewal_failures.inc();
                // A renewal whose reply was lost may have moved the revision on: adopt it if the
                // key is still this lease; the next renewal's CAS tells whether that read was true.
                if let Ok(Ok(Some(entry))) =
                    tokio::time::timeout(limit, self.kv.entry(topology::LEASE_KEY)).await
                    && entry.operation == kv::Operation::Put
                    && let Ok(current) = ferry_wire::decode::<Lease>(&entry.value)
                    && current.node == self.node
                    && current.epoch_at(entry.revision) == epoch
                {
                    self.shared().revision = entry.revision;
                    return false;
                }
                self.lost(epoch).await;
                true
            }
            Ok(Err(e)) => {
                self.metrics.renewal_failures.inc();
                tracing::warn!(error = %e, "lease renewal failed; retrying");
                false
            }
            Err(_) => {
                self.metrics.renewal_failures.inc();
                tracing::warn!(
                    timeout_ms = limit.as_millis() as u64,
                    "lease renewal timed out; retrying"
                );
                false
            }
        }
    }

    /// The lease is gone (lapsed or taken): fence at once; the driver acquires again or steps down.
    async fn lost(&self, epoch: Epoch) {
        let was_valid = {
            let mut s = self.shared();
            let was_valid = !s.fence_reported;
            s.drop_lease();
            was_valid
        };
        if was_valid {
            self.metrics.fence_events.inc();
        }
        tracing::error!(node = %self.node, epoch, "lease lost: fenced");
        self.announce().await;
    }

    async fn set_role(&self, from: Role, to: Role, epoch: Epoch, reason: &str) {
        if let Err(e) = self.store.save(to, reason) {
            // The role takes effect regardless; not recording it is reported loudly.
            tracing::error!(
                error = format!("{e:#}"),
                "could not record the role in the data dir"
            );
        }
        {
            let mut s = self.shared();
            s.role = to;
            s.stepping_down = false;
            if to != Role::Active {
                s.drop_lease();
            }
        }
        self.metrics.set_role(to);
        self.metrics
            .transitions
            .with_label_values(&[from.as_str(), to.as_str()])
            .inc();
        tracing::info!(node = %self.node, %from, %to, epoch, reason, "role changed");
        self.announce().await;
        self.publish_role(from, to, epoch, reason).await;
        self.announce_node().await;
    }

    /// The role event on `ferry.event.role.<node>` and its audit record (best effort: a node cut
    /// off from NATS logs it instead).
    async fn publish_role(&self, from: Role, to: Role, epoch: Epoch, reason: &str) {
        let event = RoleChanged {
            node: self.node.clone(),
            from,
            to,
            epoch,
            reason: reason.to_string(),
            at: Utc::now(),
        };
        let payload = ferry_wire::encode(&event);
        for subject in [
            subjects::role_changed(&self.node),
            subjects::audit_role(&self.node),
        ] {
            let js = self.js.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let publish = async { js.publish(subject.clone(), payload).await?.await };
                match tokio::time::timeout(Duration::from_secs(10), publish).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(%subject, error = %e, "publish role change"),
                    Err(_) => tracing::warn!(%subject, "publish role change timed out"),
                }
            });
        }
    }

    async fn announce_node(&self) {
        let seen = NodeSeen {
            node: self.node.clone(),
            role: self.shared().role,
            mode: self.mode,
            seen_at: Utc::now(),
            instance: self.instance.clone(),
        };
        // Someone else announced this node since this process last did: a second process
        // started with the same node_id (both at once, so neither refused to start). Stop: a node
        // without a coordinator fences itself, two coordinators of one node might both be active.
        let announced = self.shared().announced;
        if announced > 0
            && let Ok(Ok(Some(entry))) = tokio::time::timeout(
                Duration::from_secs(1),
                self.kv.entry(topology::node_key(&self.node)),
            )
            .await
            && entry.revision > announced
            && let Ok(other) = ferry_wire::decode::<NodeSeen>(&entry.value)
            && other.instance != self.instance
        {
            tracing::error!(node = %self.node, other = %other.instance, "another failover coordinator announces this node_id: stopping; give every node its own node_id");
            self.shutdown.cancel();
            return;
        }
        let put = self
            .kv
            .put(topology::node_key(&self.node), ferry_wire::encode(&seen));
        match tokio::time::timeout(Duration::from_secs(1), put).await {
            Ok(Ok(revision)) => self.shared().announced = revision,
            Ok(Err(e)) => tracing::debug!(error = %e, "announce node"),
            Err(_) => tracing::debug!("announce node timed out"),
        }
    }

    async fn promote(&self, req: PromoteRequest) -> anyhow::Result<FailoverStatus> {
        let deadline = Instant::now() + Duration::from_millis(req.wait_ms);
        let mut imported = false;
        loop {
            {
                let _writes = self.writes.lock().await;
                let (role, valid) = {
                    let s = self.shared();
                    (s.role, !s.valid_for(Instant::now()).is_zero())
                };
                match role {
                    Role::Disabled => anyhow::bail!(
                        "node {} is disabled; run `ferry failover enable` on it first",
                        self.node
                    ),
                    Role::Active if valid => return Ok(self.status().await),
                    _ => {}
                }
                // A file-based standby imports the newest complete bundle first, once.
                if let Some(files) = &self.files
                    && !req.skip_import
                    && !imported
                {
                    files
                        .import_newest(&self.js, &req.by)
                        .await
                        .context("import the newest bundle before promoting")?;
                    imported = true;
                }
                // A standby in mirror mode takes its copies of the primary's stores for its own
                // first: the same contents, now writable.
                if self.standby.attached() {
                    self.standby
                        .detach(&req.by)
                        .await
                        .context("detach the mirrors before promoting")?;
                }
                match self.acquire().await? {
                    Acquire::Held(epoch) => {
                        let reason = format!("promoted by {}", req.by);
                        self.set_role(role, Role::Active, epoch, &reason).await;
                        return Ok(self.status().await);
                    }
                    Acquire::HeldBy {
                        node,
                        epoch,
                        acquired_at,
                    } => {
                        let age = (Utc::now() - acquired_at).num_seconds();
                        if !req.after_expiry {
                            anyhow::bail!(
                                "refused: node {node} holds a live lease (epoch {epoch}, held for {age} s) and is renewing it; \
                                 shut it down first (`ferry shutdown` on {node}), or promote with --after-expiry to wait until its lease lapses (TTL {} s)",
                                self.ttl.as_secs_f64()
                            );
                        }
                        if Instant::now() >= deadline {
                            anyhow::bail!(
                                "refused: node {node} still holds the lease (epoch {epoch}) after waiting {} s",
                                req.wait_ms / 1000
                            );
                        }
                    }
                }
            }
            tokio::time::sleep(ACQUIRE_RETRY).await;
        }
    }

    /// demote, disable, enable, shutdown.
    async fn change(&self, what: &str, req: RoleRequest) -> anyhow::Result<FailoverStatus> {
        let role = self.shared().role;
        let drain = Duration::from_millis(req.drain_timeout_ms);
        if what == subjects::api::DEMOTE && role != Role::Active {
            anyhow::bail!("node {} is not active (its role is {role})", self.node);
        }
        if what == subjects::api::ENABLE && role != Role::Disabled {
            anyhow::bail!("node {} is not disabled (its role is {role})", self.node);
        }
        // From here until the new role is recorded (or the process stops) nothing re-acquires:
        // the driver would otherwise take a just-released lease straight back.
        self.shared().stepping_down = what != subjects::api::ENABLE;
        match what {
            subjects::api::DEMOTE => {
                self.drain(drain).await;
                self.revoke_and_release(self.ttl).await;
                self.set_role(role, Role::Standby, 0, &format!("demoted by {}", req.by))
                    .await;
            }
            subjects::api::DISABLE => {
                if role == Role::Active {
                    self.drain(drain).await;
                    self.revoke_and_release(self.ttl).await;
                }
                self.set_role(role, Role::Disabled, 0, &format!("disabled by {}", req.by))
                    .await;
            }
            subjects::api::ENABLE => {
                self.set_role(role, Role::Standby, 0, &format!("enabled by {}", req.by))
                    .await;
            }
            subjects::api::SHUTDOWN => {
                if role == Role::Active {
                    self.drain(drain).await;
                    self.revoke_and_release(self.ttl).await;
                }
                if req.disable && role != Role::Disabled {
                    self.set_role(
                        role,
                        Role::Disabled,
                        0,
                        &format!("disabled and shut down by {}", req.by),
                    )
                    .await;
                } else {
                    self.publish_role(role, role, 0, &format!("service shut down by {}", req.by))
                        .await;
                }
                let status = self.status().await;
                // Reply first, then stop every service of the node (this one included).
                let client = self.client.clone();
                let subject = subjects::node_stop(&self.node);
                let shutdown = self.shutdown.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = client.publish(subject, "{}".into()).await;
                    let _ = client.flush().await;
                    shutdown.cancel();
                });
                return Ok(status);
            }
            other => {
                self.shared().stepping_down = false;
                anyhow::bail!("unknown role change {other}")
            }
        }
        Ok(self.status().await)
    }

    /// Stop taking new runs and wait (up to `timeout`) for runs in flight on this node to finish.
    async fn drain(&self, timeout: Duration) {
        self.shared().accepting = false;
        self.announce().await;
        tracing::info!(node = %self.node, timeout_s = timeout.as_secs(), "draining: no new runs; waiting for runs in flight");
        let deadline = Instant::now() + timeout;
        loop {
            let running: anyhow::Result<serde_json::Value> = tokio::time::timeout(
                Duration::from_secs(2),
                api::call(
                    &self.client,
                    &self.node,
                    subjects::service::FILE_COLLECTOR,
                    subjects::api::STATUS,
                    &(),
                ),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer")));
            match running {
                Ok(v) if v["running_runs"].as_i64() == Some(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "drain: cannot ask the file collector; not waiting"
                    );
                    return;
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!("drain timeout: runs still in flight stop before their commit point");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Withhold grants, wait (up to `wait`, and never past the fence deadline) until every
    /// service that held a grant says it holds none, then delete the lease with its revision.
    /// If some service does not confirm in time the lease is left to lapse: by then this node
    /// is fenced anyway, and deleting early could let another node start while it still works.
    async fn revoke_and_release(&self, wait: Duration) {
        let (epoch, fence_at) = {
            let mut s = self.shared();
            if s.epoch == 0 {
                return;
            }
            s.revoked_at = Some(Instant::now());
            (s.epoch, s.fence_at)
        };
        self.announce().await;
        let revoked_at = Instant::now();
        let deadline = revoked_at + wait;
        let how;
        loop {
            let now = Instant::now();
            let confirmed = {
                let s = self.shared();
                s.grantees.values().all(|g| {
                    now.duration_since(g.seen) > GRANTEE_FORGET
                        || (g.seen >= revoked_at && g.holding != epoch)
                })
            };
            let fenced = fence_at.is_none_or(|at| now >= at);
            if confirmed || fenced {
                how = if confirmed {
                    "every service confirmed it holds no grant"
                } else {
                    "every grant has run out"
                };
                break;
            }
            if now >= deadline {
                tracing::warn!(
                    epoch,
                    "services did not confirm the revocation in time; the lease will lapse by itself"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _writes = self.writes.lock().await;
        let revision = self.shared().revision;
        let deleted = tokio::time::timeout(
            Duration::from_secs(2),
            self.kv
                .delete_expect_revision(topology::LEASE_KEY, Some(revision)),
        )
        .await;
        match deleted {
            Ok(Ok(())) => tracing::info!(node = %self.node, epoch, "lease released ({how})"),
            Ok(Err(e)) => tracing::warn!(error = %e, "release lease; it will lapse by itself"),
            Err(_) => tracing::warn!("release lease timed out; it will lapse by itself"),
        }
        self.shared().drop_lease();
        self.announce().await;
    }

    /// `ferry standby attach`: refused on an active node, whose stores would be replaced.
    async fn standby_attach(
        &self,
        req: ferry_wire::standby::AttachRequest,
    ) -> anyhow::Result<ferry_wire::standby::StandbyStatus> {
        let _writes = self.writes.lock().await;
        let role = self.shared().role;
        if role == Role::Active {
            anyhow::bail!(
                "node {} is active: attaching would replace its stores with the primary's; demote it first (`ferry failover demote`)",
                self.node
            );
        }
        if let Some(files) = &self.files {
            anyhow::bail!(
                "node {} is a file-based standby (failover_coordinator.import_folder = {}): mirror mode and file-based \
                 replication exclude each other; remove import_folder from its settings first",
                self.node,
                files.folder().display()
            );
        }
        self.standby.attach(req).await?;
        Ok(self.standby_status().await)
    }

    async fn standby_status(&self) -> ferry_wire::standby::StandbyStatus {
        let shared_cluster = !self.status().await.other_nodes.is_empty();
        let mut status = self.standby.status(shared_cluster).await;
        if let Some(files) = self.files.clone() {
            status.mode = ferry_wire::standby::ReplicationMode::Files;
            status.import_folder = Some(files.folder().display().to_string());
            status.imported = files.imported();
            if let Ok((newest, unusable)) = tokio::task::spawn_blocking(move || files.seen()).await {
                status.newest_bundle = newest;
                status.unusable_bundles = unusable;
            }
        }
        status
    }

    async fn status(&self) -> FailoverStatus {
        let (role, epoch, valid, last_renewal) = {
            let s = self.shared();
            (
                s.role,
                s.epoch,
                !s.valid_for(Instant::now()).is_zero(),
                s.last_renewal,
            )
        };
        let entry = tokio::time::timeout(Duration::from_secs(2), self.kv.entry(topology::LEASE_KEY))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .filter(|e| e.operation == kv::Operation::Put);
        let lease = entry.as_ref().and_then(|e| {
            ferry_wire::decode::<Lease>(&e.value)
                .ok()
                .map(|l| (l.epoch_at(e.revision), l))
        });
        let scheduler = tokio::time::timeout(
            Duration::from_secs(2),
            api::call::<_, ferry_wire::SchedulerStatus>(
                &self.client,
                &self.node,
                subjects::service::SCHEDULER,
                subjects::api::STATUS,
                &(),
            ),
        )
        .await;
        let scheduler = match scheduler {
            Ok(Ok(s)) if s.enabled && valid => "running",
            Ok(Ok(s)) if s.enabled => "enabled (not firing: node not active)",
            Ok(Ok(_)) => "stopped",
            _ => "unreachable",
        }
        .to_string();
        FailoverStatus {
            node: self.node.clone(),
            role,
            mode: self.mode,
            epoch,
            lease_valid: valid,
            lease_holder: lease.as_ref().map(|(_, l)| l.node.clone()),
            lease_epoch: lease.as_ref().map(|(e, _)| *e).unwrap_or(0),
            lease_acquired_at: lease.as_ref().map(|(_, l)| l.acquired_at),
            lease_age_secs: lease
                .as_ref()
                .map(|(_, l)| (Utc::now() - l.acquired_at).num_milliseconds() as f64 / 1000.0),
            last_renewal,
            lease_ttl_ms: self.ttl.as_millis() as u64,
            scheduler,
            other_nodes: self.other_nodes().await,
        }
    }

    async fn other_nodes(&self) -> Vec<NodeSeen> {
        use futures::StreamExt;
        let Ok(Ok(keys)) = tokio::time::timeout(Duration::from_secs(2), self.kv.keys()).await else {
            return Vec::new();
        };
        let keys: Vec<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
        let mut nodes = Vec::new();
        for key in keys {
            if !key.starts_with("node.") || key == topology::node_key(&self.node) {
                continue;
            }
            if let Ok(Some(value)) = self.kv.get(&key).await
                && let Ok(seen) = ferry_wire::decode::<NodeSeen>(&value)
            {
                nodes.push(seen);
            }
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        nodes
    }
}
