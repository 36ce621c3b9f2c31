//! `ferry certs import|list|export|remove`: the node's certificate stores, through the
//! cert-handler's API (`ferry_wire::keys`).
//!
//! Nothing private crosses the bus in clear: the imported file and every password are sealed to
//! the node's keymat here, and an exported PFX comes back sealed to a one-off key made for this
//! command. Passwords come from a file or an environment variable, never the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use ferry_keymat::Zeroizing;
use ferry_wire::KeymatInfo;
use ferry_wire::keys::{
    CertExport, CertExportRequest, CertImportReport, CertInfo, CertList, CertRemoveRequest, ImportRequest,
    MAX_IMPORT_BYTES, PfxExportRequest, SealedReply, api, binding,
};
use ferry_wire::subjects::service::CERT_HANDLER;

use crate::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Import a certificate file: PEM (certificates, with a PKCS#8 private key for a personal
    /// certificate), DER, PKCS#7 (.p7b) or PFX/PKCS#12 (with its password). A certificate with
    /// its key goes to the personal store, one without to the other people's store.
    Import {
        file: PathBuf,
        #[command(flatten)]
        password: PasswordArgs,
        /// Put every certificate of the file in the other people's store (a key is ignored).
        #[arg(long)]
        other: bool,
    },
    /// Every stored certificate: store, SHA-256 fingerprint, expiry, subject, issuer, serial.
    List,
    /// Write a certificate (and its chain) as PEM, or with --pfx a personal certificate with its
    /// private key as PKCS#12 (admin only).
    Export {
        fingerprint: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        pfx: bool,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Remove a certificate (and, for a personal one, its private key).
    Remove { fingerprint: String },
}

/// Where a password comes from: a file (its first line) or an environment variable.
#[derive(Debug, clap::Args)]
pub struct PasswordArgs {
    /// Read the password from this file (its first line).
    #[arg(long, conflicts_with = "password_env")]
    pub password_file: Option<PathBuf>,
    /// Read the password from this environment variable.
    #[arg(long)]
    pub password_env: Option<String>,
}

impl PasswordArgs {
    pub fn read(&self) -> anyhow::Result<Option<Zeroizing<String>>> {
        let line = |text: &str| Zeroizing::new(text.lines().next().unwrap_or_default().to_string());
        if let Some(file) = &self.password_file {
            let text = Zeroizing::new(
                std::fs::read_to_string(file)
                    .with_context(|| format!("read password file {}", file.display()))?,
            );
            return Ok(Some(line(&text)));
        }
        if let Some(var) = &self.password_env {
            let value = Zeroizing::new(
                std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?,
            );
            return Ok(Some(line(&value)));
        }
        Ok(None)
    }
}

/// The public half of the node's keymat, from its cert-handler.
pub async fn node_keymat(ctx: &Ctx) -> anyhow::Result<ferry_keymat::PublicKey> {
    let info: KeymatInfo = ctx.call(CERT_HANDLER, api::KEYMAT, &()).await?;
    Ok(ferry_keymat::PublicKey {
        key_id: info.key_id,
        public_key: info.public_key,
    })
}

/// An import request for `file`, sealed to the node.
pub async fn sealed_import(
    ctx: &Ctx,
    file: &Path,
    password: Option<&str>,
    other: bool,
) -> anyhow::Result<ImportRequest> {
    let bytes = Zeroizing::new(std::fs::read(file).with_context(|| format!("read {}", file.display()))?);
    if bytes.len() > MAX_IMPORT_BYTES {
        bail!(
            "{}: {} bytes; at most {} KiB can be imported",
            file.display(),
            bytes.len(),
            MAX_IMPORT_BYTES / 1024
        );
    }
    let public = node_keymat(ctx).await?;
    let text = Zeroizing::new(B64.encode(&*bytes));
    Ok(ImportRequest {
        file: ferry_keymat::seal(&public, binding::IMPORT_FILE, &text)?.into(),
        password: match password {
            Some(p) => Some(ferry_keymat::seal(&public, binding::IMPORT_PASSWORD, p)?.into()),
            None => None,
        },
        other,
    })
}

/// A one-off key replies are sealed to.
pub fn reply_key() -> (ferry_keymat::Keymat, KeymatInfo) {
    let keymat = ferry_keymat::Keymat::generate();
    let public = keymat.public();
    let info = KeymatInfo {
        key_id: public.key_id,
        public_key: public.public_key,
    };
    (keymat, info)
}

/// Open a reply sealed to `keymat`, which must be a `kind/…` value.
pub fn open_reply(
    keymat: &ferry_keymat::Keymat,
    kind: &str,
    reply: SealedReply,
) -> anyhow::Result<Zeroizing<String>> {
    if !reply.what.starts_with(&format!("{kind}/")) {
        bail!("the cert-handler answered with a {:?}, not a {kind}", reply.what);
    }
    let secret = ferry_config::Secret::try_from(reply.sealed)
        .map_err(|e| anyhow::anyhow!("the reply is not sealed: {e}"))?;
    Ok(keymat.open(&binding::reply(&reply.what), &secret)?)
}

pub async fn run(ctx: &Ctx, command: CertsCommand) -> anyhow::Result<ExitCode> {
    let admin = |endpoint: &str| api::in_group(api::admin::GROUP, endpoint);
    match command {
        CertsCommand::Import {
            file,
            password,
            other,
        } => {
            let password = password.read()?;
            let request = sealed_import(ctx, &file, password.as_deref().map(String::as_str), other).await?;
            let report: CertImportReport = ctx
                .call(CERT_HANDLER, &admin(api::admin::CERTS_IMPORT), &request)
                .await
                .with_context(|| format!("import {}", file.display()))?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for (verb, list) in [
                    ("added", &report.added),
                    ("already present", &report.already_present),
                ] {
                    for c in list {
                        println!("{verb}: {} {} {}", c.store.name(), c.fingerprint, c.subject);
                    }
                }
            }
        }
        CertsCommand::List => {
            let list: CertList = ctx.call(CERT_HANDLER, api::CERTS_LIST, &()).await?;
            print_list(ctx.json, &list.certificates)?;
        }
        CertsCommand::Export {
            fingerprint,
            out,
            pfx: false,
            ..
        } => {
            let export: CertExport = ctx
                .call(
                    CERT_HANDLER,
                    api::CERTS_EXPORT,
                    &CertExportRequest { fingerprint },
                )
                .await?;
            std::fs::write(&out, export.pem).with_context(|| format!("write {}", out.display()))?;
            report_written(ctx.json, &out);
        }
        CertsCommand::Export {
            fingerprint,
            out,
            pfx: true,
            password,
        } => {
            let Some(password) = password.read()? else {
                bail!("--pfx needs the password that protects the file: --password-file or --password-env");
            };
            if password.is_empty() {
                bail!("the password is empty; a PFX with a private key needs one");
            }
            let public = node_keymat(ctx).await?;
            let (keymat, reply_to) = reply_key();
            let request = PfxExportRequest {
                fingerprint,
                password: ferry_keymat::seal(&public, binding::EXPORT_PASSWORD, &password)?.into(),
                reply_to,
            };
            let reply: SealedReply = ctx
                .call(CERT_HANDLER, &admin(api::admin::CERTS_EXPORT_PFX), &request)
                .await?;
            let text = open_reply(&keymat, "pfx", reply)?;
            let pfx = Zeroizing::new(B64.decode(text.as_bytes()).context("the reply is not base64")?);
            crate::keymat::write_private(&out, &pfx)?;
            report_written(ctx.json, &out);
        }
        CertsCommand::Remove { fingerprint } => {
            let removed: CertInfo = ctx
                .call(
                    CERT_HANDLER,
                    &admin(api::admin::CERTS_REMOVE),
                    &CertRemoveRequest { fingerprint },
                )
                .await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&removed)?);
            } else {
                println!(
                    "removed: {} {} {}",
                    removed.store.name(),
                    removed.fingerprint,
                    removed.subject
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report_written(json: bool, out: &Path) {
    if json {
        println!("{}", serde_json::json!({ "file": out }));
    } else {
        println!("written to {}", out.display());
    }
}

fn print_list(json: bool, certs: &[CertInfo]) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(certs)?);
        return Ok(());
    }
    if certs.is_empty() {
        println!("no certificates");
        return Ok(());
    }
    println!(
        "{:<9} {:<64} {:<20} SUBJECT / ISSUER / SERIAL",
        "STORE", "SHA-256 FINGERPRINT", "NOT AFTER"
    );
    for c in certs {
        println!(
            "{:<9} {:<64} {:<20} {} / {} / {}",
            c.store.name(),
            c.fingerprint,
            c.not_after.format("%Y-%m-%d %H:%M:%S"),
            c.subject,
            c.issuer,
            c.serial
        );
    }
    Ok(())
}
