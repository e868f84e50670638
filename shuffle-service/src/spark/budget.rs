//! Memory of partly received frames, shared by every Spark connection: what a connection's
//! read buffers will hold beyond a small free allowance must be reserved from one budget
//! (`--spark-frame-memory`) before more is read. The reader asks for a frame's whole declared
//! length as soon as its header is in, so a frame that got its reservation completes without
//! waiting again, and connections never hold half of what they need while waiting for the
//! rest. Once the budget is spent, other connections wait for it (reading nothing meanwhile,
//! so TCP pushes back) for at most the idle timeout, then are closed.
//!
//! One peer (an IPv4 address, an IPv6 address or `--peer-ipv6-prefix` network; see [`service_runtime::peer`]) holds at most its
//! share of the budget (`--spark-frame-memory-per-peer`, a quarter by default) across its
//! connections: a client that declares large frames and trickles their bodies on many
//! connections spends its own share, and the others' frames still get memory. Connections
//! that have not authenticated never reach the budget: their frames are refused beyond
//! `--spark-preauth-max-frame`, which stays below the free allowance.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use service_runtime::peer::{PeerCount, PeerCounts, PeerKey};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Buffered bytes a connection holds without a reservation: the read granularity plus a
/// small frame.
pub(crate) const FREE_BYTES: usize = 64 << 10;
/// The budget counts KiB.
const UNIT: usize = 1024;

/// Why a reservation could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BudgetError {
    /// The shared budget stayed spent for the whole wait.
    #[error("no frame memory within {0:?} ({1} KiB wanted)")]
    Exhausted(Duration, usize),
    /// The peer's share of the budget stayed spent for the whole wait.
    #[error("the peer's share of frame memory stayed spent for {0:?} ({1} KiB wanted)")]
    PeerShare(Duration, usize),
    /// The budget was closed (the service stops).
    #[error("frame memory closed")]
    Closed,
}

impl BudgetError {
    /// The metric labels of the limits.
    pub(crate) const LIMITS: [&'static str; 2] = crate::metrics::labels::FRAME_MEMORY_LIMITS;

    /// Which limit was reached, as a metric label; `None` when the service stops.
    pub(crate) fn limit(&self) -> Option<&'static str> {
        match self {
            Self::Exhausted(..) => Some(Self::LIMITS[0]),
            Self::PeerShare(..) => Some(Self::LIMITS[1]),
            Self::Closed => None,
        }
    }
}

/// Bytes the frame that `buf` begins will take in all (its length field included), as its
/// header declares, when the header is in and declares at most `max_frame` bytes of
/// contents; 0 otherwise (the decoder refuses other lengths).
pub(crate) fn declared_frame(buf: &[u8], max_frame: usize) -> usize {
    let Some(head) = buf.get(..8) else {
        return 0;
    };
    let len = i64::from_be_bytes(head.try_into().expect("8 bytes"));
    match usize::try_from(len) {
        Ok(n) if n > 8 && n - 8 <= max_frame => n,
        _ => 0,
    }
}

/// The budget shared by all connections.
#[derive(Debug, Clone)]
pub(crate) struct FrameMemory {
    units: Arc<Semaphore>,
    peers: PeerCounts,
    peer_units: usize,
    ipv6_prefix: u8,
    /// Woken when a peer's share shrinks.
    released: Arc<Notify>,
    gauge: IntGauge,
}

impl FrameMemory {
    /// A budget of `bytes`, of which one peer holds at most `per_peer` bytes, whose
    /// reservations are shown by `gauge` (in bytes).
    pub(crate) fn new(bytes: u64, per_peer: u64, gauge: IntGauge) -> Self {
        let units = |b: u64| {
            usize::try_from(b / UNIT as u64)
                .unwrap_or(usize::MAX)
                .clamp(1, Semaphore::MAX_PERMITS)
        };
        let total_units = units(bytes);
        Self {
            units: Arc::new(Semaphore::new(total_units)),
            peers: PeerCounts::default(),
            peer_units: units(per_peer).min(total_units),
            ipv6_prefix: service_runtime::peer::DEFAULT_IPV6_PREFIX,
            released: Arc::new(Notify::new()),
            gauge,
        }
    }

    /// Groups IPv6 peers by their first `prefix` bits.
    #[must_use]
    pub(crate) fn ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = prefix;
        self
    }

    /// One connection's reservation, empty; `peer` is the connection's remote address.
    pub(crate) fn reservation(&self, peer: IpAddr) -> Reservation {
        Reservation {
            memory: self.clone(),
            peer: PeerKey::new(peer, self.ipv6_prefix),
            permit: None,
            share: None,
            units: 0,
        }
    }
}

/// What one connection has reserved; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    memory: FrameMemory,
    peer: PeerKey,
    permit: Option<OwnedSemaphorePermit>,
    share: Option<PeerCount>,
    units: usize,
}

