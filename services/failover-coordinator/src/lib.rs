//! failover-coordinator: holds this node's role and the epoch that fences all work.
//!
//! This first version declares its node active: it takes the lease key (create, or
//! compare-and-swap when it already holds it) and keeps it. The epoch is the KV revision of the
//! write that made the node active, so it only grows. The time-bound lease with renewals,
//! self-fencing, standby roles and promotion replace this in the failover issue; every other
//! service already drops work stamped with an older epoch, so nothing else has to change.
//!
//! Invariant: the lease key is written only by `create` or `update` with the expected revision,
//! never by a read-then-put.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_nats::jetstream::kv;
use chrono::Utc;
use prometheus::{IntGauge, Registry};
use tokio_util::sync::CancellationToken;

use ferry_service::{Settings, api, http, nats};
use ferry_wire::{FailoverStatus, Lease, subjects, topology};

pub const SERVICE: &str = subjects::service::FAILOVER_COORDINATOR;

struct Metrics {
    registry: Registry,
    epoch: IntGauge,
    active: IntGauge,
}

impl Metrics {
    fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let epoch = IntGauge::new(
            "ferry_failover_epoch",
            "Epoch of the lease this node holds (0: none)",
        )?;
        let active = IntGauge::new("ferry_failover_active", "1 when this node holds the active lease")?;
        registry.register(Box::new(epoch.clone()))?;
        registry.register(Box::new(active.clone()))?;
        Ok(Self {
            registry,
            epoch,
            active,
        })
    }
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, js) = nats::connect(&settings, SERVICE, &shutdown).await?;
    let metrics = Metrics::new()?;
    http::serve(
        settings.failover_coordinator.metrics_addr,
        metrics.registry.clone(),
        http::nats_health(&client),
        shutdown.child_token(),
    )
    .await?;
    let lease_kv = js
        .get_key_value(topology::KV_LEASE)
        .await
        .context("open lease bucket")?;

    let (epoch, lease) = declare_active(&lease_kv, &settings.node_id).await?;
    metrics.epoch.set(epoch as i64);
    metrics.active.set(1);
    tracing::info!(node = %settings.node_id, epoch, "node is active");
    let event =
        serde_json::json!({ "node": settings.node_id, "role": "active", "epoch": epoch, "at": Utc::now() });
    if let Err(e) = js
        .publish(
            subjects::role_changed(&settings.node_id),
            ferry_wire::encode(&event),
        )
        .await
    {
        tracing::warn!(error = %e, "publish role event");
    }

    let status = Arc::new(Mutex::new(FailoverStatus {
        node: settings.node_id.clone(),
        role: "active".into(),
        mode: "single".into(),
        epoch,
        lease_holder: Some(lease.node.clone()),
        lease_acquired_at: Some(lease.acquired_at),
    }));
    let (service, group) =
        api::register(&client, &settings.node_id, SERVICE, "Ferry failover coordinator").await?;
    let status_for_api = status.clone();
    let endpoint = api::serve_json(
        &group,
        subjects::api::STATUS,
        shutdown.child_token(),
        move |(): ()| {
            let status = status_for_api
                .lock()
                .expect("status lock is never poisoned")
                .clone();
            async move { Ok(status) }
        },
    )
    .await?;

    shutdown.cancelled().await;
    let _ = endpoint.await;
    let _ = service.stop().await;
    Ok(())
}

/// Take the lease for `node`: keep it if this node already holds it, else create it, else take
/// it over by compare-and-swap. Returns the epoch (revision of the write that made this node active).
async fn declare_active(kv: &kv::Store, node: &str) -> anyhow::Result<(u64, Lease)> {
    loop {
        let lease = Lease {
            node: node.to_string(),
            acquired_at: Utc::now(),
        };
        match kv.entry(topology::LEASE_KEY).await.context("read lease")? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                if let Ok(current) = ferry_wire::decode::<Lease>(&entry.value)
                    && current.node == node
                {
                    return Ok((entry.revision, current));
                }
                match kv
                    .update(topology::LEASE_KEY, ferry_wire::encode(&lease), entry.revision)
                    .await
                {
                    Ok(revision) => return Ok((revision, lease)),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(e).context("take over lease"),
                }
            }
            _ => match kv.create(topology::LEASE_KEY, ferry_wire::encode(&lease)).await {
                Ok(revision) => return Ok((revision, lease)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("create lease"),
            },
        }
    }
}
