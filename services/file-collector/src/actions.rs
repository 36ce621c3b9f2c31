//! Next actions: what a task does once a run's outcome is known (`ferry_config::actions`) —
//! send an email, publish a task event, start another task.
//!
//! They run here because the file-collector owns runs (ADR 003) and only an active node's
//! collector takes run requests, so they run on the active node only.
//!
//! Invariants:
//! - an action never changes its run's status; its outcome goes into the run's `RunFinished`
//!   (`actions`) and the audit trail (`action` = `next_action:<kind>`);
//! - each action of a run is attempted at most once: it is claimed in `ferry_runs`
//!   (`action.<run id>.<index>`, created) before it starts and its outcome stored there after, so
//!   a run resumed after a restart reports the stored outcome instead of mailing twice;
//! - a chained run is requested with message id `chain:<run id>:<index>` (a repeat is dropped by
//!   the run queue) and waits for its task if that is running (see `Collector::execute`);
//! - secure parameters are opened only to expand macros; what is recorded, published and logged
//!   shows them as `ferry_config::params::MASK`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, kv, message::PublishMessage};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use ferry_config::actions::{Action, Email, NextAction, SmtpTls};
use ferry_config::params::{self, ParamValue};
use ferry_config::{Config, MacroContext, Task};
use ferry_wire::{
    ActionOutcome, AuditRecord, FileEvent, FileResult, Outcome, RunRequested, RunStatus, TaskEvent, Trigger,
    subjects,
};

/// How a run ended, as next actions see it.
pub(crate) struct RunEnd<'a> {
    pub status: RunStatus,
    pub error: Option<&'a str>,
    pub delivered: u64,
    pub skipped: u64,
    pub failed: u64,
    pub bytes: u64,
    pub started_at: DateTime<Utc>,
}

impl RunEnd<'_> {
    fn failed(&self) -> bool {
        self.status == RunStatus::Failed
    }

    fn files(&self) -> u64 {
        self.delivered + self.skipped + self.failed
    }

    /// `[ErrorCode]`: 0 the run succeeded, 1 files failed, 2 the task could not run at all (no
    /// file was tried: a missing folder, an unreachable host).
    fn error_code(&self) -> u32 {
        match (self.failed(), self.failed > 0) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => 2,
        }
    }

    /// `[ErrorDescription]`: the run's error, or how many files failed.
    fn error_description(&self) -> String {
        match (self.failed(), self.error) {
            (false, _) => String::new(),
            (true, Some(e)) => e.to_string(),
            (true, None) => format!("{} file(s) failed", self.failed),
        }
    }
}

/// What the next actions leave for the run's record.
#[derive(Default)]
pub(crate) struct Report {
    /// The run's parameters, secure values masked.
    pub parameters: BTreeMap<String, String>,
    pub actions: Vec<ActionOutcome>,
}

/// What the actions of a run need from the collector.
pub(crate) struct Actions<'a> {
    pub js: &'a jetstream::Context,
    pub runs_kv: &'a kv::Store,
    pub keymat: &'a ferry_keymat::KeymatStore,
    pub node: &'a str,
}

