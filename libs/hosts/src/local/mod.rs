//! `local`: the node's own file system.
//!
//! [`LocalHost`] implements [`Host`] for transfers where the other side is remote; a copy from
//! local to local takes the blocking fast path in [`fast`] instead (pipelined, group-committed).
//! Every file-system call runs on tokio's blocking pool, never on the async workers.
//!
//! Invariants: a source is opened without following a symlink in its last component; a temp file
//! is created exclusively (a stale one of the same attempt is removed first, an existing path is
//! never truncated); a commit is a `rename` (or `renameat2(RENAME_NOREPLACE)` when it must not
//! replace), and [`Host::sync_dir`] reports a failed folder fsync instead of hiding it.

pub mod fast;

use std::fs;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    ByteStream, Capabilities, Entry, Gate, Host, HostError, HostResult, Meta, Probe, Staged, Upload,
    Verification, WriteTarget,
};

/// The node's file system under a host name (`local`, or another `kind = "local"` host).
pub struct LocalHost {
    name: String,
}

impl LocalHost {
    pub fn new(name: &str) -> LocalHost {
        LocalHost {
            name: name.to_string(),
        }
    }
}

const CAPABILITIES: Capabilities = Capabilities {
    atomic_rename: true,
    rename_noreplace: true,
    server_sha256: false,
    // An interrupted upload to the node's own disks starts over: the source is read from its
    // start on every attempt anyway (its SHA-256 covers the whole file), so resuming would save
    // only local writes — and checking a prefix left by an earlier attempt, perhaps by a process
    // that crashed before its fsync, would cost as much as writing it again.
    resume: false,
    durable: true,
    byte_names: true,
};

/// Run a blocking file-system call on the blocking pool.
async fn blocking<T: Send + 'static>(
    host: &str,
    f: impl FnOnce() -> HostResult<T> + Send + 'static,
) -> HostResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HostError::permanent(host, format!("file-system task failed: {e}")))?
}

pub fn mtime_ns(m: &fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

/// Every file under `root` (recursively if asked), sorted by relative path; symlinks and other
/// non-regular files are not listed.
pub fn walk(host: &str, root: &Path, recursive: bool) -> HostResult<Vec<Entry>> {
    let meta = fs::metadata(root)
        .map_err(|e| HostError::io(host, &format!("folder {:?}", root.display().to_string()), &e))?;
    if !meta.is_dir() {
        return Err(HostError::permanent(
            host,
            format!("folder {:?} is not a directory", root.display().to_string()),
        ));
    }
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .max_depth(if recursive { usize::MAX } else { 1 })
        .sort_by_file_name();
    let mut found = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|e| {
            let what = format!("list {}", root.display());
            match e.io_error() {
                Some(io) => HostError::io(host, &what, io),
                None => HostError::permanent(host, format!("{what}: {e}")),
            }
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Gone between the directory read and the stat: not there.
            Err(e)
                if e.io_error()
                    .is_some_and(|io| io.kind() == io::ErrorKind::NotFound) =>
            {
                continue;
            }
            Err(e) => {
                return Err(HostError::permanent(
                    host,
                    format!("stat {}: {e}", entry.path().display()),
                ));
            }
        };
        let rel = crate::path::from_bytes(
            entry
                .path()
                .strip_prefix(root)
                .expect("walkdir yields paths under its root")
                .as_os_str()
                .as_bytes(),
        );
        found.push(Entry {
            rel_path: rel,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
        });
    }
    Ok(found)
}

