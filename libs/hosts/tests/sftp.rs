//! The sftp host against a real OpenSSH `sshd` (needs root and Debian's openssh-server: see
//! `ferry_testkit::peers::sshd`): the conformance suite, every way to log in and to check the
//! server's key, the commit fallbacks for servers without posix-rename or hardlink, a second
//! server implementation (`rclone serve sftp`), and what a user sees when the password is wrong,
//! the key is not the pinned one, the server dies mid-upload (then the upload resumes), or stops
//! answering. At the end: a benchmark against OpenSSH's `sftp` and `rclone`, run by hand.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_config::HostSpec;
use ferry_hosts::sftp::SftpHost;
use ferry_hosts::{DynHost, ErrorKind, HostError, WriteTarget, conformance, path};
use ferry_testkit::peers::sshd::{Sshd, SshdAuth};
use ferry_testkit::peers::{TEST_PASSWORD, TEST_USER};
use tokio::io::AsyncReadExt;

mod common;
use common::{expect_err, sha};

/// The configuration of a host named `partner` on `sshd`, sealed the way a stored configuration
/// is, with the keymat that opens it. `settings` are the TOML lines for credentials and the host
/// key check.
fn config(sshd: &Sshd, settings: &str) -> (ferry_config::Host, ferry_keymat::KeymatStore, tempfile::TempDir) {
    config_for(sshd.port(), settings)
}

fn config_for(
    port: u16,
    settings: &str,
) -> (ferry_config::Host, ferry_keymat::KeymatStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ferry_keymat::KeymatStore::open_or_create(&dir.path().join("keymat")).expect("keymat");
    let keymat = store.current().expect("keymat");
    let timeouts = if settings.contains("timeout_secs") {
        ""
    } else {
        "connect_timeout_secs = 5\noperation_timeout_secs = 5\n"
    };
    let toml = format!(
        "[[host]]\nname = \"partner\"\nkind = \"sftp\"\naddress = \"127.0.0.1\"\nport = {port}\n\
         user = \"{TEST_USER}\"\n{timeouts}{settings}\n"
    );
    let mut raw = ferry_config::parse_toml(&toml).expect("parse");
    ferry_keymat::seal_config(&mut raw, &keymat.public()).expect("seal");
    let config = raw.validate().expect("valid configuration");
    (config.hosts["partner"].clone(), store, dir)
}

/// A host named `partner` on `sshd`, built the way the services build it.
fn host(sshd: &Sshd, settings: &str) -> (DynHost, tempfile::TempDir) {
    let (config, store, dir) = config(sshd, settings);
    let host = ferry_hosts::connect(&config, &store).expect("build host");
    (host, dir)
}

/// Password login, the server's key pinned.
fn password_host(sshd: &Sshd) -> (DynHost, tempfile::TempDir) {
    host(
        sshd,
        &format!(
            "password = \"{TEST_PASSWORD}\"\nhost_key_sha256 = [\"{}\"]",
            sshd.host_key_sha256()
        ),
    )
}

/// Write, commit and read back one small file.
async fn round_trip(host: &DynHost, folder: &str) {
    let data = conformance::content(300_000, 11);
    assert!(
        conformance::put(host, folder, "hello.bin", &data, true)
            .await
            .expect("put")
    );
    let back = conformance::get(host, &path::join(folder, "hello.bin"), 0)
        .await
        .expect("get");
    assert!(back == data, "read back different bytes");
}

#[tokio::test]
async fn conformance_with_password_and_a_pinned_key() {
    let sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let folder = sshd.folder("suite").expect("folder");
    let folder = folder.to_string_lossy();
    let (host, _keys) = password_host(&sshd);
    conformance::run(&host, &folder).await.expect("conformance");
    let probe = host.probe(&folder).await.expect("probe");
    assert!(
        probe.server.as_deref().is_some_and(|s| s.starts_with("OpenSSH_")),
        "{probe:?}"
    );
    assert_eq!(probe.host_key_sha256.as_deref(), Some(sshd.host_key_sha256()));
    let caps = host.capabilities();
    assert!(
        caps.atomic_rename && caps.rename_noreplace && caps.durable && caps.resume,
        "{caps:?}"
    );
    assert!(
        probe.notes.iter().any(|n| n.contains("posix-rename@openssh.com")),
        "{:?}",
        probe.notes
    );
    let missing = expect_err("probe a missing folder", host.probe("/no/such/folder").await);
    assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
    // The peer's own folder belongs to root: the test user may not write there.
    let denied = WriteTarget {
        dir: path::parent(&folder).to_string(),
        name: "denied.bin".into(),
        temp_name: path::temp_name(&sha(b"denied.bin"), 0),
        size_hint: 1,
        resume: false,
        mode: None,
    };
    let e = expect_err("write where it may not", host.write(&denied).await.map(|_| ()));
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(e.message.contains("permission denied"), "{e}");
}

