//! `ferry config export|import|verify`: the configuration bundle a standby is made from
//! (issue 12; the format is `ferry_wire::bundle`, the node side `ferry_service::bundle`).
//!
//! - `export` reads the bundle's buckets as they are stored (secrets and private keys stay
//!   sealed) and writes one file, atomically.
//! - `import` checks everything first — the file whole (every part's size and SHA-256), the
//!   Ferry version (the same as this CLI's), the keymat (the node's own), every entry readable,
//!   the node's role (refused on the active node without `--force`) — and only then makes the
//!   node's buckets equal to the bundle. If a write fails half-way it says so: the import only
//!   writes what differs, so running it again completes it.
//! - `verify` compares this node with another node's NATS or a bundle: `identical` (exit 0) or
//!   every difference (exit 1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_service::Settings;
use ferry_service::bundle::Applied;
use ferry_wire::bundle::{self, Bundle, Difference, Part};
use ferry_wire::{ConfigDocument, FailoverStatus, KeymatInfo, Role, subjects, topology};

use crate::Ctx;

/// The version a bundle must have been made by to be imported here.
const FERRY_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The bundle file to write (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A bundle written by `ferry config export`.
    file: PathBuf,
    /// Import even though this node is active (its tasks run from the imported configuration
    /// at once).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The other side: a NATS URL (another node's servers) or a bundle file.
    #[arg(long)]
    against: String,
    /// The other side's NATS as the user whose nkey seed is in FILE (without any
    /// --against-nats-* credential: the same credentials as for this node).
    #[arg(long, value_name = "FILE")]
    against_nats_nkey: Option<String>,
    /// The other side's NATS with a `.creds` file (JWT + nkey seed).
    #[arg(long, value_name = "FILE")]
    against_nats_creds: Option<String>,
    /// The other side's NATS as this user; its password from --against-nats-password-file.
    #[arg(long, requires = "against_nats_password_file")]
    against_nats_user: Option<String>,
    /// The file holding --against-nats-user's password.
    #[arg(long, value_name = "FILE")]
    against_nats_password_file: Option<String>,
    /// The other side's NATS with the token in FILE.
    #[arg(long, value_name = "FILE")]
    against_nats_token_file: Option<String>,
    /// CA bundle (PEM) the other side's NATS servers' certificates must chain to.
    #[arg(long, value_name = "FILE")]
    against_nats_ca: Option<String>,
}

/// This node's keymat id, from its scheduler.
async fn node_keymat(ctx: &Ctx) -> anyhow::Result<String> {
    let info: KeymatInfo = ctx
        .call(subjects::service::SCHEDULER, subjects::api::KEYMAT, &())
        .await
        .context("ask the node's scheduler for its keymat id")?;
    Ok(info.key_id)
}

fn config_doc(parts: &BTreeMap<String, Part>) -> anyhow::Result<Option<ConfigDocument>> {
    parts
        .get(topology::KV_CONFIG)
        .and_then(|p| p.entries.get(topology::CONFIG_KEY))
        .map(|bytes| ferry_wire::decode::<ConfigDocument>(bytes).context("the stored configuration"))
        .transpose()
}

pub async fn export(ctx: &Ctx, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let keymat = node_keymat(ctx).await?;
    let parts = ferry_service::bundle::export_parts(&ctx.js, &keymat).await?;
    let manifest = bundle::write(&args.out, &ctx.node, FERRY_VERSION, &keymat, &parts)
        .with_context(|| format!("write bundle {}", args.out.display()))?;
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({ "file": args.out, "manifest": manifest })
        );
    } else {
        println!(
            "bundle {} written: node {}, Ferry {}, secrets sealed under keymat {} (the keymat itself is not in it)",
            args.out.display(),
            manifest.source_node,
            manifest.ferry_version,
            manifest.keymat_id
        );
        for p in &manifest.parts {
            println!(
                "  {:<22} revision {:>6}  {:>7} entries  {:>10} bytes  sha256 {}",
                p.name,
                p.revision,
                p.entries,
                p.bytes,
                &p.sha256[..16]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn import(ctx: &Ctx, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let shown = args.file.display().to_string();
    let bundle = bundle::read(&args.file).with_context(|| format!("bundle {shown}"))?;
    let ours = node_keymat(ctx).await?;
    ferry_service::bundle::refusal(&bundle, FERRY_VERSION, &ours)
        .with_context(|| format!("bundle {shown} (nothing was changed)"))?;
    let status: FailoverStatus = ctx
        .call(
            subjects::service::FAILOVER_COORDINATOR,
            subjects::api::STATUS,
            &serde_json::Value::Null,
        )
        .await
        .context(
            "ask the node's failover coordinator for its role (an import is refused on the active node)",
        )?;
    if status.role == Role::Active && !args.force {
        bail!(
            "node {} is active: importing would replace the configuration its tasks run from. Import on a standby, \
             or give --force (nothing was changed)",
            status.node
        );
    }
    let applied = match ferry_service::bundle::apply(&ctx.js, &bundle).await {
        Ok(applied) => applied,
        Err(e) if e.changes == 0 => bail!("import of {shown}: {e} (nothing was changed)"),
        Err(e) => {
            print_applied(ctx.json, &shown, &bundle, &e.done, false);
            bail!(
                "import of {shown} stopped half-way: {e}. The node now holds part of the bundle: run the same import \
                 again to complete it (it writes only what still differs)"
            );
        }
    };
    print_applied(ctx.json, &shown, &bundle, &applied, true);
    Ok(ExitCode::SUCCESS)
}

fn print_applied(json: bool, file: &str, bundle: &Bundle, applied: &[Applied], complete: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "file": file,
                "complete": complete,
                "source_node": bundle.manifest.source_node,
                "created_at": bundle.manifest.created_at,
                "parts": applied,
            })
        );
        return;
    }
    println!(
        "{} {file} (from node {}, {}):",
        if complete { "imported" } else { "partly imported" },
        bundle.manifest.source_node,
        bundle.manifest.created_at.to_rfc3339()
    );
    for a in applied {
        println!(
            "  {:<22} {} written, {} deleted, {} unchanged",
            a.part, a.put, a.deleted, a.unchanged
        );
    }
}

