//! Process steps of a task (`[[task.steps]]`): what happens to files between source and
//! destination (zip, unzip, rename, checksum, find-and-replace, a custom command, PGP, Certs
//! Backup and Restore). The processes themselves live in `ferry-processes`, which depends on this
//! crate; so this module checks the *form* of each step (known process, its scope, its options
//! and their types, templates), and the processes' own constructors check the rest when the
//! scheduler validates a configuration ([`crate::RawConfig::validate_with`] and
//! `ferry_processes::configured::check`).
//!
//! Order: PER-FILE steps run first, in the order written, on each collected file; PER-TASK steps
//! run after them, once per run, on every file the PER-FILE steps handed on. A PER-FILE step
//! after a PER-TASK one is refused (it could only run on the PER-TASK outputs, which is what a
//! PER-TASK step is for).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Template;
use crate::model::{Checker, closest, deserialize_table};

/// When a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepScope {
    /// For each collected file, before its destinations.
    PerFile,
    /// Once per run after every file was collected, on all of them (or none).
    PerTask,
}

impl StepScope {
    pub fn as_str(self) -> &'static str {
        match self {
            StepScope::PerFile => "per-file",
            StepScope::PerTask => "per-task",
        }
    }
}

/// One validated step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub scope: StepScope,
    #[serde(flatten)]
    pub process: StepProcess,
}

/// The process of a step with its options, as written (templates parsed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "process", rename_all = "kebab-case")]
pub enum StepProcess {
    Zip(ZipOptions),
    Unzip(UnzipOptions),
    Rename(RenameOptions),
    Checksum(ChecksumOptions),
    Replace(ReplaceOptions),
    Command(CommandOptions),
    PgpEncrypt(PgpEncryptOptions),
    PgpDecrypt(PgpDecryptOptions),
    PgpSign(PgpSignOptions),
    PgpVerify(PgpVerifyOptions),
    CertsBackup(CertsOptions),
    CertsRestore(CertsOptions),
    ConfigBundle(ConfigBundleOptions),
}

/// Every process name, as `process = "..."` takes it.
pub const PROCESS_NAMES: &[&str] = &[
    "zip",
    "unzip",
    "rename",
    "checksum",
    "replace",
    "command",
    "pgp-encrypt",
    "pgp-decrypt",
    "pgp-sign",
    "pgp-verify",
    "certs-backup",
    "certs-restore",
    "config-bundle",
];

impl StepProcess {
    pub fn name(&self) -> &'static str {
        match self {
            StepProcess::Zip(_) => "zip",
            StepProcess::Unzip(_) => "unzip",
            StepProcess::Rename(_) => "rename",
            StepProcess::Checksum(_) => "checksum",
            StepProcess::Replace(_) => "replace",
            StepProcess::Command(_) => "command",
            StepProcess::PgpEncrypt(_) => "pgp-encrypt",
            StepProcess::PgpDecrypt(_) => "pgp-decrypt",
            StepProcess::PgpSign(_) => "pgp-sign",
            StepProcess::PgpVerify(_) => "pgp-verify",
            StepProcess::CertsBackup(_) => "certs-backup",
            StepProcess::CertsRestore(_) => "certs-restore",
            StepProcess::ConfigBundle(_) => "config-bundle",
        }
    }
}

/// The scope a process runs in when `scope` is not written, and the scopes it can run in.
fn scopes(process: &str) -> (StepScope, &'static [StepScope]) {
    use StepScope::*;
    match process {
        // Makes its files from the stores, not from inputs: once per run.
        "certs-backup" | "config-bundle" => (PerTask, &[PerTask]),
        // Restores each backup file it is given.
        "certs-restore" => (PerFile, &[PerFile]),
        _ => (PerFile, &[PerFile, PerTask]),
    }
}

