//! scheduler: owns the configuration API and decides when tasks run.
//!
//! It fires schedule slots, manual runs (`ferry task run`) and NATS-event triggers
//! (`ferry.trigger.<task>`) as `RunRequested` messages into the run queue, stamped with the
//! epoch of the lease this node holds.
//!
//! Invariants:
//! - A slot is published with message id `slot:<task>:<unix seconds>` (JetStream drops a repeat
//!   within the dedupe window) and recorded in `ferry_sched/last.<task>` afterwards; a slot at or
//!   before the recorded one is never published again, so a restart never fires a slot twice.
//! - Only a node whose coordinator grants it the lease (and is not draining) fires anything; it
//!   stamps that epoch on every request. On becoming active (a promotion), the scheduler starts
//!   enabled or disabled by `start_with_scheduler_disabled`, and applies the missed-run policy.
//! - `apply` stores the whole configuration as one document with compare-and-swap: all or nothing.

mod metrics;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, context::PublishErrorKind, kv, message::PublishMessage};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use ferry_config::Config;
use ferry_service::ledger::{self, Ledger};
use ferry_service::settings::MissedRuns;
use ferry_service::{EpochGate, NodeLease, Settings, api, http, nats};
use ferry_wire::{
    ApplyRequest, ApplyResponse, ConfigChanges, ConfigDocument, Role, RollbackRequest, RunRequested,
    RunTaskRequest, RunTaskResponse, ScheduledTask, SchedulerStatus, Trigger, subjects, topology,
};

pub use metrics::Metrics;

pub const SERVICE: &str = subjects::service::SCHEDULER;

/// How long a node that cannot start runs waits before answering a trigger request with why: the
/// active node's answer (within milliseconds) comes first.
const NOT_ACTIVE_REPLY_GRACE: Duration = Duration::from_secs(1);

