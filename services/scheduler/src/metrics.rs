//! Scheduler metrics (`ferry_scheduler_*`).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub fired: IntCounterVec,
    pub fire_errors: IntCounter,
    pub enabled: IntGauge,
    pub applies: IntCounter,
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
        })
    }
}
