//! Message types carried on the subjects in [`crate::subjects`] and stored in the KV buckets of
//! [`crate::topology`]. All JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use std::collections::BTreeMap;

use crate::Epoch;
use ferry_config::{Config, Destination, ParamValue};

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
    /// A `run-task` next action of run `run_id` of `task`. A chained run whose task is running
    /// waits for it instead of being skipped.
    Chain { task: String, run_id: Uuid },
}

impl Trigger {
    /// The trigger's kind as metrics and listings name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Schedule { .. } => "schedule",
            Trigger::Manual { .. } => "manual",
            Trigger::Event { .. } => "event",
            Trigger::Chain { .. } => "chain",
        }
    }
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
    /// Parameter values for this run only (`ferry task run --param`, a chained task's
    /// parameters), overriding the task's and the global ones; secure ones sealed
    /// (`ferry_config::params::run_binding`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParamValue>,
}

/// One source file as the collector saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceFile {
    /// Index of the source in the task.
    pub source_index: usize,
    /// The source's host *name*; services resolve it against the stored configuration, so no
    /// host setting or credential ever travels on a stream.
    pub host: String,
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
/// Carries a snapshot of the destinations (folder and name templates, host *names*), so a run's
/// paths are consistent even if the configuration changes while it is in flight; host settings
/// and credentials are resolved by transfer from the stored configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileItem {
    pub run_id: Uuid,
    pub task: String,
    pub epoch: Epoch,
    /// Stable id of this file within this run (the JetStream message id).
    pub item_id: String,
    pub source: SourceFile,
    pub destinations: Vec<Destination>,
    /// The run's start, which date macros expand from.
    pub run_started_at: DateTime<Utc>,
    /// Destinations the collector already refused for this file, with why: another file of the
    /// run goes to the same path there (see [`crate::plan::refuse_collisions`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refused>,
}

impl FileItem {
    /// What a sourceless item's result and audit records show as its source path.
    pub const SOURCELESS_PATH: &str = "(no source: the task's steps made its files)";

    /// The one work item of a run of a task that has no source: its PER-TASK steps make the
    /// run's files from nothing (Certs Backup). It names no host, folder or file, and travels
    /// alone in its batch; transfer accepts it only for a task configured without sources.
    pub fn sourceless(
        run_id: Uuid,
        task: &str,
        epoch: Epoch,
        destinations: Vec<Destination>,
        run_started_at: DateTime<Utc>,
    ) -> Self {
        FileItem {
            run_id,
            task: task.to_string(),
            epoch,
            item_id: crate::plan::short_hash(format!("{run_id}\0sourceless").as_bytes()),
            source: SourceFile {
                source_index: SourceFile::NONE,
                host: String::new(),
                folder: String::new(),
                rel_path: String::new(),
                size: 0,
                mtime_ns: 0,
                state_key: None,
                delete_after: false,
            },
            destinations,
            run_started_at,
            refused: Vec::new(),
        }
    }

    /// Whether this is a [`FileItem::sourceless`] item.
    pub fn is_sourceless(&self) -> bool {
        self.source.source_index == SourceFile::NONE
    }
}

impl SourceFile {
    /// The `source_index` of a [`FileItem::sourceless`] item.
    pub const NONE: usize = usize::MAX;
}

/// One destination of a [`FileItem`] that fails before any byte moves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Refused {
    /// Index into the item's destinations.
    pub index: usize,
    /// The destination path the file would have gone to.
    pub path: String,
    pub why: String,
}

/// file-collector → transfer: the JetStream message on the file queue. Small files of one run
/// travel together (ADR 005) so a batch costs one work message, one claim and one result; every
/// file in it is still its own [`FileItem`] with its own result and audit record. A file larger
/// than [`SMALL_FILE_BYTES`] always travels alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkBatch {
    /// Stable id of the batch within its run (the JetStream message id and the claim's key).
    pub batch_id: String,
    /// All of one run, stamped with its epoch; at least one.
    pub items: Vec<FileItem>,
}

/// Files up to this size may share a [`WorkBatch`].
pub const SMALL_FILE_BYTES: u64 = 1 << 20;
/// At most this many files in one batch ...
pub const BATCH_MAX_FILES: usize = 64;
/// ... and at most this many bytes.
pub const BATCH_MAX_BYTES: u64 = 8 << 20;

impl WorkBatch {
    /// The first item (every batch has one): run, task and epoch are the same for all.
    pub fn first(&self) -> &FileItem {
        &self.items[0]
    }
}

