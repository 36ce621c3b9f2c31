//! Moving bytes: an upload to the temporary name ([`FtpUpload`]), the staged file that is
//! verified and renamed into place ([`FtpStaged`]), and a download ([`Download`]).
//!
//! Each holds its pooled connection for as long as its data connection is open (FTP allows one
//! per control connection). A transfer that ends early — an error, a timeout, a caller that drops
//! it — closes that connection instead of returning it to the pool, so no reply of the abandoned
//! transfer can be mistaken for the answer to a later request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use ferry_config::Verify;
use suppaftp::FtpError;
use suppaftp::tokio::{AsyncRustlsStream, TransferStream};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use super::Shared;
use super::conn::Session;
use super::errors::{failed, io_error};
use super::ops;
use crate::{ErrorKind, Gate, HostError, HostResult, Staged, Upload, Verification};

type Transfer = TransferStream<AsyncRustlsStream>;

/// An upload in progress to `temp` (a `STOR`, or an `APPE` continuing an earlier attempt).
pub(super) struct FtpUpload {
    // Declared first, dropped first: the data connection closes before the session is released.
    transfer: Option<Transfer>,
    session: Session,
    shared: Arc<Shared>,
    /// Absolute path of the temporary file.
    temp: String,
    offset: u64,
    written: u64,
}

impl FtpUpload {
    /// Start `STOR temp`, or `APPE temp` from `offset` (the temp's size) when resuming.
    pub async fn start(
        shared: Arc<Shared>,
        mut session: Session,
        temp: String,
        offset: u64,
    ) -> HostResult<FtpUpload> {
        let what = format!("upload to {temp}");
        let transfer = if offset > 0 {
            session
                .run(&what, async |ftp| ftp.append_with_stream(&temp).await)
                .await
        } else {
            session
                .run(&what, async |ftp| ftp.put_with_stream(&temp).await)
                .await
        }
        .map_err(|f| {
            // 550/553 on STOR: the folder is missing or not writable. Neither heals by itself.
            let kind = match f.error.kind {
                ErrorKind::NotFound => ErrorKind::Permanent,
                k => k,
            };
            f.with_kind(kind).error
        })?;
        Ok(FtpUpload {
            transfer: Some(transfer),
            session,
            shared,
            temp,
            offset,
            written: 0,
        })
    }

    fn host(&self) -> &str {
        &self.session.host
    }

    /// The data connection failed (`e`): the server's reply, if it sent one, says why better than
    /// a reset socket does (a full disk, a quota).
    async fn write_failed(&mut self, e: io::Error) -> HostError {
        self.session.discard();
        let what = format!("upload to {}", self.temp);
        let lost = io_error(self.host(), &what, &e);
        let Some(transfer) = self.transfer.take() else {
            return lost;
        };
        let wait = self.session.op_timeout.min(std::time::Duration::from_secs(5));
        match tokio::time::timeout(wait, transfer.finish()).await {
            Ok(Err(reply @ FtpError::UnexpectedResponse(_))) => failed(self.host(), &what, reply).error,
            _ => lost,
        }
    }
}

#[async_trait]
impl Upload for FtpUpload {
    fn offset(&self) -> u64 {
        self.offset
    }

