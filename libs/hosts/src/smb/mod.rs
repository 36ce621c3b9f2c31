//! `smb`: a Windows or Samba share over SMB 2/3, with the pure-Rust async `smb` crate.
//!
//! The share comes from the configuration (`\\server\share` or `smb://server[:port]/share`);
//! paths in the [`Host`] trait are `/`-separated folders inside the share, sent to the server
//! with `\`. A name that itself contains `\` is refused (the server would read it as a folder).
//!
//! How the seam maps onto the protocol:
//! - list: QUERY_DIRECTORY (`FileDirectoryInformation`), recursive on request, `.`/`..` skipped;
//! - read: pipelined READs (1 MiB, 8 in flight: `transfer::READ_CHUNK`, `READ_WINDOW`);
//! - write: CREATE of the temp name (exclusive; `resume` reopens it), pipelined WRITEs (4 MiB,
//!   2 in flight),
//!   `finish` = FLUSH (Samba fsyncs) and CLOSE;
//! - commit: SET_INFO `FileRenameInformation` with `ReplaceIfExists` = `replace`: the server
//!   renames or answers `STATUS_OBJECT_NAME_COLLISION` in one request. Windows does this
//!   atomically; Samba 4.17 checks for the target and renames within the same request (a
//!   process writing the share's folder locally could slip in between).
//! - delete: CREATE with delete-on-close; mkdir -p: CREATE (open-if) per missing folder.
//!
//! Authentication is NTLM (user, password, domain) over a signed session; with
//! `encryption = "required"` (the default) every message is SMB 3 encrypted and a server that
//! cannot encrypt is refused; `desired` falls back to a signed session; `off` signs only.
//!
//! Not supported: DFS referrals (a path on a DFS link fails with `STATUS_PATH_NOT_COVERED`) and
//! Kerberos. Two limits of the crate (0.12.1, used as published) shape this module: it loses the
//! credits of asynchronous answers, so a connection is used for a bounded number of credits and
//! long transfers move to fresh connections (`conn`'s module doc); and it parses an encrypted
//! message byte by byte (about 2.7 ns per byte, more than the decryption), which bounds an
//! encrypted download to roughly 250 MiB/s per connection on this class of machine.
//!
//! Invariants: nothing is written under a final name except by the commit's rename; the
//! password is only in the session setup and never in an error; every request has the
//! operation timeout, so a stalled server ends in a transient error.

mod conn;
mod status;
mod tcp;
mod transfer;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use ferry_config::{HostOptions, SmbSpec};
use futures::StreamExt;
use smb::{
    CreateDisposition, CreateOptions, Directory, FileAccessMask, FileAttributes, FileCreateArgs,
    FileDirectoryInformation, GetLen, Resource,
};

use crate::registry::OpenSecret;
use crate::{
    ByteStream, Capabilities, DynHost, Entry, Host, HostError, HostResult, Meta, Probe, Upload, WriteTarget,
};
use conn::{Conn, Pool, Settings, SmbConn};
use status::Failure;

const CAPABILITIES: Capabilities = Capabilities {
    atomic_rename: true,
    rename_noreplace: true,
    server_sha256: false,
    resume: true,
    durable: true,
    byte_names: false,
};

/// A share on an SMB server.
pub struct SmbHost {
    shared: Arc<Shared>,
}

/// What the host, its uploads and its staged files share.
struct Shared {
    settings: Arc<Settings>,
    max_connections: u32,
    verify: ferry_config::Verify,
    /// Built on first use: its idle sweep needs a runtime, and `build` may run outside one.
    pool: OnceLock<Pool>,
}

impl SmbHost {
    pub fn build(
        name: &str,
        options: &HostOptions,
        spec: &SmbSpec,
        open: &OpenSecret<'_>,
    ) -> HostResult<DynHost> {
        let password = match &spec.password {
            Some(secret) => open("password", secret)?,
            None => ferry_keymat::Zeroizing::new(String::new()),
        };
        Ok(Arc::new(SmbHost {
            shared: Arc::new(Shared {
                settings: Arc::new(Settings::new(name, options, spec, password)),
                max_connections: options.max_connections,
                verify: options.verify,
                pool: OnceLock::new(),
            }),
        }))
    }
}

