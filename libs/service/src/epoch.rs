//! Epoch fencing: each service keeps the highest epoch it has seen and refuses work stamped with
//! a lower one. The epoch is the revision of the lease `create` that made a node active
//! (renewals keep it: see [`ferry_wire::Lease::epoch_at`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use ferry_wire::{Epoch, Lease, topology};

/// The lease as last seen in the KV bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub epoch: Epoch,
    pub acquired_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Highest epoch seen by this service, raised only by what proves an epoch: the lease key (its
/// watch, or a read of it through the stream's leader) and grants from the node's own coordinator
/// — never by a message's stamp, or one message stamped with the maximum epoch would stop all work
/// for good. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EpochGate {
    highest: Arc<AtomicU64>,
    /// The lease bucket's stream, to check a stamp ahead of what the watch has shown so far.
    lease: Arc<std::sync::OnceLock<jetstream::stream::Stream>>,
}

/// What a message's epoch stamp is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// The current epoch: the work may proceed (if this node holds the lease for it).
    Current,
    /// Older than the current epoch: the work was fenced.
    Stale,
    /// Above every lease there has been: forged or corrupt. Refuse it for good.
    Unknown,
}

impl EpochGate {
    /// Record an epoch proven by the lease key or a grant.
    pub fn raise(&self, epoch: Epoch) {
        self.highest.fetch_max(epoch, Ordering::SeqCst);
    }

    /// Judge a message's stamp against the epochs seen, without raising anything. A stamp ahead
    /// of the watch may be one the watch has not delivered yet: the lease key is read through its
    /// stream's leader before the stamp is called [`Stamp::Unknown`].
    pub async fn check(&self, epoch: Epoch) -> Stamp {
        if epoch > self.highest()
            && let Some(stream) = self.lease.get()
        {
            match current_lease_epoch(stream).await {
                Ok(Some(current)) => self.raise(current),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "read the lease to check an epoch stamp"),
            }
        }
        self.judge(epoch)
    }

    /// Why work stamped `epoch` is refused ([`Self::check`]), or `None` when it may proceed.
    pub async fn refusal(&self, epoch: Epoch) -> Option<String> {
        let verdict = self.check(epoch).await;
        let current = self.highest();
        match verdict {
            Stamp::Current => None,
            Stamp::Stale => Some(format!(
                "refused: stamped with epoch {epoch} but epoch {current} is current (fenced)"
            )),
            Stamp::Unknown => Some(format!(
                "refused: stamped with epoch {epoch}, above every lease there has been (epoch {current} is current): forged or corrupt"
            )),
        }
    }

    fn judge(&self, epoch: Epoch) -> Stamp {
        let highest = self.highest();
        match epoch.cmp(&highest) {
            std::cmp::Ordering::Less => Stamp::Stale,
            std::cmp::Ordering::Equal => Stamp::Current,
            std::cmp::Ordering::Greater => Stamp::Unknown,
        }
    }

    pub fn highest(&self) -> Epoch {
        self.highest.load(Ordering::SeqCst)
    }
}

/// The lease key's epoch as the stream's leader has it (`None`: never written).
async fn current_lease_epoch(stream: &jetstream::stream::Stream) -> anyhow::Result<Option<Epoch>> {
    Ok(lease_key_by_leader(stream, topology::LEASE_KEY)
        .await?
        .map(
            |(revision, value)| match value.map(|v| ferry_wire::decode::<Lease>(&v)) {
                Some(Ok(lease)) => lease.epoch_at(revision),
                _ => revision,
            },
        ))
}

/// The lease bucket's stream, opened with retry until `shutdown` (for reads through its leader).
pub async fn open_lease_stream(
    js: &jetstream::Context,
    shutdown: &CancellationToken,
) -> anyhow::Result<jetstream::stream::Stream> {
    crate::nats::retry("open the lease stream", shutdown, || async {
        js.get_stream(format!("KV_{}", topology::KV_LEASE))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await
}

/// The newest write of `key` in the lease bucket as the stream's leader has it — a replica may
/// lag — within 2 s: its revision and its value (`None` when the write deletes the key).
/// `Ok(None)`: never written.
pub async fn lease_key_by_leader(
    stream: &jetstream::stream::Stream,
    key: &str,
) -> anyhow::Result<Option<(u64, Option<bytes::Bytes>)>> {
    let subject = format!("$KV.{}.{key}", topology::KV_LEASE);
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stream.get_last_raw_message_by_subject(&subject),
    )
    .await
    .map_err(|_| anyhow::anyhow!("read {subject} timed out"))?;
    match read {
        Ok(message) => {
            let deleted = message
                .headers
                .get("KV-Operation")
                .is_some_and(|op| op.as_str() != "PUT");
            Ok(Some((message.sequence, (!deleted).then_some(message.payload))))
        }
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Follow the lease key; every new lease raises `gate`. Returns a receiver of the latest view.
pub async fn watch_lease(
    js: &jetstream::Context,
    gate: EpochGate,
    shutdown: CancellationToken,
) -> anyhow::Result<watch::Receiver<LeaseView>> {
    let kv = crate::nats::open_kv(js, topology::KV_LEASE, &shutdown).await?;
    let _ = gate.lease.set(open_lease_stream(js, &shutdown).await?);
    let (tx, rx) = watch::channel(LeaseView::default());
    let mut watcher = crate::nats::retry("watch lease", &shutdown, || async {
        kv.watch_with_history(topology::LEASE_KEY)
            .await
            .map_err(|e| anyhow::anyhow!("watch lease: {e}"))
    })
    .await?;
    tokio::spawn(async move {
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = watcher.next() => e,
            };
            match entry {
                Some(Ok(entry)) => {
                    let view = view_of(&entry);
                    gate.raise(view.epoch);
                    tx.send_replace(view);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "lease watch error"),
                None => break,
            }
        }
    });
    Ok(rx)
}

fn view_of(entry: &kv::Entry) -> LeaseView {
    match entry.operation {
        kv::Operation::Put => match ferry_wire::decode::<Lease>(&entry.value) {
            Ok(lease) => LeaseView {
                epoch: lease.epoch_at(entry.revision),
                holder: Some(lease.node),
                acquired_at: Some(lease.acquired_at),
            },
            Err(e) => {
                tracing::warn!(error = %e, "unreadable lease");
                LeaseView {
                    holder: None,
                    epoch: entry.revision,
                    acquired_at: None,
                }
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => LeaseView {
            holder: None,
            epoch: entry.revision,
            acquired_at: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_judged_but_never_raise_the_epoch() {
        let gate = EpochGate::default();
        gate.raise(5);
        assert_eq!(gate.judge(5), Stamp::Current);
        assert_eq!(gate.judge(4), Stamp::Stale);
        assert_eq!(gate.judge(u64::MAX), Stamp::Unknown);
        assert_eq!(gate.highest(), 5, "a stamp does not raise the gate");
        assert_eq!(gate.judge(5), Stamp::Current, "the current epoch still works");
        gate.raise(7);
        gate.raise(6);
        assert_eq!(gate.highest(), 7);
        assert_eq!(gate.judge(5), Stamp::Stale);
    }
}
