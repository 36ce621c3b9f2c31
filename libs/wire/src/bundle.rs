//! The configuration bundle: everything a standby needs from its primary, in one file
//! (`ferry config export|import|verify`, and later the file-based replication's tasks).
//!
//! A bundle is a POSIX ustar archive (readable with `tar tvf`), written and read only here:
//!
//! ```text
//! parts/ferry_config.jsonl      one part per bucket, in PARTS order; one JSON line per entry:
//! parts/ferry_state.jsonl       {"key":"nfo.…","value":"<base64 of the stored bytes>"}, sorted by key
//! …
//! manifest.json                 last: format, Ferry version, source node, created_at, keymat id,
//!                               and per part its bucket, revision, entries, bytes and SHA-256
//! two zero blocks               the end-of-archive marker
//! ```
//!
//! **Invariants:** [`read`] accepts a file only if it is whole — every part named once in the
//! manifest, each part's size and SHA-256 as the manifest says, the manifest last and the
//! end-of-archive marker after it — so a truncated copy or a changed byte is refused before
//! anything is applied; only the buckets of [`PARTS`], and within them only the keys
//! [`keeps`] allows, can be in a bundle; values are the stored bytes (private material stays
//! sealed to the keymat bound to `<bucket>/<key>`, the configuration's secrets to theirs), and
//! the keymat itself is never in a bundle. [`write`] writes a temp file beside the target,
//! fsyncs it, renames it and fsyncs the folder: a reader never sees half a bundle.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::topology;

pub mod compare;
pub use compare::{Difference, compare};

/// The bundle format this build writes and reads.
pub const FORMAT: u32 = 1;

/// The buckets a bundle holds, in the order they are written and applied (the configuration
/// last on import, so a task appears only once its state is in place).
pub const PARTS: [&str; 7] = [
    topology::KV_STATE,
    topology::KV_SCHED,
    topology::KV_CERTS_PERSONAL,
    topology::KV_CERTS_OTHER,
    topology::KV_PGP_PUBLIC,
    topology::KV_PGP_SECRET,
    topology::KV_CONFIG,
];

/// The schedule state's keys that travel: the last fired slot per task. `enabled.<node>` keys
/// belong to one node and stay.
pub const SCHED_PREFIX: &str = "last.";

/// The largest part and the largest manifest [`read`] takes (a part is held in memory).
pub const MAX_PART_BYTES: u64 = 2 << 30;
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

const MANIFEST_NAME: &str = "manifest.json";
const BLOCK: usize = 512;

/// Whether `key` of `bucket` belongs in a bundle (and so is made equal by an import).
pub fn keeps(bucket: &str, key: &str) -> bool {
    match bucket {
        topology::KV_CONFIG => key == topology::CONFIG_KEY,
        topology::KV_SCHED => key.starts_with(SCHED_PREFIX),
        b => PARTS.contains(&b),
    }
}

fn part_path(bucket: &str) -> String {
    format!("parts/{bucket}.jsonl")
}

/// One bucket's entries as read at `revision` (the bucket's last sequence when read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Part {
    pub bucket: String,
    pub revision: u64,
    pub entries: BTreeMap<String, Vec<u8>>,
}

/// What the manifest says about one part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PartInfo {
    /// The bucket.
    pub name: String,
    pub revision: u64,
    pub entries: u64,
    /// Size of the part's file in the archive.
    pub bytes: u64,
    /// SHA-256 of the part's file, lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// `CARGO_PKG_VERSION` of the Ferry that wrote it.
    pub ferry_version: String,
    pub source_node: String,
    pub created_at: DateTime<Utc>,
    /// The keymat the configuration's secrets and the stores' private material are sealed under.
    pub keymat_id: String,
    pub parts: Vec<PartInfo>,
}

impl Manifest {
    /// The documented version rule: a bundle is imported only by the same Ferry version that
    /// wrote it (the reference procedure requires matching versions on both servers).
    pub fn check_version(&self, ours: &str) -> Result<(), BundleError> {
        if self.ferry_version == ours {
            return Ok(());
        }
        Err(BundleError::Version {
            theirs: self.ferry_version.clone(),
            ours: ours.to_string(),
        })
    }
}

