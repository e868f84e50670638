//! Application liveness: the periodic sweep that removes applications whose driver stopped
//! heartbeating, applications known only from executors that stayed idle past the TTL, and
//! applications whose directories the cluster manager already deleted. It also rescans the
//! usage of the volumes and removes leftovers of interrupted writes. Errors are logged; the sweep never stops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::core::Volumes;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Removed for lapsed liveness.
    pub lapsed: usize,
    /// Removed because their directories are gone.
    pub vanished: usize,
}

/// One sweep.
pub async fn sweep_once(core: &Core) -> SweepReport {
    let mut report = SweepReport::default();
    let lapsed = core.registry().lapsed(core.idle_ttl());
    let driver_registered: std::collections::HashSet<_> = core
        .list_apps()
        .into_iter()
        .filter(|a| a.heartbeat_timeout.is_some())
        .map(|a| a.app_id)
        .collect();
    for app in lapsed {
        let reason = if driver_registered.contains(&app) {
            "heartbeat_timeout"
        } else {
            "idle_ttl"
        };
        match core.remove_app(&app, reason).await {
            Ok(_) => report.lapsed += 1,
            Err(e) => {
                tracing::warn!(app = %app, cause = %e, "could not remove a lapsed application")
            }
        }
    }
    for app in core.registry().vanished().await {
        match core.remove_app(&app, "directories_gone").await {
            Ok(_) => report.vanished += 1,
            Err(e) => tracing::warn!(app = %app, cause = %e, "could not remove an application"),
        }
    }
    core.refresh_gauges();
    report
}

/// Rescans the bytes every volume holds (blocking work on the blocking pool) and removes the
/// temporary files of interrupted writes.
pub async fn scan_usage(core: &Core) {
    core.remove_leftovers().await;
    let vols = std::sync::Arc::clone(core.volumes());
    let _ = tokio::task::spawn_blocking(move || {
        for v in vols.iter() {
            v.set_scanned(Volumes::scan_bytes(&v.root));
        }
    })
    .await;
    core.refresh_gauges();
}

/// Sweeps every `interval` and rescans usage every `scan_interval` until `cancel` fires.
pub async fn run(
    core: Core,
    interval: Duration,
    scan_interval: Duration,
    cancel: CancellationToken,
) {
    scan_usage(&core).await;
    let mut since_scan = Duration::ZERO;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        sweep_once(&core).await;
        since_scan += interval;
        if since_scan >= scan_interval {
            since_scan = Duration::ZERO;
            scan_usage(&core).await;
        }
    }
}
