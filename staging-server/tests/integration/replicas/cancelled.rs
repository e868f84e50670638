//! A client gone while its upload's commit waits on the shared log: the commit runs to its
//! end all the same, and bytes the log refused are deleted at once, not left to the leader's
//! orphan sweep (an hour later) uncharged to anyone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::sync::Notify;

use super::{memory, replica, until};
use crate::common::random_bytes;
use staging_server::store::BlobStore;

/// An in-memory store whose writes of log entries wait while `hold` is set, announcing on
/// `held` that one waits (its body in `held_entry`) until `released`.
#[derive(Debug)]
struct SlowLog {
    inner: InMemory,
    hold: Arc<AtomicBool>,
    held: Arc<Notify>,
    held_entry: std::sync::Mutex<Option<Bytes>>,
    released: Arc<Notify>,
}

impl std::fmt::Display for SlowLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlowLog({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for SlowLog {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if location.as_ref().contains("state/log/") && self.hold.load(Ordering::Acquire) {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the test hears of it: the release cannot be missed.
            released.as_mut().enable();
            *self.held_entry.lock().unwrap() = Some(Bytes::from(payload.clone()));
            self.held.notify_one();
            released.await;
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

/// The objects under `resources/`.
async fn objects(store: &SlowLog) -> Vec<String> {
    use futures::TryStreamExt as _;
    store
        .inner
        .list(Some(&Path::from("resources")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_gone_mid_commit_leaves_no_refused_bytes() {
    let (hold, held, released) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    );
    let slow = Arc::new(SlowLog {
        inner: InMemory::new(),
        hold: hold.clone(),
        held: held.clone(),
        held_entry: std::sync::Mutex::new(None),
        released: released.clone(),
    });
    let store = BlobStore::over(slow.clone());
    // One resource per namespace: the second upload's commit is refused.
    let a = replica(Some(store), memory(), |c| {
        c.limits.namespace_quota_count = Some(1);
    })
    .await;

    // The second upload starts while the namespace is empty (past the check at its start)
    // and sends its body slowly; the first commits meanwhile.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tx.send(Ok(Bytes::from(random_bytes(64 << 10))))
        .await
        .unwrap();
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let (client, url) = (
        a.client.clone(),
        a.url("/api/v1/resources?namespace=team-a&labels=spark-role=driver"),
    );
    let second = tokio::spawn(async move {
        client
            .post(url)
            .header("content-type", "application/gzip")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
    });
    until(
        "the server receives the second upload's first bytes",
        || async {
            super::value(&a.metrics().await, "staging_upload_bytes_total") >= f64::from(64 << 10)
        },
    )
    .await;
    let first = a.upload("team-a", random_bytes(1000)).await;
    let kept = first["id"].as_str().unwrap().to_owned();

    // The second upload's commit waits on the log; its client goes away meanwhile.
    hold.store(true, Ordering::Release);
    let waiting = held.notified();
    drop(tx);
    waiting.await;
    let entry = slow.held_entry.lock().unwrap().clone().unwrap();
    assert!(
        String::from_utf8_lossy(&entry).contains("team-a"),
        "the held log write is not the second upload's commit: {entry:?}"
    );
    second.abort();
    let _ = second.await;
    hold.store(false, Ordering::Release);
    released.notify_waiters();

    // Refused everywhere (the quota), and its bytes deleted at once: only the first remains.
    until("the refused upload's bytes are deleted", || async {
        objects(&slow).await.len() == 1
    })
    .await;
    let left = objects(&slow).await;
    assert!(left[0].ends_with(&kept), "{left:?}");
    a.shutdown().await;
}
