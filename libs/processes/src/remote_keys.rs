//! [`NatsKeys`]: the node's cert-handler as a [`KeySource`] and a [`CertSink`], over its
//! request/reply API (`ferry_wire::keys`, the `keys.*` endpoints).
//!
//! Processes are blocking and run on `spawn_blocking` threads; each call here blocks on the
//! async NATS request through a runtime [`Handle`] (allowed on such a thread, not on an async
//! worker), bounded by a timeout. A cert-handler that does not answer, is not running or refuses
//! this NATS user is [`KeyError::Unavailable`] (worth a retry); a key that is not in the store is
//! [`KeyError::NotFound`], as the cert-handler says.
//!
//! Private material never crosses the bus in clear: each `NatsKeys` makes a one-off keymat whose
//! public half goes with every request for a private key, and the cert-handler seals the key to
//! it; a key restored into the store is sealed to the node's keymat before it is sent.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::Handle;

use ferry_wire::KeymatInfo;
use ferry_wire::keys::{self as wire, KeyFailure, KeyReply, api, binding};
use ferry_wire::subjects::service::CERT_HANDLER;

use crate::certs::{CertSink, fingerprint};
use crate::keys::{KeyError, KeySource, PersonalCert, PgpSecretKey, Secret};

/// How long a call waits for the cert-handler by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The cert-handler of one node, as a key source and a certificate sink.
pub struct NatsKeys {
    client: async_nats::Client,
    node: String,
    runtime: Handle,
    timeout: Duration,
    /// Replies with private keys are sealed to this one-off key.
    reply: ferry_keymat::Keymat,
    /// The node keymat's public half (asked once), that restored keys are sealed to.
    node_keymat: Mutex<Option<ferry_keymat::PublicKey>>,
}

impl NatsKeys {
    /// The cert-handler of `node`, called through `client` on `runtime` (the caller's runtime:
    /// `Handle::current()` before `spawn_blocking`).
    pub fn new(client: async_nats::Client, node: impl Into<String>, runtime: Handle) -> Self {
        Self {
            client,
            node: node.into(),
            runtime,
            timeout: DEFAULT_TIMEOUT,
            reply: ferry_keymat::Keymat::generate(),
            node_keymat: Mutex::new(None),
        }
    }

    /// The cert-handler's four stores as stored (values sealed), for a configuration bundle.
    /// Called from async code (no `block_on`).
    pub async fn stores(&self) -> Result<Vec<ferry_wire::bundle::Part>, String> {
        let reply: KeyReply<Vec<ferry_wire::keys::StorePart>> = ferry_service::api::call_within(
            &self.client,
            &self.node,
            CERT_HANDLER,
            &api::in_group(api::keys::GROUP, api::keys::STORES),
            &(),
            self.timeout,
        )
        .await
        .map_err(|e| format!("the cert-handler did not answer: {e:#}"))?;
        let parts = reply.map_err(|e| format!("{:?}", key_error(e)))?;
        parts
            .into_iter()
            .map(ferry_wire::bundle::Part::try_from)
            .collect()
    }

    /// Wait at most `timeout` for each answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn reply_to(&self) -> KeymatInfo {
        let public = self.reply.public();
        KeymatInfo {
            key_id: public.key_id,
            public_key: public.public_key,
        }
    }

    fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: &Req,
    ) -> Result<Resp, KeyError> {
        let call = ferry_service::api::call_within(
            &self.client,
            &self.node,
            CERT_HANDLER,
            endpoint,
            body,
            self.timeout,
        );
        self.runtime
            .block_on(call)
            .map_err(|e| KeyError::Unavailable(format!("{e:#}")))
    }

    /// Call a `keys.*` endpoint; a [`KeyFailure`] becomes the matching [`KeyError`].
    fn key<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: &Req,
    ) -> Result<Resp, KeyError> {
        let reply: KeyReply<Resp> = self.call(&api::in_group(api::keys::GROUP, endpoint), body)?;
        reply.map_err(key_error)
    }

    /// Open a value the cert-handler sealed to this requester.
    fn open(&self, what: &str, sealed: &str) -> Result<ferry_keymat::Zeroizing<String>, KeyError> {
        let unusable = |reason: String| KeyError::Unusable {
            kind: "key",
            selector: what.to_string(),
            reason,
        };
        let secret = ferry_config::Secret::try_from(sealed.to_string())
            .map_err(|e| unusable(format!("the cert-handler's reply is not sealed: {e}")))?;
        self.reply
            .open(&binding::reply(what), &secret)
            .map_err(|e| unusable(e.to_string()))
    }

    fn open_bytes(&self, what: &str, sealed: &str) -> Result<Vec<u8>, KeyError> {
        let text = self.open(what, sealed)?;
        decode(what, &text)
    }

    fn node_keymat(&self) -> Result<ferry_keymat::PublicKey, KeyError> {
        let mut cached = self.node_keymat.lock().expect("no panic while holding the lock");
        if let Some(public) = cached.as_ref() {
            return Ok(public.clone());
        }
        let info: KeymatInfo = self.call(api::KEYMAT, &())?;
        let public = ferry_keymat::PublicKey {
            key_id: info.key_id,
            public_key: info.public_key,
        };
        *cached = Some(public.clone());
        Ok(public)
    }
}

