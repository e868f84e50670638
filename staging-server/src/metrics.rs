//! Prometheus metrics of the staging server, registered on an injected registry.
//!
//! Labels are bounded: route templates (`MatchedPath`), methods, status codes and fixed reason
//! enums. Never ids, namespaces or raw paths.
//!
//! The gauges of what is stored ([`ADMIN_ONLY`]) are served on the admin listener only and
//! recomputed by the sweep, never on the request path: a tenant watching them move after a
//! request would learn whether another namespace stores the same content.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::db::Census;

/// Metric families left out of the public listener's `/metrics`.
pub(crate) const ADMIN_ONLY: &[&str] = &[
    "staging_resources",
    "staging_stored_bytes",
    "staging_stored_files",
    "staging_stored_files_bytes",
    "staging_pending_store_deletions",
];

/// Every metric of the server.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Requests by route template, method and status.
    pub requests: IntCounterVec,
    /// Request duration by route template and method.
    pub request_duration: HistogramVec,
    /// Bytes received in uploads (committed or not).
    pub upload_bytes: IntCounter,
    /// Bytes sent in downloads.
    pub download_bytes: IntCounter,
    /// Downloads answered with a redirect to a presigned store URL (their bytes are not in
    /// `download_bytes`).
    pub download_redirects: IntCounter,
    /// Resources by state (pending, unused, active).
    pub resources: IntGaugeVec,
    /// Bytes of committed resources.
    pub stored_bytes: IntGauge,
    /// Distinct stored files of submissions.
    pub stored_files: IntGauge,
    /// Their bytes, each file counted once.
    pub stored_files_bytes: IntGauge,
    /// Authentication failures by reason.
    pub auth_failures: IntCounterVec,
    /// Deleted resources by reason.
    pub cleanup_deletions: IntCounterVec,
    /// Sweeper and cleanup errors.
    pub cleanup_errors: IntCounter,
    /// Transfers in progress by direction.
    pub inflight: IntGaugeVec,
    /// Sweep duration.
    pub sweep_duration: Histogram,
    /// Connections refused at the connection cap.
    pub connections_refused: IntCounter,
    /// Connections closed for not sending a request head in time.
    pub connections_timed_out: IntCounter,
    /// Connections closed because their requests in progress moved no body byte for the
    /// body idle timeout.
    pub connections_stalled: IntCounter,
    /// Uploads refused for pausing too long or sending too slowly.
    pub uploads_too_slow: IntCounter,
    /// Uploads refused (503) because their namespace (or credential) held its share of the
    /// upload slots.
    pub uploads_refused_for_share: IntCounter,
    /// 1 while the data directory's disk (database or local store) is full.
    pub storage_full: IntGauge,
    /// Object-store failures by kind (unavailable, timeout, lost).
    pub store_errors: IntCounterVec,
    /// Object deletions that failed and wait for the sweep to retry them.
    pub pending_store_deletions: IntGauge,
}

