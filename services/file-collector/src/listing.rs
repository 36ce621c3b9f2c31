//! Listing a task's sources into work items.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use ferry_config::{Config, HostKind, Source, Task};
use ferry_hosts::{Backoff, Entry, Host, Hosts, path};
use ferry_wire::{
    BATCH_MAX_BYTES, BATCH_MAX_FILES, FileItem, FileState, RunRequested, SMALL_FILE_BYTES, SourceFile,
    WorkBatch, plan,
};

/// A file found in a source folder.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    rel_path: String,
    size: u64,
    mtime_ns: i128,
}

/// List every source of `task` and build the run's work items, in source order then path order.
/// Errors are task problems (a missing folder, an unreadable directory), written for operators.
pub async fn list_task(
    task: &Task,
    config: &Config,
    hosts: &Hosts,
    request: &RunRequested,
    started_at: DateTime<Utc>,
    state_kv: &kv::Store,
) -> Result<Vec<FileItem>, String> {
    let mut items = Vec::new();
    for (index, source) in task.sources.iter().enumerate() {
        let host_config = config
            .hosts
            .get(&source.host)
            .ok_or_else(|| format!("source[{index}]: unknown host {:?}", source.host))?;
        let host = hosts
            .get(host_config)
            .map_err(|e| format!("source[{index}]: {e}"))?;
        let (retries, wait) = ferry_config::retry_policy(Some(task), [&host_config.options]);
        let backoff = Backoff::new(retries, wait);
        let found = list_source(host.as_ref(), source, host_config.is_local(), backoff)
            .await
            .map_err(|e| format!("source[{index}]: {e}"))?;
        let source_key = plan::state_source_key(&task.name, &source.host, &source.folder);
        // New-files-only: drop files whose size and modification time match their last delivery.
        let known = if source.new_files_only {
            source_state(state_kv, &source_key)
                .await
                .map_err(|e| format!("read new-files-only state: {e}"))?
        } else {
            HashMap::new()
        };
        // Hashing, checking and building a million items is seconds of CPU: off the async workers.
        let fresh = {
            let (task, source, source_key) = (task.clone(), source.clone(), source_key.clone());
            let (run_id, epoch) = (request.run_id, request.epoch);
            tokio::task::spawn_blocking(move || {
                fresh_items(
                    &task,
                    index,
                    &source,
                    &source_key,
                    found,
                    known,
                    run_id,
                    epoch,
                    started_at,
                )
            })
            .await
            .map_err(|e| format!("source[{index}]: listing task failed: {e}"))?
        };
        // Two sources of the task on one folder (other masks) share its state: neither prunes.
        let shared = task
            .sources
            .iter()
            .filter(|s| plan::state_source_key(&task.name, &s.host, &s.folder) == source_key)
            .count()
            > 1;
        if !shared {
            prune(state_kv, fresh.gone).await;
        }
        items.extend(fresh.items);
    }
    let smb: std::collections::HashSet<String> = config
        .hosts
        .iter()
        .filter(|(_, h)| h.kind() == HostKind::Smb)
        .map(|(name, _)| name.clone())
        .collect();
    tokio::task::spawn_blocking(move || {
        plan::refuse_collisions(&mut items, |host: &str| smb.contains(host));
        items
    })
    .await
    .map_err(|e| format!("listing task failed: {e}"))
}

/// Batches a run is spread over at least, when it has enough files: as many as the transfer's
/// default number of workers, so a run of a few hundred files still keeps every worker busy.
const BATCH_SPREAD: usize = 16;

