//! The node's keymat: the master key that keeps secrets (host passwords, private keys) encrypted
//! at rest, and the sealing that `ferry apply` does before a configuration leaves the CLI.
//!
//! The keymat is an X25519 key pair. A secret is *sealed* to its public key: an ephemeral X25519
//! key agreement, HKDF-SHA256, then XChaCha20-Poly1305 with a random 24-byte nonce and the
//! secret's binding (`host/<name>/<field>`) as associated data, so a sealed value moved to another
//! field or host does not open. Sealing needs only the public key, so the CLI never holds the
//! keymat; opening needs the private key, which never leaves the node except in a
//! password-protected export (Argon2id, then XChaCha20-Poly1305).
//!
//! Invariants:
//! - the keymat file is created once, exclusively, with mode 0600, and never rewritten in place
//!   (an import replaces it by rename);
//! - a sealed secret names the key id it was sealed under, and opening it under another keymat
//!   fails with both ids, never with garbage;
//! - plaintext secrets live in [`Zeroizing`] buffers and have no `Debug`/`Display`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
pub use zeroize::Zeroizing;

use ferry_config::hosts::SEALED_PREFIX;
use ferry_config::{ConfigError, ConfigErrors, RawConfig, SECRET_FIELDS, Secret};

/// What can go wrong with keymats and secrets. Messages are written for operators.
#[derive(Debug, thiserror::Error)]
pub enum KeymatError {
    #[error(
        "a secret is sealed under keymat {sealed}, but this node's keymat is {node}: import the keymat the \
         configuration was written with (`ferry keymat import`) or apply the configuration again"
    )]
    Mismatch { sealed: String, node: String },
    #[error("the secret {binding} does not open: it was altered, or it belongs to another host or field")]
    Corrupt { binding: String },
    #[error("wrong password, or the keymat export is damaged")]
    WrongPassword,
    #[error("keymat file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Format(String),
}

/// The public half of a keymat: all `ferry apply` needs to seal secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub key_id: String,
    /// The X25519 public key, base64.
    pub public_key: String,
}

impl PublicKey {
    fn bytes(&self) -> Result<[u8; 32], KeymatError> {
        let raw = STANDARD
            .decode(&self.public_key)
            .map_err(|_| KeymatError::Format("public key is not base64".into()))?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|_| KeymatError::Format("public key is not 32 bytes".into()))?;
        if key_id_of(&bytes) != self.key_id {
            return Err(KeymatError::Format(format!(
                "public key does not match its key id {}",
                self.key_id
            )));
        }
        Ok(bytes)
    }
}

/// A node's keymat (private). Not `Debug`, not `Serialize`.
pub struct Keymat {
    secret: StaticSecret,
    public: [u8; 32],
    key_id: String,
}

