//! Content-addressed files: each distinct file is stored once, whatever the number of
//! submissions that name it.
//!
//! - A *blob* is one stored file, keyed by its SHA-256 (table `blobs`, bytes under a fresh
//!   object id, so that a blob deleted and uploaded again never shares an object with its
//!   previous life).
//! - A *grant* lets a namespace reference a blob without sending it: it is recorded when a
//!   caller authorised for that namespace has sent the blob's bytes (verified against the
//!   digest). Knowing a digest is never enough to read a file of another namespace. Each
//!   namespace's grant runs from its own send: it lives while one of that namespace's
//!   submissions names the blob, or for [`UNNAMED_BLOB_GRACE`] after its last send. What
//!   another namespace does (deleting its last submission naming the blob) never ends it.
//! - A grant that no submission of its namespace names is *unnamed*: its blob's full size is
//!   charged to that namespace's quota, to the capacity and to the namespace's bound on unnamed
//!   bytes, whether or not another namespace holds the same content, so that neither a
//!   refusal nor a charge tells one tenant what another stores. Its sender may delete it.
//! - A *files resource* is a submission: a resource row (api `files`, with its own id, tokens,
//!   owner, quotas and lifetimes, charged the full size of its files) plus one
//!   `resource_files` row per file name.
//!
//! A blob is deleted in the same transaction that removes the last resource naming it or the
//! last live grant on it, whichever goes last; the sweep drops grants past their grace and the
//! blobs left without either.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::clock::UnixMillis;
use crate::db::{Db, DbError, DbResult, Owner, Quotas, quota_refusal};
use crate::ids::{Namespace, ResourceId, Sha256Digest};

/// How long a blob that no submission names yet is kept (the time between sending the files
/// and committing the submission).
pub const UNNAMED_BLOB_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Most files in one submission.
pub const MAX_FILES: usize = 1000;

/// One file of a files resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Name in the destination directory.
    pub name: String,
    /// Content digest.
    pub sha256: Sha256Digest,
    /// Size in bytes.
    pub size: u64,
    /// Object holding the bytes.
    pub object: ResourceId,
}

/// A file named by a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Name (validated).
    pub name: String,
    /// Digest of the content.
    pub sha256: Sha256Digest,
}

/// What committing a blob upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCommit {
    /// The bytes are now the blob.
    Stored,
    /// The blob existed already (another namespace's or a concurrent upload); the new bytes
    /// are queued for deletion.
    Existed,
    /// A quota, the capacity or the namespace's bound on unnamed bytes would be exceeded;
    /// nothing was recorded.
    QuotaExceeded(String),
}

/// What deleting a namespace's unnamed blob did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobRelease {
    /// The namespace's grant is gone; the object to delete when no one else held the blob.
    Released(Option<ResourceId>),
    /// The namespace holds no grant on this digest.
    NotHeld,
    /// A submission of the namespace names the blob: delete the submission instead.
    Named,
}

impl Db {
    /// The oldest send time at which a grant is still live at `now`.
    pub(crate) fn grant_cutoff(&self, now: UnixMillis) -> UnixMillis {
        now.saturating_sub(crate::clock::duration_ms(self.unnamed_grace()))
    }
}

/// SQL condition: grant `g` is named by a committed submission of its own namespace.
const NAMED_BY_OWN: &str = "EXISTS (SELECT 1 FROM resource_files f JOIN resources r
    ON r.id = f.resource_id WHERE f.sha256 = g.sha256 AND r.namespace = g.namespace)";

/// A submission to commit.
#[derive(Debug, Clone)]
pub struct FilesCommit {
    /// New resource id.
    pub id: ResourceId,
    /// Owner.
    pub owner: Owner,
    /// Files, names unique.
    pub files: Vec<FileRef>,
    /// Digest of the manifest (names and digests).
    pub manifest: Sha256Digest,
    /// Commit time.
    pub now: UnixMillis,
    /// Unused TTL.
    pub unused_ttl_ms: i64,
    /// Absolute expiry.
    pub expires_at: UnixMillis,
    /// First token id.
    pub jti: String,
    /// Quotas.
    pub quotas: Quotas,
}

