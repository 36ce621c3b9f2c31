//! Real protocol peers for the remote hosts' tests, each on a random loopback port with its own
//! temp dir, killed on drop: OpenSSH `sshd` ([`sshd`]), `vsftpd` ([`vsftpd`]), Samba `smbd`
//! ([`smbd`]), moto's S3 server ([`s3`]) and Azurite ([`azurite`]). `make test` installs them
//! (`scripts/install-deps.sh peers`); a test whose peer is missing fails and says how to install it.
//!
//! Servers that authenticate system users (sshd with passwords, vsftpd, smbd) need root; the
//! account they use is created once per machine by [`ensure_user`].

pub mod azurite;
pub mod s3;
pub mod smbd;
pub mod smtp;
pub mod sshd;
pub mod vsftpd;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test peer that starts
/// at once).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wait until `127.0.0.1:port` accepts connections, or fail after `timeout` with `log` (the
/// peer's own output, read lazily) in the message.
pub fn wait_port(port: u16, timeout: Duration, what: &str, log: impl Fn() -> String) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not listen on 127.0.0.1:{port} within {timeout:?}:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Where `make` installs the PyPI and npm peers: `<workspace>/.ferry/tools`.
pub fn tools_dir() -> PathBuf {
    crate::workspace_root().join(".ferry/tools")
}

/// Whether the test process runs as root (needed to start sshd, vsftpd and smbd with password
/// logins of system users).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

/// The system user the peers authenticate: created (with a home folder and `/bin/bash`) if
/// missing, and its password set. Idempotent; needs root.
pub fn ensure_user(user: &str, password: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("test peers with password logins need root (creating user {user})");
    }
    let exists = Command::new("id").arg(user).output()?.status.success();
    if !exists {
        let status = Command::new("useradd")
            .args(["-m", "-s", "/bin/bash", user])
            .status()
            .context("run useradd")?;
        // Another test may have created it at the same moment.
        if !status.success() && !Command::new("id").arg(user).output()?.status.success() {
            bail!("useradd {user} failed");
        }
    }
    let mut child = Command::new("chpasswd")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("run chpasswd")?;
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(format!("{user}:{password}\n").as_bytes())?;
    if !child.wait()?.success() {
        bail!("chpasswd for {user} failed");
    }
    Ok(())
}

/// The test account's fixed name and password (a throw-away account on a test machine).
pub const TEST_USER: &str = "ferrytest";
pub const TEST_PASSWORD: &str = "ferry-test-pw-1";

/// A folder owned by `user` (for servers that write as the logged-in user).
pub fn chown_to(path: &std::path::Path, user: &str) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .args(["-R", user])
        .arg(path)
        .status()
        .context("run chown")?;
    if !status.success() {
        bail!("chown {user} {} failed", path.display());
    }
    Ok(())
}

/// `chmod` with the path in the error.
pub(crate) fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// `pid` and every live process descended from it (parents before children).
pub(crate) fn with_descendants(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // `/proc/<pid>/stat`: "pid (comm) state ppid ..."; comm may hold spaces and parens.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) {
                parents.push((child, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    found
}

/// A forking server's listener and the sessions it forked (sshd, vsftpd), each in a session of
/// its own: killing or pausing the listener alone would leave sessions running, so every signal
/// goes to the whole tree. Killed (resumed first if paused) on drop.
#[derive(Default)]
pub(crate) struct ProcessTree {
    child: Option<std::process::Child>,
    paused: bool,
}

impl ProcessTree {
    /// Keep `child` once it answers on `port`; if it does not, or it exited (another process
    /// owns the port and answered), kill it and say why with `log`.
    pub fn adopt(
        &mut self,
        mut child: std::process::Child,
        what: &str,
        port: u16,
        log: impl Fn() -> String,
    ) -> anyhow::Result<()> {
        let ready = wait_port(port, Duration::from_secs(10), what, &log);
        if let Err(e) = ready.and_then(|()| match child.try_wait()? {
            Some(status) => bail!("{what} exited ({status}):\n{}", log()),
            None => Ok(()),
        }) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL the listener and every session (connections break without a goodbye).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&with_descendants(child.id()), libc::SIGKILL);
            let _ = child.wait();
            self.paused = false;
        }
    }

    /// Freeze the listener and every session (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            signal(&with_descendants(child.id()), libc::SIGSTOP);
            self.paused = true;
        }
    }

    /// Undo [`ProcessTree::pause`].
    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            signal(&with_descendants(child.id()), libc::SIGCONT);
            self.paused = false;
        }
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.kill();
    }
}

pub(crate) fn signal(pids: &[u32], sig: libc::c_int) {
    for pid in pids {
        // SAFETY: kill(2) only sends a signal; callers pass processes their peer started (the
        // listener it spawned and the sessions that listener forked).
        unsafe {
            libc::kill(*pid as libc::pid_t, sig);
        }
    }
}
