//! [`open`]: the plaintext of a SEIPDv1 packet (RFC 9580 §5.13.1) encrypted with AES, decrypted
//! on a thread of its own — the counterpart of `seal.rs`, so that [`super::Decrypt`]'s thread
//! only parses the message inside and hashes it for its signature.
//!
//! rPGP decrypts OpenPGP CFB one block after the other; CFB decryption does not depend on the
//! block before's plaintext, so here the AES block function runs on many blocks at once (the
//! `cfb-mode` crate's parallel backend), and the MDC's SHA-1 is computed on the same thread.
//!
//! The last 22 bytes of the plaintext are the MDC packet (tag 19, length 20, the SHA-1 of the
//! random prefix, the plaintext and those two octets): they are held back until the packet
//! ends, so they never reach the reader as plaintext, and a message whose MDC does not match
//! ends in an error instead of its end. Bytes handed on before that are not yet authenticated;
//! the caller writes them to an output it hands on only once the whole message has been read
//! (see [`super::Decrypt`]). The quick check (the prefix's repeated two octets) is not used, as
//! RFC 9580 §13.4 advises.

use std::io::{self, BufRead};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aes::{Aes128, Aes192, Aes256};
use cfb_mode::Decryptor;
use cfb_mode::cipher::generic_array::GenericArray;
use cfb_mode::cipher::{AsyncStreamCipher, BlockCipher, BlockEncryptMut, InnerIvInit, KeyInit};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use sha1::{Digest, Sha1};

use super::pipe::{CHUNK, ReadAhead, read_full};

/// AES's block size: the CFB prefix is this plus two octets.
const BLOCK: usize = 16;
/// The MDC packet: tag and length octets, then the SHA-1.
const MDC_LEN: usize = 22;

/// Whether [`open`] decrypts messages encrypted with `alg` (AES; the rest goes through rPGP).
pub(crate) fn opens(alg: SymmetricKeyAlgorithm) -> bool {
    matches!(
        alg,
        SymmetricKeyAlgorithm::AES128 | SymmetricKeyAlgorithm::AES192 | SymmetricKeyAlgorithm::AES256
    )
}

/// The body of an encrypted data packet, which knows whether anything follows the packet.
pub(crate) trait Body: BufRead + Send + 'static {
    /// Whether the message ends with this packet (asked once the body has ended).
    fn last_packet(&mut self) -> io::Result<bool>;
}

impl<R: BufRead + Send + 'static> Body for pgp::composed::PacketBodyReader<R> {
    fn last_packet(&mut self) -> io::Result<bool> {
        Ok(self.get_mut().fill_buf()?.is_empty())
    }
}

/// A reader of the plaintext inside the SEIPDv1 packet body `body` (after its version octet),
/// encrypted with `alg` (one that [`opens`]) and `key`. `verified` is set once the MDC matched;
/// the reader's end comes only after that, and a mismatch (or a body cut short) is an error.
pub(crate) fn open<'a, R>(
    body: R,
    alg: SymmetricKeyAlgorithm,
    key: &[u8],
    verified: Arc<AtomicBool>,
    cancel: Option<&'a AtomicBool>,
) -> io::Result<ReadAhead<'a>>
where
    R: Body,
{
    let bad_key = |_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the session key does not fit the cipher",
        )
    };
    match alg {
        SymmetricKeyAlgorithm::AES128 => {
            let cipher = Aes128::new_from_slice(key).map_err(bad_key)?;
            ReadAhead::filled_by(Opening::new(body, cipher, verified).into_fill(), cancel)
        }
        SymmetricKeyAlgorithm::AES192 => {
            let cipher = Aes192::new_from_slice(key).map_err(bad_key)?;
            ReadAhead::filled_by(Opening::new(body, cipher, verified).into_fill(), cancel)
        }
        SymmetricKeyAlgorithm::AES256 => {
            let cipher = Aes256::new_from_slice(key).map_err(bad_key)?;
            ReadAhead::filled_by(Opening::new(body, cipher, verified).into_fill(), cancel)
        }
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{other:?} is not decrypted here"),
        )),
    }
}

fn integrity_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the integrity check failed: {what} (the message was changed or is damaged)"),
    )
}

/// The decrypting state, owned by the reading thread.
struct Opening<R, C: BlockEncryptMut + BlockCipher + Clone> {
    body: R,
    cipher: C,
    /// The ciphertext block before the next one (CFB's feedback); zero at the start.
    iv: [u8; BLOCK],
    /// Prefix octets still to come (hashed, not handed on).
    prefix_left: usize,
    /// Decrypted octets held back (at most [`MDC_LEN`]): the MDC if the packet ends next.
    held: Vec<u8>,
    mdc: Sha1,
    done: bool,
    verified: Arc<AtomicBool>,
}

