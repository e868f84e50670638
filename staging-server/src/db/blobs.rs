//! Content-addressed files: each distinct file is stored once, whatever the number of
//! submissions that name it.
//!
//! - A *blob* is one stored file, keyed by its SHA-256 (table `blobs`, bytes under a fresh
//!   object id, so that a blob deleted and uploaded again never shares an object with its
//!   previous life).
//! - A *grant* lets a namespace reference a blob without sending it: it is recorded when a
//!   caller authorised for that namespace has sent the blob's bytes (verified against the
//!   digest). Knowing a digest is never enough to read a file of another namespace. Each
//!   namespace's grant runs from its own first send: it lives while one of that namespace's
//!   submissions names the blob, or for [`UNNAMED_BLOB_GRACE`] after that send. Sending the
//!   file again while the grant lives does not renew it, so a file no submission names cannot
//!   be kept by sending it every hour. What another namespace does (deleting its last
//!   submission naming the blob) never ends it.
//! - A grant that no submission of its namespace names is *unnamed*: its blob's full size
//!   (at least [`super::MIN_CHARGE`]) is charged to that namespace's quota, to the
//!   capacity, to the namespace's bounds on unnamed bytes and files, and to the bound on
//!   unnamed bytes of the credential that sent it, whether or not another namespace holds the
//!   same content, so that neither a refusal nor a charge tells one tenant what another
//!   stores. The credential's bound does not grow with the namespaces it names: a shared
//!   upload token cannot multiply its allowance by making up namespace names. The namespaces
//!   holding unnamed files are capped, in all and per credential (so that one credential
//!   cannot take every place). Its sender may delete it.
//! - Every change of a grant or a resource updates the running counters (`usage`)
//!   in the same transaction; quota checks read those instead of summing rows.
//! - A *files resource* is a submission: a resource row (api `files`, with its own id, tokens,
//!   owner, quotas and lifetimes, charged the full size of its files) plus one
//!   `resource_files` row per file name.
//!
//! A blob is deleted in the same transaction that removes the last resource naming it or the
//! last live grant on it, whichever goes last; the sweep drops grants past their grace and the
//! blobs left without either.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::quotas::{Quotas, quota_refusal};
use super::usage::{self, NAMED_BY_OWN};
use super::{Db, DbError, DbResult, Owner, UnreadableRows};
use crate::clock::UnixMillis;
use staging_api::ids::{CredentialId, Namespace, ResourceId, Sha256Digest};

/// How long a blob that no submission names yet is kept (the time between sending the files
/// and committing the submission).
pub const UNNAMED_BLOB_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Most files in one submission.
pub const MAX_FILES: usize = 1000;

