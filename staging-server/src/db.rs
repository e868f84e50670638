//! Metadata in SQLite: resources, their lifecycle state, and issued download tokens.
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

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::clock::UnixMillis;
use staging_api::ids::{CredentialId, Labels, Namespace, ResourceId, Sha256Digest};

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

/// Handle to the metadata database.
#[derive(Debug, Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    /// How long a namespace's grant on a blob lives after its send when no submission of the
    /// namespace names it.
    unnamed_grace: std::time::Duration,
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

/// A committed resource with owner pods, as the owner watch reads it.
#[derive(Debug, Clone)]
pub struct OwnedResource {
    /// Id.
    pub id: ResourceId,
    /// Owner.
    pub owner: Owner,
    /// Upload commit time.
    pub committed_at: UnixMillis,
    /// When the owner pods were first seen.
    pub owner_seen_at: Option<UnixMillis>,
}

/// A committed resource as stored.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Id.
    pub id: ResourceId,
    /// Which API uploaded it (`v0` or `v1`).
    pub api: String,
    /// Owner.
    pub owner: Owner,
    /// Size in bytes.
    pub size: u64,
    /// Content digest.
    pub sha256: Sha256Digest,
    /// Upload commit time.
    pub committed_at: UnixMillis,
    /// First authorised download, if any.
    pub first_access_at: Option<UnixMillis>,
    /// Latest recorded download (stamped at most once a minute).
    pub last_access_at: Option<UnixMillis>,
    /// The bundle is deleted if still undownloaded at this time.
    pub unused_deadline: UnixMillis,
    /// The bundle is deleted at this time regardless.
    pub expires_at: UnixMillis,
}

/// What the commit transaction needs.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// Resource being committed (must be pending).
    pub id: ResourceId,
    /// Its owner.
    pub owner: Owner,
    /// Final size.
    pub size: u64,
    /// Final digest.
    pub sha256: Sha256Digest,
    /// Commit time.
    pub now: UnixMillis,
    /// Unused TTL of this resource.
    pub unused_ttl_ms: i64,
    /// Absolute expiry.
    pub expires_at: UnixMillis,
    /// The first download token's id.
    pub jti: String,
    /// Quotas to enforce in the same transaction.
    pub quotas: Quotas,
}

/// Storage quotas checked at commit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quotas {
    /// Bytes per namespace.
    pub namespace_bytes: Option<u64>,
    /// Resources per namespace.
    pub namespace_count: Option<u64>,
    /// Total bytes.
    pub capacity: Option<u64>,
    /// Bytes per namespace of files sent but not named by one of its submissions.
    pub unnamed_bytes: Option<u64>,
    /// Bytes of such files per upload credential, across namespaces.
    pub credential_unnamed_bytes: Option<u64>,
    /// Such files per namespace.
    pub namespace_max_blobs: Option<u64>,
    /// Namespaces holding such files at once.
    pub max_unnamed_namespaces: Option<u64>,
    /// Namespaces where one credential holds such files at once.
    pub credential_max_namespaces: Option<u64>,
}

/// Bytes an upload may still bring, and the bound that leaves no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// Bytes left.
    pub bytes: u64,
    /// What bounds them, for the refusal's message.
    pub bound: &'static str,
}

/// Why a commit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Committed.
    Committed,
    /// A quota or the capacity would be exceeded; nothing was committed.
    QuotaExceeded(String),
    /// The pending row vanished (the resource was deleted concurrently).
    Gone,
}

/// What [`Db::delete`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Whether the resource row existed.
    pub existed: bool,
    /// Objects of stored files no resource references any more (queued for deletion).
    pub freed: Vec<ResourceId>,
}

/// Why a token is not acceptable, from the database's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Issued and not revoked.
    Valid,
    /// Revoked (resource deleted or explicitly revoked).
    Revoked,
    /// Never issued by this server (or long pruned).
    Unknown,
}

/// Per-state counts for the resource gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Uploads in progress.
    pub pending: u64,
    /// Committed, never downloaded.
    pub unused: u64,
    /// Committed and downloaded at least once.
    pub active: u64,
    /// Committed bytes (a submission counts the full size of its files).
    pub stored_bytes: u64,
    /// Distinct stored files of submissions.
    pub files: u64,
    /// Their bytes, each counted once.
    pub file_bytes: u64,
}

/// Why a resource is deleted; also a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryReason {
    /// Never downloaded within its unused TTL.
    UnusedTtl,
    /// Reached its absolute lifetime.
    MaxTtl,
}

