//! `ferry standby attach|detach|status`: mirror mode, a standby site with its own NATS whose
//! stores are continuous JetStream mirrors of the primary's (answered by the node's
//! failover-coordinator, `ferry_wire::standby`). Credentials for the primary are sealed to the
//! node's keymat here, before they leave this machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use ferry_wire::standby::{AttachRequest, DetachRequest, PrimaryCredentials, StandbyStatus};
use ferry_wire::subjects::{self, service::FAILOVER_COORDINATOR};

use crate::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum StandbyCommand {
    /// Make this node's configuration, state, schedule, certificate and key-ring stores
    /// continuous mirrors of the primary's (read-only here until `ferry standby detach` or
    /// `ferry failover promote`). This node's own copies are replaced. The sites' NATS servers
    /// must each have a JetStream domain and be joined by a leaf node (docs/standby-mirror.md).
    Attach {
        /// The primary's NATS URL(s), comma-separated, as this node reaches them.
        #[arg(long)]
        primary: String,
        #[command(flatten)]
        credentials: PrimaryFlags,
    },
    /// File-based replication (the reference procedure): write into the configuration file
    /// FILE, and apply, the primary's replication task — a configuration bundle and a Certs
    /// Backup delivered to the standby's folder on a schedule — and the unscheduled Certs
    /// Restore task run on the standby after a failover. Run it again to change them: it
    /// rewrites its own block of FILE and nothing else. On the standby, set
    /// `failover_coordinator.import_folder` (docs/standby.md).
    Setup(SetupArgs),
    /// Make the mirrored stores this node's own again (the same contents, now writable),
    /// without changing its role.
    Detach,
    /// Mode (shared cluster, mirror, files, none), the primary, per store the last replicated
    /// revision and the primary's, the lag in changes and seconds (mirror), the newest complete
    /// bundle in the import folder and its age, the last import (files), and whether this
    /// node's keymat opens the replicated configuration.
    Status,
}

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// The primary's configuration file (the one `ferry apply` applies): the tasks are written
    /// into it, so the next `ferry apply` of it keeps them.
    file: PathBuf,
    /// The host the bundles travel over: the standby's SMB share, SFTP or FTP server, or
    /// `local` (a mounted share).
    #[arg(long)]
    host: String,
    /// The folder on that host: the standby's import folder as the primary reaches it.
    #[arg(long)]
    folder: String,
    /// How often a bundle is shipped (whole minutes, 1 minute to 24 hours).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    every: Duration,
    /// The same folder as the standby sees it on its own disk (its
    /// `failover_coordinator.import_folder`; the Certs Restore task's source). Default:
    /// --folder, when --host is `local`.
    #[arg(long)]
    import_folder: Option<String>,
    /// The Certs Backup / Restore password, as `env:VAR` or `file:PATH` (read and sealed by
    /// `ferry apply`; never written into FILE in clear).
    #[arg(long, default_value = "env:FERRY_CERTS_PASSWORD")]
    certs_password: String,
    /// Show the block and check it against the node; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The first and last line of the block `ferry standby setup` owns in a configuration file.
const BLOCK_BEGIN: &str = "# >>> ferry standby setup: generated, `ferry standby setup` rewrites this block";
const BLOCK_END: &str = "# <<< ferry standby setup";
/// The names of the two tasks it writes.
pub const REPLICATE_TASK: &str = "standby-replicate";
pub const RESTORE_TASK: &str = "standby-certs-restore";

/// How the node reaches the primary's NATS (read now, sealed before sending).
#[derive(Debug, clap::Args)]
pub struct PrimaryFlags {
    /// A NATS user on the primary; its password from --primary-password-file.
    #[arg(long, requires = "primary_password_file")]
    primary_user: Option<String>,
    #[arg(long, value_name = "FILE")]
    primary_password_file: Option<PathBuf>,
    /// A file holding an nkey user seed for the primary.
    #[arg(long, value_name = "FILE")]
    primary_nkey: Option<PathBuf>,
    /// A file holding a token for the primary.
    #[arg(long, value_name = "FILE")]
    primary_token_file: Option<PathBuf>,
}

