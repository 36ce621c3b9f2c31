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

mod hosts_route;
mod inflight;
mod local_route;
mod metrics;
mod process_route;

use inflight::{CommitPoint, InFlight};

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
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use ferry_service::ledger::Ledger;
use ferry_service::{EpochGate, NodeLease, Settings, http, nats};
use ferry_wire::{
    AuditRecord, BatchClaim, BatchResult, DestOutcome, FileItem, FileResult, Outcome, WorkBatch, subjects,
    topology,
};

pub use metrics::Metrics;

pub const SERVICE: &str = subjects::service::TRANSFER;

struct Transfer {
    node: String,
    /// Unique per process: claims name it.
    instance: String,
    js: jetstream::Context,
    runs_kv: kv::Store,
    state_kv: kv::Store,
    config_kv: kv::Store,
    /// The configuration last read, by revision.
    config_cache: tokio::sync::Mutex<Option<(u64, Arc<ferry_config::Config>)>>,
    /// Connected hosts, one per configured host.
    hosts: ferry_hosts::Hosts,
    gate: EpochGate,
    lease: NodeLease,
    ledger: Option<Ledger>,
    metrics: Metrics,
    buffer_bytes: usize,
    ack_wait: Duration,
    /// Where the process route keeps a batch's files while its steps run (`<data_dir>/spool`).
    spool: std::path::PathBuf,
    /// The node's cert-handler: keys and certificate stores for process steps.
    keys: Arc<ferry_processes::remote_keys::NatsKeys>,
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
        runs_kv: nats::open_kv(&js, topology::KV_RUNS, &shutdown).await?,
        state_kv: nats::open_kv(&js, topology::KV_STATE, &shutdown).await?,
        config_kv: nats::open_kv(&js, topology::KV_CONFIG, &shutdown).await?,
        config_cache: tokio::sync::Mutex::new(None),
        hosts: ferry_hosts::Hosts::measured(settings.open_keymat()?, &metrics.registry)?,
        js: js.clone(),
        gate,
        lease,
        ledger: Ledger::open(settings.ledger.as_deref())?,
        metrics,
        buffer_bytes: settings.transfer.buffer_bytes,
        ack_wait: Duration::from_secs(settings.transfer.ack_wait_secs),
        spool: settings.data_dir.join("spool"),
        keys: Arc::new(ferry_processes::remote_keys::NatsKeys::new(
            client.clone(),
            settings.node_id.clone(),
            tokio::runtime::Handle::current(),
        )),
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

    let t = transfer.clone();
    let host_test = ferry_service::api::serve_json(
        &group,
        subjects::api::HOST_TEST,
        shutdown.child_token(),
        move |req: ferry_wire::HostTestRequest| {
            let t = t.clone();
            async move { t.host_test(req).await.map_err(|e| format!("{e:#}")) }
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
    let _ = host_test.await;
    let _ = service.stop().await;
    Ok(())
}

/// The shared durable consumer of the file queue.
pub async fn file_queue_consumer(
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
        max_deliver: topology::MAX_DELIVER,
        filter_subject: subjects::FILE_BATCHES.to_string(),
        ..Default::default()
    };
    let mut consumer = ferry_service::streams::durable_consumer(&stream, config.clone()).await?;
    let filter = consumer.cached_info().config.filter_subject.clone();
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
            // Ids become KV keys and message ids: anything else could only fail again and again.
            Ok(b @ WorkBatch { .. })
                if !b.items.is_empty()
                    && ferry_config::is_valid_name(&b.batch_id)
                    && b.items.iter().all(|i| ferry_config::is_valid_name(&i.item_id)) =>
            {
                b
            }
            Ok(_) => {
                tracing::error!(subject = %message.subject, "dropping a work batch that is empty or whose ids are not names");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "dropping unreadable work batch");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let first = batch.first();
        let span = tracing::info_span!("batch", task = %first.task, run_id = %first.run_id, batch = %batch.batch_id, files = batch.items.len(), trace_id = tracing::field::Empty);
        ferry_service::trace::follow(&span, message.headers.as_ref());
        self.handle_batch(message, batch).instrument(span).await
    }

