//! OpenPGP processes over rPGP: encrypt, decrypt, sign, verify — and [`KeyRing`], the one way a
//! selector names a key (the cert-handler matches with it too).

use pgp::composed::{Deserializable, SignedPublicKey, SignedSecretKey};
use pgp::types::KeyDetails;

use crate::keys::KeyError;

/// The identities of one key: fingerprints and key ids of the primary key and its subkeys
/// (uppercase hex) and its user ids.
#[derive(Debug, Clone)]
pub struct KeyIdentity {
    pub fingerprints: Vec<String>,
    pub key_ids: Vec<String>,
    pub user_ids: Vec<String>,
}

impl KeyIdentity {
    /// Whether `selector` names this key: a fingerprint or key id (hex, any case, `0x` and spaces
    /// ignored) of the primary key or a subkey, or text contained in a user id (case-insensitive,
    /// so `partner@example.com` matches `Partner <partner@example.com>`).
    pub fn matches(&self, selector: &str) -> bool {
        let hex: String = selector
            .trim()
            .trim_start_matches("0x")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase();
        let is_hex = !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
        if is_hex && (hex.len() == 16 || hex.len() == 40 || hex.len() == 64) {
            return self.key_ids.contains(&hex) || self.fingerprints.contains(&hex);
        }
        let needle = selector.trim().to_lowercase();
        !needle.is_empty() && self.user_ids.iter().any(|u| u.to_lowercase().contains(&needle))
    }
}

/// Identities of a list of stored keys, in order: [`KeyRing::find`] returns the index of the one
/// key a selector names.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    pub keys: Vec<KeyIdentity>,
}

impl KeyRing {
    /// Reads public keys (each binary or armored).
    pub fn parse_public(keys: &[Vec<u8>]) -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing::default();
        for (i, k) in keys.iter().enumerate() {
            let key = parse_public_key(k).map_err(|reason| KeyError::Unusable {
                kind: "PGP public key",
                selector: format!("#{i}"),
                reason,
            })?;
            ring.keys.push(identity_of_public(&key));
        }
        Ok(ring)
    }

    /// Reads secret keys (each binary or armored).
    pub fn parse_secret(keys: &[Vec<u8>]) -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing::default();
        for (i, k) in keys.iter().enumerate() {
            let key = parse_secret_key(k).map_err(|reason| KeyError::Unusable {
                kind: "PGP secret key",
                selector: format!("#{i}"),
                reason,
            })?;
            ring.keys.push(identity_of_secret(&key));
        }
        Ok(ring)
    }

    /// The index of the one key `selector` names; none or several is an error naming it.
    pub fn find(&self, selector: &str, kind: &'static str) -> Result<usize, KeyError> {
        let found: Vec<usize> = (0..self.keys.len())
            .filter(|&i| self.keys[i].matches(selector))
            .collect();
        match found.as_slice() {
            [i] => Ok(*i),
            [] => Err(KeyError::NotFound {
                kind,
                selector: selector.to_string(),
            }),
            many => Err(KeyError::Ambiguous {
                kind,
                selector: selector.to_string(),
                count: many.len(),
            }),
        }
    }
}

pub(crate) fn parse_public_key(bytes: &[u8]) -> Result<SignedPublicKey, String> {
    let (key, _) = SignedPublicKey::from_reader_single(bytes).map_err(|e| e.to_string())?;
    key.verify_bindings().map_err(|e| e.to_string())?;
    Ok(key)
}

pub(crate) fn parse_secret_key(bytes: &[u8]) -> Result<SignedSecretKey, String> {
    let (key, _) = SignedSecretKey::from_reader_single(bytes).map_err(|e| e.to_string())?;
    key.verify_bindings().map_err(|e| e.to_string())?;
    Ok(key)
}

fn user_ids(details: &pgp::composed::SignedKeyDetails) -> Vec<String> {
    details
        .users
        .iter()
        .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
        .collect()
}

pub(crate) fn identity_of_public(key: &SignedPublicKey) -> KeyIdentity {
    let mut fingerprints = vec![format!("{:X}", key.primary_key.fingerprint())];
    let mut key_ids = vec![key_id_hex(&key.primary_key)];
    for sub in &key.public_subkeys {
        fingerprints.push(format!("{:X}", sub.key.fingerprint()));
        key_ids.push(key_id_hex(&sub.key));
    }
    KeyIdentity {
        fingerprints,
        key_ids,
        user_ids: user_ids(&key.details),
    }
}

