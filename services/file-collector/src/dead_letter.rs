//! Messages their consumer gave up on. Both queues' consumers deliver a message at most
//! [`topology::MAX_DELIVER`] times; past that JetStream stops and says so in an advisory, which
//! the dead-letter stream keeps until a collector has answered it:
//!
//! - A **work batch** transfer never finished: a run would wait for its result for good, holding
//!   a running-task slot. The collector answers the batch in transfer's place — each file failed,
//!   "dead-lettered", with the number of deliveries — under the result's own message id (if a
//!   transfer did finish meanwhile, only the first answer counts), and removes the batch from the
//!   queue. The run finishes, its sources stay (a later run sends them again).
//! - A **run request** no collector finished (one crashed or stalled on it every time, or could
//!   not reach NATS for minutes): without a limit it would come back for good, holding a running
//!   slot — and, if it crashes the collector, stopping every other run of the node. The collector
//!   ends the run as failed with why, frees its task lock, and removes the request from the queue.
//!
//! Either way `ferry runs show` says why.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use ferry_wire::{
    BatchResult, FileResult, Outcome, RunRequested, RunStatus, WorkBatch, plan, subjects, topology,
};

/// Answer the max-deliveries advisories of the file queue and the run queue until shut down.
/// JetStream keeps them in [`topology::STREAM_DEADLETTER`] (a plain NATS message would be lost
/// while no collector listens, and its run would wait for the file queue's 7-day expiry); one
/// collector of the cluster takes each, through the durable consumer this makes.
pub async fn follow(js: jetstream::Context, node: String, shutdown: CancellationToken) {
    let Ok(consumer) = ferry_service::nats::retry("create the dead-letter consumer", &shutdown, || {
        dead_letter_consumer(&js)
    })
    .await
    else {
        return;
    };
    let requests = subjects::max_deliveries_advisory(topology::STREAM_RUNQ, topology::CONSUMER_COLLECTOR);
    let batches = subjects::max_deliveries_advisory(topology::STREAM_FILEQ, topology::CONSUMER_TRANSFER);
    while !shutdown.is_cancelled() {
        let pulled = consumer
            .batch()
            .max_messages(16)
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let mut pulled = match pulled {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "pull dead-lettered messages");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let advisory = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = pulled.next() => match a {
                    Some(Ok(a)) => a,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "pull dead-lettered messages");
                        break;
                    }
                    None => break,
                },
            };
            #[derive(serde::Deserialize)]
            struct MaxDeliveries {
                stream_seq: u64,
                deliveries: u64,
            }
            let subject = advisory.subject.as_str();
            let answered = match serde_json::from_slice::<MaxDeliveries>(&advisory.payload) {
                Ok(max) if subject == requests => end_run(&js, &node, max.stream_seq, max.deliveries).await,
                Ok(max) if subject == batches => answer(&js, &node, max.stream_seq, max.deliveries).await,
                _ => {
                    tracing::warn!(subject = %ferry_hosts::path::shown(subject), "skipping an unreadable max-deliveries advisory");
                    Ok(())
                }
            };
            match answered {
                Ok(()) => {
                    if let Err(e) = advisory.double_ack().await {
                        tracing::warn!(error = %e, "ack a max-deliveries advisory");
                    }
                }
                Err(e) => {
                    let wait = crate::redelivery_wait(&advisory);
                    tracing::error!(subject = %advisory.subject, error = %format!("{e:#}"), retry_in = ?wait, "answering a dead-lettered message failed; will retry");
                    let _ = advisory.ack_with(AckKind::Nak(Some(wait))).await;
                }
            }
        }
    }
}

/// The collectors' durable consumer of the dead-letter stream: each advisory goes to one of
/// them, is handed back after trouble (see [`crate::redelivery_wait`]) and, like every
/// consumer's message, is given up after [`topology::MAX_DELIVER`] deliveries.
async fn dead_letter_consumer(js: &jetstream::Context) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = js
        .get_stream(topology::STREAM_DEADLETTER)
        .await
        .context("open the dead-letter stream")?;
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(topology::CONSUMER_COLLECTOR.to_string()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(60),
        max_deliver: topology::MAX_DELIVER,
        ..Default::default()
    };
    ferry_service::streams::durable_consumer(&stream, config).await
}

