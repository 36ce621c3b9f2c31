//! `ferry`: the operator CLI. Talks to the node's services over NATS request/reply and reads
//! runs and the audit trail straight from their JetStream streams. Every command takes `--json`.
//!
//! Exit codes: 0 success; 1 the command failed (rejected configuration, failed run, unreachable
//! service); 2 usage errors (from clap).

mod bundle;
mod certs;
mod health;
mod keymat;
mod nats_setup;
mod output;
mod pgp;
mod standby;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use uuid::Uuid;

use ferry_service::Settings;
use ferry_wire::{
    ApplyRequest, ApplyResponse, AuditRecord, ConfigDocument, FailoverStatus, PromoteRequest, RoleChanged,
    RoleRequest, RunFinished, RunStatus, SchedulerStatus, subjects, topology,
};

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "Operate a Ferry managed-file-transfer node")]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Node settings file (the same the services read); `FERRY_*` variables override it.
    #[arg(long, global = true, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// NATS URL (default: from settings).
    #[arg(long, global = true)]
    nats_url: Option<String>,
    /// Node to talk to (default: from settings).
    #[arg(long, global = true)]
    node: Option<String>,
    #[command(flatten)]
    nats: NatsFlags,
    #[command(subcommand)]
    command: Command,
}

/// NATS credentials for this command. Without them, the settings' `[nats]` table is used with
/// `{service}` = `cli` (`make run` writes one whose `cli` key is the admin's).
#[derive(Debug, clap::Args)]
struct NatsFlags {
    /// A `.creds` file (JWT + nkey seed).
    #[arg(long, global = true, value_name = "FILE")]
    nats_creds: Option<String>,
    /// A file holding an nkey user seed (as `ferry nats setup` writes them, e.g. viewer.nk).
    #[arg(long, global = true, value_name = "FILE")]
    nats_nkey: Option<String>,
    /// A NATS user; its password from --nats-password-file.
    #[arg(long, global = true, requires = "nats_password_file")]
    nats_user: Option<String>,
    #[arg(long, global = true, value_name = "FILE")]
    nats_password_file: Option<String>,
    /// A file holding a NATS token.
    #[arg(long, global = true, value_name = "FILE")]
    nats_token_file: Option<String>,
    /// CA bundle (PEM) the NATS servers' certificates must chain to.
    #[arg(long, global = true, value_name = "FILE")]
    nats_ca: Option<String>,
    /// Client certificate and key (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "nats_key")]
    nats_cert: Option<String>,
    #[arg(long, global = true, value_name = "FILE")]
    nats_key: Option<String>,
}

