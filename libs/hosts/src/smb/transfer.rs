//! Moving bytes: pipelined reads into a [`ByteStream`], pipelined writes into a temp file
//! ([`SmbUpload`]), and the staged file's verification and commit ([`SmbStaged`]).
//!
//! Both directions keep several requests in flight on one connection ([`READ_WINDOW`] ×
//! [`READ_CHUNK`], [`WRITE_WINDOW`] × [`WRITE_CHUNK`]); the server answers them in any order and
//! they are consumed in order, so memory per transfer stays bounded by window × chunk and the
//! round-trip time is not paid per request.
//!
//! Long transfers go in legs ([`Leg`]): when its connection has spent its credit budget
//! ([`conn::CREDIT_BUDGET`], 256 MiB of requests), a transfer lets the requests in flight end,
//! closes its handle, retires the connection and reopens the file over a fresh connection, at
//! the offset where it stopped.
//!
//! Resume and pipelining: writes may land out of order, so after an interruption the temp file's
//! size says only that everything up to `size - WRITE_WINDOW × WRITE_CHUNK` arrived (each write
//! was sent only after every write `WRITE_WINDOW` places before it was acknowledged). A resumed
//! upload cuts the temp file back to that point and continues from there.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use smb::{
    CreateDisposition, CreateOptions, FileAccessMask, FileAttributes, FileCreateArgs,
    FileEndOfFileInformation, FileRenameInformation, GetLen, Resource,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Shared;
use super::conn::{self, Conn};
use super::status::{self, Failure};
use crate::{ByteStream, ErrorKind, Gate, HostError, HostResult, Staged, Upload, Verification, WriteTarget};

/// Largest read request (also capped by what the server negotiated).
pub const READ_CHUNK: usize = 1 << 20;
/// Reads in flight per download.
pub const READ_WINDOW: usize = 8;
/// Largest write request (also capped by what the server negotiated): larger than reads, as
/// the server's cost is per request (smbclient writes up to 8 MiB at once).
pub const WRITE_CHUNK: usize = 4 << 20;
/// Writes in flight per upload.
pub const WRITE_WINDOW: usize = 2;

/// One connection and a transfer's handle on it.
struct Leg {
    conn: Conn,
    file: Arc<smb::File>,
}

impl Leg {
    /// Close the handle (its requests have ended) and hand the connection back to the pool.
    async fn end(self, shared: &Shared) {
        if let Ok(file) = Arc::try_unwrap(self.file) {
            shared.close(&self.conn, Resource::File(file)).await;
        }
    }

    /// Close the handle (its requests have ended) and close the connection, which has spent its
    /// credit budget: out of the pool at once, so its place is free for the next leg.
    async fn retire(self, shared: &Shared) {
        let Leg { conn, file } = self;
        if let Ok(file) = Arc::try_unwrap(file) {
            shared.close(&conn, Resource::File(file)).await;
        }
        tracing::debug!(
            host = shared.name(),
            credits = conn.spent(),
            "retire a connection that spent its credit budget"
        );
        drop(deadpool::managed::Object::take(conn));
    }
}

// ---------------------------------------------------------------------------------------------
// Reading.
// ---------------------------------------------------------------------------------------------

/// What the download task hands the stream.
enum Piece {
    Data(Bytes),
    /// Every byte was sent: the end of the file (a stream that ends without this failed).
    End,
    Failed(io::Error),
}

/// Open `path` (share path `smb`) for reading over `conn`.
async fn open_for_read(shared: &Shared, conn: Conn, smb: &str, path: &str) -> HostResult<Leg> {
    let args = FileCreateArgs {
        options: CreateOptions::new().with_non_directory_file(true),
        ..FileCreateArgs::make_open_existing(
            FileAccessMask::new()
                .with_file_read_data(true)
                .with_file_read_attributes(true)
                .with_synchronize(true),
        )
    };
    match shared.open(&conn, smb, args).await {
        Ok(Resource::File(f)) => Ok(Leg {
            conn,
            file: Arc::new(f),
        }),
        Ok(other) => {
            shared.close(&conn, other).await;
            Err(HostError::permanent(
                shared.name(),
                format!("read {path}: not a file"),
            ))
        }
        Err(f) if f.is(status::FILE_IS_A_DIRECTORY) => Err(HostError::permanent(
            shared.name(),
            format!("read {path}: is a folder"),
        )),
        Err(f) => Err(shared.error(&format!("read {path}"), &f)),
    }
}

