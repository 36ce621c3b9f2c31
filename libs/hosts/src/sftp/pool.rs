//! Pooled SFTP sessions: one `ssh` child each (see [`super::ssh`]), checked out exclusively
//! through `deadpool`, probed on recycle, evicted when idle, and never returned to the pool once
//! broken.
//!
//! A session is *broken* when its transport failed or a request was abandoned (a timeout): the
//! SFTP client cannot tell a late answer to an abandoned request from garbage, so such a session
//! is dropped (its `ssh` killed), never reused.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, PoolError, RecycleError, RecycleResult};
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::{Error as SftpError, Sftp, SftpOptions};
use tokio::process::Child;

use super::ssh::{self, LogState, SshLog, SshSettings};
use crate::{Capabilities, HostError, HostResult};

/// What a session's server offers.
#[derive(Debug, Clone, Default)]
pub(super) struct Facts {
    pub log: LogState,
    /// The server is OpenSSH (its `sftp-server` / `internal-sftp`): plain SFTP rename and
    /// `hardlink@openssh.com` are link(2) there, which never replaces. Other servers differ (Go's
    /// pkg/sftp renames over an existing file; rclone's reports a hard link it did not make).
    pub openssh: bool,
    pub posix_rename: bool,
    pub hardlink: bool,
    pub fsync: bool,
}

/// How a commit that must not replace an existing file is done on a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoReplace {
    /// `hardlink@openssh.com` (link(2)), then remove the temp.
    Link,
    /// Plain SFTP rename, which OpenSSH carries out as link(2) + unlink(2).
    PlainRename,
    /// Check that the name is free, then rename: a file created in between is replaced.
    CheckThenRename,
}

impl Facts {
    pub fn no_replace(&self) -> NoReplace {
        match (self.openssh, self.hardlink, self.posix_rename) {
            (true, true, _) => NoReplace::Link,
            // The client library sends posix-rename whenever the server offers it, so plain
            // rename is only to be had from a server without it.
            (true, false, false) => NoReplace::PlainRename,
            _ => NoReplace::CheckThenRename,
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_rename: self.posix_rename,
            rename_noreplace: self.no_replace() != NoReplace::CheckThenRename,
            server_sha256: false,
            resume: true,
            durable: self.fsync,
            byte_names: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(openssh: bool, posix_rename: bool, hardlink: bool) -> Facts {
        Facts {
            openssh,
            posix_rename,
            hardlink,
            ..Facts::default()
        }
    }

    #[test]
    fn create_new_is_atomic_only_where_the_server_guarantees_it() {
        use NoReplace::*;
        for (openssh, posix_rename, hardlink, want) in [
            (true, true, true, Link),
            (true, false, true, Link),
            (true, false, false, PlainRename),
            (true, true, false, CheckThenRename),
            // Other implementations: neither their hard links nor their plain renames are
            // trusted to refuse an existing name.
            (false, true, true, CheckThenRename),
            (false, false, false, CheckThenRename),
        ] {
            let f = facts(openssh, posix_rename, hardlink);
            assert_eq!(f.no_replace(), want, "{f:?}");
            assert_eq!(f.capabilities().rename_noreplace, want != CheckThenRename);
            assert_eq!(f.capabilities().atomic_rename, posix_rename);
        }
    }
}

/// What every request on a session needs to report and time out (shared with spawned tasks).
pub(super) struct Ctx {
    pub host: String,
    pub server: String,
    pub operation_timeout: Duration,
    pub log: Arc<SshLog>,
    broken: AtomicBool,
}

impl Ctx {
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Classify an SFTP error of `what` (e.g. `open /in/a.csv`), quoting the server's words. A
    /// transport failure marks the session broken.
    pub fn error(&self, what: &str, e: SftpError) -> HostError {
        match e {
            SftpError::SftpError(code, msg) => {
                let said = msg.get().0.to_string();
                match code {
                    SftpErrorKind::NoSuchFile => HostError::not_found(&self.host, format!("{what}: {said}")),
                    SftpErrorKind::PermDenied => HostError::permanent(
                        &self.host,
                        format!("{what}: permission denied (the server said {said:?})"),
                    ),
                    _ => HostError::permanent(&self.host, format!("{what}: the server said {said:?}")),
                }
            }
            SftpError::UnsupportedExtension(ext) => HostError::permanent(
                &self.host,
                format!("{what}: the server does not offer the {ext} extension"),
            ),
            SftpError::UnsupportedSftpProtocol { .. }
            | SftpError::SftpServerHelloMsgTooLong { .. }
            | SftpError::HandleTooLong
            | SftpError::BufferTooLong(_) => {
                self.mark_broken();
                HostError::permanent(&self.host, format!("{what}: {e}"))
            }
            other => {
                self.mark_broken();
                // ssh's last words say why (`Connection to … closed by remote host.`); the
                // client library's own text only says that its pipe closed.
                let said = match (self.log.last_words(), &other) {
                    (Some(w), _) => format!(" (ssh: {w})"),
                    (None, SftpError::IOError(io)) => format!(": {io}"),
                    (None, SftpError::BackgroundTaskFailure(_)) => String::new(),
                    (None, e) => format!(": {e}"),
                };
                HostError::transient(
                    &self.host,
                    format!("{what}: connection to {} lost{said}", self.server),
                )
            }
        }
    }

    /// A request of `what` got no answer within the operation timeout: the session is broken.
    pub fn timed_out(&self, what: &str) -> HostError {
        self.mark_broken();
        HostError::transient(
            &self.host,
            format!(
                "{what}: no answer from {} within {} s",
                self.server,
                self.operation_timeout.as_secs()
            ),
        )
    }

    /// Run one request with the operation timeout.
    pub async fn run<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, SftpError>>,
    ) -> HostResult<T> {
        match tokio::time::timeout(self.operation_timeout, request).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(what, e)),
            Err(_) => Err(self.timed_out(what)),
        }
    }
}