impl Actions<'_> {
    /// Run the next actions of `request`'s task that fire for `end`. A skipped run fires none.
    pub async fn run(&self, config: Option<&Config>, request: &RunRequested, end: &RunEnd<'_>) -> Report {
        let Some(config) = config else {
            return Report::default();
        };
        let Some(task) = config.tasks.get(&request.task) else {
            return Report::default();
        };
        let effective = params::effective(&config.parameters, &task.parameters, &request.parameters);
        let mut report = Report {
            parameters: params::shown(&effective),
            actions: Vec::new(),
        };
        if end.status == RunStatus::Skipped {
            return report;
        }
        let firing: Vec<(usize, &NextAction)> = task
            .next_actions
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.per_file && n.on.fires(end.failed(), end.files()))
            .collect();
        if firing.is_empty() {
            return report;
        }
        let values = self.opened(task, &effective);
        let description = end.error_description();
        let run_id = request.run_id.to_string();
        let macros = MacroContext {
            orig_name: "",
            task: &task.name,
            run_id: &run_id,
            time: end.started_at.with_timezone(&chrono::Local),
            params: &values,
            error: end.failed().then_some((end.error_code(), description.as_str())),
        };
        for (index, next) in firing {
            let outcome = self
                .once(
                    task,
                    request,
                    end,
                    (index, next),
                    None,
                    &macros,
                    &report.parameters,
                    config,
                )
                .await;
            if outcome.succeeded {
                tracing::info!(task = %task.name, run_id = %request.run_id, action = index, kind = %outcome.kind, target = %outcome.target, "next action done");
            } else {
                tracing::warn!(task = %task.name, run_id = %request.run_id, action = index, kind = %outcome.kind, target = %outcome.target, error = outcome.error.as_deref().unwrap_or(""), "next action failed");
            }
            report.actions.push(outcome);
        }
        report
    }

    /// The run's parameter values for macros: secure ones opened here (one that cannot be
    /// opened is left out, and an action using it fails naming it).
    fn opened(&self, task: &Task, effective: &[params::Effective<'_>]) -> BTreeMap<String, String> {
        let mut values = BTreeMap::new();
        let keymat = self.keymat.current();
        for e in effective {
            match e.value {
                ParamValue::Plain(v) => {
                    values.insert(e.name.to_string(), v.clone());
                }
                ParamValue::Secure(secret) => match &keymat {
                    Ok(k) => match k.open(&e.binding(&task.name), secret) {
                        Ok(plain) => {
                            values.insert(e.name.to_string(), plain.to_string());
                        }
                        Err(err) => {
                            tracing::warn!(task = %task.name, parameter = e.name, error = %err, "secure parameter cannot be opened")
                        }
                    },
                    Err(err) => tracing::warn!(task = %task.name, error = %err, "keymat cannot be read"),
                },
            }
        }
        values
    }

    /// The per-file next actions (`per_file = true`) of `request`'s task for the `files` of one
    /// batch result, as it comes in: `success` for a delivered file, `failure` for a failed one,
    /// `always` for either (a skipped file fires none), `[OrigName]` the file's name. Each is
    /// claimed per file, like a run's actions, so a resumed run does not fire it twice.
    pub async fn per_file(
        &self,
        config: Option<&Config>,
        request: &RunRequested,
        files: &[FileResult],
    ) -> Vec<ActionOutcome> {
        let Some(task) = config.and_then(|c| c.tasks.get(&request.task)) else {
            return Vec::new();
        };
        let config = config.expect("a task came from it");
        let actions: Vec<(usize, &NextAction)> = task
            .next_actions
            .iter()
            .enumerate()
            .filter(|(_, n)| n.per_file)
            .collect();
        if actions.is_empty() {
            return Vec::new();
        }
        let effective = params::effective(&config.parameters, &task.parameters, &request.parameters);
        let shown = params::shown(&effective);
        let values = self.opened(task, &effective);
        let run_id = request.run_id.to_string();
        let mut out = Vec::new();
        for file in files {
            let failed = match file.outcome {
                Outcome::Delivered => false,
                Outcome::Failed => true,
                _ => continue,
            };
            let end = RunEnd {
                status: if failed {
                    RunStatus::Failed
                } else {
                    RunStatus::Succeeded
                },
                error: file.error.as_deref(),
                delivered: u64::from(!failed),
                skipped: 0,
                failed: u64::from(failed),
                bytes: if failed { 0 } else { file.size },
                started_at: file.started_at,
            };
            let name = file.source_path.rsplit(['/', '\\']).next().unwrap_or_default();
            let description = end.error_description();
            let macros = MacroContext {
                orig_name: name,
                task: &task.name,
                run_id: &run_id,
                time: file.started_at.with_timezone(&chrono::Local),
                params: &values,
                error: failed.then_some((end.error_code(), description.as_str())),
            };
            for &(index, next) in &actions {
                if !next.on.fires(failed, 1) {
                    continue;
                }
                let outcome = self
                    .once(
                        task,
                        request,
                        &end,
                        (index, next),
                        Some(file),
                        &macros,
                        &shown,
                        config,
                    )
                    .await;
                if !outcome.succeeded {
                    tracing::warn!(task = %task.name, run_id = %request.run_id, action = index, kind = %outcome.kind, file = %file.source_path, error = outcome.error.as_deref().unwrap_or(""), "per-file next action failed");
                }
                out.push(outcome);
            }
        }
        out
    }

    /// Claim, carry out and record action `index` (for `file`, a per-file action), or report
    /// what an earlier attempt stored.
    #[allow(clippy::too_many_arguments)]
    async fn once(
        &self,
        task: &Task,
        request: &RunRequested,
        end: &RunEnd<'_>,
        (index, next): (usize, &NextAction),
        file: Option<&FileResult>,
        macros: &MacroContext<'_>,
        shown: &BTreeMap<String, String>,
        config: &Config,
    ) -> ActionOutcome {
        // A per-file action's claim, message ids and audit record carry the file's item.
        let suffix = file
            .map(|f| format!(".{}", item_digest(&f.item_id)))
            .unwrap_or_default();
        let key = format!("action.{}.{index}{suffix}", request.run_id);
        let started_at = Utc::now();
        let outcome = |target: String, result: Result<String, String>| {
            let (target, error) = match result {
                Ok(done) => (if done.is_empty() { target } else { done }, None),
                Err(e) => (target, Some(e)),
            };
            ActionOutcome {
                index,
                kind: next.action.kind().to_string(),
                on: next.on.as_str().to_string(),
                target,
                succeeded: error.is_none(),
                error,
                finished_at: Utc::now(),
                file: file.map(|f| f.source_path.clone()),
            }
        };
        let target = describe(task, &next.action);
        match self.runs_kv.create(&key, "started".into()).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                // Attempted before a restart: report what it stored, never run it twice.
                let stored = self.runs_kv.get(&key).await.ok().flatten();
                return match stored.and_then(|b| ferry_wire::decode::<ActionOutcome>(&b).ok()) {
                    Some(o) => o,
                    None => outcome(
                        target,
                        Err("was started before the file-collector restarted; its outcome is unknown, so it was not run again".into()),
                    ),
                };
            }
            Err(e) => return outcome(target, Err(format!("cannot claim the action in ferry_runs: {e}"))),
        }
        let result = match &next.action {
            Action::Email(email) => send_email(task, index, email, macros, self.keymat).await,
            Action::Event(event) => {
                self.publish_event(request, end, &event.name, shown, file, &suffix)
                    .await
            }
            Action::RunTask(run) => {
                let id = format!("{index}{suffix}");
                self.chain(request, &id, &run.task, &run.parameters, macros, config)
                    .await
            }
        };
        let outcome = outcome(target, result);
        if let Err(e) = self.runs_kv.put(&key, ferry_wire::encode(&outcome)).await {
            tracing::warn!(run_id = %request.run_id, action = index, error = %e, "cannot store a next action's outcome");
        }
        self.audit(request, started_at, &outcome, &suffix).await;
        outcome
    }

    async fn publish_event(
        &self,
        request: &RunRequested,
        end: &RunEnd<'_>,
        name: &str,
        shown: &BTreeMap<String, String>,
        file: Option<&FileResult>,
        suffix: &str,
    ) -> Result<String, String> {
        let event = TaskEvent {
            task: request.task.clone(),
            name: name.to_string(),
            run_id: request.run_id,
            node: self.node.to_string(),
            status: end.status,
            files_delivered: end.delivered,
            files_skipped: end.skipped,
            files_failed: end.failed,
            bytes: end.bytes,
            error: end.error.map(str::to_string),
            parameters: shown.clone(),
            finished_at: Utc::now(),
            file: file.map(|f| FileEvent {
                source_path: f.source_path.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                outcome: f.outcome,
                error: f.error.clone(),
            }),
        };
        let subject = subjects::task_event(&request.task, name);
        ferry_service::streams::store(
            self.js,
            subject.clone(),
            format!("task-event:{}:{name}{suffix}", request.run_id),
            &event,
            "task event",
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
        Ok(format!("event {subject}"))
    }

    /// Request a run of `target` with `parameters` expanded from this run; values for the
    /// target's secure parameters are sealed before they go on the run queue.
    async fn chain(
        &self,
        request: &RunRequested,
        index: &str,
        target: &str,
        parameters: &BTreeMap<String, ferry_config::Template>,
        macros: &MacroContext<'_>,
        config: &Config,
    ) -> Result<String, String> {
        let mut passed = BTreeMap::new();
        for (name, template) in parameters {
            let value = template
                .try_render(macros)
                .map_err(|m| format!("parameters.{name} {m}"))?;
            passed.insert(name.clone(), value);
        }
        let run_id = Uuid::now_v7();
        let chained = RunRequested {
            task: target.to_string(),
            run_id,
            epoch: request.epoch,
            node: self.node.to_string(),
            trigger: Trigger::Chain {
                task: request.task.clone(),
                run_id: request.run_id,
            },
            requested_at: Utc::now(),
            parameters: self.seal_secure(config, target, passed)?,
        };
        let ack = self
            .js
            .send_publish(
                subjects::run_request(target),
                ferry_service::trace::inject(
                    PublishMessage::build()
                        .payload(ferry_wire::encode(&chained))
                        .message_id(format!("chain:{}:{index}", request.run_id))
                        .header(ferry_wire::HEADER_EPOCH, request.epoch.to_string().as_str()),
                ),
            )
            .await
            .map_err(|e| format!("publish the run request: {e}"))?
            .await
            .map_err(|e| format!("run request not stored: {e}"))?;
        if ack.duplicate {
            return Ok(format!("task {target} (requested before a restart)"));
        }
        Ok(format!("task {target} run {run_id}"))
    }

    /// Values passed to `target`: those its configuration declares secure are sealed to this
    /// node's keymat (bound to the target's run), the rest travel as they are.
    fn seal_secure(
        &self,
        config: &Config,
        target: &str,
        passed: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, ParamValue>, String> {
        let mut out = BTreeMap::new();
        for (name, value) in passed {
            let secure = config
                .tasks
                .get(target)
                .is_some_and(|t| params::declared(&config.parameters, &t.parameters, &name) == Some(true));
            let value = if secure {
                let keymat = self
                    .keymat
                    .current()
                    .map_err(|e| format!("cannot read the keymat: {e}"))?;
                let sealed =
                    ferry_keymat::seal(&keymat.public(), &params::run_binding(target, &name), &value)
                        .map_err(|e| format!("cannot seal parameter {name:?}: {e}"))?;
                ParamValue::Secure(sealed)
            } else {
                ParamValue::Plain(value)
            };
            out.insert(name, value);
        }
        Ok(out)
    }

    /// One audit record per action, beside the task's file movements.
    async fn audit(
        &self,
        request: &RunRequested,
        started_at: DateTime<Utc>,
        outcome: &ActionOutcome,
        suffix: &str,
    ) {
        let record = AuditRecord {
            task: request.task.clone(),
            run_id: request.run_id,
            node: self.node.to_string(),
            epoch: request.epoch,
            action: format!("next_action:{}", outcome.kind),
            source_host: String::new(),
            source_path: outcome.target.clone(),
            dest_host: None,
            dest_path: None,
            size: 0,
            sha256: None,
            started_at,
            finished_at: outcome.finished_at,
            outcome: if outcome.succeeded {
                Outcome::Delivered
            } else {
                Outcome::Failed
            },
            error: outcome.error.clone(),
            steps: Vec::new(),
        };
        if let Err(e) = ferry_service::streams::store(
            self.js,
            subjects::audit_file(&request.task),
            format!("action:{}:{}{suffix}", request.run_id, outcome.index),
            &record,
            "next action audit record",
        )
        .await
        {
            tracing::warn!(run_id = %request.run_id, action = outcome.index, error = format!("{e:#}"), "cannot write a next action's audit record");
        }
    }
}

/// A file's work item id as a KV key and message id token (ids are free text).
fn item_digest(item_id: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(item_id.as_bytes())[..12])
}