/// Outcome of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesOutcome {
    /// Committed, with its total size.
    Committed(u64),
    /// These digests are not available to the namespace: send them first.
    Missing(Vec<Sha256Digest>),
    /// A quota or the capacity would be exceeded.
    QuotaExceeded(String),
}

impl Db {
    /// Whether `namespace` may name the blob `sha256` without sending it (its grant is live);
    /// if so, the grant's grace starts again from `now` (the namespace asked for it again).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn touch_grant(
        &self,
        sha256: Sha256Digest,
        namespace: Namespace,
        now: UnixMillis,
    ) -> DbResult<bool> {
        let cutoff = self.grant_cutoff(now);
        self.call(move |c| {
            if !granted(c, &sha256, &namespace, cutoff)? {
                return Ok(false);
            }
            c.execute(
                "UPDATE blob_grants SET granted_at = MAX(granted_at, ?3)
                 WHERE sha256 = ?1 AND namespace = ?2",
                params![sha256.to_hex(), namespace.as_str(), now],
            )?;
            Ok(true)
        })
        .await
    }

    /// Deletes `namespace`'s grant on a blob that none of its submissions names; the blob goes
    /// too when no other live grant and no submission holds it (its object is returned, queued
    /// for deletion).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn release_blob(
        &self,
        sha256: Sha256Digest,
        namespace: Namespace,
        now: UnixMillis,
    ) -> DbResult<BlobRelease> {
        let cutoff = self.grant_cutoff(now);
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let hex = sha256.to_hex();
            let named: Option<bool> = tx
                .query_row(
                    &format!(
                        "SELECT {NAMED_BY_OWN} FROM blob_grants g
                         WHERE g.sha256 = ?1 AND g.namespace = ?2"
                    ),
                    params![hex, namespace.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            let outcome = match named {
                None => BlobRelease::NotHeld,
                Some(true) => BlobRelease::Named,
                Some(false) => {
                    tx.execute(
                        "DELETE FROM blob_grants WHERE sha256 = ?1 AND namespace = ?2",
                        params![hex, namespace.as_str()],
                    )?;
                    let freed = if held(&tx, &hex, cutoff)? {
                        None
                    } else {
                        drop_blob(&tx, &hex, now)?
                    };
                    BlobRelease::Released(freed)
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    /// Turns a finished pending upload into the blob `sha256` and grants it to `namespace`,
    /// charging its size to the namespace unless the namespace holds a live grant already.
    /// The work is the same whether or not another namespace stores the content.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn commit_blob(
        &self,
        pending: ResourceId,
        sha256: Sha256Digest,
        size: u64,
        namespace: Namespace,
        now: UnixMillis,
        quotas: Quotas,
    ) -> DbResult<BlobCommit> {
        let cutoff = self.grant_cutoff(now);
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM resources WHERE id = ?1", [pending.to_string()])?;
            let hex = sha256.to_hex();
            if !granted(&tx, &sha256, &namespace, cutoff)? {
                // A dead grant not swept yet is replaced by this send.
                tx.execute(
                    "DELETE FROM blob_grants WHERE sha256 = ?1 AND namespace = ?2",
                    params![hex, namespace.as_str()],
                )?;
                if let Some(why) = blob_refusal(&tx, &namespace, size, quotas)? {
                    // Rolled back: the caller discards the bytes and the pending row.
                    return Ok(BlobCommit::QuotaExceeded(why));
                }
            }
            let exists = tx
                .query_row("SELECT 1 FROM blobs WHERE sha256 = ?1", [&hex], |_| Ok(()))
                .optional()?
                .is_some();
            let outcome = if exists {
                tx.execute(
                    "INSERT OR IGNORE INTO store_deletions (id, queued_at) VALUES (?1, ?2)",
                    params![pending.to_string(), now],
                )?;
                BlobCommit::Existed
            } else {
                tx.execute(
                    "INSERT INTO blobs (sha256, object_id, size, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![hex, pending.to_string(), size as i64, now],
                )?;
                BlobCommit::Stored
            };
            tx.execute(
                "INSERT INTO blob_grants (sha256, namespace, granted_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (sha256, namespace) DO UPDATE SET granted_at = MAX(granted_at, ?3)",
                params![hex, namespace.as_str(), now],
            )?;
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    /// Commits a submission: checks that every blob is granted to the owner's namespace and
    /// the quotas, then records the resource, its files and its first token in one
    /// transaction.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn commit_files(&self, req: FilesCommit) -> DbResult<FilesOutcome> {
        let cutoff = self.grant_cutoff(req.now);
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let ns = &req.owner.namespace;
            let mut missing = Vec::new();
            let mut total: u64 = 0;
            let mut sizes = Vec::with_capacity(req.files.len());
            for f in &req.files {
                let size: Option<i64> = tx
                    .query_row(
                        &format!(
                            "SELECT b.size FROM blobs b JOIN blob_grants g ON g.sha256 = b.sha256
                             WHERE b.sha256 = ?1 AND g.namespace = ?2
                               AND (g.granted_at >= ?3 OR {NAMED_BY_OWN})"
                        ),
                        params![f.sha256.to_hex(), ns.as_str(), cutoff],
                        |r| r.get(0),
                    )
                    .optional()?;
                match size {
                    Some(s) => {
                        let s = s.max(0) as u64;
                        total = total.saturating_add(s);
                        sizes.push(s);
                    }
                    None if !missing.contains(&f.sha256) => missing.push(f.sha256),
                    None => {}
                }
            }
            if !missing.is_empty() {
                return Ok(FilesOutcome::Missing(missing));
            }
            // Files this namespace sent and names now for the first time stop being charged
            // as unnamed once committed: charge only the rest of the submission on top.
            let newly_named: u64 = {
                let mut seen = HashSet::new();
                let mut n: u64 = 0;
                for (f, size) in req.files.iter().zip(&sizes) {
                    if seen.insert(f.sha256) && !named_by(&tx, &f.sha256, ns)? {
                        n = n.saturating_add(*size);
                    }
                }
                n
            };
            if let Some(why) =
                quota_refusal(&tx, ns, total.saturating_sub(newly_named), req.quotas)?
            {
                return Ok(FilesOutcome::QuotaExceeded(why));
            }
            let labels = serde_json::to_string(req.owner.labels.as_map()).map_err(|e| {
                DbError::Corrupt {
                    id: req.id.to_string(),
                    what: e.to_string(),
                }
            })?;
            tx.execute(
                "INSERT INTO resources (id, state, api, namespace, labels, owner_pod_uid, size,
                        sha256, created_at, committed_at, unused_ttl_ms, expires_at)
                 VALUES (?1, 'committed', 'files', ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
                params![
                    req.id.to_string(),
                    ns.as_str(),
                    labels,
                    req.owner.pod_uid,
                    total as i64,
                    req.manifest.to_hex(),
                    req.now,
                    req.unused_ttl_ms,
                    req.expires_at,
                ],
            )?;
            for (f, size) in req.files.iter().zip(sizes) {
                tx.execute(
                    "INSERT INTO resource_files (resource_id, name, sha256, size) VALUES (?1, ?2, ?3, ?4)",
                    params![req.id.to_string(), f.name, f.sha256.to_hex(), size as i64],
                )?;
                tx.execute(
                    "UPDATE blobs SET referenced_at = ?2 WHERE sha256 = ?1",
                    params![f.sha256.to_hex(), req.now],
                )?;
            }
            tx.execute(
                "INSERT INTO tokens (jti, resource_id, expires_at) VALUES (?1, ?2, ?3)",
                params![req.jti, req.id.to_string(), req.expires_at],
            )?;
            tx.commit()?;
            Ok(FilesOutcome::Committed(total))
        })
        .await
    }

    /// The files of a resource, by name (empty for a bundle).
    ///
    /// # Errors
    /// SQLite errors, or a corrupt row.
    pub async fn files(&self, id: ResourceId) -> DbResult<Vec<StoredFile>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT f.name, f.sha256, f.size, b.object_id FROM resource_files f
                 JOIN blobs b ON b.sha256 = f.sha256 WHERE f.resource_id = ?1 ORDER BY f.name",
            )?;
            let rows = stmt.query_map([id.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, sha, size, object) = row?;
                let corrupt = |what: &str| DbError::Corrupt {
                    id: id.to_string(),
                    what: what.to_owned(),
                };
                out.push(StoredFile {
                    name,
                    sha256: Sha256Digest::from_hex(&sha).map_err(|_| corrupt("file digest"))?,
                    size: size.max(0) as u64,
                    object: object.parse().map_err(|_| corrupt("file object id"))?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Drops grants sent before `cutoff` that no submission of their namespace names, then
    /// the blobs left with neither a grant nor a submission; returns their objects (queued
    /// for deletion in the same transaction).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn collect_unnamed_blobs(&self, cutoff: UnixMillis) -> DbResult<Vec<ResourceId>> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                &format!(
                    "DELETE FROM blob_grants AS g WHERE g.granted_at < ?1 AND NOT {NAMED_BY_OWN}"
                ),
                [cutoff],
            )?;
            let shas: Vec<String> = {
                let mut stmt = tx.prepare(
                    "SELECT sha256 FROM blobs b
                     WHERE NOT EXISTS (SELECT 1 FROM blob_grants g WHERE g.sha256 = b.sha256)
                       AND NOT EXISTS (SELECT 1 FROM resource_files f WHERE f.sha256 = b.sha256)
                     LIMIT 1000",
                )?;
                stmt.query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            let mut freed = Vec::with_capacity(shas.len());
            for sha in shas {
                if let Some(object) = drop_blob(&tx, &sha, cutoff)? {
                    freed.push(object);
                }
            }
            tx.commit()?;
            Ok(freed)
        })
        .await
    }
}

