//! Connecting to an FTP server — TLS, login, sign-on commands — and the pool of logged-in
//! connections ([`Manager`], [`Session`]).
//!
//! TLS session reuse: servers such as vsftpd with `require_ssl_reuse=YES` accept a data
//! connection only if it resumes the TLS session of *its* control connection. So every control
//! connection gets its own copy of the host's rustls `ClientConfig` with its own small session
//! store, and suppaftp hands the same connector (that config) to every data connection it opens:
//! data connections resume from tickets only that control connection's sessions issued.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use ferry_config::{FtpMode, FtpTls};
use ferry_keymat::Zeroizing;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use suppaftp::tokio::{AsyncRustlsStream, AsyncTlsConnector, ImplAsyncFtpStream};
use suppaftp::types::FileType;
use suppaftp::{Encoding, FtpError, FtpResult, Mode, Status, Utf8Encoding};
use tokio::net::TcpStream;

use super::errors::{Failed, describe_tls, failed, io_error, tls_refused};
use crate::{HostError, HostResult, path};

/// One FTP control connection (plain or TLS; plain connections never use the TLS type).
pub(super) type Ftp = ImplAsyncFtpStream<AsyncRustlsStream>;

/// Everything needed to open a connection, fixed when the host is built.
pub(super) struct Settings {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Zeroizing<String>>,
    pub tls: FtpTls,
    pub mode: FtpMode,
    /// The host's TLS settings (roots, client certificate); each connection clones it.
    pub tls_config: Option<Arc<ClientConfig>>,
    pub sign_on_commands: Vec<String>,
    pub connect_timeout: Duration,
    pub op_timeout: Duration,
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No password, no key: the TLS config holds the client key.
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("tls", &self.tls)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// What a TLS handshake showed, for `probe`.
#[derive(Debug, Clone, Default)]
pub(super) struct TlsFacts {
    /// The control connection's server certificate (DER).
    pub peer_cert: Option<Vec<u8>>,
    pub version: Option<String>,
    pub cipher: Option<String>,
    /// Data connections that resumed the control connection's session / that did not.
    pub data_resumed: u32,
    pub data_full: u32,
}

/// A logged-in connection.
pub(super) struct Conn {
    pub ftp: Ftp,
    /// The login folder (`PWD` right after login): relative paths are taken from it.
    pub home: String,
    pub banner: String,
    pub tls: Option<Arc<Mutex<TlsFacts>>>,
}

/// suppaftp's TLS hook: our own, so handshakes have a deadline, failures are worded and
/// classified, and what the handshake showed is kept for `probe`.
#[derive(Clone)]
struct Connector {
    connector: tokio_rustls::TlsConnector,
    timeout: Duration,
    facts: Arc<Mutex<TlsFacts>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

#[async_trait]
impl AsyncTlsConnector for Connector {
    type Stream = AsyncRustlsStream;

    async fn connect(&self, domain: &str, stream: TcpStream) -> FtpResult<AsyncRustlsStream> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| FtpError::SecureError(tls_refused(format!("server name {domain:?}: {e}"))))?;
        let tls = match tokio::time::timeout(self.timeout, self.connector.connect(name, stream)).await {
            Err(_) => {
                return Err(FtpError::SecureError(format!(
                    "TLS handshake with {domain}: no answer within {} s",
                    self.timeout.as_secs()
                )));
            }
            Ok(Err(e)) => return Err(FtpError::SecureError(describe_handshake(domain, &e))),
            Ok(Ok(tls)) => tls,
        };
        {
            let session = tls.get_ref().1;
            let mut facts = self.facts.lock().expect("the TLS facts lock is never poisoned");
            if facts.version.is_none() {
                facts.peer_cert = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                facts.version = session.protocol_version().map(|v| format!("{v:?}"));
                facts.cipher = session
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()));
            } else if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                facts.data_resumed += 1;
            } else {
                facts.data_full += 1;
            }
        }
        Ok(AsyncRustlsStream::from(tls))
    }
}

/// A failed handshake in words: whose certificate, and why.
fn describe_handshake(domain: &str, e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(why)) => {
            tls_refused(format!("certificate for {domain} is not trusted: {why}"))
        }
        Some(other) => tls_refused(describe_tls(other)),
        None => format!("TLS handshake with {domain}: {e}"),
    }
}

/// Sends the password without it appearing in suppaftp's log: suppaftp traces every command line
/// it sends, `PASS` included, before encoding it. Login sends a placeholder, and this encoding,
/// installed for the login only, puts the password in its place as the line is encoded.
struct LoginEncoding {
    password: Zeroizing<String>,
}

const PASSWORD_PLACEHOLDER: &str = "<password>";

impl std::fmt::Debug for LoginEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginEncoding")
    }
}

impl Encoding for LoginEncoding {
    fn decode(&self, bytes: &[u8]) -> String {
        Utf8Encoding.decode(bytes)
    }

