//! `ferry pgp import|list|export|remove|generate`: the node's PGP key rings, through the
//! cert-handler's API (`ferry_wire::keys`). As in `ferry certs`, an imported key is sealed to the
//! node's keymat and an exported secret key comes back sealed to a one-off key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use ferry_wire::keys::{
    PgpArmored, PgpGenerateRequest, PgpKeyInfo, PgpKeyKind, PgpList, PgpSecretRequest, PgpSelector,
    SealedReply, api,
};
use ferry_wire::subjects::service::CERT_HANDLER;

use crate::Ctx;
use crate::certs::{PasswordArgs, open_reply, reply_key, sealed_import};

#[derive(Debug, clap::Subcommand)]
pub enum PgpCommand {
    /// Import a PGP key (armored or binary; a secret key also adds its public key).
    Import {
        file: PathBuf,
        /// The secret key's passphrase, if it has one.
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Every key: fingerprint, user ids, created, expiry, whether the node holds its secret key.
    List,
    /// Print a key, armored (to --out, or standard output). --secret: the secret key (admin).
    Export {
        /// A fingerprint, key id, e-mail address or text of a user id that names one key.
        selector: String,
        #[arg(long)]
        secret: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remove a key, public and secret.
    Remove { selector: String },
    /// Generate a key pair in the node's ring.
    Generate {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long, value_enum, default_value_t = Kind::Ed25519)]
        kind: Kind,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// Ed25519 signing key with a Curve25519 encryption subkey.
    Ed25519,
    /// RSA-3072 signing key with an RSA-3072 encryption subkey.
    Rsa3072,
}

pub async fn run(ctx: &Ctx, command: PgpCommand) -> anyhow::Result<ExitCode> {
    let admin = |endpoint: &str| api::in_group(api::admin::GROUP, endpoint);
    match command {
        PgpCommand::Import { file, password } => {
            let password = password.read()?;
            let request = sealed_import(ctx, &file, password.as_deref().map(String::as_str), false).await?;
            let key: PgpKeyInfo = ctx
                .call(CERT_HANDLER, &admin(api::admin::PGP_IMPORT), &request)
                .await
                .with_context(|| format!("import {}", file.display()))?;
            print_key(ctx.json, "imported", &key)?;
        }
        PgpCommand::List => {
            let list: PgpList = ctx.call(CERT_HANDLER, api::PGP_LIST, &()).await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&list.keys)?);
            } else if list.keys.is_empty() {
                println!("no keys");
            } else {
                for k in &list.keys {
                    println!(
                        "{} {} created {} expires {} {}",
                        k.fingerprint,
                        if k.has_secret { "sec" } else { "pub" },
                        k.created.format("%Y-%m-%d"),
                        k.expires
                            .map(|e| e.format("%Y-%m-%d").to_string())
                            .unwrap_or_else(|| "never".into()),
                        k.user_ids.join(", ")
                    );
                }
            }
        }
        PgpCommand::Export {
            selector,
            secret,
            out,
        } => {
            let armored = if secret {
                let (keymat, reply_to) = reply_key();
                let reply: SealedReply = ctx
                    .call(
                        CERT_HANDLER,
                        &admin(api::admin::PGP_EXPORT_SECRET),
                        &PgpSecretRequest { selector, reply_to },
                    )
                    .await?;
                open_reply(&keymat, "pgp-armored", reply)?
            } else {
                let public: PgpArmored = ctx
                    .call(CERT_HANDLER, api::PGP_EXPORT, &PgpSelector { selector })
                    .await?;
                ferry_keymat::Zeroizing::new(public.armored)
            };
            match out {
                Some(out) if secret => crate::keymat::write_private(&out, armored.as_bytes())?,
                Some(out) => std::fs::write(&out, armored.as_bytes())
                    .with_context(|| format!("write {}", out.display()))?,
                None => print!("{}", armored.as_str()),
            }
        }
        PgpCommand::Remove { selector } => {
            let key: PgpKeyInfo = ctx
                .call(
                    CERT_HANDLER,
                    &admin(api::admin::PGP_REMOVE),
                    &PgpSelector { selector },
                )
                .await?;
            print_key(ctx.json, "removed", &key)?;
        }
        PgpCommand::Generate { name, email, kind } => {
            let request = PgpGenerateRequest {
                name,
                email,
                kind: match kind {
                    Kind::Ed25519 => PgpKeyKind::Ed25519,
                    Kind::Rsa3072 => PgpKeyKind::Rsa3072,
                },
            };
            let key: PgpKeyInfo = ctx
                .call_within(
                    CERT_HANDLER,
                    &admin(api::admin::PGP_GENERATE),
                    &request,
                    std::time::Duration::from_secs(120),
                )
                .await?;
            print_key(ctx.json, "generated", &key)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_key(json: bool, verb: &str, k: &PgpKeyInfo) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(k)?);
    } else {
        println!(
            "{verb}: {} {} {}",
            k.fingerprint,
            if k.has_secret { "sec" } else { "pub" },
            k.user_ids.join(", ")
        );
    }
    Ok(())
}
