//! The cert-handler's endpoints ([`ferry_wire::keys`]): one function per endpoint over
//! [`Stores`]. Who may call which group is NATS's business (`ferry_wire::permissions`); this
//! side refuses what no caller should send: bad JSON (`serve_json`), oversized files, values
//! that are not sealed to this node, unknown fingerprints and selectors.

use std::sync::Arc;

use async_nats::service::Group;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use ferry_keymat::Zeroizing;
use ferry_processes::keys::{PersonalCert, Secret};
use ferry_service::api::serve_json;
use ferry_wire::keys::{
    self as wire, CertExport, CertExportRequest, CertHandlerStatus, CertImportReport, CertInfo, CertList,
    CertRemoveRequest, ImportRequest, KeyFailure, KeyReply, MAX_IMPORT_BYTES, PfxExportRequest, PgpArmored,
    PgpGenerateRequest, PgpKeyInfo, PgpList, PgpSecretRequest, PgpSelector, SealedPersonalCert, SealedReply,
    SealedReplyRequest, StoreFingerprints, api, binding,
};
use ferry_wire::{KeymatInfo, topology};

use crate::store::{self, Stores};
use crate::{import, pem};

/// What every endpoint shares.
pub struct State {
    pub node: String,
    pub stores: Stores,
    /// Told after every change of the certificate stores (the expiry metric follows).
    pub changed: tokio::sync::Notify,
}

type Shared = Arc<State>;

/// Longest PGP selector, user id part or name accepted.
const MAX_TEXT: usize = 1024;

fn internal(e: anyhow::Error) -> String {
    format!("{e:#}")
}

/// Serve every endpoint until `shutdown`.
pub async fn serve(
    group: &Group,
    state: Shared,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let admin = group.group(api::admin::GROUP);
    let keys = group.group(api::keys::GROUP);
    let mut handles = Vec::new();
    macro_rules! endpoint {
        ($group:expr, $name:expr, $f:path) => {{
            let state = state.clone();
            handles.push(
                serve_json(&$group, $name, shutdown.child_token(), move |req| {
                    let state = state.clone();
                    async move { $f(&state, req).await }
                })
                .await?,
            );
        }};
    }
    endpoint!(group, ferry_wire::subjects::api::STATUS, status);
    endpoint!(group, api::KEYMAT, keymat);
    endpoint!(group, api::CERTS_LIST, certs_list);
    endpoint!(group, api::CERTS_EXPORT, certs_export);
    endpoint!(group, api::PGP_LIST, pgp_list);
    endpoint!(group, api::PGP_EXPORT, pgp_export);
    endpoint!(admin, api::admin::CERTS_IMPORT, certs_import);
    endpoint!(admin, api::admin::CERTS_REMOVE, certs_remove);
    endpoint!(admin, api::admin::CERTS_EXPORT_PFX, certs_export_pfx);
    endpoint!(admin, api::admin::PGP_IMPORT, pgp_import);
    endpoint!(admin, api::admin::PGP_REMOVE, pgp_remove);
    endpoint!(admin, api::admin::PGP_EXPORT_SECRET, pgp_export_secret);
    endpoint!(admin, api::admin::PGP_GENERATE, pgp_generate);
    endpoint!(keys, api::keys::PGP_PUBLIC, key_pgp_public);
    endpoint!(keys, api::keys::PGP_SECRET, key_pgp_secret);
    endpoint!(keys, api::keys::PERSONAL, key_personal);
    endpoint!(keys, api::keys::OTHER, key_other);
    endpoint!(keys, api::keys::FINGERPRINTS, key_fingerprints);
    endpoint!(keys, api::keys::ADD_PERSONAL, key_add_personal);
    endpoint!(keys, api::keys::ADD_OTHER, key_add_other);
    endpoint!(keys, api::keys::STORES, key_stores);
    Ok(handles)
}

async fn status(s: &State, (): ()) -> Result<CertHandlerStatus, String> {
    let [personal, other, pgp_public, pgp_secret] = s.stores.counts().await.map_err(internal)?;
    Ok(CertHandlerStatus {
        node: s.node.clone(),
        personal,
        other,
        pgp_public,
        pgp_secret,
    })
}

async fn keymat(s: &State, (): ()) -> Result<KeymatInfo, String> {
    let public = s.stores.keymat_public().map_err(internal)?;
    Ok(KeymatInfo {
        key_id: public.key_id,
        public_key: public.public_key,
    })
}