/// The key id: 16 hex characters of the SHA-256 of the public key.
fn key_id_of(public: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// The keymat file (JSON, mode 0600).
#[derive(Serialize, Deserialize)]
struct KeymatFile {
    format: String,
    key_id: String,
    /// The X25519 private key, base64.
    private_key: String,
}

const FILE_FORMAT: &str = "ferry-keymat/1";
const EXPORT_FORMAT: &str = "ferry-keymat-export/1";

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

impl Keymat {
    /// A new random keymat.
    pub fn generate() -> Keymat {
        Keymat::from_secret(random::<32>())
    }

    fn from_secret(bytes: [u8; 32]) -> Keymat {
        let secret = StaticSecret::from(bytes);
        let public = XPublic::from(&secret).to_bytes();
        Keymat {
            key_id: key_id_of(&public),
            secret,
            public,
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key_id: self.key_id.clone(),
            public_key: STANDARD.encode(self.public),
        }
    }

    /// The keymat at `path`, created (exclusively, mode 0600) if there is none. Several services
    /// of one node may start at once: whoever creates it first wins and the others read it.
    pub fn load_or_create(path: &Path) -> Result<Keymat, KeymatError> {
        // The file appears whole or not at all (`write_new` links a complete temp into place),
        // so "exists" decides: never re-check after a failed read (another service may have
        // created it in between, and its error would be taken for a missing file).
        if path.exists() {
            return Keymat::load(path);
        }
        let fresh = Keymat::generate();
        match fresh.write_new(path) {
            Ok(()) => Ok(fresh),
            // Somebody else created it meanwhile.
            Err(_) if path.exists() => Keymat::load(path),
            Err(e) => Err(e),
        }
    }

    /// Read the keymat file at `path`.
    pub fn load(path: &Path) -> Result<Keymat, KeymatError> {
        let err = |message: String| KeymatError::File {
            path: path.to_path_buf(),
            message,
        };
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
        let file: KeymatFile = serde_json::from_str(&text).map_err(|e| err(format!("not a keymat: {e}")))?;
        if file.format != FILE_FORMAT {
            return Err(err(format!("unknown format {:?}", file.format)));
        }
        let raw = Zeroizing::new(
            STANDARD
                .decode(&file.private_key)
                .map_err(|_| err("private key is not base64".into()))?,
        );
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| err("private key is not 32 bytes".into()))?;
        let keymat = Keymat::from_secret(bytes);
        if keymat.key_id != file.key_id {
            return Err(err(format!(
                "key id {} does not match its key ({})",
                file.key_id, keymat.key_id
            )));
        }
        Ok(keymat)
    }

    fn file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(
            serde_json::to_string_pretty(&KeymatFile {
                format: FILE_FORMAT.into(),
                key_id: self.key_id.clone(),
                private_key: STANDARD.encode(self.secret.to_bytes()),
            })
            .expect("a keymat file serializes"),
        )
    }

    /// Write a temp file (0600, fsynced) beside `path`; returns its path.
    fn write_temp(&self, path: &Path) -> Result<PathBuf, KeymatError> {
        let err = |message: String| KeymatError::File {
            path: path.to_path_buf(),
            message,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| err(format!("create folder: {e}")))?;
        let temp = dir.join(format!(".keymat.{}.tmp", hex::encode(random::<8>())));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| err(format!("create {}: {e}", temp.display())))?;
        f.write_all(self.file_text().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| err(format!("write: {e}")))?;
        Ok(temp)
    }

    /// Create the keymat file; fails if one exists.
    fn write_new(&self, path: &Path) -> Result<(), KeymatError> {
        let temp = self.write_temp(path)?;
        // link() fails if `path` exists: exclusive creation of a complete file.
        let linked = fs::hard_link(&temp, path);
        let _ = fs::remove_file(&temp);
        linked.map_err(|e| KeymatError::File {
            path: path.to_path_buf(),
            message: format!("create: {e}"),
        })?;
        sync_parent(path);
        Ok(())
    }

    /// Install this keymat at `path`, replacing what is there (an import). Atomic: readers see the
    /// old file or the new one.
    pub fn install(&self, path: &Path) -> Result<(), KeymatError> {
        let temp = self.write_temp(path)?;
        fs::rename(&temp, path).map_err(|e| KeymatError::File {
            path: path.to_path_buf(),
            message: format!("replace: {e}"),
        })?;
        sync_parent(path);
        Ok(())
    }

    /// Open a sealed secret bound to `binding` (`host/<name>/<field>`).
    pub fn open(&self, binding: &str, secret: &Secret) -> Result<Zeroizing<String>, KeymatError> {
        if secret.key_id() != self.key_id {
            return Err(KeymatError::Mismatch {
                sealed: secret.key_id().to_string(),
                node: self.key_id.clone(),
            });
        }
        let corrupt = || KeymatError::Corrupt {
            binding: binding.to_string(),
        };
        let data = secret.sealed()[SEALED_PREFIX.len() + self.key_id.len() + 1..].to_string();
        let raw = URL_SAFE_NO_PAD.decode(data).map_err(|_| corrupt())?;
        if raw.len() < 32 + 24 + 16 {
            return Err(corrupt());
        }
        let (ephemeral, rest) = raw.split_at(32);
        let (nonce, ciphertext) = rest.split_at(24);
        let ephemeral: [u8; 32] = ephemeral.try_into().expect("split at 32");
        let shared = self.secret.diffie_hellman(&XPublic::from(ephemeral));
        let cipher = seal_cipher(shared.as_bytes(), &ephemeral, &self.public);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: binding.as_bytes(),
                    },
                )
                .map_err(|_| corrupt())?,
        );
        String::from_utf8(plain.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| corrupt())
    }

    /// The keymat encrypted under `password` (Argon2id, 64 MiB, 3 passes), as a JSON text.
    pub fn export(&self, password: &str) -> Result<String, KeymatError> {
        if password.len() < 8 {
            return Err(KeymatError::Format(
                "the export password must have at least 8 characters".into(),
            ));
        }
        let salt = random::<16>();
        let nonce = random::<24>();
        let params = KdfParams::default();
        let key = params.derive(password, &salt)?;
        let cipher = XChaCha20Poly1305::new(key.as_slice().into());
        let plain = self.file_text();
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: EXPORT_FORMAT.as_bytes(),
                },
            )
            .expect("encryption with a fresh nonce does not fail");
        let export = ExportFile {
            format: EXPORT_FORMAT.into(),
            key_id: self.key_id.clone(),
            kdf: params,
            salt: STANDARD.encode(salt),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        };
        Ok(serde_json::to_string_pretty(&export).expect("an export serializes"))
    }

    /// Read an export made by [`Keymat::export`].
    pub fn import(text: &str, password: &str) -> Result<Keymat, KeymatError> {
        let export: ExportFile = serde_json::from_str(text)
            .map_err(|e| KeymatError::Format(format!("not a Ferry keymat export: {e}")))?;
        if export.format != EXPORT_FORMAT {
            return Err(KeymatError::Format(format!(
                "unknown keymat export format {:?}",
                export.format
            )));
        }
        let decode = |field: &str, v: &str| {
            STANDARD
                .decode(v)
                .map_err(|_| KeymatError::Format(format!("keymat export: {field} is not base64")))
        };
        let salt = decode("salt", &export.salt)?;
        let nonce = decode("nonce", &export.nonce)?;
        let ciphertext = decode("ciphertext", &export.ciphertext)?;
        if nonce.len() != 24 {
            return Err(KeymatError::Format("keymat export: bad nonce".into()));
        }
        let key = export.kdf.derive(password, &salt)?;
        let cipher = XChaCha20Poly1305::new(key.as_slice().into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: EXPORT_FORMAT.as_bytes(),
                    },
                )
                .map_err(|_| KeymatError::WrongPassword)?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| KeymatError::WrongPassword)?;
        let file: KeymatFile = serde_json::from_str(text).map_err(|_| KeymatError::WrongPassword)?;
        let raw = Zeroizing::new(
            STANDARD
                .decode(&file.private_key)
                .map_err(|_| KeymatError::WrongPassword)?,
        );
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| KeymatError::WrongPassword)?;
        let keymat = Keymat::from_secret(bytes);
        if keymat.key_id != export.key_id || keymat.key_id != file.key_id {
            return Err(KeymatError::Format(
                "keymat export: key id does not match its key".into(),
            ));
        }
        Ok(keymat)
    }
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

