//! The fast path for a copy from the node's file system to the node's file system: stream the
//! source into temporary files while hashing, verify, and commit by rename — on blocking threads,
//! with a three-thread pipeline for large files and one group commit for a batch of small ones.
//!
//! Invariant: nothing is ever written under a final name. Bytes go to a temp file in the final
//! folder (see [`crate::path::temp_name`]); once the temp file is fsynced and its re-read content
//! matches what was read from the source (compared byte for byte as a large file streams, by
//! SHA-256 for a small one), a rename (the commit point) makes the file appear whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A source file: its folder, its path beneath the folder, and what the listing saw.
#[derive(Debug, Clone)]
pub struct Source {
    pub folder: PathBuf,
    pub rel: PathBuf,
    /// Size and modification time (ns) at listing: the file opened must still match them.
    pub listed: Option<(u64, i128)>,
}

impl Source {
    /// A file by its path, with no listing to compare against.
    pub fn at(path: &Path) -> Source {
        Source {
            folder: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            rel: path.file_name().map(PathBuf::from).unwrap_or_default(),
            listed: None,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.folder.join(&self.rel)
    }

    /// Open to read, never through a symbolic link beneath the folder (a link swapped in after
    /// the listing would hand over whatever it points to) and never blocking on a FIFO; the
    /// opened file must be a regular file that still has the listed size and modification time.
    fn open(&self) -> Result<(File, fs::Metadata), String> {
        let path = self.path();
        let shown = path.display();
        let file = open_beneath(&self.folder, &self.rel).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => {
                format!("source {shown} is a symbolic link or lies under one; it is not followed")
            }
            _ => format!("open source {shown}: {e}"),
        })?;
        let meta = file.metadata().map_err(|e| format!("stat source {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("source {shown} is no longer a regular file; not read"));
        }
        if let Some((size, mtime_ns)) = self.listed
            && (meta.len() != size || mtime_of(&meta) != mtime_ns)
        {
            return Err(format!(
                "source {shown} changed since it was listed (size or modification time); it will be picked up again"
            ));
        }
        Ok((file, meta))
    }
}

fn mtime_of(meta: &fs::Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

/// `openat2(folder, rel, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, read-only and non-blocking;
/// where the kernel lacks `openat2` (before 5.6, or filtered), the whole path with `O_NOFOLLOW`
/// (a link as the last component is still refused).
fn open_beneath(folder: &Path, rel: &Path) -> io::Result<File> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let dir = File::open(folder)?;
    let rel_c = CString::new(rel.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `open_how` is plain integers; all zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: a valid directory descriptor, a NUL-terminated path and an `open_how` of the size
    // passed, all alive across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel_c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just returned, owned by nobody else.
        return Ok(unsafe { File::from_raw_fd(fd as i32) });
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EPERM) => OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(folder.join(rel)),
        _ => Err(err),
    }
}

/// Where a copy goes: its temp file, and the permission bits the delivered file gets (`None`:
/// the source's).
#[derive(Debug, Clone)]
pub struct Temp {
    pub path: PathBuf,
    pub mode: Option<u32>,
}

impl Temp {
    /// A temp that gets the source's bits.
    pub fn at(path: PathBuf) -> Temp {
        Temp { path, mode: None }
    }
}

/// The source as it was read.
#[derive(Debug, Clone)]
pub struct Copied {
    pub size: u64,
    pub sha256: String,
    pub mtime_ns: i128,
}

/// Copy the source into every temp file and verify them: hash the source as it is read, fsync the
/// temps, check each temp re-read holds what was read (by size and SHA-256 for a small file, byte
/// for byte for a large one), and check the source did not change while it was read.
/// `should_stop` is polled between chunks (fencing).
///
/// Files larger than one buffer go through a three-thread pipeline — read + hash, write, re-read +
/// compare — with writeback started every few MiB, so hashing, verifying and the final fsync
/// overlap the I/O instead of following it.
pub fn copy_verified(
    source: &Source,
    temps: &[Temp],
    buffer_bytes: usize,
    should_stop: &(dyn Fn() -> bool + Sync),
) -> Result<Copied, String> {
    let written = write_temps(source, temps, buffer_bytes, should_stop)?;
    for (out, t) in written.outputs.iter().zip(temps) {
        out.sync_all()
            .map_err(|e| format!("fsync {}: {e}", t.path.display()))?;
    }
    finish(written, source, temps, buffer_bytes)
}

