//! `ftp`: FTP and FTPS servers (explicit `AUTH TLS` or implicit TLS; passive or active data
//! connections), over suppaftp's async client and rustls.
//!
//! - `conn`: connecting, TLS (one rustls config per control connection, shared with its data
//!   connections, so servers that require TLS session reuse accept them), login, sign-on
//!   commands, and the connection pool.
//! - `list`: `LIST` parsing and recursive walks.
//! - `ops`: the small requests (size, stat, delete, rename, `mkdir -p`), replies read in context.
//! - `transfer`: uploads to the temp name (resumed with `APPE`), verification, the `RNFR`/`RNTO`
//!   commit, downloads (`REST` + `RETR`).
//! - `errors`: reply codes and TLS failures to `ErrorKind`s.
//!
//! Invariants: every transfer is binary (`TYPE I`); a connection whose request failed mid-way
//! is closed, never pooled; the password never reaches a log line or an error (see
//! `conn::LoginEncoding`); `finish` cannot make the bytes durable (FTP has no fsync) and a
//! create-new commit has a window (see `transfer::FtpStaged::commit`), so both capabilities say no.

mod conn;
mod errors;
mod list;
mod ops;
mod transfer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_config::{FtpMode, FtpSpec, FtpTls, HostOptions, Verify};
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use self::conn::{Manager, Pool, Session, Settings};
use self::transfer::{Download, FtpUpload};
use crate::registry::OpenSecret;
use crate::{
    ByteStream, Capabilities, DynHost, Entry, ErrorKind, Host, HostError, HostResult, Meta, Probe, Upload,
    WriteTarget,
};

const CAPABILITIES: Capabilities = Capabilities {
    // RNFR/RNTO is a rename(2) on Unix servers.
    atomic_rename: true,
    // Checked just before RNTO, not atomically (transfer::FtpStaged::commit).
    rename_noreplace: false,
    // No standard hash command; vsftpd has none.
    server_sha256: false,
    resume: true,
    // No fsync in FTP: the server's 226 says the file is written, not that it is on disk.
    durable: false,
    byte_names: false,
};

/// An FTP or FTPS server.
pub struct FtpHost {
    shared: Arc<Shared>,
}

/// What the host and its uploads, staged files and downloads share.
struct Shared {
    settings: Arc<Settings>,
    pool: Pool,
    verify: Verify,
}

impl Shared {
    async fn session(&self) -> HostResult<Session> {
        Session::get(&self.pool, &self.settings).await
    }
}

impl FtpHost {
    /// Build the host (no connection yet: the pool connects on first use).
    pub fn build(
        name: &str,
        options: &HostOptions,
        spec: &FtpSpec,
        open: &OpenSecret<'_>,
    ) -> HostResult<DynHost> {
        let password = spec.password.as_ref().map(|s| open("password", s)).transpose()?;
        let tls_config = match spec.tls {
            FtpTls::None => None,
            FtpTls::Explicit | FtpTls::Implicit => Some(Arc::new(tls_config(name, spec, open)?)),
        };
        let settings = Arc::new(Settings {
            name: name.to_string(),
            address: spec.address.clone(),
            port: spec.port,
            user: spec.user.clone(),
            password,
            tls: spec.tls,
            mode: spec.mode,
            tls_config,
            sign_on_commands: spec.sign_on_commands.clone(),
            connect_timeout: Duration::from_secs(options.connect_timeout_secs),
            op_timeout: Duration::from_secs(options.operation_timeout_secs),
            idle_timeout: Duration::from_secs(options.idle_timeout_secs),
        });
        let pool = Pool::builder(Manager {
            settings: settings.clone(),
        })
        .max_size(options.max_connections.max(1) as usize)
        .build()
        .map_err(|e| HostError::permanent(name, format!("connection pool: {e}")))?;
        Ok(Arc::new(FtpHost {
            shared: Arc::new(Shared {
                settings,
                pool,
                verify: options.verify,
            }),
        }))
    }
}