/// `zip`: the inputs into one archive (PER-TASK: the whole run's files; PER-FILE: each file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZipOptions {
    /// The archive's name; default `[OrigName].zip` (the first input's name). A PER-TASK archive
    /// is usually named after the task: `[TaskName]_[yyyy][mm][dd].zip`.
    #[serde(default = "default_zip_name")]
    pub name: Template,
    /// Deflate level 0-9.
    #[serde(default = "default_zip_level")]
    pub level: u8,
}

fn default_zip_name() -> Template {
    Template::parse("[OrigName].zip").expect("a valid built-in template")
}
fn default_zip_level() -> u8 {
    6
}

/// `unzip`: each entry of each archive becomes a file; zip-slip and bomb safe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnzipOptions {
    /// Most entries an archive may have.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Most bytes all entries may expand to together (counted as they are decompressed).
    #[serde(default = "default_max_expanded_bytes")]
    pub max_expanded_bytes: u64,
}

fn default_max_entries() -> u64 {
    10_000
}
fn default_max_expanded_bytes() -> u64 {
    10 * 1024 * 1024 * 1024
}

/// `rename`: the file's new name, a macro template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameOptions {
    pub name: Template,
}

/// `checksum`: writes `<name>.sha256` beside the file; no options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksumOptions {}

/// `replace`: find and replace in a text file, line by line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceOptions {
    /// The text (or, with `regex = true`, the regular expression) to find.
    pub find: String,
    /// What replaces it; with `regex = true`, `$1` and `${name}` insert groups.
    #[serde(default)]
    pub replace: String,
    #[serde(default)]
    pub regex: bool,
    #[serde(default)]
    pub ignore_case: bool,
    /// Longest line accepted; a longer one fails the file.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: u64,
}

fn default_max_line_bytes() -> u64 {
    16 * 1024 * 1024
}

/// How a command gets the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandIo {
    /// `[InFile]` / `[OutFile]` paths.
    #[default]
    Path,
    /// stdin / stdout.
    Stdio,
}

/// `command`: an executable run on each file, without a shell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOptions {
    /// Absolute path of the executable.
    pub program: String,
    /// Arguments, each a template with `[InFile]`, `[OutFile]` and the file-name macros.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables (values are templates like the arguments).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Keep the service's environment instead of starting from an empty one.
    #[serde(default)]
    pub inherit_env: bool,
    #[serde(default)]
    pub io: CommandIo,
    /// Seconds before the command (and its process group) is killed and the file fails.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Bytes of stdout and of stderr kept in the run record (each).
    #[serde(default = "default_capture_bytes")]
    pub capture_bytes: u64,
}

fn default_timeout_secs() -> u64 {
    600
}
fn default_capture_bytes() -> u64 {
    64 * 1024
}

/// Longest command timeout: a day.
pub const MAX_COMMAND_TIMEOUT_SECS: u64 = 86_400;
/// Most command output kept per stream in a run record.
pub const MAX_CAPTURE_BYTES: u64 = 1024 * 1024;

/// `pgp-encrypt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgpEncryptOptions {
    /// Key selectors (fingerprint, key id or user id text) of the node's PGP public keys.
    pub recipients: Vec<String>,
    /// Also sign with this secret key.
    #[serde(default)]
    pub signer: Option<String>,
    #[serde(default)]
    pub armor: bool,
    /// Output name; default `[OrigName].pgp` (`.asc` armored).
    #[serde(default)]
    pub name: Option<Template>,
}

/// `pgp-decrypt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgpDecryptOptions {
    /// Fail unless the message carries a valid signature of this key.
    #[serde(default)]
    pub require_signer: Option<String>,
    /// Output name; default: the input's without `.pgp`, `.gpg` or `.asc`.
    #[serde(default)]
    pub name: Option<Template>,
    /// Most bytes the plaintext may have (a compressed message can expand without bound).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// `pgp-sign`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgpSignOptions {
    pub signer: String,
    #[serde(default)]
    pub armor: bool,
    /// A detached signature beside the file instead of a signed message.
    #[serde(default)]
    pub detached: bool,
    #[serde(default)]
    pub name: Option<Template>,
}

