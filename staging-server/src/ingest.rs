//! The upload pipeline shared by the v0 and v1 APIs.
//!
//! A [`PendingUpload`] is a pending row plus a streamed object write. Body chunks go to the
//! store as they arrive, through a SHA-256 hasher and a byte counter: the body is never held
//! whole in memory and written once. The limit is enforced on the running count, so a body is
//! refused with 413 as soon as it passes the limit, and a declared `Content-Length` over the
//! limit is refused before anything is read. Commit checks the digest and the quotas and flips
//! the row to committed in one transaction; any failure before that deletes the object and the
//! row. If the handler is dropped mid-upload (client gone, shutdown), the drop guard schedules
//! the same cleanup.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::api_error::ApiError;
use crate::clock::duration_ms;
use crate::db::{BlobCommit, CommitOutcome, CommitRequest, Headroom, Owner};
use crate::metrics::InflightGuard;
use crate::pace::Pace;
use crate::state::AppState;
pub use crate::state::Uploader;
use crate::store::BlobWriter;
use staging_api::ids::{CredentialId, Namespace, ResourceId, Sha256Digest};

/// The `api` of a pending blob upload (a file of a submission).
pub const BLOB_API: &str = "blob";

/// Lifetimes requested for one upload (already capped by the server's limits).
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Deleted if never downloaded within this.
    pub unused_ttl: Duration,
    /// Deleted after this regardless.
    pub max_ttl: Duration,
}

/// A committed upload, with its first download token.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Resource id.
    pub id: ResourceId,
    /// Download token.
    pub token: String,
    /// Size in bytes.
    pub size: u64,
    /// Digest.
    pub sha256: Sha256Digest,
    /// Absolute expiry (ms).
    pub expires_at: i64,
    /// Deadline for a first download (ms).
    pub unused_deadline: i64,
}

/// An upload in progress.
#[derive(Debug)]
pub struct PendingUpload {
    state: AppState,
    /// The API that receives it (`v0`, `v1`, or files).
    api: &'static str,
    id: ResourceId,
    writer: Option<BlobWriter>,
    hasher: HashPipe,
    size: u64,
    /// Bytes the quotas leave for this upload at start, if limited.
    headroom: Option<Headroom>,
    done: bool,
    /// A replicated commit failed after its entry may have reached the shared log: the bytes
    /// stay for the leader's orphan sweep to judge.
    uncertain: bool,
    pace: Pace,
    _slot: OwnedSemaphorePermit,
    _share: service_runtime::peer::PeerCount<Uploader>,
    _inflight: InflightGuard,
}

