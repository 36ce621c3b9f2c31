//! The cert-handler's request/reply API: its certificate stores (personal certificates with
//! their private keys, other people's certificates) and PGP key rings.
//!
//! Endpoints live in three groups under `ferry.api.<node>.cert-handler`, so NATS permissions
//! (ADR 007, [`crate::permissions`]) are one wildcard per group:
//! - the root group ([`api`]): list and export public parts, the keymat's public half — any role;
//! - `admin.*` ([`api::admin`]): import, remove, generate, export private parts — the admin only;
//! - `keys.*` ([`api::keys`]): the key source processes use (`ferry_processes::KeySource` and
//!   `CertSink`) — the node's transfer and the admin only.
//!
//! Private material never crosses the bus in clear: what goes to the cert-handler (an imported
//! file, a PFX password, a restored private key) is sealed to the node's keymat
//! (`ferry_keymat::seal`, bindings in [`binding`]), and what comes back (an exported PFX, a
//! secret key for a process) is sealed to a one-off key the requester sends in `reply_to`.
//! Binary values are base64 (standard alphabet) before sealing and in replies.

use serde::{Deserialize, Serialize};

use crate::KeymatInfo;

/// Endpoint names (append to `subjects::api(node, "cert-handler", ..)`).
pub mod api {
    /// List both certificate stores ([`super::CertList`]).
    pub const CERTS_LIST: &str = "certs_list";
    /// A certificate (chain) as PEM, no private key ([`super::CertExportRequest`]).
    pub const CERTS_EXPORT: &str = "certs_export";
    /// List the PGP key rings ([`super::PgpList`]).
    pub const PGP_LIST: &str = "pgp_list";
    /// A PGP public key, armored ([`super::PgpSelector`]).
    pub const PGP_EXPORT: &str = "pgp_export";
    /// The public half of the node's keymat ([`crate::KeymatInfo`]) that requests seal to.
    pub const KEYMAT: &str = "keymat";

    /// The admin's endpoints: `admin.<name>`.
    pub mod admin {
        pub const GROUP: &str = "admin";
        pub const CERTS_IMPORT: &str = "certs_import";
        pub const CERTS_REMOVE: &str = "certs_remove";
        pub const CERTS_EXPORT_PFX: &str = "certs_export_pfx";
        pub const PGP_IMPORT: &str = "pgp_import";
        pub const PGP_REMOVE: &str = "pgp_remove";
        pub const PGP_EXPORT_SECRET: &str = "pgp_export_secret";
        pub const PGP_GENERATE: &str = "pgp_generate";
    }

    /// The key source of processes: `keys.<name>`.
    pub mod keys {
        pub const GROUP: &str = "keys";
        /// [`super::super::PgpSelector`] → [`super::super::KeyReply`]`<`[`super::super::PgpPublicKey`]`>`.
        pub const PGP_PUBLIC: &str = "pgp_public";
        /// [`super::super::PgpSecretRequest`] → `KeyReply<`[`super::super::PgpSecretKey`]`>`.
        pub const PGP_SECRET: &str = "pgp_secret";
        /// [`super::super::SealedReplyRequest`] → `KeyReply<Vec<`[`super::super::SealedPersonalCert`]`>>`.
        pub const PERSONAL: &str = "personal";
        /// `()` → `KeyReply<Vec<String>>` (base64 DER).
        pub const OTHER: &str = "other";
        /// `()` → `KeyReply<`[`super::super::StoreFingerprints`]`>`.
        pub const FINGERPRINTS: &str = "fingerprints";
        /// [`super::super::SealedPersonalCert`] (key sealed to the node) → `KeyReply<String>`.
        pub const ADD_PERSONAL: &str = "add_personal";
        /// `String` (base64 DER) → `KeyReply<String>` (its fingerprint).
        pub const ADD_OTHER: &str = "add_other";
        /// `()` → `KeyReply<Vec<`[`super::super::StorePart`]`>>`: the four stores as stored
        /// (private material sealed to the keymat), for a configuration bundle.
        pub const STORES: &str = "stores";
    }

