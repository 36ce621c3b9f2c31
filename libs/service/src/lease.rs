//! This node's permission to do side-effecting work, as granted by its failover-coordinator.
//!
//! Every service that fires, takes or commits work follows its own node's coordinator: it asks
//! for a [`LeaseGrant`] every [`POLL`] (and at once when the coordinator announces a change on
//! `ferry.node.<node>.lease`) and holds the grant until `request sent + valid_for`. The
//! coordinator computed `valid_for` after the request was sent, from its own fence deadline, so
//! the service's deadline is never later than the coordinator's — and the coordinator fences
//! itself before the lease can lapse in the bucket. A service whose coordinator dies or goes
//! silent therefore stops on its own, in time.
//!
//! Invariant: a revocation (a grant with `valid_for_ms == 0`) applies at once; an extension only
//! ever comes from a reply to this service's own request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use ferry_wire::{Epoch, LeaseAsk, LeaseGrant, Role, subjects};

use crate::EpochGate;

/// How often a service renews its view of the grant (well below any sane lease TTL).
pub const POLL: Duration = Duration::from_millis(300);
/// How long a service waits for its coordinator's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What changed, for services that react to it (the scheduler wakes, collectors start pulling).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseState {
    pub role: Role,
    /// The epoch of the node's lease (0: none).
    pub epoch: Epoch,
    /// The node may commit work under `epoch` now.
    pub valid: bool,
    /// …and take new work (false while draining).
    pub accepting: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Held {
    grant_epoch: Epoch,
    role: Role,
    accepting: bool,
    until: Option<Instant>,
}

impl Held {
    fn state(&self, now: Instant) -> LeaseState {
        let valid = self.grant_epoch > 0 && self.until.is_some_and(|u| now < u);
        LeaseState {
            role: self.role,
            epoch: self.grant_epoch,
            valid,
            accepting: valid && self.accepting,
        }
    }
}

/// The node's lease as this service holds it. Cheap to clone.
#[derive(Clone)]
pub struct NodeLease {
    held: Arc<Mutex<Held>>,
    changes: watch::Receiver<LeaseState>,
}

impl NodeLease {
    fn state(&self) -> LeaseState {
        self.held
            .lock()
            .expect("lease lock is never poisoned")
            .state(Instant::now())
    }

    /// The epoch under which this node may commit work right now, if any.
    pub fn current(&self) -> Option<Epoch> {
        let state = self.state();
        state.valid.then_some(state.epoch)
    }

    /// Work stamped with `epoch` may commit now: it is this node's lease and the lease is valid.
    pub fn allows(&self, epoch: Epoch) -> bool {
        self.current() == Some(epoch)
    }

    /// The epoch under which this node may take *new* work now (not while draining).
    pub fn accepting(&self) -> Option<Epoch> {
        let state = self.state();
        state.accepting.then_some(state.epoch)
    }

    pub fn role(&self) -> Role {
        self.state().role
    }

