//! The trim mark (`state/trimmed`): the position up to which the log may have been trimmed.
//!
//! Trimming frees positions that a replica behind the log may still write to or read. A stale
//! replica's conditional create succeeds at a freed position, and until it takes that entry
//! back, another stale replica may read it as if it were the log's. The leader raises the mark
//! before it deletes any entry, and never lowers it; every position at or below it is written
//! before the snapshot the mark names. So, whatever other stale replicas wrote:
//!
//! - a writer that reads the mark after its create succeeded knows whether its entry extends
//!   the log (above the mark) or lies in the trimmed past (at or below: taken back);
//! - a reader that reads the mark after the entries it fetched applies them only when they
//!   lie above it, and loads the newest snapshot otherwise.

use super::WriteError;
use super::store::{StateStore, Written};

/// Conditional writes a raise of the mark tries before it gives up (each lost to another
/// leader's raise).
const MAX_RAISES: usize = 8;

/// The mark (0 while the log was never trimmed).
///
/// # Errors
/// Store errors; [`WriteError::BadMark`] for a mark no replica writes.
pub(super) async fn mark(store: &StateStore) -> Result<u64, WriteError> {
    Ok(match store.trim_mark().await? {
        Some(v) => parse(&v.body)?,
        None => 0,
    })
}

/// Whether position `seq` lies at or below the mark: no longer the log.
///
/// # Errors
/// As [`mark`].
pub(super) async fn covers(store: &StateStore, seq: u64) -> Result<bool, WriteError> {
    Ok(seq <= mark(store).await?)
}

fn parse(body: &[u8]) -> Result<u64, WriteError> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| WriteError::BadMark(String::from_utf8_lossy(body).into_owned()))
}

/// Raises the mark to `seq`, unless it is there or beyond already; before the log up to `seq`
/// is trimmed.
///
/// # Errors
/// Store errors; [`WriteError::Contended`] when other raises keep winning.
pub(super) async fn raise(store: &StateStore, seq: u64) -> Result<(), WriteError> {
    for _ in 0..MAX_RAISES {
        let current = store.trim_mark().await?;
        let over = match current {
            Some(v) if parse(&v.body)? >= seq => return Ok(()),
            Some(v) => Some(v.version),
            None => None,
        };
        if let Written::Yes(_) = store.put_trim_mark(seq.to_string().into(), over).await? {
            return Ok(());
        }
    }
    Err(WriteError::Contended(MAX_RAISES))
}
