//! Opening a service's SQLite database the same way in both services: WAL (readers never
//! wait for the writer), a busy timeout, foreign keys on, and an explicit `synchronous` level;
//! and bringing its schema to the version the service knows: `PRAGMA user_version` and ordered
//! migrations, each applied in the transaction that records the version it reaches, so a crash
//! leaves a database at one version or the next, never between.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

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

/// A migration: takes a database from version `n` to `n + 1` (`n` its index in the list).
pub type Migration = fn(&Connection) -> rusqlite::Result<()>;

/// Why a database was not brought to the version the service knows.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Its version is newer than the service knows (a newer version of it wrote the file); the
    /// file is left as it is.
    #[error("{} has schema version {found}; this version reads versions up to {known}", path.display())]
    Newer {
        /// The database file.
        path: PathBuf,
        /// Its version (`PRAGMA user_version`).
        found: i64,
        /// The newest version the service knows.
        known: i64,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// The database's version (`PRAGMA user_version`; 0 for a database that never had one).
///
/// # Errors
/// SQLite errors.
pub fn version(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Applies `migrations` from the database's version up to the last one, each in its own
/// immediate transaction with the version it reaches.
///
/// # Errors
/// [`MigrateError::Newer`] for a database of a version past `migrations`; SQLite errors.
pub fn migrate(
    c: &mut Connection,
    path: &Path,
    migrations: &[Migration],
) -> Result<(), MigrateError> {
    let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    loop {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = version(&tx)?;
        if !(0..=known).contains(&found) {
            return Err(MigrateError::Newer {
                path: path.to_owned(),
                found,
                known,
            });
        }
        let Some(step) = usize::try_from(found).ok().and_then(|n| migrations.get(n)) else {
            return Ok(());
        };
        step(&tx)?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
        if found > 0 {
            tracing::info!(path = %path.display(), from = found, to = found + 1, "database migrated");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_a(c: &Connection) -> rusqlite::Result<()> {
        c.execute_batch("CREATE TABLE a (x INTEGER);")
    }

    fn add_b(c: &Connection) -> rusqlite::Result<()> {
        c.execute_batch("CREATE TABLE b (x INTEGER);")
    }

    #[test]
    fn migrations_run_in_order_once_and_a_newer_database_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut c = open(&path, Synchronous::Normal, "").unwrap();
        migrate(&mut c, &path, &[add_a]).unwrap();
        assert_eq!(version(&c).unwrap(), 1);
        // Run again with one more: only the new one applies (a second `add_a` would fail).
        migrate(&mut c, &path, &[add_a, add_b]).unwrap();
        assert_eq!(version(&c).unwrap(), 2);
        // An older service reading it refuses, and changes nothing.
        let err = migrate(&mut c, &path, &[add_a]).unwrap_err();
        assert!(
            matches!(
                err,
                MigrateError::Newer {
                    found: 2,
                    known: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(version(&c).unwrap(), 2);
    }

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