    /// A receiver that changes when the role, epoch, validity or acceptance change.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.changes.clone()
    }

    /// Wait until this node may take new work; returns the epoch, or `None` on shutdown.
    pub async fn wait_accepting(&self, shutdown: &CancellationToken) -> Option<Epoch> {
        self.wait_for(shutdown, Self::accepting).await
    }

    /// Wait until this node may commit work (also while draining); `None` on shutdown.
    pub async fn wait_valid(&self, shutdown: &CancellationToken) -> Option<Epoch> {
        self.wait_for(shutdown, Self::current).await
    }

    async fn wait_for(
        &self,
        shutdown: &CancellationToken,
        ready: fn(&Self) -> Option<Epoch>,
    ) -> Option<Epoch> {
        let mut changes = self.subscribe();
        loop {
            if let Some(epoch) = ready(self) {
                return Some(epoch);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// What a working service needs to fence itself: the highest epoch seen anywhere (from the lease
/// key, so work of an older epoch is refused) and its node's grant (so it works only while the
/// node holds a valid lease).
pub async fn fencing(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    node: &str,
    service: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<(EpochGate, NodeLease)> {
    let gate = EpochGate::default();
    crate::epoch::watch_lease(js, gate.clone(), shutdown.child_token()).await?;
    let lease = follow(client, node, service, gate.clone(), shutdown.child_token()).await?;
    Ok((gate, lease))
}

/// Follow the grant of `node`'s coordinator until `shutdown`. Every granted epoch also raises
/// `gate`, so work stamped with an older epoch is refused. On `shutdown` the service gives its
/// grant up first (nothing commits afterwards) and tells the coordinator so.
pub async fn follow(
    client: &async_nats::Client,
    node: &str,
    service: &str,
    gate: EpochGate,
    shutdown: CancellationToken,
) -> anyhow::Result<NodeLease> {
    let instance = format!(
        "{service}-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let mut announcements = client
        .subscribe(subjects::node_lease(node))
        .await
        .map_err(|e| anyhow::anyhow!("subscribe to lease announcements: {e}"))?;
    let held = Arc::new(Mutex::new(Held::default()));
    let (tx, rx) = watch::channel(LeaseState::default());
    let lease = NodeLease {
        held: held.clone(),
        changes: rx,
    };
    let client = client.clone();
    let subject = subjects::api(
        node,
        subjects::service::FAILOVER_COORDINATOR,
        subjects::api::LEASE,
    );
    let publish = move |held: &Mutex<Held>| {
        let state = held
            .lock()
            .expect("lease lock is never poisoned")
            .state(Instant::now());
        tx.send_if_modified(|old| {
            let changed = *old != state;
            *old = state;
            changed
        });
    };
    // The first answer before returning, so a service does not start out needlessly fenced.
    ask(&client, &subject, &instance, &held, &gate, true).await;
    publish(&held);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    held.lock().expect("lease lock is never poisoned").until = None;
                    publish(&held);
                    ask(&client, &subject, &instance, &held, &gate, false).await;
                    return;
                }
                _ = tokio::time::sleep(POLL) => {}
                m = announcements.next() => {
                    let Some(m) = m else { return };
                    if let Ok(grant) = ferry_wire::decode::<LeaseGrant>(&m.payload)
                        && grant.valid_for_ms == 0
                    {
                        let mut h = held.lock().expect("lease lock is never poisoned");
                        h.until = None;
                        h.role = grant.role;
                        h.accepting = false;
                        drop(h);
                        publish(&held);
                    }
                }
            }
            if shutdown.is_cancelled() {
                continue;
            }
            ask(&client, &subject, &instance, &held, &gate, true).await;
            publish(&held);
        }
    });
    Ok(lease)
}

/// Ask the coordinator once, saying what this service holds now; on success replace the held
/// grant, on failure keep it (it lapses on its own).
async fn ask(
    client: &async_nats::Client,
    subject: &str,
    instance: &str,
    held: &Mutex<Held>,
    gate: &EpochGate,
    apply: bool,
) {
    let sent = Instant::now();
    let holding = {
        let state = held.lock().expect("lease lock is never poisoned").state(sent);
        if state.valid { state.epoch } else { 0 }
    };
    let body = ferry_wire::encode(&LeaseAsk {
        instance: instance.to_string(),
        holding,
    });
    let reply = tokio::time::timeout(ASK_TIMEOUT, client.request(subject.to_string(), body)).await;
    let grant = match reply {
        Ok(Ok(m)) => match ferry_wire::decode::<LeaseGrant>(&m.payload) {
            Ok(grant) => grant,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable lease grant");
                return;
            }
        },
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "coordinator did not answer");
            return;
        }
        Err(_) => {
            tracing::debug!("coordinator did not answer in time");
            return;
        }
    };
    if grant.epoch > 0 {
        gate.raise(grant.epoch);
    }
    if !apply {
        return;
    }
    let mut h = held.lock().expect("lease lock is never poisoned");
    *h = Held {
        grant_epoch: grant.epoch,
        role: grant.role,
        accepting: grant.accepting,
        until: (grant.valid_for_ms > 0).then(|| sent + Duration::from_millis(grant.valid_for_ms)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_valid_only_until_its_deadline_and_only_with_an_epoch() {
        let now = Instant::now();
        let held = Held {
            grant_epoch: 7,
            role: Role::Active,
            accepting: true,
            until: Some(now + Duration::from_millis(100)),
        };
        let state = held.state(now);
        assert!(state.valid && state.accepting && state.epoch == 7);
        let later = held.state(now + Duration::from_millis(100));
        assert!(
            !later.valid && !later.accepting,
            "the deadline itself is already too late"
        );
        let no_epoch = Held {
            grant_epoch: 0,
            ..held
        };
        assert!(!no_epoch.state(now).valid);
        let draining = Held {
            accepting: false,
            ..held
        };
        let s = draining.state(now);
        assert!(
            s.valid && !s.accepting,
            "a draining node commits but takes nothing new"
        );
    }
}
