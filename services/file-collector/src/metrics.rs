//! File-collector metrics (`ferry_file_collector_*`).

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub runs: IntCounterVec,
    pub files_listed: IntCounterVec,
    pub running: IntGauge,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let runs = IntCounterVec::new(
            Opts::new(
                "ferry_file_collector_runs_total",
                "Finished runs, by task and status",
            ),
            &["task", "status"],
        )?;
        let files_listed = IntCounterVec::new(
            Opts::new(
                "ferry_file_collector_files_listed_total",
                "Files handed to transfer, by task",
            ),
            &["task"],
        )?;
        let running = IntGauge::new(
            "ferry_file_collector_running_runs",
            "Runs in progress on this instance",
        )?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(files_listed.clone()))?;
        registry.register(Box::new(running.clone()))?;
        Ok(Self {
            registry,
            runs,
            files_listed,
            running,
        })
    }
}
