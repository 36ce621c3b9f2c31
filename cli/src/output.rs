//! Human and JSON rendering of command results. JSON goes to stdout, one document per command.

use chrono::{DateTime, Local, Utc};
use serde::Serialize;
use uuid::Uuid;

use ferry_config::{ConfigError, Task};
use ferry_wire::{
    ApplyResponse, AuditRecord, ConfigDocument, FailoverStatus, Outcome, RoleChanged, RunFinished,
    SchedulerStatus,
};

fn json<T: Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("output types serialize")
    );
}

/// Text from the store as the terminal gets it (see [`ferry_hosts::path::printable`]).
fn shown(text: &str) -> String {
    ferry_hosts::path::printable(text)
}

fn local(t: &DateTime<Utc>) -> String {
    t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Delivered => "delivered",
        Outcome::Skipped => "skipped",
        Outcome::Failed => "FAILED",
    }
}

pub fn rejected(as_json: bool, file: &str, errors: &[ConfigError]) {
    applied(
        as_json,
        file,
        &ApplyResponse::Rejected {
            errors: errors.to_vec(),
        },
    );
}

pub fn applied(as_json: bool, file: &str, response: &ApplyResponse) {
    if as_json {
        return json(response);
    }
    match response {
        ApplyResponse::Applied {
            revision,
            tasks,
            hosts,
            unchanged,
            changes,
        } => {
            if *unchanged {
                println!("{file}: unchanged (revision {revision})");
            } else {
                println!(
                    "{file}: applied as revision {revision}: {} task(s), {} host(s)",
                    tasks.len(),
                    hosts.len()
                );
                config_changes(changes);
            }
        }
        ApplyResponse::Valid {
            tasks,
            hosts,
            changes,
        } => {
            println!(
                "{file}: valid: {} task(s), {} host(s); nothing changed (--dry-run); applying it would:",
                tasks.len(),
                hosts.len()
            );
            config_changes(changes);
        }
        ApplyResponse::Rejected { errors } => {
            eprint!("{file}: {}", ferry_config::ConfigErrors(errors.clone()));
        }
    }
}

/// `+ task a`, `~ host b` (with a line per changed field), `- task c`: one line per name an
/// apply adds, changes or removes. Returns whether there was any.
fn config_changes(changes: &ferry_wire::ConfigChanges) -> bool {
    let mut any = false;
    for (kind, c) in [("host", &changes.hosts), ("task", &changes.tasks)] {
        for (mark, names) in [("+", &c.added), ("~", &c.changed), ("-", &c.removed)] {
            for name in names {
                println!("  {mark} {kind} {}", shown(name));
                any = true;
                if mark != "~" {
                    continue;
                }
                let scope = format!("{kind} {name:?}");
                for f in changes.fields.iter().filter(|f| f.scope == scope) {
                    let value = |v: &Option<String>| v.as_deref().map_or("(unset)".to_string(), shown);
                    println!(
                        "      {}: {} -> {}",
                        shown(&f.field),
                        value(&f.before),
                        value(&f.after)
                    );
                }
            }
        }
    }
    if !any {
        println!("  (no task or host changes)");
    }
    any
}

/// `ferry config diff`: what the file changes; true when nothing.
pub fn config_diff(as_json: bool, file: &str, response: &ApplyResponse) -> bool {
    let changes = match response {
        ApplyResponse::Valid { changes, .. } | ApplyResponse::Applied { changes, .. } => changes,
        ApplyResponse::Rejected { errors } => {
            if as_json {
                json(response);
            } else {
                eprint!("{file}: {}", ferry_config::ConfigErrors(errors.clone()));
            }
            return false;
        }
    };
    if as_json {
        json(changes);
        return changes == &ferry_wire::ConfigChanges::default();
    }
    println!("{file} against the stored configuration:");
    let any = config_changes(changes);
    if !changes.tasks.removed.is_empty() || !changes.hosts.removed.is_empty() {
        println!("  (`ferry apply` removes what this file leaves out only with --prune)");
    }
    !any
}

pub fn audit_verdict(as_json: bool, v: &ferry_wire::seal::Verdict) {
    if as_json {
        return json(v);
    }
    match &v.broken {
        Some(why) => println!("audit trail BROKEN: {why}"),
        None => println!(
            "audit trail intact: {} record(s) checked against {} seal(s); {} newer record(s) not sealed yet",
            v.records, v.seals, v.unsealed
        ),
    }
    if let Some(head) = &v.head {
        println!("head of the chain: {head}");
    }
}

