//! The local route: a batch whose source and destinations are all on the node's own file system.
//! Everything runs on the blocking pool in two hops per batch — plan and copy (one group commit
//! for a batch of small files, the pipelined copy for a large one; `ferry_hosts::local::fast`),
//! then, after the commit intent is stored, rename, sync each folder once and delete the sources
//! of moves — so a slow disk never stalls the async workers.

use std::collections::BTreeMap;
use std::path::Path;

use ferry_config::Overwrite;
use ferry_hosts::local::fast as local;
use ferry_hosts::path::os;
use ferry_wire::Outcome;

use crate::inflight::{CommitPoint, InFlight};
use ferry_wire::plan;

/// Make folders, find what an earlier attempt already committed, apply the overwrite policy.
pub fn prepare(f: &mut InFlight, previously_committing: &[Option<String>], buffer: usize) {
    for i in f.undecided() {
        let p = f.plan(i);
        if let Err(e) = prepare_dir(&os(&p.dir), p.create_dirs) {
            f.fail(i, e);
        }
    }
    // A previous attempt died while committing: find destinations it already completed.
    if previously_committing.iter().any(Option::is_some) {
        let source_hash = local::hash_file(&os(&f.source), buffer);
        for (i, path) in previously_committing.iter().enumerate().take(f.plans.len()) {
            let Some(path) = path else { continue };
            if f.outcomes[i].is_some() {
                continue;
            }
            let existing = local::hash_file(&os(path), buffer);
            let matches = match (&source_hash, &existing) {
                (Ok(src), Ok(dst)) => src == dst,
                // The source was deleted after the commit (delete_after): the copy stands.
                (Err(e), Ok(_)) if e.kind() == std::io::ErrorKind::NotFound => f.item.source.delete_after,
                _ => false,
            };
            if let (true, Ok((size, sha))) = (matches, existing) {
                f.recovered_at(i, path, size, sha);
            }
        }
    }
    // Apply the overwrite policy to destinations that exist already.
    for i in f.undecided() {
        if os(&f.plan(i).final_path).exists() && f.exists_at(i) {
            let first = f.plan(i).final_path.clone();
            let mut k = 1;
            while os(&plan::unique_candidate(&first, k)).exists() {
                k += 1;
            }
            f.plans[i].as_mut().expect("planned").final_path = plan::unique_candidate(&first, k);
        }
    }
    f.open = f.undecided();
}

/// Make sure the destination folder exists (creating it when allowed).
fn prepare_dir(dir: &Path, create: bool) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("destination folder {} is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => std::fs::create_dir_all(dir)
            .map_err(|e| format!("create destination folder {}: {e}", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "destination folder {} does not exist (create_dirs = false)",
            dir.display()
        )),
        Err(e) => Err(format!("destination folder {}: {e}", dir.display())),
    }
}

/// The source as listed: its folder, its confined path beneath it, its size and mtime.
fn source_of(f: &InFlight) -> local::Source {
    let listed = &f.item.source;
    local::Source {
        folder: os(&listed.folder),
        rel: os(ferry_hosts::path::confine(&listed.rel_path).unwrap_or_default()),
        listed: Some((listed.size, listed.mtime_ns)),
    }
}

fn temps(f: &InFlight) -> Vec<local::Temp> {
    f.open
        .iter()
        .map(|&i| local::Temp {
            path: os(&f.plan(i).temp_path()),
            mode: f.plan(i).mode,
        })
        .collect()
}

/// Copy every file with open destinations into its temp files and verify them: a lone file with
/// its own fsync (the pipelined copy above one buffer), several small ones with one group commit.
pub fn copy(files: &mut [InFlight], buffer: usize, stop: &(dyn Fn() -> bool + Sync)) {
    let jobs: Vec<(usize, (local::Source, Vec<local::Temp>))> = files
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.open.is_empty())
        .map(|(i, f)| (i, (source_of(f), temps(f))))
        .collect();
    let copies: Vec<Result<local::Copied, String>> = if files.len() == 1 {
        jobs.iter()
            .map(|(_, (source, temps))| local::copy_verified(source, temps, buffer, stop))
            .collect()
    } else {
        let jobs: Vec<(local::Source, Vec<local::Temp>)> = jobs.iter().map(|(_, j)| j.clone()).collect();
        local::copy_batch_verified(&jobs, buffer, stop)
    };
    for ((i, _), copied) in jobs.iter().zip(copies) {
        let f = &mut files[*i];
        match copied {
            Ok(c) => f.copied = Some(c),
            Err(e) => {
                // A failed copy fails every open destination and leaves no temp.
                for t in temps(f) {
                    let _ = std::fs::remove_file(t.path);
                }
                f.fail_open(&e);
            }
        }
    }
}

