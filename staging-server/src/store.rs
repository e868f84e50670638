//! Bundle bytes, through `object_store`.
//!
//! Keys are `resources/<resource-id>`, built only from server-generated ids. Writes stream
//! through [`object_store::WriteMultipart`] with a bounded number of parts in flight, so an
//! upload never sits whole in memory and is written once. The local filesystem backend is
//! opened with fsync on, so a completed upload is durable before its row is committed.
//!
//! Reads of the local backend use the file that object_store opened, streamed with large reads
//! (object_store's own stream reads 8 KiB at a time, which costs a lot of throughput).
//!
//! S3, GCS and Azure stores are built with their own builders (not `parse_url_opts`, which
//! returns a `dyn ObjectStore`) so that their [`Signer`] is kept: [`BlobStore::presigned_get`]
//! hands out short-lived GET URLs of an object, made with the store's credentials, for
//! downloads that go to the store instead of through the server.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, ObjectStoreScheme,
};

use crate::config::StoreLocation;
use crate::error::{Error, Result};
pub use crate::multipart::BlobWriter;
use crate::multipart::REMOTE_PART_SIZE;
pub use crate::store_error::StoreError;
use crate::store_error::bounded;
use staging_api::ids::ResourceId;

/// Part size for the local backend: each part is one positional write into the staging file.
const LOCAL_PART_SIZE: usize = 4 << 20;
/// Window size when streaming a local file to a client.
const LOCAL_READ_CHUNK: usize = 2 << 20;
/// Bodies up to this size are read in one piece.
const SMALL_READ: u64 = 256 << 10;
/// Chunks read ahead of the network per download; bounds memory to this many chunks.
const LOCAL_READ_AHEAD: usize = 2;

/// A stream of bundle bytes.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// The bundle store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// Bound on every call (see [`crate::config::DEFAULT_STORE_TIMEOUT`]).
    timeout: std::time::Duration,
    /// Key prefix inside the store (from the URL path).
    prefix: ObjectPath,
    /// Root directory when the backend is the local filesystem.
    local_root: Option<PathBuf>,
    /// Whether the store is reached over HTTP (for [`StoreError::classify`]).
    remote: bool,
    /// The same store as a URL signer (S3, GCS, Azure); `None` for stores that cannot sign.
    signer: Option<Arc<dyn Signer>>,
}

/// Builds a cloud store from its builder, the URL and the options: each option whose key the
/// builder knows is applied, the others are left out (as `object_store::parse_url_opts` does),
/// since one environment may hold the variables of several clouds.
macro_rules! configured {
    ($builder:ty, $url:expr, $opts:expr, $bad:expr) => {{
        let builder = $opts.into_iter().fold(
            <$builder>::new().with_url($url.as_str()),
            |builder, (key, value)| match key.to_ascii_lowercase().parse() {
                Ok(k) => builder.with_config(k, value),
                Err(_) => builder,
            },
        );
        Arc::new(builder.build().map_err(|e| $bad(&e))?)
    }};
}
/// A store that signs URLs, as both of its roles.
fn signing<S: ObjectStore + Signer>(
    store: Arc<S>,
) -> (Arc<dyn ObjectStore>, Option<Arc<dyn Signer>>) {
    (store.clone(), Some(store))
}

