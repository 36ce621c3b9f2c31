//! What every remote host kind is put through end to end (see `remote_hosts.rs`): a [`Remote`]
//! is one real server with the `[[host]]` table that reaches it, and the scenarios below run a
//! whole node against it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_testkit::peers::azurite::{self, AzuriteServer};
use ferry_testkit::peers::s3::{self, S3Server};
use ferry_testkit::peers::smbd::Smbd;
use ferry_testkit::peers::sshd::{Sshd, SshdAuth};
use ferry_testkit::peers::vsftpd::{FtpTls, Vsftpd, VsftpdConfig};
use ferry_testkit::peers::{TEST_PASSWORD, TEST_USER};
use ferry_tests::{NatsServer, Node, settings, tree_hashes};
use ferry_wire::{RunFinished, RunStatus};

/// `FERRY_BIG_FILE_MIB` (default 1024): the large file's size.
pub fn big_file_mib() -> u64 {
    std::env::var("FERRY_BIG_FILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

enum Peer {
    Sftp(Sshd),
    Smb(Smbd),
    Ftp(Vsftpd),
    S3(S3Server),
    Azure(AzuriteServer),
}

/// One real server and how Ferry reaches it.
pub struct Remote {
    pub kind: &'static str,
    peer: Peer,
    /// The `[[host]]` lines after `name` and `kind`, with the right or a wrong password.
    settings: Box<dyn Fn(bool) -> String + Send + Sync>,
    /// Folders on the host are `<root>/<sub>` …
    root: String,
    /// … and, for servers serving a local folder, visible on this machine at `<backing>/<sub>`.
    backing: Option<PathBuf>,
    /// Words the error of a wrong password contains (the server's own).
    pub auth_words: &'static str,
    /// The hosts' first wait before a retry.
    retry_wait_secs: u64,
    /// A client of the host for the test's own checks (built like the services build it).
    client: ferry_hosts::DynHost,
    _keymat: tempfile::TempDir,
}

/// A host built from `[[host]]` lines, the way the services build it.
fn client(kind: &str, settings: &str) -> (ferry_hosts::DynHost, tempfile::TempDir) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!("[[host]]\nname = \"check\"\nkind = \"{kind}\"\n{settings}\n");
    let host = ferry_hosts::conformance::connect_sealed(&toml, "check", dir.path()).expect("build host");
    (host, dir)
}

impl Remote {
    fn ftp(tls: FtpTls) -> anyhow::Result<Remote> {
        let server = Vsftpd::start(VsftpdConfig::new(tls))?;
        let port = server.port();
        let tls_lines = match server.pki() {
            Some(pki) => format!("tls = \"explicit\"\nca_file = \"{}\"\n", pki.ca_cert.display()),
            None => "tls = \"none\"\n".to_string(),
        };
        let backing = server.root().to_path_buf();
        let settings = move |right: bool| {
            format!(
                "address = \"127.0.0.1\"\nport = {port}\nuser = \"{TEST_USER}\"\npassword = \"{}\"\n{tls_lines}",
                if right { TEST_PASSWORD } else { "wrong-password-1" }
            )
        };
        let (client, keymat) = client("ftp", &settings(true));
        Ok(Remote {
            kind: "ftp",
            settings: Box::new(settings),
            root: String::new(),
            backing: Some(backing),
            peer: Peer::Ftp(server),
            auth_words: "530",
            retry_wait_secs: 1,
            client,
            _keymat: keymat,
        })
    }

    /// vsftpd with explicit FTPS (`AUTH TLS`, session reuse required), trusted through `ca_file`.
    pub fn ftps() -> anyhow::Result<Remote> {
        Remote::ftp(FtpTls::Explicit)
    }

    pub fn plain_ftp() -> anyhow::Result<Remote> {
        Remote::ftp(FtpTls::None)
    }

    /// OpenSSH's sshd; Ferry logs in with the password and pins the server's key.
    pub fn sftp() -> anyhow::Result<Remote> {
        let server = Sshd::start(SshdAuth::Password)?;
        let root = server.folder("root")?;
        let (port, fingerprint) = (server.port(), server.host_key_sha256().to_string());
        let settings = move |right: bool| {
            format!(
                "address = \"127.0.0.1\"\nport = {port}\nuser = \"{TEST_USER}\"\npassword = \"{}\"\n\
                 host_key_sha256 = [\"{fingerprint}\"]\n",
                if right { TEST_PASSWORD } else { "wrong-password-1" }
            )
        };
        let (client, keymat) = client("sftp", &settings(true));
        Ok(Remote {
            kind: "sftp",
            settings: Box::new(settings),
            root: root.to_string_lossy().into_owned(),
            backing: Some(root),
            peer: Peer::Sftp(server),
            auth_words: "authentication failed",
            retry_wait_secs: 1,
            client,
            _keymat: keymat,
        })
    }

    /// Samba's smbd requiring SMB 3 encryption, reached by its UNC path.
    pub fn smb() -> anyhow::Result<Remote> {
        let server = Smbd::start("required")?;
        let (unc, port) = (server.unc(), server.port());
        let settings = move |right: bool| {
            format!(
                "share = '{unc}'\nport = {port}\nuser = \"{TEST_USER}\"\npassword = \"{}\"\nencryption = \"required\"\n",
                if right { TEST_PASSWORD } else { "wrong-password-1" }
            )
        };
        let (client, keymat) = client("smb", &settings(true));
        Ok(Remote {
            kind: "smb",
            settings: Box::new(settings),
            root: String::new(),
            backing: Some(server.share_dir()),
            peer: Peer::Smb(server),
            auth_words: "STATUS_LOGON_FAILURE",
            retry_wait_secs: 1,
            client,
            _keymat: keymat,
        })
    }

    /// moto's S3 server checking signatures (so a wrong secret is refused).
    pub fn s3() -> anyhow::Result<Remote> {
        Remote::s3_with(s3::Auth::Iam)
    }

    /// moto's S3 server taking any key. Its restart brings back an empty server and makes the
    /// bucket again (and, checking signatures, a new key), so a test that kills it uses this and
    /// waits long enough before a retry for the bucket to be back.
    pub fn s3_open() -> anyhow::Result<Remote> {
        let mut remote = Remote::s3_with(s3::Auth::Open)?;
        remote.retry_wait_secs = 6;
        Ok(remote)
    }

    fn s3_with(auth: s3::Auth) -> anyhow::Result<Remote> {
        let server = S3Server::start_with(auth)?;
        let (endpoint, id, secret) = (
            server.endpoint(),
            server.access_key_id().to_string(),
            server.secret_access_key().to_string(),
        );
        let settings = move |right: bool| {
            format!(
                "bucket = \"{}\"\nendpoint = \"{endpoint}\"\npath_style = true\nallow_http = true\n\
                 access_key_id = \"{id}\"\nsecret_access_key = \"{}\"\n",
                s3::BUCKET,
                if right {
                    secret.as_str()
                } else {
                    "wrong-password-1"
                }
            )
        };
        let (client, keymat) = client("s3", &settings(true));
        Ok(Remote {
            kind: "s3",
            settings: Box::new(settings),
            root: String::new(),
            backing: None,
            peer: Peer::S3(server),
            auth_words: "SignatureDoesNotMatch",
            retry_wait_secs: 1,
            client,
            _keymat: keymat,
        })
    }

    /// Azurite with its well-known development account.
    pub fn azure() -> anyhow::Result<Remote> {
        let server = AzuriteServer::start()?;
        let endpoint = server.endpoint();
        let settings = move |right: bool| {
            format!(
                "account = \"{}\"\ncontainer = \"{}\"\nendpoint = \"{endpoint}\"\nallow_http = true\naccess_key = \"{}\"\n",
                azurite::ACCOUNT,
                azurite::CONTAINER,
                if right {
                    azurite::ACCOUNT_KEY
                } else {
                    "d3JvbmctcGFzc3dvcmQtMSB3cm9uZy1wYXNzd29yZC0xIHdyb25nLXBhc3N3b3JkLTE="
                }
            )
        };
        let (client, keymat) = client("azure", &settings(true));
        Ok(Remote {
            kind: "azure",
            settings: Box::new(settings),
            root: String::new(),
            backing: None,
            peer: Peer::Azure(server),
            auth_words: "authentication failed",
            retry_wait_secs: 1,
            client,
            _keymat: keymat,
        })
    }

    /// The SFTP server's host key fingerprint.
    pub fn host_key(&self) -> Option<&str> {
        match &self.peer {
            Peer::Sftp(s) => Some(s.host_key_sha256()),
            _ => None,
        }
    }

    /// Where the server listens on loopback (SFTP).
    pub fn port(&self) -> Option<u16> {
        match &self.peer {
            Peer::Sftp(s) => Some(s.port()),
            _ => None,
        }
    }

    /// The S3 server's secret key (the one secret of these servers not fixed in advance).
    pub fn secret(&self) -> Option<String> {
        match &self.peer {
            Peer::S3(s) => Some(s.secret_access_key().to_string()),
            _ => None,
        }
    }

    /// A `[[host]]` table named `name`; retries quickly, so a test that kills the server is short.
    pub fn host(&self, name: &str, right_password: bool) -> String {
        format!(
            "[[host]]\nname = \"{name}\"\nkind = \"{}\"\n{}\nconnect_timeout_secs = 5\noperation_timeout_secs = 10\n\
             retries = 8\nretry_wait_secs = {}\n",
            self.kind,
            (self.settings)(right_password),
            self.retry_wait_secs
        )
    }

    /// The folder `sub` as tasks name it on the host.
    pub fn folder(&self, sub: &str) -> String {
        ferry_hosts::path::join(&self.root, sub)
    }

    /// Where `sub` is on this machine, for servers that serve a local folder.
    pub fn backing(&self, sub: &str) -> Option<PathBuf> {
        self.backing.as_ref().map(|b| b.join(sub))
    }

    /// Every file under `sub` on the host: relative path → SHA-256 (read on this machine where
    /// the server serves a local folder, else through a client of the host).
    pub async fn hashes(&self, sub: &str) -> BTreeMap<String, String> {
        if let Some(dir) = self.backing(sub) {
            return if dir.exists() {
                tree_hashes(&dir)
            } else {
                BTreeMap::new()
            };
        }
        let folder = self.folder(sub);
        let listed = match self.client.list(&folder, true).await {
            Ok(l) => l,
            Err(e) if e.kind == ferry_hosts::ErrorKind::NotFound => return BTreeMap::new(),
            Err(e) => panic!("list {folder}: {e}"),
        };
        let mut out = BTreeMap::new();
        for entry in listed {
            let path = ferry_hosts::path::join(&folder, &entry.rel_path);
            let data = ferry_hosts::conformance::get(&self.client, &path, 0)
                .await
                .unwrap_or_else(|e| panic!("read {path}: {e}"));
            use sha2::Digest;
            out.insert(entry.rel_path, hex::encode(sha2::Sha256::digest(&data)));
        }
        out
    }

    /// SHA-256 of one file on the host.
    pub async fn hash_of(&self, sub: &str, name: &str) -> Option<String> {
        if let Some(dir) = self.backing(sub) {
            let path = dir.join(name);
            return path.exists().then(|| ferry_tests::sha256_file(&path));
        }
        use sha2::Digest;
        use tokio::io::AsyncReadExt;
        let path = ferry_hosts::path::join(&self.folder(sub), name);
        let mut stream = self.client.read(&path, 0).await.ok()?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                return Some(hex::encode(hasher.finalize()));
            }
            hasher.update(&buf[..n]);
        }
    }

    /// Kill the server (and every session) without a goodbye.
    pub fn kill(&mut self) {
        match &mut self.peer {
            Peer::Sftp(s) => s.kill(),
            Peer::Smb(s) => s.kill(),
            Peer::Ftp(s) => s.kill(),
            Peer::S3(s) => s.kill(),
            Peer::Azure(s) => s.kill(),
        }
    }

    /// Start it again on the same port with the same files.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        match &mut self.peer {
            Peer::Sftp(s) => s.restart(),
            Peer::Smb(s) => s.restart(),
            Peer::Ftp(s) => s.restart(),
            Peer::S3(s) => s.restart(),
            Peer::Azure(s) => s.restart(),
        }
    }

    /// Make `sub` on the host (owned by the account the server writes as); where it is on this
    /// machine, for servers that serve a local folder.
    pub async fn make_folder(&self, sub: &str) -> Option<PathBuf> {
        match self.backing(sub) {
            Some(dir) => {
                std::fs::create_dir_all(&dir).expect("mkdir");
                ferry_testkit::peers::chown_to(&dir, TEST_USER).expect("chown");
                Some(dir)
            }
            None => {
                self.client
                    .create_dir_all(&self.folder(sub))
                    .await
                    .expect("make the folder");
                None
            }
        }
    }
}

