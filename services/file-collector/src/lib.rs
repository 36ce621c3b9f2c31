//! file-collector: turns a `RunRequested` into per-file work and finishes the run.
//!
//! For each run it lists every source (masks, excludes, subdirectories, minimum age, size
//! stability, new-files-only state, max files), makes one `FileItem` per file, packs them into
//! `WorkBatch`es (small files together, ADR 005), waits for every batch's `BatchResult`, and
//! publishes exactly one `RunFinished` with one result per file. It never copies bytes.
//!
//! Invariants:
//! - At most `max_running_tasks` runs are in progress on the node: the durable consumer's
//!   `max_ack_pending` holds further requests back, in arrival order.
//! - A task never overlaps itself: a run holds `ferry_runs/lock.<task>` (created, and replaced
//!   only by compare-and-swap from a run of a *newer* epoch — the older run's node is fenced)
//!   from listing to `RunFinished`; a request for a running task finishes as skipped.
//! - Run requests are taken only while this node's coordinator grants it the lease and is not
//!   draining.
//! - A restarted collector resumes a run from `ferry_runs/run.<run id>` (the batch plan, stored
//!   before the first batch is sent) instead of listing again. If it stopped while publishing,
//!   the batches that were never sent (neither queued nor answered) fail their files with a
//!   reason; nothing of them was written, and the next run picks those files up.
//! - Requests stamped with an epoch older than the highest seen are refused.
//! - A run request is delivered at most `topology::MAX_DELIVER` times; one no collector finished
//!   by then ends as failed ("dead-lettered", `dead_letter.rs`) and frees its task.

mod actions;
pub mod dead_letter;
mod listing;
mod metrics;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{self, DeliverPolicy, pull},
    kv,
    message::PublishMessage,
};
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use ferry_service::{EpochGate, NodeLease, Settings, http, nats};
use ferry_wire::{
    BatchClaim, BatchResult, ConfigDocument, FILES_IN_RUN_FINISHED, FileItem, FileResult, Outcome,
    PlannedBatch, RunFinished, RunRecord, RunRequested, RunStarted, RunStatus, TaskLock, Trigger, WorkBatch,
    plan, subjects, topology,
};

pub use metrics::Metrics;

pub const SERVICE: &str = subjects::service::FILE_COLLECTOR;

/// How long a run request may go unacknowledged before JetStream redelivers it; a run in
/// progress sends progress every third of it. It is also how long requests held by a collector
/// that died stay out of reach: with `max_ack_pending` = the node's running-task limit, those can
/// block every run of the node that takes over (at 30 s, failovers took 21 s instead of 6).
const RUN_ACK_WAIT: Duration = Duration::from_secs(10);

/// Work batches published before their acks are awaited; below async-nats' limit of acks in
/// flight per JetStream context (5,000), which would otherwise stall a larger run for good.
const PUBLISH_WINDOW: usize = 1000;

/// How often a chained run whose task is running looks at the task lock again.
const CHAIN_WAIT: Duration = Duration::from_millis(500);