impl PendingUpload {
    /// Reserves an upload slot, checks the declared length and the quotas, records the pending
    /// row and opens the object write.
    ///
    /// # Errors
    /// 503 when every upload slot is busy, 413 for a declared length over the limit, 507 when
    /// a quota is exhausted, 500 for database or store failures.
    pub async fn begin(
        state: &AppState,
        api: &'static str,
        namespace: Option<Namespace>,
        sender: Option<CredentialId>,
        declared_len: Option<u64>,
    ) -> Result<Self, ApiError> {
        let limit = state.limits().max_upload_size;
        if declared_len.is_some_and(|n| n > limit) {
            return Err(ApiError::too_large(limit));
        }
        let uploader = match (&namespace, &sender) {
            (Some(ns), _) => Uploader::Namespace(ns.clone()),
            (None, Some(c)) => Uploader::Credential(c.clone()),
            (None, None) => Uploader::Credential(CredentialId::anonymous()),
        };
        let share = state
            .upload_shares()
            .try_add(
                uploader,
                1,
                state.limits().max_concurrent_uploads_per_namespace,
            )
            .ok_or_else(|| {
                state.metrics().uploads_refused_for_share.inc();
                ApiError::unavailable("too many uploads of this namespace in progress; retry")
            })?;
        let slot = state
            .upload_slots()
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::unavailable("too many uploads in progress; retry"))?;
        let quotas = state.quotas();
        let headroom = state
            .db()
            .headroom(
                namespace.clone(),
                quotas,
                sender.filter(|_| api == BLOB_API),
            )
            .await
            .map_err(|e| db_error(state, e))?;
        if let (Some(room), Some(len)) = (headroom, declared_len)
            && len > room.bytes
        {
            return Err(ApiError::insufficient_storage(format!(
                "{len} bytes do not fit: {} bytes left under {}",
                room.bytes, room.bound
            )));
        }
        let id = ResourceId::random();
        if let Some(refusal) = state
            .db()
            .insert_pending(id, api, namespace, state.now_ms(), quotas)
            .await
            .map_err(|e| db_error(state, e))?
        {
            return Err(ApiError::insufficient_storage(refusal));
        }
        if let Some(r) = state.replica()
            && let Err(e) = r.mark_pending(id).await
        {
            let _ = state.db().delete(id, state.now_ms()).await;
            return Err(ApiError::store(e, state.metrics()));
        }
        let writer = match state.store().writer(id).await {
            Ok(w) => w,
            Err(e) => {
                let _ = state.db().delete(id, state.now_ms()).await;
                unmark(state, id);
                return Err(ApiError::store(e, state.metrics()));
            }
        };
        Ok(Self {
            state: state.clone(),
            api,
            id,
            writer: Some(writer),
            hasher: HashPipe::spawn(),
            size: 0,
            headroom,
            done: false,
            uncertain: false,
            pace: Pace::new(
                state.limits().body_idle_timeout,
                state.limits().upload_min_rate,
                state.limits().upload_rate_window,
            ),
            _slot: slot,
            _share: share,
            _inflight: InflightGuard::new(state.metrics().inflight.with_label_values(&["upload"])),
        })
    }

    /// Streams a body into the store. Stops with 413 at the size limit, 507 past the quota
    /// headroom or on a full disk, 408 when the client pauses longer than the idle timeout or
    /// sends slower than the minimum rate, and 400 when the body stream fails (client went
    /// away).
    ///
    /// # Errors
    /// As above; the caller then drops `self`, which cleans up.
    pub async fn write_stream<S, E>(&mut self, body: S) -> Result<(), ApiError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        loop {
            let next = self.next_piece(body.next()).await?;
            match next {
                None => return Ok(()),
                Some(Err(e)) => {
                    return Err(ApiError::bad_request(format!(
                        "reading the body failed: {e}"
                    )));
                }
                Some(Ok(chunk)) => self.write(chunk).await?,
            }
        }
    }

    /// Awaits the next piece of the body within the idle timeout and the minimum rate.
    ///
    /// # Errors
    /// 408 (counted in `staging_uploads_too_slow_total`).
    pub async fn next_piece<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, ApiError> {
        self.pace
            .next(fut)
            .await
            .inspect_err(|_| self.state.metrics().uploads_too_slow.inc())
    }

    /// Appends one chunk.
    ///
    /// # Errors
    /// See [`PendingUpload::write_stream`].
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ApiError> {
        let limit = self.state.limits().max_upload_size;
        let n = chunk.len() as u64;
        self.pace
            .add(n)
            .inspect_err(|_| self.state.metrics().uploads_too_slow.inc())?;
        self.size += n;
        if self.size > limit {
            return Err(ApiError::too_large(limit));
        }
        if let Some(room) = self.headroom
            && self.size > room.bytes
        {
            return Err(ApiError::insufficient_storage(format!(
                "upload passes the {} bytes left under {}",
                room.bytes, room.bound
            )));
        }
        self.state.metrics().upload_bytes.inc_by(n);
        self.hasher.update(chunk.clone()).await?;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| ApiError::internal("writer gone"))?;
        writer
            .write(chunk)
            .await
            .map_err(|e| ApiError::store(e, self.state.metrics()))
    }

    /// Finishes the object and commits the row, returning the first download token.
    ///
    /// The commit and the cleanup its outcome decides run to their end ([`to_the_end`]).
    ///
    /// # Errors
    /// 422 when `expected` does not match, 507 over a quota, 500 on failures. Nothing is
    /// stored after an error.
    pub async fn commit(
        self,
        owner: Owner,
        lifetimes: Lifetimes,
        expected: Option<Sha256Digest>,
    ) -> Result<Committed, ApiError> {
        to_the_end(self.commit_to_the_end(owner, lifetimes, expected)).await
    }

    async fn commit_to_the_end(
        mut self,
        owner: Owner,
        lifetimes: Lifetimes,
        expected: Option<Sha256Digest>,
    ) -> Result<Committed, ApiError> {
        match self.try_commit(owner, lifetimes, expected).await {
            Ok(c) => Ok(c),
            Err(e) => {
                self.discard().await;
                Err(e)
            }
        }
    }

    async fn try_commit(
        &mut self,
        owner: Owner,
        lifetimes: Lifetimes,
        expected: Option<Sha256Digest>,
    ) -> Result<Committed, ApiError> {
        let sha256 = self.finish_object(expected).await?;
        let now = self.state.now_ms();
        let expires_at = now.saturating_add(duration_ms(lifetimes.max_ttl));
        let unused_ttl_ms = duration_ms(lifetimes.unused_ttl);
        let (token, jti) = self.state.keys().issue(self.id, now, expires_at);
        // From here a replica's commit may reach the shared log: until its outcome is known
        // (a store error can leave it unknown), the bytes are not this upload's to delete.
        self.uncertain = self.state.replica().is_some();
        let outcome = self
            .state
            .commit(
                self.api,
                CommitRequest {
                    id: self.id,
                    owner,
                    size: self.size,
                    sha256,
                    now,
                    unused_ttl_ms,
                    expires_at,
                    jti,
                    quotas: self.state.quotas(),
                },
            )
            .await
            .map_err(|e| write_error(&self.state, e))?;
        // Decided: committed, or refused everywhere.
        self.uncertain = false;
        match outcome {
            CommitOutcome::Committed => {
                self.done = true;
                unmark(&self.state, self.id);
                tracing::info!(resource = %self.id, size = self.size, "resource committed");
                Ok(Committed {
                    id: self.id,
                    token,
                    size: self.size,
                    sha256,
                    expires_at,
                    unused_deadline: now.saturating_add(unused_ttl_ms),
                })
            }
            CommitOutcome::QuotaExceeded(why) => Err(ApiError::insufficient_storage(why)),
            CommitOutcome::Gone => Err(ApiError::internal("pending row vanished during upload")),
        }
    }
}