/// A task from `from` (host, folder) to `to`, searching subfolders and keeping them.
pub fn task(name: &str, from: (&str, &str), to: (&str, &str), extra_source: &str) -> String {
    format!(
        "[[task]]\nname = \"{name}\"\n[[task.source]]\nhost = \"{}\"\nfolder = \"{}\"\nsubdirectories = true\n{extra_source}\n\
         [[task.destination]]\nhost = \"{}\"\nfolder = \"{}\"\nrelative_subdirs = true\n",
        from.0, from.1, to.0, to.1
    )
}

/// 500 files in 20 nested folders, 0 to 20 KiB, each with its own content.
pub fn nested_tree(root: &Path) -> BTreeMap<String, String> {
    for i in 0..500u32 {
        let rel = format!(
            "d{}/sub{}/{}file-{i}.dat",
            i % 5,
            (i / 5) % 4,
            if i % 7 == 0 { "x y " } else { "" }
        );
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().expect("has a folder")).expect("mkdir");
        let len = (i as usize * 41) % (20 << 10);
        let data: Vec<u8> = (0..len)
            .map(|b| (b as u32 ^ i.wrapping_mul(2_654_435_761)) as u8)
            .collect();
        std::fs::write(&path, data).expect("write");
    }
    tree_hashes(root)
}

