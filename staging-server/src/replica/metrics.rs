//! The replicated mode's metrics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub(super) struct ReplicaMetrics {
    /// `staging_replica_log_position`.
    pub(super) position: IntGauge,
    /// `staging_replica_log_appends_total{outcome}`.
    pub(super) appends: IntCounterVec,
    /// `staging_replica_sync_errors_total`.
    pub(super) sync_errors: IntCounter,
    /// `staging_replica_rebuilds_total`.
    pub(super) rebuilds: IntCounter,
    /// `staging_replica_snapshots_total`.
    pub(super) snapshots: IntCounter,
    /// `staging_replica_leader`.
    pub(super) leader: IntGauge,
}

impl ReplicaMetrics {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            position: IntGauge::new(
                "staging_replica_log_position",
                "Position of the last shared-log entry this replica applied.",
            )?,
            appends: IntCounterVec::new(
                Opts::new(
                    "staging_replica_log_appends_total",
                    "Writes to the shared log, by outcome: written, lost (the position was taken by another replica; retried further on), undecided (the log was trimmed past the position while it was written; answered 503, not written again), failed (store error).",
                ),
                &["outcome"],
            )?,
            sync_errors: IntCounter::new(
                "staging_replica_sync_errors_total",
                "Failures to apply the shared log (retried at the next interval).",
            )?,
            rebuilds: IntCounter::new(
                "staging_replica_rebuilds_total",
                "Times this replica replaced its database with the shared state (at start, after a failure, or when behind the trimmed log).",
            )?,
            snapshots: IntCounter::new(
                "staging_replica_snapshots_total",
                "Snapshots of the shared state this replica wrote as leader.",
            )?,
            leader: IntGauge::new(
                "staging_replica_leader",
                "1 while this replica holds the leader lease.",
            )?,
        };
        for outcome in ["written", "lost", "failed"] {
            m.appends.with_label_values(&[outcome]).inc_by(0);
        }
        registry.register(Box::new(m.position.clone()))?;
        registry.register(Box::new(m.appends.clone()))?;
        registry.register(Box::new(m.sync_errors.clone()))?;
        registry.register(Box::new(m.rebuilds.clone()))?;
        registry.register(Box::new(m.snapshots.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        Ok(m)
    }
}
