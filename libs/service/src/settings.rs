//! Node and service settings: a TOML file plus `FERRY_*` environment variables
//! (`FERRY_NODE_ID`, `FERRY_NATS_URL`, `FERRY_TRANSFER__CONCURRENCY`, …; `__` separates levels).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Settings of one node; every service of the node reads the same file.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// This node's id: letters, digits, `-`, `_`. Used in subjects and in the failover lease.
    #[serde(default = "default_node_id")]
    pub node_id: String,
    /// NATS server URL(s), comma-separated.
    #[serde(default = "default_nats_url")]
    pub nats_url: String,
    /// Allow a plain-text NATS connection to a non-loopback address (dev only).
    #[serde(default)]
    pub allow_insecure_nats: bool,
    /// How this process proves who it is to NATS, and which servers it trusts.
    #[serde(default)]
    pub nats: NatsAuth,
    /// Replicas of every stream and bucket: 1 on a single NATS server, 3 on a three-server cluster.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Where services keep local scratch data (and the failover coordinator the node's role).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The node's keymat file (the master key that keeps host secrets encrypted at rest). Created
    /// with mode 0600 on first start; default `<data_dir>/keymat`. Every service of a node must
    /// see the same file.
    #[serde(default)]
    pub keymat: Option<PathBuf>,
    /// Append every side effect (file commits, fired slots, lease acquisitions) with node, epoch
    /// and monotonic times to this JSON-lines file (see `ferry_service::ledger`). Off by default.
    #[serde(default)]
    pub ledger: Option<PathBuf>,
    #[serde(default)]
    pub scheduler: SchedulerSettings,
    #[serde(default)]
    pub file_collector: CollectorSettings,
    #[serde(default)]
    pub transfer: TransferSettings,
    #[serde(default)]
    pub cert_handler: PlainServiceSettings,
    #[serde(default)]
    pub failover_coordinator: FailoverSettings,
    /// Traces of runs across the services, exported over OTLP (`docs/observability.md`).
    #[serde(default)]
    pub telemetry: TelemetrySettings,
}

/// Traces: one trace per run, from the scheduler through the file-collector to the transfers,
/// sent to an OTLP/HTTP receiver (an OpenTelemetry Collector, Jaeger, Tempo, …). Off unless an
/// endpoint is set.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// Base URL of the OTLP/HTTP receiver, such as `http://127.0.0.1:4318`: spans go to
    /// `<url>/v1/traces` as protobuf. Unset (the default): traces are off, unless the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variable is set, which then stands in for it. Extra request
    /// headers (a receiver's API key) come from `OTEL_EXPORTER_OTLP_HEADERS`, never from here.
    pub otlp_endpoint: Option<String>,
    /// Share of runs traced, from 0.0 (none) to 1.0 (all, the default). The scheduler decides
    /// when it starts a run; the other services follow its decision, so a run is traced whole
    /// or not at all.
    pub sample_ratio: f64,
    /// Allow a plain `http://` endpoint on a non-loopback host (spans, which name tasks and
    /// hosts, then cross the network unencrypted). Development only.
    pub allow_insecure_otlp: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            allow_insecure_otlp: false,
        }
    }
}

impl TelemetrySettings {
    /// Refuse an endpoint that is not an `http(s)://host[:port][/path]` URL, carries
    /// credentials, or sends spans in the clear off this host without the dev flag, and a
    /// ratio outside 0 to 1.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            bail!(
                "telemetry.sample_ratio: {} must be between 0.0 and 1.0",
                self.sample_ratio
            );
        }
        let Some(url) = &self.otlp_endpoint else {
            return Ok(());
        };
        let shown = ferry_hosts::path::shown(url);
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("telemetry.otlp_endpoint: {shown} is not a URL: use http://host:port or https://host:port");
        };
        if !matches!(scheme, "http" | "https") {
            bail!(
                "telemetry.otlp_endpoint: {shown}: scheme {scheme:?} is not http or https (OTLP over gRPC is not supported)"
            );
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            bail!(
                "telemetry.otlp_endpoint: {scheme}://***@… carries credentials; send them as OTEL_EXPORTER_OTLP_HEADERS instead"
            );
        }
        if rest.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!(
                "telemetry.otlp_endpoint: {shown} must be a plain base URL, without query, fragment or spaces"
            );
        }
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        };
        if host.is_empty() {
            bail!("telemetry.otlp_endpoint: {shown} names no host");
        }
        if scheme == "http" && !is_loopback(host) && !self.allow_insecure_otlp {
            bail!(
                "telemetry.otlp_endpoint: {shown} is plain http to a non-loopback host; use https:// or set telemetry.allow_insecure_otlp = true (development only)"
            );
        }
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1") || host.starts_with("127.")
}

