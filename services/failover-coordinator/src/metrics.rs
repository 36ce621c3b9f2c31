//! Failover metrics (`ferry_failover_*`).

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use ferry_wire::Role;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// 1 for the node's current role, 0 for the others.
    role: IntGaugeVec,
    pub epoch: IntGauge,
    /// 1 while this node may do side-effecting work.
    pub lease_valid: IntGauge,
    pub renewal_seconds: Histogram,
    pub renewal_failures: IntCounter,
    pub fence_events: IntCounter,
    pub transitions: IntCounterVec,
    /// Mirror mode only (a standby attached to a primary at another site), per mirrored bucket.
    pub standby_lag_seconds: GaugeVec,
    pub standby_lag_messages: GaugeVec,
    /// File-based replication only: age of the newest complete bundle in the import folder.
    pub standby_bundle_age_seconds: GaugeVec,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let role = IntGaugeVec::new(
            Opts::new("ferry_failover_role", "1 for this node's current role"),
            &["role"],
        )?;
        let epoch = IntGauge::new(
            "ferry_failover_epoch",
            "Epoch of the lease this node holds (0: none)",
        )?;
        let lease_valid = IntGauge::new(
            "ferry_failover_lease_valid",
            "1 while this node holds a lease it renewed in time",
        )?;
        let renewal_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ferry_failover_renewal_seconds",
                "Time from sending a lease renewal to its acknowledgement",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let renewal_failures = IntCounter::new(
            "ferry_failover_renewal_failures_total",
            "Lease renewals that failed or timed out",
        )?;
        let fence_events = IntCounter::new(
            "ferry_failover_fence_events_total",
            "Times this node fenced itself (stopped all side-effecting work) because its lease could not be renewed or was lost",
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "ferry_failover_role_transitions_total",
                "Role changes of this node",
            ),
            &["from", "to"],
        )?;
        let standby_lag_seconds = GaugeVec::new(
            Opts::new(
                "ferry_standby_replication_lag_seconds",
                "Mirror mode: how long the oldest change on the primary not yet copied to this standby has been waiting (0 when caught up)",
            ),
            &["bucket"],
        )?;
        let standby_lag_messages = GaugeVec::new(
            Opts::new(
                "ferry_standby_replication_lag_messages",
                "Mirror mode: changes on the primary not yet copied to this standby",
            ),
            &["bucket"],
        )?;
        let standby_bundle_age_seconds = GaugeVec::new(
            Opts::new(
                "ferry_standby_bundle_age_seconds",
                "File-based replication: seconds since the primary wrote the newest complete configuration bundle in this standby's import folder (what a promotion now would lose)",
            ),
            &["source_node"],
        )?;
        registry.register(Box::new(standby_bundle_age_seconds.clone()))?;
        registry.register(Box::new(standby_lag_seconds.clone()))?;
        registry.register(Box::new(standby_lag_messages.clone()))?;
        registry.register(Box::new(role.clone()))?;
        registry.register(Box::new(epoch.clone()))?;
        registry.register(Box::new(lease_valid.clone()))?;
        registry.register(Box::new(renewal_seconds.clone()))?;
        registry.register(Box::new(renewal_failures.clone()))?;
        registry.register(Box::new(fence_events.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        Ok(Self {
            registry,
            role,
            epoch,
            lease_valid,
            renewal_seconds,
            renewal_failures,
            fence_events,
            transitions,
            standby_lag_seconds,
            standby_lag_messages,
            standby_bundle_age_seconds,
        })
    }

    pub fn set_role(&self, current: Role) {
        for role in [Role::Active, Role::Standby, Role::Disabled] {
            self.role
                .with_label_values(&[role.as_str()])
                .set((role == current) as i64);
        }
    }
}
