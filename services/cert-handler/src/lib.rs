//! cert-handler: will own client certificates and PGP key rings and run Certs Backup / Certs
//! Restore and the key-dependent processes (a later issue). Today it joins the node like every
//! service — NATS micro-service registration, `/metrics`, `/healthz`, graceful shutdown — and
//! answers `status`, so deployments and dashboards already include it.

use prometheus::{IntGauge, Registry};
use tokio_util::sync::CancellationToken;

use ferry_service::{Settings, api, http, nats};
use ferry_wire::subjects;

pub const SERVICE: &str = subjects::service::CERT_HANDLER;

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, _js) = nats::connect(&settings, SERVICE, &shutdown).await?;
    let registry = Registry::new();
    let up = IntGauge::new("ferry_cert_handler_up", "1 while the cert-handler runs")?;
    registry.register(Box::new(up.clone()))?;
    up.set(1);
    http::serve(
        settings.cert_handler.metrics_addr,
        registry,
        http::nats_health(&client),
        shutdown.child_token(),
    )
    .await?;
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
    let _ = service.stop().await;
    Ok(())
}
