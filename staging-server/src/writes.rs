//! The changes of the shared state, in one place: through the replicas' shared log when the
//! server runs `--replicated` (`crate::replica`), else straight on the database. Every request
//! handler and background task changes resources, grants and tokens through these methods;
//! what is this replica's own (pending uploads, the queue of object deletions) stays on the
//! database.

use crate::clock::UnixMillis;
use crate::db::{
    BlobCommit, BlobRelease, CommitOutcome, CommitRequest, Deleted, FilesCommit, FilesOutcome,
    Quotas,
};
use crate::replica::{Entry, Outcome, WriteError};
use crate::state::AppState;
use staging_api::ids::{CredentialId, Namespace, ResourceId, Sha256Digest};

/// Writes `entry` in a task of its own, so that a request handler dropped mid-way (its client
/// gone) never stops a write between the log and the database.
async fn write_to_the_log(
    r: &std::sync::Arc<crate::replica::Replica>,
    entry: Entry,
) -> Result<Outcome, WriteError> {
    let r = std::sync::Arc::clone(r);
    tokio::spawn(async move { r.write(entry).await })
        .await
        .map_err(|e| WriteError::Db(crate::db::DbError::Join(e)))?
}

/// An outcome of the wrong kind: applying an entry always gives its own kind.
fn mismatch(what: &str, got: &Outcome) -> WriteError {
    WriteError::Bad(crate::replica::BadEntry {
        seq: 0,
        what: format!("{what} applied as {got:?}"),
    })
}

impl AppState {
    /// The files of a submission whose namespace holds no live grant here (in order, once).
    async fn missing_files(&self, req: &FilesCommit) -> Result<Vec<Sha256Digest>, WriteError> {
        let mut missing = Vec::new();
        for f in &req.files {
            if !missing.contains(&f.sha256)
                && !self
                    .db()
                    .holds(f.sha256, req.owner.namespace.clone(), req.now)
                    .await?
            {
                missing.push(f.sha256);
            }
        }
        Ok(missing)
    }

    fn origin(&self) -> String {
        self.replica()
            .map_or_else(String::new, |r| r.id().to_owned())
    }

    /// Commits a bundle upload (`api`: `v0` or `v1`) with its first token, checking quotas.
    ///
    /// # Errors
    /// Database or shared-log failures.
    pub(crate) async fn commit(
        &self,
        api: &str,
        req: CommitRequest,
    ) -> Result<CommitOutcome, WriteError> {
        let Some(r) = self.replica() else {
            return Ok(self.db().commit(req).await?);
        };
        match write_to_the_log(r, Entry::commit(self.origin(), api, &req)).await? {
            Outcome::Commit(o) => Ok(o),
            other => Err(mismatch("commit", &other)),
        }
    }

