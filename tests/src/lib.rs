//! Shared helpers for Ferry's end-to-end tests: a whole node (the five services) either inside
//! the test process (`Node`, through each service's `run(settings, shutdown)`) or as separate
//! processes (`ProcNode`, the real binaries), against a real `nats-server`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

pub mod ledger_check;
pub mod pair;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use ferry_service::Settings;
pub use ferry_testkit::{NatsServer, bin_path, eventually, workspace_root};
use ferry_wire::{ApplyRequest, ApplyResponse, RunFinished, subjects};

pub const NODE: &str = "node1";

/// Settings for a test node: random metrics ports, short ack wait.
pub fn settings(nats_url: &str) -> Settings {
    let mut s = Settings {
        node_id: NODE.to_string(),
        nats_url: nats_url.to_string(),
        data_dir: fresh_data_dir(),
        ..Settings::default()
    };
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("literal");
    s.scheduler.metrics_addr = any;
    s.file_collector.metrics_addr = any;
    s.transfer.metrics_addr = any;
    s.transfer.ack_wait_secs = 5;
    s.cert_handler.metrics_addr = any;
    s.failover_coordinator.metrics_addr = any;
    s
}

/// Apply a configuration through the scheduler of `node`.
pub async fn apply_via(
    client: &async_nats::Client,
    node: &str,
    toml_text: &str,
) -> anyhow::Result<ApplyResponse> {
    let mut raw = ferry_config::parse_toml(toml_text).map_err(|e| anyhow::anyhow!("{e}"))?;
    match ferry_service::api::seal_for_apply(client, node, &mut raw).await {
        Ok(()) => {}
        Err(Ok(errors)) => anyhow::bail!("{errors}"),
        Err(Err(e)) => return Err(e),
    }
    let request = ApplyRequest {
        config: raw,
        source_name: "test".into(),
        applied_by: "test".into(),
        dry_run: false,
        // A test or bench applies its whole configuration each time.
        prune: true,
    };
    ferry_service::api::call(
        client,
        node,
        subjects::service::SCHEDULER,
        subjects::api::APPLY,
        &request,
    )
    .await
}

/// A data dir of its own for each test node (the failover role lives there), under the system
/// temp dir.
pub fn fresh_data_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    std::env::temp_dir().join(format!("ferry-test-data-{}-{n}", std::process::id()))
}

/// Which services a node runs.
#[derive(Debug, Clone, Copy)]
pub struct Services {
    pub scheduler: bool,
    pub collector: bool,
    pub transfer: bool,
}

impl Services {
    pub const ALL: Services = Services {
        scheduler: true,
        collector: true,
        transfer: true,
    };
    /// For tests that run the scheduler as a process of its own.
    pub const NO_SCHEDULER: Services = Services {
        scheduler: false,
        ..Services::ALL
    };
    /// For tests that run transfer instances as processes of their own.
    pub const NO_TRANSFER: Services = Services {
        transfer: false,
        ..Services::ALL
    };
}

