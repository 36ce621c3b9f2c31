//! Mirror mode: a standby site with its own NATS whose stores are JetStream mirrors of the
//! primary's (`ferry standby attach|detach|status`, answered by the failover-coordinator).

use chrono::{DateTime, Utc};
use ferry_config::Secret;
use serde::{Deserialize, Serialize};

/// Stream metadata keys a mirrored bucket carries, so that anyone reading its configuration can
/// say whose mirror it is.
pub const META_PRIMARY: &str = "ferry.standby.primary";
pub const META_DOMAIN: &str = "ferry.standby.domain";

/// How this node reaches the primary's NATS directly (for the primary's side of the lag). The
/// secrets are sealed to this node's keymat before they leave the `ferry` command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryCredentials {
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub nkey_seed: Option<Secret>,
    pub token: Option<Secret>,
}

impl PrimaryCredentials {
    /// The keymat binding each secret is sealed under.
    pub fn binding(field: &str) -> String {
        format!("standby/primary/{field}")
    }
}

/// `ferry standby attach`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachRequest {
    /// The primary's NATS URL(s), comma-separated, as this node reaches them.
    pub primary: String,
    #[serde(default)]
    pub credentials: PrimaryCredentials,
    pub by: String,
}

/// `ferry standby detach`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetachRequest {
    pub by: String,
}

/// How this node's stores are kept in step with another node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationMode {
    /// Both nodes on one NATS cluster: one set of stores, nothing to replicate.
    SharedCluster,
    /// This node's stores are JetStream mirrors of the primary's.
    Mirror,
    /// The primary ships configuration bundles to this node's import folder; this node imports
    /// the newest complete one when it is promoted (`failover_coordinator.import_folder`).
    Files,
    /// Neither: a node on its own.
    None,
}

impl ReplicationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationMode::SharedCluster => "shared cluster",
            ReplicationMode::Mirror => "mirror",
            ReplicationMode::Files => "files",
            ReplicationMode::None => "none",
        }
    }
}

/// One mirrored bucket: how far this node's copy is behind the primary's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketReplication {
    pub bucket: String,
    /// The last sequence (KV revision) this node's copy holds.
    pub replicated_seq: u64,
    /// The primary's last sequence (`None`: the primary could not be asked).
    pub primary_seq: Option<u64>,
    /// Messages the copy is behind.
    pub lag_messages: Option<u64>,
    /// How long the oldest change not yet copied has been waiting (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// When the newest entry of the copy was written on the primary.
    pub replicated_at: Option<DateTime<Utc>>,
    /// What the server says about the mirror's link (e.g. the origin is unreachable).
    pub error: Option<String>,
}

/// `ferry standby status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyStatus {
    pub node: String,
    pub mode: ReplicationMode,
    /// The primary this node mirrors (mode `mirror`).
    pub primary: Option<String>,
    /// The primary's JetStream domain, through which the mirrors pull.
    pub primary_domain: Option<String>,
    pub attached_at: Option<DateTime<Utc>>,
    pub attached_by: Option<String>,
    /// Why the primary's side could not be read (unreachable, refused credentials).
    pub primary_error: Option<String>,
    pub buckets: Vec<BucketReplication>,
    /// This node's keymat id, and the one the mirrored configuration's secrets are sealed under.
    pub keymat_id: Option<String>,
    pub config_keymat_id: Option<String>,
    /// `Some(true)` when the two match (this node can open the mirrored secrets after promotion).
    pub keymat_matches: Option<bool>,
    /// Mode `files`: the folder bundles are delivered to.
    #[serde(default)]
    pub import_folder: Option<String>,
    /// Mode `files`: the newest complete bundle there (`None`: none yet).
    #[serde(default)]
    pub newest_bundle: Option<BundleSeen>,
    /// Mode `files`: bundles there that are not whole or not readable, with why.
    #[serde(default)]
    pub unusable_bundles: Vec<String>,
    /// Mode `files`: the last bundle this node imported when promoted.
    #[serde(default)]
    pub imported: Option<BundleImported>,
}

/// A configuration bundle in the import folder, read whole and checked against its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSeen {
    pub file: String,
    pub source_node: String,
    pub ferry_version: String,
    pub keymat_id: String,
    /// When the primary wrote it.
    pub created_at: DateTime<Utc>,
    /// Seconds since then: how much the standby would lose if promoted now.
    pub age_seconds: f64,
    /// Why this node would refuse it (another Ferry version, another keymat), if it would.
    pub refused: Option<String>,
}

/// The bundle imported on the last promotion (`<data_dir>/standby-import.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleImported {
    pub file: String,
    pub source_node: String,
    pub created_at: DateTime<Utc>,
    pub imported_at: DateTime<Utc>,
    pub by: String,
    /// Entries written, deleted and unchanged, over every part.
    pub written: u64,
    pub deleted: u64,
    pub unchanged: u64,
}
