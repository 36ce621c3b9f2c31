//! Next actions: what happens after a run, per task, as `[[task.next_action]]` tables.
//!
//! ```toml
//! [[task.next_action]]
//! on = "failure"                 # success | failure | no-files | always
//! kind = "email"
//! host = "smtp.example.com"
//! tls = "starttls"               # starttls (default, port 587) | implicit (465) | none (25)
//! user = "ferry"
//! password = "env:SMTP_PASSWORD" # sealed by `ferry apply`
//! from = "ferry@example.com"
//! to = ["oncall@example.com"]
//! subject = "[TaskName] failed: [ErrorDescription]"
//!
//! [[task.next_action]]
//! on = "success"
//! kind = "run-task"
//! task = "archive"
//! parameters = { batch = "[Parm:batch]-[RunID]" }
//!
//! [[task.next_action]]
//! on = "always"
//! kind = "event"
//! name = "done"                  # ferry.event.task.<task>.done
//! ```
//!
//! When they fire ([`When`]): `success` after a run that succeeded with at least one file,
//! `no-files` after one that succeeded with none, `failure` after a failed run, `always` after
//! either; a skipped run (the task was already running) fires none.
//!
//! Invariants checked here: an email's `tls = "none"` is refused off loopback unless
//! `allow_insecure_smtp = true`; its password is sealed; `run-task` chains never form a cycle
//! ([`check_chains`], at apply time); every `[Parm:...]` an action uses is declared.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Checker, deserialize_table};
use crate::{Secret, Task, Template, is_valid_name};

/// When a next action fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    Success,
    Failure,
    NoFiles,
    Always,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            When::Success => "success",
            When::Failure => "failure",
            When::NoFiles => "no-files",
            When::Always => "always",
        }
    }

    /// Whether an action `on` this fires after a run that `failed` or not, with `files` files.
    pub fn fires(self, failed: bool, files: u64) -> bool {
        match self {
            When::Always => true,
            When::Failure => failed,
            When::Success => !failed && files > 0,
            When::NoFiles => !failed && files == 0,
        }
    }
}

/// One next action of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextAction {
    pub on: When,
    pub action: Action,
    /// Per file (`per_file = true`): fires for each file of the run as its result comes in —
    /// `success` a delivered file, `failure` a failed one, `always` either — with `[OrigName]`
    /// the file's name. Otherwise once per run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_file: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    Email(Box<Email>),
    Event(Event),
    RunTask(RunTask),
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Email(_) => "email",
            Action::Event(_) => "event",
            Action::RunTask(_) => "run-task",
        }
    }
}

/// How an email's SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Implicit,
    /// No TLS: only to a loopback address, or with `allow_insecure_smtp`.
    None,
}

impl SmtpTls {
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// PEM file of extra certificate authorities to trust (besides the system's).
    pub ca_file: Option<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    pub to: Vec<String>,
    pub subject: Template,
    pub body: Template,
    pub timeout_secs: u64,
}

