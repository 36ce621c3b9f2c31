//! The FTP host against a real vsftpd (as root: vsftpd logs in system users): the conformance
//! suite over plain FTP, explicit FTPS with TLS session reuse required, and implicit FTPS; active
//! mode; certificate trust and client certificates; login and sign-on failures; a server killed
//! mid-upload and a frozen one.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_hosts::{DynHost, ErrorKind, WriteTarget, conformance, path};
use ferry_testkit::peers::vsftpd::{FtpTls, Vsftpd, VsftpdConfig};
use ferry_testkit::peers::{TEST_PASSWORD, TEST_USER};
use tokio::io::AsyncReadExt;

mod common;
use common::{sealed, sha};

/// A host on `peer` as the services build it: TOML with the plain password, sealed, validated,
/// connected. `extra` adds lines to the `[[host]]` table.
fn host(peer: &Vsftpd, tls: &str, extra: &str) -> (DynHost, tempfile::TempDir) {
    let toml = format!(
        "[[host]]\nname = \"partner\"\nkind = \"ftp\"\naddress = \"127.0.0.1\"\nport = {port}\n\
         user = \"{TEST_USER}\"\npassword = \"{TEST_PASSWORD}\"\ntls = \"{tls}\"\n\
         connect_timeout_secs = 5\noperation_timeout_secs = 5\n{extra}\n",
        port = peer.port()
    );
    sealed(&toml, "partner")
}

fn ca_line(peer: &Vsftpd) -> String {
    format!(
        "ca_file = \"{}\"",
        peer.pki().expect("a TLS peer").ca_cert.display()
    )
}

#[tokio::test]
async fn plain_ftp_passes_the_conformance_suite() {
    let peer = Vsftpd::start(VsftpdConfig::new(FtpTls::None)).expect("vsftpd");
    let (host, _keys) = host(&peer, "none", "sign_on_commands = [\"SITE UMASK 022\"]");
    // A folder relative to the login folder.
    host.create_dir_all("suite").await.expect("create folder");
    conformance::run(&host, "suite").await.expect("conformance");
}

#[tokio::test]
async fn explicit_ftps_with_session_reuse_passes_the_conformance_suite() {
    let peer = Vsftpd::start(VsftpdConfig::new(FtpTls::Explicit)).expect("vsftpd");
    let (host, _keys) = host(&peer, "explicit", &ca_line(&peer));
    let folder = peer.root().join("suite");
    std::fs::create_dir(&folder).expect("mkdir");
    ferry_testkit::peers::chown_to(&folder, TEST_USER).expect("chown");
    conformance::run(&host, &folder.to_string_lossy())
        .await
        .unwrap_or_else(|e| panic!("{e}\nvsftpd log:\n{}", peer.log()));
    // `ferry host test` shows the certificate and that data connections resumed the session.
    let missing = host.probe("no-such-folder").await.expect_err("missing folder");
    assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
    let probe = host.probe("suite").await.expect("probe");
    assert_eq!(probe.server.as_deref(), Some("vsFTPd 3.0.3"));
    assert_eq!(probe.tls_subject.as_deref(), Some("CN=127.0.0.1"));
    assert!(probe.tls_not_after.is_some());
    let resumed = probe
        .notes
        .iter()
        .find(|n| n.starts_with("data connection TLS sessions resumed"))
        .expect("a resumption note");
    let (resumed, of) = resumed
        .rsplit_once(": ")
        .and_then(|(_, n)| n.split_once(" of "))
        .expect("N of M");
    assert!(resumed == of && of != "0", "{probe:?}");
}

#[tokio::test]
async fn implicit_ftps_passes_the_conformance_suite() {
    let peer = Vsftpd::start(VsftpdConfig::new(FtpTls::Implicit)).expect("vsftpd");
    let (host, _keys) = host(&peer, "implicit", &ca_line(&peer));
    host.create_dir_all("suite").await.expect("create folder");
    conformance::run(&host, "suite").await.expect("conformance");
}