impl NatsFlags {
    /// Apply to the settings' `[nats]`: any credential flag replaces the configured credential.
    fn apply(self, auth: &mut ferry_service::settings::NatsAuth) {
        if self.nats_creds.is_some()
            || self.nats_nkey.is_some()
            || self.nats_user.is_some()
            || self.nats_token_file.is_some()
        {
            auth.creds_file = self.nats_creds;
            auth.nkey_seed_file = self.nats_nkey;
            auth.user = self.nats_user;
            auth.password_file = self.nats_password_file;
            auth.password_env = None;
            auth.token_file = self.nats_token_file;
            auth.token_env = None;
            auth.inbox_prefix = None;
        }
        if self.nats_ca.is_some() {
            auth.ca_file = self.nats_ca;
        }
        if self.nats_cert.is_some() {
            auth.cert_file = self.nats_cert;
            auth.key_file = self.nats_key;
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file and store it, all or nothing.
    Apply {
        /// The TOML file with [[host]] and [[task]] tables.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Only validate and show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove stored tasks and hosts the file does not mention (without it such an apply
        /// is refused and names them).
        #[arg(long)]
        prune: bool,
    },
    /// The stored configuration: compare a file with it, list its revisions, go back to one.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// List tasks.
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// Show or run one task.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// Finished runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// The audit trail of file movements (`ferry audit verify` checks its hash chain).
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Only this run.
        #[arg(long)]
        run: Option<Uuid>,
        /// How far back, e.g. 1h, 2d (default: everything).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// At most this many records, newest last.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Start or stop firing schedules on this node.
    Scheduler {
        #[command(subcommand)]
        command: SchedulerCommand,
    },
    /// Failover role and lease.
    Failover {
        #[command(subcommand)]
        command: FailoverCommand,
    },
    /// The node's master key that keeps host secrets encrypted (export once to a standby).
    Keymat {
        #[command(subcommand)]
        command: keymat::KeymatCommand,
    },
    /// Least privilege on the bus: NATS users for every service and operator role.
    Nats {
        #[command(subcommand)]
        command: NatsCommand,
    },
    /// The node's certificate stores: personal certificates (with private keys) and other
    /// people's certificates.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// The node's PGP key rings.
    Pgp {
        #[command(subcommand)]
        command: pgp::PgpCommand,
    },
    /// Mirror mode: this node's stores as continuous mirrors of a primary's at another site.
    Standby {
        #[command(subcommand)]
        command: standby::StandbyCommand,
    },
    /// Remote hosts.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Ask a service's /healthz once (the container health probe): exit status 0 when healthy.
    Health(health::HealthArgs),
    /// "Shut Down Service": stop taking runs, let runs in flight finish (up to the drain
    /// timeout), release the lease, and stop every service of the node.
    Shutdown {
        #[command(flatten)]
        drain: Drain,
        /// Also disable the node, so that it never becomes active again — not after a restart
        /// either — until `ferry failover enable` (the reference's "stop the service and set it
        /// to disabled", before a standby at another site is promoted).
        #[arg(long)]
        disable: bool,
    },
}

#[derive(Debug, clap::Args)]
struct Drain {
    /// How long runs in flight may take to finish before the lease is released anyway (their
    /// files stop before the commit point).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// Connect to a configured host from the node's transfer service, look at a folder, and
    /// print round-trip latency and what the server offers (host key, TLS certificate,
    /// capabilities) — or the exact error.
    Test {
        name: String,
        /// Folder to look at (default: the folder of the first task source or destination on
        /// this host).
        #[arg(long)]
        folder: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NatsCommand {
    /// Write an nkey seed per service of each node and per role (viewer, operator, admin), and
    /// the nats-server `authorization` block (auth.conf) that gives each only what it needs.
    Setup(nats_setup::SetupArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the audit trail against its seals: every sealed record present and unchanged, every
    /// seal chained to the one before. Names the first break (exit status 1); prints the chain's
    /// head hash, worth keeping elsewhere.
    Verify,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Show every task, host and field a file changes against the stored configuration
    /// (including what it would remove, which `apply` does only with --prune). Exit status 0:
    /// identical, 1: different, 2: the file is invalid.
    Diff {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Every kept revision of the configuration: when, by whom, from which file, what changed.
    History,
    /// Store an earlier revision's configuration again, whole, as a new revision.
    Rollback {
        revision: u64,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write everything a standby needs to one bundle file: the configuration (secrets stay
    /// sealed), new-files-only state, schedule state, certificate stores and PGP key rings,
    /// with a manifest (versions, keymat id, each part's revision, size and SHA-256). Never the
    /// keymat.
    Export(bundle::ExportArgs),
    /// Make this node's configuration, state, stores and key rings equal to a bundle's, after
    /// checking it whole (manifest, SHA-256 of every part, the same Ferry version, this node's
    /// keymat). Refused on the active node without --force.
    Import(bundle::ImportArgs),
    /// Compare this node with another node's NATS or a bundle: "identical" (exit status 0) or
    /// every differing task, host, parameter, certificate, key, new-files-only and schedule
    /// state (exit status 1).
    Verify(bundle::VerifyArgs),
}

#[derive(Debug, Subcommand)]
enum TasksCommand {
    /// Every task with its schedule and next run.
    List,
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// A task's full configuration.
    Show { name: String },
    /// Run a task now.
    Run {
        name: String,
        /// Wait for the run to finish; exit non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// A parameter value for this run only, NAME=VALUE (repeatable); overrides the task's
        /// and the global value. Values of secure parameters are sealed before they leave.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Finished runs, oldest first.
    List {
        #[arg(long)]
        task: Option<String>,
        /// How far back, e.g. 1h, 2d (default: everything).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// At most this many runs (the newest).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One run with its per-file outcomes.
    Show { run_id: Uuid },
}

#[derive(Debug, Subcommand)]
enum SchedulerCommand {
    Start,
    Stop,
    Status,
}

#[derive(Debug, Subcommand)]
enum FailoverCommand {
    /// This node's role, mode, epoch, the lease holder and age, the scheduler, other nodes.
    Status,
    /// Make this node active. Refused while another node holds a live lease. A standby in
    /// file-based replication (`failover_coordinator.import_folder`) first imports the newest
    /// complete bundle of its import folder, and is refused if there is none it may import.
    Promote {
        /// Wait for another node's lease to lapse instead of refusing.
        #[arg(long)]
        after_expiry: bool,
        /// File-based replication: promote with the configuration this node holds, without
        /// importing a bundle first.
        #[arg(long)]
        skip_import: bool,
        /// How long --after-expiry waits.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Make this active node a standby: drain, then release the lease.
    Demote {
        #[command(flatten)]
        drain: Drain,
    },
    /// Never become active, not even after a restart, until enabled (drains first if active).
    Disable {
        #[command(flatten)]
        drain: Drain,
    },
    /// Make a disabled node a standby again.
    Enable,
    /// The same as `ferry shutdown`.
    Shutdown {
        #[command(flatten)]
        drain: Drain,
        /// As `ferry shutdown --disable`.
        #[arg(long)]
        disable: bool,
    },
    /// Role changes of every node, from the audit trail.
    History {
        /// How far back, e.g. 1h, 2d (default: everything).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("build the tokio runtime");
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Ctx {
    json: bool,
    node: String,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

impl Ctx {
    /// Call a service endpoint on this node.
    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: &Req,
    ) -> anyhow::Result<Resp> {
        ferry_service::api::call(&self.client, &self.node, service, endpoint, body).await
    }

    /// [`Ctx::call`] with its own time limit.
    async fn call_within<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: &Req,
        limit: Duration,
    ) -> anyhow::Result<Resp> {
        ferry_service::api::call_within(&self.client, &self.node, service, endpoint, body, limit).await
    }
}

/// The settings file `make run` writes, read when neither --config nor FERRY_CONFIG names one.
const RUN_SETTINGS: &str = ".ferry/node.toml";

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    // The health probe and `nats setup` read no settings: they work the same whatever the
    // node's configuration, and where there is none (compose's nats-users job mounts only the
    // keys folder).
    match &cli.command {
        Command::Health(args) => return health::probe(args),
        Command::Nats {
            command: NatsCommand::Setup(args),
        } => return nats_setup::setup(args, cli.json),
        _ => {}
    }
    let config = cli.config.clone().or_else(|| {
        Path::new(RUN_SETTINGS)
            .is_file()
            .then(|| PathBuf::from(RUN_SETTINGS))
    });
    let mut settings = Settings::load(config.as_deref())?;
    // The keymat is handled on the node itself: export and import need no bus.
    match &cli.command {
        Command::Keymat {
            command: keymat::KeymatCommand::Export { out, password },
        } => return keymat::export(&settings.keymat_path(), out, password, cli.json),
        Command::Keymat {
            command:
                keymat::KeymatCommand::Import {
                    file,
                    password,
                    force,
                },
        } => return keymat::import(&settings.keymat_path(), file, password, *force, cli.json),
        _ => {}
    }
    let keymat_path = settings.keymat_path();
    if let Some(url) = cli.nats_url {
        settings.nats_url = url;
    }
    if let Some(node) = cli.node {
        settings.node_id = node;
    }
    cli.nats.apply(&mut settings.nats);
    settings.validate()?;
    let shown = ferry_service::nats::shown_urls(&settings.nats_url);
    let node = settings.node_id.clone();
    ferry_service::nats::install_crypto_provider();
    let client = ferry_service::nats::connect_options(&settings, "cli")
        .await?
        .name("ferry-cli")
        .connection_timeout(Duration::from_secs(5))
        .connect(ferry_service::nats::server_addrs(&settings.nats_url)?)
        .await
        .map_err(|e| match e.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation => anyhow::anyhow!(
                "NATS at {shown} refused these credentials (authorization violation): give --nats-nkey, --nats-creds, --nats-user or --nats-token-file, or set [nats] in the settings"
            ),
            _ => anyhow::anyhow!(e)
                .context(format!("connect to NATS at {shown} (is the node running? `make run` starts one)")),
        })?;
    let js = async_nats::jetstream::new(client.clone());
    let ctx = Ctx {
        json: cli.json,
        node,
        client,
        js,
    };

    match cli.command {
        Command::Apply { file, dry_run, prune } => apply(&ctx, &file, dry_run, prune).await,
        Command::Config {
            command: ConfigCommand::Verify(args),
        } => bundle::verify(&ctx, &settings, args).await,
        Command::Config { command } => config_command(&ctx, command).await,
        Command::Tasks {
            command: TasksCommand::List,
        } => tasks_list(&ctx).await,
        Command::Task {
            command: TaskCommand::Show { name },
        } => task_show(&ctx, &name).await,
        Command::Task {
            command:
                TaskCommand::Run {
                    name,
                    wait,
                    timeout,
                    params,
                },
        } => task_run(&ctx, &name, wait, timeout, &params).await,
        Command::Runs {
            command: RunsCommand::List { task, since, limit },
        } => runs_list(&ctx, task.as_deref(), since, limit).await,
        Command::Runs {
            command: RunsCommand::Show { run_id },
        } => runs_show(&ctx, run_id).await,
        Command::Audit {
            command: Some(AuditCommand::Verify),
            ..
        } => {
            let verdict = ferry_service::audit_seal::verify(&ctx.js).await?;
            output::audit_verdict(ctx.json, &verdict);
            Ok(if verdict.broken.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit {
            command: None,
            task,
            run,
            since,
            limit,
        } => audit(&ctx, task.as_deref(), run, since, limit).await,
        Command::Scheduler { command } => {
            let endpoint = match command {
                SchedulerCommand::Start => subjects::api::START,
                SchedulerCommand::Stop => subjects::api::STOP,
                SchedulerCommand::Status => subjects::api::STATUS,
            };
            let status: SchedulerStatus = ctx.call(subjects::service::SCHEDULER, endpoint, &()).await?;
            output::scheduler_status(ctx.json, &status);
            Ok(ExitCode::SUCCESS)
        }
        Command::Failover { command } => failover(&ctx, command).await,
        Command::Keymat { .. } => {
            let config_keymat = current_config(&ctx).await?.and_then(|doc| doc.keymat_id);
            keymat::status(&keymat_path, config_keymat.as_deref(), ctx.json)
        }
        Command::Host {
            command: HostCommand::Test { name, folder },
        } => host_test(&ctx, &name, folder).await,
        Command::Certs { command } => certs::run(&ctx, command).await,
        Command::Pgp { command } => pgp::run(&ctx, command).await,
        Command::Standby { command } => standby::run(&ctx, command).await,
        Command::Shutdown { drain, disable } => {
            failover(&ctx, FailoverCommand::Shutdown { drain, disable }).await
        }
        Command::Nats { .. } | Command::Health(_) => unreachable!("handled before connecting"),
    }
}

async fn failover(ctx: &Ctx, command: FailoverCommand) -> anyhow::Result<ExitCode> {
    const COORDINATOR: &str = subjects::service::FAILOVER_COORDINATOR;
    const ANSWER: Duration = Duration::from_secs(30);
    let by = operator();
    // A role change waits for its drain and then the release (at most one lease TTL).
    let role_change = |endpoint: &'static str, drain: Duration, disable: bool| -> anyhow::Result<_> {
        let request = RoleRequest {
            drain_timeout_ms: drain.as_millis() as u64,
            by: by.clone(),
            disable,
        };
        Ok((
            endpoint,
            serde_json::to_value(request)?,
            drain + Duration::from_secs(90),
        ))
    };
    let (endpoint, body, limit) = match command {
        FailoverCommand::Status => (subjects::api::STATUS, serde_json::Value::Null, ANSWER),
        FailoverCommand::History { since } => {
            let changes: Vec<RoleChanged> = ferry_service::streams::read(
                &ctx.js,
                topology::STREAM_AUDIT,
                &subjects::audit_role("*"),
                since,
            )
            .await?;
            output::role_history(ctx.json, &changes);
            return Ok(ExitCode::SUCCESS);
        }
        FailoverCommand::Promote {
            after_expiry,
            wait,
            skip_import,
        } => {
            let wait = if after_expiry { wait } else { Duration::ZERO };
            let request = PromoteRequest {
                after_expiry,
                wait_ms: wait.as_millis() as u64,
                by: by.clone(),
                skip_import,
            };
            // Importing a bundle first reads and writes every store once.
            (
                subjects::api::PROMOTE,
                serde_json::to_value(request)?,
                wait + ANSWER + Duration::from_secs(120),
            )
        }
        FailoverCommand::Demote { drain } => role_change(subjects::api::DEMOTE, drain.drain_timeout, false)?,
        FailoverCommand::Disable { drain } => {
            role_change(subjects::api::DISABLE, drain.drain_timeout, false)?
        }
        FailoverCommand::Shutdown { drain, disable } => {
            role_change(subjects::api::SHUTDOWN, drain.drain_timeout, disable)?
        }
        FailoverCommand::Enable => role_change(subjects::api::ENABLE, Duration::ZERO, false)?,
    };
    let status: FailoverStatus =
        ferry_service::api::call_within(&ctx.client, &ctx.node, COORDINATOR, endpoint, &body, limit).await?;
    output::failover_status(ctx.json, &status);
    Ok(ExitCode::SUCCESS)
}

/// Who runs this command, for audit records.
fn operator() -> String {
    format!(
        "{}@{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    )
}

async fn apply(ctx: &Ctx, file: &std::path::Path, dry_run: bool, prune: bool) -> anyhow::Result<ExitCode> {
    let Some(response) = send_apply(ctx, file, dry_run, prune).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let ok = !matches!(response, ApplyResponse::Rejected { .. });
    output::applied(ctx.json, &file.display().to_string(), &response);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Parse, seal and send a configuration file to the scheduler; `None` when it was refused here
/// (the errors are printed).
async fn send_apply(
    ctx: &Ctx,
    file: &std::path::Path,
    dry_run: bool,
    prune: bool,
) -> anyhow::Result<Option<ApplyResponse>> {
    send_apply_as(ctx, file, &file.display().to_string(), dry_run, prune).await
}

/// [`send_apply`] of `file`, shown and recorded as `source_name`.
async fn send_apply_as(
    ctx: &Ctx,
    file: &std::path::Path,
    source_name: &str,
    dry_run: bool,
    prune: bool,
) -> anyhow::Result<Option<ApplyResponse>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let mut raw = match ferry_config::parse_toml(&text) {
        Ok(raw) => raw,
        Err(errors) => {
            output::rejected(ctx.json, source_name, &errors.0);
            return Ok(None);
        }
    };
    raw.resolve_relative_paths(&std::env::current_dir().context("working directory")?);
    // Secrets are sealed here, so no plain secret leaves this machine.
    match ferry_service::api::seal_for_apply(&ctx.client, &ctx.node, &mut raw).await {
        Ok(()) => {}
        Err(Ok(errors)) => {
            output::rejected(ctx.json, source_name, &errors.0);
            return Ok(None);
        }
        Err(Err(e)) => return Err(e.context("ask the node for its keymat to seal secrets")),
    }
    let request = ApplyRequest {
        config: raw,
        source_name: source_name.to_string(),
        applied_by: operator(),
        dry_run,
        prune,
    };
    ctx.call(subjects::service::SCHEDULER, subjects::api::APPLY, &request)
        .await
        .map(Some)
}

async fn config_command(ctx: &Ctx, command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Diff { file } => {
            let shown = file.display().to_string();
            let Some(response) = send_apply(ctx, &file, true, true).await? else {
                return Ok(ExitCode::from(2));
            };
            let same = output::config_diff(ctx.json, &shown, &response);
            Ok(match (&response, same) {
                (ApplyResponse::Rejected { .. }, _) => ExitCode::from(2),
                (_, true) => ExitCode::SUCCESS,
                (_, false) => ExitCode::FAILURE,
            })
        }
        ConfigCommand::History => {
            let kv = ctx
                .js
                .get_key_value(topology::KV_CONFIG)
                .await
                .context("open configuration bucket")?;
            let mut history = kv
                .history(topology::CONFIG_KEY)
                .await
                .context("read the configuration history")?;
            let mut revisions = Vec::new();
            let mut before: Option<ferry_config::Config> = None;
            while let Some(entry) = futures::StreamExt::next(&mut history).await {
                // An empty bucket answers "no messages" rather than an empty history.
                let Ok(entry) = entry else { break };
                let doc = (entry.operation == async_nats::jetstream::kv::Operation::Put)
                    .then(|| ferry_wire::decode::<ConfigDocument>(&entry.value).ok())
                    .flatten();
                let changes = doc.as_ref().map(|d| {
                    ferry_wire::ConfigChanges::between(
                        before.as_ref().unwrap_or(&Default::default()),
                        &d.config,
                    )
                });
                before = doc.as_ref().map(|d| d.config.clone());
                revisions.push(output::ConfigRevision {
                    revision: entry.revision,
                    stored_at: chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::from(
                        entry.created,
                    )),
                    applied_by: doc.as_ref().map(|d| d.applied_by.clone()),
                    source_name: doc.as_ref().map(|d| d.source_name.clone()),
                    tasks: doc.as_ref().map_or(0, |d| d.config.tasks.len()),
                    hosts: doc.as_ref().map_or(0, |d| d.config.hosts.len()),
                    changes,
                });
            }
            output::config_history(ctx.json, &revisions);
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Rollback { revision, dry_run } => {
            let request = ferry_wire::RollbackRequest {
                revision,
                applied_by: operator(),
                dry_run,
            };
            let response: ApplyResponse = ctx
                .call(subjects::service::SCHEDULER, subjects::api::ROLLBACK, &request)
                .await?;
            let ok = !matches!(response, ApplyResponse::Rejected { .. });
            output::applied(ctx.json, &format!("revision {revision}"), &response);
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        ConfigCommand::Export(args) => bundle::export(ctx, args).await,
        ConfigCommand::Import(args) => bundle::import(ctx, args).await,
        ConfigCommand::Verify(_) => unreachable!("handled with the settings in execute"),
    }
}

async fn host_test(ctx: &Ctx, name: &str, folder: Option<String>) -> anyhow::Result<ExitCode> {
    let request = ferry_wire::HostTestRequest {
        host: name.to_string(),
        folder,
    };
    let report: ferry_wire::HostTestReport = ctx
        .call(subjects::service::TRANSFER, subjects::api::HOST_TEST, &request)
        .await?;
    output::host_test(ctx.json, &report);
    Ok(if report.error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn current_config(ctx: &Ctx) -> anyhow::Result<Option<ConfigDocument>> {
    let kv = ctx
        .js
        .get_key_value(topology::KV_CONFIG)
        .await
        .context("open configuration bucket")?;
    match kv.get(topology::CONFIG_KEY).await.context("read configuration")? {
        Some(bytes) => Ok(Some(ferry_wire::decode(&bytes)?)),
        None => Ok(None),
    }
}

async fn tasks_list(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let doc = current_config(ctx).await?;
    let status: Option<SchedulerStatus> = ctx
        .call(subjects::service::SCHEDULER, subjects::api::STATUS, &())
        .await
        .ok();
    output::tasks(ctx.json, doc.as_ref(), status.as_ref());
    Ok(ExitCode::SUCCESS)
}

async fn task_show(ctx: &Ctx, name: &str) -> anyhow::Result<ExitCode> {
    let doc = current_config(ctx).await?;
    let Some(task) = doc.as_ref().and_then(|d| d.config.tasks.get(name)) else {
        bail!("unknown task {name:?} (see `ferry tasks list`)");
    };
    output::task(ctx.json, task);
    Ok(ExitCode::SUCCESS)
}

async fn task_run(
    ctx: &Ctx,
    name: &str,
    wait: bool,
    timeout: Duration,
    params: &[String],
) -> anyhow::Result<ExitCode> {
    let by = std::env::var("USER").unwrap_or_else(|_| "ferry-cli".into());
    let parameters = run_parameters(ctx, name, params).await?;
    let run_id = ferry_service::api::request_run_with(&ctx.client, &ctx.node, name, &by, parameters).await?;
    if !wait {
        output::run_requested(ctx.json, name, run_id);
        return Ok(ExitCode::SUCCESS);
    }
    if !ctx.json {
        eprintln!(
            "run {} of task {name} requested; waiting for it to finish",
            run_id
        );
    }
    let finished: RunFinished = ferry_service::streams::wait_for_run(&ctx.js, name, run_id, timeout).await?;
    output::run(ctx.json, &finished, false);
    Ok(if finished.status == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--param NAME=VALUE` arguments as a run request carries them: a value for a parameter the
/// stored configuration declares secure is sealed to the node's keymat here, so it never leaves
/// this machine in clear (the scheduler checks the names).
async fn run_parameters(
    ctx: &Ctx,
    task: &str,
    params: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, ferry_config::ParamValue>> {
    let given = ferry_config::params::parse_assignments(params).map_err(anyhow::Error::msg)?;
    if given.is_empty() {
        return Ok(Default::default());
    }
    let doc = current_config(ctx).await?;
    let empty = ferry_config::Parameters::new();
    let (global, declared) = match doc.as_ref() {
        Some(d) => (
            &d.config.parameters,
            d.config.tasks.get(task).map_or(&empty, |t| &t.parameters),
        ),
        None => (&empty, &empty),
    };
    let mut public = None;
    let mut out = std::collections::BTreeMap::new();
    for (name, value) in given {
        let secure = ferry_config::params::declared(global, declared, &name) == Some(true);
        let value = if secure {
            if public.is_none() {
                let info: ferry_wire::KeymatInfo = ctx
                    .call(subjects::service::SCHEDULER, subjects::api::KEYMAT, &())
                    .await
                    .context("ask the node for its keymat to seal a secure parameter")?;
                public = Some(ferry_keymat::PublicKey {
                    key_id: info.key_id,
                    public_key: info.public_key,
                });
            }
            let key = public.as_ref().expect("set above");
            let sealed = ferry_keymat::seal(key, &ferry_config::params::run_binding(task, &name), &value)
                .with_context(|| format!("seal parameter {name:?}"))?;
            ferry_config::ParamValue::Secure(sealed)
        } else {
            ferry_config::ParamValue::Plain(value)
        };
        out.insert(name, value);
    }
    Ok(out)
}

async fn runs_list(
    ctx: &Ctx,
    task: Option<&str>,
    since: Option<Duration>,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let mut runs: Vec<RunFinished> = ferry_service::streams::read(
        &ctx.js,
        topology::STREAM_EVENTS,
        &subjects::run_finished_filter(task),
        since,
    )
    .await?;
    if runs.len() > limit {
        runs.drain(..runs.len() - limit);
    }
    output::runs(ctx.json, &runs);
    Ok(ExitCode::SUCCESS)
}

async fn runs_show(ctx: &Ctx, run_id: Uuid) -> anyhow::Result<ExitCode> {
    let runs: Vec<RunFinished> = ferry_service::streams::read(
        &ctx.js,
        topology::STREAM_EVENTS,
        &subjects::run_finished_by_id(run_id),
        None,
    )
    .await?;
    let Some(mut run) = runs.into_iter().next() else {
        bail!("no finished run {run_id} (still running, or older than the events stream keeps)");
    };
    if run.files_in_results {
        run.files = ferry_service::streams::run_files(&ctx.js, run_id).await?;
    }
    output::run(ctx.json, &run, true);
    Ok(ExitCode::SUCCESS)
}

async fn audit(
    ctx: &Ctx,
    task: Option<&str>,
    run: Option<Uuid>,
    since: Option<Duration>,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let mut records: Vec<AuditRecord> = ferry_service::streams::read(
        &ctx.js,
        topology::STREAM_AUDIT,
        &subjects::audit_filter(task),
        since,
    )
    .await?;
    if let Some(run) = run {
        records.retain(|r| r.run_id == run);
    }
    if records.len() > limit {
        records.drain(..records.len() - limit);
    }
    output::audit(ctx.json, &records);
    Ok(ExitCode::SUCCESS)
}
