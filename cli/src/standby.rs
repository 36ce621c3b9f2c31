//! `ferry standby attach|detach|status`: mirror mode, a standby site with its own NATS whose
//! stores are continuous JetStream mirrors of the primary's (answered by the node's
//! failover-coordinator, `ferry_wire::standby`). Credentials for the primary are sealed to the
//! node's keymat here, before they leave this machine.

use std::path::PathBuf;
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
    /// Make the mirrored stores this node's own again (the same contents, now writable),
    /// without changing its role.
    Detach,
    /// Mode (shared cluster, mirror, none), the primary, per store the last replicated revision
    /// and the primary's, the lag in changes and seconds, and whether this node's keymat opens
    /// the mirrored configuration.
    Status,
}

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
