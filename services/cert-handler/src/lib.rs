//! cert-handler: will own client certificates and PGP key rings and run Certs Backup / Certs
//! Restore and the key-dependent processes (a later issue). Today it joins the node like every
//! service — NATS micro-service registration, `/metrics`, `/healthz`, graceful shutdown — and
//! answers `status`, so deployments and dashboards already include it, and exports the expiry
//! of every certificate the node uses (`metrics.rs`).

mod metrics;

use tokio_util::sync::CancellationToken;

use ferry_service::{Settings, api, http, nats};
use ferry_wire::{subjects, topology};

pub const SERVICE: &str = subjects::service::CERT_HANDLER;

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, js) = nats::connect(&settings, SERVICE, &shutdown).await?;
    let metrics = std::sync::Arc::new(metrics::Metrics::new()?);
    metrics.up.set(1);
    http::serve(
        settings.cert_handler.metrics_addr,
        metrics.registry.clone(),
        http::nats_health(&client),
        shutdown.child_token(),
    )
    .await?;
    let config = nats::open_kv(&js, topology::KV_CONFIG, &shutdown).await?;
    let certificates = {
        let (metrics, settings, token) = (metrics.clone(), settings.clone(), shutdown.child_token());
        tokio::spawn(async move { metrics.follow_certificates(settings, config, token).await })
    };
    let (service, group) = api::register(
        &client,
        &settings.node_id,
        SERVICE,
        "Ferry certificate and key handler",
    )
    .await?;
    let node = settings.node_id.clone();
    let endpoint = api::serve_json(
        &group,
        subjects::api::STATUS,
        shutdown.child_token(),
        move |(): ()| {
            let status = serde_json::json!({ "node": node, "certificates": 0, "key_rings": 0 });
            async move { Ok(status) }
        },
    )
    .await?;
    shutdown.cancelled().await;
    let _ = endpoint.await;
    let _ = certificates.await;
    let _ = service.stop().await;
    Ok(())
}
