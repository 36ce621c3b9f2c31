//! Work batches transfer gave up on. The file queue's consumer delivers a batch at most
//! [`topology::MAX_DELIVER`] times; past that JetStream stops and says so in an advisory. A run
//! would then wait for that batch's result for good, holding a running-task slot. Every collector
//! listens: it answers the batch in transfer's place — each file failed, "dead-lettered", with the
//! number of deliveries — under the result's own message id (if a transfer did finish meanwhile,
//! only the first answer counts), and removes the batch from the queue. The run finishes, its
//! sources stay (a later run sends them again), and `ferry runs show` says why.

use anyhow::Context;
use async_nats::jetstream;
use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use ferry_wire::{BatchResult, FileResult, Outcome, WorkBatch, plan, subjects, topology};

/// Follow the max-deliveries advisories of the file queue until shut down.
pub async fn follow(
    client: async_nats::Client,
    js: jetstream::Context,
    node: String,
    shutdown: CancellationToken,
) {
    let subject = subjects::max_deliveries_advisory(topology::STREAM_FILEQ, topology::CONSUMER_TRANSFER);
    let mut advisories = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%subject, error = %e, "cannot follow dead-lettered work batches");
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
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else {
            tracing::warn!("skipping an unreadable max-deliveries advisory");
            continue;
        };
        if let Err(e) = answer(&js, &node, advisory.stream_seq, advisory.deliveries).await {
            tracing::error!(seq = advisory.stream_seq, error = %format!("{e:#}"), "answering a dead-lettered work batch failed");
        }
    }
}

/// Fail every file of the batch at `seq` of the file queue, then remove it from the queue.
async fn answer(js: &jetstream::Context, node: &str, seq: u64, deliveries: u64) -> anyhow::Result<()> {
    let queue = js
        .get_stream(topology::STREAM_FILEQ)
        .await
        .context("open file queue")?;
    // Gone: another collector answered it, or a transfer finished it after all.
    let Ok(message) = queue.get_raw_message(seq).await else {
        return Ok(());
    };
    let batch = match ferry_wire::decode::<WorkBatch>(&message.payload) {
        Ok(batch) if !batch.items.is_empty() => batch,
        _ => {
            tracing::error!(seq, "removing an unreadable dead-lettered work batch");
            let _ = queue.delete_message(seq).await;
            return Ok(());
        }
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