pub(crate) fn identity_of_secret(key: &SignedSecretKey) -> KeyIdentity {
    let mut fingerprints = vec![format!("{:X}", key.primary_key.fingerprint())];
    let mut key_ids = vec![key_id_hex(&key.primary_key)];
    for sub in &key.public_subkeys {
        fingerprints.push(format!("{:X}", sub.key.fingerprint()));
        key_ids.push(key_id_hex(&sub.key));
    }
    for sub in &key.secret_subkeys {
        fingerprints.push(format!("{:X}", sub.key.fingerprint()));
        key_ids.push(key_id_hex(&sub.key));
    }
    KeyIdentity {
        fingerprints,
        key_ids,
        user_ids: user_ids(&key.details),
    }
}

pub(crate) fn key_id_hex(key: &impl KeyDetails) -> String {
    key.legacy_key_id().to_string().to_ascii_uppercase()
}

// ---------------------------------------------------------------------------------------------
// The processes.

use std::io::{BufReader, Read, Write};

use ferry_config::Template;
use pgp::composed::{
    ArmorOptions, DecryptionOptions, DetachedSignature, Message, MessageBuilder, SignedPublicSubKey, TheRing,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::ser::Serialize as _;
use pgp::types::{Password, Seipdv1ReadMode, SigningKey};

use crate::error::Blame;
use crate::file::{BUF_SIZE, check_name, open_input};
use crate::keys::KeySource;
use crate::{Cancellable, Context, File, OutputFile, Process, ProcessError, StepOutput};

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

/// Decrypt with whichever secret key of the node's ring the message is addressed to; optionally
/// require a valid signature from a named key.
///
/// SEIPDv1 messages (GnuPG's default) are decrypted in rPGP's streaming mode, which releases
/// plaintext before the integrity check at the end of the message: the plaintext goes to a
/// temporary output that is handed on only if the whole message (integrity check and required
/// signature included) succeeded, and is removed otherwise — so nothing unauthenticated ever
/// leaves this step.
///
/// A signed message whose signer's key the node holds is checked even when no signature is
/// required, and fails if the signature is bad.
#[derive(Debug, Clone, Default)]
pub struct Decrypt {
    pub require_signer: Option<String>,
    /// Output name; default: the input's name without `.pgp`, `.gpg` or `.asc`.
    pub name: Option<Template>,
    /// Most bytes the plaintext may have: a compressed message can expand without bound (a
    /// decompression bomb); counted as it is written, like unzip's limit. `None`: no limit.
    pub max_bytes: Option<u64>,
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

/// Verify an inline-signed message and hand on its content; the signature must be valid and,
/// when `signer` is set, made by that key.
#[derive(Debug, Clone, Default)]
pub struct Verify {
    pub signer: Option<String>,
    pub name: Option<Template>,
    /// As [`Decrypt::max_bytes`].
    pub max_bytes: Option<u64>,
}

fn render_name(
    t: &Option<Template>,
    default: impl FnOnce(&str) -> String,
    input: &File,
    ctx: &Context<'_>,
    blame: &Blame,
) -> Result<String, ProcessError> {
    let base = match t {
        Some(t) => t.render(&ctx.macros(input.base_name())),
        None => default(input.base_name()),
    };
    let name = match input.name().rsplit_once('/') {
        Some((folder, _)) => format!("{folder}/{base}"),
        None => base,
    };
    check_name(&name).map_err(|e| blame.bad_input(format!("the output name is unusable: {e}")))?;
    Ok(name)
}

/// `a.txt.pgp` → `a.txt`; a name without a PGP extension is kept.
fn strip_pgp_ext(name: &str) -> String {
    for ext in [".pgp", ".gpg", ".asc", ".sig"] {
        if name.len() > ext.len() && name.to_ascii_lowercase().ends_with(ext) {
            return name[..name.len() - ext.len()].to_string();
        }
    }
    name.to_string()
}

fn public_key(keys: &dyn KeySource, selector: &str, blame: &Blame) -> Result<SignedPublicKey, ProcessError> {
    let bytes = keys.pgp_public_key(selector).map_err(|e| blame.key(e))?;
    parse_public_key(&bytes)
        .map_err(|e| blame.bad_input(format!("PGP public key {selector:?} cannot be used: {e}")))
}

fn secret_key(
    keys: &dyn KeySource,
    selector: &str,
    blame: &Blame,
) -> Result<(SignedSecretKey, crate::keys::Secret), ProcessError> {
    let k = keys.pgp_secret_key(selector).map_err(|e| blame.key(e))?;
    let key = parse_secret_key(&k.key)
        .map_err(|e| blame.bad_input(format!("PGP secret key {selector:?} cannot be used: {e}")))?;
    Ok((key, k.passphrase))
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

/// Whether `sig`'s message verifies with the primary key or any subkey of `key`.
fn verifies(msg: &Message<'_>, key: &SignedPublicKey) -> bool {
    msg.verify(&key.primary_key).is_ok() || key.public_subkeys.iter().any(|s| msg.verify(&s.key).is_ok())
}

/// Key ids (uppercase hex) that signed a message read to its end.
fn signer_ids(msg: &Message<'_>) -> Vec<String> {
    let Message::Signed { reader, .. } = msg else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for i in 0..reader.num_signatures() {
        if let Some(sig) = reader.signature(i) {
            for fp in sig.issuer_fingerprint() {
                ids.push(format!("{fp:X}"));
            }
            for id in sig.issuer_key_id() {
                ids.push(id.to_string().to_ascii_uppercase());
            }
        }
    }
    ids.dedup();
    ids
}

/// Copies a message's plaintext to `out`: read errors are the message's fault (bad input),
/// write errors Ferry's.
fn copy_plaintext(
    msg: &mut Message<'_>,
    out: &mut OutputFile,
    blame: &Blame,
    what: &str,
    limit: Option<u64>,
) -> Result<u64, ProcessError> {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut n = 0u64;
    loop {
        let k = match msg.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(blame.bad_input(format!("could not be {what}: {e}"))),
        };
        if let Some(limit) = limit
            && n + k as u64 > limit
        {
            return Err(blame.limit(format!("expands to more than the limit of {limit} bytes")));
        }
        out.write_all(&buf[..k]).map_err(blame.io("write the output"))?;
        n += k as u64;
    }
}

/// Checks the signature of a message read to its end: against `required` (which must have
/// signed), or else against the signer's key if the node holds it. Returns a line for the log.
fn check_signature(
    msg: &Message<'_>,
    required: Option<&str>,
    keys: &dyn KeySource,
    blame: &Blame,
) -> Result<String, ProcessError> {
    let ids = signer_ids(msg);
    if let Some(sel) = required {
        if !msg.is_signed() {
            return Err(blame.bad_input(format!("is not signed, and a signature from {sel:?} is required")));
        }
        let key = public_key(keys, sel, blame)?;
        if !verifies(msg, &key) {
            return Err(blame.bad_input(format!(
                "has no valid signature from {sel:?} (signed by key {})",
                ids.join(", ")
            )));
        }
        return Ok(format!("good signature from {sel:?}\n"));
    }
    if !msg.is_signed() {
        return Ok(String::new());
    }
    for id in &ids {
        match keys.pgp_public_key(id) {
            Ok(bytes) => {
                let Ok(key) = parse_public_key(&bytes) else {
                    continue;
                };
                if verifies(msg, &key) {
                    return Ok(format!("good signature from key {id}\n"));
                }
                return Err(blame.bad_input(format!("has a bad signature from key {id}")));
            }
            Err(crate::keys::KeyError::Unavailable(e)) => {
                return Err(blame.key(crate::keys::KeyError::Unavailable(e)));
            }
            Err(_) => continue,
        }
    }
    Ok(format!(
        "signed by key {} (not in the node's ring: not checked)\n",
        ids.join(", ")
    ))
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
            let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
            let written = if armor {
                builder.to_armored_writer(&mut rng, ArmorOptions::default(), &mut out)
            } else {
                builder.to_writer(&mut rng, &mut out)
            };
            written.map_err(|e| blame.internal(format!("encrypt: {e}")))?;
            files.push(out.finish(name).map_err(blame.io("finish the output"))?);
        }
        Ok(StepOutput {
            files,
            log: String::new(),
        })
    }
}