fn seal_cipher(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> XChaCha20Poly1305 {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(b"ferry-keymat seal v1", key.as_mut_slice())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    XChaCha20Poly1305::new(key.as_slice().into())
}

/// Seal `plaintext` to `public`, bound to `binding` (`host/<name>/<field>`).
pub fn seal(public: &PublicKey, binding: &str, plaintext: &str) -> Result<Secret, KeymatError> {
    let recipient = public.bytes()?;
    let ephemeral = StaticSecret::from(random::<32>());
    let ephemeral_public = XPublic::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&XPublic::from(recipient));
    let cipher = seal_cipher(shared.as_bytes(), &ephemeral_public, &recipient);
    let nonce = random::<24>();
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext.as_bytes(),
                aad: binding.as_bytes(),
            },
        )
        .expect("encryption with a fresh nonce does not fail");
    let mut data = Vec::with_capacity(32 + 24 + ciphertext.len());
    data.extend_from_slice(&ephemeral_public);
    data.extend_from_slice(&nonce);
    data.extend_from_slice(&ciphertext);
    let text = format!(
        "{SEALED_PREFIX}{}:{}",
        public.key_id,
        URL_SAFE_NO_PAD.encode(data)
    );
    Secret::try_from(text).map_err(KeymatError::Format)
}

/// Argon2id parameters of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KdfParams {
    algorithm: String,
    memory_kib: u32,
    passes: u32,
    lanes: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            algorithm: "argon2id".into(),
            memory_kib: 64 * 1024,
            passes: 3,
            lanes: 1,
        }
    }
}