/// A bundle read and verified by [`read`]: every part of [`PARTS`], checked against the manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    pub parts: BTreeMap<String, Part>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// The file ends before the bundle does (an interrupted copy).
    #[error("truncated: {0} (an interrupted copy? copy the bundle again)")]
    Truncated(String),
    /// A part's bytes are not what the manifest says.
    #[error("part {part}: {what} (the bundle was changed or damaged after it was written)")]
    Mismatch { part: String, what: String },
    /// Anything else that makes the file not a bundle this version can read.
    #[error("not a valid bundle: {0}")]
    Invalid(String),
    #[error(
        "made by Ferry {theirs}, this is Ferry {ours}: a bundle is imported only by the same version \
         (the primary and the standby must run the same Ferry version); upgrade this node to {theirs}, \
         or export the bundle again from a primary running {ours}"
    )]
    Version { theirs: String, ours: String },
}

fn invalid(what: impl Into<String>) -> BundleError {
    BundleError::Invalid(what.into())
}

/// The text of one part: a JSON line per entry, sorted by key.
pub fn encode_part(part: &Part) -> Vec<u8> {
    #[derive(Serialize)]
    struct Line<'a> {
        key: &'a str,
        value: String,
    }
    let mut out = Vec::new();
    for (key, value) in &part.entries {
        serde_json::to_writer(
            &mut out,
            &Line {
                key,
                value: B64.encode(value),
            },
        )
        .expect("a key and a base64 string always serialize");
        out.push(b'\n');
    }
    out
}

fn decode_part(info: &PartInfo, text: &[u8]) -> Result<Part, BundleError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        key: String,
        value: String,
    }
    let bad =
        |line: usize, what: String| BundleError::Invalid(format!("part {}: line {line}: {what}", info.name));
    let mut entries = BTreeMap::new();
    let mut last: Option<String> = None;
    for (i, raw) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let Some(raw) = raw.strip_suffix(b"\n") else {
            return Err(bad(n, "does not end with a newline".into()));
        };
        let line: Line = serde_json::from_slice(raw).map_err(|e| bad(n, e.to_string()))?;
        if !valid_key(&line.key) {
            return Err(bad(n, format!("key {:?} is not a valid key", line.key)));
        }
        if !keeps(&info.name, &line.key) {
            return Err(bad(n, format!("key {:?} does not belong in a bundle", line.key)));
        }
        if last.as_ref().is_some_and(|l| *l >= line.key) {
            return Err(bad(n, format!("key {:?} is out of order or repeated", line.key)));
        }
        let value = B64
            .decode(line.value.as_bytes())
            .map_err(|e| bad(n, format!("value of {:?}: {e}", line.key)))?;
        last = Some(line.key.clone());
        entries.insert(line.key, value);
    }
    if entries.len() as u64 != info.entries {
        return Err(BundleError::Mismatch {
            part: info.name.clone(),
            what: format!("{} entries, the manifest says {}", entries.len(), info.entries),
        });
    }
    Ok(Part {
        bucket: info.name.clone(),
        revision: info.revision,
        entries,
    })
}

