//! Certs Backup and Certs Restore, the reference product's two built-in scripts its hot-standby
//! procedure rests on.
//!
//! - **Certs Backup** ([`CertsBackup`], PER-TASK, needs no source): writes
//!   [`PERSONAL_FILE`] — a PKCS#12 of every personal certificate with its private key and chain,
//!   protected by the task's password — and [`OTHER_FILE`] — a certificate-only PKCS#7
//!   (SignedData without signers, DER) of every other people's certificate. Both come from the
//!   [`KeySource`] (the cert-handler) and go to the task's destinations like any collected file.
//! - **Certs Restore** ([`CertsRestore`], PER-FILE, over a [`CertSink`] the cert-handler
//!   implements) is made of pure functions usable on their own: [`read_pfx`] / [`read_p7b`]
//!   read a file taken from the task's source, [`plan_restore`] compares it with what the stores
//!   hold (by SHA-256 fingerprint of the leaf certificate) and says what to add, with a
//!   [`RestoreReport`] (added / already present / failed). Restoring twice adds nothing the
//!   second time.
//!
//! The files are small (a store of certificates), so they are built in memory.

use std::collections::HashSet;
use std::io::Write;

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::{Decode, Encode};
use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, Pkcs12ImportPolicy, PrivateKey, PrivateKeyChain};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Blame;
use crate::keys::{KeySource, PersonalCert, Secret};
use crate::{Context, File, OutputFile, Process, ProcessError, StepOutput};

/// Default name of the personal certificates' backup.
pub const PERSONAL_FILE: &str = "CertsPersonal.pfx";
/// Default name of the other people's certificates' backup.
pub const OTHER_FILE: &str = "CertsOtherPeople.p7b";

/// Why a backup file could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertsError {
    #[error("wrong password (the PFX's integrity check failed)")]
    WrongPassword,
    #[error("is not a readable {what}: {reason}")]
    Unreadable { what: &'static str, reason: String },
    #[error("{what} {name:?} cannot be used: {reason}")]
    BadEntry {
        what: &'static str,
        name: String,
        reason: String,
    },
}

/// SHA-256 of a DER certificate, lowercase hex: how stores and reports name a certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A PKCS#12 file of these personal certificates, protected by `password` (AES-256-CBC with
/// PBKDF2 and an HMAC-SHA-256 MAC, as OpenSSL 3 writes by default).
pub fn write_pfx(personal: &[PersonalCert], password: &Secret) -> Result<Vec<u8>, CertsError> {
    let mut ks = KeyStore::new();
    for (i, p) in personal.iter().enumerate() {
        let leaf = p.chain.first().ok_or_else(|| CertsError::BadEntry {
            what: "personal certificate",
            name: format!("#{i}"),
            reason: "has no certificate".into(),
        })?;
        let name = fingerprint(leaf);
        let bad = |reason: String| CertsError::BadEntry {
            what: "personal certificate",
            name: name.clone(),
            reason,
        };
        let key = PrivateKey::from_der(&p.key_pkcs8).map_err(|e| bad(format!("private key: {e}")))?;
        let certs = p
            .chain
            .iter()
            .map(|d| Certificate::from_der(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("certificate: {e}")))?;
        let local_key_id = Sha256::digest(leaf)[..20].to_vec();
        let chain = PrivateKeyChain::new(local_key_id, key, certs);
        ks.add_entry(&name, KeyStoreEntry::PrivateKeyChain(chain));
    }
    ks.writer(password.expose())
        .write()
        .map_err(|e| CertsError::Unreadable {
            what: "set of personal certificates",
            reason: e.to_string(),
        })
}

