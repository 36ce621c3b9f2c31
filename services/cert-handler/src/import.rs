//! Reading what an operator imports: certificate files (PEM, DER, PKCS#7, PFX/PKCS#12) and PGP
//! keys (armored or binary, public or secret). Parsing is `ferry_processes`' (certs.rs, rPGP);
//! this module only decides which reader a file needs and turns its errors into operator text.

use ferry_processes::certs::{self, CertsError};
use ferry_processes::keys::{PersonalCert, Secret};
use pgp::composed::{Deserializable, PublicOrSecret, SignedPublicKey, SignedSecretKey};
use pgp::types::KeyDetails as _;

/// The certificates a file holds: personal ones (with their keys) and certificates alone.
#[derive(Debug, Default)]
pub struct CertFile {
    pub personal: Vec<PersonalCert>,
    pub other: Vec<Vec<u8>>,
}

/// Reads a certificate file. `other`: every certificate goes to the other people's store, and a
/// private key in the file is ignored. Errors are operator text naming what is wrong.
pub fn cert_file(bytes: &[u8], password: Option<&Secret>, other: bool) -> Result<CertFile, String> {
    let mut file = if looks_like_pem(bytes) {
        pem_file(bytes)?
    } else if x509_parser::parse_x509_certificate(bytes).is_ok_and(|(rest, _)| rest.is_empty()) {
        CertFile {
            personal: Vec::new(),
            other: vec![bytes.to_vec()],
        }
    } else if let Ok(found) = certs::read_p7b(bytes) {
        CertFile {
            personal: Vec::new(),
            other: found,
        }
    } else {
        let Some(password) = password else {
            return Err(
                "is not a PEM or DER certificate nor a PKCS#7 file; if it is a PFX (PKCS#12), \
                        give its password (--password-file or --password-env)"
                    .into(),
            );
        };
        let (personal, loose) = certs::read_pfx(bytes, password).map_err(|e| match e {
            CertsError::WrongPassword => "wrong password (the PFX's integrity check failed)".to_string(),
            CertsError::Unreadable { .. } => {
                "is not a readable PEM, DER, PKCS#7 or PFX (PKCS#12) file".to_string()
            }
            other => other.to_string(),
        })?;
        CertFile {
            personal,
            other: loose,
        }
    };
    if other {
        let chains = std::mem::take(&mut file.personal);
        file.other
            .splice(0..0, chains.into_iter().flat_map(|p| p.chain.into_iter()));
    }
    if file.personal.is_empty() && file.other.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(file)
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).take(4096).any(|w| w == b"-----BEGIN ")
}

/// A PEM file: certificates (leaf first), optionally one PKCS#8 private key (the leaf's), or a
/// PKCS#7 bundle.
fn pem_file(bytes: &[u8]) -> Result<CertFile, String> {
    let mut chain = Vec::new();
    let mut key = None;
    let mut from_p7b = Vec::new();
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(bytes).enumerate() {
        let block = block.map_err(|e| format!("PEM block #{}: {e}", i + 1))?;
        match block.label.as_str() {
            "CERTIFICATE" => {
                x509_parser::parse_x509_certificate(&block.contents)
                    .map_err(|e| format!("PEM certificate #{}: {e}", chain.len() + 1))?;
                chain.push(block.contents);
            }
            "PRIVATE KEY" => {
                if key.replace(block.contents).is_some() {
                    return Err(
                        "holds more than one private key; import one certificate with its key at a time"
                            .into(),
                    );
                }
            }
            "PKCS7" => from_p7b.extend(certs::read_p7b(&block.contents).map_err(|e| e.to_string())?),
            "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                return Err(format!(
                    "holds a {} (PKCS#1/SEC1); convert it to PKCS#8 first: openssl pkcs8 -topk8 -nocrypt",
                    block.label
                ));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err("holds an encrypted private key; import a PFX with its password instead".into());
            }
            other => return Err(format!("holds a PEM block of unsupported type {other:?}")),
        }
    }
    let mut file = CertFile {
        personal: Vec::new(),
        other: from_p7b,
    };
    match key {
        Some(key_pkcs8) if !chain.is_empty() => file.personal.push(PersonalCert { chain, key_pkcs8 }),
        Some(_) => return Err("holds a private key but no certificate".into()),
        None => file.other.extend(chain),
    }
    Ok(file)
}

