//! The changes the replicas share, as log entries, and their application to a database.
//!
//! An entry names a change as its replica requested it (the ids, times, quotas and tokens
//! already chosen), never its outcome: every replica applies the entries in log order to the
//! same state and so reaches the same outcome, the refusals included (a commit over a quota is
//! refused everywhere and changes nothing). The replica that wrote an entry learns the
//! outcome by applying it, after every entry before it.

use serde::{Deserialize, Serialize};

use crate::db::{
    BlobCommit, BlobRelease, CommitOutcome, CommitRequest, Db, DbError, Deleted, FileRef,
    FilesCommit, FilesOutcome, Owner, Quotas,
};
use staging_api::ids::{CredentialId, Labels, Namespace, ResourceId, Sha256Digest};

/// One shared change.
///
/// Every kind but three names its origin and a random id, so two writes never encode alike.
/// `Access`, `OwnerSeen` and `PruneTokens` may: two replicas recording one download in the same
/// millisecond write the same bytes. Each of the three leaves the state as once when applied
/// twice, and no caller needs more than that from its outcome, so a write that finds its exact
/// bytes at the position it lost may take that entry for its own (see `log::follow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// A bundle upload committed ([`Db::commit`]).
    Commit {
        /// The replica that received it.
        origin: String,
        /// `v0` or `v1`.
        api: String,
        id: String,
        owner: OwnerRecord,
        size: u64,
        sha256: String,
        now: i64,
        unused_ttl_ms: i64,
        expires_at: i64,
        jti: String,
        quotas: Quotas,
    },
    /// A file of a submission received ([`Db::commit_blob`]).
    CommitBlob {
        origin: String,
        pending: String,
        sha256: String,
        size: u64,
        namespace: String,
        credential: String,
        now: i64,
        quotas: Quotas,
    },
    /// A submission committed ([`Db::commit_files`]).
    CommitFiles {
        origin: String,
        id: String,
        owner: OwnerRecord,
        /// Name and digest of each file.
        files: Vec<(String, String)>,
        manifest: String,
        now: i64,
        unused_ttl_ms: i64,
        expires_at: i64,
        jti: String,
        quotas: Quotas,
    },
    /// A resource deleted, its tokens revoked ([`Db::delete`]).
    Delete {
        origin: String,
        id: String,
        now: i64,
    },
    /// A namespace's unnamed file deleted ([`Db::release_blob`]).
    ReleaseBlob {
        origin: String,
        sha256: String,
        namespace: String,
        now: i64,
    },
    /// A download recorded ([`Db::record_access`]).
    Access { id: String, now: i64 },
    /// Owner pods seen ([`Db::mark_owner_seen`]).
    OwnerSeen { id: String, now: i64 },
    /// Grants past their grace dropped ([`Db::collect_unnamed_blobs`]).
    CollectUnnamed { origin: String, cutoff: i64 },
    /// Expired token rows dropped ([`Db::prune_tokens`]).
    PruneTokens { now: i64 },
}

/// A resource's owner as written in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OwnerRecord {
    namespace: String,
    labels: std::collections::BTreeMap<String, String>,
    pod_uid: Option<String>,
}

impl From<&Owner> for OwnerRecord {
    fn from(o: &Owner) -> Self {
        Self {
            namespace: o.namespace.as_str().to_owned(),
            labels: o.labels.as_map().clone(),
            pod_uid: o.pod_uid.clone(),
        }
    }
}

/// What applying an entry did (the outcome of the request it carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Commit(CommitOutcome),
    CommitBlob(BlobCommit),
    CommitFiles(FilesOutcome),
    Delete(Deleted),
    ReleaseBlob(BlobRelease),
    /// Whether it was the resource's first download.
    Access(bool),
    Collected(Vec<ResourceId>),
    Pruned(usize),
    Done,
}

/// A log entry that does not parse, or names values no replica writes.
#[derive(Debug, thiserror::Error)]
#[error("unreadable log entry {seq}: {what}")]
pub struct BadEntry {
    /// Its position.
    pub seq: u64,
    /// What is wrong.
    pub what: String,
}