    /// Move a readable work batch inside its `batch` span and acknowledge it.
    async fn handle_batch(&self, message: jetstream::Message, batch: WorkBatch) {
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
        let key = BatchClaim::key(&batch.batch_id);

        // Take the claim (or learn that the batch is already done). Create first: on the normal
        // path the batch is new and this is the only round trip.
        let mine = ferry_wire::encode(&BatchClaim::Claimed {
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
            let claim: BatchClaim = ferry_wire::decode(&entry.value)?;
            if let BatchClaim::Done { results } = claim {
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
            Some(BatchClaim::Claimed { committing, .. }) => committing,
            _ => Vec::new(),
        };

        let mut results = if let Some(why) = self.gate.refusal(first.epoch).await {
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
        let done = ferry_wire::encode(&BatchClaim::Done {
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
            source_path: ferry_hosts::path::join(&item.source.folder, &item.source.rel_path),
            size: item.source.size,
            sha256: None,
            outcome: Outcome::Failed,
            destinations: Vec::new(),
            error: Some(error),
            node: self.node.clone(),
            epoch: item.epoch,
            started_at,
            finished_at: Utc::now(),
            steps: Vec::new(),
        }
    }

    /// Move every file of the batch to every destination. File-level problems end up in the
    /// results, one per item.
    ///
    /// Two stages around the commit intent: plan and copy every file into temporaries (verified
    /// and durable); store the intent (compare-and-swap on the claim); commit each under the
    /// commit point, make the commits durable, delete the sources of moves. A batch whose hosts
    /// are all the node's own file system takes the local route (blocking, two hops to the
    /// blocking pool per batch); any other the hosts route (async, through `ferry_hosts`).
    async fn deliver(
        &self,
        batch: &WorkBatch,
        key: &str,
        revision: u64,
        previously_committing: &[Vec<Option<String>>],
    ) -> anyhow::Result<Vec<FileResult>> {
        let epoch = batch.first().epoch;
        let previously: Vec<Vec<Option<String>>> = (0..batch.items.len())
            .map(|i| previously_committing.get(i).cloned().unwrap_or_default())
            .collect();
        let mut files: Vec<InFlight> = batch.items.iter().cloned().map(InFlight::new).collect();
        // Trust no message: every file must be what the stored configuration says its task
        // moves (source host, folder and move flag, destinations), all of one task and source,
        // or nothing of the batch is touched.
        let config = self.config().await?;
        if let Err(why) = batch_conforms(&config, batch) {
            let why = format!("refused: {why}");
            tracing::error!(batch = %batch.batch_id, "{why}");
            for f in &mut files {
                f.refuse(&why);
            }
            return Ok(files.into_iter().map(|f| f.result(&self.node)).collect());
        }
        if let Some(task) = config.tasks.get(&batch.first().task)
            && !task.steps.is_empty()
        {
            return self.deliver_processed(&config, task, batch, key, revision).await;
        }
        let files = self
            .move_files(&config, files, key, revision, &previously, epoch)
            .await?;
        Ok(files.into_iter().map(|f| f.result(&self.node)).collect())
    }

    /// Copy `files` to their destinations, store the commit intent in the batch's claim (at
    /// `revision`), commit them under the commit point and record their new-files-only state.
    /// All of `files` come from one source host.
    async fn move_files(
        &self,
        config: &ferry_config::Config,
        mut files: Vec<InFlight>,
        key: &str,
        revision: u64,
        previously: &[Vec<Option<String>>],
        epoch: u64,
    ) -> anyhow::Result<Vec<InFlight>> {
        let buffer = self.buffer_bytes;
        let previously = previously.to_vec();
        let Some(first) = files.first().map(|f| f.item.clone()) else {
            return Ok(files);
        };
        let way = match self.way(config, &first) {
            Ok(way) => way,
            Err(why) => {
                for f in &mut files {
                    for i in f.undecided() {
                        f.fail(i, why.clone());
                    }
                }
                return Ok(files);
            }
        };
        let lease = self.lease.clone();
        let stop = move || !lease.allows(epoch);
        let mut files = match &way {
            Way::Local => {
                tokio::task::spawn_blocking(move || {
                    for (f, previously) in files.iter_mut().zip(&previously) {
                        local_route::prepare(f, previously, buffer);
                    }
                    local_route::copy(&mut files, buffer, &stop);
                    files
                })
                .await?
            }
            Way::Hosts(route) => {
                for (f, previously) in files.iter_mut().zip(&previously) {
                    route.prepare(f, previously).await;
                    route.copy(f, &stop).await;
                }
                files
            }
        };

        // The commit point's first half: record the final paths in the claim (compare-and-swap),
        // so a retry after a crash during the commits can find what was already committed.
        let fenced = !self.lease.allows(epoch);
        let mut still_ours = false;
        if files.iter().any(|f| f.copied.is_some()) && !fenced {
            let claim = BatchClaim::Claimed {
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
        let why_not = if fenced {
            inflight::FENCED
        } else {
            "not committed: another transfer instance took the batch over"
        };
        let files: Vec<InFlight> = match way {
            Way::Local => {
                let (lease, ledger, node) = (self.lease.clone(), self.ledger.clone(), self.node.clone());
                let late_commits = self.metrics.late_commits.clone();
                tokio::task::spawn_blocking(move || {
                    let point = CommitPoint {
                        lease: &lease,
                        epoch,
                        ledger: ledger.as_ref(),
                        node: &node,
                        late_commits: &late_commits,
                        allowed: still_ours,
                        why_not,
                    };
                    local_route::commit(&mut files, &point);
                    files
                })
                .await?
            }
            Way::Hosts(route) => {
                let point = CommitPoint {
                    lease: &self.lease,
                    epoch,
                    ledger: self.ledger.as_ref(),
                    node: &self.node,
                    late_commits: &self.metrics.late_commits,
                    allowed: still_ours,
                    why_not,
                };
                route.commit(&mut files, &point).await;
                files
            }
        };

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
        Ok(files)
    }

    /// How the files of a batch travel: resolved from the stored configuration by the host names
    /// the batch carries. `Err(why)`: the batch cannot be moved (its files fail with why).
    fn way(&self, config: &ferry_config::Config, item: &FileItem) -> Result<Way, String> {
        let Some(source) = config.hosts.get(&item.source.host) else {
            return Err(format!("source host {:?} is not configured", item.source.host));
        };
        let dests: Vec<Option<&ferry_config::Host>> = item
            .destinations
            .iter()
            .map(|d| config.hosts.get(&d.host))
            .collect();
        if source.is_local() && dests.iter().all(|d| d.is_some_and(|h| h.is_local())) {
            return Ok(Way::Local);
        }
        let source_host = match self.hosts.get(source) {
            Ok(h) => h,
            Err(e) => return Err(e.to_string()),
        };
        let mut remote: Vec<&ferry_config::Host> = vec![source];
        remote.extend(dests.iter().flatten().copied());
        remote.retain(|h| !h.is_local());
        let options = remote.iter().map(|h| &h.options);
        let (retries, retry_wait) = ferry_config::retry_policy(config.tasks.get(&item.task), options);
        let deadline = hosts_route::Deadline::of(&remote);
        Ok(Way::Hosts(Box::new(hosts_route::Route {
            source: source_host,
            dests: item
                .destinations
                .iter()
                .zip(&dests)
                .map(|(d, h)| match h {
                    Some(h) => self.hosts.get(h).map_err(|e| e.to_string()),
                    None => Err(format!("destination host {:?} is not configured", d.host)),
                })
                .collect(),
            buffer: self.buffer_bytes,
            retries,
            retry_wait,
            deadline,
            retried: self.metrics.retries.clone(),
            resumed_bytes: self.metrics.resumed_bytes.clone(),
            refused: Default::default(),
            ready: Default::default(),
        })))
    }

    /// `ferry host test`: connect, look at a folder, say what the server offers. Failures are in
    /// the report (with the host's own words), not errors of the call.
    async fn host_test(
        &self,
        req: ferry_wire::HostTestRequest,
    ) -> anyhow::Result<ferry_wire::HostTestReport> {
        let config = self.config().await?;
        let host = config
            .hosts
            .get(&req.host)
            .with_context(|| format!("host {:?} is not configured", req.host))?;
        let folder = req.folder.clone().unwrap_or_else(|| {
            config
                .tasks
                .values()
                .flat_map(|t| {
                    let sources = t
                        .sources
                        .iter()
                        .filter(|s| s.host == req.host)
                        .map(|s| s.folder.clone());
                    let dests = t
                        .destinations
                        .iter()
                        .filter(|d| d.host == req.host && !d.folder.as_str().contains('['))
                        .map(|d| d.folder.as_str().to_string());
                    sources.chain(dests).collect::<Vec<_>>()
                })
                .next()
                .unwrap_or_default()
        });
        let mut report = ferry_wire::HostTestReport {
            host: req.host.clone(),
            kind: host.kind().to_string(),
            folder: folder.clone(),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let tested = async {
            let h = self.hosts.get(host)?;
            let probe = h.probe(&folder).await?;
            let files = h.list(&folder, false).await?.len();
            Ok::<_, ferry_hosts::HostError>((probe, files))
        }
        .await;
        report.latency_ms = started.elapsed().as_millis() as u64;
        match tested {
            Ok((probe, files)) => {
                report.files = Some(files);
                report.server = probe.server;
                report.host_key_sha256 = probe.host_key_sha256;
                report.tls_subject = probe.tls_subject;
                report.tls_not_after = probe.tls_not_after;
                report.notes = probe.notes;
                let c = probe.capabilities;
                report.capabilities = [
                    (c.atomic_rename, "atomic_rename"),
                    (c.rename_noreplace, "rename_noreplace"),
                    (c.server_sha256, "server_sha256"),
                    (c.resume, "resume"),
                    (c.durable, "durable"),
                ]
                .into_iter()
                .filter(|(on, _)| *on)
                .map(|(_, name)| name.to_string())
                .collect();
            }
            Err(e) => report.error = Some(e.to_string()),
        }
        Ok(report)
    }

    /// The stored configuration, decoded once per revision.
    async fn config(&self) -> anyhow::Result<Arc<ferry_config::Config>> {
        let entry = self
            .config_kv
            .entry(topology::CONFIG_KEY)
            .await
            .context("read configuration")?
            .filter(|e| e.operation == kv::Operation::Put)
            .context("no configuration has been applied")?;
        let mut cached = self.config_cache.lock().await;
        if let Some((revision, config)) = cached.as_ref()
            && *revision == entry.revision
        {
            return Ok(config.clone());
        }
        let doc: ferry_wire::ConfigDocument =
            ferry_wire::decode(&entry.value).context("decode configuration")?;
        let config = Arc::new(doc.config);
        *cached = Some((entry.revision, config.clone()));
        Ok(config)
    }

    async fn audit(&self, batch: &WorkBatch, results: &[FileResult]) -> anyhow::Result<()> {
        let mut acks = Vec::new();
        for (item, result) in batch.items.iter().zip(results) {
            // One record per destination; a file that reached none (refused, or no plan) still
            // gets one, without a destination path.
            let record = |(i, dest): (usize, Option<&DestOutcome>)| AuditRecord {
                task: item.task.clone(),
                run_id: item.run_id,
                node: self.node.clone(),
                epoch: item.epoch,
                action: "transfer".into(),
                source_host: item.source.host.clone(),
                source_path: result.source_path.clone(),
                // A file with process steps has an outcome per output and destination, output
                // by output.
                dest_host: dest
                    .and(item.destinations.get(i % item.destinations.len().max(1)))
                    .map(|d| d.host.clone()),
                dest_path: dest.map(|d| d.path.clone()),
                size: result.size,
                sha256: dest.and(result.sha256.clone()),
                started_at: result.started_at,
                finished_at: result.finished_at,
                outcome: dest.map_or(result.outcome, |d| d.outcome),
                error: dest.map_or_else(|| result.error.clone(), |d| d.error.clone()),
                steps: result.steps.clone(),
            };
            let mut records: Vec<AuditRecord> = result
                .destinations
                .iter()
                .enumerate()
                .map(|(i, d)| record((i, Some(d))))
                .collect();
            if records.is_empty() {
                records.push(record((0, None)));
            }
            if item.source.delete_after && result.outcome == Outcome::Delivered {
                records.push(AuditRecord {
                    action: "delete_source".into(),
                    dest_host: None,
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

/// How a batch's files travel.
enum Way {
    /// Every host is the node's own file system.
    Local,
    Hosts(Box<hosts_route::Route>),
}

/// What became of a work batch.
enum Processed {
    /// A result is stored: acknowledge the item.
    Reported,
    /// Another live instance holds the claim: let JetStream redeliver later.
    ClaimedElsewhere,
}

/// Whether every item of the batch [`conforms`], and a run without source files (see
/// [`FileItem::sourceless`]) is its batch's only item.
fn batch_conforms(config: &ferry_config::Config, batch: &WorkBatch) -> Result<(), String> {
    if batch.items.len() > 1 && batch.items.iter().any(FileItem::is_sourceless) {
        return Err("a work batch of a run without source files has more than one item".into());
    }
    for item in &batch.items {
        conforms(config, item, batch.first())?;
    }
    Ok(())
}

/// Whether a work item is what the stored configuration says its task moves: the task exists,
/// the item's source is that task's source (host, folder, move flag) and its destinations are
/// the task's, and it belongs to the same task and source as the batch's first item. A work
/// batch that passes can only make transfer read and write where an operator configured it to.
fn conforms(config: &ferry_config::Config, item: &FileItem, first: &FileItem) -> Result<(), String> {
    let task = config.tasks.get(&item.task).ok_or_else(|| {
        format!(
            "work for task {}, which is not configured",
            ferry_hosts::path::shown(&item.task)
        )
    })?;
    if item.is_sourceless() || first.is_sourceless() {
        // Only a task configured without sources has one, alone in its batch, naming nothing.
        let expected = FileItem::sourceless(
            item.run_id,
            &task.name,
            item.epoch,
            item.destinations.clone(),
            item.run_started_at,
        );
        if !task.sources.is_empty() || !ferry_config::steps::may_have_no_source(&task.steps) {
            return Err(format!(
                "a run without source files for task {}, which has sources or no step that makes files",
                task.name
            ));
        }
        if *item != expected {
            return Err(format!(
                "a work item without source for task {} is not the one such a run has",
                task.name
            ));
        }
        return same_destinations(task, item);
    }
    let source = task.sources.get(item.source.source_index).ok_or_else(|| {
        format!(
            "work for source {} of task {}, which has {}",
            item.source.source_index,
            task.name,
            task.sources.len()
        )
    })?;
    if item.source.host != source.host
        || item.source.folder != source.folder
        || item.source.delete_after != source.delete_after
    {
        return Err(format!(
            "a work item's source is not task {}'s source {} as stored (host, folder or delete_after differ)",
            task.name, item.source.source_index
        ));
    }
    let state_key = source.new_files_only.then(|| {
        let source_key = ferry_wire::plan::state_source_key(&task.name, &source.host, &source.folder);
        ferry_wire::plan::state_key(&source_key, &item.source.rel_path)
    });
    if item.source.state_key != state_key {
        return Err(format!(
            "a work item's new-files-only key is not the one task {}'s source {} and the file's path give",
            task.name, item.source.source_index
        ));
    }
    same_destinations(task, item)?;
    // A run with PER-TASK steps is one batch whatever its sources (the process route reads each
    // file from its own source).
    let whole_run = task
        .steps
        .iter()
        .any(|s| s.scope == ferry_config::StepScope::PerTask);
    if item.task != first.task || (item.source.source_index != first.source.source_index && !whole_run) {
        return Err("a work batch mixes tasks or sources".into());
    }
    Ok(())
}

/// Whether a work item's destinations are its task's as stored.
fn same_destinations(task: &ferry_config::Task, item: &FileItem) -> Result<(), String> {
    // The collector puts the run's parameters into the templates (`[Parm:Name]`); anything else
    // must be as stored.
    let as_stored = item.destinations.len() == task.destinations.len()
        && item
            .destinations
            .iter()
            .zip(&task.destinations)
            .all(|(got, stored)| {
                let mut same = got.clone();
                same.folder = stored.folder.clone();
                same.file_name = stored.file_name.clone();
                same == *stored
                    && stored.folder.admits(&got.folder)
                    && stored.file_name.admits(&got.file_name)
            });
    if !as_stored {
        return Err(format!(
            "a work item's destinations are not task {}'s as stored",
            task.name
        ));
    }
    Ok(())
}
