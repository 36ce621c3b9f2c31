//! The hosts route: a batch with a remote source or a remote destination, moved through the
//! `ferry_hosts::Host` trait. Per file: stream the source once (hashing it) into an upload per
//! destination, finish (durable) and verify each, check the source did not change while it was
//! read; after the commit intent is stored, commit each under the commit point, sync folders where
//! the kind can, and delete the source of a move.
//!
//! A transient failure (connection lost, timeout) retries the file's copy with back-off, up to
//! the hosts' `retries`; an upload left behind by the failed attempt is resumed from its verified
//! length where the kind can resume. A permanent failure of one destination fails only that
//! destination; of the source, every destination.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use ferry_config::Overwrite;
use ferry_hosts::local::fast::Copied;
use ferry_hosts::{Backoff, DynHost, ErrorKind, HostError, HostResult, Upload, WriteTarget, path};
use ferry_wire::Outcome;

use crate::inflight::{CommitPoint, InFlight, failed};
use ferry_wire::plan;

/// The hosts of one batch: its source's and each destination's (`Err`: why the destination's
/// host cannot be used; its outcome says so).
pub struct Route {
    pub source: DynHost,
    pub dests: Vec<Result<DynHost, String>>,
    pub buffer: usize,
    /// Retries of a transient failure, and the first wait (doubling, at most 5 minutes).
    pub retries: u32,
    pub retry_wait: Duration,
    /// How long one attempt at a file may take (`None`: as long as it makes progress).
    pub deadline: Option<Deadline>,
    /// `ferry_transfer_retries_total` and `ferry_transfer_resumed_bytes_total`, by host.
    pub retried: prometheus::IntCounterVec,
    pub resumed_bytes: prometheus::IntCounterVec,
    /// Destination hosts that failed a file of this batch for good (login refused, host key or
    /// certificate refused, the folder not writable, still unreachable after the retries): later
    /// files fail at once with the same error instead of trying again — one refused login per
    /// batch, not one per file, since a partner's server may lock an account after a few.
    pub refused: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Destination folders (host, folder) this batch already made or found: a batch of small
    /// files into one folder asks the server once, not once per file.
    pub ready: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

/// How long one attempt at copying a file may take: `grace` plus its size at `bytes_per_sec` —
/// the most lenient of the batch's remote hosts (`operation_timeout_secs`, `min_rate_kib`), so a
/// server that trickles its bytes, each answer just inside the operation timeout, cannot hold a
/// transfer (and its run) for good.
#[derive(Debug, Clone)]
pub struct Deadline {
    /// The host whose rate this is (named in the error).
    pub host: String,
    pub grace: Duration,
    pub bytes_per_sec: u64,
}

impl Deadline {
    /// The deadline for `hosts` (the batch's remote hosts); none if one of them sets no minimum
    /// rate (`min_rate_kib = 0`). The grace is as long as a wait for a free connection may last
    /// (connect + operation timeout), so a file that waited for one is not cut off as slow.
    pub fn of(hosts: &[&ferry_config::Host]) -> Option<Deadline> {
        let slowest = hosts.iter().min_by_key(|h| h.options.min_rate_kib)?;
        let grace = hosts
            .iter()
            .map(|h| h.options.connect_timeout_secs + h.options.operation_timeout_secs)
            .max()?;
        (slowest.options.min_rate_kib > 0).then(|| Deadline {
            host: slowest.name.clone(),
            grace: Duration::from_secs(grace),
            bytes_per_sec: slowest.options.min_rate_kib * 1024,
        })
    }

    /// How long an attempt at a file of `size` bytes may take.
    pub fn for_size(&self, size: u64) -> Duration {
        self.grace + Duration::from_secs_f64(size as f64 / self.bytes_per_sec as f64)
    }

