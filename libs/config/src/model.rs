//! Hosts and tasks: the raw (as written) form and the validated runtime form.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::schedule::{Schedule, ScheduleSpec};
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawHost {
    /// Unique host name that tasks refer to.
    name: String,
    /// `local` (more kinds arrive with remote hosts).
    kind: HostKind,
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
    /// Where files come from, in order.
    #[serde(default)]
    source: Vec<RawSource>,
    /// Where files go; each file is delivered to every destination.
    #[serde(default)]
    destination: Vec<RawDestination>,
    /// When the task runs by itself.
    #[serde(default)]
    schedule: Vec<ScheduleSpec>,
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
    /// Skip files whose size or modification time changes during this many milliseconds.
    #[serde(default)]
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
}

fn default_true() -> bool {
    true
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    pub name: String,
    pub kind: HostKind,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HostKind {
    Local,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub sources: Vec<Source>,
    pub destinations: Vec<Destination>,
    pub schedules: Vec<ScheduleSpec>,
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

// ---------------------------------------------------------------------------------------------
// Parsing and validation.
// ---------------------------------------------------------------------------------------------

/// Parse TOML text into the raw model. Syntax errors and unknown top-level keys are reported here;
/// everything else is reported by [`RawConfig::validate`].
pub fn parse_toml(text: &str) -> Result<RawConfig, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        let span = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_default();
        ConfigErrors(vec![ConfigError {
            scope: String::new(),
            field: span,
            value: String::new(),
            message: e.message().to_string(),
        }])
    })
}

/// Collects errors for one scope (a task or a host).
struct Checker<'a> {
    scope: String,
    errors: &'a mut Vec<ConfigError>,
}

impl Checker<'_> {
    fn error(&mut self, field: impl Into<String>, value: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            scope: self.scope.clone(),
            field: field.into(),
            value: value.into(),
            message: message.into(),
        });
    }
}

/// Deserialize one table, reporting the failing field path and its value.
fn deserialize_table<T: serde::de::DeserializeOwned>(
    value: &toml::Value,
    check: &mut Checker<'_>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            let shown = lookup(value, &field).map(render_value).unwrap_or_default();
            let message = e.into_inner().message().to_string();
            check.error(field, shown, message);
            None
        }
    }
}

/// Find the value at a serde_path_to_error path such as `source[0].folder`.
fn lookup<'v>(value: &'v toml::Value, path: &str) -> Option<&'v toml::Value> {
    let mut v = value;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        v = v.get(key)?;
        if let Some(i) = index {
            v = v.get(i)?;
        }
    }
    Some(v)
}

fn render_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(_) | toml::Value::Array(_) => String::new(),
        other => other.to_string(),
    }
}

fn name_of(value: &toml::Value) -> Option<&str> {
    value.get("name").and_then(toml::Value::as_str)
}

impl RawConfig {
    /// Resolve relative local folders against `base` (the directory `ferry apply` runs in).
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
                    if is_local && !folder.is_empty() && Path::new(folder.as_str()).is_relative() {
                        let joined: PathBuf = base.join(folder.trim_start_matches("./"));
                        *folder = joined.to_string_lossy().into_owned();
                    }
                }
            }
        }
    }

    /// Validate everything; return all problems at once.
    pub fn validate(&self) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut config = Config::default();
        config.hosts.insert(
            LOCAL_HOST.to_string(),
            Host {
                name: LOCAL_HOST.to_string(),
                kind: HostKind::Local,
            },
        );

        for (i, value) in self.host.iter().enumerate() {
            let scope = match name_of(value) {
                Some(n) => format!("host {n:?}"),
                None => format!("host[{i}]"),
            };
            let mut check = Checker {
                scope,
                errors: &mut errors,
            };
            let Some(raw) = deserialize_table::<RawHost>(value, &mut check) else {
                continue;
            };
            if !is_valid_name(&raw.name) {
                check.error("name", &raw.name, NAME_RULE);
            } else if raw.name == LOCAL_HOST {
                check.error(
                    "name",
                    &raw.name,
                    "is built in (the node's own file system); choose another name",
                );
            } else if config.hosts.contains_key(&raw.name) {
                check.error("name", &raw.name, "is declared twice");
            } else {
                config.hosts.insert(
                    raw.name.clone(),
                    Host {
                        name: raw.name,
                        kind: raw.kind,
                    },
                );
            }
        }

        let mut seen = BTreeSet::new();
        for (i, value) in self.task.iter().enumerate() {
            let scope = match name_of(value) {
                Some(n) => format!("task {n:?}"),
                None => format!("task[{i}]"),
            };
            let mut check = Checker {
                scope,
                errors: &mut errors,
            };
            let Some(raw) = deserialize_table::<RawTask>(value, &mut check) else {
                continue;
            };
            if !is_valid_name(&raw.name) {
                check.error("name", &raw.name, NAME_RULE);
                continue;
            }
            if !seen.insert(raw.name.clone()) {
                check.error("name", &raw.name, "is used by more than one task");
                continue;
            }
            if let Some(task) = validate_task(raw, &config.hosts, &mut check) {
                config.tasks.insert(task.name.clone(), task);
            }
        }

        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