    /// `group.endpoint`, the endpoint part of a subject.
    pub fn in_group(group: &str, endpoint: &str) -> String {
        format!("{group}.{endpoint}")
    }
}

/// Bindings (associated data) of values sealed for the cert-handler, so a sealed value cannot
/// be replayed as another field.
pub mod binding {
    /// An imported file ([`super::ImportRequest::file`]).
    pub const IMPORT_FILE: &str = "cert-handler/import/file";
    /// The password of an imported PFX, or the passphrase of an imported PGP secret key.
    pub const IMPORT_PASSWORD: &str = "cert-handler/import/password";
    /// The password an exported PFX is protected by.
    pub const EXPORT_PASSWORD: &str = "cert-handler/export/password";
    /// A private key restored into the personal store ([`super::SealedPersonalCert::key`]).
    pub const RESTORE_KEY: &str = "cert-handler/restore/key";

    /// A reply sealed to a requester: `cert-handler/reply/<what>`.
    pub fn reply(what: &str) -> String {
        format!("cert-handler/reply/{what}")
    }

    /// A value at rest in a store: `<bucket>/<key>`, so it does not open under another entry.
    pub fn stored(bucket: &str, key: &str) -> String {
        format!("{bucket}/{key}")
    }
}

/// Largest file `ferry certs import` / `ferry pgp import` sends (a certificate store is small;
/// sealed and base64-encoded twice it still fits NATS's default 1 MiB payload).
pub const MAX_IMPORT_BYTES: usize = 384 * 1024;

/// Which certificate store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertStore {
    /// Certificates with their private keys (client certificates of this node).
    Personal,
    /// Other people's certificates (partners, CAs), no keys.
    Other,
}

impl CertStore {
    pub fn name(self) -> &'static str {
        match self {
            CertStore::Personal => "personal",
            CertStore::Other => "other",
        }
    }
}

/// One stored certificate as `ferry certs list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub store: CertStore,
    /// SHA-256 of the (leaf) certificate's DER, lowercase hex: the entry's key.
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
    /// Certificates in the chain (1 for a lone certificate).
    pub chain_len: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertList {
    pub certificates: Vec<CertInfo>,
}

/// Import a file into the stores (admin). The file (PEM, DER, PKCS#7 or PFX; PGP key for
/// `pgp_import`) and its password are sealed to the node's keymat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    /// `ferry_keymat::seal(node, binding::IMPORT_FILE, base64(file))`.
    pub file: String,
    /// `seal(node, binding::IMPORT_PASSWORD, password)`: a PFX's password, a PGP secret key's
    /// passphrase.
    #[serde(default)]
    pub password: Option<String>,
    /// Certificates go to the other people's store even when the file has a private key.
    #[serde(default)]
    pub other: bool,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertImportReport {
    pub added: Vec<CertInfo>,
    pub already_present: Vec<CertInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertExportRequest {
    pub fingerprint: String,
}

/// A certificate's chain as PEM text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertExport {
    pub pem: String,
}

/// Export a personal certificate with its key as PKCS#12 (admin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PfxExportRequest {
    pub fingerprint: String,
    /// `seal(node, binding::EXPORT_PASSWORD, password)`.
    pub password: String,
    pub reply_to: KeymatInfo,
}

/// A value sealed to the requester's `reply_to` under `binding::reply(what)`; `what` is
/// `pfx/<fingerprint>` or `pgp-armored/<fingerprint>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedReply {
    pub what: String,
    pub sealed: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRemoveRequest {
    pub fingerprint: String,
}

/// One PGP key as `ferry pgp list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgpKeyInfo {
    /// The primary key's fingerprint, uppercase hex: the entry's key.
    pub fingerprint: String,
    /// The primary key's key id (16 hex digits).
    pub key_id: String,
    pub user_ids: Vec<String>,
    pub created: chrono::DateTime<chrono::Utc>,
    /// When the key expires (from its self-signature), if ever.
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
    pub has_secret: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgpList {
    pub keys: Vec<PgpKeyInfo>,
}

/// A key named by a selector: a fingerprint, a key id, or text of a user id
/// (`ferry_processes::openpgp::KeyRing` matches it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgpSelector {
    pub selector: String,
}