/// A PGP key file: one transferable key, secret or public.
pub enum PgpFile {
    Secret(Box<SignedSecretKey>),
    Public(Box<SignedPublicKey>),
}

pub fn pgp_file(bytes: &[u8]) -> Result<PgpFile, String> {
    // A file of several keys (a whole `gpg --export`) is refused rather than half imported.
    if let Ok((keys, _)) = PublicOrSecret::from_reader_many(bytes) {
        let fingerprints: Vec<String> = keys
            .flatten()
            .take(11)
            .map(|k| match k {
                PublicOrSecret::Public(k) => format!("{:X}", k.primary_key.fingerprint()),
                PublicOrSecret::Secret(k) => format!("{:X}", k.primary_key.fingerprint()),
            })
            .collect();
        if fingerprints.len() > 1 {
            let more = if fingerprints.len() > 10 { ", …" } else { "" };
            return Err(format!(
                "holds {}{} keys ({}{more}): import one key per file (`gpg --export FINGERPRINT`); nothing was imported",
                if more.is_empty() { "" } else { "more than " },
                fingerprints.len().min(10),
                fingerprints[..fingerprints.len().min(10)].join(", ")
            ));
        }
    }
    if let Ok((key, _)) = SignedSecretKey::from_reader_single(bytes) {
        key.verify_bindings()
            .map_err(|e| format!("the secret key's self-signatures do not verify: {e}"))?;
        return Ok(PgpFile::Secret(Box::new(key)));
    }
    let (key, _) = SignedPublicKey::from_reader_single(bytes)
        .map_err(|e| format!("is not an OpenPGP key (armored or binary): {e}"))?;
    key.verify_bindings()
        .map_err(|e| format!("the public key's self-signatures do not verify: {e}"))?;
    Ok(PgpFile::Public(Box::new(key)))
}

/// Whether `passphrase` (none: the empty one) unlocks the secret key and every secret subkey:
/// a key stored with a wrong passphrase would fail every later step with an obscure error.
pub fn check_unlocks(key: &SignedSecretKey, passphrase: Option<&Secret>) -> Result<(), String> {
    let pw = pgp::types::Password::from(passphrase.map_or("", |p| p.expose()));
    let refused = |e: pgp::errors::Error| {
        format!(
            "the passphrase does not unlock the secret key ({e}): give the key's passphrase with \
             --password-file or --password-env; nothing was imported"
        )
    };
    key.primary_key
        .unlock(&pw, |_, _| Ok(()))
        .map_err(refused)?
        .map_err(refused)?;
    for sub in &key.secret_subkeys {
        sub.key
            .unlock(&pw, |_, _| Ok(()))
            .map_err(refused)?
            .map_err(refused)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_no_certificates_are_refused_with_the_reason() {
        let none = Secret::new("");
        for (bytes, password, expected) in [
            (&b"hello"[..], None, "if it is a PFX (PKCS#12), give its password"),
            (
                &b"hello"[..],
                Some(&none),
                "is not a readable PEM, DER, PKCS#7 or PFX",
            ),
            (
                &b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"[..],
                None,
                "openssl pkcs8 -topk8",
            ),
            (
                &b"-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n"[..],
                None,
                "unsupported type \"FOO\"",
            ),
        ] {
            let e = cert_file(bytes, password, false).expect_err("refused");
            assert!(e.contains(expected), "{e}");
        }
        assert!(pgp_file(b"not a key").is_err());
    }
}
