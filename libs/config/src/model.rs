//! Hosts and tasks: the raw (as written) form and the validated runtime form.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::actions::{self, NextAction};
use crate::hosts::{self, Host, HostKind, HostOptions, HostSpec};
use crate::params::{self, Parameters};
use crate::schedule::{Schedule, ScheduleSpec};
use crate::steps::{self, Step, StepCheck};
use crate::{ConfigError, ConfigErrors, MaskList, Template, is_valid_name};

/// The host every configuration has without declaring it: the node's own file system.
pub const LOCAL_HOST: &str = "local";

// ---------------------------------------------------------------------------------------------
// Raw form: what operators write. Every field is documented; unknown fields are errors.
// ---------------------------------------------------------------------------------------------

/// A whole configuration file: `[[host]]` and `[[task]]` tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Hosts: where files live. A host named `local` (the node's file system) always exists.
    #[serde(default)]
    pub host: Vec<toml::Value>,
    /// Tasks: sources → destinations, with schedules.
    #[serde(default)]
    pub task: Vec<toml::Value>,
    /// Global parameters (`[Parm:Name]`), `name = "value"` or `name = { secure = "..." }`;
    /// a task's own parameter of the same name wins (`params.rs`).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub parameters: toml::Table,
}

/// The fields every `[[host]]` table has; the rest depends on `kind` (see `hosts.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct RawHostHead {
    /// Unique host name that tasks refer to.
    name: String,
    /// `local`, `sftp`, `ftp`, `smb`, `s3` or `azure`.
    kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawTask {
    /// Unique task name: letters, digits, `-` and `_`.
    name: String,
    /// Free text shown by `ferry task show`.
    #[serde(default)]
    description: String,
    /// A disabled task is never scheduled, but can still be run by hand.
    #[serde(default = "default_true")]
    enabled: bool,
    /// Where files come from, in order: [`RawSource`] tables. Each is read on its own, so a
    /// mistake in one does not hide the mistakes in the others.
    #[serde(default)]
    source: Vec<toml::Value>,
    /// Where files go, [`RawDestination`] tables; each file is delivered to every destination.
    #[serde(default)]
    destination: Vec<toml::Value>,
    /// When the task runs by itself: [`ScheduleSpec`] tables.
    #[serde(default)]
    schedule: Vec<toml::Value>,
    /// Retries of a transient failure (connection lost, timeout) of this task's files and
    /// listings, instead of its hosts' `retries` (0 to 100).
    #[serde(default)]
    retries: Option<u32>,
    /// Seconds before the first of those retries, doubling for each later one (at most 5
    /// minutes), instead of its hosts' `retry_wait_secs` (0 to 3600).
    #[serde(default)]
    retry_wait_secs: Option<u64>,
    /// Seconds a run of this task may take before the files no transfer has started yet are
    /// given up (they fail and stay in their sources for the next run), instead of the node's
    /// `file_collector.max_run_secs` (1 to 604800).
    #[serde(default)]
    max_run_secs: Option<u64>,
    /// Process steps (zip, PGP, a command …) between source and destination: `[[task.steps]]`
    /// tables, see `steps.rs` and docs/processes.md.
    #[serde(default)]
    steps: Vec<toml::Value>,
    /// The task's parameters, overriding global ones of the same name (`params.rs`).
    #[serde(default)]
    parameters: toml::Table,
    /// What happens after a run: `[[task.next_action]]` tables (`actions.rs`).
    #[serde(default)]
    next_action: Vec<toml::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawSource {
    /// Host name (`local` or a declared host).
    host: String,
    /// Folder to list; an absolute path for local hosts (`ferry apply` resolves relative ones
    /// against its working directory).
    folder: String,
    /// `;`-separated file masks with `*` and `?`, e.g. `*.csv;report?.txt`.
    #[serde(default = "default_masks")]
    masks: String,
    /// `;`-separated masks of files to leave alone.
    #[serde(default)]
    exclude: Option<String>,
    /// Also look in subfolders.
    #[serde(default)]
    subdirectories: bool,
    /// Only files that are new or changed (size or modification time) since their last delivery.
    #[serde(default = "default_true")]
    new_files_only: bool,
    /// Skip files modified less than this many seconds ago (still being written).
    #[serde(default)]
    min_age_secs: u64,
    /// A file still being written is never taken: a file modified within this many milliseconds
    /// is taken only if its size and modification time are unchanged when the folder is listed
    /// again after this interval (on the node's own disks an older file needs no second look).
    /// On by default (1000); 0 turns the check off.
    #[serde(default = "default_size_stable_ms")]
    size_stable_ms: u64,
    /// Delete the source file after it was delivered to every destination.
    #[serde(default)]
    delete_after: bool,
    /// At most this many files per run (0 = no limit); the rest wait for the next run.
    #[serde(default)]
    max_files: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    /// Host name (`local` or a declared host).
    host: String,
    /// Folder to write into; macros allowed.
    folder: String,
    /// File name template; default `[OrigName]`.
    #[serde(default = "default_file_name")]
    file_name: String,
    /// Recreate the file's subfolder (relative to the source folder) under the destination folder.
    #[serde(default)]
    relative_subdirs: bool,
    /// Create missing folders.
    #[serde(default = "default_true")]
    create_dirs: bool,
    /// What to do when the destination file already exists.
    #[serde(default)]
    overwrite: Overwrite,
    /// Permission bits of delivered files, in octal (`"0640"`); at most `"0777"`. Default: the
    /// source's bits for a source on the node's disks, else a new file's default less the umask.
    /// Only on the node's own disks (host kind `local`).
    #[serde(default)]
    mode: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_size_stable_ms() -> u64 {
    1000
}
fn default_masks() -> String {
    "*.*".to_string()
}
fn default_file_name() -> String {
    "[OrigName]".to_string()
}

// ---------------------------------------------------------------------------------------------
// Runtime form: only ever built by validation.
// ---------------------------------------------------------------------------------------------

/// A validated configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Config {
    pub hosts: BTreeMap<String, Host>,
    pub tasks: BTreeMap<String, Task>,
    /// Global parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: Parameters,
}

impl Config {
    /// Every sealed secret outside the hosts (secure parameters, SMTP passwords): scope (as in
    /// [`ConfigError`]), field and binding.
    pub fn other_secrets(&self) -> Vec<(String, String, String, &crate::Secret)> {
        let mut out = Vec::new();
        for (name, value) in &self.parameters {
            if let params::ParamValue::Secure(s) = value {
                out.push((
                    String::new(),
                    format!("parameters.{name}"),
                    params::global_binding(name),
                    s,
                ));
            }
        }
        for task in self.tasks.values() {
            let scope = format!("task {:?}", task.name);
            for (name, value) in &task.parameters {
                if let params::ParamValue::Secure(s) = value {
                    let binding = params::task_binding(&task.name, name);
                    out.push((scope.clone(), format!("parameters.{name}"), binding, s));
                }
            }
            for (i, next) in task.next_actions.iter().enumerate() {
                if let actions::Action::Email(email) = &next.action
                    && let Some(s) = &email.password
                {
                    let binding = actions::Email::password_binding(&task.name, i);
                    out.push((scope.clone(), format!("next_action[{i}].password"), binding, s));
                }
            }
        }
        out
    }

    /// [`Config::other_secrets`], to replace a sealing: binding and secret.
    pub fn other_secrets_mut(&mut self) -> Vec<(String, &mut crate::Secret)> {
        let mut out = Vec::new();
        for (name, value) in self.parameters.iter_mut() {
            if let params::ParamValue::Secure(s) = value {
                out.push((params::global_binding(name), s));
            }
        }
        for task in self.tasks.values_mut() {
            for (name, value) in task.parameters.iter_mut() {
                if let params::ParamValue::Secure(s) = value {
                    out.push((params::task_binding(&task.name, name), s));
                }
            }
            for (i, next) in task.next_actions.iter_mut().enumerate() {
                if let actions::Action::Email(email) = &mut next.action
                    && let Some(s) = &mut email.password
                {
                    out.push((actions::Email::password_binding(&task.name, i), s));
                }
            }
        }
        out
    }
}

/// The longest run deadline a task or a node may set: the 7 days a work batch waits in the file
/// queue.
pub const MAX_RUN_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub sources: Vec<Source>,
    pub destinations: Vec<Destination>,
    pub schedules: Vec<ScheduleSpec>,
    /// The task's own retry settings, overriding its hosts' (`None`: the hosts').
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub retry_wait_secs: Option<u64>,
    /// The task's own run deadline (`None`: the node's `file_collector.max_run_secs`).
    #[serde(default)]
    pub max_run_secs: Option<u64>,
    /// Process steps, PER-FILE ones first (see `steps.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// The task's parameters (global ones of the same name are overridden).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: Parameters,
    /// What happens after a run, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_actions: Vec<NextAction>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub host: String,
    pub folder: String,
    pub masks: MaskList,
    pub exclude: Option<MaskList>,
    pub subdirectories: bool,
    pub new_files_only: bool,
    pub min_age_secs: u64,
    pub size_stable_ms: u64,
    pub delete_after: bool,
    pub max_files: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Destination {
    pub host: String,
    pub folder: Template,
    pub file_name: Template,
    pub relative_subdirs: bool,
    pub create_dirs: bool,
    pub overwrite: Overwrite,
    /// Permission bits of delivered files (`None`: the source's, or the default).
    #[serde(default)]
    pub mode: Option<u32>,
}

/// What a destination does when the file already exists.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Overwrite {
    /// Replace it (atomically).
    #[default]
    Overwrite,
    /// Leave it and record the file as skipped.
    Skip,
    /// Leave it and fail the file.
    Fail,
    /// Write under a new name: `name (1).ext`, `name (2).ext`, …
    Unique,
}

