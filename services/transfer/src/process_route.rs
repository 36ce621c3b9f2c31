//! The process route: a batch of a task with process steps (`[[task.steps]]`).
//!
//! 1. Each file of the batch is downloaded from its source into this batch's spool folder under
//!    the node's data dir (`<data_dir>/spool/<batch>`; made anew for each attempt and removed
//!    afterwards). A spool whose disk cannot hold the batch refuses it before anything is read.
//! 2. The PER-FILE steps run on each file (`ferry_processes::run_steps` on the blocking pool,
//!    cancelled when this node's lease lapses); then the PER-TASK steps, once, on everything the
//!    PER-FILE steps handed on (the collector sends such a run as one batch).
//! 3. Every output goes to the task's destinations under its own name through the same copy,
//!    commit intent and commit point as any file ([`Transfer::move_files`]): the spool is a
//!    source folder on the node's own disk.
//!
//! Invariants:
//! - the source is only read: a failed step, a failed delivery or a crash leaves it as it was
//!   (a move's source is deleted only after every output of the file was delivered);
//! - a failing step fails only its file (PER-FILE) or every file of the run (PER-TASK), and
//!   nothing of that file reaches a destination; the spool keeps nothing after the batch;
//! - every file's result and audit records carry its step records (the process, its outcome,
//!   each output's name and SHA-256, a command's captured output).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ferry_config::params::ParamValue;
use ferry_config::{Config, LOCAL_HOST, Task};
use ferry_processes::configured;
use ferry_processes::{File, Process, Scope, StepOutcome, StepReport};
use ferry_wire::{FileItem, FileResult, FileState, Outcome, SourceFile, StepRecord, WorkBatch, topology};

use crate::Transfer;
use crate::inflight::InFlight;

/// One file of the batch on its way through the steps.
struct Item {
    item: FileItem,
    started_at: chrono::DateTime<Utc>,
    /// The source's SHA-256 and size as downloaded.
    source_hash: Option<(u64, String)>,
    steps: Vec<StepRecord>,
    /// Why the file failed before delivery (download or a step).
    error: Option<String>,
    /// Indexes of its outputs among the batch's outputs.
    outputs: Vec<usize>,
}

/// Extra room the spool keeps beyond the batch's bytes.
const SPOOL_MARGIN_BYTES: u64 = 16 << 20;

