//! transfer: moves the bytes of one `WorkBatch` (one large file, or several small ones of one
//! run, ADR 005) to every destination and reports one result per file.
//!
//! Instances share the durable consumer `transfer` (a queue: scale out by starting more). Each
//! runs `concurrency` workers that pull one batch at a time, so nothing waits in a local buffer
//! while its ack timer runs.
//!
//! Invariants:
//! - Nothing is written under a final name before the bytes are durable (fsync, or one
//!   `syncfs` for a batch of small files) and, re-read, match what was read from the source
//!   (see `local`).
//! - A file is delivered at most once: its batch's claim `ferry_runs/batch.<id>` is taken by
//!   compare-and-swap, and re-checked by compare-and-swap with the intended final paths of every
//!   file just before the first rename (the commit point). A retry after a crash finds those
//!   paths and, when the file there already has the source's hash, reports it delivered instead
//!   of writing it again.
//! - Each rename happens only while this node's lease is valid for the batch's epoch, checked
//!   immediately before it; the folders renamed into are fsynced before any result says
//!   delivered.
//! - Work stamped with an epoch older than the highest seen is refused, and a copy in flight
//!   stops before its rename once a newer epoch appears.
//! - Every attempt ends in exactly one `BatchResult` (message id `result:<batch>`) and one
//!   audit record per file and destination; the batch is acknowledged only after both are
//!   stored.

mod metrics;
mod plan;

use ferry_hosts::local::fast as local;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
use ferry_wire::{
    AuditRecord, BatchResult, DestOutcome, FileItem, FileResult, FileState, Outcome, WorkBatch, subjects,
    topology,
};

pub use metrics::Metrics;

pub const SERVICE: &str = subjects::service::TRANSFER;

/// Claim of one work batch (KV `ferry_runs`, key `batch.<batch id>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Claim {
    /// Being moved by `owner`; `committing[f][i]` is the final path of file `f`'s destination
    /// `i` once the owner is about to rename into it.
    Claimed {
        owner: String,
        committing: Vec<Vec<Option<String>>>,
    },
    /// Finished; the results to report again if the batch is redelivered.
    Done { results: Vec<FileResult> },
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

    let ack_wait = transfer.ack_wait;
    let consumer = nats::retry("create file-queue consumer", &shutdown, || {
        file_queue_consumer(&js, ack_wait)
    })
    .await?;
    transfer
        .clone()
        .dispatch(consumer, settings.transfer.concurrency as usize, shutdown.clone())
        .await;
    let _ = status.await;
    let _ = service.stop().await;
    Ok(())
}

