//! The database's layout and its version (`PRAGMA user_version`), and the migrations that bring
//! a database of an earlier version up to this server's.
//!
//! [`MIGRATIONS`] are applied in order, each in the transaction that records the version it
//! reaches, so a crash leaves a database at one version or the next, never between. Version 0
//! is a database without a version: an empty file, or one written before versions were kept
//! (whose layout grew by the columns [`to_v1`] adds when missing), or one written by version 1
//! of this code before it set the version. A database of a version newer than this server's is
//! refused untouched: an older server would not know what the newer one stored.

use std::path::Path;

use rusqlite::Connection;

use super::{DbError, DbResult};

/// The version of the layout this server reads and writes.
pub(super) const VERSION: i64 = 1;

/// `MIGRATIONS[n]` takes a database from version `n` to `n + 1`.
const MIGRATIONS: [service_runtime::sqlite::Migration; VERSION as usize] = [to_v1];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS resources (
    id              TEXT PRIMARY KEY,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'committed')),
    api             TEXT NOT NULL,
    namespace       TEXT,
    labels          TEXT NOT NULL DEFAULT '{}',
    owner_pod_uid   TEXT,
    owner_seen_at   INTEGER,
    size            INTEGER NOT NULL DEFAULT 0,
    sha256          TEXT,
    created_at      INTEGER NOT NULL,
    committed_at    INTEGER,
    first_access_at INTEGER,
    last_access_at  INTEGER,
    unused_ttl_ms   INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS resources_by_namespace ON resources(namespace, state);
CREATE INDEX IF NOT EXISTS resources_by_expiry ON resources(state, expires_at);
CREATE TABLE IF NOT EXISTS tokens (
    jti         TEXT PRIMARY KEY,
    resource_id TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_by_resource ON tokens(resource_id);
CREATE TABLE IF NOT EXISTS store_deletions (
    id        TEXT PRIMARY KEY,
    queued_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    sha256        TEXT PRIMARY KEY,
    object_id     TEXT NOT NULL UNIQUE,
    size          INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    referenced_at INTEGER
);
CREATE TABLE IF NOT EXISTS blob_grants (
    sha256     TEXT NOT NULL,
    namespace  TEXT NOT NULL,
    granted_at INTEGER NOT NULL DEFAULT 0,
    credential TEXT,
    PRIMARY KEY (sha256, namespace)
);
CREATE INDEX IF NOT EXISTS blob_grants_by_namespace ON blob_grants(namespace);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS resource_files (
    resource_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    PRIMARY KEY (resource_id, name)
);
CREATE INDEX IF NOT EXISTS resource_files_by_blob ON resource_files(sha256);
CREATE TABLE IF NOT EXISTS usage (
    account         TEXT PRIMARY KEY,
    committed_bytes INTEGER NOT NULL DEFAULT 0,
    committed_count INTEGER NOT NULL DEFAULT 0,
    unnamed_bytes   INTEGER NOT NULL DEFAULT 0,
    unnamed_count   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_unnamed ON usage(account) WHERE unnamed_count > 0;
";

/// Version 1: every table of [`SCHEMA`], and the columns databases from before versions were
/// kept lack.
fn to_v1(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(SCHEMA)?;
    // Databases from before owner tracking lack this column.
    let has_seen: bool = c.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('resources') WHERE name = 'owner_seen_at'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_seen {
        c.execute("ALTER TABLE resources ADD COLUMN owner_seen_at INTEGER", [])?;
    }
    // Databases from before per-namespace grant times: a grant runs from its blob's
    // first send.
    let has_granted_at: bool = c.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('blob_grants') WHERE name = 'granted_at'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_granted_at {
        c.execute_batch(
            "ALTER TABLE blob_grants ADD COLUMN granted_at INTEGER NOT NULL DEFAULT 0;
             UPDATE blob_grants SET granted_at = COALESCE(
                 (SELECT created_at FROM blobs b WHERE b.sha256 = blob_grants.sha256), 0);",
        )?;
    }
    // Databases from before grants recorded their sender: those grants are charged to
    // their namespace only.
    let has_credential: bool = c.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('blob_grants') WHERE name = 'credential'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_credential {
        c.execute("ALTER TABLE blob_grants ADD COLUMN credential TEXT", [])?;
    }
    Ok(())
}

/// Opens (creating if needed) the database at `path` in WAL mode, brings it up to [`VERSION`],
/// and counts the usage of a database from before the counters.
///
/// # Errors
/// [`DbError::UnknownSchema`] for a database of a newer version (left as it is); SQLite errors
/// opening or migrating the file.
pub(super) fn open(path: &Path) -> DbResult<Connection> {
    // NORMAL in WAL mode is durable against process crashes; a power loss can roll back
    // the last transactions (never corrupt the database): an upload acknowledged just
    // before is then unknown, its download answers 404 and its bytes are an orphan that
    // the sweeper removes.
    let mut conn =
        service_runtime::sqlite::open(path, service_runtime::sqlite::Synchronous::Normal, "")?;
    migrate(&mut conn, path)?;
    super::usage::migrate(&mut conn)?;
    Ok(conn)
}

/// Applies the migrations from the database's version up to [`VERSION`].
pub(super) fn migrate(c: &mut Connection, path: &Path) -> DbResult<()> {
    use service_runtime::sqlite::MigrateError;
    service_runtime::sqlite::migrate(c, path, &MIGRATIONS).map_err(|e| match e {
        MigrateError::Newer { path, found, known } => DbError::UnknownSchema { path, found, known },
        MigrateError::Sqlite(e) => e.into(),
    })
}
