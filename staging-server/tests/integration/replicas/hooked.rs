//! An in-memory object store with hooks for the replicas' tests: log writes held while a test
//! looks ([`Hooked::hold`]), a log write answered as lost after it landed
//! ([`Hooked::lose_answer`]), the replay after a rebuild held ([`Hooked::hold_replay`]),
//! snapshot reads refused and counted ([`Hooked::refuse_snapshots`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::ObjectStoreExt as _;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::sync::Notify;

/// An in-memory store whose writes of log entries wait while `hold` is set, announcing on
/// `held` that one waits (its body in `held_entry`) until `released`; and whose reads of
/// snapshots fail while `refuse_snapshots` is set, counted in `refused_reads`. The next write of
/// a log entry after `lose_answer` is set lands, then answers that the position is taken, as
/// the store client does when the store answered a write that landed with a server error and
/// the client's retry found the position taken. Once a snapshot is read while `hold_replay` is
/// set, reads of log entries wait (the replay after a rebuild), announcing on `held`, until
/// `released`.
#[derive(Debug, Default)]
pub(crate) struct Hooked {
    pub(crate) inner: InMemory,
    pub(crate) hold: Arc<AtomicBool>,
    pub(crate) held: Arc<Notify>,
    pub(crate) held_entry: std::sync::Mutex<Option<Bytes>>,
    pub(crate) released: Arc<Notify>,
    pub(crate) lose_answer: AtomicBool,
    pub(crate) refuse_snapshots: AtomicBool,
    pub(crate) refused_reads: AtomicUsize,
    pub(crate) hold_replay: AtomicBool,
    pub(crate) replaying: AtomicBool,
}

impl Hooked {
    /// The names of the objects under `prefix`, read past the hooks.
    pub(crate) async fn names(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt as _;
        self.inner
            .list(Some(&Path::from(prefix)))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap()
    }

    /// Announces on `held` that a call waits, then waits until `released`.
    async fn wait_for_release(&self) {
        let released = self.released.notified();
        tokio::pin!(released);
        // Registered before the test hears of it: the release cannot be missed.
        released.as_mut().enable();
        self.held.notify_one();
        released.await;
    }

    /// The log entry at `seq`, as the store names it.
    pub(crate) fn entry_path(seq: u64) -> Path {
        Path::from(format!("state/log/{seq:020}"))
    }

    /// The trim mark (0 before any trimming).
    pub(crate) async fn trim_mark(&self) -> u64 {
        match self.inner.get(&Path::from("state/trimmed")).await {
            Ok(g) => String::from_utf8(g.bytes().await.unwrap().to_vec())
                .unwrap()
                .parse()
                .unwrap(),
            Err(object_store::Error::NotFound { .. }) => 0,
            Err(e) => panic!("{e}"),
        }
    }

    /// Writes the trim mark, past the hooks.
    pub(crate) async fn put_trim_mark(&self, seq: u64) {
        self.inner
            .put(&Path::from("state/trimmed"), seq.to_string().into())
            .await
            .unwrap();
    }

    /// Trims the log up to `through` as the leader does: the mark first, then the entries.
    pub(crate) async fn trim_by_hand(&self, through: u64) {
        self.put_trim_mark(through).await;
        for seq in self.positions("log").await {
            if seq <= through {
                self.inner.delete(&Self::entry_path(seq)).await.unwrap();
            }
        }
    }

    /// The position of the first log entry whose text holds `text`.
    pub(crate) async fn position_naming(&self, text: &str) -> Option<u64> {
        for seq in self.positions("log").await {
            let body = self.inner.get(&Self::entry_path(seq)).await.unwrap();
            if String::from_utf8_lossy(&body.bytes().await.unwrap()).contains(text) {
                return Some(seq);
            }
        }
        None
    }

    /// The positions (as named in the store) of the objects under `dir` of the replicated
    /// state, in order.
    pub(crate) async fn positions(&self, dir: &str) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .names(&format!("state/{dir}"))
            .await
            .iter()
            .map(|n| n.rsplit('/').next().unwrap().parse().unwrap())
            .collect();
        out.sort_unstable();
        out
    }
}

impl std::fmt::Display for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hooked({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Hooked {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if location.as_ref().contains("state/log/") && self.hold.load(Ordering::Acquire) {
            *self.held_entry.lock().unwrap() = Some(Bytes::from(payload.clone()));
            self.wait_for_release().await;
        }
        if location.as_ref().contains("state/log/")
            && self.lose_answer.swap(false, Ordering::AcqRel)
        {
            self.inner.put_opts(location, payload, opts).await?;
            return Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "the first answer was lost; the retry found the position taken".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if location.as_ref().contains("state/snapshots/")
            && self.hold_replay.load(Ordering::Acquire)
        {
            self.replaying.store(true, Ordering::Release);
        }
        if location.as_ref().contains("state/log/") && self.replaying.swap(false, Ordering::AcqRel)
        {
            self.wait_for_release().await;
        }
        if location.as_ref().contains("state/snapshots/")
            && self.refuse_snapshots.load(Ordering::Acquire)
        {
            self.refused_reads.fetch_add(1, Ordering::AcqRel);
            return Err(object_store::Error::Generic {
                store: "Hooked",
                source: "snapshot reads are refused".into(),
            });
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