/// The host's TLS settings: trusted roots (`ca_file`, else the system's), the client
/// certificate, TLS 1.2 and 1.3.
fn tls_config(name: &str, spec: &FtpSpec, open: &OpenSecret<'_>) -> HostResult<ClientConfig> {
    let bad = |field: &str, what: String| HostError::permanent(name, format!("{field}: {what}"));
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls", e.to_string()))?;
    let builder = if spec.insecure_accept_any_certificate {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &spec.ca_file {
            Some(file) => {
                let certs = CertificateDer::pem_file_iter(file)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad("ca_file", format!("{file}: {e}")))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(bad("ca_file", format!("{file}: no usable certificate")));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        builder.with_root_certificates(roots)
    };
    match (&spec.client_cert, &spec.client_key) {
        (Some(cert_file), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert_file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad("client_cert", format!("{cert_file}: {e}")))?;
            if certs.is_empty() {
                return Err(bad("client_cert", format!("{cert_file}: no certificate")));
            }
            let key = open("client_key", key)?;
            // The error names the problem, never the key's text.
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| bad("client_key", format!("not a PEM private key ({e})")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad("client_key", format!("does not fit client_cert: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `insecure_accept_any_certificate`: signatures are still checked, the certificate is not.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[async_trait]
impl Host for FtpHost {
    fn name(&self) -> &str {
        &self.shared.settings.name
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn pool(&self) -> Option<crate::PoolStatus> {
        Some(crate::PoolStatus::of_deadpool(self.shared.pool.status()))
    }

    async fn list(&self, folder: &str, recursive: bool) -> HostResult<Vec<Entry>> {
        let mut s = self.shared.session().await?;
        let root = s.abs(folder)?;
        list::walk(&mut s, &root, recursive).await
    }

    async fn stat(&self, path: &str) -> HostResult<Option<Meta>> {
        let mut s = self.shared.session().await?;
        let p = s.abs(path)?;
        ops::stat(&mut s, &p).await
    }

    async fn read(&self, path: &str, offset: u64) -> HostResult<ByteStream> {
        let mut s = self.shared.session().await?;
        let p = s.abs(path)?;
        Ok(Box::pin(Download::start(s, &p, offset).await?))
    }

    async fn create_dir_all(&self, path: &str) -> HostResult<()> {
        let mut s = self.shared.session().await?;
        let p = s.abs(path)?;
        ops::create_dir_all(&mut s, &p).await
    }

    async fn write(&self, target: &WriteTarget) -> HostResult<Box<dyn Upload>> {
        let mut s = self.shared.session().await?;
        let temp = s.abs(&target.temp_path())?;
        let offset = if target.resume {
            settled_size(&mut s, &temp).await?
        } else {
            // Remove a stale temp rather than truncate it: the session of an abandoned attempt
            // may still be writing into it, and then it writes into an unlinked file instead of
            // over the new upload.
            let what = format!("remove stale {temp}");
            match s.run(&what, async |ftp| ftp.rm(&temp).await).await {
                Err(f) if f.error.kind == ErrorKind::Transient => return Err(f.error),
                _ => {}
            }
            0
        };
        Ok(Box::new(
            FtpUpload::start(self.shared.clone(), s, temp, offset).await?,
        ))
    }

    async fn delete(&self, path: &str) -> HostResult<()> {
        let mut s = self.shared.session().await?;
        let p = s.abs(path)?;
        ops::delete(&mut s, &p).await
    }

    async fn probe(&self, folder: &str) -> HostResult<Probe> {
        let mut s = self.shared.session().await?;
        let dir = s.abs(folder)?;
        // Lists the folder: proves it exists and that data connections work (and, over TLS,
        // whether they resume the control connection's session).
        let files = list::walk(&mut s, &dir, false).await?;
        let features = s
            .run("ask for features (FEAT)", async |ftp| ftp.feat().await)
            .await
            .ok();
        let settings = &self.shared.settings;
        let conn = s.conn();
        let mut probe = Probe {
            server: Some(server_name(&conn.banner)),
            capabilities: CAPABILITIES,
            ..Probe::default()
        };
        probe.notes.push(format!(
            "security: {}",
            match settings.tls {
                FtpTls::None => "none (plain FTP: password and files unencrypted)",
                FtpTls::Explicit => "explicit FTPS (AUTH TLS)",
                FtpTls::Implicit => "implicit FTPS",
            }
        ));
        probe.notes.push(format!(
            "data connections: {}",
            match settings.mode {
                FtpMode::Passive => "passive (PASV)",
                FtpMode::Active => "active (PORT)",
            }
        ));
        probe.notes.push(format!("login folder: {}", conn.home));
        probe.notes.push(format!("folder {dir}: {} files", files.len()));
        if let Some(facts) = &conn.tls {
            let facts = facts
                .lock()
                .expect("the TLS facts lock is never poisoned")
                .clone();
            if let Some(der) = &facts.peer_cert
                && let Ok((_, cert)) = x509_parser::parse_x509_certificate(der)
            {
                probe.tls_subject = Some(cert.subject().to_string());
                probe.tls_not_after = Some(
                    cert.validity()
                        .not_after
                        .to_rfc2822()
                        .unwrap_or_else(|_| cert.validity().not_after.to_string()),
                );
            }
            if let (Some(version), Some(cipher)) = (&facts.version, &facts.cipher) {
                probe.notes.push(format!("tls: {version}, {cipher}"));
            }
            probe.notes.push(format!(
                "data connection TLS sessions resumed: {} of {}",
                facts.data_resumed,
                facts.data_resumed + facts.data_full
            ));
        }
        if let Some(features) = features {
            let mut names: Vec<String> = features
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) if !v.is_empty() => format!("{k} {v}"),
                    _ => k,
                })
                .collect();
            names.sort();
            probe.notes.push(format!("features: {}", names.join(", ")));
        }
        Ok(probe)
    }
}

/// The server software from its greeting: `220 (vsFTPd 3.0.3)` → `vsFTPd 3.0.3`.
fn server_name(banner: &str) -> String {
    let text = banner.get(..4).map_or(banner, |code| {
        if code[..3].bytes().all(|b| b.is_ascii_digit()) {
            &banner[4..]
        } else {
            banner
        }
    });
    let text = text.trim();
    text.strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(text)
        .trim()
        .to_string()
}

/// The size of an earlier attempt's temp file, once it stops growing: the session that wrote it
/// may still be flushing what it had received when its client went away.
async fn settled_size(s: &mut Session, temp: &str) -> HostResult<u64> {
    let mut last = match ops::size(s, temp).await? {
        None | Some(0) => return Ok(0),
        Some(n) => n,
    };
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = ops::size(s, temp).await?.unwrap_or(0);
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Err(HostError::transient(
        &s.host,
        format!("resume {temp}: another upload is still writing it"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_greetings() {
        assert_eq!(server_name("220 (vsFTPd 3.0.3)"), "vsFTPd 3.0.3");
        assert_eq!(
            server_name("220 ProFTPD Server (Debian)"),
            "ProFTPD Server (Debian)"
        );
        assert_eq!(server_name("Microsoft FTP Service"), "Microsoft FTP Service");
    }
}