impl Task {
    /// Compiled schedules. Validation already compiled them once, so this cannot fail.
    pub fn compiled_schedules(&self) -> Vec<Schedule> {
        self.schedules
            .iter()
            .map(|s| Schedule::compile(s).expect("schedules are validated before a Task exists"))
            .collect()
    }
}

/// How often, and after how long a first wait, a transient failure of `task`'s work on `hosts` is
/// tried again: the task's own settings where it has them, else the largest of the hosts' (no
/// hosts: no retries).
pub fn retry_policy<'a>(
    task: Option<&Task>,
    hosts: impl IntoIterator<Item = &'a HostOptions> + Clone,
) -> (u32, Duration) {
    let retries = task
        .and_then(|t| t.retries)
        .unwrap_or_else(|| hosts.clone().into_iter().map(|h| h.retries).max().unwrap_or(0));
    let wait = task
        .and_then(|t| t.retry_wait_secs)
        .unwrap_or_else(|| hosts.into_iter().map(|h| h.retry_wait_secs).max().unwrap_or(0));
    (retries, Duration::from_secs(wait))
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation.
// ---------------------------------------------------------------------------------------------

/// Parse TOML text into the raw model. Syntax errors and unknown top-level keys are reported here,
/// with the line, column and text of the offending line; everything else is reported by
/// [`RawConfig::validate`].
pub fn parse_toml(text: &str) -> Result<RawConfig, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        let (field, value) = e
            .span()
            .and_then(|span| {
                let before = text.get(..span.start)?;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let line = before.matches('\n').count() + 1;
                let column = before[line_start..].chars().count() + 1;
                let line_text = text[line_start..].lines().next().unwrap_or_default().trim();
                Some((format!("line {line}, column {column}"), line_text.to_string()))
            })
            .unwrap_or_default();
        let message = e.message().trim_end();
        // An unknown top-level key (`[[tasks]]`) is named, since the line shown may hold more.
        let message = match message.strip_prefix("unknown field ").map(backticked) {
            Some(names) if !names.is_empty() => format!("`{}` {}", names[0], explain_serde_error(message)),
            _ => message.to_string(),
        };
        ConfigErrors(vec![ConfigError {
            scope: String::new(),
            field,
            value,
            message,
        }])
    })
}

/// Collects errors for one scope (a task or a host).
pub(crate) struct Checker<'a> {
    pub(crate) scope: String,
    pub(crate) errors: &'a mut Vec<ConfigError>,
}

