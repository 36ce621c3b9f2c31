//! Message types carried on the subjects in [`crate::subjects`] and stored in the KV buckets of
//! [`crate::topology`]. All JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Epoch;
use ferry_config::{Config, Destination, Host};

/// What started a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// A schedule slot (the slot's nominal time, not when it fired).
    Schedule { slot: DateTime<Utc> },
    /// `ferry task run` or the API.
    Manual { by: String },
    /// A message on `ferry.trigger.<task>`.
    Event { subject: String },
}

/// scheduler → file-collector: start one run of a task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRequested {
    pub task: String,
    pub run_id: Uuid,
    pub epoch: Epoch,
    pub node: String,
    pub trigger: Trigger,
    pub requested_at: DateTime<Utc>,
}

/// One source file as the collector saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceFile {
    /// Index of the source in the task.
    pub source_index: usize,
    pub host: Host,
    /// The source folder (absolute for local hosts).
    pub folder: String,
    /// Path relative to `folder`, `/`-separated.
    pub rel_path: String,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// New-files-only state key (`nfo.<source>.<file>`), when the source uses new-files-only.
    pub state_key: Option<String>,
    pub delete_after: bool,
}

/// file-collector → transfer: move one file to every destination of the task.
/// Carries a snapshot of the destinations, so a run is consistent even if the
/// configuration changes while it is in flight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileItem {
    pub run_id: Uuid,
    pub task: String,
    pub epoch: Epoch,
    /// Stable id of this file within this run (the JetStream message id).
    pub item_id: String,
    pub source: SourceFile,
    pub destinations: Vec<Destination>,
    pub dest_hosts: Vec<Host>,
    /// The run's start, which date macros expand from.
    pub run_started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Skipped,
    Failed,
}

/// What happened at one destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DestOutcome {
    pub path: String,
    pub outcome: Outcome,
    pub error: Option<String>,
}

/// transfer → file-collector: the outcome of one [`FileItem`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileResult {
    pub item_id: String,
    pub source_path: String,
    pub size: u64,
    pub sha256: Option<String>,
    pub outcome: Outcome,
    pub destinations: Vec<DestOutcome>,
    pub error: Option<String>,
    pub node: String,
    pub epoch: Epoch,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every file delivered or deliberately skipped (also when there were no files).
    Succeeded,
    /// At least one file failed, or the task could not run.
    Failed,
    /// Not run: the task was already running, or the request came from an older epoch.
    Skipped,
}

/// One per run, at its end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunFinished {
    pub task: String,
    pub run_id: Uuid,
    pub epoch: Epoch,
    pub node: String,
    pub trigger: Trigger,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub files_delivered: u64,
    pub files_skipped: u64,
    pub files_failed: u64,
    pub bytes: u64,
    pub error: Option<String>,
    pub files: Vec<FileResult>,
}

/// Published when a run starts (after its source listing).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunStarted {
    pub task: String,
    pub run_id: Uuid,
    pub epoch: Epoch,
    pub node: String,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub files: u64,
}

/// The audit trail: one record per file movement (or deletion) at one destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub task: String,
    pub run_id: Uuid,
    pub node: String,
    pub epoch: Epoch,
    /// `transfer` or `delete_source`.
    pub action: String,
    pub source_path: String,
    pub dest_path: Option<String>,
    pub size: u64,
    pub sha256: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: Outcome,
    pub error: Option<String>,
}

/// The stored configuration (KV `ferry_config`, key `current`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigDocument {
    pub applied_at: DateTime<Utc>,
    /// Who applied it (`user@host`) and from which file.
    pub applied_by: String,
    pub source_name: String,
    pub config: Config,
}

/// New-files-only record of one delivered source file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileState {
    pub size: u64,
    pub mtime_ns: i128,
    pub sha256: String,
    pub run_id: Uuid,
    pub delivered_at: DateTime<Utc>,
}

/// Run bookkeeping (KV `ferry_runs`, key `run.<run id>`): written once the source listing is
/// published, so a collector that restarts mid-run waits for results instead of listing again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub started_at: DateTime<Utc>,
    pub item_ids: Vec<String>,
}

/// The failover lease (KV `ferry_lease`, key `active`). The epoch is the KV revision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    pub node: String,
    pub acquired_at: DateTime<Utc>,
}

// ----------------------------------------------------------------------------------------------
// Request/reply API bodies.
// ----------------------------------------------------------------------------------------------

/// `ferry apply`: a parsed configuration file (relative local paths already resolved).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub config: ferry_config::RawConfig,
    pub source_name: String,
    pub applied_by: String,
    /// Validate only; store nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyResponse {
    Applied {
        revision: u64,
        tasks: Vec<String>,
        hosts: Vec<String>,
        unchanged: bool,
    },
    Valid {
        tasks: Vec<String>,
        hosts: Vec<String>,
    },
    Rejected {
        errors: Vec<ferry_config::ConfigError>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunTaskRequest {
    pub task: String,
    pub by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunTaskResponse {
    pub run_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerStatus {
    pub node: String,
    pub enabled: bool,
    pub epoch: Epoch,
    pub tasks: Vec<ScheduledTask>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduledTask {
    pub task: String,
    pub next_fire: Option<DateTime<Utc>>,
    pub last_fired_slot: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverStatus {
    pub node: String,
    pub role: String,
    pub mode: String,
    pub epoch: Epoch,
    pub lease_holder: Option<String>,
    pub lease_acquired_at: Option<DateTime<Utc>>,
}

/// Error reply of any API endpoint (also sent as the NATS service error header).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