impl Shared {
    fn name(&self) -> &str {
        &self.settings.host
    }

    fn op_timeout(&self) -> std::time::Duration {
        self.settings.op_timeout
    }

    /// A connection from the pool (connecting if none is idle).
    async fn conn(&self) -> HostResult<Conn> {
        let pool = self
            .pool
            .get_or_init(|| conn::pool(self.settings.clone(), self.max_connections));
        use deadpool::managed::PoolError;
        pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => e,
            PoolError::Timeout(_) => HostError::transient(
                self.name(),
                format!("connect to {}: timed out", self.settings.unc()),
            ),
            other => HostError::permanent(self.name(), format!("connection pool: {other}")),
        })
    }

    fn error(&self, what: &str, f: &Failure) -> HostError {
        self.settings.error(what, f)
    }

    /// `/`-separated host path → the share-relative path SMB sends (`a\b\c`, `""` for the
    /// share's root). Refuses backslashes, NUL and `..`.
    fn smb_path(&self, path: &str) -> HostResult<String> {
        smb_path(path).map_err(|why| HostError::permanent(self.name(), why))
    }

    /// Open `path` on `conn` with the operation timeout.
    async fn open(&self, conn: &SmbConn, path: &str, args: FileCreateArgs) -> Result<Resource, Failure> {
        conn.run(self.op_timeout(), async {
            conn.tree()
                .create(path, &args)
                .await
                .map_err(|e| status::classify(&e))
        })
        .await
    }

    /// Close a handle (a failure to close is only worth a log line).
    async fn close(&self, conn: &SmbConn, resource: Resource) {
        let result = conn
            .run(self.op_timeout(), async {
                match &resource {
                    Resource::File(f) => f.close().await,
                    Resource::Directory(d) => d.close().await,
                    Resource::Pipe(p) => p.close().await,
                }
                .map_err(|e| status::classify(&e))
            })
            .await;
        if let Err(f) = result {
            tracing::debug!(host = self.name(), error = %f.text, "close failed");
        }
    }

    async fn stat_on(&self, conn: &SmbConn, path: &str) -> HostResult<Option<Meta>> {
        let smb = self.smb_path(path)?;
        let args = FileCreateArgs::make_open_existing(read_attributes());
        let resource = match self.open(conn, &smb, args).await {
            Ok(r) => r,
            Err(f) if f.is_not_found() => return Ok(None),
            Err(f) => return Err(self.error(&format!("stat {path}"), &f)),
        };
        let meta = match &resource {
            Resource::File(f) => Meta {
                size: f.get_len().await.unwrap_or(0),
                mtime_ns: filetime_ns(&smb::binrw_util::file_time::FileTime::from(f.modified())),
                is_dir: false,
            },
            Resource::Directory(d) => Meta {
                size: 0,
                mtime_ns: filetime_ns(&smb::binrw_util::file_time::FileTime::from(d.modified())),
                is_dir: true,
            },
            Resource::Pipe(_) => Meta {
                size: 0,
                mtime_ns: 0,
                is_dir: false,
            },
        };
        self.close(conn, resource).await;
        Ok(Some(meta))
    }

    /// The entries of one folder: (name, is_dir, size, mtime).
    async fn read_dir(
        &self,
        conn: &SmbConn,
        folder: &str,
        smb: &str,
    ) -> HostResult<Vec<(String, bool, u64, i128)>> {
        let what = || format!("list {folder}");
        let args = FileCreateArgs {
            options: CreateOptions::new().with_directory_file(true),
            ..FileCreateArgs::make_open_existing(
                FileAccessMask::new()
                    .with_file_read_data(true) // FILE_LIST_DIRECTORY
                    .with_file_read_attributes(true)
                    .with_synchronize(true),
            )
        };
        let dir = match self.open(conn, smb, args).await {
            Ok(Resource::Directory(d)) => Arc::new(d),
            Ok(other) => {
                self.close(conn, other).await;
                return Err(HostError::permanent(
                    self.name(),
                    format!("{}: {folder} is not a folder", what()),
                ));
            }
            Err(f) if f.is(status::NOT_A_DIRECTORY) => {
                return Err(HostError::permanent(
                    self.name(),
                    format!("{}: {folder} is not a folder", what()),
                ));
            }
            Err(f) => return Err(self.error(&what(), &f)),
        };
        let limit = self.op_timeout();
        let mut found = Vec::new();
        let listed: Result<(), Failure> = async {
            let mut stream = conn
                .run(limit, async {
                    Directory::query::<FileDirectoryInformation>(&dir, "*")
                        .await
                        .map_err(|e| status::classify(&e))
                })
                .await?;
            loop {
                let next = conn.timed(limit, async { Ok(stream.next().await) }).await?;
                match next {
                    None => break,
                    Some(Err(e)) => {
                        let f = status::classify(&e);
                        conn.note(&f);
                        return Err(f);
                    }
                    Some(Ok(info)) => {
                        let name = info.file_name.to_string();
                        if name == "." || name == ".." {
                            continue;
                        }
                        found.push((
                            name,
                            info.file_attributes.directory(),
                            info.end_of_file,
                            filetime_ns(&info.last_write_time),
                        ));
                    }
                }
            }
            Ok(())
        }
        .await;
        let dir = Arc::try_unwrap(dir).ok();
        if let Some(dir) = dir {
            self.close(conn, Resource::Directory(dir)).await;
        }
        listed.map_err(|f| self.error(&what(), &f))?;
        Ok(found)
    }

    async fn delete_on(&self, conn: &SmbConn, path: &str) -> HostResult<()> {
        let smb = self.smb_path(path)?;
        let args = FileCreateArgs {
            options: CreateOptions::new()
                .with_non_directory_file(true)
                .with_delete_on_close(true),
            ..FileCreateArgs::make_open_existing(
                FileAccessMask::new()
                    .with_delete(true)
                    .with_file_read_attributes(true),
            )
        };
        match self.open(conn, &smb, args).await {
            Ok(resource) => {
                self.close(conn, resource).await;
                Ok(())
            }
            Err(f) if f.is_not_found() => Ok(()),
            Err(f) => Err(self.error(&format!("delete {path}"), &f)),
        }
    }
}