impl Checker<'_> {
    /// `value` is the offending value as written. [`ConfigError`]'s display leaves out an empty
    /// value, which would read as if the field were missing, so an empty one is shown as `""` at
    /// the start of the message.
    pub(crate) fn error(
        &mut self,
        field: impl Into<String>,
        value: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (value, message) = (value.into(), message.into());
        let message = if value.is_empty() {
            format!("\"\" {message}")
        } else {
            message
        };
        self.push(field.into(), value, message);
    }

    /// A problem with no value to show: a missing field, a list or table.
    pub(crate) fn absent(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(field.into(), String::new(), message.into());
    }

    fn push(&mut self, field: String, value: String, message: String) {
        self.errors.push(ConfigError {
            scope: self.scope.clone(),
            field,
            value,
            message,
        });
    }
}

/// Deserialize the table `value` that stands at `path` in its task or host (`source[0]`, or ""
/// for the task or host itself), reporting the path and value of every field serde refuses.
///
/// Every refused field is reported, not only the first: it is reported, dropped, and the rest read
/// again. So the result is `Some` whenever the table can still be read without the refused fields,
/// and the caller checks what is left; errors were reported if so. `None` means a required field
/// is missing (or was refused) or `value` is not a table.
pub(crate) fn deserialize_table<T: serde::de::DeserializeOwned>(
    value: &toml::Value,
    path: &str,
    check: &mut Checker<'_>,
) -> Option<T> {
    let mut table = value.clone();
    // Keys refused so far, and the fields suggested for misspelt ones: a required field that is
    // "missing" because it was refused or misspelt is not reported a second time.
    let mut dropped: Vec<String> = Vec::new();
    // Every round drops one key of a finite table, so this ends.
    loop {
        let error = match serde_path_to_error::deserialize::<_, T>(table.clone()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let inner = error.path().to_string();
        let inner = if inner == "." { String::new() } else { inner };
        let message = error.into_inner().message().to_string();
        if let Some(name) = missing_field(&message) {
            if !dropped.iter().any(|d| d == name) {
                check.absent(join_path(path, &join_path(&inner, name)), "is missing (required)");
            }
            return None;
        }
        let field = join_path(path, &inner);
        if let Some(guess) = message
            .strip_prefix("unknown field ")
            .and_then(suggest_field)
            .map(str::to_string)
        {
            dropped.push(guess);
        }
        let message = explain_serde_error(&message);
        match lookup(&table, &inner) {
            Some(toml::Value::String(s)) => check.error(field, s.as_str(), message),
            // A table is not shown: it is the field's own [[...]] block, or several lines long.
            Some(toml::Value::Table(_)) | None => check.absent(field, message),
            Some(v) if !inner.is_empty() => check.error(field, v.to_string(), message),
            _ => check.absent(field, message),
        }
        let key = inner.split(['.', '[']).next().unwrap_or_default().to_string();
        if key.is_empty() || table.as_table_mut().and_then(|t| t.remove(&key)).is_none() {
            return None;
        }
        dropped.push(key);
    }
}

/// `a` and `b` joined as a field path: `source[0]` + `folder` = `source[0].folder`.
fn join_path(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ if b.starts_with('[') => format!("{a}{b}"),
        _ => format!("{a}.{b}"),
    }
}

/// The field named by serde's "missing field `name`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// The names serde quotes in backticks, in order.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Serde's message in an operator's words; the field path and the value are shown beside it.
fn explain_serde_error(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let names = backticked(rest);
        let known = names.get(1..).unwrap_or_default().join(", ");
        return match suggest_field(rest) {
            Some(guess) => format!("is not a known field; did you mean `{guess}`? (known: {known})"),
            None => format!("is not a known field (known: {known})"),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let names = backticked(rest);
        return format!("is not one of: {}", names.get(1..).unwrap_or_default().join(", "));
    }
    if let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        return format!("is {}, expected {}", kind_of(found), expectation(expected));
    }
    if let Some((_, expected)) = message
        .strip_prefix("invalid value: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        return format!("is not valid, expected {}", expectation(expected));
    }
    message.to_string()
}

/// Serde's `string "yes"`, `integer `5`` … as a kind with its article.
fn kind_of(found: &str) -> String {
    let kinds = [
        ("string", "a string"),
        ("integer", "an integer"),
        ("floating point", "a decimal number"),
        ("boolean", "a boolean"),
        ("sequence", "an array"),
        ("map", "a table"),
    ];
    kinds
        .iter()
        .find(|(prefix, _)| found.starts_with(prefix))
        .map_or_else(|| found.to_string(), |(_, kind)| kind.to_string())
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (after "unknown field "): the known
/// field that `x` is probably a typo of.
fn suggest_field(rest: &str) -> Option<&str> {
    let names = backticked(rest);
    let (unknown, known) = names.split_first()?;
    closest(unknown, known.iter().copied())
}

/// Serde's and Rust's names for what was expected, as TOML calls them.
fn expectation(expected: &str) -> String {
    match expected {
        "a boolean" => "true or false".to_string(),
        "a sequence" => "an array".to_string(),
        "a map" => "a table".to_string(),
        "u32" => format!("a whole number from 0 to {}", u32::MAX),
        "u64" => format!("a whole number from 0 to {}", u64::MAX),
        other if other.starts_with("struct ") => "a table".to_string(),
        other => other.to_string(),
    }
}

/// The candidate closest to `word` (ignoring case), if it is close enough to be a typo.
pub(crate) fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let word = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d < c.len() && *d <= if c.len() < 5 { 1 } else { 2.max(c.len() / 4) })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Find the value at a serde_path_to_error path such as `source[0].folder` ("" is `value`).
fn lookup<'v>(value: &'v toml::Value, path: &str) -> Option<&'v toml::Value> {
    let mut v = value;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        let key = pieces.next().unwrap_or_default();
        if !key.is_empty() {
            v = v.get(key)?;
        }
        for index in pieces {
            v = v.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(v)
}

fn name_of(value: &toml::Value) -> Option<&str> {
    value.get("name").and_then(toml::Value::as_str)
}