/// The personal certificates (with keys) in a PKCS#12 file, and any certificates in it that
/// belong to no key (CA certificates shipped alongside).
pub fn read_pfx(bytes: &[u8], password: &Secret) -> Result<(Vec<PersonalCert>, Vec<Vec<u8>>), CertsError> {
    let ks = KeyStore::from_pkcs12(bytes, password.expose(), Pkcs12ImportPolicy::Relaxed).map_err(
        |e| match e {
            p12_keystore::error::Error::MacError(_) => CertsError::WrongPassword,
            other => CertsError::Unreadable {
                what: "PFX (PKCS#12) file",
                reason: other.to_string(),
            },
        },
    )?;
    let mut personal = Vec::new();
    let mut loose = Vec::new();
    for (_, entry) in ks.entries() {
        match entry {
            KeyStoreEntry::PrivateKeyChain(c) if !c.certs().is_empty() => personal.push(PersonalCert {
                chain: c.certs().iter().map(|c| c.as_der().to_vec()).collect(),
                key_pkcs8: c.key().as_der().to_vec(),
            }),
            KeyStoreEntry::PrivateKeyChain(_) => {}
            KeyStoreEntry::Certificate(c) => loose.push(c.as_der().to_vec()),
            KeyStoreEntry::Secret(_) => {}
        }
    }
    Ok((personal, loose))
}

