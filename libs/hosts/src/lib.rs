//! `ferry-hosts`: every kind of storage Ferry moves files between, behind one [`Host`] trait —
//! in the shape of neon's `remote_storage` and `object_store`'s backends.
//!
//! One module per kind: [`local`] (the node's file system), `sftp`, `ftp`, `smb`, `s3`/`azure`
//! (over `object_store`), plus [`faulty`] (a fault-injecting wrapper for tests) and
//! [`conformance`] (the suite every kind must pass). [`Hosts`] builds and caches one connected
//! host per configured host, opening its secrets with the node's keymat.
//!
//! Paths are `/`-separated strings. A host's *folder* comes from the stored configuration; a
//! *relative path* under it comes from a listing, and is checked by [`path::confine`] before it is
//! joined, so a hostile server that lists `../../x` cannot make Ferry read or write outside the
//! configured folder.
//!
//! Writing is in three steps, so the transfer service keeps its claim / lease / commit-point
//! protocol for every kind: [`Host::write`] opens an [`Upload`] to a temporary name (or, for an
//! object store, to an upload nobody can see yet); [`Upload::finish`] makes the bytes durable and
//! returns a [`Staged`] file that can be verified; [`Staged::commit`] — called by transfer under
//! its lease check — makes it appear under the final name, whole.
//!
//! Invariants:
//! - only this crate touches a file system or a network store;
//! - nothing is ever written under a final name except by [`Staged::commit`];
//! - every error says which host, what was being done, and the server's own words, and is
//!   classified ([`ErrorKind`]) so callers retry only what a retry can fix;
//! - secrets are opened only while connecting and never appear in an error or a log line.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

pub mod conformance;
pub mod faulty;
#[cfg(feature = "ftp")]
pub mod ftp;
pub mod local;
mod measured;
#[cfg(feature = "object")]
pub mod object;
pub mod path;
mod registry;
#[cfg(feature = "sftp")]
pub mod sftp;
#[cfg(feature = "smb")]
pub mod smb;

pub use measured::{HostMetrics, Measured};
pub use registry::{Hosts, OpenSecret, connect};

/// How a caller should treat an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Worth retrying after a wait: connection refused, reset or lost, a timeout, a busy server.
    Transient,
    /// A retry will not help: authentication failed, host key or certificate refused, permission
    /// denied, disk or quota full, a bad setting. Fail at once.
    Permanent,
    /// The file or folder does not exist (permanent, but callers branch on it).
    NotFound,
    /// Stopped because this node's lease ran out (fencing), not because of the host.
    Fenced,
}

impl ErrorKind {
    /// How an I/O error of this kind is treated: a lost or refused connection, a timeout or an
    /// interruption is transient, a missing path is not found, anything else permanent.
    pub fn of_io(kind: std::io::ErrorKind) -> ErrorKind {
        use std::io::ErrorKind as K;
        match kind {
            K::NotFound => ErrorKind::NotFound,
            K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::BrokenPipe
            | K::NotConnected
            | K::UnexpectedEof => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        }
    }
}

/// A classified error from one host. Its text is what operators read: host, action, and the
/// server's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host {host:?}: {message}")]
pub struct HostError {
    pub host: String,
    pub kind: ErrorKind,
    pub message: String,
}

impl HostError {
    pub fn new(host: &str, kind: ErrorKind, message: impl Into<String>) -> HostError {
        HostError {
            host: host.to_string(),
            kind,
            message: message.into(),
        }
    }
    pub fn transient(host: &str, message: impl Into<String>) -> HostError {
        HostError::new(host, ErrorKind::Transient, message)
    }
    pub fn permanent(host: &str, message: impl Into<String>) -> HostError {
        HostError::new(host, ErrorKind::Permanent, message)
    }
    pub fn not_found(host: &str, message: impl Into<String>) -> HostError {
        HostError::new(host, ErrorKind::NotFound, message)
    }
    pub fn fenced(host: &str) -> HostError {
        HostError::new(
            host,
            ErrorKind::Fenced,
            "stopped: this node's epoch was superseded (fenced)",
        )
    }
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// Classify a local I/O error (`what` says what was being done, e.g. `open /in/a.csv`).
    pub fn io(host: &str, what: &str, e: &std::io::Error) -> HostError {
        let kind = ErrorKind::of_io(e.kind());
        HostError::new(host, kind, format!("{what}: {e}"))
    }
}