/// Shared state of one scheduler instance.
struct Scheduler {
    node: String,
    js: jetstream::Context,
    config_kv: kv::Store,
    sched_kv: kv::Store,
    /// The configuration in force; written by the KV watch and by `apply` (so a run requested
    /// right after an apply sees it), whichever has the newer revision.
    config: watch::Sender<Arc<Loaded>>,
    lease: NodeLease,
    /// Highest epoch seen anywhere (reported in status, like every service).
    gate: EpochGate,
    ledger: Option<Ledger>,
    enabled: AtomicBool,
    /// `!start_with_scheduler_disabled`: the state on start-up and on every promotion.
    start_enabled: bool,
    /// Wakes the slot loop when the configuration or the enabled flag changes.
    changed: Notify,
    metrics: Metrics,
    missed_runs: MissedRuns,
    missed_runs_window: chrono::Duration,
    /// The node's keymat: secrets in an applied configuration must open with it.
    keymat: Arc<ferry_keymat::KeymatStore>,
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, js) = nats::connect(&settings, SERVICE, &shutdown).await?;
    let metrics = Metrics::new()?;
    http::serve(
        settings.scheduler.metrics_addr,
        metrics.registry.clone(),
        http::nats_health(&client),
        shutdown.child_token(),
    )
    .await?;
    let config_kv = nats::open_kv(&js, topology::KV_CONFIG, &shutdown).await?;
    let sched_kv = nats::open_kv(&js, topology::KV_SCHED, &shutdown).await?;
    let (gate, lease) =
        ferry_service::lease::fencing(&client, &js, &settings.node_id, SERVICE, &shutdown).await?;
    let config = watch_config(&config_kv, shutdown.child_token()).await?;
    let keymat = settings.open_keymat()?;

    let enabled = !settings.scheduler.start_with_scheduler_disabled;
    if !enabled {
        tracing::info!(
            "scheduler starts disabled (start_with_scheduler_disabled); `ferry scheduler start` enables it"
        );
    }
    metrics.enabled.set(enabled as i64);
    let scheduler = Arc::new(Scheduler {
        node: settings.node_id.clone(),
        js: js.clone(),
        config_kv,
        sched_kv,
        config,
        lease,
        gate,
        ledger: Ledger::open(settings.ledger.as_deref())?,
        enabled: AtomicBool::new(enabled),
        start_enabled: enabled,
        changed: Notify::new(),
        metrics,
        missed_runs: settings.scheduler.missed_runs,
        missed_runs_window: chrono::Duration::seconds(settings.scheduler.missed_runs_window_secs as i64),
        keymat,
    });

    let (service, group) = api::register(
        &client,
        &settings.node_id,
        SERVICE,
        "Ferry scheduler and configuration API",
    )
    .await?;
    let mut endpoints = Vec::new();
    let s = scheduler.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::APPLY,
            shutdown.child_token(),
            move |req: ApplyRequest| {
                let s = s.clone();
                async move { s.apply(req).await.map_err(|e| format!("{e:#}")) }
            },
        )
        .await?,
    );
    let s = scheduler.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::ROLLBACK,
            shutdown.child_token(),
            move |req: RollbackRequest| {
                let s = s.clone();
                async move { s.rollback(req).await.map_err(|e| format!("{e:#}")) }
            },
        )
        .await?,
    );
    let s = scheduler.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::RUN,
            shutdown.child_token(),
            move |req: RunTaskRequest| {
                let s = s.clone();
                async move {
                    s.run_with(&req.task, Trigger::Manual { by: req.by }, req.parameters)
                        .await
                        .map(|run_id| RunTaskResponse { run_id })
                        .map_err(|e| format!("{e:#}"))
                }
            },
        )
        .await?,
    );
    for (endpoint, on) in [(subjects::api::START, true), (subjects::api::STOP, false)] {
        let s = scheduler.clone();
        endpoints.push(
            api::serve_json(&group, endpoint, shutdown.child_token(), move |(): ()| {
                let s = s.clone();
                async move {
                    s.set_enabled(on);
                    Ok(s.status().await)
                }
            })
            .await?,
        );
    }
    let s = scheduler.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::KEYMAT,
            shutdown.child_token(),
            move |(): ()| {
                let s = s.clone();
                async move {
                    let keymat = s.keymat.current().map_err(|e| e.to_string())?;
                    let public = keymat.public();
                    Ok(ferry_wire::KeymatInfo {
                        key_id: public.key_id,
                        public_key: public.public_key,
                    })
                }
            },
        )
        .await?,
    );
    let s = scheduler.clone();
    endpoints.push(
        api::serve_json(
            &group,
            subjects::api::STATUS,
            shutdown.child_token(),
            move |(): ()| {
                let s = s.clone();
                async move { Ok(s.status().await) }
            },
        )
        .await?,
    );

    let triggers = tokio::spawn(
        scheduler
            .clone()
            .serve_triggers(client.clone(), shutdown.child_token()),
    );
    let slots = tokio::spawn(scheduler.clone().fire_slots(shutdown.child_token()));
    let promotions = tokio::spawn(scheduler.clone().follow_promotions(shutdown.child_token()));

    shutdown.cancelled().await;
    for e in endpoints {
        let _ = e.await;
    }
    let _ = triggers.await;
    let _ = slots.await;
    let _ = promotions.await;
    let _ = service.stop().await;
    Ok(())
}

/// Follow the stored configuration document.
/// A stored configuration and its KV revision.
#[derive(Debug, Default)]
struct Loaded {
    revision: u64,
    config: Config,
}

/// Replace the configuration in force if `revision` is newer.
fn install(tx: &watch::Sender<Arc<Loaded>>, revision: u64, config: Config) {
    tx.send_if_modified(|current| {
        if revision > current.revision {
            *current = Arc::new(Loaded { revision, config });
            true
        } else {
            false
        }
    });
}

