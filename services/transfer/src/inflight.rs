//! One file of a batch on its way, whichever route it takes: its destinations' plans and outcomes
//! so far, what was copied, and the result and new-files-only state it ends with. Also the
//! commit point both routes share.

use chrono::Utc;

use ferry_config::Overwrite;
use ferry_hosts::Staged;
use ferry_hosts::local::fast::Copied;
use ferry_service::NodeLease;
use ferry_service::ledger::{self, Ledger};
use ferry_wire::{DestOutcome, FileItem, FileResult, FileState, Outcome};

use ferry_wire::plan::{self, Planned};

pub struct InFlight {
    pub item: FileItem,
    /// The source path on its host (empty when the listed name was refused; the outcomes say why).
    pub source: String,
    pub started_at: chrono::DateTime<Utc>,
    /// Per destination: the plan, or `None` when it could not be made (its outcome says why).
    pub plans: Vec<Option<Planned>>,
    /// Per destination, once decided.
    pub outcomes: Vec<Option<DestOutcome>>,
    /// Destinations being copied.
    pub open: Vec<usize>,
    pub copied: Option<Copied>,
    /// What an earlier attempt already delivered (size, SHA-256).
    pub recovered: Option<(u64, String)>,
    /// Per destination, the written and verified file waiting for its commit (hosts route).
    pub staged: Vec<Option<Box<dyn Staged>>>,
    /// Set when the source of a move could not be deleted.
    pub error: Option<String>,
}

impl InFlight {
    /// Plan every destination (no I/O).
    pub fn new(item: FileItem) -> InFlight {
        let n = item.destinations.len();
        let mut outcomes: Vec<Option<DestOutcome>> = vec![None; n];
        let (source, plans) = match plan::source_path(&item) {
            Ok(source) => {
                let plans = item
                    .destinations
                    .iter()
                    .enumerate()
                    .map(|(i, dest)| match plan::plan(&item, i, dest) {
                        Ok(p) => {
                            if let Some(r) = item.refused.iter().find(|r| r.index == i) {
                                outcomes[i] = Some(failed(r.path.clone(), r.why.clone()));
                            }
                            Some(p)
                        }
                        Err(e) => {
                            outcomes[i] = Some(failed(String::new(), e));
                            None
                        }
                    })
                    .collect();
                (source, plans)
            }
            Err(e) => {
                for o in outcomes.iter_mut() {
                    *o = Some(failed(String::new(), e.clone()));
                }
                (String::new(), vec![None; n])
            }
        };
        InFlight {
            item,
            source,
            started_at: Utc::now(),
            plans,
            outcomes,
            open: Vec::new(),
            copied: None,
            recovered: None,
            staged: (0..n).map(|_| None).collect(),
            error: None,
        }
    }

    /// Refuse the whole file before anything is done with it: every destination fails with why.
    pub fn refuse(&mut self, why: &str) {
        for (i, o) in self.outcomes.iter_mut().enumerate() {
            let path = self.plans[i]
                .as_ref()
                .map(|p| p.final_path.clone())
                .unwrap_or_default();
            *o = Some(failed(path, why.to_string()));
        }
        self.open.clear();
        self.error = Some(why.to_string());
    }

    pub fn plan(&self, i: usize) -> &Planned {
        self.plans[i].as_ref().expect("open destinations have a plan")
    }

    /// Destinations with a plan and no outcome yet.
    pub fn undecided(&self) -> Vec<usize> {
        (0..self.plans.len())
            .filter(|&i| self.outcomes[i].is_none() && self.plans[i].is_some())
            .collect()
    }

    /// An earlier attempt committed destination `i` already.
    pub fn recovered_at(&mut self, i: usize, path: &str, size: u64, sha256: String) {
        self.recovered = Some((size, sha256));
        self.outcomes[i] = Some(DestOutcome {
            path: path.to_string(),
            outcome: Outcome::Delivered,
            error: None,
        });
        tracing::info!(item = %self.item.item_id, %path, "already delivered by an earlier attempt");
    }

    /// Apply the overwrite policy to destination `i`, whose final path exists already. Returns
    /// true when the policy is `unique` (the caller finds a free name).
    pub fn exists_at(&mut self, i: usize) -> bool {
        let p = self.plan(i);
        let path = p.final_path.clone();
        match p.overwrite {
            Overwrite::Overwrite => false,
            Overwrite::Skip => {
                self.outcomes[i] = Some(DestOutcome {
                    path,
                    outcome: Outcome::Skipped,
                    error: Some("destination file exists (overwrite = skip)".into()),
                });
                false
            }
            Overwrite::Fail => {
                self.outcomes[i] = Some(failed(path, "destination file exists (overwrite = fail)".into()));
                false
            }
            Overwrite::Unique => true,
        }
    }

    /// Destination `i` failed with `error`.
    pub fn fail(&mut self, i: usize, error: String) {
        let path = self
            .plans
            .get(i)
            .and_then(|p| p.as_ref())
            .map(|p| p.final_path.clone())
            .unwrap_or_default();
        self.outcomes[i] = Some(failed(path, error));
        self.open.retain(|&j| j != i);
    }

    /// Every open destination failed with `error` (a problem with the source or the copy).
    pub fn fail_open(&mut self, error: &str) {
        for i in std::mem::take(&mut self.open) {
            self.fail(i, error.to_string());
        }
    }