/// An armored PGP key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgpArmored {
    pub armored: String,
}

/// A secret key for `selector`, sealed to `reply_to`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgpSecretRequest {
    pub selector: String,
    pub reply_to: KeymatInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PgpKeyKind {
    /// Ed25519 signing (primary) key with a Curve25519 encryption subkey (GnuPG's default).
    #[default]
    Ed25519,
    /// RSA-3072 primary key with an RSA-3072 encryption subkey.
    Rsa3072,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgpGenerateRequest {
    pub name: String,
    pub email: String,
    #[serde(default)]
    pub kind: PgpKeyKind,
}

/// Why the key source could not hand out a key (mirrors `ferry_processes::KeyError`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum KeyFailure {
    #[error("no {kind} matching {selector:?} in the node's key store")]
    NotFound { kind: String, selector: String },
    #[error("{selector:?} matches {count} {kind}s; name one by its fingerprint")]
    Ambiguous {
        kind: String,
        selector: String,
        count: usize,
    },
    #[error("{kind} {selector:?}: {reason}")]
    Unusable {
        kind: String,
        selector: String,
        reason: String,
    },
}

/// The reply of a key-source endpoint: the key, or why not (so a caller can tell "not in the
/// ring" from "the cert-handler did not answer").
pub type KeyReply<T> = Result<T, KeyFailure>;

/// A PGP public key for a process: the transferable public key, base64 of its binary form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgpPublicKey {
    pub key: String,
}

/// A PGP secret key for a process, sealed to the requester.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgpSecretKey {
    /// `seal(reply_to, binding::reply("pgp-secret/<fingerprint>"), base64(binary key))`.
    pub key: String,
    /// `seal(reply_to, binding::reply("pgp-passphrase/<fingerprint>"), passphrase)`; absent when
    /// the key is not protected.
    pub passphrase: Option<String>,
    pub fingerprint: String,
}

/// A request whose reply is sealed to `reply_to`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedReplyRequest {
    pub reply_to: KeymatInfo,
}

/// A personal certificate on the bus: chain (leaf first) as base64 DER, and its PKCS#8 private
/// key sealed — to the requester (`binding::reply("personal/<fingerprint>")`) in a reply, to
/// the node (`binding::RESTORE_KEY`) when restored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedPersonalCert {
    pub chain: Vec<String>,
    pub key: String,
}

/// Fingerprints of both certificate stores (Certs Restore compares a backup with them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreFingerprints {
    pub personal: Vec<String>,
    pub other: Vec<String>,
}

/// The cert-handler's `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertHandlerStatus {
    pub node: String,
    pub personal: usize,
    pub other: usize,
    pub pgp_public: usize,
    pub pgp_secret: usize,
}

/// One of the cert-handler's stores as stored, for a configuration bundle
/// ([`crate::bundle::Part`]): values base64, private material still sealed to the keymat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorePart {
    pub bucket: String,
    /// The bucket's last sequence when read.
    pub revision: u64,
    /// Key → value, base64.
    pub entries: std::collections::BTreeMap<String, String>,
}

impl From<&crate::bundle::Part> for StorePart {
    fn from(part: &crate::bundle::Part) -> Self {
        use base64::Engine as _;
        StorePart {
            bucket: part.bucket.clone(),
            revision: part.revision,
            entries: part
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), base64::engine::general_purpose::STANDARD.encode(v)))
                .collect(),
        }
    }
}

impl TryFrom<StorePart> for crate::bundle::Part {
    type Error = String;
    fn try_from(part: StorePart) -> Result<Self, String> {
        use base64::Engine as _;
        let mut entries = std::collections::BTreeMap::new();
        for (k, v) in part.entries {
            let value = base64::engine::general_purpose::STANDARD
                .decode(&v)
                .map_err(|e| format!("store {} key {k:?}: not base64: {e}", part.bucket))?;
            entries.insert(k, value);
        }
        Ok(crate::bundle::Part {
            bucket: part.bucket,
            revision: part.revision,
            entries,
        })
    }
}