impl Process for Decrypt {
    fn name(&self) -> &'static str {
        "pgp-decrypt"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let mut files = Vec::with_capacity(inputs.len());
        let mut log = String::new();
        for input in inputs {
            let blame = Blame::new(self.name(), input.name());
            let name = render_name(&self.name, strip_pgp_ext, &input, ctx, &blame)?;
            let src = BufReader::with_capacity(BUF_SIZE, Cancellable::new(open_input(&input, &blame)?, ctx));
            let (msg, _) = Message::from_reader(src)
                .map_err(|e| blame.bad_input(format!("is not an OpenPGP message: {e}")))?;
            let Message::Encrypted { esk, .. } = &msg else {
                return Err(blame.bad_input("is not an encrypted OpenPGP message"));
            };
            let mut wanted = Vec::new();
            for e in esk {
                if let pgp::composed::Esk::PublicKeyEncryptedSessionKey(p) = e {
                    match (p.id(), p.fingerprint()) {
                        (Ok(id), _) => wanted.push(id.to_string().to_ascii_uppercase()),
                        (_, Ok(Some(fp))) => wanted.push(format!("{fp:X}")),
                        _ => {}
                    }
                }
            }
            let mut found = None;
            for id in &wanted {
                match secret_key(ctx.keys, id, &blame) {
                    Ok(k) => {
                        found = Some(k);
                        break;
                    }
                    Err(e @ ProcessError::KeysUnavailable { .. }) => return Err(e),
                    Err(_) => continue,
                }
            }
            let Some((key, pw)) = found else {
                return Err(blame.bad_input(format!(
                    "is encrypted for key {}, which is not in the node's PGP key ring",
                    if wanted.is_empty() {
                        "(anonymous)".to_string()
                    } else {
                        wanted.join(", ")
                    }
                )));
            };
            let pw = Password::from(pw.expose());
            let ring = TheRing {
                secret_keys: vec![&key],
                key_passwords: vec![&pw],
                decrypt_options: DecryptionOptions::new().set_seipdv1_read_mode(Seipdv1ReadMode::Streaming),
                ..Default::default()
            };
            let (mut msg, _) = msg
                .decrypt_the_ring(ring, true)
                .map_err(|e| blame.bad_input(format!("could not be decrypted: {e}")))?;
            while msg.is_compressed() {
                msg = msg
                    .decompress()
                    .map_err(|e| blame.bad_input(format!("could not be decompressed: {e}")))?;
            }
            let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
            copy_plaintext(&mut msg, &mut out, &blame, "decrypted", self.max_bytes)?;
            log.push_str(&check_signature(
                &msg,
                self.require_signer.as_deref(),
                ctx.keys,
                &blame,
            )?);
            files.push(out.finish(name).map_err(blame.io("finish the output"))?);
        }
        Ok(StepOutput { files, log })
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

impl Process for Verify {
    fn name(&self) -> &'static str {
        "pgp-verify"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let mut files = Vec::with_capacity(inputs.len());
        let mut log = String::new();
        for input in inputs {
            let blame = Blame::new(self.name(), input.name());
            let name = render_name(&self.name, strip_pgp_ext, &input, ctx, &blame)?;
            let src = BufReader::with_capacity(BUF_SIZE, Cancellable::new(open_input(&input, &blame)?, ctx));
            let (mut msg, _) = Message::from_reader(src)
                .map_err(|e| blame.bad_input(format!("is not an OpenPGP message: {e}")))?;
            if msg.is_encrypted() {
                return Err(blame.bad_input("is encrypted: decrypt it (pgp-decrypt can require a signature)"));
            }
            while msg.is_compressed() {
                msg = msg
                    .decompress()
                    .map_err(|e| blame.bad_input(format!("could not be decompressed: {e}")))?;
            }
            let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
            copy_plaintext(&mut msg, &mut out, &blame, "read", self.max_bytes)?;
            if !msg.is_signed() {
                return Err(blame.bad_input("is not signed"));
            }
            let line = check_signature(&msg, self.signer.as_deref(), ctx.keys, &blame)?;
            if line.contains("not checked") {
                return Err(blame.bad_input(line.trim_end().replace("signed by", "is signed by")));
            }
            log.push_str(&line);
            files.push(out.finish(name).map_err(blame.io("finish the output"))?);
        }
        Ok(StepOutput { files, log })
    }
}