/// One row of `ferry config history`.
#[derive(Serialize)]
pub struct ConfigRevision {
    pub revision: u64,
    pub stored_at: DateTime<Utc>,
    pub applied_by: Option<String>,
    pub source_name: Option<String>,
    pub tasks: usize,
    pub hosts: usize,
    /// Against the revision before it (`None`: a deletion).
    pub changes: Option<ferry_wire::ConfigChanges>,
}

pub fn config_history(as_json: bool, revisions: &[ConfigRevision]) {
    if as_json {
        return json(revisions);
    }
    if revisions.is_empty() {
        println!("no configuration stored");
    }
    for r in revisions {
        let (Some(by), Some(source), Some(changes)) = (&r.applied_by, &r.source_name, &r.changes) else {
            println!("revision {:<5} {}  (deleted)", r.revision, local(&r.stored_at));
            continue;
        };
        println!(
            "revision {:<5} {}  by {}  from {}: {} task(s), {} host(s)",
            r.revision,
            local(&r.stored_at),
            shown(by),
            shown(source),
            r.tasks,
            r.hosts
        );
        config_changes(changes);
    }
}

pub fn tasks(as_json: bool, doc: Option<&ConfigDocument>, status: Option<&SchedulerStatus>) {
    #[derive(Serialize)]
    struct Row<'a> {
        name: &'a str,
        enabled: bool,
        schedules: Vec<String>,
        next_run: Option<DateTime<Utc>>,
        sources: usize,
        destinations: usize,
    }
    let rows: Vec<Row> = doc
        .map(|d| {
            d.config
                .tasks
                .values()
                .map(|t| Row {
                    name: &t.name,
                    enabled: t.enabled,
                    schedules: t.compiled_schedules().iter().map(|s| s.describe()).collect(),
                    next_run: status
                        .and_then(|s| s.tasks.iter().find(|x| x.task == t.name))
                        .and_then(|x| x.next_fire),
                    sources: t.sources.len(),
                    destinations: t.destinations.len(),
                })
                .collect()
        })
        .unwrap_or_default();
    if as_json {
        return json(&rows);
    }
    if rows.is_empty() {
        println!("no tasks (apply a configuration with `ferry apply -f FILE`)");
        return;
    }
    println!("{:<24} {:<8} {:<20} SCHEDULE", "TASK", "ENABLED", "NEXT RUN");
    for r in rows {
        let next = r.next_run.map(|t| local(&t)).unwrap_or_else(|| "-".into());
        let schedule = if r.schedules.is_empty() {
            "manual".to_string()
        } else {
            r.schedules.join("; ")
        };
        println!(
            "{:<24} {:<8} {:<20} {}",
            r.name,
            if r.enabled { "yes" } else { "no" },
            next,
            schedule
        );
    }
}

pub fn task(as_json: bool, task: &Task) {
    if as_json {
        return json(task);
    }
    println!(
        "task {}{}",
        task.name,
        if task.enabled { "" } else { " (disabled)" }
    );
    if !task.description.is_empty() {
        println!("  {}", task.description);
    }
    for (i, s) in task.sources.iter().enumerate() {
        println!(
            "  source[{i}]      {}:{}  masks {:?}{}{}{}{}",
            s.host,
            s.folder,
            s.masks.as_str(),
            s.exclude
                .as_ref()
                .map(|x| format!(" exclude {:?}", x.as_str()))
                .unwrap_or_default(),
            if s.subdirectories { " +subdirectories" } else { "" },
            if s.new_files_only { " new-files-only" } else { "" },
            if s.delete_after { " delete-after" } else { "" },
        );
    }
    for (i, d) in task.destinations.iter().enumerate() {
        println!(
            "  destination[{i}] {}:{}/{}  overwrite={:?}{}{}",
            d.host,
            d.folder.as_str(),
            d.file_name.as_str(),
            d.overwrite,
            if d.relative_subdirs {
                " +relative-subdirs"
            } else {
                ""
            },
            d.mode.map(|m| format!(" mode={m:04o}")).unwrap_or_default(),
        );
    }
    for s in task.compiled_schedules() {
        println!("  schedule       {}", s.describe());
    }
    if task.retries.is_some() || task.retry_wait_secs.is_some() {
        let or_hosts = |v: Option<String>| v.unwrap_or_else(|| "the hosts'".into());
        println!(
            "  retries        {} (first wait {} s, doubling)",
            or_hosts(task.retries.map(|n| n.to_string())),
            or_hosts(task.retry_wait_secs.map(|n| n.to_string())),
        );
    }
    if let Some(secs) = task.max_run_secs {
        println!("  max run        {secs} s (then files not yet started are given up)");
    }
    for (name, value) in &task.parameters {
        println!("  parameter      {name} = {:?}", value.shown());
    }
    for (i, next) in task.next_actions.iter().enumerate() {
        use ferry_config::actions::Action;
        let what = match &next.action {
            Action::Email(e) => format!(
                "email to {} via {}:{} ({:?}) subject {:?}",
                e.to.join(", "),
                e.host,
                e.port,
                e.tls,
                e.subject.as_str()
            ),
            Action::Event(e) => format!("event ferry.event.task.{}.{}", task.name, e.name),
            Action::RunTask(r) => format!("run task {}", r.task),
        };
        let per_file = if next.per_file { " (per file)" } else { "" };
        println!("  next_action[{i}] on {}{per_file}: {what}", next.on.as_str());
    }
}

