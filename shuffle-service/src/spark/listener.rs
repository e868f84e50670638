//! The Spark protocol listener: accepts connections up to a limit (beyond it a connection is
//! closed at once, which Spark's client retries), serves each on its own task, and on `stop`
//! stops accepting and lets connections finish what they were asked.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{self, Limits};
use super::handler::Shared;

/// Accepts until `stop`, then waits for the open connections.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
    max_connections: usize,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    let metrics = shared.core.metrics().clone();
    let trimmer = Arc::new(crate::memory::Trimmer::default());
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait for a connection to end.
                if let Some(left_out) = shared.logs.accept_failed.check() {
                    tracing::warn!(error = %e, left_out, "accept failed");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(std::time::Duration::from_millis(50)) => continue,
                }
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.spark_connections_refused.inc();
            if let Some(left_out) = shared.logs.connection_limit.check() {
                tracing::warn!(peer = %peer, max_connections, left_out, "connection limit reached; closing");
            }
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let limits = limits.clone();
        let stop = stop.clone();
        let metrics = metrics.clone();
        let trimmer = Arc::clone(&trimmer);
        tracker.spawn(async move {
            metrics.spark_connections.inc();
            trimmer.opened(metrics.spark_connections.get().max(0) as usize);
            conn::serve(sock, shared, limits, stop).await;
            metrics.spark_connections.dec();
            drop(slot);
            if trimmer.closed(metrics.spark_connections.get().max(0) as usize) {
                let _ = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}
