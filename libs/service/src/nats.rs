//! Connecting to NATS and making sure the streams and buckets exist.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// Connect (retrying until `shutdown`), named `ferry-<service>@<node>`, and ensure the topology.
pub async fn connect(
    settings: &Settings,
    service: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    install_crypto_provider();
    let name = format!("ferry-{service}@{}", settings.node_id);
    let mut delay = Duration::from_millis(100);
    let client = loop {
        let attempt = async_nats::ConnectOptions::new()
            .name(&name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(settings.nats_url.as_str());
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("shut down while connecting to NATS"),
            result = tokio::time::timeout(Duration::from_secs(10), attempt) => match result {
                Ok(Ok(client)) => break client,
                Ok(Err(e)) => tracing::warn!(error = %e, url = %settings.nats_url, "nats connect failed; retrying"),
                Err(_) => tracing::warn!(url = %settings.nats_url, "nats connect timed out; retrying"),
            },
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    };
    let js = jetstream::new(client.clone());
    let mut delay = Duration::from_millis(100);
    loop {
        match ferry_wire::topology::ensure(&js).await {
            Ok(()) => break,
            Err(e) if !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, "jetstream not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(anyhow::anyhow!(e)).context("create streams and buckets"),
        }
    }
    Ok((client, js))
}

/// Install aws-lc-rs as the process-wide rustls provider (two linked providers would make
/// `ClientConfig::builder()` panic). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
