//! The conformance suite every host kind must pass (in the manner of `object_store`'s
//! `integration.rs`). Each kind's tests start a real server, build the host, and call [`run`]
//! with a fresh, empty folder on it; the suite says which check failed and why.
//!
//! What it holds every kind to: what is written and committed reads back identical; nothing
//! appears under the final name before the commit; a create-new commit never replaces; an aborted
//! upload leaves nothing behind; listings are recursive on request, sorted, with sizes; a missing
//! file or folder is `NotFound`; verification catches a wrong size or hash; reads start at an
//! offset; odd but legal names (spaces, non-ASCII, 200 bytes) work; and, where the kind says it
//! can resume, an interrupted upload continues from a correct prefix.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::{DynHost, ErrorKind, HostResult, WriteTarget, path};

type Check = Result<(), String>;
type CheckFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Check> + Send + 'a>>;

/// Hex SHA-256 of `data`.
pub fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Build host `name` from a configuration text the way the services do: parse, seal its secrets
/// to a keymat created in `keymat_dir`, validate, connect. For tests of every kind.
pub fn connect_sealed(toml: &str, name: &str, keymat_dir: &std::path::Path) -> Result<DynHost, String> {
    let store =
        ferry_keymat::KeymatStore::open_or_create(&keymat_dir.join("keymat")).map_err(|e| e.to_string())?;
    let keymat = store.current().map_err(|e| e.to_string())?;
    let mut raw = ferry_config::parse_toml(toml).map_err(|e| e.to_string())?;
    ferry_keymat::seal_config(&mut raw, &keymat.public()).map_err(|e| e.to_string())?;
    let config = raw.validate().map_err(|e| e.to_string())?;
    let host = config
        .hosts
        .get(name)
        .ok_or_else(|| format!("no host {name:?} in {toml}"))?;
    crate::connect(host, &store).map_err(|e| e.to_string())
}

/// Deterministic test content.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

/// Where a test writes `dir/name` (a temp name derived from the name).
pub fn target(dir: &str, name: &str, resume: bool, size: u64) -> WriteTarget {
    WriteTarget {
        dir: dir.to_string(),
        name: name.to_string(),
        temp_name: path::temp_name(&sha(name.as_bytes()), 0),
        size_hint: size,
        resume,
        mode: None,
    }
}

/// Write, verify and commit `data` as `dir/name`; `Ok(committed)`.
pub async fn put(host: &DynHost, dir: &str, name: &str, data: &[u8], replace: bool) -> HostResult<bool> {
    let t = target(dir, name, false, data.len() as u64);
    let mut upload = host.write(&t).await?;
    for chunk in data.chunks(256 << 10) {
        upload.write(Bytes::copy_from_slice(chunk)).await?;
    }
    let mut staged = upload.finish().await?;
    staged.verify(data.len() as u64, &sha(data)).await?;
    let done = staged.commit(&t.final_path(), replace).await?;
    if !done {
        staged.abort().await;
    }
    Ok(done)
}

/// Read a whole file.
pub async fn get(host: &DynHost, path: &str, offset: u64) -> HostResult<Vec<u8>> {
    let mut stream = host.read(path, offset).await?;
    let mut out = Vec::new();
    stream
        .read_to_end(&mut out)
        .await
        .map_err(|e| crate::HostError::io(host.name(), &format!("read {path}"), &e))?;
    Ok(out)
}

macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

