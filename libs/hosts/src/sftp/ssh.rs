//! The transport: the system's OpenSSH client (`ssh -s sftp`), spawned by Ferry itself per
//! connection so that every option and the whole environment are Ferry's, not the node's
//! `~/.ssh/config` or agent.
//!
//! How each setting reaches `ssh`:
//! - host key, pinned fingerprints: `KnownHostsCommand` runs a small script (written at run time
//!   into a private 0700 folder) that prints a known_hosts line for the offered key only when its
//!   SHA-256 fingerprint is one of the pins; with `StrictHostKeyChecking=yes` any other key is
//!   refused. A known_hosts file: `UserKnownHostsFile`. No system or user known_hosts file is read.
//! - password, keyboard-interactive answers and the key's passphrase: an `SSH_ASKPASS` script
//!   (`SSH_ASKPASS_REQUIRE=force`) that prints them from the `ssh` child's environment: never on a
//!   command line, never in a file.
//! - private key: written 0600 into the private folder for the connect and removed as soon as
//!   the SFTP session is up (or the connect failed).
//!
//! `ssh` runs with `LogLevel=DEBUG1`: its standard error tells the server's version, the host key
//! it offered and the cipher, and on failure the server's own words; [`SshLog`] keeps those facts
//! and the last few lines (bounded), and [`connect_error`] turns them into a classified error.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_config::{HostKeyCheck, HostOptions, SftpSpec};
use ferry_keymat::Zeroizing;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::{ErrorKind, HostError, HostResult};

/// The secrets of one host, opened from the sealed configuration. Deliberately not `Debug`.
pub(super) struct Secrets {
    pub password: Option<Zeroizing<String>>,
    pub private_key: Option<Zeroizing<String>>,
    pub passphrase: Option<Zeroizing<String>>,
}

impl Secrets {
    /// Replace any secret that appears in `text` (defence in depth: nothing `ssh` prints should
    /// contain one, but error texts are shown to operators).
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in [&self.password, &self.passphrase].into_iter().flatten() {
            if s.len() >= 3 {
                out = out.replace(s.as_str(), "<secret>");
            }
        }
        out
    }
}

/// Everything needed to start one `ssh` for a host.
pub(super) struct SshSettings {
    /// The configured host name (for errors).
    pub host: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub host_key: HostKeyCheck,
    pub connect_timeout: Duration,
    pub operation_timeout: Duration,
    pub secrets: Secrets,
    /// The private folder for scripts and the key file, created on the first connect.
    dir: Mutex<Option<Arc<PrivateDir>>>,
}

impl SshSettings {
    pub fn new(host: &str, spec: &SftpSpec, options: &HostOptions, secrets: Secrets) -> SshSettings {
        SshSettings {
            host: host.to_string(),
            address: spec.address.clone(),
            port: spec.port,
            user: spec.user.clone(),
            host_key: spec.host_key.clone(),
            connect_timeout: Duration::from_secs(options.connect_timeout_secs),
            operation_timeout: Duration::from_secs(options.operation_timeout_secs),
            secrets,
            dir: Mutex::new(None),
        }
    }

    /// `user@address:port`, as errors name the server.
    pub fn target(&self) -> String {
        format!("{}@{}", self.user, self.server())
    }