impl ExpiryReason {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnusedTtl => "unused_ttl",
            Self::MaxTtl => "max_ttl",
        }
    }
}

impl Db {
    /// The same database, with grants on blobs that no submission of their namespace names
    /// living `grace` after their send (default [`crate::files::UNNAMED_BLOB_GRACE`]).
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
        // NORMAL in WAL mode is durable against process crashes; a power loss can roll back
        // the last transactions (never corrupt the database): an upload acknowledged just
        // before is then unknown, its download answers 404 and its bytes are an orphan that
        // the sweeper removes.
        let conn = service_runtime::sqlite::open(
            path,
            service_runtime::sqlite::Synchronous::Normal,
            SCHEMA,
        )?;
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
        crate::usage::migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            unnamed_grace: crate::files::UNNAMED_BLOB_GRACE,
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

    /// Records a pending upload, refusing it when the namespace's count quota or the capacity
    /// is already exhausted. Returns the refusal text, or `None` when inserted.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn insert_pending(
        &self,
        id: ResourceId,
        api: &'static str,
        namespace: Option<Namespace>,
        now: UnixMillis,
        quotas: Quotas,
    ) -> DbResult<Option<String>> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(ns) = &namespace {
                let used = crate::usage::namespace(&tx, ns)?;
                if let Some(max) = quotas.namespace_count
                    && used.committed_count >= max
                {
                    return Ok(Some(format!(
                        "namespace {ns} already holds its quota of {max} resources"
                    )));
                }
                if let Some(max) = quotas.namespace_bytes
                    && used.bytes() >= max
                {
                    return Ok(Some(format!(
                        "namespace {ns} has used its quota of {max} bytes"
                    )));
                }
            }
            if let Some(cap) = quotas.capacity
                && crate::usage::total(&tx)?.bytes() >= cap
            {
                return Ok(Some(format!("the store is full ({cap} bytes)")));
            }
            tx.execute(
                "INSERT INTO resources (id, state, api, namespace, created_at, unused_ttl_ms, expires_at)
                 VALUES (?1, 'pending', ?2, ?3, ?4, 0, 0)",
                params![id.to_string(), api, namespace.as_ref().map(|n| n.as_str().to_owned()), now],
            )?;
            tx.commit()?;
            Ok(None)
        })
        .await
    }

    /// Bytes still available to an upload into `namespace` under the quotas and capacity
    /// (and, for a blob sent with `credential`, under the bounds on unnamed bytes of the
    /// namespace and of the credential), with the bound that leaves the least. Only what the
    /// namespace and the credential hold counts, whatever other namespaces hold.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn headroom(
        &self,
        namespace: Option<Namespace>,
        quotas: Quotas,
        blob: Option<CredentialId>,
    ) -> DbResult<Option<Headroom>> {
        self.call(move |c| {
            let mut room: Option<Headroom> = None;
            let mut limit = |max: u64, used: u64, bound: &'static str| {
                let bytes = max.saturating_sub(used);
                if room.is_none_or(|r| bytes < r.bytes) {
                    room = Some(Headroom { bytes, bound });
                }
            };
            if let Some(ns) = &namespace {
                let used = crate::usage::namespace(c, ns)?;
                if let Some(max) = quotas.namespace_bytes {
                    limit(max, used.bytes(), "the namespace's quota");
                }
                if let (true, Some(max)) = (blob.is_some(), quotas.unnamed_bytes) {
                    limit(
                        max,
                        used.unnamed_bytes,
                        "the namespace's bound on files not named by a submission",
                    );
                }
            }
            if let (Some(id), Some(max)) = (&blob, quotas.credential_unnamed_bytes) {
                limit(
                    max,
                    crate::usage::credential(c, id.as_str())?.unnamed_bytes,
                    "this credential's bound on files not named by a submission",
                );
            }
            if let Some(cap) = quotas.capacity {
                limit(cap, crate::usage::total(c)?.bytes(), "the capacity");
            }
            Ok(room)
        })
        .await
    }

    /// Commits a pending resource and records its first token, enforcing quotas atomically.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn commit(&self, req: CommitRequest) -> DbResult<CommitOutcome> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let ns = &req.owner.namespace;
            let charge = crate::usage::charge(req.size);
            if let Some(why) = quota_refusal(&tx, ns, charge, req.quotas)? {
                return Ok(CommitOutcome::QuotaExceeded(why));
            }
            let labels =
                serde_json::to_string(req.owner.labels.as_map()).map_err(|e| DbError::Corrupt {
                    id: req.id.to_string(),
                    what: e.to_string(),
                })?;
            let n = tx.execute(
                "UPDATE resources SET state = 'committed', namespace = ?2, labels = ?3,
                        owner_pod_uid = ?4, size = ?5, sha256 = ?6, committed_at = ?7,
                        unused_ttl_ms = ?8, expires_at = ?9
                 WHERE id = ?1 AND state = 'pending'",
                params![
                    req.id.to_string(),
                    ns.as_str(),
                    labels,
                    req.owner.pod_uid,
                    req.size as i64,
                    req.sha256.to_hex(),
                    req.now,
                    req.unused_ttl_ms,
                    req.expires_at,
                ],
            )?;
            if n == 0 {
                return Ok(CommitOutcome::Gone);
            }
            crate::usage::committed(&tx, ns.as_str(), charge, true)?;
            tx.execute(
                "INSERT INTO tokens (jti, resource_id, expires_at) VALUES (?1, ?2, ?3)",
                params![req.jti, req.id.to_string(), req.expires_at],
            )?;
            tx.commit()?;
            Ok(CommitOutcome::Committed)
        })
        .await
    }

    /// Deletes a resource row of any state and revokes its tokens; returns whether it existed
    /// and the stored files it was the last to reference (their rows are gone too).
    /// The deletion of its bytes is queued in the same transaction, so that bytes a failed
    /// store call left behind are retried by the sweep (and survive a crash).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn delete(&self, id: ResourceId, now: UnixMillis) -> DbResult<Deleted> {
        let cutoff = self.grant_cutoff(now);
        self.call(move |c| {
            let tx = c.transaction()?;
            // A committed resource leaves its namespace's counters; its files' charge is read
            // before `release` drops their rows.
            let committed: Option<(String, u64)> = tx
                .query_row(
                    "SELECT namespace, CASE WHEN api = 'files'
                         THEN COALESCE((SELECT SUM(MAX(f.size, ?2)) FROM resource_files f
                                        WHERE f.resource_id = ?1), 0)
                         ELSE MAX(size, ?2) END
                     FROM resources WHERE id = ?1 AND state = 'committed' AND namespace IS NOT NULL",
                    params![id.to_string(), crate::usage::MIN_CHARGE as i64],
                    |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)),
                )
                .optional()?;
            let n = tx.execute("DELETE FROM resources WHERE id = ?1", [id.to_string()])?;
            if let Some((ns, charge)) = &committed {
                crate::usage::committed(&tx, ns, *charge, false)?;
            }
            tx.execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE resource_id = ?1 AND revoked_at IS NULL",
                params![id.to_string(), now],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO store_deletions (id, queued_at) VALUES (?1, ?2)",
                params![id.to_string(), now],
            )?;
            let namespace = committed.map(|(ns, _)| ns);
            let freed = crate::files::release(&tx, id, namespace.as_deref(), now, cutoff)?;
            tx.commit()?;
            Ok(Deleted {
                existed: n > 0,
                freed,
            })
        })
        .await
    }

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

    /// Byte deletions still to do (oldest first), at most `limit`.
    ///
    /// # Errors
    /// SQLite errors, or [`DbError::Corrupt`].
    pub async fn queued_deletions(&self, limit: usize) -> DbResult<Vec<ResourceId>> {
        self.call(move |c| {
            let mut stmt =
                c.prepare("SELECT id FROM store_deletions ORDER BY queued_at LIMIT ?1")?;
            parse_ids(stmt.query_map([limit as i64], |r| r.get::<_, String>(0))?)
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

    /// A committed resource.
    ///
    /// # Errors
    /// SQLite errors, or [`DbError::Corrupt`] for unparsable rows.
    pub async fn get(&self, id: ResourceId) -> DbResult<Option<Resource>> {
        self.call(move |c| load_resource(c, id)).await
    }

    /// A token's state and, when it is valid, the committed resource it grants, in one
    /// round trip (the hot path of every download).
    ///
    /// # Errors
    /// SQLite errors, or [`DbError::Corrupt`].
    pub async fn authorize(
        &self,
        jti: String,
        id: ResourceId,
    ) -> DbResult<(TokenState, Option<Resource>)> {
        self.call(move |c| {
            let state = token_state(c, &jti, id)?;
            let res = if state == TokenState::Valid {
                load_resource(c, id)?
            } else {
                None
            };
            Ok((state, res))
        })
        .await
    }

    /// Records a download: the first one moves the resource from unused to active. The last
    /// access time is written at most once a minute per resource to keep downloads read-mostly.
    /// Returns whether this was the first download.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn record_access(&self, id: ResourceId, now: UnixMillis) -> DbResult<bool> {
        self.call(move |c| {
            let first = c.execute(
                "UPDATE resources SET first_access_at = ?2 WHERE id = ?1 AND first_access_at IS NULL",
                params![id.to_string(), now],
            )? > 0;
            c.execute(
                "UPDATE resources SET last_access_at = ?2 WHERE id = ?1 AND state = 'committed'",
                params![id.to_string(), now],
            )?;
            Ok(first)
        })
        .await
    }

    /// Committed resources due for deletion at `now`, with the reason, at most `limit`. The
    /// unused TTL does not apply once the owner pods were seen (a driver queued for longer than
    /// the TTL keeps its bundle; the owner watch deletes it when the driver ends, the maximum
    /// TTL in any case).
    ///
    /// # Errors
    /// SQLite errors, or [`DbError::Corrupt`].
    pub async fn expired(
        &self,
        now: UnixMillis,
        limit: usize,
    ) -> DbResult<Vec<(ResourceId, ExpiryReason)>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, expires_at <= ?1 FROM resources
                 WHERE state = 'committed'
                   AND (expires_at <= ?1
                        OR (first_access_at IS NULL AND owner_seen_at IS NULL
                            AND committed_at + unused_ttl_ms <= ?1))
                 LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now, limit as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, hard) = row?;
                let id = id.parse().map_err(|_| DbError::Corrupt {
                    id: id.clone(),
                    what: "id".into(),
                })?;
                out.push((
                    id,
                    if hard {
                        ExpiryReason::MaxTtl
                    } else {
                        ExpiryReason::UnusedTtl
                    },
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Committed resources that name owner pods (a namespace and labels or a pod uid), with
    /// their commit time and when their owner pods were first seen, oldest first: the page of
    /// at most `limit` after the first `offset`.
    ///
    /// # Errors
    /// SQLite errors, or [`DbError::Corrupt`].
    pub async fn owned(&self, offset: usize, limit: usize) -> DbResult<Vec<OwnedResource>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, namespace, labels, owner_pod_uid, committed_at, owner_seen_at
                 FROM resources
                 WHERE state = 'committed' AND namespace IS NOT NULL
                   AND (labels != '{}' OR owner_pod_uid IS NOT NULL)
                 ORDER BY committed_at, id LIMIT ?1 OFFSET ?2",
            )?;
            let rows = stmt.query_map(params![limit as i64, offset as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let row = row?;
                let corrupt = |what: &str| DbError::Corrupt {
                    id: row.0.clone(),
                    what: what.into(),
                };
                out.push(OwnedResource {
                    id: row.0.parse().map_err(|_| corrupt("id"))?,
                    owner: Owner {
                        namespace: row.1.parse().map_err(|_| corrupt("namespace"))?,
                        labels: serde_json::from_str(&row.2).map_err(|_| corrupt("labels"))?,
                        pod_uid: row.3.clone(),
                    },
                    committed_at: row.4.unwrap_or_default(),
                    owner_seen_at: row.5,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Records that a resource's owner pods were seen (the first time only).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn mark_owner_seen(&self, id: ResourceId, now: UnixMillis) -> DbResult<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE resources SET owner_seen_at = ?2 WHERE id = ?1 AND owner_seen_at IS NULL",
                params![id.to_string(), now],
            )?;
            Ok(())
        })
        .await
    }

    /// Pending rows: uploads interrupted by a crash (only called before serving starts).
    ///
    /// # Errors
    /// SQLite errors, or [`DbError::Corrupt`].
    pub async fn pending(&self) -> DbResult<Vec<ResourceId>> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT id FROM resources WHERE state = 'pending'")?;
            parse_ids(stmt.query_map([], |r| r.get::<_, String>(0))?)
        })
        .await
    }

    /// Whether a resource row (any state) exists.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn exists(&self, id: ResourceId) -> DbResult<bool> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT 1 FROM resources WHERE id = ?1
                 UNION ALL SELECT 1 FROM blobs WHERE object_id = ?1",
                [id.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await
    }

    /// Drops token rows that expired before `now` (they are rejected by `exp` anyway).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn prune_tokens(&self, now: UnixMillis) -> DbResult<usize> {
        self.call(move |c| Ok(c.execute("DELETE FROM tokens WHERE expires_at < ?1", [now])?))
            .await
    }

    /// Accounts whose running counters of charges differ from a recount of the rows, with
    /// both values; empty when they are right. A check for tests and operators: it scans
    /// every resource and grant.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn usage_drift(&self) -> DbResult<Vec<String>> {
        self.call(|c| Ok(crate::usage::drift(c)?)).await
    }

    /// What a namespace is charged, from the running counters.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn usage(&self, namespace: Namespace) -> DbResult<crate::usage::Usage> {
        self.call(move |c| Ok(crate::usage::namespace(c, &namespace)?))
            .await
    }

    /// Counts for the gauges.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn census(&self) -> DbResult<Census> {
        self.call(|c| {
            let (files, file_bytes) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?.max(0) as u64,
                        r.get::<_, i64>(1)?.max(0) as u64,
                    ))
                },
            )?;
            Ok(c.query_row(
                "SELECT
                    COALESCE(SUM(state = 'pending'), 0),
                    COALESCE(SUM(state = 'committed' AND first_access_at IS NULL), 0),
                    COALESCE(SUM(state = 'committed' AND first_access_at IS NOT NULL), 0),
                    COALESCE(SUM(CASE WHEN state = 'committed' THEN size ELSE 0 END), 0)
                 FROM resources",
                [],
                |r| {
                    Ok(Census {
                        pending: r.get::<_, i64>(0)? as u64,
                        unused: r.get::<_, i64>(1)? as u64,
                        active: r.get::<_, i64>(2)? as u64,
                        stored_bytes: r.get::<_, i64>(3)? as u64,
                        files,
                        file_bytes,
                    })
                },
            )?)
        })
        .await
    }
}