    fn encode(&self, text: &str) -> std::io::Result<Vec<u8>> {
        if text.trim_end() == format!("PASS {PASSWORD_PLACEHOLDER}") {
            return Ok(format!("PASS {}\r\n", self.password.as_str()).into_bytes());
        }
        Utf8Encoding.encode(text)
    }
}

/// Open, secure and log in one connection (within the connect timeout).
pub(super) async fn connect(s: &Settings) -> HostResult<Conn> {
    match tokio::time::timeout(s.connect_timeout, login(s)).await {
        Ok(r) => r,
        Err(_) => Err(HostError::transient(
            &s.name,
            format!(
                "connect to {}:{} and log in as {}: no answer within {} s",
                s.address,
                s.port,
                s.user,
                s.connect_timeout.as_secs()
            ),
        )),
    }
}

async fn login(s: &Settings) -> HostResult<Conn> {
    let host = s.name.as_str();
    let at = format!("connect to {}:{}", s.address, s.port);
    let fail = |what: &str, e: FtpError| -> HostError { failed(host, what, e).error };
    let addr: SocketAddr = tokio::net::lookup_host((s.address.as_str(), s.port))
        .await
        .map_err(|e| io_error(host, &format!("look up {}", s.address), &e))?
        .next()
        .ok_or_else(|| HostError::permanent(host, format!("look up {}: no address", s.address)))?;
    let connector = s.tls_config.as_ref().map(|base| {
        // Its own session store: see the module comment.
        let mut config = ClientConfig::clone(base);
        config.resumption = rustls::client::Resumption::in_memory_sessions(8);
        Connector {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout: s.op_timeout,
            facts: Arc::default(),
        }
    });
    let facts = connector.as_ref().map(|c| c.facts.clone());
    let ftp = match (s.tls, connector) {
        (FtpTls::Implicit, Some(connector)) => {
            let mut ftp = Ftp::connect_secure_implicit(addr, connector, &s.address)
                .await
                .map_err(|e| fail(&at, e))?;
            // `into_secure` does this for explicit FTPS; implicit needs it said too: no
            // buffering layer, and TLS on data connections as well.
            for command in ["PBSZ 0", "PROT P"] {
                ftp.custom_command(command, &[Status::CommandOk])
                    .await
                    .map_err(|e| fail(&format!("{at}: {command}"), e))?;
            }
            ftp
        }
        (tls, connector) => {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| io_error(host, &at, &e))?;
            let _ = tcp.set_nodelay(true);
            let ftp = Ftp::connect_with_stream(tcp).await.map_err(|e| fail(&at, e))?;
            match (tls, connector) {
                (FtpTls::Explicit, Some(connector)) => ftp
                    .into_secure(connector, &s.address)
                    .await
                    .map_err(|e| fail(&format!("{at}: AUTH TLS"), e))?,
                _ => ftp,
            }
        }
    };
    let banner = ftp.get_welcome_msg().unwrap_or_default().trim().to_string();
    let mut ftp = match s.mode {
        FtpMode::Active => ftp.active_mode(s.op_timeout),
        FtpMode::Passive => {
            // PASV, but connect to the control connection's address rather than the one in the
            // reply: servers behind NAT announce private addresses, and a hostile one could aim
            // us elsewhere.
            let mut ftp = ftp;
            ftp.set_mode(Mode::Passive);
            ftp.set_passive_nat_workaround(true);
            ftp
        }
    };

    let password = s.password.clone().unwrap_or_default();
    ftp.set_encoding(LoginEncoding { password }).await;
    let logged_in = ftp.login(s.user.as_str(), PASSWORD_PLACEHOLDER).await;
    ftp.set_encoding(Utf8Encoding).await;
    logged_in.map_err(|e| fail(&format!("log in as {}", s.user), e))?;

    for command in &s.sign_on_commands {
        sign_on(host, &mut ftp, command).await.map_err(|f| {
            let kind = match f.error.kind {
                crate::ErrorKind::Transient => crate::ErrorKind::Transient,
                _ => crate::ErrorKind::Permanent,
            };
            f.with_kind(kind).error
        })?;
    }
    // Some servers (IIS, FileZilla Server) send names in UTF-8 only when asked; others answer
    // 200 or 202, or refuse a command they do not know. Either way is fine.
    let _ = ftp.custom_command("OPTS UTF8 ON", &[Status::CommandOk]).await;
    ftp.transfer_type(FileType::Binary)
        .await
        .map_err(|e| fail("set binary mode (TYPE I)", e))?;
    let home = ftp
        .pwd()
        .await
        .map_err(|e| fail("ask for the login folder (PWD)", e))?;
    Ok(Conn {
        ftp,
        home,
        banner,
        tls: facts,
    })
}