    /// `address:port`.
    pub fn server(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    fn private_dir(&self) -> HostResult<Arc<PrivateDir>> {
        let mut dir = self
            .dir
            .lock()
            .expect("the private folder lock is never poisoned");
        if let Some(d) = dir.as_ref() {
            return Ok(d.clone());
        }
        let created = Arc::new(PrivateDir::create().map_err(|e| {
            HostError::permanent(&self.host, format!("create a private folder for ssh: {e}"))
        })?);
        *dir = Some(created.clone());
        Ok(created)
    }

    /// The `ssh` arguments (everything but the environment).
    fn args(&self, dir: &PrivateDir, key_file: Option<&Path>) -> HostResult<Vec<OsString>> {
        let mut o: Vec<String> = vec![
            "LogLevel=DEBUG1".into(),
            "BatchMode=no".into(),
            "UpdateHostKeys=no".into(),
            "CheckHostIP=no".into(),
            "HashKnownHosts=no".into(),
            "VerifyHostKeyDNS=no".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
            // ssh gives up on a silent server too (after about the operation timeout), so a
            // stalled server ends the session even when no request is waiting.
            format!(
                "ServerAliveInterval={}",
                (self.operation_timeout.as_secs() / 3).max(1)
            ),
            "ServerAliveCountMax=3".into(),
            "IdentitiesOnly=yes".into(),
            "IdentityAgent=none".into(),
            "AddKeysToAgent=no".into(),
            "NumberOfPasswordPrompts=1".into(),
            // AES-GCM first: with AES-NI it is the cheapest of OpenSSH's authenticated ciphers
            // (chacha20-poly1305 is the default); the rest of the default list follows.
            "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com".into(),
            "Compression=no".into(),
            "ControlMaster=no".into(),
            "ControlPath=none".into(),
            "ForwardAgent=no".into(),
            "ForwardX11=no".into(),
            "ClearAllForwardings=yes".into(),
            "PermitLocalCommand=no".into(),
            "RequestTTY=no".into(),
        ];
        match &self.host_key {
            HostKeyCheck::Pinned(pins) => {
                o.push("StrictHostKeyChecking=yes".into());
                o.push("UserKnownHostsFile=/dev/null".into());
                // Run through /bin/sh: the script works even where the temp folder is noexec.
                let script = quoted(&self.host, &dir.hostkey_script())?;
                let mut cmd = format!("KnownHostsCommand=/bin/sh {script} %f %t %K");
                for pin in pins {
                    // Validated as `SHA256:` + base64: no spaces, quotes or `%`.
                    cmd.push(' ');
                    cmd.push_str(pin);
                }
                o.push(cmd);
            }
            HostKeyCheck::KnownHosts(file) => {
                o.push("StrictHostKeyChecking=yes".into());
                o.push(format!(
                    "UserKnownHostsFile={}",
                    quoted(&self.host, Path::new(file))?
                ));
            }
            HostKeyCheck::InsecureAcceptAny => {
                o.push("StrictHostKeyChecking=no".into());
                o.push("UserKnownHostsFile=/dev/null".into());
            }
        }
        let s = &self.secrets;
        let mut methods = Vec::new();
        match key_file {
            Some(k) => {
                o.push(format!("IdentityFile={}", quoted(&self.host, k)?));
                o.push("PubkeyAuthentication=yes".into());
                methods.push("publickey");
            }
            None => {
                o.push("IdentityFile=none".into());
                o.push("PubkeyAuthentication=no".into());
            }
        }
        let password = s.password.is_some();
        o.push(format!("PasswordAuthentication={}", yes_no(password)));
        o.push(format!("KbdInteractiveAuthentication={}", yes_no(password)));
        if password {
            methods.extend(["password", "keyboard-interactive"]);
        }
        o.push(format!("PreferredAuthentications={}", methods.join(",")));

        let mut args: Vec<OsString> = vec!["-F".into(), "/dev/null".into()];
        for opt in o {
            args.push("-o".into());
            args.push(opt.into());
        }
        args.extend([
            "-p".into(),
            self.port.to_string().into(),
            "-l".into(),
            self.user.clone().into(),
            "-s".into(),
            // Nothing after this is read as an option, whatever the address looks like.
            "--".into(),
            self.address.clone().into(),
            "sftp".into(),
        ]);
        Ok(args)
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A path as one ssh_config argument: double-quoted (spaces), `%` doubled (ssh expands tokens).
fn quoted(host: &str, path: &Path) -> HostResult<String> {
    let text = path.to_str().filter(|t| !t.contains('"')).ok_or_else(|| {
        HostError::permanent(
            host,
            format!(
                "path {} cannot be passed to ssh (not UTF-8, or contains a double quote)",
                path.display()
            ),
        )
    })?;
    Ok(format!("\"{}\"", text.replace('%', "%%")))
}

/// The askpass script: answers a passphrase prompt with the passphrase and any other prompt
/// (password, keyboard-interactive) with the password, both from its environment.
const ASKPASS: &str = r#"#!/bin/sh
case "$1" in
  *assphrase*) printf '%s\n' "$FERRY_SSH_PASSPHRASE" ;;
  *) printf '%s\n' "$FERRY_SSH_PASSWORD" ;;
esac
"#;

/// The KnownHostsCommand script: `hostkey.sh FINGERPRINT TYPE KEY PIN...` prints a known_hosts
/// line for the offered key only if its fingerprint is one of the pins. ssh also calls it with
/// `NONE` before the key exchange (to order its algorithms); then it prints nothing.
const HOSTKEY: &str = r#"#!/bin/sh
fp=$1; type=$2; key=$3
shift 3
[ "$fp" = NONE ] && exit 0
for pin in "$@"; do
  if [ "$fp" = "$pin" ]; then
    printf '* %s %s\n' "$type" "$key"
    exit 0
  fi
done
exit 0
"#;

/// A folder only this process's user can enter, holding the two scripts and, during a connect,
/// the private key. Removed when the host is dropped.
pub(super) struct PrivateDir {
    path: PathBuf,
    keys: AtomicU64,
}

impl PrivateDir {
    fn create() -> std::io::Result<PrivateDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let mut attempt = 0;
        let path = loop {
            let path = base.join(format!(
                "ferry-ssh-{}-{}-{:08x}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed),
                nanos.wrapping_add(attempt)
            ));
            // Created exclusively with mode 0700: an existing folder (someone else's) is never
            // used.
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        let dir = PrivateDir {
            path,
            keys: AtomicU64::new(0),
        };
        dir.write_private(&dir.askpass_script(), ASKPASS.as_bytes(), 0o700)?;
        dir.write_private(&dir.hostkey_script(), HOSTKEY.as_bytes(), 0o700)?;
        Ok(dir)
    }

