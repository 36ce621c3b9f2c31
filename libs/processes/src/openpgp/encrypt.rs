//! Encrypt (optionally signing) and sign.

use pgp::composed::{
    ArmorOptions, DetachedSignature, MessageBuilder, SignedPublicKey, SignedPublicSubKey, SignedSecretKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::ser::Serialize as _;
use pgp::types::{KeyDetails, Password, SigningKey};
use std::io::BufReader;

use super::pipe::WriteBehind;
use super::{public_key, render_name, secret_key};
use crate::error::Blame;
use crate::file::{BUF_SIZE, open_input};
use crate::{Cancellable, Context, File, OutputFile, Process, ProcessError, StepOutput};
use ferry_config::Template;

/// Encrypt to one or more recipients, optionally signing (one pass, so the file is read once).
///
/// The message is OpenPGP SEIPDv1 with AES-256 — what GnuPG 2.2 and 2.4 and every partner's
/// tool reads — written as it is read (partial-length packets), so memory stays bounded.
/// Each recipient's newest encryption-capable subkey (or its primary key, if that encrypts) is
/// used.
#[derive(Debug, Clone)]
pub struct Encrypt {
    /// Key selectors ([`crate::keys::KeySource`]): fingerprint, key id or user id text.
    pub recipients: Vec<String>,
    /// Sign with this secret key too.
    pub signer: Option<String>,
    /// ASCII armor (`.asc`) instead of binary (`.pgp`).
    pub armor: bool,
    /// Output name; default `[OrigName].pgp` (`[OrigName].asc` when armored).
    pub name: Option<Template>,
}

/// Sign: an inline-signed message (the file inside), or a detached signature beside the file.
#[derive(Debug, Clone)]
pub struct Sign {
    pub signer: String,
    pub armor: bool,
    /// Write `<name>.sig` (`.asc` when armored) beside the file, which passes through unchanged.
    pub detached: bool,
    pub name: Option<Template>,
}

/// The key to sign with: the primary key if it signs, else a signing subkey.
fn signing_key<'k>(
    key: &'k SignedSecretKey,
    selector: &str,
    blame: &Blame,
) -> Result<&'k dyn SigningKey, ProcessError> {
    if key.primary_key.algorithm().can_sign() {
        return Ok(&key.primary_key);
    }
    key.secret_subkeys
        .iter()
        .rev()
        .find(|s| s.key.algorithm().can_sign() && s.signatures.iter().any(|sig| sig.key_flags().sign()))
        .map(|s| &s.key as &dyn SigningKey)
        .ok_or_else(|| blame.bad_input(format!("PGP key {selector:?} has no key that can sign")))
}

enum EncryptTo<'k> {
    Primary(&'k SignedPublicKey),
    Subkey(&'k SignedPublicSubKey),
}

/// The newest subkey flagged for encryption, or the primary key if it can encrypt.
fn encryption_key<'k>(
    key: &'k SignedPublicKey,
    selector: &str,
    blame: &Blame,
) -> Result<EncryptTo<'k>, ProcessError> {
    if let Some(sub) = key.public_subkeys.iter().rev().find(|s| {
        s.key.algorithm().can_encrypt()
            && s.signatures.iter().any(|sig| {
                let f = sig.key_flags();
                f.encrypt_comms() || f.encrypt_storage()
            })
    }) {
        return Ok(EncryptTo::Subkey(sub));
    }
    if key.primary_key.algorithm().can_encrypt() {
        return Ok(EncryptTo::Primary(key));
    }
    Err(blame.bad_input(format!("PGP key {selector:?} has no key that can encrypt")))
}