struct Collector {
    node: String,
    js: jetstream::Context,
    config_kv: kv::Store,
    state_kv: kv::Store,
    runs_kv: kv::Store,
    gate: EpochGate,
    lease: NodeLease,
    metrics: Metrics,
    /// Connected source hosts, one per configured host.
    hosts: ferry_hosts::Hosts,
    /// How long a run waits for a result before it looks for lost batches.
    lost_batch_check: Duration,
    /// The node's run deadline (`file_collector.max_run_secs`), for tasks without their own.
    max_run_secs: u64,
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, js) = nats::connect(&settings, SERVICE, &shutdown).await?;
    let metrics = Metrics::new()?;
    http::serve(
        settings.file_collector.metrics_addr,
        metrics.registry.clone(),
        http::nats_health(&client),
        shutdown.child_token(),
    )
    .await?;
    let (gate, lease) =
        ferry_service::lease::fencing(&client, &js, &settings.node_id, SERVICE, &shutdown).await?;
    let collector = Arc::new(Collector {
        node: settings.node_id.clone(),
        config_kv: nats::open_kv(&js, topology::KV_CONFIG, &shutdown).await?,
        state_kv: nats::open_kv(&js, topology::KV_STATE, &shutdown).await?,
        runs_kv: nats::open_kv(&js, topology::KV_RUNS, &shutdown).await?,
        js: js.clone(),
        gate,
        lease: lease.clone(),
        hosts: ferry_hosts::Hosts::measured(settings.open_keymat()?, &metrics.registry)?,
        metrics,
        lost_batch_check: Duration::from_secs(settings.file_collector.lost_batch_check_secs),
        max_run_secs: settings.file_collector.max_run_secs,
    });
    // The queues' backlog and each task's failures in a row, for every node's dashboards.
    let samplers = [
        tokio::spawn({
            let (c, js, token) = (collector.clone(), js.clone(), shutdown.child_token());
            async move { c.metrics.sample_backlog(js, token).await }
        }),
        tokio::spawn({
            let (c, js, token) = (collector.clone(), js.clone(), shutdown.child_token());
            async move { c.metrics.follow_run_outcomes(js, token).await }
        }),
    ];
    let dead_letters = tokio::spawn(dead_letter::follow(
        js.clone(),
        settings.node_id.clone(),
        shutdown.child_token(),
    ));
    let (service, group) =
        ferry_service::api::register(&client, &settings.node_id, SERVICE, "Ferry file collector").await?;
    let running = collector.metrics.running.clone();
    let status_gate = collector.gate.clone();
    let status = ferry_service::api::serve_json(
        &group,
        subjects::api::STATUS,
        shutdown.child_token(),
        move |(): ()| {
            let body = serde_json::json!({ "running_runs": running.get(), "epoch": status_gate.highest() });
            async move { Ok(body) }
        },
    )
    .await?;

    let max_running = settings.file_collector.max_running_tasks as usize;
    let consumer = nats::retry("create run-queue consumer", &shutdown, || {
        run_queue_consumer(&js, max_running)
    })
    .await?;
    let slots = Arc::new(Semaphore::new(max_running));
    let mut runs = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        // Only an active node that is not draining takes run requests.
        if lease.wait_accepting(&shutdown).await.is_none() {
            break;
        }
        let batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "pull run requests");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = batch.next() => m,
        };
        match message {
            Some(Ok(message)) => {
                let collector = collector.clone();
                let shutdown = shutdown.clone();
                runs.spawn(async move {
                    collector.handle(message, shutdown).await;
                    drop(permit);
                });
            }
            Some(Err(e)) => tracing::warn!(error = %e, "run request"),
            None => {}
        }
        while runs.try_join_next().is_some() {}
    }
    // Runs in progress stop waiting; their requests are redelivered and resumed after restart.
    runs.shutdown().await;
    let _ = status.await;
    let _ = dead_letters.await;
    for sampler in samplers {
        let _ = sampler.await;
    }
    let _ = service.stop().await;
    Ok(())
}