    fn exceeded(&self, source: &str, size: u64, limit: Duration) -> HostError {
        HostError::transient(
            &self.host,
            format!(
                "copying {} ({size} bytes) took longer than {} s, slower than {} KiB/s \
                 (min_rate_kib) after the first {} s (connect_timeout_secs + operation_timeout_secs): \
                 the server is too slow or holds the transfer back",
                path::shown(source),
                limit.as_secs(),
                self.bytes_per_sec / 1024,
                self.grace.as_secs()
            ),
        )
    }
}

/// A spawned task aborted when its owner goes away first (an attempt cut off by its deadline).
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Files at least this large resume an interrupted upload instead of starting over.
const RESUME_MIN_BYTES: u64 = 8 << 20;
/// Before resuming, this much of the end of what is already stored is read back and compared with
/// the source, so a torn or out-of-order tail is never kept.
const RESUME_CHECK_BYTES: u64 = 4 << 20;
/// Chunks read ahead of the uploads.
const READ_AHEAD: usize = 4;

impl Route {
    fn dest(&self, i: usize) -> &DynHost {
        self.dests[i].as_ref().expect("open destinations have a host")
    }

    /// Make folders, find what an earlier attempt already committed, apply the overwrite policy.
    pub async fn prepare(&self, f: &mut InFlight, previously_committing: &[Option<String>]) {
        for i in f.undecided() {
            if let Err(why) = &self.dests[i] {
                f.fail(i, why.clone());
                continue;
            }
            let p = f.plan(i).clone();
            let host = self.dest(i);
            let earlier = self
                .refused
                .lock()
                .expect("not poisoned")
                .get(host.name())
                .cloned();
            if let Some(error) = earlier {
                f.fail(
                    i,
                    format!("{error} (not tried again for this file: it ended an earlier file of its batch)"),
                );
                continue;
            }
            if !host.capabilities().byte_names && !ferry_hosts::path::is_utf8(&p.final_path) {
                f.fail(
                    i,
                    format!(
                        "{}: the name {} is not UTF-8, and this host stores names as UTF-8 text only \
                         (rename the source file, or name it with a file name template)",
                        host.name(),
                        ferry_hosts::path::shown(&p.final_path)
                    ),
                );
                continue;
            }
            let key = (host.name().to_string(), p.dir.clone());
            if self.ready.lock().expect("not poisoned").contains(&key) {
                continue;
            }
            let mut backoff = self.backoff();
            let ready = loop {
                let e = match make_ready(host, &p).await {
                    Ok(()) => break Ok(()),
                    Err(e) => e,
                };
                let shown = e.to_string();
                match backoff.after(e, false) {
                    Ok(wait) => {
                        self.retried.with_label_values(&[host.name()]).inc();
                        tracing::warn!(task = %f.item.task, folder = %p.dir, retry = backoff.retries(), error = %shown, "destination folder not ready; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => break Err(e),
                }
            };
            if ready.is_ok() {
                self.ready.lock().expect("not poisoned").insert(key);
            }
            if let Err(e) = ready {
                self.give_up_on(&e, &backoff);
                f.fail(i, e.to_string());
            }
        }
        // A previous attempt died while committing: find destinations it already completed — the
        // recorded final path holds exactly the source's bytes (read back and hashed: this only
        // happens after a crash, and nothing weaker tells a committed file from a stale one of the
        // same size; a commit by hard link leaves the temp behind until it is removed, so the
        // temp's presence proves nothing either way).
        if previously_committing.iter().any(Option::is_some) {
            let source_hash = ferry_hosts::hash_stored(&self.source, &f.source).await;
            for (i, path) in previously_committing.iter().enumerate().take(f.plans.len()) {
                let (Some(path), None, Ok(host)) = (path, &f.outcomes[i], &self.dests[i]) else {
                    continue;
                };
                let Ok(Some(meta)) = host.stat(path).await else {
                    continue;
                };
                let matches = match &source_hash {
                    Ok((size, _)) if *size != meta.size => false,
                    Ok((_, sha)) => ferry_hosts::hash_stored(host, path)
                        .await
                        .is_ok_and(|(_, h)| &h == sha),
                    // The source was deleted after the commit (delete_after): the copy stands.
                    Err(e) => e.kind == ErrorKind::NotFound && f.item.source.delete_after,
                };
                if matches {
                    let sha = source_hash.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
                    f.recovered_at(i, path, meta.size, sha);
                    let _ = host.delete(&f.plan(i).temp_path()).await;
                }
            }
        }
        // Apply the overwrite policy to destinations that exist already (`overwrite` needs no
        // look: the commit replaces atomically).
        for i in f.undecided() {
            if f.plan(i).overwrite == Overwrite::Overwrite {
                continue;
            }
            let host = self.dest(i).clone();
            let first = f.plan(i).final_path.clone();
            match host.stat(&first).await {
                Ok(None) => {}
                Ok(Some(_)) if f.exists_at(i) => {
                    let mut k = 1;
                    loop {
                        let candidate = plan::unique_candidate(&first, k);
                        match host.stat(&candidate).await {
                            Ok(None) => {
                                f.plans[i].as_mut().expect("planned").final_path = candidate;
                                break;
                            }
                            Ok(Some(_)) if k < 10_000 => k += 1,
                            Ok(Some(_)) => {
                                f.fail(i, format!("no free name like {first} (tried 10,000)"));
                                break;
                            }
                            Err(e) => {
                                f.fail(i, e.to_string());
                                break;
                            }
                        }
                    }
                }
                Ok(Some(_)) => {}
                Err(e) => f.fail(i, e.to_string()),
            }
        }
        f.open = f.undecided();
    }

    /// Copy `f`'s source to every open destination, retrying transient failures.
    pub async fn copy(&self, f: &mut InFlight, stop: &(dyn Fn() -> bool + Sync)) {
        if f.open.is_empty() {
            return;
        }
        let mut backoff = self.backoff();
        let size = f.item.source.size;
        let limit = self.deadline.as_ref().map(|d| d.for_size(size));
        loop {
            let attempt = self.copy_once(f, stop);
            let copied = match limit {
                Some(limit) => tokio::time::timeout(limit, attempt).await.unwrap_or_else(|_| {
                    let d = self.deadline.as_ref().expect("a limit comes from a deadline");
                    Err(d.exceeded(&f.source, size, limit))
                }),
                None => attempt.await,
            };
            let e = match copied {
                Ok(()) => return,
                Err(e) => e,
            };
            let (host, shown) = (e.host.clone(), e.to_string());
            match backoff.after(e, stop()) {
                Ok(wait) => {
                    self.retried.with_label_values(&[&host]).inc();
                    tracing::warn!(task = %f.item.task, source = %f.source, retry = backoff.retries(), retries = self.retries, error = %shown, "transfer interrupted; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    self.give_up_on(&e, &backoff);
                    return f.fail_open(&e.to_string());
                }
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.retries, self.retry_wait)
    }

    /// A destination host that failed a file for good — refused it, or still failed after
    /// `backoff`'s retries — is not asked again for the rest of the batch: a server that is down
    /// would otherwise cost every file of a large batch the whole series of waits. Those files
    /// fail at once with its error, and the next run picks them up again.
    fn give_up_on(&self, e: &HostError, backoff: &Backoff) {
        let for_good = e.kind == ErrorKind::Permanent || (e.is_transient() && backoff.retries() > 0);
        let a_destination = self.dests.iter().flatten().any(|d| d.name() == e.host);
        if for_good && a_destination && e.host != self.source.name() {
            self.refused
                .lock()
                .expect("not poisoned")
                .insert(e.host.clone(), e.to_string());
        }
    }

    /// One attempt. Permanent failures of one destination fail it and the others go on; an `Err`
    /// fails (or retries) every open destination.
    async fn copy_once(&self, f: &mut InFlight, stop: &(dyn Fn() -> bool + Sync)) -> HostResult<()> {
        let source = &self.source;
        let before = source.stat(&f.source).await?.ok_or_else(|| {
            HostError::not_found(source.name(), format!("source file {} is gone", f.source))
        })?;
        // Open an upload per destination, resuming an earlier attempt's temp where possible.
        let mut uploads: Vec<(usize, Box<dyn Upload>)> = Vec::new();
        for i in f.open.clone() {
            let p = f.plan(i).clone();
            let host = self.dest(i);
            let target = WriteTarget {
                dir: p.dir.clone(),
                name: p.name.clone(),
                temp_name: p.temp_name.clone(),
                size_hint: before.size,
                resume: host.capabilities().resume && before.size >= RESUME_MIN_BYTES,
                mode: p.mode,
            };
            let upload = match host.write(&target).await {
                Ok(u) => u,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    f.fail(i, e.to_string());
                    continue;
                }
            };
            let upload = if upload.offset() > 0
                && !self
                    .tail_matches(host, &p.temp_path(), &f.source, upload.offset())
                    .await
            {
                upload.abort().await;
                tracing::info!(temp = %p.temp_path(), "stored part of an earlier attempt differs from the source; starting over");
                host.write(&WriteTarget {
                    resume: false,
                    ..target
                })
                .await?
            } else {
                if upload.offset() > 0 {
                    tracing::info!(temp = %p.temp_path(), offset = upload.offset(), "resuming an interrupted upload");
                    self.resumed_bytes
                        .with_label_values(&[host.name()])
                        .inc_by(upload.offset());
                }
                upload
            };
            uploads.push((i, upload));
        }
        if uploads.is_empty() {
            return Ok(());
        }

        // Read ahead on a task of its own, hashing as the bytes go by; write each chunk to every
        // upload (skipping what a resumed upload already holds).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<HostResult<Bytes>>(READ_AHEAD);
        let mut reader = {
            let (source, path, buffer) = (source.clone(), f.source.clone(), self.buffer);
            Aborting(tokio::spawn(async move {
                let mut chunks = match source.read_chunks(&path, buffer).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return None;
                    }
                };
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                while let Some(chunk) = chunks.next().await {
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return None;
                        }
                    };
                    hasher.update(&chunk);
                    size += chunk.len() as u64;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return None;
                    }
                }
                Some((size, hex::encode(hasher.finalize())))
            }))
        };
        let mut position = 0u64;
        // A destination that fails for good while the bytes stream fails alone (the others go
        // on); a transient failure of any of them retries the file.
        let mut refused: Vec<(usize, HostError)> = Vec::new();
        let written: HostResult<()> = async {
            while let Some(chunk) = rx.recv().await {
                let chunk = chunk?;
                if stop() {
                    return Err(HostError::fenced(source.name()));
                }
                let end = position + chunk.len() as u64;
                let writes = uploads.iter_mut().map(|(i, u)| {
                    let skip = u.offset().saturating_sub(position);
                    let data = (skip < chunk.len() as u64).then(|| chunk.slice(skip as usize..));
                    async move {
                        match data {
                            Some(data) => (*i, u.write(data).await),
                            None => (*i, Ok(())),
                        }
                    }
                });
                for (i, r) in join_all(writes).await {
                    match r {
                        Ok(()) => {}
                        Err(e) if e.is_transient() || e.kind == ErrorKind::Fenced => return Err(e),
                        Err(e) => refused.push((i, e)),
                    }
                }
                if !refused.is_empty() {
                    let gone: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
                    let mut kept = Vec::with_capacity(uploads.len());
                    for (i, u) in uploads.drain(..) {
                        if gone.contains(&i) {
                            u.abort().await;
                        } else {
                            kept.push((i, u));
                        }
                    }
                    uploads = kept;
                    if uploads.is_empty() {
                        break;
                    }
                }
                position = end;
            }
            Ok(())
        }
        .await;
        drop(rx);
        let read = (&mut reader.0).await.ok().flatten();
        for (i, e) in refused {
            f.fail(i, e.to_string());
        }
        written?;
        if uploads.is_empty() {
            return Ok(());
        }
        let Some((size, sha256)) = read else {
            return Err(HostError::transient(
                source.name(),
                format!("read {}: stopped", f.source),
            ));
        };