/// Why an entry could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error(transparent)]
    Bad(#[from] BadEntry),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Entry {
    /// The entry's bytes in the log.
    pub(crate) fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("entries serialize: plain strings, numbers and maps")
            .into()
    }

    /// Reads the entry at `seq`.
    ///
    /// # Errors
    /// [`BadEntry`] for bytes that are not an entry.
    pub(crate) fn decode(seq: u64, body: &[u8]) -> Result<Self, BadEntry> {
        serde_json::from_slice(body).map_err(|e| BadEntry {
            seq,
            what: e.to_string(),
        })
    }

    /// The replica that wrote the entry, for the changes whose objects that replica deletes.
    pub(crate) fn origin(&self) -> Option<&str> {
        match self {
            Self::Commit { origin, .. }
            | Self::CommitBlob { origin, .. }
            | Self::CommitFiles { origin, .. }
            | Self::Delete { origin, .. }
            | Self::ReleaseBlob { origin, .. }
            | Self::CollectUnnamed { origin, .. } => Some(origin),
            Self::Access { .. } | Self::OwnerSeen { .. } | Self::PruneTokens { .. } => None,
        }
    }

    /// A commit entry from the request the upload pipeline makes.
    pub(crate) fn commit(origin: String, api: &str, req: &CommitRequest) -> Self {
        Self::Commit {
            origin,
            api: api.to_owned(),
            id: req.id.to_string(),
            owner: OwnerRecord::from(&req.owner),
            size: req.size,
            sha256: req.sha256.to_hex(),
            now: req.now,
            unused_ttl_ms: req.unused_ttl_ms,
            expires_at: req.expires_at,
            jti: req.jti.clone(),
            quotas: req.quotas,
        }
    }

    /// A submission entry.
    pub(crate) fn commit_files(origin: String, req: &FilesCommit) -> Self {
        Self::CommitFiles {
            origin,
            id: req.id.to_string(),
            owner: OwnerRecord::from(&req.owner),
            files: req
                .files
                .iter()
                .map(|f| (f.name.clone(), f.sha256.to_hex()))
                .collect(),
            manifest: req.manifest.to_hex(),
            now: req.now,
            unused_ttl_ms: req.unused_ttl_ms,
            expires_at: req.expires_at,
            jti: req.jti.clone(),
            quotas: req.quotas,
        }
    }

    /// Applies the entry to `db`.
    ///
    /// # Errors
    /// [`ApplyError::Bad`] for values no replica writes; database errors.
    pub(crate) async fn apply(self, seq: u64, db: &Db) -> Result<Outcome, ApplyError> {
        let bad = |what: &str| BadEntry {
            seq,
            what: what.to_owned(),
        };
        let id_of = |s: &str| s.parse::<ResourceId>().map_err(|_| bad("resource id"));
        let digest = |s: &str| Sha256Digest::from_hex(s).map_err(|_| bad("digest"));
        let namespace = |s: &str| s.parse::<Namespace>().map_err(|_| bad("namespace"));
        let owner = |o: OwnerRecord| -> Result<Owner, BadEntry> {
            Ok(Owner {
                namespace: namespace(&o.namespace)?,
                labels: Labels::new(o.labels).map_err(|_| bad("labels"))?,
                pod_uid: o.pod_uid,
            })
        };
        Ok(match self {
            Self::Commit {
                origin: _,
                api,
                id,
                owner: o,
                size,
                sha256,
                now,
                unused_ttl_ms,
                expires_at,
                jti,
                quotas,
            } => {
                let id = id_of(&id)?;
                let owner = owner(o)?;
                let replayed = db
                    .insert_replayed_pending(id, api, Some(owner.namespace.clone()), now)
                    .await?;
                let outcome = db
                    .commit(CommitRequest {
                        id,
                        owner,
                        size,
                        sha256: digest(&sha256)?,
                        now,
                        unused_ttl_ms,
                        expires_at,
                        jti,
                        quotas,
                    })
                    .await?;
                // A refused commit leaves nothing: not even the pending row it started from.
                if replayed && outcome != CommitOutcome::Committed {
                    db.drop_pending_row(id).await?;
                }
                Outcome::Commit(outcome)
            }
            Self::CommitBlob {
                origin: _,
                pending,
                sha256,
                size,
                namespace: ns,
                credential,
                now,
                quotas,
            } => Outcome::CommitBlob(
                db.commit_blob(
                    id_of(&pending)?,
                    digest(&sha256)?,
                    size,
                    namespace(&ns)?,
                    CredentialId::from_stored(credential),
                    now,
                    quotas,
                )
                .await?,
            ),
            Self::CommitFiles {
                origin: _,
                id,
                owner: o,
                files,
                manifest,
                now,
                unused_ttl_ms,
                expires_at,
                jti,
                quotas,
            } => {
                let files = files
                    .into_iter()
                    .map(|(name, sha)| {
                        Ok(FileRef {
                            name,
                            sha256: digest(&sha)?,
                        })
                    })
                    .collect::<Result<Vec<_>, BadEntry>>()?;
                Outcome::CommitFiles(
                    db.commit_files(FilesCommit {
                        id: id_of(&id)?,
                        owner: owner(o)?,
                        files,
                        manifest: digest(&manifest)?,
                        now,
                        unused_ttl_ms,
                        expires_at,
                        jti,
                        quotas,
                    })
                    .await?,
                )
            }
            Self::Delete { origin: _, id, now } => {
                Outcome::Delete(db.delete(id_of(&id)?, now).await?)
            }
            Self::ReleaseBlob {
                origin: _,
                sha256,
                namespace: ns,
                now,
            } => Outcome::ReleaseBlob(
                db.release_blob(digest(&sha256)?, namespace(&ns)?, now)
                    .await?,
            ),
            Self::Access { id, now } => Outcome::Access(db.record_access(id_of(&id)?, now).await?),
            Self::OwnerSeen { id, now } => {
                db.mark_owner_seen(id_of(&id)?, now).await?;
                Outcome::Done
            }
            Self::CollectUnnamed { origin: _, cutoff } => {
                Outcome::Collected(db.collect_unnamed_blobs(cutoff).await?)
            }
            Self::PruneTokens { now } => Outcome::Pruned(db.prune_tokens(now).await?),
        })
    }
}

/// The objects whose deletion applying an entry queued: the replica that wrote it deletes
/// them; the others drop them from their queues (the leader's orphan sweep finds any that
/// replica left behind).
pub(crate) fn queued_objects(entry: &Entry, outcome: &Outcome) -> Vec<ResourceId> {
    match (entry, outcome) {
        (Entry::Delete { id, .. }, Outcome::Delete(d)) => {
            let mut v: Vec<ResourceId> = id.parse().into_iter().collect();
            v.extend(d.freed.iter().copied());
            v
        }
        (Entry::CommitBlob { pending, .. }, Outcome::CommitBlob(BlobCommit::Existed)) => {
            pending.parse().into_iter().collect()
        }
        (_, Outcome::ReleaseBlob(BlobRelease::Released(Some(o)))) => vec![*o],
        (_, Outcome::Collected(freed)) => freed.clone(),
        _ => Vec::new(),
    }
}