/// The shared durable consumer of the file queue.
async fn file_queue_consumer(
    js: &jetstream::Context,
    ack_wait: Duration,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = js
        .get_stream(topology::STREAM_FILEQ)
        .await
        .context("open file queue")?;
    let config = pull::Config {
        durable_name: Some(topology::CONSUMER_TRANSFER.to_string()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending: 10_000,
        filter_subject: subjects::FILE_BATCHES.to_string(),
        ..Default::default()
    };
    let mut consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(topology::CONSUMER_TRANSFER, config.clone())
        .await
        .context("create file-queue consumer")?;
    let filter = consumer
        .info()
        .await
        .context("read file-queue consumer")?
        .config
        .filter_subject
        .clone();
    if filter != config.filter_subject {
        // Made by an older Ferry, for the subjects of per-file messages: make it anew.
        tracing::warn!(old = %filter, new = %config.filter_subject, "replacing the file-queue consumer of an older version");
        stream
            .delete_consumer(topology::CONSUMER_TRANSFER)
            .await
            .context("replace file-queue consumer")?;
        consumer = stream
            .create_consumer(config)
            .await
            .context("create file-queue consumer")?;
    }
    Ok(consumer)
}

impl Transfer {
    /// Pull as many work batches as there are idle workers (never more, so nothing waits in a local
    /// buffer while its ack timer runs) and move each on its own task. On shutdown, stop pulling
    /// and let the batches in progress finish.
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
            // Only a node holding a valid lease takes work (also while it drains).
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
                    tracing::warn!(error = %e, "pull work batches");
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
                    Some(Err(e)) => tracing::debug!(error = %e, "work batch pull"),
                    None => break,
                }
            }
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    }

    async fn handle(&self, message: jetstream::Message) {
        let batch: WorkBatch = match ferry_wire::decode(&message.payload) {
            Ok(b @ WorkBatch { .. }) if !b.items.is_empty() => b,
            Ok(_) => {
                tracing::error!("dropping an empty work batch");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "dropping unreadable work batch");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let files = batch.items.len() as i64;
        self.metrics.in_flight.add(files);
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
        let outcome = self.process(&batch).await;
        drop(progress);
        self.metrics.in_flight.sub(files);
        match outcome {
            Ok(Processed::Reported) => {
                // A lost ack only means a redelivery, which finds the batch done and re-reports it.
                if let Err(e) = message.ack().await {
                    tracing::warn!(batch = %batch.batch_id, error = %e, "ack work batch");
                }
            }
            Ok(Processed::ClaimedElsewhere) => {
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            Err(e) => {
                tracing::error!(task = %batch.first().task, batch = %batch.batch_id, error = format!("{e:#}"), "work batch interrupted; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await;
            }
        }
    }

    /// `Err` only for NATS trouble (retry the batch); file problems become failed results.
    async fn process(&self, batch: &WorkBatch) -> anyhow::Result<Processed> {
        let first = batch.first();
        let key = format!("batch.{}", batch.batch_id);

        // Take the claim (or learn that the batch is already done). Create first: on the normal
        // path the batch is new and this is the only round trip.
        let mine = ferry_wire::encode(&Claim::Claimed {
            owner: self.instance.clone(),
            committing: Vec::new(),
        });
        let (previous, revision) = loop {
            match self.runs_kv.create(&key, mine.clone()).await {
                Ok(rev) => break (None, rev),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).context("claim work batch"),
            }
            let Some(entry) = self.runs_kv.entry(&key).await.context("read batch claim")? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let claim: Claim = ferry_wire::decode(&entry.value)?;
            if let Claim::Done { results } = claim {
                self.report(batch, &results).await?;
                return Ok(Processed::Reported);
            }
            match self.runs_kv.update(&key, mine.clone(), entry.revision).await {
                Ok(rev) => break (Some(claim), rev),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    return Ok(Processed::ClaimedElsewhere);
                }
                Err(e) => return Err(e).context("take over batch claim"),
            }
        };
        let previously_committing = match previous {
            Some(Claim::Claimed { committing, .. }) => committing,
            _ => Vec::new(),
        };

        let mut results = if !self.gate.admit(first.epoch) {
            let why = format!(
                "refused: stamped with epoch {} but epoch {} is current (fenced)",
                first.epoch,
                self.gate.highest()
            );
            let now = Utc::now();
            batch
                .items
                .iter()
                .map(|item| self.failed(item, now, why.clone()))
                .collect()
        } else if !self.lease.allows(first.epoch) {
            // Not older than any epoch seen, but this node may not commit under it right now.
            anyhow::bail!(
                "this node holds no valid lease for epoch {} right now",
                first.epoch
            );
        } else {
            self.deliver(batch, &key, revision, &previously_committing)
                .await?
        };
        let finished_at = Utc::now();
        for result in &mut results {
            result.finished_at = finished_at;
        }

        // Audit every destination, then mark done and report. Every write is idempotent (message
        // ids, same values), so a retry after a crash anywhere here repeats them harmlessly; only
        // `Done` must follow the audit (a redelivered `Done` batch is only re-reported).
        self.audit(batch, &results).await?;
        let done = ferry_wire::encode(&Claim::Done {
            results: results.clone(),
        });
        let (marked, reported) = tokio::join!(self.runs_kv.put(&key, done), self.report(batch, &results));
        marked.context("mark work batch done")?;
        reported?;
        for (item, result) in batch.items.iter().zip(&results) {
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
                let took = (result.finished_at - result.started_at)
                    .to_std()
                    .unwrap_or_default();
                self.metrics.duration.observe(took.as_secs_f64());
            }
            if let Some(e) = &result.error {
                tracing::warn!(task = %item.task, source = %result.source_path, error = %e, "file not delivered");
            }
        }
        Ok(Processed::Reported)
    }

    fn failed(&self, item: &FileItem, started_at: chrono::DateTime<Utc>, error: String) -> FileResult {
        FileResult {
            item_id: item.item_id.clone(),
            source_path: plan::source_path(item).to_string_lossy().into_owned(),
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

    /// Move every file of the batch to every destination. File-level problems end up in the
    /// results, one per item.
    ///
    /// Two hops to the blocking pool for the whole batch (a directory fsync or a slow disk must
    /// never stall the async workers that carry every other transfer's NATS traffic): plan and
    /// copy into temp files (one group commit for a batch of small files); then, after the
    /// commit intent is stored, rename and sync each folder once; between them only NATS.
    async fn deliver(
        &self,
        batch: &WorkBatch,
        key: &str,
        revision: u64,
        previously_committing: &[Vec<Option<String>>],
    ) -> anyhow::Result<Vec<FileResult>> {
        let buffer = self.buffer_bytes;
        let epoch = batch.first().epoch;
        let items = batch.items.clone();
        let alone = items.len() == 1;
        let previously: Vec<Vec<Option<String>>> = (0..items.len())
            .map(|i| previously_committing.get(i).cloned().unwrap_or_default())
            .collect();
        let lease = self.lease.clone();
        let mut files: Vec<InFlight> = tokio::task::spawn_blocking(move || {
            let mut files: Vec<InFlight> = items
                .into_iter()
                .zip(&previously)
                .map(|(item, previously)| InFlight::prepare(item, previously, buffer))
                .collect();
            let stop = || !lease.allows(epoch);
            let jobs: Vec<(usize, (PathBuf, Vec<PathBuf>))> = files
                .iter()
                .enumerate()
                .filter(|(_, f)| !f.open.is_empty())
                .map(|(i, f)| (i, (f.source.clone(), f.temps())))
                .collect();
            let copies: Vec<Result<local::Copied, String>> = if alone {
                // Alone (a large file, or a run of one): its own fsync.
                jobs.iter()
                    .map(|(_, (source, temps))| local::copy_verified(source, temps, buffer, &stop))
                    .collect()
            } else {
                let jobs: Vec<(PathBuf, Vec<PathBuf>)> = jobs.iter().map(|(_, j)| j.clone()).collect();
                local::copy_batch_verified(&jobs, buffer, &stop)
            };
            for ((i, _), copied) in jobs.iter().zip(copies) {
                files[*i].copied(copied);
            }
            files
        })
        .await?;

        // The commit point's first half: record the final paths in the claim (compare-and-swap),
        // so a retry after a crash during the renames can find what was already committed.
        let fenced = !self.lease.allows(epoch);
        let mut still_ours = false;
        if files.iter().any(|f| f.copied.is_some()) && !fenced {
            let claim = Claim::Claimed {
                owner: self.instance.clone(),
                committing: files.iter().map(InFlight::committing).collect(),
            };
            still_ours = match self
                .runs_kv
                .update(key, ferry_wire::encode(&claim), revision)
                .await
            {
                Ok(_) => true,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                Err(e) => return Err(e).context("record commit intent"),
            };
        }

        let lease = self.lease.clone();
        let ledger = self.ledger.clone();
        let node = self.node.clone();
        let late_commits = self.metrics.late_commits.clone();
        let files: Vec<InFlight> = tokio::task::spawn_blocking(move || {
            let commits = Commits {
                lease: &lease,
                epoch,
                ledger: ledger.as_ref(),
                node: &node,
                late_commits: &late_commits,
                allowed: still_ours,
                why_not: if fenced {
                    "not committed: this node's epoch was superseded (fenced)"
                } else {
                    "not committed: another transfer instance took the batch over"
                },
            };
            let mut renamed_into = std::collections::BTreeSet::new();
            for f in &mut files {
                renamed_into.extend(commits.commit(f));
            }
            // Make the renames durable: each folder once, before any result says delivered.
            for dir in &renamed_into {
                if let Err(e) = local::sync_dir(dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "fsync directory");
                }
            }
            for f in &mut files {
                f.delete_source_if_moved();
            }
            files
        })
        .await?;

        // New-files-only: remember this version of each delivered file so the next run leaves it.
        let states = files.iter().filter_map(|f| {
            let state = f.new_files_only_state()?;
            let key = f.item.source.state_key.clone()?;
            Some(async move {
                self.state_kv
                    .put(key.as_str(), ferry_wire::encode(&state))
                    .await
                    .context("record new-files-only state")
            })
        });
        for stored in futures::future::join_all(states).await {
            stored?;
        }
        Ok(files.into_iter().map(|f| f.result(&self.node)).collect())
    }

    async fn audit(&self, batch: &WorkBatch, results: &[FileResult]) -> anyhow::Result<()> {
        let mut acks = Vec::new();
        for (item, result) in batch.items.iter().zip(results) {
            // One record per destination; a file that reached none (refused, or no plan) still
            // gets one, without a destination path.
            let record = |dest: Option<&DestOutcome>| AuditRecord {
                task: item.task.clone(),
                run_id: item.run_id,
                node: self.node.clone(),
                epoch: item.epoch,
                action: "transfer".into(),
                source_path: result.source_path.clone(),
                dest_path: dest.map(|d| d.path.clone()),
                size: result.size,
                sha256: dest.and(result.sha256.clone()),
                started_at: result.started_at,
                finished_at: result.finished_at,
                outcome: dest.map_or(result.outcome, |d| d.outcome),
                error: dest.map_or_else(|| result.error.clone(), |d| d.error.clone()),
            };
            let mut records: Vec<AuditRecord> = result.destinations.iter().map(|d| record(Some(d))).collect();
            if records.is_empty() {
                records.push(record(None));
            }
            if item.source.delete_after && result.outcome == Outcome::Delivered {
                records.push(AuditRecord {
                    action: "delete_source".into(),
                    dest_path: None,
                    ..records[0].clone()
                });
            }
            // One audit message per file movement; all of the batch's are sent before any
            // acknowledgement is awaited.
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
        }
        for ack in acks {
            ack.await.context("audit record not stored")?;
        }
        Ok(())
    }

    async fn report(&self, batch: &WorkBatch, results: &[FileResult]) -> anyhow::Result<()> {
        let message = BatchResult {
            batch_id: batch.batch_id.clone(),
            results: results.to_vec(),
        };
        ferry_service::streams::store(
            &self.js,
            subjects::batch_result(batch.first().run_id, &batch.batch_id),
            format!("result:{}", batch.batch_id),
            &message,
            "batch result",
        )
        .await
    }
}