impl KdfParams {
    fn derive(&self, password: &str, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeymatError> {
        if self.algorithm != "argon2id" {
            return Err(KeymatError::Format(format!(
                "keymat export: unknown key derivation {:?}",
                self.algorithm
            )));
        }
        // Bounds keep a hostile file from asking for unbounded memory or time.
        if !(8 * 1024..=1024 * 1024).contains(&self.memory_kib)
            || !(1..=16).contains(&self.passes)
            || self.lanes != 1
        {
            return Err(KeymatError::Format(
                "keymat export: key derivation parameters out of range".into(),
            ));
        }
        let params = argon2::Params::new(self.memory_kib, self.passes, self.lanes, Some(32))
            .map_err(|e| KeymatError::Format(format!("keymat export: {e}")))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(password.as_bytes(), salt, key.as_mut_slice())
            .map_err(|e| KeymatError::Format(format!("keymat export: {e}")))?;
        Ok(key)
    }
}

#[derive(Serialize, Deserialize)]
struct ExportFile {
    format: String,
    key_id: String,
    kdf: KdfParams,
    salt: String,
    nonce: String,
    ciphertext: String,
}

/// A node's keymat file, read again whenever it changes on disk (`ferry keymat import` replaces
/// it while the services run).
pub struct KeymatStore {
    path: PathBuf,
    current: std::sync::Mutex<Option<(FileStamp, std::sync::Arc<Keymat>)>>,
}

/// What identifies one version of the file.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

impl KeymatStore {
    /// The keymat at `path`, created if the node has none yet.
    pub fn open_or_create(path: &Path) -> Result<KeymatStore, KeymatError> {
        let store = KeymatStore {
            path: path.to_path_buf(),
            current: std::sync::Mutex::new(None),
        };
        Keymat::load_or_create(path)?;
        store.current()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keymat as the file holds it now.
    pub fn current(&self) -> Result<std::sync::Arc<Keymat>, KeymatError> {
        let mut current = self.current.lock().expect("the keymat lock is never poisoned");
        let now = stamp(&self.path);
        if let Some((seen, keymat)) = current.as_ref()
            && Some(*seen) == now
        {
            return Ok(keymat.clone());
        }
        let keymat = std::sync::Arc::new(Keymat::load(&self.path)?);
        if let Some(now) = now {
            *current = Some((now, keymat.clone()));
        }
        Ok(keymat)
    }
}

/// Where the secret value written in a configuration comes from.
fn resolve(field: &str, written: &str) -> Result<Zeroizing<String>, String> {
    // Keys keep their exact text; one trailing newline of a password file is not the password.
    let keep_exact = matches!(field, "private_key" | "client_key");
    let trim = |s: String| -> String {
        if keep_exact {
            s
        } else {
            s.strip_suffix("\r\n")
                .or_else(|| s.strip_suffix('\n'))
                .map(str::to_string)
                .unwrap_or(s)
        }
    };
    if let Some(var) = written.strip_prefix("env:") {
        return std::env::var(var)
            .map(|v| Zeroizing::new(trim(v)))
            .map_err(|_| format!("names the environment variable {var:?}, which is not set"));
    }
    if let Some(path) = written.strip_prefix("file:") {
        return fs::read_to_string(path)
            .map(|v| Zeroizing::new(trim(v)))
            .map_err(|e| format!("names the file {path:?}: {e}"));
    }
    Ok(Zeroizing::new(written.to_string()))
}

/// Seal every secret of a configuration as `ferry apply` sends it: plain values, `env:VAR` and
/// `file:PATH` (read here, on the operator's machine) become sealed values under `public`;
/// values already sealed must be sealed under the same keymat. Errors name host and field, never
/// the value.
pub fn seal_config(raw: &mut RawConfig, public: &PublicKey) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    for (i, host) in raw.host.iter_mut().enumerate() {
        let name = host.get("name").and_then(toml::Value::as_str).map(str::to_string);
        let scope = match &name {
            Some(n) => format!("host {n:?}"),
            None => format!("host[{i}]"),
        };
        let Some(table) = host.as_table_mut() else {
            continue;
        };
        for field in SECRET_FIELDS {
            let Some(toml::Value::String(written)) = table.get(*field) else {
                continue;
            };
            let binding = name.as_ref().map(|name| Secret::binding(name, field));
            match seal_written(public, field, written, binding.as_deref()) {
                Ok(Some(sealed)) => {
                    table.insert(field.to_string(), toml::Value::String(sealed));
                }
                Ok(None) => {}
                Err(message) => errors.push(ConfigError {
                    scope: scope.clone(),
                    field: field.to_string(),
                    value: String::new(),
                    message,
                }),
            }
        }
    }
    // Secure parameters and next actions' passwords: the same rules, bound to where they stand.
    for slot in raw.secret_slots_mut() {
        let toml::Value::String(written) = &*slot.value else {
            continue;
        };
        match seal_written(public, &slot.field, written, Some(&slot.binding)) {
            Ok(Some(sealed)) => *slot.value = toml::Value::String(sealed),
            Ok(None) => {}
            Err(message) => errors.push(ConfigError {
                scope: slot.scope.clone(),
                field: slot.field.clone(),
                value: String::new(),
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// One secret as written in a configuration: `Ok(Some(sealed))` to store instead, `Ok(None)` to
/// keep as it is (sealed under `public` already, or nothing to bind it to yet — that error is
/// reported elsewhere), or why it cannot be sealed (never naming the value).
fn seal_written(
    public: &PublicKey,
    field: &str,
    written: &str,
    binding: Option<&str>,
) -> Result<Option<String>, String> {
    if written.starts_with(SEALED_PREFIX) {
        return match Secret::try_from(written.to_string()) {
            Ok(s) if s.key_id() == public.key_id => Ok(None),
            Ok(s) => Err(format!(
                "is sealed under keymat {}, but the node's keymat is {}: write the value itself \
                 (or env:VAR / file:PATH) instead",
                s.key_id(),
                public.key_id
            )),
            Err(m) => Err(m),
        };
    }
    let Some(binding) = binding else {
        return Ok(None);
    };
    let plain = resolve(field, written)?;
    if plain.is_empty() {
        return Err("is empty".into());
    }
    let sealed = seal(public, binding, &plain).map_err(|e| e.to_string())?;
    Ok(Some(sealed.sealed().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_keymat_and_binding() {
        let keymat = Keymat::generate();
        let sealed = seal(&keymat.public(), "host/a/password", "hunter2").expect("seals");
        assert!(!sealed.sealed().contains("hunter2"));
        assert_eq!(sealed.key_id(), keymat.key_id());
        assert_eq!(
            &*keymat.open("host/a/password", &sealed).expect("opens"),
            "hunter2"
        );
        // Moved to another field or host: refused.
        assert!(matches!(
            keymat.open("host/b/password", &sealed),
            Err(KeymatError::Corrupt { .. })
        ));
        // Another keymat: refused with both ids.
        let other = Keymat::generate();
        let err = other.open("host/a/password", &sealed).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(keymat.key_id()) && text.contains(other.key_id()),
            "{text}"
        );
    }

    #[test]
    fn export_and_import_round_trip_and_a_wrong_password_is_refused() {
        let keymat = Keymat::generate();
        let text = keymat.export("correct horse").expect("exports");
        assert!(!text.contains(&STANDARD.encode(keymat.secret.to_bytes())));
        let back = Keymat::import(&text, "correct horse").expect("imports");
        assert_eq!(back.key_id(), keymat.key_id());
        assert!(matches!(
            Keymat::import(&text, "wrong horse"),
            Err(KeymatError::WrongPassword)
        ));
        assert!(keymat.export("short").is_err());
    }

    #[test]
    fn services_starting_together_share_one_keymat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keymat");
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| Keymat::load_or_create(&path).map(|k| k.key_id().to_string())))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .expect("no panic")
                        .expect("every service gets the keymat")
                })
                .collect()
        });
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    }

