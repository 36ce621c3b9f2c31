//! Writing: pipelined uploads to the temporary name, verification, and the commit.
//!
//! An upload keeps up to [`MAX_WRITES`] write requests (at most [`WRITE_WINDOW`] bytes) in flight,
//! as OpenSSH's own client does (64 requests): each request is its own task on the session, so
//! the bytes stream at the speed of the link rather than of round trips, and a request is never
//! abandoned half-way (the session would not survive it).
//!
//! Resume: a server may carry out pipelined writes in any order, so after an interruption the
//! temp's size does not prove that every byte before it arrived. But a write is only issued once
//! every write more than [`WRITE_WINDOW`] bytes before it was acknowledged; so a resumed upload
//! trusts the temp up to its size minus [`WRITE_WINDOW`], cuts it there and continues.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_config::Verify;
use openssh_sftp_client::Error as SftpError;
use openssh_sftp_client::file::File;
use tokio::io::AsyncSeek;
use tokio::task::JoinHandle;

use super::pool::{Ctx, Lease, NoReplace};
use super::{Inner, download, remote};
use crate::{ErrorKind, Gate, HostError, HostResult, Staged, Upload, Verification, WriteTarget};

/// Bytes per write request: OpenSSH's `max-write-length` (256 KiB less 1 KiB of headers). A
/// server that takes less gets the piece in several requests.
const WRITE_CHUNK: usize = 261_120;
/// At most this many write requests in flight (OpenSSH's `sftp -R` default).
const MAX_WRITES: usize = 64;
/// At most this many bytes in flight; also what a resumed upload sends again.
pub(super) const WRITE_WINDOW: u64 = 16 << 20;

