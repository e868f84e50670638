//! When a Spark connection is closed before its client leaves: not authenticated within the
//! auth timeout (when authentication is on), quiet in both directions for the idle timeout, or
//! receiving no byte for the idle timeout in the middle of a frame (replies going out do not
//! complete a frame, so they do not count then). The reader races the auth deadline against
//! everything it waits for, and checks the other two whenever a read times out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why the service closed a connection: a deadline, or a share (see [`super::admission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// Not authenticated within the auth timeout.
    Auth,
    /// Quiet in both directions for the idle timeout.
    Idle,
    /// No byte for the idle timeout in the middle of a frame.
    StalledFrame,
    /// Not authenticated, and closed to admit a newer connection of its peer, which held its
    /// share ([`super::admission`]).
    Evicted,
    /// Authenticated as an application that holds its share of connections.
    AppShare,
}

impl Deadline {
    /// Every reason, for metrics.
    pub(crate) const ALL: [Self; 5] = [
        Self::Auth,
        Self::Idle,
        Self::StalledFrame,
        Self::Evicted,
        Self::AppShare,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Auth => "auth_timeout",
            Self::Idle => "idle",
            Self::StalledFrame => "stalled_frame",
            Self::Evicted => "evicted_for_newer",
            Self::AppShare => "application_share",
        }
    }
}

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
