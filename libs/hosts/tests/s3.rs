//! The s3 host against moto's S3 server (`ferry_testkit::peers::s3`): the conformance suite
//! (multipart and read-back staging), and what a user sees when the secret is wrong, the bucket
//! is missing, the server dies mid-upload or stops answering, and a 40 MiB multipart round trip.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_hosts::{DynHost, ErrorKind, conformance, path};
use ferry_testkit::peers::s3::{Auth, BUCKET, S3Server};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

mod common;
use common::{expect_err, sealed, sha, stored_sha, target};

const PART: u64 = 5 << 20;

/// A host named `bucket` on moto, built the way the services build it (sealed secret).
/// `settings` are extra TOML lines of the `[[host]]` table.
fn host(moto: &S3Server, settings: &str) -> (DynHost, tempfile::TempDir) {
    host_with(
        moto,
        moto.access_key_id(),
        moto.secret_access_key(),
        BUCKET,
        settings,
    )
}

fn host_with(
    moto: &S3Server,
    key_id: &str,
    secret: &str,
    bucket: &str,
    settings: &str,
) -> (DynHost, tempfile::TempDir) {
    let toml = format!(
        "[[host]]\nname = \"bucket\"\nkind = \"s3\"\nbucket = \"{bucket}\"\nendpoint = \"{}\"\n\
         path_style = true\nallow_http = true\naccess_key_id = \"{key_id}\"\n\
         secret_access_key = \"{secret}\"\nconnect_timeout_secs = 5\n{settings}\n",
        moto.endpoint()
    );
    let toml = if settings.contains("operation_timeout_secs") {
        toml
    } else {
        format!("{toml}operation_timeout_secs = 10\n")
    };
    sealed(&toml, "bucket")
}

#[tokio::test]
async fn conformance_multipart_with_authentication() {
    let moto = S3Server::start_with(Auth::Iam).expect("moto");
    // 5 MiB parts: the suite's 9 MiB file goes up in two parts, the rest in one put each.
    let (host, _keys) = host(&moto, &format!("part_bytes = {PART}"));
    host.create_dir_all("suite").await.expect("folder");
    conformance::run(&host, "suite").await.expect("conformance");
    let probe = host.probe("suite").await.expect("probe");
    assert!(
        probe.server.as_deref().is_some_and(|s| s.contains("Werkzeug")),
        "{probe:?}"
    );
    assert!(!probe.capabilities.server_sha256 && !probe.capabilities.rename_noreplace);
}

