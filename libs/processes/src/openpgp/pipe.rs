//! Reading ahead and writing behind on threads of their own, so that reading the input, and
//! hashing and writing the output, overlap with the cipher and signature work of the step's
//! thread. Memory stays bounded: each side allocates [`BUFFERS`] chunks of [`CHUNK`] bytes once
//! and recycles them (a thread waits for a free chunk rather than allocating one).

use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Bytes per chunk handed between threads.
pub(crate) const CHUNK: usize = 1024 * 1024;
/// Chunks queued between the threads, per direction: 16 MiB, tens of milliseconds of work, so a
/// thread the scheduler sets aside for a time slice does not stall the others.
const IN_FLIGHT: usize = 16;
/// Chunks per side: those queued, the one being filled and the one being drained.
const BUFFERS: usize = IN_FLIGHT + 2;

/// A channel pre-filled with `BUFFERS` chunks of `CHUNK` zero bytes.
fn pool() -> (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) {
    let (tx, rx) = sync_channel(BUFFERS);
    for _ in 0..BUFFERS {
        tx.try_send(vec![0u8; CHUNK])
            .expect("the channel holds BUFFERS chunks");
    }
    (tx, rx)
}

/// A [`BufRead`] over a reader that a thread of its own reads ahead, chunk by chunk; it checks
/// the step's cancel flag before every chunk, as [`crate::Cancellable`] does.
pub(crate) struct ReadAhead<'a> {
    /// `None` once dropped, so the thread sees the channel closed before it is joined.
    chunks: Option<Receiver<io::Result<Vec<u8>>>>,
    /// Chunks read, back to the thread; `None` once dropped, like `chunks`.
    back: Option<SyncSender<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
    cancel: Option<&'a AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<'a> ReadAhead<'a> {
    pub(crate) fn new<R: Read + Send + 'static>(
        mut inner: R,
        cancel: Option<&'a AtomicBool>,
    ) -> io::Result<ReadAhead<'a>> {
        ReadAhead::filled_by(
            move |buf: &mut Vec<u8>| {
                buf.resize(CHUNK, 0);
                let filled = read_full(&mut inner, buf)?;
                buf.truncate(filled);
                Ok(())
            },
            cancel,
        )
    }

    /// A reader of the chunks `fill` makes on a thread of its own: `fill` gets a chunk of
    /// capacity [`CHUNK`] and leaves in it the next bytes (as many as it likes up to the
    /// capacity; none: the end). An error ends the reading; the reader returns it.
    pub(crate) fn filled_by<F>(mut fill: F, cancel: Option<&'a AtomicBool>) -> io::Result<ReadAhead<'a>>
    where
        F: FnMut(&mut Vec<u8>) -> io::Result<()> + Send + 'static,
    {
        let (tx, chunks) = sync_channel::<io::Result<Vec<u8>>>(IN_FLIGHT);
        let (back, spare) = pool();
        let thread = std::thread::Builder::new()
            .name("ferry-pgp-read".into())
            .spawn(move || {
                // Ends when the reader is dropped (no chunk comes back, none can be sent).
                while let Ok(mut buf) = spare.recv() {
                    match fill(&mut buf) {
                        // An empty chunk says: end of input.
                        Ok(()) => {
                            let last = buf.is_empty();
                            if tx.send(Ok(buf)).is_err() || last {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })?;
        Ok(ReadAhead {
            chunks: Some(chunks),
            back: Some(back),
            current: Vec::new(),
            pos: 0,
            done: false,
            cancel,
            thread: Some(thread),
        })
    }
}

/// Reads until `buf` is full or `r` ends; how many bytes were read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl std::fmt::Debug for ReadAhead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadAhead")
    }
}

impl BufRead for ReadAhead<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.current.len() && !self.done {
            if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(io::Error::other("cancelled"));
            }
            let chunks = self.chunks.as_ref().expect("set until dropped");
            let next = chunks
                .recv()
                .map_err(|_| io::Error::other("the reading thread stopped"))??;
            let used = std::mem::replace(&mut self.current, next);
            // The first `current` is an empty Vec of no capacity: only chunks go back.
            if used.capacity() > 0 {
                let _ = self.back.as_ref().expect("set until dropped").try_send(used);
            }
            self.pos = 0;
            self.done = self.current.is_empty();
        }
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.current.len());
    }
}

