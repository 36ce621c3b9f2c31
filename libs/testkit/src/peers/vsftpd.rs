//! `vsftpd` for the FTP host's tests: plain FTP, explicit FTPS (`AUTH TLS`) or implicit FTPS,
//! always with TLS session reuse required on data connections when TLS is on (as hardened servers
//! do), and optionally requiring a client certificate. Its certificates are generated at start
//! with `openssl` ([`TestPki`]: a throw-away CA, a server certificate for 127.0.0.1 and a client
//! certificate) and live in the peer's temp dir only.
//!
//! vsftpd forks one process (pair) per login and each calls `setsid`, so killing the listener
//! leaves sessions running: [`Vsftpd::kill`] and [`Vsftpd::pause`] act on the listener and every
//! process descended from it, found through `/proc`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::{ProcessTree, TEST_PASSWORD, TEST_USER, chown_to, ensure_user, free_port, set_mode};

/// How the server protects its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FtpTls {
    /// Plain FTP.
    None,
    /// `AUTH TLS` on the control port; TLS required for logins and data.
    Explicit,
    /// TLS from the first byte.
    Implicit,
}

/// What to start.
#[derive(Debug, Clone, Copy)]
pub struct VsftpdConfig {
    pub tls: FtpTls,
    /// Ask for a client certificate signed by the test CA and refuse connections without one.
    pub require_client_cert: bool,
}

impl VsftpdConfig {
    pub fn new(tls: FtpTls) -> VsftpdConfig {
        VsftpdConfig {
            tls,
            require_client_cert: false,
        }
    }
}

/// Test certificates, PEM files in a folder: a CA, a server certificate for `127.0.0.1` and a
/// client certificate, both signed by the CA.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// How many days each certificate of a [`TestPki`] is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub ca_days: u32,
    pub server_days: u32,
    pub client_days: u32,
}

impl TestPki {
    /// Generate a fresh set in `dir` with `openssl` (valid for two days).
    pub fn generate(dir: &Path) -> anyhow::Result<TestPki> {
        TestPki::generate_valid(
            dir,
            Validity {
                ca_days: 2,
                server_days: 2,
                client_days: 2,
            },
        )
    }

    /// Generate a fresh set in `dir`, each certificate valid as `validity` says (a test of expiry
    /// monitoring wants a client certificate that expires soon under a long-lived CA).
    pub fn generate_valid(dir: &Path, validity: Validity) -> anyhow::Result<TestPki> {
        let days = |d: u32| d.to_string();
        let (ca_days, server_days, client_days) = (
            days(validity.ca_days),
            days(validity.server_days),
            days(validity.client_days),
        );
        std::fs::create_dir_all(dir)?;
        let path = |name: &str| dir.join(name);
        let pki = TestPki {
            ca_cert: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
        };
        let ca_key = path("ca.key");
        openssl(&[
            "req".as_ref(),
            "-x509".as_ref(),
            "-newkey".as_ref(),
            "rsa:2048".as_ref(),
            "-nodes".as_ref(),
            "-days".as_ref(),
            ca_days.as_ref(),
            "-subj".as_ref(),
            "/CN=Ferry Test CA".as_ref(),
            "-addext".as_ref(),
            "basicConstraints=critical,CA:TRUE".as_ref(),
            "-addext".as_ref(),
            "keyUsage=critical,keyCertSign,cRLSign".as_ref(),
            "-keyout".as_ref(),
            ca_key.as_os_str(),
            "-out".as_ref(),
            pki.ca_cert.as_os_str(),
        ])?;
        for (serial, days, cert, key, cn, ext) in [
            (
                "2",
                &server_days,
                &pki.server_cert,
                &pki.server_key,
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "3",
                &client_days,
                &pki.client_cert,
                &pki.client_key,
                "ferry-test-client",
                "extendedKeyUsage=clientAuth\n",
            ),
        ] {
            let csr = cert.with_extension("csr");
            let ext_file = cert.with_extension("ext");
            std::fs::write(
                &ext_file,
                format!(
                    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{ext}"
                ),
            )?;
            let subject = format!("/CN={cn}");
            openssl(&[
                "req".as_ref(),
                "-newkey".as_ref(),
                "rsa:2048".as_ref(),
                "-nodes".as_ref(),
                "-subj".as_ref(),
                subject.as_ref(),
                "-keyout".as_ref(),
                key.as_os_str(),
                "-out".as_ref(),
                csr.as_os_str(),
            ])?;
            openssl(&[
                "x509".as_ref(),
                "-req".as_ref(),
                "-days".as_ref(),
                days.as_ref(),
                "-set_serial".as_ref(),
                serial.as_ref(),
                "-in".as_ref(),
                csr.as_os_str(),
                "-CA".as_ref(),
                pki.ca_cert.as_os_str(),
                "-CAkey".as_ref(),
                ca_key.as_os_str(),
                "-extfile".as_ref(),
                ext_file.as_os_str(),
                "-out".as_ref(),
                cert.as_os_str(),
            ])?;
        }
        // Ferry refuses a client key others may read.
        std::fs::set_permissions(&pki.client_key, std::fs::Permissions::from_mode(0o600))?;
        Ok(pki)
    }
}