/// Pack a run's items, in listing order, into work batches (ADR 005): consecutive small files
/// share a batch of at most [`BATCH_MAX_FILES`] files and [`BATCH_MAX_BYTES`] bytes (fewer when
/// the run is small, see [`BATCH_SPREAD`]); a file larger than [`SMALL_FILE_BYTES`] travels
/// alone; files of different sources never share a batch (transfer takes one route per batch,
/// from its first file's hosts). The same listing always gives the same batches and batch ids.
pub fn pack(items: Vec<FileItem>) -> Vec<WorkBatch> {
    let per_batch = (items.len() / BATCH_SPREAD).clamp(1, BATCH_MAX_FILES);
    let mut batches = Vec::new();
    let mut current: Vec<FileItem> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let size = item.source.size;
        let small = size <= SMALL_FILE_BYTES;
        let other_source = current
            .last()
            .is_some_and(|last| last.source.source_index != item.source.source_index);
        if !current.is_empty()
            && (!small || other_source || current.len() == per_batch || bytes + size > BATCH_MAX_BYTES)
        {
            batches.push(seal(std::mem::take(&mut current)));
            bytes = 0;
        }
        if small {
            bytes += size;
            current.push(item);
        } else {
            batches.push(seal(vec![item]));
        }
    }
    if !current.is_empty() {
        batches.push(seal(current));
    }
    batches
}

/// A run of a task with PER-TASK process steps travels as one batch: those steps need every
/// file of the run at once (zip them into one archive). Empty when the run found no files.
pub fn pack_whole_run(items: Vec<FileItem>) -> Vec<WorkBatch> {
    if items.is_empty() {
        Vec::new()
    } else {
        vec![seal(items)]
    }
}

/// A batch's id is a hash of its items' ids (which are unique per run).
fn seal(items: Vec<FileItem>) -> WorkBatch {
    WorkBatch {
        batch_id: plan::batch_id(items.iter().map(|i| i.item_id.as_str())),
        items,
    }
}

/// What one source's listing adds to a run.
struct Fresh {
    /// Work items of the files to move, in path order.
    items: Vec<FileItem>,
    /// New-files-only keys of files this listing no longer shows (see [`prune`]).
    gone: Vec<String>,
}

/// The work items of the files of one source that new-files-only does not leave (at most
/// `max_files`), and the state keys of files no longer listed.
#[allow(clippy::too_many_arguments)]
fn fresh_items(
    task: &Task,
    index: usize,
    source: &Source,
    source_key: &str,
    found: Vec<Found>,
    mut known: HashMap<String, FileState>,
    run_id: uuid::Uuid,
    epoch: u64,
    started_at: DateTime<Utc>,
) -> Fresh {
    let mut fresh: Vec<(Found, Option<String>)> = Vec::new();
    for f in found {
        let key = source
            .new_files_only
            .then(|| plan::state_key(source_key, &f.rel_path));
        // Taken out of `known` as it is listed: what is left at the end is no longer listed.
        let delivered = key.as_ref().and_then(|k| known.remove(k));
        let unchanged = delivered.is_some_and(|state| state.size == f.size && state.mtime_ns == f.mtime_ns);
        if !unchanged {
            fresh.push((f, key));
        }
    }
    if source.max_files > 0 {
        fresh.truncate(source.max_files as usize);
    }
    let items = fresh
        .into_iter()
        .map(|(f, state_key)| FileItem {
            run_id,
            task: task.name.clone(),
            epoch,
            item_id: plan::short_hash(format!("{run_id}\0{index}\0{}", f.rel_path).as_bytes()),
            source: SourceFile {
                source_index: index,
                host: source.host.clone(),
                folder: source.folder.clone(),
                rel_path: f.rel_path,
                size: f.size,
                mtime_ns: f.mtime_ns,
                state_key,
                delete_after: source.delete_after,
            },
            destinations: task.destinations.clone(),
            run_started_at: started_at,
            refused: Vec::new(),
        })
        .collect();
    Fresh {
        items,
        gone: known.into_keys().collect(),
    }
}

/// Forget the new-files-only state of files a listing no longer shows (deleted, renamed away, or
/// no longer matching the masks), so the state of a source does not grow for good: a file that
/// comes back later is a new file. Best effort — a key left behind is only space.
async fn prune(state_kv: &kv::Store, gone: Vec<String>) {
    if gone.is_empty() {
        return;
    }
    let total = gone.len();
    let mut deletes = futures::stream::iter(gone.into_iter().map(|key| {
        let kv = state_kv.clone();
        async move { kv.delete(key).await.is_err() }
    }))
    .buffer_unordered(64);
    let mut failed = 0;
    while let Some(lost) = deletes.next().await {
        failed += usize::from(lost);
    }
    tracing::info!(
        pruned = total - failed,
        failed,
        "forgot the new-files-only state of files no longer listed"
    );
}