pub async fn node() -> (NatsServer, Node) {
    let nats = NatsServer::start().expect("nats");
    let node = Node::start(settings(&nats.url())).await.expect("node");
    (nats, node)
}

pub async fn run(node: &Node, task: &str) -> RunFinished {
    let started = Instant::now();
    let run = node
        .run_task(task, Duration::from_secs(900))
        .await
        .unwrap_or_else(|e| panic!("run {task}: {e:#}"));
    eprintln!(
        "run {task}: {:?} in {:.1} s ({} delivered, {} failed)",
        run.status,
        started.elapsed().as_secs_f64(),
        run.files_delivered,
        run.files_failed
    );
    run
}

fn summary(run: &RunFinished) -> String {
    let failed: Vec<String> = run
        .files
        .iter()
        .filter_map(|f| f.error.as_ref().map(|e| format!("{}: {e}", f.source_path)))
        .take(5)
        .collect();
    format!(
        "{:?}: {} delivered, {} failed, error {:?}, first failures {failed:#?}",
        run.status, run.files_delivered, run.files_failed, run.error
    )
}

/// 500 nested files up to the host and back down, a wrong password, and a growing file.
pub async fn nested_files_both_ways(remote: &Remote) {
    let (_nats, node) = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, back) = (dir.path().join("src"), dir.path().join("back"));
    let want = nested_tree(&src);
    remote.make_folder("up").await;
    let config = [
        remote.host("partner", true),
        remote.host("stranger", false),
        task(
            "up",
            ("local", &src.to_string_lossy()),
            ("partner", &remote.folder("up")),
            "",
        ),
        task(
            "down",
            ("partner", &remote.folder("up")),
            ("local", &back.to_string_lossy()),
            "",
        ),
        task(
            "bad-up",
            ("local", &src.to_string_lossy()),
            ("stranger", &remote.folder("bad")),
            "",
        ),
    ]
    .join("\n");
    node.apply(&config).await.expect("apply");

    let up = run(&node, "up").await;
    assert_eq!(
        (up.status, up.files_delivered),
        (RunStatus::Succeeded, 500),
        "{}",
        summary(&up)
    );
    assert_eq!(
        remote.hashes("up").await,
        want,
        "what arrived on the host differs from the source"
    );
    let down = run(&node, "down").await;
    assert_eq!(
        (down.status, down.files_delivered),
        (RunStatus::Succeeded, 500),
        "{}",
        summary(&down)
    );
    assert_eq!(tree_hashes(&back), want, "what came back differs from the source");

    // A wrong password: the run fails naming the host and quoting the server; nothing moved.
    let bad = run(&node, "bad-up").await;
    assert_eq!(bad.status, RunStatus::Failed, "{}", summary(&bad));
    let error = bad
        .files
        .first()
        .and_then(|f| f.error.clone())
        .unwrap_or_default();
    assert!(
        error.contains("host \"stranger\"") && error.contains(remote.auth_words),
        "the error must name the host and quote the server: {error}"
    );
    assert!(
        !error.contains("wrong-password-1"),
        "the password leaked into the error: {error}"
    );
    assert!(
        remote.hashes("bad").await.is_empty(),
        "nothing may arrive with a wrong password"
    );
    assert_eq!(tree_hashes(&src), want, "the source is intact");

    // Objects appear whole or not at all: only servers of files can hold a file being written.
    if remote.backing.is_some() {
        growing_file_waits(remote, &node, dir.path()).await;
    }
    node.shutdown().await;
}