async fn certs_list(s: &State, (): ()) -> Result<CertList, String> {
    Ok(CertList {
        certificates: s.stores.list_certs().await.map_err(internal)?,
    })
}

async fn certs_export(s: &State, r: CertExportRequest) -> Result<CertExport, String> {
    let (_, chain) = s.stores.chain(&r.fingerprint).await?;
    Ok(CertExport {
        pem: chain.iter().map(|d| pem::encode("CERTIFICATE", d)).collect(),
    })
}

/// The imported file and password, opened with the node's keymat.
fn open_import(s: &State, r: &ImportRequest) -> Result<(Zeroizing<Vec<u8>>, Option<Secret>), String> {
    // Sealing adds a third and base64 a third again: anything longer cannot hold an allowed file.
    if r.file.len() > MAX_IMPORT_BYTES * 2 + 1024 {
        return Err(format!(
            "the file is too large: at most {} KiB can be imported",
            MAX_IMPORT_BYTES / 1024
        ));
    }
    let text = s
        .stores
        .open_sealed(binding::IMPORT_FILE, &r.file)
        .map_err(|e| format!("file: {e:#}"))?;
    let bytes = Zeroizing::new(
        B64.decode(text.as_bytes())
            .map_err(|_| "file: not base64".to_string())?,
    );
    if bytes.len() > MAX_IMPORT_BYTES {
        return Err(format!(
            "the file is too large: at most {} KiB can be imported",
            MAX_IMPORT_BYTES / 1024
        ));
    }
    let password = match &r.password {
        Some(sealed) => Some(Secret::new(
            s.stores
                .open_sealed(binding::IMPORT_PASSWORD, sealed)
                .map_err(|e| format!("password: {e:#}"))?
                .as_str(),
        )),
        None => None,
    };
    Ok((bytes, password))
}

async fn certs_import(s: &State, r: ImportRequest) -> Result<CertImportReport, String> {
    s.stores.writable(topology::KV_CERTS_PERSONAL).await?;
    let (bytes, password) = open_import(s, &r)?;
    let file = import::cert_file(&bytes, password.as_ref(), r.other)?;
    let report = s.stores.import_certs(file).await?;
    tracing::info!(
        added = report.added.len(),
        already_present = report.already_present.len(),
        "certificates imported"
    );
    s.changed.notify_one();
    Ok(report)
}

async fn certs_remove(s: &State, r: CertRemoveRequest) -> Result<CertInfo, String> {
    s.stores.writable(topology::KV_CERTS_PERSONAL).await?;
    let info = s.stores.remove_cert(&r.fingerprint).await?;
    tracing::info!(fingerprint = %info.fingerprint, store = info.store.name(), "certificate removed");
    s.changed.notify_one();
    Ok(info)
}

fn reply_key(reply_to: &KeymatInfo) -> ferry_keymat::PublicKey {
    ferry_keymat::PublicKey {
        key_id: reply_to.key_id.clone(),
        public_key: reply_to.public_key.clone(),
    }
}

fn seal_reply(reply_to: &KeymatInfo, what: &str, text: &str) -> Result<String, String> {
    ferry_keymat::seal(&reply_key(reply_to), &binding::reply(what), text)
        .map(String::from)
        .map_err(|e| format!("reply_to: {e}"))
}

async fn certs_export_pfx(s: &State, r: PfxExportRequest) -> Result<SealedReply, String> {
    let password = Secret::new(
        s.stores
            .open_sealed(binding::EXPORT_PASSWORD, &r.password)
            .map_err(|e| format!("password: {e:#}"))?
            .as_str(),
    );
    if password.expose().is_empty() {
        return Err("password: empty; a PFX with a private key needs one".into());
    }
    let fp = store::cert_key(&r.fingerprint)?;
    let pfx = Zeroizing::new(s.stores.export_pfx(&fp, &password).await?);
    let text = Zeroizing::new(B64.encode(&*pfx));
    tracing::info!(fingerprint = %fp, "personal certificate exported as PFX");
    let what = format!("pfx/{fp}");
    Ok(SealedReply {
        sealed: seal_reply(&r.reply_to, &what, &text)?,
        what,
    })
}

async fn pgp_list(s: &State, (): ()) -> Result<PgpList, String> {
    Ok(PgpList {
        keys: s.stores.list_pgp().await.map_err(internal)?,
    })
}