#[tokio::test]
async fn conformance_read_back() {
    let moto = S3Server::start().expect("moto");
    let (host, _keys) = host(&moto, &format!("part_bytes = {PART}\nverify = \"read_back\""));
    host.create_dir_all("/suite").await.expect("folder");
    conformance::run(&host, "/suite").await.expect("conformance");
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_the_servers_code() {
    let moto = S3Server::start_with(Auth::Iam).expect("moto");
    let wrong = "wrong-secret-never-shown-0123456789";
    let (host, _keys) = host_with(&moto, moto.access_key_id(), wrong, BUCKET, "");
    let e = expect_err("list", host.list("", false).await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    let text = e.to_string();
    assert!(text.starts_with("host \"bucket\": list"), "{text}");
    assert!(
        text.contains("authentication failed (403 SignatureDoesNotMatch"),
        "{text}"
    );
    assert!(
        !text.contains(wrong) && !format!("{e:?}").contains(wrong),
        "{text}"
    );
    // Writing fails the same way, at the commit (a small file is put in one request).
    let mut upload = host.write(&target("in", "a.csv", 3)).await.expect("write");
    upload.write(Bytes::from_static(b"abc")).await.expect("buffered");
    let mut staged = upload.finish().await.expect("finish");
    let e = expect_err("commit", staged.commit("in/a.csv", true).await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(
        e.message.contains("SignatureDoesNotMatch") && !e.message.contains(wrong),
        "{e}"
    );
    // An unknown key id.
    let (host, _keys) = host_with(&moto, "AKIANOSUCHKEY0000000", wrong, BUCKET, "");
    let e = expect_err("list", host.list("", false).await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(
        e.message
            .contains("authentication failed (403 InvalidAccessKeyId"),
        "{e}"
    );
}

#[tokio::test]
async fn a_missing_bucket_is_a_clear_permanent_error() {
    let moto = S3Server::start().expect("moto");
    let (host, _keys) = host_with(
        &moto,
        moto.access_key_id(),
        moto.secret_access_key(),
        "no-such-bucket",
        "",
    );
    for e in [
        expect_err("list", host.list("in", false).await),
        expect_err("probe", host.probe("in").await),
        expect_err("stat", host.stat("in/a.csv").await),
        expect_err("create folder", host.create_dir_all("in").await),
    ] {
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert!(
            e.message
                .contains("bucket \"no-such-bucket\" does not exist (404 NoSuchBucket"),
            "{e}"
        );
    }
    let e = expect_err("put", conformance::put(&host, "in", "a.csv", b"abc", false).await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(e.message.contains("NoSuchBucket"), "{e}");
}

#[tokio::test]
async fn forty_mib_go_up_in_parts_and_read_back_identical() {
    let moto = S3Server::start().expect("moto");
    let (host, _keys) = host(&moto, &format!("part_bytes = {PART}"));
    host.create_dir_all("big").await.expect("folder");
    let data = conformance::content(40 << 20, 11);
    assert!(
        conformance::put(&host, "big", "forty.bin", &data, false)
            .await
            .expect("put")
    );
    assert_eq!(
        stored_sha(&host, "big/forty.bin").await,
        (data.len() as u64, sha(&data))
    );
    let listed = host.list("big", false).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].rel_path.as_str(), listed[0].size),
        ("forty.bin", 40 << 20)
    );
    let tail = conformance::get(&host, "big/forty.bin", (40 << 20) - 7)
        .await
        .expect("tail");
    assert_eq!(tail, data[data.len() - 7..]);
    assert!(
        conformance::get(&host, "big/forty.bin", 40 << 20)
            .await
            .expect("at end")
            .is_empty()
    );
    // A second multipart create-new is refused (checked before completing) and changes nothing.
    let other = conformance::content(12 << 20, 12);
    assert!(
        !conformance::put(&host, "big", "forty.bin", &other, false)
            .await
            .expect("put again")
    );
    assert_eq!(stored_sha(&host, "big/forty.bin").await.1, sha(&data));
}

#[tokio::test]
async fn a_server_killed_mid_upload_is_transient_and_a_retry_completes() {
    let mut moto = S3Server::start().expect("moto");
    let (host, _keys) = host(&moto, &format!("part_bytes = {PART}"));
    host.create_dir_all("in").await.expect("folder");
    let data = conformance::content(40 << 20, 21);
    let t = target("in", "killed.bin", data.len() as u64);
    let mut upload = host.write(&t).await.expect("write");
    let mut chunks = data.chunks(256 << 10);
    for chunk in chunks.by_ref().take(80) {
        upload
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write before the kill");
    }
    assert!(
        host.stat(&t.final_path()).await.expect("stat").is_none(),
        "the final key is visible while parts go up"
    );
    moto.kill();
    let started = Instant::now();
    let mut failed = None;
    for chunk in chunks {
        if let Err(e) = upload.write(Bytes::copy_from_slice(chunk)).await {
            failed = Some(e);
            break;
        }
    }
    let e = match failed {
        Some(e) => e,
        None => expect_err("finish", upload.finish().await.map(|_| ())),
    };
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    moto.restart().expect("restart");
    assert!(host.stat(&t.final_path()).await.expect("stat").is_none());
    // The next attempt (what transfer does after its retry wait) goes through.
    assert!(
        conformance::put(&host, "in", "killed.bin", &data, true)
            .await
            .expect("retry")
    );
    assert_eq!(stored_sha(&host, &t.final_path()).await.1, sha(&data));
}

#[tokio::test]
async fn a_stalled_server_ends_in_a_transient_error() {
    let moto = S3Server::start().expect("moto");
    let (host, _keys) = host(&moto, "operation_timeout_secs = 2");
    host.create_dir_all("in").await.expect("folder");
    let pid = moto.pid().expect("running") as libc::pid_t;
    // SAFETY: signalling our own child process; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let result = host.list("in", false).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let e = expect_err("list", result);
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

/// `cargo test -p ferry-hosts --no-default-features --features object --test s3 -- --ignored
/// --nocapture`: this host against `rclone copy` to the same moto, in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on purpose"]
async fn bench_against_rclone() {
    bench::run().await;
}

mod bench {
    use std::path::Path;
    use std::process::Command;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    /// CPU seconds (user + system) of process `pid`, from /proc.
    fn cpu_of(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .collect();
        let ticks: f64 = fields
            .get(11..13)
            .map_or(0.0, |f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum());
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    fn rusage(who: libc::c_int) -> f64 {
        // SAFETY: getrusage writes into the zeroed struct we pass.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(u.ru_utime) + t(u.ru_stime)
    }

    struct Run {
        secs: f64,
        client_cpu: f64,
        server_cpu: f64,
    }

    async fn upload_all(host: &DynHost, dir: &Path, folder: &str, moto: u32) -> Run {
        let (cpu0, srv0, t0) = (rusage(libc::RUSAGE_SELF), cpu_of(moto), Instant::now());
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        host.create_dir_all(folder).await.expect("folder");
        // Four at a time, as rclone's default --transfers 4.
        let files = Arc::new(std::sync::Mutex::new(files));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (host, files, folder) = (host.clone(), files.clone(), folder.to_string());
            workers.push(tokio::spawn(async move {
                loop {
                    let Some(p) = files.lock().expect("lock").pop() else {
                        break;
                    };
                    let name = p.file_name().expect("name").to_string_lossy().into_owned();
                    let size = std::fs::metadata(&p).expect("meta").len();
                    let mut file = tokio::fs::File::open(&p).await.expect("open");
                    let mut upload = host.write(&target(&folder, &name, size)).await.expect("write");
                    let mut hasher = Sha256::new();
                    loop {
                        let mut buf = vec![0u8; 1 << 20];
                        let n = file.read(&mut buf).await.expect("read");
                        if n == 0 {
                            break;
                        }
                        buf.truncate(n);
                        hasher.update(&buf);
                        upload.write(Bytes::from(buf)).await.expect("upload");
                    }
                    let mut staged = upload.finish().await.expect("finish");
                    staged
                        .verify(size, &hex::encode(hasher.finalize()))
                        .await
                        .expect("verify");
                    assert!(
                        staged
                            .commit(&path::join(&folder, &name), true)
                            .await
                            .expect("commit")
                    );
                }
            }));
        }
        for w in workers {
            w.await.expect("worker");
        }
        Run {
            secs: t0.elapsed().as_secs_f64(),
            client_cpu: rusage(libc::RUSAGE_SELF) - cpu0,
            server_cpu: cpu_of(moto) - srv0,
        }
    }

    fn rclone(moto: &S3Server, dir: &Path, folder: &str) -> Run {
        let (cpu0, srv0, t0) = (
            rusage(libc::RUSAGE_CHILDREN),
            cpu_of(moto.pid().expect("pid")),
            Instant::now(),
        );
        let remote = format!(
            ":s3,provider=Other,access_key_id={},secret_access_key={},endpoint='{}',force_path_style=true:{BUCKET}/{folder}",
            moto.access_key_id(),
            moto.secret_access_key(),
            moto.endpoint()
        );
        let status = Command::new("rclone")
            // rclone 1.60 fails on a CA bundle setting with its own HTTP transport.
            .env_remove("AWS_CA_BUNDLE")
            .arg("copy")
            .arg(dir)
            .arg(&remote)
            // The host's part size and concurrency. `--s3-no-head`: rclone's check after a
            // multipart upload asks for `versionId=null`, which moto sometimes answers with 400
            // (and rclone then runs the copy again).
            .args([
                "--transfers",
                "4",
                "--s3-chunk-size",
                "16M",
                "--s3-upload-cutoff",
                "16M",
            ])
            .arg("--s3-no-head")
            .status()
            .expect("run rclone");
        assert!(status.success());
        Run {
            secs: t0.elapsed().as_secs_f64(),
            client_cpu: rusage(libc::RUSAGE_CHILDREN) - cpu0,
            server_cpu: cpu_of(moto.pid().expect("pid")) - srv0,
        }
    }

    fn report(what: &str, bytes: u64, files: u64, ours: &Run, theirs: &Run) {
        let mib = bytes as f64 / (1 << 20) as f64;
        println!(
            "{what}: ferry {:.2} s ({:.1} MiB/s, {:.0} files/s, cpu {:.2} s, moto cpu {:.2} s) | rclone {:.2} s ({:.1} MiB/s, {:.0} files/s, cpu {:.2} s, moto cpu {:.2} s) | ratio {:.2}x",
            ours.secs,
            mib / ours.secs,
            files as f64 / ours.secs,
            ours.client_cpu,
            ours.server_cpu,
            theirs.secs,
            mib / theirs.secs,
            files as f64 / theirs.secs,
            theirs.client_cpu,
            theirs.server_cpu,
            theirs.secs / ours.secs
        );
    }

    pub async fn run() {
        let moto = S3Server::start().expect("moto");
        let pid = moto.pid().expect("pid");
        let (host, _keys) = host(&moto, "");
        let work = tempfile::tempdir().expect("tempdir");
        // 1 GiB, one file.
        let big = work.path().join("big");
        std::fs::create_dir(&big).expect("mkdir");
        // No two parts alike (xorshift64), so no server can take a shortcut.
        let mut f = std::io::BufWriter::new(std::fs::File::create(big.join("one.bin")).expect("create"));
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..(1u64 << 30) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            std::io::Write::write_all(&mut f, &x.to_le_bytes()).expect("write");
        }
        drop(f);
        let theirs = rclone(&moto, &big, "rclone-big");
        let ours = upload_all(&host, &big, "ferry-big", pid).await;
        report("1 GiB x 1", 1 << 30, 1, &ours, &theirs);
        // 1,000 x 64 KiB.
        let small = work.path().join("small");
        std::fs::create_dir(&small).expect("mkdir");
        for i in 0..1000u32 {
            std::fs::write(
                small.join(format!("f{i:04}.bin")),
                conformance::content(64 << 10, i as u8),
            )
            .expect("write");
        }
        let theirs = rclone(&moto, &small, "rclone-small");
        let ours = upload_all(&host, &small, "ferry-small", pid).await;
        report("64 KiB x 1000", 1000 * (64 << 10), 1000, &ours, &theirs);
    }
}
