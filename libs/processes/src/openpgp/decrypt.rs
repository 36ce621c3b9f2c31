//! Decrypt (optionally requiring a signature) and verify.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pgp::composed::{
    DecryptionOptions, Edata, Esk, Message, PlainSessionKey, SignedPublicKey, SignedSecretKey, TheRing,
};
use pgp::packet::{ProtectedDataConfig, SymEncryptedProtectedDataConfig};
use pgp::types::{DecryptionKey, EskType, Password, PkeskVersion, Seipdv1ReadMode};

use super::open::{open, opens};
use super::pipe::{Failed, ReadAhead, WriteBehind};
use super::{parse_public_key, public_key, render_name, secret_key, strip_pgp_ext};
use crate::error::Blame;
use crate::file::open_input;
use crate::keys::KeySource;
use crate::{Context, File, OutputFile, Process, ProcessError, StepOutput};
use ferry_config::Template;

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

/// Verify an inline-signed message and hand on its content; the signature must be valid and,
/// when `signer` is set, made by that key.
#[derive(Debug, Clone, Default)]
pub struct Verify {
    pub signer: Option<String>,
    pub name: Option<Template>,
    /// As [`Decrypt::max_bytes`].
    pub max_bytes: Option<u64>,
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

/// The session key of a message addressed (by one of `esk`) to `key`'s primary key or a subkey,
/// as rPGP's `TheRing` finds it (which keeps that search to itself).
fn session_key(esk: &[Esk], key: &SignedSecretKey, pw: &Password) -> Result<PlainSessionKey, String> {
    let mut last = "no session key packet is addressed to the key".to_string();
    for e in esk {
        let Esk::PublicKeyEncryptedSessionKey(p) = e else {
            continue;
        };
        let typ = match p.version() {
            PkeskVersion::V3 => EskType::V3_4,
            PkeskVersion::V6 => EskType::V6,
            _ => continue,
        };
        let Ok(values) = p.values() else {
            continue;
        };
        let mut attempt = |k: &dyn DecryptionKey, locked: bool| {
            let empty = Password::empty();
            match k.decrypt(if locked { pw } else { &empty }, values, typ) {
                Ok(Ok(session)) => Some(session),
                Ok(Err(e)) | Err(e) => {
                    last = e.to_string();
                    None
                }
            }
        };
        let primary = &key.primary_key;
        if p.match_identity(primary.public_key())
            && let Some(s) = attempt(primary, primary.secret_params().is_encrypted())
        {
            return Ok(s);
        }
        for sub in &key.secret_subkeys {
            if p.match_identity(sub.key.public_key())
                && let Some(s) = attempt(&sub.key, sub.key.secret_params().is_encrypted())
            {
                return Ok(s);
            }
        }
    }
    Err(last)
}

/// Copies a message's plaintext to a new output in the work folder, read straight into the
/// chunks a writing thread writes behind (hashed on this thread, so that the writing thread,
/// which also pays for the new file's pages, only writes): read errors are the message's fault
/// (bad input), write errors Ferry's. The output is finished with [`OutputFile::finish_hashed`].
fn copy_plaintext(
    msg: &mut Message<'_>,
    ctx: &Context<'_>,
    blame: &Blame,
    what: &str,
    limit: Option<u64>,
) -> Result<(OutputFile, [u8; 32]), ProcessError> {
    let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
    out.hashed_elsewhere();
    let mut out = WriteBehind::hashing(out).map_err(blame.io("start writing the output"))?;
    let mut n = 0u64;
    loop {
        if ctx.is_cancelled() {
            return Err(blame.internal("cancelled"));
        }
        let k = match out.read_from(msg) {
            Ok(0) => break,
            Ok(k) => k,
            Err(Failed::Read(e)) => return Err(blame.bad_input(format!("could not be {what}: {e}"))),
            // The writing thread's own error is the one to report.
            Err(Failed::Write(e)) => {
                return Err(blame.io("write the output")(out.finish().err().unwrap_or(e)));
            }
        };
        n += k as u64;
        if let Some(limit) = limit
            && n > limit
        {
            return Err(blame.limit(format!("expands to more than the limit of {limit} bytes")));
        }
    }
    out.finish_hashed().map_err(blame.io("write the output"))
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
            // No cancel here: the plaintext's reader checks it (the file's is read through it).
            let src = ReadAhead::new(open_input(&input, &blame)?, None)
                .map_err(blame.io("start reading the input"))?;
            let (msg, _) = Message::from_reader(src)
                .map_err(|e| blame.bad_input(format!("is not an OpenPGP message: {e}")))?;
            let Message::Encrypted {
                esk,
                edata,
                is_nested,
            } = msg
            else {
                return Err(blame.bad_input("is not an encrypted OpenPGP message"));
            };
            let mut wanted = Vec::new();
            for e in &esk {
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
            let session = session_key(&esk, &key, &pw)
                .map_err(|e| blame.bad_input(format!("could not be decrypted: {e}")))?;
            let (mut msg, verified) = match edata {
                // SEIPDv1 with AES (GnuPG's default): decrypted on a thread of its own.
                Edata::SymEncryptedProtectedData { reader }
                    if matches!(
                        reader.config(),
                        ProtectedDataConfig::Seipd(SymEncryptedProtectedDataConfig::V1)
                    ) && matches!(&session, PlainSessionKey::V3_4 { sym_alg, .. } if opens(*sym_alg)) =>
                {
                    let PlainSessionKey::V3_4 { sym_alg, key: raw } = &session else {
                        unreachable!("matched above")
                    };
                    let verified = Arc::new(AtomicBool::new(false));
                    let plain = open(
                        reader.into_inner(),
                        *sym_alg,
                        raw.as_ref(),
                        verified.clone(),
                        ctx.cancel,
                    )
                    .map_err(|e| blame.bad_input(format!("could not be decrypted: {e}")))?;
                    let inner = Message::from_bytes(plain)
                        .map_err(|e| blame.bad_input(format!("could not be decrypted: {e}")))?;
                    if inner.is_encrypted() {
                        return Err(blame.bad_input("holds another encrypted message inside its encryption"));
                    }
                    (inner, Some(verified))
                }
                // Everything else (SEIPDv2, other ciphers): rPGP, streaming.
                edata => {
                    let ring = TheRing {
                        session_keys: vec![session],
                        decrypt_options: DecryptionOptions::new()
                            .set_seipdv1_read_mode(Seipdv1ReadMode::Streaming),
                        ..Default::default()
                    };
                    let (msg, _) = Message::Encrypted {
                        esk,
                        edata,
                        is_nested,
                    }
                    .decrypt_the_ring(ring, true)
                    .map_err(|e| blame.bad_input(format!("could not be decrypted: {e}")))?;
                    (msg, None)
                }
            };
            while msg.is_compressed() {
                msg = msg
                    .decompress()
                    .map_err(|e| blame.bad_input(format!("could not be decompressed: {e}")))?;
            }
            let (out, sha256) = copy_plaintext(&mut msg, ctx, &blame, "decrypted", self.max_bytes)?;
            // rPGP reads a message to its end (no trailing packets), so the MDC was checked; a
            // second lock on that door costs nothing.
            if verified.is_some_and(|v| !v.load(Ordering::Acquire)) {
                return Err(
                    blame.bad_input("could not be decrypted: the message ended before its integrity check")
                );
            }
            log.push_str(&check_signature(
                &msg,
                self.require_signer.as_deref(),
                ctx.keys,
                &blame,
            )?);
            files.push(
                out.finish_hashed(name, sha256)
                    .map_err(blame.io("finish the output"))?,
            );
        }
        Ok(StepOutput { files, log })
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
            let src = ReadAhead::new(open_input(&input, &blame)?, ctx.cancel)
                .map_err(blame.io("start reading the input"))?;
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
            let (out, sha256) = copy_plaintext(&mut msg, ctx, &blame, "read", self.max_bytes)?;
            if !msg.is_signed() {
                return Err(blame.bad_input("is not signed"));
            }
            let line = check_signature(&msg, self.signer.as_deref(), ctx.keys, &blame)?;
            if line.contains("not checked") {
                return Err(blame.bad_input(line.trim_end().replace("signed by", "is signed by")));
            }
            log.push_str(&line);
            files.push(
                out.finish_hashed(name, sha256)
                    .map_err(blame.io("finish the output"))?,
            );
        }
        Ok(StepOutput { files, log })
    }
}
