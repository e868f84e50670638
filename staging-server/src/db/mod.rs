//! Metadata in SQLite: resources and their lifecycle state, issued download tokens, the
//! content-addressed files of submissions, and what each namespace and credential is charged.
//!
//! rusqlite is synchronous, so every call runs on the blocking pool through `Db::call`; the
//! async runtime never waits on SQLite. One connection in WAL mode serves the process: SQLite
//! allows a single writer anyway, and the statements here are short. The data directory holds
//! an exclusive lock (see `state.rs`) so two processes never share one database.
//!
//! A resource row is `pending` while its bytes stream into the store and becomes `committed`
//! in the same transaction that checks quotas and records its first token. Readers only ever
//! see `committed` rows, which is what makes the commit atomic: a crash leaves at most a
//! `pending` row, which start-up recovery deletes together with its object.
//!
//! One [`Db`] handle, its methods grouped by concern:
//! - `schema`: the tables, and the changes that bring an older database up to them;
//! - `resources`: bundles and submissions (pending, committed, deleted), owners, expiry, and
//!   the counts for the gauges; `quotas`: the bounds uploads and commits are checked against;
//! - `tokens`: issued download tokens, revoked with their resource;
//! - `blobs`: the content-addressed files of submissions and the namespaces' grants on them;
//! - `deletions`: the queue of object deletions the sweep retries;
//! - `usage`: running counters of what each namespace and credential is charged, which the
//!   quota checks read.

mod blobs;
mod deletions;
mod quotas;
mod replica;
mod resources;
mod schema;
mod tokens;
mod usage;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, Opts, Registry};
use rusqlite::Connection;

use staging_api::ids::{Labels, Namespace, ResourceId};

pub use blobs::{
    BlobCommit, BlobRelease, COLLECT_BATCH, FileRef, FilesCommit, FilesOutcome, MAX_FILES,
    StoredFile, UNNAMED_BLOB_GRACE, manifest_digest,
};
pub use quotas::{Headroom, Quotas};
pub use resources::{
    Census, CommitOutcome, CommitRequest, Deleted, ExpiryReason, OwnedPage, OwnedResource, Resource,
};
pub use tokens::TokenState;
pub use usage::{MIN_CHARGE, Usage, charge};

/// Database failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not parse (the database was edited by hand or is corrupt).
    #[error("unreadable row of {table} ({id}): {what}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// Row id.
        id: String,
        /// What did not parse.
        what: String,
    },
    /// The database's schema version is not one this server knows: a newer server wrote it.
    #[error(
        "{} has schema version {found}, which this server does not know (it reads versions up to {known}): a newer staging-server wrote it; run that version, or restore a copy of the data directory from before the upgrade",
        path.display()
    )]
    UnknownSchema {
        /// The database file.
        path: PathBuf,
        /// Its version (`PRAGMA user_version`).
        found: i64,
        /// The newest version this server knows.
        known: i64,
    },
    /// The blocking task panicked or was cancelled.
    #[error("database task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl DbError {
    /// Whether SQLite could not write for a full disk (or quota).
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

pub(crate) type DbResult<T> = Result<T, DbError>;

/// Parses a column of resource ids read for background work; an unparsable one is logged,
/// counted and left out, so that one bad row does not stop the others.
fn parse_ids(
    rows: impl Iterator<Item = rusqlite::Result<String>>,
    unreadable: &UnreadableRows,
    table: &'static str,
) -> DbResult<Vec<ResourceId>> {
    let mut ids = Vec::new();
    for id in rows {
        let id = id?;
        match id.parse() {
            Ok(parsed) => ids.push(parsed),
            Err(_) => unreadable.skipped(table, &id, "id"),
        }
    }
    Ok(ids)
}

/// The tables whose rows are parsed after reading, the label values of
/// `staging_db_unreadable_rows_total`.
const TABLES: [&str; 5] = [
    "resources",
    "resource_files",
    "blobs",
    "store_deletions",
    "meta",
];