/// transfer → file-collector: the results of one [`WorkBatch`], one per item, in its order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchResult {
    pub batch_id: String,
    pub results: Vec<FileResult>,
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

/// The outcome of one [`FileItem`] (sent in a [`BatchResult`]).
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
    /// The task's process steps this file went through (empty for a task without steps, and in
    /// results of versions before steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
}

/// One process step as a run record and the audit trail show it (the transfer service makes it
/// from `ferry_processes::StepReport`; this crate does not depend on the processes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepRecord {
    /// 0-based position in the task's `[[task.steps]]`.
    pub step: usize,
    /// `zip`, `pgp-decrypt`, `command` …
    pub process: String,
    /// `per-file` or `per-task`.
    pub scope: String,
    /// The names the step was given.
    pub inputs: Vec<String>,
    pub outcome: StepOutcome,
    /// Why it failed, naming the process, the file and the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it handed on.
    pub outputs: Vec<StepOutput>,
    /// A command's captured stdout/stderr (bounded by its `capture_bytes`), a count of
    /// replacements, the signer a signature was verified against.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Succeeded,
    /// The input was bad (a corrupt archive, a wrong password): retrying cannot help.
    BadInput,
    /// A limit was reached (an archive expands too far, a line is too long).
    LimitExceeded,
    /// A command ran past its timeout.
    Timeout,
    /// The process failed otherwise (a command exited non-zero, a key is not in the ring).
    Failed,
    /// The keys or certificates could not be asked for (the cert-handler did not answer).
    KeysUnavailable,
    /// Ferry's own side failed (its disk, a cancelled step).
    Internal,
}

/// One output of a step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepOutput {
    pub name: String,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
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

/// A run's `RunFinished` carries its per-file outcomes only up to this many files; a larger run
/// is a summary, and its per-file outcomes are its batch results (stream `FERRY_RESULTS`).
pub const FILES_IN_RUN_FINISHED: usize = 1000;

/// One per run, at its end: counts, bytes and status, and — for a run of at most
/// [`FILES_IN_RUN_FINISHED`] files — every file's outcome in listing order. A larger run leaves
/// `files` empty and sets `files_in_results`: a run of any size fits one message.
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
    /// The run had more files than `files` may carry: read the per-file outcomes from its batch
    /// results (`ferry runs show RUN` does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files_in_results: bool,
    /// The run's parameters (global, task, and this run's), secure values masked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// What each next action that fired did; a failed one does not change `status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionOutcome>,
}

/// An `event` next action's message on `ferry.event.task.<task>.<name>`
/// ([`crate::subjects::task_event`]), stored in the events stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskEvent {
    pub task: String,
    /// The action's event name (the subject's last token).
    pub name: String,
    pub run_id: Uuid,
    pub node: String,
    pub status: RunStatus,
    pub files_delivered: u64,
    pub files_skipped: u64,
    pub files_failed: u64,
    pub bytes: u64,
    pub error: Option<String>,
    /// The run's parameters, secure values masked.
    pub parameters: BTreeMap<String, String>,
    pub finished_at: DateTime<Utc>,
    /// A per-file action's event: the file (its source path), its outcome and SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileEvent>,
}

/// The outcome of one next action of a run (`ferry_config::actions`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionOutcome {
    /// Index of the action in the task's `next_action` list.
    pub index: usize,
    /// `email`, `event` or `run-task`.
    pub kind: String,
    /// When it fires: `success`, `failure`, `no-files` or `always`.
    pub on: String,
    /// What it did: the recipients, the subject, the chained run.
    pub target: String,
    pub succeeded: bool,
    pub error: Option<String>,
    pub finished_at: DateTime<Utc>,
    /// A per-file action: the file it fired for (its source path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// The file a per-file event is about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEvent {
    pub source_path: String,
    pub size: u64,
    pub sha256: Option<String>,
    pub outcome: Outcome,
    pub error: Option<String>,
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
    /// Host names, as configured (empty in records of versions before remote hosts: `local`).
    #[serde(default = "local_host")]
    pub source_host: String,
    pub source_path: String,
    #[serde(default)]
    pub dest_host: Option<String>,
    pub dest_path: Option<String>,
    pub size: u64,
    pub sha256: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: Outcome,
    pub error: Option<String>,
    /// The file's process steps (see [`FileResult::steps`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
}

fn local_host() -> String {
    ferry_config::LOCAL_HOST.to_string()
}