impl BlobStore {
    /// Opens the configured store.
    ///
    /// # Errors
    /// [`Error::Config`] for an unusable URL, [`Error::Io`] if the local root cannot be made.
    pub fn open(location: &StoreLocation) -> Result<Self> {
        match location {
            StoreLocation::Local(root) => {
                std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
                let fs = LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| StoreError::classify("open", e, false))?
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                let root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
                Ok(Self {
                    inner: Arc::new(fs),
                    timeout: crate::config::DEFAULT_STORE_TIMEOUT,
                    prefix: ObjectPath::default(),
                    local_root: Some(root),
                    remote: false,
                    signer: None,
                })
            }
            StoreLocation::Url { url, options } => {
                let parsed = url::Url::parse(url)
                    .map_err(|e| Error::config(format!("store URL {url:?}: {e}")))?;
                if parsed.scheme() == "memory" {
                    return Ok(Self::in_memory());
                }
                // Options from the environment first (AWS_*, GOOGLE_*, AZURE_*), explicit
                // options over them.
                let mut opts: Vec<(String, String)> = std::env::vars()
                    .filter(|(k, _)| {
                        k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
                    })
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect();
                opts.extend(options.iter().map(|(k, v)| (k.clone(), v.clone())));

                let bad =
                    |e: &dyn std::fmt::Display| Error::config(format!("store URL {url:?}: {e}"));
                let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(&e))?;
                let (inner, signer) = match scheme {
                    ObjectStoreScheme::AmazonS3 => signing(configured!(
                        object_store::aws::AmazonS3Builder,
                        url,
                        opts,
                        bad
                    )),
                    ObjectStoreScheme::GoogleCloudStorage => signing(configured!(
                        object_store::gcp::GoogleCloudStorageBuilder,
                        url,
                        opts,
                        bad
                    )),
                    ObjectStoreScheme::MicrosoftAzure => signing(configured!(
                        object_store::azure::MicrosoftAzureBuilder,
                        url,
                        opts,
                        bad
                    )),
                    _ => {
                        let (store, _) =
                            object_store::parse_url_opts(&parsed, opts).map_err(|e| bad(&e))?;
                        (Arc::from(store), None)
                    }
                };
                Ok(Self {
                    inner,
                    timeout: crate::config::DEFAULT_STORE_TIMEOUT,
                    prefix,
                    local_root: None,
                    remote: true,
                    signer,
                })
            }
        }
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Self {
        Self {
            inner: Arc::new(InMemory::new()),
            timeout: crate::config::DEFAULT_STORE_TIMEOUT,
            prefix: ObjectPath::default(),
            local_root: None,
            remote: false,
            signer: None,
        }
    }

    /// A store over `inner`, as [`Self::in_memory`] is (tests that wrap a store to delay or
    /// fail its calls).
    pub fn over(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            ..Self::in_memory()
        }
    }

    /// Bounds every call to `timeout`: a store that accepts connections and never answers
    /// then fails the call with [`StoreError::Timeout`] instead of blocking it for the store
    /// client's own retry budget (three minutes).
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs one store call within the timeout.
    async fn bounded<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        bounded(self.timeout, self.remote, what, fut).await
    }

    fn key(&self, id: ResourceId) -> ObjectPath {
        self.prefix.clone().join("resources").join(id.to_string())
    }

    /// Starts a streamed write of a resource's bytes.
    ///
    /// # Errors
    /// Store errors creating the upload.
    pub async fn writer(&self, id: ResourceId) -> Result<BlobWriter, StoreError> {
        let part = if self.local_root.is_some() {
            LOCAL_PART_SIZE
        } else {
            REMOTE_PART_SIZE
        };
        BlobWriter::start(&self.inner, &self.key(id), part, self.timeout, self.remote).await
    }

    /// Streams the given byte range of a resource (`0..size` for all of it).
    ///
    /// # Errors
    /// Store errors, including `NotFound`.
    pub async fn read(&self, id: ResourceId, range: Range<u64>) -> Result<ByteStream, StoreError> {
        if range.end - range.start <= SMALL_READ {
            // One round trip (one blocking task locally) for small bodies.
            let bytes = self
                .bounded("read", self.inner.get_range(&self.key(id), range))
                .await?;
            return Ok(futures::stream::once(async move { Ok(bytes) }).boxed());
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        let res = self
            .bounded("read", self.inner.get_opts(&self.key(id), opts))
            .await?;
        let range = res.range.clone();
        match res.payload {
            GetResultPayload::File(file, path) => Ok(read_file_range(file, path, range)),
            GetResultPayload::Stream(s) => Ok(s.map_err(std::io::Error::other).boxed()),
        }
    }

    /// Whether [`BlobStore::presigned_get`] can answer with a URL (S3, GCS and Azure stores).
    pub fn can_presign(&self) -> bool {
        self.signer.is_some()
    }

    /// A URL that lets whoever holds it GET the resource's object from the store for
    /// `expires_in`, signed with the store's credentials; `None` when the store cannot sign
    /// (the local filesystem, memory). The URL is a credential for that object: never log it.
    ///
    /// # Errors
    /// Signing errors (a store that must ask a credential service, and cannot).
    pub async fn presigned_get(
        &self,
        id: ResourceId,
        expires_in: std::time::Duration,
    ) -> Result<Option<url::Url>, StoreError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let key = self.key(id);
        let url = self
            .bounded(
                "sign a URL",
                signer.signed_url(http::Method::GET, &key, expires_in),
            )
            .await?;
        Ok(Some(url))
    }

    /// Deletes a resource's bytes; a missing object is not an error.
    ///
    /// # Errors
    /// Other store errors.
    pub async fn delete(&self, id: ResourceId) -> Result<(), StoreError> {
        match self
            .bounded("delete", self.inner.delete(&self.key(id)))
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Checks that the store answers (readiness).
    ///
    /// # Errors
    /// Store errors.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(
            "list",
            self.inner
                .list_with_delimiter(Some(&self.prefix.clone().join("resources"))),
        )
        .await?;
        Ok(())
    }

    /// Ids of every stored object, for orphan detection at start-up.
    ///
    /// # Errors
    /// Store errors.
    pub async fn list_ids(&self) -> Result<Vec<ResourceId>, StoreError> {
        Ok(self
            .list_objects()
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Every stored object with the time it was last written (ms since the epoch), for the
    /// orphan sweep.
    ///
    /// # Errors
    /// Store errors.
    pub async fn list_objects(&self) -> Result<Vec<(ResourceId, i64)>, StoreError> {
        let prefix = self.prefix.clone().join("resources");
        let metas: Vec<_> = self
            .bounded("list", self.inner.list(Some(&prefix)).try_collect())
            .await?;
        Ok(metas
            .iter()
            .filter_map(|m| {
                let id = m.location.filename()?.parse().ok()?;
                Some((id, m.last_modified.timestamp_millis()))
            })
            .collect())
    }

    fn instance_key(&self, id: &str) -> ObjectPath {
        self.prefix.clone().join("instances").join(id)
    }

    /// The server instances registered on this store prefix (their ids).
    ///
    /// # Errors
    /// Store errors.
    pub async fn instances(&self) -> Result<Vec<String>, StoreError> {
        let prefix = self.prefix.clone().join("instances");
        let metas: Vec<_> = self
            .bounded("list", self.inner.list(Some(&prefix)).try_collect())
            .await?;
        Ok(metas
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .collect())
    }

    /// Registers an instance on this store prefix: a small object under `instances/`
    /// holding `about`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn register_instance(&self, id: &str, about: Vec<u8>) -> Result<(), StoreError> {
        self.bounded(
            "register the instance",
            self.inner.put(&self.instance_key(id), about.into()),
        )
        .await?;
        Ok(())
    }

    /// Where an instance's registration lives, for messages.
    pub fn instance_location(&self, id: &str) -> String {
        match &self.local_root {
            Some(root) => root.join("instances").join(id).display().to_string(),
            None => self.instance_key(id).to_string(),
        }
    }

    /// Removes staging files that a killed process left behind in the local backend
    /// (`<key>#<n>`, invisible to listings). Remote stores abort incomplete multipart uploads
    /// through a bucket lifecycle rule (see README). Returns how many files were removed.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be read.
    pub fn remove_local_leftovers(&self) -> Result<usize> {
        let Some(root) = &self.local_root else {
            return Ok(0);
        };
        let dir = root.join("resources");
        remove_staging_files(&dir)
    }

    /// The objects of the replicated state (`<prefix>/state/...`), on the same store and with
    /// the same bound on every call.
    pub(crate) fn state_store(&self) -> crate::replica::StateStore {
        crate::replica::StateStore::new(
            Arc::clone(&self.inner),
            self.prefix.clone().join("state"),
            self.timeout,
            self.remote,
        )
    }

    /// Whether the store can hold the replicated state: every replica must reach it, and it
    /// must honour conditional updates (the local filesystem backend does not).
    pub fn shareable(&self) -> bool {
        self.local_root.is_none()
    }

    /// Root directory of the local backend.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }
}