/// Rows that could not be read (a value that does not parse: the database was edited by hand
/// or is damaged), counted by table in `staging_db_unreadable_rows_total`.
///
/// A read of many rows for background work (expiry, the owner watch, queued deletions,
/// start-up recovery) logs such a row, counts it and goes on with the others; a read of one
/// resource fails with [`DbError::Corrupt`] (answered as an internal error, whose cause is
/// logged) and counts it too. Either way no row is passed over silently.
#[derive(Debug, Clone)]
pub(crate) struct UnreadableRows(IntCounterVec);

impl UnreadableRows {
    fn new() -> Self {
        let counter = IntCounterVec::new(
            Opts::new(
                "staging_db_unreadable_rows_total",
                "Database rows that could not be read (a stored value that does not parse), by table.",
            ),
            &["table"],
        )
        .expect("constant metric options are valid");
        for table in TABLES {
            counter.with_label_values(&[table]).inc_by(0);
        }
        Self(counter)
    }

    /// Logs and counts a row that a read of many rows leaves out.
    pub(crate) fn skipped(&self, table: &'static str, id: &str, what: &str) {
        self.0.with_label_values(&[table]).inc();
        tracing::warn!(table, row = id, what, "database row not readable; left out");
    }

    /// Counts a row that fails a read, and the error to return for it.
    pub(crate) fn failed(&self, table: &'static str, id: &str, what: &str) -> DbError {
        self.0.with_label_values(&[table]).inc();
        DbError::Corrupt {
            table,
            id: id.to_owned(),
            what: what.to_owned(),
        }
    }
}

/// The owner of a resource: pods in a namespace selected by labels, optionally one pod uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Namespace of the owner pods.
    pub namespace: Namespace,
    /// AND label selector for the owner pods.
    pub labels: Labels,
    /// The owner pod, when the uploader knows it.
    pub pod_uid: Option<String>,
}

/// Handle to the metadata database.
#[derive(Debug, Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    /// Rows that could not be read.
    unreadable: UnreadableRows,
    /// How long a namespace's grant on a blob lives after its send when no submission of the
    /// namespace names it.
    unnamed_grace: std::time::Duration,
}

impl Db {
    /// The same database, with grants on blobs that no submission of their namespace names
    /// living `grace` after their send (default [`UNNAMED_BLOB_GRACE`]).
    #[must_use]
    pub fn with_unnamed_grace(mut self, grace: std::time::Duration) -> Self {
        self.unnamed_grace = grace;
        self
    }

    /// How long a grant on a blob no submission of its namespace names lives after its send.
    #[must_use]
    pub fn unnamed_grace(&self) -> std::time::Duration {
        self.unnamed_grace
    }

    /// Opens (creating if needed) the database at `path`, in WAL mode, and migrates it to the
    /// schema version of this server.
    ///
    /// # Errors
    /// [`DbError::UnknownSchema`] for a database of a newer version; SQLite errors opening or
    /// migrating the file.
    pub fn open(path: &Path) -> DbResult<Self> {
        Ok(Self {
            conn: Arc::new(Mutex::new(schema::open(path)?)),
            unreadable: UnreadableRows::new(),
            unnamed_grace: UNNAMED_BLOB_GRACE,
        })
    }

    /// Registers the database's metrics (`staging_db_unreadable_rows_total`) on `registry`;
    /// rows counted before are kept.
    ///
    /// # Errors
    /// A registration conflict.
    pub fn register_metrics(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.unreadable.0.clone()))
    }

    /// The counter of unreadable rows, for reads outside this module.
    pub(crate) fn unreadable(&self) -> &UnreadableRows {
        &self.unreadable
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn call<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-statement; SQLite itself rolled back, so the
            // connection is still consistent and can be used.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await?
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// Any SQLite error.
    pub async fn ping(&self) -> DbResult<()> {
        self.call(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}
