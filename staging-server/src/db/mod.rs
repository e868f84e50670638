//! Metadata in SQLite: resources and their lifecycle state, issued download tokens, the
//! content-addressed files of submissions, and what each namespace and credential is charged.
//!
//! rusqlite is synchronous, so every call runs on the blocking pool through [`Db::call`]; the
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
mod resources;
mod schema;
mod tokens;
mod usage;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use staging_api::ids::{Labels, Namespace, ResourceId};

pub use blobs::{
    BlobCommit, BlobRelease, COLLECT_BATCH, FileRef, FilesCommit, FilesOutcome, MAX_FILES,
    StoredFile, UNNAMED_BLOB_GRACE, manifest_digest,
};
pub use quotas::{Headroom, Quotas};
pub use resources::{
    Census, CommitOutcome, CommitRequest, Deleted, ExpiryReason, OwnedResource, Resource,
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
    #[error("corrupt row for resource {id}: {what}")]
    Corrupt {
        /// Row id.
        id: String,
        /// What did not parse.
        what: String,
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

/// Parses a column of resource ids; an unparsable one is a corrupt row.
fn parse_ids(rows: impl Iterator<Item = rusqlite::Result<String>>) -> DbResult<Vec<ResourceId>> {
    rows.map(|id| {
        let id = id?;
        id.parse().map_err(|_| DbError::Corrupt {
            id,
            what: "id".into(),
        })
    })
    .collect()
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

    /// Opens (creating if needed) the database at `path`, in WAL mode.
    ///
    /// # Errors
    /// SQLite errors opening or migrating the file.
    pub fn open(path: &Path) -> Result<Self, rusqlite::Error> {
        Ok(Self {
            conn: Arc::new(Mutex::new(schema::open(path)?)),
            unnamed_grace: UNNAMED_BLOB_GRACE,
        })
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