/// The stored configuration (KV `ferry_config`, key `current`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigDocument {
    pub applied_at: DateTime<Utc>,
    /// Who applied it (`user@host`) and from which file.
    pub applied_by: String,
    pub source_name: String,
    /// Id of the keymat its secrets are sealed under (`None` in documents of older versions).
    #[serde(default)]
    pub keymat_id: Option<String>,
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

/// Claim of one work batch (KV `ferry_runs`, key [`BatchClaim::key`]). Transfer takes it
/// (create, or compare-and-swap from another instance's) before it moves a file of the batch;
/// `Done` answers every later delivery of the batch. The file-collector creates a `Done` claim
/// itself for a batch no transfer has taken when its run passes its deadline, so no transfer
/// starts it afterwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BatchClaim {
    /// Being moved by `owner`; `committing[f][i]` is the final path of file `f`'s destination
    /// `i` once the owner is about to rename into it.
    Claimed {
        owner: String,
        committing: Vec<Vec<Option<String>>>,
    },
    /// Finished; the results to report again if the batch is redelivered.
    Done { results: Vec<FileResult> },
}

impl BatchClaim {
    pub fn key(batch_id: &str) -> String {
        format!("batch.{batch_id}")
    }
}

/// The lock that keeps a task from overlapping itself (KV `ferry_runs`, key `lock.<task>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskLock {
    pub run_id: Uuid,
    pub epoch: Epoch,
}

/// Run bookkeeping (KV `ferry_runs`, key `run.<run id>`): written with the batch plan before the
/// first batch is published, and again with `published` once all are stored. A collector that
/// restarts mid-run waits for results instead of listing again; if it had stopped while
/// publishing, it fails the files of the planned batches that were never sent (with a reason)
/// and waits for the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub started_at: DateTime<Utc>,
    /// The run's batches in listing order.
    pub batches: Vec<PlannedBatch>,
    pub published: bool,
    /// Seconds after `started_at` when batches no transfer has taken are given up (the task's
    /// `max_run_secs` or the node's); `None` in a record of an older version: the node's.
    #[serde(default)]
    pub max_run_secs: Option<u64>,
}

/// A batch of the plan: its id — [`crate::plan::batch_id`] of its items' ids, so a result is
/// checked against the plan by hashing the ids it answers for — and how many items it has. About
/// 50 bytes a batch, so a run of a million files (15,625 batches) stays well within one message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedBatch {
    pub batch_id: String,
    pub items: usize,
}

impl RunRecord {
    pub fn item_count(&self) -> usize {
        self.batches.iter().map(|b| b.items).sum()
    }
}

/// The failover lease (KV `ferry_lease`, key `active`). Written only by `create` (acquire) and
/// compare-and-swap `update` (renew). The epoch is the revision of the `create`; the create itself
/// carries `epoch: 0` (its revision is not known before it is written) and every renewal carries
/// the epoch explicitly. Use [`Lease::epoch_at`] to read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    pub node: String,
    pub acquired_at: DateTime<Utc>,
    #[serde(default)]
    pub epoch: Epoch,
    /// The holder's failover mode, for `ferry failover status` on other nodes.
    #[serde(default)]
    pub mode: String,
    /// The coordinator process holding it (as in [`NodeSeen::instance`]): another process with
    /// the same node id never takes it up as its own.
    #[serde(default)]
    pub instance: String,
}

impl Lease {
    /// The epoch of this lease as stored at KV revision `revision`.
    pub fn epoch_at(&self, revision: u64) -> Epoch {
        if self.epoch == 0 { revision } else { self.epoch }
    }
}

/// A node's failover role. Persisted in the node's data dir; mirrored to KV for status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Holds (or is acquiring) the lease and runs automation.
    Active,
    /// Runs no automation; may be promoted.
    #[default]
    Standby,
    /// Never becomes active, not even after a reboot, until enabled again.
    Disabled,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
            Role::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Failover mode: who promotes a standby.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMode {
    /// An operator promotes (`ferry failover promote`), as in the reference product.
    #[default]
    Manual,
    /// A standby acquires the lease as soon as it lapses.
    Automatic,
}

impl FailoverMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMode::Manual => "manual",
            FailoverMode::Automatic => "automatic",
        }
    }
}

