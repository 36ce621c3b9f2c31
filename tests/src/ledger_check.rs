//! The failover checker: merges the side-effect ledgers of every node and fails on any breach of
//! "exactly one active node".
//!
//! Rules (each breach is one violation, described in words):
//! 1. Grants happen in epoch order: a later grant never has a smaller epoch.
//! 2. No side effect under an epoch older than one already granted: a commit stamped `E` never
//!    starts after a grant of any epoch `E' > E` was acknowledged.
//! 3. No overlap: every commit of an older epoch has ended (its rename is done) before the first
//!    commit of a newer epoch starts (its lease check), whichever nodes made them.
//! 4. No schedule slot fired twice (JetStream accepted it as new more than once).
//! 5. No commit without an epoch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ferry_service::ledger::{self, Entry};

#[derive(Debug, Default)]
pub struct Report {
    pub commits: usize,
    pub slots: usize,
    pub grants: usize,
    /// Commits per node.
    pub per_node: BTreeMap<String, usize>,
    /// Time from the lease check to the rename done, per commit (ns), by task: the window that
    /// fencing by a local deadline cannot close.
    pub commit_window_ns: BTreeMap<String, Vec<u64>>,
    pub violations: Vec<String>,
}

impl Report {
    /// The commit window's percentile `p` over every commit, or over `task`'s.
    pub fn window_percentile_us(&self, task: Option<&str>, p: f64) -> f64 {
        let mut w: Vec<u64> = (self.commit_window_ns.iter())
            .filter(|(t, _)| task.is_none_or(|task| task == t.as_str()))
            .flat_map(|(_, w)| w.iter().copied())
            .collect();
        if w.is_empty() {
            return 0.0;
        }
        w.sort_unstable();
        let i = ((w.len() - 1) as f64 * p).round() as usize;
        w[i] as f64 / 1000.0
    }
}

pub fn read_all(paths: &[&Path]) -> anyhow::Result<Vec<Entry>> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(ledger::read(p)?);
    }
    Ok(all)
}

pub fn check(entries: &[Entry]) -> Report {
    let mut report = Report::default();
    let mut grants: Vec<(u64, u64, &str)> = Vec::new(); // (at, epoch, node)
    let mut commits: Vec<(u64, u64, u64, &str, &str)> = Vec::new(); // (start, end, epoch, node, path)
    let mut slots: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for e in entries {
        match e {
            Entry::Grant { node, epoch, at_ns } => grants.push((*at_ns, *epoch, node)),
            Entry::Commit {
                node,
                epoch,
                task,
                path,
                start_ns,
                end_ns,
                ..
            } => {
                commits.push((*start_ns, *end_ns, *epoch, node, path));
                *report.per_node.entry(node.clone()).or_default() += 1;
                (report.commit_window_ns.entry(task.clone()).or_default())
                    .push(end_ns.saturating_sub(*start_ns));
            }
            Entry::Slot { node, task, slot, .. } => slots.entry((task, slot)).or_default().push(node),
        }
    }
    report.commits = commits.len();
    report.grants = grants.len();
    report.slots = slots.values().map(Vec::len).sum();
    grants.sort();
    commits.sort();

    // 1. Grants in epoch order.
    for pair in grants.windows(2) {
        let ((t1, e1, n1), (t2, e2, n2)) = (pair[0], pair[1]);
        if e2 <= e1 {
            report.violations.push(format!(
                "epoch {e2} was granted to {n2} at {t2} ns, after epoch {e1} was granted to {n1} at {t1} ns"
            ));
        }
    }
    // 2. No commit under an epoch older than one already granted.
    for &(start, _, epoch, node, path) in &commits {
        if epoch == 0 {
            report
                .violations
                .push(format!("{node} committed {path} without an epoch"));
            continue;
        }
        if let Some(&(at, newer, holder)) = grants.iter().find(|(at, e, _)| *e > epoch && *at < start) {
            report.violations.push(format!(
                "{node} committed {path} under epoch {epoch} at {start} ns, after epoch {newer} was granted to {holder} at {at} ns ({:.1} ms earlier)",
                (start - at) as f64 / 1e6
            ));
        }
    }
    // 3. No overlap between epochs.
    let mut spans: BTreeMap<u64, (u64, u64, &str)> = BTreeMap::new(); // epoch → (first start, last end, node)
    for &(start, end, epoch, node, _) in &commits {
        let span = spans.entry(epoch).or_insert((start, end, node));
        span.0 = span.0.min(start);
        span.1 = span.1.max(end);
    }
    let spans: Vec<_> = spans.into_iter().collect();
    for (i, &(older, (_, older_end, older_node))) in spans.iter().enumerate() {
        for &(newer, (newer_start, _, newer_node)) in &spans[i + 1..] {
            if older_end >= newer_start {
                report.violations.push(format!(
                    "overlap: {older_node}'s last commit under epoch {older} ended at {older_end} ns, after {newer_node}'s first commit under epoch {newer} started at {newer_start} ns"
                ));
            }
        }
    }
    // 4. No slot fired twice.
    for ((task, slot), nodes) in &slots {
        if nodes.len() > 1 {
            report.violations.push(format!(
                "slot {slot} of task {task} was fired {} times (by {})",
                nodes.len(),
                nodes.join(", ")
            ));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(node: &str, epoch: u64, start: u64, end: u64) -> Entry {
        Entry::Commit {
            node: node.into(),
            epoch,
            task: "t".into(),
            run_id: "r".into(),
            path: format!("/out/{node}-{start}"),
            start_ns: start,
            end_ns: end,
        }
    }

    fn grant(node: &str, epoch: u64, at: u64) -> Entry {
        Entry::Grant {
            node: node.into(),
            epoch,
            at_ns: at,
        }
    }

    #[test]
    fn a_clean_handover_passes() {
        let entries = [
            grant("a", 3, 0),
            commit("a", 3, 10, 20),
            commit("a", 3, 30, 40),
            grant("b", 9, 100),
            commit("b", 9, 110, 120),
        ];
        let report = check(&entries);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(report.commits, 3);
    }

    #[test]
    fn a_stale_commit_after_a_newer_grant_is_caught() {
        let entries = [
            grant("a", 3, 0),
            grant("b", 9, 100),
            commit("b", 9, 110, 120),
            commit("a", 3, 130, 140),
        ];
        let report = check(&entries);
        assert_eq!(report.violations.len(), 2, "{:?}", report.violations);
        assert!(report.violations[0].contains("under epoch 3"));
        assert!(report.violations[1].contains("overlap"));
    }

    #[test]
    fn overlapping_commits_of_two_epochs_are_caught() {
        let entries = [commit("a", 3, 10, 50), commit("b", 9, 40, 60)];
        let report = check(&entries);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    }

    #[test]
    fn a_slot_fired_twice_is_caught() {
        let slot = |node: &str| Entry::Slot {
            node: node.into(),
            epoch: 1,
            task: "t".into(),
            slot: "2026-01-01T00:00:00Z".into(),
            at_ns: 5,
        };
        let report = check(&[slot("a"), slot("b")]);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    }

    #[test]
    fn grants_out_of_epoch_order_are_caught() {
        let report = check(&[grant("a", 9, 0), grant("b", 3, 10)]);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    }
}
