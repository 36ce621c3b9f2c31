//! The cert-handler's stores in JetStream KV: personal certificates (chain + private key),
//! other people's certificates, PGP public keys, PGP secret keys.
//!
//! Invariants:
//! - an entry's key is its identity: the SHA-256 fingerprint of the (leaf) certificate's DER,
//!   lowercase hex; the primary key's fingerprint, uppercase hex, for PGP;
//! - private material (a certificate's PKCS#8 key, a PGP secret key and its passphrase) is stored
//!   only sealed to the node's keymat, bound to `<bucket>/<key>`, so it neither reads in clear
//!   from the bucket nor opens when copied to another entry;
//! - every PGP secret key has its public key in the public ring (list and selectors use that);
//! - an import writes nothing unless every entry of the file could be read.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use anyhow::Context;
use async_nats::jetstream::kv;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::TryStreamExt;
use pgp::composed::{SignedPublicKey, SignedSecretKey};
use pgp::types::KeyDetails;
use serde::{Deserialize, Serialize};

use ferry_keymat::{KeymatStore, Zeroizing};
use ferry_processes::certs::{fingerprint, plan_restore, write_pfx};
use ferry_processes::keys::{PersonalCert, Secret};
use ferry_processes::openpgp::KeyRing;
use ferry_wire::keys::{CertImportReport, CertInfo, CertStore, KeyFailure, PgpKeyInfo, binding};
use ferry_wire::topology;

use crate::import::{CertFile, PgpFile};

#[derive(Serialize, Deserialize)]
struct PersonalRecord {
    /// Leaf first, base64 DER.
    chain: Vec<String>,
    /// `seal(keymat, "<bucket>/<fingerprint>", base64(PKCS#8))`.
    key: String,
}

#[derive(Serialize, Deserialize)]
struct OtherRecord {
    der: String,
}

#[derive(Serialize, Deserialize)]
struct PgpPublicRecord {
    /// Binary transferable public key, base64.
    key: String,
}

#[derive(Serialize, Deserialize)]
struct PgpSecretRecord {
    /// `seal(keymat, "<bucket>/<fingerprint>", base64(binary secret key))`.
    key: String,
    /// `seal(keymat, "<bucket>/<fingerprint>/passphrase", passphrase)`.
    #[serde(default)]
    passphrase: Option<String>,
}

/// A PGP secret key opened for a requester.
pub struct OpenedSecret {
    pub fingerprint: String,
    pub key: Zeroizing<Vec<u8>>,
    pub passphrase: Option<Zeroizing<String>>,
}

pub struct Stores {
    js: async_nats::jetstream::Context,
    personal: kv::Store,
    other: kv::Store,
    pgp_public: kv::Store,
    pgp_secret: kv::Store,
    keymat: Arc<KeymatStore>,
}

/// `fingerprint` as a store key: 64 hex digits, colons and spaces ignored, any case.
pub fn cert_key(fingerprint: &str) -> Result<String, String> {
    let hex: String = fingerprint
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(format!(
            "{:?} is not a SHA-256 fingerprint (64 hex digits, as `ferry certs list` shows)",
            fingerprint.chars().take(100).collect::<String>()
        ))
    }
}

fn b64(text: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    B64.decode(text).with_context(|| format!("{what}: not base64"))
}