/// Open the temp of `target` for writing: continue it (see the module docs) or start afresh.
pub(super) async fn begin(inner: Arc<Inner>, target: &WriteTarget) -> HostResult<Box<dyn Upload>> {
    let lease = inner.lease().await?;
    let ctx = lease.ctx();
    let temp = target.temp_path();
    let sftp = &lease.session().sftp;
    if target.resume {
        let found = ctx
            .run(&format!("stat {temp}"), sftp.fs().symlink_metadata(remote(&temp)))
            .await;
        match found {
            Ok(meta) if meta.file_type().is_some_and(|t| t.is_file()) => {
                let size = meta.len().unwrap_or(0);
                let opened = ctx
                    .run(
                        &format!("open {temp}"),
                        sftp.options().write(true).open(remote(&temp)),
                    )
                    .await;
                match opened {
                    Ok(mut file) => {
                        let offset = size.saturating_sub(WRITE_WINDOW);
                        if offset < size {
                            ctx.run(&format!("truncate {temp}"), file.set_len(offset)).await?;
                        }
                        return Ok(Box::new(SftpUpload::new(
                            inner,
                            lease,
                            file,
                            temp,
                            offset,
                            target.mode,
                        )));
                    }
                    Err(e) if e.is_transient() => return Err(e),
                    // Not writable (a finished temp already given a read-only `mode`): start over.
                    Err(_) => {}
                }
            }
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    // A stale temp goes first; the new one is created exclusively, so a symlink planted at the
    // temp name is never followed.
    match ctx
        .run(
            &format!("remove stale {temp}"),
            sftp.fs().remove_file(remote(&temp)),
        )
        .await
    {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = ctx
        .run(
            &format!("create {temp}"),
            sftp.options().write(true).create_new(true).open(remote(&temp)),
        )
        .await?;
    Ok(Box::new(SftpUpload::new(
        inner,
        lease,
        file,
        temp,
        0,
        target.mode,
    )))
}

type WriteTask = JoinHandle<Result<usize, SftpError>>;

struct SftpUpload {
    inner: Arc<Inner>,
    /// Held until `finish`/`abort`; dropping the upload returns it (requests still in flight
    /// complete on their own).
    lease: Option<Lease>,
    ctx: Arc<Ctx>,
    file: File,
    temp: String,
    offset: u64,
    /// Where the next byte goes.
    next: u64,
    writes: VecDeque<WriteTask>,
    in_flight: u64,
    failed: Option<HostError>,
    /// Permission bits the temp gets once written ([`WriteTarget::mode`]).
    mode: Option<u32>,
}

impl SftpUpload {
    fn new(
        inner: Arc<Inner>,
        lease: Lease,
        file: File,
        temp: String,
        offset: u64,
        mode: Option<u32>,
    ) -> SftpUpload {
        SftpUpload {
            inner,
            ctx: lease.ctx(),
            lease: Some(lease),
            file,
            temp,
            offset,
            next: offset,
            writes: VecDeque::new(),
            in_flight: 0,
            failed: None,
            mode,
        }
    }

    /// Wait for the oldest write to be acknowledged.
    async fn complete_one(&mut self) -> HostResult<()> {
        let Some(task) = self.writes.pop_front() else {
            return Ok(());
        };
        let what = format!("write {}", self.temp);
        let result = match tokio::time::timeout(self.ctx.operation_timeout, task).await {
            Err(_) => Err(self.ctx.timed_out(&what)),
            Ok(Err(join)) => Err(HostError::permanent(
                &self.ctx.host,
                format!("{what}: write task failed: {join}"),
            )),
            Ok(Ok(Err(e))) => Err(self.ctx.error(&what, e)),
            Ok(Ok(Ok(n))) => {
                self.in_flight -= n as u64;
                Ok(())
            }
        };
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    async fn drain(&mut self) -> HostResult<()> {
        while !self.writes.is_empty() {
            self.complete_one().await?;
        }
        Ok(())
    }

    fn spawn_write(&mut self, piece: Bytes) {
        let mut file = self.file.clone();
        let at = self.next;
        let len = piece.len();
        self.next += len as u64;
        self.in_flight += len as u64;
        self.writes.push_back(tokio::spawn(async move {
            Pin::new(&mut file).start_seek(SeekFrom::Start(at))?;
            file.write_all_zero_copy(&mut [piece]).await?;
            Ok(len)
        }));
    }
}

#[async_trait]
impl Upload for SftpUpload {
    fn offset(&self) -> u64 {
        self.offset
    }

    async fn write(&mut self, mut data: Bytes) -> HostResult<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(WRITE_CHUNK));
            while self.writes.len() >= MAX_WRITES || self.in_flight + piece.len() as u64 > WRITE_WINDOW {
                self.complete_one().await?;
            }
            self.spawn_write(piece);
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> HostResult<Box<dyn Staged>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.drain().await?;
        let ctx = self.ctx.clone();
        if let Some(mode) = self.mode {
            // On the open handle, after the last write (bits without the owner's write would
            // refuse nothing already open) and before the commit gives the file its name.
            let bits = openssh_sftp_client::metadata::Permissions::from((mode & 0o777) as u16);
            ctx.run(
                &format!("set mode {mode:03o} on {}", self.temp),
                self.file.set_permissions(bits),
            )
            .await?;
        }
        let durable = self.lease.as_ref().is_some_and(|l| l.session().facts.fsync);
        if durable {
            ctx.run(&format!("fsync {}", self.temp), self.file.sync_all())
                .await?;
        }
        let SftpUpload {
            inner,
            lease,
            file,
            temp,
            ..
        } = *self;
        ctx.run(&format!("close {temp}"), file.close()).await?;
        drop(lease);
        Ok(Box::new(SftpStaged {
            inner,
            temp,
            linked: false,
        }))
    }

    async fn abort(mut self: Box<Self>) {
        let _ = self.drain().await;
        let SftpUpload {
            inner,
            lease,
            file,
            temp,
            ctx,
            ..
        } = *self;
        let _ = ctx.run(&format!("close {temp}"), file.close()).await;
        drop(lease);
        let _ = remove_file(&inner, &temp).await;
    }
}

/// Delete `path`; a file already gone is no error.
pub(super) async fn remove_file(inner: &Arc<Inner>, path: &str) -> HostResult<()> {
    let lease = inner.lease().await?;
    let ctx = lease.ctx();
    match ctx
        .run(
            &format!("delete {path}"),
            lease.session().sftp.fs().remove_file(remote(path)),
        )
        .await
    {
        Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

struct SftpStaged {
    inner: Arc<Inner>,
    temp: String,
    /// Committed by `hardlink@openssh.com`: the temp name is still there, for [`Staged::tidy`].
    linked: bool,
}

#[async_trait]
impl Staged for SftpStaged {
    async fn verify(&mut self, size: u64, sha256: &str) -> HostResult<Verification> {
        let host = &self.inner.name;
        let stored =
            self.inner.stat(&self.temp, false).await?.ok_or_else(|| {
                HostError::not_found(host, format!("verify {}: the file is gone", self.temp))
            })?;
        if stored.size != size {
            return Err(HostError::permanent(
                host,
                format!(
                    "verification failed for {}: stored {} bytes, sent {size}",
                    self.temp, stored.size
                ),
            ));
        }
        if self.inner.options.verify == Verify::Auto {
            return Ok(Verification::Size);
        }
        let (read, hash) = download::hash(&self.inner, &self.temp).await?;
        if read != size || hash != sha256 {
            return Err(HostError::permanent(
                host,
                format!(
                    "verification failed for {}: read back {read} bytes sha256 {hash}, sent {size} bytes sha256 {sha256}",
                    self.temp
                ),
            ));
        }
        Ok(Verification::ReadBack)
    }

    /// With `replace`: `posix-rename@openssh.com` (rename(2): atomic). A server without it gets
    /// remove-then-rename: between the two the final name is briefly absent (never partial), and
    /// a crash there leaves only the temp.
    ///
    /// Without `replace`, as [`Facts::no_replace`](super::pool::Facts::no_replace) picks: on OpenSSH `hardlink@openssh.com`
    /// (link(2) refuses an existing name atomically), then the temp is removed (a crash in
    /// between leaves the complete file under both names); or plain SFTP rename, which OpenSSH
    /// does as link + unlink. Anywhere else: check that the name is free, then rename — a file
    /// created in between is replaced, and `rename_noreplace` says so.
    async fn commit_gated(&mut self, final_path: &str, replace: bool, gate: Gate<'_>) -> HostResult<bool> {
        let lease = self.inner.lease().await?;
        let ctx = lease.ctx();
        let session = lease.session();
        let facts = &session.facts;
        let mut fs = session.sftp.fs();
        let (temp, to) = (remote(&self.temp), remote(final_path));
        let what = format!("rename {} to {final_path}", self.temp);
        if replace {
            if !facts.posix_rename {
                match ctx.run(&format!("remove {final_path}"), fs.remove_file(to)).await {
                    Ok(()) => {}
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            gate()?;
            ctx.run(&what, fs.rename(temp, to)).await?;
            return Ok(true);
        }
        let refused = match facts.no_replace() {
            NoReplace::Link => {
                let link = format!("link {} to {final_path}", self.temp);
                gate()?;
                match ctx.run(&link, fs.hard_link(temp, to)).await {
                    Ok(()) => {
                        // The temp is a second name of the delivered file now; `tidy` removes it.
                        self.linked = true;
                        return Ok(true);
                    }
                    Err(e) => e,
                }
            }
            NoReplace::PlainRename => {
                gate()?;
                match ctx.run(&what, fs.rename(temp, to)).await {
                    Ok(()) => return Ok(true),
                    Err(e) => e,
                }
            }
            NoReplace::CheckThenRename => {
                if exists(&ctx, &mut fs, final_path).await? {
                    return Ok(false);
                }
                gate()?;
                ctx.run(&what, fs.rename(temp, to)).await?;
                return Ok(true);
            }
        };
        // The server refused: because the name is taken (SFTP v3 has no "exists" status, OpenSSH
        // says "Failure"), or for its own reason, which stands.
        if refused.kind != ErrorKind::Transient && exists(&ctx, &mut fs, final_path).await? {
            return Ok(false);
        }
        Err(refused)
    }

    async fn tidy(&mut self) {
        if std::mem::take(&mut self.linked)
            && let Err(e) = remove_file(&self.inner, &self.temp).await
        {
            tracing::warn!(host = %self.inner.name, error = %e, "committed, but the temp file stays");
        }
    }

    async fn abort(self: Box<Self>) {
        let _ = remove_file(&self.inner, &self.temp).await;
    }
}

async fn exists(ctx: &Ctx, fs: &mut openssh_sftp_client::fs::Fs, path: &str) -> HostResult<bool> {
    match ctx
        .run(&format!("stat {path}"), fs.symlink_metadata(remote(path)))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