pub async fn read(shared: Arc<Shared>, path: &str, offset: u64) -> HostResult<ByteStream> {
    let smb = shared.smb_path(path)?;
    let conn = shared.conn().await?;
    let leg = open_for_read(&shared, conn, &smb, path).await?;
    let end = leg
        .file
        .get_len()
        .await
        .map_err(|e| shared.error(&format!("read {path}"), &status::classify(&e)))?;
    let chunk = READ_CHUNK.min(leg.conn.negotiated.max_read.max(64 << 10));
    let (tx, rx) = mpsc::channel(READ_WINDOW);
    let download = Download {
        shared,
        smb,
        path: path.to_string(),
        end,
        chunk,
        tx,
    };
    tokio::spawn(download.run(leg, offset));
    Ok(Box::pin(PieceReader {
        rx,
        current: Bytes::new(),
        done: false,
    }))
}

/// A download task: reads `[start, end)` of the file with a window of concurrent requests, in
/// order, into `tx`.
struct Download {
    shared: Arc<Shared>,
    smb: String,
    path: String,
    end: u64,
    chunk: usize,
    tx: mpsc::Sender<Piece>,
}

impl Download {
    async fn run(self, first: Leg, start: u64) {
        let limit = self.shared.op_timeout();
        let mut leg = Some(first);
        let mut next = start;
        let mut inflight: VecDeque<(usize, JoinHandle<Result<Bytes, Failure>>)> = VecDeque::new();
        let outcome: Result<bool, HostError> = 'download: loop {
            while inflight.len() < READ_WINDOW && next < self.end {
                let len = (self.end - next).min(self.chunk as u64) as usize;
                let current = leg.as_ref().expect("set while the download runs");
                if !current.conn.spend(conn::credits(len)) {
                    // The connection spent its credits: let its reads end, then go on over a
                    // fresh one.
                    if !inflight.is_empty() {
                        break;
                    }
                    let spent = leg.take().expect("set while the download runs");
                    spent.retire(&self.shared).await;
                    match self.reopen().await {
                        Ok(fresh) => leg = Some(fresh),
                        Err(e) => break 'download Err(e),
                    }
                    continue;
                }
                let (file, pos) = (current.file.clone(), next);
                inflight.push_back((
                    len,
                    tokio::spawn(async move {
                        match tokio::time::timeout(limit, read_at(&file, pos, len)).await {
                            Ok(r) => r,
                            Err(_) => Err(Failure::timeout(limit.as_secs())),
                        }
                    }),
                ));
                next += len as u64;
            }
            let Some((len, handle)) = inflight.pop_front() else {
                break Ok(true);
            };
            let data = match handle.await {
                Ok(Ok(data)) => data,
                Ok(Err(f)) => {
                    if let Some(leg) = &leg {
                        leg.conn.note(&f);
                    }
                    break Err(self.shared.error(&format!("read {}", self.path), &f));
                }
                Err(e) => {
                    break Err(HostError::transient(
                        self.shared.name(),
                        format!("read {}: read task failed: {e}", self.path),
                    ));
                }
            };
            let short = data.len() < len;
            if self.tx.send(Piece::Data(data)).await.is_err() {
                break Ok(false); // the reader is gone
            }
            if short {
                break Ok(true); // the file shrank while it was read
            }
        };
        match outcome {
            Ok(complete) => {
                // Let the requests still in flight finish, so their credits come back and the
                // connection can go back to the pool.
                for (_, handle) in inflight {
                    let _ = handle.await;
                }
                if let Some(leg) = leg {
                    leg.end(&self.shared).await;
                }
                if complete {
                    let _ = self.tx.send(Piece::End).await;
                }
            }
            Err(e) => {
                let _ = self.tx.send(Piece::Failed(to_io(&e))).await;
                for (_, handle) in inflight {
                    handle.abort();
                }
                // The connection may have lost credits with the aborted requests.
                if let Some(leg) = &leg {
                    leg.conn.mark_broken();
                }
            }
        }
    }

    /// The file again, over a fresh connection.
    async fn reopen(&self) -> HostResult<Leg> {
        let conn = self.shared.conn().await?;
        open_for_read(&self.shared, conn, &self.smb, &self.path).await
    }
}