    /// Makes a finished upload the file `sha256` granted to `namespace`.
    ///
    /// # Errors
    /// Database or shared-log failures.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit_blob(
        &self,
        pending: ResourceId,
        sha256: Sha256Digest,
        size: u64,
        namespace: Namespace,
        credential: CredentialId,
        now: UnixMillis,
        quotas: Quotas,
    ) -> Result<BlobCommit, WriteError> {
        let Some(r) = self.replica() else {
            return Ok(self
                .db()
                .commit_blob(pending, sha256, size, namespace, credential, now, quotas)
                .await?);
        };
        let entry = Entry::CommitBlob {
            origin: self.origin(),
            pending: pending.to_string(),
            sha256: sha256.to_hex(),
            size,
            namespace: namespace.as_str().to_owned(),
            credential: credential.as_str().to_owned(),
            now,
            quotas,
        };
        match write_to_the_log(r, entry).await? {
            Outcome::CommitBlob(o) => Ok(o),
            other => Err(mismatch("file", &other)),
        }
    }

    /// Commits a submission.
    ///
    /// # Errors
    /// Database or shared-log failures.
    pub(crate) async fn commit_files(&self, req: FilesCommit) -> Result<FilesOutcome, WriteError> {
        let Some(r) = self.replica() else {
            return Ok(self.db().commit_files(req).await?);
        };
        // Files this replica does not see granted, after reading the log: refused without a
        // log entry (a refusal changes nothing).
        let mut missing = self.missing_files(&req).await?;
        if !missing.is_empty() {
            r.refresh().await?;
            missing = self.missing_files(&req).await?;
            if !missing.is_empty() {
                return Ok(FilesOutcome::Missing(missing));
            }
        }
        match write_to_the_log(r, Entry::commit_files(self.origin(), &req)).await? {
            Outcome::CommitFiles(o) => Ok(o),
            other => Err(mismatch("submission", &other)),
        }
    }

    /// Deletes a committed resource and revokes its tokens (see [`crate::db::Db::delete`]).
    ///
    /// # Errors
    /// Database or shared-log failures.
    pub(crate) async fn delete_resource(
        &self,
        id: ResourceId,
        now: UnixMillis,
    ) -> Result<Deleted, WriteError> {
        let Some(r) = self.replica() else {
            return Ok(self.db().delete(id, now).await?);
        };
        let entry = Entry::Delete {
            origin: self.origin(),
            id: id.to_string(),
            now,
        };
        match write_to_the_log(r, entry).await? {
            Outcome::Delete(o) => Ok(o),
            other => Err(mismatch("deletion", &other)),
        }
    }

    /// Deletes a namespace's file that none of its submissions names.
    ///
    /// # Errors
    /// Database or shared-log failures.
    pub(crate) async fn release_blob(
        &self,
        sha256: Sha256Digest,
        namespace: Namespace,
        now: UnixMillis,
    ) -> Result<BlobRelease, WriteError> {
        let Some(r) = self.replica() else {
            return Ok(self.db().release_blob(sha256, namespace, now).await?);
        };
        if !self.db().has_grant(sha256, namespace.clone()).await? {
            r.refresh().await?;
            if !self.db().has_grant(sha256, namespace.clone()).await? {
                return Ok(BlobRelease::NotHeld);
            }
        }
        let entry = Entry::ReleaseBlob {
            origin: self.origin(),
            sha256: sha256.to_hex(),
            namespace: namespace.as_str().to_owned(),
            now,
        };
        match write_to_the_log(r, entry).await? {
            Outcome::ReleaseBlob(o) => Ok(o),
            other => Err(mismatch("file release", &other)),
        }
    }

    /// Records a download; whether it was the first.
    ///
    /// # Errors
    /// Database or shared-log failures.
    pub(crate) async fn record_access(
        &self,
        id: ResourceId,
        now: UnixMillis,
    ) -> Result<bool, WriteError> {
        let Some(r) = self.replica() else {
            return Ok(self.db().record_access(id, now).await?);
        };
        let entry = Entry::Access {
            id: id.to_string(),
            now,
        };
        match write_to_the_log(r, entry).await? {
            Outcome::Access(first) => Ok(first),
            other => Err(mismatch("access", &other)),
        }
    }

    /// Records that a resource's owner pods were seen.
    ///
    /// # Errors
    /// Database or shared-log failures.
    pub(crate) async fn mark_owner_seen(
        &self,
        id: ResourceId,
        now: UnixMillis,
    ) -> Result<(), WriteError> {
        let Some(r) = self.replica() else {
            return Ok(self.db().mark_owner_seen(id, now).await?);
        };
        let entry = Entry::OwnerSeen {
            id: id.to_string(),
            now,
        };
        write_to_the_log(r, entry).await.map(|_| ())
    }

    /// Drops grants past their grace and the files left without one; the objects to delete.
    ///
    /// # Errors
    /// Database or shared-log failures.
    pub(crate) async fn collect_unnamed_blobs(
        &self,
        cutoff: UnixMillis,
    ) -> Result<Vec<ResourceId>, WriteError> {
        let Some(r) = self.replica() else {
            return Ok(self.db().collect_unnamed_blobs(cutoff).await?);
        };
        if !self.db().has_collectable(cutoff).await? {
            return Ok(Vec::new());
        }
        let entry = Entry::CollectUnnamed {
            origin: self.origin(),
            cutoff,
        };
        match write_to_the_log(r, entry).await? {
            Outcome::Collected(o) => Ok(o),
            other => Err(mismatch("collection", &other)),
        }
    }

    /// Drops token rows past their expiry.
    ///
    /// # Errors
    /// Database or shared-log failures.
    pub(crate) async fn prune_tokens(&self, now: UnixMillis) -> Result<usize, WriteError> {
        let Some(r) = self.replica() else {
            return Ok(self.db().prune_tokens(now).await?);
        };
        if !self.db().has_expired_tokens(now).await? {
            return Ok(0);
        }
        match write_to_the_log(r, Entry::PruneTokens { now }).await? {
            Outcome::Pruned(n) => Ok(n),
            other => Err(mismatch("token pruning", &other)),
        }
    }
}