impl Collector {
    async fn handle(&self, message: jetstream::Message, shutdown: CancellationToken) {
        let request: RunRequested = match ferry_wire::decode::<RunRequested>(&message.payload) {
            // The task name becomes a KV key and a subject token: anything else could only fail
            // again and again.
            Ok(r) if ferry_config::is_valid_name(&r.task) => r,
            Ok(r) => {
                tracing::error!(task = %ferry_hosts::path::shown(&r.task), "dropping a run request whose task is not a valid name");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "dropping unreadable run request");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let span = tracing::info_span!("collect", task = %request.task, run_id = %request.run_id, trace_id = tracing::field::Empty);
        ferry_service::trace::follow(&span, message.headers.as_ref());
        self.handle_request(message, request, shutdown)
            .instrument(span)
            .await
    }

    /// Carry out a readable run request inside its `collect` span and acknowledge it.
    async fn handle_request(
        &self,
        message: jetstream::Message,
        request: RunRequested,
        shutdown: CancellationToken,
    ) {
        // Keep the request ours while the run lasts.
        let progress = {
            let message = message.clone();
            let stop = CancellationToken::new();
            let guard = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RUN_ACK_WAIT / 3) => {
                            let _ = message.ack_with(AckKind::Progress).await;
                        }
                    }
                }
            });
            guard.drop_guard()
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = self.execute(&request) => o,
        };
        drop(progress);
        match outcome {
            Ok(()) => {
                if let Err(e) = message.double_ack().await {
                    tracing::warn!(run_id = %request.run_id, error = %e, "ack run request");
                }
            }
            Err(e) => {
                // Infrastructure trouble (NATS unavailable): let JetStream redeliver; the run
                // resumes.
                let wait = redelivery_wait(&message);
                tracing::error!(task = %request.task, run_id = %request.run_id, error = format!("{e:#}"), retry_in = ?wait, "run interrupted; will resume");
                let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
            }
        }
    }

    /// Carry out one run. `Err` only for infrastructure failures worth retrying; every other
    /// outcome (including task problems) ends in a published `RunFinished`.
    async fn execute(&self, request: &RunRequested) -> anyhow::Result<()> {
        let started_at = Utc::now();
        if let Some(why) = self.gate.refusal(request.epoch).await {
            return self.skipped(request, started_at, why).await;
        }
        if !self.lease.allows(request.epoch) {
            // Not older than any epoch seen, but this node cannot commit under it right now
            // (fenced, or not yet told about it): let JetStream hand it out again later.
            anyhow::bail!(
                "this node holds no valid lease for epoch {} right now",
                request.epoch
            );
        }
        let lock_key = format!("lock.{}", request.task);
        let run_id = request.run_id.to_string();
        // A run whose listing is already recorded was started under the lock: resume it. (Its
        // lock may already be released — that happens only once every result is in.)
        let resumed = self
            .runs_kv
            .get(format!("run.{}", request.run_id))
            .await
            .context("read run record")?
            .is_some();
        while !resumed && let Some(holder) = self.take_lock(&lock_key, request).await? {
            // A chained run (a `run-task` next action) waits for the run in progress instead of
            // being dropped; its request stays ours meanwhile (progress acks).
            if matches!(request.trigger, Trigger::Chain { .. }) {
                tracing::info!(task = %request.task, run_id = %request.run_id, %holder, "chained run waits: task is running");
                tokio::time::sleep(CHAIN_WAIT).await;
                continue;
            }
            let why = format!("task is already running (run {holder})");
            tracing::info!(task = %request.task, run_id = %request.run_id, %holder, "skipped: already running");
            return self.skipped(request, started_at, why).await;
        }
        self.metrics.running.inc();
        let result = self.collect(request).await;
        self.metrics.running.dec();
        let (status, error, mut tally, started_at) = match result {
            Ok((tally, started_at)) => {
                let status = if tally.failed > 0 {
                    RunStatus::Failed
                } else {
                    RunStatus::Succeeded
                };
                let error = tally.error();
                (status, error, tally, started_at)
            }
            Err(RunError::Task(message)) => (RunStatus::Failed, Some(message), Tally::default(), started_at),
            Err(RunError::Infra(e)) => return Err(e),
        };
        // Release before announcing the end, so a run requested on seeing `RunFinished` is not
        // refused as overlapping.
        self.release_lock(&lock_key, &run_id).await;
        let end = actions::RunEnd {
            status,
            error: error.as_deref(),
            delivered: tally.delivered,
            skipped: tally.skipped,
            failed: tally.failed,
            bytes: tally.bytes,
            started_at,
        };
        let config = actions::current_config(&self.config_kv).await;
        let mut report = actions::Actions {
            js: &self.js,
            runs_kv: &self.runs_kv,
            keymat: self.hosts.keymat(),
            node: &self.node,
        }
        .run(config.as_ref(), request, &end)
        .await;
        report.actions.append(&mut tally.file_actions);
        self.finish(request, started_at, status, error, tally, report)
            .await
    }

    /// End `request` as skipped (not run), saying why.
    async fn skipped(
        &self,
        request: &RunRequested,
        started_at: chrono::DateTime<Utc>,
        why: String,
    ) -> anyhow::Result<()> {
        self.finish(
            request,
            started_at,
            RunStatus::Skipped,
            Some(why),
            Tally::default(),
            actions::Report::default(),
        )
        .await
    }

    /// Take the task lock for `request`. Returns the run holding it instead, if any. A lock of an
    /// older epoch is taken over by compare-and-swap: its run's node is fenced, and its items
    /// are refused everywhere. Our own lock (a redelivery after a restart before the listing
    /// was recorded) is kept: list again.
    async fn take_lock(&self, lock_key: &str, request: &RunRequested) -> anyhow::Result<Option<String>> {
        let mine = TaskLock {
            run_id: request.run_id,
            epoch: request.epoch,
        };
        loop {
            match self.runs_kv.create(lock_key, ferry_wire::encode(&mine)).await {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).context("take task lock"),
            }
            let Some(entry) = self.runs_kv.entry(lock_key).await.context("read task lock")? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let Ok(holder) = ferry_wire::decode::<TaskLock>(&entry.value) else {
                return Ok(Some(String::from_utf8_lossy(&entry.value).into_owned()));
            };
            if holder.run_id == request.run_id {
                return Ok(None);
            }
            if holder.epoch >= request.epoch {
                return Ok(Some(holder.run_id.to_string()));
            }
            match self
                .runs_kv
                .update(lock_key, ferry_wire::encode(&mine), entry.revision)
                .await
            {
                Ok(_) => {
                    tracing::warn!(task = %request.task, run_id = %request.run_id, stale_run = %holder.run_id, stale_epoch = holder.epoch, "took over the task lock of a run from an older epoch (its node was fenced)");
                    return Ok(None);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(e).context("take over task lock"),
            }
        }
    }

    async fn release_lock(&self, lock_key: &str, run_id: &str) {
        release_lock(&self.runs_kv, lock_key, run_id).await;
    }

    /// List (or resume), publish the work batches, collect results.
    async fn collect(&self, request: &RunRequested) -> Result<(Tally, chrono::DateTime<Utc>), RunError> {
        let record_key = format!("run.{}", request.run_id);
        let existing = self.runs_kv.get(&record_key).await.context("read run record")?;
        let (record, unsent) = match existing {
            Some(bytes) => {
                // A record this version cannot read (written before work batches) cannot be
                // resumed: end the run with why instead of retrying it for good.
                let record: RunRecord = ferry_wire::decode(&bytes).map_err(|e| {
                    RunError::Task(format!(
                        "cannot resume this run: its record was written by another Ferry version ({e}); \
                         its files are picked up by the next run"
                    ))
                })?;
                tracing::info!(run_id = %request.run_id, files = record.item_count(), published = record.published, "resuming run");
                // Stopped while publishing: batches neither waiting nor answered were never sent.
                let unsent = if record.published {
                    HashSet::new()
                } else {
                    self.unsent_batches(request, &record).await?
                };
                self.announce_start(request, &record).await?;
                (record, unsent)
            }
            None => {
                let started_at = Utc::now();
                let config = self
                    .config_kv
                    .get(topology::CONFIG_KEY)
                    .await
                    .context("read configuration")?;
                let doc = match config {
                    Some(bytes) => {
                        ferry_wire::decode::<ConfigDocument>(&bytes).context("decode configuration")?
                    }
                    None => return Err(RunError::Task("no configuration has been applied".into())),
                };
                self.check_keymat(&doc).map_err(RunError::Task)?;
                let config = doc.config;
                let task = config.tasks.get(&request.task).ok_or_else(|| {
                    RunError::Task(format!("task {:?} is not in the configuration", request.task))
                })?;
                let task = &actions::with_run_parameters(task, &config, request).map_err(RunError::Task)?;
                let items = if task.sources.is_empty() {
                    // Its PER-TASK steps make the run's files (Certs Backup): one item stands for
                    // the run, so transfer runs them and the run has a result.
                    vec![FileItem::sourceless(
                        request.run_id,
                        &task.name,
                        request.epoch,
                        task.destinations.clone(),
                        started_at,
                    )]
                } else {
                    listing::list_task(task, &config, &self.hosts, request, started_at, &self.state_kv)
                        .await
                        .map_err(RunError::Task)?
                };
                let files = items.len() as u64;
                let whole_run = task
                    .steps
                    .iter()
                    .any(|s| s.scope == ferry_config::StepScope::PerTask);
                let batches = tokio::task::spawn_blocking(move || match whole_run {
                    true => listing::pack_whole_run(items),
                    false => listing::pack(items),
                })
                .await
                .context("pack work batches")?;
                // The plan is stored before the first batch is sent, so a restart knows what the
                // run consists of without listing again.
                let mut record = RunRecord {
                    started_at,
                    batches: batches
                        .iter()
                        .map(|b| PlannedBatch {
                            batch_id: b.batch_id.clone(),
                            items: b.items.len(),
                        })
                        .collect(),
                    published: false,
                    max_run_secs: Some(task.max_run_secs.unwrap_or(self.max_run_secs)),
                };
                self.runs_kv
                    .put(&record_key, ferry_wire::encode(&record))
                    .await
                    .context("write run record")?;
                // Acks are awaited in windows: async-nats holds one permit per ack not yet
                // awaited (5,000 by default) and blocks the next publish when they run out.
                let mut acks: Vec<jetstream::context::PublishAckFuture> =
                    Vec::with_capacity(PUBLISH_WINDOW.min(batches.len()));
                for batch in &batches {
                    if acks.len() == PUBLISH_WINDOW {
                        for ack in acks.drain(..) {
                            ack.await.context("work batch not stored")?;
                        }
                    }
                    let ack = self
                        .js
                        .send_publish(
                            subjects::file_batch(request.run_id, &batch.batch_id),
                            ferry_service::trace::inject(
                                PublishMessage::build()
                                    .payload(ferry_wire::encode(batch))
                                    .message_id(&batch.batch_id)
                                    .header(ferry_wire::HEADER_EPOCH, request.epoch.to_string().as_str()),
                            ),
                        )
                        .await
                        .context("publish work batch")?;
                    acks.push(ack);
                }
                for ack in acks {
                    ack.await.context("work batch not stored")?;
                }
                record.published = true;
                self.runs_kv
                    .put(&record_key, ferry_wire::encode(&record))
                    .await
                    .context("write run record")?;
                self.metrics
                    .files_listed
                    .with_label_values(&[&request.task])
                    .inc_by(files);
                self.announce_start(request, &record).await?;
                tracing::info!(task = %request.task, run_id = %request.run_id, files, batches = batches.len(), "run started");
                (record, HashSet::new())
            }
        };
        let results = self.await_results(request, &record, &unsent).await?;
        Ok((results, record.started_at))
    }

    /// A configuration whose secrets are sealed under another keymat cannot be used on this node:
    /// say so with both key ids and run nothing (the reference product's "copy the KeyMat to the
    /// standby once" step was missed).
    fn check_keymat(&self, doc: &ConfigDocument) -> Result<(), String> {
        let has_secrets = doc.config.hosts.values().any(|h| !h.spec.secrets().is_empty());
        let (Some(sealed_under), true) = (&doc.keymat_id, has_secrets) else {
            return Ok(());
        };
        let ours = self
            .hosts
            .keymat()
            .current()
            .map_err(|e| format!("this node's keymat cannot be read: {e}"))?;
        if ours.key_id() != sealed_under {
            return Err(format!(
                "the configuration's secrets are sealed under keymat {sealed_under}, but this node's keymat is {}: \
                 import the primary's keymat on this node (`ferry keymat import`), or apply the configuration again here; \
                 nothing was run",
                ours.key_id()
            ));
        }
        Ok(())
    }

    /// Publish `RunStarted` (once: a repeat is dropped by its message id).
    async fn announce_start(&self, request: &RunRequested, record: &RunRecord) -> anyhow::Result<()> {
        let started = RunStarted {
            task: request.task.clone(),
            run_id: request.run_id,
            epoch: request.epoch,
            node: self.node.clone(),
            trigger: request.trigger.clone(),
            started_at: record.started_at,
            files: record.item_count() as u64,
        };
        ferry_service::streams::store(
            &self.js,
            subjects::run_started(&request.task, request.run_id),
            format!("started:{}", request.run_id),
            &started,
            "run started",
        )
        .await
    }

    /// The planned batches of a run whose collector stopped while publishing that were never
    /// sent. A sent batch is either still in the file queue or, once taken, answered: transfer
    /// stores the result before it acknowledges (and so removes) the batch, so looking in the
    /// queue first and then at the results cannot miss one.
    async fn unsent_batches(
        &self,
        request: &RunRequested,
        record: &RunRecord,
    ) -> anyhow::Result<HashSet<String>> {
        let queue = self
            .js
            .get_stream(topology::STREAM_FILEQ)
            .await
            .context("open file queue")?;
        let results = self
            .js
            .get_stream(topology::STREAM_RESULTS)
            .await
            .context("open results stream")?;
        // Only "no such message" counts as absent: any other error stops the resume (it is
        // retried), so a sent batch is never failed as unsent because a look-up failed.
        let stored = |found: Result<_, async_nats::jetstream::stream::LastRawMessageError>| match found {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(false)
            }
            Err(e) => Err(anyhow::Error::new(e)),
        };
        let mut unsent = HashSet::new();
        for batch in &record.batches {
            let queued = queue
                .get_last_raw_message_by_subject(&subjects::file_batch(request.run_id, &batch.batch_id))
                .await;
            if stored(queued).context("look for a planned batch in the file queue")? {
                continue;
            }
            let answered = results
                .get_last_raw_message_by_subject(&subjects::batch_result(request.run_id, &batch.batch_id))
                .await;
            if !stored(answered).context("look for a planned batch's result")? {
                unsent.insert(batch.batch_id.clone());
            }
        }
        if !unsent.is_empty() {
            tracing::warn!(run_id = %request.run_id, batches = unsent.len(), "the collector stopped while publishing this run: some batches were never sent");
        }
        Ok(unsent)
    }

    /// Read the run's batch results (from the beginning, so a resumed run sees earlier ones
    /// too) until every sent batch has one, adding them up as they come (see [`Tally`]). Files
    /// of batches never sent count as failed, with a reason; so do those of batches that left
    /// the file queue without a result (see [`Collector::queued_batches`]).
    async fn await_results(
        &self,
        request: &RunRequested,
        record: &RunRecord,
        unsent: &HashSet<String>,
    ) -> anyhow::Result<Tally> {
        let planned: HashMap<&str, usize> = record
            .batches
            .iter()
            .filter(|b| !unsent.contains(&b.batch_id))
            .map(|b| (b.batch_id.as_str(), b.items))
            .collect();
        let mut tally = Tally::new(record);
        // Per-file next actions fire as each batch's results come in.
        let config = if planned.is_empty() {
            None
        } else {
            actions::current_config(&self.config_kv).await
        };
        let per_file = config
            .as_ref()
            .and_then(|c| c.tasks.get(&request.task))
            .is_some_and(|t| t.next_actions.iter().any(|n| n.per_file));
        if !planned.is_empty() {
            let stream = self
                .js
                .get_stream(topology::STREAM_RESULTS)
                .await
                .context("open results stream")?;
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: subjects::run_results(request.run_id),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .context("read run results")?;
            let mut messages = consumer.messages().await.context("read run results")?;
            let mut seen: HashSet<String> = HashSet::with_capacity(planned.len());
            // Batches missing from the file queue at the last check, without a result.
            let mut missing_before: HashSet<String> = HashSet::new();
            // The record is read back from the bus: a value out of range is held to the most a
            // run may take, and a start time that makes no sense counts as a deadline passed.
            let max_run_secs = record
                .max_run_secs
                .unwrap_or(self.max_run_secs)
                .min(ferry_config::MAX_RUN_SECS);
            let left = record
                .started_at
                .checked_add_signed(chrono::Duration::seconds(max_run_secs as i64))
                .and_then(|end| (end - Utc::now()).to_std().ok())
                .unwrap_or_default();
            let deadline = tokio::time::Instant::now() + left;
            let mut gave_up = false;
            while seen.len() < planned.len() {
                let wait = if gave_up {
                    self.lost_batch_check
                } else {
                    self.lost_batch_check
                        .min(deadline.saturating_duration_since(tokio::time::Instant::now()))
                };
                let message = match tokio::time::timeout(wait, messages.next()).await {
                    Ok(Some(m)) => m.context("read run result")?,
                    Ok(None) => anyhow::bail!("results stream ended"),
                    Err(_) if !gave_up && tokio::time::Instant::now() >= deadline => {
                        // Past the run's deadline: batches no transfer has started are answered
                        // here (their results come in below); those in progress finish.
                        gave_up = true;
                        let waiting: Vec<&str> =
                            planned.keys().copied().filter(|b| !seen.contains(*b)).collect();
                        tally.given_up = self.give_up_unstarted(request, &waiting, max_run_secs).await;
                        tally.max_run_secs = max_run_secs;
                        continue;
                    }
                    Err(_) => {
                        // No result for a while. A batch waiting or in progress is in the queue
                        // (a transfer removes it only after storing its result); one missing
                        // at two checks in a row — a whole interval for its result to arrive —
                        // was deleted, purged or expired, and would otherwise hold the run and
                        // its task for good.
                        let queued = match self.queued_batches(request.run_id).await {
                            Ok(q) => q,
                            Err(e) => {
                                tracing::warn!(run_id = %request.run_id, error = format!("{e:#}"), "cannot look for lost work batches");
                                continue;
                            }
                        };
                        let missing: HashSet<String> = planned
                            .keys()
                            .filter(|b| !seen.contains(**b) && !queued.contains(**b))
                            .map(|b| b.to_string())
                            .collect();
                        for lost in missing.intersection(&missing_before) {
                            tracing::error!(run_id = %request.run_id, batch = %lost, "a work batch left the file queue without a result: its files count as failed");
                            tally.lost += planned[lost.as_str()] as u64;
                            seen.insert(lost.clone());
                        }
                        missing_before = missing.into_iter().filter(|b| !seen.contains(b)).collect();
                        continue;
                    }
                };
                // Anything on the results subject of this run is checked against the run's plan:
                // an unreadable or unexpected message is recorded and skipped, never trusted and
                // never allowed to wedge the run (only a result matching its batch counts).
                let batch: BatchResult = match ferry_wire::decode(&message.payload) {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::error!(run_id = %request.run_id, subject = %message.subject, error = %e, "skipping an unreadable batch result");
                        continue;
                    }
                };
                let Some(&items) = planned.get(batch.batch_id.as_str()) else {
                    continue;
                };
                if seen.contains(&batch.batch_id) {
                    continue;
                }
                if let Err(why) = matches_plan(items, &batch) {
                    tracing::error!(run_id = %request.run_id, batch = %ferry_hosts::path::shown(&batch.batch_id), "skipping a batch result that does not match the run's plan: {why}");
                    continue;
                }
                seen.insert(batch.batch_id.clone());
                if per_file {
                    let outcomes = actions::Actions {
                        js: &self.js,
                        runs_kv: &self.runs_kv,
                        keymat: self.hosts.keymat(),
                        node: &self.node,
                    }
                    .per_file(config.as_ref(), request, &batch.results)
                    .await;
                    tally.file_actions(outcomes);
                }
                tally.add(batch);
            }
        }
        let not_sent: usize = record
            .batches
            .iter()
            .filter(|b| unsent.contains(&b.batch_id))
            .map(|b| b.items)
            .sum();
        tally.unsent = not_sent as u64;
        tally.failed += tally.unsent + tally.lost;
        Ok(tally)
    }

    /// At the run's deadline: answer each of `batches` that no transfer has taken yet — every
    /// file failed with why — and take it from the file queue. The batch's claim, created `Done`
    /// here, is what a transfer checks before it moves a file, so none starts it afterwards (one
    /// that already took it keeps it, and its results count). The number of files given up.
    async fn give_up_unstarted(&self, request: &RunRequested, batches: &[&str], max_run_secs: u64) -> u64 {
        let why = format!(
            "the run passed its deadline ({max_run_secs} s, max_run_secs) before a transfer started this \
             file; nothing was written for it, the source stays and the next run takes it"
        );
        let queue = match self.js.get_stream(topology::STREAM_FILEQ).await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(run_id = %request.run_id, error = %e, "run deadline: cannot open the file queue; waiting for the batches");
                return 0;
            }
        };
        let mut given_up = 0u64;
        for batch_id in batches {
            let subject = subjects::file_batch(request.run_id, batch_id);
            // Gone from the queue: answered meanwhile, or lost (the lost-batch check sees it).
            let Ok(message) = queue.get_last_raw_message_by_subject(&subject).await else {
                continue;
            };
            let batch = match ferry_wire::decode::<WorkBatch>(&message.payload) {
                Ok(b) if !b.items.is_empty() && b.batch_id == *batch_id => b,
                _ => continue,
            };
            let results = dead_letter::failed_results(&batch, &self.node, &why);
            let claim = ferry_wire::encode(&BatchClaim::Done {
                results: results.clone(),
            });
            match self.runs_kv.create(BatchClaim::key(batch_id), claim).await {
                Ok(_) => {}
                // A transfer has it: it finishes it.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => {
                    tracing::warn!(run_id = %request.run_id, batch = %batch_id, error = %e, "run deadline: cannot claim a batch; waiting for it");
                    continue;
                }
            }
            if let Err(e) =
                dead_letter::store_result(&self.js, &batch, results, "batch result at the run's deadline")
                    .await
            {
                // The claim stands and the batch stays queued: the next transfer to get it
                // reports these results.
                tracing::warn!(run_id = %request.run_id, batch = %batch_id, error = format!("{e:#}"), "run deadline: cannot store a batch's result; a transfer will");
                continue;
            }
            let _ = queue.delete_message(message.sequence).await;
            given_up += batch.items.len() as u64;
        }
        if given_up > 0 {
            tracing::warn!(task = %request.task, run_id = %request.run_id, files = given_up, max_run_secs, "run deadline passed: files no transfer had started were given up");
        }
        given_up
    }

    /// The ids of the run's batches in the file queue now (waiting, or taken by a transfer that
    /// has not finished them): one request, however many batches the run has.
    async fn queued_batches(&self, run_id: uuid::Uuid) -> anyhow::Result<HashSet<String>> {
        let queue = self
            .js
            .get_stream(topology::STREAM_FILEQ)
            .await
            .context("open file queue")?;
        let prefix = subjects::file_batch(run_id, "");
        let mut subjects = queue
            .info_with_subjects(format!("{prefix}*"))
            .await
            .context("list the run's queued batches")?;
        let mut queued = HashSet::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _count) = entry.context("list the run's queued batches")?;
            if let Some(batch_id) = subject.strip_prefix(&prefix) {
                queued.insert(batch_id.to_string());
            }
        }
        Ok(queued)
    }

    async fn finish(
        &self,
        request: &RunRequested,
        started_at: chrono::DateTime<Utc>,
        status: RunStatus,
        error: Option<String>,
        tally: Tally,
        report: actions::Report,
    ) -> anyhow::Result<()> {
        let finished = store_finished(
            &self.js, &self.node, request, started_at, status, error, &tally, report,
        )
        .await?;
        let status_label = match status {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
        };
        self.metrics
            .runs
            .with_label_values(&[&request.task, status_label])
            .inc();
        tracing::info!(
            task = %request.task,
            run_id = %request.run_id,
            status = status_label,
            delivered = finished.files_delivered,
            failed = finished.files_failed,
            skipped = finished.files_skipped,
            error = finished.error.as_deref().unwrap_or(""),
            "run finished"
        );
        Ok(())
    }
}