/// Without posix-rename a replacing commit removes, then renames; with posix-rename but no
/// hardlink a create-new commit checks, then renames (and says `rename_noreplace: false`).
/// (Neither extension — create-new by plain SFTP rename — cannot be imitated on OpenSSH: the
/// client library sends posix-rename whenever the server offers it.)
#[tokio::test]
async fn servers_without_posix_rename_or_hardlink_still_commit_safely() {
    let sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let settings = format!(
        "password = \"{TEST_PASSWORD}\"\nhost_key_sha256 = [\"{}\"]",
        sshd.host_key_sha256()
    );
    for (posix_rename, hardlink, noreplace) in [(false, true, true), (true, false, false)] {
        let (config, store, _dir) = config(&sshd, &settings);
        let HostSpec::Sftp(spec) = &config.spec else {
            panic!("an sftp host")
        };
        let keymat = store.current().expect("keymat");
        let open = |field: &str, secret: &ferry_config::Secret| {
            keymat
                .open(&ferry_config::Secret::binding("partner", field), secret)
                .map_err(|e| HostError::permanent("partner", e.to_string()))
        };
        let host = SftpHost::build_without_extensions(
            "partner",
            &config.options,
            spec,
            &open,
            posix_rename,
            hardlink,
        )
        .expect("build host");
        let folder = sshd
            .folder(&format!("fallback-{posix_rename}-{hardlink}"))
            .expect("folder");
        conformance::run(&host, &folder.to_string_lossy())
            .await
            .expect("conformance");
        let caps = host.capabilities();
        assert_eq!(
            (caps.atomic_rename, caps.rename_noreplace),
            (posix_rename, noreplace),
            "{caps:?}"
        );
    }
}

/// `rclone serve sftp`: a second SFTP implementation (Go's pkg/sftp, not OpenSSH), offering no
/// `limits@openssh.com` (so requests are 20 KiB) and no `fsync@openssh.com`.
struct RcloneSftp {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
    fingerprint: String,
}

impl RcloneSftp {
    fn start() -> RcloneSftp {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("host_ed25519");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen");
        assert!(made.success());
        let listed = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(key.with_extension("pub"))
            .output()
            .expect("ssh-keygen -lf");
        let fingerprint = String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .nth(1)
            .expect("a fingerprint")
            .to_string();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root");
        std::fs::write(dir.path().join("rclone.conf"), "").expect("rclone.conf");
        let port = ferry_testkit::peers::free_port().expect("port");
        let child = std::process::Command::new("rclone")
            .arg("--config")
            .arg(dir.path().join("rclone.conf"))
            .args(["serve", "sftp"])
            .arg(&root)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--user", TEST_USER, "--pass", TEST_PASSWORD])
            .args(["--vfs-cache-mode", "writes", "--cache-dir"])
            .arg(dir.path().join("cache"))
            .arg("--key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rclone serve sftp (install rclone)");
        ferry_testkit::peers::wait_port(port, Duration::from_secs(10), "rclone serve sftp", String::new)
            .expect("rclone listens");
        RcloneSftp {
            child,
            dir,
            port,
            fingerprint,
        }
    }
}