#[tokio::test]
async fn active_mode_works_over_ftps() {
    let peer = Vsftpd::start(VsftpdConfig::new(FtpTls::Explicit)).expect("vsftpd");
    let (host, _keys) = host(
        &peer,
        "explicit",
        &format!("{}\nmode = \"active\"", ca_line(&peer)),
    );
    let data = conformance::content(3 << 20, 1);
    host.create_dir_all("active/in").await.expect("create folder");
    assert!(
        conformance::put(&host, "active/in", "a.bin", &data, false)
            .await
            .expect("put")
    );
    assert_eq!(
        conformance::get(&host, "active/in/a.bin", 0).await.expect("get"),
        data
    );
    let listed = host.list("active", true).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].rel_path.as_str(), listed[0].size),
        ("in/a.bin", 3 << 20)
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_ca_file_trusts_it() {
    let peer = Vsftpd::start(VsftpdConfig::new(FtpTls::Explicit)).expect("vsftpd");
    let (untrusting, _keys) = host(&peer, "explicit", "");
    let e = untrusting
        .list("", false)
        .await
        .expect_err("the test CA is not a system root");
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(
        e.message
            .contains("certificate for 127.0.0.1 is not trusted: UnknownIssuer"),
        "{e}"
    );
    let (trusting, _keys) = host(&peer, "explicit", &ca_line(&peer));
    trusting.list("", false).await.expect("trusted with ca_file");
    let (anything, _keys) = host(&peer, "explicit", "insecure_accept_any_certificate = true");
    anything.list("", false).await.expect("trusts anything");
}

#[tokio::test]
async fn a_required_client_certificate_is_presented_and_missing_one_refused() {
    let peer = Vsftpd::start(VsftpdConfig {
        tls: FtpTls::Explicit,
        require_client_cert: true,
    })
    .expect("vsftpd");
    let pki = peer.pki().expect("TLS").clone();
    let (without, _keys) = host(&peer, "explicit", &ca_line(&peer));
    let e = without.list("", false).await.expect_err("no client certificate");
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(e.message.contains("requires a client certificate"), "{e}");
    let (with, _keys) = host(
        &peer,
        "explicit",
        &format!(
            "{}\nclient_cert = \"{}\"\nclient_key = \"file:{}\"",
            ca_line(&peer),
            pki.client_cert.display(),
            pki.client_key.display()
        ),
    );
    with.create_dir_all("certified").await.expect("create folder");
    assert!(
        conformance::put(&with, "certified", "c.txt", b"signed in", false)
            .await
            .unwrap_or_else(|e| panic!("{e}\nvsftpd log:\n{}", peer.log()))
    );
    assert_eq!(with.list("certified", false).await.expect("list").len(), 1);
}

#[tokio::test]
async fn a_wrong_password_is_permanent_and_quotes_the_server() {
    let peer = Vsftpd::start(VsftpdConfig::new(FtpTls::None)).expect("vsftpd");
    let (host, _keys) = host(&peer, "none", "");
    // Same host, wrong password: rebuild from TOML with another password.
    let wrong = "not-the-password-42";
    let toml = format!(
        "[[host]]\nname = \"partner\"\nkind = \"ftp\"\naddress = \"127.0.0.1\"\nport = {}\n\
         user = \"{TEST_USER}\"\npassword = \"{wrong}\"\ntls = \"none\"\n",
        peer.port()
    );
    let (bad, _bad_keys) = sealed(&toml, "partner");
    let e = bad.list("", false).await.expect_err("wrong password");
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert_eq!(
        e.to_string(),
        format!("host \"partner\": log in as {TEST_USER}: 530 Login incorrect.")
    );
    assert!(!format!("{e:?}").contains(wrong));
    // The right password still works on the same server.
    host.list("", false).await.expect("login");
}

#[tokio::test]
async fn a_failing_sign_on_command_fails_the_connection() {
    let peer = Vsftpd::start(VsftpdConfig::new(FtpTls::None)).expect("vsftpd");
    let (host, _keys) = host(
        &peer,
        "none",
        "sign_on_commands = [\"SITE UMASK 022\", \"SITE NOSUCH\"]",
    );
    let e = host.list("", false).await.expect_err("SITE NOSUCH is refused");
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert_eq!(
        e.message,
        "sign-on command \"SITE NOSUCH\": 500 Unknown SITE command."
    );
}

#[tokio::test]
async fn a_server_killed_mid_upload_is_transient_and_the_upload_resumes() {
    let mut peer = Vsftpd::start(VsftpdConfig::new(FtpTls::Explicit)).expect("vsftpd");
    let (host, _keys) = host(&peer, "explicit", &ca_line(&peer));
    host.create_dir_all("resume").await.expect("create folder");
    let data = conformance::content(24 << 20, 4);
    let target = WriteTarget {
        dir: "resume".into(),
        name: "big.bin".into(),
        temp_name: path::temp_name("0123456789abcdef", 0),
        size_hint: data.len() as u64,
        resume: true,
        mode: None,
    };
    let mut upload = host.write(&target).await.expect("write");
    assert_eq!(upload.offset(), 0);
    let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
    for chunk in &chunks[..8] {
        upload
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write chunk");
    }
    peer.kill();
    let started = Instant::now();
    let mut failure = None;
    for chunk in &chunks[8..] {
        if let Err(e) = upload.write(Bytes::copy_from_slice(chunk)).await {
            failure = Some(e);
            break;
        }
    }
    let e = match failure {
        Some(e) => e,
        None => upload.finish().await.err().expect("the server is gone"),
    };
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    peer.restart().expect("restart");
    let mut again = host.write(&target).await.expect("write again");
    let offset = again.offset();
    assert!(offset > 0 && offset <= 8 << 20, "resumed at {offset}");
    again
        .write(Bytes::copy_from_slice(&data[offset as usize..]))
        .await
        .expect("write the rest");
    let mut staged = again.finish().await.expect("finish");
    staged
        .verify(data.len() as u64, &sha(&data))
        .await
        .expect("verify");
    assert!(staged.commit(&target.final_path(), false).await.expect("commit"));
    let stored = std::fs::read(peer.root().join("resume/big.bin")).expect("stored file");
    assert!(stored == data, "the resumed file differs");
}

