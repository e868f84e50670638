//! The trim mark (`state/trimmed`): the position up to which the log may have been trimmed.
//!
//! Trimming frees positions that a replica behind the log may still write to or read: a stale
//! replica's conditional create succeeds at a freed position (a *stray* entry, never the
//! log's), and until it is taken back another stale replica could read it as the log's.
//!
//! The leader raises the mark to the older of the snapshots it keeps *before* it deletes any
//! entry at or below it, and never lowers it (conditional writes); positions at or below the
//! mark were all written before that snapshot. Deletions of entries happen only at or below
//! the mark as it stands: trimming after the raise, and a writer taking back its entry after
//! it read a mark covering it. Hence:
//!
//! - **readers** (`log::read_log`, `log::follow`) read the mark *after* the entries they
//!   fetched. An entry fetched at a position above that mark was never freed before it was
//!   fetched, so it is the log's, whatever other stale replicas wrote; at or below it, the
//!   reader loads the newest snapshot instead.
//! - **writers** (`log::write`) read the mark *before* their create (at or below it, the
//!   replica is behind and reloads first) and *after* it (above it, the entry is the log's).
//!   An entry created above the first reading and at or below the second lies where the log
//!   was trimmed during the write: either its position was freed just before the create (a
//!   stray) or the entry was the log's and was trimmed after a snapshot took it in. The two
//!   cannot be told apart, so the write answers "undecided" and is not written again.

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
