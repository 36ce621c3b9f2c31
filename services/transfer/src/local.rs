//! Local file-system side of a transfer: plan destination paths, stream the source into
//! temporary files while hashing, verify, and commit by rename.
//!
//! Invariant: nothing is ever written under a final name. Bytes go to
//! `.<final name>.ferry-<item>.part` in the final folder; after fsync and a SHA-256 re-read
//! matches the source, a rename (the commit point) makes the file appear whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use ferry_config::{Destination, MacroContext, Overwrite};
use ferry_wire::FileItem;

/// Where one destination's file goes.
#[derive(Debug, Clone)]
pub struct Planned {
    pub dir: PathBuf,
    pub final_path: PathBuf,
    pub temp_path: PathBuf,
    pub overwrite: Overwrite,
}

/// The source as it was read.
#[derive(Debug, Clone)]
pub struct Copied {
    pub size: u64,
    pub sha256: String,
    pub mtime_ns: i128,
}

pub fn source_path(item: &FileItem) -> PathBuf {
    Path::new(&item.source.folder).join(&item.source.rel_path)
}

/// Render the destination folder and file name for `item`.
pub fn plan(item: &FileItem, dest: &Destination) -> Result<Planned, String> {
    let orig_name = Path::new(&item.source.rel_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let run_id = item.run_id.to_string();
    let ctx = MacroContext {
        orig_name: &orig_name,
        task: &item.task,
        run_id: &run_id,
        time: item.run_started_at.with_timezone(&chrono::Local),
    };
    let mut dir = PathBuf::from(dest.folder.render(&ctx));
    if dest.relative_subdirs
        && let Some(parent) = Path::new(&item.source.rel_path).parent()
    {
        dir.push(parent);
    }
    let name = dest.file_name.render(&ctx);
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!(
            "file name template {:?} expands to {name:?}",
            dest.file_name.as_str()
        ));
    }
    let temp_name = format!(
        ".{name}.ferry-{}.part",
        &item.item_id[..12.min(item.item_id.len())]
    );
    Ok(Planned {
        final_path: dir.join(&name),
        temp_path: dir.join(temp_name),
        dir,
        overwrite: dest.overwrite,
    })
}

/// Make sure the destination folder exists (creating it when allowed).
pub fn prepare_dir(planned: &Planned, create: bool) -> Result<(), String> {
    match fs::metadata(&planned.dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "destination folder {} is not a directory",
            planned.dir.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => fs::create_dir_all(&planned.dir)
            .map_err(|e| format!("create destination folder {}: {e}", planned.dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "destination folder {} does not exist (create_dirs = false)",
            planned.dir.display()
        )),
        Err(e) => Err(format!("destination folder {}: {e}", planned.dir.display())),
    }
}

/// Stream the source into every temp file, hashing as it goes; fsync the temps; then check the
/// source did not change while it was read. `should_stop` is polled between chunks (fencing).
pub fn copy(
    source: &Path,
    temps: &[PathBuf],
    buffer_bytes: usize,
    should_stop: &dyn Fn() -> bool,
) -> Result<Copied, String> {
    let mut input = File::open(source).map_err(|e| format!("open source {}: {e}", source.display()))?;
    let before = input
        .metadata()
        .map_err(|e| format!("stat source {}: {e}", source.display()))?;
    let mut outputs = temps
        .iter()
        .map(|t| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(t)
                .map_err(|e| format!("create {}: {e}", t.display()))
        })
        .collect::<Result<Vec<File>, String>>()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; buffer_bytes];
    let mut size = 0u64;
    loop {
        if should_stop() {
            return Err("stopped: this node's epoch was superseded (fenced)".into());
        }
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read source {}: {e}", source.display())),
        };
        hasher.update(&buf[..n]);
        for (out, path) in outputs.iter_mut().zip(temps) {
            out.write_all(&buf[..n])
                .map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        size += n as u64;
    }
    for (out, path) in outputs.iter().zip(temps) {
        out.sync_all()
            .map_err(|e| format!("fsync {}: {e}", path.display()))?;
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
    Ok(Copied {
        size,
        sha256: hex::encode(hasher.finalize()),
        mtime_ns: before.mtime() as i128 * 1_000_000_000 + before.mtime_nsec() as i128,
    })
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

/// `name.ext` → `name (n).ext`.
pub fn unique_candidate(final_path: &Path, n: u32) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name.as_str(), ""),
    };
    final_path.with_file_name(format!("{base} ({n}){ext}"))
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

/// Make a rename durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_keep_the_extension() {
        assert_eq!(
            unique_candidate(Path::new("/d/a.csv"), 2),
            Path::new("/d/a (2).csv")
        );
        assert_eq!(
            unique_candidate(Path::new("/d/README"), 1),
            Path::new("/d/README (1)")
        );
        assert_eq!(
            unique_candidate(Path::new("/d/.hidden"), 1),
            Path::new("/d/.hidden (1)")
        );
    }

    #[test]
    fn copy_hashes_verifies_and_never_replaces_on_noreplace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.bin");
        std::fs::write(&src, vec![7u8; 3 << 20]).expect("write");
        let temps = [dir.path().join(".a.part"), dir.path().join(".b.part")];
        let copied = copy(&src, &temps, 1 << 20, &|| false).expect("copies");
        assert_eq!(copied.size, 3 << 20);
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
    fn copy_stops_when_fenced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.bin");
        std::fs::write(&src, b"data").expect("write");
        let err = copy(&src, &[dir.path().join(".t.part")], 4096, &|| true).unwrap_err();
        assert!(err.contains("fenced"), "{err}");
    }
}
