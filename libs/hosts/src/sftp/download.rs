//! Reading: a pump task keeps up to [`MAX_READS`] read requests (at most [`READ_WINDOW`] bytes)
//! in flight on one session and hands the bytes, in order, to a bounded channel that the caller
//! reads as an `AsyncRead`. Memory per download stays under `READ_WINDOW` plus the channel.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use openssh_sftp_client::Error as SftpError;
use openssh_sftp_client::file::File;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::pool::{Ctx, Lease};
use super::{Inner, remote};
use crate::{ByteStream, ErrorKind, HostError, HostResult};

/// Bytes per read request: OpenSSH's `max-read-length`. A server that returns less per request
/// is noticed, and later requests ask for what it gives.
const READ_CHUNK: u32 = 261_120;
const MAX_READS: usize = 64;
const READ_WINDOW: u64 = 16 << 20;
/// The smallest per-request answer taken as a server's limit (anything less is a short read).
const MIN_CAP: u32 = 8 << 10;
/// Chunks waiting for the reader.
const CHANNEL: usize = 4;

/// Open `path` and stream it from `offset`. A missing file fails here, not in the stream.
pub(super) async fn open(inner: &Arc<Inner>, path: &str, offset: u64) -> HostResult<ByteStream> {
    let lease = inner.lease().await?;
    let ctx = lease.ctx();
    let file = ctx
        .run(&format!("open {path}"), lease.session().sftp.open(remote(path)))
        .await?;
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(pump(lease, ctx, file, offset, tx));
    Ok(Box::pin(ChunkReader {
        rx,
        chunk: Bytes::new(),
        done: false,
    }))
}

/// Size and SHA-256 of a stored file, read back.
pub(super) async fn hash(inner: &Arc<Inner>, path: &str) -> HostResult<(u64, String)> {
    let stream = open(inner, path, 0).await?;
    crate::hash_reader(stream, |e| {
        HostError::io(&inner.name, &format!("read back {path}"), e)
    })
    .await
}

type ReadTask = JoinHandle<Result<Option<BytesMut>, SftpError>>;

fn spawn_read(file: &File, at: u64, len: u32) -> ReadTask {
    let mut file = file.clone();
    tokio::spawn(async move {
        Pin::new(&mut file).start_seek(SeekFrom::Start(at))?;
        file.read(len, BytesMut::with_capacity(len as usize)).await
    })
}

/// What the pump sends: bytes, an error, or (empty bytes) the end of the file.
type Item = std::io::Result<Bytes>;

fn io_error(e: &HostError) -> std::io::Error {
    let kind = match e.kind {
        ErrorKind::NotFound => std::io::ErrorKind::NotFound,
        ErrorKind::Transient => std::io::ErrorKind::ConnectionAborted,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, e.message.clone())
}

async fn await_read(ctx: &Ctx, task: ReadTask, at: u64) -> HostResult<Option<BytesMut>> {
    let what = format!("read at offset {at}");
    match tokio::time::timeout(ctx.operation_timeout, task).await {
        Err(_) => Err(ctx.timed_out(&what)),
        Ok(Err(join)) => Err(HostError::permanent(
            &ctx.host,
            format!("{what}: read task failed: {join}"),
        )),
        Ok(Ok(Err(e))) => Err(ctx.error(&what, e)),
        Ok(Ok(Ok(data))) => Ok(data),
    }
}

/// A read request in flight: offset, length asked for, the task.
type Pending = (u64, u32, ReadTask);

/// Requests for `from..to` in pieces of at most `chunk`, appended to `reads`.
fn ask(reads: &mut VecDeque<Pending>, file: &File, mut from: u64, to: u64, chunk: u32) {
    while from < to {
        let len = (to - from).min(u64::from(chunk)) as u32;
        reads.push_back((from, len, spawn_read(file, from, len)));
        from += u64::from(len);
    }
}