/// A certificate-only PKCS#7 (`.p7b`, DER) of these certificates.
pub fn write_p7b(certs: &[Vec<u8>]) -> Result<Vec<u8>, CertsError> {
    let parsed = certs
        .iter()
        .map(|d| {
            x509_cert::Certificate::from_der(d).map_err(|e| CertsError::BadEntry {
                what: "certificate",
                name: fingerprint(d),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let unreadable = |e: der::Error| CertsError::Unreadable {
        what: "set of certificates",
        reason: e.to_string(),
    };
    ContentInfo::try_from(parsed)
        .map_err(unreadable)?
        .to_der()
        .map_err(unreadable)
}

/// The certificates in a PKCS#7 file, DER or PEM (`-----BEGIN PKCS7-----`).
pub fn read_p7b(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CertsError> {
    let unreadable = |reason: String| CertsError::Unreadable {
        what: "PKCS#7 (.p7b) file",
        reason,
    };
    let der_bytes;
    let der = if bytes.starts_with(b"-----BEGIN") {
        let (_label, d) = der::pem::decode_vec(bytes).map_err(|e| unreadable(e.to_string()))?;
        der_bytes = d;
        &der_bytes[..]
    } else {
        bytes
    };
    let ci = ContentInfo::from_der(der).map_err(|e| unreadable(e.to_string()))?;
    if ci.content_type != const_oid_signed_data() {
        return Err(unreadable(format!(
            "content type {} is not SignedData",
            ci.content_type
        )));
    }
    let sd: SignedData = ci
        .content
        .decode_as()
        .map_err(|e: der::Error| unreadable(e.to_string()))?;
    let mut out = Vec::new();
    for choice in sd.certificates.map(|c| c.0.into_vec()).unwrap_or_default() {
        if let CertificateChoices::Certificate(c) = choice {
            out.push(c.to_der().map_err(|e| unreadable(e.to_string()))?);
        }
    }
    Ok(out)
}

fn const_oid_signed_data() -> der::oid::ObjectIdentifier {
    // id-signedData, RFC 5652.
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2")
}

/// What a restore did, entry by entry (certificates named by subject-free fingerprints, so the
/// report holds no personal data beyond what `ferry certs list` shows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub added: Vec<String>,
    pub already_present: Vec<String>,
    /// Fingerprint (or position) and reason.
    pub failed: Vec<(String, String)>,
}

/// What the cert-handler should add to its stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestorePlan {
    pub personal: Vec<PersonalCert>,
    pub other: Vec<Vec<u8>>,
}

/// Compares what a backup holds with the fingerprints already in the personal and the other
/// people's stores: new entries are to be added, known ones reported as already present, and a
/// personal entry whose key does not parse, or a certificate that is not X.509, as failed.
pub fn plan_restore(
    personal: Vec<PersonalCert>,
    other: Vec<Vec<u8>>,
    have_personal: &HashSet<String>,
    have_other: &HashSet<String>,
) -> (RestorePlan, RestoreReport) {
    let mut plan = RestorePlan::default();
    let mut report = RestoreReport::default();
    let mut seen = HashSet::new();
    for (i, p) in personal.into_iter().enumerate() {
        let Some(leaf) = p.chain.first() else {
            report
                .failed
                .push((format!("personal #{i}"), "has no certificate".into()));
            continue;
        };
        let fp = fingerprint(leaf);
        if let Err(e) = x509_cert::Certificate::from_der(leaf) {
            report.failed.push((fp, format!("certificate: {e}")));
            continue;
        }
        if let Err(e) = PrivateKey::from_der(&p.key_pkcs8) {
            report.failed.push((fp, format!("private key: {e}")));
            continue;
        }
        if have_personal.contains(&fp) || !seen.insert(fp.clone()) {
            report.already_present.push(fp);
        } else {
            report.added.push(fp);
            plan.personal.push(p);
        }
    }
    for der in other {
        let fp = fingerprint(&der);
        if let Err(e) = x509_cert::Certificate::from_der(&der) {
            report.failed.push((fp, format!("certificate: {e}")));
            continue;
        }
        if have_other.contains(&fp) || !seen.insert(fp.clone()) {
            report.already_present.push(fp);
        } else {
            report.added.push(fp);
            plan.other.push(der);
        }
    }
    (plan, report)
}

/// Certs Backup as a PER-TASK process: ignores its inputs (a Certs Backup task usually has no
/// source) and hands on the two backup files.
#[derive(Debug, Clone)]
pub struct CertsBackup {
    pub password: Secret,
    pub personal_name: String,
    pub other_name: String,
}

impl CertsBackup {
    pub fn new(password: Secret) -> Result<Self, String> {
        if password.expose().is_empty() {
            return Err("certs-backup: the password is empty; a PFX of private keys needs one".into());
        }
        Ok(Self {
            password,
            personal_name: PERSONAL_FILE.into(),
            other_name: OTHER_FILE.into(),
        })
    }

    fn write(
        &self,
        name: &str,
        bytes: &[u8],
        ctx: &Context<'_>,
        blame: &Blame,
    ) -> Result<File, ProcessError> {
        let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the backup"))?;
        out.write_all(bytes).map_err(blame.io("write the backup"))?;
        out.finish(name).map_err(blame.io("finish the backup"))
    }
}

impl Process for CertsBackup {
    fn name(&self) -> &'static str {
        "certs-backup"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let keys: &dyn KeySource = ctx.keys;
        let blame = Blame::new(self.name(), self.personal_name.clone());
        let personal = keys.personal_certs().map_err(|e| blame.key(e))?;
        let pfx = write_pfx(&personal, &self.password).map_err(|e| blame.bad_input(e))?;
        let pfx = self.write(&self.personal_name, &pfx, ctx, &blame)?;
        let blame = Blame::new(self.name(), self.other_name.clone());
        let other = keys.other_certs().map_err(|e| blame.key(e))?;
        let p7b = write_p7b(&other).map_err(|e| blame.bad_input(e))?;
        let p7b = self.write(&self.other_name, &p7b, ctx, &blame)?;
        // Files collected by the task (if any) go on to the destinations beside the backup.
        let mut files = inputs;
        files.push(pfx);
        files.push(p7b);
        Ok(StepOutput {
            files,
            log: format!(
                "{} personal certificates, {} other certificates\n",
                personal.len(),
                other.len()
            ),
        })
    }
}

/// Where Certs Restore puts what it restores: the cert-handler's stores (over its own API), or
/// [`MemoryCertStore`] in tests.
pub trait CertSink: Send + Sync {
    /// [`fingerprint`]s of the leaf certificates in the personal store.
    fn personal_fingerprints(&self) -> Result<HashSet<String>, crate::KeyError>;
    /// [`fingerprint`]s of the other people's certificates.
    fn other_fingerprints(&self) -> Result<HashSet<String>, crate::KeyError>;
    fn add_personal(&self, cert: PersonalCert) -> Result<(), crate::KeyError>;
    fn add_other(&self, der: Vec<u8>) -> Result<(), crate::KeyError>;
}

/// Certificate stores in memory.
#[derive(Default)]
pub struct MemoryCertStore {
    pub personal: std::sync::Mutex<Vec<PersonalCert>>,
    pub other: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl CertSink for MemoryCertStore {
    fn personal_fingerprints(&self) -> Result<HashSet<String>, crate::KeyError> {
        let p = self.personal.lock().expect("not poisoned");
        Ok(p.iter()
            .filter_map(|c| c.chain.first())
            .map(|l| fingerprint(l))
            .collect())
    }
    fn other_fingerprints(&self) -> Result<HashSet<String>, crate::KeyError> {
        Ok(self
            .other
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|d| fingerprint(d))
            .collect())
    }
    fn add_personal(&self, cert: PersonalCert) -> Result<(), crate::KeyError> {
        self.personal.lock().expect("not poisoned").push(cert);
        Ok(())
    }
    fn add_other(&self, der: Vec<u8>) -> Result<(), crate::KeyError> {
        self.other.lock().expect("not poisoned").push(der);
        Ok(())
    }
}

/// Certs Restore as a PER-FILE process: restores each `.pfx` / `.p12` (with the task's password)
/// and `.p7b` / `.p7c` file into the stores, idempotently, and passes the file on unchanged. The
/// step log lists what was added, already present or failed; a file that cannot be read (wrong
/// password, corrupt) or has an entry that failed fails the file, and nothing of it is added
/// when it cannot be read.
pub struct CertsRestore {
    pub password: Secret,
    pub sink: std::sync::Arc<dyn CertSink>,
}

impl std::fmt::Debug for CertsRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertsRestore")
    }
}

