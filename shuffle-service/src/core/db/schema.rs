//! The database's layout and its version (`PRAGMA user_version`), and the migrations that
//! bring a database of an earlier version up to this service's.
//!
//! [`MIGRATIONS`] are applied in order, each in the transaction that records the version it
//! reaches, so a crash leaves a database at one version or the next, never between. Version 0
//! is a database without a version: an empty file, or one written before versions were kept
//! (whose `apps` table may lack the marks [`to_v1`] adds). A database of a version newer than
//! this service's is refused untouched: an older service would not know what the newer one
//! stored. (The staging server's database follows the same rules.)

use std::path::Path;

use rusqlite::Connection;

use super::Durability;
use crate::error::{Result, ShuffleError};

/// The version of the layout this service reads and writes.
pub(super) const VERSION: i64 = 1;

/// `MIGRATIONS[n]` takes a database from version `n` to `n + 1`.
const MIGRATIONS: [service_runtime::sqlite::Migration; VERSION as usize] = [to_v1];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS apps (
    app_id               TEXT PRIMARY KEY,
    token_hash           BLOB,
    namespace            TEXT NOT NULL DEFAULT '',
    driver_pod           TEXT NOT NULL DEFAULT '',
    heartbeat_timeout_ms INTEGER,
    created_ms           INTEGER NOT NULL,
    own_lifecycle        INTEGER NOT NULL DEFAULT 0,
    learned_secret       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS executors (
    app_id          TEXT NOT NULL,
    exec_id         TEXT NOT NULL,
    local_dirs      TEXT NOT NULL,
    sub_dirs        INTEGER NOT NULL,
    shuffle_manager TEXT NOT NULL,
    PRIMARY KEY (app_id, exec_id)
);
CREATE TABLE IF NOT EXISTS pod_owners (
    app_id     TEXT PRIMARY KEY,
    namespace  TEXT NOT NULL,
    driver_uid TEXT NOT NULL
);
";

/// Version 1: every table of [`SCHEMA`], and the marks databases from before them lack.
fn to_v1(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(SCHEMA)?;
    let has_column = |name: &str| -> rusqlite::Result<bool> {
        c.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('apps') WHERE name = ?1",
            [name],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )
    };
    // Databases from before the lifecycle mark: their applications get it unset, except those
    // holding a token (registered over gRPC).
    if !has_column("own_lifecycle")? {
        c.execute_batch(
            "ALTER TABLE apps ADD COLUMN own_lifecycle INTEGER NOT NULL DEFAULT 0;
             UPDATE apps SET own_lifecycle = 1 WHERE token_hash IS NOT NULL;",
        )?;
    }
    // Databases from before the learned mark: their applications bound to a driver pod (the
    // pod_owners table) are covered by their binding.
    if !has_column("learned_secret")? {
        c.execute_batch("ALTER TABLE apps ADD COLUMN learned_secret INTEGER NOT NULL DEFAULT 0;")?;
    }
    Ok(())
}

/// Opens (creating if needed) the database at `path` in WAL mode and brings it up to
/// [`VERSION`].
///
/// # Errors
/// [`ShuffleError::UnknownSchema`] for a database of a newer version (left as it is); SQLite
/// errors opening or migrating the file.
pub(super) fn open(path: &Path, durability: Durability) -> Result<Connection> {
    use service_runtime::sqlite::{self, Synchronous};
    let sync = match durability {
        Durability::Full => Synchronous::Full,
        Durability::Normal => Synchronous::Normal,
    };
    let mut conn = sqlite::open(path, sync, "")?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Applies the migrations from the database's version up to [`VERSION`].
fn migrate(c: &mut Connection, path: &Path) -> Result<()> {
    use service_runtime::sqlite::MigrateError;
    service_runtime::sqlite::migrate(c, path, &MIGRATIONS).map_err(|e| match e {
        MigrateError::Newer { path, found, known } => {
            ShuffleError::UnknownSchema { path, found, known }
        }
        MigrateError::Sqlite(e) => e.into(),
    })
}
