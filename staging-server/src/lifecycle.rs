//! Resource lifecycle: deletion and the expiry sweeper.
//!
//! A resource is deleted when it was never downloaded within its unused TTL, when it reaches
//! its absolute TTL, or on an explicit DELETE. Deletion removes the row and revokes its tokens
//! first (so it is invisible at once) and queues the deletion of its bytes in the same
//! transaction, then removes the bytes; a deletion that fails (a store outage) stays queued and
//! every sweep retries it.
//!
//! The sweeper never dies: an error is logged and counted, and the next attempt comes after an
//! exponential backoff capped at [`MAX_BACKOFF`]. Owners (namespace, labels, optional pod uid)
//! are stored with every resource; on Kubernetes `crate::kube::watch` deletes a resource when its
//! owner pods have ended or never appeared, and the TTLs stay as the backstop.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::db::{DbError, ExpiryReason};
use crate::replica::WriteError;
use crate::state::AppState;
use staging_api::ids::ResourceId;

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
    /// Its owner pods existed and have all ended (see `crate::kube::watch`).
    OwnerEnded,
    /// Its owner pods never appeared within the start grace.
    OwnerNeverStarted,
}

impl DeleteReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Expired(r) => r.as_str(),
            Self::Deleted => "deleted",
            Self::OwnerEnded => "owner_ended",
            Self::OwnerNeverStarted => "owner_never_started",
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
) -> Result<bool, WriteError> {
    let now = state.now_ms();
    let deleted = match state.with_room(|| state.delete_resource(id, now)).await {
        // Still full with the reserve gone: free this resource's own bytes first (a local
        // store shares the disk), then delete the row.
        Err(e) if crate::state::MayBeFull::is_full(&e) => {
            if state.db().get(id).await?.is_some() {
                delete_bytes(state, id).await;
            }
            state.delete_resource(id, now).await?
        }
        r => r?,
    };
    // Only a resource's own bytes: an id without a resource may name an object that
    // submissions share (their files are stored under ids of the same form), never to be
    // deleted by a request for it.
    if deleted.existed {
        delete_bytes(state, id).await;
    }
    // Files no other submission names.
    for object in &deleted.freed {
        delete_bytes(state, *object).await;
    }
    let existed = deleted.existed;
    if existed {
        state
            .metrics()
            .cleanup_deletions
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::info!(resource = %id, reason = reason.as_str(), "resource deleted");
    }
    Ok(existed)
}

/// Deletes a resource's bytes and marks the queued deletion done; a failure is logged and
/// counted, and the sweep retries it. Returns whether the bytes are gone.
async fn delete_bytes(state: &AppState, id: ResourceId) -> bool {
    match state.store().delete(id).await {
        Ok(()) => {
            if let Err(e) = state.db().deletion_done(id).await {
                tracing::warn!(resource = %id, cause = %e, "could not mark a deletion done; it will be repeated");
            }
            true
        }
        Err(e) => {
            state.metrics().cleanup_errors.inc();
            if let Some(kind) = e.metric_kind() {
                state
                    .metrics()
                    .store_errors
                    .with_label_values(&[kind])
                    .inc();
            }
            tracing::warn!(resource = %id, cause = %e, "could not delete resource bytes; the sweep retries");
            false
        }
    }
}

/// Retries byte deletions that failed earlier (a store outage); returns how many are done.
///
/// # Errors
/// Database errors.
pub async fn retry_deletions(state: &AppState) -> Result<usize, DbError> {
    let mut done = 0;
    for id in state.db().queued_deletions(SWEEP_BATCH).await? {
        if delete_bytes(state, id).await {
            done += 1;
        } else {
            // The store is still failing: the rest can wait for the next sweep.
            break;
        }
    }
    let left = state.db().queued_deletion_count().await?;
    state
        .metrics()
        .pending_store_deletions
        .set(i64::try_from(left).unwrap_or(i64::MAX));
    Ok(done)
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
    /// Byte deletions that had failed and succeeded now.
    pub deletions_retried: usize,
    /// Files sent but never named by a submission within the grace.
    pub unnamed_blobs: usize,
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
    pub async fn sweep_once(&self) -> Result<SweepReport, WriteError> {
        let start = Instant::now();
        let mut report = SweepReport::default();
        // Replicas: expiry, grants and tokens are the leader's; each replica deletes the
        // objects it queued.
        while self.state.leads() {
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
        let now = self.state.now_ms();
        if self.state.leads() {
            let cutoff = self.state.db().grant_cutoff(now);
            let freed = self
                .state
                .with_room(|| self.state.collect_unnamed_blobs(cutoff))
                .await?;
            for object in freed {
                delete_bytes(&self.state, object).await;
                report.unnamed_blobs += 1;
            }
            report.tokens_pruned = self
                .state
                .with_room(|| self.state.prune_tokens(now))
                .await?;
        }
        report.deletions_retried = retry_deletions(&self.state).await?;
        self.state.ensure_reserve().await;
        self.state.refresh_census().await;
        self.state
            .metrics()
            .sweep_duration
            .observe(start.elapsed().as_secs_f64());
        Ok(report)
    }

    /// Looks for orphan objects once at start (retried with every sweep until the store has
    /// answered), then sweeps every `interval` until `cancel` fires, backing off on errors.
    pub async fn run(self, interval: Duration, cancel: CancellationToken) {
        let mut wait = interval;
        // When the next orphan scan is due: once for a single server; for replicas, on the
        // leader, every half orphan grace.
        let mut orphans_due = Some(Instant::now());
        loop {
            if orphans_due.is_some_and(|due| Instant::now() >= due) {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = self.state.queue_orphans() => match r {
                        Ok(Some(_)) => {
                            orphans_due = self
                                .state
                                .replica()
                                .map(|_| Instant::now() + self.state.orphan_grace() / 2);
                            if let Err(e) = retry_deletions(&self.state).await {
                                tracing::warn!(cause = %e, "could not retry deletions");
                            }
                        }
                        // Not this replica's work now: looked at again with the next sweep.
                        Ok(None) => {}
                        Err(e) => tracing::warn!(cause = %e, "orphan scan failed; retried with the next sweep"),
                    },
                }
            }
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