impl Metrics {
    /// Creates and registers the metrics.
    ///
    /// # Errors
    /// A registration conflict on `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "staging_http_requests_total",
                    "HTTP requests by route, method and status.",
                ),
                &["route", "method", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "staging_http_request_duration_seconds",
                    "HTTP request duration until the response head, by route and method.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0,
                ]),
                &["route", "method"],
            )?,
            upload_bytes: IntCounter::new(
                "staging_upload_bytes_total",
                "Bytes received in uploads.",
            )?,
            download_bytes: IntCounter::new(
                "staging_download_bytes_total",
                "Bytes sent in downloads.",
            )?,
            download_redirects: IntCounter::new(
                "staging_download_redirects_total",
                "Downloads answered with a redirect (307) to a presigned URL of the object store; their bytes go from the store to the client and are not counted in staging_download_bytes_total.",
            )?,
            resources: IntGaugeVec::new(
                Opts::new(
                    "staging_resources",
                    "Resources by state (pending, unused, active).",
                ),
                &["state"],
            )?,
            stored_bytes: IntGauge::new("staging_stored_bytes", "Bytes of committed resources.")?,
            stored_files: IntGauge::new(
                "staging_stored_files",
                "Distinct files stored for submissions (each stored once).",
            )?,
            stored_files_bytes: IntGauge::new(
                "staging_stored_files_bytes",
                "Bytes of the distinct files stored for submissions.",
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "staging_auth_failures_total",
                    "Authentication failures by reason.",
                ),
                &["reason"],
            )?,
            cleanup_deletions: IntCounterVec::new(
                Opts::new(
                    "staging_cleanup_deletions_total",
                    "Resources deleted, by reason.",
                ),
                &["reason"],
            )?,
            cleanup_errors: IntCounter::new(
                "staging_cleanup_errors_total",
                "Errors in the sweeper and in resource deletion.",
            )?,
            inflight: IntGaugeVec::new(
                Opts::new(
                    "staging_inflight_transfers",
                    "Transfers in progress by direction.",
                ),
                &["direction"],
            )?,
            sweep_duration: Histogram::with_opts(HistogramOpts::new(
                "staging_sweep_duration_seconds",
                "Duration of one cleanup sweep.",
            ))?,
            connections_refused: IntCounter::new(
                "staging_connections_refused_total",
                "Connections closed at accept because the connection cap was reached.",
            )?,
            connections_timed_out: IntCounter::new(
                "staging_connections_header_timeout_total",
                "Connections closed for not sending a complete request head within the header read timeout.",
            )?,
            connections_stalled: IntCounter::new(
                "staging_connections_stalled_total",
                "Connections closed because their requests in progress moved no body byte (received or taken for sending) within the body idle timeout.",
            )?,
            uploads_refused_for_share: IntCounter::new(
                "staging_uploads_refused_for_share_total",
                "Uploads refused (503) because their namespace, or their credential before the namespace is known, held its share of the upload slots (--max-concurrent-uploads-per-namespace).",
            )?,
            uploads_too_slow: IntCounter::new(
                "staging_uploads_too_slow_total",
                "Uploads refused for pausing past the idle timeout or sending below the minimum rate.",
            )?,
            storage_full: IntGauge::new(
                "staging_storage_full",
                "1 while the disk of the database or the local store is full (uploads get 507).",
            )?,
            store_errors: IntCounterVec::new(
                Opts::new(
                    "staging_store_errors_total",
                    "Object-store failures by kind: unavailable, timeout, lost (bytes of a committed resource gone).",
                ),
                &["kind"],
            )?,
            pending_store_deletions: IntGauge::new(
                "staging_pending_store_deletions",
                "Object deletions that failed and are retried by the sweep.",
            )?,
        };
        registry.register(Box::new(m.connections_timed_out.clone()))?;
        registry.register(Box::new(m.connections_stalled.clone()))?;
        registry.register(Box::new(m.uploads_too_slow.clone()))?;
        registry.register(Box::new(m.uploads_refused_for_share.clone()))?;
        registry.register(Box::new(m.storage_full.clone()))?;
        registry.register(Box::new(m.stored_files.clone()))?;
        registry.register(Box::new(m.stored_files_bytes.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        registry.register(Box::new(m.pending_store_deletions.clone()))?;
        for kind in ["unavailable", "timeout", "lost"] {
            m.store_errors.with_label_values(&[kind]).inc_by(0);
        }
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.upload_bytes.clone()))?;
        registry.register(Box::new(m.download_bytes.clone()))?;
        registry.register(Box::new(m.download_redirects.clone()))?;
        registry.register(Box::new(m.resources.clone()))?;
        registry.register(Box::new(m.stored_bytes.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.cleanup_deletions.clone()))?;
        registry.register(Box::new(m.cleanup_errors.clone()))?;
        registry.register(Box::new(m.inflight.clone()))?;
        registry.register(Box::new(m.sweep_duration.clone()))?;
        registry.register(Box::new(m.connections_refused.clone()))?;
        // Pre-create the bounded label values so dashboards see zeros, not gaps.
        for state in ["pending", "unused", "active"] {
            m.resources.with_label_values(&[state]).set(0);
        }
        for dir in ["upload", "download"] {
            m.inflight.with_label_values(&[dir]).set(0);
        }
        for reason in [
            "missing",
            "malformed",
            "invalid",
            "expired",
            "revoked",
            "wrong_resource",
        ] {
            m.auth_failures.with_label_values(&[reason]).inc_by(0);
        }
        for reason in ["unused_ttl", "max_ttl", "deleted"] {
            m.cleanup_deletions.with_label_values(&[reason]).inc_by(0);
        }
        Ok(m)
    }

    /// Publishes a census into the resource gauges.
    pub fn set_census(&self, c: Census) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.resources
            .with_label_values(&["pending"])
            .set(g(c.pending));
        self.resources
            .with_label_values(&["unused"])
            .set(g(c.unused));
        self.resources
            .with_label_values(&["active"])
            .set(g(c.active));
        self.stored_bytes.set(g(c.stored_bytes));
        self.stored_files.set(g(c.files));
        self.stored_files_bytes.set(g(c.file_bytes));
    }

    /// Counts an authentication failure.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }
}

/// Decrements an in-flight gauge when dropped.
#[derive(Debug)]
pub(crate) struct InflightGuard(IntGauge);

impl InflightGuard {
    /// Increments `gauge` until the guard drops.
    pub(crate) fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
