//! Whether an HTTP connection is still doing something, for both services' listeners. A
//! connection expires when it had no request in progress for the idle timeout (idle), or had
//! requests in progress none of whose bodies moved for the stall timeout (stalled): no
//! request-body frame reached the service and no response-body frame was taken by the
//! connection for sending. A request that begins or ends counts as a move too.
//!
//! Progress is measured on the bodies, not on the socket: HTTP/2 PINGs, SETTINGS and
//! WINDOW_UPDATEs move no body and keep nothing open. hyper polls a response body only when
//! the client's flow-control window (HTTP/2) or the socket (HTTP/1) has room for more than it
//! holds, so a client that stops reading stops its download's progress, and one that sends
//! headers and never its body stops its upload's. Response frames are handed to hyper in
//! pieces of at most [`PIECE`], so a client that reads steadily but slowly moves at least a
//! piece per stall timeout and is not cut while the service's frames are large (1 MiB gRPC
//! messages, say). A request frame counts when it has arrived whole (the listener's largest
//! frame bounds it). A transfer that keeps moving keeps its connection however long it takes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Largest piece of a response frame handed to the connection at once: what a client must
/// read per stall timeout to count as moving (64 KiB per 60 s is about 1 KiB/s).
pub const PIECE: usize = 64 << 10;

/// Why a connection expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No request by the first-request deadline.
    FirstRequest,
    /// No request in progress for the idle timeout.
    Idle,
    /// Requests in progress, none of whose bodies moved for the stall timeout.
    Stalled,
}

/// Requests in progress on one connection, and when something last moved.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    /// Milliseconds from `started` to the last move.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    seen: AtomicBool,
    /// Woken when a request begins (the applicable timeout may change).
    began: Notify,
}

/// A request in progress; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Activity {
    /// A connection with no request yet.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            began: Notify::new(),
        })
    }

    /// Records a move now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Marks a request as started, until the returned guard is dropped.
    #[must_use]
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.touch();
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.seen.store(true, Ordering::SeqCst);
        self.began.notify_one();
        InFlight(Arc::clone(self))
    }

    /// Resolves when the connection should be closed: no request by `first_deadline`, no
    /// request in progress for `idle`, or requests in progress and nothing moved for `stall`.
    pub async fn expired(
        &self,
        first_deadline: Instant,
        idle: Duration,
        stall: Duration,
    ) -> Expiry {
        loop {
            let seen = self.seen.load(Ordering::SeqCst);
            let busy = self.in_flight.load(Ordering::SeqCst) > 0;
            let (deadline, expiry) = match (seen, busy) {
                (false, _) => (first_deadline, Expiry::FirstRequest),
                (true, false) => (self.last() + idle, Expiry::Idle),
                (true, true) => (self.last() + stall, Expiry::Stalled),
            };
            if Instant::now() >= deadline {
                return expiry;
            }
            // Moves do not wake this wait (there are many); it looks again at the deadline.
            // A request that begins does, since it may change which timeout applies.
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.began.notified() => {}
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A body whose frames count as its connection's progress; a response body also holds its
/// request in progress until it is sent or dropped, and is handed out in pieces of at most
/// [`PIECE`].
pub struct Watched<B> {
    inner: Pin<Box<B>>,
    activity: Arc<Activity>,
    /// What is left of a response frame handed out in pieces.
    rest: Option<Bytes>,
    in_flight: Option<InFlight>,
}

impl<B> std::fmt::Debug for Watched<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("response", &self.in_flight.is_some())
            .field("rest", &self.rest.as_ref().map(Bytes::len))
            .finish_non_exhaustive()
    }
}

impl<B> Watched<B> {
    /// Wraps a request body.
    pub fn new(inner: B, activity: &Arc<Activity>) -> Self {
        Self {
            inner: Box::pin(inner),
            activity: Arc::clone(activity),
            rest: None,
            in_flight: None,
        }
    }

