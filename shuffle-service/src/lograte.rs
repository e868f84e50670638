//! Log lines of events a client can trigger at will (malformed frames, failed
//! authentications, refused connections), bounded in rate: every event is counted in metrics,
//! at most [`LINES_PER_WINDOW`] lines per event are written per [`WINDOW`], and the first line
//! after a quiet spell says how many were left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// Lines one event may write per window.
pub const LINES_PER_WINDOW: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The limiter of one event.
#[derive(Debug)]
pub struct LogLimit {
    state: Mutex<State>,
    suppressed: IntCounter,
}

#[derive(Debug)]
struct State {
    start: Instant,
    written: u32,
    left_out: u64,
}

impl LogLimit {
    /// A limiter counting what it leaves out in `suppressed`.
    pub fn new(suppressed: IntCounter) -> Self {
        Self {
            state: Mutex::new(State {
                start: Instant::now(),
                written: 0,
                left_out: 0,
            }),
            suppressed,
        }
    }

    /// Whether to write a line now: `Some(n)` when yes, `n` lines having been left out since
    /// the last one written; `None` when the window's lines are used up.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(s.start) >= WINDOW {
            s.start = now;
            s.written = 0;
        }
        if s.written < LINES_PER_WINDOW {
            s.written += 1;
            Some(std::mem::take(&mut s.left_out))
        } else {
            s.left_out += 1;
            self.suppressed.inc();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_window_and_reports_what_it_left_out() {
        let c = IntCounter::new("x", "x").unwrap();
        let l = LogLimit::new(c.clone());
        let t0 = Instant::now();
        let written = (0..10_000).filter(|_| l.check_at(t0).is_some()).count();
        assert_eq!(written, LINES_PER_WINDOW as usize);
        assert_eq!(c.get(), 10_000 - u64::from(LINES_PER_WINDOW));
        assert_eq!(
            l.check_at(t0 + WINDOW),
            Some(10_000 - u64::from(LINES_PER_WINDOW))
        );
        assert_eq!(l.check_at(t0 + WINDOW), Some(0));
    }
}