    fn askpass_script(&self) -> PathBuf {
        self.path.join("askpass.sh")
    }

    fn hostkey_script(&self) -> PathBuf {
        self.path.join("hostkey.sh")
    }

    fn write_private(&self, path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        f.write_all(data)?;
        f.sync_all()
    }

    /// Write the private key for one connect; the returned guard removes it.
    fn key_file(&self, key: &str) -> std::io::Result<KeyFile> {
        let path = self
            .path
            .join(format!("key-{}", self.keys.fetch_add(1, Ordering::Relaxed)));
        let guard = KeyFile { path };
        let mut text = Zeroizing::new(key.trim().to_string());
        text.push('\n');
        self.write_private(&guard.path, text.as_bytes(), 0o600)?;
        Ok(guard)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A private key on disk for the duration of one connect (removed when dropped).
pub(super) struct KeyFile {
    path: PathBuf,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `ssh` told on its standard error, bounded.
#[derive(Default)]
pub(super) struct SshLog {
    state: Mutex<LogState>,
    closed: tokio::sync::Notify,
}

#[derive(Debug, Default, Clone)]
pub(super) struct LogState {
    /// `OpenSSH_9.2p1 Debian-2+deb12u10`
    pub banner: Option<String>,
    /// (`ssh-ed25519`, `SHA256:…`)
    pub host_key: Option<(String, String)>,
    pub cipher: Option<String>,
    pub wrong_passphrase: bool,
    /// The server said it would take the private key (then a failed login means ssh could not
    /// decrypt it).
    pub key_accepted: bool,
    /// The last lines that were not debug chatter.
    pub lines: VecDeque<String>,
    pub closed: bool,
}

const KEEP_LINES: usize = 20;
const MAX_LINE: usize = 400;

impl SshLog {
    pub fn snapshot(&self) -> LogState {
        self.state
            .lock()
            .expect("the ssh log lock is never poisoned")
            .clone()
    }

    /// The last thing ssh said that was not debug output (e.g. `Connection to 127.0.0.1 closed
    /// by remote host.`).
    pub fn last_words(&self) -> Option<String> {
        self.snapshot().lines.back().cloned()
    }

    fn take(&self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return;
        }
        let mut s = self.state.lock().expect("the ssh log lock is never poisoned");
        if line.contains("incorrect passphrase supplied") {
            s.wrong_passphrase = true;
        }
        if let Some(rest) = line.strip_prefix("debug1: ") {
            if let Some(v) = rest.strip_prefix("Remote protocol version ") {
                s.banner = v
                    .split_once("remote software version ")
                    .map(|(_, b)| b.to_string());
            } else if let Some(v) = rest.strip_prefix("Server host key: ") {
                let mut parts = v.split_whitespace();
                if let (Some(t), Some(fp)) = (parts.next(), parts.next()) {
                    s.host_key = Some((t.to_string(), fp.to_string()));
                }
            } else if rest.starts_with("Server accepts key:") {
                s.key_accepted = true;
            } else if let Some(v) = rest.strip_prefix("kex: client->server cipher: ") {
                s.cipher = v.split_whitespace().next().map(str::to_string);
            }
            return;
        }
        if line.starts_with("OpenSSH_")
            || line.starts_with("Transferred: ")
            || line.starts_with("Bytes per second")
            || line.starts_with("Authenticated to ")
            || line.starts_with("Warning: Permanently added")
        {
            return;
        }
        let mut kept: String = line.chars().take(MAX_LINE).collect();
        if kept.len() < line.len() {
            kept.push('…');
        }
        if s.lines.len() == KEEP_LINES {
            s.lines.pop_front();
        }
        s.lines.push_back(kept);
    }

    fn close(&self) {
        self.state
            .lock()
            .expect("the ssh log lock is never poisoned")
            .closed = true;
        self.closed.notify_waiters();
    }

    /// Wait (at most `limit`) until ssh closed its standard error.
    async fn wait_closed(&self, limit: Duration) {
        let notified = self.closed.notified();
        if self.snapshot().closed {
            return;
        }
        let _ = tokio::time::timeout(limit, notified).await;
    }
}

/// A running `ssh -s sftp` with its pipes.
pub(super) struct Spawned {
    pub child: Child,
    pub stdin: tokio::process::ChildStdin,
    pub stdout: tokio::process::ChildStdout,
    pub log: Arc<SshLog>,
    /// Drop it right after the session is up (or the connect failed).
    pub key_file: Option<KeyFile>,
}

/// Start `ssh` for one connection.
pub(super) fn spawn(s: &SshSettings) -> HostResult<Spawned> {
    let dir = s.private_dir()?;
    let key_file = match &s.secrets.private_key {
        Some(key) => Some(
            dir.key_file(key)
                .map_err(|e| HostError::permanent(&s.host, format!("write the private key for ssh: {e}")))?,
        ),
        None => None,
    };
    let args = s.args(&dir, key_file.as_ref().map(|k| k.path.as_path()))?;
    let mut cmd = Command::new("ssh");
    cmd.args(&args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("SSH_ASKPASS", dir.askpass_script())
        .env("SSH_ASKPASS_REQUIRE", "force")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(p) = &s.secrets.password {
        cmd.env("FERRY_SSH_PASSWORD", p.as_str());
    }
    if let Some(p) = &s.secrets.passphrase {
        cmd.env("FERRY_SSH_PASSPHRASE", p.as_str());
    }
    let mut child = cmd.spawn().map_err(|e| {
        HostError::permanent(
            &s.host,
            format!("start the OpenSSH client `ssh` (package openssh-client): {e}"),
        )
    })?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    widen_pipe(&stdin);
    widen_pipe(&stdout);
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = Arc::new(SshLog::default());
    let reader_log = log.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match lines.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => reader_log.take(&String::from_utf8_lossy(&buf)),
            }
        }
        reader_log.close();
    });
    Ok(Spawned {
        child,
        stdin,
        stdout,
        log,
        key_file,
    })
}