fn ok<T>(what: &str, r: HostResult<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// A whole file through [`crate::Host::read_chunks`], checked to come in `chunk`-sized chunks (the
/// last one shorter, none empty). Every chunk is held until the end, so a reader that reused a
/// buffer still in the caller's hands would show up as different bytes.
pub async fn get_chunks(host: &DynHost, path: &str, chunk: usize) -> Result<Vec<u8>, String> {
    use futures::StreamExt;
    let mut chunks = ok("read_chunks", host.read_chunks(path, chunk).await)?;
    let mut held: Vec<Bytes> = Vec::new();
    while let Some(c) = chunks.next().await {
        held.push(ok("read_chunks", c)?);
    }
    for (i, c) in held.iter().enumerate() {
        let last = i + 1 == held.len();
        ensure!(
            !c.is_empty() && (c.len() == chunk || last && c.len() < chunk),
            "read_chunks({path}, {chunk}): chunk {i} of {} has {} bytes",
            held.len(),
            c.len()
        );
    }
    Ok(held.concat())
}

/// Run every check against `host` in `folder` (which must exist and be empty).
pub async fn run(host: &DynHost, folder: &str) -> Check {
    let checks: Vec<(&str, CheckFuture<'_>)> = vec![
        ("round_trip", Box::pin(round_trip(host, folder))),
        (
            "nothing_visible_before_commit",
            Box::pin(nothing_visible_before_commit(host, folder)),
        ),
        (
            "create_new_never_replaces",
            Box::pin(create_new_never_replaces(host, folder)),
        ),
        (
            "abort_leaves_nothing",
            Box::pin(abort_leaves_nothing(host, folder)),
        ),
        ("nested_listing", Box::pin(nested_listing(host, folder))),
        ("missing_things", Box::pin(missing_things(host, folder))),
        (
            "verify_catches_mismatch",
            Box::pin(verify_catches_mismatch(host, folder)),
        ),
        ("odd_names", Box::pin(odd_names(host, folder))),
        ("resume", Box::pin(resume(host, folder))),
    ];
    for (name, check) in checks {
        check
            .await
            .map_err(|e| format!("conformance check {name} failed: {e}"))?;
    }
    Ok(())
}

async fn round_trip(host: &DynHost, folder: &str) -> Check {
    let dir = path::join(folder, "round");
    ok("create_dir_all", host.create_dir_all(&dir).await)?;
    ok("create_dir_all twice", host.create_dir_all(&dir).await)?;
    for (name, len) in [("empty.bin", 0usize), ("small.txt", 1000), ("large.bin", 9 << 20)] {
        let data = content(len, len as u8);
        ensure!(
            ok("put", put(host, &dir, name, &data, true).await)?,
            "put {name} did not commit"
        );
        let p = path::join(&dir, name);
        let back = ok("read", get(host, &p, 0).await)?;
        ensure!(
            back.len() == data.len(),
            "{name}: read {} bytes, wrote {}",
            back.len(),
            data.len()
        );
        ensure!(back == data, "{name}: read back different bytes");
        for chunk in [64 << 10, (1 << 20) + 3] {
            ensure!(
                get_chunks(host, &p, chunk).await? == data,
                "{name}: read in chunks of {chunk} bytes, different bytes"
            );
        }
        let meta = ok("stat", host.stat(&p).await)?.ok_or(format!("stat {p}: missing"))?;
        ensure!(meta.size == len as u64 && !meta.is_dir, "stat {p}: {meta:?}");
        if len > 10 {
            let tail = ok("read at offset", get(host, &p, 10).await)?;
            ensure!(tail == data[10..], "{name}: read from offset 10 differs");
        }
    }
    // Replace: the new content wins.
    let newer = content(5000, 9);
    ensure!(
        ok("replace", put(host, &dir, "small.txt", &newer, true).await)?,
        "replace did not commit"
    );
    ensure!(
        ok("read", get(host, &path::join(&dir, "small.txt"), 0).await)? == newer,
        "replaced file has old content"
    );
    let listed = ok("list", host.list(&dir, false).await)?;
    let names: Vec<&str> = listed.iter().map(|e| e.rel_path.as_str()).collect();
    ensure!(
        names == ["empty.bin", "large.bin", "small.txt"],
        "listing {names:?}"
    );
    ensure!(listed[2].size == 5000, "listed size {}", listed[2].size);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i128;
    ensure!(
        (listed[2].mtime_ns - now).abs() < 600 * 1_000_000_000,
        "listed mtime {} is far from now {now}",
        listed[2].mtime_ns
    );
    // Delete, and delete again.
    ok("delete", host.delete(&path::join(&dir, "empty.bin")).await)?;
    ok(
        "delete missing",
        host.delete(&path::join(&dir, "empty.bin")).await,
    )?;
    ensure!(
        ok("stat deleted", host.stat(&path::join(&dir, "empty.bin")).await)?.is_none(),
        "deleted file still there"
    );
    Ok(())
}

async fn nothing_visible_before_commit(host: &DynHost, folder: &str) -> Check {
    let dir = path::join(folder, "invisible");
    ok("create_dir_all", host.create_dir_all(&dir).await)?;
    let t = target(&dir, "final.csv", false, 1 << 20);
    let mut upload = ok("write", host.write(&t).await)?;
    ok(
        "write chunk",
        upload.write(Bytes::from(content(1 << 20, 3))).await,
    )?;
    ensure!(
        ok("stat", host.stat(&t.final_path()).await)?.is_none(),
        "the final name exists while uploading"
    );
    let mut staged = ok("finish", upload.finish().await)?;
    ensure!(
        ok("stat", host.stat(&t.final_path()).await)?.is_none(),
        "the final name exists before the commit"
    );
    let listed = ok("list", host.list(&dir, true).await)?;
    ensure!(
        listed.iter().all(|e| e.rel_path != "final.csv"),
        "the final name is listed before the commit: {listed:?}"
    );
    ok("verify", staged.verify(1 << 20, &sha(&content(1 << 20, 3))).await)?;
    ensure!(
        ok("commit", staged.commit(&t.final_path(), true).await)?,
        "commit refused"
    );
    ensure!(
        ok("stat", host.stat(&t.final_path()).await)?.map(|m| m.size) == Some(1 << 20),
        "committed file missing or wrong size"
    );
    Ok(())
}

async fn create_new_never_replaces(host: &DynHost, folder: &str) -> Check {
    let dir = path::join(folder, "createnew");
    ok("create_dir_all", host.create_dir_all(&dir).await)?;
    ensure!(
        ok("first", put(host, &dir, "a.txt", b"first", false).await)?,
        "first create-new refused"
    );
    ensure!(
        !ok("second", put(host, &dir, "a.txt", b"second", false).await)?,
        "create-new replaced an existing file"
    );
    ensure!(
        ok("read", get(host, &path::join(&dir, "a.txt"), 0).await)? == b"first",
        "create-new changed the existing file"
    );
    let listed = ok("list", host.list(&dir, false).await)?;
    ensure!(
        listed.iter().all(|e| !path::is_temp_name(&e.rel_path)),
        "a refused commit left its temp file: {listed:?}"
    );
    Ok(())
}

async fn abort_leaves_nothing(host: &DynHost, folder: &str) -> Check {
    let dir = path::join(folder, "aborted");
    ok("create_dir_all", host.create_dir_all(&dir).await)?;
    let t = target(&dir, "gone.bin", false, 100);
    let mut upload = ok("write", host.write(&t).await)?;
    ok("write chunk", upload.write(Bytes::from_static(b"partial")).await)?;
    upload.abort().await;
    let t = target(&dir, "gone2.bin", false, 100);
    let mut upload = ok("write", host.write(&t).await)?;
    ok("write chunk", upload.write(Bytes::from_static(b"partial")).await)?;
    let staged = ok("finish", upload.finish().await)?;
    staged.abort().await;
    let listed = ok("list", host.list(&dir, true).await)?;
    ensure!(listed.is_empty(), "aborted uploads left {listed:?}");
    Ok(())
}

async fn nested_listing(host: &DynHost, folder: &str) -> Check {
    let dir = path::join(folder, "nested");
    for sub in ["", "b", "b/c", "b/c/d"] {
        let d = path::join(&dir, sub);
        ok("create_dir_all", host.create_dir_all(&d).await)?;
        ensure!(
            ok("put", put(host, &d, "f.txt", sub.as_bytes(), true).await)?,
            "put refused"
        );
    }
    let flat = ok("list", host.list(&dir, false).await)?;
    let names: Vec<&str> = flat.iter().map(|e| e.rel_path.as_str()).collect();
    ensure!(names == ["f.txt"], "non-recursive listing {names:?}");
    let deep = ok("list recursive", host.list(&dir, true).await)?;
    let names: Vec<&str> = deep.iter().map(|e| e.rel_path.as_str()).collect();
    ensure!(
        names == ["b/c/d/f.txt", "b/c/f.txt", "b/f.txt", "f.txt"],
        "recursive listing {names:?}"
    );
    ensure!(deep[0].size == 5, "size of b/c/d/f.txt: {}", deep[0].size);
    Ok(())
}

async fn missing_things(host: &DynHost, folder: &str) -> Check {
    let missing = path::join(folder, "no-such-folder");
    match host.list(&missing, false).await {
        Err(e) if e.kind == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "listing a missing folder: {:?} error, expected NotFound: {e}",
                e.kind
            ));
        }
        Ok(v) => return Err(format!("listing a missing folder gave {v:?}")),
    }
    ensure!(
        ok("stat missing", host.stat(&path::join(&missing, "x")).await)?.is_none(),
        "stat of a missing file is not None"
    );
    match host.read_chunks(&path::join(folder, "no-such-file"), 4096).await {
        Err(e) if e.kind == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "reading a missing file in chunks: {:?} error, expected NotFound: {e}",
                e.kind
            ));
        }
        Ok(_) => return Err("reading a missing file in chunks succeeded".into()),
    }
    match host.read(&path::join(folder, "no-such-file"), 0).await {
        Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "reading a missing file: {:?} error, expected NotFound: {e}",
            e.kind
        )),
        Ok(_) => Err("reading a missing file succeeded".into()),
    }
}