/// The new-files-only state of one source (key → state), read in one pass: an ordered consumer
/// over the bucket's stream, filtered to the source's keys, delivering the last value of each —
/// one request for the whole source instead of one per listed file.
async fn source_state(state_kv: &kv::Store, source_key: &str) -> anyhow::Result<HashMap<String, FileState>> {
    let consumer = state_kv
        .stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{}nfo.{source_key}.>", state_kv.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?;
    let mut known = HashMap::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(known);
    }
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let pending = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending;
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() != "PUT");
        if let Some(key) = message.subject.as_str().strip_prefix(state_kv.prefix.as_str()) {
            if deleted {
                known.remove(key);
            } else if let Ok(state) = ferry_wire::decode::<FileState>(&message.payload) {
                known.insert(key.to_string(), state);
            }
        }
        if pending == 0 {
            break;
        }
    }
    Ok(known)
}

/// The files of one source that this run takes: listed through the source's host, filtered by
/// the masks and excludes, without transfer temp files, old enough (`min_age_secs`), and stable:
/// with `size_stable_ms` (on by default), a file modified within that interval is taken only if a
/// second listing after the interval shows the same size and modification time. On the node's
/// own file system a file last modified longer ago than the interval counts as stable without
/// waiting (one clock); a remote host's clock may differ from ours, so every file is listed twice.
/// A listing that fails transiently (connection lost, no answer in time) is tried again after
/// `backoff`'s waits, as a transfer is.
async fn list_source(
    host: &dyn Host,
    source: &Source,
    same_clock: bool,
    backoff: Backoff,
) -> Result<Vec<Found>, String> {
    let list = || list_retrying(host, &source.folder, source.subdirectories, backoff.clone());
    let wanted = |e: &Entry| {
        let name = path::file_name(&e.rel_path);
        !path::is_temp_name(name)
            && source.masks.matches(name)
            && !source.exclude.as_ref().is_some_and(|x| x.matches(name))
    };
    let now_ns = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX) as i128;
    let min_age_ns = source.min_age_secs as i128 * 1_000_000_000;
    let mut found: Vec<Entry> = list()
        .await?
        .into_iter()
        .filter(|e| wanted(e) && (min_age_ns == 0 || now_ns - e.mtime_ns >= min_age_ns))
        .collect();
    let stable_ns = source.size_stable_ms as i128 * 1_000_000;
    let fresh = |e: &Entry| !same_clock || now_ns - e.mtime_ns < stable_ns;
    if stable_ns > 0 && found.iter().any(fresh) {
        tokio::time::sleep(Duration::from_millis(source.size_stable_ms)).await;
        let again: HashMap<String, (u64, i128)> = list()
            .await?
            .into_iter()
            .map(|e| (e.rel_path, (e.size, e.mtime_ns)))
            .collect();
        found.retain(|e| !fresh(e) || again.get(&e.rel_path) == Some(&(e.size, e.mtime_ns)));
    }
    Ok(found
        .into_iter()
        .map(|e| Found {
            rel_path: e.rel_path,
            size: e.size,
            mtime_ns: e.mtime_ns,
        })
        .collect())
}

