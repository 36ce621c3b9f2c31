//! Host kinds and their settings: the raw form operators write in a `[[host]]` table and the
//! validated form the services connect with (`ferry-hosts` builds a connection from it).
//!
//! A host table is read in two passes: the fields every remote kind shares ([`RawHostOptions`]:
//! timeouts, retries, pool) and then the kind's own fields, from what is left. So each kind's
//! struct denies unknown fields without repeating the shared ones.
//!
//! Secrets (passwords, keys) are [`Secret`]s: in a stored configuration they are always sealed
//! under the node's keymat (`ferry-keymat`); `ferry apply` seals them before anything leaves the
//! CLI. The names of the fields that hold secrets are [`SECRET_FIELDS`].

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Fields of a `[[host]]` table that hold secrets. The CLI seals these (plain values, `env:VAR`
/// or `file:PATH`) before a configuration leaves it; validation accepts only sealed values there.
pub const SECRET_FIELDS: &[&str] = &[
    "password",
    "private_key",
    "passphrase",
    "client_key",
    "secret_access_key",
    "session_token",
    "access_key",
    "sas_token",
];

/// The prefix of a sealed secret's text (`ferry-keymat` writes and reads the rest).
pub const SEALED_PREFIX: &str = "ferry-sealed:v1:";

/// A secret as stored: sealed under the node's keymat, bound to the host name and field. It can
/// only be opened with the keymat (`ferry_keymat::Keymat::open`). Debug and Display never show
/// it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Secret(String);

impl Secret {
    /// The sealed text (`ferry-sealed:v1:<key id>:<data>`).
    pub fn sealed(&self) -> &str {
        &self.0
    }

    /// Id of the keymat it was sealed under.
    pub fn key_id(&self) -> &str {
        self.0[SEALED_PREFIX.len()..]
            .split(':')
            .next()
            .unwrap_or_default()
    }

    /// Where a secret is bound: `host/<name>/<field>` (the AEAD's associated data).
    pub fn binding(host: &str, field: &str) -> String {
        format!("host/{host}/{field}")
    }
}

impl TryFrom<String> for Secret {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let rest = text.strip_prefix(SEALED_PREFIX).ok_or_else(|| {
            "is not sealed: secrets are sealed by `ferry apply` (write the value, `env:VAR` or \
             `file:PATH` in the file you apply)"
                .to_string()
        })?;
        match rest.split_once(':') {
            Some((id, data)) if !id.is_empty() && !data.is_empty() => Ok(Secret(text)),
            _ => Err("is not a well-formed sealed secret".to_string()),
        }
    }
}

impl From<Secret> for String {
    fn from(s: Secret) -> String {
        s.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(sealed under {})", self.key_id())
    }
}

/// The kinds of host. `local` is the node's own file system.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum HostKind {
    Local,
    Sftp,
    Ftp,
    Smb,
    S3,
    Azure,
}

impl HostKind {
    pub const ALL: &[HostKind] = &[
        HostKind::Local,
        HostKind::Sftp,
        HostKind::Ftp,
        HostKind::Smb,
        HostKind::S3,
        HostKind::Azure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostKind::Local => "local",
            HostKind::Sftp => "sftp",
            HostKind::Ftp => "ftp",
            HostKind::Smb => "smb",
            HostKind::S3 => "s3",
            HostKind::Azure => "azure",
        }
    }

    pub fn parse(text: &str) -> Option<HostKind> {
        HostKind::ALL.iter().copied().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for HostKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Raw form.
// ---------------------------------------------------------------------------------------------

/// Settings every remote host has. Defaults suit a partner's server over the internet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RawHostOptions {
    /// Give up connecting (TCP, TLS and login) after this many seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Give up on one operation (a listing, one read or write request) that makes no progress for
    /// this many seconds.
    #[serde(default = "default_operation_timeout")]
    pub operation_timeout_secs: u64,
    /// Close pooled connections idle for this many seconds.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Retries of a transient failure (connection lost, timeout, server busy) before a file — or
    /// a source's listing, which would fail the run — fails; a task may override it.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Seconds to wait before the first retry; each later retry waits twice as long (at most 5
    /// minutes).
    #[serde(default = "default_retry_wait")]
    pub retry_wait_secs: u64,
    /// At most this many connections to the host from one service instance.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// One attempt at copying a file may take at most `connect_timeout_secs` +
    /// `operation_timeout_secs` plus its size at this rate (KiB/s): a server that trickles its bytes cannot hold a transfer for good. The
    /// attempt then fails as a transient failure (and is retried). 0: no limit.
    #[serde(default = "default_min_rate")]
    pub min_rate_kib: u64,
    /// How a written file is verified: `auto` (the strongest check the kind offers without
    /// downloading: a server-side SHA-256 where there is one, otherwise the stored size, with the
    /// protocol's own integrity on the wire) or `read_back` (download it again and compare
    /// SHA-256s: twice the traffic).
    #[serde(default)]
    pub verify: Verify,
}