async fn verify_catches_mismatch(host: &DynHost, folder: &str) -> Check {
    let dir = path::join(folder, "verify");
    ok("create_dir_all", host.create_dir_all(&dir).await)?;
    let data = content(70_000, 5);
    let t = target(&dir, "v.bin", false, data.len() as u64);
    let mut upload = ok("write", host.write(&t).await)?;
    ok("write chunk", upload.write(Bytes::from(data.clone())).await)?;
    let mut staged = ok("finish", upload.finish().await)?;
    ensure!(
        staged.verify(data.len() as u64 + 1, &sha(&data)).await.is_err(),
        "verify accepted a wrong size"
    );
    let mut wrong = data.clone();
    wrong[0] ^= 1;
    let kind = host.capabilities();
    let strict = staged.verify(data.len() as u64, &sha(&wrong)).await;
    ensure!(
        strict.is_err() || !kind.server_sha256,
        "verify accepted a wrong hash on a host that claims server-side hashing"
    );
    staged.abort().await;
    Ok(())
}

async fn odd_names(host: &DynHost, folder: &str) -> Check {
    let dir = path::join(folder, "odd names ä");
    ok("create_dir_all", host.create_dir_all(&dir).await)?;
    let long = format!("{}.txt", "l".repeat(196));
    // Hosts whose names are bytes also keep a name that is not UTF-8 (Latin-1 `café`).
    let latin1 = path::from_bytes(b"caf\xe9.csv");
    let mut names_in = vec![
        "with space.csv",
        "ümlaut-€.txt",
        "semi;colon,comma.txt",
        long.as_str(),
    ];
    if host.capabilities().byte_names {
        names_in.push(&latin1);
    }
    for &name in &names_in {
        ensure!(
            ok("put", put(host, &dir, name, name.as_bytes(), true).await)?,
            "put {name} refused"
        );
    }
    let listed = ok("list", host.list(&dir, false).await)?;
    let mut names: Vec<&str> = listed.iter().map(|e| e.rel_path.as_str()).collect();
    names.sort();
    let mut want = names_in.clone();
    want.sort();
    ensure!(names == want, "listing {names:?}");
    for name in names_in {
        let got = ok("get", get(host, &path::join(&dir, name), 0).await)?;
        ensure!(
            got == name.as_bytes(),
            "{} read back other bytes",
            path::shown(name)
        );
    }
    Ok(())
}