/// Attaching copies every store once before it answers.
const ATTACH: Duration = Duration::from_secs(60);

pub async fn run(ctx: &Ctx, command: StandbyCommand) -> anyhow::Result<ExitCode> {
    let by = crate::operator();
    let status: StandbyStatus = match command {
        StandbyCommand::Setup(args) => return setup(ctx, args).await,
        StandbyCommand::Attach { primary, credentials } => {
            let credentials = seal(ctx, credentials).await?;
            let request = AttachRequest {
                primary,
                credentials,
                by,
            };
            ctx.call_within(
                FAILOVER_COORDINATOR,
                subjects::api::STANDBY_ATTACH,
                &request,
                ATTACH,
            )
            .await?
        }
        StandbyCommand::Detach => {
            ctx.call(
                FAILOVER_COORDINATOR,
                subjects::api::STANDBY_DETACH,
                &DetachRequest { by },
            )
            .await?
        }
        StandbyCommand::Status => {
            ctx.call(FAILOVER_COORDINATOR, subjects::api::STANDBY_STATUS, &())
                .await?
        }
    };
    print(ctx.json, &status);
    Ok(ExitCode::SUCCESS)
}

/// The block of the two tasks.
fn setup_block(args: &SetupArgs) -> anyhow::Result<String> {
    let minutes = args.every.as_secs() / 60;
    anyhow::ensure!(
        args.every.as_secs().is_multiple_of(60) && (1..=1440).contains(&minutes),
        "--every {}: whole minutes from 1m to 24h",
        humantime::format_duration(args.every)
    );
    anyhow::ensure!(
        args.certs_password.starts_with("env:") || args.certs_password.starts_with("file:"),
        "--certs-password: `env:VAR` or `file:PATH`, so that the password is not written into {} in clear",
        args.file.display()
    );
    let import_folder = match (&args.import_folder, args.host.as_str()) {
        (Some(folder), _) => folder.clone(),
        (None, "local") => args.folder.clone(),
        (None, host) => anyhow::bail!(
            "--import-folder: the standby's own path of the folder host {host:?} writes to (its failover_coordinator.import_folder)"
        ),
    };
    anyhow::ensure!(
        Path::new(&import_folder).is_absolute(),
        "--import-folder {import_folder}: an absolute path on the standby"
    );
    let q = |v: &str| toml::Value::String(v.to_string()).to_string();
    let restored = Path::new(&import_folder).join("restored");
    let password = format!("CertsPassword = {{ secure = {} }}", q(&args.certs_password));
    Ok(format!(
        "{BLOCK_BEGIN}\n\
         # On the primary: ship a configuration bundle and a Certs Backup to the standby every {minutes} min.\n\
         [[task]]\n\
         name = {replicate}\n\
         description = \"File-based replication to the standby (ferry standby setup)\"\n\n\
         [task.parameters]\n\
         {password}\n\n\
         [[task.schedule]]\n\
         every_minutes = {minutes}\n\n\
         [[task.destination]]\n\
         host = {host}\n\
         folder = {folder}\n\
         overwrite = \"overwrite\"\n\n\
         [[task.steps]]\n\
         process = \"config-bundle\"\n\n\
         [[task.steps]]\n\
         process = \"certs-backup\"\n\
         password_param = \"CertsPassword\"\n\n\
         # On the standby after a failover, by hand (never scheduled): restore the Certs Backup.\n\
         [[task]]\n\
         name = {restore}\n\
         description = \"Certs Restore after a failover, run by hand on the promoted standby (ferry standby setup)\"\n\n\
         [task.parameters]\n\
         {password}\n\n\
         [[task.source]]\n\
         host = \"local\"\n\
         folder = {import_folder}\n\
         masks = \"Certs*.pfx;Certs*.p7b\"\n\
         new_files_only = false   # restore whatever backup is there, every time it runs\n\n\
         [[task.destination]]\n\
         host = \"local\"\n\
         folder = {restored}\n\
         overwrite = \"overwrite\"\n\n\
         [[task.steps]]\n\
         process = \"certs-restore\"\n\
         password_param = \"CertsPassword\"\n\
         {BLOCK_END}\n",
        replicate = q(REPLICATE_TASK),
        restore = q(RESTORE_TASK),
        host = q(&args.host),
        folder = q(&args.folder),
        import_folder = q(&import_folder),
        restored = q(&restored.display().to_string()),
    ))
}