/// `pgp-verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgpVerifyOptions {
    /// The key that must have signed; default any key the node holds.
    #[serde(default)]
    pub signer: Option<String>,
    #[serde(default)]
    pub name: Option<Template>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// `certs-backup` and `certs-restore`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertsOptions {
    /// The PFX password: the name of a secure parameter (`[parameters]` or `[task.parameters]`,
    /// sealed under the keymat and masked everywhere) ...
    #[serde(default)]
    pub password_param: Option<String>,
    /// ... or the environment variable of the transfer service that holds it. Exactly one of
    /// the two; the password itself never appears in a run record.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Certs Backup's file names.
    #[serde(default = "default_personal_name")]
    pub personal_name: String,
    #[serde(default = "default_other_name")]
    pub other_name: String,
}

/// `config-bundle`: the node's configuration bundle (`ferry config export`: configuration,
/// new-files-only and schedule state, certificate stores and PGP key rings, secrets sealed under
/// the keymat) as one file, for a standby at another site (issue 12's file-based replication).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigBundleOptions {
    /// The bundle's file name.
    #[serde(default = "default_bundle_name")]
    pub name: String,
}

fn default_bundle_name() -> String {
    "FerryBundle.tar".into()
}

fn default_personal_name() -> String {
    "CertsPersonal.pfx".into()
}
fn default_other_name() -> String {
    "CertsOtherPeople.p7b".into()
}

/// The parameters `steps` name as passwords (`password_param`), with where: each must be a
/// declared secure parameter.
pub fn password_params(steps: &[Step]) -> Vec<(String, &str)> {
    steps
        .iter()
        .enumerate()
        .filter_map(|(n, s)| match &s.process {
            StepProcess::CertsBackup(o) | StepProcess::CertsRestore(o) => o
                .password_param
                .as_deref()
                .map(|p| (format!("steps[{n}].password_param"), p)),
            _ => None,
        })
        .collect()
}

/// Whether `steps` lets a task have no source: a PER-TASK step that makes files from nothing
/// (Certs Backup, a configuration bundle).
pub fn may_have_no_source(steps: &[Step]) -> bool {
    steps.iter().any(|s| {
        s.scope == StepScope::PerTask
            && matches!(
                s.process,
                StepProcess::CertsBackup(_) | StepProcess::ConfigBundle(_)
            )
    })
}

/// A problem the processes' constructors found in one step: the option and its value as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepProblem {
    pub option: String,
    pub value: String,
    pub message: String,
}

/// What checks a step beyond its form (`ferry_processes::configured::check`).
pub type StepCheck<'a> = &'a dyn Fn(&Step) -> Result<(), StepProblem>;

/// Read `[[task.steps]]` (the raw tables), reporting every problem under `steps[i]`.
pub(crate) fn validate_steps(
    values: &[toml::Value],
    step_check: StepCheck<'_>,
    check: &mut Checker<'_>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut per_task_at: Option<usize> = None;
    for (i, value) in values.iter().enumerate() {
        let path = format!("steps[{i}]");
        let Some(step) = validate_step(value, &path, check) else {
            continue;
        };
        match (step.scope, per_task_at) {
            (StepScope::PerTask, None) => per_task_at = Some(i),
            (StepScope::PerFile, Some(t)) => check.error(
                format!("{path}.scope"),
                "per-file",
                format!(
                    "comes after steps[{t}], which is per-task: per-file steps run first, on each file, \
                     so list them before the per-task ones"
                ),
            ),
            _ => {}
        }
        if let Err(p) = step_check(&step) {
            let field = if p.option.is_empty() {
                path.clone()
            } else {
                format!("{path}.{}", p.option)
            };
            let message = format!("({} step) {}", step.process.name(), p.message);
            if p.value.is_empty() {
                check.absent(field, message);
            } else {
                check.error(field, p.value, message);
            }
        }
        steps.push(step);
    }
    steps
}