/// Streams `range` of a local file from one blocking thread through a small bounded channel,
/// as read-only mappings of [`LOCAL_READ_CHUNK`]-sized windows: the socket write copies
/// straight from the page cache, saving the read copy (the closest to sendfile that a hyper
/// body allows). At most [`LOCAL_READ_AHEAD`] + 1 windows are mapped at a time.
fn read_file_range(file: std::fs::File, path: PathBuf, range: Range<u64>) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(LOCAL_READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut off = range.start;
        while off < range.end {
            let n = usize::try_from(range.end - off)
                .unwrap_or(usize::MAX)
                .min(LOCAL_READ_CHUNK);
            let res = map_window(&file, off, n)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())));
            let failed = res.is_err();
            // A closed channel means the client went away: stop reading.
            if tx.blocking_send(res).is_err() || failed {
                return;
            }
            off += n as u64;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }).boxed()
}

/// Maps `len` bytes of `file` at `offset`, read-only and pre-faulted.
#[allow(unsafe_code)]
fn map_window(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let meta = file.metadata()?;
    if offset + len as u64 > meta.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "object shorter than recorded",
        ));
    }
    // SAFETY: a mapping is unsound only if the file changes underneath it. Committed objects
    // are write-once: object_store publishes a fresh staging file by rename and never writes
    // into a published file, and deletion unlinks (the mapped pages stay valid). The length
    // was checked just above. Only a process editing the data directory by hand could
    // truncate the file, which the README warns against.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .populate()
            .map(file)?
    };
    Ok(Bytes::from_owner(map))
}

