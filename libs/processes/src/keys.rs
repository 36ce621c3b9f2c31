//! Where processes get keys: the [`KeySource`] trait. Processes never read a key store; the
//! cert-handler implements this trait over NATS request/reply, tests with [`MemoryKeys`].
//!
//! Keys travel as standard encodings (OpenPGP transferable keys, DER certificates, PKCS#8 private
//! keys), not as this crate's types, so the request/reply messages are plain bytes and the
//! cert-handler does not depend on how a process parses them.

use std::fmt;
use std::sync::Mutex;

/// Why a key could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The store holds no key matching the selector (a bad setting or a message addressed to
    /// someone else: retrying will not help).
    #[error("no {kind} matching {selector:?} in the node's key store")]
    NotFound { kind: &'static str, selector: String },
    /// More than one key matches a selector that must name one key.
    #[error("{selector:?} matches {count} {kind}s; name one by its fingerprint")]
    Ambiguous {
        kind: &'static str,
        selector: String,
        count: usize,
    },
    /// The stored key could not be used (corrupt, wrong passphrase, expired, revoked).
    #[error("{kind} {selector:?}: {reason}")]
    Unusable {
        kind: &'static str,
        selector: String,
        reason: String,
    },
    /// The key source did not answer (the cert-handler is down or slow): worth a retry.
    #[error("{0}")]
    Unavailable(String),
}

/// A passphrase or password; never printed, wiped from memory when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An OpenPGP secret key (a transferable secret key, binary or armored) and the passphrase that
/// unlocks it (empty when it is not protected).
#[derive(Clone, Debug)]
pub struct PgpSecretKey {
    pub key: Vec<u8>,
    pub passphrase: Secret,
}

/// A personal certificate: the certificate chain (leaf first, DER) and its private key (PKCS#8
/// DER), as the cert-handler's personal store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonalCert {
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
}

/// Keys and certificates for processes.
///
/// A PGP *selector* is what an operator writes in a process option: a fingerprint (40 or 64 hex
/// digits), a key id (16 hex digits, of the primary key or a subkey, optionally `0x`-prefixed),
/// or an e-mail address / user-id text contained in one of the key's user ids. The cert-handler
/// resolves it with [`crate::openpgp::KeyRing::find`] over its stored ring, so both sides match
/// the same way.
///
/// Processes run on blocking threads (see the crate docs), so the methods are blocking: an
/// implementation over async NATS calls `tokio::runtime::Handle::block_on`, which is allowed on a
/// `spawn_blocking` thread.
pub trait KeySource: Send + Sync {
    /// The public key (certificate) of a recipient or of a signer to verify, binary or armored.
    fn pgp_public_key(&self, selector: &str) -> Result<Vec<u8>, KeyError>;
    /// The secret key for a selector: to sign with, or to decrypt a message addressed to this
    /// key id.
    fn pgp_secret_key(&self, selector: &str) -> Result<PgpSecretKey, KeyError>;
    /// Every personal certificate with its key (Certs Backup).
    fn personal_certs(&self) -> Result<Vec<PersonalCert>, KeyError>;
    /// Every other people's certificate, DER (Certs Backup).
    fn other_certs(&self) -> Result<Vec<Vec<u8>>, KeyError>;
}

/// A key source in memory, for tests and tools. PGP selectors are matched by
/// [`crate::openpgp::KeyRing`], exactly as the cert-handler does.
#[derive(Default)]
pub struct MemoryKeys {
    pub public: Vec<Vec<u8>>,
    pub secret: Vec<PgpSecretKey>,
    pub personal: Vec<PersonalCert>,
    pub other: Vec<Vec<u8>>,
    /// When set, every call fails as [`KeyError::Unavailable`] with this text (a cert-handler that
    /// does not answer).
    pub unavailable: Option<String>,
    /// Selectors asked for, in order (tests assert a process asked for the right key).
    pub asked: Mutex<Vec<String>>,
}

impl MemoryKeys {
    fn check(&self, selector: &str) -> Result<(), KeyError> {
        self.asked
            .lock()
            .expect("no test panics while holding the log")
            .push(selector.to_string());
        match &self.unavailable {
            Some(why) => Err(KeyError::Unavailable(why.clone())),
            None => Ok(()),
        }
    }
}

impl KeySource for MemoryKeys {
    fn pgp_public_key(&self, selector: &str) -> Result<Vec<u8>, KeyError> {
        self.check(selector)?;
        let ring = crate::openpgp::KeyRing::parse_public(&self.public)?;
        let i = ring.find(selector, "PGP public key")?;
        Ok(self.public[i].clone())
    }

    fn pgp_secret_key(&self, selector: &str) -> Result<PgpSecretKey, KeyError> {
        self.check(selector)?;
        let keys: Vec<Vec<u8>> = self.secret.iter().map(|k| k.key.clone()).collect();
        let ring = crate::openpgp::KeyRing::parse_secret(&keys)?;
        let i = ring.find(selector, "PGP secret key")?;
        Ok(self.secret[i].clone())
    }

    fn personal_certs(&self) -> Result<Vec<PersonalCert>, KeyError> {
        self.check("personal certificates")?;
        Ok(self.personal.clone())
    }

    fn other_certs(&self) -> Result<Vec<Vec<u8>>, KeyError> {
        self.check("other people's certificates")?;
        Ok(self.other.clone())
    }
}

/// A key source with nothing in it, for pipelines whose processes use no keys.
pub struct NoKeys;

impl KeySource for NoKeys {
    fn pgp_public_key(&self, selector: &str) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::NotFound {
            kind: "PGP public key",
            selector: selector.into(),
        })
    }
    fn pgp_secret_key(&self, selector: &str) -> Result<PgpSecretKey, KeyError> {
        Err(KeyError::NotFound {
            kind: "PGP secret key",
            selector: selector.into(),
        })
    }
    fn personal_certs(&self) -> Result<Vec<PersonalCert>, KeyError> {
        Ok(Vec::new())
    }
    fn other_certs(&self) -> Result<Vec<Vec<u8>>, KeyError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(
            format!(
                "{:?}",
                PgpSecretKey {
                    key: vec![],
                    passphrase: s
                }
            ),
            "PgpSecretKey { key: [], passphrase: Secret(***) }"
        );
    }
}