/// Bytes of the blobs sent by `ns` (or by anyone) that no submission of the sending namespace
/// names, each counted once per namespace holding it.
pub(crate) fn unnamed_bytes(c: &Connection, ns: Option<&Namespace>) -> rusqlite::Result<u64> {
    let sql = format!(
        "SELECT COALESCE(SUM(b.size), 0) FROM blob_grants g JOIN blobs b ON b.sha256 = g.sha256
         WHERE (?1 IS NULL OR g.namespace = ?1) AND NOT {NAMED_BY_OWN}"
    );
    let v: i64 = c.query_row(&sql, [ns.map(Namespace::as_str)], |r| r.get(0))?;
    Ok(v.max(0) as u64)
}

/// Why charging `size` more unnamed bytes to `ns` would break a quota, the capacity or the
/// bound on unnamed bytes, if it would.
fn blob_refusal(
    c: &Connection,
    ns: &Namespace,
    size: u64,
    q: Quotas,
) -> rusqlite::Result<Option<String>> {
    if let Some(max) = q.unnamed_bytes {
        let used = unnamed_bytes(c, Some(ns))?;
        if used.saturating_add(size) > max {
            return Ok(Some(format!(
                "namespace {ns} would hold more than {max} bytes of files not named by a \
                 submission ({used} held, {size} more); submit or delete them first"
            )));
        }
    }
    // The count quota counts submissions, not files.
    quota_refusal(
        c,
        ns,
        size,
        Quotas {
            namespace_count: None,
            ..q
        },
    )
}

