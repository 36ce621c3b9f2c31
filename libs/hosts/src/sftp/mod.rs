//! `sftp`: an SSH file transfer server, through the system's OpenSSH client.
//!
//! Ferry starts `ssh -s sftp` itself for each pooled connection ([`ssh`]: options, host key
//! checks, secrets) and speaks SFTP over its pipes with `openssh-sftp-client`. Why not a pure-Rust
//! SSH stack: `russh` cannot share a Cargo.lock with the `smb` crate (DEPENDENCIES.md); OpenSSH is
//! also the most widely proven client there is.
//!
//! Layout: [`ssh`] spawns the transport and reads what it says; [`pool`] keeps sessions
//! (`deadpool`), times requests out and classifies errors; [`upload`] writes, verifies and
//! commits; [`download`] reads. Both keep many requests in flight.
//!
//! Invariants:
//! - a host key is accepted only if pinned (SHA-256), listed in the configured known_hosts file,
//!   or `insecure_accept_any_host_key` is set; a refusal names the fingerprint offered;
//! - secrets reach only the `ssh` child (environment, or a 0600 key file that lives for one
//!   connect) and never an error, a log line or a `Debug` output;
//! - a session whose transport failed or whose request timed out never goes back to the pool;
//! - nothing is written under a final name except by the commit (`upload::SftpStaged::commit`).

mod download;
mod pool;
mod ssh;
mod upload;

use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use async_trait::async_trait;
use deadpool::managed::Pool;
use ferry_config::{HostKeyCheck, HostOptions, SftpSpec};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openssh_sftp_client::fs::Fs;
use openssh_sftp_client::metadata::MetaData;

use crate::registry::OpenSecret;
use crate::{
    ByteStream, Capabilities, DynHost, Entry, ErrorKind, Host, HostError, HostResult, Meta, Probe, Upload,
    WriteTarget, path,
};
use pool::{Ctx, Facts, Lease, Manager, SessionPool, Unused};
use ssh::{Secrets, SshSettings};

/// An SFTP server under a host name.
pub struct SftpHost {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    options: HostOptions,
    settings: Arc<SshSettings>,
    pool: SessionPool,
    /// What the newest session's server offered.
    facts: Arc<Mutex<Option<Facts>>>,
    reaper: Once,
}

impl std::fmt::Debug for SftpHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpHost")
            .field("name", &self.inner.name)
            .field("target", &self.inner.settings.target())
            .finish_non_exhaustive()
    }
}

/// Capabilities assumed before the first connection tells what the server offers.
const UNKNOWN_SERVER: Capabilities = Capabilities {
    atomic_rename: false,
    rename_noreplace: false,
    server_sha256: false,
    resume: true,
    durable: false,
    byte_names: false,
};

/// Folders listed at once during a recursive listing.
const LIST_PARALLEL: usize = 8;

/// A host path as the SFTP server takes it: the login folder for an empty path.
fn remote(path: &str) -> &Path {
    Path::new(if path.is_empty() { "." } else { path })
}

impl SftpHost {
    /// Build the host: open its secrets; connect on first use.
    pub fn build(
        name: &str,
        options: &HostOptions,
        spec: &SftpSpec,
        open: &OpenSecret<'_>,
    ) -> HostResult<DynHost> {
        SftpHost::build_with(name, options, spec, open, Unused::default())
    }

    /// [`SftpHost::build`], but ignoring the server's `posix-rename@openssh.com` and/or
    /// `hardlink@openssh.com`: lets tests drive the commit fallbacks for servers without them
    /// against a real OpenSSH.
    #[doc(hidden)]
    pub fn build_without_extensions(
        name: &str,
        options: &HostOptions,
        spec: &SftpSpec,
        open: &OpenSecret<'_>,
        use_posix_rename: bool,
        use_hardlink: bool,
    ) -> HostResult<DynHost> {
        let unused = Unused {
            posix_rename: !use_posix_rename,
            hardlink: !use_hardlink,
        };
        SftpHost::build_with(name, options, spec, open, unused)
    }