/// The other side's parts: a bundle file, or the buckets behind a NATS URL.
async fn other_side(settings: &Settings, args: &VerifyArgs) -> anyhow::Result<BTreeMap<String, Part>> {
    let path = Path::new(&args.against);
    if path.is_file() {
        let bundle = bundle::read(path).with_context(|| format!("bundle {}", args.against))?;
        return Ok(bundle.parts);
    }
    if !args.against.contains("://") && !args.against.contains(':') {
        bail!("--against {:?}: no such file, and not a NATS URL", args.against);
    }
    let mut other = settings.clone();
    other.nats_url = args.against.clone();
    let auth = &mut other.nats;
    if args.against_nats_nkey.is_some()
        || args.against_nats_creds.is_some()
        || args.against_nats_user.is_some()
        || args.against_nats_token_file.is_some()
    {
        auth.creds_file = args.against_nats_creds.clone();
        auth.nkey_seed_file = args.against_nats_nkey.clone();
        auth.user = args.against_nats_user.clone();
        auth.password_file = args.against_nats_password_file.clone();
        auth.password_env = None;
        auth.token_file = args.against_nats_token_file.clone();
        auth.token_env = None;
        auth.inbox_prefix = None;
    }
    if args.against_nats_ca.is_some() {
        auth.ca_file = args.against_nats_ca.clone();
    }
    other.validate()?;
    let shown = ferry_service::nats::shown_urls(&other.nats_url);
    let client = ferry_service::nats::connect_options(&other, "cli")
        .await?
        .name("ferry-cli-verify")
        .connection_timeout(Duration::from_secs(5))
        .connect(ferry_service::nats::server_addrs(&other.nats_url)?)
        .await
        .with_context(|| format!("connect to the other side's NATS at {shown}"))?;
    let js = async_nats::jetstream::new(client);
    ferry_service::bundle::snapshot(&js)
        .await
        .with_context(|| format!("read the other side at {shown}"))
}

pub async fn verify(ctx: &Ctx, settings: &Settings, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let there = other_side(settings, &args).await?;
    let here = ferry_service::bundle::snapshot(&ctx.js).await?;
    let differences = bundle::compare(&here, &there);
    let against = if Path::new(&args.against).is_file() {
        format!("bundle {}", args.against)
    } else {
        ferry_service::nats::shown_urls(&args.against)
    };
    print_verdict(ctx.json, &ctx.node, &against, &here, &differences);
    Ok(if differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_verdict(
    json: bool,
    node: &str,
    against: &str,
    here: &BTreeMap<String, Part>,
    differences: &[Difference],
) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "identical": differences.is_empty(),
                "here": node,
                "there": against,
                "differences": differences,
            })
        );
        return;
    }
    if differences.is_empty() {
        let count = |bucket: &str| here.get(bucket).map_or(0, |p| p.entries.len());
        let (tasks, hosts) = config_doc(here)
            .ok()
            .flatten()
            .map_or((0, 0), |d| (d.config.tasks.len(), d.config.hosts.len()));
        println!(
            "identical: node {node} and {against} ({tasks} tasks, {hosts} hosts, {} certificates, {} PGP keys, \
             {} new-files-only entries, {} schedule states)",
            count(topology::KV_CERTS_PERSONAL) + count(topology::KV_CERTS_OTHER),
            count(topology::KV_PGP_PUBLIC),
            count(topology::KV_STATE),
            count(topology::KV_SCHED),
        );
        return;
    }
    println!(
        "{} difference(s) between node {node} (here) and {against} (there):",
        differences.len()
    );
    for d in differences {
        if d.name.is_empty() {
            println!("  {}: {}", d.kind, d.detail);
        } else {
            println!("  {} {:?}: {}", d.kind, d.name, d.detail);
        }
    }
}