/// A NATS KV key: `[-/_=.a-zA-Z0-9]`, not empty, no empty token.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 4096
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        && !key.split('.').any(str::is_empty)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The whole archive for `parts` (one per bucket of [`PARTS`], each once).
pub fn encode(
    source_node: &str,
    ferry_version: &str,
    keymat_id: &str,
    created_at: DateTime<Utc>,
    parts: &[Part],
) -> Result<(Manifest, Vec<u8>), BundleError> {
    let names: BTreeSet<&str> = parts.iter().map(|p| p.bucket.as_str()).collect();
    if names.len() != parts.len() || names != PARTS.iter().copied().collect() {
        return Err(invalid(format!(
            "a bundle holds exactly one part per bucket of {PARTS:?}, not {:?}",
            parts.iter().map(|p| &p.bucket).collect::<Vec<_>>()
        )));
    }
    let mut out = Vec::new();
    let mut infos = Vec::new();
    for bucket in PARTS {
        let part = parts.iter().find(|p| p.bucket == bucket).expect("checked above");
        if let Some(key) = part.entries.keys().find(|k| !valid_key(k) || !keeps(bucket, k)) {
            return Err(invalid(format!(
                "part {bucket}: key {key:?} does not belong in a bundle"
            )));
        }
        let text = encode_part(part);
        append_entry(&mut out, &part_path(bucket), &text, created_at)?;
        infos.push(PartInfo {
            name: bucket.to_string(),
            revision: part.revision,
            entries: part.entries.len() as u64,
            bytes: text.len() as u64,
            sha256: sha256_hex(&text),
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        ferry_version: ferry_version.to_string(),
        source_node: source_node.to_string(),
        created_at,
        keymat_id: keymat_id.to_string(),
        parts: infos,
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    append_entry(&mut out, MANIFEST_NAME, &text, created_at)?;
    out.extend_from_slice(&[0; 2 * BLOCK]);
    Ok((manifest, out))
}

/// Write a bundle of `parts` to `path`: a temp file beside it, fsynced, renamed over it, the
/// folder fsynced.
pub fn write(
    path: &Path,
    source_node: &str,
    ferry_version: &str,
    keymat_id: &str,
    parts: &[Part],
) -> Result<Manifest, BundleError> {
    let (manifest, bytes) = encode(source_node, ferry_version, keymat_id, Utc::now(), parts)?;
    write_atomically(path, &bytes)?;
    Ok(manifest)
}

/// Replace `path` with `bytes` so that a reader sees the old file or the new one, whole.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { path, action, source }
    };
    let name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{}: not a file name", path.display())))?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = folder.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io("create", &temp))?;
        file.write_all(bytes).map_err(io("write", &temp))?;
        file.sync_all().map_err(io("sync", &temp))?;
        std::fs::rename(&temp, path).map_err(io("rename into place", path))?;
        std::fs::File::open(&folder)
            .and_then(|f| f.sync_all())
            .map_err(io("sync folder", &folder))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

fn append_entry(out: &mut Vec<u8>, name: &str, data: &[u8], mtime: DateTime<Utc>) -> Result<(), BundleError> {
    // 11 octal digits: ustar's size limit, 8 GiB - 1.
    if name.len() > 100 || data.len() as u64 > MAX_PART_BYTES {
        return Err(invalid(format!(
            "{name}: {} bytes, at most {MAX_PART_BYTES}",
            data.len()
        )));
    }
    let mut header = [0u8; BLOCK];
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], data.len() as u64);
    octal(&mut header[136..148], mtime.timestamp().max(0) as u64);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u64 = header.iter().map(|b| *b as u64).sum();
    header[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    header[154] = 0;
    header[155] = b' ';
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    Ok(())
}

fn parse_octal(field: &[u8], what: &str) -> Result<u64, BundleError> {
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|b| *b != 0 && *b != b' ')
        .skip_while(|b| *b == b' ')
        .collect();
    if text.is_empty() || !text.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(invalid(format!("a header's {what} is not an octal number")));
    }
    u64::from_str_radix(std::str::from_utf8(&text).expect("octal digits"), 8)
        .map_err(|_| invalid(format!("a header's {what} is out of range")))
}

/// A ustar header's name and size, checked: its checksum, ustar magic, a regular file, a
/// UTF-8 name without a prefix. `at`: its offset, for messages.
fn parse_header(header: &[u8], at: usize) -> Result<(String, u64), BundleError> {
    let stored = parse_octal(&header[148..156], "checksum")?;
    let sum: u64 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                b' ' as u64
            } else {
                *b as u64
            }
        })
        .sum();
    if stored != sum {
        return Err(invalid(format!("the header at byte {at} fails its checksum")));
    }
    if &header[257..263] != b"ustar\0" {
        return Err(invalid(format!("the header at byte {at} is not ustar")));
    }
    if !matches!(header[156], b'0' | 0) {
        return Err(invalid(format!(
            "the entry at byte {at} is not a regular file (type {:?})",
            header[156] as char
        )));
    }
    let name_field = &header[..100];
    let end = name_field.iter().position(|b| *b == 0).unwrap_or(100);
    let name = std::str::from_utf8(&name_field[..end])
        .map_err(|_| invalid(format!("the entry at byte {at} has a name that is not UTF-8")))?
        .to_string();
    if header[345..500].iter().any(|b| *b != 0) {
        return Err(invalid(format!("entry {name:?}: a name prefix is not allowed")));
    }
    let size = parse_octal(&header[124..136], "size")?;
    Ok((name, size))
}