fn check_selector(selector: &str) -> Result<(), String> {
    if selector.trim().is_empty() || selector.len() > MAX_TEXT {
        return Err(format!("selector: must be 1 to {MAX_TEXT} characters"));
    }
    Ok(())
}

async fn pgp_export(s: &State, r: PgpSelector) -> Result<PgpArmored, String> {
    check_selector(&r.selector)?;
    let (_, bytes) = s
        .stores
        .find_pgp(&r.selector, false)
        .await?
        .map_err(|e| e.to_string())?;
    Ok(PgpArmored {
        armored: store::armored_public(&bytes)?,
    })
}

async fn pgp_import(s: &State, r: ImportRequest) -> Result<PgpKeyInfo, String> {
    s.stores.writable(topology::KV_PGP_PUBLIC).await?;
    let (bytes, passphrase) = open_import(s, &r)?;
    let file = import::pgp_file(&bytes)?;
    if let import::PgpFile::Secret(key) = &file {
        import::check_unlocks(key, passphrase.as_ref())?;
    }
    let (info, new) = s
        .stores
        .import_pgp(file, passphrase.as_ref())
        .await
        .map_err(internal)?;
    tracing::info!(fingerprint = %info.fingerprint, secret = info.has_secret, new, "PGP key imported");
    Ok(info)
}

async fn pgp_remove(s: &State, r: PgpSelector) -> Result<PgpKeyInfo, String> {
    s.stores.writable(topology::KV_PGP_PUBLIC).await?;
    check_selector(&r.selector)?;
    let info = s.stores.remove_pgp(&r.selector).await?;
    tracing::info!(fingerprint = %info.fingerprint, "PGP key removed");
    Ok(info)
}

async fn pgp_export_secret(s: &State, r: PgpSecretRequest) -> Result<SealedReply, String> {
    check_selector(&r.selector)?;
    let (fp, _) = s
        .stores
        .find_pgp(&r.selector, true)
        .await?
        .map_err(|e| e.to_string())?;
    let opened = s.stores.open_secret(&fp).await.map_err(internal)?;
    let armored = store::armored_secret(&opened.key)?;
    tracing::info!(fingerprint = %fp, "PGP secret key exported");
    let what = format!("pgp-armored/{fp}");
    Ok(SealedReply {
        sealed: seal_reply(&r.reply_to, &what, &armored)?,
        what,
    })
}

async fn pgp_generate(s: &State, r: PgpGenerateRequest) -> Result<PgpKeyInfo, String> {
    s.stores.writable(topology::KV_PGP_PUBLIC).await?;
    for (field, value) in [("name", &r.name), ("email", &r.email)] {
        if value.trim().is_empty()
            || value.len() > MAX_TEXT
            || value.chars().any(|c| c.is_control() || c == '<' || c == '>')
        {
            return Err(format!(
                "{field}: {:?} must be 1 to {MAX_TEXT} characters without <, > or control characters",
                value.chars().take(100).collect::<String>()
            ));
        }
    }
    if !r.email.contains('@') {
        return Err(format!("email: {:?} is not an e-mail address", r.email));
    }
    let uid = format!("{} <{}>", r.name.trim(), r.email.trim());
    let key = tokio::task::spawn_blocking(move || store::generate(&uid, r.kind))
        .await
        .map_err(|e| e.to_string())?
        .map_err(internal)?;
    let (info, _) = s
        .stores
        .import_pgp(import::PgpFile::Secret(Box::new(key)), None)
        .await
        .map_err(internal)?;
    tracing::info!(fingerprint = %info.fingerprint, "PGP key generated");
    Ok(info)
}

async fn key_pgp_public(s: &State, r: PgpSelector) -> Result<KeyReply<wire::PgpPublicKey>, String> {
    check_selector(&r.selector)?;
    Ok(s.stores
        .find_pgp(&r.selector, false)
        .await?
        .map(|(_, bytes)| wire::PgpPublicKey {
            key: B64.encode(bytes),
        }))
}

