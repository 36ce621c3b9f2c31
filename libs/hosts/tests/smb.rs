//! The smb host against a real Samba `smbd` (needs root and Debian's samba: see
//! `ferry_testkit::peers::smbd`): the conformance suite encrypted and signed-only, and what a
//! user sees when the password is wrong, the share is missing, encryption cannot be had, the
//! server dies mid-upload, or stops answering.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_hosts::{DynHost, ErrorKind, WriteTarget, conformance, path};
use ferry_testkit::peers::smbd::Smbd;
use ferry_testkit::peers::{TEST_PASSWORD, TEST_USER};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

mod common;
use common::{expect_err, sealed, sha};

/// A host named `share` on `smbd`, built the way the services build it (sealed password).
/// `settings` are extra TOML lines of the `[[host]]` table.
fn host(smbd: &Smbd, settings: &str) -> (DynHost, tempfile::TempDir) {
    host_at(&smbd.url(), TEST_PASSWORD, settings)
}

fn host_at(share: &str, password: &str, settings: &str) -> (DynHost, tempfile::TempDir) {
    let mut settings = settings.to_string();
    for default in ["connect_timeout_secs = 5", "operation_timeout_secs = 5"] {
        let key = default.split(' ').next().expect("a key");
        if !settings.contains(key) {
            settings = format!("{default}\n{settings}");
        }
    }
    let toml = format!(
        "[[host]]\nname = \"share\"\nkind = \"smb\"\nshare = '{share}'\nuser = \"{TEST_USER}\"\n\
         password = \"{password}\"\n{settings}\n"
    );
    sealed(&toml, "share")
}

#[tokio::test]
async fn conformance_with_encryption_required() {
    let smbd = Smbd::start("required").expect("smbd");
    smbd.folder("suite").expect("folder");
    let (host, _keys) = host(&smbd, "encryption = \"required\"");
    conformance::run(&host, "/suite").await.expect("conformance");
    let probe = host.probe("/suite").await.expect("probe");
    assert_eq!(probe.server.as_deref(), Some("SMB 3.1.1"));
    assert!(
        probe.notes.iter().any(|n| n.starts_with("encryption: on")),
        "{:?}",
        probe.notes
    );

    let (plain, _keys) = host_at(&smbd.url(), TEST_PASSWORD, "encryption = \"off\"");
    let e = expect_err(
        "encryption off against encrypt = required",
        plain.list("/", false).await,
    );
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(e.message.contains("encryption"), "{e}");
}

#[tokio::test]
async fn conformance_signed_only() {
    let smbd = Smbd::start_with("off", "server signing = mandatory").expect("smbd");
    smbd.folder("suite").expect("folder");
    // The UNC spelling, with the port as its own setting.
    let (host, _keys) = host_at(
        &smbd.unc(),
        TEST_PASSWORD,
        &format!("port = {}\nencryption = \"off\"", smbd.port()),
    );
    conformance::run(&host, "suite").await.expect("conformance");
    let probe = host.probe("suite").await.expect("probe");
    assert!(
        probe.notes.iter().any(|n| n == "encryption: off (signed only)"),
        "{:?}",
        probe.notes
    );
}

