//! Sealing the audit trail ([`ferry_wire::seal`]): the failover coordinator appends seals as
//! records arrive; `ferry audit verify` reads both streams back and checks the chain.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{
    self, consumer::DeliverPolicy, context::PublishErrorKind, message::PublishMessage,
    stream::LastRawMessageErrorKind,
};
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
    let policy = DeliverPolicy::ByStartSequence {
        start_sequence: start,
    };
    let records = crate::streams::read_raw(audit, subjects::AUDIT, policy, limit)
        .await
        .context("read the audit stream")?;
    Ok(records
        .into_iter()
        .map(|r| Stored {
            seq: r.seq,
            digest: seal::record_digest(r.seq, r.message.subject.as_str(), &r.message.payload),
            subject: r.message.subject.to_string(),
        })
        .collect())
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
    let stored = crate::streams::read_raw(&seals_stream, subjects::AUDIT_SEAL, DeliverPolicy::All, None)
        .await
        .context("read the audit seals")?;
    let mut seals = Vec::with_capacity(stored.len());
    for s in stored {
        match ferry_wire::decode::<Seal>(&s.message.payload) {
            Ok(seal) => seals.push((s.seq, seal)),
            Err(e) => {
                return Ok(seal::Verdict {
                    broken: Some(format!("seal {} cannot be read ({e}): seal changed", s.seq)),
                    ..Default::default()
                });
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
    let records = read_records(&audit, start, None).await?;
    Ok(seal::verify(
        &seals,
        seal_state.first_sequence <= 1,
        records,
        state.first_sequence,
    ))
}
