//! transfer: moves the bytes of one `FileItem` to every destination and reports the outcome.
//!
//! Instances share the durable consumer `transfer` (a queue: scale out by starting more). Each
//! runs `concurrency` workers that pull one item at a time, so nothing waits in a local buffer
//! while its ack timer runs.
//!
//! Invariants:
//! - Nothing is written under a final name before the bytes are fsynced and, re-read, match
//!   what was read from the source (see `local`).
//! - An item is delivered at most once: its claim `ferry_runs/item.<id>` is taken by
//!   compare-and-swap, and re-checked by compare-and-swap with the intended final paths just
//!   before the rename (the commit point). A retry after a crash finds those paths and, when the
//!   file there already has the source's hash, reports it delivered instead of writing it again.
//! - Work stamped with an epoch older than the highest seen is refused, and a copy in flight
//!   stops before its rename once a newer epoch appears.
//! - Every attempt ends in exactly one `FileResult` (message id `result:<item>`) and one audit
//!   record per destination; the item is acknowledged only after both are stored.

mod local;
mod metrics;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{self, pull},
    kv,
    message::PublishMessage,
};
use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use ferry_config::Overwrite;
use ferry_service::ledger::{self, Ledger};
use ferry_service::{EpochGate, NodeLease, Settings, http, nats};
use ferry_wire::{AuditRecord, DestOutcome, FileItem, FileResult, FileState, Outcome, subjects, topology};

pub use metrics::Metrics;

pub const SERVICE: &str = subjects::service::TRANSFER;

/// Claim of one item (KV `ferry_runs`, key `item.<item id>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Claim {
    /// Being moved by `owner`; `committing[i]` is the final path of destination `i` once the
    /// owner is about to rename into it.
    Claimed {
        owner: String,
        committing: Vec<Option<String>>,
    },
    /// Finished; the result to report again if the item is redelivered.
    Done { result: FileResult },
}

struct Transfer {
    node: String,
    /// Unique per process: claims name it.
    instance: String,
    js: jetstream::Context,
    runs_kv: kv::Store,
    state_kv: kv::Store,
    gate: EpochGate,
    lease: NodeLease,
    ledger: Option<Ledger>,
    metrics: Metrics,
    buffer_bytes: usize,
    ack_wait: Duration,
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, js) = nats::connect(&settings, SERVICE, &shutdown).await?;
    let metrics = Metrics::new()?;
    http::serve(
        settings.transfer.metrics_addr,
        metrics.registry.clone(),
        http::nats_health(&client),
        shutdown.child_token(),
    )
    .await?;
    let (gate, lease) =
        ferry_service::lease::fencing(&client, &js, &settings.node_id, SERVICE, &shutdown).await?;
    let transfer = Arc::new(Transfer {
        node: settings.node_id.clone(),
        instance: format!("{}/{}", settings.node_id, uuid::Uuid::now_v7()),
        runs_kv: js
            .get_key_value(topology::KV_RUNS)
            .await
            .context("open runs bucket")?,
        state_kv: js
            .get_key_value(topology::KV_STATE)
            .await
            .context("open state bucket")?,
        js: js.clone(),
        gate,
        lease,
        ledger: Ledger::open(settings.ledger.as_deref())?,
        metrics,
        buffer_bytes: settings.transfer.buffer_bytes,
        ack_wait: Duration::from_secs(settings.transfer.ack_wait_secs),
    });
    let (service, group) =
        ferry_service::api::register(&client, &settings.node_id, SERVICE, "Ferry transfer").await?;
    let in_flight = transfer.metrics.in_flight.clone();
    let instance = transfer.instance.clone();
    let status_gate = transfer.gate.clone();
    let status = ferry_service::api::serve_json(
        &group,
        subjects::api::STATUS,
        shutdown.child_token(),
        move |(): ()| {
            let body = serde_json::json!({
                "instance": instance,
                "in_flight": in_flight.get(),
                "epoch": status_gate.highest(),
            });
            async move { Ok(body) }
        },
    )
    .await?;

    let stream = js
        .get_stream(topology::STREAM_FILEQ)
        .await
        .context("open file queue")?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            topology::CONSUMER_TRANSFER,
            pull::Config {
                durable_name: Some(topology::CONSUMER_TRANSFER.to_string()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: transfer.ack_wait,
                max_ack_pending: 10_000,
                filter_subject: subjects::FILE_ITEMS.to_string(),
                ..Default::default()
            },
        )
        .await
        .context("create file-queue consumer")?;
    transfer
        .clone()
        .dispatch(consumer, settings.transfer.concurrency as usize, shutdown.clone())
        .await;
    let _ = status.await;
    let _ = service.stop().await;
    Ok(())
}