/// Give a pipe to or from `ssh` 1 MiB of buffer instead of 64 KiB: fewer wake-ups and system
/// calls on both sides when bytes stream. Best effort (Linux; capped by `fs.pipe-max-size`).
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ only resizes the kernel buffer of a pipe this process owns; an error
    // (not a pipe, over the limit) leaves it as it was.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

/// After a failed connect: let ssh finish saying why (it exits right after its last words).
pub(super) async fn wait_for_exit(child: &mut Child, log: &SshLog) -> Option<std::process::ExitStatus> {
    let status = tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    if status.is_none() {
        let _ = child.start_kill();
    }
    log.wait_closed(Duration::from_secs(1)).await;
    status
}

/// Classify a connect that ended before the SFTP session was up, from what ssh said.
pub(super) fn connect_error(
    s: &SshSettings,
    log: &LogState,
    exit: Option<std::process::ExitStatus>,
    detail: &str,
) -> HostError {
    let has = |needle: &str| log.lines.iter().any(|l| l.contains(needle));
    let find = |needle: &str| log.lines.iter().find(|l| l.contains(needle)).cloned();
    let words = || {
        log.lines
            .iter()
            .rev()
            .take(3)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let server = s.server();
    let offered = log
        .host_key
        .as_ref()
        .map(|(t, fp)| format!("host key {fp} ({t})"))
        .unwrap_or_else(|| "the host key".to_string());
    let (kind, message) = if has("Host key verification failed")
        || has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("host key is known for")
    {
        let why = match &s.host_key {
            HostKeyCheck::Pinned(pins) => format!(
                "{offered} offered by {server} is not one of the pinned keys ({})",
                pins.join(", ")
            ),
            HostKeyCheck::KnownHosts(file) if has("HAS CHANGED") || has("has changed") => format!(
                "{offered} offered by {server} does not match the key known_hosts file {file} holds for it \
                 (the server's key changed, or someone is intercepting the connection)"
            ),
            HostKeyCheck::KnownHosts(file) if !Path::new(file).exists() => {
                format!(
                    "{offered} offered by {server} cannot be checked: known_hosts file {file} does not exist"
                )
            }
            HostKeyCheck::KnownHosts(file) => {
                format!("{offered} offered by {server} is not in known_hosts file {file}")
            }
            HostKeyCheck::InsecureAcceptAny => {
                format!("{offered} offered by {server} was refused: {}", words())
            }
        };
        (ErrorKind::Permanent, why)
    } else if has("ssh_askpass: exec(") {
        (
            ErrorKind::Permanent,
            format!(
                "ssh cannot run Ferry's password helper ({}): is the temp folder mounted noexec? \
                 Point TMPDIR at a folder that allows running programs",
                find("ssh_askpass: exec(").unwrap_or_default()
            ),
        )
    } else if has("Permission denied") || has("Too many authentication failures") || log.wrong_passphrase {
        let said = find("Permission denied")
            .or_else(|| find("Too many authentication failures"))
            .unwrap_or_else(words);
        let hint = if log.wrong_passphrase || log.key_accepted {
            " (ssh could not decrypt the private key: the passphrase is wrong)"
        } else {
            ""
        };
        (
            ErrorKind::Permanent,
            format!("authentication failed for {}: {said}{hint}", s.target()),
        )
    } else if has("subsystem request failed") {
        (
            ErrorKind::Permanent,
            format!("{server} offers no sftp subsystem: {}", words()),
        )
    } else if has("Unable to negotiate") || has("no matching") {
        (
            ErrorKind::Permanent,
            format!("no algorithm in common with {server}: {}", words()),
        )
    } else if has("Load key") || has("invalid format") || has("UNPROTECTED PRIVATE KEY") {
        (
            ErrorKind::Permanent,
            format!("private_key: ssh cannot use it: {}", words()),
        )
    } else if [
        "Connection refused",
        "timed out",
        "Connection reset",
        "closed by",
        "Connection closed",
        "No route to host",
        "unreachable",
        "Broken pipe",
        "kex_exchange_identification",
        "not responding",
        "Could not resolve hostname",
        "Temporary failure",
    ]
    .iter()
    .any(|n| has(n))
    {
        (
            ErrorKind::Transient,
            format!("connect to {}: {}", s.target(), words()),
        )
    } else {
        let said = match (log.lines.is_empty(), exit) {
            (false, _) => words(),
            (true, Some(st)) => format!("ssh exited ({st}) without saying why; {detail}"),
            (true, None) => detail.to_string(),
        };
        // Nothing recognisable: the session ended before SFTP started. A retry is cheap and
        // the retry budget bounds it.
        (ErrorKind::Transient, format!("connect to {}: {said}", s.target()))
    };
    HostError::new(&s.host, kind, s.secrets.redact(&message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(host_key: HostKeyCheck) -> SshSettings {
        let spec = SftpSpec {
            address: "127.0.0.1".into(),
            port: 2222,
            user: "ferry".into(),
            password: None,
            private_key: None,
            passphrase: None,
            host_key,
        };
        let secrets = Secrets {
            password: Some(Zeroizing::new("hunter2-pw".into())),
            private_key: None,
            passphrase: None,
        };
        SshSettings::new("partner", &spec, &HostOptions::default(), secrets)
    }

    fn log_of(lines: &[&str]) -> LogState {
        let log = SshLog::default();
        for l in lines {
            log.take(l);
        }
        log.snapshot()
    }

    fn assert_error(host_key: HostKeyCheck, lines: &[&str], kind: ErrorKind, message: &str) {
        let s = settings(host_key);
        let e = connect_error(&s, &log_of(lines), None, "eof");
        assert_eq!((e.kind, e.message.as_str()), (kind, message), "from {lines:?}");
    }

    const KEY: &str =
        "debug1: Server host key: ssh-ed25519 SHA256:+z4DG7tEMhLaeHtWSEznb0HgMDAA5vumzgIq8QApVUo";

    #[test]
    fn what_ssh_says_becomes_a_classified_error() {
        let pin = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string();
        assert_error(
            HostKeyCheck::Pinned(vec![pin]),
            &[
                KEY,
                "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.",
                "Host key verification failed.",
            ],
            ErrorKind::Permanent,
            "host key SHA256:+z4DG7tEMhLaeHtWSEznb0HgMDAA5vumzgIq8QApVUo (ssh-ed25519) offered by 127.0.0.1:2222 \
             is not one of the pinned keys (SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA)",
        );
        let unknown = [
            KEY,
            "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.",
            "Host key verification failed.",
        ];
        assert_error(
            HostKeyCheck::KnownHosts("/dev/null".into()),
            &unknown,
            ErrorKind::Permanent,
            "host key SHA256:+z4DG7tEMhLaeHtWSEznb0HgMDAA5vumzgIq8QApVUo (ssh-ed25519) offered by 127.0.0.1:2222 \
             is not in known_hosts file /dev/null",
        );
        assert_error(
            HostKeyCheck::KnownHosts("/no/such/known_hosts".into()),
            &unknown,
            ErrorKind::Permanent,
            "host key SHA256:+z4DG7tEMhLaeHtWSEznb0HgMDAA5vumzgIq8QApVUo (ssh-ed25519) offered by 127.0.0.1:2222 \
             cannot be checked: known_hosts file /no/such/known_hosts does not exist",
        );
        assert_error(
            HostKeyCheck::InsecureAcceptAny,
            &["ferry@127.0.0.1: Permission denied (publickey,password).\r"],
            ErrorKind::Permanent,
            "authentication failed for ferry@127.0.0.1:2222: ferry@127.0.0.1: Permission denied (publickey,password).",
        );
        assert_error(
            HostKeyCheck::InsecureAcceptAny,
            &["ssh: connect to host 127.0.0.1 port 2222: Connection refused"],
            ErrorKind::Transient,
            "connect to ferry@127.0.0.1:2222: ssh: connect to host 127.0.0.1 port 2222: Connection refused",
        );
        assert_error(
            HostKeyCheck::InsecureAcceptAny,
            &["Connection timed out during banner exchange"],
            ErrorKind::Transient,
            "connect to ferry@127.0.0.1:2222: Connection timed out during banner exchange",
        );
        assert_error(
            HostKeyCheck::InsecureAcceptAny,
            &["subsystem request failed on channel 0"],
            ErrorKind::Permanent,
            "127.0.0.1:2222 offers no sftp subsystem: subsystem request failed on channel 0",
        );
        assert_error(
            HostKeyCheck::InsecureAcceptAny,
            &[
                "ssh_askpass: exec(/tmp/ferry-ssh-1/askpass.sh): Permission denied",
                "ferry@127.0.0.1: Permission denied (publickey,password).",
            ],
            ErrorKind::Permanent,
            "ssh cannot run Ferry's password helper (ssh_askpass: exec(/tmp/ferry-ssh-1/askpass.sh): \
             Permission denied): is the temp folder mounted noexec? Point TMPDIR at a folder that allows \
             running programs",
        );
        // A secret that somehow reached ssh's output is not repeated.
        assert_error(
            HostKeyCheck::InsecureAcceptAny,
            &["weird: hunter2-pw"],
            ErrorKind::Transient,
            "connect to ferry@127.0.0.1:2222: weird: <secret>",
        );
    }

    #[test]
    fn the_log_keeps_facts_and_the_last_words() {
        let log = log_of(&[
            "OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19 27 Jan 2026",
            "debug1: Remote protocol version 2.0, remote software version OpenSSH_9.2p1 Debian-2+deb12u10",
            KEY,
            "debug1: kex: client->server cipher: aes128-gcm@openssh.com MAC: <implicit> compression: none",
            "Authenticated to 127.0.0.1 ([127.0.0.1]:2222) using \"password\".",
        ]);
        assert_eq!(log.banner.as_deref(), Some("OpenSSH_9.2p1 Debian-2+deb12u10"));
        assert_eq!(log.cipher.as_deref(), Some("aes128-gcm@openssh.com"));
        assert_eq!(
            log.host_key,
            Some((
                "ssh-ed25519".into(),
                "SHA256:+z4DG7tEMhLaeHtWSEznb0HgMDAA5vumzgIq8QApVUo".into()
            ))
        );
        assert!(log.lines.is_empty(), "{:?}", log.lines);
    }

    #[test]
    fn ssh_gets_only_ferrys_options() {
        let s = settings(HostKeyCheck::Pinned(vec![
            "SHA256:+z4DG7tEMhLaeHtWSEznb0HgMDAA5vumzgIq8QApVUo".into(),
        ]));
        let dir = PrivateDir::create().expect("private folder");
        let args: Vec<String> = s
            .args(&dir, None)
            .expect("args")
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect();
        let text = args.join(" ");
        assert!(text.starts_with("-F /dev/null "), "{text}");
        assert!(text.ends_with("-p 2222 -l ferry -s -- 127.0.0.1 sftp"), "{text}");
        for want in [
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/dev/null",
            "GlobalKnownHostsFile=/dev/null",
            "IdentityFile=none",
            "PreferredAuthentications=password,keyboard-interactive",
            "KnownHostsCommand=/bin/sh \"",
            "hostkey.sh\" %f %t %K SHA256:+z4DG7tEMhLaeHtWSEznb0HgMDAA5vumzgIq8QApVUo",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir.path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