/// A node whose services run inside the test process.
pub struct Node {
    pub settings: Settings,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    handles: Vec<(&'static str, CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

impl Node {
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        Self::start_with(settings, Services::ALL).await
    }

    pub async fn start_with(settings: Settings, services: Services) -> anyhow::Result<Self> {
        ferry_service::main_scaffold::init_logging();
        // The test's own client is the node's `cli` user (an operator role when auth is on).
        let client = ferry_service::nats::connect_options(&settings, "cli")
            .await?
            .connect(settings.nats_url.as_str())
            .await?;
        let js = async_nats::jetstream::new(client.clone());
        let mut node = Node {
            settings,
            client,
            js,
            handles: Vec::new(),
        };
        node.spawn("failover-coordinator", |s, t| {
            Box::pin(ferry_failover_coordinator::run(s, t))
        });
        node.spawn("cert-handler", |s, t| Box::pin(ferry_cert_handler::run(s, t)));
        if services.scheduler {
            node.spawn("scheduler", |s, t| Box::pin(ferry_scheduler::run(s, t)));
        }
        if services.collector {
            node.spawn("file-collector", |s, t| Box::pin(ferry_file_collector::run(s, t)));
        }
        if services.transfer {
            node.spawn("transfer", |s, t| Box::pin(ferry_transfer::run(s, t)));
        }
        node.wait_ready(services).await?;
        Ok(node)
    }

    pub fn spawn(
        &mut self,
        name: &'static str,
        run: impl FnOnce(
            Settings,
            CancellationToken,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
    ) {
        let token = CancellationToken::new();
        let service = run(self.settings.clone(), token.clone());
        // A service that stops by itself says why at once (a test waiting for it to answer would
        // otherwise only time out).
        let handle = tokio::spawn(async move {
            let result = service.await;
            if let Err(e) = &result {
                eprintln!("{name} stopped with an error: {e:#}");
            }
            result
        });
        self.handles.push((name, token, handle));
    }

    /// Stop one service (gracefully) and wait for it.
    pub async fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self
            .handles
            .iter()
            .position(|(n, _, _)| *n == name)
            .with_context(|| format!("{name} is not running"))?;
        let (_, token, handle) = self.handles.remove(i);
        token.cancel();
        tokio::time::timeout(Duration::from_secs(30), handle).await???;
        Ok(())
    }

    pub async fn wait_ready(&self, services: Services) -> anyhow::Result<()> {
        let mut wanted = vec![
            subjects::service::FAILOVER_COORDINATOR,
            subjects::service::CERT_HANDLER,
        ];
        if services.scheduler {
            wanted.push(subjects::service::SCHEDULER);
        }
        if services.collector {
            wanted.push(subjects::service::FILE_COLLECTOR);
        }
        if services.transfer {
            wanted.push(subjects::service::TRANSFER);
        }
        for service in wanted {
            let subject = subjects::api(&self.settings.node_id, service, subjects::api::STATUS);
            eventually(
                Duration::from_secs(30),
                &format!("{service} to answer"),
                || async { self.client.request(subject.clone(), "null".into()).await.ok() },
            )
            .await?;
        }
        Ok(())
    }

    /// Apply a configuration through the scheduler API (relative paths must not be used).
    pub async fn apply(&self, toml_text: &str) -> anyhow::Result<ApplyResponse> {
        apply_via(&self.client, &self.settings.node_id, toml_text).await
    }

    pub async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: &Req,
    ) -> anyhow::Result<Resp> {
        ferry_service::api::call(&self.client, &self.settings.node_id, service, endpoint, body).await
    }

    /// Request a run of `task` and wait for its `RunFinished`.
    pub async fn run_task(&self, task: &str, timeout: Duration) -> anyhow::Result<RunFinished> {
        let run_id = self.request_run(task).await?;
        ferry_service::streams::wait_for_run(&self.js, task, run_id, timeout).await
    }

    /// The epoch of the lease as stored now (the node's own, while it is active).
    pub async fn current_epoch(&self) -> anyhow::Result<u64> {
        let lease = self
            .js
            .get_key_value(ferry_wire::topology::KV_LEASE)
            .await?
            .entry(ferry_wire::topology::LEASE_KEY)
            .await?
            .context("no node holds the lease")?;
        Ok(ferry_wire::decode::<ferry_wire::Lease>(&lease.value)?.epoch_at(lease.revision))
    }

    pub async fn request_run(&self, task: &str) -> anyhow::Result<Uuid> {
        ferry_service::api::request_run(&self.client, &self.settings.node_id, task, "test").await
    }

    /// Every finished run so far, oldest first.
    pub async fn finished_runs(&self, task: Option<&str>) -> anyhow::Result<Vec<RunFinished>> {
        ferry_service::streams::read(
            &self.js,
            ferry_wire::topology::STREAM_EVENTS,
            &subjects::run_finished_filter(task),
            None,
        )
        .await
    }