impl PendingUpload {
    /// Finishes the digest, checks it against `expected`, and makes the object durable.
    ///
    /// # Errors
    /// 422 on a mismatch (nothing is made durable), store errors.
    async fn finish_object(
        &mut self,
        expected: Option<Sha256Digest>,
    ) -> Result<Sha256Digest, ApiError> {
        let sha256 = std::mem::replace(&mut self.hasher, HashPipe::closed())
            .finish()
            .await?;
        if let Some(exp) = expected
            && exp != sha256
        {
            return Err(ApiError::new(
                http::StatusCode::UNPROCESSABLE_ENTITY,
                "digest_mismatch",
                format!("body sha256 is {sha256}, expected {exp}"),
            ));
        }
        let writer = self
            .writer
            .take()
            .ok_or_else(|| ApiError::internal("writer gone"))?;
        writer
            .finish()
            .await
            .map_err(|e| ApiError::store(e, self.state.metrics()))?;
        Ok(sha256)
    }

    /// Finishes the object and makes it the blob `expected` (the digest the client named),
    /// granted to `namespace`, run to its end ([`to_the_end`]).
    ///
    /// # Errors
    /// 422 when the bytes do not have that digest, 500 on failures. Nothing is stored after an
    /// error.
    pub async fn commit_blob(
        self,
        namespace: Namespace,
        sender: CredentialId,
        expected: Sha256Digest,
    ) -> Result<BlobCommit, ApiError> {
        to_the_end(self.commit_blob_to_the_end(namespace, sender, expected)).await
    }

