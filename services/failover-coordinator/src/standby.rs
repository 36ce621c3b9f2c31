//! Mirror mode: this node's stores as continuous JetStream mirrors of a primary's at another
//! site (`ferry standby attach|detach|status`).
//!
//! The two sites run their own NATS, each with its own JetStream domain, joined by a leaf node
//! that passes JetStream's API (`$JS.<domain>.API.>`) and nothing of Ferry's (`ferry.>`, `$KV.>`
//! denied both ways, or each site's streams would capture the other's messages). Each mirrored
//! bucket ([`topology::MIRRORED`]) becomes a stream named like the primary's with a `mirror` of
//! it through the primary's domain: the server keeps it in step (same sequences, so the same KV
//! revisions), and it has no subjects, so nothing on this node can write it. Detaching (or
//! promoting) removes the mirror and gives the stream its KV subjects back: the same contents,
//! now this node's own.
//!
//! The primary's side of the lag (its last sequence, the time of the oldest change not yet
//! copied) is read over a direct connection to the primary, with credentials kept sealed to this
//! node's keymat in `<data_dir>/standby.json`, so the lag keeps growing when the link is down.
//!
//! Invariants:
//! - An active node is never attached (its stores would be replaced by another site's).
//! - Attach refuses unless the primary's domain answers over this node's NATS and the link
//!   passes none of Ferry's subjects.
//! - The attachment record holds no secret in clear.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use ferry_service::Settings;
use ferry_wire::standby::{
    AttachRequest, BucketReplication, META_DOMAIN, META_PRIMARY, PrimaryCredentials, ReplicationMode,
    StandbyStatus,
};
use ferry_wire::{ConfigDocument, topology};

use crate::metrics::Metrics;

/// How long a request to the primary (or through the link) may take.
const ASK: Duration = Duration::from_secs(3);
/// How long attach waits for the new mirrors to copy what the primary holds.
const CATCH_UP: Duration = Duration::from_secs(30);
/// How often the lag metrics are refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);

/// What `standby.json` holds while this node is attached.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attachment {
    primary: String,
    domain: String,
    credentials: PrimaryCredentials,
    attached_at: DateTime<Utc>,
    attached_by: String,
}

pub struct Standby {
    node: String,
    js: jetstream::Context,
    client: async_nats::Client,
    settings: Settings,
    path: PathBuf,
    /// The direct connection to the primary, made when first needed: (URL, client).
    primary: tokio::sync::Mutex<Option<(String, async_nats::Client)>>,
}

/// Why a node whose stores mirror another site's may not run in automatic failover mode.
pub const AUTOMATIC_ACROSS_SITES: &str = "this node's stores mirror a primary at another site, and it runs in automatic failover mode: \
    each site has its own NATS and its own failover lease, so across a partition this node could not tell a dead \
    primary from an unreachable one and would make itself active beside it (two sites without a shared quorum \
    witness cannot decide that safely). Set failover_coordinator.mode = \"manual\" on this node; an operator \
    promotes it (`ferry failover promote`), or use the shared-cluster mode with a witness server for automatic failover";

impl Standby {
    pub fn new(settings: &Settings, client: async_nats::Client, js: jetstream::Context) -> Self {
        Self {
            node: settings.node_id.clone(),
            js,
            client,
            settings: settings.clone(),
            path: settings.data_dir.join("standby.json"),
            primary: tokio::sync::Mutex::new(None),
        }
    }