impl Transfer {
    /// Pull as many items as there are idle workers (never more, so nothing waits in a local
    /// buffer while its ack timer runs) and move each on its own task. On shutdown, stop pulling
    /// and let the items in progress finish.
    async fn dispatch(
        self: Arc<Self>,
        consumer: consumer::PullConsumer,
        workers: usize,
        shutdown: CancellationToken,
    ) {
        let idle = Arc::new(tokio::sync::Semaphore::new(workers));
        let mut running = tokio::task::JoinSet::new();
        while !shutdown.is_cancelled() {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = idle.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            // Only a node holding a valid lease takes items (also while it drains).
            if self.lease.wait_valid(&shutdown).await.is_none() {
                break;
            }
            let mut permits = vec![first];
            while let Ok(p) = idle.clone().try_acquire_owned() {
                permits.push(p);
            }
            let batch = consumer
                .batch()
                .max_messages(permits.len())
                .expires(Duration::from_millis(500))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "pull file items");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    m = batch.next() => m,
                };
                match message {
                    Some(Ok(message)) => {
                        let permit = permits.pop().expect("a batch never exceeds its permits");
                        let transfer = self.clone();
                        running.spawn(async move {
                            transfer.handle(message).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "file item pull"),
                    None => break,
                }
            }
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    }