/// One file of a batch on its way: its destinations' plans and outcomes so far.
struct InFlight {
    item: FileItem,
    source: PathBuf,
    started_at: chrono::DateTime<Utc>,
    /// Per destination: the plan, or `None` when it could not be made (its outcome says why).
    plans: Vec<Option<plan::Planned>>,
    /// Per destination, once decided.
    outcomes: Vec<Option<DestOutcome>>,
    /// Destinations being copied.
    open: Vec<usize>,
    copied: Option<local::Copied>,
    /// What an earlier attempt already delivered (size, SHA-256).
    recovered: Option<(u64, String)>,
    /// Set when the source of a move could not be deleted.
    error: Option<String>,
}

impl InFlight {
    /// Plan every destination, find what an earlier attempt already committed, and apply the
    /// overwrite policy. Blocking (file-system calls).
    fn prepare(item: FileItem, previously_committing: &[Option<String>], buffer: usize) -> InFlight {
        let started_at = Utc::now();
        let n = item.destinations.len();
        let source = plan::source_path(&item);
        let mut outcomes: Vec<Option<DestOutcome>> = vec![None; n];
        let mut plans: Vec<Option<plan::Planned>> = item
            .destinations
            .iter()
            .enumerate()
            .map(|(i, dest)| {
                match plan::plan(&item, i, dest)
                    .and_then(|p| plan::prepare_dir(&p, dest.create_dirs).map(|()| p))
                {
                    Ok(p) => Some(p),
                    Err(e) => {
                        outcomes[i] = Some(DestOutcome {
                            path: String::new(),
                            outcome: Outcome::Failed,
                            error: Some(e),
                        });
                        None
                    }
                }
            })
            .collect();

        // A previous attempt died while committing: find destinations it already completed.
        let mut recovered: Option<(u64, String)> = None;
        if previously_committing.iter().any(Option::is_some) {
            let source_hash = local::hash_file(&source, buffer);
            for (i, path) in previously_committing.iter().enumerate().take(n) {
                let Some(path) = path else { continue };
                let existing = local::hash_file(Path::new(path), buffer);
                let matches = match (&source_hash, &existing) {
                    (Ok(src), Ok(dst)) => src == dst,
                    // The source was deleted after the commit (delete_after): the copy stands.
                    (Err(e), Ok(_)) if e.kind() == std::io::ErrorKind::NotFound => item.source.delete_after,
                    _ => false,
                };
                if matches {
                    recovered = existing.ok();
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
        let open = (0..n)
            .filter(|&i| outcomes[i].is_none() && plans[i].is_some())
            .collect();
        InFlight {
            item,
            source,
            started_at,
            plans,
            outcomes,
            open,
            copied: None,
            recovered,
            error: None,
        }
    }

    fn plan(&self, i: usize) -> &plan::Planned {
        self.plans[i].as_ref().expect("open destinations have a plan")
    }

    /// The temp files of the destinations being copied.
    fn temps(&self) -> Vec<PathBuf> {
        self.open
            .iter()
            .map(|&i| self.plan(i).temp_path.clone())
            .collect()
    }

    /// Take the copy's outcome; a failed copy fails every open destination (and leaves no temp).
    fn copied(&mut self, copied: Result<local::Copied, String>) {
        match copied {
            Ok(c) => self.copied = Some(c),
            Err(e) => {
                for t in self.temps() {
                    let _ = std::fs::remove_file(t);
                }
                for &i in &self.open {
                    self.outcomes[i] = Some(DestOutcome {
                        path: self.plan(i).final_path.to_string_lossy().into_owned(),
                        outcome: Outcome::Failed,
                        error: Some(e.clone()),
                    });
                }
            }
        }
    }

    /// The final paths about to be renamed into (the commit intent), per destination.
    fn committing(&self) -> Vec<Option<String>> {
        let mut committing = vec![None; self.plans.len()];
        if self.copied.is_some() {
            for &i in &self.open {
                committing[i] = Some(self.plan(i).final_path.to_string_lossy().into_owned());
            }
        }
        committing
    }

    /// A move: once every destination is delivered (and its folder synced), delete the source.
    /// Deleting comes before the new-files-only state is recorded: a crash in between leaves
    /// nothing to list; a crash before the delete leaves the source and no state, so the next run
    /// delivers it again (at least once) instead of leaving it in the source folder for good,
    /// recorded as sent.
    fn delete_source_if_moved(&mut self) {
        if !self.item.source.delete_after || !self.all_delivered() {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.source)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.error = Some(format!(
                "delivered, but deleting the source {} failed: {e}",
                self.source.display()
            ));
        }
    }

    fn all_delivered(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| o.as_ref().is_some_and(|o| o.outcome == Outcome::Delivered))
    }

    fn any_failed(&self) -> bool {
        self.outcomes
            .iter()
            .any(|o| o.as_ref().is_some_and(|o| o.outcome == Outcome::Failed))
    }

    fn size_and_hash(&self) -> (u64, Option<String>) {
        match (&self.copied, &self.recovered) {
            (Some(c), _) => (c.size, Some(c.sha256.clone())),
            (None, Some((size, sha))) => (*size, Some(sha.clone())),
            (None, None) => (self.item.source.size, None),
        }
    }

    /// The new-files-only state to record: only when nothing failed.
    fn new_files_only_state(&self) -> Option<FileState> {
        if self.any_failed() || self.error.is_some() {
            return None;
        }
        let (size, sha256) = self.size_and_hash();
        Some(FileState {
            size,
            mtime_ns: self
                .copied
                .as_ref()
                .map(|c| c.mtime_ns)
                .unwrap_or(self.item.source.mtime_ns),
            sha256: sha256?,
            run_id: self.item.run_id,
            delivered_at: Utc::now(),
        })
    }

    fn result(self, node: &str) -> FileResult {
        let all_delivered = self.all_delivered();
        let any_failed = self.any_failed();
        let (size, sha256) = self.size_and_hash();
        let destinations: Vec<DestOutcome> = self
            .outcomes
            .into_iter()
            .map(|o| o.expect("every destination decided"))
            .collect();
        let error = self.error.or_else(|| {
            destinations
                .iter()
                .find_map(|d| (d.outcome == Outcome::Failed).then(|| d.error.clone()).flatten())
        });
        let outcome = if any_failed || error.is_some() {
            Outcome::Failed
        } else if all_delivered {
            Outcome::Delivered
        } else {
            Outcome::Skipped
        };
        FileResult {
            item_id: self.item.item_id.clone(),
            source_path: self.source.to_string_lossy().into_owned(),
            size,
            sha256,
            outcome,
            destinations,
            error,
            node: node.to_string(),
            epoch: self.item.epoch,
            started_at: self.started_at,
            finished_at: Utc::now(),
        }
    }
}

/// The renames of one batch, each under the lease check that makes it the commit point.
struct Commits<'a> {
    lease: &'a NodeLease,
    epoch: u64,
    ledger: Option<&'a Ledger>,
    node: &'a str,
    late_commits: &'a prometheus::IntCounter,
    /// The commit intent was stored by this instance.
    allowed: bool,
    why_not: &'static str,
}