    async fn commit_blob_to_the_end(
        mut self,
        namespace: Namespace,
        sender: CredentialId,
        expected: Sha256Digest,
    ) -> Result<BlobCommit, ApiError> {
        match self.try_commit_blob(namespace, sender, expected).await {
            Ok(c) => Ok(c),
            Err(e) => {
                self.discard().await;
                Err(e)
            }
        }
    }

    async fn try_commit_blob(
        &mut self,
        namespace: Namespace,
        sender: CredentialId,
        expected: Sha256Digest,
    ) -> Result<BlobCommit, ApiError> {
        let sha256 = self.finish_object(Some(expected)).await?;
        // As for a bundle's commit: unknown until the outcome is.
        self.uncertain = self.state.replica().is_some();
        let outcome = self
            .state
            .commit_blob(
                self.id,
                sha256,
                self.size,
                namespace,
                sender,
                self.state.now_ms(),
                self.state.quotas(),
            )
            .await
            .map_err(|e| write_error(&self.state, e))?;
        self.uncertain = false;
        match &outcome {
            BlobCommit::QuotaExceeded(why) => {
                return Err(ApiError::insufficient_storage(why.clone()));
            }
            BlobCommit::Existed => {
                // Another namespace or a concurrent upload holds the content; these bytes are
                // surplus. Their deletion is queued in the commit and done off the request
                // path, so the answer takes the same time as for new content.
                let (state, id) = (self.state.clone(), self.id);
                tokio::spawn(async move {
                    if state.store().delete(id).await.is_ok() {
                        let _ = state.db().deletion_done(id).await;
                    }
                });
            }
            BlobCommit::Stored => {}
        }
        self.done = true;
        unmark(&self.state, self.id);
        tracing::info!(sha256 = %sha256, size = self.size, "file received");
        Ok(outcome)
    }

    /// Abandons the upload: removes the partial object and the pending row before returning,
    /// so that a client told of the failure never sees a trace of it.
    pub async fn discard(mut self) {
        self.done = true;
        if self.uncertain {
            leave_to_the_leader(&self.state, self.id).await;
            return;
        }
        remove_abandoned(self.state.clone(), self.id, self.writer.take()).await;
    }
}

/// Runs a commit and the cleanup its outcome decides in a task of their own, so that a client
/// gone mid-commit (its handler dropped) leaves no outcome unknown: refused bytes are deleted
/// at once, never left for the orphan sweep (replicas), nor deleted under a row that commits
/// after all (one server).
async fn to_the_end<T: Send + 'static>(
    commit: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(commit)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

/// Removes the mark of an upload that ended (replicas), off the request path.
fn unmark(state: &AppState, id: ResourceId) {
    if let Some(r) = state.replica() {
        let r = std::sync::Arc::clone(r);
        tokio::spawn(async move { r.unmark_pending(id).await });
    }
}

/// After a replicated commit whose outcome is unknown: only this replica's pending row goes;
/// the bytes stay, deleted by the leader's orphan sweep unless a committed row names them.
async fn leave_to_the_leader(state: &AppState, id: ResourceId) {
    unmark(state, id);
    tracing::warn!(resource = %id, "commit failed after it may have reached the shared log; its bytes are left to the leader's orphan sweep");
    if let Err(e) = state.db().drop_pending_row(id).await {
        tracing::warn!(resource = %id, cause = %e, "could not remove a pending row");
    }
}