fn load_resource(c: &Connection, id: ResourceId) -> DbResult<Option<Resource>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, api, namespace, labels, owner_pod_uid, size, sha256, committed_at,
                first_access_at, unused_ttl_ms, expires_at, last_access_at
         FROM resources WHERE id = ?1 AND state = 'committed'",
    )?;
    let row = stmt
        .query_row([id.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, i64>(10)?,
                r.get::<_, Option<i64>>(11)?,
            ))
        })
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let corrupt = |what: &str| DbError::Corrupt {
        id: row.0.clone(),
        what: what.into(),
    };
    Ok(Some(Resource {
        id: row.0.parse().map_err(|_| corrupt("id"))?,
        api: row.1.clone(),
        owner: Owner {
            namespace: row.2.parse().map_err(|_| corrupt("namespace"))?,
            labels: serde_json::from_str(&row.3).map_err(|_| corrupt("labels"))?,
            pod_uid: row.4.clone(),
        },
        size: u64::try_from(row.5).map_err(|_| corrupt("size"))?,
        sha256: Sha256Digest::from_hex(&row.6).map_err(|_| corrupt("sha256"))?,
        committed_at: row.7,
        first_access_at: row.8,
        last_access_at: row.11,
        unused_deadline: row.7.saturating_add(row.9),
        expires_at: row.10,
    }))
}