const NAME_RULE: &str = "is not a valid name: use 1-64 letters, digits, '-' or '_'";

fn validate_task(raw: RawTask, hosts: &BTreeMap<String, Host>, check: &mut Checker<'_>) -> Option<Task> {
    let before = check.errors.len();
    if raw.source.is_empty() {
        check.error(
            "source",
            "",
            "is missing: a task needs at least one [[task.source]]",
        );
    }
    if raw.destination.is_empty() {
        check.error(
            "destination",
            "",
            "is missing: a task needs at least one [[task.destination]]",
        );
    }
    let host_exists = |field: String, name: &str, check: &mut Checker<'_>| {
        if !hosts.contains_key(name) {
            let known: Vec<&str> = hosts.keys().map(String::as_str).collect();
            check.error(
                field,
                name,
                format!("is not a known host (known: {})", known.join(", ")),
            );
        }
    };

    let mut sources = Vec::new();
    for (i, s) in raw.source.into_iter().enumerate() {
        host_exists(format!("source[{i}].host"), &s.host, check);
        if s.folder.trim().is_empty() {
            check.error(format!("source[{i}].folder"), &s.folder, "is empty");
        } else if hosts.get(&s.host).is_some_and(|h| h.kind == HostKind::Local)
            && Path::new(&s.folder).is_relative()
        {
            check.error(
                format!("source[{i}].folder"),
                &s.folder,
                "must be an absolute path on a local host",
            );
        }
        let masks = MaskList::parse(&s.masks)
            .map_err(|m| check.error(format!("source[{i}].masks"), &s.masks, m))
            .ok();
        let exclude = match &s.exclude {
            Some(text) => MaskList::parse(text)
                .map(Some)
                .map_err(|m| check.error(format!("source[{i}].exclude"), text, m))
                .ok(),
            None => Some(None),
        };
        if let (Some(masks), Some(exclude)) = (masks, exclude) {
            sources.push(Source {
                host: s.host,
                folder: s.folder,
                masks,
                exclude,
                subdirectories: s.subdirectories,
                new_files_only: s.new_files_only,
                min_age_secs: s.min_age_secs,
                size_stable_ms: s.size_stable_ms,
                delete_after: s.delete_after,
                max_files: s.max_files,
            });
        }
    }

    let mut destinations = Vec::new();
    for (i, d) in raw.destination.into_iter().enumerate() {
        host_exists(format!("destination[{i}].host"), &d.host, check);
        if d.folder.trim().is_empty() {
            check.error(format!("destination[{i}].folder"), &d.folder, "is empty");
        } else if hosts.get(&d.host).is_some_and(|h| h.kind == HostKind::Local)
            && Path::new(&d.folder).is_relative()
            && !d.folder.starts_with('[')
        {
            check.error(
                format!("destination[{i}].folder"),
                &d.folder,
                "must be an absolute path on a local host",
            );
        }
        let folder = Template::parse(&d.folder)
            .map_err(|m| check.error(format!("destination[{i}].folder"), &d.folder, m))
            .ok();
        let file_name = match Template::parse(&d.file_name) {
            Ok(_) if d.file_name.trim().is_empty() => {
                check.error(format!("destination[{i}].file_name"), &d.file_name, "is empty");
                None
            }
            Ok(_) if d.file_name.contains('/') || d.file_name.contains('\\') => {
                check.error(
                    format!("destination[{i}].file_name"),
                    &d.file_name,
                    "contains a path separator; put folders in destination.folder",
                );
                None
            }
            Ok(t) => Some(t),
            Err(m) => {
                check.error(format!("destination[{i}].file_name"), &d.file_name, m);
                None
            }
        };
        if let (Some(folder), Some(file_name)) = (folder, file_name) {
            destinations.push(Destination {
                host: d.host,
                folder,
                file_name,
                relative_subdirs: d.relative_subdirs,
                create_dirs: d.create_dirs,
                overwrite: d.overwrite,
            });
        }
    }

    for (i, spec) in raw.schedule.iter().enumerate() {
        if let Err(e) = Schedule::compile(spec) {
            check.error(format!("schedule[{i}].{}", e.field), e.value, e.message);
        }
    }

    (check.errors.len() == before).then(|| Task {
        name: raw.name,
        description: raw.description,
        enabled: raw.enabled,
        sources,
        destinations,
        schedules: raw.schedule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