impl Email {
    /// Where a sealed SMTP password of action `index` of `task` is bound.
    pub fn password_binding(task: &str, index: usize) -> String {
        format!("task/{task}/next_action/{index}/password")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The last subject token: `ferry.event.task.<task>.<name>`.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTask {
    pub task: String,
    /// Values passed to the target's parameters (macros expanded from this run).
    pub parameters: BTreeMap<String, Template>,
}

/// Fields of a `[[task.next_action]]` table that hold secrets (sealed by `ferry apply`).
pub const SECRET_FIELDS: &[&str] = &["password"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawHead {
    /// `success`, `failure`, `no-files` or `always`.
    on: When,
    /// `email`, `event` or `run-task`.
    kind: String,
    /// Fire for each file (a delivered one on `success`, a failed one on `failure`) instead of
    /// once per run.
    #[serde(default)]
    per_file: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    /// SMTP server name or address.
    host: String,
    /// SMTP port; default by `tls`: 587, 465 or 25.
    #[serde(default)]
    port: Option<u16>,
    /// `starttls` (default), `implicit` or `none`.
    #[serde(default)]
    tls: SmtpTls,
    /// Allow `tls = "none"` to a host that is not a loopback address (development only: the
    /// password and the mail cross the network in clear).
    #[serde(default)]
    allow_insecure_smtp: bool,
    /// PEM file of certificate authorities to trust besides the system's (a private CA).
    #[serde(default)]
    ca_file: Option<String>,
    /// SMTP AUTH user; with `password`.
    #[serde(default)]
    user: Option<String>,
    /// SMTP AUTH password. Secret (sealed by `ferry apply`).
    #[serde(default)]
    password: Option<String>,
    /// Sender address.
    from: String,
    /// Recipient addresses (a string or a list).
    to: toml::Value,
    /// Subject, with macros.
    subject: String,
    /// Body text, with macros.
    #[serde(default)]
    body: String,
    /// Seconds the whole exchange with the server may take (1 to 600, default 30).
    #[serde(default = "default_smtp_timeout")]
    timeout_secs: u64,
}

fn default_smtp_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    /// The event's name, the last token of `ferry.event.task.<task>.<name>`.
    name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawRunTask {
    /// The task to start.
    task: String,
    /// Parameters passed to it: name = value with macros of this run.
    #[serde(default)]
    parameters: BTreeMap<String, String>,
}

const KINDS: &[&str] = &["email", "event", "run-task"];

/// Read one `[[task.next_action]]` table at `path`.
pub(crate) fn validate_action(
    value: &toml::Value,
    path: &str,
    check: &mut Checker<'_>,
) -> Option<NextAction> {
    let toml::Value::Table(table) = value else {
        check.absent(path, "is not a table");
        return None;
    };
    let (mut head, mut own) = (toml::Table::new(), toml::Table::new());
    for (k, v) in table {
        if matches!(k.as_str(), "on" | "kind" | "per_file") {
            head.insert(k.clone(), v.clone());
        } else {
            own.insert(k.clone(), v.clone());
        }
    }
    let head: RawHead = deserialize_table(&toml::Value::Table(head), path, check)?;
    let own = toml::Value::Table(own);
    let action = match head.kind.as_str() {
        "email" => validate_email(deserialize_table(&own, path, check)?, path, check)
            .map(|e| Action::Email(Box::new(e))),
        "event" => {
            let raw: RawEvent = deserialize_table(&own, path, check)?;
            if !is_valid_name(&raw.name) {
                check.error(
                    format!("{path}.name"),
                    raw.name.as_str(),
                    "is not a valid event name: use 1-64 letters, digits, '-' or '_' (one subject token)",
                );
                return None;
            }
            Some(Action::Event(Event { name: raw.name }))
        }
        "run-task" => {
            let raw: RawRunTask = deserialize_table(&own, path, check)?;
            let mut parameters = BTreeMap::new();
            for (name, text) in &raw.parameters {
                let field = format!("{path}.parameters.{name}");
                if !is_valid_name(name) {
                    check.error(field, name.as_str(), "is not a valid parameter name");
                    continue;
                }
                match Template::parse(text) {
                    Ok(t) => {
                        parameters.insert(name.clone(), t);
                    }
                    Err(m) => check.error(field, text.as_str(), m),
                }
            }
            Some(Action::RunTask(RunTask {
                task: raw.task,
                parameters,
            }))
        }
        other => {
            let guess = crate::model::closest(other, KINDS.iter().copied())
                .map(|g| format!("did you mean {g:?}? "))
                .unwrap_or_default();
            check.error(
                format!("{path}.kind"),
                other,
                format!(
                    "is not a kind of next action; {guess}(known: {})",
                    KINDS.join(", ")
                ),
            );
            None
        }
    }?;
    if head.per_file && head.on == When::NoFiles {
        check.error(
            format!("{path}.on"),
            "no-files",
            "does not apply with per_file = true: a per-file action fires for a file (success: delivered, failure: failed, always: either)",
        );
        return None;
    }
    Some(NextAction {
        on: head.on,
        action,
        per_file: head.per_file,
    })
}

fn validate_email(raw: RawEmail, path: &str, check: &mut Checker<'_>) -> Option<Email> {
    let before = check.errors.len();
    let field = |f: &str| format!("{path}.{f}");
    if raw.host.trim().is_empty() || raw.host.contains(['/', ' ', '\0']) {
        check.error(field("host"), raw.host.as_str(), "is not a host name or address");
    }
    if raw.tls == SmtpTls::None && !raw.allow_insecure_smtp && !is_loopback(&raw.host) {
        check.error(
            field("tls"),
            "none",
            format!(
                "sends the password and the mail in clear to {:?}, which is not a loopback address; \
                 use starttls or implicit, or set allow_insecure_smtp = true (development only)",
                raw.host
            ),
        );
    }
    if raw.port == Some(0) {
        check.error(field("port"), "0", "is not a port (1 to 65535)");
    }
    match (&raw.user, &raw.password) {
        (Some(_), None) => check.absent(field("password"), "is missing: `user` needs a password"),
        (None, Some(_)) => check.absent(field("user"), "is missing: `password` needs a user"),
        _ => {}
    }
    if raw.tls == SmtpTls::None && raw.ca_file.is_some() {
        check.absent(field("ca_file"), "does not apply with tls = \"none\"");
    }
    let password = match &raw.password {
        // Never shown: a refused value might be the secret itself.
        Some(text) => match Secret::try_from(text.clone()) {
            Ok(s) => Some(s),
            Err(m) => {
                check.absent(field("password"), m);
                None
            }
        },
        None => None,
    };
    if let Err(m) = check_address(&raw.from) {
        check.error(field("from"), raw.from.as_str(), m);
    }
    let to: Vec<String> = match &raw.to {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
            .collect(),
        other => {
            check.error(
                field("to"),
                other.to_string(),
                "is not an address or a list of addresses",
            );
            Vec::new()
        }
    };
    if to.is_empty() && matches!(raw.to, toml::Value::Array(_)) {
        check.absent(field("to"), "is empty: name at least one recipient");
    }
    for (i, address) in to.iter().enumerate() {
        if let Err(m) = check_address(address) {
            check.error(format!("{path}.to[{i}]"), address.as_str(), m);
        }
    }
    if !(1..=600).contains(&raw.timeout_secs) {
        check.error(
            field("timeout_secs"),
            raw.timeout_secs.to_string(),
            "is out of range (1 to 600)",
        );
    }
    let subject = Template::parse(&raw.subject)
        .map_err(|m| check.error(field("subject"), raw.subject.as_str(), m))
        .ok();
    let body = Template::parse(&raw.body)
        .map_err(|m| check.error(field("body"), raw.body.as_str(), m))
        .ok();
    (check.errors.len() == before).then_some(Email {
        port: raw.port.unwrap_or(raw.tls.default_port()),
        host: raw.host,
        tls: raw.tls,
        ca_file: raw.ca_file,
        user: raw.user,
        password,
        from: raw.from,
        to,
        subject: subject?,
        body: body?,
        timeout_secs: raw.timeout_secs,
    })
}

/// A plain `local@domain` address (a display name is not needed by a next action).
fn check_address(address: &str) -> Result<(), &'static str> {
    let ok = address
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'))
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"'));
    if ok {
        Ok(())
    } else {
        Err("is not an email address like name@example.com")
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The templates of an action, with the field each stands in (for parameter checks).
pub(crate) fn templates(action: &Action) -> Vec<(String, &Template)> {
    match action {
        Action::Email(e) => vec![("subject".into(), &e.subject), ("body".into(), &e.body)],
        Action::Event(_) => Vec::new(),
        Action::RunTask(r) => r
            .parameters
            .iter()
            .map(|(name, t)| (format!("parameters.{name}"), t))
            .collect(),
    }
}

/// Checks across tasks, once each task is valid: every `run-task` target exists (`names`: every
/// task name written, so a target with mistakes of its own is not called unknown), declares the
/// parameters passed to it, and no chain of `run-task` actions comes back to a task it started
/// from (a → b → a, and a → a). Problems are reported on the action that closes the cycle.
pub(crate) fn check_chains(
    tasks: &BTreeMap<String, Task>,
    global: &crate::Parameters,
    names: &BTreeSet<String>,
    errors: &mut Vec<crate::ConfigError>,
) {
    let error = |task: &str, field: String, value: &str, message: String| crate::ConfigError {
        scope: format!("task {task:?}"),
        field,
        value: value.to_string(),
        message,
    };
    for (name, task) in tasks {
        for (i, next) in task.next_actions.iter().enumerate() {
            let Action::RunTask(run) = &next.action else {
                continue;
            };
            let field = format!("next_action[{i}].task");
            let Some(target) = tasks.get(&run.task) else {
                if !names.contains(&run.task) {
                    let known: Vec<&str> = names.iter().map(String::as_str).collect();
                    let guess = crate::model::closest(&run.task, known.iter().copied())
                        .map(|g| format!("did you mean {g:?}? "))
                        .unwrap_or_default();
                    errors.push(error(
                        name,
                        field,
                        &run.task,
                        format!("is not a known task; {guess}(known: {})", known.join(", ")),
                    ));
                }
                continue;
            };
            for passed in run.parameters.keys() {
                if crate::params::declared(global, &target.parameters, passed).is_none() {
                    errors.push(error(
                        name,
                        format!("next_action[{i}].parameters.{passed}"),
                        passed,
                        format!(
                            "is not a parameter of task {:?}: declare it in its [task.parameters] (or in [parameters])",
                            run.task
                        ),
                    ));
                }
            }
        }
    }
    // Cycles: a depth-first walk from each task over its run-task edges, in name order; a cycle
    // is reported once, from its first task in name order.
    let edges = |task: &Task| -> Vec<(usize, String)> {
        task.next_actions
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.action {
                Action::RunTask(r) if tasks.contains_key(&r.task) => Some((i, r.task.clone())),
                _ => None,
            })
            .collect()
    };
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in tasks.keys() {
        let mut path = vec![start.clone()];
        let mut stack: Vec<(Vec<(usize, String)>, usize)> = vec![(edges(&tasks[start]), 0)];
        while let Some((next, at)) = stack.last_mut() {
            let Some((index, target)) = next.get(*at).cloned() else {
                stack.pop();
                path.pop();
                continue;
            };
            *at += 1;
            if let Some(pos) = path.iter().position(|t| *t == target) {
                let cycle: Vec<String> = path[pos..].to_vec();
                // The same cycle, found from another of its tasks, is one problem.
                let mut key = cycle.clone();
                let min = key
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, t)| (*t).clone())
                    .map_or(0, |(i, _)| i);
                key.rotate_left(min);
                if target == *start && reported.insert(key) {
                    let from = path.last().expect("the path holds the start").clone();
                    let shown: Vec<&str> = cycle
                        .iter()
                        .chain(std::iter::once(&target))
                        .map(String::as_str)
                        .collect();
                    errors.push(error(
                        &from,
                        format!("next_action[{index}].task"),
                        &target,
                        format!(
                            "makes a cycle of chained tasks: {}; a chain of run-task actions must end",
                            shown.join(" → ")
                        ),
                    ));
                }
                continue;
            }
            path.push(target.clone());
            stack.push((edges(&tasks[&target]), 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_fires() {
        assert!(When::Success.fires(false, 1));
        assert!(!When::Success.fires(false, 0));
        assert!(When::NoFiles.fires(false, 0));
        assert!(!When::NoFiles.fires(true, 0));
        assert!(When::Failure.fires(true, 3));
        assert!(!When::Failure.fires(false, 3));
        assert!(When::Always.fires(true, 0) && When::Always.fires(false, 5));
    }

    #[test]
    fn addresses_and_loopback() {
        assert!(check_address("a@b.example").is_ok());
        for bad in ["", "a", "@b", "a@", "a b@c", "a@b@c", "<a@b>", "a@b,c@d"] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
        for lo in ["127.0.0.1", "::1", "[::1]", "localhost", "127.1.2.3"] {
            assert!(is_loopback(lo), "{lo}");
        }
        assert!(!is_loopback("10.0.0.1") && !is_loopback("mail.example.com"));
    }

    fn errors(text: &str) -> Vec<String> {
        match crate::parse_toml(text).expect("parses").validate() {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn task(name: &str, extra: &str) -> String {
        format!(
            "[[task]]\nname = \"{name}\"\n[[task.source]]\nhost = \"local\"\nfolder = \"/in/{name}\"\n[[task.destination]]\nhost = \"local\"\nfolder = \"/out/{name}\"\n{extra}\n"
        )
    }

    fn chain(to: &str) -> String {
        format!("[[task.next_action]]\non = \"success\"\nkind = \"run-task\"\ntask = \"{to}\"\n")
    }

    #[test]
    fn cycles_are_refused_naming_them() {
        let text = task("a", &chain("b")) + &task("b", &chain("a"));
        assert_eq!(
            errors(&text),
            [
                r#"task "b": next_action[0].task: "a" makes a cycle of chained tasks: a → b → a; a chain of run-task actions must end"#
            ]
        );
        assert_eq!(
            errors(&task("a", &chain("a"))),
            [
                r#"task "a": next_action[0].task: "a" makes a cycle of chained tasks: a → a; a chain of run-task actions must end"#
            ]
        );
        let text = task("a", &chain("b")) + &task("b", &chain("c")) + &task("c", "");
        assert!(errors(&text).is_empty(), "a chain that ends is fine");
        assert!(errors(&task("a", &chain("nope")))[0].contains("is not a known task"));
    }

    #[test]
    fn parameters_used_must_be_declared_and_paths_take_no_secrets() {
        let sealed = format!("{}abcd:c2VjcmV0", crate::SEALED_PREFIX);
        let text = format!(
            "[parameters]\nkey = {{ secure = \"{sealed}\" }}\n{}",
            task(
                "a",
                "file_name = \"[Parm:regoin]-[Parm:key]\"\n[task.parameters]\nregion = \"eu\""
            )
        );
        let e = errors(&text);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].contains("uses [Parm:regoin], which is not declared")
                && e[0].contains("did you mean [Parm:region]?"),
            "{}",
            e[0]
        );
        assert!(e[1].contains("uses the secure parameter [Parm:key]"), "{}", e[1]);
    }

    #[test]
    fn email_settings_are_checked() {
        let email = "[[task.next_action]]\non = \"failure\"\nkind = \"email\"\nhost = \"mail.example.com\"\ntls = \"none\"\nuser = \"u\"\npassword = \"hunter2\"\nfrom = \"ferry\"\nto = [\"ops@example.com\"]\nsubject = \"[TaskName] failed\"\n";
        let e = errors(&task("a", email));
        let text = e.join("\n");
        assert!(text.contains("next_action[0].tls"), "{text}");
        assert!(text.contains("next_action[0].password: is not sealed"), "{text}");
        assert!(
            text.contains("next_action[0].from: \"ferry\" is not an email address"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "a secret is never shown: {text}");
    }
}