    #[test]
    fn the_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/keymat");
        let first = Keymat::load_or_create(&path).expect("creates");
        let again = Keymat::load_or_create(&path).expect("loads");
        assert_eq!(first.key_id(), again.key_id());
        let mode = fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let other = Keymat::generate();
        other.install(&path).expect("installs");
        assert_eq!(Keymat::load(&path).expect("loads").key_id(), other.key_id());
    }

    #[test]
    fn a_configuration_is_sealed_field_by_field() {
        let keymat = Keymat::generate();
        // SAFETY: single-threaded test set-up; no other thread reads the environment here.
        unsafe { std::env::set_var("FERRY_TEST_SEAL_PW", "from-env\n") };
        let mut raw = ferry_config::parse_toml(
            r#"
[[host]]
name = "a"
kind = "sftp"
password = "env:FERRY_TEST_SEAL_PW"
[[host]]
name = "b"
kind = "sftp"
password = "env:FERRY_TEST_SEAL_MISSING"
"#,
        )
        .expect("parses");
        let err = seal_config(&mut raw, &keymat.public()).expect_err("one variable is missing");
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].scope, "host \"b\"");
        assert!(err.0[0].message.contains("FERRY_TEST_SEAL_MISSING"));
        let sealed = Secret::try_from(raw.host[0]["password"].as_str().expect("a string").to_string())
            .expect("sealed");
        assert_eq!(
            &*keymat.open("host/a/password", &sealed).expect("opens"),
            "from-env"
        );
    }
}