    pub async fn shutdown(mut self) {
        for (_, token, _) in &self.handles {
            token.cancel();
        }
        for (name, _, handle) in self.handles.drain(..) {
            match tokio::time::timeout(Duration::from_secs(30), handle).await {
                Ok(Ok(Ok(()))) => {}
                other => eprintln!("{name} did not stop cleanly: {other:?}"),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for (_, token, _) in &self.handles {
            token.cancel();
        }
    }
}

/// One service running as its real binary, killed on drop.
pub struct ServiceProcess {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl ServiceProcess {
    /// Start `ferry-<service>` with `env` (`FERRY_*` settings), logging to `log_dir`.
    pub fn start(service: &str, env: &BTreeMap<String, String>, log_dir: &Path) -> anyhow::Result<Self> {
        Self::start_in(None, service, env, log_dir)
    }

    /// [`ServiceProcess::start`], inside network namespace `netns` when given (`ip netns exec`
    /// execs the program, so the child's pid is the service's).
    pub fn start_in(
        netns: Option<&ferry_testkit::Netns>,
        service: &str,
        env: &BTreeMap<String, String>,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{service}-{}.log", Uuid::now_v7()));
        let file = std::fs::File::create(&log)?;
        let program = bin_path(&format!("ferry-{service}"));
        let mut command = match netns {
            Some(ns) => ns.command(&program),
            None => Command::new(&program),
        };
        let child = command
            .envs(env)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("start ferry-{service}"))?;
        Ok(Self {
            name: service.to_string(),
            child: Some(child),
            log,
        })
    }

    /// True until the process has exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait up to `timeout` for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("ferry-{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `FERRY_*` environment for a service process of `node` on `nats_url`, random metrics ports.
pub fn process_env(nats_url: &str, node: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("FERRY_NATS_URL".into(), nats_url.into());
    env.insert("FERRY_NODE_ID".into(), node.into());
    env.insert(
        "FERRY_DATA_DIR".into(),
        fresh_data_dir().to_string_lossy().into_owned(),
    );
    for service in [
        "SCHEDULER",
        "FILE_COLLECTOR",
        "TRANSFER",
        "CERT_HANDLER",
        "FAILOVER_COORDINATOR",
    ] {
        env.insert(format!("FERRY_{service}__METRICS_ADDR"), "127.0.0.1:0".into());
    }
    env.insert("FERRY_TRANSFER__ACK_WAIT_SECS".into(), "5".into());
    env
}

/// A configuration text parsed and validated, as the scheduler stores it.
pub fn validated(toml_text: &str) -> anyhow::Result<ferry_config::Config> {
    ferry_config::parse_toml(toml_text)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `ferry nats setup` in `dir` for `nodes` (comma-separated), each node's `cli` key the admin's:
/// the nats-server `authorization` block to give the server (inline: the server resolves an
/// `include` against its own configuration's folder).
pub fn nats_keys(dir: &Path, nodes: &str) -> anyhow::Result<String> {
    let out = Command::new(bin_path("ferry"))
        .args(["nats", "setup", "--nodes", nodes, "--cli-role", "admin", "--dir"])
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ferry nats setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(std::fs::read_to_string(dir.join("auth.conf"))?)
}

/// A client authenticated with the nkey seed in `seed` (its inbox prefix the one that user may
/// subscribe to), connected to `servers`.
pub async fn connect_as(
    seed: &Path,
    servers: impl async_nats::ToServerAddrs,
) -> anyhow::Result<async_nats::Client> {
    let mut settings = Settings::default();
    settings.nats.nkey_seed_file = Some(seed.display().to_string());
    Ok(ferry_service::nats::connect_options(&settings, "cli")
        .await?
        .connect(servers)
        .await?)
}

pub use pair::SERVICES;

/// Returns once every service of `NODE` answers its status endpoint (at most 60 s each).
pub async fn services_answer(client: &async_nats::Client) {
    for service in SERVICES {
        let subject = subjects::api(NODE, service, subjects::api::STATUS);
        eventually(Duration::from_secs(60), service, || async {
            client.request(subject.clone(), "null".into()).await.ok()
        })
        .await
        .expect("service up");
    }
}

/// Run `program` with `args` in `dir` (openssl, gpg, tar: the standard tools the tests check
/// Ferry against); panics with its stderr if it fails. Its stdout.
pub fn run_tool(program: &str, args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A self-signed RSA certificate made by openssl in `dir`: `<name>.key` and `<name>.pem`,
/// subject `CN=<cn>`, valid for `days`.
pub fn openssl_self_signed(dir: &Path, name: &str, cn: &str, days: u32) {
    let (key, pem, subject, days) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={cn}"),
        days.to_string(),
    );
    run_tool(
        "openssl",
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-days", &days,
            "-subj", &subject,
        ],
        dir,
    );
}

/// `<name>.pfx` in `dir`, made by openssl of `<name>.key` and `<name>.pem`, under `password`.
pub fn openssl_pfx(dir: &Path, name: &str, password: &str) {
    let (key, pem, pfx, pass) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("{name}.pfx"),
        format!("pass:{password}"),
    );
    run_tool(
        "openssl",
        &[
            "pkcs12", "-export", "-inkey", &key, "-in", &pem, "-out", &pfx, "-passout", &pass,
        ],
        dir,
    );
}

/// Run the `ferry` CLI against `nats_url`.
pub fn ferry_cli(nats_url: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new(bin_path("ferry"))
        .args(args)
        .current_dir(cwd)
        .env("FERRY_NATS_URL", nats_url)
        .env("FERRY_NODE_ID", NODE)
        .output()
        .expect("run the ferry CLI")
}

/// The `ferry` CLI as the NATS user whose seed is `nkey` (none: no credentials), with `env`
/// added: whether it succeeded, and its stdout and stderr together.
pub fn ferry_as(
    nats_url: &str,
    nkey: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
) -> (bool, String) {
    let mut command = Command::new(bin_path("ferry"));
    if let Some(nkey) = nkey {
        command.arg("--nats-nkey").arg(nkey);
    }
    let out = command
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .env("FERRY_NATS_URL", nats_url)
        .env("FERRY_NODE_ID", NODE)
        .output()
        .expect("run the ferry CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One file of a bad-input corpus (`tests/<dir>/*.toml`): its path, text, and the parts of its
/// first line, `# expect: <part> | <part> | ...`.
pub struct CorpusCase {
    pub path: PathBuf,
    pub text: String,
    pub expect: Vec<String>,
}

/// Every case of the corpus in `tests/<dir>`, sorted by file name.
pub fn corpus(dir: &str) -> anyhow::Result<Vec<CorpusCase>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)?;
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .ok_or_else(|| anyhow::anyhow!("{}: first line is not `# expect: ...`", path.display()))?
                .split(" | ")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            Ok(CorpusCase { path, text, expect })
        })
        .collect()
}