/// Open a file to read without following a symlink in its last component.
fn open_nofollow(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Read up to `chunk` bytes of `file` (fewer only at its end) into `buf` (emptied first), without
/// zeroing it.
fn fill(file: &fs::File, buf: &mut Vec<u8>, chunk: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    buf.clear();
    buf.reserve(chunk);
    while buf.len() < chunk {
        let want = chunk - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..want];
        // SAFETY: read(2) writes at most `spare.len()` bytes into memory this buffer owns and
        // returns how many it wrote.
        let n = unsafe { libc::read(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        match n {
            0 => break,
            // SAFETY: the first `n` bytes of the spare capacity were just written by read(2).
            n if n > 0 => unsafe { buf.set_len(buf.len() + n as usize) },
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// A chunk's buffer, handed back to its reader when the last [`Bytes`] of it is dropped, so a
/// long file is read into a few recycled buffers instead of a fresh (page-faulting) allocation
/// per chunk.
struct Recycled {
    data: Vec<u8>,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        // A full pool or a finished reader: the buffer is simply freed.
        let _ = self.back.try_send(std::mem::take(&mut self.data));
    }
}

#[async_trait]
impl Host for LocalHost {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn list(&self, folder: &str, recursive: bool) -> HostResult<Vec<Entry>> {
        let (host, root) = (self.name.clone(), crate::path::os(folder));
        blocking(&self.name, move || walk(&host, &root, recursive)).await
    }

    async fn stat(&self, path: &str) -> HostResult<Option<Meta>> {
        let (host, p) = (self.name.clone(), crate::path::os(path));
        blocking(&self.name, move || match fs::symlink_metadata(&p) {
            Ok(m) => Ok(Some(Meta {
                size: m.len(),
                mtime_ns: mtime_ns(&m),
                is_dir: m.is_dir(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HostError::io(&host, &format!("stat {}", p.display()), &e)),
        })
        .await
    }

    async fn read(&self, path: &str, offset: u64) -> HostResult<ByteStream> {
        let (host, p) = (self.name.clone(), crate::path::os(path));
        let file = blocking(&self.name, move || {
            let mut f =
                open_nofollow(&p).map_err(|e| HostError::io(&host, &format!("open {}", p.display()), &e))?;
            if offset > 0 {
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| HostError::io(&host, &format!("seek {}", p.display()), &e))?;
            }
            Ok(f)
        })
        .await?;
        Ok(Box::pin(tokio::fs::File::from_std(file)))
    }

    async fn read_chunks(&self, path: &str, chunk: usize) -> HostResult<crate::Chunks> {
        let (host, p) = (self.name.clone(), crate::path::os(path));
        let file = blocking(&self.name, move || {
            open_nofollow(&p).map_err(|e| HostError::io(&host, &format!("open {}", p.display()), &e))
        })
        .await?;
        // Read on the blocking pool straight into the chunks (no copy through the async runtime),
        // a few chunks ahead of the consumer; its dropping the stream ends the reads.
        let (tx, rx) = tokio::sync::mpsc::channel::<HostResult<Bytes>>(2);
        let (host, shown, chunk) = (self.name.clone(), path.to_string(), chunk.max(1));
        tokio::task::spawn_blocking(move || {
            let (back, recycled) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
            loop {
                let mut data = recycled.try_recv().unwrap_or_default();
                let read = fill(&file, &mut data, chunk)
                    .map(|()| {
                        Bytes::from_owner(Recycled {
                            data,
                            back: back.clone(),
                        })
                    })
                    .map_err(|e| HostError::io(&host, &format!("read {shown}"), &e));
                let end = matches!(&read, Ok(c) if c.len() < chunk) || read.is_err();
                let send = match read {
                    Ok(c) if c.is_empty() => return,
                    r => tx.blocking_send(r),
                };
                if end || send.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        })))
    }

    async fn create_dir_all(&self, path: &str) -> HostResult<()> {
        let (host, p) = (self.name.clone(), crate::path::os(path));
        blocking(&self.name, move || {
            match fs::metadata(&p) {
                Ok(m) if m.is_dir() => return Ok(()),
                Ok(_) => {
                    return Err(HostError::permanent(
                        &host,
                        format!("{} exists and is not a directory", p.display()),
                    ));
                }
                Err(_) => {}
            }
            fs::create_dir_all(&p)
                .map_err(|e| HostError::io(&host, &format!("create folder {}", p.display()), &e))
        })
        .await
    }

    async fn write(&self, target: &WriteTarget) -> HostResult<Box<dyn Upload>> {
        let (host, temp, mode) = (
            self.name.clone(),
            crate::path::os(&target.temp_path()),
            target.mode,
        );
        let file = blocking(&self.name, move || {
            let what = |verb: &str| format!("{verb} {}", temp.display());
            let file = fast::create_temp(&temp).map_err(|e| HostError::io(&host, &what("create"), &e))?;
            if let Some(mode) = mode {
                // Readable and writable by us while we write and read it back; exact at the end.
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(fs::Permissions::from_mode(mode | 0o600))
                    .map_err(|e| HostError::io(&host, &what("set the permissions of"), &e))?;
            }
            Ok(file)
        })
        .await?;
        // The writer runs on the blocking pool: it writes each chunk, re-reads it from the file
        // and compares (so the read-back overlaps the transfer instead of following it), starts
        // writeback every few MiB, and fsyncs when the stream ends.
        let (tx, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let (host, temp) = (self.name.clone(), crate::path::os(&target.temp_path()));
        let worker = tokio::task::spawn_blocking(move || write_and_check(&host, &temp, file, mode, rx));
        Ok(Box::new(LocalUpload {
            host: self.name.clone(),
            temp: crate::path::os(&target.temp_path()),
            tx: Some(tx),
            worker: Some(worker),
            ended: None,
        }))
    }

    async fn delete(&self, path: &str) -> HostResult<()> {
        let (host, p) = (self.name.clone(), crate::path::os(path));
        blocking(&self.name, move || match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostError::io(&host, &format!("delete {}", p.display()), &e)),
        })
        .await
    }

    async fn sync_dir(&self, dir: &str) -> HostResult<()> {
        let (host, p) = (self.name.clone(), crate::path::os(dir));
        blocking(&self.name, move || {
            fast::sync_dir(&p).map_err(|e| HostError::io(&host, &format!("fsync folder {}", p.display()), &e))
        })
        .await
    }

    async fn probe(&self, folder: &str) -> HostResult<Probe> {
        match self.stat(folder).await? {
            Some(m) if m.is_dir => Ok(Probe {
                server: Some("the node's file system".into()),
                capabilities: CAPABILITIES,
                ..Probe::default()
            }),
            Some(_) => Err(HostError::permanent(
                &self.name,
                format!("{folder} is not a directory"),
            )),
            None => Err(HostError::not_found(
                &self.name,
                format!("folder {folder} does not exist"),
            )),
        }
    }
}

/// Chunks queued for the writer.
const WRITE_QUEUE: usize = 4;

struct LocalUpload {
    host: String,
    temp: PathBuf,
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    worker: Option<tokio::task::JoinHandle<HostResult<u64>>>,
    /// The writer's outcome once it ended early (an error).
    ended: Option<HostError>,
}

impl LocalUpload {
    /// Wait for the writer: the file's size, every byte of it read back and found equal to what
    /// was sent, durable.
    async fn join(&mut self) -> HostResult<u64> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        self.tx = None;
        let worker = self.worker.take().expect("joined once");
        let result = worker
            .await
            .map_err(|e| HostError::permanent(&self.host, format!("file-system task failed: {e}")))?;
        if let Err(e) = &result {
            self.ended = Some(e.clone());
        }
        result
    }
}

/// The writer of a [`LocalUpload`]: append each chunk, read it back from the file and compare it
/// with the chunk, start writeback every [`fast::WRITEBACK_EVERY`] bytes, and fsync at the end.
/// Returns the file's size. Comparing with the very bytes that were sent — which the transfer
/// hashed on their way — checks as much as hashing the file again would, and costs a memory
/// compare instead of a second SHA-256 pass (as the local copy does, [`fast::copy_verified`]).
fn write_and_check(
    host: &str,
    temp: &Path,
    mut file: fs::File,
    mode: Option<u32>,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> HostResult<u64> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let io_err = |what: &str, e: &io::Error| HostError::io(host, &format!("{what} {}", temp.display()), e);
    let reader = fs::File::open(temp).map_err(|e| io_err("open for verification", &e))?;
    let mut again = Vec::new();
    let (mut at, mut flushed) = (0u64, 0u64);
    while let Some(chunk) = rx.blocking_recv() {
        file.write_all(&chunk).map_err(|e| io_err("write", &e))?;
        again.resize(chunk.len(), 0);
        reader
            .read_exact_at(&mut again, at)
            .map_err(|e| io_err("verify", &e))?;
        if again[..] != chunk[..] {
            return Err(HostError::permanent(
                host,
                format!(
                    "verification failed for {}: the {} bytes at offset {at} read back differ from \
                     the bytes written",
                    temp.display(),
                    chunk.len()
                ),
            ));
        }
        at += chunk.len() as u64;
        if at - flushed >= fast::WRITEBACK_EVERY {
            fast::start_writeback(&file, flushed, at - flushed);
            flushed = at;
        }
    }
    if let Some(mode) = mode.filter(|m| m & 0o600 != 0o600) {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_err("set the permissions of", &e))?;
    }
    file.sync_all().map_err(|e| io_err("fsync", &e))?;
    Ok(at)
}

#[async_trait]
impl Upload for LocalUpload {
    fn offset(&self) -> u64 {
        0
    }

    async fn write(&mut self, data: Bytes) -> HostResult<()> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        let tx = self.tx.as_ref().expect("not finished");
        if tx.send(data).await.is_err() {
            // The writer stopped: its error says why.
            return self.join().await.map(|_| ());
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> HostResult<Box<dyn Staged>> {
        let read_back = self.join().await?;
        Ok(Box::new(LocalStaged {
            host: self.host,
            temp: self.temp,
            read_back,
        }))
    }

    async fn abort(mut self: Box<Self>) {
        // The writer ends on its own once the queue closes (a wasted fsync of a removed file at
        // worst); nothing waits for it.
        self.tx = None;
        let _ = tokio::fs::remove_file(&self.temp).await;
    }
}

struct LocalStaged {
    host: String,
    temp: PathBuf,
    /// Bytes written, each read back and compared while it was written.
    read_back: u64,
}

#[async_trait]
impl Staged for LocalStaged {
    async fn verify(&mut self, size: u64, _sha256: &str) -> HostResult<Verification> {
        // Every byte was read back and compared with what was sent as it was written
        // (overlapping the transfer); the sender hashed those same bytes, so the file holds the
        // source's if it holds as many. It must still have that size now.
        let stored = tokio::fs::symlink_metadata(&self.temp)
            .await
            .map_err(|e| HostError::io(&self.host, &format!("verify {}", self.temp.display()), &e))?
            .len();
        let read = self.read_back;
        if read != size || stored != size {
            return Err(HostError::permanent(
                &self.host,
                format!(
                    "verification failed for {}: wrote and read back {read} bytes ({stored} stored \
                     now), the source has {size}",
                    self.temp.display()
                ),
            ));
        }
        Ok(Verification::ReadBack)
    }

    async fn commit_gated(&mut self, final_path: &str, replace: bool, gate: Gate<'_>) -> HostResult<bool> {
        let (host, temp, to) = (self.host.clone(), self.temp.clone(), crate::path::os(final_path));
        gate()?;
        blocking(&self.host, move || {
            let what = || format!("rename into {}", to.display());
            if replace {
                fs::rename(&temp, &to)
                    .map(|()| true)
                    .map_err(|e| HostError::io(&host, &what(), &e))
            } else {
                fast::rename_noreplace(&temp, &to).map_err(|e| HostError::io(&host, &what(), &e))
            }
        })
        .await
    }

    async fn abort(self: Box<Self>) {
        let _ = tokio::fs::remove_file(&self.temp).await;
    }
}