pub type HostResult<T> = Result<T, HostError>;

/// The retries of a transient failure (a host's `retries` and `retry_wait_secs`): the first wait
/// is `retry_wait_secs`, each later one twice the one before, at most 5 minutes. A caller loops:
///
/// ```ignore
/// let mut backoff = Backoff::new(retries, wait);
/// let value = loop {
///     match op().await {
///         Ok(v) => break v,
///         Err(e) => tokio::time::sleep(backoff.after(e, stopping())?).await,
///     }
/// };
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    wait: Duration,
    left: u32,
    done: u32,
}

impl Backoff {
    const MAX_WAIT: Duration = Duration::from_secs(300);

    pub fn new(retries: u32, first_wait: Duration) -> Backoff {
        Backoff {
            wait: first_wait.min(Self::MAX_WAIT),
            left: retries,
            done: 0,
        }
    }

    /// After the failure `e`: `Ok(wait)` to try again after `wait` (a transient failure with
    /// retries left, while not `stopping`), else `Err` with the error to give up with — a
    /// transient one that used up the retries says how many it took, `… (after 3 retries)`.
    pub fn after(&mut self, e: HostError, stopping: bool) -> Result<Duration, HostError> {
        if !e.is_transient() || stopping {
            return Err(e);
        }
        if self.left == 0 {
            return Err(match self.done {
                0 => e,
                n => HostError {
                    message: format!("{} (after {n} retries)", e.message),
                    ..e
                },
            });
        }
        self.left -= 1;
        self.done += 1;
        let wait = self.wait;
        self.wait = (self.wait * 2).min(Self::MAX_WAIT);
        Ok(wait)
    }

    /// Retries so far.
    pub fn retries(&self) -> u32 {
        self.done
    }
}

/// A file's size and modification time as the host reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    /// Nanoseconds since the Unix epoch (whole seconds on hosts that report no finer).
    pub mtime_ns: i128,
    pub is_dir: bool,
}

/// One file found by [`Host::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the listed folder, `/`-separated. Not yet confined: a hostile server may
    /// list anything here; callers pass it through [`path::confine`].
    pub rel_path: String,
    pub size: u64,
    pub mtime_ns: i128,
}

/// What a host can do, so callers pick the strongest safe path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Capabilities {
    /// A temp file can be renamed into place atomically (readers never see a partial file).
    pub atomic_rename: bool,
    /// A commit can refuse to replace an existing file without a race (create-new).
    pub rename_noreplace: bool,
    /// The host can report a stored file's SHA-256 without it being downloaded.
    pub server_sha256: bool,
    /// An interrupted upload can continue from an offset.
    pub resume: bool,
    /// Written bytes can be made durable (fsync or the like) before the commit.
    pub durable: bool,
    /// File names are bytes and may be stored as they are even when they are not UTF-8 (see
    /// [`path`]); on hosts whose names are strings such a name is refused, naming it.
    pub byte_names: bool,
}

/// A stream of a file's bytes.
pub type ByteStream = Pin<Box<dyn AsyncRead + Send>>;

/// A file's bytes as chunks (see [`Host::read_chunks`]).
pub type Chunks = futures::stream::BoxStream<'static, HostResult<Bytes>>;

/// `stream` as chunks of `chunk` bytes (the last may be shorter), each read error turned into
/// the host's own error for `path`.
pub fn chunks_of(host: &str, path: &str, stream: ByteStream, chunk: usize) -> Chunks {
    use tokio::io::AsyncReadExt;
    let (host, path) = (host.to_string(), path.to_string());
    let chunk = chunk.max(1);
    Box::pin(futures::stream::unfold(Some(stream), move |state| {
        let (host, path) = (host.clone(), path.clone());
        async move {
            let mut stream = state?;
            let mut buf = bytes::BytesMut::with_capacity(chunk);
            while buf.len() < chunk {
                match stream.read_buf(&mut buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Some((Err(HostError::io(&host, &format!("read {path}"), &e)), None)),
                }
            }
            (!buf.is_empty()).then(|| (Ok(buf.freeze()), Some(stream)))
        }
    }))
}