/// `len` bytes at `pos` (fewer at the end of the file).
async fn read_at(file: &smb::File, pos: u64, len: usize) -> Result<Bytes, Failure> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file
            .read_block(&mut buf[got..], pos + got as u64, None, false)
            .await
        {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                let f = status::classify_io(&e);
                if f.is(0xC000_0011) {
                    break; // STATUS_END_OF_FILE: the file shrank
                }
                return Err(f);
            }
        }
    }
    buf.truncate(got);
    Ok(Bytes::from(buf))
}

/// A [`HostError`] as an I/O error whose kind keeps its class (see [`HostError::io`]).
fn to_io(e: &HostError) -> io::Error {
    let kind = match e.kind {
        ErrorKind::Transient => io::ErrorKind::ConnectionAborted,
        ErrorKind::NotFound => io::ErrorKind::NotFound,
        ErrorKind::Permanent | ErrorKind::Fenced => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.message.clone())
}

struct PieceReader {
    rx: mpsc::Receiver<Piece>,
    current: Bytes,
    done: bool,
}

impl AsyncRead for PieceReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = buf.remaining().min(self.current.len());
                buf.put_slice(&self.current[..n]);
                self.current.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(Piece::Data(data)) => self.current = data,
                Some(Piece::End) => self.done = true,
                Some(Piece::Failed(e)) => {
                    self.done = true;
                    return Poll::Ready(Err(e));
                }
                None => {
                    self.done = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the download stopped before the end of the file",
                    )));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing.
// ---------------------------------------------------------------------------------------------

/// How the temp file is opened, with `disposition`.
fn temp_args(disposition: CreateDisposition) -> FileCreateArgs {
    FileCreateArgs {
        disposition,
        options: CreateOptions::new().with_non_directory_file(true),
        attributes: FileAttributes::new(),
        desired_access: FileAccessMask::new()
            .with_file_read_data(true)
            .with_file_write_data(true)
            .with_file_append_data(true)
            .with_file_read_attributes(true)
            .with_file_write_attributes(true)
            .with_delete(true)
            .with_synchronize(true),
    }
}