/// Follow the stored configuration document.
async fn watch_config(
    config_kv: &kv::Store,
    shutdown: CancellationToken,
) -> anyhow::Result<watch::Sender<Arc<Loaded>>> {
    let (tx, _) = watch::channel(Arc::new(Loaded::default()));
    // Retried: on a cluster still electing the bucket's leader the read fails with "no
    // responders" (CI saw a standby's scheduler exit on it and its node, once promoted, run
    // nothing).
    let stored = nats::retry("read configuration", &shutdown, || async {
        config_kv
            .entry(topology::CONFIG_KEY)
            .await
            .context("read configuration")
    })
    .await?;
    if let Some(entry) = stored {
        install(
            &tx,
            entry.revision,
            ferry_wire::decode::<ConfigDocument>(&entry.value)?.config,
        );
    }
    let mut updates = nats::retry("watch configuration", &shutdown, || async {
        config_kv
            .watch(topology::CONFIG_KEY)
            .await
            .context("watch configuration")
    })
    .await?;
    let watcher_tx = tx.clone();
    let config_kv = config_kv.clone();
    tokio::spawn(async move {
        let mut reread = tokio::time::interval(CONFIG_REREAD);
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = updates.next() => e,
                _ = reread.tick() => {
                    reread_config(&config_kv, &watcher_tx).await;
                    continue;
                }
            };
            match entry {
                Some(Ok(entry)) => match ferry_wire::decode::<ConfigDocument>(&entry.value) {
                    Ok(doc) => {
                        tracing::info!(
                            revision = entry.revision,
                            tasks = doc.config.tasks.len(),
                            "configuration changed"
                        );
                        install(&watcher_tx, entry.revision, doc.config);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "stored configuration unreadable; keeping the previous one")
                    }
                },
                Some(Err(e)) => tracing::warn!(error = %e, "configuration watch error"),
                None => break,
            }
        }
    });
    Ok(tx)
}

/// How often the stored configuration is read besides the watch.
const CONFIG_REREAD: Duration = Duration::from_secs(1);

/// The watch's backstop: the bucket itself can be replaced under it (`ferry standby attach`
/// deletes this node's copy and creates a mirror of the primary's, whose consumer the watch
/// loses), and then only a read sees the new document. A revision that differs from the one in
/// force replaces it (a replaced bucket's history can be shorter); should this overtake a newer
/// revision the watch just installed, the next read puts that back.
async fn reread_config(config_kv: &kv::Store, tx: &watch::Sender<Arc<Loaded>>) {
    let Ok(Some(entry)) = config_kv.entry(topology::CONFIG_KEY).await else {
        return;
    };
    if entry.operation != kv::Operation::Put || entry.revision == tx.borrow().revision {
        return;
    }
    match ferry_wire::decode::<ConfigDocument>(&entry.value) {
        Ok(doc) => {
            tracing::info!(
                revision = entry.revision,
                tasks = doc.config.tasks.len(),
                "configuration changed (read)"
            );
            tx.send_replace(Arc::new(Loaded {
                revision: entry.revision,
                config: doc.config,
            }));
        }
        Err(e) => tracing::error!(error = %e, "stored configuration unreadable; keeping the previous one"),
    }
}

/// Every secret of `config` that this node's keymat cannot open (sealed under another keymat, or
/// moved from another host or field), as configuration errors. The message names host, field and
/// both key ids, never the value.
fn unopenable_secrets(
    config: &ferry_config::Config,
    keymat: &ferry_keymat::Keymat,
) -> Vec<ferry_config::ConfigError> {
    let mut errors = Vec::new();
    for host in config.hosts.values() {
        for (field, secret) in host.spec.secrets() {
            if let Err(e) = keymat.open(&ferry_config::Secret::binding(&host.name, field), secret) {
                errors.push(ferry_config::ConfigError {
                    scope: format!("host {:?}", host.name),
                    field: field.to_string(),
                    value: String::new(),
                    message: e.to_string(),
                });
            }
        }
    }
    for (scope, field, binding, secret) in config.other_secrets() {
        if let Err(e) = keymat.open(&binding, secret) {
            errors.push(ferry_config::ConfigError {
                scope,
                field,
                value: String::new(),
                message: e.to_string(),
            });
        }
    }
    errors
}

/// Sealing uses a fresh nonce each time: a secret that opens to the same plaintext as the stored
/// one keeps the stored sealing, so applying the same file again changes nothing (no new
/// revision, no `~ host`, no rebuilt connections).
fn keep_stored_sealing(config: &mut Config, stored: &Config, keymat: &ferry_keymat::Keymat) {
    for (name, host) in config.hosts.iter_mut() {
        let Some(old) = stored.hosts.get(name) else {
            continue;
        };
        let old: std::collections::HashMap<&str, &ferry_config::Secret> =
            old.spec.secrets().into_iter().collect();
        for (field, secret) in host.spec.secrets_mut() {
            let Some(&before) = old.get(field) else {
                continue;
            };
            let binding = ferry_config::Secret::binding(name, field);
            if let (Ok(new), Ok(was)) = (keymat.open(&binding, secret), keymat.open(&binding, before))
                && new.as_str() == was.as_str()
            {
                *secret = before.clone();
            }
        }
    }
    let before: std::collections::HashMap<String, ferry_config::Secret> = stored
        .other_secrets()
        .into_iter()
        .map(|(_, _, binding, secret)| (binding, secret.clone()))
        .collect();
    for (binding, secret) in config.other_secrets_mut() {
        if let Some(was) = before.get(&binding)
            && let (Ok(new), Ok(old)) = (keymat.open(&binding, secret), keymat.open(&binding, was))
            && new.as_str() == old.as_str()
        {
            *secret = was.clone();
        }
    }
}

