//! The pace of an upload body: a longest pause between chunks (the idle timeout) and a
//! slowest rate over a window. The idle timeout alone lets a client that sends a byte every
//! 59 s hold an upload slot forever; forty such clients take every slot. So, once the first
//! window has passed, every window must have brought at least `min_rate × window` bytes, or the
//! upload is refused with 408.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::api_error::ApiError;

/// Watches one body.
#[derive(Debug)]
pub(crate) struct Pace {
    idle: Duration,
    min_rate: u64,
    window: Duration,
    window_start: Instant,
    at_window_start: u64,
    total: u64,
}

impl Pace {
    /// A body starting now.
    pub(crate) fn new(idle: Duration, min_rate: u64, window: Duration) -> Self {
        Self {
            idle,
            min_rate,
            window,
            window_start: Instant::now(),
            at_window_start: 0,
            total: 0,
        }
    }

    /// Awaits the next piece of the body within the idle timeout, checking the rate at every
    /// window's end meanwhile.
    ///
    /// # Errors
    /// 408 when the client pauses past the idle timeout or falls below the rate.
    pub(crate) async fn next<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, ApiError> {
        let mut fut = std::pin::pin!(fut);
        let idle_deadline = Instant::now() + self.idle;
        loop {
            let deadline = if self.min_rate > 0 {
                idle_deadline.min(self.window_start + self.window)
            } else {
                idle_deadline
            };
            match tokio::time::timeout_at(deadline, &mut fut).await {
                Ok(v) => return Ok(v),
                Err(_) if Instant::now() >= idle_deadline => {
                    return Err(ApiError::new(
                        http::StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!("no body data for {}s", self.idle.as_secs()),
                    ));
                }
                Err(_) => self.check()?,
            }
        }
    }

    /// Counts `n` bytes received.
    ///
    /// # Errors
    /// 408 when a window that has ended brought too few bytes.
    pub(crate) fn add(&mut self, n: u64) -> Result<(), ApiError> {
        self.total += n;
        self.check()
    }

    fn check(&mut self) -> Result<(), ApiError> {
        if self.min_rate == 0 {
            return Ok(());
        }
        let now = Instant::now();
        if now < self.window_start + self.window {
            return Ok(());
        }
        let needed = (self.min_rate as f64 * self.window.as_secs_f64()) as u64;
        let got = self.total - self.at_window_start;
        if got < needed {
            return Err(ApiError::new(
                http::StatusCode::REQUEST_TIMEOUT,
                "too_slow",
                format!(
                    "the upload sent {got} bytes in {}s; at least {} bytes/s are required",
                    self.window.as_secs(),
                    self.min_rate
                ),
            ));
        }
        self.window_start = now;
        self.at_window_start = self.total;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_refused_after_one_window() {
        let mut p = Pace::new(Duration::from_secs(60), 1000, Duration::from_secs(30));
        // One byte every 20 s: never idle for 60 s, far below 1000 bytes/s.
        let mut refused = None;
        for i in 0..10 {
            match p.next(tokio::time::sleep(Duration::from_secs(20))).await {
                Ok(()) => {
                    if let Err(e) = p.add(1) {
                        refused = Some((i, e));
                        break;
                    }
                }
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (i, e) = refused.expect("refused");
        assert!(i <= 2, "refused after {i} chunks");
        assert_eq!(e.status(), http::StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_refused_at_the_window_end_not_the_idle_timeout() {
        let mut p = Pace::new(Duration::from_secs(60), 1000, Duration::from_secs(30));
        let start = Instant::now();
        let e = p.next(std::future::pending::<()>()).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert_eq!(e.status(), http::StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_upload_passes_and_no_rate_means_idle_only() {
        let mut p = Pace::new(Duration::from_secs(60), 1000, Duration::from_secs(30));
        for _ in 0..100 {
            p.next(tokio::time::sleep(Duration::from_secs(1)))
                .await
                .unwrap();
            p.add(2000).unwrap();
        }
        let mut p = Pace::new(Duration::from_secs(60), 0, Duration::from_secs(30));
        for _ in 0..10 {
            p.next(tokio::time::sleep(Duration::from_secs(59)))
                .await
                .unwrap();
            p.add(1).unwrap();
        }
        let start = Instant::now();
        assert!(p.next(std::future::pending::<()>()).await.is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }
}
