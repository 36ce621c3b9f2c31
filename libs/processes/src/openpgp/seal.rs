//! [`seal`]: the encrypted (and signed) message [`super::Encrypt`] writes, as a pipeline of
//! three threads so that the serial cipher is all the step's thread does.
//!
//! The message is what rPGP's `MessageBuilder` writes and GnuPG reads: a public-key encrypted
//! session key packet per recipient (rPGP's, written by the caller), then a SEIPDv1 packet
//! (RFC 9580 §5.13.1) in partial lengths holding the plaintext — a one-pass signature packet,
//! the file as a literal data packet in partial lengths, the signature packet (§10.3) — and the
//! modification detection code. Every packet inside is rPGP's and serialized by rPGP; the
//! framing and the SEIPDv1 envelope are written here:
//!
//! - the reading thread reads the file, frames it into literal data pieces, feeds the
//!   signature's hash (SHA-256) and the MDC's (SHA-1), and cuts the plaintext into chunks of
//!   exactly [`SEALED_PIECE`] bytes;
//! - the step's thread encrypts each chunk in place (AES-256 in OpenPGP CFB mode: a zero IV,
//!   no resynchronisation, the random prefix first) and puts the piece's length in front;
//!   at the end it signs, appends the signature packet and the MDC packet;
//! - the writing thread writes each piece (and hashes the output for the step report) and
//!   hands the chunk back to the reading thread.
//!
//! rPGP's builder does all of it on the caller's thread, through 8 KiB buffers and three copies;
//! here each byte is copied once (from the literal data piece into its chunk). Memory stays
//! bounded: [`BUFFERS`] chunks circulate, allocated once.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use aes::Aes256;
use cfb_mode::BufEncryptor;
use cfb_mode::cipher::KeyIvInit;
use pgp::packet::{
    DataMode, LiteralDataHeader, PacketHeader, SignatureHasher, SymEncryptedProtectedDataConfig,
};
use pgp::ser::Serialize as _;
use pgp::types::{PacketHeaderVersion, PacketLength, Tag};
use sha1::{Digest, Sha1};

/// Bytes per piece of the encrypted data packet (a partial length: a power of two), and so per
/// chunk handed between the threads.
const SEALED_PIECE: usize = 1024 * 1024;
/// Bytes of the file per literal data piece (a partial length: a power of two, at least 512).
const LITERAL_PIECE: usize = 1024 * 1024;
/// Room before a chunk's bytes for its framing: a packet header (tag, five-octet length) and
/// the SEIPD version octet in the first piece; the literal data header in the first literal
/// piece.
const ROOM: usize = 16;
/// Chunks queued between two threads: 16 MiB, tens of milliseconds of work, so a thread the
/// scheduler sets aside for a time slice does not stall the other two (measured: with 4 queued,
/// a busy machine left the pipeline waiting more than it ran).
const IN_FLIGHT: usize = 16;
/// Chunks in circulation: those queued to the step's thread and to the writer, and one held by
/// each thread.
const BUFFERS: usize = 2 * IN_FLIGHT + 3;
/// The MDC packet's header: tag 19, length 20 (RFC 9580 §5.14).
const MDC_HEADER: [u8; 2] = [0xD3, 0x14];

/// Where sealing failed: reading the input (or a cancel), writing the output, or making the
/// message (signing, serializing).
#[derive(Debug)]
pub(crate) enum Failed {
    Read(io::Error),
    Write(io::Error),
    Message(String),
}

/// What the reading thread hands the step's thread.
enum Chunk {
    /// `ROOM` bytes of room, then `SEALED_PIECE` bytes of plaintext (one fewer in the first
    /// chunk, whose piece also carries the version octet).
    Full(Vec<u8>),
    /// The file is read: the plaintext left (after `ROOM`), the MDC's hash and the signature's.
    Last(Vec<u8>, Box<Sha1>, Option<SignatureHasher>),
}

