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
    /// Neither: a node on its own.
    None,
}

impl ReplicationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationMode::SharedCluster => "shared cluster",
            ReplicationMode::Mirror => "mirror",
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
}