/// The message at `seq` of `stream` that its consumer gave up on, with the stream to delete it
/// from. `None` when it is gone (another collector answered it, or its consumer finished it
/// after all) or unreadable (`valid` refuses it, or it does not decode: then it is removed).
async fn dead_letter<T: serde::de::DeserializeOwned>(
    js: &jetstream::Context,
    stream: &str,
    seq: u64,
    valid: impl Fn(&T) -> bool,
) -> anyhow::Result<Option<(jetstream::stream::Stream, T)>> {
    let queue = js
        .get_stream(stream)
        .await
        .with_context(|| format!("open {stream}"))?;
    let Ok(message) = queue.get_raw_message(seq).await else {
        return Ok(None);
    };
    match ferry_wire::decode::<T>(&message.payload) {
        Ok(value) if valid(&value) => Ok(Some((queue, value))),
        _ => {
            tracing::error!(%stream, seq, "removing an unreadable dead-lettered message");
            let _ = queue.delete_message(seq).await;
            Ok(None)
        }
    }
}

/// End the run whose request is at `seq` of the run queue as failed, free its task, and remove
/// the request from the queue.
async fn end_run(js: &jetstream::Context, node: &str, seq: u64, deliveries: u64) -> anyhow::Result<()> {
    let Some((queue, request)) = dead_letter::<RunRequested>(js, topology::STREAM_RUNQ, seq, |r| {
        ferry_config::is_valid_name(&r.task)
    })
    .await?
    else {
        return Ok(());
    };
    let why = format!(
        "dead-lettered: the file-collector took this run request {deliveries} times and never \
         finished it (it crashed or stalled on it each time, or could not reach NATS: see the \
         file-collector logs); files its batches had delivered stay delivered, the others stay \
         in their source folders and a later run takes them"
    );
    let runs = js
        .get_key_value(topology::KV_RUNS)
        .await
        .context("open the runs bucket")?;
    crate::release_lock(
        &runs,
        &format!("lock.{}", request.task),
        &request.run_id.to_string(),
    )
    .await;
    crate::store_finished(
        js,
        node,
        &request,
        Utc::now(),
        RunStatus::Failed,
        Some(why),
        &crate::Tally::default(),
        crate::actions::Report::default(),
    )
    .await?;
    let _ = queue.delete_message(seq).await;
    tracing::error!(task = %request.task, run_id = %request.run_id, deliveries, "run request dead-lettered: the run failed");
    Ok(())
}

/// Fail every file of the batch at `seq` of the file queue, then remove it from the queue.
async fn answer(js: &jetstream::Context, node: &str, seq: u64, deliveries: u64) -> anyhow::Result<()> {
    let Some((queue, batch)) =
        dead_letter::<WorkBatch>(js, topology::STREAM_FILEQ, seq, |b| !b.items.is_empty()).await?
    else {
        return Ok(());
    };
    let why = format!(
        "dead-lettered: transfer took this file's work batch {deliveries} times and never finished it \
         (a worker crashed or stalled each time: see the transfer logs); the source stays and a later \
         run sends it again"
    );
    let results = failed_results(&batch, node, &why);
    store_result(js, &batch, results, "dead-lettered batch result").await?;
    let _ = queue.delete_message(seq).await;
    let run_id = batch.items[0].run_id;
    tracing::error!(%run_id, batch = %ferry_hosts::path::shown(&batch.batch_id), files = batch.items.len(), deliveries, "work batch dead-lettered: its files failed");
    Ok(())
}

/// Store `results` as the result of `batch` in transfer's place, under the result's own message
/// id (if a transfer did finish the batch meanwhile, only the first answer counts). `what` names
/// the result in errors.
pub(crate) async fn store_result(
    js: &jetstream::Context,
    batch: &WorkBatch,
    results: Vec<FileResult>,
    what: &str,
) -> anyhow::Result<()> {
    ferry_service::streams::store(
        js,
        subjects::batch_result(batch.first().run_id, &batch.batch_id),
        format!("result:{}", batch.batch_id),
        &BatchResult {
            batch_id: batch.batch_id.clone(),
            results,
        },
        what,
    )
    .await
}

/// Every file of `batch` failed with `why`, as transfer would report it.
pub(crate) fn failed_results(batch: &WorkBatch, node: &str, why: &str) -> Vec<FileResult> {
    let now = Utc::now();
    batch
        .items
        .iter()
        .map(|item| FileResult {
            item_id: item.item_id.clone(),
            source_path: plan::source_path(item).unwrap_or_default(),
            size: item.source.size,
            sha256: None,
            outcome: Outcome::Failed,
            destinations: Vec::new(),
            error: Some(why.to_string()),
            node: node.to_string(),
            epoch: item.epoch,
            started_at: item.run_started_at,
            finished_at: now,
            steps: Vec::new(),
        })
        .collect()
}
