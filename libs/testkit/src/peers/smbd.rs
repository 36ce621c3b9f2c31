//! Samba `smbd` serving one share (`share`, a temp folder owned by [`TEST_USER`]) on a random
//! loopback port, with its own private, lock and state folders. Needs root (smbd authenticates
//! system users) and Debian's `samba` package (`scripts/install-deps.sh peers`); `$FERRY_SMBD`
//! overrides the binary.
//!
//! smbd forks one process per client connection; it runs in a process group of its own, so
//! [`Smbd::kill`], [`Smbd::pause`] and drop reach those children too (a killed parent alone would
//! leave connections served).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{TEST_PASSWORD, TEST_USER, chown_to, ensure_user, free_port, wait_port};

/// The share's name.
pub const SHARE: &str = "share";

pub struct Smbd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

fn smbd_path() -> PathBuf {
    std::env::var_os("FERRY_SMBD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/smbd"))
}

impl Smbd {
    /// Start with `server smb encrypt = <encrypt>` (`required`, `desired` or `off`).
    pub fn start(encrypt: &str) -> anyhow::Result<Smbd> {
        Smbd::start_with(encrypt, "")
    }

    /// Start with extra `[global]` lines (e.g. `server signing = mandatory`).
    pub fn start_with(encrypt: &str, extra_global: &str) -> anyhow::Result<Smbd> {
        if !smbd_path().exists() {
            bail!(
                "{} not found: install samba (`scripts/install-deps.sh peers`) or set FERRY_SMBD",
                smbd_path().display()
            );
        }
        ensure_user(TEST_USER, TEST_PASSWORD)?;
        let dir = tempfile::Builder::new().prefix("ferry-smbd-").tempdir()?;
        let root = dir.path();
        for sub in ["private", "lock", "state", "cache", "pid", "ncalrpc"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let share = root.join(SHARE);
        std::fs::create_dir_all(&share)?;
        chown_to(&share, TEST_USER)?;
        let port = free_port()?;
        let d = |sub: &str| root.join(sub).display().to_string();
        let conf = format!(
            "[global]\n\
             server role = standalone server\n\
             smb ports = {port}\n\
             interfaces = 127.0.0.1\n\
             bind interfaces only = yes\n\
             disable netbios = yes\n\
             private dir = {private}\n\
             lock directory = {lock}\n\
             state directory = {state}\n\
             cache directory = {cache}\n\
             pid directory = {pid}\n\
             ncalrpc dir = {ncalrpc}\n\
             passdb backend = tdbsam:{private}/passdb.tdb\n\
             load printers = no\n\
             printcap name = /dev/null\n\
             disable spoolss = yes\n\
             log level = 1\n\
             server smb encrypt = {encrypt}\n\
             {extra_global}\n\
             [{SHARE}]\n\
             path = {share}\n\
             read only = no\n\
             valid users = {TEST_USER}\n",
            private = d("private"),
            lock = d("lock"),
            state = d("state"),
            cache = d("cache"),
            pid = d("pid"),
            ncalrpc = d("ncalrpc"),
            share = share.display(),
        );
        std::fs::write(root.join("smb.conf"), conf)?;
        let mut passwd = Command::new("smbpasswd")
            .args(["-c"])
            .arg(root.join("smb.conf"))
            .args(["-a", "-s", TEST_USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("run smbpasswd (install samba: scripts/install-deps.sh peers)")?;
        {
            use std::io::Write;
            let mut stdin = passwd.stdin.take().expect("piped");
            stdin.write_all(format!("{TEST_PASSWORD}\n{TEST_PASSWORD}\n").as_bytes())?;
        }
        let out = passwd.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "smbpasswd -a {TEST_USER} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut smbd = Smbd {
            child: None,
            dir,
            port,
        };
        smbd.spawn()?;
        Ok(smbd)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(smbd_path())
            .args(["--foreground", "--no-process-group", "--debug-stdout", "-s"])
            .arg(self.dir.path().join("smb.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group (pgid = its pid), shared by the per-connection children.
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {}", smbd_path().display()))?;
        self.child = Some(child);
        let path = self.log_path();
        wait_port(self.port, Duration::from_secs(20), "smbd", || {
            std::fs::read_to_string(&path).unwrap_or_default()
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("smbd.log")
    }

    /// smbd's own output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `\\127.0.0.1\share` (the port goes in the host's `port` setting).
    pub fn unc(&self) -> String {
        format!(r"\\127.0.0.1\{SHARE}")
    }

    /// `smb://127.0.0.1:<port>/share`.
    pub fn url(&self) -> String {
        format!("smb://127.0.0.1:{}/{SHARE}", self.port)
    }

    /// The shared folder on this machine.
    pub fn share_dir(&self) -> PathBuf {
        self.dir.path().join(SHARE)
    }

    /// A folder in the share owned by the test user, created fresh (`/` path inside the share
    /// is its name).
    pub fn folder(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.share_dir().join(name);
        std::fs::create_dir_all(&path)?;
        chown_to(&path, TEST_USER)?;
        Ok(path)
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory preconditions; the negative pid names the process
            // group this peer created for smbd and its children.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), signal);
            }
        }
    }

    /// SIGKILL smbd and every connection it serves.
    pub fn kill(&mut self) {
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Kill and start again on the same port, share and users.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// SIGSTOP smbd and its connections: it accepts TCP connections but answers nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Smbd::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// CPU seconds (user + system) used so far by smbd and the connection processes it
    /// serves (exited ones are counted in their parent once reaped).
    pub fn cpu_seconds(&self) -> f64 {
        let Some(child) = &self.child else { return 0.0 };
        let group = child.id().to_string();
        // SAFETY: sysconf has no memory preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut total = 0u64;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the command name (which is in parentheses and may hold spaces).
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // fields[0] is the state (field 3); pgrp is field 5, utime..cstime are 14..17.
            if fields.len() > 14 && fields[2] == group {
                total += fields[11..15]
                    .iter()
                    .filter_map(|f| f.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        total as f64 / ticks
    }

    /// Run `smbclient` against the share with the test user, e.g. `put a b`, in `cwd`.
    pub fn smbclient(&self, cwd: &Path, commands: &str) -> anyhow::Result<String> {
        let out = Command::new("smbclient")
            .current_dir(cwd)
            .args(["-p", &self.port.to_string()])
            .arg(format!("//127.0.0.1/{SHARE}"))
            .arg("-U")
            .arg(format!("{TEST_USER}%{TEST_PASSWORD}"))
            .args(["-c", commands])
            .output()
            .context("run smbclient (install smbclient: scripts/install-deps.sh peers)")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("smbclient {commands:?} failed: {text}");
        }
        Ok(text)
    }
}

impl Drop for Smbd {
    fn drop(&mut self) {
        self.kill();
    }
}