async fn pump(lease: Lease, ctx: Arc<Ctx>, file: File, offset: u64, tx: mpsc::Sender<Item>) {
    let mut chunk = READ_CHUNK;
    let mut next = offset;
    let mut reads: VecDeque<Pending> = VecDeque::new();
    // Set once nothing more is wanted: end of file, an error, or the reader went away.
    let mut stop = false;
    let mut failure = None;
    loop {
        while !stop && reads.len() < MAX_READS && (reads.len() as u64) * u64::from(chunk) < READ_WINDOW {
            reads.push_back((next, chunk, spawn_read(&file, next, chunk)));
            next += u64::from(chunk);
        }
        let Some((at, len, task)) = reads.pop_front() else {
            break;
        };
        let got = match await_read(&ctx, task, at).await {
            Ok(got) => got,
            Err(e) => {
                // A timeout broke the session: the other requests will not be answered.
                if e.kind == ErrorKind::Transient {
                    reads.clear();
                }
                failure.get_or_insert(e);
                stop = true;
                continue;
            }
        };
        if stop {
            continue;
        }
        let Some(mut data) = got else {
            stop = true;
            continue;
        };
        // Bytes past what this request stands for come again from the next one.
        data.truncate(len as usize);
        let n = data.len() as u32;
        if tx.send(Ok(data.freeze())).await.is_err() {
            stop = true;
            continue;
        }
        if n == len {
            continue;
        }
        // A short read: the end of the file, or a server that answers at most `n` bytes per
        // request (no `limits@openssh.com`, or a smaller one). The rest of this request's range
        // tells which, and comes before anything after it.
        let (mut from, end) = (at + u64::from(n), at + u64::from(len));
        while from < end && !stop {
            let task = spawn_read(&file, from, (end - from) as u32);
            match await_read(&ctx, task, from).await {
                Ok(Some(more)) if !more.is_empty() => {
                    let mut more = more;
                    more.truncate((end - from) as usize);
                    let got = more.len() as u32;
                    from += u64::from(got);
                    if tx.send(Ok(more.freeze())).await.is_err() {
                        stop = true;
                    } else if n >= MIN_CAP && n < chunk && got <= n {
                        // Capped: ask in pieces of `n` from now on, and split what is already
                        // asked for so all of it is in flight at once.
                        chunk = n;
                        let mut split = VecDeque::new();
                        ask(&mut split, &file, from, end, chunk);
                        for (qat, qlen, task) in std::mem::take(&mut reads) {
                            split.push_back((qat, qlen.min(chunk), task));
                            ask(
                                &mut split,
                                &file,
                                qat + u64::from(chunk),
                                qat + u64::from(qlen),
                                chunk,
                            );
                        }
                        reads = split;
                        break;
                    }
                }
                Ok(Some(_)) => {
                    failure.get_or_insert(HostError::permanent(
                        &ctx.host,
                        format!("read at offset {from}: the server sent no data and no end of file"),
                    ));
                    stop = true;
                }
                Ok(None) => stop = true,
                Err(e) => {
                    failure.get_or_insert(e);
                    stop = true;
                }
            }
        }
    }
    let end = match failure {
        Some(e) => Err(io_error(&e)),
        None => Ok(Bytes::new()),
    };
    let _ = tx.send(end).await;
    drop(file);
    drop(lease);
}

/// The caller's side of a download.
struct ChunkReader {
    rx: mpsc::Receiver<Item>,
    chunk: Bytes,
    done: bool,
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.chunk.is_empty() {
                let n = this.chunk.len().min(buf.remaining());
                buf.put_slice(&this.chunk.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(bytes)) if bytes.is_empty() => this.done = true,
                Some(Ok(bytes)) => this.chunk = bytes,
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Err(e));
                }
                None => {
                    // The pump ended without saying so: never pass that off as the end of file.
                    this.done = true;
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the download stopped unexpectedly",
                    )));
                }
            }
        }
    }
}