/// `text` with the block replaced by `block` (appended when there is none yet).
fn with_block(text: &str, block: &str) -> anyhow::Result<String> {
    let begin = text.find(BLOCK_BEGIN);
    let end = text.find(BLOCK_END);
    match (begin, end) {
        (None, None) => {
            let mut out = text.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(block);
            Ok(out)
        }
        (Some(b), Some(e)) if b < e => {
            let after = text[e..].find('\n').map(|n| e + n + 1).unwrap_or(text.len());
            Ok(format!("{}{block}{}", &text[..b], &text[after..]))
        }
        _ => anyhow::bail!(
            "the file has a damaged `ferry standby setup` block (one of its marker lines is missing): remove what is left of it and run setup again"
        ),
    }
}

async fn setup(ctx: &Ctx, args: SetupArgs) -> anyhow::Result<ExitCode> {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", args.file.display())),
    };
    let block = setup_block(&args)?;
    let updated = with_block(&text, &block)?;
    // The new text is applied from a file beside FILE, which replaces FILE only once the node
    // took it: a refused setup leaves FILE as it was.
    let dir = args
        .file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut staged = tempfile::Builder::new()
        .prefix(".ferry-standby-setup")
        .suffix(".toml")
        .tempfile_in(dir)
        .with_context(|| format!("create a file in {}", dir.display()))?;
    std::io::Write::write_all(&mut staged, updated.as_bytes())?;
    let shown = args.file.display().to_string();
    let Some(response) = crate::send_apply_as(ctx, staged.path(), &shown, args.dry_run, false).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let ok = !matches!(response, ferry_wire::ApplyResponse::Rejected { .. });
    crate::output::applied(ctx.json, &shown, &response);
    if !ok {
        eprintln!("{shown} was not changed");
        return Ok(ExitCode::FAILURE);
    }
    if args.dry_run {
        if !ctx.json {
            println!("dry run: {shown} was not changed; the block it would hold:\n\n{block}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The file keeps its permissions (a temp file is created private).
    if let Ok(meta) = std::fs::metadata(&args.file) {
        staged.as_file().set_permissions(meta.permissions())?;
    }
    staged.as_file().sync_all()?;
    staged
        .persist(&args.file)
        .with_context(|| format!("replace {shown}"))?;
    if !ctx.json {
        println!(
            "{shown}: tasks {REPLICATE_TASK:?} (every {} min to {} {}) and {RESTORE_TASK:?} (unscheduled) written and applied.\n\
             On the standby: its own NATS, this node's keymat (`ferry keymat export` here, `ferry keymat import` there, once),\n\
             failover_coordinator.import_folder = the folder the bundles arrive in, mode = \"manual\",\n\
             scheduler.start_with_scheduler_disabled = true. After a failover: `ferry failover promote` there (imports the newest\n\
             bundle), `ferry task run {RESTORE_TASK}`, `ferry config verify --against <bundle>`, `ferry scheduler start`.",
            args.every.as_secs() / 60,
            args.host,
            args.folder
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Read the credential files and seal each secret to the node's keymat.
async fn seal(ctx: &Ctx, flags: PrimaryFlags) -> anyhow::Result<PrimaryCredentials> {
    let read = |path: &PathBuf, flag: &str| -> anyhow::Result<String> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{flag}: read {}", path.display()))?;
        let text = text.trim().to_string();
        anyhow::ensure!(!text.is_empty(), "{flag}: {} is empty", path.display());
        Ok(text)
    };
    let secrets = [
        (
            "password",
            flags.primary_password_file.as_ref(),
            "--primary-password-file",
        ),
        ("nkey_seed", flags.primary_nkey.as_ref(), "--primary-nkey"),
        ("token", flags.primary_token_file.as_ref(), "--primary-token-file"),
    ];
    let mut credentials = PrimaryCredentials {
        user: flags.primary_user,
        ..Default::default()
    };
    if secrets.iter().all(|(_, path, _)| path.is_none()) {
        return Ok(credentials);
    }
    let info: ferry_wire::KeymatInfo = ctx
        .call(subjects::service::SCHEDULER, subjects::api::KEYMAT, &())
        .await
        .context("ask the node for its keymat to seal the primary's credentials")?;
    let public = ferry_keymat::PublicKey {
        key_id: info.key_id,
        public_key: info.public_key,
    };
    for (field, path, flag) in secrets {
        let Some(path) = path else { continue };
        let secret = read(path, flag)?;
        let sealed = ferry_keymat::seal(&public, &PrimaryCredentials::binding(field), &secret)
            .with_context(|| format!("{flag}: seal"))?;
        match field {
            "password" => credentials.password = Some(sealed),
            "nkey_seed" => credentials.nkey_seed = Some(sealed),
            _ => credentials.token = Some(sealed),
        }
    }
    Ok(credentials)
}

fn print(as_json: bool, s: &StandbyStatus) {
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(s).expect("output types serialize")
        );
        return;
    }
    println!("node {}: replication mode {}", s.node, s.mode.as_str());
    if let Some(primary) = &s.primary {
        println!(
            "primary: {primary} (JetStream domain {})",
            s.primary_domain.as_deref().unwrap_or("-")
        );
    }
    if let (Some(at), Some(by)) = (&s.attached_at, &s.attached_by) {
        println!("attached: {} by {by}", at.format("%Y-%m-%d %H:%M:%S UTC"));
    }
    if let Some(e) = &s.primary_error {
        println!("primary not reachable: {e}");
    }
    match (s.keymat_matches, &s.keymat_id, &s.config_keymat_id) {
        (Some(true), Some(id), _) => println!("keymat: matches the configuration's ({id})"),
        (Some(false), Some(ours), Some(theirs)) => println!(
            "keymat: DIFFERS: this node's is {ours}, the configuration is sealed under {theirs} (import the primary's: `ferry keymat import`)"
        ),
        _ => println!(
            "keymat: {} (no configuration sealed yet)",
            s.keymat_id.as_deref().unwrap_or("unreadable")
        ),
    }
    if let Some(folder) = &s.import_folder {
        println!("import folder: {folder}");
        match &s.newest_bundle {
            Some(b) => println!(
                "newest complete bundle: {} from node {}, written {} ({:.0} s ago){}",
                b.file,
                b.source_node,
                b.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                b.age_seconds,
                b.refused
                    .as_ref()
                    .map(|why| format!("; would be REFUSED: {why}"))
                    .unwrap_or_default()
            ),
            None => println!(
                "newest complete bundle: none (a promotion would be refused; --skip-import overrides)"
            ),
        }
        for why in &s.unusable_bundles {
            println!("passed over: {why}");
        }
        if let Some(i) = &s.imported {
            println!(
                "last imported: {} from node {} (written {}), at {} by {}: {} written, {} deleted, {} unchanged",
                i.file,
                i.source_node,
                i.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                i.imported_at.format("%Y-%m-%d %H:%M:%S UTC"),
                i.by,
                i.written,
                i.deleted,
                i.unchanged
            );
        }
    }
    if s.buckets.is_empty() {
        return;
    }
    println!(
        "{:<22} {:>10} {:>10} {:>9} {:>9}",
        "store", "copy rev", "primary", "lag msgs", "lag s"
    );
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for b in &s.buckets {
        println!(
            "{:<22} {:>10} {:>10} {:>9} {:>9}{}",
            b.bucket,
            b.replicated_seq,
            or_dash(b.primary_seq.map(|v| v.to_string())),
            or_dash(b.lag_messages.map(|v| v.to_string())),
            or_dash(b.lag_seconds.map(|v| format!("{v:.1}"))),
            b.error.as_ref().map(|e| format!("  ({e})")).unwrap_or_default()
        );
    }
}