/// Encrypts `file` with `session_key` (AES-256) into a SEIPDv1 packet written to `out` (after
/// whatever the caller wrote: the session key packets). `prefix` is the CFB prefix: 16 random
/// bytes and the last two repeated. With `signature`, `ops` (the one-pass signature packet) comes
/// first and `signature(hasher)` gives the signature packet for the hash of the whole file.
#[allow(clippy::too_many_arguments)]
pub(crate) fn seal<R, W>(
    file: R,
    out: &mut W,
    session_key: &[u8],
    prefix: [u8; 18],
    ops: &[u8],
    hasher: Option<SignatureHasher>,
    signature: impl FnOnce(SignatureHasher) -> Result<Vec<u8>, String>,
    cancel: Option<&AtomicBool>,
) -> Result<(), Failed>
where
    R: Read + Send,
    W: Write + Send,
{
    let mut cfb = BufEncryptor::<Aes256>::new_from_slices(session_key, &[0u8; 16])
        .map_err(|_| Failed::Message("the session key is not an AES-256 key".into()))?;
    let literal = LiteralDataHeader::new(DataMode::Binary)
        .to_bytes()
        .map_err(|e| Failed::Message(e.to_string()))?;
    let (back, spare) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        back.try_send(Vec::with_capacity(ROOM + SEALED_PIECE + 4096))
            .expect("the channel holds BUFFERS chunks");
    }
    let (plain_tx, plain) = sync_channel::<io::Result<Chunk>>(IN_FLIGHT);
    let (sealed_tx, sealed) = sync_channel::<(Vec<u8>, usize, usize)>(IN_FLIGHT);
    std::thread::scope(|s| {
        let reader = std::thread::Builder::new()
            .name("ferry-pgp-read".into())
            .spawn_scoped(s, move || {
                let mut sink = Sink::new(&spare, &plain_tx, cancel);
                sink.run(file, &prefix, ops, &literal, hasher);
            })
            .map_err(Failed::Read)?;
        let back_w = back.clone();
        let writer = std::thread::Builder::new()
            .name("ferry-pgp-write".into())
            .spawn_scoped(s, move || -> io::Result<()> {
                for (chunk, start, end) in sealed {
                    out.write_all(&chunk[start..end])?;
                    let _ = back_w.try_send(chunk);
                }
                out.flush()
            })
            .map_err(Failed::Write)?;
        drop(back);
        let encrypted = encrypt(&plain, &sealed_tx, &mut cfb, signature);
        // Closing the channels stops both threads, whatever happened.
        drop(plain);
        drop(sealed_tx);
        let read = reader.join();
        let written = writer
            .join()
            .map_err(|_| Failed::Write(io::Error::other("the writing thread panicked")))?;
        // A failed write is the cause to report (the step's thread then sees a closed channel).
        written.map_err(Failed::Write)?;
        if read.is_err() {
            return Err(Failed::Read(io::Error::other("the reading thread panicked")));
        }
        encrypted
    })
}

/// The step's thread: encrypts chunk after chunk, frames them and passes them to the writer.
fn encrypt(
    plain: &Receiver<io::Result<Chunk>>,
    sealed: &SyncSender<(Vec<u8>, usize, usize)>,
    cfb: &mut BufEncryptor<Aes256>,
    signature: impl FnOnce(SignatureHasher) -> Result<Vec<u8>, String>,
) -> Result<(), Failed> {
    let stopped = || Failed::Write(io::Error::other("the writing thread stopped"));
    let mut first = true;
    loop {
        let chunk = plain
            .recv()
            .map_err(|_| Failed::Read(io::Error::other("the reading thread stopped")))?
            .map_err(Failed::Read)?;
        match chunk {
            Chunk::Full(mut buf) => {
                cfb.encrypt(&mut buf[ROOM..]);
                let start = frame(&mut buf, first, PacketLength::Partial(SEALED_PIECE as u32))?;
                let end = buf.len();
                sealed.send((buf, start, end)).map_err(|_| stopped())?;
                first = false;
            }
            Chunk::Last(mut buf, mut mdc, hasher) => {
                if let Some(h) = hasher {
                    let packet = signature(h).map_err(Failed::Message)?;
                    mdc.update(&packet);
                    buf.extend_from_slice(&packet);
                }
                mdc.update(MDC_HEADER);
                buf.extend_from_slice(&MDC_HEADER);
                buf.extend_from_slice(&mdc.finalize());
                cfb.encrypt(&mut buf[ROOM..]);
                // The signature may push the plaintext past a piece: then one full piece and
                // the rest (a zero-length piece when it ends exactly on a piece's edge).
                let lead = usize::from(first);
                let cap = SEALED_PIECE - lead;
                let len = buf.len() - ROOM;
                if len < cap {
                    let start = frame(&mut buf, first, PacketLength::Fixed(fixed(lead + len)))?;
                    let end = buf.len();
                    sealed.send((buf, start, end)).map_err(|_| stopped())?;
                } else {
                    let mut rest = vec![0u8; ROOM];
                    rest.extend_from_slice(&buf[ROOM + cap..]);
                    buf.truncate(ROOM + cap);
                    let start = frame(&mut buf, first, PacketLength::Partial(SEALED_PIECE as u32))?;
                    sealed.send((buf, start, ROOM + cap)).map_err(|_| stopped())?;
                    let start = frame(&mut rest, false, PacketLength::Fixed(fixed(len - cap)))?;
                    let end = rest.len();
                    sealed.send((rest, start, end)).map_err(|_| stopped())?;
                }
                return Ok(());
            }
        }
    }
}

fn fixed(n: usize) -> u32 {
    u32::try_from(n).expect("a piece is far below 4 GiB")
}

