//! Connections: one pooled [`SmbConn`] is one TCP connection with one authenticated session and
//! one tree connect to the configured share. SMB multiplexes requests on a connection (credits),
//! so an upload or a download keeps several requests in flight on its one connection; the pool
//! bounds how many transfers run at once.
//!
//! Credits, and why a connection has a budget ([`CREDIT_BUDGET`]): a request is charged one
//! credit per 64 KiB and the server grants credits back on its answers. When the server answers
//! asynchronously (an interim `STATUS_PENDING`, then the result), it grants the credits on the
//! interim answer and none on the final one (MS-SMB2 3.3.4.2; Samba's
//! `smb2_set_operation_credit`). The `smb` crate (0.12.1) accounts only the final answer, so each
//! asynchronous answer loses its request's charge for good. Samba answers a read or write
//! asynchronously whenever it is not done within 500 µs: on loopback that was 97% of 4 MiB
//! writes and 9% of 1 MiB reads, and a connection holding 1024 credits stalled after about
//! 70 MiB of upload. What a connection can never run out of is what it was granted up front
//! (its permits only ever drop by what it is charged): it asks for [`CREDITS_REQUESTED`] when it
//! logs in (the default maximum of Samba and of Windows; Samba grants it all at once), so while
//! it is charged no more than that in its whole life it never waits for a credit, however the
//! server answers. [`SmbConn::spend`] counts the charges; a transfer moves to a fresh connection
//! when its connection has spent [`CREDIT_BUDGET`] (half of what it asked for: room for a server
//! that grants less), and such a connection leaves the pool for good. A server that grants far
//! less up front and also answers most requests asynchronously could still starve a connection:
//! its requests then end in a transient timeout, never a hang.
//!
//! Invariants: a connection that failed as a connection (lost, reset, timed out) is marked
//! broken and never handed out again; a connection that spent its credit budget is never
//! handed out again; a pooled connection is probed with one request before it is reused;
//! connections idle for `idle_timeout_secs` are closed by a background sweep.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use ferry_config::{HostOptions, SmbEncryption, SmbSpec};
use ferry_keymat::Zeroizing;
use smb::connection::EncryptionMode;
use smb::{
    Connection, ConnectionConfig, Directory, FileAccessMask, FileAttributes, FileBasicInformation,
    FileCreateArgs, Resource, Session, Tree, UncPath,
};

use super::status::{self, Failure};
use super::tcp::Tcp;
use crate::{HostError, HostResult};

/// Credits a connection asks for when it logs in (the crate's `credits_backlog`): the default
/// maximum of Samba (`smb2 max credits`) and of Windows (`Smb2CreditsMax`).
pub const CREDITS_REQUESTED: u16 = 8192;

/// Credits a connection may be charged in its life (see the module doc): 256 MiB of reads and
/// writes.
pub const CREDIT_BUDGET: u32 = CREDITS_REQUESTED as u32 / 2;

/// A pooled connection with less budget left than this is not handed out again (16 MiB of
/// reads and writes, or as many small requests).
const RECYCLE_RESERVE: u32 = 256;

/// What the server charges a read or write of `len` bytes: one credit per 64 KiB (MS-SMB2
/// 3.2.4.1.5, as the crate computes it).
pub fn credits(len: usize) -> u32 {
    1 + (len.max(1) as u32 - 1) / (64 << 10)
}

/// Everything needed to open a connection, fixed when the host is built.
pub struct Settings {
    pub host: String,
    pub server: String,
    pub port: u16,
    pub share: String,
    pub user: String,
    pub domain: String,
    pub password: Zeroizing<String>,
    pub encryption: SmbEncryption,
    pub connect_timeout: Duration,
    pub op_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Settings {
    pub fn new(host: &str, options: &HostOptions, spec: &SmbSpec, password: Zeroizing<String>) -> Settings {
        Settings {
            host: host.to_string(),
            server: spec.server.clone(),
            port: spec.port,
            share: spec.share.clone(),
            user: spec.user.clone(),
            domain: spec.domain.clone(),
            password,
            encryption: spec.encryption,
            connect_timeout: Duration::from_secs(options.connect_timeout_secs.max(1)),
            op_timeout: Duration::from_secs(options.operation_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(options.idle_timeout_secs.max(1)),
        }
    }

    /// `\\server\share`, as operators wrote it.
    pub fn unc(&self) -> String {
        format!(r"\\{}\{}", self.server, self.share)
    }

    /// A classified error of this host.
    pub fn error(&self, what: &str, f: &Failure) -> HostError {
        HostError::new(&self.host, f.kind, format!("{what}: {}", f.text))
    }
}

/// Negotiated facts about a connection, for `ferry host test`.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub dialect: &'static str,
    pub encrypted: bool,
    pub cipher: Option<String>,
    pub signing: Option<String>,
    pub max_read: usize,
    pub max_write: usize,
}

/// One connection, session and tree connect.
pub struct SmbConn {
    inner: Option<Inner>,
    broken: AtomicBool,
    /// Credits charged so far (see [`SmbConn::spend`]).
    spent: AtomicU32,
    pub negotiated: Negotiated,
}

struct Inner {
    connection: Arc<Connection>,
    session: Session,
    tree: Tree,
    /// The share's root, held open: the health probe asks it for its attributes (one request).
    root: Directory,
}

impl SmbConn {
    pub fn tree(&self) -> &Tree {
        &self.inner.as_ref().expect("set until dropped").tree
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Charge `credits` to this connection's budget, unless that would exceed it: then nothing is
    /// charged and the caller moves to another connection.
    pub fn spend(&self, credits: u32) -> bool {
        self.spent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |spent| {
                (spent + credits <= CREDIT_BUDGET).then_some(spent + credits)
            })
            .is_ok()
    }