/// A file still being written on the host is not taken until it stops changing.
async fn growing_file_waits(remote: &Remote, node: &Node, dir: &Path) {
    let grow = remote.make_folder("grow").await.expect("a server of files");
    let out = dir.join("grown");
    let config = [
        remote.host("partner", true),
        task(
            "grow",
            ("partner", &remote.folder("grow")),
            ("local", &out.to_string_lossy()),
            "",
        ),
    ]
    .join("\n");
    node.apply(&config).await.expect("apply");
    let file = grow.join("growing.csv");
    std::fs::write(&file, b"header\n").expect("write");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (file, stop) = (file.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .expect("open");
            while !stop.load(Ordering::SeqCst) {
                f.write_all(&[b'r'; 4096]).expect("append");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let during = run(node, "grow").await;
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    assert_eq!(
        during.files_delivered,
        0,
        "a growing file was taken: {}",
        summary(&during)
    );
    assert!(!out.join("growing.csv").exists());
    let after = run(node, "grow").await;
    assert_eq!(after.files_delivered, 1, "{}", summary(&after));
    assert_eq!(
        std::fs::metadata(out.join("growing.csv"))
            .expect("delivered")
            .len(),
        std::fs::metadata(&file).expect("source").len(),
        "the whole file, once it stopped growing"
    );
}

/// Write a file of `mib` MiB quickly (distinct content per MiB); its SHA-256.
pub fn big_file(path: &Path, mib: u64) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(path).expect("create"));
    let mut hasher = Sha256::new();
    let mut block: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for m in 0..mib {
        block[..8].copy_from_slice(&m.to_le_bytes());
        hasher.update(&block);
        f.write_all(&block).expect("write");
    }
    f.flush().expect("flush");
    hex::encode(hasher.finalize())
}

/// A large file up to the host and back down, its SHA-256 checked at each end.
pub async fn large_file_both_ways(remote: &Remote, mib: u64) {
    let (_nats, node) = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, back) = (dir.path().join("src"), dir.path().join("back"));
    std::fs::create_dir_all(&src).expect("mkdir");
    let sha = big_file(&src.join("big.bin"), mib);
    remote.make_folder("big").await;
    let config = [
        remote.host("partner", true),
        task(
            "big-up",
            ("local", &src.to_string_lossy()),
            ("partner", &remote.folder("big")),
            "",
        ),
        task(
            "big-down",
            ("partner", &remote.folder("big")),
            ("local", &back.to_string_lossy()),
            "",
        ),
    ]
    .join("\n");
    node.apply(&config).await.expect("apply");
    let started = Instant::now();
    let up = run(&node, "big-up").await;
    let up_time = started.elapsed();
    assert_eq!(up.files_delivered, 1, "{}", summary(&up));
    assert_eq!(up.files[0].sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(
        remote.hash_of("big", "big.bin").await.as_deref(),
        Some(sha.as_str()),
        "stored copy differs"
    );
    let started = Instant::now();
    let down = run(&node, "big-down").await;
    let down_time = started.elapsed();
    assert_eq!(down.files_delivered, 1, "{}", summary(&down));
    assert_eq!(
        ferry_tests::sha256_file(&back.join("big.bin")),
        sha,
        "downloaded copy differs"
    );
    eprintln!(
        "{}: {mib} MiB up in {:.1} s, down in {:.1} s",
        remote.kind,
        up_time.as_secs_f64(),
        down_time.as_secs_f64()
    );
    node.shutdown().await;
}

