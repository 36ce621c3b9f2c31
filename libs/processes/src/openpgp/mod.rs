//! OpenPGP processes over rPGP: [`Encrypt`] and [`Sign`] ([`encrypt`]), [`Decrypt`] and
//! [`Verify`] ([`decrypt`]), and [`KeyRing`] ([`keyring`]), the one way a selector names a key
//! (the cert-handler matches with it too).
//!
//! Everything streams: a message is written as the file is read (partial-length packets) and
//! read as it arrives, so memory stays bounded whatever the file size. Each step runs on several
//! threads, so reading, hashing and writing overlap with the cipher: a binary encrypt is
//! `seal.rs` (a reading thread frames the file and computes the signature's hash and the MDC,
//! the step's thread only runs AES-CFB, a writing thread writes and hashes the output for the
//! step report); a decrypt of SEIPDv1 under AES is `open.rs` (a thread decrypts the encrypted
//! packet's body and checks its MDC, rPGP parses the plaintext on the step's thread); decrypt,
//! verify and an armored encrypt read ahead and write behind around rPGP (`pipe.rs`). The
//! threads are decoupled by about 16 MiB of chunks per pair, allocated once, so that on a busy
//! machine one descheduled thread does not stall the others.

mod decrypt;
mod encrypt;
mod keyring;
mod open;
mod pipe;
mod seal;

pub use decrypt::{Decrypt, Verify};
pub use encrypt::{Encrypt, Sign};
pub use keyring::{KeyIdentity, KeyRing};
pub(crate) use keyring::{parse_public_key, parse_secret_key};

use ferry_config::Template;
use pgp::composed::{SignedPublicKey, SignedSecretKey};

use crate::error::Blame;
use crate::file::check_name;
use crate::keys::KeySource;
use crate::{Context, File, ProcessError};

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