fn decode(what: &str, text: &str) -> Result<Vec<u8>, KeyError> {
    B64.decode(text.as_bytes()).map_err(|e| KeyError::Unusable {
        kind: "key",
        selector: what.to_string(),
        reason: format!("the cert-handler's reply is not base64: {e}"),
    })
}

/// The kinds the cert-handler names, as the `'static` texts [`KeyError`] holds.
fn kind(text: &str) -> &'static str {
    match text {
        "PGP public key" => "PGP public key",
        "PGP secret key" => "PGP secret key",
        "personal certificate" => "personal certificate",
        "certificate" => "certificate",
        _ => "key",
    }
}

fn key_error(failure: KeyFailure) -> KeyError {
    match failure {
        KeyFailure::NotFound { kind: k, selector } => KeyError::NotFound {
            kind: kind(&k),
            selector,
        },
        KeyFailure::Ambiguous {
            kind: k,
            selector,
            count,
        } => KeyError::Ambiguous {
            kind: kind(&k),
            selector,
            count,
        },
        KeyFailure::Unusable {
            kind: k,
            selector,
            reason,
        } => KeyError::Unusable {
            kind: kind(&k),
            selector,
            reason,
        },
    }
}

impl KeySource for NatsKeys {
    fn pgp_public_key(&self, selector: &str) -> Result<Vec<u8>, KeyError> {
        let key: wire::PgpPublicKey = self.key(
            api::keys::PGP_PUBLIC,
            &wire::PgpSelector {
                selector: selector.to_string(),
            },
        )?;
        decode(selector, &key.key)
    }

    fn pgp_secret_key(&self, selector: &str) -> Result<PgpSecretKey, KeyError> {
        let key: wire::PgpSecretKey = self.key(
            api::keys::PGP_SECRET,
            &wire::PgpSecretRequest {
                selector: selector.to_string(),
                reply_to: self.reply_to(),
            },
        )?;
        let bytes = self.open_bytes(&format!("pgp-secret/{}", key.fingerprint), &key.key)?;
        let passphrase = match &key.passphrase {
            Some(sealed) => Secret::new(
                self.open(&format!("pgp-passphrase/{}", key.fingerprint), sealed)?
                    .as_str(),
            ),
            None => Secret::default(),
        };
        Ok(PgpSecretKey {
            key: bytes,
            passphrase,
        })
    }

    fn personal_certs(&self) -> Result<Vec<PersonalCert>, KeyError> {
        let certs: Vec<wire::SealedPersonalCert> = self.key(
            api::keys::PERSONAL,
            &wire::SealedReplyRequest {
                reply_to: self.reply_to(),
            },
        )?;
        certs
            .into_iter()
            .map(|c| {
                let chain = c
                    .chain
                    .iter()
                    .map(|d| decode("personal certificate", d))
                    .collect::<Result<Vec<_>, _>>()?;
                let leaf = chain.first().map(|l| fingerprint(l)).unwrap_or_default();
                let key_pkcs8 = self.open_bytes(&format!("personal/{leaf}"), &c.key)?;
                Ok(PersonalCert { chain, key_pkcs8 })
            })
            .collect()
    }

    fn other_certs(&self) -> Result<Vec<Vec<u8>>, KeyError> {
        let certs: Vec<String> = self.key(api::keys::OTHER, &())?;
        certs.iter().map(|d| decode("certificate", d)).collect()
    }
}

impl CertSink for NatsKeys {
    fn personal_fingerprints(&self) -> Result<HashSet<String>, KeyError> {
        let f: wire::StoreFingerprints = self.key(api::keys::FINGERPRINTS, &())?;
        Ok(f.personal.into_iter().collect())
    }

    fn other_fingerprints(&self) -> Result<HashSet<String>, KeyError> {
        let f: wire::StoreFingerprints = self.key(api::keys::FINGERPRINTS, &())?;
        Ok(f.other.into_iter().collect())
    }

    fn add_personal(&self, cert: PersonalCert) -> Result<(), KeyError> {
        let public = self.node_keymat()?;
        let key_b64 = ferry_keymat::Zeroizing::new(B64.encode(&cert.key_pkcs8));
        let sealed = ferry_keymat::seal(&public, binding::RESTORE_KEY, &key_b64)
            .map_err(|e| KeyError::Unavailable(format!("seal the private key to the node's keymat: {e}")))?;
        let request = wire::SealedPersonalCert {
            chain: cert.chain.iter().map(|d| B64.encode(d)).collect(),
            key: sealed.into(),
        };
        let _fingerprint: String = self.key(api::keys::ADD_PERSONAL, &request)?;
        Ok(())
    }

    fn add_other(&self, der: Vec<u8>) -> Result<(), KeyError> {
        let _fingerprint: String = self.key(api::keys::ADD_OTHER, &B64.encode(&der))?;
        Ok(())
    }
}
