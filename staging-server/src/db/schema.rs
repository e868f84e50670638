//! The database's tables, and the changes that bring a database of an earlier layout up to
//! them when it is opened.

use std::path::Path;

use rusqlite::Connection;

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

/// Opens (creating if needed) the database at `path`, in WAL mode, with every table of
/// [`SCHEMA`] and the columns databases of earlier layouts lack.
///
/// # Errors
/// SQLite errors opening or migrating the file.
pub(super) fn open(path: &Path) -> rusqlite::Result<Connection> {
    // NORMAL in WAL mode is durable against process crashes; a power loss can roll back
    // the last transactions (never corrupt the database): an upload acknowledged just
    // before is then unknown, its download answers 404 and its bytes are an orphan that
    // the sweeper removes.
    let conn =
        service_runtime::sqlite::open(path, service_runtime::sqlite::Synchronous::Normal, SCHEMA)?;
    // Databases from before owner tracking lack this column.
    let has_seen: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('resources') WHERE name = 'owner_seen_at'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_seen {
        conn.execute("ALTER TABLE resources ADD COLUMN owner_seen_at INTEGER", [])?;
    }
    // Databases from before per-namespace grant times: a grant runs from its blob's
    // first send.
    let has_granted_at: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('blob_grants') WHERE name = 'granted_at'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_granted_at {
        conn.execute_batch(
            "ALTER TABLE blob_grants ADD COLUMN granted_at INTEGER NOT NULL DEFAULT 0;
             UPDATE blob_grants SET granted_at = COALESCE(
                 (SELECT created_at FROM blobs b WHERE b.sha256 = blob_grants.sha256), 0);",
        )?;
    }
    // Databases from before grants recorded their sender: those grants are charged to
    // their namespace only.
    let has_credential: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('blob_grants') WHERE name = 'credential'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_credential {
        conn.execute("ALTER TABLE blob_grants ADD COLUMN credential TEXT", [])?;
    }
    let mut conn = conn;
    super::usage::migrate(&mut conn)?;
    Ok(conn)
}