    async fn write(&mut self, data: Bytes) -> HostResult<()> {
        let timeout = self.session.op_timeout;
        let mut sent = 0;
        while sent < data.len() {
            let Some(transfer) = self.transfer.as_mut() else {
                return Err(HostError::permanent(
                    self.host(),
                    format!("upload to {}: written to after a failure", self.temp),
                ));
            };
            // The deadline is per write call, so it bounds a stall, not a slow link.
            match tokio::time::timeout(timeout, transfer.write(&data[sent..])).await {
                Ok(Ok(0)) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "the data connection closed");
                    return Err(self.write_failed(e).await);
                }
                Ok(Ok(n)) => {
                    sent += n;
                    self.written += n as u64;
                }
                Ok(Err(e)) => return Err(self.write_failed(e).await),
                Err(_) => {
                    self.session.discard();
                    self.transfer = None;
                    return Err(HostError::transient(
                        self.host(),
                        format!(
                            "upload to {}: no progress within {} s",
                            self.temp,
                            timeout.as_secs()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> HostResult<Box<dyn Staged>> {
        let transfer = self.transfer.take().ok_or_else(|| {
            HostError::permanent(
                self.host(),
                format!("upload to {}: finished after a failure", self.temp),
            )
        })?;
        // Closing the data connection ends the file; the server's reply says it is stored.
        let what = format!("finish upload to {}", self.temp);
        self.session.guard(&what, transfer.finish()).await?;
        Ok(Box::new(FtpStaged {
            shared: self.shared.clone(),
            temp: self.temp.clone(),
            size: self.offset + self.written,
            committed: false,
        }))
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(transfer) = self.transfer.take() {
            let what = format!("abort upload to {}", self.temp);
            let _ = self.session.guard(&what, transfer.finish()).await;
        }
        let temp = self.temp.clone();
        if !self.session.is_broken() {
            remove(&mut self.session, &temp).await;
        } else if let Ok(mut s) = self.shared.session().await {
            remove(&mut s, &temp).await;
        }
    }
}

impl Drop for FtpUpload {
    fn drop(&mut self) {
        if self.transfer.is_some() {
            // Abandoned mid-transfer (a crash, a cancelled task): close, never pool.
            self.session.discard();
        }
    }
}

/// Delete `temp` (best effort).
async fn remove(s: &mut Session, temp: &str) {
    if let Err(e) = ops::delete(s, temp).await {
        tracing::warn!(host = %s.host, temp, error = %e, "could not remove an abandoned temp file");
    }
}

/// A stored temp file waiting for verification and its commit.
pub(super) struct FtpStaged {
    shared: Arc<Shared>,
    temp: String,
    size: u64,
    committed: bool,
}

#[async_trait]
impl Staged for FtpStaged {
    async fn verify(&mut self, size: u64, sha256: &str) -> HostResult<Verification> {
        let host = self.shared.settings.name.as_str();
        if self.size != size {
            return Err(HostError::permanent(
                host,
                format!(
                    "verify {}: {} bytes were sent, {size} expected",
                    self.temp, self.size
                ),
            ));
        }
        match self.shared.verify {
            Verify::Auto => {
                // FTP has no standard hash command (vsftpd offers none): the stored size.
                let mut s = self.shared.session().await?;
                let stored = ops::size(&mut s, &self.temp).await?;
                match stored {
                    Some(n) if n == size => Ok(Verification::Size),
                    Some(n) => Err(HostError::permanent(
                        host,
                        format!(
                            "verify {}: the server stored {n} bytes, {size} were sent",
                            self.temp
                        ),
                    )),
                    None => Err(HostError::not_found(
                        host,
                        format!("verify {}: the uploaded file is gone", self.temp),
                    )),
                }
            }
            Verify::ReadBack => {
                let s = self.shared.session().await?;
                let stream = Download::start(s, &self.temp, 0).await?;
                let (stored, got) =
                    crate::hash_reader(stream, |e| io_error(host, &format!("read back {}", self.temp), e))
                        .await?;
                if stored != size || !got.eq_ignore_ascii_case(sha256) {
                    return Err(HostError::permanent(
                        host,
                        format!(
                            "verify {}: read back {stored} bytes with SHA-256 {got}, sent {size} bytes with SHA-256 {sha256}",
                            self.temp
                        ),
                    ));
                }
                Ok(Verification::ReadBack)
            }
        }
    }

    /// `RNFR`/`RNTO`, atomic on the server's file system (a `rename`). FTP has no "rename unless
    /// the target exists": with `replace` false the target is looked up (`SIZE`) right before
    /// `RNTO`, and a file created by someone else between those two requests would be replaced —
    /// hence `rename_noreplace: false`. Servers that refuse to rename onto an existing file (IIS)
    /// get that file deleted first when `replace` is true, leaving a moment with no file there.
    async fn commit_gated(&mut self, final_path: &str, replace: bool, gate: Gate<'_>) -> HostResult<bool> {
        let mut s = self.shared.session().await?;
        let to = s.abs(final_path)?;
        if !replace && ops::size(&mut s, &to).await?.is_some() {
            return Ok(false);
        }
        gate()?;
        match ops::rename(&mut s, &self.temp, &to).await {
            Ok(()) => {}
            Err(e)
                if replace && e.kind != ErrorKind::Transient && ops::size(&mut s, &to).await?.is_some() =>
            {
                ops::delete(&mut s, &to).await?;
                ops::rename(&mut s, &self.temp, &to).await?;
            }
            Err(e) => return Err(e),
        }
        self.committed = true;
        Ok(true)
    }

    async fn abort(self: Box<Self>) {
        if self.committed {
            return;
        }
        if let Ok(mut s) = self.shared.session().await {
            remove(&mut s, &self.temp).await;
        }
    }
}

/// A download (`RETR`, after `REST` for an offset), as a byte stream. Each read that makes no
/// progress within the operation timeout fails; at the end the server's reply is read and the
/// connection goes back to the pool.
pub(super) struct Download {
    state: State,
    idle: Pin<Box<Sleep>>,
    timeout: std::time::Duration,
    what: String,
}

enum State {
    Reading(Box<Reading>),
    Finishing(Pin<Box<dyn Future<Output = io::Result<()>> + Send>>),
    Done,
}

struct Reading {
    // Dropped before the session, as in `FtpUpload`.
    transfer: Transfer,
    session: Session,
}

impl Download {
    pub async fn start(mut session: Session, p: &str, offset: u64) -> HostResult<Download> {
        let what = format!("download {p}");
        let offset = usize::try_from(offset)
            .map_err(|_| HostError::permanent(&session.host, format!("{what}: offset {offset} too large")))?;
        let transfer = session
            .run(&what, async |ftp| {
                ftp.resume_transfer(offset).await?;
                ftp.retr_as_stream(p).await
            })
            .await?;
        let timeout = session.op_timeout;
        Ok(Download {
            state: State::Reading(Box::new(Reading { transfer, session })),
            idle: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            what,
        })
    }

    fn stalled(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{}: no data within {} s", self.what, self.timeout.as_secs()),
        )
    }
}

impl AsyncRead for Download {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Reading(reading) => {
                    let before = buf.filled().len();
                    match Pin::new(&mut reading.transfer).poll_read(cx, buf) {
                        Poll::Ready(Ok(())) if buf.filled().len() > before => {
                            let deadline = tokio::time::Instant::now() + this.timeout;
                            this.idle.as_mut().reset(deadline);
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Ok(())) => {
                            // End of file: read the server's reply, then release the connection.
                            let State::Reading(reading) = std::mem::replace(&mut this.state, State::Done)
                            else {
                                unreachable!("matched Reading above")
                            };
                            let Reading {
                                transfer,
                                mut session,
                            } = *reading;
                            let what = this.what.clone();
                            this.state = State::Finishing(Box::pin(async move {
                                match session.guard(&what, transfer.finish()).await {
                                    Ok(()) => Ok(()),
                                    Err(f) => {
                                        let kind = match f.error.kind {
                                            ErrorKind::Transient => io::ErrorKind::ConnectionAborted,
                                            _ => io::ErrorKind::Other,
                                        };
                                        Err(io::Error::new(kind, f.error.message))
                                    }
                                }
                            }));
                        }
                        Poll::Ready(Err(e)) => {
                            reading.session.discard();
                            this.state = State::Done;
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            if this.idle.as_mut().poll(cx).is_ready() {
                                reading.session.discard();
                                let e = this.stalled();
                                this.state = State::Done;
                                return Poll::Ready(Err(e));
                            }
                            return Poll::Pending;
                        }
                    }
                }
                State::Finishing(finish) => {
                    let r = std::task::ready!(finish.as_mut().poll(cx));
                    this.state = State::Done;
                    return Poll::Ready(r);
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if let State::Reading(reading) = &mut self.state {
            // Dropped before the end: the server is still sending.
            reading.session.discard();
        }
    }
}