/// The archive's files, in order, each checked: a valid ustar header of a regular file with a
/// plain name, its data inside the file, the end-of-archive marker after the last.
fn entries(bytes: &[u8]) -> Result<Vec<(String, &[u8])>, BundleError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let Some(header) = bytes.get(at..at + BLOCK) else {
            return Err(BundleError::Truncated(format!(
                "{} bytes, the archive goes on after byte {at}",
                bytes.len()
            )));
        };
        if header.iter().all(|b| *b == 0) {
            let rest = &bytes[at..];
            if rest.len() < 2 * BLOCK {
                return Err(BundleError::Truncated(
                    "the end-of-archive marker is cut short".into(),
                ));
            }
            if !rest.iter().all(|b| *b == 0) {
                return Err(invalid("data after the end-of-archive marker"));
            }
            return Ok(out);
        }
        let (name, size) = parse_header(header, at)?;
        let data_at = at + BLOCK;
        let left = (bytes.len() - data_at) as u64;
        if size > left {
            return Err(BundleError::Truncated(format!(
                "entry {name:?} says {size} bytes, {left} follow"
            )));
        }
        let size = size as usize;
        out.push((name, &bytes[data_at..data_at + size]));
        at = data_at + size.div_ceil(BLOCK) * BLOCK;
        if at > bytes.len() {
            return Err(BundleError::Truncated(format!(
                "the padding of entry {:?} is cut short",
                out.last().expect("pushed").0
            )));
        }
    }
}

/// Read and verify the bundle at `path` (see [`verify`]).
pub fn read(path: &Path) -> Result<Bundle, BundleError> {
    let io = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { path, action, source }
    };
    let len = std::fs::metadata(path).map_err(io("read"))?.len();
    let limit = MAX_PART_BYTES * PARTS.len() as u64 + MAX_MANIFEST_BYTES;
    if len > limit {
        return Err(invalid(format!("{len} bytes, a bundle has at most {limit}")));
    }
    let bytes = std::fs::read(path).map_err(io("read"))?;
    verify(&bytes)
}

/// Check a whole bundle and decode it: the archive is whole, its last file is the manifest, the
/// manifest's format is [`FORMAT`] and it names every bucket of [`PARTS`] once and nothing else,
/// the archive holds exactly those parts, each with the manifest's size, SHA-256 and entry count,
/// every entry a valid key that belongs in a bundle.
pub fn verify(bytes: &[u8]) -> Result<Bundle, BundleError> {
    let files = entries(bytes)?;
    let Some((last, manifest_text)) = files.last() else {
        return Err(invalid("an empty archive"));
    };
    if last != MANIFEST_NAME {
        return Err(BundleError::Truncated(format!(
            "the last file is {last:?}, not {MANIFEST_NAME} (a bundle ends with its manifest)"
        )));
    }
    let manifest = check_manifest(manifest_text)?;
    let mut seen = BTreeSet::new();
    for (name, _) in &files[..files.len() - 1] {
        let known = PARTS.iter().any(|p| part_path(p) == *name);
        if !known {
            return Err(invalid(format!("file {name:?} is not part of a bundle")));
        }
        if !seen.insert(name.as_str()) {
            return Err(invalid(format!("file {name:?} is in the archive twice")));
        }
    }
    let mut parts = BTreeMap::new();
    for info in &manifest.parts {
        let path = part_path(&info.name);
        let Some((_, data)) = files.iter().find(|(n, _)| *n == path) else {
            return Err(BundleError::Mismatch {
                part: info.name.clone(),
                what: format!("{path} is missing"),
            });
        };
        if data.len() as u64 != info.bytes {
            return Err(BundleError::Mismatch {
                part: info.name.clone(),
                what: format!("{} bytes, the manifest says {}", data.len(), info.bytes),
            });
        }
        let digest = sha256_hex(data);
        if digest != info.sha256 {
            return Err(BundleError::Mismatch {
                part: info.name.clone(),
                what: format!("SHA-256 {digest}, the manifest says {}", info.sha256),
            });
        }
        parts.insert(info.name.clone(), decode_part(info, data)?);
    }
    Ok(Bundle { manifest, parts })
}