    fn build_with(
        name: &str,
        options: &HostOptions,
        spec: &SftpSpec,
        open: &OpenSecret<'_>,
        unused: Unused,
    ) -> HostResult<DynHost> {
        let open_opt = |field: &str, secret: &Option<ferry_config::Secret>| {
            secret.as_ref().map(|s| open(field, s)).transpose()
        };
        let secrets = Secrets {
            password: open_opt("password", &spec.password)?,
            private_key: open_opt("private_key", &spec.private_key)?,
            passphrase: open_opt("passphrase", &spec.passphrase)?,
        };
        if let HostKeyCheck::InsecureAcceptAny = spec.host_key {
            tracing::warn!(
                host = name,
                "insecure_accept_any_host_key: the server's identity is not checked"
            );
        }
        let settings = Arc::new(SshSettings::new(name, spec, options, secrets));
        let facts = Arc::new(Mutex::new(None));
        let max = options.max_connections.max(1) as usize;
        let pool = Pool::builder(Manager {
            settings: settings.clone(),
            facts: facts.clone(),
            unused,
        })
        .max_size(max)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(wait_for_slot(options)))
        .build()
        .map_err(|e| HostError::permanent(name, format!("connection pool: {e}")))?;
        Ok(Arc::new(SftpHost {
            inner: Arc::new(Inner {
                name: name.to_string(),
                options: options.clone(),
                settings,
                pool,
                facts,
                reaper: Once::new(),
            }),
        }))
    }
}

/// How long a request waits for a free connection before it fails (transiently).
fn wait_for_slot(options: &HostOptions) -> Duration {
    Duration::from_secs(options.operation_timeout_secs + options.connect_timeout_secs)
}

impl Inner {
    async fn lease(&self) -> HostResult<Lease> {
        self.reaper.call_once(|| self.start_reaper());
        Lease::get(
            &self.pool,
            &self.name,
            self.options.max_connections as usize,
            wait_for_slot(&self.options),
        )
        .await
    }

