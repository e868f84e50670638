//! Prometheus metrics of the shuffle service, on an injected registry. Labels are bounded:
//! RPC method names, status codes, volume indexes and kinds.

pub(crate) mod labels;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every metric of the service.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// RPCs by method and code.
    pub rpcs: IntCounterVec,
    /// RPC duration (until the response or the stream starts), by method.
    pub rpc_duration: HistogramVec,
    /// Block bytes sent.
    pub bytes_served: IntCounter,
    /// Blocks sent completely.
    pub blocks_served: IntCounter,
    /// Fetch streams open.
    pub open_streams: IntGauge,
    /// Bytes written through WriteMapOutput.
    pub bytes_written: IntCounter,
    /// Registered applications.
    pub apps: IntGauge,
    /// Registered executors.
    pub executors: IntGauge,
    /// Used bytes by volume.
    pub volume_used: IntGaugeVec,
    /// Configured capacity by volume (0 = the filesystem's).
    pub volume_capacity: IntGaugeVec,
    /// 1 when the volume refused a write for space.
    pub volume_full: IntGaugeVec,
    /// Directories waiting for deletion.
    pub cleanup_backlog: IntGauge,
    /// Bytes reclaimed by cleanup.
    pub cleanup_bytes_reclaimed: IntCounter,
    /// Duration of cleanup jobs.
    pub cleanup_seconds: Histogram,
    /// Cleanup errors.
    pub cleanup_errors: IntCounter,
    /// Applications removed, by reason.
    pub apps_removed: IntCounterVec,
    /// Open Spark-protocol connections.
    pub spark_connections: IntGauge,
    /// Spark-protocol connections closed at once for the connection limit.
    pub spark_connections_refused: IntCounter,
    /// Spark-protocol connections closed for a malformed frame.
    pub spark_frames_rejected: IntCounter,
    /// Failed Spark authentications.
    pub spark_auth_failures: IntCounter,
    /// TLS handshakes on the Spark port that failed or timed out.
    /// By reason: `timeout` (no handshake within the deadline), `closed` (the client went away
    /// during it), `refused` (a TLS error: protocol, version, certificate).
    pub spark_tls_handshake_failures: IntCounterVec,
    /// Spark `FetchShuffleBlocks` requests with batch fetch (AQE coalesced reads).
    pub spark_batch_fetches: IntCounter,
    /// Spark chunk or stream requests that failed to resolve or open their block.
    pub spark_block_failures: IntCounter,
    /// Temporary files of interrupted writes removed.
    pub leftovers_removed: IntCounter,
    /// Log lines not written because their rate limit was reached, by event.
    pub log_suppressed: IntCounterVec,
    /// Requests refused because the caller did not hold the application's credential, by
    /// protocol.
    pub ownership_refusals: IntCounterVec,
    /// Refusals because an application belongs to the other protocol or waits for its own
    /// secret, by protocol and reason.
    pub authority_refusals: IntCounterVec,
    /// Used bytes of the filesystem holding each volume (shared with anything else on it).
    pub volume_fs_used: IntGaugeVec,
    /// Spark connections closed for a frame larger than allowed before authentication.
    pub spark_preauth_frames_refused: IntCounter,
    /// Bytes of partly received Spark frames reserved from the shared budget.
    pub spark_frame_memory: IntGauge,
    /// Spark connections closed because the frame budget stayed spent, by limit (`total`:
    /// the budget; `peer_share`: the peer's part of it).
    pub spark_frame_memory_waits_failed: IntCounterVec,
    /// Spark connections closed at a deadline, by reason.
    pub spark_connections_closed: IntCounterVec,
    /// Open connections of the gRPC and admin listeners, by listener.
    pub http_connections: IntGaugeVec,
    /// Connections closed at once for a listener's connection cap, by listener and cap
    /// (`max_connections`, `max_connections_per_peer`).
    pub http_connections_refused: IntCounterVec,
    /// Connections the service closed, by listener and reason.
    pub http_connections_closed: IntCounterVec,
    /// Failed `accept` calls (out of descriptors and the like), by listener.
    pub accept_failures: IntCounterVec,
    /// Certificate reloads, by listener and result (`reloaded`, `refused`).
    pub tls_reloads: IntCounterVec,
    /// When the served certificate expires (Unix seconds), by listener.
    pub tls_expiry: IntGaugeVec,
    /// Rows of the registration database that could not be read and were left out, by table.
    pub db_unreadable_rows: IntCounterVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    ///
    /// # Errors
    /// A registration conflict.
    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        let vol = &["volume", "kind"];
        let m = Self {
            rpcs: IntCounterVec::new(
                Opts::new("shuffle_rpc_requests_total", "RPCs by method and code."),
                &["method", "code"],
            )?,
            rpc_duration: HistogramVec::new(
                HistogramOpts::new(
                    "shuffle_rpc_duration_seconds",
                    "RPC duration until the response (or stream) starts.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0, 5.0,
                ]),
                &["method"],
            )?,
            bytes_served: IntCounter::new(
                "shuffle_bytes_served_total",
                "Block bytes sent to clients.",
            )?,
            blocks_served: IntCounter::new(
                "shuffle_blocks_served_total",
                "Blocks sent completely.",
            )?,
            open_streams: IntGauge::new("shuffle_open_streams", "Fetch streams in progress.")?,
            bytes_written: IntCounter::new(
                "shuffle_bytes_written_total",
                "Map output bytes written by the service.",
            )?,
            apps: IntGauge::new(
                "shuffle_registered_applications",
                "Registered applications.",
            )?,
            executors: IntGauge::new("shuffle_registered_executors", "Registered executors.")?,
            volume_used: IntGaugeVec::new(
                Opts::new(
                    "shuffle_volume_used_bytes",
                    "Bytes of the files below each volume root (last scan plus writes since).",
                ),
                vol,
            )?,
            volume_capacity: IntGaugeVec::new(
                Opts::new(
                    "shuffle_volume_capacity_bytes",
                    "Configured capacity by volume (filesystem size when none).",
                ),
                vol,
            )?,
            volume_full: IntGaugeVec::new(
                Opts::new(
                    "shuffle_volume_full",
                    "1 when the volume refused a write for space.",
                ),
                vol,
            )?,
            cleanup_backlog: IntGauge::new(
                "shuffle_cleanup_backlog",
                "Directories waiting for deletion.",
            )?,
            cleanup_bytes_reclaimed: IntCounter::new(
                "shuffle_cleanup_bytes_reclaimed_total",
                "Bytes reclaimed by cleanup.",
            )?,
            cleanup_seconds: Histogram::with_opts(
                HistogramOpts::new("shuffle_cleanup_seconds", "Duration of cleanup jobs.")
                    .buckets(vec![0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0]),
            )?,
            cleanup_errors: IntCounter::new(
                "shuffle_cleanup_errors_total",
                "Errors while deleting application data.",
            )?,
            apps_removed: IntCounterVec::new(
                Opts::new(
                    "shuffle_applications_removed_total",
                    "Applications removed, by reason.",
                ),
                &["reason"],
            )?,
            spark_connections: IntGauge::new(
                "shuffle_spark_connections",
                "Open Spark-protocol connections.",
            )?,
            spark_connections_refused: IntCounter::new(
                "shuffle_spark_connections_refused_total",
                "Spark-protocol connections closed at once for the connection limit.",
            )?,
            spark_frames_rejected: IntCounter::new(
                "shuffle_spark_malformed_frames_total",
                "Spark-protocol connections closed for a malformed frame.",
            )?,
            spark_auth_failures: IntCounter::new(
                "shuffle_spark_auth_failures_total",
                "Failed Spark authentications (SASL or network crypto).",
            )?,
            spark_tls_handshake_failures: IntCounterVec::new(
                Opts::new(
                    "shuffle_spark_tls_handshake_failures_total",
                    "TLS handshakes on the Spark port that failed, by reason: timeout, closed (the client went away), refused (a TLS error)",
                ),
                &["reason"],
            )?,
            spark_batch_fetches: IntCounter::new(
                "shuffle_spark_batch_fetches_total",
                "Spark FetchShuffleBlocks requests with batch fetch (contiguous reduce ranges).",
            )?,
            spark_block_failures: IntCounter::new(
                "shuffle_spark_block_failures_total",
                "Spark chunk or stream requests whose block could not be resolved or opened.",
            )?,
            leftovers_removed: IntCounter::new(
                "shuffle_leftover_files_removed_total",
                "Temporary files of interrupted map-output writes removed at start-up or by the sweep.",
            )?,
            log_suppressed: IntCounterVec::new(
                Opts::new(
                    "shuffle_log_lines_suppressed_total",
                    "Log lines not written because the event's rate limit was reached.",
                ),
                &["event"],
            )?,
            ownership_refusals: IntCounterVec::new(
                Opts::new(
                    "shuffle_ownership_refusals_total",
                    "Requests refused for lacking the application's credential, by protocol.",
                ),
                &["protocol"],
            )?,
            authority_refusals: IntCounterVec::new(
                Opts::new(
                    "shuffle_authority_refusals_total",
                    "Refusals for an application's authority, by protocol and reason: grpc/spark_application (registration of an id Spark's side holds), spark/grpc_application (an id registered over gRPC), spark/awaiting_learned_secret, spark/bound_to_another_driver, spark/too_many_claimants.",
                ),
                &["protocol", "reason"],
            )?,
            volume_fs_used: IntGaugeVec::new(
                Opts::new(
                    "shuffle_volume_filesystem_used_bytes",
                    "Used bytes of the filesystem holding each volume (anything else on it included).",
                ),
                vol,
            )?,
            spark_preauth_frames_refused: IntCounter::new(
                "shuffle_spark_preauth_frames_refused_total",
                "Spark connections closed for a frame larger than allowed before authentication.",
            )?,
            spark_frame_memory: IntGauge::new(
                "shuffle_spark_frame_memory_bytes",
                "Bytes of partly received Spark frames reserved from the shared budget.",
            )?,
            spark_frame_memory_waits_failed: IntCounterVec::new(
                Opts::new(
                    "shuffle_spark_frame_memory_exhausted_total",
                    "Spark connections closed because the frame memory budget (limit=total) or the peer's share of it (limit=peer_share) stayed spent.",
                ),
                &["limit"],
            )?,
            spark_connections_closed: IntCounterVec::new(
                Opts::new(
                    "shuffle_spark_connections_closed_total",
                    "Spark connections the service closed: not authenticated in time, idle, stalled in the middle of a frame, closed unauthenticated to admit a newer connection of the peer, or beyond the application's share.",
                ),
                &["reason"],
            )?,
            http_connections: IntGaugeVec::new(
                Opts::new(
                    "shuffle_http_connections",
                    "Open connections of the gRPC and admin listeners.",
                ),
                &["listener"],
            )?,
            http_connections_refused: IntCounterVec::new(
                Opts::new(
                    "shuffle_http_connections_refused_total",
                    "Connections closed at once for the listener's connection cap or its cap per peer.",
                ),
                &["listener", "reason"],
            )?,
            http_connections_closed: IntCounterVec::new(
                Opts::new(
                    "shuffle_http_connections_closed_total",
                    "Connections closed by the service: no first byte, no TLS handshake or first request in time, idle, or requests in progress stalled.",
                ),
                &["listener", "reason"],
            )?,
            accept_failures: IntCounterVec::new(
                Opts::new(
                    "shuffle_accept_failures_total",
                    "Failed accepts (out of file descriptors and the like).",
                ),
                &["listener"],
            )?,
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "shuffle_tls_certificate_reloads_total",
                    "Certificate reloads after its files changed, by result (reloaded, refused).",
                ),
                &["listener", "result"],
            )?,
            tls_expiry: IntGaugeVec::new(
                Opts::new(
                    "shuffle_tls_certificate_expiry_timestamp_seconds",
                    "When the certificate a TLS listener serves expires (Unix time).",
                ),
                &["listener"],
            )?,
            db_unreadable_rows: IntCounterVec::new(
                Opts::new(
                    "shuffle_db_unreadable_rows_total",
                    "Rows of the registration database that could not be read (a stored value that does not parse) and were left out, by table.",
                ),
                &["table"],
            )?,
        };
        r.register(Box::new(m.spark_preauth_frames_refused.clone()))?;
        r.register(Box::new(m.spark_frame_memory.clone()))?;
        r.register(Box::new(m.spark_frame_memory_waits_failed.clone()))?;
        r.register(Box::new(m.spark_connections_closed.clone()))?;
        for limit in labels::FRAME_MEMORY_LIMITS {
            m.spark_frame_memory_waits_failed
                .with_label_values(&[limit])
                .inc_by(0);
        }
        for reason in labels::Deadline::ALL {
            m.spark_connections_closed
                .with_label_values(&[reason.label()])
                .inc_by(0);
        }
        r.register(Box::new(m.http_connections.clone()))?;
        r.register(Box::new(m.http_connections_refused.clone()))?;
        r.register(Box::new(m.http_connections_closed.clone()))?;
        r.register(Box::new(m.accept_failures.clone()))?;
        r.register(Box::new(m.tls_reloads.clone()))?;
        r.register(Box::new(m.tls_expiry.clone()))?;
        r.register(Box::new(m.db_unreadable_rows.clone()))?;
        for listener in ["grpc", "admin"] {
            m.http_connections.with_label_values(&[listener]).set(0);
            for refusal in service_runtime::accept::Refusal::ALL {
                m.http_connections_refused
                    .with_label_values(&[listener, refusal.label()])
                    .inc_by(0);
            }
            for reason in labels::CloseReason::ALL {
                m.http_connections_closed
                    .with_label_values(&[listener, reason.label()])
                    .inc_by(0);
            }
        }
        for listener in ["grpc", "admin", "spark"] {
            m.accept_failures.with_label_values(&[listener]).inc_by(0);
        }
        for (protocol, reason) in [
            ("grpc", "spark_application"),
            ("spark", "grpc_application"),
            ("spark", "awaiting_learned_secret"),
            ("spark", "bound_to_another_driver"),
            ("spark", "too_many_claimants"),
        ] {
            m.authority_refusals
                .with_label_values(&[protocol, reason])
                .inc_by(0);
        }
        r.register(Box::new(m.leftovers_removed.clone()))?;
        r.register(Box::new(m.log_suppressed.clone()))?;
        r.register(Box::new(m.ownership_refusals.clone()))?;
        r.register(Box::new(m.authority_refusals.clone()))?;
        r.register(Box::new(m.volume_fs_used.clone()))?;
        r.register(Box::new(m.rpcs.clone()))?;
        r.register(Box::new(m.spark_connections.clone()))?;
        r.register(Box::new(m.spark_connections_refused.clone()))?;
        r.register(Box::new(m.spark_frames_rejected.clone()))?;
        r.register(Box::new(m.spark_auth_failures.clone()))?;
        r.register(Box::new(m.spark_tls_handshake_failures.clone()))?;
        for reason in ["timeout", "closed", "refused"] {
            m.spark_tls_handshake_failures
                .with_label_values(&[reason])
                .inc_by(0);
        }
        r.register(Box::new(m.spark_block_failures.clone()))?;
        r.register(Box::new(m.spark_batch_fetches.clone()))?;
        r.register(Box::new(m.rpc_duration.clone()))?;
        r.register(Box::new(m.bytes_served.clone()))?;
        r.register(Box::new(m.blocks_served.clone()))?;
        r.register(Box::new(m.open_streams.clone()))?;
        r.register(Box::new(m.bytes_written.clone()))?;
        r.register(Box::new(m.apps.clone()))?;
        r.register(Box::new(m.executors.clone()))?;
        r.register(Box::new(m.volume_used.clone()))?;
        r.register(Box::new(m.volume_capacity.clone()))?;
        r.register(Box::new(m.volume_full.clone()))?;
        r.register(Box::new(m.cleanup_backlog.clone()))?;
        r.register(Box::new(m.cleanup_bytes_reclaimed.clone()))?;
        r.register(Box::new(m.cleanup_seconds.clone()))?;
        r.register(Box::new(m.cleanup_errors.clone()))?;
        r.register(Box::new(m.apps_removed.clone()))?;
        for reason in [
            "unregistered",
            "heartbeat_timeout",
            "idle_ttl",
            "directories_gone",
            "driver_deleted",
            "driver_succeeded",
            "driver_failed",
        ] {
            m.apps_removed.with_label_values(&[reason]).inc_by(0);
        }
        Ok(m)
    }
}
