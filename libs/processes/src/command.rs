//! Custom command: runs an operator's executable on each file. No shell is involved unless the
//! operator names one as the program (`/bin/sh` with `-c` and a script).
//!
//! - **Program and arguments**: `program` is an absolute path; each argument (and each
//!   environment value) is a macro template: the file-name and date macros of the configuration
//!   crate's [`Template`] (`[OrigName]`, `[yyyy]`, `[TaskName]` …) plus `[InFile]` and
//!   `[OutFile]`, the paths of the input and of the output to write.
//! - **Environment**: cleared, then `FERRY_TASK`, `FERRY_RUN_ID`, `FERRY_ORIG_NAME`,
//!   `FERRY_INPUT` and `FERRY_OUTPUT` (the same paths), then the configured variables.
//!   [`Command::inherit_env`] keeps the service's environment instead of clearing it.
//! - **The file**: in [`Io::Path`] mode the command reads `[InFile]` and, if it produces a new
//!   file, writes `[OutFile]` (in a private folder that is also its working directory); if it
//!   writes no `[OutFile]`, the input passes through unchanged (a validator, a notifier). In
//!   [`Io::Stdio`] mode the input is its stdin and its stdout is the output file.
//! - **The output's name**: by default the input's. A line `FERRY_OUTPUT_NAME=<name>` on stdout
//!   (on stderr in stdio mode, where stdout is the file) sets it; the last such line wins, and the
//!   name must be a plain relative name ([`crate::file::check_name`]).
//! - **Outcome**: exit code 0 is success; any other code fails the file with "exited with code N"
//!   and the end of its stderr; death by a signal says which. A command still running at
//!   [`Command::timeout`] is killed with its whole process group (it runs as a group leader), and
//!   so are children it left running after it exited.
//! - **Captured output**: the first [`Command::capture_bytes`] of stdout (path mode) and stderr
//!   go into the step's report; the rest is read and counted, so a chatty command never blocks.

use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_config::Template;
use ferry_config::template::MacroContext;

use crate::error::Blame;
use crate::file::{TEMP_PREFIX, check_name, open_input};
use crate::{Context, File, OutputFile, Process, ProcessError, StepOutput};

/// How the file reaches the command and comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// `[InFile]` / `[OutFile]` paths.
    Path,
    /// stdin / stdout.
    Stdio,
}

/// The line prefix a command prints to name its output.
pub const OUTPUT_NAME_PREFIX: &str = "FERRY_OUTPUT_NAME=";

#[derive(Debug, Clone)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<ArgTemplate>,
    pub env: Vec<(String, ArgTemplate)>,
    pub inherit_env: bool,
    pub io: Io,
    pub timeout: Duration,
    /// Bytes of stdout and of stderr kept for the report (each); default 64 KiB.
    pub capture_bytes: usize,
}

impl Command {
    /// A command in path mode with a 10-minute timeout. `program` must be an absolute path;
    /// each argument is parsed as an [`ArgTemplate`].
    pub fn new(program: &str, args: &[&str]) -> Result<Self, String> {
        let program = PathBuf::from(program);
        if !program.is_absolute() {
            return Err(format!(
                "command program {:?} is not an absolute path (no shell or PATH lookup is used)",
                program.display()
            ));
        }
        let args = args
            .iter()
            .enumerate()
            .map(|(i, a)| ArgTemplate::parse(a).map_err(|e| format!("command args[{i}] {a:?} {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            program,
            args,
            env: Vec::new(),
            inherit_env: false,
            io: Io::Path,
            timeout: Duration::from_secs(600),
            capture_bytes: 64 * 1024,
        })
    }

    /// Adds an environment variable whose value is a template.
    pub fn env(mut self, name: &str, value: &str) -> Result<Self, String> {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(format!("command env name {name:?} is not a valid variable name"));
        }
        let t = ArgTemplate::parse(value).map_err(|e| format!("command env {name} {value:?} {e}"))?;
        self.env.push((name.to_string(), t));
        Ok(self)
    }
}

/// An argument or environment value: text with macros, where `[InFile]` and `[OutFile]` (this
/// process's own macros, case-insensitive) sit beside the configuration crate's [`Template`]
/// macros. They are parsed here rather than added to `Template` because they mean something only
/// to a command; the rest is delegated so the macro language stays one.
#[derive(Debug, Clone)]
pub struct ArgTemplate {
    parts: Vec<ArgPart>,
}