/// Scans `dir` (recursively) until stopped; every file seen under a final name with a size other
/// than `size`.
fn watch(dir: PathBuf, size: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut violations = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for e in walkdir::WalkDir::new(&dir).into_iter().filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if !e.file_type().is_file() || ferry_hosts::path::is_temp_name(&name) {
                    continue;
                }
                if let Ok(meta) = e.metadata()
                    && meta.len() != size
                {
                    violations.push(format!("{name}: {} bytes under its final name", meta.len()));
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        violations
    })
}

/// The server dies while a large file goes up; it comes back after `down`; the transfer's retry
/// completes the file (resuming where the kind can) and nothing partial ever stands under the
/// final name.
pub async fn server_killed_mid_upload(remote: &mut Remote, down: Duration) {
    const MIB: u64 = 192;
    let (_nats, node) = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let sha = big_file(&src.join("kill.bin"), MIB);
    let target = remote.make_folder("kill").await;
    let config = [
        remote.host("partner", true),
        task(
            "kill-up",
            ("local", &src.to_string_lossy()),
            ("partner", &remote.folder("kill")),
            "",
        ),
    ]
    .join("\n");
    node.apply(&config).await.expect("apply");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = target.clone().map(|t| watch(t, MIB << 20, stop.clone()));
    let run_id = node.request_run("kill-up").await.expect("request");
    // Wait until a good part is stored under the temp name (an object store shows nothing before
    // the commit: give it a while), then kill the server.
    let deadline = Instant::now() + Duration::from_secs(120);
    if target.is_none() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    while let Some(target) = &target {
        let stored: u64 = walkdir::WalkDir::new(target)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| ferry_hosts::path::is_temp_name(&e.file_name().to_string_lossy()))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        if stored >= 48 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "the upload never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remote.kill();
    tokio::time::sleep(down).await;
    remote.restart().expect("restart the server");
    let finished =
        ferry_service::streams::wait_for_run(&node.js, "kill-up", run_id, Duration::from_secs(300))
            .await
            .expect("the run finishes");
    stop.store(true, Ordering::SeqCst);
    let violations = watcher.map(|w| w.join().expect("watcher")).unwrap_or_default();
    assert_eq!(
        (finished.status, finished.files_delivered),
        (RunStatus::Succeeded, 1),
        "{}",
        summary(&finished)
    );
    assert_eq!(
        remote.hash_of("kill", "kill.bin").await.as_deref(),
        Some(sha.as_str()),
        "the delivered file differs"
    );
    assert!(
        violations.is_empty(),
        "partial files under final names: {violations:?}"
    );
    node.shutdown().await;
}

/// Every file below `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            e.path()
                .strip_prefix(dir)
                .expect("inside")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// A server listing names built to escape: `..\..\x` (a separator on Windows shares), and a name
/// holding a line break followed by what looks like another listing line, of a file named `..`. Ferry
/// must not read or write anything outside the configured folders; the normal file still moves,
/// and the others fail with why.
pub async fn hostile_names_cannot_escape(remote: &Remote) {
    let (_nats, node) = node().await;
    let sandbox = tempfile::tempdir().expect("tempdir");
    let out = sandbox.path().join("a/b/out");
    let src = remote.make_folder("hostile").await.expect("a server of files");
    let names = [
        "ok.txt".to_string(),
        "..\\..\\evil-backslash.txt".to_string(),
        // A name cannot hold `/`, but it can make a naive listing parser see a file named `..`.
        "evil\n-rw-r--r--    1 1000     1000            5 Jan 01 00:00 ..".to_string(),
    ];
    for name in &names {
        std::fs::write(src.join(name), b"12345").expect("write");
    }
    // A name that is not UTF-8 on the server cannot move (the clients take names as text), but
    // it must not stop the rest of the listing. Not yet so over SFTP: `openssh-sftp-client`
    // cannot decode such a name and drops the connection, failing the whole listing.
    if remote.kind != "sftp" {
        std::fs::write(
            src.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                b"caf\xe9.txt",
            )),
            b"12345",
        )
        .expect("write");
    }
    let config = [
        remote.host("partner", true),
        task(
            "hostile",
            ("partner", &remote.folder("hostile")),
            ("local", &out.to_string_lossy()),
            "",
        ),
    ]
    .join("\n");
    node.apply(&config).await.expect("apply");
    let run = run(&node, "hostile").await;
    // The good file moves; so may the name with a line break where the server lists it as what it
    // is (an odd but legal name); nothing else.
    assert!((1..=2).contains(&run.files_delivered), "{}", summary(&run));
    // Nothing anywhere in the sandbox but inside the destination folder, the good file among it.
    let written = files_under(sandbox.path());
    assert!(
        written
            .iter()
            .all(|w| w.starts_with("a/b/out/") && !w[8..].contains('/'))
            && written.iter().any(|w| w == "a/b/out/ok.txt")
            && written.len() as u64 == run.files_delivered,
        "written outside the destination folder? {written:?}"
    );
    for dir in [sandbox.path(), &sandbox.path().join("a"), &src, &src.join("..")] {
        for evil in ["evil-backslash.txt", ".."] {
            if evil == ".." {
                continue;
            }
            assert!(!dir.join(evil).exists(), "{} written", dir.join(evil).display());
        }
    }
    for f in run
        .files
        .iter()
        .filter(|f| f.outcome != ferry_wire::Outcome::Delivered)
    {
        let e = f.error.clone().unwrap_or_default();
        assert!(
            e.contains("refused") || e.contains("is gone") || e.contains("not found") || e.contains("550"),
            "a refused name says why: {e}"
        );
    }
    node.shutdown().await;
}