/// One sign-on command: any 2xx reply is success.
async fn sign_on(host: &str, ftp: &mut Ftp, command: &str) -> Result<(), Failed> {
    let what = format!("sign-on command {command:?}");
    match ftp.custom_command(command, &[Status::CommandOk]).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let f = failed(host, &what, e);
            if f.code.is_some_and(|c| (200..300).contains(&c)) {
                return Ok(());
            }
            Err(f)
        }
    }
}

/// The pool's view of connections.
pub(super) struct Manager {
    pub settings: Arc<Settings>,
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = HostError;

    async fn create(&self) -> HostResult<Conn> {
        connect(&self.settings).await
    }

    async fn recycle(&self, conn: &mut Conn, metrics: &Metrics) -> RecycleResult<HostError> {
        if metrics.last_used() > self.settings.idle_timeout {
            return Err(RecycleError::message("idle too long"));
        }
        match tokio::time::timeout(self.settings.op_timeout, conn.ftp.noop()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(RecycleError::message("NOOP failed")),
        }
    }
}

pub(super) type Pool = managed::Pool<Manager>;

/// A pooled connection lent to one request (or one upload or download). Dropped, it goes back
/// to the pool — unless a request failed in a way that leaves the connection unusable.
pub(super) struct Session {
    conn: Option<managed::Object<Manager>>,
    pub host: String,
    pub op_timeout: Duration,
    broken: bool,
}

impl Session {
    pub async fn get(pool: &Pool, settings: &Settings) -> HostResult<Session> {
        // Close connections idle past the idle timeout (no background task needed).
        let idle = settings.idle_timeout;
        pool.retain(|_, m| m.last_used() < idle);
        let conn = pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => e,
            other => HostError::transient(&settings.name, format!("get a connection: {other}")),
        })?;
        Ok(Session {
            conn: Some(conn),
            host: settings.name.clone(),
            op_timeout: settings.op_timeout,
            broken: false,
        })
    }

    pub fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a session holds its connection until dropped")
    }

    /// `path` from the server's root (relative paths start at the login folder). Paths reach
    /// the server as command arguments, so a line break in one would be a second command.
    pub fn abs(&mut self, p: &str) -> HostResult<String> {
        if p.contains(['\r', '\n', '\0']) {
            return Err(HostError::permanent(
                &self.host,
                format!("{p:?}: FTP cannot name a path with a line break or NUL"),
            ));
        }
        if p.starts_with('/') {
            return Ok(p.to_string());
        }
        Ok(path::join(&self.conn().home, p))
    }

    /// Run one request with the operation timeout; a failure that leaves the connection out of
    /// step marks it broken.
    pub async fn run<T>(
        &mut self,
        what: &str,
        request: impl AsyncFnOnce(&mut Ftp) -> FtpResult<T>,
    ) -> Result<T, Failed> {
        let ftp = &mut self
            .conn
            .as_mut()
            .expect("a session holds its connection until dropped")
            .ftp;
        let outcome = tokio::time::timeout(self.op_timeout, request(ftp)).await;
        self.settle(what, outcome)
    }

    /// [`Session::run`] for a request that does not need the control connection borrowed (the
    /// end of a transfer).
    pub async fn guard<T>(
        &mut self,
        what: &str,
        request: impl Future<Output = FtpResult<T>>,
    ) -> Result<T, Failed> {
        let outcome = tokio::time::timeout(self.op_timeout, request).await;
        self.settle(what, outcome)
    }

    fn settle<T>(
        &mut self,
        what: &str,
        outcome: Result<FtpResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, Failed> {
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let f = failed(&self.host, what, e);
                self.broken |= f.broken;
                Err(f)
            }
            Err(_) => {
                self.broken = true;
                Err(Failed::timeout(&self.host, what, self.op_timeout))
            }
        }
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Do not return this connection to the pool.
    pub fn discard(&mut self) {
        self.broken = true;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.broken
            && let Some(conn) = self.conn.take()
        {
            // Detached from the pool; dropping it closes the sockets.
            drop(managed::Object::take(conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_only_in_the_bytes_sent() {
        let encoding = LoginEncoding {
            password: Zeroizing::new("s3cret pw".to_string()),
        };
        // What suppaftp logs is the placeholder line; what goes out carries the password.
        let line = format!("PASS {PASSWORD_PLACEHOLDER}\r\n");
        assert_eq!(encoding.encode(&line).expect("encodes"), b"PASS s3cret pw\r\n");
        assert_eq!(encoding.encode("USER me\r\n").expect("encodes"), b"USER me\r\n");
        assert!(!format!("{encoding:?}").contains("s3cret"));
        let settings = Settings {
            name: "partner".into(),
            address: "127.0.0.1".into(),
            port: 21,
            user: "me".into(),
            password: Some(Zeroizing::new("s3cret pw".to_string())),
            tls: FtpTls::None,
            mode: FtpMode::Passive,
            tls_config: None,
            sign_on_commands: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        assert!(!format!("{settings:?}").contains("s3cret"));
    }
}
