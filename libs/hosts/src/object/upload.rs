//! Writing one object so that nothing is visible under its final key before the commit.
//!
//! - Up to `part_bytes`, the bytes are held in memory and put in one request at
//!   [`Staged::commit`]: a conditional put (`If-None-Match: *`) when the commit must not replace,
//!   which the server decides atomically.
//! - Beyond that, a multipart upload (S3) or a list of uncommitted blocks (Azure) is started
//!   under the final key and each part goes up as soon as it is full, at most
//!   [`PARTS_IN_FLIGHT`] at a time (memory per upload: about `PARTS_IN_FLIGHT + 1` parts). The
//!   parts are invisible until the completion, which is the commit. A create-new commit looks
//!   for an existing object right before completing: an object another writer puts between
//!   that look and the completion is replaced (object_store completes without
//!   `If-None-Match`). That window is one round trip.
//! - With `verify = "read_back"`, the object is stored under the temporary name instead, read
//!   back by [`Staged::verify`], and copied into place at the commit (create-new copies are
//!   conditional on the server).
//!
//! A multipart upload completes only under the key it was started for; a commit under another
//! name (a `unique` commit whose name was taken meanwhile) fails transiently and the file is
//! sent again.
//!
//! [`Staged::verify`] compares the byte count and the SHA-256 of the whole stream (computed as
//! it is written) with the caller's. On S3 every request body also carries its own SHA-256,
//! which the server checks before it stores anything ([`Verification::ServerHash`]; a small
//! file's single put happens at the commit and is checked there); on Azure the count is what
//! the server confirmed ([`Verification::Size`]); with `read_back`, the stored temporary object
//! is downloaded and hashed ([`Verification::ReadBack`]).
//!
//! A failed or dropped multipart upload is aborted (best effort; a bucket lifecycle rule for
//! incomplete uploads is the backstop, and Azure drops uncommitted blocks after a week).

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::MultipartId;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{CopyMode, CopyOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::Shared;
use crate::{Gate, HostError, HostResult, Staged, Upload, Verification, WriteTarget};

/// Parts of one upload on the wire at once.
pub(super) const PARTS_IN_FLIGHT: usize = 4;

/// Parts per upload at most (S3 allows 10,000; Azure 50,000 blocks).
const MAX_PARTS: u64 = 9_000;

/// S3 copies at most this much in one request (the `read_back` commit is a copy).
const S3_MAX_COPY: u64 = 5 << 30;

/// Start writing `target` (see the module docs for where the bytes go).
pub(super) fn start(shared: Arc<Shared>, target: &WriteTarget) -> HostResult<Box<dyn Upload>> {
    let final_key = shared.key(&target.final_path())?;
    let key = if shared.read_back {
        if shared.server_checks_sha256() && target.size_hint > S3_MAX_COPY {
            return Err(HostError::permanent(
                &shared.name,
                format!(
                    "write {}: verify = \"read_back\" copies the checked object into place, and S3 copies \
                     at most 5 GiB in one request; use verify = \"auto\" for files this large",
                    target.final_path()
                ),
            ));
        }
        shared.key(&target.temp_path())?
    } else {
        final_key.clone()
    };
    Ok(Box::new(ObjectUpload {
        part_size: part_size(shared.part_bytes, target.size_hint),
        shared,
        key,
        final_key,
        hasher: Sha256::new(),
        written: 0,
        pending: VecDeque::new(),
        pending_len: 0,
        parts: None,
    }))
}

/// The part size for a file of `size_hint` bytes: `part_bytes`, or more (in whole MiB) when the
/// file would otherwise need too many parts.
fn part_size(part_bytes: usize, size_hint: u64) -> usize {
    const MIB: u64 = 1 << 20;
    let needed = size_hint.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    part_bytes.max(usize::try_from(needed).unwrap_or(usize::MAX))
}

fn already_exists(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

/// An open multipart upload; aborted when dropped unless completed or aborted explicitly (a
/// dropped upload is an interrupted one).
struct OpenMultipart {
    shared: Arc<Shared>,
    key: Path,
    id: MultipartId,
    open: bool,
}

impl OpenMultipart {
    async fn abort(mut self) {
        self.open = false;
        if let Err(e) = self.shared.multipart.abort_multipart(&self.key, &self.id).await {
            tracing::warn!(host = %self.shared.name, error = %self.shared.err("abort upload", &e), "multipart upload not aborted");
        }
    }
}

impl Drop for OpenMultipart {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, key, id) = (self.shared.multipart.clone(), self.key.clone(), self.id.clone());
            runtime.spawn(async move {
                let _ = store.abort_multipart(&key, &id).await;
            });
        }
    }
}