impl Drop for RcloneSftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The essentials against a server that is not OpenSSH. (Not the whole conformance suite: its
/// resume check reads a temp while the dropped upload's last writes still land, and rclone's
/// VFS then reports the file missing for a moment.)
#[tokio::test]
async fn works_with_another_implementation() {
    let server = RcloneSftp::start();
    std::fs::create_dir_all(server.dir.path().join("root/suite/sub")).expect("folder");
    let (config, store, _dir) = config_for(
        server.port,
        &format!(
            "password = \"{TEST_PASSWORD}\"\nhost_key_sha256 = [\"{}\"]",
            server.fingerprint
        ),
    );
    let host = ferry_hosts::connect(&config, &store).expect("build host");
    let probe = host.probe("/suite").await.expect("probe");
    assert!(
        probe.server.as_deref().is_some_and(|s| s.starts_with("rclone")),
        "{probe:?}"
    );
    let caps = probe.capabilities;
    // No fsync extension; and neither its hard links nor its plain renames are trusted to
    // refuse an existing name.
    assert!(
        !caps.durable && !caps.rename_noreplace && caps.atomic_rename,
        "{caps:?}"
    );

    // More than the read-ahead window, in the 20 KiB per request the server takes.
    let data = conformance::content(20 << 20, 3);
    assert!(
        conformance::put(&host, "/suite", "big.bin", &data, true)
            .await
            .expect("put")
    );
    let back = conformance::get(&host, "/suite/big.bin", 0).await.expect("get");
    assert!(back == data, "read back different bytes");
    let tail = conformance::get(&host, "/suite/big.bin", 12_345)
        .await
        .expect("get tail");
    assert!(tail == data[12_345..], "read from an offset differs");

    assert!(
        conformance::put(&host, "/suite/sub", "a.txt", b"first", false)
            .await
            .expect("put")
    );
    assert!(
        !conformance::put(&host, "/suite/sub", "a.txt", b"second", false)
            .await
            .expect("put"),
        "create-new replaced an existing file"
    );
    assert_eq!(
        conformance::get(&host, "/suite/sub/a.txt", 0).await.expect("get"),
        b"first"
    );
    assert!(
        conformance::put(&host, "/suite/sub", "a.txt", b"third", true)
            .await
            .expect("put")
    );
    assert_eq!(
        conformance::get(&host, "/suite/sub/a.txt", 0).await.expect("get"),
        b"third"
    );
    let listed = host.list("/suite", true).await.expect("list");
    let names: Vec<&str> = listed.iter().map(|e| e.rel_path.as_str()).collect();
    assert_eq!(names, ["big.bin", "sub/a.txt"]);
    assert_eq!(listed[0].size, data.len() as u64);
}

#[tokio::test]
async fn private_key_with_passphrase() {
    let sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let folder = sshd.folder("keyed").expect("folder");
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("id_ed25519");
    let passphrase = "key-passphrase-7";
    let made = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            passphrase,
            "-C",
            "ferry-test-user",
            "-f",
        ])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(made.success());
    sshd.authorize(&std::fs::read_to_string(key.with_extension("pub")).expect("public key"))
        .expect("authorize");
    let private = std::fs::read_to_string(&key).expect("private key");
    let pin = format!("host_key_sha256 = [\"{}\"]", sshd.host_key_sha256());

    let (keyed, _k) = host(
        &sshd,
        &format!("private_key = '''\n{private}'''\npassphrase = \"{passphrase}\"\n{pin}"),
    );
    round_trip(&keyed, &folder.to_string_lossy()).await;

    let (wrong, _k) = host(
        &sshd,
        &format!("private_key = '''\n{private}'''\npassphrase = \"not-the-passphrase\"\n{pin}"),
    );
    let e = expect_err("wrong passphrase", wrong.stat("/").await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(
        e.message.contains("passphrase is wrong") && !e.message.contains("not-the-passphrase"),
        "{e}"
    );
    assert!(sshd.log().contains("Accepted publickey for ferrytest"));
}

#[tokio::test]
async fn keyboard_interactive_login() {
    let sshd = Sshd::start(SshdAuth::KeyboardInteractive).expect("sshd");
    let folder = sshd.folder("kbd").expect("folder");
    let (host, _keys) = password_host(&sshd);
    round_trip(&host, &folder.to_string_lossy()).await;
    assert!(
        sshd.log()
            .contains("Accepted keyboard-interactive/pam for ferrytest"),
        "{}",
        sshd.log()
    );
}