/// What `ferry certs list` shows of a DER certificate.
pub fn cert_info(store: CertStore, chain: &[Vec<u8>]) -> anyhow::Result<CertInfo> {
    let leaf = chain.first().context("an entry without a certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).context("parse the certificate")?;
    let time = |t: x509_parser::time::ASN1Time| {
        chrono::DateTime::from_timestamp(t.timestamp(), 0).unwrap_or_default()
    };
    Ok(CertInfo {
        store,
        fingerprint: fingerprint(leaf),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: hex::encode_upper(cert.raw_serial()),
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        chain_len: chain.len(),
    })
}

/// What `ferry pgp list` shows of a key.
pub fn pgp_info(key: &SignedPublicKey, has_secret: bool) -> PgpKeyInfo {
    let created = key.primary_key.created_at().as_secs() as i64;
    let expires = key
        .details
        .users
        .iter()
        .flat_map(|u| u.signatures.iter())
        .chain(key.details.direct_signatures.iter())
        .filter_map(|s| s.key_expiration_time())
        .map(|d| d.as_secs())
        .find(|secs| *secs > 0)
        .and_then(|secs| chrono::DateTime::from_timestamp(created + secs as i64, 0));
    PgpKeyInfo {
        fingerprint: format!("{:X}", key.primary_key.fingerprint()),
        key_id: key.primary_key.legacy_key_id().to_string().to_ascii_uppercase(),
        user_ids: key
            .details
            .users
            .iter()
            .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
            .collect(),
        created: chrono::DateTime::from_timestamp(created, 0).unwrap_or_default(),
        expires,
        has_secret,
    }
}

fn to_bytes(key: &impl pgp::ser::Serialize) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    key.to_writer(&mut out).context("serialize the PGP key")?;
    Ok(out)
}

impl Stores {
    pub async fn open(
        js: &async_nats::jetstream::Context,
        keymat: Arc<KeymatStore>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        let open = |bucket| ferry_service::nats::open_kv(js, bucket, shutdown);
        Ok(Self {
            js: js.clone(),
            personal: open(topology::KV_CERTS_PERSONAL).await?,
            other: open(topology::KV_CERTS_OTHER).await?,
            pgp_public: open(topology::KV_PGP_PUBLIC).await?,
            pgp_secret: open(topology::KV_PGP_SECRET).await?,
            keymat,
        })
    }

    /// Refuse a change while this node's stores are mirrors of a primary's (a standby in mirror
    /// mode): `bucket` is the store the change writes.
    pub async fn writable(&self, bucket: &str) -> Result<(), String> {
        let what = match bucket {
            topology::KV_PGP_PUBLIC | topology::KV_PGP_SECRET => "PGP key ring store",
            _ => "certificate store",
        };
        ferry_service::standby::refuse_if_mirror(&self.js, bucket, what, "make this change").await
    }

    /// The node's JetStream, which the stores live in (a configuration bundle reads them whole).
    pub fn js(&self) -> &async_nats::jetstream::Context {
        &self.js
    }

    pub fn keymat_public(&self) -> anyhow::Result<ferry_keymat::PublicKey> {
        Ok(self.keymat.current().context("read the node's keymat")?.public())
    }

    /// Open a value sealed to the node's keymat.
    pub fn open_sealed(&self, binding: &str, sealed: &str) -> anyhow::Result<Zeroizing<String>> {
        let secret = ferry_config::Secret::try_from(sealed.to_string())
            .map_err(|e| anyhow::anyhow!("{binding}: not a sealed value ({e})"))?;
        Ok(self
            .keymat
            .current()
            .context("read the node's keymat")?
            .open(binding, &secret)?)
    }

    fn seal(&self, binding: &str, text: &str) -> anyhow::Result<String> {
        Ok(ferry_keymat::seal(&self.keymat_public()?, binding, text)?.into())
    }

    /// Every entry of a bucket, decoded, by key.
    async fn entries<T: for<'de> Deserialize<'de>>(store: &kv::Store) -> anyhow::Result<BTreeMap<String, T>> {
        let keys: Vec<String> = store
            .keys()
            .await
            .context("list the store")?
            .try_collect()
            .await
            .context("list the store")?;
        let mut out = BTreeMap::new();
        for key in keys {
            if let Some(value) = store.get(&key).await.context("read the store")? {
                out.insert(
                    key.clone(),
                    serde_json::from_slice(&value).with_context(|| format!("entry {key}"))?,
                );
            }
        }
        Ok(out)
    }

    async fn personal_records(&self) -> anyhow::Result<BTreeMap<String, PersonalRecord>> {
        Self::entries(&self.personal).await
    }