/// The parts of a multipart upload: done, and on the wire.
struct Parts {
    upload: OpenMultipart,
    started: usize,
    done: Vec<Option<PartId>>,
    in_flight: JoinSet<(usize, object_store::Result<PartId>)>,
}

impl Parts {
    /// Wait for one part on the wire.
    async fn join_one(&mut self) -> HostResult<()> {
        let shared = &self.upload.shared;
        match self.in_flight.join_next().await {
            None => Ok(()),
            Some(Ok((idx, Ok(part)))) => {
                if self.done.len() <= idx {
                    self.done.resize(idx + 1, None);
                }
                self.done[idx] = Some(part);
                Ok(())
            }
            Some(Ok((idx, Err(e)))) => {
                Err(shared.err(&format!("upload part {} of {}", idx + 1, self.upload.key), &e))
            }
            Some(Err(e)) => Err(HostError::permanent(
                &shared.name,
                format!("upload {}: part task failed: {e}", self.upload.key),
            )),
        }
    }

    /// Send one part, waiting first while [`PARTS_IN_FLIGHT`] are on the wire.
    async fn send(&mut self, part: Vec<Bytes>) -> HostResult<()> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let idx = self.started;
        self.started += 1;
        let store = self.upload.shared.multipart.clone();
        let (key, id) = (self.upload.key.clone(), self.upload.id.clone());
        let payload: PutPayload = part.into_iter().collect();
        self.in_flight
            .spawn(async move { (idx, store.put_part(&key, &id, idx, payload).await) });
        Ok(())
    }

    /// Wait for every part; their ids in order.
    async fn all_done(&mut self) -> HostResult<Vec<PartId>> {
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(self
            .done
            .drain(..)
            .map(|p| p.expect("every started part was joined"))
            .collect())
    }
}

struct ObjectUpload {
    shared: Arc<Shared>,
    /// Where the bytes go: the final key, or the temporary one with `read_back`.
    key: Path,
    final_key: Path,
    part_size: usize,
    hasher: Sha256,
    written: u64,
    /// Bytes not yet sent, in the order written.
    pending: VecDeque<Bytes>,
    pending_len: usize,
    parts: Option<Parts>,
}

impl ObjectUpload {
    /// The first `n` pending bytes (splitting a chunk without copying it).
    fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut need = n;
        while need > 0 {
            let mut front = self.pending.pop_front().expect("n <= pending_len");
            if front.len() > need {
                out.push(front.split_to(need));
                self.pending.push_front(front);
                need = 0;
            } else {
                need -= front.len();
                out.push(front);
            }
        }
        self.pending_len -= n;
        out
    }

    async fn begin(&self) -> HostResult<Parts> {
        let s = &self.shared;
        let id = s
            .multipart
            .create_multipart(&self.key)
            .await
            .map_err(|e| s.err(&format!("start upload of {}", self.key), &e))?;
        Ok(Parts {
            upload: OpenMultipart {
                shared: s.clone(),
                key: self.key.clone(),
                id,
                open: true,
            },
            started: 0,
            done: Vec::new(),
            in_flight: JoinSet::new(),
        })
    }
}

#[async_trait]
impl Upload for ObjectUpload {
    fn offset(&self) -> u64 {
        0
    }