#[derive(Debug, Clone)]
enum ArgPart {
    Text(Template),
    InFile,
    OutFile,
}

impl ArgTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        loop {
            let lower = rest.to_ascii_lowercase();
            let next = [("[infile]", ArgPart::InFile), ("[outfile]", ArgPart::OutFile)]
                .into_iter()
                .filter_map(|(tok, part)| lower.find(tok).map(|i| (i, tok.len(), part)))
                .min_by_key(|(i, _, _)| *i);
            match next {
                Some((i, len, part)) => {
                    if i > 0 {
                        parts.push(ArgPart::Text(Template::parse(&rest[..i])?));
                    }
                    parts.push(part);
                    rest = &rest[i + len..];
                }
                None => {
                    if !rest.is_empty() {
                        parts.push(ArgPart::Text(Template::parse(rest)?));
                    }
                    return Ok(Self { parts });
                }
            }
        }
    }

    fn render(&self, macros: &MacroContext<'_>, input: &Path, output: &Path) -> String {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                ArgPart::Text(t) => s.push_str(&t.render(macros)),
                ArgPart::InFile => s.push_str(&input.to_string_lossy()),
                ArgPart::OutFile => s.push_str(&output.to_string_lossy()),
            }
        }
        s
    }
}

impl Process for Command {
    fn name(&self) -> &'static str {
        "command"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let mut files = Vec::with_capacity(inputs.len());
        let mut log = String::new();
        for f in inputs {
            let (file, captured) = self.run_one(f, ctx)?;
            log.push_str(&captured);
            files.push(file);
        }
        Ok(StepOutput { files, log })
    }
}

/// What a reader thread kept of one stream.
#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
}

impl Captured {
    fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped > 0 {
            s.push_str(&format!("\n[… {} more bytes not kept]", self.dropped));
        }
        s
    }
}

fn capture(mut r: impl Read + Send + 'static, cap: usize) -> Arc<Mutex<Captured>> {
    let shared = Arc::new(Mutex::new(Captured::default()));
    let out = shared.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut c = out.lock().expect("the capture lock is never poisoned");
            let room = cap.saturating_sub(c.kept.len()).min(n);
            c.kept.extend_from_slice(&buf[..room]);
            c.dropped += (n - room) as u64;
        }
    });
    shared
}

