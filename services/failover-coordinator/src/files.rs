//! File-based replication (the reference procedure): the primary's `config-bundle` task delivers
//! configuration bundles to this standby's import folder (`failover_coordinator.import_folder`)
//! over an SMB share, SFTP, FTP or a local folder; when this node is promoted it imports the
//! newest complete one first. `ferry standby status` and `ferry_standby_bundle_age_seconds` show
//! the newest bundle there and its age: what a promotion now would lose.
//!
//! Invariants:
//! - Only a bundle read whole and matching its manifest (every part's size and SHA-256) counts;
//!   a file still being copied, cut short or damaged is passed over, never imported in part.
//! - The newest complete bundle is imported or the promotion is refused: a newest bundle this
//!   node may not import (another Ferry version, another keymat, an entry that does not decode)
//!   refuses the promotion with the reason rather than falling back to an older one silently.
//! - Nothing is written before every check passed (`ferry_service::bundle::refusal`, then
//!   `apply`, which writes only what differs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use async_nats::jetstream;
use chrono::Utc;

use ferry_service::Settings;
use ferry_wire::bundle::{self, Bundle};
use ferry_wire::standby::{BundleImported, BundleSeen};

use crate::metrics::Metrics;

/// How often the folder is looked at for the status metric (a changed file is read whole).
const LOOK_EVERY: Duration = Duration::from_secs(10);

/// A file's identity for the cache: a file replaced or appended to is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: SystemTime,
}

/// What one file in the folder is: a complete bundle (its manifest's summary) or why not.
type Seen = Result<BundleSeen, String>;

pub struct Files {
    folder: PathBuf,
    record: PathBuf,
    settings: Settings,
    cache: std::sync::Mutex<HashMap<PathBuf, (Stamp, Seen)>>,
    looked: std::sync::Mutex<Option<Instant>>,
}