impl Commits<'_> {
    /// Rename `f`'s verified temps into place; returns the folders renamed into (to be synced).
    fn commit(&self, f: &mut InFlight) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if f.copied.is_none() {
            return dirs;
        }
        for i in f.open.clone() {
            let p = f.plan(i).clone();
            // The commit point: the rename happens only under a lease valid now.
            let start_ns = ledger::mono_ns();
            let valid = self.lease.allows(self.epoch);
            let outcome = if self.allowed && valid {
                failpoint_pause_before_rename();
                let (outcome, renamed_ns) = commit(&p);
                if outcome.outcome == Outcome::Delivered {
                    dirs.push(p.dir.clone());
                    if !self.lease.allows(self.epoch) {
                        // Checked before, expired by the time the rename was done: the window
                        // ADR 004 describes. Say so loudly; it cannot be undone.
                        self.late_commits.inc();
                        tracing::error!(path = %outcome.path, epoch = self.epoch, "renamed after this node's lease ran out (paused between the lease check and the rename): another node may have been active at the same time");
                    }
                    if let Some(ledger) = self.ledger {
                        ledger.record(&ledger::Entry::Commit {
                            node: self.node.to_string(),
                            epoch: self.epoch,
                            task: f.item.task.clone(),
                            run_id: f.item.run_id.to_string(),
                            path: outcome.path.clone(),
                            start_ns,
                            end_ns: renamed_ns,
                        });
                    }
                }
                outcome
            } else {
                let _ = std::fs::remove_file(&p.temp_path);
                let why = if valid {
                    self.why_not
                } else {
                    "not committed: this node's epoch was superseded (fenced)"
                };
                DestOutcome {
                    path: p.final_path.to_string_lossy().into_owned(),
                    outcome: Outcome::Failed,
                    error: Some(why.into()),
                }
            };
            f.outcomes[i] = Some(outcome);
        }
        dirs
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

/// Rename into place (the commit point; the caller fsyncs the folder). Also returns when the
/// rename was done (`CLOCK_MONOTONIC` ns), for the side-effect ledger.
fn commit(p: &plan::Planned) -> (DestOutcome, u64) {
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
        Ok(Some(final_path)) => DestOutcome {
            path: path(&final_path),
            outcome: Outcome::Delivered,
            error: None,
        },
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