/// How [`Scheduler::store`] stores a configuration.
struct Store {
    source_name: String,
    applied_by: String,
    dry_run: bool,
    prune: bool,
}

/// One error per stored task or host the applied file leaves out: removing them needs `prune`.
fn unpruned_removals(changes: &ConfigChanges) -> Vec<ferry_config::ConfigError> {
    let kinds = [("task", &changes.tasks.removed), ("host", &changes.hosts.removed)];
    kinds
        .into_iter()
        .flat_map(|(kind, names)| names.iter().map(move |name| (kind, name)))
        .map(|(kind, name)| ferry_config::ConfigError {
            scope: format!("{kind} {name:?}"),
            field: String::new(),
            value: String::new(),
            message: "is stored but not in this file; applying it would remove it: add it to the \
                      file, or pass --prune to remove it"
                .into(),
        })
        .collect()
}

impl Scheduler {
    /// Validate and store a configuration, all or nothing. Refuses to remove a stored task or
    /// host the file leaves out unless `prune` says so.
    async fn apply(&self, req: ApplyRequest) -> anyhow::Result<ApplyResponse> {
        let config = match req.config.validate_with(&ferry_processes::configured::check) {
            Ok(c) => c,
            Err(errors) => {
                tracing::info!(source = %req.source_name, problems = errors.0.len(), "configuration rejected");
                return Ok(ApplyResponse::Rejected { errors: errors.0 });
            }
        };
        let store = Store {
            source_name: req.source_name,
            applied_by: req.applied_by,
            dry_run: req.dry_run,
            prune: req.prune,
        };
        self.store(config, store).await
    }

    /// `ferry config rollback`: store an earlier revision's configuration again, whole, as a new
    /// revision (history stays linear; the rollback itself can be rolled back).
    async fn rollback(&self, req: RollbackRequest) -> anyhow::Result<ApplyResponse> {
        let refused = |message: String| {
            Ok(ApplyResponse::Rejected {
                errors: vec![ferry_config::ConfigError {
                    scope: format!("revision {}", req.revision),
                    field: String::new(),
                    value: String::new(),
                    message,
                }],
            })
        };
        let entry = match self
            .config_kv
            .entry_for_revision(topology::CONFIG_KEY, req.revision)
            .await
        {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
            Ok(Some(_)) => return refused("is a deletion, not a configuration".into()),
            Ok(None) => {
                return refused(format!(
                    "is not in the configuration history (it keeps the last {} revisions; \
                     `ferry config history` lists them)",
                    topology::CONFIG_HISTORY
                ));
            }
            Err(e) => {
                // The server answers "no message found" for a revision it no longer keeps.
                if e.to_string().contains("no message found") || e.to_string().contains("not found") {
                    return refused(format!(
                        "is not in the configuration history (it keeps the last {} revisions; \
                         `ferry config history` lists them)",
                        topology::CONFIG_HISTORY
                    ));
                }
                return Err(anyhow::Error::new(e).context("read the configuration history"));
            }
        };
        let doc: ConfigDocument = match ferry_wire::decode(&entry.value) {
            Ok(doc) => doc,
            Err(e) => return refused(format!("cannot be read: {e}")),
        };
        let store = Store {
            source_name: format!("rollback to revision {} ({})", req.revision, doc.source_name),
            applied_by: req.applied_by,
            dry_run: req.dry_run,
            prune: true,
        };
        self.store(doc.config, store).await
    }