fn openssl(args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run openssl (install it with scripts/install-deps.sh peers)")?;
    if !out.status.success() {
        bail!(
            "openssl {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A running vsftpd on a random loopback port, serving [`Vsftpd::root`] to
/// [`TEST_USER`]/[`TEST_PASSWORD`], killed (with all its sessions) on drop.
pub struct Vsftpd {
    tree: ProcessTree,
    dir: tempfile::TempDir,
    conf: PathBuf,
    root: PathBuf,
    port: u16,
    pki: Option<TestPki>,
}

impl Vsftpd {
    pub fn start(config: VsftpdConfig) -> anyhow::Result<Vsftpd> {
        let binary = vsftpd_path();
        if !binary.exists() {
            bail!(
                "{} is missing: install the test peers with `scripts/install-deps.sh peers .ferry/tools`",
                binary.display()
            );
        }
        // Once per process: tests start peers in parallel, and concurrent `chpasswd` runs can
        // fail on the password file's lock.
        static USER: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        USER.get_or_init(|| ensure_user(TEST_USER, TEST_PASSWORD).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)?;
        let dir = tempfile::Builder::new().prefix("ferry-vsftpd-").tempdir()?;
        // The session runs as the test user, which must reach the served folder.
        set_mode(dir.path(), 0o755)?;
        let root = dir.path().join("root");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&root)?;
        std::fs::create_dir(&empty)?;
        chown_to(&root, TEST_USER)?;
        let pki = match config.tls {
            FtpTls::None => None,
            _ => {
                let certs = dir.path().join("certs");
                std::fs::create_dir(&certs)?;
                let pki = TestPki::generate(&certs)?;
                // The client's files are read by the tests, not by vsftpd.
                set_mode(&certs, 0o755)?;
                for f in [&pki.ca_cert, &pki.client_cert, &pki.client_key] {
                    set_mode(f, 0o644)?;
                }
                Some(pki)
            }
        };
        // lock_upload_files=NO: by default vsftpd makes a download wait for an upload of the same
        // file to end, and the conformance suite reads a temp file while its upload is open.
        let mut conf = format!(
            "listen=YES\nlisten_address=127.0.0.1\nbackground=NO\nlocal_enable=YES\nwrite_enable=YES\n\
             local_umask=022\nlocal_root={root}\npasv_address=127.0.0.1\nsecure_chroot_dir={empty}\n\
             pam_service_name=vsftpd\nseccomp_sandbox=NO\nxferlog_enable=YES\nvsftpd_log_file={log}\n\
             max_per_ip=0\nmax_clients=0\nlock_upload_files=NO\n",
            root = root.display(),
            empty = empty.display(),
            log = dir.path().join("vsftpd.log").display(),
        );
        if let Some(pki) = &pki {
            conf += &format!(
                "ssl_enable=YES\nrsa_cert_file={}\nrsa_private_key_file={}\nforce_local_logins_ssl=YES\n\
                 force_local_data_ssl=YES\nrequire_ssl_reuse=YES\n",
                pki.server_cert.display(),
                pki.server_key.display()
            );
            if config.tls == FtpTls::Implicit {
                conf += "implicit_ssl=YES\n";
            }
            if config.require_client_cert {
                conf += &format!(
                    "require_cert=YES\nvalidate_cert=YES\nca_certs_file={}\n",
                    pki.ca_cert.display()
                );
            }
        }
        let conf_path = dir.path().join("vsftpd.conf");
        let mut server = Vsftpd {
            tree: ProcessTree::default(),
            dir,
            conf: conf_path,
            root,
            port: 0,
            pki,
        };
        // A port picked by `free_port` can be taken before vsftpd binds it: try a few.
        let mut last = None;
        for _ in 0..3 {
            server.port = free_port()?;
            std::fs::write(&server.conf, format!("{conf}listen_port={}\n", server.port))?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test user's login folder (what `PWD` answers right after login).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The generated certificates (`None` for plain FTP).
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// vsftpd's own log (logins, transfers, failures).
    pub fn log(&self) -> String {
        vsftpd_log(self.dir.path())
    }

    /// SIGKILL the listener and every session (connections break without a goodbye).
    pub fn kill(&mut self) {
        self.tree.kill();
    }

    /// Kill and start again on the same port with the same configuration and files.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Freeze the listener and every session (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&mut self) {
        self.tree.pause();
    }

    /// Undo [`Vsftpd::pause`].
    pub fn resume(&mut self) {
        self.tree.resume();
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let stderr = std::fs::File::create(self.dir.path().join("stderr.log"))?;
        let child = Command::new(vsftpd_path())
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("start {}", vsftpd_path().display()))?;
        let dir = self.dir.path().to_path_buf();
        self.tree
            .adopt(child, "vsftpd", self.port, move || vsftpd_log(&dir))
    }
}

fn vsftpd_log(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("vsftpd.log")).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    format!("{log}{stderr}")
}

fn vsftpd_path() -> PathBuf {
    ["/usr/sbin/vsftpd", "/usr/local/sbin/vsftpd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/vsftpd"))
}