/// The small files of one work batch, each `(source, temps)`: what [`copy_verified`] does for
/// each, except that durability is one group commit — every temp file is written first, then
/// each file system they are on is synced once (`syncfs(2)`, which also reports write-back
/// errors) — instead of one fsync (one disk cache flush) per file. One result per job, in order.
pub fn copy_batch_verified(
    jobs: &[(Source, Vec<Temp>)],
    buffer_bytes: usize,
    should_stop: &(dyn Fn() -> bool + Sync),
) -> Vec<Result<Copied, String>> {
    use std::os::fd::AsRawFd;

    // Each job's temps, written, with the file system (`st_dev`) each is on.
    let written: Vec<Result<(Written, Vec<u64>), String>> = jobs
        .iter()
        .map(|(source, temps)| {
            let w = write_temps(source, temps, buffer_bytes, should_stop)?;
            let devices = w
                .outputs
                .iter()
                .zip(temps)
                .map(|(o, t)| {
                    o.metadata()
                        .map(|m| m.dev())
                        .map_err(|e| format!("stat {}: {e}", t.path.display()))
                })
                .collect::<Result<Vec<u64>, String>>()?;
            Ok((w, devices))
        })
        .collect();
    let mut synced: std::collections::HashMap<u64, Result<(), String>> = std::collections::HashMap::new();
    for (w, devices) in written.iter().flatten() {
        for (out, dev) in w.outputs.iter().zip(devices) {
            synced.entry(*dev).or_insert_with(|| {
                // SAFETY: a valid open descriptor; syncfs touches no memory of ours.
                match unsafe { libc::syncfs(out.as_raw_fd()) } {
                    0 => Ok(()),
                    _ => Err(format!(
                        "sync the destination file system: {}",
                        io::Error::last_os_error()
                    )),
                }
            });
        }
    }
    written
        .into_iter()
        .zip(jobs)
        .map(|(w, (source, temps))| {
            let (w, devices) = w?;
            for dev in &devices {
                synced[dev].clone()?;
            }
            finish(w, source, temps, buffer_bytes)
        })
        .collect()
}

/// A source copied into its temp files, not yet durable.
struct Written {
    input: File,
    before: fs::Metadata,
    outputs: Vec<File>,
    /// The bits each temp's file ends with (configured, or the source's).
    modes: Vec<u32>,
    size: u64,
    sha256: String,
    /// Already compared while it was written (the pipeline).
    verified: bool,
}

/// Open the source and the temps, and copy (hashing the source; a large file through the
/// pipeline, which also verifies).
fn write_temps(
    source: &Source,
    temps: &[Temp],
    buffer_bytes: usize,
    should_stop: &(dyn Fn() -> bool + Sync),
) -> Result<Written, String> {
    let (mut input, before) = source.open()?;
    let source = &source.path();
    let modes: Vec<u32> = temps
        .iter()
        .map(|t| t.mode.unwrap_or(before.mode() & 0o777))
        .collect();
    let temps: Vec<PathBuf> = temps.iter().map(|t| t.path.clone()).collect();
    let temps = temps.as_slice();
    let mut outputs = temps
        .iter()
        .map(|t| create_temp(t).map_err(|e| format!("create {}: {e}", t.display())))
        .collect::<Result<Vec<File>, String>>()?;
    // Readable and writable by us while we write and verify them.
    let writable: Vec<u32> = modes.iter().map(|m| m | 0o600).collect();
    set_modes(&outputs, temps, &writable)?;
    let pipeline = before.len() as usize > buffer_bytes;
    let (size, sha256) = if pipeline {
        let readers = temps
            .iter()
            .map(|t| File::open(t).map_err(|e| format!("open {} to verify: {e}", t.display())))
            .collect::<Result<Vec<File>, String>>()?;
        pipelined(
            &mut input,
            source,
            &mut outputs,
            temps,
            readers,
            buffer_bytes,
            should_stop,
        )?
    } else {
        sequential(
            &mut input,
            source,
            before.len(),
            &mut outputs,
            temps,
            buffer_bytes,
            should_stop,
        )?
    };
    Ok(Written {
        input,
        before,
        outputs,
        modes,
        size,
        sha256,
        verified: pipeline,
    })
}