fn validate_step(value: &toml::Value, path: &str, check: &mut Checker<'_>) -> Option<Step> {
    let Some(table) = value.as_table() else {
        check.absent(path, "is not a table");
        return None;
    };
    let Some(process) = table.get("process") else {
        check.absent(
            format!("{path}.process"),
            format!("is missing (required): one of {}", PROCESS_NAMES.join(", ")),
        );
        return None;
    };
    let Some(process) = process.as_str() else {
        check.error(format!("{path}.process"), process.to_string(), "is not a string");
        return None;
    };
    if !PROCESS_NAMES.contains(&process) {
        let message = match closest(process, PROCESS_NAMES.iter().copied()) {
            Some(guess) => format!(
                "is not a known process; did you mean {guess:?}? (known: {})",
                PROCESS_NAMES.join(", ")
            ),
            None => format!("is not a known process (known: {})", PROCESS_NAMES.join(", ")),
        };
        check.error(format!("{path}.process"), process, message);
        return None;
    }
    let (default_scope, allowed) = scopes(process);
    let scope = match table.get("scope") {
        None => Some(default_scope),
        Some(toml::Value::String(s)) => match s.as_str() {
            "per-file" => Some(StepScope::PerFile),
            "per-task" => Some(StepScope::PerTask),
            _ => {
                check.error(
                    format!("{path}.scope"),
                    s.as_str(),
                    "is not one of: per-file, per-task",
                );
                None
            }
        },
        Some(other) => {
            check.error(format!("{path}.scope"), other.to_string(), "is not a string");
            None
        }
    };
    let scope = scope.and_then(|scope| {
        if allowed.contains(&scope) {
            return Some(scope);
        }
        check.error(
            format!("{path}.scope"),
            scope.as_str(),
            format!(
                "is not possible for process {process:?}: it runs {} only",
                allowed[0].as_str()
            ),
        );
        None
    });
    let mut options = table.clone();
    options.remove("process");
    options.remove("scope");
    let options = toml::Value::Table(options);
    let process = match process {
        "zip" => deserialize_table(&options, path, check).map(StepProcess::Zip),
        "unzip" => deserialize_table(&options, path, check).map(StepProcess::Unzip),
        "rename" => deserialize_table(&options, path, check).map(StepProcess::Rename),
        "checksum" => deserialize_table(&options, path, check).map(StepProcess::Checksum),
        "replace" => deserialize_table(&options, path, check).map(StepProcess::Replace),
        "command" => deserialize_table(&options, path, check).map(StepProcess::Command),
        "pgp-encrypt" => deserialize_table(&options, path, check).map(StepProcess::PgpEncrypt),
        "pgp-decrypt" => deserialize_table(&options, path, check).map(StepProcess::PgpDecrypt),
        "pgp-sign" => deserialize_table(&options, path, check).map(StepProcess::PgpSign),
        "pgp-verify" => deserialize_table(&options, path, check).map(StepProcess::PgpVerify),
        "certs-backup" => deserialize_table(&options, path, check).map(StepProcess::CertsBackup),
        "certs-restore" => deserialize_table(&options, path, check).map(StepProcess::CertsRestore),
        "config-bundle" => deserialize_table(&options, path, check).map(StepProcess::ConfigBundle),
        _ => unreachable!("checked against PROCESS_NAMES"),
    }?;
    if let StepProcess::Command(c) = &process {
        if !(1..=MAX_COMMAND_TIMEOUT_SECS).contains(&c.timeout_secs) {
            check.error(
                format!("{path}.timeout_secs"),
                c.timeout_secs.to_string(),
                format!("is out of range (1 to {MAX_COMMAND_TIMEOUT_SECS})"),
            );
            return None;
        }
        if c.capture_bytes > MAX_CAPTURE_BYTES {
            check.error(
                format!("{path}.capture_bytes"),
                c.capture_bytes.to_string(),
                format!("is out of range (0 to {MAX_CAPTURE_BYTES})"),
            );
            return None;
        }
    }
    Some(Step {
        scope: scope?,
        process,
    })
}