/// A local file whose name is not UTF-8 (Latin-1 `café`) cannot be stored on a host whose
/// names are text (every remote kind: the SFTP client crate, too, sends paths only as UTF-8):
/// that file alone fails, naming it as bytes and the host, before anything is sent — the
/// connection stays up — and its source stays; the rest of the run moves.
pub async fn a_name_that_is_not_utf8(remote: &Remote) {
    use std::os::unix::ffi::OsStrExt;
    let (_nats, node) = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    for name in ["a.csv", "b.csv"] {
        std::fs::write(src.join(name), name).expect("write");
    }
    let latin1 = src.join(std::ffi::OsStr::from_bytes(b"caf\xe9.csv"));
    std::fs::write(&latin1, b"latin-1").expect("write");
    remote.make_folder("bytes").await;
    let config = [
        remote.host("partner", true),
        task(
            "bytes",
            ("local", &src.to_string_lossy()),
            ("partner", &remote.folder("bytes")),
            "delete_after = true",
        ),
    ]
    .join("\n");
    node.apply(&config).await.expect("apply");
    let up = run(&node, "bytes").await;
    assert_eq!(
        (up.status, up.files_delivered, up.files_failed),
        (RunStatus::Failed, 2, 1),
        "{}",
        summary(&up)
    );
    let error = up
        .files
        .iter()
        .find(|f| f.outcome == ferry_wire::Outcome::Failed)
        .and_then(|f| f.error.clone())
        .unwrap_or_default();
    assert!(
        error.contains(r#"/caf\xe9.csv""#) && error.contains("not UTF-8") && error.contains("partner"),
        "the refusal names the file as bytes and the host: {error}"
    );
    assert!(latin1.exists(), "the refused file's source stays");
    assert!(
        !src.join("a.csv").exists() && !src.join("b.csv").exists(),
        "the other files moved"
    );
    assert_eq!(
        remote.hashes("bytes").await.len(),
        2,
        "only the other files arrived"
    );
    node.shutdown().await;
}

/// An object store lists keys that are no file names at all: `hostile/../../x.txt` and
/// `hostile//etc/x` are legal S3 keys (put here with a raw, unnormalised request). Listing them
/// must fail loudly or skip them, and nothing may be written outside the destination folder.
pub async fn hostile_keys_cannot_escape(remote: &Remote) {
    let Peer::S3(server) = &remote.peer else {
        panic!("hostile keys need an S3 server")
    };
    let (_nats, node) = node().await;
    let sandbox = tempfile::tempdir().expect("tempdir");
    let out = sandbox.path().join("a/b/out");
    for key in ["hostile/ok.txt", "hostile/../../x.txt", "hostile//etc/x"] {
        let put = std::process::Command::new("curl")
            .args(["-sf", "--path-as-is", "-X", "PUT", "--data-binary", "12345"])
            .arg(format!("{}/{}/{key}", server.endpoint(), s3::BUCKET))
            .output()
            .expect("run curl");
        assert!(
            put.status.success(),
            "PUT {key}: {}",
            String::from_utf8_lossy(&put.stderr)
        );
    }
    let config = [
        remote.host("bucket", true),
        task(
            "hostile",
            ("bucket", &remote.folder("hostile")),
            ("local", &out.to_string_lossy()),
            "",
        ),
    ]
    .join("\n");
    node.apply(&config).await.expect("apply");
    let run = run(&node, "hostile").await;
    let written = files_under(sandbox.path());
    assert!(
        written.iter().all(|w| w == "a/b/out/ok.txt"),
        "written outside the destination folder? {written:?}"
    );
    for outside in ["x.txt", "a/x.txt", "etc/x"] {
        assert!(!sandbox.path().join(outside).exists(), "{outside} written");
    }
    if run.status == RunStatus::Succeeded {
        assert_eq!(written, ["a/b/out/ok.txt"], "{}", summary(&run));
    } else {
        // The listing is refused as a whole, naming the key it cannot take as a path.
        let error = run.error.clone().unwrap_or_default();
        assert!(error.contains(".."), "{}", summary(&run));
        assert!(written.is_empty(), "{written:?}");
    }
    node.shutdown().await;
}

/// `ferry host test`: what the server offers, or the exact error.
pub async fn host_test_reports(remote: &Remote) -> (ferry_wire::HostTestReport, ferry_wire::HostTestReport) {
    let (_nats, node) = node().await;
    remote.make_folder("probe").await;
    let config = [remote.host("partner", true), remote.host("stranger", false)].join("\n");
    node.apply(&config).await.expect("apply");
    let ask = |host: &str| ferry_wire::HostTestRequest {
        host: host.to_string(),
        folder: Some(remote.folder("probe")),
    };
    let good: ferry_wire::HostTestReport = node
        .call(
            ferry_wire::subjects::service::TRANSFER,
            ferry_wire::subjects::api::HOST_TEST,
            &ask("partner"),
        )
        .await
        .expect("host test");
    let bad: ferry_wire::HostTestReport = node
        .call(
            ferry_wire::subjects::service::TRANSFER,
            ferry_wire::subjects::api::HOST_TEST,
            &ask("stranger"),
        )
        .await
        .expect("host test");
    node.shutdown().await;
    assert_eq!(good.error, None, "{good:?}");
    assert_eq!(good.files, Some(0));
    assert!(!good.capabilities.is_empty(), "{good:?}");
    let error = bad.error.clone().expect("a wrong password fails");
    assert!(error.contains(remote.auth_words), "{error}");
    (good, bad)
}

/// A task's own `retries` and `retry_wait_secs` replace its hosts' (which here would wait minutes
/// in all), for its listings and for its files; a listing that fails while the server is down is
/// tried again and the run succeeds once the server is back.
pub async fn a_task_sets_its_own_retries(remote: &mut Remote) {
    let (_nats, node) = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, back) = (dir.path().join("src"), dir.path().join("back"));
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("a.txt"), b"retry me").expect("write");
    remote.make_folder("retry").await;
    let own = |name: &str, retries: u32, wait: u64, from: (&str, &str), to: (&str, &str)| {
        task(name, from, to, "").replacen(
            "[[task.source]]",
            &format!("retries = {retries}\nretry_wait_secs = {wait}\n[[task.source]]"),
            1,
        )
    };
    let (local_src, local_back) = (src.to_string_lossy(), back.to_string_lossy());
    let folder = remote.folder("retry");
    let many = dir.path().join("many");
    std::fs::create_dir_all(&many).expect("mkdir");
    for i in 0..40 {
        std::fs::write(many.join(format!("m{i}.txt")), format!("{i}")).expect("write");
    }
    let config = [
        remote.host("partner", true),
        own("up-once", 1, 0, ("local", &local_src), ("partner", &folder)),
        own("list-once", 1, 0, ("partner", &folder), ("local", &local_back)),
        own(
            "list-patiently",
            5,
            2,
            ("partner", &folder),
            ("local", &local_back),
        ),
        own(
            "up-many",
            2,
            1,
            ("local", &many.to_string_lossy()),
            ("partner", &folder),
        ),
    ]
    .join("\n");
    node.apply(&config).await.expect("apply");
    let up = run(&node, "up-once").await;
    assert_eq!(up.files_delivered, 1, "{}", summary(&up));

    std::fs::write(src.join("b.txt"), b"and me").expect("write");
    remote.kill();
    let started = Instant::now();
    let up = run(&node, "up-once").await;
    let listed = run(&node, "list-once").await;
    // With the hosts' own settings (8 retries from 1 s, doubling) either would take minutes.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (up.status, up.files_failed),
        (RunStatus::Failed, 1),
        "{}",
        summary(&up)
    );
    let why = up.files[0].error.clone().unwrap_or_default();
    assert!(why.contains("(after 1 retries)"), "{why}");
    assert_eq!(listed.status, RunStatus::Failed, "{}", summary(&listed));
    let why = listed.error.clone().unwrap_or_default();
    assert!(
        why.contains("source[0]") && why.contains("(after 1 retries)"),
        "{why}"
    );

    // A batch of 40 files to a server that stays down waits out the retries once, not per file.
    let started = Instant::now();
    let many = run(&node, "up-many").await;
    assert_eq!(many.files_failed, 40, "{}", summary(&many));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let not_again = many
        .files
        .iter()
        .filter(|f| {
            f.error
                .as_deref()
                .is_some_and(|e| e.contains("not tried again for this file"))
        })
        .count();
    assert!(
        not_again >= 20,
        "{not_again} of 40 failed at once: {}",
        summary(&many)
    );

    // The server comes back while the listing waits to be tried again: the run succeeds.
    let run_id = node.request_run("list-patiently").await.expect("request");
    tokio::time::sleep(Duration::from_secs(1)).await;
    remote.restart().expect("restart the server");
    let finished =
        ferry_service::streams::wait_for_run(&node.js, "list-patiently", run_id, Duration::from_secs(120))
            .await
            .expect("the run ends");
    assert_eq!(
        (finished.status, finished.files_delivered),
        (RunStatus::Succeeded, 1),
        "{}",
        summary(&finished)
    );
    assert_eq!(std::fs::read(back.join("a.txt")).expect("delivered"), b"retry me");
}

