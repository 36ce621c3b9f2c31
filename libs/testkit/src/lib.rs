//! Test harness: real peers on loopback with random ports and temp dirs, killed on drop.
//!
//! [`NatsServer`] is one server; [`NatsCluster`] is a three-server JetStream cluster whose
//! servers can be killed and started again; [`Netns`] is a network namespace for one simulated
//! host that can be cut off from the root namespace (needs root, see [`netns_available`]);
//! [`Throttle`] puts a server behind a slow link; [`Link`] is a link a test cuts and heals.
//!
//! `nats-server` is found at `$FERRY_NATS_SERVER`, else `<workspace>/.ferry/tools/bin/nats-server`
//! (where `make` installs the pinned PyPI build), else on `PATH`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod cluster;
mod link;
mod netns;
pub mod peers;
mod throttle;

pub use cluster::NatsCluster;
pub use link::Link;
pub use netns::{Netns, netns_available};
pub use throttle::Throttle;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("libs/testkit sits two levels below the workspace root")
        .to_path_buf()
}

/// Path of a binary built from this workspace (same profile as the running test, or as the
/// running binary itself, e.g. `target/release/ferry-bench`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let parent = exe.parent().expect("an executable lives in a directory");
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    let dir = if parent.ends_with("deps") {
        parent.parent().expect("target/<profile>/deps has a parent")
    } else {
        parent
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

pub fn nats_server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local = workspace_root().join(".ferry/tools/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A real `nats-server` with JetStream, on a random loopback port, storing in a temp dir.
pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    /// Extra configuration lines (e.g. an `include` of an `authorization` block).
    extra: String,
    /// The server's JetStream domain (a site of its own in mirror mode).
    domain: Option<String>,
}

impl NatsServer {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with("")
    }

    /// A server whose configuration also has `extra` (e.g. an `authorization` block).
    pub fn start_with(extra: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-nats-").tempdir()?;
        let mut server = Self {
            child: None,
            dir,
            port: 0,
            extra: extra.to_string(),
            domain: None,
        };
        server.spawn(0)?;
        Ok(server)
    }

    /// A server of a site of its own: JetStream domain `domain`, and `extra` (e.g. a
    /// `leafnodes` block).
    pub fn start_site(domain: &str, extra: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-nats-").tempdir()?;
        let mut server = Self {
            child: None,
            dir,
            port: 0,
            extra: extra.to_string(),
            domain: Some(domain.to_string()),
        };
        server.spawn(0)?;
        Ok(server)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop with SIGKILL (no clean shutdown) and start again on the same port and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn(self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self, port: u16) -> anyhow::Result<()> {
        let store = self.dir.path().join("jetstream");
        let ports_dir = self.dir.path().join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        for e in std::fs::read_dir(&ports_dir)? {
            let _ = std::fs::remove_file(e?.path());
        }
        let listen = if port == 0 {
            "-1".to_string()
        } else {
            port.to_string()
        };
        let conf = self.dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{listen}\"\nmax_payload: 8MB\nports_file_dir: \"{}\"\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 20GB\n{}}}\n{}\n",
                ports_dir.display(),
                store.display(),
                self.domain
                    .as_ref()
                    .map(|d| format!("  domain: \"{d}\"\n"))
                    .unwrap_or_default(),
                self.extra
            ),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))?;
        self.child = Some(spawn_nats_server(&conf, log)?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(port) = read_ports_file(&ports_dir)
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                self.port = port;
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
                bail!("nats-server did not start within 20 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Start `nats-server -c conf`, its stderr into `log`.
pub(crate) fn spawn_nats_server(conf: &Path, log: std::fs::File) -> anyhow::Result<Child> {
    Command::new(nats_server_path())
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "start {} (install it with `make deps`)",
                nats_server_path().display()
            )
        })
}

fn read_ports_file(dir: &Path) -> Option<u16> {
    // nats-server writes one `<name>_<pid>.ports` file; the directory is emptied before each start.
    let entry = std::fs::read_dir(dir).ok()?.next()?;
    let text = std::fs::read_to_string(entry.ok()?.path()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = v.get("nats")?.as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `check` every 50 ms until it returns `Some`, or fail after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