    /// Store a validated configuration, all or nothing, and say what it changed.
    async fn store(&self, mut config: Config, how: Store) -> anyhow::Result<ApplyResponse> {
        // A standby in mirror mode holds a read-only copy of the primary's configuration.
        if !how.dry_run {
            ferry_service::standby::refuse_if_mirror(&self.js, topology::KV_CONFIG, "configuration", "apply")
                .await
                .map_err(anyhow::Error::msg)?;
        }
        let keymat = self.keymat.current().context("read the node's keymat")?;
        let unopened = unopenable_secrets(&config, &keymat);
        if !unopened.is_empty() {
            return Ok(ApplyResponse::Rejected { errors: unopened });
        }
        let tasks: Vec<String> = config.tasks.keys().cloned().collect();
        let hosts: Vec<String> = config.hosts.keys().cloned().collect();
        let current = self
            .config_kv
            .entry(topology::CONFIG_KEY)
            .await
            .context("read configuration")?;
        let stored = current
            .as_ref()
            .and_then(|entry| ferry_wire::decode::<ConfigDocument>(&entry.value).ok());
        if let Some(doc) = &stored {
            keep_stored_sealing(&mut config, &doc.config, &keymat);
        }
        let empty = Config::default();
        let changes = ConfigChanges::between(stored.as_ref().map_or(&empty, |d| &d.config), &config);
        if !how.prune {
            let removals = unpruned_removals(&changes);
            if !removals.is_empty() {
                tracing::info!(source = %how.source_name, removals = removals.len(), "apply would remove tasks or hosts; refused without prune");
                return Ok(ApplyResponse::Rejected { errors: removals });
            }
        }
        if how.dry_run {
            return Ok(ApplyResponse::Valid {
                tasks,
                hosts,
                changes,
            });
        }
        if let (Some(entry), Some(doc)) = (&current, &stored)
            && doc.config == config
        {
            return Ok(ApplyResponse::Applied {
                revision: entry.revision,
                tasks,
                hosts,
                unchanged: true,
                changes,
            });
        }
        let doc = ConfigDocument {
            applied_at: Utc::now(),
            applied_by: how.applied_by,
            source_name: how.source_name,
            keymat_id: Some(keymat.key_id().to_string()),
            config: config.clone(),
        };
        let payload = ferry_wire::encode(&doc);
        let revision = match current {
            Some(entry) => self
                .config_kv
                .update(topology::CONFIG_KEY, payload, entry.revision)
                .await
                .context("store configuration (changed concurrently? apply again)")?,
            None => self
                .config_kv
                .create(topology::CONFIG_KEY, payload)
                .await
                .context("store configuration (changed concurrently? apply again)")?,
        };
        tracing::info!(revision, by = %doc.applied_by, source = %doc.source_name, "configuration applied");
        install(&self.config, revision, config);
        self.metrics.applies.inc();
        Ok(ApplyResponse::Applied {
            revision,
            tasks,
            hosts,
            unchanged: false,
            changes,
        })
    }

    fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
        self.metrics.enabled.set(on as i64);
        self.changed.notify_one();
        tracing::info!(
            enabled = on,
            "scheduler {}",
            if on { "started" } else { "stopped" }
        );
    }

    /// The epoch this node may stamp on work, or why it may not fire.
    fn active_epoch(&self) -> anyhow::Result<u64> {
        if let Some(epoch) = self.lease.accepting() {
            return Ok(epoch);
        }
        match self.lease.role() {
            Role::Active if self.lease.current().is_some() => anyhow::bail!(
                "node {} is draining (demote or shutdown in progress): no new runs",
                self.node
            ),
            Role::Active => anyhow::bail!(
                "node {} is fenced: it holds no lease renewed in time (is its failover-coordinator running and connected?)",
                self.node
            ),
            role => anyhow::bail!("node {} is {role}, not active", self.node),
        }
    }

    /// On every promotion (role becomes active) the scheduler starts enabled or disabled as on
    /// start-up (`start_with_scheduler_disabled`). Whenever the node starts taking work (at
    /// start-up once its lease is granted, on a promotion, after a fence) the missed-run policy
    /// applies to the slots that passed meanwhile.
    async fn follow_promotions(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.lease.subscribe();
        let mut previous_role = changes.borrow().role;
        let mut was_accepting = false;
        loop {
            let state = *changes.borrow_and_update();
            if state.role == Role::Active && previous_role != Role::Active {
                tracing::info!(
                    epoch = state.epoch,
                    "node promoted: scheduler {}",
                    if self.start_enabled {
                        "starts"
                    } else {
                        "stays stopped (start_with_scheduler_disabled)"
                    }
                );
                self.set_enabled(self.start_enabled);
            }
            if state.accepting && !was_accepting {
                self.catch_up(Utc::now()).await;
            }
            previous_role = state.role;
            was_accepting = state.accepting;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                c = changes.changed() => if c.is_err() { return },
            }
        }
    }

    /// Whether the configuration in force has `task`; if not, the stored one is read first (a
    /// standby promoted a moment after its bucket was replaced by a mirror may not have read
    /// it yet).
    async fn knows(&self, task: &str) -> bool {
        if self.config.borrow().config.tasks.contains_key(task) {
            return true;
        }
        reread_config(&self.config_kv, &self.config).await;
        self.config.borrow().config.tasks.contains_key(task)
    }

    /// Request a run outside the schedule (manual or event). An event trigger's trace headers,
    /// if any, make the run part of the publisher's trace.
    async fn run_now(
        &self,
        task: &str,
        trigger: Trigger,
        headers: Option<&async_nats::HeaderMap>,
    ) -> anyhow::Result<Uuid> {
        if !self.knows(task).await {
            anyhow::bail!("unknown task {task:?}");
        }
        let run_id = Uuid::now_v7();
        let message_id = format!("run:{run_id}");
        self.request(task, run_id, trigger, &message_id, headers, BTreeMap::new())
            .await?;
        Ok(run_id)
    }

    /// [`Scheduler::run_now`] with parameter values for this run (`ferry task run --param`). Each
    /// must be a parameter the task declares (or a global one); a value for a secure parameter
    /// that arrives unsealed is sealed here, before it is stored on the run queue.
    async fn run_with(
        &self,
        task: &str,
        trigger: Trigger,
        mut parameters: BTreeMap<String, ferry_config::ParamValue>,
    ) -> anyhow::Result<Uuid> {
        self.knows(task).await;
        {
            let doc = self.config.borrow();
            let Some(declared) = doc.config.tasks.get(task) else {
                anyhow::bail!("unknown task {task:?}");
            };
            for (name, value) in parameters.iter_mut() {
                let secure =
                    ferry_config::params::declared(&doc.config.parameters, &declared.parameters, name);
                match (secure, &*value) {
                    (None, _) => {
                        let known: Vec<&str> = declared
                            .parameters
                            .keys()
                            .chain(doc.config.parameters.keys())
                            .map(String::as_str)
                            .collect();
                        anyhow::bail!(
                            "task {task:?} has no parameter {name:?} (declared: {}); declare it in [task.parameters] or [parameters]",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        );
                    }
                    (Some(true), ferry_config::ParamValue::Plain(plain)) => {
                        let keymat = self.keymat.current().context("read the node's keymat")?;
                        let binding = ferry_config::params::run_binding(task, name);
                        let sealed = ferry_keymat::seal(&keymat.public(), &binding, plain)
                            .with_context(|| format!("seal parameter {name:?}"))?;
                        *value = ferry_config::ParamValue::Secure(sealed);
                    }
                    _ => {}
                }
            }
        }
        let run_id = Uuid::now_v7();
        let message_id = format!("run:{run_id}");
        self.request(task, run_id, trigger, &message_id, None, parameters)
            .await?;
        Ok(run_id)
    }

    /// [`Scheduler::publish_request`] inside the run's `run` span, the root of its trace (or a
    /// child of the trace in `headers`).
    async fn request(
        &self,
        task: &str,
        run_id: Uuid,
        trigger: Trigger,
        message_id: &str,
        headers: Option<&async_nats::HeaderMap>,
        parameters: BTreeMap<String, ferry_config::ParamValue>,
    ) -> anyhow::Result<bool> {
        let span = tracing::info_span!("run", task, %run_id, trace_id = tracing::field::Empty);
        ferry_service::trace::follow(&span, headers);
        self.publish_request(task, run_id, trigger, message_id, parameters)
            .instrument(span)
            .await
    }

    /// Publish a `RunRequested` and wait for JetStream's ack. Returns false for a duplicate.
    async fn publish_request(
        &self,
        task: &str,
        run_id: Uuid,
        trigger: Trigger,
        message_id: &str,
        parameters: BTreeMap<String, ferry_config::ParamValue>,
    ) -> anyhow::Result<bool> {
        let epoch = self.active_epoch()?;
        let kind = trigger.kind();
        let request = RunRequested {
            task: task.to_string(),
            run_id,
            epoch,
            node: self.node.clone(),
            trigger,
            requested_at: Utc::now(),
            parameters,
        };
        let ack = self
            .js
            .send_publish(
                subjects::run_request(task),
                ferry_service::trace::inject(
                    PublishMessage::build()
                        .payload(ferry_wire::encode(&request))
                        .message_id(message_id)
                        .header(ferry_wire::HEADER_EPOCH, epoch.to_string().as_str()),
                ),
            )
            .await
            .context("publish run request")?
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::TimedOut => {
                    anyhow::anyhow!("run request not acknowledged by JetStream in time")
                }
                _ => anyhow::anyhow!("run request: {e}"),
            })?;
        if ack.duplicate {
            tracing::info!(task, %message_id, "run request was a duplicate; not fired again");
            return Ok(false);
        }
        self.metrics.fired.with_label_values(&[task, kind]).inc();
        if let Trigger::Schedule { slot } = &request.trigger {
            let late = (Utc::now() - *slot).to_std().unwrap_or(Duration::ZERO);
            self.metrics.lag.observe(late.as_secs_f64());
        }
        if let (Some(ledger), Trigger::Schedule { slot }) = (&self.ledger, &request.trigger) {
            ledger.record(&ledger::Entry::Slot {
                node: self.node.clone(),
                epoch,
                task: task.to_string(),
                slot: slot.to_rfc3339(),
                at_ns: ledger::mono_ns(),
            });
        }
        tracing::info!(task, %run_id, epoch, trigger = kind, "run requested");
        Ok(true)
    }

    /// Fire one schedule slot at most once.
    async fn fire_slot(&self, task: &str, slot: DateTime<Utc>) -> anyhow::Result<()> {
        let key = format!("last.{task}");
        if let Some(last) = self.last_fired(task).await?
            && last >= slot
        {
            return Ok(());
        }
        let message_id = format!("slot:{task}:{}", slot.timestamp());
        self.request(
            task,
            Uuid::now_v7(),
            Trigger::Schedule { slot },
            &message_id,
            None,
            BTreeMap::new(),
        )
        .await?;
        self.sched_kv
            .put(&key, slot.to_rfc3339().into())
            .await
            .context("record fired slot")?;
        Ok(())
    }

    async fn last_fired(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let value = self
            .sched_kv
            .get(format!("last.{task}"))
            .await
            .context("read last fired slot")?;
        Ok(value
            .and_then(|v| String::from_utf8(v.to_vec()).ok())
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&Utc)))
    }

    /// The slot loop: sleep until the earliest next slot of any enabled task, fire what is due.
    async fn fire_slots(self: Arc<Self>, shutdown: CancellationToken) {
        let mut config_rx = self.config.subscribe();
        let mut lease_rx = self.lease.subscribe();
        // Slots strictly after this instant are candidates; it starts at "now" (missed slots are
        // handled by policy in `follow_promotions`) and advances as slots pass.
        let mut horizon = Utc::now();
        loop {
            let loaded = self.config.borrow().clone();
            let config = &loaded.config;
            let mut next: BTreeMap<DateTime<Utc>, Vec<String>> = BTreeMap::new();
            for task in config.tasks.values().filter(|t| t.enabled) {
                if let Some(at) = task
                    .compiled_schedules()
                    .iter()
                    .filter_map(|s| s.next_after(horizon))
                    .min()
                {
                    next.entry(at).or_default().push(task.name.clone());
                }
            }
            let earliest = next.first_key_value().map(|(at, _)| *at);
            let sleep = earliest
                .map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = config_rx.changed() => continue,
                _ = lease_rx.changed() => continue,
                _ = self.changed.notified() => continue,
                _ = tokio::time::sleep(sleep) => {}
            }
            let Some(at) = earliest else { continue };
            if Utc::now() < at {
                continue;
            }
            if self.enabled.load(Ordering::SeqCst) && self.active_epoch().is_ok() {
                for task in &next[&at] {
                    if let Err(e) = self.fire_slot(task, at).await {
                        tracing::error!(task, slot = %at, error = format!("{e:#}"), "could not fire slot");
                        self.metrics.fire_errors.inc();
                    }
                }
            } else {
                tracing::debug!(slot = %at, "slot not fired: scheduler stopped or node not active");
            }
            horizon = at;
        }
    }

    /// Apply the missed-run policy once at start-up.
    async fn catch_up(&self, now: DateTime<Utc>) {
        if self.missed_runs != MissedRuns::RunOnce
            || !self.enabled.load(Ordering::SeqCst)
            || self.active_epoch().is_err()
        {
            return;
        }
        let loaded = self.config.borrow().clone();
        let config = &loaded.config;
        for task in config.tasks.values().filter(|t| t.enabled) {
            let last = match self.last_fired(&task.name).await {
                Ok(last) => last,
                Err(e) => {
                    tracing::warn!(task = %task.name, error = format!("{e:#}"), "missed-run check failed");
                    continue;
                }
            };
            let since = last
                .into_iter()
                .chain([now - self.missed_runs_window])
                .max()
                .expect("one element");
            let missed = task
                .compiled_schedules()
                .iter()
                .filter_map(|s| s.last_between(since, now))
                .max();
            if let Some(slot) = missed {
                tracing::info!(task = %task.name, %slot, "running missed slot once (missed_runs = run_once)");
                if let Err(e) = self.fire_slot(&task.name, slot).await {
                    tracing::error!(task = %task.name, error = format!("{e:#}"), "could not fire missed slot");
                }
            }
        }
    }

    /// Any message on `ferry.trigger.<task>` starts a run of that task on the active node, which
    /// answers a request with the run id (or the reason it could not start one).
    async fn serve_triggers(self: Arc<Self>, client: async_nats::Client, shutdown: CancellationToken) {
        let mut sub = match client
            .queue_subscribe(subjects::TRIGGERS, format!("ferry-scheduler-{}", self.node))
            .await
        {
            Ok(sub) => sub,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to triggers");
                return;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = sub.next() => match m { Some(m) => m, None => return },
            };
            let Some(task) = subjects::task_of_trigger(msg.subject.as_str()) else {
                continue;
            };
            // Every node's scheduler hears every trigger. One that cannot start runs (a standby, a
            // fenced or draining node) must not answer first: the requester keeps the first answer,
            // which must come from the active node. It answers only after a grace, so a request
            // that no node can serve still gets a clear error instead of a timeout (a late answer
            // to a request already answered is dropped by the requester).
            if let Err(e) = self.active_epoch() {
                let why = format!("{e:#}");
                tracing::debug!(task, %why, "trigger left to the active node");
                if let Some(reply_to) = msg.reply {
                    let client = client.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(NOT_ACTIVE_REPLY_GRACE).await;
                        let reply = serde_json::json!({ "error": why });
                        let _ = client.publish(reply_to, ferry_wire::encode(&reply)).await;
                    });
                }
                continue;
            }
            let result = self
                .run_now(
                    task,
                    Trigger::Event {
                        subject: msg.subject.to_string(),
                    },
                    msg.headers.as_ref(),
                )
                .await;
            let reply = match &result {
                Ok(run_id) => serde_json::json!({ "run_id": run_id }),
                Err(e) => {
                    tracing::warn!(task, error = format!("{e:#}"), "trigger not run");
                    serde_json::json!({ "error": format!("{e:#}") })
                }
            };
            if let Some(reply_to) = msg.reply {
                let _ = client.publish(reply_to, ferry_wire::encode(&reply)).await;
            }
        }
    }

    async fn status(&self) -> SchedulerStatus {
        let loaded = self.config.borrow().clone();
        let config = &loaded.config;
        let now = Utc::now();
        let mut tasks = Vec::new();
        for task in config.tasks.values() {
            let next_fire = if task.enabled {
                task.compiled_schedules()
                    .iter()
                    .filter_map(|s| s.next_after(now))
                    .min()
            } else {
                None
            };
            tasks.push(ScheduledTask {
                task: task.name.clone(),
                next_fire,
                last_fired_slot: self.last_fired(&task.name).await.ok().flatten(),
            });
        }
        SchedulerStatus {
            node: self.node.clone(),
            enabled: self.enabled.load(Ordering::SeqCst),
            epoch: self.gate.highest(),
            tasks,
        }
    }
}
