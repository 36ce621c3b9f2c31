//! Cert-handler metrics (`ferry_cert_handler_*`): the expiry of every certificate the node
//! uses, read from where the node's settings and the stored configuration name them.
//!
//! Today those are the NATS CA bundle and client certificate of each service (`[nats]` ca_file
//! and cert_file, with `{node}`/`{service}` expanded) and the CA bundle and client certificate of
//! each FTPS host (`ca_file`, `client_cert`), and every certificate of the cert-handler's own
//! stores (source `personal` or `other`; a personal certificate's chain counts its leaf).
//!
//! The metric is the expiry as a Unix timestamp, not the seconds left: it is a fact that does not
//! change between refreshes (a "seconds left" gauge is stale by up to a refresh interval and
//! jumps), it is what Prometheus conventions and exporters use (`*_timestamp_seconds`,
//! blackbox's `probe_ssl_earliest_cert_expiry`), and `(x - time()) / 86400` gives days left in
//! any query.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use ferry_config::HostSpec;
use ferry_service::Settings;
use ferry_wire::{permissions::SERVICES, topology};

/// How often certificate files are read again (a renewed file is picked up within this).
const REFRESH_EVERY: Duration = Duration::from_secs(60);

pub struct Metrics {
    pub registry: Registry,
    pub up: IntGauge,
    expiry: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let up = IntGauge::new("ferry_cert_handler_up", "1 while the cert-handler runs")?;
        let expiry = IntGaugeVec::new(
            Opts::new(
                "ferry_cert_handler_certificate_expiry_timestamp_seconds",
                "When a certificate the node uses expires (its notAfter, Unix seconds), by source (where it is configured: nats.ca_file, nats.cert_file, host/<name>/ca_file, host/<name>/client_cert; or the cert-handler's store: personal, other), subject and SHA-256 fingerprint of its DER; read again every 60 s, on every configuration change and on every change of the stores",
            ),
            &["source", "subject", "fingerprint"],
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(expiry.clone()))?;
        Ok(Self { registry, up, expiry })
    }

    /// Keep the expiry metric current until `shutdown`: read every certificate at start, every
    /// [`REFRESH_EVERY`], whenever the stored configuration changes, and whenever the API
    /// changed the stores (`state.changed`).
    pub async fn follow_certificates(
        &self,
        settings: Settings,
        config: kv::Store,
        state: &crate::api::State,
        shutdown: CancellationToken,
    ) {
        let mut changes = None;
        loop {
            // A watch ends when its stream is replaced (a standby attached as a mirror, or
            // detached): watch the new one.
            if changes.is_none() {
                changes = config.watch(topology::CONFIG_KEY).await.ok();
            }
            let hosts = match config.entry(topology::CONFIG_KEY).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    match ferry_wire::decode::<ferry_wire::ConfigDocument>(&entry.value) {
                        Ok(doc) => doc.config.hosts.into_values().collect(),
                        Err(e) => {
                            tracing::warn!(error = %e, "certificates: decode the stored configuration");
                            Vec::new()
                        }
                    }
                }
                Ok(_) => Vec::new(),
                Err(e) => {
                    tracing::warn!(error = %e, "certificates: read the stored configuration");
                    Vec::new()
                }
            };
            let stored = stored_certificates(&state.stores).await;
            self.refresh(&certificate_files(&settings, &hosts), &stored);
            let changed = async {
                match changes.as_mut() {
                    Some(watch) => watch.next().await.is_none(),
                    None => std::future::pending().await,
                }
            };
            let ended = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REFRESH_EVERY) => false,
                ended = changed => ended,
                _ = state.changed.notified() => false,
            };
            if ended {
                // Not in a tight loop: at most one new watch a second.
                changes = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn refresh(&self, files: &[(String, String)], stored: &[(&'static str, Certificate)]) {
        self.expiry.reset();
        for (source, c) in stored {
            self.expiry
                .with_label_values(&[*source, c.subject.as_str(), c.fingerprint.as_str()])
                .set(c.not_after);
        }
        for (source, path) in files {
            match read_certificates(path) {
                Ok(certificates) => {
                    for c in certificates {
                        self.expiry
                            .with_label_values(&[source, &c.subject, &c.fingerprint])
                            .set(c.not_after);
                    }
                }
                Err(e) => tracing::warn!(source, path, error = %e, "certificates: cannot read"),
            }
        }
    }
}

/// (source, path) of every certificate file the node's settings and `hosts` name, each once.
fn certificate_files(settings: &Settings, hosts: &[ferry_config::Host]) -> Vec<(String, String)> {
    let mut files = BTreeSet::new();
    for service in SERVICES.into_iter().chain(["cli"]) {
        let nats = settings.nats.expand(&settings.node_id, service);
        for (source, path) in [("nats.ca_file", nats.ca_file), ("nats.cert_file", nats.cert_file)] {
            if let Some(path) = path {
                files.insert((source.to_string(), path));
            }
        }
    }
    for host in hosts {
        if let HostSpec::Ftp(ftp) = &host.spec {
            for (field, path) in [("ca_file", &ftp.ca_file), ("client_cert", &ftp.client_cert)] {
                if let Some(path) = path {
                    files.insert((format!("host/{}/{field}", host.name), path.clone()));
                }
            }
        }
    }
    files.into_iter().collect()
}

/// Every certificate of the stores, by store name; none (and a warning) when they cannot be read.
async fn stored_certificates(stores: &crate::store::Stores) -> Vec<(&'static str, Certificate)> {
    match stores.list_certs().await {
        Ok(list) => list
            .into_iter()
            .map(|c| {
                let certificate = Certificate {
                    subject: c.subject,
                    fingerprint: c.fingerprint,
                    not_after: c.not_after.timestamp(),
                };
                (c.store.name(), certificate)
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "certificates: read the stores");
            Vec::new()
        }
    }
}

struct Certificate {
    subject: String,
    /// SHA-256 of the DER, lowercase hex.
    fingerprint: String,
    /// Unix seconds.
    not_after: i64,
}

/// Every certificate of a PEM file (a bundle holds several).
fn read_certificates(path: &str) -> anyhow::Result<Vec<Certificate>> {
    let data = std::fs::read(path)?;
    let mut found = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&data) {
        let pem = pem?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let cert = pem.parse_x509()?;
        found.push(Certificate {
            subject: cert.subject().to_string(),
            fingerprint: hex::encode(Sha256::digest(&pem.contents)),
            not_after: cert.validity().not_after.timestamp(),
        });
    }
    anyhow::ensure!(!found.is_empty(), "no certificate in the file");
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificates_are_those_of_every_services_nats_settings_and_every_ftps_host() {
        let mut settings = Settings {
            node_id: "n1".into(),
            ..Settings::default()
        };
        settings.nats.ca_file = Some("/pki/ca.pem".into());
        settings.nats.cert_file = Some("/pki/{node}/{service}.pem".into());
        settings.nats.key_file = Some("/pki/{node}/{service}.key".into());
        let config = ferry_config::parse_toml(
            "[[host]]\nname = \"archive\"\nkind = \"ftp\"\naddress = \"ftp.example\"\nuser = \"u\"\n\
             tls = \"explicit\"\nca_file = \"/pki/archive-ca.pem\"\n\
             [[host]]\nname = \"plain\"\nkind = \"ftp\"\naddress = \"ftp.example\"\nuser = \"u\"\n",
        )
        .expect("parse")
        .validate()
        .expect("valid");
        let hosts: Vec<ferry_config::Host> = config.hosts.into_values().collect();
        let files = certificate_files(&settings, &hosts);
        let expected: Vec<(String, String)> = [
            ("host/archive/ca_file", "/pki/archive-ca.pem"),
            ("nats.ca_file", "/pki/ca.pem"),
            ("nats.cert_file", "/pki/n1/cert-handler.pem"),
            ("nats.cert_file", "/pki/n1/cli.pem"),
            ("nats.cert_file", "/pki/n1/failover-coordinator.pem"),
            ("nats.cert_file", "/pki/n1/file-collector.pem"),
            ("nats.cert_file", "/pki/n1/scheduler.pem"),
            ("nats.cert_file", "/pki/n1/transfer.pem"),
        ]
        .into_iter()
        .map(|(s, p)| (s.to_string(), p.to_string()))
        .collect();
        assert_eq!(files, expected);
    }

    #[test]
    fn every_certificate_of_a_bundle_is_read_with_its_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = ferry_testkit::peers::vsftpd::TestPki::generate(dir.path()).expect("openssl");
        let bundle = dir.path().join("bundle.pem");
        let text = std::fs::read_to_string(&pki.ca_cert).expect("ca")
            + &std::fs::read_to_string(&pki.client_cert).expect("client");
        std::fs::write(&bundle, text).expect("write");
        let certs = read_certificates(&bundle.to_string_lossy()).expect("read");
        let subjects: Vec<&str> = certs.iter().map(|c| c.subject.as_str()).collect();
        assert_eq!(subjects, ["CN=Ferry Test CA", "CN=ferry-test-client"]);
        // TestPki's certificates are valid for two days.
        let left = certs[1].not_after - chrono::Utc::now().timestamp();
        assert!((47 * 3600..=49 * 3600).contains(&left), "{left} s left");
        assert_eq!(certs[0].fingerprint.len(), 64);
        assert!(
            read_certificates(&pki.client_key.to_string_lossy()).is_err(),
            "a key file"
        );
    }
}