    async fn handle(&self, message: jetstream::Message) {
        let item: FileItem = match ferry_wire::decode(&message.payload) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "dropping unreadable file item");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        self.metrics.in_flight.inc();
        let progress = {
            let message = message.clone();
            let every = self.ack_wait / 3;
            let stop = CancellationToken::new();
            let guard = stop.clone().drop_guard();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => { let _ = message.ack_with(AckKind::Progress).await; }
                    }
                }
            });
            guard
        };
        let outcome = self.process(&item).await;
        drop(progress);
        self.metrics.in_flight.dec();
        match outcome {
            Ok(Processed::Reported) => {
                // A lost ack only means a redelivery, which finds the item done and re-reports it.
                if let Err(e) = message.ack().await {
                    tracing::warn!(item = %item.item_id, error = %e, "ack file item");
                }
            }
            Ok(Processed::ClaimedElsewhere) => {
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            Err(e) => {
                tracing::error!(task = %item.task, item = %item.item_id, error = format!("{e:#}"), "file item interrupted; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await;
            }
        }
    }

    /// `Err` only for NATS trouble (retry the item); file problems become a failed result.
    async fn process(&self, item: &FileItem) -> anyhow::Result<Processed> {
        let key = format!("item.{}", item.item_id);
        let started_at = Utc::now();
        let started = Instant::now();

        // Take the claim (or learn that the item is already done). Create first: on the normal
        // path the item is new and this is the only round trip.
        let mine = ferry_wire::encode(&Claim::Claimed {
            owner: self.instance.clone(),
            committing: Vec::new(),
        });
        let (previous, revision) = loop {
            match self.runs_kv.create(&key, mine.clone()).await {
                Ok(rev) => break (None, rev),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).context("claim item"),
            }
            let Some(entry) = self.runs_kv.entry(&key).await.context("read item claim")? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let claim: Claim = ferry_wire::decode(&entry.value)?;
            if let Claim::Done { result } = claim {
                self.report(item, &result).await?;
                return Ok(Processed::Reported);
            }
            match self.runs_kv.update(&key, mine.clone(), entry.revision).await {
                Ok(rev) => break (Some(claim), rev),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    return Ok(Processed::ClaimedElsewhere);
                }
                Err(e) => return Err(e).context("take over item claim"),
            }
        };
        let previously_committing = match previous {
            Some(Claim::Claimed { committing, .. }) => committing,
            _ => Vec::new(),
        };

        let mut result = if !self.gate.admit(item.epoch) {
            self.failed(
                item,
                started_at,
                format!(
                    "refused: stamped with epoch {} but epoch {} is current (fenced)",
                    item.epoch,
                    self.gate.highest()
                ),
            )
        } else if !self.lease.allows(item.epoch) {
            // Not older than any epoch seen, but this node may not commit under it right now.
            anyhow::bail!(
                "this node holds no valid lease for epoch {} right now",
                item.epoch
            );
        } else {
            self.deliver(item, &key, revision, &previously_committing, started_at)
                .await?
        };
        result.finished_at = Utc::now();

        // Audit every destination, then mark done and report. Every write is idempotent (message
        // ids, same values), so a retry after a crash anywhere here repeats them harmlessly; only
        // `Done` must follow the audit (a redelivered `Done` item is only re-reported).
        self.audit(item, &result).await?;
        let done = ferry_wire::encode(&Claim::Done {
            result: result.clone(),
        });
        let (marked, reported) = tokio::join!(self.runs_kv.put(&key, done), self.report(item, &result));
        marked.context("mark item done")?;
        reported?;
        let outcome = match result.outcome {
            Outcome::Delivered => "delivered",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        };
        self.metrics.files.with_label_values(&[&item.task, outcome]).inc();
        if result.outcome == Outcome::Delivered {
            self.metrics
                .bytes
                .with_label_values(&[&item.task])
                .inc_by(result.size);
            self.metrics.duration.observe(started.elapsed().as_secs_f64());
        }
        if let Some(e) = &result.error {
            tracing::warn!(task = %item.task, source = %result.source_path, error = %e, "file not delivered");
        }
        Ok(Processed::Reported)
    }

    fn failed(&self, item: &FileItem, started_at: chrono::DateTime<Utc>, error: String) -> FileResult {
        FileResult {
            item_id: item.item_id.clone(),
            source_path: local::source_path(item).to_string_lossy().into_owned(),
            size: item.source.size,
            sha256: None,
            outcome: Outcome::Failed,
            destinations: Vec::new(),
            error: Some(error),
            node: self.node.clone(),
            epoch: item.epoch,
            started_at,
            finished_at: Utc::now(),
        }
    }

    /// Move the file to every destination. File-level problems end up in the result.
    async fn deliver(
        &self,
        item: &FileItem,
        key: &str,
        revision: u64,
        previously_committing: &[Option<String>],
        started_at: chrono::DateTime<Utc>,
    ) -> anyhow::Result<FileResult> {
        let source = local::source_path(item);
        let buffer = self.buffer_bytes;
        let n = item.destinations.len();
        // File-system calls run on the blocking pool: a directory fsync or a slow disk must never
        // stall the async workers that carry every other transfer's NATS traffic.
        let for_planning = item.clone();
        let planned: Vec<Result<local::Planned, String>> = tokio::task::spawn_blocking(move || {
            for_planning
                .destinations
                .iter()
                .map(|dest| {
                    local::plan(&for_planning, dest)
                        .and_then(|p| local::prepare_dir(&p, dest.create_dirs).map(|()| p))
                })
                .collect()
        })
        .await?;
        let mut outcomes: Vec<Option<DestOutcome>> = vec![None; n];
        let mut plans = Vec::with_capacity(n);
        for (i, p) in planned.into_iter().enumerate() {
            match p {
                Ok(p) => plans.push(Some(p)),
                Err(e) => {
                    outcomes[i] = Some(DestOutcome {
                        path: String::new(),
                        outcome: Outcome::Failed,
                        error: Some(e),
                    });
                    plans.push(None);
                }
            }
        }

        // A previous attempt died while committing: find destinations it already completed.
        let mut recovered: Option<(u64, String)> = None;
        if previously_committing.iter().any(Option::is_some) {
            let src = source.clone();
            let source_hash = tokio::task::spawn_blocking(move || local::hash_file(&src, buffer)).await?;
            for (i, path) in previously_committing.iter().enumerate().take(n) {
                let Some(path) = path else { continue };
                let dest_path = PathBuf::from(path);
                let existing =
                    tokio::task::spawn_blocking(move || local::hash_file(&dest_path, buffer)).await?;
                let matches = match (&source_hash, &existing) {
                    (Ok(src), Ok(dst)) => src == dst,
                    // The source was deleted after the commit (delete_after): the copy stands.
                    (Err(e), Ok(_)) if e.kind() == std::io::ErrorKind::NotFound => item.source.delete_after,
                    _ => false,
                };
                if matches {
                    let (size, sha) = existing.expect("matched above");
                    recovered = Some((size, sha));
                    outcomes[i] = Some(DestOutcome {
                        path: path.clone(),
                        outcome: Outcome::Delivered,
                        error: None,
                    });
                    tracing::info!(item = %item.item_id, %path, "already delivered by an earlier attempt");
                }
            }
        }

        // Apply the overwrite policy to destinations that exist already.
        for (i, plan) in plans.iter_mut().enumerate() {
            let Some(p) = plan else { continue };
            if outcomes[i].is_some() || !p.final_path.exists() {
                continue;
            }
            match p.overwrite {
                Overwrite::Overwrite => {}
                Overwrite::Skip => {
                    outcomes[i] = Some(DestOutcome {
                        path: p.final_path.to_string_lossy().into_owned(),
                        outcome: Outcome::Skipped,
                        error: Some("destination file exists (overwrite = skip)".into()),
                    });
                }
                Overwrite::Fail => {
                    outcomes[i] = Some(DestOutcome {
                        path: p.final_path.to_string_lossy().into_owned(),
                        outcome: Outcome::Failed,
                        error: Some("destination file exists (overwrite = fail)".into()),
                    });
                }
                Overwrite::Unique => {
                    let mut k = 1;
                    while local::unique_candidate(&p.final_path, k).exists() {
                        k += 1;
                    }
                    p.final_path = local::unique_candidate(&p.final_path, k);
                }
            }
        }

        // Copy into temp files for the destinations still open.
        let open: Vec<usize> = (0..n)
            .filter(|&i| outcomes[i].is_none() && plans[i].is_some())
            .collect();
        let mut copied = None;
        if !open.is_empty() {
            let temps: Vec<PathBuf> = open
                .iter()
                .map(|&i| plans[i].as_ref().expect("open").temp_path.clone())
                .collect();
            let lease = self.lease.clone();
            let epoch = item.epoch;
            let src = source.clone();
            let temps_for_copy = temps.clone();
            let result = tokio::task::spawn_blocking(move || {
                let stop = || !lease.allows(epoch);
                let copied = local::copy_verified(&src, &temps_for_copy, buffer, &stop)?;
                Ok::<_, String>(copied)
            })
            .await?;
            match result {
                Ok(c) => copied = Some(c),
                Err(e) => {
                    for t in &temps {
                        let _ = std::fs::remove_file(t);
                    }
                    for &i in &open {
                        outcomes[i] = Some(DestOutcome {
                            path: plans[i]
                                .as_ref()
                                .expect("open")
                                .final_path
                                .to_string_lossy()
                                .into_owned(),
                            outcome: Outcome::Failed,
                            error: Some(e.clone()),
                        });
                    }
                }
            }
        }

        // Commit: re-check the epoch and the claim (recording the final paths), then rename.
        if copied.is_some() {
            let mut committing: Vec<Option<String>> = vec![None; n];
            for &i in &open {
                committing[i] = Some(
                    plans[i]
                        .as_ref()
                        .expect("open")
                        .final_path
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            let fenced = !self.lease.allows(item.epoch);
            let claim = Claim::Claimed {
                owner: self.instance.clone(),
                committing,
            };
            let still_ours = if fenced {
                false
            } else {
                match self
                    .runs_kv
                    .update(key, ferry_wire::encode(&claim), revision)
                    .await
                {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(e).context("record commit intent"),
                }
            };
            let to_commit: Vec<(usize, local::Planned)> = open
                .iter()
                .map(|&i| (i, plans[i].clone().expect("open destinations have a plan")))
                .collect();
            let lease = self.lease.clone();
            let epoch = item.epoch;
            let ledger = self.ledger.clone();
            let node = self.node.clone();
            let (task, run_id) = (item.task.clone(), item.run_id.to_string());
            let late_commits = self.metrics.late_commits.clone();
            let committed = tokio::task::spawn_blocking(move || {
                to_commit
                    .into_iter()
                    .map(|(i, p)| {
                        // The commit point: the rename happens only under a lease valid now.
                        let start_ns = ledger::mono_ns();
                        let valid = lease.allows(epoch);
                        if still_ours && valid {
                            failpoint_pause_before_rename();
                            let (outcome, renamed_ns) = commit(&p);
                            if outcome.outcome == Outcome::Delivered && !lease.allows(epoch) {
                                // Checked before, expired by the time the rename was done: the
                                // window ADR 004 describes. Say so loudly; it cannot be undone.
                                late_commits.inc();
                                tracing::error!(path = %outcome.path, epoch, "renamed after this node's lease ran out (paused between the lease check and the rename): another node may have been active at the same time");
                            }
                            if let Some(ledger) = &ledger
                                && outcome.outcome == Outcome::Delivered
                            {
                                ledger.record(&ledger::Entry::Commit {
                                    node: node.clone(),
                                    epoch,
                                    task: task.clone(),
                                    run_id: run_id.clone(),
                                    path: outcome.path.clone(),
                                    start_ns,
                                    end_ns: renamed_ns,
                                });
                            }
                            return (i, outcome);
                        }
                        let _ = std::fs::remove_file(&p.temp_path);
                        let why = if fenced || !valid {
                            "not committed: this node's epoch was superseded (fenced)"
                        } else {
                            "not committed: another transfer instance took the item over"
                        };
                        let outcome = DestOutcome {
                            path: p.final_path.to_string_lossy().into_owned(),
                            outcome: Outcome::Failed,
                            error: Some(why.into()),
                        };
                        (i, outcome)
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
            for (i, outcome) in committed {
                outcomes[i] = Some(outcome);
            }
        }

        let destinations: Vec<DestOutcome> = outcomes
            .into_iter()
            .map(|o| o.expect("every destination decided"))
            .collect();
        let all_delivered = destinations.iter().all(|d| d.outcome == Outcome::Delivered);
        let any_failed = destinations.iter().any(|d| d.outcome == Outcome::Failed);
        let (size, sha256) = match (&copied, &recovered) {
            (Some(c), _) => (c.size, Some(c.sha256.clone())),
            (None, Some((size, sha))) => (*size, Some(sha.clone())),
            (None, None) => (item.source.size, None),
        };
        let mut error = destinations
            .iter()
            .find_map(|d| (d.outcome == Outcome::Failed).then(|| d.error.clone()).flatten());

        if !any_failed {
            // A move: delete the source first, then record the new-files-only state. A crash in
            // between leaves nothing to list; a crash before the delete leaves the source and no
            // state, so the next run delivers it again (at least once) instead of leaving it in
            // the source folder for good, recorded as sent.
            if item.source.delete_after
                && all_delivered
                && let Err(e) = std::fs::remove_file(&source)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                error = Some(format!(
                    "delivered, but deleting the source {} failed: {e}",
                    source.display()
                ));
            }
            // New-files-only: remember this version of the file so the next run leaves it.
            if let (Some(state_key), Some(sha)) = (&item.source.state_key, &sha256) {
                let state = FileState {
                    size,
                    mtime_ns: copied
                        .as_ref()
                        .map(|c| c.mtime_ns)
                        .unwrap_or(item.source.mtime_ns),
                    sha256: sha.clone(),
                    run_id: item.run_id,
                    delivered_at: Utc::now(),
                };
                self.state_kv
                    .put(state_key.as_str(), ferry_wire::encode(&state))
                    .await
                    .context("record new-files-only state")?;
            }
        }
        let outcome = if any_failed || error.is_some() {
            Outcome::Failed
        } else if all_delivered {
            Outcome::Delivered
        } else {
            Outcome::Skipped
        };
        Ok(FileResult {
            item_id: item.item_id.clone(),
            source_path: source.to_string_lossy().into_owned(),
            size,
            sha256,
            outcome,
            destinations,
            error,
            node: self.node.clone(),
            epoch: item.epoch,
            started_at,
            finished_at: Utc::now(),
        })
    }

    async fn audit(&self, item: &FileItem, result: &FileResult) -> anyhow::Result<()> {
        let mut records: Vec<AuditRecord> = result
            .destinations
            .iter()
            .map(|d| AuditRecord {
                task: item.task.clone(),
                run_id: item.run_id,
                node: self.node.clone(),
                epoch: item.epoch,
                action: "transfer".into(),
                source_path: result.source_path.clone(),
                dest_path: Some(d.path.clone()),
                size: result.size,
                sha256: result.sha256.clone(),
                started_at: result.started_at,
                finished_at: result.finished_at,
                outcome: d.outcome,
                error: d.error.clone(),
            })
            .collect();
        if result.destinations.is_empty() {
            records.push(AuditRecord {
                task: item.task.clone(),
                run_id: item.run_id,
                node: self.node.clone(),
                epoch: item.epoch,
                action: "transfer".into(),
                source_path: result.source_path.clone(),
                dest_path: None,
                size: result.size,
                sha256: None,
                started_at: result.started_at,
                finished_at: result.finished_at,
                outcome: result.outcome,
                error: result.error.clone(),
            });
        }
        if item.source.delete_after && result.outcome == Outcome::Delivered {
            records.push(AuditRecord {
                action: "delete_source".into(),
                dest_path: None,
                ..records[0].clone()
            });
        }
        let mut acks = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            acks.push(
                self.js
                    .send_publish(
                        subjects::audit_file(&item.task),
                        PublishMessage::build()
                            .payload(ferry_wire::encode(record))
                            .message_id(format!("audit:{}:{i}", item.item_id)),
                    )
                    .await
                    .context("publish audit record")?,
            );
        }
        for ack in acks {
            ack.await.context("audit record not stored")?;
        }
        Ok(())
    }

    async fn report(&self, item: &FileItem, result: &FileResult) -> anyhow::Result<()> {
        self.js
            .send_publish(
                subjects::file_result(item.run_id),
                PublishMessage::build()
                    .payload(ferry_wire::encode(result))
                    .message_id(format!("result:{}", item.item_id)),
            )
            .await
            .context("publish file result")?
            .await
            .context("file result not stored")?;
        Ok(())
    }
}

enum Processed {
    /// A result is stored: acknowledge the item.
    Reported,
    /// Another live instance holds the claim: let JetStream redeliver later.
    ClaimedElsewhere,
}

/// Rename the verified temp file into place according to the overwrite policy.
/// Test failpoint, compiled into debug builds only: `FERRY_FAILPOINT_PAUSE_BEFORE_RENAME_MS`
/// pauses between the lease check and the rename, so a test can probe the window that a local
/// lease deadline cannot close (ADR 004).
fn failpoint_pause_before_rename() {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("FERRY_FAILPOINT_PAUSE_BEFORE_RENAME_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tracing::warn!(ms, "failpoint: pausing between the lease check and the rename");
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Rename into place (the commit point) and fsync the folder. Also returns when the rename was
/// done (`CLOCK_MONOTONIC` ns), for the side-effect ledger.
fn commit(p: &local::Planned) -> (DestOutcome, u64) {
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    let renamed = match p.overwrite {
        Overwrite::Overwrite => {
            std::fs::rename(&p.temp_path, &p.final_path).map(|()| Some(p.final_path.clone()))
        }
        Overwrite::Skip | Overwrite::Fail => local::rename_noreplace(&p.temp_path, &p.final_path)
            .map(|done| done.then(|| p.final_path.clone())),
        Overwrite::Unique => (|| {
            let mut candidate = p.final_path.clone();
            for k in 1..10_000 {
                if local::rename_noreplace(&p.temp_path, &candidate)? {
                    return Ok(Some(candidate));
                }
                candidate = local::unique_candidate(&p.final_path, k);
            }
            Ok(None)
        })(),
    };
    let renamed_ns = ferry_service::ledger::mono_ns();
    let outcome = match renamed {
        Ok(Some(final_path)) => {
            if let Err(e) = local::sync_dir(&p.dir) {
                tracing::warn!(dir = %p.dir.display(), error = %e, "fsync directory");
            }
            DestOutcome {
                path: path(&final_path),
                outcome: Outcome::Delivered,
                error: None,
            }
        }
        Ok(None) => {
            let _ = std::fs::remove_file(&p.temp_path);
            let (outcome, why) = match p.overwrite {
                Overwrite::Skip => (
                    Outcome::Skipped,
                    "destination file appeared meanwhile (overwrite = skip)",
                ),
                _ => (Outcome::Failed, "destination file appeared meanwhile"),
            };
            DestOutcome {
                path: path(&p.final_path),
                outcome,
                error: Some(why.into()),
            }
        }
        Err(e) => {
            let _ = std::fs::remove_file(&p.temp_path);
            DestOutcome {
                path: path(&p.final_path),
                outcome: Outcome::Failed,
                error: Some(format!("rename into {}: {e}", p.final_path.display())),
            }
        }
    };
    (outcome, renamed_ns)
}
