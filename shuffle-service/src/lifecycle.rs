//! The timers of application liveness: [`Core::sweep`] every sweep interval (applications
//! whose driver stopped heartbeating, idle past the TTL, or whose directories are gone) and
//! [`Core::rescan_usage`] every usage-scan interval (the volumes' bytes, leftovers of
//! interrupted writes). Errors are logged by the core; the timers never stop before `cancel`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::core::Core;

/// Sweeps every `interval` and rescans usage every `scan_interval` until `cancel` fires.
pub(crate) async fn run(
    core: Core,
    interval: Duration,
    scan_interval: Duration,
    cancel: CancellationToken,
) {
    core.rescan_usage().await;
    let mut since_scan = Duration::ZERO;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        core.sweep().await;
        since_scan += interval;
        if since_scan >= scan_interval {
            since_scan = Duration::ZERO;
            core.rescan_usage().await;
        }
    }
}