#[tokio::test]
async fn a_frozen_server_times_out_instead_of_hanging() {
    let mut peer = Vsftpd::start(VsftpdConfig::new(FtpTls::None)).expect("vsftpd");
    let (host, _keys) = host(&peer, "none", "");
    host.create_dir_all("frozen").await.expect("create folder");
    let target = WriteTarget {
        dir: "frozen".into(),
        name: "f.bin".into(),
        temp_name: path::temp_name("fedcba9876543210", 0),
        size_hint: 64 << 20,
        resume: false,
        mode: None,
    };
    let mut upload = host.write(&target).await.expect("write");
    upload
        .write(Bytes::from(conformance::content(1 << 20, 2)))
        .await
        .expect("write chunk");
    peer.pause();
    let started = Instant::now();
    let chunk = Bytes::from(conformance::content(4 << 20, 3));
    let e = loop {
        // Socket buffers take a few MiB before writes block.
        match upload.write(chunk.clone()).await {
            Ok(()) => assert!(started.elapsed() < Duration::from_secs(20), "never blocked"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(e.message.contains("no progress within 5 s"), "{e}");
    drop(upload);
    // A new request meets the frozen server too: the connect timeout ends it.
    let started = Instant::now();
    let e = host.list("frozen", false).await.expect_err("frozen");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?}",
        started.elapsed()
    );
    peer.resume();
}

/// Measurement, not a check (`--ignored`): a 1 GiB upload through the host against `lftp` and
/// `curl -T` in the same run, plain FTP and explicit FTPS, with the CPU time of each client and of
/// the vsftpd session serving it. Run it alone, in release:
/// `cargo test --release -p ferry-hosts --no-default-features --features ftp --test ftp -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: 1 GiB transfers, run on its own"]
async fn bench_upload_1gib_against_lftp_and_curl() {
    use std::io::Write;

    const SIZE: usize = 1 << 30;
    let work = tempfile::tempdir().expect("tempdir");
    let source = work.path().join("source.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&source).expect("create"));
        let block = conformance::content(8 << 20, 9);
        for _ in 0..SIZE / block.len() {
            f.write_all(&block).expect("write source");
        }
    }
    for tls in [FtpTls::None, FtpTls::Explicit] {
        let peer = Vsftpd::start(VsftpdConfig::new(tls)).expect("vsftpd");
        let (tls_name, tls_args_lftp, tls_args_curl, extra) = match tls {
            FtpTls::None => ("none", "set ftp:ssl-allow no;".to_string(), vec![], String::new()),
            _ => {
                let ca = peer.pki().expect("TLS").ca_cert.display().to_string();
                (
                    "explicit",
                    format!("set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file {ca};"),
                    vec!["--ssl-reqd".to_string(), "--cacert".to_string(), ca],
                    ca_line(&peer),
                )
            }
        };
        let (host, _keys) = host(&peer, tls_name, &extra);
        let url = format!("ftp://127.0.0.1:{}/", peer.port());
        println!("--- 1 GiB upload, tls = {tls_name} ---");
        // Each client goes first, second and third once; dirty pages are flushed before each run.
        // `ferry-mem` sends one 1 MiB buffer over and over: the host's own cost, without reading a
        // source file.
        let orders = [
            ["ferry", "lftp", "curl", "ferry-mem"],
            ["curl", "ferry", "lftp", "ferry-mem"],
            ["lftp", "curl", "ferry", "ferry-mem"],
        ];
        for (round, order) in orders.iter().enumerate() {
            for &client in order {
                let dest = format!("{client}-{round}.bin");
                let _ = std::process::Command::new("sync").status();
                let server = ServerCpu::start();
                let (wall, cpu) = match client {
                    "ferry" | "ferry-mem" => {
                        let from = (client == "ferry").then_some(source.as_path());
                        let before = cpu_of(libc::RUSAGE_SELF);
                        let started = Instant::now();
                        upload_file(&host, from, SIZE, &dest).await;
                        (started.elapsed(), cpu_of(libc::RUSAGE_SELF) - before)
                    }
                    "lftp" => run_client(std::process::Command::new("lftp").arg("-c").arg(format!(
                        "{tls_args_lftp} open -u {TEST_USER},{TEST_PASSWORD} {url}; put {} -o {dest}",
                        source.display()
                    ))),
                    _ => run_client(
                        std::process::Command::new("curl")
                            .args(["-sS", "--user", &format!("{TEST_USER}:{TEST_PASSWORD}"), "-T"])
                            .arg(&source)
                            .args(&tls_args_curl)
                            .arg(format!("{url}{dest}")),
                    ),
                };
                let server_cpu = server.stop();
                let stored = peer.root().join(&dest);
                assert_eq!(
                    std::fs::metadata(&stored).map(|m| m.len()).unwrap_or(0),
                    SIZE as u64,
                    "{client} stored all bytes"
                );
                std::fs::remove_file(&stored).expect("remove");
                println!(
                    "{client:>9} round {round}: {:6.0} MiB/s  wall {:5.2} s  client CPU {:5.2} s  vsftpd CPU {:5.2} s",
                    SIZE as f64 / (1 << 20) as f64 / wall.as_secs_f64(),
                    wall.as_secs_f64(),
                    cpu.as_secs_f64(),
                    server_cpu.as_secs_f64(),
                );
            }
        }
    }
}

/// Upload `source` as `dest` the way the transfer service does: 1 MiB chunks read ahead on a
/// task of their own (from the file through tokio, or one buffer repeated when `source` is
/// `None`), then finish, size check, commit.
async fn upload_file(host: &DynHost, source: Option<&std::path::Path>, size: usize, dest: &str) {
    const CHUNK: usize = 1 << 20;
    let target = WriteTarget {
        dir: String::new(),
        name: dest.to_string(),
        temp_name: path::temp_name(&sha(dest.as_bytes()), 0),
        size_hint: size as u64,
        resume: false,
        mode: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let source = source.map(std::path::Path::to_path_buf);
    let reader = tokio::spawn(async move {
        let Some(source) = source else {
            let block = Bytes::from(conformance::content(CHUNK, 5));
            for _ in 0..size / CHUNK {
                if tx.send(block.clone()).await.is_err() {
                    return;
                }
            }
            return;
        };
        let mut f = tokio::fs::File::open(&source).await.expect("open");
        loop {
            let mut chunk = bytes::BytesMut::with_capacity(CHUNK);
            while chunk.len() < CHUNK {
                if f.read_buf(&mut chunk).await.expect("read") == 0 {
                    break;
                }
            }
            if chunk.is_empty() || tx.send(chunk.freeze()).await.is_err() {
                return;
            }
        }
    });
    let mut upload = host.write(&target).await.expect("write");
    let mut sent = 0u64;
    while let Some(chunk) = rx.recv().await {
        sent += chunk.len() as u64;
        upload.write(chunk).await.expect("write chunk");
    }
    reader.await.expect("reader");
    let mut staged = upload.finish().await.expect("finish");
    staged.verify(sent, "").await.expect("size check");
    assert!(staged.commit(&target.final_path(), true).await.expect("commit"));
}

fn cpu_of(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn run_client(command: &mut std::process::Command) -> (Duration, Duration) {
    let before = cpu_of(libc::RUSAGE_CHILDREN);
    let started = Instant::now();
    let out = command.output().expect("run client");
    let wall = started.elapsed();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (wall, cpu_of(libc::RUSAGE_CHILDREN) - before)
}

/// CPU time of vsftpd session processes, sampled from /proc while a transfer runs (sessions exit
/// with their client, so the last sample of each counts).
struct ServerCpu {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Duration>,
}

impl ServerCpu {
    fn start() -> ServerCpu {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let tick = Duration::from_secs(1) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u32;
            let mut first = std::collections::HashMap::<u32, u64>::new();
            let mut last = std::collections::HashMap::<u32, u64>::new();
            loop {
                for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
                    let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                        continue;
                    };
                    let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                        continue;
                    };
                    if !stat.contains("(vsftpd)") {
                        continue;
                    }
                    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..].split(' ').collect();
                    let ticks =
                        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
                    first.entry(pid).or_insert(ticks);
                    last.insert(pid, ticks);
                }
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let ticks: u64 = last
                .iter()
                .map(|(pid, t)| t - first.get(pid).copied().unwrap_or(0))
                .sum();
            tick * ticks as u32
        });
        ServerCpu { stop, thread }
    }

    fn stop(self) -> Duration {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}
