//! Messages their consumer gave up on. Both queues' consumers deliver a message at most
//! [`topology::MAX_DELIVER`] times; past that JetStream stops and says so in an advisory, and
//! every collector listens:
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

use anyhow::Context;
use async_nats::jetstream;
use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use ferry_wire::{
    BatchResult, FileResult, Outcome, RunRequested, RunStatus, WorkBatch, plan, subjects, topology,
};

/// Follow the max-deliveries advisories of the file queue and the run queue until shut down.
pub async fn follow(
    client: async_nats::Client,
    js: jetstream::Context,
    node: String,
    shutdown: CancellationToken,
) {
    let batches = subjects::max_deliveries_advisory(topology::STREAM_FILEQ, topology::CONSUMER_TRANSFER);
    let requests = subjects::max_deliveries_advisory(topology::STREAM_RUNQ, topology::CONSUMER_COLLECTOR);
    let mut advisories = match subscribe_all(&client, [&batches, &requests]).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow dead-lettered messages");
            return;
        }
    };
    loop {
        let advisory = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = advisories.next() => match a {
                Some(a) => a,
                None => return,
            },
        };
        #[derive(serde::Deserialize)]
        struct MaxDeliveries {
            stream_seq: u64,
            deliveries: u64,
        }
        let Ok(max) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else {
            tracing::warn!("skipping an unreadable max-deliveries advisory");
            continue;
        };
        let answered = if advisory.subject.as_str() == requests {
            end_run(&js, &node, max.stream_seq, max.deliveries).await
        } else {
            answer(&js, &node, max.stream_seq, max.deliveries).await
        };
        if let Err(e) = answered {
            tracing::error!(subject = %advisory.subject, seq = max.stream_seq, error = %format!("{e:#}"), "answering a dead-lettered message failed");
        }
    }
}

/// One stream of the messages on every subject of `subjects`.
async fn subscribe_all<const N: usize>(
    client: &async_nats::Client,
    subjects: [&String; N],
) -> anyhow::Result<futures::stream::SelectAll<async_nats::Subscriber>> {
    let mut all = futures::stream::SelectAll::new();
    for subject in subjects {
        all.push(
            client
                .subscribe(subject.clone())
                .await
                .with_context(|| format!("subscribe to {subject}"))?,
        );
    }
    Ok(all)
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
    let now = Utc::now();
    let results: Vec<FileResult> = batch
        .items
        .iter()
        .map(|item| FileResult {
            item_id: item.item_id.clone(),
            source_path: plan::source_path(item).unwrap_or_default(),
            size: item.source.size,
            sha256: None,
            outcome: Outcome::Failed,
            destinations: Vec::new(),
            error: Some(why.clone()),
            node: node.to_string(),
            epoch: item.epoch,
            started_at: item.run_started_at,
            finished_at: now,
        })
        .collect();
    let run_id = batch.items[0].run_id;
    ferry_service::streams::store(
        js,
        subjects::batch_result(run_id, &batch.batch_id),
        format!("result:{}", batch.batch_id),
        &BatchResult {
            batch_id: batch.batch_id.clone(),
            results,
        },
        "dead-lettered batch result",
    )
    .await?;
    let _ = queue.delete_message(seq).await;
    tracing::error!(%run_id, batch = %ferry_hosts::path::shown(&batch.batch_id), files = batch.items.len(), deliveries, "work batch dead-lettered: its files failed");
    Ok(())
}