/// Set the permission bits of open temps (`fchmod`: a path swapped meanwhile is not followed).
fn set_modes(outputs: &[File], temps: &[PathBuf], modes: &[u32]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for ((out, t), mode) in outputs.iter().zip(temps).zip(modes) {
        out.set_permissions(fs::Permissions::from_mode(*mode))
            .map_err(|e| format!("set the permissions of {}: {e}", t.display()))?;
    }
    Ok(())
}

/// Once the temps are durable: re-read and hash a small file's temps, and check the source did
/// not change while it was read.
/// The temps get their configured permission bits or the source's (not set-id or sticky bits),
/// never the wider default of a new file.
fn finish(written: Written, source: &Source, temps: &[Temp], buffer_bytes: usize) -> Result<Copied, String> {
    let temps: Vec<PathBuf> = temps.iter().map(|t| t.path.clone()).collect();
    let Written {
        input,
        before,
        outputs,
        modes,
        size,
        sha256,
        verified,
    } = written;
    let source = &source.path();
    let copied = Copied {
        size,
        sha256,
        mtime_ns: mtime_of(&before),
    };
    if !verified {
        for t in &temps {
            verify(t, &copied, (size as usize + 1).clamp(4096, buffer_bytes))?;
        }
    }
    // `write_temps` gave them their bits plus the owner's read and write (to write and verify
    // them) before they were synced; bits without those are set exactly now.
    if modes.iter().any(|m| m & 0o600 != 0o600) {
        set_modes(&outputs, &temps, &modes)?;
    }
    let after = input
        .metadata()
        .map_err(|e| format!("stat source {}: {e}", source.display()))?;
    if after.len() != size || after.mtime() != before.mtime() || after.mtime_nsec() != before.mtime_nsec() {
        return Err(format!(
            "source {} changed while it was read; it will be picked up again",
            source.display()
        ));
    }
    Ok(copied)
}

const FENCED: &str = "stopped: this node's epoch was superseded (fenced)";

