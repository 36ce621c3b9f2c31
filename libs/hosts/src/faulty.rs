//! A fault-injecting wrapper around any host, for tests: make chosen operations fail (transient
//! or permanent), fail an upload after some bytes, or stall, while everything else passes
//! through to the real host.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    ByteStream, Capabilities, DynHost, Entry, ErrorKind, Gate, Host, HostError, HostResult, Meta, Probe,
    Staged, Upload, Verification, WriteTarget,
};

/// The operations a fault can be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    List,
    Stat,
    Read,
    CreateDir,
    Write,
    /// Each [`Upload::write`] of an upload.
    WriteChunk,
    Finish,
    Verify,
    Commit,
    Delete,
    SyncDir,
}

#[derive(Debug, Clone)]
struct Fault {
    op: Op,
    kind: ErrorKind,
    /// Fail this many times, then pass (u32::MAX: always).
    times: u32,
    /// Pass this many matching calls first.
    skip: u32,
    /// Wait this long before answering (a stalled server).
    delay: Option<Duration>,
}

/// The faults of one [`FaultyHost`]; shared, so a test can change them while a transfer runs.
#[derive(Debug, Default)]
pub struct Faults {
    faults: Mutex<Vec<Fault>>,
    /// Bytes accepted by uploads so far.
    written: Mutex<u64>,
    /// Fail uploads (transiently) once this many bytes went through.
    fail_after_bytes: Mutex<Option<u64>>,
}

impl Faults {
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// Fail the next `times` calls of `op` with an error of `kind`.
    pub fn fail(&self, op: Op, kind: ErrorKind, times: u32) {
        self.push(Fault {
            op,
            kind,
            times,
            skip: 0,
            delay: None,
        });
    }

    /// Let `skip` calls of `op` pass, then fail `times`.
    pub fn fail_after(&self, op: Op, kind: ErrorKind, skip: u32, times: u32) {
        self.push(Fault {
            op,
            kind,
            times,
            skip,
            delay: None,
        });
    }

    /// Delay every call of `op` by `delay` (until [`Faults::clear`]).
    pub fn stall(&self, op: Op, delay: Duration) {
        self.push(Fault {
            op,
            kind: ErrorKind::Transient,
            times: 0,
            skip: 0,
            delay: Some(delay),
        });
    }

    /// Fail uploads with a transient error once `bytes` more bytes were written (a server that
    /// dies mid-transfer).
    pub fn fail_after_bytes(&self, bytes: u64) {
        let written = *self.written.lock().expect("not poisoned");
        *self.fail_after_bytes.lock().expect("not poisoned") = Some(written + bytes);
    }

    pub fn clear(&self) {
        self.faults.lock().expect("not poisoned").clear();
        *self.fail_after_bytes.lock().expect("not poisoned") = None;
    }

    fn push(&self, fault: Fault) {
        self.faults.lock().expect("not poisoned").push(fault);
    }

    /// Called on every operation: stall and/or fail as configured.
    async fn check(&self, host: &str, op: Op) -> HostResult<()> {
        let (delay, fail) = {
            let mut faults = self.faults.lock().expect("not poisoned");
            let mut delay = None;
            let mut fail = None;
            for f in faults.iter_mut().filter(|f| f.op == op) {
                if let Some(d) = f.delay {
                    delay = Some(d);
                    continue;
                }
                if f.skip > 0 {
                    f.skip -= 1;
                    continue;
                }
                if f.times > 0 {
                    if f.times != u32::MAX {
                        f.times -= 1;
                    }
                    fail = Some(f.kind);
                    break;
                }
            }
            (delay, fail)
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match fail {
            Some(kind) => Err(HostError::new(host, kind, format!("injected fault in {op:?}"))),
            None => Ok(()),
        }
    }

    fn count(&self, host: &str, bytes: u64) -> HostResult<()> {
        let mut written = self.written.lock().expect("not poisoned");
        *written += bytes;
        match *self.fail_after_bytes.lock().expect("not poisoned") {
            Some(limit) if *written >= limit => Err(HostError::transient(
                host,
                format!("injected fault: connection lost after {limit} bytes"),
            )),
            _ => Ok(()),
        }
    }
}

/// A host whose operations fail as its [`Faults`] say.
pub struct FaultyHost {
    inner: DynHost,
    faults: Arc<Faults>,
}

impl FaultyHost {
    pub fn wrap(inner: DynHost, faults: Arc<Faults>) -> DynHost {
        Arc::new(FaultyHost { inner, faults })
    }
}

#[async_trait]
impl Host for FaultyHost {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn list(&self, folder: &str, recursive: bool) -> HostResult<Vec<Entry>> {
        self.faults.check(self.name(), Op::List).await?;
        self.inner.list(folder, recursive).await
    }
    async fn stat(&self, path: &str) -> HostResult<Option<Meta>> {
        self.faults.check(self.name(), Op::Stat).await?;
        self.inner.stat(path).await
    }
    async fn read(&self, path: &str, offset: u64) -> HostResult<ByteStream> {
        self.faults.check(self.name(), Op::Read).await?;
        self.inner.read(path, offset).await
    }
    async fn create_dir_all(&self, path: &str) -> HostResult<()> {
        self.faults.check(self.name(), Op::CreateDir).await?;
        self.inner.create_dir_all(path).await
    }
    async fn write(&self, target: &WriteTarget) -> HostResult<Box<dyn Upload>> {
        self.faults.check(self.name(), Op::Write).await?;
        Ok(Box::new(FaultyUpload {
            host: self.name().to_string(),
            inner: self.inner.write(target).await?,
            faults: self.faults.clone(),
        }))
    }
    async fn delete(&self, path: &str) -> HostResult<()> {
        self.faults.check(self.name(), Op::Delete).await?;
        self.inner.delete(path).await
    }
    async fn sync_dir(&self, dir: &str) -> HostResult<()> {
        self.faults.check(self.name(), Op::SyncDir).await?;
        self.inner.sync_dir(dir).await
    }
    async fn probe(&self, folder: &str) -> HostResult<Probe> {
        self.inner.probe(folder).await
    }
}

struct FaultyUpload {
    host: String,
    inner: Box<dyn Upload>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Upload for FaultyUpload {
    fn offset(&self) -> u64 {
        self.inner.offset()
    }
    async fn write(&mut self, data: Bytes) -> HostResult<()> {
        self.faults.check(&self.host, Op::WriteChunk).await?;
        let n = data.len() as u64;
        self.inner.write(data).await?;
        self.faults.count(&self.host, n)
    }
    async fn finish(self: Box<Self>) -> HostResult<Box<dyn Staged>> {
        self.faults.check(&self.host, Op::Finish).await?;
        Ok(Box::new(FaultyStaged {
            host: self.host,
            inner: self.inner.finish().await?,
            faults: self.faults,
        }))
    }
    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}

struct FaultyStaged {
    host: String,
    inner: Box<dyn Staged>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Staged for FaultyStaged {
    async fn verify(&mut self, size: u64, sha256: &str) -> HostResult<Verification> {
        self.faults.check(&self.host, Op::Verify).await?;
        self.inner.verify(size, sha256).await
    }
    async fn commit_gated(&mut self, final_path: &str, replace: bool, gate: Gate<'_>) -> HostResult<bool> {
        self.faults.check(&self.host, Op::Commit).await?;
        self.inner.commit_gated(final_path, replace, gate).await
    }
    async fn tidy(&mut self) {
        self.inner.tidy().await
    }
    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}