fn token_state(c: &Connection, jti: &str, resource: ResourceId) -> DbResult<TokenState> {
    let mut stmt = c.prepare_cached("SELECT resource_id, revoked_at FROM tokens WHERE jti = ?1")?;
    let row: Option<(String, Option<i64>)> = stmt
        .query_row([jti], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let rid = resource.to_string();
    Ok(match row {
        Some((r, None)) if r == rid => TokenState::Valid,
        Some((r, Some(_))) if r == rid => TokenState::Revoked,
        _ => TokenState::Unknown,
    })
}

/// Why charging `charge` more bytes to `ns` would break a quota or the capacity, if it would.
/// Reads the running counters ([`crate::usage`]): its cost does not grow with what `ns`
/// holds.
pub(crate) fn quota_refusal(
    c: &Connection,
    ns: &Namespace,
    charge: u64,
    q: Quotas,
) -> rusqlite::Result<Option<String>> {
    let used = crate::usage::namespace(c, ns)?;
    if let Some(max) = q.namespace_bytes {
        let used = used.bytes();
        if used.saturating_add(charge) > max {
            return Ok(Some(format!(
                "namespace {ns} would exceed its quota of {max} bytes ({used} used, {charge} more)"
            )));
        }
    }
    if let Some(max) = q.namespace_count
        && used.committed_count >= max
    {
        return Ok(Some(format!(
            "namespace {ns} already holds its quota of {max} resources"
        )));
    }
    if let Some(cap) = q.capacity {
        let used = crate::usage::total(c)?.bytes();
        if used.saturating_add(charge) > cap {
            return Ok(Some(format!(
                "the store would exceed its capacity of {cap} bytes"
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