impl Reservation {
    /// Makes the reservation cover `buffered` bytes (beyond the free allowance): waits up to
    /// `wait` for more, or gives back what is no longer needed.
    ///
    /// # Errors
    /// [`BudgetError`] when the peer's share or the budget stays spent for `wait`.
    pub(crate) async fn cover(
        &mut self,
        buffered: usize,
        wait: Duration,
    ) -> Result<(), BudgetError> {
        let want = buffered
            .saturating_sub(FREE_BYTES)
            .div_ceil(UNIT)
            .min(self.memory.peer_units);
        if want < self.units {
            let extra = self.units - want;
            if let Some(p) = self.permit.as_mut() {
                drop(p.split(extra));
            }
            if let Some(s) = self.share.as_mut() {
                s.release(extra);
            }
            self.units = want;
            if want == 0 {
                self.permit = None;
                self.share = None;
            }
            self.memory.gauge.sub((extra * UNIT) as i64);
            self.memory.released.notify_waiters();
            return Ok(());
        }
        if want == self.units {
            return Ok(());
        }
        let more = want - self.units;
        let deadline = Instant::now() + wait;
        // The peer's share first, then the budget: a peer at its share waits on its own
        // connections and takes nothing from the others meanwhile.
        let claim = loop {
            let released = self.memory.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            if let Some(c) = self
                .memory
                .peers
                .try_add(self.peer, more, self.memory.peer_units)
            {
                break c;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                // When the budget as a whole is short too, that is the limit to report (the
                // peer's share may be all of it).
                if self.memory.units.available_permits() < more {
                    return Err(BudgetError::Exhausted(wait, want));
                }
                return Err(BudgetError::PeerShare(wait, want));
            }
        };
        let more_u32 = u32::try_from(more).map_err(|_| BudgetError::Exhausted(wait, want))?;
        let acquire = Arc::clone(&self.memory.units).acquire_many_owned(more_u32);
        let got = match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(BudgetError::Closed),
            Err(_) => {
                drop(claim);
                self.memory.released.notify_waiters();
                return Err(BudgetError::Exhausted(wait, want));
            }
        };
        match self.permit.as_mut() {
            Some(p) => p.merge(got),
            None => self.permit = Some(got),
        }
        match self.share.as_mut() {
            Some(s) => s.merge(claim),
            None => self.share = Some(claim),
        }
        self.units = want;
        self.memory.gauge.add((more * UNIT) as i64);
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.memory.gauge.sub((self.units * UNIT) as i64);
        if self.share.take().is_some() {
            self.memory.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_are_bounded_and_given_back() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let memory = FrameMemory::new(1 << 20, 1 << 20, gauge.clone());
        let wait = Duration::from_secs(5);
        let mut a = memory.reservation(ip("10.0.0.1"));
        a.cover(FREE_BYTES / 2, wait).await.unwrap();
        assert_eq!(gauge.get(), 0, "within the free allowance");
        a.cover(FREE_BYTES + (768 << 10), wait).await.unwrap();
        assert_eq!(gauge.get(), 768 << 10);
        let mut b = memory.reservation(ip("10.0.0.2"));
        let e = b.cover(FREE_BYTES + (512 << 10), wait).await.unwrap_err();
        assert!(matches!(e, BudgetError::Exhausted(..)), "{e}");
        assert_eq!(gauge.get(), 768 << 10);
        a.cover(FREE_BYTES + (256 << 10), wait).await.unwrap();
        assert_eq!(gauge.get(), 256 << 10);
        b.cover(FREE_BYTES + (512 << 10), wait).await.unwrap();
        assert_eq!(gauge.get(), 768 << 10);
        drop(a);
        drop(b);
        assert_eq!(gauge.get(), 0);
        assert_eq!(memory.units.available_permits(), 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn one_peer_holds_its_share_and_others_still_get_memory() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let memory = FrameMemory::new(4 << 20, 1 << 20, gauge.clone());
        let wait = Duration::from_secs(5);
        // Three connections of one peer each want 768 KiB: the second and third wait for
        // the peer's share (1 MiB) and give up.
        let mut first = memory.reservation(ip("10.0.0.1"));
        first.cover(FREE_BYTES + (768 << 10), wait).await.unwrap();
        let mut second = memory.reservation(ip("10.0.0.1"));
        let started = Instant::now();
        let e = second
            .cover(FREE_BYTES + (768 << 10), wait)
            .await
            .unwrap_err();
        assert!(matches!(e, BudgetError::PeerShare(..)), "{e}");
        assert_eq!(started.elapsed(), wait);
        assert_eq!(gauge.get(), 768 << 10);
        // Another peer gets memory meanwhile.
        let mut other = memory.reservation(ip("10.0.0.2"));
        other.cover(FREE_BYTES + (1 << 20), wait).await.unwrap();
        assert_eq!(gauge.get(), (768 << 10) + (1 << 20));
        // A waiting connection of the peer gets its memory as soon as the first gives some
        // back.
        let waiting = tokio::spawn(async move {
            second
                .cover(FREE_BYTES + (512 << 10), wait)
                .await
                .map(|()| second)
        });
        tokio::task::yield_now().await;
        first.cover(FREE_BYTES + (256 << 10), wait).await.unwrap();
        let second = waiting.await.unwrap().unwrap();
        assert_eq!(gauge.get(), (768 << 10) + (1 << 20));
        drop((first, second, other));
        assert_eq!(gauge.get(), 0);
        assert_eq!(memory.peers.get(&PeerKey::from(ip("10.0.0.1"))), 0);
        assert_eq!(memory.units.available_permits(), 4096);
    }

    #[test]
    fn a_header_declares_what_its_frame_will_take() {
        let frame = |len: i64, body: usize| {
            let mut v = len.to_be_bytes().to_vec();
            v.resize(8 + body, 0);
            v
        };
        assert_eq!(declared_frame(&frame(1000, 10), 1 << 20), 1000);
        assert_eq!(
            declared_frame(&frame(1000, 10)[..7], 1 << 20),
            0,
            "no header yet"
        );
        assert_eq!(
            declared_frame(&frame((1 << 20) + 8, 0), 1 << 20),
            (1 << 20) + 8
        );
        for bad in [(1 << 20) + 9, 8, 0, -1, i64::MIN, i64::MAX] {
            assert_eq!(declared_frame(&frame(bad, 0), 1 << 20), 0, "{bad}");
        }
    }
}