impl Process for CertsRestore {
    fn name(&self) -> &'static str {
        "certs-restore"
    }

    fn run(&self, inputs: Vec<File>, _ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let mut log = String::new();
        for input in &inputs {
            let blame = Blame::new(self.name(), input.name());
            let lower = input.name().to_ascii_lowercase();
            // Backups are small; reading one whole is bounded by a store's size.
            let bytes = std::fs::read(input.path()).map_err(blame.io("read the backup"))?;
            let (personal, other) = if lower.ends_with(".pfx") || lower.ends_with(".p12") {
                read_pfx(&bytes, &self.password).map_err(|e| blame.bad_input(e))?
            } else if lower.ends_with(".p7b") || lower.ends_with(".p7c") {
                (Vec::new(), read_p7b(&bytes).map_err(|e| blame.bad_input(e))?)
            } else {
                return Err(blame.bad_input("is neither a .pfx/.p12 nor a .p7b/.p7c file"));
            };
            let have_personal = self.sink.personal_fingerprints().map_err(|e| blame.key(e))?;
            let have_other = self.sink.other_fingerprints().map_err(|e| blame.key(e))?;
            let (plan, mut report) = plan_restore(personal, other, &have_personal, &have_other);
            for p in plan.personal {
                let fp = fingerprint(&p.chain[0]);
                if let Err(e) = self.sink.add_personal(p) {
                    report.added.retain(|a| a != &fp);
                    report.failed.push((fp, e.to_string()));
                }
            }
            for d in plan.other {
                let fp = fingerprint(&d);
                if let Err(e) = self.sink.add_other(d) {
                    report.added.retain(|a| a != &fp);
                    report.failed.push((fp, e.to_string()));
                }
            }
            log.push_str(&format!(
                "{}: added {}, already present {}, failed {}\n",
                input.name(),
                report.added.len(),
                report.already_present.len(),
                report.failed.len()
            ));
            for (what, list) in [
                ("added", &report.added),
                ("already present", &report.already_present),
            ] {
                for fp in list {
                    log.push_str(&format!("  {what} {fp}\n"));
                }
            }
            if !report.failed.is_empty() {
                let failed: Vec<String> = report
                    .failed
                    .iter()
                    .map(|(fp, why)| format!("{fp}: {why}"))
                    .collect();
                return Err(blame.bad_input(format!(
                    "{} entries could not be restored ({}); added {}, already present {}",
                    report.failed.len(),
                    failed.join("; "),
                    report.added.len(),
                    report.already_present.len()
                )));
            }
        }
        Ok(StepOutput { files: inputs, log })
    }
}