pub async fn write(shared: Arc<Shared>, target: &WriteTarget) -> HostResult<Box<dyn Upload>> {
    let shown = target.temp_path();
    let temp = shared.smb_path(&shown)?;
    let conn = shared.conn().await?;
    let what = format!("create {shown}");
    let mut offset = 0;
    let mut file = None;
    if target.resume {
        match shared
            .open(&conn, &temp, temp_args(CreateDisposition::Open))
            .await
        {
            Ok(Resource::File(f)) => {
                let size = f.get_len().await.unwrap_or(0);
                // Writes were pipelined: only the part before the last window is certain.
                offset = size.saturating_sub((WRITE_WINDOW * WRITE_CHUNK) as u64);
                if offset < size {
                    let cut = conn
                        .run(shared.op_timeout(), async {
                            f.set_info(FileEndOfFileInformation { end_of_file: offset })
                                .await
                                .map_err(|e| status::classify(&e))
                        })
                        .await;
                    if let Err(fail) = cut {
                        return Err(shared.error(&format!("resume {shown}"), &fail));
                    }
                }
                file = Some(f);
            }
            Ok(other) => {
                shared.close(&conn, other).await;
                return Err(HostError::permanent(
                    shared.name(),
                    format!("{what}: {shown} is a folder"),
                ));
            }
            Err(f) if f.is_not_found() => {}
            Err(f) => return Err(shared.error(&format!("resume {shown}"), &f)),
        }
    }
    let file = match file {
        Some(f) => f,
        // Exclusive create; a stale temp of an earlier attempt is replaced (truncated).
        None => match shared
            .open(&conn, &temp, temp_args(CreateDisposition::Create))
            .await
        {
            Ok(Resource::File(f)) => f,
            Err(f) if f.is(status::OBJECT_NAME_COLLISION) => {
                match shared
                    .open(&conn, &temp, temp_args(CreateDisposition::Overwrite))
                    .await
                {
                    Ok(Resource::File(f)) => f,
                    Ok(other) => {
                        shared.close(&conn, other).await;
                        return Err(HostError::permanent(
                            shared.name(),
                            format!("{what}: {shown} is a folder"),
                        ));
                    }
                    Err(f) => return Err(shared.error(&what, &f)),
                }
            }
            Ok(other) => {
                shared.close(&conn, other).await;
                return Err(HostError::permanent(
                    shared.name(),
                    format!("{what}: {shown} is a folder"),
                ));
            }
            Err(f) => return Err(shared.error(&what, &f)),
        },
    };
    let chunk = WRITE_CHUNK.min(conn.negotiated.max_write.max(64 << 10));
    Ok(Box::new(SmbUpload {
        shared,
        leg: Some(Leg {
            conn,
            file: Arc::new(file),
        }),
        temp,
        shown,
        offset,
        next: offset,
        chunk,
        buf: Vec::new(),
        inflight: VecDeque::new(),
        failed: None,
    }))
}

/// An upload to the temp name. Dropped without `finish` or `abort` (a crash), it abandons its
/// requests in flight and its connection.
struct SmbUpload {
    shared: Arc<Shared>,
    /// The connection and the temp file's handle on it: `None` once the upload ended, or when
    /// moving to a fresh connection failed.
    leg: Option<Leg>,
    /// Share path of the temp file, and the path as the caller knows it.
    temp: String,
    shown: String,
    offset: u64,
    /// Where the next request writes.
    next: u64,
    chunk: usize,
    buf: Vec<u8>,
    inflight: VecDeque<JoinHandle<Result<(), Failure>>>,
    /// The first failure: every later call repeats it (bytes may be missing after it).
    failed: Option<HostError>,
}

impl SmbUpload {
    fn failed(&mut self, f: &Failure) -> HostError {
        if let Some(leg) = &self.leg {
            leg.conn.note(f);
        }
        self.fail(self.shared.error(&format!("write {}", self.shown), f))
    }

    fn fail(&mut self, e: HostError) -> HostError {
        self.failed = Some(e.clone());
        e
    }

