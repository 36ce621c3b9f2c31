//! OpenSSH `sshd` for the SFTP host's tests: a fresh ed25519 host key, `internal-sftp`, and the
//! test account ([`TEST_USER`]) logging in with its password, a public key
//! ([`Sshd::authorize`]) or keyboard-interactive answers (through PAM, like a real server).
//!
//! sshd forks a process tree per connection and each calls `setsid`, so killing the listener
//! leaves sessions running: [`Sshd::kill`] and [`Sshd::pause`] act on the listener and every
//! process descended from it, found through `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::{ProcessTree, TEST_PASSWORD, TEST_USER, chown_to, ensure_user, free_port, is_root, set_mode};

/// How users may log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshdAuth {
    /// `password` (and public keys).
    Password,
    /// `keyboard-interactive` through PAM only (and public keys); plain `password` is off.
    KeyboardInteractive,
}

/// A running sshd on a random loopback port, killed (with all its sessions) on drop.
pub struct Sshd {
    tree: ProcessTree,
    dir: tempfile::TempDir,
    conf: PathBuf,
    port: u16,
    fingerprint: String,
    public_key: String,
}

impl Sshd {
    pub fn start(auth: SshdAuth) -> anyhow::Result<Sshd> {
        Sshd::start_listening(auth, &["127.0.0.1"])
    }

    /// Listening on these addresses (e.g. the host side of network namespaces' links, for
    /// nodes inside them); the port is still free on 127.0.0.1.
    pub fn start_listening(auth: SshdAuth, addresses: &[&str]) -> anyhow::Result<Sshd> {
        let binary = sshd_path();
        if !binary.exists() {
            bail!(
                "{} is missing: install the test peers with `scripts/install-deps.sh peers .ferry/tools`",
                binary.display()
            );
        }
        if !is_root() {
            bail!("sshd with password logins of a system user needs root");
        }
        ensure_user(TEST_USER, TEST_PASSWORD)?;
        // sshd's built-in privilege-separation folder.
        std::fs::create_dir_all("/run/sshd").context("create /run/sshd")?;
        set_mode(Path::new("/run/sshd"), 0o755)?;
        let dir = tempfile::Builder::new().prefix("ferry-sshd-").tempdir()?;
        // The session runs as the test user: it must reach its folders and authorized_keys.
        set_mode(dir.path(), 0o755)?;
        let host_key = dir.path().join("host_ed25519");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ferry-test-host", "-f"])
            .arg(&host_key))?;
        let public_key = std::fs::read_to_string(host_key.with_extension("pub"))?
            .trim()
            .to_string();
        let listed = run(Command::new("ssh-keygen")
            .arg("-lf")
            .arg(host_key.with_extension("pub")))?;
        let fingerprint = listed
            .split_whitespace()
            .nth(1)
            .filter(|f| f.starts_with("SHA256:"))
            .with_context(|| format!("ssh-keygen -lf printed {listed:?}"))?
            .to_string();
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, "")?;
        set_mode(&authorized, 0o644)?;
        let (password, pam) = match auth {
            SshdAuth::Password => ("yes", "no"),
            SshdAuth::KeyboardInteractive => ("no", "yes"),
        };
        let listen: String = addresses.iter().map(|a| format!("ListenAddress {a}\n")).collect();
        let conf = format!(
            "{listen}HostKey {key}\nPidFile {pid}\nUsePAM {pam}\n\
             PasswordAuthentication {password}\nKbdInteractiveAuthentication {pam}\n\
             PubkeyAuthentication yes\nStrictModes no\nAuthorizedKeysFile {authorized}\n\
             Subsystem sftp internal-sftp\nMaxStartups 100\nMaxSessions 100\nLogLevel VERBOSE\n",
            key = host_key.display(),
            pid = dir.path().join("sshd.pid").display(),
            authorized = authorized.display(),
        );
        let conf_path = dir.path().join("sshd_config");
        let mut server = Sshd {
            tree: ProcessTree::default(),
            dir,
            conf: conf_path,
            port: 0,
            fingerprint,
            public_key,
        };
        // A port picked by `free_port` can be taken before sshd binds it: try a few.
        let mut last = None;
        for _ in 0..3 {
            server.port = free_port()?;
            std::fs::write(&server.conf, format!("{conf}Port {}\n", server.port))?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host key's fingerprint as `ssh-keygen -lf` prints it (`SHA256:…`).
    pub fn host_key_sha256(&self) -> &str {
        &self.fingerprint
    }

    /// A known_hosts line for this server (`[127.0.0.1]:PORT ssh-ed25519 AAAA…`).
    pub fn known_hosts_line(&self) -> String {
        let mut parts = self.public_key.split_whitespace();
        let (kind, key) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        format!("[127.0.0.1]:{} {kind} {key}", self.port)
    }

    /// Let the test user log in with this public key (`ssh-ed25519 AAAA… comment`).
    pub fn authorize(&self, public_key: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("authorized_keys"))?;
        writeln!(f, "{}", public_key.trim())?;
        Ok(())
    }

    /// A new folder `name` in the peer's temp dir, owned by the test user (SFTP paths are the
    /// server's file system paths: no chroot).
    pub fn folder(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path)?;
        chown_to(&path, TEST_USER)?;
        Ok(path)
    }

    /// sshd's own log (logins, failures).
    pub fn log(&self) -> String {
        sshd_log(self.dir.path())
    }

    /// SIGKILL the listener and every session (connections break without a goodbye).
    pub fn kill(&mut self) {
        self.tree.kill();
    }

    /// Kill and start again on the same port with the same host key, configuration and files.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Freeze the listener and every session (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&mut self) {
        self.tree.pause();
    }

    /// Undo [`Sshd::pause`].
    pub fn resume(&mut self) {
        self.tree.resume();
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sshd.log"))?;
        let child = Command::new(sshd_path())
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", sshd_path().display()))?;
        let dir = self.dir.path().to_path_buf();
        self.tree.adopt(child, "sshd", self.port, move || sshd_log(&dir))
    }
}

fn sshd_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
}

fn sshd_path() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd"))
}

/// Run a helper program, return its standard output.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?} (install openssh-client)"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