fn read_attributes() -> FileAccessMask {
    FileAccessMask::new()
        .with_file_read_attributes(true)
        .with_synchronize(true)
}

/// See [`Shared::smb_path`].
fn smb_path(path: &str) -> Result<String, String> {
    if path.contains('\\') {
        return Err(format!(
            "{path:?} contains a backslash, which SMB reads as a folder separator"
        ));
    }
    if path.contains('\0') {
        return Err(format!("{path:?} contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{path:?} leaves its folder (\"..\")")),
            p => parts.push(p),
        }
    }
    Ok(parts.join("\\"))
}

/// 100 ns ticks since 1601 → ns since 1970.
fn filetime_ns(t: &smb::binrw_util::file_time::FileTime) -> i128 {
    const UNIX_EPOCH_IN_TICKS: i128 = 116_444_736_000_000_000;
    (**t as i128 - UNIX_EPOCH_IN_TICKS) * 100
}

#[async_trait]
impl Host for SmbHost {
    fn name(&self) -> &str {
        self.shared.name()
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn pool(&self) -> Option<crate::PoolStatus> {
        // The pool is made on first use: before that, nothing is open.
        let status = self.shared.pool.get().map(|p| p.status());
        Some(status.map_or(
            crate::PoolStatus {
                in_use: 0,
                idle: Some(0),
                max: self.shared.max_connections.max(1) as usize,
            },
            crate::PoolStatus::of_deadpool,
        ))
    }

    async fn list(&self, folder: &str, recursive: bool) -> HostResult<Vec<Entry>> {
        let s = &self.shared;
        let root = s.smb_path(folder)?;
        let conn = s.conn().await?;
        let mut found = Vec::new();
        // (relative path with `/`, share path with `\`)
        let mut pending = vec![(String::new(), root)];
        while let Some((rel, smb)) = pending.pop() {
            let shown = crate::path::join(folder, &rel);
            for (name, is_dir, size, mtime_ns) in s.read_dir(&conn, &shown, &smb).await? {
                let rel_path = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if is_dir {
                    if recursive {
                        let child = if smb.is_empty() {
                            name
                        } else {
                            format!("{smb}\\{name}")
                        };
                        pending.push((rel_path, child));
                    }
                } else {
                    found.push(Entry {
                        rel_path,
                        size,
                        mtime_ns,
                    });
                }
            }
        }
        found.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
        Ok(found)
    }

    async fn stat(&self, path: &str) -> HostResult<Option<Meta>> {
        let conn = self.shared.conn().await?;
        self.shared.stat_on(&conn, path).await
    }

    async fn read(&self, path: &str, offset: u64) -> HostResult<ByteStream> {
        transfer::read(self.shared.clone(), path, offset).await
    }

    async fn create_dir_all(&self, path: &str) -> HostResult<()> {
        let s = &self.shared;
        let smb = s.smb_path(path)?;
        if smb.is_empty() {
            return Ok(());
        }
        let conn = s.conn().await?;
        let parts: Vec<&str> = smb.split('\\').collect();
        // Most calls find the parents in place: try the whole path first, then each prefix.
        let mut start = parts.len() - 1;
        loop {
            let prefix = parts[..=start].join("\\");
            let args = FileCreateArgs {
                disposition: CreateDisposition::OpenIf,
                options: CreateOptions::new().with_directory_file(true),
                attributes: FileAttributes::new().with_directory(true),
                desired_access: read_attributes(),
            };
            match s.open(&conn, &prefix, args).await {
                Ok(resource) => {
                    s.close(&conn, resource).await;
                    if start + 1 == parts.len() {
                        return Ok(());
                    }
                    start += 1;
                }
                Err(f) if f.is(status::OBJECT_PATH_NOT_FOUND) && start > 0 => start -= 1,
                Err(f) if f.is(status::NOT_A_DIRECTORY) || f.is(status::OBJECT_NAME_COLLISION) => {
                    return Err(HostError::permanent(
                        s.name(),
                        format!(
                            "create folder {path}: {} exists and is not a folder",
                            prefix.replace('\\', "/")
                        ),
                    ));
                }
                Err(f) => return Err(s.error(&format!("create folder {path}"), &f)),
            }
        }
    }

    async fn write(&self, target: &WriteTarget) -> HostResult<Box<dyn Upload>> {
        transfer::write(self.shared.clone(), target).await
    }

    async fn delete(&self, path: &str) -> HostResult<()> {
        let conn = self.shared.conn().await?;
        self.shared.delete_on(&conn, path).await
    }

    async fn probe(&self, folder: &str) -> HostResult<Probe> {
        let s = &self.shared;
        let conn = s.conn().await?;
        match s.stat_on(&conn, folder).await? {
            Some(m) if m.is_dir => {}
            Some(_) => {
                return Err(HostError::permanent(
                    s.name(),
                    format!("{folder} is not a folder"),
                ));
            }
            None => {
                return Err(HostError::not_found(
                    s.name(),
                    format!("folder {folder} does not exist in {}", s.settings.unc()),
                ));
            }
        }
        let n = &conn.negotiated;
        let mut notes = vec![format!("share: {}", s.settings.unc())];
        notes.push(if n.encrypted {
            format!(
                "encryption: on ({})",
                n.cipher.as_deref().unwrap_or("AES-128-CCM")
            )
        } else {
            "encryption: off (signed only)".to_string()
        });
        if let Some(signing) = &n.signing {
            notes.push(format!("signing: {signing}"));
        }
        notes.push(format!("max read/write: {} / {} bytes", n.max_read, n.max_write));
        Ok(Probe {
            server: Some(n.dialect.to_string()),
            capabilities: CAPABILITIES,
            notes,
            ..Probe::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_share_paths() {
        assert_eq!(smb_path("/in/a b/ü.csv"), Ok("in\\a b\\ü.csv".to_string()));
        assert_eq!(smb_path("out/"), Ok("out".to_string()));
        assert_eq!(smb_path("/"), Ok(String::new()));
        assert_eq!(smb_path(""), Ok(String::new()));
        assert!(smb_path("in/a\\b").is_err());
        assert!(smb_path("in/../etc").is_err());
        assert!(smb_path("in/a\0").is_err());
    }

    #[test]
    fn file_times_count_from_1970() {
        let t = smb::binrw_util::file_time::FileTime::from(116_444_736_000_000_000u64 + 10_000_000);
        assert_eq!(filetime_ns(&t), 1_000_000_000);
    }
}