/// What an action is about, for the record: never a secret.
fn describe(task: &Task, action: &Action) -> String {
    match action {
        Action::Email(e) => format!("email to {} via {}:{}", e.to.join(", "), e.host, e.port),
        Action::Event(e) => format!("event {}", subjects::task_event(&task.name, &e.name)),
        Action::RunTask(r) => format!("task {}", r.task),
    }
}

/// Send `email` over SMTP. Subject and body are expanded from the run; control characters in
/// the subject become spaces (a header is one line, whatever a macro held).
async fn send_email(
    task: &Task,
    index: usize,
    email: &Email,
    macros: &MacroContext<'_>,
    keymat: &ferry_keymat::KeymatStore,
) -> Result<String, String> {
    use lettre::message::{Mailbox, header::ContentType};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let subject: String = email
        .subject
        .try_render(macros)
        .map_err(|m| format!("subject {m}"))?
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let body = email.body.try_render(macros).map_err(|m| format!("body {m}"))?;
    let from: Mailbox = email
        .from
        .parse()
        .map_err(|e| format!("from {:?}: {e}", email.from))?;
    let mut message = Message::builder().from(from).subject(subject.clone());
    for to in &email.to {
        message = message.to(to.parse().map_err(|e| format!("to {to:?}: {e}"))?);
    }
    let message = message
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("build the message: {e}"))?;

    let tls = match email.tls {
        SmtpTls::None => None,
        mode => {
            let mut parameters = TlsParameters::builder(email.host.clone());
            if let Some(path) = &email.ca_file {
                let pem = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("ca_file {path:?}: {e}"))?;
                let ca = Certificate::from_pem(&pem).map_err(|e| format!("ca_file {path:?}: {e}"))?;
                parameters = parameters.add_root_certificate(ca);
            }
            let parameters = parameters
                .build_rustls()
                .map_err(|e| format!("TLS settings: {e}"))?;
            Some(match mode {
                SmtpTls::Implicit => Tls::Wrapper(parameters),
                _ => Tls::Required(parameters),
            })
        }
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(email.host.as_str())
        .port(email.port)
        .timeout(Some(Duration::from_secs(email.timeout_secs)));
    if let Some(tls) = tls {
        transport = transport.tls(tls);
    }
    if let (Some(user), Some(secret)) = (&email.user, &email.password) {
        let keymat = keymat
            .current()
            .map_err(|e| format!("cannot read the keymat for the SMTP password: {e}"))?;
        let password = keymat
            .open(&Email::password_binding(&task.name, index), secret)
            .map_err(|e| format!("password: {e}"))?;
        transport = transport.credentials(Credentials::new(user.clone(), password.to_string()));
    }
    let transport = transport.build();
    let whole = Duration::from_secs(email.timeout_secs);
    let response = tokio::time::timeout(whole, transport.send(message))
        .await
        .map_err(|_| format!("the SMTP server did not finish within {} s", email.timeout_secs))?
        .map_err(|e| format!("SMTP {}:{}: {}", email.host, email.port, smtp_error(&e)))?;
    Ok(format!(
        "email to {} via {}:{} ({})",
        email.to.join(", "),
        email.host,
        email.port,
        response.code()
    ))
}