    /// The final paths about to be committed (the commit intent), per destination.
    pub fn committing(&self) -> Vec<Option<String>> {
        let mut committing = vec![None; self.plans.len()];
        if self.copied.is_some() {
            for &i in &self.open {
                committing[i] = Some(self.plan(i).final_path.clone());
            }
        }
        committing
    }

    pub fn all_delivered(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| o.as_ref().is_some_and(|o| o.outcome == Outcome::Delivered))
    }

    pub fn any_failed(&self) -> bool {
        self.outcomes
            .iter()
            .any(|o| o.as_ref().is_some_and(|o| o.outcome == Outcome::Failed))
    }

    /// Whether the source of a move should now be deleted: every destination delivered.
    pub fn should_delete_source(&self) -> bool {
        self.item.source.delete_after && self.all_delivered()
    }

    fn size_and_hash(&self) -> (u64, Option<String>) {
        match (&self.copied, &self.recovered) {
            (Some(c), _) => (c.size, Some(c.sha256.clone())),
            (None, Some((size, sha))) => (*size, Some(sha.clone())),
            (None, None) => (self.item.source.size, None),
        }
    }

    /// The new-files-only state to record: only when nothing failed, and not for a moved file
    /// whose source is now deleted (it cannot be listed again; its state would only pile up).
    pub fn new_files_only_state(&self) -> Option<FileState> {
        if self.any_failed() || self.error.is_some() || self.should_delete_source() {
            return None;
        }
        let (size, sha256) = self.size_and_hash();
        Some(FileState {
            size,
            mtime_ns: self
                .copied
                .as_ref()
                .map(|c| c.mtime_ns)
                .unwrap_or(self.item.source.mtime_ns),
            sha256: sha256?,
            run_id: self.item.run_id,
            delivered_at: Utc::now(),
        })
    }

    pub fn result(self, node: &str) -> FileResult {
        let all_delivered = self.all_delivered();
        let any_failed = self.any_failed();
        let (size, sha256) = self.size_and_hash();
        let destinations: Vec<DestOutcome> = self
            .outcomes
            .into_iter()
            .map(|o| o.expect("every destination decided"))
            .collect();
        let error = self.error.or_else(|| {
            destinations
                .iter()
                .find_map(|d| (d.outcome == Outcome::Failed).then(|| d.error.clone()).flatten())
        });
        let outcome = if any_failed || error.is_some() {
            Outcome::Failed
        } else if all_delivered {
            Outcome::Delivered
        } else {
            Outcome::Skipped
        };
        let source_path = if self.source.is_empty() {
            ferry_hosts::path::join(&self.item.source.folder, &self.item.source.rel_path)
        } else {
            self.source
        };
        FileResult {
            item_id: self.item.item_id.clone(),
            source_path,
            size,
            sha256,
            outcome,
            destinations,
            error,
            node: node.to_string(),
            epoch: self.item.epoch,
            started_at: self.started_at,
            finished_at: Utc::now(),
            steps: Vec::new(),
        }
    }
}

pub fn failed(path: String, error: String) -> DestOutcome {
    DestOutcome {
        path,
        outcome: Outcome::Failed,
        error: Some(error),
    }
}

pub const FENCED: &str = "not committed: this node's epoch was superseded (fenced)";

/// The commit point: each commit happens only under a lease valid right now (checked
/// immediately before it), and only when this instance stored the commit intent. After the
/// commit the lease is checked again and a late commit counted (the window ADR 004 measures).
pub struct CommitPoint<'a> {
    pub lease: &'a NodeLease,
    pub epoch: u64,
    pub ledger: Option<&'a Ledger>,
    pub node: &'a str,
    pub late_commits: &'a prometheus::IntCounter,
    /// The commit intent was stored by this instance.
    pub allowed: bool,
    pub why_not: &'static str,
}

impl CommitPoint<'_> {
    /// `Ok(start_ns)` when a commit may happen now; otherwise why not.
    pub fn check(&self) -> Result<u64, &'static str> {
        let start_ns = ledger::mono_ns();
        let valid = self.lease.allows(self.epoch);
        if self.allowed && valid {
            failpoint_pause_before_rename();
            Ok(start_ns)
        } else if valid {
            Err(self.why_not)
        } else {
            Err(FENCED)
        }
    }

    /// A commit into `path` was done (started at `start_ns`).
    pub fn committed(&self, task: &str, run_id: &str, path: &str, start_ns: u64) {
        let done_ns = ledger::mono_ns();
        if !self.lease.allows(self.epoch) {
            // Checked before, expired by the time the commit was done: the window ADR 004
            // describes. Say so loudly; it cannot be undone.
            self.late_commits.inc();
            tracing::error!(%path, epoch = self.epoch, "committed after this node's lease ran out (paused between the lease check and the commit): another node may have been active at the same time");
        }
        if let Some(ledger) = self.ledger {
            ledger.record(&ledger::Entry::Commit {
                node: self.node.to_string(),
                epoch: self.epoch,
                task: task.to_string(),
                run_id: run_id.to_string(),
                path: path.to_string(),
                start_ns,
                end_ns: done_ns,
            });
        }
    }
}

/// Test failpoint, compiled into debug builds only: `FERRY_FAILPOINT_PAUSE_BEFORE_RENAME_MS`
/// pauses between the lease check and the commit, so a test can probe the window that a local
/// lease deadline cannot close (ADR 004).
fn failpoint_pause_before_rename() {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("FERRY_FAILPOINT_PAUSE_BEFORE_RENAME_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tracing::warn!(ms, "failpoint: pausing between the lease check and the rename");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