pub fn run_requested(as_json: bool, task: &str, run_id: Uuid) {
    if as_json {
        return json(&serde_json::json!({ "task": task, "run_id": run_id }));
    }
    println!("run {run_id} of task {task} requested (follow it with `ferry runs show {run_id}`)");
}

fn status_word(run: &RunFinished) -> String {
    format!("{:?}", run.status).to_lowercase()
}

pub fn runs(as_json: bool, runs: &[RunFinished]) {
    if as_json {
        #[derive(Serialize)]
        struct Summary<'a> {
            #[serde(flatten)]
            run: &'a RunFinished,
        }
        // Lists carry summaries without per-file detail; `ferry runs show` has the files.
        let summaries: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(Summary { run: r }).expect("serializes");
                v.as_object_mut().expect("object").remove("files");
                v
            })
            .collect();
        return json(&summaries);
    }
    if runs.is_empty() {
        println!("no finished runs");
        return;
    }
    println!(
        "{:<36} {:<20} {:<19} {:<9} {:>5} {:>5} {:>5}",
        "RUN", "TASK", "FINISHED", "STATUS", "OK", "SKIP", "FAIL"
    );
    for r in runs {
        println!(
            "{:<36} {:<20} {:<19} {:<9} {:>5} {:>5} {:>5}",
            r.run_id,
            r.task,
            local(&r.finished_at),
            status_word(r),
            r.files_delivered,
            r.files_skipped,
            r.files_failed
        );
    }
}

pub fn run(as_json: bool, run: &RunFinished, with_files: bool) {
    if as_json {
        return json(run);
    }
    println!(
        "run {} of task {}: {} ({} delivered, {} skipped, {} failed, {} bytes) on node {} epoch {}",
        run.run_id,
        run.task,
        status_word(run),
        run.files_delivered,
        run.files_skipped,
        run.files_failed,
        run.bytes,
        run.node,
        run.epoch
    );
    println!(
        "  started {}  finished {}",
        local(&run.started_at),
        local(&run.finished_at)
    );
    if let Some(e) = &run.error {
        println!("  error: {e}");
    }
    for (name, value) in &run.parameters {
        println!("  parameter {name} = {value:?}");
    }
    for a in &run.actions {
        println!(
            "  next action [{}] {} (on {}): {} {}{}",
            a.index,
            a.kind,
            a.on,
            if a.succeeded { "done" } else { "FAILED" },
            a.target,
            a.error.as_ref().map(|e| format!("  ({e})")).unwrap_or_default()
        );
    }
    let failed_only = !with_files;
    for f in run
        .files
        .iter()
        .filter(|f| !failed_only || f.outcome == Outcome::Failed)
    {
        let dest = f
            .destinations
            .iter()
            .map(|d| shown(&d.path))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "  {:<9} {} -> {}{}",
            outcome(f.outcome),
            shown(&f.source_path),
            dest,
            f.error
                .as_ref()
                .map(|e| format!("  ({})", shown(e)))
                .unwrap_or_default()
        );
        for step in &f.steps {
            step_lines(step);
        }
    }
}

