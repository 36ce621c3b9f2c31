//! The side-effect ledger: an optional local JSON-lines file to which a node appends every side
//! effect it commits — a file renamed into place, a schedule slot fired, a lease acquired — with
//! its node, epoch and `CLOCK_MONOTONIC` times. The monotonic clock is shared by every process on
//! a host, so ledgers of two nodes on one host can be merged and checked for overlap; the
//! failover fault suite does exactly that. Off unless the `ledger` setting names a file.
//!
//! Invariant: one `write(2)` per record on an `O_APPEND` file, so records from the several
//! processes of a node never interleave.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

/// Nanoseconds on `CLOCK_MONOTONIC` (not affected by wall-clock steps; same for all processes).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always readable");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One side effect.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A destination file was renamed into place (the commit point of a transfer).
    Commit {
        node: String,
        epoch: u64,
        task: String,
        run_id: String,
        path: String,
        start_ns: u64,
        end_ns: u64,
    },
    /// A schedule slot was fired (JetStream accepted it as new).
    Slot {
        node: String,
        epoch: u64,
        task: String,
        slot: String,
        at_ns: u64,
    },
    /// This node's coordinator acquired the lease (after the create was acknowledged).
    Grant { node: String, epoch: u64, at_ns: u64 },
}

#[derive(Clone)]
pub struct Ledger {
    file: Arc<std::fs::File>,
}

impl Ledger {
    /// Open `path` for appending, or `None` when no ledger is configured.
    pub fn open(path: Option<&Path>) -> anyhow::Result<Option<Self>> {
        let Some(path) = path else { return Ok(None) };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("open ledger {}: {e}", path.display()))?;
        Ok(Some(Self { file: Arc::new(file) }))
    }

    pub fn record(&self, entry: &Entry) {
        let mut line = serde_json::to_vec(entry).expect("ledger entries always serialize");
        line.push(b'\n');
        if let Err(e) = (&*self.file).write_all(&line) {
            tracing::error!(error = %e, "append to the side-effect ledger");
        }
    }
}

/// Read a ledger file (for checkers).
pub fn read(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("ledger line {l:?}: {e}")))
        .collect()
}
