//! When a Spark connection is closed before its client leaves: not authenticated within the
//! auth timeout (when authentication is on), quiet in both directions for the idle timeout, or
//! receiving no byte for the idle timeout in the middle of a frame (replies going out do not
//! complete a frame, so they do not count then). The reader races the auth deadline against
//! everything it waits for, and checks the other two whenever a read times out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) use crate::metrics::labels::Deadline;

/// When the connection last moved bytes, in either direction.
#[derive(Debug)]
pub(super) struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn idle(&self) -> Duration {
        Duration::from_millis(
            (self.started.elapsed().as_millis() as u64)
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }
}