/// Size and SHA-256 of the file at `path` on `host`, read back through the host.
pub async fn hash_stored(host: &DynHost, path: &str) -> HostResult<(u64, String)> {
    let stream = host.read(path, 0).await?;
    hash_reader(stream, |e| HostError::io(host.name(), &format!("read {path}"), e)).await
}

/// Size and SHA-256 of everything `reader` yields (a read-back verification, a recovery check).
/// `on_error` turns a read error into the kind's own [`HostError`].
pub async fn hash_reader<R: AsyncRead + Unpin>(
    mut reader: R,
    on_error: impl Fn(&std::io::Error) -> HostError,
) -> HostResult<(u64, String)> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    let (mut hasher, mut size, mut buf) = (Sha256::new(), 0u64, vec![0u8; 256 << 10]);
    loop {
        let n = reader.read(&mut buf).await.map_err(|e| on_error(&e))?;
        if n == 0 {
            return Ok((size, hex::encode(hasher.finalize())));
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
}

/// Where a write goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTarget {
    /// The folder, created beforehand by [`Host::create_dir_all`] if wanted.
    pub dir: String,
    /// Final file name (no separators).
    pub name: String,
    /// The temporary name to write under (in `dir`), for kinds that rename. It is unique to the
    /// file and the run, so an attempt after a crash finds the earlier attempt's temp.
    pub temp_name: String,
    /// The source's size, when known (multipart sizing, preallocation).
    pub size_hint: u64,
    /// Continue an earlier attempt's temp file if the host can ([`Upload::offset`] says from
    /// where); otherwise, and when false, start afresh (replacing a stale temp).
    pub resume: bool,
    /// Permission bits for the file (the node's own disks and SFTP servers set them:
    /// configuration refuses a `mode` on other kinds); `None`: a new file's default less the
    /// umask (on an SFTP server, the server's).
    pub mode: Option<u32>,
}

impl WriteTarget {
    pub fn final_path(&self) -> String {
        path::join(&self.dir, &self.name)
    }
    pub fn temp_path(&self) -> String {
        path::join(&self.dir, &self.temp_name)
    }
}

/// How a file was checked after it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// Read back and its SHA-256 compared (or compared byte for byte as it streamed).
    ReadBack,
    /// The server computed its SHA-256 and it matched.
    ServerHash,
    /// Its stored size matched (the protocol protects the bytes on the wire).
    Size,
}

/// An upload in progress: bytes go to the temporary name, nobody sees them under the final name.
#[async_trait]
pub trait Upload: Send {
    /// Bytes already in place from an earlier attempt, which the caller must not send again
    /// (0 unless [`WriteTarget::resume`] was asked and the host could resume).
    fn offset(&self) -> u64;
    /// Append `data`.
    async fn write(&mut self, data: Bytes) -> HostResult<()>;
    /// Everything written is stored durably (as far as the kind allows), still under the
    /// temporary name.
    async fn finish(self: Box<Self>) -> HostResult<Box<dyn Staged>>;
    /// Give up: remove what was written (best effort).
    async fn abort(self: Box<Self>);
}

/// Called by [`Staged::commit_gated`] right before its commit request; an `Err` stops the commit.
pub type Gate<'g> = &'g (dyn Fn() -> HostResult<()> + Send + Sync);

