//! Reading runs and audit records straight from their streams (the CLI and tests use these), and
//! storing a message exactly once (the services use that).

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use ferry_wire::{RunFinished, subjects, topology};

/// The durable pull consumer `config` names on `stream`, made if missing; one made by an older
/// Ferry without the delivery limit `config` sets (`max_deliver`) is given it.
pub async fn durable_consumer(
    stream: &jetstream::stream::Stream,
    config: pull::Config,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let name = config
        .durable_name
        .clone()
        .context("a durable consumer has a name")?;
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(&name, config.clone())
        .await
        .with_context(|| format!("create consumer {name}"))?;
    let existing = consumer
        .info()
        .await
        .with_context(|| format!("read consumer {name}"))?
        .config
        .clone();
    if existing.filter_subject == config.filter_subject && existing.max_deliver != config.max_deliver {
        tracing::info!(consumer = %name, max_deliver = config.max_deliver, "giving a consumer of an older version its delivery limit");
        consumer = stream
            .update_consumer(config)
            .await
            .with_context(|| format!("update consumer {name}"))?;
    }
    Ok(consumer)
}

/// Publish `message` on `subject` with `message_id` (JetStream drops a repeat of that id within
/// the dedupe window) and wait until it is stored. `what` names the message in errors. The
/// message carries the current span's trace context when traces are on.
pub async fn store<T: Serialize>(
    js: &jetstream::Context,
    subject: String,
    message_id: String,
    message: &T,
    what: &str,
) -> anyhow::Result<()> {
    js.send_publish(
        subject,
        crate::trace::inject(
            jetstream::message::PublishMessage::build()
                .payload(ferry_wire::encode(message))
                .message_id(message_id),
        ),
    )
    .await
    .with_context(|| format!("publish {what}"))?
    .await
    .with_context(|| format!("{what} not stored"))?;
    Ok(())
}

/// Every message on `filter` (optionally only the last `since`), oldest first.
pub async fn read<T: DeserializeOwned>(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    since: Option<Duration>,
) -> anyhow::Result<Vec<T>> {
    let deliver_policy = match since {
        Some(since) => DeliverPolicy::ByStartTime {
            start_time: chrono::Utc::now()
                - chrono::Duration::from_std(since).context("--since is too large")?,
        },
        None => DeliverPolicy::All,
    };
    let stream = js
        .get_stream(stream)
        .await
        .with_context(|| format!("open stream {stream}"))?;
    read_raw(&stream, filter, deliver_policy, None)
        .await?
        .into_iter()
        .map(|m| Ok(ferry_wire::decode(&m.message.payload)?))
        .collect()
}

/// A stored message with its stream sequence.
pub struct Stored {
    pub seq: u64,
    pub message: async_nats::Message,
}

/// The messages on `filter` from `deliver_policy` on, oldest first, at most `limit`, as stored.
pub async fn read_raw(
    stream: &jetstream::stream::Stream,
    filter: &str,
    deliver_policy: DeliverPolicy,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Stored>> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("create reader")?;
    let pending = consumer.cached_info().num_pending;
    let mut out = Vec::with_capacity(limit.map_or(pending as usize, |l| l.min(pending as usize)));
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.context("read stream")?;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .context("stream read timed out")?
    {
        let message = message.context("read message")?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("a message without metadata: {e}"))?;
        let (seq, left) = (info.stream_sequence, info.pending);
        out.push(Stored {
            seq,
            message: message.message,
        });
        if left == 0 || limit.is_some_and(|l| out.len() >= l) {
            break;
        }
    }
    Ok(out)
}

/// Wait for the `RunFinished` of one run.
pub async fn wait_for_run(
    js: &jetstream::Context,
    task: &str,
    run_id: Uuid,
    timeout: Duration,
) -> anyhow::Result<RunFinished> {
    let stream = js
        .get_stream(topology::STREAM_EVENTS)
        .await
        .context("open events stream")?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::run_finished(task, run_id),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("create reader")?;
    let mut messages = consumer.messages().await.context("read events")?;
    let message = tokio::time::timeout(timeout, messages.next())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "run {run_id} did not finish within {}",
                humantime::format_duration(timeout)
            )
        })?
        .context("events stream ended")?
        .context("read event")?;
    Ok(ferry_wire::decode(&message.payload)?)
}

/// Every file's outcome of a run whose `RunFinished` is a summary (`files_in_results`): its
/// batch results (kept 7 days), the first for each batch, as the file-collector counted them —
/// anything unreadable, or whose items do not hash to its batch id, is not a result of the run.
pub async fn run_files(js: &jetstream::Context, run_id: Uuid) -> anyhow::Result<Vec<ferry_wire::FileResult>> {
    let stream = js
        .get_stream(topology::STREAM_RESULTS)
        .await
        .context("open the batch results")?;
    let stored = read_raw(&stream, &subjects::run_results(run_id), DeliverPolicy::All, None).await?;
    let mut seen = std::collections::HashSet::new();
    Ok(stored
        .iter()
        .filter_map(|m| ferry_wire::decode::<ferry_wire::BatchResult>(&m.message.payload).ok())
        .filter(|b| ferry_wire::plan::batch_id(b.results.iter().map(|r| r.item_id.as_str())) == b.batch_id)
        .filter(|b| seen.insert(b.batch_id.clone()))
        .flat_map(|b| b.results)
        .collect())
}
