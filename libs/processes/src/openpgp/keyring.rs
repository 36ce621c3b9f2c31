//! [`KeyRing`]: how a selector (fingerprint, key id, user id text) names one key.

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
        KeyRing::parse(keys, "PGP public key", |k| {
            parse_public_key(k).map(|key| identity_of_public(&key))
        })
    }

    /// Reads secret keys (each binary or armored).
    pub fn parse_secret(keys: &[Vec<u8>]) -> Result<KeyRing, KeyError> {
        KeyRing::parse(keys, "PGP secret key", |k| {
            parse_secret_key(k).map(|key| identity_of_secret(&key))
        })
    }

    /// One identity per key; the first key that does not parse is the error, named by its index.
    fn parse(
        keys: &[Vec<u8>],
        kind: &'static str,
        identity: impl Fn(&[u8]) -> Result<KeyIdentity, String>,
    ) -> Result<KeyRing, KeyError> {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                identity(k).map_err(|reason| KeyError::Unusable {
                    kind,
                    selector: format!("#{i}"),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(KeyRing { keys })
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