/// How a written file is verified.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    #[default]
    Auto,
    ReadBack,
}

fn default_connect_timeout() -> u64 {
    15
}
fn default_operation_timeout() -> u64 {
    60
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_retries() -> u32 {
    3
}
fn default_retry_wait() -> u64 {
    5
}
fn default_min_rate() -> u64 {
    16
}
fn default_max_connections() -> u32 {
    8
}

/// The field names of [`RawHostOptions`] (the first pass reads them, the second leaves them out).
pub const HOST_OPTION_FIELDS: &[&str] = &[
    "connect_timeout_secs",
    "operation_timeout_secs",
    "idle_timeout_secs",
    "retries",
    "retry_wait_secs",
    "max_connections",
    "min_rate_kib",
    "verify",
];

/// `kind = "local"`: another name for the node's own file system (no other fields).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLocalHost {
    pub name: String,
    pub kind: String,
}

/// `kind = "sftp"`: an SSH file transfer server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSftpHost {
    pub name: String,
    pub kind: String,
    /// Server name or IP address.
    pub address: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub user: String,
    /// Password (also answers keyboard-interactive prompts). Secret.
    #[serde(default)]
    pub password: Option<String>,
    /// Private key (OpenSSH or PEM text; `file:PATH` reads it at apply time). Secret.
    #[serde(default)]
    pub private_key: Option<String>,
    /// Passphrase of the private key. Secret.
    #[serde(default)]
    pub passphrase: Option<String>,
    /// Accepted host keys, as SHA-256 fingerprints (`SHA256:…`, as `ssh-keygen -lf` prints them).
    #[serde(default)]
    pub host_key_sha256: Vec<String>,
    /// A known_hosts file on the node with the server's key (alternative to `host_key_sha256`).
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// Accept any host key: a man in the middle could read and change everything. Tests only.
    #[serde(default)]
    pub insecure_accept_any_host_key: bool,
}

fn default_ssh_port() -> u16 {
    22
}

/// How an FTP host protects its connections.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FtpTls {
    /// Explicit FTPS: `AUTH TLS` on the FTP port, then TLS on every data connection.
    #[default]
    Explicit,
    /// Implicit FTPS: TLS from the first byte (port 990 by default).
    Implicit,
    /// Plain FTP: password and files travel unencrypted. Choose it only for a partner that has
    /// nothing else.
    None,
}

/// Who opens an FTP data connection.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FtpMode {
    /// The client connects to the server (`PASV`/`EPSV`): works through client-side firewalls.
    #[default]
    Passive,
    /// The server connects back to the client (`PORT`/`EPRT`).
    Active,
}

/// `kind = "ftp"`: an FTP or FTPS server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawFtpHost {
    pub name: String,
    pub kind: String,
    pub address: String,
    /// 21, or 990 with `tls = "implicit"`.
    #[serde(default)]
    pub port: Option<u16>,
    pub user: String,
    /// Secret.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub tls: FtpTls,
    #[serde(default)]
    pub mode: FtpMode,
    /// PEM file of CA certificates to trust instead of the system's.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM file of a client certificate (chain) to present.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// The client certificate's private key (PEM text; `file:PATH`). Secret.
    #[serde(default)]
    pub client_key: Option<String>,
    /// Accept any server certificate: a man in the middle could read and change everything.
    /// Tests only.
    #[serde(default)]
    pub insecure_accept_any_certificate: bool,
    /// Commands sent after login (the reference product's sign-on QUOTE commands), e.g.
    /// `["SITE UMASK 002"]`; a reply other than 2xx fails the connection.
    #[serde(default)]
    pub sign_on_commands: Vec<String>,
}

