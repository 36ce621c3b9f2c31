//! The files a process step reads and writes: [`File`] (a file on local disk with the logical
//! name it will have at the destination) and [`OutputFile`] (a file being written, removed unless
//! it is finished).

use std::fs;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::{NamedTempFile, TempPath};

use crate::error::{Blame, ProcessError};

/// Prefix of every temporary file a process writes in the work folder: one rule, so a sweeper
/// (or a test) can tell them from anything else.
pub const TEMP_PREFIX: &str = ".ferry-process-";

/// Read and write buffer size: large enough for throughput, small enough that memory per step
/// stays bounded whatever the file size.
pub(crate) const BUF_SIZE: usize = 256 * 1024;

/// A file on local disk that a process step takes or hands back.
///
/// `name` is the *logical* name — a relative, `/`-separated path such as `report.csv` or
/// `sub/a.txt` (from an archive) — that the destination will use; `path` is where the bytes are,
/// a name Ferry chose. The two are never confused: a process never writes to a path derived from
/// a logical name, so a hostile name cannot steer a write.
///
/// A file Ferry's processes made *owns* its path and removes it when dropped; a file the caller
/// passed in ([`File::borrowed`], e.g. the transfer's staged source) is never removed by this
/// crate. So dropping the result of a failed step leaves nothing behind, and the source is kept.
#[derive(Debug)]
pub struct File {
    name: String,
    path: PathBuf,
    bytes: u64,
    sha256: Option<[u8; 32]>,
    owned: Option<TempPath>,
}

