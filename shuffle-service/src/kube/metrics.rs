//! Metrics of the pod watches (`shuffle_kube_*`), registered when the watches start.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The watches' metrics; `watch` is `executors` or `drivers`.
#[derive(Debug, Clone)]
pub struct KubeMetrics {
    /// 1 while the watch's last list or event succeeded, 0 after an error.
    pub up: IntGaugeVec,
    /// Errors from the API server or the connection, by watch.
    pub errors: IntCounterVec,
    /// Complete lists (at start, after `410 Gone`, after errors), by watch.
    pub relists: IntCounterVec,
    /// Pod events, by watch and type (`apply`, `delete`).
    pub events: IntCounterVec,
    /// Renewals of the driver watch for applications added to the node's selection.
    pub renewals: IntCounter,
    /// Applications followed on this node.
    pub apps: IntGauge,
    /// Driver pods known.
    pub drivers: IntGauge,
    /// Applications with a Spark secret from the executor pods of a driver pod claiming them.
    pub secrets: IntGauge,
    /// Secrets refused because another one was already known for the same driver pod.
    pub secret_conflicts: IntCounter,
    /// Applications whose executor pods on this node name more than one driver pod.
    pub contested: IntGauge,
}

impl KubeMetrics {
    /// Creates and registers the metrics.
    ///
    /// # Errors
    /// A registration conflict.
    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            up: IntGaugeVec::new(
                Opts::new(
                    "shuffle_kube_watch_up",
                    "1 while the pod watch is healthy (last list or event succeeded).",
                ),
                &["watch"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "shuffle_kube_watch_errors_total",
                    "Pod watch errors (API server, connection, authorization).",
                ),
                &["watch"],
            )?,
            relists: IntCounterVec::new(
                Opts::new(
                    "shuffle_kube_watch_relists_total",
                    "Complete lists of pods (start, 410 Gone, recovery).",
                ),
                &["watch"],
            )?,
            events: IntCounterVec::new(
                Opts::new("shuffle_kube_watch_events_total", "Pod events by type."),
                &["watch", "type"],
            )?,
            renewals: IntCounter::new(
                "shuffle_kube_driver_watch_renewals_total",
                "Driver watch renewals for applications added to this node's selection (their driver pods listed, the watch reopened).",
            )?,
            apps: IntGauge::new(
                "shuffle_kube_applications",
                "Applications followed through their executor pods on this node.",
            )?,
            drivers: IntGauge::new("shuffle_kube_driver_pods", "Driver pods known.")?,
            secrets: IntGauge::new(
                "shuffle_kube_learned_secrets",
                "Applications with a Spark secret from the executor pods of a driver pod that claims them (a candidate until a client proves it).",
            )?,
            secret_conflicts: IntCounter::new(
                "shuffle_kube_secret_conflicts_total",
                "Executor pods whose secret differed from the one already known for their driver pod.",
            )?,
            contested: IntGauge::new(
                "shuffle_kube_contested_applications",
                "Applications whose executor pods on this node name more than one driver pod (an impostor, or an id reused): none is bound but by a client proving its pods' secret, and a binding is never replaced.",
            )?,
        };
        r.register(Box::new(m.up.clone()))?;
        r.register(Box::new(m.errors.clone()))?;
        r.register(Box::new(m.relists.clone()))?;
        r.register(Box::new(m.events.clone()))?;
        r.register(Box::new(m.renewals.clone()))?;
        r.register(Box::new(m.apps.clone()))?;
        r.register(Box::new(m.drivers.clone()))?;
        r.register(Box::new(m.secrets.clone()))?;
        r.register(Box::new(m.secret_conflicts.clone()))?;
        r.register(Box::new(m.contested.clone()))?;
        for w in ["executors", "drivers"] {
            m.up.with_label_values(&[w]).set(0);
            m.errors.with_label_values(&[w]).inc_by(0);
            m.relists.with_label_values(&[w]).inc_by(0);
        }
        Ok(m)
    }
}