/// A written, durable file under its temporary name, waiting to be verified and committed.
#[async_trait]
pub trait Staged: Send {
    /// Check the stored file is what was sent: `size` bytes with SHA-256 `sha256` (hex), as the
    /// sender hashed them on their way. Uses the strongest check the host offers (see the host's
    /// `verify` option); fails on a mismatch. A host that read every byte back as it was written
    /// and compared it with what it was given (the node's own disks) checks the size only.
    async fn verify(&mut self, size: u64, sha256: &str) -> HostResult<Verification>;
    /// [`Staged::commit_gated`] with nothing to check (tools and tests that hold no lease).
    async fn commit(&mut self, final_path: &str, replace: bool) -> HostResult<bool> {
        let committed = self.commit_gated(final_path, replace, &|| Ok(())).await?;
        self.tidy().await;
        Ok(committed)
    }
    /// The commit point: make the file appear under `final_path` (in the target's folder). With
    /// `replace` false, an existing file there is left alone and `Ok(false)` returned.
    ///
    /// `gate` is called immediately before the one request that makes the file appear (after a
    /// pooled connection was taken and any look-up the kind needs), and an `Err` from it is
    /// returned with nothing changed: the caller checks its lease there, so the window between
    /// that check and the commit is one request, not a wait for a connection (ADR 004).
    /// Tidying up after the commit (an SFTP temp's second name) happens outside the window.
    async fn commit_gated(&mut self, final_path: &str, replace: bool, gate: Gate<'_>) -> HostResult<bool>;
    /// After a commit: tidy up what the commit left outside its window (best effort; a crash
    /// before it leaves a complete copy under the temp name, never a partial final file).
    async fn tidy(&mut self) {}
    /// Remove the staged file (best effort).
    async fn abort(self: Box<Self>);
}

/// What `ferry host test` prints about a server.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    /// e.g. `OpenSSH_9.2p1`, `vsftpd 3.0.3`, `SMB 3.1.1`.
    pub server: Option<String>,
    /// SSH host key, `SHA256:…`.
    pub host_key_sha256: Option<String>,
    /// TLS certificate subject and expiry.
    pub tls_subject: Option<String>,
    pub tls_not_after: Option<String>,
    pub capabilities: Capabilities,
    /// Other facts worth showing (`key: value`).
    pub notes: Vec<String>,
}

/// One place files live. Implementations are cheap to share (`Arc<dyn Host>`) and pool their
/// connections inside.
#[async_trait]
pub trait Host: Send + Sync {
    /// The configured host name (used in every error).
    fn name(&self) -> &str;
    fn capabilities(&self) -> Capabilities;

    /// Files under `folder` (and its subfolders if `recursive`), sorted by relative path. Folders
    /// themselves are not listed. A missing folder is a [`ErrorKind::NotFound`] error.
    async fn list(&self, folder: &str, recursive: bool) -> HostResult<Vec<Entry>>;
    /// A file's metadata, `None` if nothing is there.
    async fn stat(&self, path: &str) -> HostResult<Option<Meta>>;
    /// Read a file from `offset` to its end.
    async fn read(&self, path: &str, offset: u64) -> HostResult<ByteStream>;
    /// Read a file from its start as chunks of about `chunk` bytes, for streaming it to other
    /// hosts. By default [`Host::read`] cut into chunks; a kind with a cheaper way overrides it
    /// (a local file is read straight into the chunks, off the async workers).
    async fn read_chunks(&self, path: &str, chunk: usize) -> HostResult<Chunks> {
        let stream = self.read(path, 0).await?;
        Ok(chunks_of(self.name(), path, stream, chunk))
    }
    /// Create a folder and its parents (`mkdir -p`); an existing folder is fine.
    async fn create_dir_all(&self, path: &str) -> HostResult<()>;
    /// Start writing a file (see [`WriteTarget`]).
    async fn write(&self, target: &WriteTarget) -> HostResult<Box<dyn Upload>>;
    /// Delete a file; a missing file is fine.
    async fn delete(&self, path: &str) -> HostResult<()>;
    /// Make renames into `dir` durable (a local folder fsync); a no-op where the kind has none.
    async fn sync_dir(&self, _dir: &str) -> HostResult<()> {
        Ok(())
    }
    /// Connect, look at `folder`, and say what the server offers (`ferry host test`).
    async fn probe(&self, folder: &str) -> HostResult<Probe>;
    /// The connection pool's state; `None` for kinds without one (the node's own disks).
    fn pool(&self) -> Option<PoolStatus> {
        None
    }
}

/// A shared host.
pub type DynHost = Arc<dyn Host>;

/// A host's connection pool as it is now (for the pool gauges of [`HostMetrics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections (or, for object stores, requests) in use.
    pub in_use: usize,
    /// Open connections waiting in the pool; `None` where the kind's client keeps them out of
    /// sight (object stores: reqwest's own pool).
    pub idle: Option<usize>,
    /// The host's `max_connections`.
    pub max: usize,
}

impl PoolStatus {
    #[cfg(any(feature = "sftp", feature = "ftp", feature = "smb"))]
    pub(crate) fn of_deadpool(status: deadpool::Status) -> PoolStatus {
        PoolStatus {
            in_use: status.size.saturating_sub(status.available),
            idle: Some(status.available),
            max: status.max_size,
        }
    }
}