impl Command {
    fn run_one(&self, input: File, ctx: &Context<'_>) -> Result<(File, String), ProcessError> {
        let blame = Blame::new(self.name(), input.name());
        let private = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir_in(ctx.work_dir)
            .map_err(blame.io("create the command's folder"))?;
        let out_path = private.path().join("output");
        let base = input.base_name().to_string();
        let macros = ctx.macros(&base);

        let mut cmd = std::process::Command::new(&self.program);
        cmd.current_dir(private.path()).process_group(0);
        if !self.inherit_env {
            cmd.env_clear();
        }
        cmd.env("FERRY_TASK", ctx.task)
            .env("FERRY_RUN_ID", ctx.run_id)
            .env("FERRY_ORIG_NAME", input.name())
            .env("FERRY_INPUT", input.path())
            .env("FERRY_OUTPUT", &out_path);
        for (k, v) in &self.env {
            cmd.env(k, v.render(&macros, input.path(), &out_path));
        }
        for a in &self.args {
            cmd.arg(a.render(&macros, input.path(), &out_path));
        }

        let mut stdio_out = None;
        match self.io {
            Io::Path => {
                cmd.stdin(Stdio::null()).stdout(Stdio::piped());
            }
            Io::Stdio => {
                let out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
                let handle = out
                    .file_handle()
                    .map_err(blame.io("open the output for the command"))?;
                cmd.stdin(open_input(&input, &blame)?).stdout(handle);
                stdio_out = Some(out);
            }
        }
        cmd.stderr(Stdio::piped());

        let mut child = cmd
            .spawn()
            .map_err(|e| blame.failed(format!("could not start {}: {e}", self.program.display())))?;
        let stdout = child.stdout.take().map(|s| capture(s, self.capture_bytes));
        let stderr = capture(child.stderr.take().expect("stderr is piped"), self.capture_bytes);

        let status = self.wait(&mut child, ctx, &blame)?;
        // The pipes close once every process holding them is gone; give the readers a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&stderr) > 1 || stdout.as_ref().is_some_and(|s| Arc::strong_count(s) > 1) {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let stderr_text = stderr.lock().expect("not poisoned").text();
        let stdout_text = stdout
            .as_ref()
            .map(|s| s.lock().expect("not poisoned").text())
            .unwrap_or_default();
        let mut log = String::new();
        if !stdout_text.is_empty() {
            log.push_str(&format!("stdout:\n{stdout_text}\n"));
        }
        if !stderr_text.is_empty() {
            log.push_str(&format!("stderr:\n{stderr_text}\n"));
        }

        match (status.code(), status.signal()) {
            (Some(0), _) => {}
            (Some(code), _) => {
                return Err(blame.failed(format!(
                    "{} exited with code {code}{}",
                    self.program.display(),
                    tail("stderr", &stderr_text)
                )));
            }
            (None, sig) => {
                return Err(blame.failed(format!(
                    "{} was killed by signal {}{}",
                    self.program.display(),
                    sig.unwrap_or(0),
                    tail("stderr", &stderr_text)
                )));
            }
        }

        let named_by = if self.io == Io::Path {
            &stdout_text
        } else {
            &stderr_text
        };
        let name = match output_name(named_by) {
            Some(n) => {
                check_name(n).map_err(|e| blame.failed(format!("printed an unusable output name: {e}")))?;
                n.to_string()
            }
            None => input.name().to_string(),
        };

        let file = match (self.io, stdio_out) {
            (Io::Stdio, Some(mut out)) => {
                out.written_externally();
                out.finish(name).map_err(blame.io("finish the output"))?
            }
            _ => match fs::symlink_metadata(&out_path) {
                Ok(m) if m.is_file() => {
                    let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
                    // Move the command's file over our temporary name: same folder tree, so a
                    // rename; the result is owned and removed like any output.
                    fs::rename(&out_path, out.path()).map_err(blame.io("take the command's output"))?;
                    out.written_externally();
                    out.finish(name).map_err(blame.io("finish the output"))?
                }
                Ok(_) => {
                    return Err(blame.failed(format!(
                        "wrote something other than a regular file at {}",
                        out_path.display()
                    )));
                }
                // No output: the input goes on, possibly under the name it printed.
                Err(_) => input.renamed(name),
            },
        };
        Ok((file, log))
    }

    /// Waits for the command to exit, or kills it at the timeout or on cancellation. Its process
    /// group is killed *before* the command is reaped: until then its pid (the group's id) cannot
    /// be reused, so the kill can never reach an unrelated process.
    fn wait(
        &self,
        child: &mut Child,
        ctx: &Context<'_>,
        blame: &Blame,
    ) -> Result<std::process::ExitStatus, ProcessError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        let stop = |child: &mut Child| {
            kill_group(child);
            let _ = child.wait();
        };
        loop {
            match has_exited(child) {
                Ok(true) => {
                    // Children it left running do not outlive it (and release the pipes).
                    kill_group(child);
                    return child
                        .wait()
                        .map_err(|e| blame.internal(format!("reap the command: {e}")));
                }
                Ok(false) => {}
                Err(e) => {
                    stop(child);
                    return Err(blame.internal(format!("wait for the command: {e}")));
                }
            }
            if started.elapsed() >= self.timeout {
                stop(child);
                return Err(blame.timeout(self.timeout));
            }
            if ctx.is_cancelled() {
                stop(child);
                return Err(blame.internal("cancelled"));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Whether the child has exited, without reaping it (`waitid` with `WNOWAIT`).
fn has_exited(child: &Child) -> nix::Result<bool> {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    Ok(!matches!(waitid(Id::Pid(pid), flags)?, WaitStatus::StillAlive))
}

/// SIGKILL to the child's whole process group (the child is its leader).
fn kill_group(child: &Child) {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    // ESRCH (nothing left in the group) is the usual case after a clean exit.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
}

/// The name from the last `FERRY_OUTPUT_NAME=` line, trimmed.
fn output_name(text: &str) -> Option<&str> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(OUTPUT_NAME_PREFIX))
        .map(|n| n.trim())
}

/// `; stderr: <last 2000 chars>` or nothing.
fn tail(what: &str, text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return String::new();
    }
    let start = t.char_indices().rev().nth(1999).map(|(i, _)| i).unwrap_or(0);
    format!("; {what}: {}", &t[start..])
}
