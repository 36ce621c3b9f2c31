//! Host metrics (`ferry_hosts_*`), recorded at the seam: [`Measured`] wraps every host that
//! [`crate::Hosts`] hands out, so the file-collector (listings) and transfer (reads, writes,
//! commits) record the same series without either of them timing a call, and [`HostMetrics`]
//! reads each host's pool when Prometheus scrapes.
//!
//! Labels: `host` (a configured host name: operators choose a handful), `op` (one of
//! [`Op`]'s names), `kind` (an [`ErrorKind`]). Never a path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::{
    ByteStream, Capabilities, Chunks, DynHost, Entry, ErrorKind, Gate, Host, HostResult, Meta, PoolStatus,
    Probe, Staged, Upload, Verification, WriteTarget,
};

/// What was being done, as the `op` label says it.
#[derive(Debug, Clone, Copy)]
enum Op {
    List,
    Stat,
    /// Opening a file for reading (to its first byte), not the whole read.
    Read,
    Mkdir,
    /// Opening an upload (a temp file, a multipart upload).
    Create,
    /// One chunk of an upload.
    Write,
    /// Making an upload durable under its temporary name.
    Finish,
    Verify,
    /// The commit point: the rename (or completion) under the final name.
    Commit,
    Delete,
    Sync,
    Probe,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::List => "list",
            Op::Stat => "stat",
            Op::Read => "read",
            Op::Mkdir => "mkdir",
            Op::Create => "create",
            Op::Write => "write",
            Op::Finish => "finish",
            Op::Verify => "verify",
            Op::Commit => "commit",
            Op::Delete => "delete",
            Op::Sync => "sync",
            Op::Probe => "probe",
        }
    }
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Transient => "transient",
        ErrorKind::Permanent => "permanent",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Fenced => "fenced",
    }
}

/// The host metrics of one service, registered in its registry.
#[derive(Clone)]
pub struct HostMetrics {
    duration: HistogramVec,
    errors: IntCounterVec,
    /// The hosts whose pools are read at each scrape (those [`crate::Hosts`] built).
    pools: Arc<Mutex<HashMap<String, DynHost>>>,
}

impl HostMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<HostMetrics> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ferry_hosts_operation_duration_seconds",
                "Time one operation on a host took (op: list, stat, read = open to first byte, mkdir, create = open an upload, write = one chunk, finish, verify, commit, delete, sync, probe), by host and op; failed ones included",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["host", "op"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "ferry_hosts_errors_total",
                "Failed host operations, by host, op and kind (transient: worth a retry; permanent: a retry will not help; not_found; fenced: stopped because this node lost its lease)",
            ),
            &["host", "op", "kind"],
        )?;
        let metrics = HostMetrics {
            duration,
            errors,
            pools: Arc::default(),
        };
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        registry.register(Box::new(PoolCollector::new(metrics.pools.clone())?))?;
        Ok(metrics)
    }

    /// `host`, with every operation timed and every error counted; its pool shown from now on
    /// (replacing an earlier host of the same name, as [`crate::Hosts`] does after an apply).
    pub fn wrap(&self, host: DynHost) -> DynHost {
        self.pools
            .lock()
            .expect("the pools lock is never poisoned")
            .insert(host.name().to_string(), host.clone());
        Arc::new(Measured {
            inner: host,
            metrics: self.clone(),
        })
    }

    fn record<T>(&self, host: &str, op: Op, started: Instant, result: &HostResult<T>) {
        self.duration
            .with_label_values(&[host, op.name()])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            self.errors
                .with_label_values(&[host, op.name(), kind_name(e.kind)])
                .inc();
        }
    }
}

/// A host whose operations are recorded in [`HostMetrics`].
pub struct Measured {
    inner: DynHost,
    metrics: HostMetrics,
}

impl Measured {
    async fn timed<T>(&self, op: Op, call: impl Future<Output = HostResult<T>>) -> HostResult<T> {
        timed(&self.metrics, self.inner.name(), op, call).await
    }
}

async fn timed<T>(
    metrics: &HostMetrics,
    host: &str,
    op: Op,
    call: impl Future<Output = HostResult<T>>,
) -> HostResult<T> {
    let started = Instant::now();
    let result = call.await;
    metrics.record(host, op, started, &result);
    result
}

#[async_trait]
impl Host for Measured {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn list(&self, folder: &str, recursive: bool) -> HostResult<Vec<Entry>> {
        self.timed(Op::List, self.inner.list(folder, recursive)).await
    }
    async fn stat(&self, path: &str) -> HostResult<Option<Meta>> {
        self.timed(Op::Stat, self.inner.stat(path)).await
    }
    async fn read(&self, path: &str, offset: u64) -> HostResult<ByteStream> {
        self.timed(Op::Read, self.inner.read(path, offset)).await
    }
    async fn read_chunks(&self, path: &str, chunk: usize) -> HostResult<Chunks> {
        self.timed(Op::Read, self.inner.read_chunks(path, chunk)).await
    }
    async fn create_dir_all(&self, path: &str) -> HostResult<()> {
        self.timed(Op::Mkdir, self.inner.create_dir_all(path)).await
    }
    async fn write(&self, target: &WriteTarget) -> HostResult<Box<dyn Upload>> {
        let upload = self.timed(Op::Create, self.inner.write(target)).await?;
        Ok(Box::new(MeasuredUpload {
            inner: upload,
            host: self.inner.name().to_string(),
            metrics: self.metrics.clone(),
        }))
    }
    async fn delete(&self, path: &str) -> HostResult<()> {
        self.timed(Op::Delete, self.inner.delete(path)).await
    }
    async fn sync_dir(&self, dir: &str) -> HostResult<()> {
        self.timed(Op::Sync, self.inner.sync_dir(dir)).await
    }
    async fn probe(&self, folder: &str) -> HostResult<Probe> {
        self.timed(Op::Probe, self.inner.probe(folder)).await
    }
    fn pool(&self) -> Option<PoolStatus> {
        self.inner.pool()
    }
}