    async fn write(&mut self, data: Bytes) -> HostResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.hasher.update(&data);
        self.written += data.len() as u64;
        self.pending_len += data.len();
        self.pending.push_back(data);
        if self.parts.is_none() && self.pending_len > self.shared.part_bytes {
            self.parts = Some(self.begin().await?);
        }
        // Strictly more than a part: the last part is sent by `finish` and is never empty.
        while self.parts.is_some() && self.pending_len > self.part_size {
            let part = self.take(self.part_size);
            self.parts.as_mut().expect("checked").send(part).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> HostResult<Box<dyn Staged>> {
        let s = self.shared.clone();
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let rest = self.take(self.pending_len);
        let body = match self.parts.take() {
            None => {
                let payload: PutPayload = rest.into_iter().collect();
                if self.key == self.final_key {
                    Body::Buffered(payload)
                } else {
                    s.bulk
                        .put(&self.key, payload)
                        .await
                        .map_err(|e| s.err(&format!("store {}", self.key), &e))?;
                    Body::Stored
                }
            }
            Some(mut parts) => {
                if !rest.is_empty() {
                    parts.send(rest).await?;
                }
                let ids = parts.all_done().await?;
                if self.key == self.final_key {
                    Body::Multipart(parts.upload, ids)
                } else {
                    s.multipart
                        .complete_multipart(&self.key, &parts.upload.id, ids)
                        .await
                        .map_err(|e| s.err(&format!("complete upload of {}", self.key), &e))?;
                    parts.upload.open = false;
                    Body::Stored
                }
            }
        };
        Ok(Box::new(ObjectStaged {
            shared: s,
            key: self.key,
            written: self.written,
            sha256,
            body,
        }))
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(mut parts) = self.parts.take() {
            parts.in_flight.abort_all();
            while parts.in_flight.join_next().await.is_some() {}
            parts.upload.abort().await;
        }
    }
}

/// Where a finished upload's bytes are.
enum Body {
    /// In memory, put at the commit.
    Buffered(PutPayload),
    /// Every part uploaded; the completion is the commit.
    Multipart(OpenMultipart, Vec<PartId>),
    /// Stored under the temporary key (`read_back`); copied into place at the commit.
    Stored,
    Committed,
}

struct ObjectStaged {
    shared: Arc<Shared>,
    key: Path,
    written: u64,
    sha256: String,
    body: Body,
}

impl ObjectStaged {
    /// Download the stored temporary object: its size and SHA-256.
    async fn read_back(&self) -> HostResult<(u64, String)> {
        let s = &self.shared;
        let what = format!("read back {}", self.key);
        let mut stream = s
            .store
            .get(&self.key)
            .await
            .map_err(|e| s.err(&what, &e))?
            .into_stream();
        let (mut size, mut hasher) = (0u64, Sha256::new());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| s.err(&what, &e))?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((size, hex::encode(hasher.finalize())))
    }
}

#[async_trait]
impl Staged for ObjectStaged {
    async fn verify(&mut self, size: u64, sha256: &str) -> HostResult<Verification> {
        let s = &self.shared;
        let mismatch = |what: &str, got_size: u64, got_sha: &str| {
            HostError::permanent(
                &s.name,
                format!(
                    "verification failed for {}: {what} {got_size} bytes with sha256 {got_sha}, expected \
                     {size} bytes with sha256 {sha256}",
                    self.key
                ),
            )
        };
        if self.written != size || !self.sha256.eq_ignore_ascii_case(sha256) {
            return Err(mismatch("sent", self.written, &self.sha256));
        }
        match self.body {
            Body::Stored => {
                let (stored, hash) = self.read_back().await?;
                if stored != size || !hash.eq_ignore_ascii_case(sha256) {
                    return Err(mismatch("stored", stored, &hash));
                }
                Ok(Verification::ReadBack)
            }
            _ if s.server_checks_sha256() => Ok(Verification::ServerHash),
            _ => Ok(Verification::Size),
        }
    }

