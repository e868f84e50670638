//! What the replicated mode (`crate::replica`) needs of the database: the position in the
//! shared log that the database reflects, the pending row a change made on another replica
//! starts from, and whole-database snapshots written and restored.
//!
//! Some rows are this replica's own and never part of the shared state: pending uploads, the
//! queue of object deletions, and the instance id. A restore keeps the instance id and the
//! queue, and drops the pending rows of the snapshot (they are its writer's uploads).

use std::path::Path;

use rusqlite::{OptionalExtension as _, params};

use super::{Db, DbResult, schema};
use crate::clock::UnixMillis;
use staging_api::ids::{Namespace, ResourceId, Sha256Digest};

use super::usage::NAMED_BY_OWN;

/// `meta` key of the last log entry applied.
const APPLIED: &str = "log_seq";

impl Db {
    /// The sequence number of the last log entry this database reflects (0: none).
    ///
    /// # Errors
    /// SQLite errors, or a corrupt stored value.
    pub async fn applied_seq(&self) -> DbResult<u64> {
        let unreadable = self.unreadable().clone();
        self.call(move |c| {
            let v: Option<String> = c
                .query_row("SELECT value FROM meta WHERE key = ?1", [APPLIED], |r| {
                    r.get(0)
                })
                .optional()?;
            match v {
                None => Ok(0),
                Some(v) => v
                    .parse()
                    .map_err(|_| unreadable.failed("meta", APPLIED, &v)),
            }
        })
        .await
    }

    /// Records that the database reflects the log up to `seq`.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn set_applied_seq(&self, seq: u64) -> DbResult<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![APPLIED, seq.to_string()],
            )?;
            Ok(())
        })
        .await
    }

    /// The pending row of an upload another replica received, so that its commit applies here
    /// as it did there (no quota is checked: the commit checks them). Nothing when the row is
    /// there already (this replica received the upload).
    ///
    /// # Errors
    /// SQLite errors. Returns whether the row was inserted here.
    pub async fn insert_replayed_pending(
        &self,
        id: ResourceId,
        api: String,
        namespace: Option<Namespace>,
        now: UnixMillis,
    ) -> DbResult<bool> {
        self.call(move |c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO resources (id, state, api, namespace, created_at, unused_ttl_ms, expires_at)
                 VALUES (?1, 'pending', ?2, ?3, ?4, 0, 0)",
                params![id.to_string(), api, namespace.as_ref().map(|n| n.as_str().to_owned()), now],
            )? > 0)
        })
        .await
    }

    /// Removes a pending row and nothing else: its bytes are not queued for deletion. For a
    /// replica, whose pending rows may be uploads the shared log committed (a commit whose
    /// outcome this replica could not learn, a run cut short between the log and the
    /// database): the leader's orphan sweep deletes the bytes that no committed row names.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn drop_pending_row(&self, id: ResourceId) -> DbResult<()> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM resources WHERE id = ?1 AND state = 'pending'",
                [id.to_string()],
            )?;
            Ok(())
        })
        .await
    }

    /// Writes a consistent copy of the database to `path` (which must not exist) and returns
    /// the log position it reflects.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn snapshot_into(&self, path: &Path) -> DbResult<u64> {
        let path = path.to_string_lossy().into_owned();
        let unreadable = self.unreadable().clone();
        self.call(move |c| {
            let v: Option<String> = c
                .query_row("SELECT value FROM meta WHERE key = ?1", [APPLIED], |r| {
                    r.get(0)
                })
                .optional()?;
            let seq = match v {
                None => 0,
                Some(v) => v
                    .parse()
                    .map_err(|_| unreadable.failed("meta", APPLIED, &v))?,
            };
            c.execute("VACUUM INTO ?1", [&path])?;
            Ok(seq)
        })
        .await
    }

    /// Replaces the shared state with the snapshot at `path`, or with an empty database when
    /// `None` (`scratch` is where the empty one is made); keeps this replica's own rows (see
    /// the module's documentation). Returns the log position the database now reflects.
    ///
    /// # Errors
    /// SQLite errors; [`DbError::UnknownSchema`] for a snapshot of a newer server.
    pub async fn restore(&self, path: Option<&Path>, scratch: &Path) -> DbResult<u64> {
        let source = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let _ = std::fs::remove_file(scratch);
                drop(schema::open(scratch)?);
                scratch.to_path_buf()
            }
        };
        self.call(move |c| {
            let instance: Option<String> = c
                .query_row(
                    "SELECT value FROM meta WHERE key = 'instance_id'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let queued: Vec<(String, i64)> = {
                let mut stmt = c.prepare("SELECT id, queued_at FROM store_deletions")?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?
            };
            c.restore(
                rusqlite::MAIN_DB,
                &source,
                None::<fn(rusqlite::backup::Progress)>,
            )?;
            schema::migrate(c, &source)?;
            let tx = c.transaction()?;
            tx.execute("DELETE FROM resources WHERE state = 'pending'", [])?;
            tx.execute("DELETE FROM store_deletions", [])?;
            for (id, at) in &queued {
                tx.execute(
                    "INSERT OR IGNORE INTO store_deletions (id, queued_at) VALUES (?1, ?2)",
                    params![id, at],
                )?;
            }
            tx.execute("DELETE FROM meta WHERE key = 'instance_id'", [])?;
            if let Some(i) = instance {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('instance_id', ?1)",
                    [i],
                )?;
            }
            let seq: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = ?1", [APPLIED], |r| {
                    r.get(0)
                })
                .optional()?;
            tx.commit()?;
            // The restore went through the write-ahead log, which would otherwise keep the
            // database's size on disk: give it back, as a best effort (the restore is
            // committed whatever this answers).
            let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            Ok(seq.and_then(|s| s.parse().ok()).unwrap_or(0))
        })
        .await
    }

    /// Whether `namespace` holds a grant (live or not yet collected) on the blob `sha256`: a
    /// release that finds none changes nothing, and is answered without a log entry.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn has_grant(&self, sha256: Sha256Digest, namespace: Namespace) -> DbResult<bool> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT 1 FROM blob_grants WHERE sha256 = ?1 AND namespace = ?2",
                params![sha256.to_hex(), namespace.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await
    }

    /// Whether a collection of unnamed files at `cutoff` would change anything (a grant past
    /// its grace that no submission of its namespace names, or a blob neither granted nor
    /// named).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn has_collectable(&self, cutoff: UnixMillis) -> DbResult<bool> {
        self.call(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT 1 WHERE EXISTS (SELECT 1 FROM blob_grants g
                         WHERE g.granted_at < ?1 AND NOT {NAMED_BY_OWN})
                     OR EXISTS (SELECT 1 FROM blobs b
                         WHERE NOT EXISTS (SELECT 1 FROM blob_grants g WHERE g.sha256 = b.sha256)
                           AND NOT EXISTS (SELECT 1 FROM resource_files f WHERE f.sha256 = b.sha256))"
                ),
                [cutoff],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await
    }

    /// Whether a token row expired before `now` (a pruning would change something).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn has_expired_tokens(&self, now: UnixMillis) -> DbResult<bool> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT 1 FROM tokens WHERE expires_at < ?1 LIMIT 1",
                [now],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await
    }
}
