//! Memory of partly received frames, shared by every Spark connection: what a connection's
//! read buffers hold beyond a small free allowance must be reserved from one budget
//! (`--spark-frame-memory`) before more is read. A client that declares a large frame and
//! trickles its body holds its reservation; once the budget is spent, other connections wait
//! for it (reading nothing meanwhile, so TCP pushes back) for at most the idle timeout, then
//! are closed. Connections that have not authenticated never reach the budget: their frames
//! are refused beyond `--spark-preauth-max-frame`, which stays below the allowance.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Buffered bytes a connection holds without a reservation: the read granularity plus a
/// small frame.
pub const FREE_BYTES: usize = 64 << 10;
/// The budget counts KiB.
const UNIT: usize = 1024;

/// Why a reservation could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The shared budget stayed spent for the whole wait.
    #[error("no frame memory within {0:?} ({1} KiB wanted)")]
    Exhausted(Duration, usize),
    /// The budget was closed (the service stops).
    #[error("frame memory closed")]
    Closed,
}

/// The budget shared by all connections.
#[derive(Debug, Clone)]
pub struct FrameMemory {
    units: Arc<Semaphore>,
    total_units: usize,
    gauge: IntGauge,
}

impl FrameMemory {
    /// A budget of `bytes`, whose reservations are shown by `gauge` (in bytes).
    pub fn new(bytes: u64, gauge: IntGauge) -> Self {
        let total_units = usize::try_from(bytes / UNIT as u64)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            units: Arc::new(Semaphore::new(total_units)),
            total_units,
            gauge,
        }
    }

    /// One connection's reservation, empty.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            memory: self.clone(),
            permit: None,
            units: 0,
        }
    }
}

/// What one connection has reserved; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    memory: FrameMemory,
    permit: Option<OwnedSemaphorePermit>,
    units: usize,
}

impl Reservation {
    /// Makes the reservation cover `buffered` bytes (beyond the free allowance): waits up to
    /// `wait` for more, or gives back what is no longer needed.
    ///
    /// # Errors
    /// [`BudgetError`] when the budget stays spent for `wait`.
    pub async fn cover(&mut self, buffered: usize, wait: Duration) -> Result<(), BudgetError> {
        let want = buffered
            .saturating_sub(FREE_BYTES)
            .div_ceil(UNIT)
            .min(self.memory.total_units);
        if want < self.units {
            let extra = self.units - want;
            if let Some(p) = self.permit.as_mut() {
                drop(p.split(extra));
            }
            self.units = want;
            if want == 0 {
                self.permit = None;
            }
            self.memory.gauge.sub((extra * UNIT) as i64);
            return Ok(());
        }
        if want == self.units {
            return Ok(());
        }
        let more = want - self.units;
        let more_u32 = u32::try_from(more).map_err(|_| BudgetError::Exhausted(wait, want))?;
        let acquire = Arc::clone(&self.memory.units).acquire_many_owned(more_u32);
        let got = match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(BudgetError::Closed),
            Err(_) => return Err(BudgetError::Exhausted(wait, want)),
        };
        match self.permit.as_mut() {
            Some(p) => p.merge(got),
            None => self.permit = Some(got),
        }
        self.units = want;
        self.memory.gauge.add((more * UNIT) as i64);
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.memory.gauge.sub((self.units * UNIT) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reservations_are_bounded_and_given_back() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let memory = FrameMemory::new(1 << 20, gauge.clone());
        let wait = Duration::from_secs(5);
        let mut a = memory.reservation();
        a.cover(FREE_BYTES / 2, wait).await.unwrap();
        assert_eq!(gauge.get(), 0, "within the free allowance");
        a.cover(FREE_BYTES + (768 << 10), wait).await.unwrap();
        assert_eq!(gauge.get(), 768 << 10);
        let mut b = memory.reservation();
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
}