/// Whether SMB traffic is encrypted.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SmbEncryption {
    /// Encrypt (SMB 3); refuse a server that cannot.
    #[default]
    Required,
    /// Encrypt when the server can; otherwise sign.
    Desired,
    /// Sign only.
    Off,
}

/// `kind = "smb"`: a Windows (or Samba) share.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSmbHost {
    pub name: String,
    pub kind: String,
    /// The share: `\\server\share` or `smb://server[:port]/share`.
    pub share: String,
    /// TCP port (445); a port in an `smb://` URL wins.
    #[serde(default)]
    pub port: Option<u16>,
    pub user: String,
    /// Secret.
    #[serde(default)]
    pub password: Option<String>,
    /// NTLM domain (empty for a local account of the server).
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub encryption: SmbEncryption,
}

/// `kind = "s3"`: an Amazon S3 bucket or an S3-compatible store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawS3Host {
    pub name: String,
    pub kind: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint URL of an S3-compatible store (default: AWS).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`.
    #[serde(default)]
    pub path_style: bool,
    /// Allow an `http://` endpoint (no TLS). Tests and private networks only.
    #[serde(default)]
    pub allow_http: bool,
    pub access_key_id: String,
    /// Secret.
    pub secret_access_key: String,
    /// Secret.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Files larger than this go up in parts of this size (multipart upload).
    #[serde(default = "default_part_bytes")]
    pub part_bytes: u64,
}

fn default_region() -> String {
    "us-east-1".to_string()
}
fn default_part_bytes() -> u64 {
    16 << 20
}

/// `kind = "azure"`: an Azure Blob Storage container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAzureHost {
    pub name: String,
    pub kind: String,
    pub account: String,
    pub container: String,
    /// Account key. Secret. One of `access_key` and `sas_token`.
    #[serde(default)]
    pub access_key: Option<String>,
    /// Shared access signature (query string). Secret.
    #[serde(default)]
    pub sas_token: Option<String>,
    /// Endpoint URL (default `https://<account>.blob.core.windows.net`), e.g. Azurite's.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow an `http://` endpoint (no TLS). Tests and private networks only.
    #[serde(default)]
    pub allow_http: bool,
    /// Files larger than this go up in blocks of this size.
    #[serde(default = "default_part_bytes")]
    pub part_bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Validated form.
// ---------------------------------------------------------------------------------------------

/// The most `retries` a host or task may set.
pub const MAX_RETRIES: u32 = 100;
/// The longest `retry_wait_secs` a host or task may set.
pub const MAX_RETRY_WAIT_SECS: u64 = 3600;

/// Validated settings shared by every remote host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostOptions {
    pub connect_timeout_secs: u64,
    pub operation_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub retries: u32,
    pub retry_wait_secs: u64,
    pub max_connections: u32,
    /// See [`RawHostOptions::min_rate_kib`]; stored configurations from before it have the default.
    #[serde(default = "default_min_rate")]
    pub min_rate_kib: u64,
    pub verify: Verify,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            connect_timeout_secs: default_connect_timeout(),
            operation_timeout_secs: default_operation_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            retries: default_retries(),
            retry_wait_secs: default_retry_wait(),
            max_connections: default_max_connections(),
            min_rate_kib: default_min_rate(),
            verify: Verify::Auto,
        }
    }
}

/// A declared host: its name and kind-specific settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    pub name: String,
    pub spec: HostSpec,
    /// Shared settings (defaults for `local`).
    #[serde(default)]
    pub options: HostOptions,
}

impl Host {
    pub fn kind(&self) -> HostKind {
        self.spec.kind()
    }

    /// The node's own file system.
    pub fn local(name: &str) -> Host {
        Host {
            name: name.to_string(),
            spec: HostSpec::Local,
            options: HostOptions::default(),
        }
    }

