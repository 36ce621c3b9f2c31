//! Encrypt (optionally signing) and sign.

use pgp::composed::{
    ArmorOptions, DetachedSignature, MessageBuilder, SignedPublicKey, SignedPublicSubKey, SignedSecretKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{
    OnePassSignature, PacketTrait as _, PublicKeyEncryptedSessionKey, SignatureConfig, SignatureHasher,
    SignatureType, SignatureVersionSpecific, Subpacket, SubpacketData,
};
use pgp::ser::Serialize as _;
use pgp::types::{Fingerprint, KeyDetails, KeyVersion, Password, SigningKey, Timestamp};
use rand::{CryptoRng, Rng, RngCore as _};
use std::io::BufReader;

use super::pipe::WriteBehind;
use super::seal::{Failed, seal};
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

            let out = if armor {
                armored(&input, ctx, &recipients, &signer, &blame)?
            } else {
                sealed(&input, ctx, &recipients, &signer, &blame)?
            };
            files.push(out.finish(name).map_err(blame.io("finish the output"))?);
        }
        Ok(StepOutput {
            files,
            log: String::new(),
        })
    }
}

/// The message in binary, through [`seal`]'s pipeline: the step's thread only encrypts.
fn sealed(
    input: &File,
    ctx: &Context<'_>,
    recipients: &[(&String, SignedPublicKey)],
    signer: &Option<(&String, (SignedSecretKey, crate::keys::Secret))>,
    blame: &Blame,
) -> Result<OutputFile, ProcessError> {
    let mut rng = rand::thread_rng();
    let session_key = SymmetricKeyAlgorithm::AES256.new_session_key(&mut rng);
    let mut esks = Vec::with_capacity(recipients.len());
    for (sel, key) in recipients {
        let esk = match encryption_key(key, sel, blame)? {
            EncryptTo::Subkey(s) => PublicKeyEncryptedSessionKey::from_session_key_v3(
                &mut rng,
                &session_key,
                SymmetricKeyAlgorithm::AES256,
                &s.key,
            ),
            EncryptTo::Primary(k) => PublicKeyEncryptedSessionKey::from_session_key_v3(
                &mut rng,
                &session_key,
                SymmetricKeyAlgorithm::AES256,
                &k.primary_key,
            ),
        };
        esks.push(esk.map_err(|e| blame.bad_input(format!("cannot encrypt to {sel:?}: {e}")))?);
    }
    let signing = match signer {
        Some((sel, (key, pw))) => Some((signing_key(key, sel, blame)?, Password::from(pw.expose()))),
        None => None,
    };
    let mut ops = Vec::new();
    let hasher = match &signing {
        Some((key, _)) => {
            let (config, one_pass) = signature_config(&mut rng, *key)
                .map_err(|e| blame.bad_input(format!("could not be signed: {e}")))?;
            one_pass
                .to_writer_with_header(&mut ops)
                .map_err(|e| blame.internal(format!("encrypt: {e}")))?;
            Some(
                config
                    .into_hasher()
                    .map_err(|e| blame.internal(format!("encrypt: {e}")))?,
            )
        }
        None => None,
    };
    // The CFB prefix: random, its last two bytes repeated (the quick check).
    let mut prefix = [0u8; 18];
    rng.fill_bytes(&mut prefix[..16]);
    prefix[16] = prefix[14];
    prefix[17] = prefix[15];

    let file = open_input(input, blame)?;
    let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
    for esk in &esks {
        esk.to_writer_with_header(&mut out)
            .map_err(|e| blame.internal(format!("write the output: {e}")))?;
    }
    let sign = |h: SignatureHasher| {
        let (key, pw) = signing.as_ref().expect("a hasher only when signing");
        let mut packet = Vec::new();
        h.sign(*key, pw)
            .and_then(|sig| sig.to_writer_with_header(&mut packet))
            .map(|()| packet)
            .map_err(|e| e.to_string())
    };
    seal(
        file,
        &mut out,
        session_key.as_ref(),
        prefix,
        &ops,
        hasher,
        sign,
        ctx.cancel,
    )
    .map_err(|e| match e {
        Failed::Write(e) => blame.io("write the output")(e),
        Failed::Read(e) => blame.internal(format!("encrypt: {e}")),
        Failed::Message(e) => blame.internal(format!("encrypt: {e}")),
    })?;
    Ok(out)
}

/// The signature's settings and its one-pass signature packet, as rPGP's builder makes them
/// (issuer fingerprint and creation time hashed; the issuer key id unhashed for a v4 key).
fn signature_config(
    rng: impl Rng + CryptoRng,
    key: &dyn SigningKey,
) -> pgp::errors::Result<(SignatureConfig, OnePassSignature)> {
    let typ = SignatureType::Binary;
    let hash = HashAlgorithm::Sha256;
    let alg = key.algorithm();
    let mut config = match key.version() {
        KeyVersion::V6 => SignatureConfig::v6(rng, typ, alg, hash)?,
        _ => SignatureConfig::v4(typ, alg, hash),
    };
    config.hashed_subpackets = vec![
        Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint()))?,
        Subpacket::regular(SubpacketData::SignatureCreationTime(Timestamp::now()))?,
    ];
    config.unhashed_subpackets = match key.version() {
        KeyVersion::V6 => Vec::new(),
        _ => vec![Subpacket::regular(SubpacketData::IssuerKeyId(
            key.legacy_key_id(),
        ))?],
    };
    let ops = match (&config.version_specific, key.fingerprint()) {
        (SignatureVersionSpecific::V6 { salt }, Fingerprint::V6(fp)) => {
            OnePassSignature::v6(typ, hash, alg, salt.clone(), fp)
        }
        _ => OnePassSignature::v3(typ, hash, alg, key.legacy_key_id()),
    };
    Ok((config, ops))
}

/// The message ASCII-armored, by rPGP's builder (armor is for small files: the base64 costs
/// more than the cipher); the output is hashed and written on a thread of its own.
fn armored(
    input: &File,
    ctx: &Context<'_>,
    recipients: &[(&String, SignedPublicKey)],
    signer: &Option<(&String, (SignedSecretKey, crate::keys::Secret))>,
    blame: &Blame,
) -> Result<OutputFile, ProcessError> {
    let src = Cancellable::new(open_input(input, blame)?, ctx);
    let mut rng = rand::thread_rng();
    let mut builder = MessageBuilder::from_reader(input.base_name().to_string(), src)
        .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
    for (sel, key) in recipients {
        let r = match encryption_key(key, sel, blame)? {
            EncryptTo::Subkey(s) => builder.encrypt_to_key(&mut rng, s),
            EncryptTo::Primary(k) => builder.encrypt_to_key(&mut rng, &k.primary_key),
        };
        r.map_err(|e| blame.bad_input(format!("cannot encrypt to {sel:?}: {e}")))?;
    }
    if let Some((sel, (key, pw))) = signer {
        builder.sign(
            signing_key(key, sel, blame)?,
            Password::from(pw.expose()),
            HashAlgorithm::Sha256,
        );
    }
    let out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
    let mut out = WriteBehind::new(out).map_err(blame.io("start writing the output"))?;
    if let Err(e) = builder.to_armored_writer(&mut rng, ArmorOptions::default(), &mut out) {
        // A failed write on the writing thread is the cause to report.
        return Err(match out.finish() {
            Err(w) => blame.io("write the output")(w),
            Ok(_) => blame.internal(format!("encrypt: {e}")),
        });
    }
    out.finish().map_err(blame.io("write the output"))
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
