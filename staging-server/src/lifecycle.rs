//! Resource lifecycle: deletion and the expiry sweeper.
//!
//! A resource is deleted when it was never downloaded within its unused TTL, when it reaches
//! its absolute TTL, or on an explicit DELETE. Deletion removes the row and revokes its tokens
//! first (so it is invisible at once), then removes the bytes; an object left behind by a
//! failed delete is an orphan that start-up recovery removes.
//!
//! The sweeper never dies: an error is logged and counted, and the next attempt comes after an
//! exponential backoff capped at [`MAX_BACKOFF`]. Owners (namespace, labels, optional pod uid)
//! are stored with every resource so that an owner watcher can plug in beside the TTLs.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::db::{DbError, ExpiryReason};
use crate::ids::ResourceId;
use crate::state::AppState;

/// Longest wait between two sweeps after repeated errors.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Resources deleted per sweep batch; the sweep loops until nothing is due.
const SWEEP_BATCH: usize = 256;

/// Why a resource is deleted (the `reason` label of the deletion metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Expired by a TTL.
    Expired(ExpiryReason),
    /// Explicit DELETE.
    Deleted,
}

impl DeleteReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Expired(r) => r.as_str(),
            Self::Deleted => "deleted",
        }
    }
}

/// Deletes a resource: row and tokens first, then bytes. Returns whether it existed.
///
/// # Errors
/// Database errors. A failure to delete the bytes is logged and counted, not returned: the
/// resource is already gone for clients, and the object is removed as an orphan later.
pub async fn remove(
    state: &AppState,
    id: ResourceId,
    reason: DeleteReason,
) -> Result<bool, DbError> {
    let existed = state.db().delete(id, state.now_ms()).await?;
    if let Err(e) = state.store().delete(id).await {
        state.metrics().cleanup_errors.inc();
        tracing::warn!(resource = %id, cause = %e, "could not delete resource bytes; left as an orphan");
    }
    if existed {
        state
            .metrics()
            .cleanup_deletions
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::info!(resource = %id, reason = reason.as_str(), "resource deleted");
        state.refresh_census().await;
    }
    Ok(existed)
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Deleted because never downloaded in time.
    pub unused: usize,
    /// Deleted at their absolute lifetime.
    pub expired: usize,
    /// Expired token rows pruned.
    pub tokens_pruned: usize,
}

/// Periodic cleanup of expired resources.
#[derive(Debug, Clone)]
pub struct Sweeper {
    state: AppState,
}

impl Sweeper {
    /// A sweeper over `state`.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// Deletes everything due now.
    ///
    /// # Errors
    /// Database errors; deletions done before the error stay done.
    pub async fn sweep_once(&self) -> Result<SweepReport, DbError> {
        let start = Instant::now();
        let mut report = SweepReport::default();
        loop {
            let due = self
                .state
                .db()
                .expired(self.state.now_ms(), SWEEP_BATCH)
                .await?;
            if due.is_empty() {
                break;
            }
            let n = due.len();
            for (id, reason) in due {
                remove(&self.state, id, DeleteReason::Expired(reason)).await?;
                match reason {
                    ExpiryReason::UnusedTtl => report.unused += 1,
                    ExpiryReason::MaxTtl => report.expired += 1,
                }
            }
            if n < SWEEP_BATCH {
                break;
            }
        }
        report.tokens_pruned = self.state.db().prune_tokens(self.state.now_ms()).await?;
        self.state.refresh_census().await;
        self.state
            .metrics()
            .sweep_duration
            .observe(start.elapsed().as_secs_f64());
        Ok(report)
    }

    /// Sweeps every `interval` until `cancel` fires, backing off on errors.
    pub async fn run(self, interval: Duration, cancel: CancellationToken) {
        let mut wait = interval;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match self.sweep_once().await {
                Ok(r) => {
                    if r.unused + r.expired > 0 {
                        tracing::info!(
                            unused = r.unused,
                            expired = r.expired,
                            "sweep deleted resources"
                        );
                    }
                    wait = interval;
                }
                Err(e) => {
                    self.state.metrics().cleanup_errors.inc();
                    wait = (wait * 2).min(MAX_BACKOFF.max(interval));
                    tracing::warn!(cause = %e, retry_in = ?wait, "sweep failed");
                }
            }
        }
    }
}
