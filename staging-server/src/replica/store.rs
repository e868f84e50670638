//! The replicated state's objects, under `<prefix>/state/` of the bundle store:
//!
//! - `log/<seq>`: the shared log, one change per object, `seq` counted from 1 and written as
//!   20 digits so that names sort as numbers. An entry is only ever created where none is
//!   (a conditional create, `PutMode::Create`): two replicas writing the same position is one
//!   success and one refusal, which is what orders the changes.
//! - `snapshots/<seq>`: copies of the database as of the log position `seq`, from which a
//!   replica starts instead of replaying the whole log.
//! - `trimmed`: the trim mark, the position up to which the log may have been trimmed. The
//!   leader raises it (never lowers it, with conditional writes) before it deletes entries, so
//!   a position at or below it is no longer the log: an entry created there is a stale
//!   replica's, and what a reader finds there may be one.
//! - `leader`: the lease of the replica that does the work that must happen once, renewed with
//!   conditional updates (`PutMode::Update`).
//! - `replicas/<instance>`: each replica's heartbeat.
//! - `pending/<resource>`: uploads in progress, and the replica receiving each, so that the
//!   leader never takes their bytes for orphans while their replica lives.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions,
    UpdateVersion,
};

use crate::multipart::BlobWriter;
use crate::store_error::{StoreError, bounded};

/// Digits of a sequence number in an object name.
const SEQ_DIGITS: usize = 20;

/// Where a conditional write went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Written {
    /// The object is ours.
    Yes(UpdateVersion),
    /// Another writer was first (the object exists, or changed since it was read).
    Lost,
}

/// An object read with the version a conditional update must name.
#[derive(Debug, Clone)]
pub(crate) struct Versioned {
    pub(crate) body: Bytes,
    pub(crate) version: UpdateVersion,
}

/// A snapshot read piece by piece: each piece is a ranged GET of its own within the store's
/// timeout, pinned to the version the read began with (`If-Match` on its ETag). No request
/// lasts long whatever the snapshot's size (the store client bounds a single download's
/// retries and time as a whole), and a snapshot replaced during the read fails it rather
/// than mix two versions (on a versioned bucket, the version it began with is read).
pub(crate) struct SnapshotPieces {
    store: StateStore,
    /// Name, size, ETag, version and time of the snapshot as the read began.
    meta: ObjectMeta,
    at: u64,
    piece: u64,
}

impl SnapshotPieces {
    /// The next piece, or `None` at the end.
    ///
    /// # Errors
    /// Store errors: a piece that does not come within the timeout, a snapshot changed or
    /// deleted since the read began, a piece shorter than asked.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.at >= self.meta.size {
            return Ok(None);
        }
        let end = self.meta.size.min(self.at.saturating_add(self.piece));
        let opts = GetOptions {
            range: Some(GetRange::Bounded(self.at..end)),
            if_match: self.meta.e_tag.clone(),
            // A store that gives no ETag: pinned by the time of the last write instead.
            if_unmodified_since: self.meta.e_tag.is_none().then_some(self.meta.last_modified),
            version: self.meta.version.clone(),
            ..GetOptions::default()
        };
        let what = "read a snapshot";
        let got = self
            .store
            .call(what, self.store.inner.get_opts(&self.meta.location, opts))
            .await?;
        let bytes = self.store.call(what, got.bytes()).await?;
        if u64::try_from(bytes.len()).ok() != Some(end - self.at) {
            let source = object_store::Error::Generic {
                store: "snapshot",
                source: format!(
                    "{} bytes where {} were asked at offset {}",
                    bytes.len(),
                    end - self.at,
                    self.at
                )
                .into(),
            };
            return Err(StoreError::classify(what, source, false));
        }
        self.at = end;
        Ok(Some(bytes))
    }
}

/// The replicated state's objects.
#[derive(Debug, Clone)]
pub struct StateStore {
    inner: Arc<dyn ObjectStore>,
    root: ObjectPath,
    timeout: Duration,
    remote: bool,
}

impl StateStore {
    pub(crate) fn new(
        inner: Arc<dyn ObjectStore>,
        root: ObjectPath,
        timeout: Duration,
        remote: bool,
    ) -> Self {
        Self {
            inner,
            root,
            timeout,
            remote,
        }
    }

    fn dir(&self, name: &str) -> ObjectPath {
        self.root.clone().join(name)
    }

