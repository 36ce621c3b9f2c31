//! cert-handler: owns the node's certificate stores — *personal* certificates with their
//! private keys and *other people's* certificates — and its PGP key rings, in JetStream KV
//! ([`store`]), and serves them over NATS request/reply ([`api`], `ferry_wire::keys`): the
//! operator's `ferry certs` / `ferry pgp` commands, and the key source processes use
//! (`ferry_processes::remote_keys::NatsKeys`). It joins the node like every service — NATS
//! micro-service registration, `/metrics`, `/healthz`, graceful shutdown — and exports the
//! expiry of every certificate the node uses and stores (`metrics.rs`).
//!
//! Invariants:
//! - private material is stored only sealed to the node's keymat ([`store`]) and leaves the
//!   cert-handler only sealed to the requester's one-off key (`reply_to`);
//! - who may call what is decided by NATS permissions (`ferry_wire::permissions`): the key source
//!   (`keys.*`) only by the node's transfer and the admin, imports, removals and private exports
//!   (`admin.*`) only by the admin;
//! - an import that cannot be read whole changes nothing.

mod api;
mod import;
mod metrics;
mod pem;
mod store;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use ferry_service::{Settings, http, nats};
use ferry_wire::{subjects, topology};

pub const SERVICE: &str = subjects::service::CERT_HANDLER;

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, js) = nats::connect(&settings, SERVICE, &shutdown).await?;
    let keymat = settings.open_keymat()?;
    let metrics = Arc::new(metrics::Metrics::new()?);
    metrics.up.set(1);
    http::serve(
        settings.cert_handler.metrics_addr,
        metrics.registry.clone(),
        http::nats_health(&client),
        shutdown.child_token(),
    )
    .await?;
    let config = nats::open_kv(&js, topology::KV_CONFIG, &shutdown).await?;
    let state = Arc::new(api::State {
        node: settings.node_id.clone(),
        stores: store::Stores::open(&js, keymat, &shutdown).await?,
        changed: tokio::sync::Notify::new(),
    });
    let certificates = {
        let (metrics, settings, state, token) = (
            metrics.clone(),
            settings.clone(),
            state.clone(),
            shutdown.child_token(),
        );
        tokio::spawn(async move { metrics.follow_certificates(settings, config, &state, token).await })
    };
    let (service, group) = ferry_service::api::register(
        &client,
        &settings.node_id,
        SERVICE,
        "Ferry certificate and key handler",
    )
    .await?;
    let endpoints = api::serve(&group, state, &shutdown).await?;
    shutdown.cancelled().await;
    for endpoint in endpoints {
        let _ = endpoint.await;
    }
    let _ = certificates.await;
    let _ = service.stop().await;
    Ok(())
}