/// Most dead grants one sweep pass drops (one transaction); the rest go with the next sweep.
pub const COLLECT_BATCH: usize = 10_000;

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
    /// Whether `namespace` may name the blob `sha256` without sending it (its grant is live).
    /// Asking does not renew the grant: an unnamed grant's grace counts from its first send.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn holds(
        &self,
        sha256: Sha256Digest,
        namespace: Namespace,
        now: UnixMillis,
    ) -> DbResult<bool> {
        let cutoff = self.grant_cutoff(now);
        self.call(move |c| Ok(granted(c, &sha256, &namespace, cutoff)?))
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
        let unreadable = self.unreadable.clone();
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
                    drop_grant(&tx, &hex, &namespace)?;
                    let freed = if held(&tx, &hex, cutoff)? {
                        None
                    } else {
                        drop_blob(&tx, &hex, now, &unreadable)?
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
    /// charging it to the namespace and to `credential` (the sender) unless the namespace
    /// holds a live grant already (which is left as it is: a send does not renew a grant).
    /// The work is the same whether or not another namespace stores the content.
    ///
    /// # Errors
    /// SQLite errors.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_blob(
        &self,
        pending: ResourceId,
        sha256: Sha256Digest,
        size: u64,
        namespace: Namespace,
        credential: CredentialId,
        now: UnixMillis,
        quotas: Quotas,
    ) -> DbResult<BlobCommit> {
        let cutoff = self.grant_cutoff(now);
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM resources WHERE id = ?1", [pending.to_string()])?;
            let hex = sha256.to_hex();
            let live = granted(&tx, &sha256, &namespace, cutoff)?;
            if !live {
                // A dead grant not swept yet is replaced by this send.
                drop_grant(&tx, &hex, &namespace)?;
                if let Some(why) =
                    blob_refusal(&tx, &namespace, &credential, usage::charge(size), quotas)?
                {
                    // Rolled back: the caller discards the bytes and the pending row.
                    return Ok(BlobCommit::QuotaExceeded(why));
                }
            }
            let existing: Option<String> = tx
                .query_row("SELECT object_id FROM blobs WHERE sha256 = ?1", [&hex], |r| {
                    r.get(0)
                })
                .optional()?;
            let outcome = if let Some(object) = existing {
                // Never the blob's own bytes (a change applied twice).
                if object != pending.to_string() {
                    tx.execute(
                        "INSERT OR IGNORE INTO store_deletions (id, queued_at) VALUES (?1, ?2)",
                        params![pending.to_string(), now],
                    )?;
                }
                BlobCommit::Existed
            } else {
                tx.execute(
                    "INSERT INTO blobs (sha256, object_id, size, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![hex, pending.to_string(), size as i64, now],
                )?;
                BlobCommit::Stored
            };
            if !live {
                tx.execute(
                    "INSERT INTO blob_grants (sha256, namespace, granted_at, credential)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![hex, namespace.as_str(), now, credential.as_str()],
                )?;
                usage::unnamed(
                    &tx,
                    namespace.as_str(),
                    Some(credential.as_str()),
                    usage::charge(size),
                    true,
                )?;
            }
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
            let mut charge: u64 = 0;
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
                        charge = charge.saturating_add(usage::charge(s));
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
            let mut newly_named = Vec::new();
            let mut seen = HashSet::new();
            for (f, size) in req.files.iter().zip(&sizes) {
                let hex = f.sha256.to_hex();
                if seen.insert(f.sha256)
                    && !named_by(&tx, &hex, ns)?
                    && let Some(credential) = grant_of(&tx, &hex, ns)?
                {
                    newly_named.push((usage::charge(*size), credential));
                }
            }
            let moved: u64 = newly_named.iter().map(|(c, _)| *c).sum();
            if let Some(why) = quota_refusal(&tx, ns, charge.saturating_sub(moved), req.quotas)? {
                return Ok(FilesOutcome::QuotaExceeded(why));
            }
            for (c, credential) in &newly_named {
                usage::unnamed(&tx, ns.as_str(), credential.as_deref(), *c, false)?;
            }
            usage::committed(&tx, ns.as_str(), charge, true)?;
            let labels = serde_json::to_string(req.owner.labels.as_map()).map_err(|e| {
                DbError::Corrupt {
                    table: "resources",
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
    /// SQLite errors, or [`DbError::Corrupt`] for a file row that does not parse (counted): a
    /// submission is served whole or not at all.
    pub async fn files(&self, id: ResourceId) -> DbResult<Vec<StoredFile>> {
        let unreadable = self.unreadable.clone();
        self.call(move |c| {
            // Every file download reads this: prepared once per connection.
            let mut stmt = c.prepare_cached(
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
                let corrupt =
                    |what: &str| unreadable.failed("resource_files", &id.to_string(), what);
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

    /// Drops grants sent before `cutoff` that no submission of their namespace names (at most
    /// [`COLLECT_BATCH`] a call), then the blobs left with neither a grant nor a submission;
    /// returns their objects (queued for deletion in the same transaction).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn collect_unnamed_blobs(&self, cutoff: UnixMillis) -> DbResult<Vec<ResourceId>> {
        let unreadable = self.unreadable.clone();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let dead: Vec<(String, String, Option<String>, i64)> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT g.sha256, g.namespace, g.credential, b.size FROM blob_grants g
                     JOIN blobs b ON b.sha256 = g.sha256
                     WHERE g.granted_at < ?1 AND NOT {NAMED_BY_OWN} LIMIT ?2"
                ))?;
                stmt.query_map(params![cutoff, COLLECT_BATCH as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?
            };
            for (sha, ns, credential, size) in dead {
                tx.execute(
                    "DELETE FROM blob_grants WHERE sha256 = ?1 AND namespace = ?2",
                    params![sha, ns],
                )?;
                let charge = usage::charge(size.max(0) as u64);
                usage::unnamed(&tx, &ns, credential.as_deref(), charge, false)?;
            }
            let shas: Vec<String> = {
                let mut stmt = tx.prepare(
                    "SELECT sha256 FROM blobs b
                     WHERE NOT EXISTS (SELECT 1 FROM blob_grants g WHERE g.sha256 = b.sha256)
                       AND NOT EXISTS (SELECT 1 FROM resource_files f WHERE f.sha256 = b.sha256)
                     LIMIT ?1",
                )?;
                stmt.query_map([COLLECT_BATCH as i64], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            let mut freed = Vec::with_capacity(shas.len());
            for sha in shas {
                if let Some(object) = drop_blob(&tx, &sha, cutoff, &unreadable)? {
                    freed.push(object);
                }
            }
            tx.commit()?;
            Ok(freed)
        })
        .await
    }
}

/// Why charging one more unnamed file of `charge` bytes to `ns` and `credential` would break
/// a bound on unnamed files, a quota or the capacity, if it would. Reads the running counters
/// only.
fn blob_refusal(
    c: &Connection,
    ns: &Namespace,
    credential: &CredentialId,
    charge: u64,
    q: Quotas,
) -> rusqlite::Result<Option<String>> {
    let held = usage::namespace(c, ns)?;
    if let Some(max) = q.unnamed_bytes {
        let used = held.unnamed_bytes;
        if used.saturating_add(charge) > max {
            return Ok(Some(format!(
                "namespace {ns} would hold more than {max} bytes of files not named by a \
                 submission ({used} held, {charge} more); submit or delete them first"
            )));
        }
    }
    if let Some(max) = q.namespace_max_blobs
        && held.unnamed_count >= max
    {
        return Ok(Some(format!(
            "namespace {ns} already holds {max} files not named by a submission; submit or \
             delete them first"
        )));
    }
    if let Some(max) = q.max_unnamed_namespaces
        && held.unnamed_count == 0
        && usage::unnamed_namespaces(c)? >= max
    {
        return Ok(Some(format!(
            "{max} namespaces already hold files not named by a submission (the server's \
             maximum); retry once they are submitted"
        )));
    }
    if let Some(max) = q.credential_max_namespaces
        && usage::pair(c, credential.as_str(), ns)?.unnamed_count == 0
        && usage::credential_namespaces(c, credential.as_str())? >= max
    {
        return Ok(Some(format!(
            "this credential already holds files not named by a submission in {max} \
             namespaces; submit or delete them first"
        )));
    }
    if let Some(max) = q.credential_unnamed_bytes {
        let used = usage::credential(c, credential.as_str())?.unnamed_bytes;
        if used.saturating_add(charge) > max {
            return Ok(Some(format!(
                "this credential would hold more than {max} bytes of files not named by a \
                 submission across its namespaces ({used} held, {charge} more); submit or \
                 delete them first"
            )));
        }
    }
    // The count quota counts submissions, not files.
    quota_refusal(
        c,
        ns,
        charge,
        Quotas {
            namespace_count: None,
            ..q
        },
    )
}

/// The sender of `ns`'s grant on the blob, if it holds one (`Some(None)`: a grant from
/// before senders were recorded).
fn grant_of(c: &Connection, sha: &str, ns: &Namespace) -> rusqlite::Result<Option<Option<String>>> {
    c.query_row(
        "SELECT credential FROM blob_grants WHERE sha256 = ?1 AND namespace = ?2",
        params![sha, ns.as_str()],
        |r| r.get(0),
    )
    .optional()
}

/// Deletes `ns`'s grant on a blob that none of its submissions names (dead or alive), if it
/// holds one, and takes it out of the counters.
fn drop_grant(c: &Connection, sha: &str, ns: &Namespace) -> rusqlite::Result<()> {
    let credential: Option<Option<String>> = c
        .query_row(
            "DELETE FROM blob_grants WHERE sha256 = ?1 AND namespace = ?2 RETURNING credential",
            params![sha, ns.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(credential) = credential {
        let charge = usage::charge(blob_size(c, sha)?);
        usage::unnamed(c, ns.as_str(), credential.as_deref(), charge, false)?;
    }
    Ok(())
}

/// The size of a stored blob (0 for none: a grant never outlives its blob).
fn blob_size(c: &Connection, sha: &str) -> rusqlite::Result<u64> {
    let size: Option<i64> = c
        .query_row("SELECT size FROM blobs WHERE sha256 = ?1", [sha], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(size.unwrap_or(0).max(0) as u64)
}

/// Whether a committed submission of `ns` names the blob.
fn named_by(c: &Connection, sha: &str, ns: &Namespace) -> rusqlite::Result<bool> {
    Ok(c.query_row(
        "SELECT 1 FROM resource_files f JOIN resources r ON r.id = f.resource_id
         WHERE f.sha256 = ?1 AND r.namespace = ?2 LIMIT 1",
        params![sha, ns.as_str()],
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

/// Within the deletion of resource `id` of `namespace` (committed): drops its file rows;
/// grants of the namespace on files no other of its submissions names become unnamed again
/// (counted so; they go with their grace from their first send), and every blob that no
/// other resource names and no namespace holds a live grant on is dropped; returns the
/// objects of those blobs (queued for deletion).
pub(super) fn release(
    c: &Connection,
    id: ResourceId,
    namespace: Option<&str>,
    now: UnixMillis,
    cutoff: UnixMillis,
    unreadable: &UnreadableRows,
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
    let namespace: Option<Namespace> = namespace.and_then(|n| match n.parse() {
        Ok(ns) => Some(ns),
        Err(_) => {
            // Its grants are then left as they are: `Db::usage_drift` shows the difference.
            unreadable.skipped("resources", &id.to_string(), "namespace");
            None
        }
    });
    // A blob another submission names, or that a namespace sent within its grace, stays:
    // one namespace's deletion never takes a blob from another.
    let mut freed = Vec::new();
    for sha in shas {
        if let Some(ns) = &namespace
            && let Some(credential) = grant_of(c, &sha, ns)?
            && !named_by(c, &sha, ns)?
        {
            let charge = usage::charge(blob_size(c, &sha)?);
            usage::unnamed(c, ns.as_str(), credential.as_deref(), charge, true)?;
        }
        if !held(c, &sha, cutoff)?
            && let Some(object) = drop_blob(c, &sha, now, unreadable)?
        {
            freed.push(object);
        }
    }
    Ok(freed)
}

/// Deletes a blob row and its grants (taking them out of the counters) and queues its
/// object's deletion. Only called for a blob no submission names, so every grant on it is
/// unnamed. An object id that does not parse is queued as stored (the queue's reader counts
/// it again) and not returned.
fn drop_blob(
    c: &Connection,
    sha: &str,
    now: UnixMillis,
    unreadable: &UnreadableRows,
) -> rusqlite::Result<Option<ResourceId>> {
    let charge = usage::charge(blob_size(c, sha)?);
    let grants: Vec<(String, Option<String>)> = {
        let mut stmt =
            c.prepare("DELETE FROM blob_grants WHERE sha256 = ?1 RETURNING namespace, credential")?;
        stmt.query_map([sha], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    for (ns, credential) in grants {
        usage::unnamed(c, &ns, credential.as_deref(), charge, false)?;
    }
    let object: Option<String> = c
        .query_row(
            "DELETE FROM blobs WHERE sha256 = ?1 RETURNING object_id",
            [sha],
            |r| r.get(0),
        )
        .optional()?;
    let Some(object) = object else {
        return Ok(None);
    };
    c.execute(
        "INSERT OR IGNORE INTO store_deletions (id, queued_at) VALUES (?1, ?2)",
        params![object, now],
    )?;
    match object.parse() {
        Ok(id) => Ok(Some(id)),
        Err(_) => {
            unreadable.skipped("blobs", sha, "object id");
            Ok(None)
        }
    }
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