/// One process step of a file: `step 1 checksum (per-file) succeeded 12 ms -> a.csv sha256=…`,
/// its error, and its captured output indented beneath.
fn step_lines(step: &ferry_wire::StepRecord) {
    let outputs = step
        .outputs
        .iter()
        .map(|o| format!("{} ({} bytes, sha256={})", shown(&o.name), o.bytes, o.sha256))
        .collect::<Vec<_>>()
        .join(", ");
    let outcome = serde_json::to_value(step.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    println!(
        "      step {} {} ({}) {} {} ms{}",
        step.step,
        step.process,
        step.scope,
        outcome.replace('_', " "),
        step.elapsed_ms,
        if outputs.is_empty() {
            String::new()
        } else {
            format!(" -> {outputs}")
        }
    );
    if let Some(e) = &step.error {
        println!("        error: {}", shown(e));
    }
    for line in step.log.lines() {
        println!("        | {}", shown(line));
    }
}

pub fn audit(as_json: bool, records: &[AuditRecord]) {
    if as_json {
        return json(records);
    }
    if records.is_empty() {
        println!("no audit records");
        return;
    }
    for r in records {
        println!(
            "{} {:<9} {:<13} task={} run={} node={} epoch={} {}:{} -> {} size={} sha256={}{}",
            local(&r.finished_at),
            outcome(r.outcome),
            r.action,
            r.task,
            r.run_id,
            r.node,
            r.epoch,
            r.source_host,
            shown(&r.source_path),
            match (&r.dest_host, &r.dest_path) {
                (Some(h), Some(p)) => format!("{h}:{}", shown(p)),
                (None, Some(p)) => shown(p),
                _ => "-".to_string(),
            },
            r.size,
            r.sha256.as_deref().unwrap_or("-"),
            r.error
                .as_ref()
                .map(|e| format!(" error={e:?}"))
                .unwrap_or_default()
        );
    }
}

pub fn scheduler_status(as_json: bool, s: &SchedulerStatus) {
    if as_json {
        return json(s);
    }
    println!(
        "scheduler on node {}: {} (epoch {})",
        s.node,
        if s.enabled { "running" } else { "stopped" },
        s.epoch
    );
    for t in &s.tasks {
        println!(
            "  {:<24} next {}",
            t.task,
            t.next_fire.map(|t| local(&t)).unwrap_or_else(|| "-".into())
        );
    }
}

pub fn failover_status(as_json: bool, s: &FailoverStatus) {
    if as_json {
        return json(s);
    }
    let row = |label: &str, value: String| println!("{:<14}{value}", format!("{label}:"));
    let lease = if s.lease_valid {
        "holds the lease, renewed in time"
    } else if s.epoch > 0 {
        "FENCED: holds a lease it did not renew in time"
    } else {
        "does not hold the lease"
    };
    row("node", s.node.clone());
    row("role", s.role.to_string());
    row("mode", s.mode.as_str().to_string());
    row("epoch", s.epoch.to_string());
    row("this node", lease.to_string());
    match &s.lease_holder {
        Some(holder) => {
            row("lease holder", format!("{holder} (epoch {})", s.lease_epoch));
            if let (Some(t), Some(age)) = (s.lease_acquired_at, s.lease_age_secs) {
                row("lease age", format!("{age:.1} s (acquired {})", local(&t)));
            }
        }
        None => row("lease holder", "none (lapsed or released)".into()),
    }
    row(
        "last renewal",
        s.last_renewal.map(|t| local(&t)).unwrap_or_else(|| "-".into()),
    );
    row("lease TTL", format!("{:.1} s", s.lease_ttl_ms as f64 / 1000.0));
    row("scheduler", s.scheduler.clone());
    if s.other_nodes.is_empty() {
        row("other nodes", "none seen".into());
    }
    for n in &s.other_nodes {
        row(
            "other node",
            format!(
                "{} {} ({} mode, seen {})",
                n.node,
                n.role,
                n.mode.as_str(),
                local(&n.seen_at)
            ),
        );
    }
}

pub fn role_history(as_json: bool, changes: &[RoleChanged]) {
    if as_json {
        return json(&changes);
    }
    if changes.is_empty() {
        println!("no role changes recorded");
    }
    for c in changes {
        println!(
            "{}  {:<12} {:>8} -> {:<8} epoch {:<6} {}",
            local(&c.at),
            c.node,
            c.from.as_str(),
            c.to.as_str(),
            c.epoch,
            c.reason
        );
    }
}

pub fn host_test(as_json: bool, r: &ferry_wire::HostTestReport) {
    if as_json {
        return json(r);
    }
    match &r.error {
        None => println!(
            "host {} ({}): OK in {} ms, folder {:?} has {} file(s)",
            r.host,
            r.kind,
            r.latency_ms,
            r.folder,
            r.files.map_or_else(|| "?".to_string(), |n| n.to_string())
        ),
        Some(e) => println!(
            "host {} ({}): FAILED after {} ms: {e}",
            r.host, r.kind, r.latency_ms
        ),
    }
    let show = |label: &str, v: &Option<String>| {
        if let Some(v) = v {
            println!("  {label:<16} {v}");
        }
    };
    show("server", &r.server);
    show("host key", &r.host_key_sha256);
    show("TLS certificate", &r.tls_subject);
    show("TLS expires", &r.tls_not_after);
    if !r.capabilities.is_empty() {
        println!("  {:<16} {}", "capabilities", r.capabilities.join(", "));
    }
    for n in &r.notes {
        println!("  {n}");
    }
}
