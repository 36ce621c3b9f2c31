//! Connecting to NATS and making sure the streams and buckets exist.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// Connect (retrying until `shutdown`), named `ferry-<service>@<node>`, ensure the topology, and
/// cancel `shutdown` when the node is told to stop (`ferry shutdown`, on `ferry.node.<node>.stop`).
pub async fn connect(
    settings: &Settings,
    service: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    install_crypto_provider();
    let name = format!("ferry-{service}@{}", settings.node_id);
    let servers = server_addrs(&settings.nats_url)?;
    let mut delay = Duration::from_millis(100);
    let client = loop {
        let attempt = async_nats::ConnectOptions::new()
            .name(&name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(servers.clone());
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
    let mut stop = client
        .subscribe(ferry_wire::subjects::node_stop(&settings.node_id))
        .await
        .context("subscribe to the node's stop subject")?;
    let on_stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = on_stop.cancelled() => {}
            m = futures::StreamExt::next(&mut stop) => if m.is_some() {
                tracing::info!("node shutdown requested: stopping");
                on_stop.cancel();
            },
        }
    });
    let js = jetstream::new(client.clone());
    retry("create streams and buckets", shutdown, || async {
        ferry_wire::topology::ensure(&js, settings.topology())
            .await
            .map_err(|e| anyhow::anyhow!(e))
    })
    .await?;
    Ok((client, js))
}

/// Run a start-up step against JetStream until it succeeds, backing off up to 2 s between
/// attempts, while `shutdown` is not cancelled: a cluster may refuse or time out requests for a
/// while (a server restarting, a leader being elected), and a service that gave up would stay
/// down.
pub async fn retry<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if !shutdown.is_cancelled() => {
                tracing::warn!(error = format!("{e:#}"), "{what}: jetstream not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e).context(what.to_string()),
        }
    }
}

/// Open a KV bucket at start-up, retried as [`retry`] does (the bucket's leader may still be
/// being elected: "no responders").
pub async fn open_kv(
    js: &jetstream::Context,
    bucket: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<jetstream::kv::Store> {
    retry(&format!("open bucket {bucket}"), shutdown, || async {
        js.get_key_value(bucket)
            .await
            .with_context(|| format!("open bucket {bucket}"))
    })
    .await
}

/// The servers of a comma-separated NATS URL list (async-nats reads one string as one URL).
pub fn server_addrs(urls: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("nats_url: {u:?} is not a NATS URL"))
        })
        .collect()
}

/// Install aws-lc-rs as the process-wide rustls provider (two linked providers would make
/// `ClientConfig::builder()` panic). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