    fn load(&self) -> anyhow::Result<Option<Attachment>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).with_context(|| format!("read {}", self.path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", self.path.display())),
        }
    }

    fn save(&self, attachment: Option<&Attachment>) -> anyhow::Result<()> {
        let Some(attachment) = attachment else {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("remove {}", self.path.display()))
                }
                _ => Ok(()),
            };
        };
        write_atomically(&self.path, &serde_json::to_vec_pretty(attachment)?)
    }

    /// True while this node's stores are mirrors.
    pub fn attached(&self) -> bool {
        self.path.exists()
    }

    /// A client of the primary's NATS, with the attachment's credentials opened by this node's
    /// keymat.
    async fn connect(
        &self,
        url: &str,
        credentials: &PrimaryCredentials,
    ) -> anyhow::Result<async_nats::Client> {
        let keymat = self
            .settings
            .open_keymat()?
            .current()
            .context("read the node's keymat")?;
        let open = |field: &str, secret: &ferry_config::Secret| {
            keymat
                .open(&PrimaryCredentials::binding(field), secret)
                .map(|s| s.to_string())
                .with_context(|| format!("credentials.{field}: open with this node's keymat"))
        };
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("ferry-standby@{}", self.node))
            .connection_timeout(ASK);
        if let Some(user) = &credentials.user {
            let password = match &credentials.password {
                Some(p) => open("password", p)?,
                None => String::new(),
            };
            options = options.user_and_password(user.clone(), password);
        }
        if let Some(seed) = &credentials.nkey_seed {
            options = options.nkey(open("nkey_seed", seed)?);
        }
        if let Some(token) = &credentials.token {
            options = options.token(open("token", token)?);
        }
        if let Some(ca) = &self.settings.nats.ca_file {
            options = options.add_root_certificates(PathBuf::from(ca));
        }
        let shown = ferry_service::nats::shown_urls(url);
        tokio::time::timeout(ASK * 2, options.connect(ferry_service::nats::server_addrs(url)?))
            .await
            .map_err(|_| anyhow::anyhow!("connect to the primary's NATS at {shown}: timed out"))?
            .with_context(|| format!("connect to the primary's NATS at {shown}"))
    }

    /// The cached connection to the attachment's primary.
    async fn primary_client(&self, attachment: &Attachment) -> anyhow::Result<async_nats::Client> {
        let mut cached = self.primary.lock().await;
        if let Some((url, client)) = cached.as_ref()
            && *url == attachment.primary
        {
            return Ok(client.clone());
        }
        let client = self.connect(&attachment.primary, &attachment.credentials).await?;
        *cached = Some((attachment.primary.clone(), client.clone()));
        Ok(client)
    }

    /// `ferry standby attach`: make every mirrored bucket of this node a mirror of the primary's.
    pub async fn attach(&self, req: AttachRequest) -> anyhow::Result<()> {
        if self.settings.failover_coordinator.mode == ferry_wire::FailoverMode::Automatic {
            bail!("{AUTOMATIC_ACROSS_SITES}");
        }
        let primary = self.connect(&req.primary, &req.credentials).await?;
        let primary_js = jetstream::new(primary.clone());
        let shown = ferry_service::nats::shown_urls(&req.primary);
        let theirs = primary_js
            .query_account()
            .await
            .with_context(|| format!("ask the primary's NATS at {shown} for its JetStream account"))?;
        let ours = self
            .js
            .query_account()
            .await
            .context("ask this node's NATS for its JetStream account")?;
        let Some(domain) = theirs.domain.filter(|d| !d.is_empty()) else {
            bail!(
                "the primary's NATS at {shown} has no JetStream domain: give each site's servers one (`jetstream {{ domain: ... }}`) and join them with a leaf node (docs/standby-mirror.md)"
            );
        };
        if ours.domain.as_deref() == Some(domain.as_str()) {
            bail!(
                "the primary's NATS at {shown} is in this node's own JetStream domain {domain:?}: in mirror mode each site has its own domain (on one cluster, use the shared-cluster mode instead)"
            );
        }
        let api = format!("$JS.{domain}.API");
        tokio::time::timeout(ASK, self.client.request(format!("{api}.INFO"), "".into()))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| {
                format!(
                    "this node's NATS does not reach the primary's JetStream domain {domain:?}: join the sites with a leaf node (docs/standby-mirror.md)"
                )
            })?;
        self.refuse_a_leaking_link(&primary).await?;
        let mut wanted = Vec::new();
        let mut primary_last = Vec::new();
        for bucket in topology::MIRRORED {
            let name = format!("KV_{bucket}");
            let info = primary_js
                .get_stream(&name)
                .await
                .with_context(|| {
                    format!("the primary at {shown} has no bucket {bucket} (is it a Ferry node?)")
                })?
                .info()
                .await
                .with_context(|| format!("read the primary's bucket {bucket}"))?
                .clone();
            primary_last.push((format!("KV_{bucket}"), info.state.last_sequence));
            wanted.push(mirror_config(
                bucket,
                &info.config,
                &req.primary,
                &domain,
                &self.settings,
            ));
        }
        // From here on this node's copies are replaced: the primary's are the ones that count.
        for config in wanted {
            if self.js.get_stream(&config.name).await.is_ok() {
                self.js
                    .delete_stream(&config.name)
                    .await
                    .with_context(|| format!("remove this node's {}", config.name))?;
            }
            self.js
                .create_stream(config.clone())
                .await
                .with_context(|| format!("create {} as a mirror of the primary's", config.name))?;
        }
        let attachment = Attachment {
            primary: req.primary.clone(),
            domain: domain.clone(),
            credentials: req.credentials,
            attached_at: Utc::now(),
            attached_by: req.by.clone(),
        };
        self.save(Some(&attachment))?;
        *self.primary.lock().await = Some((req.primary.clone(), primary));
        self.wait_caught_up(&primary_last).await;
        tracing::info!(primary = %shown, %domain, by = %req.by, "stores attached as mirrors of the primary's");
        Ok(())
    }

    /// Wait (up to [`CATCH_UP`]) until every mirror holds what its primary held when attach
    /// read it, so that attach answers with the stores copied, not merely created. Past the
    /// limit it answers anyway: the status it returns shows the lag.
    async fn wait_caught_up(&self, primary_last: &[(String, u64)]) {
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        for (name, last) in primary_last {
            loop {
                let ours = match self.js.get_stream(name).await {
                    Ok(mut stream) => stream.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
                    Err(_) => 0,
                };
                if ours >= *last {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(stream = %name, copied = ours, primary = last, "attached, but the mirror has not caught up yet");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The link between the sites must pass JetStream's API and nothing of Ferry's: a run
    /// request, an API call or a KV write that crossed it would land in the other site's
    /// streams. Listen on the primary, publish here.
    async fn refuse_a_leaking_link(&self, primary: &async_nats::Client) -> anyhow::Result<()> {
        let probe = uuid::Uuid::new_v4().simple().to_string();
        let subjects = [
            format!("ferry.standby.probe.{probe}"),
            format!("$KV.ferry_standby_probe.{probe}"),
        ];
        let mut subscriptions = Vec::new();
        for subject in &subjects {
            subscriptions.push(primary.subscribe(subject.clone()).await?);
        }
        primary.flush().await?;
        // Interest crosses a leaf node within milliseconds; give it a little longer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for subject in &subjects {
            self.client.publish(subject.clone(), "".into()).await?;
        }
        self.client.flush().await?;
        for (subject, mut subscription) in subjects.iter().zip(subscriptions) {
            if tokio::time::timeout(Duration::from_millis(300), subscription.next())
                .await
                .is_ok_and(|m| m.is_some())
            {
                let pattern = subject.split('.').next().expect("a subject has a first token");
                bail!(
                    "the link between this node's NATS and the primary's passes {pattern}.> : each site's streams would capture the other's messages; deny \"ferry.>\" and \"$KV.>\" in the leaf node's deny_imports and deny_exports (docs/standby-mirror.md)"
                );
            }
        }
        Ok(())
    }

    /// Make every mirrored bucket this node's own again (the same contents, writable). Returns
    /// whether anything was a mirror.
    pub async fn detach(&self, by: &str) -> anyhow::Result<bool> {
        let mut detached = false;
        for bucket in topology::MIRRORED {
            let name = format!("KV_{bucket}");
            let mut stream = match self.js.get_stream(&name).await {
                Ok(stream) => stream,
                Err(e) => return Err(e).with_context(|| format!("open this node's {name}")),
            };
            let mut config = stream
                .info()
                .await
                .with_context(|| format!("read {name}"))?
                .config
                .clone();
            if config.mirror.is_none() {
                continue;
            }
            config.mirror = None;
            config.mirror_direct = false;
            config.subjects = vec![format!("$KV.{bucket}.>")];
            config.metadata.remove(META_PRIMARY);
            config.metadata.remove(META_DOMAIN);
            self.js
                .update_stream(&config)
                .await
                .with_context(|| format!("make {name} this node's own (remove its mirror)"))?;
            detached = true;
        }
        self.save(None)?;
        if let Some((_, client)) = self.primary.lock().await.take() {
            drop(client);
        }
        if detached {
            tracing::info!(%by, "mirrors detached: this node's stores are its own");
        }
        Ok(detached)
    }

    /// `ferry standby status`; `shared_cluster`: other nodes share this node's lease bucket.
    pub async fn status(&self, shared_cluster: bool) -> StandbyStatus {
        let attachment = self.load().unwrap_or_else(|e| {
            tracing::warn!(error = %format!("{e:#}"), "read the standby attachment");
            None
        });
        let (buckets, primary_error) = match &attachment {
            Some(a) => self.replication(a).await,
            None => (Vec::new(), None),
        };
        let keymat_id = self
            .settings
            .open_keymat()
            .ok()
            .and_then(|k| k.current().ok())
            .map(|k| k.key_id().to_string());
        let config_keymat_id = self.config_keymat_id().await;
        StandbyStatus {
            node: self.node.clone(),
            mode: match (&attachment, shared_cluster) {
                (Some(_), _) => ReplicationMode::Mirror,
                (None, true) => ReplicationMode::SharedCluster,
                (None, false) => ReplicationMode::None,
            },
            primary: attachment
                .as_ref()
                .map(|a| ferry_service::nats::shown_urls(&a.primary)),
            primary_domain: attachment.as_ref().map(|a| a.domain.clone()),
            attached_at: attachment.as_ref().map(|a| a.attached_at),
            attached_by: attachment.as_ref().map(|a| a.attached_by.clone()),
            primary_error,
            buckets,
            keymat_matches: match (&keymat_id, &config_keymat_id) {
                (Some(ours), Some(theirs)) => Some(ours == theirs),
                _ => None,
            },
            keymat_id,
            config_keymat_id,
            import_folder: None,
            newest_bundle: None,
            unusable_bundles: Vec::new(),
            imported: None,
        }
    }

    async fn config_keymat_id(&self) -> Option<String> {
        let kv = self.js.get_key_value(topology::KV_CONFIG).await.ok()?;
        let bytes = kv.get(topology::CONFIG_KEY).await.ok()??;
        ferry_wire::decode::<ConfigDocument>(&bytes).ok()?.keymat_id
    }

    /// Per mirrored bucket: this node's copy against the primary's.
    async fn replication(&self, attachment: &Attachment) -> (Vec<BucketReplication>, Option<String>) {
        let mut primary = match self.primary_client(attachment).await {
            Ok(client) => Ok(jetstream::new(client)),
            Err(e) => Err(format!("{e:#}")),
        };
        let mut out = Vec::new();
        let mut primary_error = primary.as_ref().err().cloned();
        for bucket in topology::MIRRORED {
            let name = format!("KV_{bucket}");
            let ours = match self.js.get_stream(&name).await {
                Ok(mut s) => s.info().await.cloned().map_err(anyhow::Error::from),
                Err(e) => Err(anyhow::Error::from(e)),
            };
            let ours = match ours {
                Ok(info) => info,
                Err(e) => {
                    out.push(BucketReplication {
                        bucket: bucket.to_string(),
                        replicated_seq: 0,
                        primary_seq: None,
                        lag_messages: None,
                        lag_seconds: None,
                        replicated_at: None,
                        error: Some(format!("this node's copy: {e:#}")),
                    });
                    continue;
                }
            };
            let replicated_seq = ours.state.last_sequence;
            let replicated_at = (replicated_seq > 0).then_some(ours.state.last_timestamp);
            let link = ours.mirror.as_ref();
            let mut row = BucketReplication {
                bucket: bucket.to_string(),
                replicated_seq,
                primary_seq: None,
                // Until the primary answers, the server's own count of what the mirror lacks.
                lag_messages: link.map(|m| m.lag),
                lag_seconds: None,
                replicated_at,
                error: match link {
                    None => Some("not a mirror (detached?)".into()),
                    Some(m) => match m.active {
                        Some(active) if active > Duration::from_secs(10) => Some(format!(
                            "no contact with the primary's stream for {} s",
                            active.as_secs()
                        )),
                        None => Some("the mirror has not reached the primary's stream".into()),
                        _ => None,
                    },
                },
            };
            if let Ok(primary_js) = &primary {
                match primary_side(primary_js, &name, bucket, replicated_seq).await {
                    Ok((seq, waiting_since)) => {
                        row.primary_seq = Some(seq);
                        row.lag_messages = Some(seq.saturating_sub(replicated_seq));
                        row.lag_seconds = Some(match waiting_since {
                            Some(at) => ((Utc::now() - at).num_milliseconds().max(0)) as f64 / 1000.0,
                            None => 0.0,
                        });
                    }
                    Err(e) => {
                        // One store the primary did not answer for: do not wait on it for each
                        // of the others (a status during a partition answers at once).
                        let e = format!("{e:#}");
                        primary_error.get_or_insert_with(|| e.clone());
                        primary = Err(e);
                    }
                }
            }
            if row.lag_seconds.is_none() {
                // The primary cannot be asked: the copy is at least as old as the last contact.
                row.lag_seconds = link.and_then(|m| m.active).map(|a| a.as_secs_f64());
            }
            out.push(row);
        }
        (out, primary_error)
    }

    /// Refresh the lag metrics (nothing while detached).
    pub async fn export(&self, metrics: &Metrics) {
        metrics.standby_lag_seconds.reset();
        metrics.standby_lag_messages.reset();
        if !self.attached() {
            return;
        }
        let status = self.status(false).await;
        for row in &status.buckets {
            if let Some(seconds) = row.lag_seconds {
                metrics
                    .standby_lag_seconds
                    .with_label_values(&[row.bucket.as_str()])
                    .set(seconds);
            }
            if let Some(messages) = row.lag_messages {
                metrics
                    .standby_lag_messages
                    .with_label_values(&[row.bucket.as_str()])
                    .set(messages as f64);
            }
        }
    }
}

/// The primary's last sequence of `stream`, and when the oldest change this node lacks was
/// written there (`None`: nothing lacking).
async fn primary_side(
    js: &jetstream::Context,
    stream: &str,
    bucket: &str,
    replicated_seq: u64,
) -> anyhow::Result<(u64, Option<DateTime<Utc>>)> {
    let ask = async {
        let mut s = js.get_stream(stream).await?;
        let last = s.info().await?.state.last_sequence;
        if last <= replicated_seq {
            return Ok::<_, anyhow::Error>((last, None));
        }
        // The first message after the copy's last one that the primary still keeps (a KV
        // bucket keeps only the newest revisions of each key).
        let next = s
            .direct_get_next_for_subject(format!("$KV.{bucket}.>"), Some(replicated_seq + 1))
            .await?;
        Ok((last, Some(next.time)))
    };
    tokio::time::timeout(ASK, ask)
        .await
        .map_err(|_| anyhow::anyhow!("the primary did not answer within {} s", ASK.as_secs()))?
        .with_context(|| format!("read the primary's {stream}"))
}

/// The stream of a mirror of `bucket` whose origin is `origin` (the primary's configuration of
/// it), through the primary's JetStream `domain`.
fn mirror_config(
    bucket: &str,
    origin: &stream::Config,
    primary: &str,
    domain: &str,
    settings: &Settings,
) -> stream::Config {
    let mut metadata = HashMap::new();
    metadata.insert(META_PRIMARY.to_string(), ferry_service::nats::shown_urls(primary));
    metadata.insert(META_DOMAIN.to_string(), domain.to_string());
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(format!("mirror of {bucket} at JetStream domain {domain}")),
        subjects: Vec::new(),
        max_messages_per_subject: origin.max_messages_per_subject,
        max_bytes: origin.max_bytes,
        max_age: origin.max_age,
        max_message_size: origin.max_message_size,
        storage: stream::StorageType::File,
        num_replicas: settings.topology().replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        mirror: Some(stream::Source {
            name: format!("KV_{bucket}"),
            external: Some(stream::External {
                api_prefix: format!("$JS.{domain}.API"),
                delivery_prefix: None,
            }),
            ..Default::default()
        }),
        metadata,
        ..Default::default()
    }
}

/// Replace `path` atomically (temp file, fsync, rename, directory fsync), mode 0600.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().expect("the attachment file sits in the data dir");
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