/// `host.list`, tried again after `backoff`'s waits while it fails transiently.
async fn list_retrying(
    host: &dyn Host,
    folder: &str,
    recursive: bool,
    mut backoff: Backoff,
) -> Result<Vec<Entry>, String> {
    loop {
        let e = match host.list(folder, recursive).await {
            Ok(entries) => return Ok(entries),
            Err(e) => e,
        };
        let shown = e.to_string();
        let wait = backoff.after(e, false).map_err(|e| e.to_string())?;
        let (host, folder, retry) = (host.name(), path::shown(folder), backoff.retries());
        tracing::warn!(%host, %folder, retry, error = %shown, "listing failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_config::MaskList;
    use ferry_hosts::local::LocalHost;
    use std::path::Path;

    async fn walk_local(s: &Source) -> Result<Vec<Found>, String> {
        list_source(&LocalHost::new("local"), s, true, Backoff::new(0, Duration::ZERO)).await
    }

    fn source(folder: &Path) -> Source {
        Source {
            host: "local".into(),
            folder: folder.to_string_lossy().into_owned(),
            masks: MaskList::parse("*.csv;*.txt").expect("valid"),
            exclude: Some(MaskList::parse("skip*").expect("valid")),
            subdirectories: false,
            new_files_only: true,
            min_age_secs: 0,
            size_stable_ms: 0,
            delete_after: false,
            max_files: 0,
        }
    }

    #[tokio::test]
    async fn a_listing_that_fails_transiently_is_retried_and_a_permanent_failure_is_not() {
        use ferry_hosts::ErrorKind;
        use ferry_hosts::faulty::{Faults, FaultyHost, Op};
        use std::sync::Arc;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.csv"), b"a").expect("write");
        let s = source(dir.path());
        let faults = Faults::new();
        let host = FaultyHost::wrap(Arc::new(LocalHost::new("local")), faults.clone());
        let backoff = || Backoff::new(2, Duration::from_millis(1));

        // Two dropped connections, then an answer: the file is found.
        faults.fail(Op::List, ErrorKind::Transient, 2);
        let found = list_source(host.as_ref(), &s, true, backoff())
            .await
            .expect("retried");
        assert_eq!(found.len(), 1);

        // A third in a row uses up the retries, and the error says so.
        faults.clear();
        faults.fail(Op::List, ErrorKind::Transient, 3);
        let e = list_source(host.as_ref(), &s, true, backoff())
            .await
            .expect_err("gave up");
        assert!(e.contains("(after 2 retries)"), "{e}");

        // A permanent failure (wrong password, no such folder) is not tried again.
        faults.clear();
        faults.fail(Op::List, ErrorKind::Permanent, 1);
        let e = list_source(host.as_ref(), &s, true, backoff())
            .await
            .expect_err("permanent");
        assert!(!e.contains("retries"), "{e}");
        assert_eq!(
            list_source(host.as_ref(), &s, true, backoff())
                .await
                .expect("passes")
                .len(),
            1
        );
    }

    fn item(id: usize, size: u64) -> FileItem {
        FileItem {
            run_id: uuid::Uuid::nil(),
            task: "t".into(),
            epoch: 1,
            item_id: format!("item{id}"),
            source: SourceFile {
                source_index: 0,
                host: "local".into(),
                folder: "/in".into(),
                rel_path: format!("f{id}"),
                size,
                mtime_ns: 0,
                state_key: None,
                delete_after: false,
            },
            destinations: Vec::new(),
            run_started_at: DateTime::<Utc>::UNIX_EPOCH,
            refused: Vec::new(),
        }
    }

    #[test]
    fn small_files_share_batches_and_large_ones_travel_alone() {
        let sizes = |batches: &[WorkBatch]| -> Vec<usize> { batches.iter().map(|b| b.items.len()).collect() };
        // Few files: one per batch, so every transfer worker gets one.
        let few: Vec<FileItem> = (0..10).map(|i| item(i, 4096)).collect();
        assert_eq!(sizes(&pack(few)), vec![1; 10]);
        // Many: at most BATCH_MAX_FILES per batch, in listing order, nothing lost or repeated.
        let many: Vec<FileItem> = (0..10_000).map(|i| item(i, 4096)).collect();
        let batches = pack(many.clone());
        assert!(batches.iter().all(|b| b.items.len() <= BATCH_MAX_FILES));
        assert_eq!(batches.len(), 10_000usize.div_ceil(BATCH_MAX_FILES));
        let flat: Vec<FileItem> = batches.iter().flat_map(|b| b.items.clone()).collect();
        assert_eq!(flat, many);
        // Stable ids: the same listing gives the same batches.
        assert_eq!(pack(many.clone()), batches);
        let ids: std::collections::HashSet<&str> = batches.iter().map(|b| b.batch_id.as_str()).collect();
        assert_eq!(ids.len(), batches.len());
        // A large file is alone and splits the small ones around it; bytes are capped too.
        let mut mixed: Vec<FileItem> = (0..40).map(|i| item(i, 4096)).collect();
        mixed.insert(20, item(99, SMALL_FILE_BYTES + 1));
        mixed.extend((100..140).map(|i| item(i, 900 << 10)));
        let batches = pack(mixed);
        let large = batches
            .iter()
            .find(|b| b.items.iter().any(|i| i.item_id == "item99"))
            .expect("packed");
        assert_eq!(large.items.len(), 1);
        assert!(
            batches.iter().all(|b| b.items.len() == 1
                || b.items.iter().map(|i| i.source.size).sum::<u64>() <= BATCH_MAX_BYTES)
        );
        // Two sources (say a local folder and an SFTP server): never in one batch.
        let mut two: Vec<FileItem> = (0..2000).map(|i| item(i, 4096)).collect();
        for it in two.iter_mut().skip(1000) {
            it.source.source_index = 1;
        }
        for b in pack(two) {
            let first = b.items[0].source.source_index;
            assert!(
                b.items.iter().all(|i| i.source.source_index == first),
                "{}",
                b.batch_id
            );
        }
    }

    #[tokio::test]
    async fn masks_excludes_subdirectories_and_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "a.csv",
            "b.txt",
            "c.bin",
            "skip.csv",
            ".x.csv.ferry-1.part",
            ".ferry-0123456789abcdef-0.part",
            "sub/d.csv",
        ] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, name).expect("write");
        }
        let mut s = source(dir.path());
        let names: Vec<String> = walk_local(&s)
            .await
            .expect("lists")
            .into_iter()
            .map(|f| f.rel_path)
            .collect();
        assert_eq!(names, ["a.csv", "b.txt"]);
        s.subdirectories = true;
        let names: Vec<String> = walk_local(&s)
            .await
            .expect("lists")
            .into_iter()
            .map(|f| f.rel_path)
            .collect();
        assert_eq!(names, ["a.csv", "b.txt", "sub/d.csv"]);
    }

    #[tokio::test]
    async fn minimum_age_holds_back_fresh_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("new.csv"), "x").expect("write");
        let mut s = source(dir.path());
        s.min_age_secs = 3600;
        assert!(walk_local(&s).await.expect("lists").is_empty());
    }

    #[tokio::test]
    async fn a_file_still_growing_is_held_back_and_a_settled_one_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let growing = dir.path().join("growing.csv");
        std::fs::write(dir.path().join("settled.csv"), "done").expect("write");
        std::fs::write(&growing, "x").expect("write");
        let mut s = source(dir.path());
        s.size_stable_ms = 300;
        let writer = {
            let growing = growing.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(growing)
                    .expect("open");
                for _ in 0..20 {
                    f.write_all(&[b'y'; 1024]).expect("append");
                    std::thread::sleep(Duration::from_millis(25));
                }
            })
        };
        let names: Vec<String> = walk_local(&s)
            .await
            .expect("lists")
            .into_iter()
            .map(|f| f.rel_path)
            .collect();
        writer.join().expect("writer");
        assert_eq!(names, ["settled.csv"], "the growing file is not taken");
        // Once it stopped changing (and the check is off), it is.
        s.size_stable_ms = 0;
        assert_eq!(walk_local(&s).await.expect("lists").len(), 2);
    }

    #[tokio::test]
    async fn a_missing_folder_is_named() {
        let s = source(Path::new("/nonexistent/ferry"));
        assert!(walk_local(&s).await.unwrap_err().contains("/nonexistent/ferry"));
    }
}