impl Read for ReadAhead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl Drop for ReadAhead<'_> {
    fn drop(&mut self) {
        // Closing both channels stops the thread at its next chunk.
        self.chunks = None;
        self.back = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a [`WriteBehind::read_from`] failed.
#[derive(Debug)]
pub(crate) enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// A [`Write`] whose bytes a thread of its own writes to `W`, chunk by chunk;
/// [`WriteBehind::finish`] waits for it and hands `W` back. A write error on that thread ends
/// the writing; the next chunk sent here fails, and `finish` returns that error.
pub(crate) struct WriteBehind<W: Write + Send + 'static> {
    /// Full chunks and how many of their bytes count; `None` once finished or dropped.
    chunks: Option<SyncSender<(Vec<u8>, usize)>>,
    spare: Receiver<Vec<u8>>,
    /// Always `CHUNK` bytes long; the first `filled` are to be written.
    buf: Vec<u8>,
    filled: usize,
    /// Set by [`WriteBehind::hashing`]: the bytes sent, hashed on the caller's thread.
    hasher: Option<Sha256>,
    thread: Option<JoinHandle<(W, io::Result<()>)>>,
}

impl<W: Write + Send + 'static> WriteBehind<W> {
    pub(crate) fn new(mut inner: W) -> io::Result<WriteBehind<W>> {
        let (chunks, rx) = sync_channel::<(Vec<u8>, usize)>(IN_FLIGHT);
        let (back, spare) = pool();
        let first = spare.recv().expect("the pool is full");
        let thread = std::thread::Builder::new()
            .name("ferry-pgp-write".into())
            .spawn(move || {
                for (chunk, len) in rx {
                    if let Err(e) = inner.write_all(&chunk[..len]) {
                        return (inner, Err(e));
                    }
                    let _ = back.try_send(chunk);
                }
                let flushed = inner.flush();
                (inner, flushed)
            })?;
        Ok(WriteBehind {
            chunks: Some(chunks),
            spare,
            buf: first,
            filled: 0,
            hasher: None,
            thread: Some(thread),
        })
    }

    /// As [`WriteBehind::new`], and the bytes are hashed (SHA-256) on the caller's thread as
    /// they are sent, so that the writing thread only writes; [`WriteBehind::finish_hashed`]
    /// returns the digest.
    pub(crate) fn hashing(inner: W) -> io::Result<WriteBehind<W>> {
        let mut w = WriteBehind::new(inner)?;
        w.hasher = Some(Sha256::new());
        Ok(w)
    }

    /// After a failed send there is no chunk to fill: the thread stopped.
    fn usable(&self) -> io::Result<()> {
        if self.buf.len() == CHUNK {
            Ok(())
        } else {
            Err(io::Error::other("the writing thread stopped"))
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let stopped = || io::Error::other("the writing thread stopped");
        let len = std::mem::take(&mut self.filled);
        if let Some(h) = &mut self.hasher {
            h.update(&self.buf[..len]);
        }
        // Sent before a free chunk is awaited: the pool may have none until the thread writes.
        let full = std::mem::take(&mut self.buf);
        self.chunks
            .as_ref()
            .expect("set until finished")
            .send((full, len))
            .map_err(|_| stopped())?;
        self.buf = self.spare.recv().map_err(|_| stopped())?;
        Ok(())
    }

    /// One `read` of `r` straight into the next chunk (no copy in between); `Ok(0)` at its end.
    pub(crate) fn read_from(&mut self, r: &mut impl Read) -> Result<usize, Failed> {
        self.usable().map_err(Failed::Write)?;
        let n = loop {
            match r.read(&mut self.buf[self.filled..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(Failed::Read)?,
            }
        };
        self.filled += n;
        if self.filled == CHUNK {
            self.send().map_err(Failed::Write)?;
        }
        Ok(n)
    }

    /// [`WriteBehind::finish`] for a writer made by [`WriteBehind::hashing`]: `W` and the
    /// SHA-256 of every byte written to it.
    pub(crate) fn finish_hashed(mut self) -> io::Result<(W, [u8; 32])> {
        let mut hasher = self.hasher.take().expect("made by WriteBehind::hashing");
        if self.filled > 0 {
            hasher.update(&self.buf[..self.filled]);
        }
        // `finish` sends the last part unhashed (the hasher is taken): hashed just above.
        let inner = self.finish()?;
        Ok((inner, hasher.finalize().into()))
    }

    /// Writes what is left, waits for the thread, and hands back `W` (or the first write error).
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let sent = match self.filled {
            0 => Ok(()),
            _ => self.send(),
        };
        self.chunks = None;
        let (inner, written) = self
            .thread
            .take()
            .expect("set until finished")
            .join()
            .map_err(|_| io::Error::other("the writing thread panicked"))?;
        written?;
        sent?;
        Ok(inner)
    }
}

