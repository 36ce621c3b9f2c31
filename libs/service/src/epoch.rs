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

/// Highest epoch seen by this service. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EpochGate {
    highest: Arc<AtomicU64>,
}

impl EpochGate {
    /// Record `epoch` and say whether work stamped with it may proceed (it is not older than the
    /// highest epoch seen).
    pub fn admit(&self, epoch: Epoch) -> bool {
        let before = self.highest.fetch_max(epoch, Ordering::SeqCst);
        epoch >= before
    }

    pub fn highest(&self) -> Epoch {
        self.highest.load(Ordering::SeqCst)
    }
}

/// Follow the lease key; every new lease raises `gate`. Returns a receiver of the latest view.
pub async fn watch_lease(
    js: &jetstream::Context,
    gate: EpochGate,
    shutdown: CancellationToken,
) -> anyhow::Result<watch::Receiver<LeaseView>> {
    let kv = crate::nats::open_kv(js, topology::KV_LEASE, &shutdown).await?;
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
                    gate.admit(view.epoch);
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
    fn older_epochs_are_refused() {
        let gate = EpochGate::default();
        assert!(gate.admit(5));
        assert!(gate.admit(5), "the current epoch is fine");
        assert!(gate.admit(7));
        assert!(!gate.admit(6), "older than one already seen");
        assert_eq!(gate.highest(), 7);
    }
}