/// A secret of a raw configuration outside `[[host]]` tables (secure parameters, SMTP
/// passwords) that `ferry apply` seals: where it stands and what it is bound to.
pub struct SecretSlot<'a> {
    /// `task "NAME"`, or empty for global parameters.
    pub scope: String,
    pub field: String,
    /// The sealing's associated data ([`params::global_binding`] …).
    pub binding: String,
    /// The string as written (a value, `env:VAR`, `file:PATH`, or already sealed).
    pub value: &'a mut toml::Value,
}

impl RawConfig {
    /// Every secret outside the `[[host]]` tables, for sealing. A task without a valid name has
    /// no binding, so its secrets are left for validation to report.
    pub fn secret_slots_mut(&mut self) -> Vec<SecretSlot<'_>> {
        let mut slots = Vec::new();
        for (name, value) in params::secure_slots(&mut self.parameters) {
            slots.push(SecretSlot {
                scope: String::new(),
                field: format!("parameters.{name}.{}", params::SECURE_KEY),
                binding: params::global_binding(&name),
                value,
            });
        }
        for task in &mut self.task {
            let Some(name) = name_of(task).filter(|n| is_valid_name(n)).map(str::to_string) else {
                continue;
            };
            let Some(table) = task.as_table_mut() else {
                continue;
            };
            let scope = format!("task {name:?}");
            for (key, value) in table.iter_mut() {
                match (key.as_str(), value) {
                    ("parameters", toml::Value::Table(t)) => {
                        for (param, slot) in params::secure_slots(t) {
                            slots.push(SecretSlot {
                                scope: scope.clone(),
                                field: format!("parameters.{param}.{}", params::SECURE_KEY),
                                binding: params::task_binding(&name, &param),
                                value: slot,
                            });
                        }
                    }
                    ("next_action", toml::Value::Array(items)) => {
                        for (i, item) in items.iter_mut().enumerate() {
                            let Some(item) = item.as_table_mut() else { continue };
                            for (field, slot) in item.iter_mut() {
                                if actions::SECRET_FIELDS.contains(&field.as_str()) && slot.is_str() {
                                    slots.push(SecretSlot {
                                        scope: scope.clone(),
                                        field: format!("next_action[{i}].{field}"),
                                        binding: actions::Email::password_binding(&name, i),
                                        value: slot,
                                    });
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        slots
    }

    /// Resolve relative local folders against `base` (the directory `ferry apply` runs in).
    /// Empty and blank folders stay as written, so validation reports them.
    pub fn resolve_relative_paths(&mut self, base: &Path) {
        let locals: BTreeSet<String> = std::iter::once(LOCAL_HOST.to_string())
            .chain(self.host.iter().filter_map(|h| {
                (h.get("kind").and_then(toml::Value::as_str) == Some("local"))
                    .then(|| name_of(h).map(str::to_string))
                    .flatten()
            }))
            .collect();
        for task in &mut self.task {
            for list in ["source", "destination"] {
                let Some(toml::Value::Array(items)) = task.get_mut(list) else {
                    continue;
                };
                for item in items {
                    let is_local = item
                        .get("host")
                        .and_then(toml::Value::as_str)
                        .is_some_and(|h| locals.contains(h));
                    let Some(toml::Value::String(folder)) = item.get_mut("folder") else {
                        continue;
                    };
                    if is_local && !folder.trim().is_empty() && Path::new(folder.as_str()).is_relative() {
                        let joined: PathBuf = base.join(folder.trim_start_matches("./"));
                        *folder = joined.to_string_lossy().into_owned();
                    }
                }
            }
        }
    }

    /// Validate everything; return all problems at once. Process steps are checked for their
    /// form only; [`RawConfig::validate_with`] also checks them with the processes' constructors.
    pub fn validate(&self) -> Result<Config, ConfigErrors> {
        self.validate_with(&|_| Ok(()))
    }

    /// [`RawConfig::validate`], with `step_check` run on every well-formed process step (the
    /// scheduler passes `ferry_processes::configured::check`, which this crate cannot depend on).
    pub fn validate_with(&self, step_check: StepCheck<'_>) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut config = Config::default();
        config
            .hosts
            .insert(LOCAL_HOST.to_string(), Host::local(LOCAL_HOST));

        // Every declared host name with its kind (None when the kind could not be read), so a
        // task naming a host whose table has a mistake is not also told the host is unknown.
        let mut host_kinds: BTreeMap<String, Option<HostKind>> =
            BTreeMap::from([(LOCAL_HOST.to_string(), Some(HostKind::Local))]);
        let mut host_index = BTreeMap::new();
        for (i, value) in self.host.iter().enumerate() {
            let scope = match name_of(value) {
                Some(n) => format!("host {n:?}"),
                None => format!("host[{i}]"),
            };
            let mut check = Checker {
                scope,
                errors: &mut errors,
            };
            let Some(head) = deserialize_table::<RawHostHead>(&only_head(value), "", &mut check) else {
                if let Some(name) = name_of(value) {
                    host_kinds.entry(name.to_string()).or_insert(None);
                }
                continue;
            };
            let kind = HostKind::parse(&head.kind);
            if kind.is_none() {
                let known: Vec<&str> = HostKind::ALL.iter().map(|k| k.as_str()).collect();
                check.error("kind", &head.kind, format!("is not one of: {}", known.join(", ")));
            }
            let name_ok = if !is_valid_name(&head.name) {
                check.error("name", &head.name, NAME_RULE);
                false
            } else if head.name == LOCAL_HOST {
                check.error(
                    "name",
                    &head.name,
                    "is built in (the node's own file system); choose another name",
                );
                false
            } else if let Some(first) = host_index.get(&head.name) {
                check.error(
                    "name",
                    &head.name,
                    format!("is declared more than once (host[{first}] and host[{i}])"),
                );
                false
            } else {
                host_index.insert(head.name.clone(), i);
                host_kinds.insert(head.name.clone(), kind);
                true
            };
            let Some(kind) = kind else { continue };
            if let Some(host) = validate_host(value, &head.name, kind, &mut check)
                && name_ok
            {
                config.hosts.insert(head.name.clone(), host);
            }
        }

        let mut problems = Vec::new();
        config.parameters = params::validate(&self.parameters, "parameters", &mut problems);
        for (field, value, message) in problems {
            let mut check = Checker {
                scope: String::new(),
                errors: &mut errors,
            };
            if value.is_empty() {
                check.absent(field, message);
            } else {
                check.error(field, value, message);
            }
        }

        let mut task_index = BTreeMap::new();
        for (i, value) in self.task.iter().enumerate() {
            let scope = match name_of(value) {
                Some(n) => format!("task {n:?}"),
                None => format!("task[{i}]"),
            };
            let mut check = Checker {
                scope,
                errors: &mut errors,
            };
            let Some(raw) = deserialize_table::<RawTask>(value, "", &mut check) else {
                continue;
            };
            // A task with a bad or taken name is still checked, so every problem shows at once.
            if !is_valid_name(&raw.name) {
                check.error("name", &raw.name, NAME_RULE);
            } else if let Some(first) = task_index.get(&raw.name) {
                check.error(
                    "name",
                    &raw.name,
                    format!("is used by more than one task (task[{first}] and task[{i}])"),
                );
            } else {
                task_index.insert(raw.name.clone(), i);
            }
            if let Some(task) = validate_task(raw, &host_kinds, &config.parameters, step_check, &mut check) {
                config.tasks.insert(task.name.clone(), task);
            }
        }
        let names: BTreeSet<String> = self.task.iter().filter_map(name_of).map(str::to_string).collect();
        actions::check_chains(&config.tasks, &config.parameters, &names, &mut errors);

        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// `name` and `kind` of a host table (the rest is read by [`validate_host`]).
fn only_head(value: &toml::Value) -> toml::Value {
    let mut head = toml::Table::new();
    for key in ["name", "kind"] {
        if let Some(v) = value.get(key) {
            head.insert(key.to_string(), v.clone());
        }
    }
    match value {
        toml::Value::Table(_) => toml::Value::Table(head),
        other => other.clone(),
    }
}

/// Read one host table of a known kind: first the settings every remote kind shares, then the
/// kind's own fields from what is left (so each kind's struct can deny unknown fields).
fn validate_host(value: &toml::Value, name: &str, kind: HostKind, check: &mut Checker<'_>) -> Option<Host> {
    let before = check.errors.len();
    let toml::Value::Table(table) = value else {
        check.absent("", "is not a table");
        return None;
    };
    let (mut own, mut shared) = (toml::Table::new(), toml::Table::new());
    for (k, v) in table {
        if hosts::HOST_OPTION_FIELDS.contains(&k.as_str()) {
            shared.insert(k.clone(), v.clone());
        } else {
            own.insert(k.clone(), v.clone());
        }
    }
    if kind == HostKind::Local && !shared.is_empty() {
        let field = shared.keys().next().expect("not empty").clone();
        check.absent(field, "does not apply to a local host");
    }
    let options = deserialize_table::<hosts::RawHostOptions>(&toml::Value::Table(shared), "", check);
    let own = toml::Value::Table(own);
    let mut problems = Vec::new();
    let options = options.map(|o| hosts::validate_options(&o, &mut problems));
    let spec = match kind {
        HostKind::Local => deserialize_table::<hosts::RawLocalHost>(&own, "", check).map(|_| HostSpec::Local),
        HostKind::Sftp => deserialize_table(&own, "", check)
            .and_then(|raw| hosts::validate_sftp(raw, &mut problems))
            .map(HostSpec::Sftp),
        HostKind::Ftp => deserialize_table(&own, "", check)
            .and_then(|raw| hosts::validate_ftp(raw, &mut problems))
            .map(HostSpec::Ftp),
        HostKind::Smb => deserialize_table(&own, "", check)
            .and_then(|raw| hosts::validate_smb(raw, &mut problems))
            .map(HostSpec::Smb),
        HostKind::S3 => deserialize_table(&own, "", check)
            .and_then(|raw| hosts::validate_s3(raw, &mut problems))
            .map(HostSpec::S3),
        HostKind::Azure => deserialize_table(&own, "", check)
            .and_then(|raw| hosts::validate_azure(raw, &mut problems))
            .map(HostSpec::Azure),
    };
    for (field, value, message) in problems {
        if value.is_empty() {
            check.absent(field, message);
        } else {
            check.error(field, value, message);
        }
    }
    (check.errors.len() == before).then_some(Host {
        name: name.to_string(),
        spec: spec?,
        options: options?,
    })
}

/// Declared host names and their kinds; see [`RawConfig::validate`].
type HostKinds = BTreeMap<String, Option<HostKind>>;

const NAME_RULE: &str = "is not a valid name: use 1-64 letters, digits, '-' or '_'";

/// Check one task's body. Returns the task only if it (and everything before it) added no error.
fn validate_task(
    raw: RawTask,
    hosts: &HostKinds,
    global: &Parameters,
    step_check: StepCheck<'_>,
    check: &mut Checker<'_>,
) -> Option<Task> {
    let before = check.errors.len();
    let steps = steps::validate_steps(&raw.steps, step_check, check);
    if raw.source.is_empty() && !steps::may_have_no_source(&steps) {
        check.absent("source", "is missing: a task needs at least one [[task.source]]");
    }
    if raw.destination.is_empty() {
        check.absent(
            "destination",
            "is missing: a task needs at least one [[task.destination]]",
        );
    }

    let mut sources = Vec::new();
    for (i, value) in raw.source.iter().enumerate() {
        if let Some(source) = validate_source(value, &format!("source[{i}]"), hosts, check) {
            sources.push(source);
        }
    }
    let mut destinations = Vec::new();
    for (i, value) in raw.destination.iter().enumerate() {
        if let Some(destination) = validate_destination(value, &format!("destination[{i}]"), hosts, check) {
            destinations.push(destination);
        }
    }
    let mut schedules = Vec::new();
    for (i, value) in raw.schedule.iter().enumerate() {
        let path = format!("schedule[{i}]");
        let Some(spec) = deserialize_table::<ScheduleSpec>(value, &path, check) else {
            continue;
        };
        match Schedule::compile(&spec) {
            Ok(_) => schedules.push(spec),
            Err(e) if e.value.is_empty() => check.absent(format!("{path}.{}", e.field), e.message),
            Err(e) => check.error(format!("{path}.{}", e.field), e.value, e.message),
        }
    }

    check_destinations_outside_sources(&sources, &destinations, check);

    if let Some(n) = raw.retries.filter(|n| *n > hosts::MAX_RETRIES) {
        check.error(
            "retries",
            n.to_string(),
            format!("is out of range (0 to {})", hosts::MAX_RETRIES),
        );
    }
    if let Some(n) = raw.retry_wait_secs.filter(|n| *n > hosts::MAX_RETRY_WAIT_SECS) {
        let message = format!("is out of range (0 to {})", hosts::MAX_RETRY_WAIT_SECS);
        check.error("retry_wait_secs", n.to_string(), message);
    }

    if let Some(n) = raw.max_run_secs.filter(|n| !(1..=MAX_RUN_SECS).contains(n)) {
        let message = format!("is out of range (1 to {MAX_RUN_SECS}: at most the 7 days a work batch waits)");
        check.error("max_run_secs", n.to_string(), message);
    }

    let mut problems = Vec::new();
    let parameters = params::validate(&raw.parameters, "parameters", &mut problems);
    for (field, value, message) in problems {
        if value.is_empty() {
            check.absent(field, message);
        } else {
            check.error(field, value, message);
        }
    }
    let mut next_actions = Vec::new();
    for (i, value) in raw.next_action.iter().enumerate() {
        if let Some(action) = actions::validate_action(value, &format!("next_action[{i}]"), check) {
            next_actions.push(action);
        }
    }
    check_parameters_used(&destinations, &next_actions, global, &parameters, check);
    for (field, name) in steps::password_params(&steps) {
        match params::declared(global, &parameters, name) {
            Some(true) => {}
            Some(false) => check.error(
                field,
                name,
                "is a plain parameter: a password must be a secure one (`name = { secure = \"env:VAR\" }`), which is sealed and masked",
            ),
            None => check.error(
                field,
                name,
                "is not declared in [task.parameters] or [parameters]",
            ),
        }
    }

    (check.errors.len() == before).then_some(Task {
        name: raw.name,
        description: raw.description,
        enabled: raw.enabled,
        sources,
        destinations,
        schedules,
        retries: raw.retries,
        retry_wait_secs: raw.retry_wait_secs,
        max_run_secs: raw.max_run_secs,
        steps,
        parameters,
        next_actions,
    })
}

/// Every `[Parm:Name]` a task's templates use must be declared (by the task or globally): an
/// unknown name is known now, not at the first run. Destination folders and names take no
/// secure parameter (paths end up in audit records and logs) and no error macros (there is no
/// failure while a file is delivered).
fn check_parameters_used(
    destinations: &[Destination],
    next_actions: &[NextAction],
    global: &Parameters,
    task: &Parameters,
    check: &mut Checker<'_>,
) {
    let mut templates: Vec<(String, &Template, bool)> = Vec::new();
    for (i, d) in destinations.iter().enumerate() {
        templates.push((format!("destination[{i}].folder"), &d.folder, true));
        templates.push((format!("destination[{i}].file_name"), &d.file_name, true));
    }
    for (i, n) in next_actions.iter().enumerate() {
        for (field, t) in actions::templates(&n.action) {
            templates.push((format!("next_action[{i}].{field}"), t, false));
        }
    }
    for (field, template, is_path) in templates {
        for name in template.param_names() {
            match params::declared(global, task, name) {
                None => {
                    let known: Vec<&str> = task.keys().chain(global.keys()).map(String::as_str).collect();
                    let guess = closest(name, known.iter().copied())
                        .map(|g| format!("did you mean [Parm:{g}]? "))
                        .unwrap_or_default();
                    check.error(
                        field.clone(),
                        template.as_str(),
                        format!(
                            "uses [Parm:{name}], which is not declared in [task.parameters] or [parameters]; {guess}(known: {})",
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ),
                    );
                }
                Some(true) if is_path => check.error(
                    field.clone(),
                    template.as_str(),
                    format!(
                        "uses the secure parameter [Parm:{name}]: a path shows in audit records and logs, so a secret may not be part of one"
                    ),
                ),
                Some(_) => {}
            }
        }
        if is_path && template.uses_error_macros() {
            check.error(
                field.clone(),
                template.as_str(),
                "uses [ErrorCode] or [ErrorDescription], which only next actions can use",
            );
        }
    }
}

/// A destination that is a source folder (or lies inside one the source searches) would feed the
/// task its own output — and with `delete_after`, delete what it just delivered. Refused. Only
/// folders without macros can be compared; a folder with macros is compared by its literal
/// beginning when that is a whole folder path.
fn check_destinations_outside_sources(
    sources: &[Source],
    destinations: &[Destination],
    check: &mut Checker<'_>,
) {
    let norm = |f: &str| -> String {
        let t = f.trim_end_matches('/');
        if t.is_empty() {
            "/".to_string()
        } else {
            t.to_string()
        }
    };
    let inside = |dir: &str, folder: &str| {
        dir == folder || dir.starts_with(&format!("{}/", folder.trim_end_matches('/')))
    };
    for (d, dest) in destinations.iter().enumerate() {
        let text = dest.folder.as_str();
        let literal = match text.find('[') {
            None => norm(text),
            // `/out/[yyyy]`: the part before the macro, when it ends at a folder boundary.
            Some(i) if text[..i].ends_with('/') => norm(&text[..i]),
            Some(_) => continue,
        };
        for (s, source) in sources.iter().enumerate() {
            if source.host != dest.host {
                continue;
            }
            let folder = norm(&source.folder);
            let same = literal == folder && !text.contains('[');
            if same || (inside(&literal, &folder) && source.subdirectories) {
                check.error(
                    format!("destination[{d}].folder"),
                    text,
                    format!(
                        "is {} source[{s}]'s folder {:?} on host {:?}: the task would collect its own deliveries{}",
                        if same { "the same as" } else { "inside" },
                        source.folder,
                        source.host,
                        if source.delete_after { " and delete them" } else { "" }
                    ),
                );
            }
        }
    }
}

/// `host` at `path` must be declared (or be `local`).
fn check_host(path: &str, name: &str, hosts: &HostKinds, check: &mut Checker<'_>) {
    if hosts.contains_key(name) {
        return;
    }
    let known: Vec<&str> = hosts.keys().map(String::as_str).collect();
    let message = match closest(name, known.iter().copied()) {
        Some(guess) => format!(
            "is not a known host; did you mean {guess:?}? (known: {})",
            known.join(", ")
        ),
        None => format!(
            "is not a known host (known: {}); declare it in a [[host]] table",
            known.join(", ")
        ),
    };
    check.error(format!("{path}.host"), name, message);
}

/// `folder` at `path` must not be blank, and must be absolute on a local host. `may_start_with_macro`
/// lets a destination folder start with a macro (a template such as `[TaskName]/out`).
fn check_folder(
    path: &str,
    host: &str,
    folder: &str,
    hosts: &HostKinds,
    may_start_with_macro: bool,
    check: &mut Checker<'_>,
) -> bool {
    let field = format!("{path}.folder");
    if folder.trim().is_empty() {
        check.error(field, folder, "is empty; write the folder's absolute path");
        return false;
    }
    if hosts.get(host) == Some(&Some(HostKind::Local))
        && Path::new(folder).is_relative()
        && !(may_start_with_macro && folder.starts_with('['))
    {
        check.error(field, folder, "must be an absolute path on a local host");
        return false;
    }
    if folder.split(['/', '\\']).any(|part| part == "..") {
        check.error(
            field,
            folder,
            "contains \"..\": write the folder it means (a path that climbs hides where files go)",
        );
        return false;
    }
    if folder.contains('\0') {
        check.error(field, folder, "contains a NUL character");
        return false;
    }
    true
}

/// Ten years: a larger minimum age can only be a mistake.
const MAX_MIN_AGE_SECS: u64 = 10 * 365 * 86_400;

fn validate_source(
    value: &toml::Value,
    path: &str,
    hosts: &HostKinds,
    check: &mut Checker<'_>,
) -> Option<Source> {
    let s = deserialize_table::<RawSource>(value, path, check)?;
    check_host(path, &s.host, hosts, check);
    if s.size_stable_ms > 600_000 {
        check.error(
            format!("{path}.size_stable_ms"),
            s.size_stable_ms.to_string(),
            "is out of range (0 to 600000 milliseconds)",
        );
    }
    if s.min_age_secs > MAX_MIN_AGE_SECS {
        check.error(
            format!("{path}.min_age_secs"),
            s.min_age_secs.to_string(),
            format!("is out of range (0 to {MAX_MIN_AGE_SECS} seconds, ten years)"),
        );
    }
    check_folder(path, &s.host, &s.folder, hosts, false, check);
    let masks = MaskList::parse(&s.masks)
        .map_err(|m| check.error(format!("{path}.masks"), s.masks.as_str(), m))
        .ok();
    let exclude = match &s.exclude {
        Some(text) => MaskList::parse(text)
            .map(Some)
            .map_err(|m| check.error(format!("{path}.exclude"), text.as_str(), m))
            .ok(),
        None => Some(None),
    };
    Some(Source {
        host: s.host,
        folder: s.folder,
        masks: masks?,
        exclude: exclude?,
        subdirectories: s.subdirectories,
        new_files_only: s.new_files_only,
        min_age_secs: s.min_age_secs,
        size_stable_ms: s.size_stable_ms,
        delete_after: s.delete_after,
        max_files: s.max_files,
    })
}

fn validate_destination(
    value: &toml::Value,
    path: &str,
    hosts: &HostKinds,
    check: &mut Checker<'_>,
) -> Option<Destination> {
    let d = deserialize_table::<RawDestination>(value, path, check)?;
    check_host(path, &d.host, hosts, check);
    let folder = if check_folder(path, &d.host, &d.folder, hosts, true, check) {
        Template::parse(&d.folder)
            .map_err(|m| check.error(format!("{path}.folder"), d.folder.as_str(), m))
            .ok()
    } else {
        None
    };
    let field = format!("{path}.file_name");
    let file_name = match Template::parse(&d.file_name) {
        Ok(_) if d.file_name.trim().is_empty() => {
            check.error(field, d.file_name.as_str(), "is empty; the default is [OrigName]");
            None
        }
        Ok(_) if d.file_name.contains(['/', '\\']) => {
            check.error(
                field,
                d.file_name.as_str(),
                "contains a path separator; put folders in destination.folder",
            );
            None
        }
        Ok(_) if matches!(d.file_name.trim(), "." | "..") => {
            check.error(field, d.file_name.as_str(), "is not a file name");
            None
        }
        Ok(t) => Some(t),
        Err(m) => {
            check.error(field, d.file_name.as_str(), m);
            None
        }
    };
    let mode = match &d.mode {
        None => Ok(None),
        Some(m) => parse_mode(m)
            .map(Some)
            .map_err(|why| check.error(format!("{path}.mode"), m.as_str(), why)),
    };
    if d.mode.is_some()
        && let Some(Some(kind)) = hosts.get(&d.host)
        && !matches!(kind, HostKind::Local | HostKind::Sftp)
    {
        check.error(
            format!("{path}.mode"),
            d.mode.clone().unwrap_or_default(),
            format!(
                "is applied only where files have POSIX permission bits (host kinds local and sftp); host {:?} is {}",
                d.host,
                kind.as_str()
            ),
        );
    }
    Some(Destination {
        host: d.host,
        folder: folder?,
        file_name: file_name?,
        relative_subdirs: d.relative_subdirs,
        create_dirs: d.create_dirs,
        overwrite: d.overwrite,
        mode: mode.ok()?,
    })
}

/// Permission bits written in octal, `"640"` or `"0640"`: read, write and execute for owner,
/// group and others, no set-id or sticky bits.
fn parse_mode(text: &str) -> Result<u32, &'static str> {
    let digits = text.strip_prefix('0').filter(|d| d.len() == 3).unwrap_or(text);
    let octal = digits.len() == 3 && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if octal => Ok(mode),
        _ => Err("is not a file mode: three octal digits such as \"0640\" (at most \"0777\")"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_three_octal_digits() {
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("000"), Ok(0));
        for bad in ["0986", "4755", "+64", "0o640", "64", "07777", "", "rw-r-----"] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
    }

    const GOOD: &str = r#"
[[task]]
name = "payroll"
[[task.source]]
host = "local"
folder = "/data/in"
masks = "*.csv;report?.txt"
[[task.destination]]
host = "local"
folder = "/data/out/[yyyy]"
file_name = "[OrigBase]-[RunID].[OrigExt]"
overwrite = "unique"
[[task.schedule]]
every_minutes = 5
"#;

    #[test]
    fn a_good_file_validates() {
        let config = parse_toml(GOOD).expect("parses").validate().expect("valid");
        let task = &config.tasks["payroll"];
        assert_eq!(task.destinations[0].overwrite, Overwrite::Unique);
        assert!(task.sources[0].new_files_only, "new-files-only is the default");
        assert_eq!(task.compiled_schedules().len(), 1);
        let json = serde_json::to_string(&config).expect("serializes");
        let back: Config = serde_json::from_str(&json).expect("round-trips");
        assert_eq!(back, config);
    }

    #[test]
    fn relative_local_folders_resolve_against_the_working_directory() {
        let mut raw = parse_toml(&GOOD.replace("/data/in", "./in")).expect("parses");
        raw.resolve_relative_paths(Path::new("/work"));
        let config = raw.validate().expect("valid");
        assert_eq!(config.tasks["payroll"].sources[0].folder, "/work/in");
    }

    /// `(field, value, message)` of every error of `text`, which must be rejected.
    fn rejected(text: &str) -> Vec<(String, String, String)> {
        let errors = match parse_toml(text) {
            Ok(raw) => raw.validate().expect_err("the configuration is invalid").0,
            Err(errors) => errors.0,
        };
        errors
            .into_iter()
            .map(|e| (e.field, e.value, e.message))
            .collect()
    }

    #[test]
    fn every_mistake_of_a_task_is_reported_at_once() {
        let text = GOOD
            .replace("masks = ", "subdirectories = \"yes\"\nmaskss = ")
            .replace("overwrite = \"unique\"", "overwrite = \"replace\"")
            .replace("every_minutes = 5", "every_minutes = 0");
        // Fields of one table come in key order, not line order.
        let errors = rejected(&text);
        let fields: Vec<&str> = errors.iter().map(|(f, _, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "source[0].maskss",
                "source[0].subdirectories",
                "destination[0].overwrite",
                "schedule[0].every_minutes"
            ],
            "{errors:#?}"
        );
        assert!(errors[0].2.contains("did you mean `masks`?"), "{}", errors[0].2);
        assert_eq!(errors[1].1, "yes");
        assert_eq!(errors[1].2, "is a string, expected true or false");
        assert_eq!(errors[2].2, "is not one of: overwrite, skip, fail, unique");
    }

    #[test]
    fn missing_fields_are_named_by_their_path() {
        let errors = rejected(&GOOD.replace("folder = \"/data/in\"\n", ""));
        assert_eq!(
            errors,
            [(
                "source[0].folder".to_string(),
                String::new(),
                "is missing (required)".to_string()
            )]
        );
        // A misspelt required field is reported once, as the typo.
        let errors = rejected(&GOOD.replace("folder = \"/data/in\"", "folderr = \"/data/in\""));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].0, "source[0].folderr");
        assert_eq!(errors[0].1, "/data/in");
    }

    #[test]
    fn empty_values_are_shown_as_empty_strings() {
        let text = GOOD.replace("folder = \"/data/in\"", "folder = \"  \"");
        let mut raw = parse_toml(&text).expect("parses");
        raw.resolve_relative_paths(Path::new("/work"));
        let error = &raw.validate().expect_err("blank folder").0[0];
        assert_eq!(
            error.to_string(),
            r#"task "payroll": source[0].folder: "  " is empty; write the folder's absolute path"#
        );
        let error = &parse_toml(&text.replace("\"  \"", "\"\""))
            .expect("parses")
            .validate()
            .expect_err("empty folder")
            .0[0];
        assert_eq!(
            error.to_string(),
            r#"task "payroll": source[0].folder: "" is empty; write the folder's absolute path"#
        );
    }

    #[test]
    fn a_destination_in_its_own_source_is_refused() {
        let text = GOOD.replace("/data/out/[yyyy]", "/data/in/");
        let errors = rejected(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].0, "destination[0].folder");
        assert!(
            errors[0]
                .2
                .starts_with("is the same as source[0]'s folder \"/data/in\""),
            "{}",
            errors[0].2
        );
        // Inside it, when the source searches subfolders (also through a macro).
        let text = GOOD
            .replace("masks = ", "subdirectories = true\nmasks = ")
            .replace("/data/out/[yyyy]", "/data/in/archive/[yyyy]");
        assert!(rejected(&text)[0].2.starts_with("is inside source[0]'s folder"));
        // Beside it, or inside it without subfolders searched: fine.
        for folder in ["/data/input", "/data/in/archive/[yyyy]"] {
            let text = GOOD.replace("/data/out/[yyyy]", folder);
            parse_toml(&text).expect("parses").validate().expect("valid");
        }
    }

    #[test]
    fn duplicate_names_and_syntax_errors_say_where() {
        let errors = rejected(&format!("{GOOD}\n{GOOD}"));
        assert_eq!(
            errors,
            [(
                "name".to_string(),
                "payroll".to_string(),
                "is used by more than one task (task[0] and task[1])".to_string()
            )]
        );
        let errors = rejected(&GOOD.replace("[[task.source]]", "[[task.source]"));
        assert_eq!(errors[0].0, "line 4, column 15");
        assert_eq!(errors[0].1, "[[task.source]");
    }
}