struct MeasuredUpload {
    inner: Box<dyn Upload>,
    host: String,
    metrics: HostMetrics,
}

#[async_trait]
impl Upload for MeasuredUpload {
    fn offset(&self) -> u64 {
        self.inner.offset()
    }
    async fn write(&mut self, data: Bytes) -> HostResult<()> {
        timed(&self.metrics, &self.host, Op::Write, self.inner.write(data)).await
    }
    async fn finish(self: Box<Self>) -> HostResult<Box<dyn Staged>> {
        let MeasuredUpload { inner, host, metrics } = *self;
        let staged = timed(&metrics, &host, Op::Finish, inner.finish()).await?;
        Ok(Box::new(MeasuredStaged {
            inner: staged,
            host,
            metrics,
        }))
    }
    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}

struct MeasuredStaged {
    inner: Box<dyn Staged>,
    host: String,
    metrics: HostMetrics,
}

#[async_trait]
impl Staged for MeasuredStaged {
    async fn verify(&mut self, size: u64, sha256: &str) -> HostResult<Verification> {
        timed(
            &self.metrics,
            &self.host,
            Op::Verify,
            self.inner.verify(size, sha256),
        )
        .await
    }
    async fn commit_gated(&mut self, final_path: &str, replace: bool, gate: Gate<'_>) -> HostResult<bool> {
        timed(
            &self.metrics,
            &self.host,
            Op::Commit,
            self.inner.commit_gated(final_path, replace, gate),
        )
        .await
    }
    async fn tidy(&mut self) {
        self.inner.tidy().await
    }
    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}

/// Reads every known host's pool at scrape time (a gauge set in passing would go stale while a
/// host sits unused).
struct PoolCollector {
    pools: Arc<Mutex<HashMap<String, DynHost>>>,
    descs: Vec<Desc>,
}

impl PoolCollector {
    fn new(pools: Arc<Mutex<HashMap<String, DynHost>>>) -> prometheus::Result<PoolCollector> {
        let (connections, max) = Self::gauges()?;
        let descs = connections
            .desc()
            .into_iter()
            .chain(max.desc())
            .cloned()
            .collect();
        Ok(PoolCollector { pools, descs })
    }

    fn gauges() -> prometheus::Result<(IntGaugeVec, IntGaugeVec)> {
        Ok((
            IntGaugeVec::new(
                Opts::new(
                    "ferry_hosts_pool_connections",
                    "Connections of a host's pool, by host and state (in_use: taken by an operation, for object stores requests in flight; idle: open and waiting, not reported for object stores)",
                ),
                &["host", "state"],
            )?,
            IntGaugeVec::new(
                Opts::new(
                    "ferry_hosts_pool_max_connections",
                    "A host's max_connections: the pool never opens more",
                ),
                &["host"],
            )?,
        ))
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok((connections, max)) = Self::gauges() else {
            return Vec::new();
        };
        let pools = self.pools.lock().expect("the pools lock is never poisoned");
        for (name, host) in pools.iter() {
            let Some(status) = host.pool() else { continue };
            connections
                .with_label_values(&[name, "in_use"])
                .set(status.in_use as i64);
            if let Some(idle) = status.idle {
                connections.with_label_values(&[name, "idle"]).set(idle as i64);
            }
            max.with_label_values(&[name]).set(status.max as i64);
        }
        connections.collect().into_iter().chain(max.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faulty::{Faults, FaultyHost, Op as FaultOp};
    use crate::local::LocalHost;

    fn sample(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = registry.gather().into_iter().find(|f| f.name() == name)?;
        let f_type = family.get_field_type();
        family
            .get_metric()
            .iter()
            .find(|m| {
                labels
                    .iter()
                    .all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v))
            })
            .map(|m| match f_type {
                prometheus::proto::MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                _ => m.get_counter().get_value(),
            })
    }

    #[tokio::test]
    async fn operations_are_timed_and_errors_counted_by_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new();
        let metrics = HostMetrics::new(&registry).expect("register");
        let faults = Faults::new();
        faults.fail(FaultOp::List, ErrorKind::Transient, 1);
        let host = metrics.wrap(FaultyHost::wrap(Arc::new(LocalHost::new("disk")), faults));
        let folder = dir.path().to_string_lossy().into_owned();
        assert!(host.list(&folder, false).await.is_err(), "the injected fault");
        host.list(&folder, false).await.expect("then a listing");
        assert_eq!(host.stat(&format!("{folder}/none")).await.expect("stat"), None);
        assert_eq!(
            sample(
                &registry,
                "ferry_hosts_operation_duration_seconds",
                &[("host", "disk"), ("op", "list")]
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &registry,
                "ferry_hosts_operation_duration_seconds",
                &[("host", "disk"), ("op", "stat")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &registry,
                "ferry_hosts_errors_total",
                &[("host", "disk"), ("op", "list"), ("kind", "transient")]
            ),
            Some(1.0)
        );
        // The node's own disks have no pool: no pool series.
        assert_eq!(sample(&registry, "ferry_hosts_pool_max_connections", &[]), None);
    }
}