    /// Wraps a response body, which keeps `in_flight` in progress until it is done.
    pub fn ending(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner: Box::pin(inner),
            activity: Arc::clone(&in_flight.0),
            rest: None,
            in_flight: Some(in_flight),
        }
    }

    /// The next piece of `data` (all of it for a request body), keeping the rest.
    fn piece(&mut self, mut data: Bytes) -> Bytes {
        if self.in_flight.is_some() && data.len() > PIECE {
            self.rest = Some(data.split_off(PIECE));
        }
        data
    }
}

impl<B: Body<Data = Bytes>> Body for Watched<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(rest) = self.rest.take() {
            self.activity.touch();
            let piece = self.piece(rest);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.activity.touch();
                match frame.into_data() {
                    Ok(data) => {
                        let piece = self.piece(data);
                        Poll::Ready(Some(Ok(Frame::data(piece))))
                    }
                    Err(other) => Poll::Ready(Some(Ok(other))),
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.rest.as_ref().map_or(0, |r| r.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_in_progress_expire_when_their_bodies_stop_moving() {
        let (idle, stall) = (Duration::from_secs(30), Duration::from_secs(20));
        let a = Activity::new();
        let first = Instant::now() + Duration::from_secs(10);
        // No request: the first-request deadline.
        assert_eq!(a.expired(first, idle, stall).await, Expiry::FirstRequest);
        assert_eq!(Instant::now(), first);

        // A request whose body moves every 15 s for 150 s stays; then it stops moving.
        let guard = a.begin();
        let expired = a.expired(first, idle, stall);
        let mut expired = std::pin::pin!(expired);
        for _ in 0..10 {
            assert!(
                tokio::time::timeout(Duration::from_secs(15), &mut expired)
                    .await
                    .is_err()
            );
            a.touch();
        }
        let stopped = Instant::now();
        assert_eq!(expired.await, Expiry::Stalled);
        assert_eq!(stopped.elapsed(), stall);

        // Ended: idle from the end.
        drop(guard);
        let ended = Instant::now();
        assert_eq!(a.expired(first, idle, stall).await, Expiry::Idle);
        assert_eq!(ended.elapsed(), idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_begins_while_idle_is_held_to_the_stall_timeout() {
        let (idle, stall) = (Duration::from_secs(60), Duration::from_secs(10));
        let a = Activity::new();
        let first = Instant::now() + Duration::from_secs(5);
        drop(a.begin());
        let expired = a.expired(first, idle, stall);
        let mut expired = std::pin::pin!(expired);
        assert!(
            tokio::time::timeout(Duration::from_secs(30), &mut expired)
                .await
                .is_err()
        );
        let began = Instant::now();
        let _guard = a.begin();
        assert_eq!(expired.await, Expiry::Stalled);
        assert_eq!(began.elapsed(), stall);
    }

    #[tokio::test]
    async fn response_frames_go_out_in_pieces_and_each_piece_counts() {
        use http_body_util::BodyExt as _;
        let a = Activity::new();
        let frame = Bytes::from(vec![7u8; PIECE * 2 + 10]);
        let inner = http_body_util::Full::new(frame.clone());
        let mut body = Watched::ending(inner, a.begin());
        assert_eq!(body.size_hint().exact(), Some(frame.len() as u64));
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(f) = body.frame().await {
            let d = f.unwrap().into_data().unwrap();
            sizes.push(d.len());
            all.extend_from_slice(&d);
        }
        assert_eq!(sizes, [PIECE, PIECE, 10]);
        assert_eq!(all, frame);
        assert!(body.is_end_stream());
        assert_eq!(a.in_flight.load(Ordering::SeqCst), 1, "held until dropped");
        drop(body);
        assert_eq!(a.in_flight.load(Ordering::SeqCst), 0);
        // A request body is passed through whole.
        let inner = http_body_util::Full::new(frame.clone());
        let mut body = Watched::new(inner, &a);
        let d = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(d.len(), frame.len());
    }
}