    fn check(&self) -> HostResult<()> {
        match (&self.failed, &self.leg) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(_)) => Ok(()),
            (None, None) => Err(HostError::permanent(
                self.shared.name(),
                format!("write {}: the upload has ended", self.shown),
            )),
        }
    }

    /// Wait for the oldest request in flight.
    async fn wait_one(&mut self) -> HostResult<()> {
        let Some(handle) = self.inflight.pop_front() else {
            return Ok(());
        };
        let result = match handle.await {
            Ok(r) => r,
            Err(e) => Err(Failure {
                kind: ErrorKind::Transient,
                status: None,
                text: format!("write task failed: {e}"),
            }),
        };
        result.map_err(|f| self.failed(&f))
    }

    /// Send the buffered bytes as one request (waiting first if the window is full).
    async fn send_buffer(&mut self) -> HostResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        while self.inflight.len() >= WRITE_WINDOW {
            self.wait_one().await?;
        }
        let credits = conn::credits(self.buf.len());
        if !self.leg()?.conn.spend(credits) {
            self.reconnect().await?;
            // A fresh connection affords any one request.
            self.leg()?.conn.spend(credits);
        }
        let data: Arc<[u8]> = std::mem::take(&mut self.buf).into();
        let (pos, len) = (self.next, data.len());
        self.next += len as u64;
        let file = self.leg()?.file.clone();
        let limit = self.shared.op_timeout();
        self.inflight.push_back(tokio::spawn(async move {
            match tokio::time::timeout(limit, write_at(&file, data, pos)).await {
                Ok(r) => r,
                Err(_) => Err(Failure::timeout(limit.as_secs())),
            }
        }));
        Ok(())
    }

    fn leg(&self) -> HostResult<&Leg> {
        self.check()?;
        Ok(self.leg.as_ref().expect("checked"))
    }

    /// The connection spent its credits: let its writes end, retire it, and reopen the temp
    /// file over a fresh connection (writes go on at `next`).
    async fn reconnect(&mut self) -> HostResult<()> {
        self.drain().await?;
        let spent = self.leg.take().expect("checked by the caller");
        spent.retire(&self.shared).await;
        let conn = match self.shared.conn().await {
            Ok(conn) => conn,
            Err(e) => return Err(self.fail(e)),
        };
        let opened = self
            .shared
            .open(&conn, &self.temp, temp_args(CreateDisposition::Open))
            .await;
        match opened {
            Ok(Resource::File(file)) => {
                self.leg = Some(Leg {
                    conn,
                    file: Arc::new(file),
                });
                Ok(())
            }
            Ok(other) => {
                self.shared.close(&conn, other).await;
                let e = HostError::permanent(
                    self.shared.name(),
                    format!("write {}: it is no longer a file", self.shown),
                );
                Err(self.fail(e))
            }
            Err(f) => {
                let e = self.shared.error(&format!("reopen {}", self.shown), &f);
                Err(self.fail(e))
            }
        }
    }

    async fn drain(&mut self) -> HostResult<()> {
        while !self.inflight.is_empty() {
            self.wait_one().await?;
        }
        Ok(())
    }
}

/// Write all of `data` at `pos`.
async fn write_at(file: &smb::File, data: Arc<[u8]>, pos: u64) -> Result<(), Failure> {
    let mut done = file
        .write_block_zc(data.clone(), pos, None)
        .await
        .map_err(|e| status::classify_io(&e))?;
    while done < data.len() {
        if done == 0 {
            return Err(Failure {
                kind: ErrorKind::Permanent,
                status: None,
                text: format!("the server wrote nothing at offset {pos}"),
            });
        }
        let rest: Arc<[u8]> = data[done..].into();
        done += file
            .write_block_zc(rest, pos + done as u64, None)
            .await
            .map_err(|e| status::classify_io(&e))?;
    }
    Ok(())
}

#[async_trait]
impl Upload for SmbUpload {
    fn offset(&self) -> u64 {
        self.offset
    }

