//! A real SMTP server for next-action tests: Python's `aiosmtpd` (installed by
//! `scripts/install-deps.sh peers` into `.ferry/tools/aiosmtpd-py`) on a random loopback port,
//! with STARTTLS required (a throwaway certificate made with `openssl` at start) and AUTH
//! PLAIN/LOGIN for one user. Each message received is written to the mailbox folder as
//! `<n>.eml` (the envelope's sender and recipients first, as `X-Envelope-*` lines). Killed on
//! drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const SERVER: &str = r#"
import asyncio, os, ssl, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, mailbox, user, password = sys.argv[1:7]

class Handler:
    def __init__(self):
        self.n = 0
    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        tmp = os.path.join(mailbox, f".{self.n}.tmp")
        with open(tmp, "wb") as f:
            f.write(f"X-Envelope-From: {envelope.mail_from}\r\n".encode())
            f.write(f"X-Envelope-To: {','.join(envelope.rcpt_tos)}\r\n".encode())
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(mailbox, f"{self.n}.eml"))
        return "250 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and auth_data.password.decode() == password
    return AuthResult(success=ok, handled=False)

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(Handler(), hostname="127.0.0.1", port=int(port), tls_context=context,
                        require_starttls=True, authenticator=authenticator, auth_required=True,
                        auth_require_tls=True)
controller.start()
print("ready", flush=True)
try:
    asyncio.get_event_loop().run_forever()
except KeyboardInterrupt:
    pass
"#;

pub struct Smtp {
    child: Child,
    pub port: u16,
    /// The throwaway certificate's CA (the certificate itself, self-signed for 127.0.0.1).
    pub ca_file: PathBuf,
    pub user: String,
    pub password: String,
    dir: tempfile::TempDir,
}

impl Smtp {
    pub fn start(user: &str, password: &str) -> anyhow::Result<Smtp> {
        let dir = tempfile::tempdir()?;
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args([
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run openssl (install it: scripts/install-deps.sh peers)")?;
        if !status.success() {
            bail!("openssl could not make the SMTP server's certificate");
        }
        let mailbox = dir.path().join("mailbox");
        std::fs::create_dir_all(&mailbox)?;
        let script = dir.path().join("smtpd.py");
        std::fs::write(&script, SERVER)?;
        let py = crate::workspace_root().join(".ferry/tools/aiosmtpd-py");
        if !py.join("aiosmtpd").is_dir() {
            bail!(
                "aiosmtpd is not installed at {}: run `make peers` (scripts/install-deps.sh peers)",
                py.display()
            );
        }
        let port = super::free_port()?;
        let log = dir.path().join("smtpd.log");
        let child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&cert)
            .arg(&key)
            .arg(&mailbox)
            .arg(user)
            .arg(password)
            .env("PYTHONPATH", &py)
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.path().join("smtpd.err"))?)
            .spawn()
            .context("start python3 for aiosmtpd")?;
        let err = dir.path().join("smtpd.err");
        super::wait_port(port, Duration::from_secs(20), "aiosmtpd", || {
            std::fs::read_to_string(&err).unwrap_or_default()
        })?;
        Ok(Smtp {
            child,
            port,
            ca_file: cert,
            user: user.to_string(),
            password: password.to_string(),
            dir,
        })
    }

    pub fn mailbox(&self) -> PathBuf {
        self.dir.path().join("mailbox")
    }

    /// The messages received so far, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut found: Vec<(u64, String)> = std::fs::read_dir(self.mailbox())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name.strip_suffix(".eml")?.parse().ok()?;
                Some((n, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, m)| m).collect()
    }

    /// Wait for at least `n` messages.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return Ok(messages);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} message(s) after {timeout:?}, expected {n}; server log:\n{}",
                    messages.len(),
                    std::fs::read_to_string(self.dir.path().join("smtpd.err")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