/// NATS credentials and TLS of one process (ADR 007). At most one way to authenticate: a creds
/// file (JWT + nkey), an nkey seed file, a user with a password, or a token. Secrets come from
/// files or environment variables, never from the settings text or the URL (async-nats does not
/// send credentials embedded in a URL). Every path, the user and the inbox prefix may contain
/// `{node}` (the node id) and `{service}` (`scheduler`, `file-collector`, `transfer`,
/// `cert-handler`, `failover-coordinator`; `cli` for the `ferry` command), so the services of a
/// node share one settings file and still each use their own NATS user.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsAuth {
    /// A `.creds` file (a user JWT and its nkey seed, as `nsc` writes them).
    pub creds_file: Option<String>,
    /// A file holding an nkey user seed (`SU…`), as `ferry nats setup` writes them.
    pub nkey_seed_file: Option<String>,
    /// A user name; its password from `password_file` or `password_env`.
    pub user: Option<String>,
    pub password_file: Option<String>,
    /// The name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// A token from a file or an environment variable.
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    /// CA bundle (PEM) the servers' certificates must chain to (with `tls://` URLs).
    pub ca_file: Option<String>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// Subject prefix of this process's reply inboxes. Default: `_INBOX.<public key>` with an
    /// nkey seed (what `ferry nats setup` permits each user to subscribe to), else `_INBOX`.
    pub inbox_prefix: Option<String>,
}

impl NatsAuth {
    /// This process's view: `{node}` and `{service}` replaced.
    pub fn expand(&self, node: &str, service: &str) -> NatsAuth {
        let x = |v: &Option<String>| {
            v.as_ref()
                .map(|v| v.replace("{node}", node).replace("{service}", service))
        };
        NatsAuth {
            creds_file: x(&self.creds_file),
            nkey_seed_file: x(&self.nkey_seed_file),
            user: x(&self.user),
            password_file: x(&self.password_file),
            password_env: x(&self.password_env),
            token_file: x(&self.token_file),
            token_env: x(&self.token_env),
            ca_file: x(&self.ca_file),
            cert_file: x(&self.cert_file),
            key_file: x(&self.key_file),
            inbox_prefix: x(&self.inbox_prefix),
        }
    }

    /// Refuse combinations that cannot mean anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ways = [
            ("creds_file", self.creds_file.is_some()),
            ("nkey_seed_file", self.nkey_seed_file.is_some()),
            ("user", self.user.is_some()),
            (
                "token_file/token_env",
                self.token_file.is_some() || self.token_env.is_some(),
            ),
        ];
        let chosen: Vec<&str> = ways.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
        if chosen.len() > 1 {
            bail!(
                "nats: choose one way to authenticate, not {}",
                chosen.join(" and ")
            );
        }
        match (
            self.user.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ) {
            (true, true, true) => bail!("nats: password_file and password_env: choose one"),
            (true, false, false) => bail!("nats.user needs password_file or password_env"),
            (false, true, _) | (false, _, true) => bail!("nats: a password needs nats.user"),
            _ => {}
        }
        if self.token_file.is_some() && self.token_env.is_some() {
            bail!("nats: token_file and token_env: choose one");
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("nats: cert_file and key_file go together");
        }
        if let Some(prefix) = &self.inbox_prefix
            && (prefix.is_empty() || prefix.contains([' ', '*', '>']) || prefix.ends_with('.'))
        {
            bail!("nats.inbox_prefix: {prefix:?} is not a subject prefix");
        }
        Ok(())
    }
}

