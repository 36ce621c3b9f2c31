//! GnuPG in an isolated home folder, for the PGP interop tests.

#![allow(dead_code)] // each test file uses a different part

use std::path::Path;
use std::process::{Command, Output};

/// A GnuPG home in a temp folder; its agent is stopped on drop.
pub struct Gpg {
    pub home: tempfile::TempDir,
}

/// One generated key: its fingerprint and the key id of its encryption subkey.
pub struct Key {
    pub uid: String,
    pub fpr: String,
    pub enc_keyid: String,
}

impl Gpg {
    pub fn new() -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .expect("gpg home");
        std::fs::set_permissions(home.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
        Gpg { home }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.arg("--homedir").arg(self.home.path()).args([
            "--batch",
            "--no-tty",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    }

    /// Runs gpg, which must succeed; returns its output.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().expect("run gpg");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// An ed25519 signing key with a cv25519 encryption subkey (GnuPG's "future-default").
    pub fn generate(&self, uid: &str) -> Key {
        self.ok(&["--quick-gen-key", uid, "future-default", "default", "never"]);
        self.describe(uid)
    }

    /// An RSA-3072 signing key with an RSA-3072 encryption subkey (what most partners still send).
    pub fn generate_rsa(&self, uid: &str) -> Key {
        self.ok(&["--quick-gen-key", uid, "rsa3072", "sign,cert", "never"]);
        let fpr = self.describe_primary(uid);
        self.ok(&["--quick-add-key", &fpr, "rsa3072", "encr", "never"]);
        self.describe(uid)
    }

    fn describe_primary(&self, uid: &str) -> String {
        let listing =
            String::from_utf8(self.ok(&["--with-colons", "--list-keys", uid]).stdout).expect("utf8");
        listing
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("a fingerprint")
            .to_string()
    }

    fn describe(&self, uid: &str) -> Key {
        let listing =
            String::from_utf8(self.ok(&["--with-colons", "--list-keys", uid]).stdout).expect("utf8");
        let fpr = listing
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("a fingerprint")
            .to_string();
        let enc_keyid = listing
            .lines()
            .find(|l| l.starts_with("sub:") && l.split(':').nth(11).is_some_and(|c| c.contains('e')))
            .and_then(|l| l.split(':').nth(4))
            .expect("an encryption subkey")
            .to_string();
        Key {
            uid: uid.to_string(),
            fpr,
            enc_keyid,
        }
    }

    pub fn export_public(&self, key: &Key) -> Vec<u8> {
        self.ok(&["--armor", "--export", &key.fpr]).stdout
    }

    pub fn export_secret(&self, key: &Key) -> Vec<u8> {
        self.ok(&["--armor", "--export-secret-keys", &key.fpr]).stdout
    }

    pub fn import(&self, key_bytes: &[u8], dir: &Path) {
        let p = dir.join("import.asc");
        std::fs::write(&p, key_bytes).expect("write key");
        self.ok(&["--import", p.to_str().expect("utf8")]);
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}
