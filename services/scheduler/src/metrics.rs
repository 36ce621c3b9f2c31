//! Scheduler metrics (`ferry_scheduler_*`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub fired: IntCounterVec,
    pub fire_errors: IntCounter,
    pub enabled: IntGauge,
    pub applies: IntCounter,
    /// Fire time minus the slot's planned time.
    pub lag: Histogram,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let fired = IntCounterVec::new(
            Opts::new(
                "ferry_scheduler_runs_requested_total",
                "Runs requested, by task and trigger kind",
            ),
            &["task", "trigger"],
        )?;
        let fire_errors = IntCounter::new(
            "ferry_scheduler_fire_errors_total",
            "Slots that could not be fired",
        )?;
        let enabled = IntGauge::new("ferry_scheduler_enabled", "1 while schedules fire on this node")?;
        let applies = IntCounter::new("ferry_scheduler_config_applies_total", "Configurations applied")?;
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "ferry_scheduler_lag_seconds",
                "How late a schedule slot was fired: the time its run request was stored minus the slot's planned time (a missed slot run once at start-up counts its whole delay)",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
            ]),
        )?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(fired.clone()))?;
        registry.register(Box::new(fire_errors.clone()))?;
        registry.register(Box::new(enabled.clone()))?;
        registry.register(Box::new(applies.clone()))?;
        Ok(Self {
            registry,
            fired,
            fire_errors,
            enabled,
            applies,
            lag,
        })
    }
}
