//! Nodes whose five services run as separate processes, optionally inside a network namespace
//! of their own (a simulated host), for the failover tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_testkit::Netns;

use crate::ServiceProcess;

/// Every service of a node, coordinator first (the others ask it for their grant).
pub const SERVICES: [&str; 5] = [
    "failover-coordinator",
    "cert-handler",
    "scheduler",
    "file-collector",
    "transfer",
];

/// How a test node is set up.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub id: String,
    /// Comma-separated NATS URLs as this node reaches them.
    pub nats_url: String,
    pub data_dir: PathBuf,
    pub ledger: Option<PathBuf>,
    /// `manual` or `automatic`.
    pub mode: &'static str,
    /// `active`, `standby` or `disabled` (first start only).
    pub initial_role: &'static str,
    pub lease_ttl_ms: u64,
    pub fence_margin_ms: u64,
    pub replicas: usize,
    pub start_with_scheduler_disabled: bool,
    /// A keymat file shared with the other node (the primary's, imported once), so either can
    /// open the configuration's secrets; `None`: the node's own in its data dir.
    pub keymat: Option<PathBuf>,
    /// `ferry nats setup`'s folder: each service connects as `<keys>/<node>/<service>.nk`.
    /// `None`: without credentials.
    pub nats_keys: Option<PathBuf>,
}

impl NodeSetup {
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_string(), v);
        };
        set("FERRY_NODE_ID", self.id.clone());
        set("FERRY_NATS_URL", self.nats_url.clone());
        set("FERRY_ALLOW_INSECURE_NATS", "true".into());
        set("FERRY_DATA_DIR", self.data_dir.to_string_lossy().into_owned());
        if let Some(ledger) = &self.ledger {
            set("FERRY_LEDGER", ledger.to_string_lossy().into_owned());
        }
        if let Some(keymat) = &self.keymat {
            set("FERRY_KEYMAT", keymat.to_string_lossy().into_owned());
        }
        if let Some(keys) = &self.nats_keys {
            set(
                "FERRY_NATS__NKEY_SEED_FILE",
                format!("{}/{{node}}/{{service}}.nk", keys.display()),
            );
        }
        set("FERRY_REPLICAS", self.replicas.to_string());
        set("FERRY_FAILOVER_COORDINATOR__MODE", self.mode.into());
        set(
            "FERRY_FAILOVER_COORDINATOR__INITIAL_ROLE",
            self.initial_role.into(),
        );
        set(
            "FERRY_FAILOVER_COORDINATOR__LEASE_TTL_MS",
            self.lease_ttl_ms.to_string(),
        );
        set(
            "FERRY_FAILOVER_COORDINATOR__FENCE_MARGIN_MS",
            self.fence_margin_ms.to_string(),
        );
        set(
            "FERRY_SCHEDULER__START_WITH_SCHEDULER_DISABLED",
            self.start_with_scheduler_disabled.to_string(),
        );
        set("FERRY_TRANSFER__ACK_WAIT_SECS", "5".into());
        for service in SERVICES {
            let var = service.to_ascii_uppercase().replace('-', "_");
            set(&format!("FERRY_{var}__METRICS_ADDR"), "127.0.0.1:0".into());
        }
        env
    }
}

/// A node of separate service processes.
pub struct ProcNode {
    pub setup: NodeSetup,
    pub netns: Option<Netns>,
    /// Extra environment for every service (test failpoints).
    pub extra_env: BTreeMap<String, String>,
    log_dir: PathBuf,
    procs: BTreeMap<&'static str, ServiceProcess>,
}

impl ProcNode {
    /// Start every service (inside `netns` when given), logging under `log_dir`.
    pub fn start(setup: NodeSetup, netns: Option<Netns>, log_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with_env(setup, netns, log_dir, BTreeMap::new())
    }

    /// [`ProcNode::start`] with `extra_env` for every service from the first start on.
    pub fn start_with_env(
        setup: NodeSetup,
        netns: Option<Netns>,
        log_dir: &Path,
        extra_env: BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let mut node = Self {
            setup,
            netns,
            extra_env,
            log_dir: log_dir.to_path_buf(),
            procs: BTreeMap::new(),
        };
        node.start_missing()?;
        Ok(node)
    }

    pub fn id(&self) -> &str {
        &self.setup.id
    }

    /// Start every service that is not running.
    pub fn start_missing(&mut self) -> anyhow::Result<()> {
        let mut env = self.setup.env();
        env.extend(self.extra_env.clone());
        for service in SERVICES {
            if !self.procs.contains_key(service) {
                let p = ServiceProcess::start_in(self.netns.as_ref(), service, &env, &self.log_dir)?;
                self.procs.insert(service, p);
            }
        }
        Ok(())
    }

    /// SIGKILL one service.
    pub fn kill(&mut self, service: &str) {
        if let Some(mut p) = self.procs.remove(service) {
            p.kill();
        }
    }

    /// SIGTERM one service and wait for it to exit.
    pub fn terminate(&mut self, service: &str, timeout: Duration) -> anyhow::Result<()> {
        if let Some(mut p) = self.procs.remove(service) {
            p.terminate(timeout)?;
        }
        Ok(())
    }

    /// SIGKILL every service.
    pub fn kill_all(&mut self) {
        for (_, mut p) in std::mem::take(&mut self.procs) {
            p.kill();
        }
    }

    /// Send `signal` to every service (SIGSTOP / SIGCONT).
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for p in self.procs.values() {
            p.signal(signal);
        }
    }

    /// SIGTERM every service and wait for them to exit.
    pub fn terminate_all(&mut self, timeout: Duration) {
        for (_, mut p) in std::mem::take(&mut self.procs) {
            let _ = p.terminate(timeout);
        }
    }

    /// Services still running (not exited).
    pub fn running(&mut self) -> Vec<&'static str> {
        self.procs
            .iter_mut()
            .filter_map(|(name, p)| p.is_running().then_some(*name))
            .collect()
    }

    /// The last lines of the newest log of each service, for failure messages. (Log names are
    /// `<service>-<uuid v7>.log`, so the newest sorts last.)
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.log_dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        let service_of = |p: &PathBuf| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            SERVICES.iter().find(|s| name.starts_with(*s)).copied()
        };
        let newest: Vec<PathBuf> = logs
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                logs.get(i + 1)
                    .is_none_or(|next| service_of(next) != service_of(p))
            })
            .map(|(_, p)| p.clone())
            .collect();
        let logs = newest;
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!("--- {}\n", log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for ProcNode {
    fn drop(&mut self) {
        // A stopped process cannot die of SIGKILL until continued.
        self.signal_all(nix::sys::signal::Signal::SIGCONT);
        self.kill_all();
    }
}