    async fn write(&mut self, data: Bytes) -> HostResult<()> {
        self.check()?;
        let mut data = &data[..];
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.chunk);
            }
            let take = (self.chunk - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.chunk {
                self.send_buffer().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> HostResult<Box<dyn Staged>> {
        self.check()?;
        self.send_buffer().await?;
        self.drain().await?;
        let Leg { conn, file } = self.leg.take().expect("checked");
        let shared = self.shared.clone();
        let flushed = conn
            .run(shared.op_timeout(), async {
                file.flush().await.map_err(|e| status::classify_io(&e))
            })
            .await;
        if let Err(f) = flushed {
            return Err(shared.error(&format!("flush {}", self.shown), &f));
        }
        Leg { conn, file }.end(&shared).await;
        Ok(Box::new(SmbStaged {
            shared,
            temp: std::mem::take(&mut self.temp),
            shown: std::mem::take(&mut self.shown),
        }))
    }

    async fn abort(mut self: Box<Self>) {
        // Let the requests in flight end, so the connection stays usable, then remove the temp.
        let _ = self.drain().await;
        let mut conn = None;
        if let Some(Leg { conn: c, file }) = self.leg.take() {
            if let Ok(file) = Arc::try_unwrap(file) {
                self.shared.close(&c, Resource::File(file)).await;
            }
            conn = Some(c);
        }
        let removed = async {
            match conn {
                Some(conn) if !conn.is_broken() => self.shared.delete_on(&conn, &self.shown).await,
                _ => {
                    let fresh = self.shared.conn().await?;
                    self.shared.delete_on(&fresh, &self.shown).await
                }
            }
        }
        .await;
        if let Err(e) = removed {
            tracing::debug!(host = self.shared.name(), error = %e, "remove an aborted upload");
        }
    }
}

impl Drop for SmbUpload {
    fn drop(&mut self) {
        if self.inflight.is_empty() {
            return;
        }
        for handle in self.inflight.drain(..) {
            handle.abort();
        }
        // Abandoned requests take their credits with them: the connection is done.
        if let Some(leg) = &self.leg {
            leg.conn.mark_broken();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Staged.
// ---------------------------------------------------------------------------------------------

struct SmbStaged {
    shared: Arc<Shared>,
    temp: String,
    shown: String,
}

#[async_trait]
impl Staged for SmbStaged {
    async fn verify(&mut self, size: u64, sha256: &str) -> HostResult<Verification> {
        let s = &self.shared;
        let mismatch = |stored: String| {
            HostError::permanent(
                s.name(),
                format!(
                    "verification failed for {}: stored {stored}, sent {size} bytes sha256 {sha256}",
                    self.shown
                ),
            )
        };
        match s.verify {
            ferry_config::Verify::Auto => {
                let conn = s.conn().await?;
                let stored = match s.stat_on(&conn, &self.shown).await? {
                    Some(m) if !m.is_dir => m.size,
                    _ => {
                        return Err(HostError::not_found(
                            s.name(),
                            format!("verify {}: the written file is gone", self.shown),
                        ));
                    }
                };
                if stored != size {
                    return Err(mismatch(format!("{stored} bytes")));
                }
                Ok(Verification::Size)
            }
            ferry_config::Verify::ReadBack => {
                let stream = read(s.clone(), &self.shown, 0).await?;
                let (stored, hash) = crate::hash_reader(stream, |e| {
                    HostError::io(s.name(), &format!("read back {}", self.shown), e)
                })
                .await?;
                if stored != size || hash != sha256 {
                    return Err(mismatch(format!("{stored} bytes sha256 {hash}")));
                }
                Ok(Verification::ReadBack)
            }
        }
    }

    async fn commit_gated(&mut self, final_path: &str, replace: bool, gate: Gate<'_>) -> HostResult<bool> {
        let s = &self.shared;
        let to = s.smb_path(final_path)?;
        let what = format!("rename {} to {final_path}", self.shown);
        let conn = s.conn().await?;
        let args = FileCreateArgs {
            options: CreateOptions::new().with_non_directory_file(true),
            ..FileCreateArgs::make_open_existing(
                FileAccessMask::new()
                    .with_delete(true)
                    .with_file_read_attributes(true)
                    .with_synchronize(true),
            )
        };
        let file = match s.open(&conn, &self.temp, args).await {
            Ok(r) => r,
            Err(f) => return Err(s.error(&what, &f)),
        };
        if let Err(e) = gate() {
            s.close(&conn, file).await;
            return Err(e);
        }
        let renamed = conn
            .run(s.op_timeout(), async {
                let handle = match &file {
                    Resource::File(f) => &**f,
                    Resource::Directory(d) => &**d,
                    Resource::Pipe(p) => &**p,
                };
                handle
                    .set_info(FileRenameInformation {
                        replace_if_exists: replace.into(),
                        root_directory: 0,
                        file_name: to.as_str().into(),
                    })
                    .await
                    .map_err(|e| status::classify(&e))
            })
            .await;
        s.close(&conn, file).await;
        match renamed {
            Ok(()) => Ok(true),
            Err(f) if !replace && f.is(status::OBJECT_NAME_COLLISION) => Ok(false),
            Err(f) => Err(s.error(&what, &f)),
        }
    }

    async fn abort(self: Box<Self>) {
        let result = async {
            let conn = self.shared.conn().await?;
            self.shared.delete_on(&conn, &self.shown).await
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(host = self.shared.name(), error = %e, "remove an aborted upload");
        }
    }
}