    /// Credits charged so far.
    pub fn spent(&self) -> u32 {
        self.spent.load(Ordering::Relaxed)
    }

    /// Note a failure on this connection: if it was the connection's, the pool drops it.
    pub fn note(&self, f: &Failure) {
        if f.breaks_connection() {
            self.mark_broken();
        }
    }

    /// Run one request with the operation timeout; a timeout breaks the connection (credits and
    /// message ids of the abandoned request are lost with it). Charged one credit, past the
    /// budget if need be: small requests are not worth a new connection, and [`CREDIT_BUDGET`]
    /// leaves room for them.
    ///
    /// (Not an `async fn`: one more level of future nesting overflows the compiler's layout
    /// depth on the crate's deeply nested request futures.)
    pub fn run<T>(
        &self,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> impl std::future::Future<Output = Result<T, Failure>> {
        self.spent.fetch_add(1, Ordering::Relaxed);
        self.timed(limit, fut)
    }

    /// [`SmbConn::run`] without the charge, for waits whose requests are few or counted
    /// elsewhere (the next entries of a listing).
    pub async fn timed<T>(
        &self,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let result = match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(Failure::timeout(limit.as_secs())),
        };
        if let Err(f) = &result {
            self.note(f);
        }
        result
    }

    async fn probe(&self, limit: Duration) -> Result<(), Failure> {
        let root = &self.inner.as_ref().expect("set until dropped").root;
        self.run(limit, async {
            root.query_info::<FileBasicInformation>()
                .await
                .map(|_| ())
                .map_err(|e| status::classify(&e))
        })
        .await
    }
}

impl Drop for SmbConn {
    fn drop(&mut self) {
        // The crate closes handles, trees, sessions and sockets from tokio tasks it spawns on
        // drop; outside a runtime (a host dropped at process exit) that would panic, so leak.
        if tokio::runtime::Handle::try_current().is_err() {
            std::mem::forget(self.inner.take());
            return;
        }
        if let Some(inner) = self.inner.take() {
            let healthy = !self.is_broken();
            tokio::spawn(async move {
                // Say goodbye properly to a server that still answers (otherwise the crate's
                // drop handlers try, and log their failures).
                if healthy {
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        let _ = inner.root.close().await;
                        let _ = inner.tree.disconnect().await;
                        let _ = inner.session.logoff().await;
                    })
                    .await;
                }
                let connection = inner.connection.clone();
                drop(inner);
                let _ = connection.close().await;
            });
        }
    }
}

/// The pool's manager: connects and health-checks.
pub struct Manager {
    pub settings: Arc<Settings>,
}

pub type Pool = managed::Pool<Manager>;
pub type Conn = managed::Object<Manager>;

impl managed::Manager for Manager {
    type Type = SmbConn;
    type Error = HostError;

    async fn create(&self) -> Result<SmbConn, HostError> {
        let s = &self.settings;
        match tokio::time::timeout(s.connect_timeout, connect(s)).await {
            Ok(result) => result,
            Err(_) => Err(HostError::transient(
                &s.host,
                format!(
                    "connect to {} (port {}): no answer within {} s",
                    s.unc(),
                    s.port,
                    s.connect_timeout.as_secs()
                ),
            )),
        }
    }

    async fn recycle(&self, conn: &mut SmbConn, metrics: &Metrics) -> RecycleResult<HostError> {
        if conn.is_broken() {
            return Err(RecycleError::message("connection failed earlier"));
        }
        if metrics.last_used() >= self.settings.idle_timeout {
            return Err(RecycleError::message("idle too long"));
        }
        if conn.spent() + RECYCLE_RESERVE > CREDIT_BUDGET {
            return Err(RecycleError::message("spent its credit budget"));
        }
        conn.probe(self.settings.op_timeout)
            .await
            .map_err(|f| RecycleError::Backend(self.settings.error("health check", &f)))
    }
}

