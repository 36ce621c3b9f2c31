//! Every NATS subject Ferry publishes or subscribes to.
//!
//! Task and node names are validated (`ferry_config::is_valid_name`) before they reach a subject,
//! so each is exactly one subject token.

use uuid::Uuid;

/// Run requests: `ferry.work.run.<task>` (stream [`crate::topology::STREAM_RUNQ`]).
pub fn run_request(task: &str) -> String {
    format!("ferry.work.run.{task}")
}
pub const RUN_REQUESTS: &str = "ferry.work.run.*";

/// Work batches ([`crate::WorkBatch`]) of one run, one subject each:
/// `ferry.work.file.<run_id>.<batch_id>` (stream [`crate::topology::STREAM_FILEQ`]). A batch's own
/// subject lets a resumed collector ask the stream whether that batch is waiting.
pub fn file_batch(run_id: Uuid, batch_id: &str) -> String {
    format!("ferry.work.file.{run_id}.{batch_id}")
}
pub const FILE_BATCHES: &str = "ferry.work.file.*.*";

/// Batch results ([`crate::BatchResult`]): `ferry.work.result.<run_id>.<batch_id>`
/// (stream [`crate::topology::STREAM_RESULTS`]).
pub fn batch_result(run_id: Uuid, batch_id: &str) -> String {
    format!("ferry.work.result.{run_id}.{batch_id}")
}
/// Every batch result of one run.
pub fn run_results(run_id: Uuid) -> String {
    format!("ferry.work.result.{run_id}.*")
}
pub const BATCH_RESULTS: &str = "ferry.work.result.*.*";

/// Run lifecycle events (stream [`crate::topology::STREAM_EVENTS`]).
pub fn run_started(task: &str, run_id: Uuid) -> String {
    format!("ferry.event.run.started.{task}.{run_id}")
}
pub fn run_finished(task: &str, run_id: Uuid) -> String {
    format!("ferry.event.run.finished.{task}.{run_id}")
}
/// Filter for finished runs, of one task or all.
pub fn run_finished_filter(task: Option<&str>) -> String {
    match task {
        Some(task) => format!("ferry.event.run.finished.{task}.*"),
        None => "ferry.event.run.finished.*.*".to_string(),
    }
}
/// Filter for the finished event of one run whose task is not known.
pub fn run_finished_by_id(run_id: Uuid) -> String {
    format!("ferry.event.run.finished.*.{run_id}")
}
/// A task's `event` next action: `ferry.event.task.<task>.<name>` (a [`crate::TaskEvent`]).
pub fn task_event(task: &str, name: &str) -> String {
    format!("ferry.event.task.{task}.{name}")
}
/// Every task event, of one task or all.
pub fn task_event_filter(task: Option<&str>) -> String {
    format!("ferry.event.task.{}.*", task.unwrap_or("*"))
}
/// Role changes of a node: `ferry.event.role.<node>`.
pub fn role_changed(node: &str) -> String {
    format!("ferry.event.role.{node}")
}
pub const EVENTS: &str = "ferry.event.>";

/// Core NATS (not stored): the coordinator of `node` tells its services that the lease changed
/// (they then ask for a fresh [`crate::LeaseGrant`]; a revocation applies at once).
pub fn node_lease(node: &str) -> String {
    format!("ferry.node.{node}.lease")
}
/// Core NATS: every service of `node` stops (`ferry shutdown`, after the drain).
pub fn node_stop(node: &str) -> String {
    format!("ferry.node.{node}.stop")
}

/// Audit trail of file movements: `ferry.audit.file.<task>` (stream [`crate::topology::STREAM_AUDIT`]).
pub fn audit_file(task: &str) -> String {
    format!("ferry.audit.file.{task}")
}
/// Audit trail of role changes: `ferry.audit.role.<node>`.
pub fn audit_role(node: &str) -> String {
    format!("ferry.audit.role.{node}")
}
/// File movements of one task, or of all.
pub fn audit_filter(task: Option<&str>) -> String {
    match task {
        Some(task) => audit_file(task),
        None => audit_file("*"),
    }
}
pub const AUDIT: &str = "ferry.audit.>";
/// JetStream's advisory that `consumer` of `stream` gave up on a message after its maximum
/// deliveries.
pub fn max_deliveries_advisory(stream: &str, consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}")
}
/// The audit trail's seals (stream [`crate::topology::STREAM_AUDIT_SEALS`], [`crate::seal`]).
pub const AUDIT_SEAL: &str = "ferry.seal.audit";

/// NATS-event trigger of a task: any publish on `ferry.trigger.<task>` starts a run.
pub fn trigger(task: &str) -> String {
    format!("ferry.trigger.{task}")
}
pub const TRIGGERS: &str = "ferry.trigger.*";
/// The task name in a trigger subject.
pub fn task_of_trigger(subject: &str) -> Option<&str> {
    subject.strip_prefix("ferry.trigger.")
}

/// Request/reply API of one service on one node: `ferry.api.<node>.<service>` is the
/// NATS micro-service group; endpoints are the constants in [`api`].
pub fn api_group(node: &str, service: &str) -> String {
    format!("ferry.api.{node}.{service}")
}
pub fn api(node: &str, service: &str, endpoint: &str) -> String {
    format!("{}.{endpoint}", api_group(node, service))
}

/// Service names (also the NATS micro-service names, prefixed with `ferry-`).
pub mod service {
    pub const SCHEDULER: &str = "scheduler";
    pub const FILE_COLLECTOR: &str = "file-collector";
    pub const TRANSFER: &str = "transfer";
    pub const CERT_HANDLER: &str = "cert-handler";
    pub const FAILOVER_COORDINATOR: &str = "failover-coordinator";
}

/// Endpoint names of the request/reply API.
pub mod api {
    /// scheduler: validate and store a configuration ([`crate::ApplyRequest`]).
    pub const APPLY: &str = "apply";
    /// scheduler: store an earlier revision again ([`crate::RollbackRequest`]).
    pub const ROLLBACK: &str = "rollback";
    /// scheduler: start a run now ([`crate::RunTaskRequest`]).
    pub const RUN: &str = "run";
    /// scheduler: start / stop firing schedules on this node.
    pub const START: &str = "start";
    pub const STOP: &str = "stop";
    /// any service: its status document.
    pub const STATUS: &str = "status";
    /// scheduler: the public half of the node's keymat ([`crate::KeymatInfo`]), which
    /// `ferry apply` seals secrets to.
    pub const KEYMAT: &str = "keymat";
    /// transfer: connect to a configured host and report ([`crate::HostTestRequest`]).
    pub const HOST_TEST: &str = "host_test";
    /// failover-coordinator: the node's [`crate::LeaseGrant`], asked by its own services.
    pub const LEASE: &str = "lease";
    /// failover-coordinator: role changes ([`crate::PromoteRequest`], [`crate::RoleRequest`]).
    pub const PROMOTE: &str = "promote";
    pub const DEMOTE: &str = "demote";
    pub const DISABLE: &str = "disable";
    pub const ENABLE: &str = "enable";
    /// failover-coordinator: "Shut Down Service": drain, release the lease, stop the node.
    pub const SHUTDOWN: &str = "shutdown";
    /// failover-coordinator: mirror mode ([`crate::standby`]): make this node's stores mirrors
    /// of a primary's, make them its own again, and how far behind they are.
    pub const STANDBY_ATTACH: &str = "standby_attach";
    pub const STANDBY_DETACH: &str = "standby_detach";
    pub const STANDBY_STATUS: &str = "standby_status";
}