fn remove_staging_files(dir: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_staging = name
            .split_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if is_staging {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cloud_stores_sign_get_urls_of_their_objects_and_others_do_not() {
        let id = ResourceId::random();
        assert!(!BlobStore::in_memory().can_presign());
        assert_eq!(
            BlobStore::in_memory()
                .presigned_get(id, std::time::Duration::from_secs(60))
                .await
                .unwrap(),
            None
        );
        let dir = tempfile::tempdir().unwrap();
        let local = BlobStore::open(&StoreLocation::Local(dir.path().join("objects"))).unwrap();
        assert!(!local.can_presign());

        // Static credentials sign locally: nothing is sent to the endpoint.
        let options = [
            ("aws_endpoint", "http://127.0.0.1:9"),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "AKIDEXAMPLE"),
            ("aws_secret_access_key", "secret-example"),
            ("aws_region", "us-east-1"),
            ("aws_virtual_hosted_style_request", "false"),
            ("not_an_aws_option", "ignored"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s3 = BlobStore::open(&StoreLocation::Url {
            url: "s3://bucket/spark".into(),
            options,
        })
        .unwrap();
        assert!(s3.can_presign());
        let url = s3
            .presigned_get(id, std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(url.path(), format!("/bucket/spark/resources/{id}"));
        let query: std::collections::HashMap<_, _> = url.query_pairs().collect();
        assert_eq!(query["X-Amz-Expires"], "60");
        assert!(query.contains_key("X-Amz-Signature"));
        assert!(!url.as_str().contains("secret-example"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_without_an_answer_times_out() {
        let store = BlobStore::in_memory().with_timeout(std::time::Duration::from_secs(1));
        let never = std::future::pending::<object_store::Result<()>>();
        let e = store.bounded("list", never).await.unwrap_err();
        assert!(matches!(e, StoreError::Timeout { source: None, .. }), "{e}");
        let id = ResourceId::random();
        assert!(matches!(
            store.read(id, 0..10).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(store.delete(id).await.is_ok());
    }
}