/// The manifest read and checked on its own: its size, format, every part of [`PARTS`] named
/// once and nothing else, no part over the limit.
fn check_manifest(manifest_text: &[u8]) -> Result<Manifest, BundleError> {
    if manifest_text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "{MANIFEST_NAME}: {} bytes, at most {MAX_MANIFEST_BYTES}",
            manifest_text.len()
        )));
    }
    let manifest: Manifest =
        serde_json::from_slice(manifest_text).map_err(|e| invalid(format!("{MANIFEST_NAME}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(invalid(format!(
            "format {}, this Ferry reads format {FORMAT}",
            manifest.format
        )));
    }
    let mut named = BTreeSet::new();
    for info in &manifest.parts {
        if !PARTS.contains(&info.name.as_str()) {
            return Err(invalid(format!(
                "{MANIFEST_NAME} names part {:?}, which is not a bucket a bundle may hold ({PARTS:?})",
                info.name
            )));
        }
        if !named.insert(info.name.as_str()) {
            return Err(invalid(format!(
                "{MANIFEST_NAME} names part {:?} twice",
                info.name
            )));
        }
        if info.bytes > MAX_PART_BYTES {
            return Err(invalid(format!(
                "{MANIFEST_NAME}: part {} of {} bytes, at most {MAX_PART_BYTES}",
                info.name, info.bytes
            )));
        }
    }
    if let Some(missing) = PARTS.iter().find(|p| !named.contains(*p)) {
        return Err(invalid(format!("{MANIFEST_NAME} does not name part {missing:?}")));
    }
    Ok(manifest)
}