/// Build the pool and start its idle sweep. Needs a tokio runtime (for the sweep).
pub fn pool(settings: Arc<Settings>, max: u32) -> Pool {
    let idle = settings.idle_timeout;
    let pool = Pool::builder(Manager { settings })
        .max_size(max.max(1) as usize)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a pool with a runtime and no hooks always builds");
    let weak = pool.weak();
    tokio::spawn(async move {
        let every = (idle / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::time::sleep(every).await;
            let Some(pool) = weak.upgrade() else { break };
            drop(pool.retain(|_, m| m.last_used() < idle));
        }
    });
    pool
}

fn auth_identity(s: &Settings) -> HostResult<sspi::AuthIdentity> {
    let username = if s.domain.is_empty() {
        sspi::Username::parse(&s.user)
    } else {
        sspi::Username::new(&s.user, Some(&s.domain))
    }
    .map_err(|e| HostError::permanent(&s.host, format!("user {:?}: {e}", s.user)))?;
    Ok(sspi::AuthIdentity {
        username,
        password: sspi::Secret::from(s.password.as_str().to_string()),
    })
}

fn dialect_name(d: smb::Dialect) -> &'static str {
    match d {
        smb::Dialect::Smb0202 => "SMB 2.0.2",
        smb::Dialect::Smb021 => "SMB 2.1",
        smb::Dialect::Smb030 => "SMB 3.0",
        smb::Dialect::Smb0302 => "SMB 3.0.2",
        smb::Dialect::Smb0311 => "SMB 3.1.1",
    }
}

/// The crate's words when a session cannot be encrypted (it refuses it before the session is
/// used). Matched to fall back from encryption to signing for `encryption = "desired"`.
fn is_no_encryption(e: &smb::Error) -> bool {
    matches!(
        e,
        smb::Error::InvalidMessage(m) | smb::Error::NegotiationError(m)
            if m.starts_with("Encryption is required")
    )
}

async fn connect(s: &Settings) -> HostResult<SmbConn> {
    let address = resolve(s).await?;
    match s.encryption {
        SmbEncryption::Required => connect_with(s, address, EncryptionMode::Required).await,
        SmbEncryption::Off => connect_with(s, address, EncryptionMode::Disabled).await,
        // Ask for encryption; a server that cannot encrypt gets a signed session instead.
        SmbEncryption::Desired => match connect_with(s, address, EncryptionMode::Required).await {
            Err(Attempt::NoEncryption(_)) => connect_with(s, address, EncryptionMode::Allowed).await,
            other => other,
        },
    }
    .map_err(Attempt::into_error)
}

async fn resolve(s: &Settings) -> HostResult<SocketAddr> {
    let what = || format!("resolve {}", s.server);
    tokio::net::lookup_host((s.server.as_str(), s.port))
        .await
        .map_err(|e| HostError::transient(&s.host, format!("{}: {e}", what())))?
        .next()
        .ok_or_else(|| HostError::permanent(&s.host, format!("{}: no address", what())))
}

/// Why one connection attempt failed.
enum Attempt {
    /// The session could not be encrypted (the server offers no cipher).
    NoEncryption(HostError),
    Other(HostError),
}

impl Attempt {
    fn into_error(self) -> HostError {
        match self {
            Attempt::NoEncryption(e) | Attempt::Other(e) => e,
        }
    }
}

