//! The leader lease: which replica does the work that must happen once (expiry sweeps, the
//! owner watch's deletions, the orphan sweep, snapshots of the shared state).
//!
//! The lease is one object in the store (`state/leader`): its holder and when it renewed it.
//! The holder renews it every third of its duration with a conditional update naming the
//! version it read, so two replicas never both succeed; another replica takes it over with
//! the same kind of update once a renewal is a whole duration late. A replica counts itself
//! leader only until three quarters of a duration after the start of its last successful
//! renewal, by its own monotonic clock, so a holder cut off from the store stops before
//! another can take over, whatever the store says. Takeover compares the renewal time with this replica's wall clock: replicas
//! whose clocks differ by more than a fraction of the duration may overlap or leave a gap as
//! long as the difference (work done twice is harmless; work left waits for the next round).

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::store::{StateStore, Written};
use crate::store_error::StoreError;

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    renewed_at_ms: i64,
    duration_ms: i64,
}

/// This replica's view of the lease.
#[derive(Debug)]
pub(crate) struct Leadership {
    me: String,
    duration: Duration,
    /// Leader until then (monotonic), if it holds the lease.
    until: Mutex<Option<Instant>>,
}

impl Leadership {
    pub(crate) fn new(me: String, duration: Duration) -> Self {
        Self {
            me,
            duration,
            until: Mutex::new(None),
        }
    }

    /// Whether this replica holds the lease now.
    pub(crate) fn is_leader(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|u| Instant::now() < u)
    }

    fn set(&self, until: Option<Instant>) {
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    /// One round: renews the lease this replica holds, or takes it when it is free or
    /// expired. Returns whether this replica leads.
    ///
    /// # Errors
    /// Store errors (leadership then lapses at its own bound, not at once).
    pub(crate) async fn round(&self, store: &StateStore, now_ms: i64) -> Result<bool, StoreError> {
        let started = Instant::now();
        let body = serde_json::to_vec(&Lease {
            holder: self.me.clone(),
            renewed_at_ms: now_ms,
            duration_ms: i64::try_from(self.duration.as_millis()).unwrap_or(i64::MAX),
        })
        .expect("a lease serializes")
        .into();
        let current = store.lease().await?;
        let over = match &current {
            None => None,
            Some(v) => match serde_json::from_slice::<Lease>(&v.body) {
                Ok(l) if l.holder == self.me => Some(v.version.clone()),
                Ok(l) if l.renewed_at_ms.saturating_add(l.duration_ms) < now_ms => {
                    tracing::info!(previous = %l.holder, "taking over the leader lease");
                    Some(v.version.clone())
                }
                Ok(_) => {
                    self.set(None);
                    return Ok(false);
                }
                // A lease no replica wrote: replaced.
                Err(e) => {
                    tracing::warn!(cause = %e, "unreadable leader lease; replacing it");
                    Some(v.version.clone())
                }
            },
        };
        match store.put_lease(body, over).await? {
            Written::Yes(_) => {
                if !self.is_leader() {
                    tracing::info!(replica = %self.me, "leading");
                }
                self.set(Some(started + self.duration.mul_f64(0.75)));
                Ok(true)
            }
            Written::Lost => {
                self.set(None);
                Ok(false)
            }
        }
    }
}