impl Files {
    /// `None` unless this node is a file-based standby.
    pub fn new(settings: &Settings) -> Option<Self> {
        let folder = settings.failover_coordinator.import_folder.clone()?;
        Some(Self {
            folder,
            record: settings.data_dir.join("standby-import.json"),
            settings: settings.clone(),
            cache: Default::default(),
            looked: Default::default(),
        })
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    fn keymat_id(&self) -> anyhow::Result<String> {
        Ok(self
            .settings
            .open_keymat()?
            .current()
            .context("read the node's keymat")?
            .key_id()
            .to_string())
    }

    /// Import the newest complete bundle before a promotion. Refused (nothing changed) when
    /// there is none, or when this node may not import it.
    pub async fn import_newest(&self, js: &jetstream::Context, by: &str) -> anyhow::Result<BundleImported> {
        let shown_folder = self.folder.display().to_string();
        let (folder, keymat_id) = (self.folder.clone(), self.keymat_id()?);
        let (found, passed_over) = tokio::task::spawn_blocking(move || newest(&folder, &keymat_id))
            .await
            .context("read the import folder")??;
        let skipped = if passed_over.is_empty() {
            String::new()
        } else {
            format!(" (passed over: {})", passed_over.join("; "))
        };
        let Some((bundle, seen)) = found else {
            anyhow::bail!(
                "no complete configuration bundle in the import folder {shown_folder}{skipped}: nothing was imported and \
                 this node was not promoted. Wait for the primary's next bundle, import one by hand (`ferry config \
                 import`), or promote with --skip-import to run with the configuration this node holds"
            );
        };
        if let Some(why) = &seen.refused {
            anyhow::bail!(
                "the newest bundle {} (from node {}, {}) may not be imported here: {why}. Nothing was imported and this \
                 node was not promoted; promote with --skip-import to run with the configuration this node holds",
                seen.file,
                seen.source_node,
                seen.created_at.to_rfc3339()
            );
        }
        let applied = match ferry_service::bundle::apply(js, &bundle).await {
            Ok(applied) => applied,
            Err(e) => anyhow::bail!(
                "import of {} stopped: {e}; this node was not promoted (promote again: the import writes only what \
                 still differs)",
                seen.file
            ),
        };
        let imported = BundleImported {
            file: seen.file.clone(),
            source_node: seen.source_node.clone(),
            created_at: seen.created_at,
            imported_at: Utc::now(),
            by: by.to_string(),
            written: applied.iter().map(|a| a.put as u64).sum(),
            deleted: applied.iter().map(|a| a.deleted as u64).sum(),
            unchanged: applied.iter().map(|a| a.unchanged as u64).sum(),
        };
        crate::standby::write_atomically(&self.record, &serde_json::to_vec_pretty(&imported)?)?;
        tracing::info!(
            file = %seen.file,
            source = %seen.source_node,
            created_at = %seen.created_at.to_rfc3339(),
            written = imported.written,
            deleted = imported.deleted,
            passed_over = passed_over.len(),
            %by,
            "imported the newest configuration bundle before promotion"
        );
        Ok(imported)
    }

    /// The last import's record.
    pub fn imported(&self) -> Option<BundleImported> {
        let bytes = std::fs::read(&self.record).ok()?;
        serde_json::from_slice(&bytes)
            .map_err(|e| tracing::warn!(error = %e, "read {}", self.record.display()))
            .ok()
    }

    /// The newest complete bundle with its age now, and the newer files passed over. Each file
    /// is read whole once per change (cached by size and modification time). Blocking.
    pub fn seen(&self) -> (Option<BundleSeen>, Vec<String>) {
        let candidates = match candidates(&self.folder) {
            Ok(c) => c,
            Err(e) => return (None, vec![format!("{e:#}")]),
        };
        let keymat_id = self.keymat_id().unwrap_or_default();
        let mut cache = self.cache.lock().expect("cache lock");
        cache.retain(|path, _| candidates.iter().any(|(p, _)| p == path));
        let mut passed_over = Vec::new();
        for (path, stamp) in candidates {
            let seen = match cache.get(&path) {
                Some((cached, seen)) if *cached == stamp => seen.clone(),
                _ => {
                    let seen = look(&path, &keymat_id);
                    cache.insert(path.clone(), (stamp, seen.clone()));
                    seen
                }
            };
            match seen {
                Ok(mut seen) => {
                    seen.age_seconds =
                        ((Utc::now() - seen.created_at).num_milliseconds().max(0)) as f64 / 1000.0;
                    return (Some(seen), passed_over);
                }
                Err(why) => passed_over.push(why),
            }
        }
        (None, passed_over)
    }

    /// Refresh `ferry_standby_bundle_age_seconds`; the folder is read at most every
    /// [`LOOK_EVERY`]. Blocking.
    pub fn export(&self, metrics: &Metrics) {
        {
            let mut looked = self.looked.lock().expect("looked lock");
            if looked.is_some_and(|at| at.elapsed() < LOOK_EVERY) {
                return;
            }
            *looked = Some(Instant::now());
        }
        let (seen, _) = self.seen();
        metrics.standby_bundle_age_seconds.reset();
        if let Some(seen) = seen {
            metrics
                .standby_bundle_age_seconds
                .with_label_values(&[seen.source_node.as_str()])
                .set(seen.age_seconds);
        }
    }
}

/// The folder's bundle files (`*.tar`, not hidden: an upload's temp file is hidden), newest
/// first by modification time.
fn candidates(folder: &Path) -> anyhow::Result<Vec<(PathBuf, Stamp)>> {
    let entries =
        std::fs::read_dir(folder).with_context(|| format!("read the import folder {}", folder.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("read the import folder {}", folder.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".tar") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let stamp = Stamp {
            len: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        };
        out.push((entry.path(), stamp));
    }
    out.sort_by(|a, b| b.1.modified.cmp(&a.1.modified).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Check `path` against its manifest without holding it in memory
/// ([`bundle::check_file`]); `refused` says whether a node under keymat `keymat_id` may import
/// it by its manifest (version, keymat). A junk or huge file costs one pass over it, no memory.
fn look(path: &Path, keymat_id: &str) -> Result<BundleSeen, String> {
    let manifest = bundle::check_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let refused = ferry_service::bundle::manifest_refusal(&manifest, ferry_service::VERSION, keymat_id)
        .err()
        .map(|e| format!("{e:#}"));
    Ok(BundleSeen {
        file: path.display().to_string(),
        source_node: manifest.source_node,
        ferry_version: manifest.ferry_version,
        keymat_id: manifest.keymat_id,
        created_at: manifest.created_at,
        age_seconds: 0.0,
        refused,
    })
}

/// The newest complete bundle (read whole, and its summary), and the newer files passed over.
type Newest = (Option<(Bundle, BundleSeen)>, Vec<String>);

/// The newest complete bundle in `folder`, read whole, and the newer files passed over (with
/// why). Each file is checked as it streams past first; only the one chosen is held in memory.
fn newest(folder: &Path, keymat_id: &str) -> anyhow::Result<Newest> {
    let mut passed_over = Vec::new();
    for (path, _) in candidates(folder)? {
        let mut seen = match look(&path, keymat_id) {
            Ok(seen) => seen,
            Err(why) => {
                passed_over.push(why);
                continue;
            }
        };
        match bundle::read(&path) {
            Ok(bundle) => {
                if seen.refused.is_none() {
                    seen.refused = ferry_service::bundle::refusal(&bundle, ferry_service::VERSION, keymat_id)
                        .err()
                        .map(|e| format!("{e:#}"));
                }
                return Ok((Some((bundle, seen)), passed_over));
            }
            // Changed between the two reads (replaced by a newer copy, cut short).
            Err(e) => passed_over.push(format!("{}: {e}", path.display())),
        }
    }
    Ok((None, passed_over))
}
