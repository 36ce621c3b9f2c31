//! `ferry-processes`: what Ferry does to a file between source and destination, behind one
//! [`Process`] trait, one module per process: [`archive`] (zip, unzip), [`checksum`], [`rename`],
//! [`replace`] (find and replace), [`command`] (a custom command), [`openpgp`] (encrypt,
//! decrypt, sign, verify) and [`certs`] (Certs Backup and Certs Restore).
//!
//! How the transfer service uses it (the intended integration):
//! 1. It stages each collected file in its spool folder and wraps it as [`File::borrowed`] with
//!    the file's logical name (its name at the source, relative to the source folder).
//! 2. It builds the task's steps from the configuration once per run (each process's options are
//!    a plain struct, validated when built) and calls [`run_steps`] inside
//!    `tokio::task::spawn_blocking`: PER-FILE steps with that one file, PER-TASK steps once with
//!    every file the run collected (or none, for a sourceless task). Everything here is blocking.
//! 3. It uploads each returned [`File`] to the destinations under [`File::name`] (rendered through
//!    the destination's own template), then drops it, which removes it from the spool.
//! 4. It records every [`StepReport`] in the run's per-file record (and the audit trail): the
//!    process, its outcome, each output's SHA-256, captured command output.
//! 5. On failure ([`Run::files`] is `Err`), only that file failed (PER-FILE) or the task
//!    (PER-TASK); [`ProcessError::class`] says how, [`ProcessError::is_retryable`] whether a
//!    retry can help (the key source did not answer, Ferry's own disk failed); the source is
//!    untouched and the spool holds nothing of the failed step.
//!
//! The cert-handler implements [`KeySource`] over NATS request/reply (PGP keys by selector,
//! personal and other people's certificates), runs the key-dependent steps, and implements
//! [`certs::CertSink`] over its stores for Certs Restore.
//!
//! Each process's options are a plain struct built by a constructor that validates them
//! (`Rename::new`, `Zip::new`, `FindReplace::regex`, `Command::new` …) and returns an error text
//! naming the option and value, for the configuration crate to wrap with the task and step.
//!
//! Invariants:
//! - a process reads local files and writes only under [`Context::work_dir`], to temporary names
//!   ([`file::TEMP_PREFIX`]) it chose itself; a logical name (an archive entry, a rename, a name a
//!   command printed) never becomes a path, so no name can steer a write;
//! - an output is handed back only when complete ([`OutputFile::finish`]); a step that fails, is
//!   cancelled or panics leaves nothing behind: its unfinished outputs and the owned files it was
//!   given are removed on drop, and a file the caller lent ([`File::borrowed`]) is never touched;
//! - memory per step is bounded whatever the file size: content is streamed through fixed
//!   buffers, never read whole (find-and-replace bounds a line; PGP uses rPGP's streaming modes);
//! - limits (archive size and entry count, line length, command output, timeouts) are enforced on
//!   what actually happens (bytes decompressed, time elapsed), not on what a file claims;
//! - keys come only from a [`KeySource`] (the cert-handler's request/reply API); no process reads
//!   a key store;
//! - every error names the process, the file and the reason, and is classified ([`ErrorClass`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::{DateTime, Local};
use ferry_config::template::MacroContext;
use serde::{Deserialize, Serialize};

pub mod archive;
pub mod bundle;
pub mod certs;
pub mod checksum;
pub mod command;
pub mod configured;
mod error;
pub mod file;
pub mod keys;
pub mod openpgp;
pub mod remote_keys;
pub mod rename;
pub mod replace;
pub mod testing;

pub use error::{ErrorClass, ProcessError};
pub use file::{File, OutputFile};
pub use keys::{KeyError, KeySource, MemoryKeys, NoKeys};

/// When a step runs, as operators of the reference product know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// For each collected file, before its destinations; the step gets that one file.
    PerFile,
    /// Once per run after every file was collected; the step gets all of them (possibly none)
    /// and its outputs go to the destinations (zip them into one archive, Certs Backup).
    PerTask,
}

/// What one run of a step may use besides its input files.
pub struct Context<'a> {
    pub task: &'a str,
    pub run_id: &'a str,
    /// The run's start time, for date macros (`[yyyy]` …).
    pub time: DateTime<Local>,
    pub scope: Scope,
    /// Where outputs are written (the transfer's spool folder for this run): on the same file
    /// system as the inputs, private to this node.
    pub work_dir: &'a Path,
    pub keys: &'a dyn KeySource,
    /// Set by the caller to stop a long step (the node was fenced, the run was cancelled): steps
    /// check it between buffers and fail with [`ProcessError::Internal`] "cancelled".
    pub cancel: Option<&'a AtomicBool>,
}

