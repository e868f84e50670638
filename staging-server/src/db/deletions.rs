//! The queue of object deletions: the bytes of a deleted resource or blob are queued in the
//! transaction that deletes its row, so that a store call that fails (or a crash) leaves them
//! for the sweep to retry.

use rusqlite::params;

use super::{Db, DbResult, parse_ids};
use crate::clock::UnixMillis;
use staging_api::ids::ResourceId;

impl Db {
    /// Queues the deletion of an object's bytes.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn queue_deletion(&self, id: ResourceId, now: UnixMillis) -> DbResult<()> {
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO store_deletions (id, queued_at) VALUES (?1, ?2)",
                params![id.to_string(), now],
            )?;
            Ok(())
        })
        .await
    }

    /// Byte deletions still to do (oldest first), at most `limit`. A row whose id does not
    /// parse is logged, counted and left out (it stays queued, and is counted at every read).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn queued_deletions(&self, limit: usize) -> DbResult<Vec<ResourceId>> {
        let unreadable = self.unreadable.clone();
        self.call(move |c| {
            let mut stmt =
                c.prepare("SELECT id FROM store_deletions ORDER BY queued_at LIMIT ?1")?;
            parse_ids(
                stmt.query_map([limit as i64], |r| r.get::<_, String>(0))?,
                &unreadable,
                "store_deletions",
            )
        })
        .await
    }

    /// Marks a byte deletion done.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn deletion_done(&self, id: ResourceId) -> DbResult<()> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM store_deletions WHERE id = ?1",
                [id.to_string()],
            )?;
            Ok(())
        })
        .await
    }

    /// Byte deletions still to do.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn queued_deletion_count(&self) -> DbResult<u64> {
        self.call(|c| {
            Ok(
                c.query_row("SELECT COUNT(*) FROM store_deletions", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64,
            )
        })
        .await
    }
}