    /// Every other people's certificate, DER, by fingerprint.
    pub async fn other_certs(&self) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        Self::entries::<OtherRecord>(&self.other)
            .await?
            .into_iter()
            .map(|(k, r)| Ok((k, b64(&r.der, "certificate")?)))
            .collect()
    }

    /// Every personal certificate's chain (no keys), by fingerprint.
    pub async fn personal_chains(&self) -> anyhow::Result<BTreeMap<String, Vec<Vec<u8>>>> {
        self.personal_records()
            .await?
            .into_iter()
            .map(|(k, r)| {
                let chain = r
                    .chain
                    .iter()
                    .map(|d| b64(d, "certificate"))
                    .collect::<Result<_, _>>()?;
                Ok((k, chain))
            })
            .collect()
    }

    /// Every personal certificate with its private key, opened.
    pub async fn personal_certs(&self) -> anyhow::Result<Vec<(String, PersonalCert)>> {
        let mut out = Vec::new();
        for (fp, r) in self.personal_records().await? {
            let chain = r
                .chain
                .iter()
                .map(|d| b64(d, "certificate"))
                .collect::<Result<_, _>>()?;
            let key = self.open_sealed(&binding::stored(topology::KV_CERTS_PERSONAL, &fp), &r.key)?;
            let key_pkcs8 = b64(&key, "private key")?;
            out.push((fp, PersonalCert { chain, key_pkcs8 }));
        }
        Ok(out)
    }

    pub async fn fingerprints(&self) -> anyhow::Result<(HashSet<String>, HashSet<String>)> {
        let keys = |store: &kv::Store| {
            let store = store.clone();
            async move {
                let keys: HashSet<String> = store.keys().await?.try_collect().await?;
                anyhow::Ok(keys)
            }
        };
        Ok((keys(&self.personal).await?, keys(&self.other).await?))
    }

    pub async fn add_personal(&self, cert: &PersonalCert) -> anyhow::Result<String> {
        let leaf = cert
            .chain
            .first()
            .context("a personal certificate without a certificate")?;
        let fp = fingerprint(leaf);
        let key = Zeroizing::new(B64.encode(&cert.key_pkcs8));
        let record = PersonalRecord {
            chain: cert.chain.iter().map(|d| B64.encode(d)).collect(),
            key: self.seal(&binding::stored(topology::KV_CERTS_PERSONAL, &fp), &key)?,
        };
        self.personal
            .put(&fp, serde_json::to_vec(&record)?.into())
            .await
            .context("write the personal store")?;
        Ok(fp)
    }

    pub async fn add_other(&self, der: &[u8]) -> anyhow::Result<String> {
        let fp = fingerprint(der);
        let record = OtherRecord { der: B64.encode(der) };
        self.other
            .put(&fp, serde_json::to_vec(&record)?.into())
            .await
            .context("write the other people's store")?;
        Ok(fp)
    }

    /// Adds what `file` holds that the stores do not; nothing at all when an entry is unusable.
    pub async fn import_certs(&self, file: CertFile) -> Result<CertImportReport, String> {
        let (have_personal, have_other) = self.fingerprints().await.map_err(|e| format!("{e:#}"))?;
        let personal_chains: BTreeMap<String, Vec<Vec<u8>>> = file
            .personal
            .iter()
            .filter_map(|p| Some((fingerprint(p.chain.first()?), p.chain.clone())))
            .collect();
        let others: BTreeMap<String, Vec<u8>> =
            file.other.iter().map(|d| (fingerprint(d), d.clone())).collect();
        let (plan, outcome) = plan_restore(file.personal, file.other, &have_personal, &have_other);
        if let Some((fp, reason)) = outcome.failed.first() {
            return Err(format!("entry {fp}: {reason}; nothing was imported"));
        }
        let info = |fp: &String| -> Result<CertInfo, String> {
            let (store, chain) = match personal_chains.get(fp) {
                Some(chain) => (CertStore::Personal, chain.clone()),
                None => (
                    CertStore::Other,
                    vec![others.get(fp).cloned().unwrap_or_default()],
                ),
            };
            cert_info(store, &chain).map_err(|e| format!("{fp}: {e:#}"))
        };
        let report = CertImportReport {
            added: outcome.added.iter().map(info).collect::<Result<_, _>>()?,
            already_present: outcome
                .already_present
                .iter()
                .map(info)
                .collect::<Result<_, _>>()?,
        };
        for cert in &plan.personal {
            self.add_personal(cert).await.map_err(|e| format!("{e:#}"))?;
        }
        for der in &plan.other {
            self.add_other(der).await.map_err(|e| format!("{e:#}"))?;
        }
        Ok(report)
    }

    /// Both stores, personal first, each by fingerprint.
    pub async fn list_certs(&self) -> anyhow::Result<Vec<CertInfo>> {
        let mut out = Vec::new();
        for (fp, chain) in self.personal_chains().await? {
            out.push(cert_info(CertStore::Personal, &chain).with_context(|| format!("personal {fp}"))?);
        }
        for (fp, der) in self.other_certs().await? {
            out.push(cert_info(CertStore::Other, &[der]).with_context(|| format!("other {fp}"))?);
        }
        Ok(out)
    }

    /// The chain of a certificate in either store.
    pub async fn chain(&self, fp: &str) -> Result<(CertStore, Vec<Vec<u8>>), String> {
        let fp = cert_key(fp)?;
        let internal = |e: anyhow::Error| format!("{e:#}");
        if let Some(v) = self.personal.get(&fp).await.map_err(|e| e.to_string())? {
            let r: PersonalRecord = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
            let chain = r
                .chain
                .iter()
                .map(|d| b64(d, "certificate"))
                .collect::<Result<_, _>>()
                .map_err(internal)?;
            return Ok((CertStore::Personal, chain));
        }
        if let Some(v) = self.other.get(&fp).await.map_err(|e| e.to_string())? {
            let r: OtherRecord = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
            return Ok((
                CertStore::Other,
                vec![b64(&r.der, "certificate").map_err(internal)?],
            ));
        }
        Err(format!(
            "no certificate with fingerprint {fp} in the node's stores"
        ))
    }

    /// A PKCS#12 of one personal certificate with its key.
    pub async fn export_pfx(&self, fp: &str, password: &Secret) -> Result<Vec<u8>, String> {
        let fp = cert_key(fp)?;
        let Some(v) = self.personal.get(&fp).await.map_err(|e| e.to_string())? else {
            return Err(match self.other.get(&fp).await.map_err(|e| e.to_string())? {
                Some(_) => {
                    format!("{fp} is another party's certificate: the node holds no private key for it")
                }
                None => format!("no personal certificate with fingerprint {fp} in the node's stores"),
            });
        };
        let r: PersonalRecord = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
        let internal = |e: anyhow::Error| format!("{e:#}");
        let chain = r
            .chain
            .iter()
            .map(|d| b64(d, "certificate"))
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        let key = self
            .open_sealed(&binding::stored(topology::KV_CERTS_PERSONAL, &fp), &r.key)
            .map_err(internal)?;
        let key_pkcs8 = Zeroizing::new(b64(&key, "private key").map_err(internal)?);
        write_pfx(
            &[PersonalCert {
                chain,
                key_pkcs8: key_pkcs8.to_vec(),
            }],
            password,
        )
        .map_err(|e| e.to_string())
    }

    /// Removes a certificate from whichever store holds it.
    pub async fn remove_cert(&self, fp: &str) -> Result<CertInfo, String> {
        let (store, chain) = self.chain(fp).await?;
        let info = cert_info(store, &chain).map_err(|e| format!("{e:#}"))?;
        let bucket = match store {
            CertStore::Personal => &self.personal,
            CertStore::Other => &self.other,
        };
        bucket.purge(&info.fingerprint).await.map_err(|e| e.to_string())?;
        Ok(info)
    }

    /// Every PGP public key (binary), by fingerprint, and which have a secret key.
    pub async fn pgp_public(&self) -> anyhow::Result<(Vec<(String, Vec<u8>)>, HashSet<String>)> {
        let public = Self::entries::<PgpPublicRecord>(&self.pgp_public)
            .await?
            .into_iter()
            .map(|(k, r)| Ok((k, b64(&r.key, "PGP public key")?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let secret: HashSet<String> = self.pgp_secret.keys().await?.try_collect().await?;
        Ok((public, secret))
    }

    pub async fn list_pgp(&self) -> anyhow::Result<Vec<PgpKeyInfo>> {
        let (public, secret) = self.pgp_public().await?;
        public
            .iter()
            .map(|(fp, bytes)| {
                let key = parse_public(bytes).with_context(|| format!("stored PGP key {fp}"))?;
                Ok(pgp_info(&key, secret.contains(fp)))
            })
            .collect()
    }

    /// The one stored key `selector` names: among all public keys, or only those with a secret.
    pub async fn find_pgp(
        &self,
        selector: &str,
        secret_only: bool,
    ) -> Result<Result<(String, Vec<u8>), KeyFailure>, String> {
        let (public, secret) = self.pgp_public().await.map_err(|e| format!("{e:#}"))?;
        let candidates: Vec<(String, Vec<u8>)> = public
            .into_iter()
            .filter(|(fp, _)| !secret_only || secret.contains(fp))
            .collect();
        let kind = if secret_only {
            "PGP secret key"
        } else {
            "PGP public key"
        };
        let keys: Vec<Vec<u8>> = candidates.iter().map(|(_, k)| k.clone()).collect();
        let ring = KeyRing::parse_public(&keys).map_err(|e| e.to_string())?;
        Ok(match ring.find(selector, kind) {
            Ok(i) => Ok(candidates[i].clone()),
            Err(ferry_processes::KeyError::Ambiguous { count, .. }) => Err(KeyFailure::Ambiguous {
                kind: kind.into(),
                selector: selector.into(),
                count,
            }),
            Err(_) => Err(KeyFailure::NotFound {
                kind: kind.into(),
                selector: selector.into(),
            }),
        })
    }

    /// The secret key of fingerprint `fp`, opened.
    pub async fn open_secret(&self, fp: &str) -> anyhow::Result<OpenedSecret> {
        let value = self
            .pgp_secret
            .get(fp)
            .await?
            .with_context(|| format!("no secret key {fp}"))?;
        let r: PgpSecretRecord = serde_json::from_slice(&value)?;
        let at = binding::stored(topology::KV_PGP_SECRET, fp);
        let key = Zeroizing::new(b64(&self.open_sealed(&at, &r.key)?, "PGP secret key")?);
        let passphrase = match &r.passphrase {
            Some(sealed) => Some(self.open_sealed(&format!("{at}/passphrase"), sealed)?),
            None => None,
        };
        Ok(OpenedSecret {
            fingerprint: fp.to_string(),
            key,
            passphrase,
        })
    }

    /// Stores a key (a secret key also in the public ring). Returns it as listed, and whether it
    /// was new (an import of a secret key whose public key is stored adds the secret).
    pub async fn import_pgp(
        &self,
        file: PgpFile,
        passphrase: Option<&Secret>,
    ) -> anyhow::Result<(PgpKeyInfo, bool)> {
        let (public, secret) = match file {
            PgpFile::Secret(key) => (key.to_public_key(), Some(key)),
            PgpFile::Public(key) => (*key, None),
        };
        let fp = format!("{:X}", public.primary_key.fingerprint());
        let had_public = self.pgp_public.get(&fp).await?.is_some();
        let had_secret = self.pgp_secret.get(&fp).await?.is_some();
        let record = PgpPublicRecord {
            key: B64.encode(to_bytes(&public)?),
        };
        self.pgp_public
            .put(&fp, serde_json::to_vec(&record)?.into())
            .await?;
        let mut new = !had_public;
        if let Some(secret) = &secret {
            self.put_secret(&fp, secret, passphrase).await?;
            new |= !had_secret;
        }
        Ok((pgp_info(&public, secret.is_some() || had_secret), new))
    }

    async fn put_secret(
        &self,
        fp: &str,
        key: &SignedSecretKey,
        passphrase: Option<&Secret>,
    ) -> anyhow::Result<()> {
        let at = binding::stored(topology::KV_PGP_SECRET, fp);
        let bytes = Zeroizing::new(to_bytes(key)?);
        let text = Zeroizing::new(B64.encode(&*bytes));
        let record = PgpSecretRecord {
            key: self.seal(&at, &text)?,
            passphrase: match passphrase.filter(|p| !p.expose().is_empty()) {
                Some(p) => Some(self.seal(&format!("{at}/passphrase"), p.expose())?),
                None => None,
            },
        };
        self.pgp_secret
            .put(fp, serde_json::to_vec(&record)?.into())
            .await?;
        Ok(())
    }

    /// Removes the key `selector` names, public and secret.
    pub async fn remove_pgp(&self, selector: &str) -> Result<PgpKeyInfo, String> {
        let (fp, bytes) = self.find_pgp(selector, false).await?.map_err(|e| e.to_string())?;
        let key = parse_public(&bytes).map_err(|e| format!("{e:#}"))?;
        let had_secret = self
            .pgp_secret
            .get(&fp)
            .await
            .map_err(|e| e.to_string())?
            .is_some();
        self.pgp_secret.purge(&fp).await.map_err(|e| e.to_string())?;
        self.pgp_public.purge(&fp).await.map_err(|e| e.to_string())?;
        Ok(pgp_info(&key, had_secret))
    }

    pub async fn counts(&self) -> anyhow::Result<[usize; 4]> {
        let mut out = [0; 4];
        for (i, store) in [&self.personal, &self.other, &self.pgp_public, &self.pgp_secret]
            .into_iter()
            .enumerate()
        {
            let keys: Vec<String> = store.keys().await?.try_collect().await?;
            out[i] = keys.len();
        }
        Ok(out)
    }
}

pub fn parse_public(bytes: &[u8]) -> anyhow::Result<SignedPublicKey> {
    use pgp::composed::Deserializable;
    let (key, _) = SignedPublicKey::from_reader_single(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(key)
}

/// The armored form of a public key.
pub fn armored_public(bytes: &[u8]) -> Result<String, String> {
    parse_public(bytes)
        .map_err(|e| format!("{e:#}"))?
        .to_armored_string(Default::default())
        .map_err(|e| e.to_string())
}

/// The armored form of a secret key.
pub fn armored_secret(bytes: &[u8]) -> Result<Zeroizing<String>, String> {
    use pgp::composed::Deserializable;
    let (key, _) = SignedSecretKey::from_reader_single(bytes).map_err(|e| e.to_string())?;
    key.to_armored_string(Default::default())
        .map(Zeroizing::new)
        .map_err(|e| e.to_string())
}

/// Generates a key pair for `uid` (blocking: RSA generation takes seconds).
pub fn generate(uid: &str, kind: ferry_wire::keys::PgpKeyKind) -> anyhow::Result<SignedSecretKey> {
    use pgp::composed::{EncryptionCaps, KeyType, SecretKeyParamsBuilder, SubkeyParamsBuilder};
    use pgp::crypto::ecc_curve::ECCCurve;
    let (primary, encryption) = match kind {
        ferry_wire::keys::PgpKeyKind::Ed25519 => {
            (KeyType::Ed25519Legacy, KeyType::ECDH(ECCCurve::Curve25519Legacy))
        }
        ferry_wire::keys::PgpKeyKind::Rsa3072 => (KeyType::Rsa(3072), KeyType::Rsa(3072)),
    };
    let subkey = SubkeyParamsBuilder::default()
        .key_type(encryption)
        .can_sign(false)
        .can_encrypt(EncryptionCaps::All)
        .can_authenticate(false)
        .build()
        .map_err(|e| anyhow::anyhow!("encryption subkey: {e}"))?;
    let params = SecretKeyParamsBuilder::default()
        .key_type(primary)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(uid.into())
        .subkeys(vec![subkey])
        .build()
        .map_err(|e| anyhow::anyhow!("key parameters: {e}"))?;
    let key = params
        .generate(rand::thread_rng())
        .map_err(|e| anyhow::anyhow!("generate: {e}"))?;
    Ok(key)
}