async fn key_pgp_secret(s: &State, r: PgpSecretRequest) -> Result<KeyReply<wire::PgpSecretKey>, String> {
    check_selector(&r.selector)?;
    let fp = match s.stores.find_pgp(&r.selector, true).await? {
        Ok((fp, _)) => fp,
        Err(e) => return Ok(Err(e)),
    };
    let opened = match s.stores.open_secret(&fp).await {
        Ok(opened) => opened,
        Err(e) => {
            return Ok(Err(KeyFailure::Unusable {
                kind: "PGP secret key".into(),
                selector: r.selector,
                reason: format!("{e:#}"),
            }));
        }
    };
    let text = Zeroizing::new(B64.encode(&*opened.key));
    Ok(Ok(wire::PgpSecretKey {
        key: seal_reply(&r.reply_to, &format!("pgp-secret/{fp}"), &text)?,
        passphrase: match &opened.passphrase {
            Some(p) => Some(seal_reply(&r.reply_to, &format!("pgp-passphrase/{fp}"), p)?),
            None => None,
        },
        fingerprint: opened.fingerprint,
    }))
}

async fn key_personal(s: &State, r: SealedReplyRequest) -> Result<KeyReply<Vec<SealedPersonalCert>>, String> {
    let certs = s.stores.personal_certs().await.map_err(internal)?;
    let mut out = Vec::with_capacity(certs.len());
    for (fp, cert) in certs {
        let key = Zeroizing::new(B64.encode(&cert.key_pkcs8));
        out.push(SealedPersonalCert {
            chain: cert.chain.iter().map(|d| B64.encode(d)).collect(),
            key: seal_reply(&r.reply_to, &format!("personal/{fp}"), &key)?,
        });
    }
    Ok(Ok(out))
}

async fn key_other(s: &State, (): ()) -> Result<KeyReply<Vec<String>>, String> {
    let certs = s.stores.other_certs().await.map_err(internal)?;
    Ok(Ok(certs.values().map(|d| B64.encode(d)).collect()))
}

/// The four stores as stored, for a `config-bundle` step (values still sealed).
async fn key_stores(s: &State, (): ()) -> Result<KeyReply<Vec<wire::StorePart>>, String> {
    let mut parts = Vec::new();
    for bucket in [
        topology::KV_CERTS_PERSONAL,
        topology::KV_CERTS_OTHER,
        topology::KV_PGP_PUBLIC,
        topology::KV_PGP_SECRET,
    ] {
        let part = ferry_service::bundle::read_part(s.stores.js(), bucket)
            .await
            .map_err(internal)?;
        parts.push(wire::StorePart::from(&part));
    }
    Ok(Ok(parts))
}

async fn key_fingerprints(s: &State, (): ()) -> Result<KeyReply<StoreFingerprints>, String> {
    let (personal, other) = s.stores.fingerprints().await.map_err(internal)?;
    let sorted = |set: std::collections::HashSet<String>| {
        let mut v: Vec<String> = set.into_iter().collect();
        v.sort();
        v
    };
    Ok(Ok(StoreFingerprints {
        personal: sorted(personal),
        other: sorted(other),
    }))
}

/// Certs Restore: one personal certificate, its key sealed to this node.
async fn key_add_personal(s: &State, r: SealedPersonalCert) -> Result<KeyReply<String>, String> {
    let chain = r
        .chain
        .iter()
        .map(|d| B64.decode(d).map_err(|_| "chain: not base64".to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let key = s
        .stores
        .open_sealed(binding::RESTORE_KEY, &r.key)
        .map_err(|e| format!("key: {e:#}"))?;
    let key_pkcs8 = B64
        .decode(key.as_bytes())
        .map_err(|_| "key: not base64".to_string())?;
    let file = import::CertFile {
        personal: vec![PersonalCert { chain, key_pkcs8 }],
        other: Vec::new(),
    };
    restore_one(s, file).await
}

/// Store one restored certificate: its fingerprint (added or already present).
async fn restore_one(s: &State, file: import::CertFile) -> Result<KeyReply<String>, String> {
    s.stores.writable(topology::KV_CERTS_PERSONAL).await?;
    let report = s.stores.import_certs(file).await?;
    s.changed.notify_one();
    let fp = (report.added.iter().chain(&report.already_present))
        .map(|c| c.fingerprint.clone())
        .next()
        .unwrap_or_default();
    Ok(Ok(fp))
}

/// Certs Restore: one other people's certificate, base64 DER.
async fn key_add_other(s: &State, der: String) -> Result<KeyReply<String>, String> {
    let der = B64.decode(der.as_bytes()).map_err(|_| "not base64".to_string())?;
    let file = import::CertFile {
        personal: Vec::new(),
        other: vec![der],
    };
    restore_one(s, file).await
}