async fn remove_abandoned(state: AppState, id: ResourceId, writer: Option<BlobWriter>) {
    unmark(&state, id);
    if let Some(w) = writer {
        let _ = w.abort().await;
    }
    let bytes_gone = match state.store().delete(id).await {
        Ok(()) => true,
        Err(e) => {
            state.metrics().cleanup_errors.inc();
            tracing::warn!(resource = %id, cause = %e, "could not remove an abandoned upload; the sweep retries");
            false
        }
    };
    // Deleting the row queues the deletion of the bytes; done already when they are gone.
    let now = state.now_ms();
    match state.with_room(|| state.db().delete(id, now)).await {
        Ok(_) if bytes_gone => {
            let _ = state.db().deletion_done(id).await;
        }
        Ok(_) => {}
        Err(e) => {
            state.metrics().cleanup_errors.inc();
            tracing::warn!(resource = %id, cause = %e, "could not remove an abandoned row");
        }
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped without commit or discard: the handler was cancelled (client gone, server
        // shutting down). Drop cannot await, so the cleanup runs detached; start-up recovery
        // covers a process that dies before it finishes.
        if self.uncertain {
            let (state, id) = (self.state.clone(), self.id);
            tokio::spawn(async move { leave_to_the_leader(&state, id).await });
            return;
        }
        tokio::spawn(remove_abandoned(
            self.state.clone(),
            self.id,
            self.writer.take(),
        ));
    }
}

/// SHA-256 computed on a blocking thread of its own, fed through a bounded channel, so hashing
/// overlaps receiving and writing instead of adding to them. The chunks are shared `Bytes`,
/// not copies; the channel bound caps what is queued.
#[derive(Debug)]
struct HashPipe {
    tx: Option<mpsc::Sender<Bytes>>,
    handle: Option<tokio::task::JoinHandle<Sha256Digest>>,
}

/// Chunks queued for the hasher at most.
const HASH_QUEUE: usize = 16;

impl HashPipe {
    fn spawn() -> Self {
        let (tx, mut rx) = mpsc::channel::<Bytes>(HASH_QUEUE);
        let handle = tokio::task::spawn_blocking(move || {
            let mut h = Sha256::new();
            while let Some(chunk) = rx.blocking_recv() {
                h.update(&chunk);
            }
            Sha256Digest(h.finalize().into())
        });
        Self {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    fn closed() -> Self {
        Self {
            tx: None,
            handle: None,
        }
    }

    async fn update(&mut self, chunk: Bytes) -> Result<(), ApiError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| ApiError::internal("hasher closed"))?;
        tx.send(chunk)
            .await
            .map_err(|_| ApiError::internal("hasher stopped"))
    }

    async fn finish(mut self) -> Result<Sha256Digest, ApiError> {
        drop(self.tx.take());
        let handle = self
            .handle
            .take()
            .ok_or_else(|| ApiError::internal("hasher closed"))?;
        handle.await.map_err(ApiError::internal)
    }
}

/// The answer to a failed shared change: as [`db_error`] for the database, as the store's
/// failures for the shared log's store, 503 when the log stays busy or a change's fate is
/// undecided, and 503 with the wait left as `Retry-After` while the replica backs off.
pub(crate) fn write_error(state: &AppState, e: crate::replica::WriteError) -> ApiError {
    use crate::replica::WriteError as W;
    match e {
        W::Db(e) => db_error(state, e),
        W::Store(e) => ApiError::store(e, state.metrics()),
        W::Contended(_) => ApiError::unavailable("the shared state is busy; retry"),
        W::Undecided => ApiError::unavailable(
            "the shared state moved while the change was written; it may have been made",
        ),
        W::Unsynchronised(left) => {
            ApiError::unavailable_for("the shared state is being reloaded; retry", left)
        }
        e @ (W::Bad(_) | W::BadMark(_) | W::Io { .. } | W::Metrics(_)) => ApiError::internal(e),
    }
}

/// A database failure as answered: 507 (and the full flag set) on a full disk (uploads are
/// refused until space is freed; downloads go on), 500 otherwise.
pub(crate) fn db_error(state: &AppState, e: crate::db::DbError) -> ApiError {
    if e.is_full() {
        state.note_full();
        ApiError::insufficient_storage("the server's disk is full; retry after space is freed")
    } else {
        ApiError::internal(e)
    }
}
