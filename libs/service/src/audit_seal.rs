//! Sealing the audit trail ([`ferry_wire::seal`]): the failover coordinator appends seals as
//! records arrive; `ferry audit verify` reads both streams back and checks the chain.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
    context::PublishErrorKind,
    message::PublishMessage,
    stream::LastRawMessageErrorKind,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use ferry_wire::seal::{self, Seal, Stored};
use ferry_wire::{subjects, topology};

/// How often the sealer looks for new records.
pub const EVERY: Duration = Duration::from_secs(1);

/// Seal what is new, until shut down. Several sealers are safe: a seal is stored only if the
/// seal it follows is still the last one, so a sealer that lost the race reads again.
pub async fn run_sealer(js: jetstream::Context, by: String, shutdown: CancellationToken) {
    loop {
        let sealed = match seal_once(&js, &by).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "sealing the audit trail failed; retrying");
                0
            }
        };
        if sealed == seal::MAX_RECORDS {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// One round: seal up to [`seal::MAX_RECORDS`] records after the last seal. Returns how many.
pub async fn seal_once(js: &jetstream::Context, by: &str) -> anyhow::Result<usize> {
    let seals = js
        .get_stream(topology::STREAM_AUDIT_SEALS)
        .await
        .context("open the audit seal stream")?;
    let (last_seal, prev, next) = match seals.get_last_raw_message_by_subject(subjects::AUDIT_SEAL).await {
        Ok(message) => {
            let last: Seal = ferry_wire::decode(&message.payload).context("read the last audit seal")?;
            (message.sequence, last.hash.clone(), last.last_seq() + 1)
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => (0, seal::GENESIS.to_string(), 1),
        Err(e) => return Err(anyhow::Error::new(e).context("read the last audit seal")),
    };
    let mut audit = js
        .get_stream(topology::STREAM_AUDIT)
        .await
        .context("open the audit stream")?;
    let state = audit.info().await.context("audit stream info")?.state.clone();
    if state.messages == 0 || state.last_sequence < next {
        return Ok(0);
    }
    let start = next.max(state.first_sequence);
    let records: Vec<(u64, String)> = read_records(&audit, start, Some(seal::MAX_RECORDS))
        .await?
        .into_iter()
        .map(|r| (r.seq, r.digest))
        .collect();
    if records.is_empty() {
        return Ok(0);
    }
    let n = records.len();
    let seal = Seal::new(&prev, records, by);
    let stored = js
        .send_publish(
            subjects::AUDIT_SEAL,
            PublishMessage::build()
                .payload(ferry_wire::encode(&seal))
                .expected_last_subject_sequence(last_seal),
        )
        .await;
    let stored = match stored {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    };
    match stored {
        Ok(_) => Ok(n),
        // Another sealer stored the next seal first.
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(0),
        Err(e) => Err(anyhow::Error::new(e).context("store an audit seal")),
    }
}

/// Audit records from `start` on, at most `limit`, with their digests.
async fn read_records(
    audit: &jetstream::stream::Stream,
    start: u64,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Stored>> {
    let consumer = audit
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::AUDIT.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .context("read the audit stream")?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.context("read the audit stream")?;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .context("audit stream read timed out")?
    {
        let message = message.context("read an audit record")?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("audit record without metadata: {e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        out.push(Stored {
            seq,
            digest: seal::record_digest(seq, message.subject.as_str(), &message.payload),
            subject: message.subject.to_string(),
        });
        if pending == 0 || limit.is_some_and(|l| out.len() >= l) {
            break;
        }
    }
    Ok(out)
}

/// Read every seal and every kept record back and check the chain.
pub async fn verify(js: &jetstream::Context) -> anyhow::Result<seal::Verdict> {
    let mut seals_stream = js
        .get_stream(topology::STREAM_AUDIT_SEALS)
        .await
        .context("open the audit seal stream")?;
    let seal_state = seals_stream
        .info()
        .await
        .context("audit seal stream info")?
        .state
        .clone();
    let mut seals = Vec::new();
    if seal_state.messages > 0 {
        let consumer = seals_stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects::AUDIT_SEAL.to_string(),
                ..Default::default()
            })
            .await
            .context("read the audit seals")?;
        let mut messages = consumer.messages().await.context("read the audit seals")?;
        while let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("audit seal read timed out")?
        {
            let message = message.context("read an audit seal")?;
            let info = message
                .info()
                .map_err(|e| anyhow::anyhow!("audit seal without metadata: {e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            match ferry_wire::decode::<Seal>(&message.payload) {
                Ok(seal) => seals.push((seq, seal)),
                Err(e) => {
                    return Ok(seal::Verdict {
                        broken: Some(format!("seal {seq} cannot be read ({e}): seal changed")),
                        ..Default::default()
                    });
                }
            }
            if pending == 0 {
                break;
            }
        }
    }
    let mut audit = js
        .get_stream(topology::STREAM_AUDIT)
        .await
        .context("open the audit stream")?;
    let state = audit.info().await.context("audit stream info")?.state.clone();
    let start = seals
        .first()
        .map_or(1, |(_, s)| s.first_seq())
        .max(state.first_sequence);
    let records = if state.messages == 0 {
        Vec::new()
    } else {
        read_records(&audit, start, None).await?
    };
    Ok(seal::verify(
        &seals,
        seal_state.first_sequence <= 1,
        records,
        state.first_sequence,
    ))
}