impl<R, C> Opening<R, C>
where
    R: Body,
    C: BlockEncryptMut + BlockCipher + Clone + Send + 'static,
{
    fn new(body: R, cipher: C, verified: Arc<AtomicBool>) -> Self {
        Opening {
            body,
            cipher,
            iv: [0; BLOCK],
            prefix_left: BLOCK + 2,
            held: Vec::with_capacity(MDC_LEN),
            mdc: Sha1::new(),
            done: false,
            verified,
        }
    }

    fn into_fill(mut self) -> impl FnMut(&mut Vec<u8>) -> io::Result<()> + Send + 'static {
        move |buf| self.fill(buf)
    }

    /// Leaves the next plaintext in `buf` (nothing: the end, once the MDC matched).
    fn fill(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        loop {
            buf.clear();
            if self.done {
                return Ok(());
            }
            buf.resize(CHUNK, 0);
            let held = self.held.len();
            buf[..held].copy_from_slice(&self.held);
            // Whole blocks only until the last: the feedback block is then a ciphertext block.
            let room = (CHUNK - held) / BLOCK * BLOCK;
            let got = read_full(&mut self.body, &mut buf[held..held + room])?;
            let end = held + got;
            let last = got < room;
            let fresh = &mut buf[held..end];
            let next_iv: Option<[u8; BLOCK]> = fresh
                .len()
                .checked_sub(BLOCK)
                .map(|at| fresh[at..].try_into().expect("one block"));
            Decryptor::<C>::inner_iv_init(self.cipher.clone(), GenericArray::from_slice(&self.iv))
                .decrypt(fresh);
            if let Some(iv) = next_iv {
                self.iv = iv;
            }
            // The prefix: hashed, not handed on.
            let start = self.prefix_left.min(end);
            self.mdc.update(&buf[..start]);
            self.prefix_left -= start;
            if last {
                self.done = true;
                if self.prefix_left > 0 || end - start < MDC_LEN {
                    return Err(integrity_error("the encrypted data is too short to hold one"));
                }
                let plain_end = end - MDC_LEN;
                self.mdc.update(&buf[start..plain_end + 2]);
                let digest = std::mem::take(&mut self.mdc).finalize();
                let tag_ok = buf[plain_end] == 0xD3 && buf[plain_end + 1] == 0x14;
                // Compared in constant time, as rPGP does.
                let differ = digest
                    .iter()
                    .zip(&buf[plain_end + 2..end])
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b));
                if !tag_ok || differ != 0 {
                    return Err(integrity_error("the MDC does not match"));
                }
                // What follows is not covered by the MDC: refused, not ignored.
                if !self.body.last_packet()? {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "there is data after the encrypted packet",
                    ));
                }
                self.verified.store(true, Ordering::Release);
                self.keep(buf, start, plain_end);
            } else {
                let plain_end = end.saturating_sub(MDC_LEN).max(start);
                self.held.clear();
                self.held.extend_from_slice(&buf[plain_end..end]);
                self.mdc.update(&buf[start..plain_end]);
                self.keep(buf, start, plain_end);
            }
            // An empty chunk would say "the end": read on instead.
            if !buf.is_empty() || self.done {
                return Ok(());
            }
        }
    }

    /// Leaves `buf[start..end]` in `buf` (moved to the front only in the chunk with the prefix).
    fn keep(&self, buf: &mut Vec<u8>, start: usize, end: usize) {
        if start > 0 {
            buf.copy_within(start..end, 0);
        }
        buf.truncate(end - start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cfb_mode::BufEncryptor;
    use cfb_mode::cipher::KeyIvInit;
    use std::io::Read;

    impl Body for io::Cursor<Vec<u8>> {
        fn last_packet(&mut self) -> io::Result<bool> {
            Ok(true)
        }
    }

    /// A SEIPDv1 body (without the version octet) of `plain` under `key`, as a sender makes it.
    fn sealed(key: &[u8; 32], plain: &[u8]) -> Vec<u8> {
        let prefix: Vec<u8> = (0..16u8).chain([14, 15]).collect();
        let mut data = prefix.clone();
        data.extend_from_slice(plain);
        data.extend_from_slice(&[0xD3, 0x14]);
        let digest = Sha1::digest(&data);
        data.extend_from_slice(&digest);
        BufEncryptor::<Aes256>::new_from_slices(key, &[0u8; 16])
            .expect("a 32-byte key")
            .encrypt(&mut data);
        data
    }

    fn read_all(body: Vec<u8>, key: &[u8; 32]) -> (io::Result<Vec<u8>>, bool) {
        let verified = Arc::new(AtomicBool::new(false));
        let mut r = open(
            io::Cursor::new(body),
            SymmetricKeyAlgorithm::AES256,
            key,
            verified.clone(),
            None,
        )
        .expect("spawn the thread");
        let mut out = Vec::new();
        let res = r.read_to_end(&mut out).map(|_| out);
        (res, verified.load(Ordering::Acquire))
    }

    #[test]
    fn opens_what_was_sealed_at_every_size_around_a_chunk() {
        let key = [7u8; 32];
        for len in [
            0,
            1,
            15,
            16,
            17,
            100,
            CHUNK - 41,
            CHUNK - 40,
            CHUNK - 39,
            CHUNK,
            2 * CHUNK + 5,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let (got, verified) = read_all(sealed(&key, &plain), &key);
            assert_eq!(got.expect("a good message opens").len(), len, "length {len}");
            assert!(verified, "length {len}");
            let (got, _) = read_all(sealed(&key, &plain), &key);
            assert!(got.expect("opens") == plain, "content at length {len}");
        }
    }

    #[test]
    fn refuses_any_changed_byte_and_any_cut() {
        let key = [9u8; 32];
        let plain: Vec<u8> = (0..5000).map(|i| (i % 256) as u8).collect();
        let good = sealed(&key, &plain);
        for at in [
            0,
            5,
            17,
            18,
            19,
            1000,
            good.len() - 23,
            good.len() - 22,
            good.len() - 21,
            good.len() - 1,
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            let (got, verified) = read_all(bad, &key);
            let err = got.expect_err(&format!("a change at {at} is found"));
            assert!(err.to_string().contains("integrity check failed"), "{err}");
            assert!(!verified);
        }
        for cut in [0, 1, 18, 39, 40, good.len() - 16, good.len() - 1] {
            let (got, verified) = read_all(good[..cut].to_vec(), &key);
            assert!(got.is_err(), "a body cut at {cut} is refused");
            assert!(!verified);
        }
        let (got, _) = read_all(good, &[8u8; 32]);
        assert!(got.is_err(), "another key does not open it");
    }
}