#[allow(clippy::too_many_arguments)]
fn sequential(
    input: &mut File,
    source: &Path,
    expected: u64,
    outputs: &mut [File],
    temps: &[PathBuf],
    buffer_bytes: usize,
    should_stop: &(dyn Fn() -> bool + Sync),
) -> Result<(u64, String), String> {
    let mut hasher = Sha256::new();
    // Small files are the common case: a buffer just large enough saves allocating (and, for
    // large allocations, mapping and unmapping) a full-sized one per file.
    let mut buf = vec![0u8; buffer_bytes.min(expected as usize + 1).max(4096)];
    let mut size = 0u64;
    loop {
        if should_stop() {
            return Err(FENCED.into());
        }
        let n = read_chunk(input, &mut buf, source)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        write_to_all(outputs, temps, &buf[..n])?;
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Read the next chunk of the source (0 at its end), retrying interrupted reads.
fn read_chunk(input: &mut File, buf: &mut [u8], source: &Path) -> Result<usize, String> {
    loop {
        match input.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read source {}: {e}", source.display())),
        }
    }
}

/// Append `data` to every temp file.
fn write_to_all(outputs: &mut [File], temps: &[PathBuf], data: &[u8]) -> Result<(), String> {
    for (out, path) in outputs.iter_mut().zip(temps) {
        out.write_all(data)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Buffers in flight between the reader, the writer and the verifier.
const PIPELINE_DEPTH: usize = 4;
/// Start writeback after this many bytes, so the final fsync has little left to do.
pub(crate) const WRITEBACK_EVERY: u64 = 8 << 20;

/// Start writing `len` bytes of `file` from `from` back to the disk, without waiting.
pub(crate) fn start_writeback(file: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; the call only starts writeback of a range of it and
    // touches no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Read + hash, write, and re-read + compare on three threads. Returns the size and hash of what
/// was read; fails unless every temp file, re-read after it was written (through `readers`, one
/// per temp), holds exactly those bytes.
///
/// The verifier compares the re-read bytes with the very buffer that was written (then recycles
/// it), which checks as much as hashing them again would and costs a memory compare instead of a
/// second SHA-256 pass over the file.
fn pipelined(
    input: &mut File,
    source: &Path,
    outputs: &mut [File],
    temps: &[PathBuf],
    readers: Vec<File>,
    buffer_bytes: usize,
    should_stop: &(dyn Fn() -> bool + Sync),
) -> Result<(u64, String), String> {
    use std::os::unix::fs::FileExt;
    use std::sync::mpsc::sync_channel;

    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(PIPELINE_DEPTH);
    for _ in 0..PIPELINE_DEPTH {
        free_tx
            .send(vec![0u8; buffer_bytes])
            .expect("the channel has room for every buffer");
    }
    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(PIPELINE_DEPTH);
    let (written_tx, written_rx) = sync_channel::<(Vec<u8>, u64, usize)>(PIPELINE_DEPTH);

    std::thread::scope(|scope| {
        // Reader: only reads, so the next read is issued while the verifier hashes (the source
        // streams from the disk without pauses). Dropping `full_tx` on return tells the writer
        // the source is exhausted.
        let reader = scope.spawn(move || -> Result<u64, String> {
            let mut size = 0u64;
            loop {
                if should_stop() {
                    return Err(FENCED.into());
                }
                let Ok(mut buf) = free_rx.recv() else {
                    // The writer or verifier stopped (its error is the one reported).
                    return Ok(size);
                };
                let n = read_chunk(input, &mut buf, source)?;
                if n == 0 {
                    return Ok(size);
                }
                size += n as u64;
                if full_tx.send((buf, n)).is_err() {
                    return Ok(size);
                }
            }
        });
        // Verifier: hashes each buffer (the source's bytes, in order), re-reads what was written
        // from it and hands the buffer back to the reader.
        let verifier = scope.spawn(move || -> Result<(u64, String), String> {
            let mut hasher = Sha256::new();
            let mut again = vec![0u8; buffer_bytes];
            let mut verified = 0u64;
            while let Ok((buf, offset, len)) = written_rx.recv() {
                hasher.update(&buf[..len]);
                for (file, temp) in readers.iter().zip(temps) {
                    file.read_exact_at(&mut again[..len], offset)
                        .map_err(|e| format!("verify {}: {e}", temp.display()))?;
                    if again[..len] != buf[..len] {
                        return Err(format!(
                            "verification failed for {}: the {len} bytes at offset {offset} differ \
                             from the source's",
                            temp.display()
                        ));
                    }
                }
                verified += len as u64;
                let _ = free_tx.send(buf);
            }
            Ok((verified, hex::encode(hasher.finalize())))
        });

        // Writer, on this thread. It owns `full_rx` and `written_tx`: returning (also on error)
        // drops them, which ends the verifier and, through it, releases the reader.
        let written = (move || -> Result<u64, String> {
            let mut offset = 0u64;
            let mut flushed = 0u64;
            while let Ok((buf, n)) = full_rx.recv() {
                write_to_all(outputs, temps, &buf[..n])?;
                if written_tx.send((buf, offset, n)).is_err() {
                    break;
                }
                offset += n as u64;
                if offset - flushed >= WRITEBACK_EVERY {
                    for out in outputs.iter() {
                        start_writeback(out, flushed, offset - flushed);
                    }
                    flushed = offset;
                }
            }
            Ok(offset)
        })();
        let verified = verifier.join().expect("the verifier thread does not panic");
        let read = reader.join().expect("the reader thread does not panic");
        // The first error in pipeline order explains the others (a stopped stage only makes the
        // stages around it stop early).
        let size = read?;
        let written = written?;
        let (verified, sha) = verified?;
        if written != size || verified != size {
            return Err(format!(
                "short copy of {}: read {size} bytes, wrote {written}, verified {verified}",
                source.display()
            ));
        }
        Ok((size, sha))
    })
}

/// Compare a temp file's re-read size and hash with the source's.
fn compare(temp: &Path, size: u64, sha: &str, copied: &Copied) -> Result<(), String> {
    if size != copied.size || sha != copied.sha256 {
        return Err(format!(
            "verification failed for {}: wrote {size} bytes sha256 {sha}, source had {} bytes sha256 {}",
            temp.display(),
            copied.size,
            copied.sha256
        ));
    }
    Ok(())
}

/// SHA-256 and size of a file as stored.
pub fn hash_file(path: &Path, buffer_bytes: usize) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; buffer_bytes];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Re-read a temp file and compare it with what was read from the source.
pub fn verify(temp: &Path, copied: &Copied, buffer_bytes: usize) -> Result<(), String> {
    let (size, sha) = hash_file(temp, buffer_bytes).map_err(|e| format!("verify {}: {e}", temp.display()))?;
    compare(temp, size, &sha, copied)
}

/// Rename without replacing an existing file. `Ok(false)` when the target exists.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from_c = CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let to_c = CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both arguments are valid NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::AlreadyExists {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Create a temp file exclusively: a stale temp of an earlier attempt (same name: same file and
/// run) is removed first, and an existing path is never truncated or followed (a symlink planted
/// under the temp name is removed, not written through).
pub fn create_temp(temp: &Path) -> io::Result<File> {
    match fs::remove_file(temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new().write(true).create_new(true).open(temp)
}

/// Make a rename durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(paths: &[PathBuf]) -> Vec<Temp> {
        paths.iter().cloned().map(Temp::at).collect()
    }

    #[test]
    fn copy_hashes_verifies_and_never_replaces_on_noreplace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.bin");
        std::fs::write(&src, vec![7u8; 3 << 20]).expect("write");
        let temps = [dir.path().join(".a.part"), dir.path().join(".b.part")];
        // 3 MiB through 1 MiB buffers: the pipelined path.
        let copied = copy_verified(&Source::at(&src), &at(&temps), 1 << 20, &|| false).expect("copies");
        assert_eq!(copied.size, 3 << 20);
        assert_eq!(copied.sha256, hash_file(&src, 4096).expect("hashes").1);
        // One buffer: the sequential path gives the same result.
        let small = copy_verified(&Source::at(&src), &at(&temps), 4 << 20, &|| false).expect("copies");
        assert_eq!((small.size, &small.sha256), (copied.size, &copied.sha256));
        for t in &temps {
            verify(t, &copied, 4096).expect("verifies");
        }
        std::fs::write(&temps[1], b"corrupt").expect("write");
        assert!(
            verify(&temps[1], &copied, 4096)
                .unwrap_err()
                .contains("verification failed")
        );
        let fin = dir.path().join("final.bin");
        assert!(rename_noreplace(&temps[0], &fin).expect("renames"));
        assert!(
            !rename_noreplace(&temps[1], &fin).expect("refuses"),
            "target exists"
        );
    }

    #[test]
    fn the_pipeline_fails_when_what_it_reads_back_differs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.bin");
        let temp = dir.path().join(".t.part");
        let other = dir.path().join("other.bin");
        let mut data = vec![7u8; 3 << 20];
        std::fs::write(&src, &data).expect("write");
        // Re-read through a file that differs from the source in one byte of its last chunk.
        data[(2 << 20) + 5] = 8;
        std::fs::write(&other, &data).expect("write");
        let mut outputs = [File::create(&temp).expect("create")];
        let err = pipelined(
            &mut File::open(&src).expect("open"),
            &src,
            &mut outputs,
            std::slice::from_ref(&temp),
            vec![File::open(&other).expect("open")],
            1 << 20,
            &|| false,
        )
        .unwrap_err();
        assert!(
            err.contains("verification failed") && err.contains(&format!("offset {}", 2 << 20)),
            "{err}"
        );
    }

    #[test]
    fn a_batch_is_copied_synced_once_and_verified_per_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut jobs = Vec::new();
        for i in 0..5u8 {
            let src = dir.path().join(format!("src{i}"));
            std::fs::write(&src, vec![i; 4096 + i as usize]).expect("write");
            jobs.push((
                Source::at(&src),
                vec![Temp::at(dir.path().join(format!(".t{i}.part")))],
            ));
        }
        // One source is missing: only its job fails.
        jobs[3].0 = Source::at(&dir.path().join("gone"));
        let results = copy_batch_verified(&jobs, 1 << 20, &|| false);
        assert_eq!(results.len(), 5);
        for (i, r) in results.iter().enumerate() {
            if i == 3 {
                assert!(r.as_ref().unwrap_err().contains("open source"), "{r:?}");
                continue;
            }
            let copied = r.as_ref().expect("copied");
            assert_eq!(copied.size, 4096 + i as u64);
            assert_eq!(
                copied.sha256,
                hash_file(&jobs[i].0.path(), 4096).expect("hashes").1
            );
            assert_eq!(
                std::fs::read(&jobs[i].1[0].path).expect("read"),
                vec![i as u8; 4096 + i]
            );
        }
        let fenced = copy_batch_verified(&jobs[..1], 1 << 20, &|| true);
        assert!(fenced[0].as_ref().unwrap_err().contains("fenced"));
    }

    #[test]
    fn a_source_link_is_never_followed_and_a_changed_source_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (folder, secret) = (dir.path().join("in"), dir.path().join("secret"));
        std::fs::create_dir_all(folder.join("sub")).expect("mkdir");
        std::fs::write(&secret, b"not yours").expect("write");
        let temp = [dir.path().join(".t.part")];
        let source = |rel: &str, listed| Source {
            folder: folder.clone(),
            rel: rel.into(),
            listed,
        };
        // A link as the file, and a link as a folder on the way.
        std::os::unix::fs::symlink(&secret, folder.join("a.csv")).expect("symlink");
        std::os::unix::fs::symlink(dir.path(), folder.join("up")).expect("symlink");
        for rel in ["a.csv", "up/secret"] {
            let err = copy_verified(&source(rel, None), &at(&temp), 4096, &|| false).unwrap_err();
            assert!(err.contains("symbolic link"), "{rel}: {err}");
            assert!(!temp[0].exists(), "{rel}: nothing read");
        }
        // A FIFO swapped in is refused without blocking.
        let fifo = std::ffi::CString::new(folder.join("f.csv").to_str().expect("utf-8")).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = copy_verified(&source("f.csv", None), &at(&temp), 4096, &|| false).unwrap_err();
        assert!(err.contains("no longer a regular file"), "{err}");
        // The listing's size and mtime must still hold.
        std::fs::write(folder.join("sub/b.csv"), b"payroll").expect("write");
        let err = copy_verified(&source("sub/b.csv", Some((3, 0))), &at(&temp), 4096, &|| false).unwrap_err();
        assert!(err.contains("changed since it was listed"), "{err}");
        // The temp gets the source's bits, never the default's wider ones.
        for mode in [0o600, 0o640, 0o400] {
            std::fs::set_permissions(folder.join("sub/b.csv"), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            copy_verified(&source("sub/b.csv", None), &at(&temp), 4096, &|| false).expect("copies");
            let got = std::fs::metadata(&temp[0]).expect("stat").permissions().mode() & 0o777;
            assert_eq!(got, mode, "{mode:o}");
            std::fs::set_permissions(&temp[0], std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }

    #[test]
    fn copy_stops_when_fenced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.bin");
        // A small file (sequential copy) and a large one (the pipeline).
        for len in [4, 1 << 20] {
            std::fs::write(&src, vec![1u8; len]).expect("write");
            let temps = [Temp::at(dir.path().join(".t.part"))];
            let err = copy_verified(&Source::at(&src), &temps, 4096, &|| true).unwrap_err();
            assert!(err.contains("fenced"), "{len} bytes: {err}");
        }
    }
}