async fn resume(host: &DynHost, folder: &str) -> Check {
    if !host.capabilities().resume {
        return Ok(());
    }
    let dir = path::join(folder, "resume");
    ok("create_dir_all", host.create_dir_all(&dir).await)?;
    let data = content(6 << 20, 7);
    let t = target(&dir, "r.bin", true, data.len() as u64);
    let mut upload = ok("write", host.write(&t).await)?;
    ok(
        "write chunk",
        upload.write(Bytes::copy_from_slice(&data[..4 << 20])).await,
    )?;
    // Interrupted: no finish, no abort (a process that died).
    drop(upload);
    let mut again = ok("write again", host.write(&t).await)?;
    let offset = again.offset();
    ensure!(offset <= 4 << 20, "resumed at {offset}, beyond what was written");
    let stored = ok("read temp", get(host, &t.temp_path(), 0).await)?;
    ensure!(
        stored.len() as u64 >= offset && stored[..offset as usize] == data[..offset as usize],
        "the resumed prefix differs from what was sent"
    );
    ok(
        "write rest",
        again
            .write(Bytes::copy_from_slice(&data[offset as usize..]))
            .await,
    )?;
    let mut staged = ok("finish", again.finish().await)?;
    ok("verify", staged.verify(data.len() as u64, &sha(&data)).await)?;
    ensure!(
        ok("commit", staged.commit(&t.final_path(), true).await)?,
        "commit refused"
    );
    ensure!(
        ok("read", get(host, &t.final_path(), 0).await)? == data,
        "resumed file differs"
    );
    // A fresh (non-resuming) write replaces a stale temp instead of appending to it.
    let stale = target(&dir, "s.bin", false, 3);
    let mut upload = ok(
        "write",
        host.write(&WriteTarget {
            resume: true,
            ..stale.clone()
        })
        .await,
    )?;
    ok("write chunk", upload.write(Bytes::from_static(b"stale!")).await)?;
    drop(upload);
    ensure!(
        ok("fresh", put(host, &dir, "s.bin", b"new", true).await)?,
        "fresh put refused"
    );
    ensure!(
        ok("read", get(host, &stale.final_path(), 0).await)? == b"new",
        "a fresh write appended to a stale temp"
    );
    Ok(())
}
