//! `/metrics` (Prometheus text format) and `/healthz` on the service's own port.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::{Router, http::StatusCode, routing::get};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

/// Health: healthy while the closure says so (typically: NATS connected).
pub type HealthCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Bind `addr` and serve until `shutdown`. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: HealthCheck,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind metrics address {addr}"))?;
    let bound = listener.local_addr().context("metrics local address")?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = Vec::new();
                    TextEncoder::new()
                        .encode(&registry.gather(), &mut out)
                        .expect("encoding gathered metrics into a Vec cannot fail");
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        String::from_utf8(out).expect("prometheus text format is UTF-8"),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let healthy = health();
                async move {
                    if healthy {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "nats disconnected")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(%bound, "serving /metrics and /healthz");
    Ok(bound)
}

/// Health check that follows the NATS connection state.
pub fn nats_health(client: &async_nats::Client) -> HealthCheck {
    let client = client.clone();
    Arc::new(move || client.connection_state() == async_nats::connection::State::Connected)
}