#[tokio::test]
async fn a_wrong_password_is_permanent_and_never_shown() {
    let sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let (host, _keys) = host(
        &sshd,
        &format!(
            "password = \"wrong-password-123\"\nhost_key_sha256 = [\"{}\"]",
            sshd.host_key_sha256()
        ),
    );
    let e = expect_err("wrong password", host.list("/", false).await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    let want = format!("authentication failed for {TEST_USER}@127.0.0.1:{}", sshd.port());
    assert!(
        e.message.starts_with(&want) && e.message.contains("Permission denied"),
        "{e}"
    );
    assert!(!e.to_string().contains("wrong-password-123"), "{e}");
    assert!(!format!("{e:?}").contains("wrong-password-123"), "{e:?}");
}

#[tokio::test]
async fn a_key_that_is_not_pinned_is_refused_with_its_fingerprint() {
    let sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let other = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (host, _keys) = host(
        &sshd,
        &format!("password = \"{TEST_PASSWORD}\"\nhost_key_sha256 = [\"{other}\"]"),
    );
    let e = expect_err("unpinned key", host.stat("/").await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert_eq!(
        e.message,
        format!(
            "host key {} (ssh-ed25519) offered by 127.0.0.1:{} is not one of the pinned keys ({other})",
            sshd.host_key_sha256(),
            sshd.port()
        )
    );
    // Refused before logging in: the password never left.
    assert!(!sshd.log().contains("Accepted"), "{}", sshd.log());
}

#[tokio::test]
async fn known_hosts_files_are_honoured() {
    let sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let files = tempfile::tempdir().expect("tempdir");
    let with = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).expect("write known_hosts");
        host(
            &sshd,
            &format!(
                "password = \"{TEST_PASSWORD}\"\nknown_hosts = \"{}\"",
                path.display()
            ),
        )
    };
    let (good, _k) = with("good", &format!("{}\n", sshd.known_hosts_line()));
    good.stat("/").await.expect("a listed key is accepted");

    let (absent, _k) = with(
        "absent",
        "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDqsbB2ganMAkO7KgFY5uOpq8vQ5JVWXkuNB9c8TTU45\n",
    );
    let e = expect_err("unlisted server", absent.stat("/").await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(
        e.message.contains(sshd.host_key_sha256()) && e.message.contains("is not in known_hosts file"),
        "{e}"
    );

    let changed = format!(
        "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDqsbB2ganMAkO7KgFY5uOpq8vQ5JVWXkuNB9c8TTU45\n",
        sshd.port()
    );
    let (changed, _k) = with("changed", &changed);
    let e = expect_err("changed key", changed.stat("/").await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(
        e.message.contains(sshd.host_key_sha256()) && e.message.contains("does not match"),
        "{e}"
    );
}

#[tokio::test]
async fn the_insecure_flag_accepts_any_key() {
    let sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let folder = sshd.folder("any").expect("folder");
    let (host, _keys) = host(
        &sshd,
        &format!(
            "password = \"{TEST_PASSWORD}\"\ninsecure_accept_any_host_key = true\nverify = \"read_back\""
        ),
    );
    let probe = host.probe(&folder.to_string_lossy()).await.expect("probe");
    assert_eq!(probe.host_key_sha256.as_deref(), Some(sshd.host_key_sha256()));
    assert!(
        probe.notes.iter().any(|n| n.contains("NOT CHECKED")),
        "{:?}",
        probe.notes
    );
    // `verify = "read_back"`: the staged file is downloaded and hashed.
    let data = conformance::content(3 << 20, 8);
    let t = WriteTarget {
        dir: folder.to_string_lossy().into_owned(),
        name: "checked.bin".into(),
        temp_name: path::temp_name(&sha(b"checked.bin"), 0),
        size_hint: data.len() as u64,
        resume: false,
        mode: None,
    };
    let mut upload = host.write(&t).await.expect("write");
    upload.write(Bytes::from(data.clone())).await.expect("write data");
    let mut staged = upload.finish().await.expect("finish");
    let e = expect_err(
        "verify a wrong hash",
        staged.verify(data.len() as u64, &sha(b"something else")).await,
    );
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert_eq!(
        staged
            .verify(data.len() as u64, &sha(&data))
            .await
            .expect("verify"),
        ferry_hosts::Verification::ReadBack
    );
    assert!(staged.commit(&t.final_path(), false).await.expect("commit"));
}

/// A `mode` without the owner's write bit is set on the temp once it is written. If the commit
/// then never happens (the node died between the two), the next attempt finds a temp it may not
/// open for writing: it starts over instead of failing the file for good, and the file ends with
/// exactly the configured bits.
#[tokio::test]
async fn a_read_only_temp_of_an_earlier_attempt_is_started_over() {
    use std::os::unix::fs::PermissionsExt;
    let sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let folder = sshd.folder("modes").expect("folder");
    let dir = folder.to_string_lossy().to_string();
    let (host, _keys) = password_host(&sshd);
    let data = conformance::content(3 << 20, 5);
    let target = WriteTarget {
        mode: Some(0o440),
        ..conformance::target(&dir, "ro.bin", true, data.len() as u64)
    };
    let mut upload = host.write(&target).await.expect("write");
    upload.write(Bytes::copy_from_slice(&data)).await.expect("write");
    let staged = upload.finish().await.expect("finish");
    drop(staged);
    let temp = folder.join(&target.temp_name);
    let bits = std::fs::metadata(&temp).expect("temp stays").permissions().mode() & 0o777;
    assert_eq!(bits, 0o440, "the temp got its bits before the commit");

    let mut again = host
        .write(&target)
        .await
        .expect("a read-only temp is started over");
    assert_eq!(again.offset(), 0);
    again.write(Bytes::copy_from_slice(&data)).await.expect("write");
    let mut staged = again.finish().await.expect("finish");
    staged
        .verify(data.len() as u64, &sha(&data))
        .await
        .expect("verify");
    assert!(staged.commit(&target.final_path(), true).await.expect("commit"));
    let delivered = folder.join("ro.bin");
    assert_eq!(std::fs::read(&delivered).expect("delivered"), data);
    let bits = std::fs::metadata(&delivered).expect("stat").permissions().mode() & 0o777;
    assert_eq!(bits, 0o440);
}

#[tokio::test]
async fn a_killed_server_fails_transiently_and_the_upload_resumes() {
    let mut sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let folder = sshd.folder("resume").expect("folder");
    let folder = folder.to_string_lossy();
    let (host, _keys) = password_host(&sshd);
    let data = conformance::content(64 << 20, 21);
    let target = WriteTarget {
        dir: folder.to_string(),
        name: "big.bin".into(),
        temp_name: path::temp_name(&sha(b"big.bin"), 0),
        size_hint: data.len() as u64,
        resume: true,
        mode: None,
    };
    let mut upload = host.write(&target).await.expect("write");
    let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
    for chunk in &chunks[..40] {
        upload
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("first 40 MiB");
    }
    sshd.kill();
    let mut failed = None;
    for chunk in &chunks[40..] {
        if let Err(e) = upload.write(Bytes::copy_from_slice(chunk)).await {
            failed = Some(e);
            break;
        }
    }
    let e = match failed {
        Some(e) => e,
        None => expect_err("finish after the kill", upload.finish().await.map(|_| ())),
    };
    eprintln!("upload to a killed server: {e}");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(e.message.contains("127.0.0.1"), "{e}");

    sshd.restart().expect("restart");
    let mut again = host.write(&target).await.expect("write again");
    let offset = again.offset();
    assert!(offset > 0 && offset <= 40 << 20, "resumed at {offset}");
    for chunk in data[offset as usize..].chunks(1 << 20) {
        again
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write the rest");
    }
    let mut staged = again.finish().await.expect("finish");
    staged
        .verify(data.len() as u64, &sha(&data))
        .await
        .expect("verify");
    assert!(staged.commit(&target.final_path(), false).await.expect("commit"));
    let back = conformance::get(&host, &target.final_path(), 0)
        .await
        .expect("read back");
    assert!(
        back.len() == data.len() && sha(&back) == sha(&data),
        "resumed file differs"
    );
}

#[tokio::test]
async fn a_stalled_server_times_out_transiently() {
    let mut sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let folder = sshd.folder("stall").expect("folder");
    let folder = folder.to_string_lossy();
    let (host, _keys) = host(
        &sshd,
        &format!(
            "password = \"{TEST_PASSWORD}\"\nhost_key_sha256 = [\"{}\"]\n\
             operation_timeout_secs = 2\nconnect_timeout_secs = 3",
            sshd.host_key_sha256()
        ),
    );
    round_trip(&host, &folder).await;
    let data = conformance::content(32 << 20, 5);
    assert!(
        conformance::put(&host, &folder, "big.bin", &data, true)
            .await
            .expect("put")
    );
    let mut download = host.read(&path::join(&folder, "big.bin"), 0).await.expect("read");
    let mut first = vec![0u8; 1 << 20];
    download.read_exact(&mut first).await.expect("first MiB");
    sshd.pause();

    let started = Instant::now();
    let e = expect_err("stat while stalled", host.stat(&folder).await);
    let took = started.elapsed();
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {e}");

    // The download stalls midway (after what was already read ahead) and ends too.
    let started = Instant::now();
    let mut rest = Vec::new();
    let io = download
        .read_to_end(&mut rest)
        .await
        .expect_err("a stalled download must fail");
    let e = HostError::io("partner", "read big.bin", &io);
    eprintln!("download while stalled: {e}");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        rest.len() < (31 << 20),
        "read {} bytes from a stopped server",
        rest.len()
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{e}");

    // A new connection to the stopped server times out as well, also transiently.
    let e = expect_err("connect while stalled", host.stat(&folder).await);
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    sshd.resume();
}

// ---------------------------------------------------------------------------------------------
// Measurement (report only, not a pass/fail test). Run by hand:
//   cargo test -p ferry-hosts --no-default-features --features sftp --test sftp -- \
//     --ignored --nocapture bench_against_sftp_and_rclone
// FERRY_BENCH_MIB (default 1024) sets the file size, FERRY_BENCH_REPS (default 3) the rounds;
// each tool's best round is reported, with the CPU seconds its client side used.
// ---------------------------------------------------------------------------------------------

/// CPU seconds used so far by this process, by its waited-for children (sftp, rclone and their
/// ssh), and by its live `ssh` children (Ferry's pooled connections).
fn cpu_seconds() -> (f64, f64, f64) {
    fn usage(who: libc::c_int) -> f64 {
        // SAFETY: getrusage only writes the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(u.ru_utime) + t(u.ru_stime)
    }
    let me = std::process::id().to_string();
    let mut ssh = 0.0;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if &stat[open + 1..close] == "ssh" && fields.get(1) == Some(&me.as_str()) {
            let ticks: f64 =
                fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
            ssh += ticks / 100.0;
        }
    }
    (usage(libc::RUSAGE_SELF), usage(libc::RUSAGE_CHILDREN), ssh)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[derive(Default, Clone, Copy)]
struct Run {
    secs: f64,
    /// Client-side CPU seconds: this process (Ferry) or the tool and its ssh.
    cpu: f64,
    /// Of which this process itself (the rest is Ferry's ssh).
    own: f64,
}

async fn timed<F: std::future::Future<Output = ()>>(f: F) -> Run {
    let (s0, c0, h0) = cpu_seconds();
    let started = Instant::now();
    f.await;
    let secs = started.elapsed().as_secs_f64();
    let (s1, c1, h1) = cpu_seconds();
    Run {
        secs,
        cpu: (s1 - s0) + (c1 - c0) + (h1 - h0),
        own: s1 - s0,
    }
}

/// What the benchmark reads from a local file at once (one SFTP write request's worth).
const READ_SIZE: usize = 255 << 10;

/// Upload a local file the lean way a transfer would: reads straight into the buffers that are
/// sent.
async fn ferry_upload(host: &DynHost, src: &std::path::Path, dir: &str, name: &str, size: u64) -> (f64, f64) {
    use std::io::Read;
    let started = Instant::now();
    let t = WriteTarget {
        dir: dir.to_string(),
        name: name.to_string(),
        temp_name: path::temp_name(&sha(name.as_bytes()), 0),
        size_hint: size,
        resume: false,
        mode: None,
    };
    let mut upload = host.write(&t).await.expect("write");
    let mut file = std::fs::File::open(src).expect("open source");
    loop {
        let mut buf = bytes::BytesMut::zeroed(READ_SIZE);
        let n = tokio::task::block_in_place(|| file.read(&mut buf)).expect("read source");
        if n == 0 {
            break;
        }
        buf.truncate(n);
        upload.write(buf.freeze()).await.expect("upload");
    }
    let sent = started.elapsed().as_secs_f64();
    let mut staged = upload.finish().await.expect("finish");
    let finished = started.elapsed().as_secs_f64();
    staged.verify(size, "").await.expect("verify size");
    assert!(staged.commit(&t.final_path(), true).await.expect("commit"));
    (sent, finished)
}

async fn ferry_download(host: &DynHost, remote: &str, dst: &std::path::Path) -> u64 {
    use std::io::Write;
    let mut stream = host.read(remote, 0).await.expect("read");
    let mut out = std::fs::File::create(dst).expect("create");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).await.expect("download");
        if n == 0 {
            break;
        }
        tokio::task::block_in_place(|| out.write_all(&buf[..n])).expect("write local");
        total += n as u64;
    }
    total
}