impl Transfer {
    /// Move a batch of a task with steps; see the module docs. `Err` only for NATS trouble.
    pub(crate) async fn deliver_processed(
        &self,
        config: &Config,
        task: &Task,
        batch: &WorkBatch,
        key: &str,
        revision: u64,
    ) -> anyhow::Result<Vec<FileResult>> {
        let spool = self.spool.join(&batch.batch_id);
        let mut items: Vec<Item> = batch
            .items
            .iter()
            .map(|item| Item {
                item: item.clone(),
                started_at: Utc::now(),
                source_hash: None,
                steps: Vec::new(),
                error: None,
                outputs: Vec::new(),
            })
            .collect();
        let results = match self.prepare_spool(&spool, batch).await {
            Ok(()) => {
                self.process_in(config, task, &spool, &mut items, key, revision)
                    .await
            }
            Err(why) => {
                for i in &mut items {
                    i.error = Some(why.clone());
                }
                Ok(Vec::new())
            }
        };
        let removed = tokio::fs::remove_dir_all(&spool).await;
        if let Err(e) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(spool = %spool.display(), error = %e, "remove the spool folder");
        }
        let outputs = results?;
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            results.push(self.item_result(item, &outputs).await?);
        }
        Ok(results)
    }

    /// A fresh spool folder for the batch (an earlier attempt's is removed), on a disk with room
    /// for the batch's files.
    async fn prepare_spool(&self, spool: &Path, batch: &WorkBatch) -> Result<(), String> {
        let _ = tokio::fs::remove_dir_all(spool).await;
        tokio::fs::create_dir_all(spool.join("in"))
            .await
            .and(tokio::fs::create_dir_all(spool.join("work")).await)
            .map_err(|e| format!("create the spool folder {}: {e}", spool.display()))?;
        let needed: u64 = batch.items.iter().map(|i| i.source.size).sum::<u64>() + SPOOL_MARGIN_BYTES;
        let free =
            free_bytes(spool).map_err(|e| format!("look at the spool's disk {}: {e}", spool.display()))?;
        if free < needed {
            return Err(format!(
                "the spool's disk is full: {} has {free} bytes free, this batch needs {needed} \
                 (its files and {SPOOL_MARGIN_BYTES} bytes to spare); free space under the node's data_dir \
                 — nothing was read and the source files stay",
                spool.display()
            ));
        }
        Ok(())
    }

    /// Download, run the steps, deliver the outputs. Returns the outputs as delivered (their
    /// results), indexed by [`Item::outputs`].
    async fn process_in(
        &self,
        config: &Config,
        task: &Task,
        spool: &Path,
        items: &mut [Item],
        key: &str,
        revision: u64,
    ) -> anyhow::Result<Vec<FileResult>> {
        let epoch = items.first().map_or(0, |i| i.item.epoch);
        let mut per_file: Vec<(usize, Box<dyn Process>)> = Vec::new();
        let mut per_task: Vec<(usize, Box<dyn Process>)> = Vec::new();
        let env = |name: &str| std::env::var(name).ok();
        let param = |name: &str| parameter(config, task, self.hosts.keymat(), name);
        let bundle = match task
            .steps
            .iter()
            .any(|s| matches!(s.process, ferry_config::StepProcess::ConfigBundle(_)))
        {
            true => Some(self.config_bundle().await),
            false => None,
        };
        let node = configured::Node {
            certs: Some(self.keys.clone()),
            env: &env,
            param: &param,
            bundle: bundle
                .map(|made| -> ferry_processes::bundle::MakeBundle { Arc::new(move || made.clone()) }),
        };
        let built: Vec<_> = task
            .steps
            .iter()
            .map(|step| configured::build(step, &node))
            .collect();
        drop(node);
        for ((n, step), built) in task.steps.iter().enumerate().zip(built) {
            match built {
                Ok(p) if configured::scope(step) == Scope::PerFile => per_file.push((n, p)),
                Ok(p) => per_task.push((n, p)),
                Err(p) => {
                    let why = format!(
                        "task {}: steps[{n}] ({}) cannot be used on this node: {}{}",
                        task.name,
                        step.process.name(),
                        if p.option.is_empty() {
                            String::new()
                        } else {
                            format!("{} {:?} ", p.option, p.value)
                        },
                        p.message
                    );
                    for i in items.iter_mut() {
                        i.error = Some(why.clone());
                    }
                    return Ok(Vec::new());
                }
            }
        }

        // Download every file into the spool.
        let mut inputs: Vec<Option<File>> = Vec::with_capacity(items.len());
        for (k, it) in items.iter_mut().enumerate() {
            if it.item.is_sourceless() {
                // A run without source files: only its PER-TASK steps make files.
                inputs.push(None);
                continue;
            }
            let path = spool.join("in").join(k.to_string());
            match self.download(config, &it.item, &path).await {
                Ok((size, sha256)) => {
                    it.source_hash = Some((size, sha256));
                    let name = ferry_hosts::path::confine(&it.item.source.rel_path)
                        .map(str::to_string)
                        .unwrap_or_else(|_| it.item.source.rel_path.clone());
                    match File::borrowed(&path, name) {
                        Ok(f) => inputs.push(Some(f)),
                        Err(e) => {
                            it.error = Some(format!("read the spooled copy {}: {e}", path.display()));
                            inputs.push(None);
                        }
                    }
                }
                Err(why) => {
                    it.error = Some(why);
                    inputs.push(None);
                }
            }
        }

        // Steps on the blocking pool, cancelled when the lease lapses.
        let cancel = Arc::new(AtomicBool::new(false));
        let watch = {
            let (cancel, lease) = (cancel.clone(), self.lease.clone());
            tokio::spawn(async move {
                loop {
                    if !lease.allows(epoch) {
                        cancel.store(true, Ordering::Relaxed);
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            })
        };
        let work = spool.join("work");
        let (task_name, run_id, time) = match items.first() {
            Some(i) => (
                i.item.task.clone(),
                i.item.run_id.to_string(),
                i.item.run_started_at.with_timezone(&chrono::Local),
            ),
            None => (task.name.clone(), String::new(), chrono::Local::now()),
        };
        let keys = self.keys.clone();
        let ran = tokio::task::spawn_blocking({
            let cancel = cancel.clone();
            move || {
                let ctx = |scope| ferry_processes::Context {
                    task: &task_name,
                    run_id: &run_id,
                    time,
                    scope,
                    work_dir: &work,
                    keys: keys.as_ref(),
                    cancel: Some(cancel.as_ref()),
                };
                let steps: Vec<&dyn Process> = per_file.iter().map(|(_, p)| p.as_ref()).collect();
                let mut per_item = Vec::with_capacity(inputs.len());
                for input in inputs {
                    per_item.push(input.map(|f| {
                        let run = ferry_processes::run_steps(&steps, vec![f], &ctx(Scope::PerFile));
                        (run.files, records(&run.reports, &per_file, "per-file"))
                    }));
                }
                // PER-TASK: once, on every file the PER-FILE steps handed on.
                let task_run = (!per_task.is_empty()).then(|| {
                    let mut all = Vec::new();
                    for (files, _) in per_item.iter_mut().flatten() {
                        if let Ok(files) = files {
                            all.append(files);
                        }
                    }
                    let steps: Vec<&dyn Process> = per_task.iter().map(|(_, p)| p.as_ref()).collect();
                    let run = ferry_processes::run_steps(&steps, all, &ctx(Scope::PerTask));
                    (run.files, records(&run.reports, &per_task, "per-task"))
                });
                (per_item, task_run)
            }
        })
        .await;
        watch.abort();
        let (per_item, task_run) = ran.context("process steps")?;

        // The outputs, each moved to its own folder in the spool under its logical name.
        let out_dir = spool.join("out");
        let mut outputs: Vec<InFlight> = Vec::new();
        let place =
            |it: &Item, files: Vec<File>, outputs: &mut Vec<InFlight>| -> Result<Vec<usize>, String> {
                let mut placed = Vec::new();
                for f in files {
                    let k = outputs.len();
                    let (name, path) = f.keep().map_err(|e| format!("keep a step's output: {e}"))?;
                    let folder = out_dir.join(k.to_string());
                    let target = folder.join(&name);
                    std::fs::create_dir_all(target.parent().expect("a joined path has a parent"))
                        .and_then(|()| std::fs::rename(&path, &target))
                        .map_err(|e| format!("place output {name:?} in the spool: {e}"))?;
                    let meta = std::fs::metadata(&target).map_err(|e| format!("output {name:?}: {e}"))?;
                    let mut item = it.item.clone();
                    // Its own id (temp names are made from an id's first characters).
                    item.item_id =
                        ferry_wire::plan::short_hash(format!("{}\0{k}", it.item.item_id).as_bytes());
                    item.refused = Vec::new();
                    item.source = SourceFile {
                        source_index: it.item.source.source_index,
                        host: LOCAL_HOST.to_string(),
                        folder: folder.to_string_lossy().into_owned(),
                        rel_path: name,
                        size: meta.len(),
                        mtime_ns: ferry_hosts::local::mtime_ns(&meta),
                        state_key: None,
                        delete_after: false,
                    };
                    outputs.push(InFlight::new(item));
                    placed.push(k);
                }
                Ok(placed)
            };
        for (it, ran) in items.iter_mut().zip(per_item) {
            let Some((files, records)) = ran else { continue };
            it.steps = records;
            match files {
                Err(e) => it.error = Some(e.to_string()),
                Ok(files) if task_run.is_none() => match place(it, files, &mut outputs) {
                    Ok(k) => it.outputs = k,
                    Err(why) => it.error = Some(why),
                },
                Ok(_) => {}
            }
        }
        if let Some((files, records)) = task_run {
            // The run's PER-TASK outputs belong to every file that reached them.
            let reached: Vec<usize> = (0..items.len()).filter(|&i| items[i].error.is_none()).collect();
            for &i in &reached {
                items[i].steps.extend(records.iter().cloned());
            }
            match files {
                Err(e) => {
                    for &i in &reached {
                        items[i].error = Some(format!("the run's per-task steps failed: {e}"));
                    }
                }
                Ok(files) => {
                    let Some(&first) = reached.first() else {
                        return Ok(Vec::new());
                    };
                    match place(&items[first], files, &mut outputs) {
                        Ok(k) => {
                            for &i in &reached {
                                items[i].outputs = k.clone();
                            }
                        }
                        Err(why) => {
                            for &i in &reached {
                                items[i].error = Some(why.clone());
                            }
                        }
                    }
                }
            }
        }
        if outputs.is_empty() {
            return Ok(Vec::new());
        }
        let previously = vec![Vec::new(); outputs.len()];
        let moved = self
            .move_files(config, outputs, key, revision, &previously, epoch)
            .await?;
        Ok(moved.into_iter().map(|f| f.result(&self.node)).collect())
    }

    /// This node's configuration bundle (what `ferry config export` writes), for a
    /// `config-bundle` step. `Err`: why not, for the step's record.
    async fn config_bundle(&self) -> Result<Vec<u8>, String> {
        let keymat_id = self
            .hosts
            .keymat()
            .current()
            .map_err(|e| format!("this node's keymat cannot be read: {e}"))?
            .key_id()
            .to_string();
        let mut parts = std::collections::BTreeMap::new();
        for bucket in [topology::KV_STATE, topology::KV_SCHED, topology::KV_CONFIG] {
            let part = ferry_service::bundle::read_part(&self.js, bucket)
                .await
                .map_err(|e| format!("read {bucket}: {e:#}"))?;
            parts.insert(bucket.to_string(), part);
        }
        // The certificate stores and key rings only through the cert-handler.
        for part in self.keys.stores().await? {
            parts.insert(part.bucket.clone(), part);
        }
        let parts = ferry_service::bundle::sealed_under(parts, &keymat_id).map_err(|e| format!("{e:#}"))?;
        ferry_wire::bundle::encode(
            &self.node,
            env!("CARGO_PKG_VERSION"),
            &keymat_id,
            Utc::now(),
            &parts,
        )
        .map(|(_, bytes)| bytes)
        .map_err(|e| e.to_string())
    }

    /// Copy the source of `item` to `path`, hashing it. `Err`: why, for the file's result.
    async fn download(&self, config: &Config, item: &FileItem, path: &Path) -> Result<(u64, String), String> {
        let source_path = ferry_wire::plan::source_path(item)?;
        let host = config
            .hosts
            .get(&item.source.host)
            .ok_or_else(|| format!("source host {:?} is not configured", item.source.host))?;
        let host = self.hosts.get(host).map_err(|e| e.to_string())?;
        let mut reader = host.read(&source_path, 0).await.map_err(|e| e.to_string())?;
        let mut out = tokio::fs::File::create(path)
            .await
            .map_err(|e| format!("create the spooled copy {}: {e}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; self.buffer_bytes.clamp(64 << 10, 8 << 20)];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| format!("read {}: {e}", ferry_hosts::path::shown(&source_path)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            out.write_all(&buf[..n])
                .await
                .map_err(|e| format!("write the spooled copy {}: {e}", path.display()))?;
        }
        out.flush()
            .await
            .map_err(|e| format!("write the spooled copy {}: {e}", path.display()))?;
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// One file's result: its steps, the delivery of its outputs, the new-files-only state and,
    /// for a move whose every output was delivered, the deletion of its source.
    async fn item_result(&self, it: Item, outputs: &[FileResult]) -> anyhow::Result<FileResult> {
        let (size, sha256) = match &it.source_hash {
            Some((size, sha)) => (*size, Some(sha.clone())),
            None => (it.item.source.size, None),
        };
        let source_path = if it.item.is_sourceless() {
            FileItem::SOURCELESS_PATH.to_string()
        } else {
            ferry_wire::plan::source_path(&it.item)
                .unwrap_or_else(|_| ferry_hosts::path::join(&it.item.source.folder, &it.item.source.rel_path))
        };
        let mut result = FileResult {
            item_id: it.item.item_id.clone(),
            source_path: source_path.clone(),
            size,
            sha256,
            outcome: Outcome::Failed,
            destinations: Vec::new(),
            error: it.error.clone(),
            node: self.node.clone(),
            epoch: it.item.epoch,
            started_at: it.started_at,
            finished_at: Utc::now(),
            steps: it.steps,
        };
        if it.error.is_some() {
            return Ok(result);
        }
        let mine: Vec<&FileResult> = it.outputs.iter().filter_map(|&k| outputs.get(k)).collect();
        result.destinations = mine.iter().flat_map(|o| o.destinations.iter().cloned()).collect();
        result.error = mine.iter().find_map(|o| o.error.clone());
        result.outcome = if mine.iter().any(|o| o.outcome == Outcome::Failed) || result.error.is_some() {
            Outcome::Failed
        } else if mine.iter().all(|o| o.outcome == Outcome::Delivered) {
            Outcome::Delivered
        } else {
            Outcome::Skipped
        };
        if result.outcome != Outcome::Delivered {
            return Ok(result);
        }
        if it.item.source.delete_after {
            if let Err(why) = self.delete_source(&it.item, &source_path).await {
                result.error = Some(why);
                result.outcome = Outcome::Failed;
            }
        } else if let (Some(key), Some(sha256)) = (&it.item.source.state_key, &result.sha256) {
            let state = FileState {
                size,
                mtime_ns: it.item.source.mtime_ns,
                sha256: sha256.clone(),
                run_id: it.item.run_id,
                delivered_at: Utc::now(),
            };
            self.state_kv
                .put(key.as_str(), ferry_wire::encode(&state))
                .await
                .context("record new-files-only state")?;
        }
        Ok(result)
    }

    async fn delete_source(&self, item: &FileItem, path: &str) -> Result<(), String> {
        let config = self.config().await.map_err(|e| format!("{e:#}"))?;
        let host = config
            .hosts
            .get(&item.source.host)
            .ok_or_else(|| format!("source host {:?} is not configured", item.source.host))?;
        let host = self.hosts.get(host).map_err(|e| e.to_string())?;
        host.delete(path)
            .await
            .map_err(|e| format!("delivered, but the source could not be deleted: {e}"))
    }
}

/// The value of parameter `name` of `task` as configured (the task's, else the global one), a
/// secure one opened with the node's keymat. A run's `--param` values do not reach steps.
fn parameter(
    config: &Config,
    task: &Task,
    keymat: &ferry_keymat::KeymatStore,
    name: &str,
) -> Result<String, String> {
    let none = ferry_config::params::Parameters::new();
    let effective = ferry_config::params::effective(&config.parameters, &task.parameters, &none);
    let found = effective
        .iter()
        .find(|e| e.name.eq_ignore_ascii_case(name))
        .ok_or("is not declared in [task.parameters] or [parameters]")?;
    match found.value {
        ParamValue::Plain(v) => Ok(v.clone()),
        ParamValue::Secure(secret) => keymat
            .current()
            .and_then(|k| k.open(&found.binding(&task.name), secret))
            .map(|plain| plain.to_string())
            .map_err(|e| format!("cannot be opened with this node's keymat: {e}")),
    }
}

/// The step reports of one run of `steps` as records; `steps` maps positions in the run to
/// positions in the task's list.
fn records(reports: &[StepReport], steps: &[(usize, Box<dyn Process>)], scope: &str) -> Vec<StepRecord> {
    reports
        .iter()
        .map(|r| {
            let (outcome, error) = match &r.outcome {
                StepOutcome::Succeeded => (ferry_wire::StepOutcome::Succeeded, None),
                StepOutcome::Failed { class, error } => (outcome_of(*class), Some(error.clone())),
            };
            StepRecord {
                step: steps.get(r.step).map_or(r.step, |(n, _)| *n),
                process: r.process.clone(),
                scope: scope.to_string(),
                inputs: r.inputs.clone(),
                outcome,
                error,
                outputs: r
                    .outputs
                    .iter()
                    .map(|o| ferry_wire::StepOutput {
                        name: o.name.clone(),
                        bytes: o.bytes,
                        sha256: o.sha256.clone(),
                    })
                    .collect(),
                log: r.log.clone(),
                elapsed_ms: r.elapsed_ms,
            }
        })
        .collect()
}

fn outcome_of(class: ferry_processes::ErrorClass) -> ferry_wire::StepOutcome {
    use ferry_processes::ErrorClass as C;
    use ferry_wire::StepOutcome as O;
    match class {
        C::BadInput => O::BadInput,
        C::LimitExceeded => O::LimitExceeded,
        C::Timeout => O::Timeout,
        C::Failed => O::Failed,
        C::KeysUnavailable => O::KeysUnavailable,
        C::Internal => O::Internal,
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("the path has a NUL byte"))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a writable statvfs the call fills in.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}