/// Puts a piece's framing in the room before its bytes; returns where the piece starts. The
/// first piece opens the packet: its header and the version octet.
fn frame(buf: &mut [u8], first: bool, length: PacketLength) -> Result<usize, Failed> {
    let mut head = Vec::with_capacity(ROOM);
    if first {
        PacketHeader::from_parts(PacketHeaderVersion::New, Tag::SymEncryptedProtectedData, length)
            .and_then(|h| h.to_writer(&mut head))
            .and_then(|()| SymEncryptedProtectedDataConfig::V1.to_writer(&mut head))
    } else {
        length.to_writer_new(&mut head)
    }
    .map_err(|e| Failed::Message(format!("frame the encrypted data: {e}")))?;
    let start = ROOM - head.len();
    buf[start..ROOM].copy_from_slice(&head);
    Ok(start)
}

/// The reading thread's side: the plaintext stream, cut into chunks.
struct Sink<'a> {
    spare: &'a Receiver<Vec<u8>>,
    tx: &'a SyncSender<io::Result<Chunk>>,
    cancel: Option<&'a AtomicBool>,
    /// The chunk being filled: `ROOM` bytes, then plaintext up to `ROOM + cap`.
    buf: Vec<u8>,
    cap: usize,
    mdc: Box<Sha1>,
}

/// The step's thread went away (an error there): the reading thread stops.
struct Gone;

impl<'a> Sink<'a> {
    fn new(
        spare: &'a Receiver<Vec<u8>>,
        tx: &'a SyncSender<io::Result<Chunk>>,
        cancel: Option<&'a AtomicBool>,
    ) -> Sink<'a> {
        Sink {
            spare,
            tx,
            cancel,
            buf: Vec::new(),
            // The first piece also holds the version octet.
            cap: SEALED_PIECE - 1,
            mdc: Box::new(Sha1::new()),
        }
    }

    fn run(
        &mut self,
        file: impl Read,
        prefix: &[u8],
        ops: &[u8],
        literal: &[u8],
        hasher: Option<SignatureHasher>,
    ) {
        let done = self
            .next()
            .and_then(|()| self.plaintext(file, prefix, ops, literal, hasher));
        match done {
            Ok(Ok(hasher)) => {
                let buf = std::mem::take(&mut self.buf);
                let mdc = std::mem::replace(&mut self.mdc, Box::new(Sha1::new()));
                let _ = self.tx.send(Ok(Chunk::Last(buf, mdc, hasher)));
            }
            Ok(Err(e)) => {
                let _ = self.tx.send(Err(e));
            }
            Err(Gone) => {}
        }
    }

    /// Everything up to the signature packet; the outer `Err` when the step's thread is gone.
    fn plaintext(
        &mut self,
        mut file: impl Read,
        prefix: &[u8],
        ops: &[u8],
        literal: &[u8],
        mut hasher: Option<SignatureHasher>,
    ) -> Result<io::Result<Option<SignatureHasher>>, Gone> {
        self.put(prefix)?;
        self.put(ops)?;
        let mut piece = vec![0u8; ROOM + LITERAL_PIECE];
        let mut first = true;
        loop {
            if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Ok(Err(io::Error::other("cancelled")));
            }
            let lead = if first { literal.len() } else { 0 };
            let want = LITERAL_PIECE - lead;
            let mut filled = 0;
            while filled < want {
                match file.read(&mut piece[ROOM + filled..ROOM + want]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Ok(Err(e)),
                }
            }
            if let Some(h) = &mut hasher {
                h.write_all(&piece[ROOM..ROOM + filled])
                    .expect("hashing into memory cannot fail");
            }
            let last = filled < want;
            let length = if last {
                PacketLength::Fixed(fixed(lead + filled))
            } else {
                PacketLength::Partial(LITERAL_PIECE as u32)
            };
            let mut head = Vec::with_capacity(ROOM);
            let framed = if first {
                PacketHeader::from_parts(PacketHeaderVersion::New, Tag::LiteralData, length)
                    .and_then(|h| h.to_writer(&mut head))
                    .map(|()| head.extend_from_slice(literal))
            } else {
                length.to_writer_new(&mut head)
            };
            if let Err(e) = framed {
                return Ok(Err(io::Error::other(format!("frame the literal data: {e}"))));
            }
            let start = ROOM - head.len();
            piece[start..ROOM].copy_from_slice(&head);
            self.put(&piece[start..ROOM + filled])?;
            if last {
                return Ok(Ok(hasher));
            }
            first = false;
        }
    }

    /// Appends plaintext, handing on every chunk that fills.
    fn put(&mut self, mut data: &[u8]) -> Result<(), Gone> {
        self.mdc.update(data);
        while !data.is_empty() {
            let n = (ROOM + self.cap - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == ROOM + self.cap {
                let full = std::mem::take(&mut self.buf);
                self.tx.send(Ok(Chunk::Full(full))).map_err(|_| Gone)?;
                self.cap = SEALED_PIECE;
                self.next()?;
            }
        }
        Ok(())
    }

    /// Takes a free chunk (waits until the writer hands one back).
    fn next(&mut self) -> Result<(), Gone> {
        let mut buf = self.spare.recv().map_err(|_| Gone)?;
        buf.clear();
        buf.resize(ROOM, 0);
        self.buf = buf;
        Ok(())
    }
}
