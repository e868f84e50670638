//! Resources: a bundle or a submission, `pending` while its bytes stream in and `committed` in
//! the transaction that checks the quotas and records its first token; its owner, lifetimes
//! and downloads; what is due for deletion; and the counts the gauges publish.

use rusqlite::{Connection, OptionalExtension, params};

use super::quotas::{Headroom, Quotas, quota_refusal};
use super::{Db, DbError, DbResult, Owner, UnreadableRows, parse_ids, usage};
use crate::clock::UnixMillis;
use staging_api::ids::{CredentialId, Namespace, ResourceId, Sha256Digest};

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

/// A page of [`Db::owned`].
#[derive(Debug, Clone, Default)]
pub struct OwnedPage {
    /// The resources of the page that could be read.
    pub resources: Vec<OwnedResource>,
    /// Rows the page read, those left out as unreadable included: the next page starts this
    /// many rows further, and a page that read fewer than it asked for is the last.
    pub read: usize,
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
                let used = usage::namespace(&tx, ns)?;
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
                && usage::total(&tx)?.bytes() >= cap
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
                let used = usage::namespace(c, ns)?;
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
                    usage::credential(c, id.as_str())?.unnamed_bytes,
                    "this credential's bound on files not named by a submission",
                );
            }
            if let Some(cap) = quotas.capacity {
                limit(cap, usage::total(c)?.bytes(), "the capacity");
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
            let charge = usage::charge(req.size);
            if let Some(why) = quota_refusal(&tx, ns, charge, req.quotas)? {
                return Ok(CommitOutcome::QuotaExceeded(why));
            }
            let labels =
                serde_json::to_string(req.owner.labels.as_map()).map_err(|e| DbError::Corrupt {
                    table: "resources",
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
            usage::committed(&tx, ns.as_str(), charge, true)?;
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
        let unreadable = self.unreadable.clone();
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
                    params![id.to_string(), usage::MIN_CHARGE as i64],
                    |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)),
                )
                .optional()?;
            let n = tx.execute("DELETE FROM resources WHERE id = ?1", [id.to_string()])?;
            if let Some((ns, charge)) = &committed {
                usage::committed(&tx, ns, *charge, false)?;
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
            let freed =
                super::blobs::release(&tx, id, namespace.as_deref(), now, cutoff, &unreadable)?;
            tx.commit()?;
            Ok(Deleted {
                existed: n > 0,
                freed,
            })
        })
        .await
    }

    /// A committed resource.
    ///
    /// # Errors
    /// SQLite errors, or [`DbError::Corrupt`] for an unparsable row (counted).
    pub async fn get(&self, id: ResourceId) -> DbResult<Option<Resource>> {
        let unreadable = self.unreadable.clone();
        self.call(move |c| load_resource(c, id, &unreadable)).await
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
    /// A row whose id does not parse is logged, counted and left out.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn expired(
        &self,
        now: UnixMillis,
        limit: usize,
    ) -> DbResult<Vec<(ResourceId, ExpiryReason)>> {
        let unreadable = self.unreadable.clone();
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
                let Ok(id) = id.parse() else {
                    unreadable.skipped("resources", &id, "id");
                    continue;
                };
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
    /// at most `limit` after the first `offset`. A row that does not parse (or has no commit
    /// time) is logged, counted and left out of the page, never read as a default that would
    /// decide its deletion.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn owned(&self, offset: usize, limit: usize) -> DbResult<OwnedPage> {
        let unreadable = self.unreadable.clone();
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
            let mut page = OwnedPage {
                resources: Vec::new(),
                read: 0,
            };
            for row in rows {
                let row = row?;
                page.read += 1;
                match owned_resource(&row) {
                    Ok(r) => page.resources.push(r),
                    Err(what) => unreadable.skipped("resources", &row.0, what),
                }
            }
            Ok(page)
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

    /// Pending rows: uploads interrupted by a crash (only called before serving starts). A row
    /// whose id does not parse is logged, counted and left out.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn pending(&self) -> DbResult<Vec<ResourceId>> {
        let unreadable = self.unreadable.clone();
        self.call(move |c| {
            let mut stmt = c.prepare("SELECT id FROM resources WHERE state = 'pending'")?;
            parse_ids(
                stmt.query_map([], |r| r.get::<_, String>(0))?,
                &unreadable,
                "resources",
            )
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

    /// Accounts whose running counters of charges differ from a recount of the rows, with
    /// both values; empty when they are right. A check for tests and operators: it scans
    /// every resource and grant.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn usage_drift(&self) -> DbResult<Vec<String>> {
        self.call(|c| Ok(usage::drift(c)?)).await
    }

    /// What a namespace is charged, from the running counters.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn usage(&self, namespace: Namespace) -> DbResult<usage::Usage> {
        self.call(move |c| Ok(usage::namespace(c, &namespace)?))
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

/// A row of [`Db::owned`]: id, namespace, labels, owner pod uid, commit and first-seen times.
type OwnedRow = (
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// Parses a row of [`Db::owned`], or names what does not parse.
fn owned_resource(row: &OwnedRow) -> Result<OwnedResource, &'static str> {
    Ok(OwnedResource {
        id: row.0.parse().map_err(|_| "id")?,
        owner: Owner {
            namespace: row.1.parse().map_err(|_| "namespace")?,
            labels: serde_json::from_str(&row.2).map_err(|_| "labels")?,
            pod_uid: row.3.clone(),
        },
        committed_at: row.4.ok_or("committed_at")?,
        owner_seen_at: row.5,
    })
}

/// A committed resource; a row that does not parse is counted and fails the read.
pub(super) fn load_resource(
    c: &Connection,
    id: ResourceId,
    unreadable: &UnreadableRows,
) -> DbResult<Option<Resource>> {
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
                r.get::<_, Option<String>>(2)?,
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
    let corrupt = |what: &str| unreadable.failed("resources", &row.0, what);
    Ok(Some(Resource {
        id: row.0.parse().map_err(|_| corrupt("id"))?,
        api: row.1.clone(),
        owner: Owner {
            namespace: row
                .2
                .as_deref()
                .and_then(|ns| ns.parse().ok())
                .ok_or_else(|| corrupt("namespace"))?,
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