impl Process for Encrypt {
    fn name(&self) -> &'static str {
        "pgp-encrypt"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let mut files = Vec::with_capacity(inputs.len());
        for input in inputs {
            let blame = Blame::new(self.name(), input.name());
            if self.recipients.is_empty() {
                return Err(blame.bad_input("no recipient is configured"));
            }
            let recipients = self
                .recipients
                .iter()
                .map(|r| public_key(ctx.keys, r, &blame).map(|k| (r, k)))
                .collect::<Result<Vec<_>, _>>()?;
            let signer = match &self.signer {
                Some(s) => Some((s, secret_key(ctx.keys, s, &blame)?)),
                None => None,
            };
            let armor = self.armor;
            let name = render_name(
                &self.name,
                |b| format!("{b}.{}", if armor { "asc" } else { "pgp" }),
                &input,
                ctx,
                &blame,
            )?;

            // rPGP reads the file straight into its own buffer (no read-ahead thread: that would
            // add a copy to a path already bound by its copies and the serial CFB cipher); the
            // output's hashing and writing happen behind, on a thread of their own.
            let src = Cancellable::new(open_input(&input, &blame)?, ctx);
            let mut rng = rand::thread_rng();
            let mut builder = MessageBuilder::from_reader(input.base_name().to_string(), src)
                .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
            for (sel, key) in &recipients {
                let r = match encryption_key(key, sel, &blame)? {
                    EncryptTo::Subkey(s) => builder.encrypt_to_key(&mut rng, s),
                    EncryptTo::Primary(k) => builder.encrypt_to_key(&mut rng, &k.primary_key),
                };
                r.map_err(|e| blame.bad_input(format!("cannot encrypt to {sel:?}: {e}")))?;
            }
            if let Some((sel, (key, pw))) = &signer {
                builder.sign(
                    signing_key(key, sel, &blame)?,
                    Password::from(pw.expose()),
                    HashAlgorithm::Sha256,
                );
            }
            let out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
            let mut out = WriteBehind::new(out).map_err(blame.io("start writing the output"))?;
            let written = if armor {
                builder.to_armored_writer(&mut rng, ArmorOptions::default(), &mut out)
            } else {
                builder.to_writer(&mut rng, &mut out)
            };
            if let Err(e) = written {
                // A failed write on the writing thread is the cause to report.
                return Err(match out.finish() {
                    Err(w) => blame.io("write the output")(w),
                    Ok(_) => blame.internal(format!("encrypt: {e}")),
                });
            }
            let out = out.finish().map_err(blame.io("write the output"))?;
            files.push(out.finish(name).map_err(blame.io("finish the output"))?);
        }
        Ok(StepOutput {
            files,
            log: String::new(),
        })
    }
}

impl Process for Sign {
    fn name(&self) -> &'static str {
        "pgp-sign"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let mut files = Vec::with_capacity(inputs.len());
        for input in inputs {
            let blame = Blame::new(self.name(), input.name());
            let (key, pw) = secret_key(ctx.keys, &self.signer, &blame)?;
            let pw_detached = Password::from(pw.expose());
            let signing = signing_key(&key, &self.signer, &blame)?;
            let armor = self.armor;
            let detached = self.detached;
            let name = render_name(
                &self.name,
                |b| {
                    format!(
                        "{b}.{}",
                        match (detached, armor) {
                            (_, true) => "asc",
                            (true, false) => "sig",
                            (false, false) => "pgp",
                        }
                    )
                },
                &input,
                ctx,
                &blame,
            )?;
            let src = Cancellable::new(open_input(&input, &blame)?, ctx);
            let mut rng = rand::thread_rng();
            let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
            if detached {
                let sig = DetachedSignature::sign_binary_data(
                    &mut rng,
                    &Box::new(signing),
                    &pw_detached,
                    HashAlgorithm::Sha256,
                    BufReader::with_capacity(BUF_SIZE, src),
                )
                .map_err(|e| blame.bad_input(format!("could not be signed: {e}")))?;
                let written = if armor {
                    sig.to_armored_writer(&mut out, ArmorOptions::default())
                } else {
                    sig.to_writer(&mut out)
                };
                written.map_err(|e| blame.internal(format!("write the signature: {e}")))?;
                let sig_file = out.finish(name).map_err(blame.io("finish the signature"))?;
                files.push(input);
                files.push(sig_file);
            } else {
                let mut builder = MessageBuilder::from_reader(input.base_name().to_string(), src);
                builder.sign(signing, Password::from(pw.expose()), HashAlgorithm::Sha256);
                let written = if armor {
                    builder.to_armored_writer(&mut rng, ArmorOptions::default(), &mut out)
                } else {
                    builder.to_writer(&mut rng, &mut out)
                };
                written.map_err(|e| blame.internal(format!("sign: {e}")))?;
                files.push(out.finish(name).map_err(blame.io("finish the output"))?);
            }
        }
        Ok(StepOutput {
            files,
            log: String::new(),
        })
    }
}