async fn connect_with(s: &Settings, address: SocketAddr, mode: EncryptionMode) -> Result<SmbConn, Attempt> {
    let other = |e: HostError| Attempt::Other(e);
    let unc = s.unc();
    let fail = |what: String, e: smb::Error| {
        let f = status::classify(&e);
        Attempt::Other(s.error(&what, &f))
    };
    let config = ConnectionConfig {
        timeout: Some(s.op_timeout),
        encryption_mode: mode,
        // Granted at login; see the module doc.
        credits_backlog: Some(CREDITS_REQUESTED),
        client_name: Some("ferry".to_string()),
        ..ConnectionConfig::default()
    };
    let no_encryption = || {
        Attempt::NoEncryption(HostError::permanent(
            &s.host,
            format!(
                "connect to {unc}: the server offers no SMB 3 encryption, and encryption = \
                 \"required\" (set \"desired\" to accept a signed-only session)"
            ),
        ))
    };
    let what = || format!("connect to {unc} (port {})", s.port);
    let tcp = Tcp::connect(address)
        .await
        .map_err(|e| Attempt::Other(s.error(&what(), &status::classify_io(&e))))?;
    // A client GUID per connection: Samba hands every connection of one client GUID to the
    // process already serving it (multichannel), which would put the whole pool on one core.
    let connection =
        match Connection::from_transport(Box::new(tcp), &s.server, smb::Guid::generate(), config).await {
            Ok(c) => Arc::new(c),
            Err(e) if is_no_encryption(&e) => return Err(no_encryption()),
            Err(e) => return Err(fail(what(), e)),
        };
    let identity = auth_identity(s).map_err(other)?;
    let session = match connection.authenticate(identity).await {
        Ok(session) => session,
        Err(e) if is_no_encryption(&e) => return Err(no_encryption()),
        Err(e) => {
            let f = status::classify(&e);
            let hint = if f.is(status::LOGON_FAILURE) {
                ": wrong user name or password"
            } else if f.is(status::ACCESS_DENIED) && mode == EncryptionMode::Disabled {
                ": the server may require encryption (encryption = \"off\")"
            } else {
                ""
            };
            return Err(Attempt::Other(HostError::new(
                &s.host,
                f.kind,
                format!("log in to {unc} as {}: {}{hint}", s.user, f.text),
            )));
        }
    };
    let share = UncPath::new(&s.server)
        .and_then(|u| u.with_share(&s.share))
        .map_err(|e| fail(format!("share {unc}"), e))?;
    let tree = session.tree_connect(&share).await.map_err(|e| {
        let f = status::classify(&e);
        let message = if f.is(status::BAD_NETWORK_NAME) {
            format!("share {:?} does not exist on {} ({})", s.share, s.server, f.text)
        } else if f.is(status::ACCESS_DENIED) {
            format!(
                "connect to share {unc} as {}: {} (not a valid user of the share{})",
                s.user,
                f.text,
                if mode == EncryptionMode::Disabled {
                    ", or the share requires encryption and encryption = \"off\""
                } else {
                    ""
                }
            )
        } else {
            format!("connect to share {unc}: {}", f.text)
        };
        Attempt::Other(HostError::new(&s.host, f.kind, message))
    })?;
    let root = match tree
        .create(
            "",
            &FileCreateArgs {
                options: smb::CreateOptions::new().with_directory_file(true),
                attributes: FileAttributes::new(),
                ..FileCreateArgs::make_open_existing(FileAccessMask::new().with_file_read_attributes(true))
            },
        )
        .await
    {
        Ok(Resource::Directory(d)) => d,
        Ok(_) => {
            return Err(other(HostError::permanent(
                &s.host,
                format!("share {unc}: its root is not a folder"),
            )));
        }
        Err(e) => return Err(fail(format!("open the root of {unc}"), e)),
    };
    let info = connection
        .conn_info()
        .expect("a connected connection has negotiated");
    let negotiation = &info.negotiation;
    // `Allowed` is only used after the server could not encrypt (see `connect`).
    let encrypted = mode == EncryptionMode::Required;
    let negotiated = Negotiated {
        dialect: dialect_name(negotiation.dialect_rev),
        encrypted,
        cipher: negotiation.encryption_cipher.map(|c| format!("{c:?}")),
        signing: negotiation.signing_algo.map(|a| format!("{a:?}")),
        max_read: negotiation.max_read_size as usize,
        max_write: negotiation.max_write_size as usize,
    };
    Ok(SmbConn {
        inner: Some(Inner {
            connection,
            session,
            tree,
            root,
        }),
        broken: AtomicBool::new(false),
        spent: AtomicU32::new(0),
        negotiated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unconnected() -> SmbConn {
        SmbConn {
            inner: None,
            broken: AtomicBool::new(false),
            spent: AtomicU32::new(0),
            negotiated: Negotiated {
                dialect: "SMB 3.1.1",
                encrypted: true,
                cipher: None,
                signing: None,
                max_read: 8 << 20,
                max_write: 8 << 20,
            },
        }
    }

    #[test]
    fn requests_are_charged_a_credit_per_64_kib() {
        assert_eq!(credits(0), 1);
        assert_eq!(credits(1), 1);
        assert_eq!(credits(64 << 10), 1);
        assert_eq!(credits((64 << 10) + 1), 2);
        assert_eq!(credits(1 << 20), 16);
        assert_eq!(credits(4 << 20), 64);
    }

    #[test]
    fn a_connection_is_charged_no_more_than_its_budget() {
        let conn = unconnected();
        let write = credits(4 << 20);
        let mut moved = 0u64;
        while conn.spend(write) {
            moved += 4 << 20;
        }
        // 256 MiB of 4 MiB writes, and not one more.
        assert_eq!(moved, 256 << 20);
        assert_eq!(conn.spent(), CREDIT_BUDGET);
        assert!(!conn.spend(1));
        // Well within what the connection was granted at login, whatever the server answers.
        assert!(CREDIT_BUDGET * 2 <= CREDITS_REQUESTED as u32);
    }
}
