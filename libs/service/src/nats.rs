//! Connecting to NATS and making sure the streams and buckets exist.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// Connect (retrying until `shutdown`), named `ferry-<service>@<node>` and authenticated as
/// `[nats]` in the settings says, ensure the topology, and cancel `shutdown` when the node is
/// told to stop (`ferry shutdown`, on `ferry.node.<node>.stop`).
pub async fn connect(
    settings: &Settings,
    service: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    install_crypto_provider();
    let name = format!("ferry-{service}@{}", settings.node_id);
    let servers = server_addrs(&settings.nats_url)?;
    let shown = shown_urls(&settings.nats_url);
    let mut delay = Duration::from_millis(100);
    let client = loop {
        // Read again on every attempt: a rotated credential file takes effect.
        let options = connect_options(settings, service)
            .await?
            .name(&name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5));
        let attempt = options.connect(servers.clone());
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("shut down while connecting to NATS"),
            result = tokio::time::timeout(Duration::from_secs(10), attempt) => match result {
                Ok(Ok(client)) => break client,
                Ok(Err(e)) => tracing::warn!(error = %e, url = %shown, "nats connect failed; retrying"),
                Err(_) => tracing::warn!(url = %shown, "nats connect timed out; retrying"),
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
    let mut store = retry(&format!("open bucket {bucket}"), shutdown, || async {
        js.get_key_value(bucket)
            .await
            .with_context(|| format!("open bucket {bucket}"))
    })
    .await?;
    // On a standby in mirror mode the bucket is a mirror of the primary's, and the client would
    // send puts to the primary's domain. This node writes only its own copy: refused while it
    // is a mirror (it has no subjects), taken after `ferry standby detach` or a promotion — with
    // this same handle.
    if store.put_prefix.take().is_some() {
        store.prefix = format!("$KV.{bucket}.");
        store.use_jetstream_prefix = false;
    }
    Ok(store)
}

/// Connect options for `service` (`cli` for the command line) from the settings' `[nats]`
/// table: the credentials (read now, from files or environment variables), the CA bundle and
/// client certificate, the reply inbox prefix, and an event callback that logs what the server
/// refused (and hands permission violations to [`denials`]).
pub async fn connect_options(
    settings: &Settings,
    service: &str,
) -> anyhow::Result<async_nats::ConnectOptions> {
    let auth = settings.nats.expand(&settings.node_id, service);
    let mut options = async_nats::ConnectOptions::new();
    let mut inbox = None;
    if let Some(path) = &auth.creds_file {
        let path = private_file(path, "nats.creds_file")?;
        options = options
            .credentials_file(&path)
            .await
            .with_context(|| format!("nats.creds_file: read {}", path.display()))?;
    }
    if let Some(path) = &auth.nkey_seed_file {
        let seed = read_secret(path, "nats.nkey_seed_file")?;
        let pair = nkeys::KeyPair::from_seed(&seed)
            .map_err(|e| anyhow::anyhow!("nats.nkey_seed_file: {path} holds no nkey seed ({e})"))?;
        inbox = Some(format!("_INBOX.{}", pair.public_key()));
        options = options.nkey(seed);
    }
    if let Some(user) = &auth.user {
        let password = match (&auth.password_file, &auth.password_env) {
            (Some(path), _) => read_secret(path, "nats.password_file")?,
            (None, Some(var)) => env_secret(var, "nats.password_env")?,
            (None, None) => anyhow::bail!("nats.user needs password_file or password_env"),
        };
        options = options.user_and_password(user.clone(), password);
    }
    match (&auth.token_file, &auth.token_env) {
        (Some(path), _) => options = options.token(read_secret(path, "nats.token_file")?),
        (None, Some(var)) => options = options.token(env_secret(var, "nats.token_env")?),
        (None, None) => {}
    }
    if let Some(ca) = &auth.ca_file {
        let ca = std::path::PathBuf::from(ca);
        anyhow::ensure!(ca.is_file(), "nats.ca_file: {} is not a file", ca.display());
        options = options.add_root_certificates(ca).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&auth.cert_file, &auth.key_file) {
        let key = private_file(key, "nats.key_file")?;
        let cert = std::path::PathBuf::from(cert);
        anyhow::ensure!(cert.is_file(), "nats.cert_file: {} is not a file", cert.display());
        options = options.add_client_certificate(cert, key);
    }
    if let Some(prefix) = auth.inbox_prefix.or(inbox) {
        options = options.custom_inbox_prefix(prefix);
    }
    Ok(options.event_callback(|event| async move {
        match &event {
            async_nats::Event::ServerError(async_nats::ServerError::Other(text))
                if text.contains("Permissions Violation") =>
            {
                tracing::error!(refused = %text, "NATS refused an operation this user may not do");
                let _ = DENIALS.send(text.clone());
            }
            async_nats::Event::ServerError(e) => tracing::error!(error = %e, "NATS server error"),
            async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
            async_nats::Event::Connected => tracing::info!("connected to NATS"),
            other => tracing::debug!(event = %other, "NATS event"),
        }
    }))
}

/// Permission violations the server reported to this process, as they arrive (the server's
/// text, which names the subject). A publish NATS refuses is otherwise silent: a request to a
/// refused subject would only time out.
pub fn denials() -> tokio::sync::broadcast::Receiver<String> {
    DENIALS.subscribe()
}

static DENIALS: std::sync::LazyLock<tokio::sync::broadcast::Sender<String>> =
    std::sync::LazyLock::new(|| tokio::sync::broadcast::channel(64).0);

/// A file of private material: refused when others may read it (as ssh refuses a key file).
fn private_file(path: &str, setting: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("{setting}: {path}"))?;
    let mode = meta.permissions().mode() & 0o777;
    anyhow::ensure!(
        mode & 0o077 == 0,
        "{setting}: {path} may be read by others (mode {mode:o}); make it private: chmod 600 {path}"
    );
    Ok(std::path::PathBuf::from(path))
}