impl File {
    /// A file the caller owns (and removes): the process reads it and may pass it through.
    /// `name` must be a safe relative name ([`check_name`]).
    pub fn borrowed(path: impl Into<PathBuf>, name: impl Into<String>) -> io::Result<File> {
        let path = path.into();
        let name = name.into();
        check_name(&name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let bytes = fs::metadata(&path)?.len();
        Ok(File {
            name,
            path,
            bytes,
            sha256: None,
            owned: None,
        })
    }

    /// Like [`File::borrowed`], with the SHA-256 the caller already computed (the transfer
    /// hashes while staging), so the step report needs no second read.
    pub fn borrowed_with_sha256(
        path: impl Into<PathBuf>,
        name: impl Into<String>,
        sha256: [u8; 32],
    ) -> io::Result<File> {
        let mut f = File::borrowed(path, name)?;
        f.sha256 = Some(sha256);
        Ok(f)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The name without its folder: `a.txt` for `sub/a.txt`.
    pub fn base_name(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Whether this crate made the file (and removes it when dropped).
    pub fn is_owned(&self) -> bool {
        self.owned.is_some()
    }

    /// The SHA-256 of the content, computed by streaming the file if it is not known yet.
    pub fn sha256(&mut self) -> io::Result<[u8; 32]> {
        if let Some(h) = self.sha256 {
            return Ok(h);
        }
        let h = sha256_file(&self.path)?;
        self.sha256 = Some(h);
        Ok(h)
    }

    /// The SHA-256 if it is already known, without reading the file.
    pub fn known_sha256(&self) -> Option<[u8; 32]> {
        self.sha256
    }

    /// The same bytes under another logical name (rename: nothing is copied).
    pub(crate) fn renamed(mut self, name: String) -> File {
        self.name = name;
        self
    }

    /// Takes the file out of this crate's care: it is no longer removed on drop, and the caller
    /// now owns `path` (e.g. the transfer after uploading it, or to move it elsewhere).
    pub fn keep(self) -> io::Result<(String, PathBuf)> {
        if let Some(owned) = self.owned {
            owned.keep().map_err(|e| e.error)?;
        }
        Ok((self.name, self.path))
    }

    /// Opens the content for reading.
    pub fn open(&self) -> io::Result<fs::File> {
        fs::File::open(&self.path)
    }
}

/// A file being written in the work folder under a temporary name. It becomes a [`File`] only
/// through [`OutputFile::finish`]; dropped before that (an error, a panic, a limit reached) it is
/// removed. Bytes written through [`Write`] are hashed on the way; a writer that seeks (a zip
/// writer patching its headers) switches the hashing off and `finish` hashes the file instead.
pub struct OutputFile {
    inner: BufWriter<NamedTempFile>,
    hasher: Option<Sha256>,
    written: u64,
}

impl OutputFile {
    pub fn create(work_dir: &Path) -> io::Result<OutputFile> {
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(work_dir)?;
        Ok(OutputFile {
            inner: BufWriter::with_capacity(BUF_SIZE, tmp),
            hasher: Some(Sha256::new()),
            written: 0,
        })
    }

    /// Bytes written so far (through `Write`; not meaningful after a seek).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The temporary path, for a child process that writes the file itself.
    pub fn path(&self) -> &Path {
        self.inner.get_ref().path()
    }

    /// Another handle on the temporary file, for a child process's stdout.
    pub(crate) fn file_handle(&self) -> io::Result<fs::File> {
        self.inner.get_ref().as_file().try_clone()
    }

    /// Marks the content as written by someone else (a child process): `finish` hashes it.
    pub(crate) fn written_externally(&mut self) {
        self.hasher = None;
    }

    /// Completes the file and hands it back under its logical `name`.
    pub fn finish(self, name: impl Into<String>) -> io::Result<File> {
        self.complete(name.into(), None)
    }

    /// Stops hashing what is written here: a writer in front of this file hashes the same bytes
    /// on another thread, and [`OutputFile::finish_hashed`] takes its digest.
    pub(crate) fn hashed_elsewhere(&mut self) {
        self.hasher = None;
    }

    /// [`OutputFile::finish`] with the SHA-256 of every byte written, computed by the writer.
    pub(crate) fn finish_hashed(self, name: impl Into<String>, sha256: [u8; 32]) -> io::Result<File> {
        self.complete(name.into(), Some(sha256))
    }

    fn complete(self, name: String, sha256: Option<[u8; 32]>) -> io::Result<File> {
        check_name(&name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tmp = self.inner.into_inner().map_err(|e| e.into_error())?;
        let path = tmp.into_temp_path();
        let sha256 = match (sha256, self.hasher) {
            (Some(given), _) => given,
            (None, Some(h)) => h.finalize().into(),
            (None, None) => sha256_file(&path)?,
        };
        let bytes = fs::metadata(&path)?.len();
        Ok(File {
            name,
            path: path.to_path_buf(),
            bytes,
            sha256: Some(sha256),
            owned: Some(path),
        })
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Seek for OutputFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        // Only a no-op query keeps the running hash valid.
        if pos != SeekFrom::Current(0) {
            self.hasher = None;
        }
        self.inner.seek(pos)
    }
}

/// Streams a file through SHA-256.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Checks a logical name: relative, `/`-separated, no empty, `.` or `..` component, no
/// backslash, drive letter or NUL, at most 1024 bytes. This is the one rule for names a process
/// hands back (archive entries, renames, a command's chosen output name).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > 1024 {
        return Err(format!("the name is {} bytes long (at most 1024)", name.len()));
    }
    if name.contains('\0') {
        return Err(format!("{name:?} contains a NUL byte"));
    }
    if name.contains('\\') {
        return Err(format!("{name:?} contains a backslash"));
    }
    if name.starts_with('/') {
        return Err(format!("{name:?} is an absolute path"));
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return Err(format!("{name:?} starts with a drive letter"));
    }
    for part in name.split('/') {
        match part {
            "" => return Err(format!("{name:?} has an empty path component")),
            "." | ".." => return Err(format!("{name:?} has a {part:?} component")),
            _ => {}
        }
    }
    Ok(())
}

/// Hex form of a SHA-256, as `sha256sum` prints it.
pub fn hex_sha256(h: &[u8; 32]) -> String {
    hex::encode(h)
}

/// Opens an input for reading, blaming the file on failure.
pub(crate) fn open_input(file: &File, blame: &Blame) -> Result<fs::File, ProcessError> {
    file.open()
        .map_err(|e| blame.internal(format!("open {}: {e}", file.path().display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a.txt", "sub/a.txt", "a..b", ".hidden", "x/.y/z"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("../x", "\"..\" component"),
            ("a/../../x", "\"..\" component"),
            ("/etc/passwd", "absolute"),
            ("C:/x", "drive letter"),
            ("c:x", "drive letter"),
            ("a\\b", "backslash"),
            ("a//b", "empty path component"),
            ("a/", "empty path component"),
            ("./a", "\".\" component"),
            ("a\0b", "NUL"),
        ] {
            let e = check_name(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn an_output_is_removed_unless_finished_and_a_finished_one_is_removed_on_drop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut out = OutputFile::create(dir.path()).expect("create");
        out.write_all(b"partial").expect("write");
        let p = out.path().to_path_buf();
        assert!(p.exists());
        drop(out);
        assert!(!p.exists(), "an unfinished output is removed");

        let mut out = OutputFile::create(dir.path()).expect("create");
        out.write_all(b"hello\n").expect("write");
        let mut f = out.finish("a.txt").expect("finish");
        assert_eq!(f.bytes(), 6);
        assert_eq!(
            hex_sha256(&f.sha256().expect("hash")),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        let p = f.path().to_path_buf();
        drop(f);
        assert!(
            !p.exists(),
            "a finished output this crate owns is removed on drop"
        );
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[test]
    fn a_borrowed_file_is_never_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("src");
        fs::write(&p, b"x").expect("write");
        drop(File::borrowed(&p, "src").expect("borrow"));
        assert!(p.exists());
    }
}
