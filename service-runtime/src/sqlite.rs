//! Opening a service's SQLite database the same way in both services: WAL (readers never
//! wait for the writer), a busy timeout, foreign keys on, and an explicit `synchronous` level.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// How long a statement waits for a lock held by another connection.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How a commit reaches the disk before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// The WAL is fsynced at every commit: a commit survives a power loss.
    Full,
    /// A commit survives a crash of the process, not a power loss (the last ones may roll back).
    Normal,
}

/// Opens (creating if needed) the database at `path` and runs `schema`.
///
/// # Errors
/// SQLite errors opening, configuring or migrating it.
pub fn open(path: &Path, sync: Synchronous, schema: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let level = match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_and_the_level_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(
            &dir.path().join("x.db"),
            Synchronous::Full,
            "CREATE TABLE t (a INTEGER);",
        )
        .unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
    }
}