impl<W: Write + Send + 'static> Write for WriteBehind<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.usable()?;
        let n = data.len().min(CHUNK - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    /// Bytes reach `W` when [`WriteBehind::finish`] is called; a flush here does nothing.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for WriteBehind<W> {
    fn drop(&mut self) {
        self.chunks = None;
        if let Some(t) = self.thread.take() {
            // Dropped without finish (an error): W is dropped on its own thread.
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_gives_back_every_byte_in_order() {
        let data: Vec<u8> = (0..3 * CHUNK + 12_345).map(|i| (i * 7 % 251) as u8).collect();
        let mut r = ReadAhead::new(io::Cursor::new(data.clone()), None).expect("spawn the thread");
        let mut got = Vec::new();
        r.read_to_end(&mut got).expect("a cursor reads");
        assert_eq!(got, data);
    }

    #[test]
    fn read_ahead_stops_when_cancelled() {
        let cancel = AtomicBool::new(true);
        let mut r = ReadAhead::new(io::repeat(1), Some(&cancel)).expect("spawn the thread");
        let err = r.fill_buf().expect_err("cancelled before the first chunk");
        assert_eq!(err.to_string(), "cancelled");
    }

    #[test]
    fn read_ahead_passes_on_a_read_error() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let mut r = ReadAhead::new(Broken, None).expect("spawn the thread");
        assert_eq!(
            r.fill_buf().expect_err("the read fails").to_string(),
            "disk on fire"
        );
    }

    #[test]
    fn write_behind_writes_every_byte_in_order() {
        let data: Vec<u8> = (0..2 * CHUNK + 999).map(|i| (i * 13 % 253) as u8).collect();
        let mut w = WriteBehind::new(Vec::new()).expect("spawn the thread");
        for piece in data.chunks(7_777) {
            w.write_all(piece).expect("a Vec takes every byte");
        }
        assert_eq!(w.finish().expect("a Vec takes every byte"), data);
    }

    #[test]
    fn write_behind_reads_straight_from_a_reader() {
        let data: Vec<u8> = (0..CHUNK + 5).map(|i| (i % 249) as u8).collect();
        let mut src = io::Cursor::new(data.clone());
        let mut w = WriteBehind::new(Vec::new()).expect("spawn the thread");
        while w.read_from(&mut src).expect("a cursor reads, a Vec writes") > 0 {}
        assert_eq!(w.finish().expect("a Vec takes every byte"), data);
    }

    #[test]
    fn a_hashing_write_behind_hashes_every_byte_it_writes() {
        let data: Vec<u8> = (0..2 * CHUNK + 4321).map(|i| (i * 11 % 241) as u8).collect();
        let mut src = io::Cursor::new(data.clone());
        let mut w = WriteBehind::hashing(Vec::new()).expect("spawn the thread");
        while w.read_from(&mut src).expect("a cursor reads, a Vec writes") > 0 {}
        w.write_all(b"tail").expect("a Vec takes every byte");
        let (written, digest) = w.finish_hashed().expect("a Vec takes every byte");
        assert_eq!(written, [data.as_slice(), b"tail"].concat());
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&written)));
    }

    #[test]
    fn write_behind_reports_the_writers_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = WriteBehind::new(Full).expect("spawn the thread");
        // The first chunks may be queued before the thread fails; later ones cannot be.
        let mut failed = false;
        for _ in 0..64 {
            if w.write_all(&[0u8; CHUNK]).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "writing must stop once the thread failed");
        let err = w.finish().err().expect("finish reports the error");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }
}