    async fn commit_gated(&mut self, final_path: &str, replace: bool, gate: Gate<'_>) -> HostResult<bool> {
        let s = self.shared.clone();
        let dest = s.key(final_path)?;
        let what = format!("commit {final_path}");
        // The look-ups below come first; the gate is checked right before the completing request.
        if let Body::Buffered(_) | Body::Stored = self.body {
            gate()?;
        }
        match std::mem::replace(&mut self.body, Body::Committed) {
            Body::Buffered(payload) => {
                let mode = if replace {
                    PutMode::Overwrite
                } else {
                    PutMode::Create
                };
                match s.bulk.put_opts(&dest, payload.clone(), mode.into()).await {
                    Ok(_) => Ok(true),
                    Err(e) => {
                        self.body = Body::Buffered(payload);
                        if !replace && already_exists(&e) {
                            Ok(false)
                        } else {
                            Err(s.err(&what, &e))
                        }
                    }
                }
            }
            Body::Multipart(mut upload, parts) => {
                if dest != self.key {
                    // Only when another writer took the name this upload was planned for (a
                    // `unique` commit's race): the parts cannot move, the file goes up again.
                    self.body = Body::Multipart(upload, parts);
                    return Err(HostError::transient(
                        &s.name,
                        format!(
                            "{what}: a multipart upload completes only under the name it was started for ({}); \
                             it is sent again",
                            self.key
                        ),
                    ));
                }
                if !replace {
                    // Not atomic: see the module docs.
                    match s.store.head(&dest).await {
                        Ok(_) => {
                            self.body = Body::Multipart(upload, parts);
                            return Ok(false);
                        }
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => {
                            self.body = Body::Multipart(upload, parts);
                            return Err(s.err(&what, &e));
                        }
                    }
                }
                if let Err(e) = gate() {
                    self.body = Body::Multipart(upload, parts);
                    return Err(e);
                }
                if let Err(e) = s
                    .multipart
                    .complete_multipart(&dest, &upload.id, parts.clone())
                    .await
                {
                    self.body = Body::Multipart(upload, parts);
                    return Err(s.err(&what, &e));
                }
                upload.open = false;
                // Cheap next to the upload: the server's own view of what it now holds.
                let stored = s.store.head(&dest).await.map_err(|e| s.err(&what, &e))?;
                if stored.size != self.written {
                    let _ = s.delete_key(&dest, &what).await;
                    return Err(HostError::permanent(
                        &s.name,
                        format!(
                            "{what}: the completed object has {} bytes, {} were sent (removed)",
                            stored.size, self.written
                        ),
                    ));
                }
                Ok(true)
            }
            Body::Stored => {
                let mode = if replace {
                    CopyMode::Overwrite
                } else {
                    CopyMode::Create
                };
                match s
                    .bulk
                    .copy_opts(&self.key, &dest, CopyOptions::new().with_mode(mode))
                    .await
                {
                    Ok(()) => {
                        if let Err(e) = s.delete_key(&self.key, "remove the temporary object").await {
                            tracing::warn!(host = %s.name, error = %e, "temporary object left behind");
                        }
                        Ok(true)
                    }
                    Err(e) => {
                        self.body = Body::Stored;
                        if !replace && already_exists(&e) {
                            Ok(false)
                        } else {
                            Err(s.err(&what, &e))
                        }
                    }
                }
            }
            Body::Committed => Err(HostError::permanent(
                &s.name,
                format!("{what}: already committed"),
            )),
        }
    }

    async fn abort(self: Box<Self>) {
        let s = &self.shared;
        match self.body {
            Body::Multipart(upload, _) => upload.abort().await,
            Body::Stored => {
                if let Err(e) = s.delete_key(&self.key, "remove the temporary object").await {
                    tracing::warn!(host = %s.name, error = %e, "temporary object left behind");
                }
            }
            Body::Buffered(_) | Body::Committed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_files_get_bigger_parts() {
        assert_eq!(part_size(16 << 20, 0), 16 << 20);
        assert_eq!(part_size(16 << 20, 40 << 20), 16 << 20);
        // 1 TiB in at most 9,000 parts: 117 MiB each.
        assert_eq!(part_size(16 << 20, 1 << 40), 117 << 20);
    }
}