/// What to do on start-up about schedule slots that passed while the scheduler was down.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedRuns {
    /// Do not run missed slots; the next run is the next slot (as the reference product does).
    #[default]
    Skip,
    /// Run a task once if at least one of its slots was missed within `missed_runs_window_secs`.
    RunOnce,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// Address of `/metrics` and `/healthz` (port 0 picks a free port).
    pub metrics_addr: SocketAddr,
    /// Start with schedules not firing (manual and event runs still work); `ferry scheduler start`.
    pub start_with_scheduler_disabled: bool,
    /// Policy for slots missed while the scheduler was down.
    pub missed_runs: MissedRuns,
    /// How far back `run_once` looks for missed slots.
    pub missed_runs_window_secs: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            metrics_addr: "127.0.0.1:9181".parse().expect("literal address"),
            start_with_scheduler_disabled: false,
            missed_runs: MissedRuns::Skip,
            missed_runs_window_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorSettings {
    /// Address of `/metrics` and `/healthz`.
    pub metrics_addr: SocketAddr,
    /// Node-wide maximum of task runs in progress; further runs queue in arrival order.
    pub max_running_tasks: u32,
    /// How long a run may go without a batch result before the collector checks that the
    /// batches it still waits for are in the file queue. A batch found missing at two checks in a
    /// row (deleted, purged, or expired after the queue's 7 days) fails its files, so the run
    /// ends and its task can run again instead of waiting for good.
    pub lost_batch_check_secs: u64,
    /// How long a run may take (a task's `max_run_secs` overrides it). Past it, the run's
    /// batches no transfer has taken yet are given up — their files fail with why and stay in
    /// their sources for the next run — and the run ends once the batches already in progress
    /// are done (each of their files has its own deadline with a remote host).
    pub max_run_secs: u64,
}