/// Rename every verified temp into place under the commit point, make the renames durable (each
/// folder once), and delete the sources of moves whose every destination was delivered.
pub fn commit(files: &mut [InFlight], point: &CommitPoint<'_>) {
    // Folder → the (file, destination) pairs renamed into it.
    let mut renamed_into: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (n, f) in files.iter_mut().enumerate() {
        if f.copied.is_none() {
            continue;
        }
        for i in std::mem::take(&mut f.open) {
            let p = f.plan(i).clone();
            let outcome = match point.check() {
                Ok(start_ns) => {
                    let outcome = rename(&p);
                    if outcome.outcome == Outcome::Delivered {
                        renamed_into.entry(p.dir.clone()).or_default().push((n, i));
                        point.committed(&f.item.task, &f.item.run_id.to_string(), &outcome.path, start_ns);
                    }
                    outcome
                }
                Err(why) => {
                    let _ = std::fs::remove_file(os(&p.temp_path()));
                    crate::inflight::failed(p.final_path.clone(), why.into())
                }
            };
            f.outcomes[i] = Some(outcome);
        }
    }
    // Make the renames durable: each folder once, before any result says delivered. A folder
    // that cannot be synced fails its destinations (the file may not survive a crash), so the
    // source of a move is kept and the next run delivers it again.
    for (dir, delivered) in renamed_into {
        if let Err(e) = local::sync_dir(&os(&dir)) {
            tracing::error!(%dir, error = %e, "fsync destination folder");
            for (n, i) in delivered {
                let path = files[n].outcomes[i]
                    .as_ref()
                    .map(|o| o.path.clone())
                    .unwrap_or_default();
                files[n].outcomes[i] = Some(crate::inflight::failed(
                    path,
                    format!(
                        "written, but the folder {} could not be made durable (fsync: {e}); the source is kept",
                        ferry_hosts::path::shown(&dir)
                    ),
                ));
            }
        }
    }
    for f in files.iter_mut() {
        if f.should_delete_source()
            && let Err(e) = std::fs::remove_file(os(&f.source))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            f.error = Some(format!(
                "delivered, but deleting the source {} failed: {e}",
                ferry_hosts::path::shown(&f.source)
            ));
        }
    }
}

/// Rename the verified temp file into place according to the overwrite policy.
fn rename(p: &plan::Planned) -> ferry_wire::DestOutcome {
    let temp = os(&p.temp_path());
    let renamed = match p.overwrite {
        Overwrite::Overwrite => {
            std::fs::rename(&temp, os(&p.final_path)).map(|()| Some(p.final_path.clone()))
        }
        Overwrite::Skip | Overwrite::Fail => {
            local::rename_noreplace(&temp, &os(&p.final_path)).map(|done| done.then(|| p.final_path.clone()))
        }
        Overwrite::Unique => (|| {
            for candidate in p.unique_candidates().take(10_000) {
                if local::rename_noreplace(&temp, &os(&candidate))? {
                    return Ok(Some(candidate));
                }
            }
            Ok(None)
        })(),
    };
    match renamed {
        Ok(Some(final_path)) => ferry_wire::DestOutcome {
            path: final_path,
            outcome: Outcome::Delivered,
            error: None,
        },
        Ok(None) => {
            let _ = std::fs::remove_file(&temp);
            let (outcome, why) = match p.overwrite {
                Overwrite::Skip => (
                    Outcome::Skipped,
                    "destination file appeared meanwhile (overwrite = skip)",
                ),
                _ => (Outcome::Failed, "destination file appeared meanwhile"),
            };
            ferry_wire::DestOutcome {
                path: p.final_path.clone(),
                outcome,
                error: Some(why.into()),
            }
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            crate::inflight::failed(
                p.final_path.clone(),
                format!("rename into {}: {e}", ferry_hosts::path::shown(&p.final_path)),
            )
        }
    }
}