#[cfg(test)]
mod tests {
    use crate::parse_toml;

    fn errors(steps: &str) -> Vec<String> {
        let toml = format!(
            "[[task]]\nname = \"t\"\n[[task.source]]\nhost = \"local\"\nfolder = \"/in\"\n\
             [[task.destination]]\nhost = \"local\"\nfolder = \"/out\"\n{steps}"
        );
        match parse_toml(&toml).expect("parses").validate() {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn steps_are_read_with_defaults() {
        let toml = "[[task]]\nname = \"t\"\n[[task.source]]\nhost = \"local\"\nfolder = \"/in\"\n\
                    [[task.destination]]\nhost = \"local\"\nfolder = \"/out\"\n\
                    [[task.steps]]\nprocess = \"checksum\"\n\
                    [[task.steps]]\nprocess = \"zip\"\nscope = \"per-task\"\nname = \"[TaskName].zip\"\n";
        let config = parse_toml(toml).expect("parses").validate().expect("valid");
        let steps = &config.tasks["t"].steps;
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].scope, super::StepScope::PerFile);
        assert_eq!(steps[1].scope, super::StepScope::PerTask);
        let json = serde_json::to_string(&config).expect("serializes");
        let back: crate::Config = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, config);
    }

    #[test]
    fn bad_steps_name_task_step_option_and_value() {
        for (steps, expected) in [
            (
                "[[task.steps]]\nprocess = \"zipp\"",
                "task \"t\": steps[0].process: \"zipp\" is not a known process; did you mean \"zip\"?",
            ),
            (
                "[[task.steps]]\nprocess = \"certs-backup\"\nscope = \"per-file\"\npassword_env = \"P\"",
                "task \"t\": steps[0].scope: \"per-file\" is not possible for process \"certs-backup\": it runs per-task only",
            ),
            (
                "[[task.steps]]\nprocess = \"rename\"\nname = \"[Orig]\"",
                "task \"t\": steps[0].name: \"[Orig]\"",
            ),
            (
                "[[task.steps]]\nprocess = \"zip\"\nlevl = 3",
                "task \"t\": steps[0].levl: \"3\" is not a known field; did you mean `level`?",
            ),
            (
                "[[task.steps]]\nprocess = \"rename\"",
                "task \"t\": steps[0].name: is missing (required)",
            ),
            (
                "[[task.steps]]\nprocess = \"command\"\nprogram = \"/bin/true\"\ntimeout_secs = 0",
                "task \"t\": steps[0].timeout_secs: \"0\" is out of range",
            ),
            (
                "[[task.steps]]\nprocess = \"zip\"\nscope = \"per-task\"\n[[task.steps]]\nprocess = \"checksum\"",
                "task \"t\": steps[1].scope: \"per-file\" comes after steps[0], which is per-task",
            ),
        ] {
            let got = errors(steps);
            assert!(
                got.iter().any(|e| e.starts_with(expected)),
                "{steps}: expected {expected:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn only_a_certs_backup_task_may_have_no_source() {
        let head = "[[task]]\nname = \"t\"\n[[task.destination]]\nhost = \"local\"\nfolder = \"/out\"\n";
        let backup = format!("{head}[[task.steps]]\nprocess = \"certs-backup\"\npassword_env = \"P\"\n");
        parse_toml(&backup)
            .expect("parses")
            .validate()
            .expect("a backup task needs no source");
        let zip = format!("{head}[[task.steps]]\nprocess = \"zip\"\nscope = \"per-task\"\n");
        let e = parse_toml(&zip)
            .expect("parses")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("source: is missing"), "{e}");
    }
}