/// lettre's error with its causes, on one line.
fn smtp_error(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Read the stored configuration for the actions (`None` when there is none or it is unreadable:
/// no action runs, which is logged).
pub(crate) async fn current_config(config_kv: &kv::Store) -> Option<Config> {
    let bytes = match config_kv.get(ferry_wire::topology::CONFIG_KEY).await {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "next actions: cannot read the configuration");
            return None;
        }
    };
    match ferry_wire::decode::<ferry_wire::ConfigDocument>(&bytes).context("decode configuration") {
        Ok(doc) => Some(doc.config),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "next actions: cannot read the configuration"
            );
            None
        }
    }
}

/// `task` with this run's parameter values put into its destination folder and file name
/// templates (`[Parm:Name]`), so they travel to the transfer inside each work item. Only plain
/// parameters can be part of a path (apply refuses secure ones there).
pub(crate) fn with_run_parameters(
    task: &Task,
    config: &Config,
    request: &RunRequested,
) -> Result<Task, String> {
    let effective = params::effective(&config.parameters, &task.parameters, &request.parameters);
    let plain = params::plain(&effective);
    let mut task = task.clone();
    for (i, d) in task.destinations.iter_mut().enumerate() {
        d.folder = d
            .folder
            .with_params(&plain)
            .map_err(|m| format!("destination[{i}].folder {:?} {m}", d.folder.as_str()))?;
        d.file_name = d
            .file_name
            .with_params(&plain)
            .map_err(|m| format!("destination[{i}].file_name {:?} {m}", d.file_name.as_str()))?;
    }
    Ok(task)
}