/// failover-coordinator → the services of its node (endpoint `lease`): may this node do
/// side-effecting work, under which epoch, and for how long. The receiver adds `valid_for_ms` to
/// the time it *sent* its request, which is no later than when the coordinator computed it, so
/// its deadline is never later than the coordinator's own fence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LeaseGrant {
    pub node: String,
    pub role: Role,
    /// The epoch of the lease this node holds (0: none).
    pub epoch: Epoch,
    /// How long from now work under `epoch` may commit (0: fenced, not active).
    pub valid_for_ms: u64,
    /// False while the node drains for a demote or shutdown: finish work in flight, take no new runs.
    pub accepting: bool,
}

/// A service → its node's coordinator (endpoint `lease`): "I am `instance` and I now hold a grant
/// for `holding` (0: none)". The coordinator releases the lease only once every service that held
/// a grant has said it holds none, or once their grants have run out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LeaseAsk {
    pub instance: String,
    pub holding: Epoch,
}

/// A node as its coordinator announces itself (KV `ferry_lease`, key `node.<id>`), re-written
/// every renewal period; the bucket's max age removes it once the coordinator stops.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSeen {
    pub node: String,
    pub role: Role,
    pub mode: FailoverMode,
    pub seen_at: DateTime<Utc>,
    /// The coordinator process that wrote it (`pid N on HOST, <nonce>`): a second process
    /// started with the same `node_id` sees another instance renewing it and refuses to start.
    #[serde(default)]
    pub instance: String,
}

/// A role change of a node: an event on `ferry.event.role.<node>` and an audit record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoleChanged {
    pub node: String,
    pub from: Role,
    pub to: Role,
    /// The epoch held after the change (0: none).
    pub epoch: Epoch,
    /// Why, in words: "promoted by operator", "lease lapsed: fenced", …
    pub reason: String,
    pub at: DateTime<Utc>,
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
    /// Remove the stored tasks and hosts this file does not mention. Without it, an apply that
    /// would remove any is refused and names them: one file with one task must not silently
    /// delete every other task.
    #[serde(default)]
    pub prune: bool,
}

/// `ferry config rollback REV`: store the configuration of an earlier revision again (as a new
/// revision), whole: tasks and hosts it does not have are removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub revision: u64,
    pub applied_by: String,
    /// Only show what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an apply adds, changes and removes, by name, and every field it changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigChanges {
    pub tasks: NameChanges,
    pub hosts: NameChanges,
    /// One entry per changed field of a task or host both configurations have.
    #[serde(default)]
    pub fields: Vec<FieldChange>,
}

/// One changed setting: `task "a"`, `destinations[0].overwrite`, `"skip"` → `"unique"`. Values
/// are JSON text; a sealed secret shows as `(secret)`, never its sealed text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FieldChange {
    pub scope: String,
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl ConfigChanges {
    /// Compare two whole configurations.
    pub fn between(before: &Config, after: &Config) -> ConfigChanges {
        let mut fields = Vec::new();
        for (kind, old, new) in [
            ("host", to_values(&before.hosts), to_values(&after.hosts)),
            ("task", to_values(&before.tasks), to_values(&after.tasks)),
        ] {
            for (name, was) in &old {
                if let Some(now) = new.get(name) {
                    diff_values(&format!("{kind} {name:?}"), "", was, now, &mut fields);
                }
            }
        }
        ConfigChanges {
            tasks: NameChanges::between(&before.tasks, &after.tasks),
            hosts: NameChanges::between(&before.hosts, &after.hosts),
            fields,
        }
    }
}

fn to_values<V: Serialize>(
    map: &std::collections::BTreeMap<String, V>,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    map.iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
        .collect()
}