impl<'a> Context<'a> {
    /// Macro values for a file with this (base) name.
    pub fn macros(&self, orig_name: &'a str) -> MacroContext<'a> {
        MacroContext {
            orig_name,
            task: self.task,
            run_id: self.run_id,
            time: self.time,
            params: &ferry_config::NO_PARAMS,
            error: None,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// What a step hands back.
#[derive(Debug, Default)]
pub struct StepOutput {
    /// The files that continue to the next step (or to the destinations).
    pub files: Vec<File>,
    /// Text for the step report: a custom command's captured stdout/stderr, a count of
    /// replacements, the signer a signature was verified against.
    pub log: String,
}

/// One process. Implementations are blocking (run them in `spawn_blocking`), stream their
/// content, and write outputs only through [`OutputFile`] in [`Context::work_dir`].
///
/// Inputs are taken by value: a step that transforms an input drops it (a file this crate made is
/// then removed), one that passes it through returns it in [`StepOutput::files`].
pub trait Process: Send + Sync + std::fmt::Debug {
    /// The name reports and errors use: `zip`, `unzip`, `pgp-encrypt`, `command` …
    fn name(&self) -> &'static str;
    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError>;
}

/// One output as a step report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    pub name: String,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StepOutcome {
    Succeeded,
    Failed { class: ErrorClass, error: String },
}

/// The record of one step, for the run record and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// 0-based position in the task's list of processes.
    pub step: usize,
    pub process: String,
    pub inputs: Vec<String>,
    #[serde(flatten)]
    pub outcome: StepOutcome,
    pub outputs: Vec<FileReport>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
    pub elapsed_ms: u64,
}

/// The result of [`run_steps`]: the files to deliver (or the first error) and one report per
/// step that ran.
#[derive(Debug)]
pub struct Run {
    pub files: Result<Vec<File>, ProcessError>,
    pub reports: Vec<StepReport>,
}

/// Runs `steps` in order, each on the previous step's outputs; stops at the first failure (and
/// refuses a step whose outputs share a name). On failure every intermediate file is removed
/// (dropped) and the caller's borrowed files are untouched. Blocking.
pub fn run_steps(steps: &[&dyn Process], inputs: Vec<File>, ctx: &Context<'_>) -> Run {
    let mut files = inputs;
    let mut reports = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let names: Vec<String> = files.iter().map(|f| f.name().to_string()).collect();
        let started = Instant::now();
        let result = if ctx.is_cancelled() {
            Err(ProcessError::Internal {
                process: step.name(),
                file: names.join(", "),
                reason: "cancelled".into(),
            })
        } else {
            step.run(std::mem::take(&mut files), ctx)
                .and_then(|out| hash_outputs(step.name(), out))
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok((out, outputs)) => {
                reports.push(StepReport {
                    step: i,
                    process: step.name().to_string(),
                    inputs: names,
                    outcome: StepOutcome::Succeeded,
                    outputs,
                    log: out.log,
                    elapsed_ms,
                });
                files = out.files;
            }
            Err(e) => {
                reports.push(StepReport {
                    step: i,
                    process: step.name().to_string(),
                    inputs: names,
                    outcome: StepOutcome::Failed {
                        class: e.class(),
                        error: e.to_string(),
                    },
                    outputs: Vec::new(),
                    log: String::new(),
                    elapsed_ms,
                });
                return Run {
                    files: Err(e),
                    reports,
                };
            }
        }
    }
    Run {
        files: Ok(files),
        reports,
    }
}

/// Hashes each output for the report, and refuses two outputs with one name: one would silently
/// replace the other at the destination (two archives that both hold `a.txt`).
fn hash_outputs(
    process: &'static str,
    mut out: StepOutput,
) -> Result<(StepOutput, Vec<FileReport>), ProcessError> {
    let mut names = std::collections::HashSet::new();
    for f in &out.files {
        if !names.insert(f.name()) {
            return Err(ProcessError::BadInput {
                process,
                file: f.name().to_string(),
                reason: "more than one output has this name".into(),
            });
        }
    }
    let mut reports = Vec::with_capacity(out.files.len());
    for f in &mut out.files {
        let h = f.sha256().map_err(|e| ProcessError::Internal {
            process,
            file: f.name().to_string(),
            reason: format!("hash the output: {e}"),
        })?;
        reports.push(FileReport {
            name: f.name().to_string(),
            bytes: f.bytes(),
            sha256: file::hex_sha256(&h),
        });
    }
    Ok((out, reports))
}

/// A reader that fails once the context is cancelled, so a long copy stops between buffers.
pub(crate) struct Cancellable<'a, R> {
    inner: R,
    cancel: Option<&'a AtomicBool>,
}

impl<'a, R> Cancellable<'a, R> {
    pub fn new(inner: R, ctx: &Context<'a>) -> Self {
        Self {
            inner,
            cancel: ctx.cancel,
        }
    }
}

impl<R> std::fmt::Debug for Cancellable<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cancellable")
    }
}

impl<R: std::io::Read> std::io::Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(std::io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}