    fn seq_key(&self, dir: &str, seq: u64) -> ObjectPath {
        self.dir(dir).join(format!("{seq:0SEQ_DIGITS$}"))
    }

    async fn call<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        bounded(self.timeout, self.remote, what, fut).await
    }

    /// Creates the object at `key` unless one is there.
    async fn create(
        &self,
        what: &'static str,
        key: &ObjectPath,
        body: Bytes,
    ) -> Result<Written, StoreError> {
        self.conditional(what, key, body, PutMode::Create).await
    }

    /// Writes `key`: created when `over` is `None`, else only if it is still the version read.
    async fn replace(
        &self,
        what: &'static str,
        key: &ObjectPath,
        body: Bytes,
        over: Option<UpdateVersion>,
    ) -> Result<Written, StoreError> {
        let mode = over.map_or(PutMode::Create, PutMode::Update);
        self.conditional(what, key, body, mode).await
    }

    async fn conditional(
        &self,
        what: &'static str,
        key: &ObjectPath,
        body: Bytes,
        mode: PutMode,
    ) -> Result<Written, StoreError> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let put = self.inner.put_opts(key, body.into(), opts);
        match tokio::time::timeout(self.timeout, put).await {
            Ok(Ok(r)) => Ok(Written::Yes(UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Ok(Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            )) => Ok(Written::Lost),
            Ok(Err(e)) => Err(StoreError::classify(what, e, self.remote)),
            Err(_) => Err(StoreError::Timeout { what, source: None }),
        }
    }

    async fn get(
        &self,
        what: &'static str,
        key: &ObjectPath,
    ) -> Result<Option<Versioned>, StoreError> {
        let got = match self.call(what, self.inner.get(key)).await {
            Ok(g) => g,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = got.meta.clone();
        let body = self.call(what, got.bytes()).await?;
        Ok(Some(Versioned {
            body,
            version: UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            },
        }))
    }

    async fn delete(&self, what: &'static str, key: &ObjectPath) -> Result<(), StoreError> {
        match self.call(what, self.inner.delete(key)).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The names directly under `dir` after `after` (all when `None`), at most `limit`, in
    /// order, with their write times.
    async fn names_after(
        &self,
        what: &'static str,
        dir: &str,
        after: Option<&ObjectPath>,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let prefix = self.dir(dir);
        let listing = match after {
            Some(offset) => self.inner.list_with_offset(Some(&prefix), offset),
            None => self.inner.list(Some(&prefix)),
        };
        let metas: Vec<object_store::ObjectMeta> =
            self.call(what, listing.take(limit).try_collect()).await?;
        let mut out: Vec<(String, i64)> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_owned();
                Some((name, m.last_modified.timestamp_millis()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn seqs(
        &self,
        what: &'static str,
        dir: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let offset = self.seq_key(dir, after);
        let names = self
            .names_after(what, dir, (after > 0).then_some(&offset), limit)
            .await?;
        let mut seqs: Vec<u64> = names
            .iter()
            .filter(|(n, _)| n.len() == SEQ_DIGITS)
            .filter_map(|(n, _)| n.parse().ok())
            .filter(|s| *s > after)
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Writes the log entry `seq`, unless another replica wrote that position first.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn append(&self, seq: u64, body: Bytes) -> Result<Written, StoreError> {
        self.create("append to the log", &self.seq_key("log", seq), body)
            .await
    }

    /// The positions of the log entries after `after`, at most `limit`, in order.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn entries_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.seqs("list the log", "log", after, limit).await
    }

    /// Deletes the log entry `seq` (one written into the trimmed past).
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn delete_entry(&self, seq: u64) -> Result<(), StoreError> {
        self.delete("delete a log entry", &self.seq_key("log", seq))
            .await
    }

    /// The log entry `seq`, if it is still there.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn entry(&self, seq: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(self
            .get("read the log", &self.seq_key("log", seq))
            .await?
            .map(|v| v.body))
    }

    /// Deletes the log entries up to `through` (those a snapshot holds), at most `limit`;
    /// returns how many.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn trim_log(&self, through: u64, limit: usize) -> Result<usize, StoreError> {
        let old = self.seqs("list the log", "log", 0, limit).await?;
        let mut n = 0;
        for seq in old.into_iter().filter(|s| *s <= through) {
            self.delete("trim the log", &self.seq_key("log", seq))
                .await?;
            n += 1;
        }
        Ok(n)
    }

    /// The trim mark, with the version its next raise must name; `None` while the log was
    /// never trimmed.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn trim_mark(&self) -> Result<Option<Versioned>, StoreError> {
        self.get("read the trim mark", &self.dir("trimmed")).await
    }

    /// Writes the trim mark: created when `over` is `None`, else only if it is still the
    /// version read.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn put_trim_mark(
        &self,
        body: Bytes,
        over: Option<UpdateVersion>,
    ) -> Result<Written, StoreError> {
        self.replace("write the trim mark", &self.dir("trimmed"), body, over)
            .await
    }

    /// Starts a streamed write of the snapshot of log position `seq`, in parts of `part`
    /// bytes: a snapshot is never whole in memory, whatever the database's size.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn snapshot_writer(
        &self,
        seq: u64,
        part: usize,
    ) -> Result<BlobWriter, StoreError> {
        let key = self.seq_key("snapshots", seq);
        BlobWriter::start(&self.inner, &key, part, self.timeout, self.remote).await
    }

    /// The positions of the stored snapshots, oldest first.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn snapshots(&self) -> Result<Vec<u64>, StoreError> {
        self.seqs("list the snapshots", "snapshots", 0, usize::MAX)
            .await
    }

    /// The snapshot at `seq`, read in pieces of `piece` bytes, if it is still there.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn snapshot(
        &self,
        seq: u64,
        piece: usize,
    ) -> Result<Option<SnapshotPieces>, StoreError> {
        let key = self.seq_key("snapshots", seq);
        match self.call("read a snapshot", self.inner.head(&key)).await {
            Ok(meta) => Ok(Some(SnapshotPieces {
                store: self.clone(),
                meta,
                at: 0,
                piece: u64::try_from(piece).unwrap_or(u64::MAX).max(1),
            })),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes the snapshot at `seq`.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn delete_snapshot(&self, seq: u64) -> Result<(), StoreError> {
        self.delete("delete a snapshot", &self.seq_key("snapshots", seq))
            .await
    }

    /// The leader lease, with the version its next update must name.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn lease(&self) -> Result<Option<Versioned>, StoreError> {
        self.get("read the leader lease", &self.dir("leader")).await
    }

    /// Writes the leader lease: created when `over` is `None`, else only if it is still the
    /// version read.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn put_lease(
        &self,
        body: Bytes,
        over: Option<UpdateVersion>,
    ) -> Result<Written, StoreError> {
        self.replace("write the leader lease", &self.dir("leader"), body, over)
            .await
    }

    /// Writes this replica's heartbeat.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn beat(&self, instance: &str, body: Bytes) -> Result<(), StoreError> {
        let key = self.dir("replicas").join(instance);
        self.call("write a heartbeat", self.inner.put(&key, body.into()))
            .await?;
        Ok(())
    }

    /// Every replica's heartbeat: instance id and write time.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn heartbeats(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.names_after("list the heartbeats", "replicas", None, usize::MAX)
            .await
    }

    /// Deletes a replica's heartbeat (one gone for long).
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn forget_replica(&self, instance: &str) -> Result<(), StoreError> {
        self.delete("delete a heartbeat", &self.dir("replicas").join(instance))
            .await
    }

    /// Records that `instance` receives the upload `resource`.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn mark_pending(
        &self,
        resource: &str,
        instance: &str,
    ) -> Result<(), StoreError> {
        let key = self.dir("pending").join(resource);
        self.call(
            "mark an upload in progress",
            self.inner
                .put(&key, Bytes::from(instance.to_owned()).into()),
        )
        .await?;
        Ok(())
    }

    /// Removes the mark of an upload that ended.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn unmark_pending(&self, resource: &str) -> Result<(), StoreError> {
        self.delete("unmark an upload", &self.dir("pending").join(resource))
            .await
    }

    /// The uploads in progress: resource id and the replica receiving it.
    ///
    /// # Errors
    /// Store errors.
    pub(crate) async fn pending(&self) -> Result<Vec<(String, String)>, StoreError> {
        let names = self
            .names_after("list the uploads in progress", "pending", None, usize::MAX)
            .await?;
        let mut out = Vec::with_capacity(names.len());
        for (name, _) in names {
            let key = self.dir("pending").join(name.as_str());
            if let Some(v) = self.get("read an upload mark", &key).await? {
                out.push((name, String::from_utf8_lossy(&v.body).into_owned()));
            }
        }
        Ok(out)
    }
}