/// Whether a committed submission of `ns` names the blob.
fn named_by(c: &Connection, sha256: &Sha256Digest, ns: &Namespace) -> rusqlite::Result<bool> {
    Ok(c.query_row(
        "SELECT 1 FROM resource_files f JOIN resources r ON r.id = f.resource_id
         WHERE f.sha256 = ?1 AND r.namespace = ?2 LIMIT 1",
        params![sha256.to_hex(), ns.as_str()],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// Whether anything keeps the blob: a submission naming it or a live grant.
fn held(c: &Connection, sha: &str, cutoff: UnixMillis) -> rusqlite::Result<bool> {
    Ok(c.query_row(
        &format!(
            "SELECT 1 FROM resource_files WHERE sha256 = ?1
             UNION ALL SELECT 1 FROM blob_grants g
             WHERE g.sha256 = ?1 AND (g.granted_at >= ?2 OR {NAMED_BY_OWN})
             LIMIT 1"
        ),
        params![sha, cutoff],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// Whether `ns` holds a live grant on the blob.
fn granted(
    c: &Connection,
    sha256: &Sha256Digest,
    ns: &Namespace,
    cutoff: UnixMillis,
) -> rusqlite::Result<bool> {
    Ok(c.query_row(
        &format!(
            "SELECT 1 FROM blobs b JOIN blob_grants g ON g.sha256 = b.sha256
             WHERE b.sha256 = ?1 AND g.namespace = ?2 AND (g.granted_at >= ?3 OR {NAMED_BY_OWN})"
        ),
        params![sha256.to_hex(), ns.as_str(), cutoff],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// Within the deletion of resource `id`: drops its file rows and every blob that no other
/// resource names and no namespace holds a live grant on; returns the objects of those blobs
/// (queued for deletion).
pub(crate) fn release(
    c: &Connection,
    id: ResourceId,
    now: UnixMillis,
    cutoff: UnixMillis,
) -> rusqlite::Result<Vec<ResourceId>> {
    let shas: Vec<String> = {
        let mut stmt =
            c.prepare("SELECT DISTINCT sha256 FROM resource_files WHERE resource_id = ?1")?;
        stmt.query_map([id.to_string()], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    if shas.is_empty() {
        return Ok(Vec::new());
    }
    c.execute(
        "DELETE FROM resource_files WHERE resource_id = ?1",
        [id.to_string()],
    )?;
    // A blob another submission names, or that a namespace sent within its grace, stays:
    // one namespace's deletion never takes a blob from another.
    let mut freed = Vec::new();
    for sha in shas {
        if !held(c, &sha, cutoff)?
            && let Some(object) = drop_blob(c, &sha, now)?
        {
            freed.push(object);
        }
    }
    Ok(freed)
}

/// Deletes a blob row and its grants and queues its object's deletion.
fn drop_blob(c: &Connection, sha: &str, now: UnixMillis) -> rusqlite::Result<Option<ResourceId>> {
    let object: Option<String> = c
        .query_row(
            "DELETE FROM blobs WHERE sha256 = ?1 RETURNING object_id",
            [sha],
            |r| r.get(0),
        )
        .optional()?;
    c.execute("DELETE FROM blob_grants WHERE sha256 = ?1", [sha])?;
    let Some(object) = object else {
        return Ok(None);
    };
    c.execute(
        "INSERT OR IGNORE INTO store_deletions (id, queued_at) VALUES (?1, ?2)",
        params![object, now],
    )?;
    Ok(object.parse().ok())
}

/// The digest of a submission's manifest: `name NUL sha256-hex LF` per file, in name order.
#[must_use]
pub fn manifest_digest(files: &[FileRef]) -> Sha256Digest {
    use sha2::{Digest as _, Sha256};
    let mut sorted: Vec<&FileRef> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for f in sorted {
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.sha256.to_hex().as_bytes());
        h.update(b"\n");
    }
    Sha256Digest(h.finalize().into())
}