/// A file's modification time in nanoseconds since the Unix epoch, as listings carry it.
pub fn mtime_ns(path: &Path) -> i128 {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).expect("stat");
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(Sha256::digest(bytes))
}

/// Every regular file under `root`, relative path → SHA-256, skipping transfer temp files.
pub fn tree_hashes(root: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            (rel, sha256_file(e.path()))
        })
        .collect()
}

/// A local → local task, as TOML.
pub fn local_task(name: &str, from: &Path, to: &Path, extra_source: &str, extra_destination: &str) -> String {
    format!(
        r#"
[[task]]
name = "{name}"

[[task.source]]
host = "local"
folder = "{}"
{extra_source}

[[task.destination]]
host = "local"
folder = "{}"
{extra_destination}
"#,
        from.display(),
        to.display()
    )
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// Plain HTTP GET on loopback: (status code, body). HTTP/1.0, so that no server answers with a
/// chunked body (Prometheus's API would).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of an unlabelled-or-labelled Prometheus sample, summed over label sets matching
/// every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Each delivered file of `runs` (by file name) and how many times it was delivered: what an
/// exactly-once check across a failover counts.
pub fn deliveries(runs: &[RunFinished]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for run in runs {
        for file in &run.files {
            if file.outcome == ferry_wire::Outcome::Delivered {
                let name = file
                    .source_path
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                *out.entry(name).or_default() += 1;
            }
        }
    }
    out
}

/// The primary's side of the reference procedure tests (replication modes 1 and 2) in `work`:
/// an inbox, a personal certificate `CN=partner` imported with `ferry` (which runs the CLI
/// against the primary, with environment added), and the configuration file of
/// [`procedure_config`] (the inbox's files to `out` on `host`); the inbox and the file.
pub fn procedure_primary(
    work: &Path,
    host: &str,
    out: &str,
    task: &str,
    ferry: impl Fn(&[&str], &[(&str, &str)]) -> std::process::Output,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (inbox, certs) = (work.join("inbox"), work.join("certs"));
    std::fs::create_dir_all(&inbox)?;
    std::fs::create_dir_all(&certs)?;
    openssl_self_signed(work, "partner", "partner", 30);
    openssl_pfx(work, "partner", "import-pw");
    let imported = ferry(
        &["certs", "import", "partner.pfx", "--password-env", "PFX_PW"],
        &[("PFX_PW", "import-pw")],
    );
    anyhow::ensure!(
        imported.status.success(),
        "ferry certs import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let config = work.join("primary.toml");
    std::fs::write(
        &config,
        procedure_config(host, task, &inbox, out, &certs, &work.join("restored")),
    )?;
    Ok((inbox, config))
}

/// The primary's configuration for the reference procedure's end-to-end tests: `host` (a
/// `[[host]]` table named `partner`), task `task` moving new files of `inbox` to `partner`'s
/// `out` every two seconds, a `certs-backup` task writing the Certs Backup to `certs`, and the
/// unscheduled `certs-restore` task restoring it from there (its files kept in `restored`), the
/// password a secure parameter.
pub fn procedure_config(
    host: &str,
    task: &str,
    inbox: &Path,
    out: &str,
    certs: &Path,
    restored: &Path,
) -> String {
    format!(
        "{host}\
         [[task]]\nname = \"{task}\"\n\
         [[task.source]]\nhost = \"local\"\nfolder = \"{inbox}\"\nnew_files_only = true\nsize_stable_ms = 0\n\
         [[task.destination]]\nhost = \"partner\"\nfolder = \"{out}\"\n\
         [[task.schedule]]\ncron = \"*/2 * * * * *\"\n\
         [[task]]\nname = \"certs-backup\"\n\
         [task.parameters]\nCertsPassword = {{ secure = \"backup-pw\" }}\n\
         [[task.destination]]\nhost = \"local\"\nfolder = \"{certs}\"\noverwrite = \"overwrite\"\n\
         [[task.steps]]\nprocess = \"certs-backup\"\npassword_param = \"CertsPassword\"\n\
         [[task]]\nname = \"certs-restore\"\n\
         [task.parameters]\nCertsPassword = {{ secure = \"backup-pw\" }}\n\
         [[task.source]]\nhost = \"local\"\nfolder = \"{certs}\"\nmasks = \"Certs*.pfx;Certs*.p7b\"\nnew_files_only = false\n\
         [[task.destination]]\nhost = \"local\"\nfolder = \"{restored}\"\noverwrite = \"overwrite\"\n\
         [[task.steps]]\nprocess = \"certs-restore\"\npassword_param = \"CertsPassword\"\n",
        inbox = inbox.display(),
        certs = certs.display(),
        restored = restored.display(),
    )
}

/// Every finished run of `task` in the events stream behind `js`, with its files.
pub async fn finished_runs(
    js: &async_nats::jetstream::Context,
    task: &str,
) -> anyhow::Result<Vec<RunFinished>> {
    ferry_service::streams::read(
        js,
        ferry_wire::topology::STREAM_EVENTS,
        &subjects::run_finished_filter(Some(task)),
        None,
    )
    .await
}