        // Durable, then verified, per destination.
        for (i, upload) in uploads {
            let host = self.dest(i).name().to_string();
            let staged = match upload.finish().await {
                Ok(s) => s,
                Err(e) if e.is_transient() || e.kind == ErrorKind::Fenced => return Err(e),
                Err(e) => {
                    f.fail(i, e.to_string());
                    continue;
                }
            };
            f.staged[i] = Some(staged);
            let verified = f.staged[i]
                .as_mut()
                .expect("just staged")
                .verify(size, &sha256)
                .await;
            match verified {
                Ok(how) => tracing::debug!(%host, ?how, "verified"),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    if let Some(s) = f.staged[i].take() {
                        s.abort().await;
                    }
                    f.fail(i, e.to_string());
                }
            }
        }

        // The source must not have changed while it was read.
        let after = source.stat(&f.source).await?;
        if after.is_none_or(|a| a.size != size || a.size != before.size || a.mtime_ns != before.mtime_ns) {
            for i in f.open.clone() {
                if let Some(s) = f.staged[i].take() {
                    s.abort().await;
                }
            }
            f.fail_open(&format!(
                "source {} changed while it was read; it will be picked up again",
                f.source
            ));
            return Ok(());
        }
        f.copied = Some(Copied {
            size,
            sha256,
            mtime_ns: before.mtime_ns,
        });
        Ok(())
    }

    /// Whether the last part of what an earlier attempt stored under `temp` (up to `offset`)
    /// matches the source at the same place.
    async fn tail_matches(&self, host: &DynHost, temp: &str, source: &str, offset: u64) -> bool {
        let from = offset.saturating_sub(RESUME_CHECK_BYTES);
        let len = (offset - from) as usize;
        let read = |h: DynHost, p: String| async move {
            let mut stream = h.read(&p, from).await.ok()?;
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await.ok()?;
            Some(buf)
        };
        let (stored, original) = tokio::join!(
            read(host.clone(), temp.to_string()),
            read(self.source.clone(), source.to_string())
        );
        matches!((stored, original), (Some(a), Some(b)) if a == b)
    }

    /// Commit every staged file under the commit point, sync folders, delete sources of moves.
    pub async fn commit(&self, files: &mut [InFlight], point: &CommitPoint<'_>) {
        let mut synced: Vec<(usize, usize)> = Vec::new();
        for (n, f) in files.iter_mut().enumerate() {
            if f.copied.is_none() {
                continue;
            }
            for i in std::mem::take(&mut f.open) {
                let p = f.plan(i).clone();
                let Some(mut staged) = f.staged[i].take() else {
                    f.outcomes[i] = Some(failed(p.final_path.clone(), "not staged".into()));
                    continue;
                };
                // The lease is checked inside the commit, right before its one request (ADR 004).
                let (start_ns, refused) = (AtomicU64::new(0), std::sync::Mutex::new(None));
                let gate = || match point.check() {
                    Ok(ns) => {
                        start_ns.store(ns, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(why) => {
                        *refused.lock().expect("not poisoned") = Some(why);
                        Err(HostError::fenced(self.dest(i).name()))
                    }
                };
                let mut outcome = commit_one(&mut staged, &p, &gate).await;
                if outcome.outcome == Outcome::Delivered {
                    let start_ns = start_ns.load(Ordering::Relaxed);
                    point.committed(&f.item.task, &f.item.run_id.to_string(), &outcome.path, start_ns);
                    staged.tidy().await;
                    synced.push((n, i));
                } else {
                    if let Some(why) = refused.lock().expect("not poisoned").take() {
                        outcome = failed(p.final_path.clone(), why.into());
                    }
                    staged.abort().await;
                }
                f.outcomes[i] = Some(outcome);
            }
        }
        // Make the commits durable where the kind can (a local folder fsync): each folder once. A
        // folder that cannot be synced fails its destinations, so a move keeps its source.
        let mut done: Vec<(String, String, Result<(), String>)> = Vec::new();
        for &(n, i) in &synced {
            let (host, dir) = (self.dest(i), files[n].plan(i).dir.clone());
            let result = match done.iter().find(|(h, d, _)| h == host.name() && *d == dir) {
                Some((_, _, r)) => r.clone(),
                None => {
                    let r = host.sync_dir(&dir).await.map_err(|e| e.to_string());
                    done.push((host.name().to_string(), dir.clone(), r.clone()));
                    r
                }
            };
            if let Err(e) = result {
                let path = files[n].outcomes[i]
                    .as_ref()
                    .map(|o| o.path.clone())
                    .unwrap_or_default();
                files[n].outcomes[i] = Some(failed(
                    path,
                    format!(
                        "written, but the folder {dir} could not be made durable ({e}); the source is kept"
                    ),
                ));
            }
        }
        for f in files.iter_mut() {
            if f.should_delete_source()
                && let Err(e) = self.source.delete(&f.source).await
            {
                f.error = Some(format!(
                    "delivered, but deleting the source {} failed: {e}",
                    f.source
                ));
            }
        }
    }
}

/// Make the destination folder of `p` (or, with `create_dirs = false`, check that it is one).
async fn make_ready(host: &DynHost, p: &plan::Planned) -> HostResult<()> {
    if p.create_dirs {
        host.create_dir_all(&p.dir).await
    } else {
        match host.stat(&p.dir).await {
            Ok(Some(m)) if m.is_dir => Ok(()),
            Ok(Some(_)) => Err(HostError::permanent(
                host.name(),
                format!("{} is not a folder", p.dir),
            )),
            Ok(None) => Err(HostError::not_found(
                host.name(),
                format!(
                    "destination folder {} does not exist (create_dirs = false)",
                    p.dir
                ),
            )),
            Err(e) => Err(e),
        }
    }
}

/// Commit one staged file according to the overwrite policy, `gate` checked right before the
/// request that commits.
async fn commit_one(
    staged: &mut Box<dyn ferry_hosts::Staged>,
    p: &plan::Planned,
    gate: ferry_hosts::Gate<'_>,
) -> ferry_wire::DestOutcome {
    let delivered = |path: String| ferry_wire::DestOutcome {
        path,
        outcome: Outcome::Delivered,
        error: None,
    };
    match p.overwrite {
        Overwrite::Overwrite => match staged.commit_gated(&p.final_path, true, gate).await {
            Ok(_) => delivered(p.final_path.clone()),
            Err(e) => failed(p.final_path.clone(), e.to_string()),
        },
        Overwrite::Skip | Overwrite::Fail => match staged.commit_gated(&p.final_path, false, gate).await {
            Ok(true) => delivered(p.final_path.clone()),
            Ok(false) if p.overwrite == Overwrite::Skip => ferry_wire::DestOutcome {
                path: p.final_path.clone(),
                outcome: Outcome::Skipped,
                error: Some("destination file appeared meanwhile (overwrite = skip)".into()),
            },
            Ok(false) => failed(p.final_path.clone(), "destination file appeared meanwhile".into()),
            Err(e) => failed(p.final_path.clone(), e.to_string()),
        },
        Overwrite::Unique => {
            for candidate in p.unique_candidates().take(100) {
                match staged.commit_gated(&candidate, false, gate).await {
                    Ok(true) => return delivered(candidate),
                    Ok(false) => {}
                    Err(e) => return failed(candidate, e.to_string()),
                }
            }
            failed(p.final_path.clone(), "no free unique name found".into())
        }
    }
}
