//! File-collector metrics (`ferry_file_collector_*`), and the two samplers that keep the
//! cluster-wide ones current: the queues' backlog and each task's run of failures.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use ferry_wire::{RunFinished, RunStatus, subjects, topology};

/// How often the queues' backlog is read from JetStream.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

pub struct Metrics {
    pub registry: Registry,
    pub runs: IntCounterVec,
    pub files_listed: IntCounterVec,
    pub running: IntGauge,
    queue_messages: IntGaugeVec,
    consecutive_failures: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let runs = IntCounterVec::new(
            Opts::new(
                "ferry_file_collector_runs_total",
                "Finished runs, by task and status",
            ),
            &["task", "status"],
        )?;
        let files_listed = IntCounterVec::new(
            Opts::new(
                "ferry_file_collector_files_listed_total",
                "Files handed to transfer, by task",
            ),
            &["task"],
        )?;
        let running = IntGauge::new(
            "ferry_file_collector_running_runs",
            "Runs in progress on this instance",
        )?;
        let queue_messages = IntGaugeVec::new(
            Opts::new(
                "ferry_file_collector_queue_messages",
                "Messages in a work queue of the cluster (queue: run = run requests, work = work batches), by state (pending: not yet delivered to a worker; unacknowledged: delivered, not yet done), read from JetStream every 5 s; every collector reports the same queues",
            ),
            &["queue", "state"],
        )?;
        let consecutive_failures = IntGaugeVec::new(
            Opts::new(
                "ferry_file_collector_consecutive_failed_runs",
                "Runs of a task that failed in a row, as of its last finished run (0 after a success; skipped runs change nothing), counted from the runs finished on any node since this collector started",
            ),
            &["task"],
        )?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(files_listed.clone()))?;
        registry.register(Box::new(running.clone()))?;
        registry.register(Box::new(queue_messages.clone()))?;
        registry.register(Box::new(consecutive_failures.clone()))?;
        Ok(Self {
            registry,
            runs,
            files_listed,
            running,
            queue_messages,
            consecutive_failures,
        })
    }

    /// Read the run queue's and the file queue's backlog from their consumers every
    /// [`BACKLOG_EVERY`] until `shutdown`. A queue whose consumer does not exist yet (its
    /// service never started) has no series.
    pub async fn sample_backlog(&self, js: jetstream::Context, shutdown: CancellationToken) {
        let queues = [
            ("run", topology::STREAM_RUNQ, topology::CONSUMER_COLLECTOR),
            ("work", topology::STREAM_FILEQ, topology::CONSUMER_TRANSFER),
        ];
        loop {
            for (queue, stream, consumer) in queues {
                let info = async {
                    let stream = js.get_stream(stream).await?;
                    Ok::<_, async_nats::Error>(stream.consumer_info(consumer).await?.clone())
                };
                match tokio::time::timeout(BACKLOG_EVERY, info).await {
                    Ok(Ok(info)) => {
                        self.queue_messages
                            .with_label_values(&[queue, "pending"])
                            .set(info.num_pending as i64);
                        self.queue_messages
                            .with_label_values(&[queue, "unacknowledged"])
                            .set(info.num_ack_pending as i64);
                    }
                    Ok(Err(e)) => tracing::debug!(queue, error = %e, "read queue backlog"),
                    Err(_) => tracing::debug!(queue, "read queue backlog: timed out"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(BACKLOG_EVERY) => {}
            }
        }
    }

    /// Follow every run that finishes from now on, on any node, and keep each task's count of
    /// failed runs in a row — so the collectors of both nodes agree and a failover neither
    /// resets the count nor leaves a stale one on the node that stepped down.
    pub async fn follow_run_outcomes(&self, js: jetstream::Context, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.follow_once(&js, &shutdown).await {
                tracing::debug!(error = format!("{e:#}"), "follow run outcomes");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }

    async fn follow_once(&self, js: &jetstream::Context, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let consumer = js
            .get_stream(topology::STREAM_EVENTS)
            .await?
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects::run_finished_filter(None),
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = messages.next() => m,
            };
            // The ordered consumer ended (NATS closed): start again after a pause.
            let Some(message) = message else {
                anyhow::bail!("the run events ended")
            };
            let Ok(finished) = ferry_wire::decode::<RunFinished>(&message?.payload) else {
                continue;
            };
            let gauge = self.consecutive_failures.with_label_values(&[&finished.task]);
            match finished.status {
                RunStatus::Failed => gauge.inc(),
                RunStatus::Succeeded => gauge.set(0),
                RunStatus::Skipped => {}
            }
        }
    }
}