#[tokio::test]
async fn wrong_password_is_permanent_names_user_and_share_and_hides_the_password() {
    let smbd = Smbd::start("required").expect("smbd");
    let wrong = "not-the-password-42";
    let (host, _keys) = host_at(&smbd.url(), wrong, "");
    let e = expect_err("list with a wrong password", host.list("/", false).await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    let text = e.to_string();
    assert!(text.contains(TEST_USER), "{text}");
    assert!(text.contains(r"\\127.0.0.1\share"), "{text}");
    assert!(text.contains("STATUS_LOGON_FAILURE"), "{text}");
    assert!(
        !text.contains(wrong) && !format!("{e:?}").contains(wrong),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_share_is_not_found_and_says_so() {
    let smbd = Smbd::start("required").expect("smbd");
    let (host, _keys) = host_at(
        &format!("smb://127.0.0.1:{}/nosuch", smbd.port()),
        TEST_PASSWORD,
        "",
    );
    let e = expect_err("list on a missing share", host.list("/", false).await);
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(
        e.message.contains("share \"nosuch\" does not exist on 127.0.0.1"),
        "{e}"
    );
}

#[tokio::test]
async fn required_encryption_is_refused_by_a_server_without_it_and_desired_signs() {
    let smbd = Smbd::start_with("off", "server signing = mandatory").expect("smbd");
    let (required, _keys) = host(&smbd, "encryption = \"required\"");
    let e = expect_err("required against encrypt = off", required.list("/", false).await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(e.message.contains("offers no SMB 3 encryption"), "{e}");

    let (desired, _keys) = host(&smbd, "encryption = \"desired\"");
    let probe = desired.probe("/").await.expect("desired falls back to signing");
    assert!(
        probe.notes.iter().any(|n| n == "encryption: off (signed only)"),
        "{:?}",
        probe.notes
    );
}

#[tokio::test]
async fn a_killed_server_is_transient_and_the_upload_resumes_after_a_restart() {
    let mut smbd = Smbd::start("required").expect("smbd");
    smbd.folder("resume").expect("folder");
    let (host, _keys) = host(&smbd, "");
    let data = conformance::content(48 << 20, 11);
    let target = WriteTarget {
        dir: "/resume".into(),
        name: "big.bin".into(),
        temp_name: path::temp_name(&sha(b"big.bin"), 0),
        size_hint: data.len() as u64,
        resume: true,
        mode: None,
    };
    let mut upload = host.write(&target).await.expect("write");
    assert_eq!(upload.offset(), 0);
    let half = 24 << 20;
    for chunk in data[..half].chunks(1 << 20) {
        upload
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("first half");
    }
    smbd.kill();
    let e = expect_err("stat on a killed server", host.stat("/resume").await);
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    // The failure shows on a later write (the window) or at the latest in finish.
    let mut failure = None;
    for chunk in data[half..].chunks(1 << 20) {
        if let Err(e) = upload.write(Bytes::copy_from_slice(chunk)).await {
            failure = Some(e);
            break;
        }
    }
    let e = match failure {
        Some(e) => {
            drop(upload);
            e
        }
        None => expect_err("finish on a killed server", upload.finish().await),
    };
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");

    smbd.restart().expect("restart smbd");
    let mut again = host.write(&target).await.expect("write after the restart");
    let offset = again.offset() as usize;
    assert!(
        offset <= half,
        "resumed at {offset}, beyond the {half} bytes sent"
    );
    let temp = std::fs::read(smbd.share_dir().join("resume").join(&target.temp_name)).expect("temp file");
    assert_eq!(
        temp.len(),
        offset,
        "the temp file is cut back to the resume offset"
    );
    assert!(
        temp == data[..offset],
        "the kept prefix differs from what was sent"
    );
    for chunk in data[offset..].chunks(1 << 20) {
        again.write(Bytes::copy_from_slice(chunk)).await.expect("rest");
    }
    let mut staged = again.finish().await.expect("finish");
    staged
        .verify(data.len() as u64, &sha(&data))
        .await
        .expect("verify");
    assert!(staged.commit(&target.final_path(), false).await.expect("commit"));
    let stored = std::fs::read(smbd.share_dir().join("resume/big.bin")).expect("final file");
    assert!(stored == data, "the resumed file differs from the source");
}

#[tokio::test]
async fn a_stalled_server_ends_in_a_transient_timeout_not_a_hang() {
    let smbd = Smbd::start("required").expect("smbd");
    smbd.folder("stall").expect("folder");
    let (host, _keys) = host(&smbd, "connect_timeout_secs = 2\noperation_timeout_secs = 2");
    host.stat("/stall").await.expect("stat before the stall");
    let target = WriteTarget {
        dir: "/stall".into(),
        name: "x.bin".into(),
        temp_name: path::temp_name(&sha(b"x.bin"), 0),
        size_hint: 0,
        resume: false,
        mode: None,
    };
    let mut upload = host.write(&target).await.expect("write");
    smbd.pause();

    let started = Instant::now();
    let e = expect_err("stat on a stalled server", host.stat("/stall").await);
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let mut failure = None;
    for _ in 0..64 {
        if let Err(e) = upload.write(Bytes::from(vec![7u8; 1 << 20])).await {
            failure = Some(e);
            break;
        }
    }
    let e = match failure {
        Some(e) => e,
        None => expect_err("finish on a stalled server", upload.finish().await),
    };
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    smbd.resume();
}

/// 1 GiB of bytes that never repeat: word `i` (of 8 bytes) is a mix of `i` and `seed`, so a
/// block written to the wrong offset, twice, or not at all changes the SHA-256.
fn pattern(offset: u64, len: usize, seed: u64) -> Vec<u8> {
    debug_assert!(offset.is_multiple_of(8) && len.is_multiple_of(8));
    let mut out = Vec::with_capacity(len);
    for word in offset / 8..(offset + len as u64) / 8 {
        // splitmix64's finalizer: a bijection, so no two words of one seed are equal.
        let mut z = word.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// The case that stalled when the crate lost the credits of asynchronous answers: 1 GiB up and
/// down, encrypted, through one host (so over its pooled connections), checked by SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_up_and_down_encrypted_keeps_its_bytes() {
    const SIZE: u64 = 1 << 30;
    const PIECE: usize = 1 << 20;
    let smbd = Smbd::start("required").expect("smbd");
    smbd.folder("big").expect("folder");
    let (host, _keys) = host(&smbd, "encryption = \"required\"");
    let target = WriteTarget {
        dir: "/big".into(),
        name: "one-gib.bin".into(),
        temp_name: path::temp_name(&sha(b"one-gib.bin"), 0),
        size_hint: SIZE,
        resume: false,
        mode: None,
    };

    let started = Instant::now();
    let mut upload = host.write(&target).await.expect("write");
    let mut sent = Sha256::new();
    for offset in (0..SIZE).step_by(PIECE) {
        let piece = pattern(offset, PIECE, 0x5eed);
        sent.update(&piece);
        upload.write(Bytes::from(piece)).await.unwrap_or_else(|e| {
            panic!(
                "upload at {} MiB after {:?}: {e}",
                offset >> 20,
                started.elapsed()
            )
        });
    }
    let sent = hex::encode(sent.finalize());
    let mut staged = upload.finish().await.expect("finish");
    staged.verify(SIZE, &sent).await.expect("verify");
    assert!(staged.commit(&target.final_path(), false).await.expect("commit"));
    let up = started.elapsed();

    let started = Instant::now();
    let mut stream = host.read("/big/one-gib.bin", 0).await.expect("read");
    let mut fetched = Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .unwrap_or_else(|e| panic!("download at {} MiB after {:?}: {e}", got >> 20, started.elapsed()));
        if n == 0 {
            break;
        }
        fetched.update(&buf[..n]);
        got += n as u64;
    }
    let down = started.elapsed();
    println!("1 GiB encrypted: upload {up:.2?}, download {down:.2?}");
    assert_eq!(got, SIZE, "downloaded size");
    assert_eq!(hex::encode(fetched.finalize()), sent, "downloaded SHA-256");
    let stored = std::fs::metadata(smbd.share_dir().join("big/one-gib.bin")).expect("stored file");
    assert_eq!(stored.len(), SIZE, "stored size");
}

/// CPU seconds (user + system) of this process, or of its waited-for children.
fn cpu(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Write back the previous step's dirty pages, so they do not slow the next one.
fn settle() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// Upload `source` as `/bench/by-ferry.bin` the way transfer does: write, finish (FLUSH),
/// verify, commit.
async fn ferry_upload(host: &DynHost, source: &std::path::Path, size: u64) {
    let target = WriteTarget {
        dir: "/bench".into(),
        name: "by-ferry.bin".into(),
        temp_name: path::temp_name(&sha(b"by-ferry.bin"), 0),
        size_hint: size,
        resume: false,
        mode: None,
    };
    let mut upload = host.write(&target).await.expect("write");
    let mut file = tokio::fs::File::open(source).await.expect("open source");
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let n = file.read(&mut buf).await.expect("read source");
        if n == 0 {
            break;
        }
        buf.truncate(n);
        upload.write(Bytes::from(buf)).await.expect("upload");
    }
    let mut staged = upload.finish().await.expect("finish");
    staged.verify(size, "").await.expect("verify size");
    assert!(staged.commit(&target.final_path(), true).await.expect("commit"));
}

/// Not a test: 1 GiB up and down through this host and through `smbclient` in the same run,
/// with wall time and CPU per process. Run with
/// `cargo test --release -p ferry-hosts --no-default-features --features smb --test smb -- --ignored --nocapture measure`
/// (`FERRY_SMB_BENCH_ENCRYPT=off` for a signed-only server and client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn measure_1gib_against_smbclient() {
    use tokio::io::AsyncWriteExt;
    const SIZE: usize = 1 << 30;
    let encrypt = std::env::var("FERRY_SMB_BENCH_ENCRYPT").unwrap_or_else(|_| "required".into());
    let smbd = Smbd::start(&encrypt).expect("smbd");
    let bench = smbd.folder("bench").expect("folder");
    let client = if encrypt == "off" { "off" } else { "required" };
    let (host, _keys) = host(&smbd, &format!("encryption = \"{client}\""));
    let work = tempfile::tempdir().expect("tempdir");
    let source = work.path().join("source.bin");
    {
        let mut f = std::fs::File::create(&source).expect("source");
        for i in 0..(SIZE >> 20) {
            std::io::Write::write_all(&mut f, &conformance::content(1 << 20, i as u8)).expect("write source");
        }
    }
    println!("probe: {:?}", host.probe("/bench").await.expect("probe").notes);
    let report = |what: &str, secs: f64, client_cpu: f64, server_cpu: f64| {
        println!(
            "{what:<24} {secs:6.2} s  {:7.1} MiB/s  client CPU {client_cpu:5.2} s  smbd CPU {server_cpu:5.2} s",
            SIZE as f64 / (1 << 20) as f64 / secs
        );
    };

    // Uploads: two rounds in swapped order, each upload starting from the same state (no earlier
    // upload in the share or the page cache, nothing dirty). smbclient does not flush; this host
    // ends with FLUSH (an fsync on Samba), so smbclient's figure gets the write-back it left.
    for round in [["smbclient", "ferry"], ["ferry", "smbclient"]] {
        for who in round {
            for name in ["by-smbclient.bin", "by-ferry.bin"] {
                let _ = std::fs::remove_file(bench.join(name));
            }
            settle();
            if who == "smbclient" {
                let (c0, s0, t0) = (cpu(libc::RUSAGE_CHILDREN), smbd.cpu_seconds(), Instant::now());
                smbd.smbclient(work.path(), "put source.bin bench/by-smbclient.bin")
                    .expect("smbclient put");
                let put = t0.elapsed().as_secs_f64();
                settle();
                report(
                    &format!("smbclient put (+sync {:.2} s)", t0.elapsed().as_secs_f64() - put),
                    t0.elapsed().as_secs_f64(),
                    cpu(libc::RUSAGE_CHILDREN) - c0,
                    smbd.cpu_seconds() - s0,
                );
            } else {
                let (c0, s0, t0) = (cpu(libc::RUSAGE_SELF), smbd.cpu_seconds(), Instant::now());
                ferry_upload(&host, &source, SIZE as u64).await;
                report(
                    "ferry upload",
                    t0.elapsed().as_secs_f64(),
                    cpu(libc::RUSAGE_SELF) - c0,
                    smbd.cpu_seconds() - s0,
                );
            }
        }
    }

    // Downloads of the same (cached) file, to /dev/null on both sides: the figures are the
    // protocol clients', not the local disk's.
    settle();
    let (c0, s0, t0) = (cpu(libc::RUSAGE_CHILDREN), smbd.cpu_seconds(), Instant::now());
    smbd.smbclient(work.path(), "get bench/by-smbclient.bin /dev/null")
        .expect("smbclient get");
    report(
        "smbclient get",
        t0.elapsed().as_secs_f64(),
        cpu(libc::RUSAGE_CHILDREN) - c0,
        smbd.cpu_seconds() - s0,
    );
    let (c0, s0, t0) = (cpu(libc::RUSAGE_SELF), smbd.cpu_seconds(), Instant::now());
    let stream = host.read("/bench/by-smbclient.bin", 0).await.expect("read");
    let mut stream = tokio::io::BufReader::with_capacity(1 << 20, stream);
    let copied = tokio::io::copy_buf(&mut stream, &mut tokio::io::sink())
        .await
        .expect("download");
    assert_eq!(copied, SIZE as u64);
    report(
        "ferry download",
        t0.elapsed().as_secs_f64(),
        cpu(libc::RUSAGE_SELF) - c0,
        smbd.cpu_seconds() - s0,
    );

    // And once more into a file, to check the bytes.
    let stream = host.read("/bench/by-smbclient.bin", 0).await.expect("read");
    let mut stream = tokio::io::BufReader::with_capacity(1 << 20, stream);
    let mut out = tokio::fs::File::create(work.path().join("fetched-by-ferry.bin"))
        .await
        .expect("create");
    tokio::io::copy_buf(&mut stream, &mut out)
        .await
        .expect("download");
    out.flush().await.expect("flush");
    let a = std::fs::read(work.path().join("fetched-by-ferry.bin")).expect("fetched");
    let b = std::fs::read(&source).expect("source");
    assert!(a == b, "the downloaded file differs from the source");
}
