//! When a connection is idle: it has no request in progress (HTTP/1.1) or no open stream
//! (HTTP/2). A request counts from the moment its head is read until its response body has
//! been sent or dropped. Frames that carry no request (HTTP/2 PINGs, SETTINGS, WINDOW_UPDATE)
//! do not count: a client that only answers PINGs holds no stream and is idle, so the accept
//! loop closes it after the header-read timeout, as it does an idle HTTP/1.1 keep-alive.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Notify;

/// Requests in progress on one connection.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    open: AtomicUsize,
    seen: AtomicBool,
    changed: Notify,
}

/// One request in progress; dropping it ends the request.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

impl Activity {
    /// A new, idle connection.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks a request as started, until the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.seen.store(true, Ordering::SeqCst);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    /// Resolves once the connection's first request has started.
    pub(crate) async fn first_request(&self) {
        while !self.seen.load(Ordering::SeqCst) {
            self.changed.notified().await;
        }
    }

    /// Resolves once the connection has had no request in progress for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            // Every change leaves a permit, so a change between the check and the wait is
            // seen; a stale permit only starts the wait over.
            if self.open.load(Ordering::SeqCst) == 0 {
                let changed = tokio::time::timeout(timeout, self.changed.notified()).await;
                if changed.is_err() && self.open.load(Ordering::SeqCst) == 0 {
                    return;
                }
            } else {
                self.changed.notified().await;
            }
        }
    }
}

/// A response body that keeps its request in progress until it is sent or dropped.
pub(crate) struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl Tracked {
    /// Wraps `inner`.
    pub(crate) fn new(inner: Body, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl HttpBody for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_without_requests_in_progress() {
        let a = Activity::new();
        let t = Duration::from_secs(30);
        let guard = a.start();
        let idle = tokio::time::timeout(Duration::from_secs(100), a.idle_for(t));
        let mut idle = std::pin::pin!(idle);
        // A request in progress keeps the connection busy however long it takes.
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut idle)
                .await
                .is_err()
        );
        let ended = tokio::time::Instant::now();
        drop(guard);
        idle.await.unwrap();
        assert_eq!(ended.elapsed(), t);
    }
}
