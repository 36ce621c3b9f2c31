//! Transfer metrics (`ferry_transfer_*`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub files: IntCounterVec,
    pub bytes: IntCounterVec,
    pub in_flight: IntGauge,
    pub duration: Histogram,
    pub late_commits: IntCounter,
    pub retries: IntCounterVec,
    pub resumed_bytes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let files = IntCounterVec::new(
            Opts::new("ferry_transfer_files_total", "Files handled, by task and outcome"),
            &["task", "outcome"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new("ferry_transfer_bytes_total", "Bytes delivered, by task"),
            &["task"],
        )?;
        let in_flight = IntGauge::new(
            "ferry_transfer_in_flight_files",
            "Files being moved by this instance",
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "ferry_transfer_file_duration_seconds",
                "Time to move one file to all its destinations",
            )
            .buckets(prometheus::exponential_buckets(0.001, 4.0, 10)?),
        )?;
        let late_commits = IntCounter::new(
            "ferry_transfer_late_commits_total",
            "Renames that completed after this node's lease had run out (a pause between the lease check and the rename longer than the fence margin); each is logged as an error",
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "ferry_transfer_retries_total",
                "Copies retried after a transient failure (connection lost, timeout), by the host that failed",
            ),
            &["host"],
        )?;
        let resumed_bytes = IntCounterVec::new(
            Opts::new(
                "ferry_transfer_resumed_bytes_total",
                "Bytes an interrupted upload did not have to send again (resumed from what the destination held), by destination host",
            ),
            &["host"],
        )?;
        registry.register(Box::new(late_commits.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(resumed_bytes.clone()))?;
        registry.register(Box::new(files.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            registry,
            files,
            bytes,
            in_flight,
            duration,
            late_commits,
            retries,
            resumed_bytes,
        })
    }
}