/// One SFTP session over one `ssh` child.
pub(super) struct Session {
    pub sftp: Sftp,
    pub ctx: Arc<Ctx>,
    pub facts: Facts,
    child: Child,
}

impl Session {
    async fn open(s: &SshSettings) -> HostResult<Session> {
        let ssh::Spawned {
            mut child,
            stdin,
            stdout,
            log,
            key_file,
        } = ssh::spawn(s)?;
        // Requests go out as soon as they are made (no 0.5 ms batching): a listing or a small
        // file waits for nothing, and bulk transfers send 255 KiB requests anyway.
        let options = SftpOptions::new().flush_interval(Duration::ZERO);
        let started = tokio::time::timeout(s.connect_timeout, Sftp::new(stdin, stdout, options)).await;
        // The key file goes as soon as the session is up or the connect failed.
        drop(key_file);
        match started {
            Ok(Ok(sftp)) => {
                let state = log.snapshot();
                let facts = Facts {
                    openssh: state.banner.as_deref().is_some_and(|b| b.starts_with("OpenSSH")),
                    log: state,
                    posix_rename: sftp.support_posix_rename(),
                    hardlink: sftp.support_hardlink(),
                    fsync: sftp.support_fsync(),
                };
                Ok(Session {
                    sftp,
                    ctx: Arc::new(Ctx {
                        host: s.host.clone(),
                        server: s.server(),
                        operation_timeout: s.operation_timeout,
                        log,
                        broken: AtomicBool::new(false),
                    }),
                    facts,
                    child,
                })
            }
            Ok(Err(e)) => {
                let exit = ssh::wait_for_exit(&mut child, &log).await;
                Err(ssh::connect_error(s, &log.snapshot(), exit, &e.to_string()))
            }
            Err(_) => {
                let _ = child.start_kill();
                let exit = ssh::wait_for_exit(&mut child, &log).await;
                let state = log.snapshot();
                let err = ssh::connect_error(s, &state, exit, "");
                // A clear refusal (key, password) that arrived just as the time ran out wins.
                if err.kind == crate::ErrorKind::Permanent {
                    return Err(err);
                }
                let stage = if state.host_key.is_none() {
                    "before the key exchange"
                } else {
                    "while logging in"
                };
                Err(HostError::transient(
                    &s.host,
                    format!(
                        "connect to {}: no SFTP session within {} s ({stage})",
                        s.target(),
                        s.connect_timeout.as_secs()
                    ),
                ))
            }
        }
    }

    fn alive(&mut self) -> bool {
        !self.ctx.is_broken() && matches!(self.child.try_wait(), Ok(None))
    }
}

/// Extensions to leave unused even when the server offers them (tests of the fallbacks).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Unused {
    pub posix_rename: bool,
    pub hardlink: bool,
}

/// Creates and checks sessions for `deadpool`.
pub(super) struct Manager {
    pub settings: Arc<SshSettings>,
    /// The capabilities the last session reported.
    pub facts: Arc<std::sync::Mutex<Option<Facts>>>,
    pub unused: Unused,
}

/// Sessions unused for longer than this are probed (an SFTP realpath) before reuse.
const PROBE_AFTER: Duration = Duration::from_secs(2);

impl managed::Manager for Manager {
    type Type = Session;
    type Error = HostError;

    async fn create(&self) -> Result<Session, HostError> {
        let mut session = Session::open(&self.settings).await?;
        session.facts.posix_rename &= !self.unused.posix_rename;
        session.facts.hardlink &= !self.unused.hardlink;
        *self.facts.lock().expect("the facts lock is never poisoned") = Some(session.facts.clone());
        Ok(session)
    }

    async fn recycle(&self, session: &mut Session, metrics: &Metrics) -> RecycleResult<HostError> {
        if !session.alive() {
            return Err(RecycleError::message("session broken"));
        }
        if metrics.last_used() > PROBE_AFTER {
            let ctx = session.ctx.clone();
            let mut fs = session.sftp.fs();
            ctx.run("check the connection", fs.canonicalize("."))
                .await
                .map_err(RecycleError::Backend)?;
        }
        Ok(())
    }
}

pub(super) type SessionPool = Pool<Manager>;

/// A checked-out session. Dropping it returns a healthy session to the pool and kills a broken
/// one.
pub(super) struct Lease {
    object: Option<managed::Object<Manager>>,
}

impl Lease {
    pub async fn get(pool: &SessionPool, host: &str, max: usize, wait: Duration) -> HostResult<Lease> {
        match pool.get().await {
            Ok(object) => Ok(Lease { object: Some(object) }),
            Err(PoolError::Backend(e)) => Err(e),
            Err(PoolError::Timeout(_)) => Err(HostError::transient(
                host,
                format!(
                    "all {max} connections are busy (waited {} s); raise max_connections or run fewer transfers at once",
                    wait.as_secs()
                ),
            )),
            Err(e) => Err(HostError::permanent(host, format!("connection pool: {e}"))),
        }
    }

    pub fn session(&self) -> &Session {
        self.object.as_ref().expect("present until dropped")
    }

    pub fn ctx(&self) -> Arc<Ctx> {
        self.session().ctx.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(object) = self.object.take()
            && object.ctx.is_broken()
        {
            // Out of the pool for good; dropping it kills its ssh.
            drop(managed::Object::take(object));
        }
    }
}