/// Delete the task lock `lock_key` if `run_id` holds it.
async fn release_lock(runs_kv: &kv::Store, lock_key: &str, run_id: &str) {
    match runs_kv.entry(lock_key).await {
        Ok(Some(entry))
            if ferry_wire::decode::<TaskLock>(&entry.value).is_ok_and(|l| l.run_id.to_string() == run_id) =>
        {
            if let Err(e) = runs_kv
                .delete_expect_revision(lock_key, Some(entry.revision))
                .await
            {
                tracing::warn!(%lock_key, error = %e, "release task lock");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%lock_key, error = %e, "read task lock"),
    }
}

/// How long to wait before a message handed back after infrastructure trouble comes again:
/// later each time (2 s, 4 s, … 60 s: about five minutes before [`topology::MAX_DELIVER`]
/// deliveries dead-letter it).
pub(crate) fn redelivery_wait(message: &async_nats::jetstream::Message) -> Duration {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1).clamp(1, 6);
    Duration::from_secs((2u64 << (delivered - 1)).min(60))
}

/// The shared durable consumer of the run queue: at most `max_running` requests in progress, each
/// delivered at most `topology::MAX_DELIVER` times.
pub async fn run_queue_consumer(
    js: &jetstream::Context,
    max_running: usize,
) -> anyhow::Result<consumer::PullConsumer> {
    let queue = js
        .get_stream(topology::STREAM_RUNQ)
        .await
        .context("open run queue")?;
    let config = pull::Config {
        durable_name: Some(topology::CONSUMER_COLLECTOR.to_string()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: RUN_ACK_WAIT,
        max_ack_pending: max_running as i64,
        max_deliver: topology::MAX_DELIVER,
        filter_subject: subjects::RUN_REQUESTS.to_string(),
        ..Default::default()
    };
    ferry_service::streams::durable_consumer(&queue, config).await
}

/// Build and store the one `RunFinished` of `request` (its files from `tally`, its parameters
/// and next actions from `report`).
#[allow(clippy::too_many_arguments)]
async fn store_finished(
    js: &jetstream::Context,
    node: &str,
    request: &RunRequested,
    started_at: chrono::DateTime<Utc>,
    status: RunStatus,
    error: Option<String>,
    tally: &Tally,
    report: actions::Report,
) -> anyhow::Result<RunFinished> {
    let files_in_results = tally.by_batch.is_none() && tally.delivered + tally.skipped + tally.failed > 0;
    let finished = RunFinished {
        task: request.task.clone(),
        run_id: request.run_id,
        epoch: request.epoch,
        node: node.to_string(),
        trigger: request.trigger.clone(),
        status,
        started_at,
        finished_at: Utc::now(),
        files_delivered: tally.delivered,
        files_skipped: tally.skipped,
        files_failed: tally.failed,
        bytes: tally.bytes,
        error,
        files: tally.files(),
        files_in_results,
        parameters: report.parameters,
        actions: report.actions,
    };
    ferry_service::streams::store(
        js,
        subjects::run_finished(&request.task, request.run_id),
        format!("finished:{}", request.run_id),
        &finished,
        "run finished",
    )
    .await?;
    Ok(finished)
}

/// Why a run could not complete.
enum RunError {
    /// The task itself is the problem (missing folder, unknown task): the run fails.
    Task(String),
    /// NATS trouble: retry the whole request later.
    Infra(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> Self {
        RunError::Infra(e)
    }
}

/// A batch result counts only if it answers for exactly the items its batch was planned with,
/// in order: as many as planned, whose ids hash to the batch's id ([`plan::batch_id`]).
fn matches_plan(items: usize, batch: &BatchResult) -> Result<(), String> {
    if batch.results.len() != items {
        return Err(format!(
            "{} result(s) for a batch of {items} item(s)",
            batch.results.len()
        ));
    }
    if plan::batch_id(batch.results.iter().map(|r| r.item_id.as_str())) != batch.batch_id {
        return Err("its items are not the batch's".into());
    }
    Ok(())
}

/// A run's results added up as they arrive: counts and bytes for any number of files; each
/// file's outcome only for a run of at most [`FILES_IN_RUN_FINISHED`] files, which
/// `RunFinished` carries in listing order (a larger run's stay in its batch results).
#[derive(Default)]
struct Tally {
    delivered: u64,
    skipped: u64,
    failed: u64,
    bytes: u64,
    /// Each answered batch's results (`None`: a large run), and the planned batch order.
    by_batch: Option<HashMap<String, Vec<FileResult>>>,
    order: Vec<String>,
    /// Files never sent (the collector stopped while publishing the run): counted as failed.
    unsent: u64,
    /// Files whose batch left the file queue without a result: counted as failed.
    lost: u64,
    /// Files given up at the run's deadline of `max_run_secs` (counted by their results).
    given_up: u64,
    max_run_secs: u64,
    /// Outcomes of per-file next actions for the run's record (the first
    /// [`FILE_ACTIONS_IN_RUN_FINISHED`]; every one is in the audit trail).
    file_actions: Vec<ferry_wire::ActionOutcome>,
}

/// How many per-file next actions' outcomes a run's record lists (a run of many files keeps one
/// NATS message; the audit trail has every one).
const FILE_ACTIONS_IN_RUN_FINISHED: usize = 200;

impl Tally {
    fn new(record: &RunRecord) -> Tally {
        let small = record.item_count() <= FILES_IN_RUN_FINISHED;
        Tally {
            by_batch: small.then(HashMap::new),
            order: if small {
                record.batches.iter().map(|b| b.batch_id.clone()).collect()
            } else {
                Vec::new()
            },
            ..Tally::default()
        }
    }

    fn file_actions(&mut self, outcomes: Vec<ferry_wire::ActionOutcome>) {
        let room = FILE_ACTIONS_IN_RUN_FINISHED.saturating_sub(self.file_actions.len());
        self.file_actions.extend(outcomes.into_iter().take(room));
    }

    fn add(&mut self, batch: BatchResult) {
        for f in &batch.results {
            match f.outcome {
                Outcome::Delivered => {
                    self.delivered += 1;
                    self.bytes += f.size;
                }
                Outcome::Skipped => self.skipped += 1,
                Outcome::Failed => self.failed += 1,
            }
        }
        if let Some(results) = &mut self.by_batch {
            results.insert(batch.batch_id, batch.results);
        }
    }

    /// The run's error, when files failed without a result of their own.
    fn error(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.unsent > 0 {
            why.push(format!(
                "{} file(s) were not sent: the file-collector stopped while publishing this run; \
                 nothing was written for them and the next run picks them up",
                self.unsent
            ));
        }
        if self.lost > 0 {
            why.push(format!(
                "{} file(s) have no result: their work batches left the file queue unanswered \
                 (deleted, purged, or expired after 7 days); the audit trail shows anything written, \
                 and the next run picks up the files still in their sources",
                self.lost
            ));
        }
        if self.given_up > 0 {
            why.push(format!(
                "{} file(s) were given up: the run passed its deadline ({} s, max_run_secs) before a \
                 transfer started them; they stay in their sources and the next run takes them",
                self.given_up, self.max_run_secs
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The per-file outcomes in listing order (empty for a large run).
    fn files(&self) -> Vec<FileResult> {
        let Some(results) = &self.by_batch else {
            return Vec::new();
        };
        self.order
            .iter()
            .filter_map(|id| results.get(id))
            .flatten()
            .cloned()
            .collect()
    }
}