fn run_tool(cmd: &mut std::process::Command, stdin: &str) {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("batch");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark, run by hand (see the comment above)"]
async fn bench_against_sftp_and_rclone() {
    let mib: u64 = std::env::var("FERRY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let reps: usize = std::env::var("FERRY_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let size = mib << 20;
    let sshd = Sshd::start(SshdAuth::Password).expect("sshd");
    let remote = sshd.folder("bench").expect("folder");
    let remote = remote.to_string_lossy().to_string();
    let local = tempfile::tempdir().expect("tempdir");
    // FERRY_BENCH_SRC=FILE reuses a file (of FERRY_BENCH_MIB MiB) instead of making one.
    let src = std::env::var_os("FERRY_BENCH_SRC")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| local.path().join("src.bin"));
    if !src.exists() {
        use std::io::{Read, Write};
        let mut urandom = std::fs::File::open("/dev/urandom").expect("urandom");
        let mut out = std::fs::File::create(&src).expect("source");
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            urandom.read_exact(&mut buf).expect("random");
            out.write_all(&buf).expect("source");
        }
    }
    let askpass = local.path().join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{TEST_PASSWORD}'\n")).expect("askpass");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    let sftp = |cipher: Option<&str>| {
        let mut cmd = std::process::Command::new("sftp");
        cmd.env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .args([
                "-q",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "PreferredAuthentications=password",
                "-P",
                &sshd.port().to_string(),
            ]);
        if let Some(c) = cipher {
            cmd.args(["-c", c]);
        }
        cmd.arg(format!("{TEST_USER}@127.0.0.1"));
        cmd
    };
    let obscured = std::process::Command::new("rclone")
        .args(["obscure", TEST_PASSWORD])
        .output()
        .expect("rclone obscure");
    let obscured = String::from_utf8_lossy(&obscured.stdout).trim().to_string();
    let rclone_conf = local.path().join("rclone.conf");
    std::fs::write(&rclone_conf, "").expect("rclone.conf");
    let rclone_remote = format!(
        ":sftp,host=127.0.0.1,port={},user={TEST_USER},pass={obscured}:",
        sshd.port()
    );
    let rclone = |from: String, to: String| {
        let mut cmd = std::process::Command::new("rclone");
        cmd.arg("--config").arg(&rclone_conf).args([
            "-q",
            "--ignore-times",
            "--sftp-disable-hashcheck",
            "copyto",
            &from,
            &to,
        ]);
        cmd
    };
    let (host, _keys) = password_host(&sshd);
    // Warm the pool (a connection is part of every other tool's run, too: see the report).
    host.stat(&remote).await.expect("connect");

    // FERRY_BENCH_TOOLS=ferry,up (comma-separated: ferry, sftp, rclone, up, down) runs only some.
    let tools = std::env::var("FERRY_BENCH_TOOLS").unwrap_or_else(|_| "ferry,sftp,rclone,up,down".into());
    let on = |tool: &str| tools.split(',').any(|t| t == tool);
    let mut best: std::collections::BTreeMap<&str, Run> = Default::default();
    let mut keep = |name: &'static str, r: Run| {
        let mb = size as f64 / 1e6 / r.secs;
        eprintln!(
            "{name:<22} {:>7.2} s {mb:>8.1} MB/s  cpu {:>6.2} s (in-process {:.2} s)  peak RSS {:.1} MiB",
            r.secs,
            r.cpu,
            r.own,
            peak_rss_mib()
        );
        let e = best.entry(name).or_insert(r);
        if r.secs < e.secs {
            *e = r;
        }
    };
    for _ in 0..reps {
        if on("ferry") && on("up") {
            let mut phases = (0.0, 0.0);
            let r =
                timed(async { phases = ferry_upload(&host, &src, &remote, "ferry.bin", size).await }).await;
            eprintln!(
                "  ferry upload: last write queued at {:.2} s, finish (last acks + fsync + close) done at {:.2} s",
                phases.0, phases.1
            );
            keep("up   ferry", r);
        }
        let put = format!("put {} {remote}/sftp.bin\n", src.display());
        if on("sftp") && on("up") {
            keep(
                "up   sftp",
                timed(async { run_tool(&mut sftp(None), &put) }).await,
            );
            let put_f = format!("put -f {} {remote}/sftp.bin\n", src.display());
            keep(
                "up   sftp put -f",
                timed(async { run_tool(&mut sftp(None), &put_f) }).await,
            );
            keep(
                "up   sftp -c aes128-gcm",
                timed(async { run_tool(&mut sftp(Some("aes128-gcm@openssh.com")), &put) }).await,
            );
        }
        if on("rclone") && on("up") {
            keep(
                "up   rclone",
                timed(async {
                    run_tool(
                        &mut rclone(
                            src.display().to_string(),
                            format!("{rclone_remote}{remote}/rclone.bin"),
                        ),
                        "",
                    )
                })
                .await,
            );
        }
        let down = local.path().join("down.bin");
        if on("ferry") && on("down") {
            keep(
                "down ferry",
                timed(async {
                    assert_eq!(
                        ferry_download(&host, &format!("{remote}/ferry.bin"), &down).await,
                        size
                    );
                })
                .await,
            );
        }
        let get = format!("get {remote}/sftp.bin {}\n", down.display());
        if on("sftp") && on("down") {
            keep(
                "down sftp",
                timed(async { run_tool(&mut sftp(None), &get) }).await,
            );
            keep(
                "down sftp -c aes128-gcm",
                timed(async { run_tool(&mut sftp(Some("aes128-gcm@openssh.com")), &get) }).await,
            );
        }
        if on("rclone") && on("down") {
            keep(
                "down rclone",
                timed(async {
                    run_tool(
                        &mut rclone(
                            format!("{rclone_remote}{remote}/rclone.bin"),
                            down.display().to_string(),
                        ),
                        "",
                    )
                })
                .await,
            );
        }
    }
    eprintln!("\nbest of {reps}, {mib} MiB:");
    for (name, r) in &best {
        eprintln!(
            "{name:<22} {:>7.2} s {:>8.1} MB/s  cpu {:>6.2} s",
            r.secs,
            size as f64 / 1e6 / r.secs,
            r.cpu
        );
    }
    let ratio = |a: &str, b: &str| match (best.get(a), best.get(b)) {
        (Some(a), Some(b)) => b.secs / a.secs,
        _ => f64::NAN,
    };
    eprintln!(
        "up:   ferry/sftp {:.2}x  ferry/sftp -f {:.2}x  ferry/rclone {:.2}x",
        ratio("up   ferry", "up   sftp"),
        ratio("up   ferry", "up   sftp put -f"),
        ratio("up   ferry", "up   rclone")
    );
    eprintln!(
        "down: ferry/sftp {:.2}x  ferry/rclone {:.2}x",
        ratio("down ferry", "down sftp"),
        ratio("down ferry", "down rclone")
    );
    eprintln!("peak RSS of this process: {:.1} MiB", peak_rss_mib());
}