/// A server behind a link slower than the host's `min_rate_kib` (a server that trickles its
/// bytes would never trip the operation timeout): the attempt is cut off after
/// `operation_timeout_secs` + size ÷ rate, the file fails with why, nothing stands under its
/// final name, and the same file goes through at full speed.
pub async fn a_trickling_server_is_cut_off(remote: &Remote) {
    let (_nats, node) = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let data: Vec<u8> = (0..6u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("slow.bin"), &data).expect("write");
    let target = remote.make_folder("slow").await;
    let port = remote.port().expect("a server on a port");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let throttle = ferry_testkit::Throttle::start(addr, 256 << 10)
        .await
        .expect("throttle");
    // 6 MiB at 256 KiB/s take 24 s (each 255 KiB write answered in about 1 s, far inside the
    // 10 s operation timeout even on a loaded machine); at least 2048 KiB/s after the 5 + 10 s
    // connect and operation timeouts allows 18 s.
    let slow = remote.host("slow", true).replace(
        &format!("port = {port}\n"),
        &format!("port = {}\n", throttle.port()),
    ) + "min_rate_kib = 2048\n";
    let no_retries = |t: String| t.replacen("[[task.source]]", "retries = 0\n[[task.source]]", 1);
    let config = [
        slow,
        remote.host("fast", true),
        no_retries(task(
            "to-slow",
            ("local", &src.to_string_lossy()),
            ("slow", &remote.folder("slow")),
            "",
        )),
        no_retries(task(
            "to-fast",
            ("local", &src.to_string_lossy()),
            ("fast", &remote.folder("slow")),
            "",
        )),
    ]
    .join("\n");
    node.apply(&config).await.expect("apply");
    let started = Instant::now();
    let cut = run(&node, "to-slow").await;
    let took = started.elapsed();
    assert_eq!(
        (cut.status, cut.files_failed),
        (RunStatus::Failed, 1),
        "{}",
        summary(&cut)
    );
    let why = cut.files[0].error.clone().unwrap_or_default();
    assert!(
        why.contains("took longer than 18 s") && why.contains("min_rate_kib"),
        "{why}"
    );
    assert!(
        took >= Duration::from_secs(17) && took < Duration::from_secs(30),
        "{took:?}"
    );
    if let Some(target) = &target {
        assert!(!target.join("slow.bin").exists(), "nothing under the final name");
    }
    let fast = run(&node, "to-fast").await;
    assert_eq!(fast.files_delivered, 1, "{}", summary(&fast));
    assert_eq!(
        remote.hash_of("slow", "slow.bin").await,
        Some(ferry_tests::sha256_file(&src.join("slow.bin")))
    );
}