    /// Close connections idle for `idle_timeout_secs` (the task ends with the host).
    fn start_reaper(&self) {
        let weak = self.pool.weak();
        let idle = Duration::from_secs(self.options.idle_timeout_secs);
        let every = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { break };
                pool.retain(|_, metrics| metrics.last_used() < idle);
            }
        });
    }

    fn capabilities(&self) -> Capabilities {
        self.facts
            .lock()
            .expect("the facts lock is never poisoned")
            .as_ref()
            .map(Facts::capabilities)
            .unwrap_or(UNKNOWN_SERVER)
    }

    /// Metadata of `path` (following a final symlink if `follow`), `None` if nothing is there.
    async fn stat(&self, path: &str, follow: bool) -> HostResult<Option<Meta>> {
        let lease = self.lease().await?;
        let ctx = lease.ctx();
        let mut fs = lease.session().sftp.fs();
        let what = format!("stat {path}");
        let found = if follow {
            ctx.run(&what, fs.metadata(remote(path))).await
        } else {
            ctx.run(&what, fs.symlink_metadata(remote(path))).await
        };
        match found {
            Ok(m) => Ok(Some(meta(&m))),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn mtime_ns(m: &MetaData) -> i128 {
    m.modified()
        .map(|t| t.as_duration().as_nanos() as i128)
        .unwrap_or_default()
}

fn meta(m: &MetaData) -> Meta {
    Meta {
        size: m.len().unwrap_or(0),
        mtime_ns: mtime_ns(m),
        is_dir: m.file_type().is_some_and(|t| t.is_dir()),
    }
}

/// Read one folder: its files (as entries under `rel`) and its subfolders (relative paths).
async fn read_folder(
    ctx: Arc<Ctx>,
    mut fs: Fs,
    folder: String,
    rel: String,
) -> HostResult<(Vec<Entry>, Vec<String>)> {
    let what = format!("list {}", if folder.is_empty() { "." } else { &folder });
    let dir = ctx.run(&what, fs.open_dir(remote(&folder))).await?;
    let entries = dir.read_dir();
    tokio::pin!(entries);
    let (mut files, mut folders) = (Vec::new(), Vec::new());
    loop {
        let next = match tokio::time::timeout(ctx.operation_timeout, entries.next()).await {
            Err(_) => return Err(ctx.timed_out(&what)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ctx.error(&what, e)),
            Ok(Some(Ok(entry))) => entry,
        };
        let name = next.filename().to_string_lossy();
        if name == "." || name == ".." {
            continue;
        }
        let rel_path = path::join(&rel, &name);
        let m = next.metadata();
        // Readdir attributes are lstat's: symlinks and other non-regular files are not listed.
        match m.file_type() {
            Some(t) if t.is_file() => files.push(Entry {
                rel_path,
                size: m.len().unwrap_or(0),
                mtime_ns: mtime_ns(&m),
            }),
            Some(t) if t.is_dir() => folders.push(rel_path),
            _ => {}
        }
    }
    Ok((files, folders))
}

#[async_trait]
impl Host for SftpHost {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn pool(&self) -> Option<crate::PoolStatus> {
        Some(crate::PoolStatus::of_deadpool(self.inner.pool.status()))
    }

    async fn list(&self, folder: &str, recursive: bool) -> HostResult<Vec<Entry>> {
        let lease = self.inner.lease().await?;
        let ctx = lease.ctx();
        let fs = lease.session().sftp.fs();
        let mut found = Vec::new();
        let mut pending = vec![String::new()];
        let mut running = FuturesUnordered::new();
        let mut failure: Option<HostError> = None;
        loop {
            while failure.is_none() && running.len() < LIST_PARALLEL {
                let Some(rel) = pending.pop() else { break };
                let is_root = rel.is_empty();
                let listed = read_folder(ctx.clone(), fs.clone(), path::join(folder, &rel), rel);
                running.push(async move { (is_root, listed.await) });
            }
            // Every folder read finishes (or times out) on its own; all are awaited so no request
            // is abandoned.
            let Some((is_root, listed)) = running.next().await else {
                break;
            };
            match listed {
                Ok((files, folders)) => {
                    found.extend(files);
                    if recursive {
                        pending.extend(folders);
                    }
                }
                // A subfolder removed while the walk ran is simply gone.
                Err(e) if e.kind == ErrorKind::NotFound && !is_root => {}
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        found.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
        Ok(found)
    }

    async fn stat(&self, path: &str) -> HostResult<Option<Meta>> {
        self.inner.stat(path, false).await
    }

    async fn read(&self, path: &str, offset: u64) -> HostResult<ByteStream> {
        download::open(&self.inner, path, offset).await
    }

    async fn create_dir_all(&self, dir: &str) -> HostResult<()> {
        // Find the deepest existing ancestor, then create the rest top-down.
        let mut missing = Vec::new();
        let mut cur = dir.trim_end_matches('/');
        while !cur.is_empty() {
            match self.inner.stat(cur, true).await? {
                Some(m) if m.is_dir => break,
                Some(_) => {
                    return Err(HostError::permanent(
                        &self.inner.name,
                        format!("create folder {dir}: {cur} exists and is not a folder"),
                    ));
                }
                None => missing.push(cur.to_string()),
            }
            cur = path::parent(cur);
            if cur == "/" {
                break;
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let lease = self.inner.lease().await?;
        let ctx = lease.ctx();
        let mut fs = lease.session().sftp.fs();
        for d in missing.iter().rev() {
            let made = ctx
                .run(&format!("create folder {d}"), fs.create_dir(remote(d)))
                .await;
            if let Err(e) = made {
                // Someone else made it meanwhile: fine. Otherwise the server's words stand.
                let there = ctx.run(&format!("stat {d}"), fs.metadata(remote(d))).await.ok();
                if !there.is_some_and(|m| m.file_type().is_some_and(|t| t.is_dir())) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn write(&self, target: &WriteTarget) -> HostResult<Box<dyn Upload>> {
        upload::begin(self.inner.clone(), target).await
    }

    async fn delete(&self, path: &str) -> HostResult<()> {
        upload::remove_file(&self.inner, path).await
    }

    async fn probe(&self, folder: &str) -> HostResult<Probe> {
        let lease = self.inner.lease().await?;
        let session = lease.session();
        let ctx = lease.ctx();
        let found = ctx
            .run(
                &format!("stat {folder}"),
                session.sftp.fs().metadata(remote(folder)),
            )
            .await
            .map_err(|e| match e.kind {
                ErrorKind::NotFound => {
                    HostError::not_found(&self.inner.name, format!("folder {folder} does not exist"))
                }
                _ => e,
            })?;
        if !found.file_type().is_some_and(|t| t.is_dir()) {
            return Err(HostError::permanent(
                &self.inner.name,
                format!("{folder} is not a folder"),
            ));
        }
        let facts = &session.facts;
        let mut notes = Vec::new();
        if let Some((kind, _)) = &facts.log.host_key {
            notes.push(format!("host key type: {kind}"));
        }
        notes.push(
            match &self.inner.settings.host_key {
                HostKeyCheck::Pinned(_) => "host key: pinned fingerprint matched",
                HostKeyCheck::KnownHosts(_) => "host key: found in the known_hosts file",
                HostKeyCheck::InsecureAcceptAny => "host key: NOT CHECKED (insecure_accept_any_host_key)",
            }
            .to_string(),
        );
        if let Some(cipher) = &facts.log.cipher {
            notes.push(format!("cipher: {cipher}"));
        }
        let ext: Vec<&str> = [
            (facts.posix_rename, "posix-rename@openssh.com"),
            (facts.hardlink, "hardlink@openssh.com"),
            (facts.fsync, "fsync@openssh.com"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        notes.push(format!(
            "sftp extensions: {}",
            if ext.is_empty() {
                "none".to_string()
            } else {
                ext.join(", ")
            }
        ));
        Ok(Probe {
            server: facts.log.banner.clone(),
            host_key_sha256: facts.log.host_key.as_ref().map(|(_, fp)| fp.clone()),
            capabilities: facts.capabilities(),
            notes,
            ..Probe::default()
        })
    }
}