impl Default for CollectorSettings {
    fn default() -> Self {
        Self {
            metrics_addr: "127.0.0.1:9182".parse().expect("literal address"),
            max_running_tasks: 4,
            lost_batch_check_secs: 60,
            max_run_secs: 86_400,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferSettings {
    /// Address of `/metrics` and `/healthz`.
    pub metrics_addr: SocketAddr,
    /// Work batches moved concurrently by this instance (a batch is one large file or up to 64
    /// small ones, ADR 005).
    pub concurrency: u32,
    /// A work batch not acknowledged within this time is handed to another instance; batches in
    /// flight send progress well within it.
    pub ack_wait_secs: u64,
    /// Copy buffer size.
    pub buffer_bytes: usize,
}

impl Default for TransferSettings {
    fn default() -> Self {
        Self {
            metrics_addr: "127.0.0.1:9183".parse().expect("literal address"),
            concurrency: 16,
            ack_wait_secs: 15,
            buffer_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverSettings {
    /// Address of `/metrics` and `/healthz`.
    pub metrics_addr: SocketAddr,
    /// `manual` (an operator promotes a standby) or `automatic` (a standby takes a lapsed lease).
    pub mode: ferry_wire::FailoverMode,
    /// Role on first start, when the data dir records none. Afterwards the recorded role rules.
    pub initial_role: ferry_wire::Role,
    /// Lease time to live. Every node of a cluster must use the same value: it is the lease
    /// bucket's `max_age`, fixed when the bucket is created.
    pub lease_ttl_ms: u64,
    /// The holder fences itself this long before its lease can lapse.
    pub fence_margin_ms: u64,
    /// File-based replication (a standby at another site): the folder the primary's
    /// `config-bundle` task delivers bundles to. When promoted, this node imports the newest
    /// complete bundle there first. Manual mode only.
    pub import_folder: Option<PathBuf>,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        Self {
            metrics_addr: default_plain_addr(),
            mode: ferry_wire::FailoverMode::Manual,
            initial_role: ferry_wire::Role::Active,
            lease_ttl_ms: 10_000,
            fence_margin_ms: 2_000,
            import_folder: None,
        }
    }
}

impl Settings {
    /// Where the node's keymat lives.
    pub fn keymat_path(&self) -> PathBuf {
        self.keymat
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keymat"))
    }

    /// The node's keymat, created on first start.
    pub fn open_keymat(&self) -> anyhow::Result<std::sync::Arc<ferry_keymat::KeymatStore>> {
        Ok(std::sync::Arc::new(ferry_keymat::KeymatStore::open_or_create(
            &self.keymat_path(),
        )?))
    }

    /// The cluster-wide topology choices of these settings.
    pub fn topology(&self) -> ferry_wire::topology::Options {
        ferry_wire::topology::Options {
            replicas: self.replicas,
            lease_ttl: std::time::Duration::from_millis(self.failover_coordinator.lease_ttl_ms),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlainServiceSettings {
    /// Address of `/metrics` and `/healthz`.
    #[serde(default = "default_plain_addr")]
    pub metrics_addr: SocketAddr,
}

impl Default for PlainServiceSettings {
    fn default() -> Self {
        Self {
            metrics_addr: default_plain_addr(),
        }
    }
}

fn default_plain_addr() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}
fn default_replicas() -> usize {
    1
}
fn default_node_id() -> String {
    "node1".to_string()
}
fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".to_string()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(".ferry/data")
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            nats_url: default_nats_url(),
            allow_insecure_nats: false,
            nats: NatsAuth::default(),
            replicas: default_replicas(),
            data_dir: default_data_dir(),
            keymat: None,
            ledger: None,
            scheduler: SchedulerSettings::default(),
            file_collector: CollectorSettings::default(),
            transfer: TransferSettings::default(),
            cert_handler: PlainServiceSettings::default(),
            failover_coordinator: FailoverSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

/// Top-level setting names. Only `FERRY_<NAME>` and `FERRY_<NAME>__…` variables are settings;
/// other `FERRY_*` variables (`FERRY_CONFIG`, `FERRY_LOG_FORMAT`, test knobs) are not.
const SETTING_NAMES: &[&str] = &[
    "node_id",
    "nats_url",
    "allow_insecure_nats",
    "nats",
    "replicas",
    "data_dir",
    "keymat",
    "ledger",
    "scheduler",
    "file_collector",
    "transfer",
    "cert_handler",
    "failover_coordinator",
    "telemetry",
];

fn setting_env_vars() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            k.strip_prefix("FERRY_").is_some_and(|rest| {
                let first = rest.split("__").next().unwrap_or("").to_ascii_lowercase();
                SETTING_NAMES.contains(&first.as_str())
            })
        })
        .collect()
}

impl Settings {
    /// Load from an optional TOML file, then `FERRY_*` environment variables, then validate.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
        }
        let mut settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("FERRY")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(setting_env_vars())),
            )
            .build()
            .context("read settings")?
            .try_deserialize()
            .context("settings")?;
        if settings.telemetry.otlp_endpoint.is_none() {
            settings.telemetry.otlp_endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|url| !url.is_empty());
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Fail fast on settings that cannot work or are insecure without the explicit dev flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !ferry_config::is_valid_name(&self.node_id) {
            bail!(
                "node_id: {:?} is not a valid name: use 1-64 letters, digits, '-' or '_'",
                self.node_id
            );
        }
        self.nats.validate()?;
        self.telemetry.validate()?;
        for url in self.nats_url.split(',') {
            let url = url.trim();
            if url.split("://").last().unwrap_or(url).contains('@') {
                bail!(
                    "nats_url: {:?} carries credentials, which the NATS client would not send; put them in [nats] (user with password_file or password_env, token_file, nkey_seed_file or creds_file)",
                    crate::nats::shown_urls(url)
                );
            }
            let plain = !url.starts_with("tls://");
            let host = url
                .split("://")
                .last()
                .unwrap_or(url)
                .rsplit('@')
                .next()
                .unwrap_or(url)
                .split(':')
                .next()
                .unwrap_or("");
            if plain && !is_loopback(host) && !self.allow_insecure_nats {
                bail!(
                    "nats_url: {url:?} is plain text to a non-loopback host; use tls:// or set allow_insecure_nats = true (development only)"
                );
            }
        }
        let range = |field: &str, value: u64, min: u64, max: u64, unit: &str| -> anyhow::Result<()> {
            if value < min || value > max {
                bail!("{field}: {value} is out of range ({min} to {max}{unit})");
            }
            Ok(())
        };
        range(
            "transfer.concurrency",
            self.transfer.concurrency.into(),
            1,
            1024,
            "",
        )?;
        range(
            "transfer.buffer_bytes",
            self.transfer.buffer_bytes as u64,
            4096,
            64 << 20,
            " bytes",
        )?;
        range(
            "transfer.ack_wait_secs",
            self.transfer.ack_wait_secs,
            3,
            3600,
            " seconds",
        )?;
        range(
            "file_collector.max_running_tasks",
            self.file_collector.max_running_tasks.into(),
            1,
            1024,
            "",
        )?;
        range(
            "file_collector.lost_batch_check_secs",
            self.file_collector.lost_batch_check_secs,
            1,
            3600,
            " seconds",
        )?;
        range(
            "file_collector.max_run_secs",
            self.file_collector.max_run_secs,
            1,
            ferry_config::MAX_RUN_SECS,
            " seconds",
        )?;
        range(
            "scheduler.missed_runs_window_secs",
            self.scheduler.missed_runs_window_secs,
            0,
            7 * 86_400,
            " seconds",
        )?;
        range(
            "failover_coordinator.lease_ttl_ms",
            self.failover_coordinator.lease_ttl_ms,
            1_000,
            300_000,
            " milliseconds",
        )?;
        if !(1..=5).contains(&self.replicas) {
            bail!("replicas: {} must be between 1 and 5", self.replicas);
        }
        let ttl = self.failover_coordinator.lease_ttl_ms;
        let margin = self.failover_coordinator.fence_margin_ms;
        if margin < 100 || margin > ttl / 2 {
            bail!(
                "failover_coordinator.fence_margin_ms: {margin} must be between 100 and half the lease TTL ({})",
                ttl / 2
            );
        }
        if let Some(folder) = &self.failover_coordinator.import_folder {
            if !folder.is_absolute() {
                bail!(
                    "failover_coordinator.import_folder: {} must be an absolute path",
                    folder.display()
                );
            }
            if self.failover_coordinator.mode == ferry_wire::FailoverMode::Automatic {
                bail!(
                    "failover_coordinator.import_folder is set (file-based replication from a primary at another site) \
                     and failover_coordinator.mode is \"automatic\": this node has its own NATS and its own lease, so it \
                     cannot tell a dead primary from an unreachable one and would make itself active beside it. Use \
                     mode = \"manual\" and promote it by hand (`ferry failover promote`)"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_plain_nats_to_a_remote_host() {
        let mut s = Settings {
            nats_url: "nats://10.1.2.3:4222".into(),
            ..Settings::default()
        };
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("10.1.2.3"), "{err}");
        s.allow_insecure_nats = true;
        s.validate().expect("allowed with the dev flag");
        s.nats_url = "tls://nats.example:4222".into();
        s.allow_insecure_nats = false;
        s.validate().expect("tls is fine");
    }

    #[test]
    fn setting_names_match_the_struct() {
        let value = serde_json::to_value(Settings::default()).expect("serializes");
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut names = SETTING_NAMES.to_vec();
        keys.sort();
        names.sort();
        assert_eq!(keys, names);
    }

    #[test]
    fn nats_credentials_are_one_way_from_files_or_variables_never_the_url() {
        let with = |nats: NatsAuth| Settings {
            nats,
            ..Settings::default()
        };
        let err = Settings {
            nats_url: "nats://ferry:hunter2@127.0.0.1:4222".into(),
            ..Settings::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("carries credentials") && err.contains("***@127.0.0.1"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        let two = with(NatsAuth {
            nkey_seed_file: Some("a.nk".into()),
            token_env: Some("T".into()),
            ..NatsAuth::default()
        });
        assert!(two.validate().unwrap_err().to_string().contains("choose one way"));
        let no_password = with(NatsAuth {
            user: Some("u".into()),
            ..NatsAuth::default()
        });
        assert!(
            no_password
                .validate()
                .unwrap_err()
                .to_string()
                .contains("password_file or password_env")
        );
        let half_tls = with(NatsAuth {
            cert_file: Some("c.pem".into()),
            ..NatsAuth::default()
        });
        assert!(
            half_tls
                .validate()
                .unwrap_err()
                .to_string()
                .contains("go together")
        );
        let templated = NatsAuth {
            nkey_seed_file: Some("/keys/{node}/{service}.nk".into()),
            ..NatsAuth::default()
        }
        .expand("node1", "transfer");
        assert_eq!(
            templated.nkey_seed_file.as_deref(),
            Some("/keys/node1/transfer.nk")
        );
    }

    #[test]
    fn otlp_endpoints_are_http_to_this_host_or_https_without_credentials() {
        let check = |url: &str, insecure: bool| {
            TelemetrySettings {
                otlp_endpoint: Some(url.into()),
                allow_insecure_otlp: insecure,
                ..TelemetrySettings::default()
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        for ok in [
            "http://127.0.0.1:4318",
            "http://localhost:4318/",
            "http://[::1]:4318",
            "https://otel.example",
            "https://otel.example:4318/v1/traces",
        ] {
            check(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        check("http://otel-collector:4318", true).expect("allowed with the dev flag");
        for (bad, words) in [
            ("http://otel-collector:4318", "plain http to a non-loopback host"),
            ("otel-collector:4318", "is not a URL"),
            ("https://user:hunter2@otel.example", "carries credentials"),
            ("https://", "names no host"),
            ("https://otel.example/?key=1", "without query"),
            ("grpc://127.0.0.1:4317", "not http or https"),
        ] {
            let err = check(bad, false).expect_err(bad);
            assert!(err.contains(words), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert!(TelemetrySettings::default().validate().is_ok(), "off is valid");
        let nan = TelemetrySettings {
            sample_ratio: f64::NAN,
            ..TelemetrySettings::default()
        };
        assert!(nan.validate().is_err());
    }

    #[test]
    fn refuses_a_bad_node_id() {
        let s = Settings {
            node_id: "node.1".into(),
            ..Settings::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("node.1"));
    }
}