    pub fn is_local(&self) -> bool {
        self.spec == HostSpec::Local
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostSpec {
    Local,
    Sftp(SftpSpec),
    Ftp(FtpSpec),
    Smb(SmbSpec),
    S3(S3Spec),
    Azure(AzureSpec),
}

/// The secret fields of a [`HostSpec`], by reference (`as_ref`, `&`) or mutably (`as_mut`,
/// `&mut`): one list for both.
macro_rules! secret_fields {
    ($spec:expr, $as:ident, $($r:tt)+) => {{
        let fields: Vec<(&'static str, Option<$($r)+ Secret>)> = match $spec {
            HostSpec::Local => Vec::new(),
            HostSpec::Sftp(s) => vec![
                ("password", s.password.$as()),
                ("private_key", s.private_key.$as()),
                ("passphrase", s.passphrase.$as()),
            ],
            HostSpec::Ftp(s) => vec![("password", s.password.$as()), ("client_key", s.client_key.$as())],
            HostSpec::Smb(s) => vec![("password", s.password.$as())],
            HostSpec::S3(s) => vec![
                ("secret_access_key", Some($($r)+ s.secret_access_key)),
                ("session_token", s.session_token.$as()),
            ],
            HostSpec::Azure(s) => vec![("access_key", s.access_key.$as()), ("sas_token", s.sas_token.$as())],
        };
        fields.into_iter().filter_map(|(f, s)| Some((f, s?))).collect()
    }};
}

impl HostSpec {
    pub fn kind(&self) -> HostKind {
        match self {
            HostSpec::Local => HostKind::Local,
            HostSpec::Sftp(_) => HostKind::Sftp,
            HostSpec::Ftp(_) => HostKind::Ftp,
            HostSpec::Smb(_) => HostKind::Smb,
            HostSpec::S3(_) => HostKind::S3,
            HostSpec::Azure(_) => HostKind::Azure,
        }
    }

    /// Every secret of the host with its field name.
    pub fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        secret_fields!(self, as_ref, &)
    }

    /// Every secret of the host with its field name, to replace (the scheduler keeps a stored
    /// sealing when a new apply sealed the same plaintext again).
    pub fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        secret_fields!(self, as_mut, &mut)
    }
}