/// A secret held in a private file, surrounding white space removed. The text is never shown.
fn read_secret(path: &str, setting: &str) -> anyhow::Result<String> {
    let path = private_file(path, setting)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("{setting}: read {}", path.display()))?;
    let secret = text.trim().to_string();
    anyhow::ensure!(!secret.is_empty(), "{setting}: {} is empty", path.display());
    Ok(secret)
}

/// A secret held in an environment variable. The value is never shown.
fn env_secret(var: &str, setting: &str) -> anyhow::Result<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => anyhow::bail!("{setting}: the environment variable {var} is not set"),
    }
}

/// The NATS URL list as it may be shown: any `user:password@` part replaced by `***@`.
pub fn shown_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            match (u.find("://"), u.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &u[..scheme + 3], &u[at..]),
                (None, Some(at)) => format!("***{}", &u[at..]),
                _ => u.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The servers of a comma-separated NATS URL list (async-nats reads one string as one URL).
pub fn server_addrs(urls: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("nats_url: {:?} is not a NATS URL", shown_urls(u)))
        })
        .collect()
}

/// Install aws-lc-rs as the process-wide rustls provider (two linked providers would make
/// `ClientConfig::builder()` panic). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn urls_are_shown_without_their_passwords() {
        assert_eq!(
            shown_urls("nats://ferry:hunter2@a:4222, tls://b:4222"),
            "nats://***@a:4222,tls://b:4222"
        );
    }

    #[tokio::test]
    async fn a_seed_others_may_read_is_refused_and_a_private_one_sets_the_inbox() {
        let dir = std::env::temp_dir().join(format!("ferry-nats-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let seed = nkeys::KeyPair::new_user().seed().expect("seed");
        let path = dir.join("transfer.nk");
        std::fs::write(&path, format!("{seed}\n")).expect("write the seed");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut settings = Settings::default();
        settings.nats.nkey_seed_file = Some(format!("{}/{{service}}.nk", dir.display()));
        let err = connect_options(&settings, "transfer")
            .await
            .expect_err("refused")
            .to_string();
        assert!(err.contains("chmod 600") && !err.contains(&seed), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        connect_options(&settings, "transfer")
            .await
            .expect("a private seed is fine");
        let err = connect_options(&settings, "scheduler")
            .await
            .expect_err("no such file")
            .to_string();
        assert!(err.contains("scheduler.nk"), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