/// The leaves where `before` and `after` differ, as `a.b[2].c` paths.
fn diff_values(
    scope: &str,
    at: &str,
    before: &serde_json::Value,
    after: &serde_json::Value,
    out: &mut Vec<FieldChange>,
) {
    use serde_json::Value;
    if before == after {
        return;
    }
    let key = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let null = Value::Null;
                diff_values(
                    scope,
                    &key(k),
                    a.get(k).unwrap_or(&null),
                    b.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let null = Value::Null;
                diff_values(
                    scope,
                    &format!("{at}[{i}]"),
                    a.get(i).unwrap_or(&null),
                    b.get(i).unwrap_or(&null),
                    out,
                );
            }
        }
        _ => {
            let shown = |v: &Value| match v {
                Value::Null => None,
                Value::String(s) if s.starts_with(ferry_config::SEALED_PREFIX) => {
                    Some("(secret)".to_string())
                }
                v => Some(v.to_string()),
            };
            let (was, now) = (shown(before), shown(after));
            // Two sealings of secrets are different text even for one secret; the scheduler keeps
            // the stored sealing when the secret is the same, so a difference here is a change.
            let (was, now) = match (was, now) {
                (Some(a), Some(b)) if a == b => (Some(a), Some("(another secret)".to_string())),
                pair => pair,
            };
            out.push(FieldChange {
                scope: scope.to_string(),
                field: at.to_string(),
                before: was,
                after: now,
            });
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameChanges {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl NameChanges {
    /// Compare two name-keyed maps (sorted names out).
    pub fn between<V: PartialEq>(
        before: &std::collections::BTreeMap<String, V>,
        after: &std::collections::BTreeMap<String, V>,
    ) -> NameChanges {
        let mut c = NameChanges::default();
        for (name, value) in after {
            match before.get(name) {
                None => c.added.push(name.clone()),
                Some(old) if old != value => c.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        c.removed = before
            .keys()
            .filter(|n| !after.contains_key(*n))
            .cloned()
            .collect();
        c
    }
}

/// `ferry host test`: connect to a configured host and look at a folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostTestRequest {
    pub host: String,
    /// Default: the folder of the first task source or destination on the host.
    pub folder: Option<String>,
}

/// What `ferry host test` found. Never holds a secret.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostTestReport {
    pub host: String,
    pub kind: String,
    pub folder: String,
    /// Connect, look at the folder, list it: the round trip.
    pub latency_ms: u64,
    /// Files in the folder (not recursive), when it could be listed.
    pub files: Option<usize>,
    pub server: Option<String>,
    pub host_key_sha256: Option<String>,
    pub tls_subject: Option<String>,
    pub tls_not_after: Option<String>,
    /// What the host can do (`atomic_rename`, `resume`, …).
    pub capabilities: Vec<String>,
    pub notes: Vec<String>,
    /// The exact error, when the test failed.
    pub error: Option<String>,
}

/// The public half of a node's keymat: its id and the X25519 public key secrets are sealed to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeymatInfo {
    pub key_id: String,
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyResponse {
    Applied {
        revision: u64,
        tasks: Vec<String>,
        hosts: Vec<String>,
        unchanged: bool,
        #[serde(default)]
        changes: ConfigChanges,
    },
    Valid {
        tasks: Vec<String>,
        hosts: Vec<String>,
        #[serde(default)]
        changes: ConfigChanges,
    },
    Rejected {
        errors: Vec<ferry_config::ConfigError>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunTaskRequest {
    pub task: String,
    pub by: String,
    /// Values for this run (`--param k=v`); the CLI seals those of secure parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParamValue>,
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
    pub role: Role,
    pub mode: FailoverMode,
    /// The epoch this node holds (0: none).
    pub epoch: Epoch,
    /// True while this node may do side-effecting work (holds a lease it has renewed in time).
    pub lease_valid: bool,
    pub lease_holder: Option<String>,
    /// Epoch of the lease in the bucket, whoever holds it.
    pub lease_epoch: Epoch,
    pub lease_acquired_at: Option<DateTime<Utc>>,
    /// Seconds since the holder acquired the lease.
    pub lease_age_secs: Option<f64>,
    /// When this node last renewed its lease (only on the holder).
    pub last_renewal: Option<DateTime<Utc>>,
    pub lease_ttl_ms: u64,
    /// The scheduler on this node: "running", "stopped", or "unreachable".
    pub scheduler: String,
    /// Other nodes seen in the last minutes, with their roles.
    pub other_nodes: Vec<NodeSeen>,
}

/// `ferry failover promote`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PromoteRequest {
    /// Wait for a live lease held by another node to lapse instead of refusing.
    pub after_expiry: bool,
    /// How long to wait with `after_expiry`.
    pub wait_ms: u64,
    pub by: String,
    /// File-based replication: promote without importing the newest bundle of the import
    /// folder first.
    #[serde(default)]
    pub skip_import: bool,
}

/// `ferry failover demote|disable|enable` and `ferry shutdown`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RoleRequest {
    /// How long work in flight may take to finish before the lease is released anyway.
    pub drain_timeout_ms: u64,
    pub by: String,
    /// `shutdown` only: also disable the node (recorded, so it stays disabled after a restart).
    #[serde(default)]
    pub disable: bool,
}

/// Error reply of any API endpoint (also sent as the NATS service error header).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