/// Check the bundle at `path` without holding it in memory (only its manifest): the archive is
/// whole, its parts are exactly the manifest's with its sizes and SHA-256, the manifest last.
/// What [`read`] checks except decoding the entries; for looking at many or large files (a
/// standby's import folder) before reading one whole.
pub fn check_file(path: &Path) -> Result<Manifest, BundleError> {
    use std::io::Read;
    let io = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { path, action, source }
    };
    let mut file = std::fs::File::open(path).map_err(io("read"))?;
    let len = file.metadata().map_err(io("read"))?.len();
    let limit = MAX_PART_BYTES * PARTS.len() as u64 + MAX_MANIFEST_BYTES;
    if len > limit {
        return Err(invalid(format!("{len} bytes, a bundle has at most {limit}")));
    }
    let mut reader = std::io::BufReader::with_capacity(1 << 16, &mut file);
    let mut fill = |buf: &mut [u8], what: &str| -> Result<(), BundleError> {
        reader.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                BundleError::Truncated(format!("the file ends inside {what}"))
            }
            _ => BundleError::Io {
                path: path.to_path_buf(),
                action: "read",
                source: e,
            },
        })
    };
    let mut at = 0usize;
    let mut header = [0u8; BLOCK];
    let mut chunk = vec![0u8; 1 << 16];
    let mut found: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut manifest_text: Option<Vec<u8>> = None;
    let mut last = String::new();
    loop {
        fill(&mut header, "a header")?;
        if header.iter().all(|b| *b == 0) {
            // The end-of-archive marker: a second zero block, then only zeros.
            fill(&mut header, "the end-of-archive marker")?;
            if header.iter().any(|b| *b != 0) {
                return Err(invalid("data after the end-of-archive marker"));
            }
            let mut rest = at as u64 + 2 * BLOCK as u64;
            while rest < len {
                let n = ((len - rest) as usize).min(chunk.len());
                fill(&mut chunk[..n], "the end-of-archive marker")?;
                if chunk[..n].iter().any(|b| *b != 0) {
                    return Err(invalid("data after the end-of-archive marker"));
                }
                rest += n as u64;
            }
            break;
        }
        let (name, size) = parse_header(&header, at)?;
        if size > len {
            return Err(BundleError::Truncated(format!(
                "entry {name:?} says {size} bytes, the file has {len}"
            )));
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if name == MANIFEST_NAME {
            if size > MAX_MANIFEST_BYTES {
                return Err(invalid(format!(
                    "{MANIFEST_NAME}: {size} bytes, at most {MAX_MANIFEST_BYTES}"
                )));
            }
            let mut text = vec![0u8; padded as usize];
            fill(&mut text, MANIFEST_NAME)?;
            text.truncate(size as usize);
            manifest_text = Some(text);
        } else {
            if !PARTS.iter().any(|p| part_path(p) == name) {
                return Err(invalid(format!("file {name:?} is not part of a bundle")));
            }
            if found.contains_key(&name) {
                return Err(invalid(format!("file {name:?} is in the archive twice")));
            }
            let mut hasher = Sha256::new();
            let mut left = padded;
            let mut data_left = size;
            while left > 0 {
                let n = (left as usize).min(chunk.len());
                fill(&mut chunk[..n], &format!("entry {name:?}"))?;
                let data = (data_left as usize).min(n);
                hasher.update(&chunk[..data]);
                data_left -= data as u64;
                left -= n as u64;
            }
            found.insert(name.clone(), (size, hex::encode(hasher.finalize())));
        }
        at += BLOCK + padded as usize;
        last = name;
    }
    if last != MANIFEST_NAME {
        return Err(BundleError::Truncated(format!(
            "the last file is {last:?}, not {MANIFEST_NAME} (a bundle ends with its manifest)"
        )));
    }
    let manifest = check_manifest(&manifest_text.expect("the last file is the manifest"))?;
    for info in &manifest.parts {
        let path = part_path(&info.name);
        let Some((size, digest)) = found.get(&path) else {
            return Err(BundleError::Mismatch {
                part: info.name.clone(),
                what: format!("{path} is missing"),
            });
        };
        if *size != info.bytes {
            return Err(BundleError::Mismatch {
                part: info.name.clone(),
                what: format!("{size} bytes, the manifest says {}", info.bytes),
            });
        }
        if *digest != info.sha256 {
            return Err(BundleError::Mismatch {
                part: info.name.clone(),
                what: format!("SHA-256 {digest}, the manifest says {}", info.sha256),
            });
        }
    }
    Ok(manifest)
}

/// Every entry of `bundle` decodes as what its bucket holds — the configuration document (its
/// secrets sealed under the manifest's keymat), new-files-only records, RFC 3339 fired slots,
/// the stores' JSON records — so an import can refuse a bundle before it changes anything.
pub fn check_entries(bundle: &Bundle) -> Result<(), BundleError> {
    for (bucket, part) in &bundle.parts {
        for (key, value) in &part.entries {
            let bad = |what: String| invalid(format!("part {bucket}, key {key:?}: {what}"));
            match bucket.as_str() {
                topology::KV_CONFIG => {
                    let doc: crate::ConfigDocument = crate::decode(value).map_err(|e| bad(e.to_string()))?;
                    if let Some(id) = &doc.keymat_id
                        && *id != bundle.manifest.keymat_id
                    {
                        return Err(bad(format!(
                            "the configuration's secrets are sealed under keymat {id}, the manifest says {}",
                            bundle.manifest.keymat_id
                        )));
                    }
                }
                topology::KV_STATE => {
                    crate::decode::<crate::FileState>(value).map_err(|e| bad(e.to_string()))?;
                }
                topology::KV_SCHED => {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .ok_or_else(|| bad("not an RFC 3339 time".into()))?;
                }
                _ => {
                    serde_json::from_slice::<serde_json::Value>(value)
                        .map_err(|e| bad(format!("not JSON: {e}")))?;
                }
            }
        }
    }
    Ok(())
}

/// Counts and a digest of a part's keys and values, for comparing large parts (new-files-only
/// state) without listing them.
pub fn digest(part: &Part) -> String {
    let mut hash = Sha256::new();
    for (key, value) in &part.entries {
        hash.update((key.len() as u64).to_be_bytes());
        hash.update(key.as_bytes());
        hash.update((value.len() as u64).to_be_bytes());
        hash.update(value);
    }
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests;