/// How an SSH server's identity is checked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum HostKeyCheck {
    /// Accept only these SHA-256 fingerprints (`SHA256:<base64 without padding>`).
    Pinned(Vec<String>),
    /// Accept the keys a known_hosts file lists for the server.
    KnownHosts(String),
    /// Accept anything (`insecure_accept_any_host_key`).
    InsecureAcceptAny,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SftpSpec {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub private_key: Option<Secret>,
    pub passphrase: Option<Secret>,
    pub host_key: HostKeyCheck,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FtpSpec {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub tls: FtpTls,
    pub mode: FtpMode,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<Secret>,
    pub insecure_accept_any_certificate: bool,
    pub sign_on_commands: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SmbSpec {
    /// Server name or address.
    pub server: String,
    pub port: u16,
    pub share: String,
    pub user: String,
    pub password: Option<Secret>,
    pub domain: String,
    pub encryption: SmbEncryption,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct S3Spec {
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub allow_http: bool,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub part_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AzureSpec {
    pub account: String,
    pub container: String,
    pub access_key: Option<Secret>,
    pub sas_token: Option<Secret>,
    pub endpoint: Option<String>,
    pub allow_http: bool,
    pub part_bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Validation helpers (called from `model.rs`, which owns the error collection).
// ---------------------------------------------------------------------------------------------

/// A problem found while validating one host: field, value as written, message.
pub(crate) type Problem = (String, String, String);

fn problem(field: &str, value: impl Into<String>, message: impl Into<String>) -> Problem {
    (field.to_string(), value.into(), message.into())
}

/// A secret field: must be sealed (the CLI seals plain values, `env:` and `file:`).
fn secret(field: &str, value: &Option<String>, problems: &mut Vec<Problem>) -> Option<Secret> {
    let text = value.as_ref()?;
    match Secret::try_from(text.clone()) {
        Ok(s) => Some(s),
        Err(m) => {
            // Never echo what might be a plain secret.
            problems.push(problem(field, "<secret>", m));
            None
        }
    }
}

fn required_secret(field: &str, value: &str, problems: &mut Vec<Problem>) -> Option<Secret> {
    secret(field, &Some(value.to_string()), problems)
}

fn not_blank(field: &str, value: &str, problems: &mut Vec<Problem>) {
    if value.trim().is_empty() {
        problems.push(problem(field, value, "is empty"));
    } else if value.chars().any(char::is_control) {
        problems.push(problem(
            field,
            value.escape_debug().to_string(),
            "contains a control character",
        ));
    }
}

/// Host names and addresses: no scheme, no path, no spaces.
fn address(field: &str, value: &str, problems: &mut Vec<Problem>) {
    not_blank(field, value, problems);
    if value.contains("://") || value.contains('/') || value.contains(char::is_whitespace) {
        problems.push(problem(
            field,
            value,
            "is not a server name or address (write it without scheme, port or path)",
        ));
    }
}

fn absolute_file(field: &str, value: &Option<String>, problems: &mut Vec<Problem>) {
    if let Some(v) = value
        && !Path::new(v).is_absolute()
    {
        problems.push(problem(field, v.as_str(), "must be an absolute path on the node"));
    }
}

pub(crate) fn validate_options(raw: &RawHostOptions, problems: &mut Vec<Problem>) -> HostOptions {
    let mut range = |field: &str, value: u64, min: u64, max: u64| {
        if value < min || value > max {
            problems.push(problem(
                field,
                value.to_string(),
                format!("is out of range ({min} to {max})"),
            ));
        }
    };
    range("connect_timeout_secs", raw.connect_timeout_secs, 1, 600);
    range("operation_timeout_secs", raw.operation_timeout_secs, 1, 3600);
    range("idle_timeout_secs", raw.idle_timeout_secs, 1, 86_400);
    range("retries", raw.retries as u64, 0, MAX_RETRIES as u64);
    range("retry_wait_secs", raw.retry_wait_secs, 0, MAX_RETRY_WAIT_SECS);
    range("max_connections", raw.max_connections as u64, 1, 256);
    range("min_rate_kib", raw.min_rate_kib, 0, 1 << 20);
    HostOptions {
        connect_timeout_secs: raw.connect_timeout_secs,
        operation_timeout_secs: raw.operation_timeout_secs,
        idle_timeout_secs: raw.idle_timeout_secs,
        retries: raw.retries,
        retry_wait_secs: raw.retry_wait_secs,
        max_connections: raw.max_connections,
        min_rate_kib: raw.min_rate_kib,
        verify: raw.verify,
    }
}

/// A SHA-256 host key fingerprint as `ssh-keygen -lf` prints it: `SHA256:` and 43 characters of
/// unpadded base64.
pub fn is_sha256_fingerprint(text: &str) -> bool {
    text.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    })
}

pub(crate) fn validate_sftp(raw: RawSftpHost, problems: &mut Vec<Problem>) -> Option<SftpSpec> {
    let before = problems.len();
    address("address", &raw.address, problems);
    not_blank("user", &raw.user, problems);
    if raw.port == 0 {
        problems.push(problem("port", "0", "is not a TCP port"));
    }
    let password = secret("password", &raw.password, problems);
    let private_key = secret("private_key", &raw.private_key, problems);
    let passphrase = secret("passphrase", &raw.passphrase, problems);
    if raw.password.is_none() && raw.private_key.is_none() {
        problems.push(problem(
            "password",
            "",
            "is missing: an SFTP host needs a password or a private_key",
        ));
    }
    if raw.passphrase.is_some() && raw.private_key.is_none() {
        problems.push(problem(
            "passphrase",
            "<secret>",
            "is set but there is no private_key",
        ));
    }
    for fp in &raw.host_key_sha256 {
        if !is_sha256_fingerprint(fp) {
            problems.push(problem(
                "host_key_sha256",
                fp.as_str(),
                "is not a SHA-256 fingerprint (`SHA256:` and 43 base64 characters, as `ssh-keygen -lf` prints)",
            ));
        }
    }
    absolute_file("known_hosts", &raw.known_hosts, problems);
    let checks = usize::from(!raw.host_key_sha256.is_empty())
        + usize::from(raw.known_hosts.is_some())
        + usize::from(raw.insecure_accept_any_host_key);
    if checks != 1 {
        problems.push(problem(
            "host_key_sha256",
            "",
            if checks == 0 {
                "is missing: pin the server's key (host_key_sha256 = [\"SHA256:…\"]) or name a known_hosts file; \
                 `ferry host test` shows the fingerprint the server offers"
            } else {
                "conflicts: use exactly one of host_key_sha256, known_hosts and insecure_accept_any_host_key"
            },
        ));
    }
    let host_key = if raw.insecure_accept_any_host_key {
        HostKeyCheck::InsecureAcceptAny
    } else if let Some(file) = raw.known_hosts {
        HostKeyCheck::KnownHosts(file)
    } else {
        HostKeyCheck::Pinned(raw.host_key_sha256)
    };
    (problems.len() == before).then_some(SftpSpec {
        address: raw.address,
        port: raw.port,
        user: raw.user,
        password,
        private_key,
        passphrase,
        host_key,
    })
}

pub(crate) fn validate_ftp(raw: RawFtpHost, problems: &mut Vec<Problem>) -> Option<FtpSpec> {
    let before = problems.len();
    address("address", &raw.address, problems);
    not_blank("user", &raw.user, problems);
    if raw.port == Some(0) {
        problems.push(problem("port", "0", "is not a TCP port"));
    }
    let password = secret("password", &raw.password, problems);
    let client_key = secret("client_key", &raw.client_key, problems);
    absolute_file("ca_file", &raw.ca_file, problems);
    absolute_file("client_cert", &raw.client_cert, problems);
    if raw.client_cert.is_some() != raw.client_key.is_some() {
        problems.push(problem(
            "client_cert",
            raw.client_cert.clone().unwrap_or_default(),
            "and client_key go together",
        ));
    }
    if raw.tls == FtpTls::None
        && (raw.ca_file.is_some() || raw.client_cert.is_some() || raw.insecure_accept_any_certificate)
    {
        problems.push(problem("tls", "none", "is plain FTP, but TLS settings are given"));
    }
    for (i, c) in raw.sign_on_commands.iter().enumerate() {
        if c.trim().is_empty() || c.contains(['\r', '\n']) {
            problems.push(problem(
                &format!("sign_on_commands[{i}]"),
                c.escape_debug().to_string(),
                "must be one non-empty line",
            ));
        }
    }
    let port = raw.port.unwrap_or(match raw.tls {
        FtpTls::Implicit => 990,
        _ => 21,
    });
    (problems.len() == before).then_some(FtpSpec {
        address: raw.address,
        port,
        user: raw.user,
        password,
        tls: raw.tls,
        mode: raw.mode,
        ca_file: raw.ca_file,
        client_cert: raw.client_cert,
        client_key,
        insecure_accept_any_certificate: raw.insecure_accept_any_certificate,
        sign_on_commands: raw.sign_on_commands,
    })
}

/// `\\server\share`, `//server/share` or `smb://server[:port]/share` → (server, port, share).
pub fn parse_share(text: &str) -> Result<(String, Option<u16>, String), String> {
    let (rest, url) = if let Some(r) = text.strip_prefix("smb://") {
        (r.to_string(), true)
    } else if text.starts_with("\\\\") || text.starts_with("//") {
        (text[2..].replace('\\', "/"), false)
    } else {
        return Err("is not a share: write \\\\server\\share or smb://server/share".into());
    };
    let mut parts = rest.split('/').filter(|p| !p.is_empty());
    let (Some(server), Some(share)) = (parts.next(), parts.next()) else {
        return Err("names no share: write \\\\server\\share or smb://server/share".into());
    };
    if parts.next().is_some() {
        return Err("has a folder after the share; put folders in the task's source or destination".into());
    }
    let (server, port) = match server.rsplit_once(':') {
        Some((s, p)) if url => (
            s.to_string(),
            Some(p.parse::<u16>().map_err(|_| format!("has a bad port {p:?}"))?),
        ),
        _ => (server.to_string(), None),
    };
    if server.is_empty() || share.is_empty() {
        return Err("is not a share: write \\\\server\\share or smb://server/share".into());
    }
    Ok((server, port, share.to_string()))
}

pub(crate) fn validate_smb(raw: RawSmbHost, problems: &mut Vec<Problem>) -> Option<SmbSpec> {
    let before = problems.len();
    not_blank("user", &raw.user, problems);
    let password = secret("password", &raw.password, problems);
    let parsed = parse_share(&raw.share)
        .map_err(|m| problems.push(problem("share", raw.share.as_str(), m)))
        .ok();
    if raw.port == Some(0) {
        problems.push(problem("port", "0", "is not a TCP port"));
    }
    let (server, url_port, share) = parsed?;
    (problems.len() == before).then_some(SmbSpec {
        server,
        port: url_port.or(raw.port).unwrap_or(445),
        share,
        user: raw.user,
        password,
        domain: raw.domain,
        encryption: raw.encryption,
    })
}

fn endpoint(field: &str, value: &Option<String>, allow_http: bool, problems: &mut Vec<Problem>) {
    let Some(v) = value else { return };
    if v.starts_with("http://") {
        if !allow_http {
            problems.push(problem(
                field,
                v.as_str(),
                "is plain http: set allow_http = true to send keys and files unencrypted",
            ));
        }
    } else if !v.starts_with("https://") {
        problems.push(problem(field, v.as_str(), "is not an http(s) URL"));
    }
}

fn part_bytes(value: u64, problems: &mut Vec<Problem>) {
    const MIN: u64 = 5 << 20;
    const MAX: u64 = 4 << 30;
    if !(MIN..=MAX).contains(&value) {
        problems.push(problem(
            "part_bytes",
            value.to_string(),
            format!("is out of range ({MIN} to {MAX})"),
        ));
    }
}

pub(crate) fn validate_s3(raw: RawS3Host, problems: &mut Vec<Problem>) -> Option<S3Spec> {
    let before = problems.len();
    not_blank("bucket", &raw.bucket, problems);
    not_blank("region", &raw.region, problems);
    not_blank("access_key_id", &raw.access_key_id, problems);
    endpoint("endpoint", &raw.endpoint, raw.allow_http, problems);
    part_bytes(raw.part_bytes, problems);
    let secret_access_key = required_secret("secret_access_key", &raw.secret_access_key, problems);
    let session_token = secret("session_token", &raw.session_token, problems);
    (problems.len() == before).then_some(S3Spec {
        bucket: raw.bucket,
        region: raw.region,
        endpoint: raw.endpoint,
        path_style: raw.path_style,
        allow_http: raw.allow_http,
        access_key_id: raw.access_key_id,
        secret_access_key: secret_access_key?,
        session_token,
        part_bytes: raw.part_bytes,
    })
}

pub(crate) fn validate_azure(raw: RawAzureHost, problems: &mut Vec<Problem>) -> Option<AzureSpec> {
    let before = problems.len();
    not_blank("account", &raw.account, problems);
    not_blank("container", &raw.container, problems);
    endpoint("endpoint", &raw.endpoint, raw.allow_http, problems);
    part_bytes(raw.part_bytes, problems);
    let access_key = secret("access_key", &raw.access_key, problems);
    let sas_token = secret("sas_token", &raw.sas_token, problems);
    if raw.access_key.is_some() == raw.sas_token.is_some() {
        problems.push(problem(
            "access_key",
            "",
            "or sas_token: give exactly one of them",
        ));
    }
    (problems.len() == before).then_some(AzureSpec {
        account: raw.account,
        container: raw.container,
        access_key,
        sas_token,
        endpoint: raw.endpoint,
        allow_http: raw.allow_http,
        part_bytes: raw.part_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_read_from_unc_paths_and_urls() {
        assert_eq!(
            parse_share(r"\\fs01\ferry").unwrap(),
            ("fs01".into(), None, "ferry".into())
        );
        assert_eq!(
            parse_share("smb://127.0.0.1:4455/ferry").unwrap(),
            ("127.0.0.1".into(), Some(4455), "ferry".into())
        );
        assert_eq!(
            parse_share("//fs01/ferry/").unwrap(),
            ("fs01".into(), None, "ferry".into())
        );
        assert!(parse_share(r"\\fs01").unwrap_err().contains("names no share"));
        assert!(
            parse_share(r"\\fs01\ferry\in")
                .unwrap_err()
                .contains("folder after the share")
        );
        assert!(parse_share("fs01/ferry").unwrap_err().contains("is not a share"));
    }

    #[test]
    fn fingerprints_have_the_ssh_keygen_form() {
        assert!(is_sha256_fingerprint(
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
        ));
        assert!(!is_sha256_fingerprint(
            "uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
        ));
        assert!(!is_sha256_fingerprint("SHA256:short"));
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secret::try_from(format!("{SEALED_PREFIX}abcd:c2VjcmV0")).unwrap();
        assert_eq!(format!("{s:?}"), "Secret(sealed under abcd)");
        assert_eq!(s.key_id(), "abcd");
        assert!(
            Secret::try_from("hunter2".to_string())
                .unwrap_err()
                .contains("not sealed")
        );
    }
}