/// A file downloaded to the node's disks gets the destination's `mode` exactly (the upload sets
/// it on the open temp before its fsync, so no crash leaves wider bits under the final name).
/// A file delivered to the server gets the destination's `mode` before it gets its name — also
/// one without the owner's write bit, and also when it replaces an existing file.
pub async fn an_upload_gets_the_configured_mode(remote: &Remote) {
    use std::os::unix::fs::PermissionsExt;
    let (_nats, node) = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let up = dir.path().join("up");
    std::fs::create_dir_all(&up).expect("mkdir");
    std::fs::write(up.join("m.txt"), b"mode me").expect("write");
    std::fs::set_permissions(up.join("m.txt"), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let mut config = vec![remote.host("partner", true)];
    for mode in ["0640", "0440"] {
        let folder = remote
            .make_folder(&format!("up{mode}"))
            .await
            .expect("a server serving a local folder");
        std::fs::write(folder.join("m.txt"), b"an older file").expect("write");
        config.push(
            task(
                &format!("up{mode}"),
                ("local", &up.to_string_lossy()),
                ("partner", &remote.folder(&format!("up{mode}"))),
                "",
            ) + &format!("mode = \"{mode}\"\noverwrite = \"overwrite\"\n"),
        );
    }
    node.apply(&config.join("\n")).await.expect("apply");
    for (mode, bits) in [("0640", 0o640), ("0440", 0o440)] {
        let finished = run(&node, &format!("up{mode}")).await;
        assert_eq!(finished.files_delivered, 1, "{}", summary(&finished));
        let folder = remote.make_folder(&format!("up{mode}")).await.expect("folder");
        let delivered = folder.join("m.txt");
        assert_eq!(std::fs::read(&delivered).expect("delivered"), b"mode me");
        let got = std::fs::metadata(&delivered).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(got, bits, "{mode}");
    }
}

pub async fn a_download_gets_the_configured_mode(remote: &Remote) {
    use std::os::unix::fs::PermissionsExt;
    let (_nats, node) = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let down = dir.path().join("down");
    let folder = remote
        .make_folder("modes")
        .await
        .expect("a server serving a local folder");
    std::fs::write(folder.join("m.txt"), b"mode me").expect("write");
    let config = [
        remote.host("partner", true),
        task(
            "down",
            ("partner", &remote.folder("modes")),
            ("local", &down.to_string_lossy()),
            "",
        ) + "mode = \"0604\"\n",
    ]
    .join("\n");
    node.apply(&config).await.expect("apply");
    let finished = run(&node, "down").await;
    assert_eq!(finished.files_delivered, 1, "{}", summary(&finished));
    let mode = std::fs::metadata(down.join("m.txt"))
        .expect("delivered")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o604);
}
