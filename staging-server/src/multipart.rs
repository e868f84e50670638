//! A streamed write of one object ([`BlobWriter`]): parts go to the store as they fill, with a
//! bounded number in flight, so an object of any size is never whole in memory. Resources'
//! bytes (`store`) and the replicated state's snapshots (`replica`) are written with it.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, WriteMultipart};

use crate::store_error::{StoreError, bounded};

/// Part size for remote stores: S3 requires at least 5 MiB per part except the last.
pub(crate) const REMOTE_PART_SIZE: usize = 8 << 20;
/// Parts written concurrently per upload; bounds memory to about (N + 1) x part size.
const MAX_PARTS_IN_FLIGHT: usize = 2;

/// A streamed write in progress. Dropping it without [`BlobWriter::finish`] leaves an
/// incomplete upload that the caller must [`BlobWriter::abort`].
pub struct BlobWriter {
    inner: WriteMultipart,
    timeout: std::time::Duration,
    remote: bool,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter").finish_non_exhaustive()
    }
}

impl BlobWriter {
    /// Starts a streamed write of the object at `key` in parts of `part` bytes (S3 requires at
    /// least 5 MiB but for the last), each call bounded by `timeout`.
    ///
    /// # Errors
    /// Store errors creating the upload.
    pub(crate) async fn start(
        store: &Arc<dyn ObjectStore>,
        key: &ObjectPath,
        part: usize,
        timeout: std::time::Duration,
        remote: bool,
    ) -> Result<Self, StoreError> {
        let upload = bounded(
            timeout,
            remote,
            "create an upload",
            store.put_multipart(key),
        )
        .await?;
        Ok(Self {
            inner: WriteMultipart::new_with_chunk_size(upload, part),
            timeout,
            remote,
        })
    }

    /// Appends bytes, waiting while too many parts are in flight.
    ///
    /// # Errors
    /// Store errors from completed parts.
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        let room = self.inner.wait_for_capacity(MAX_PARTS_IN_FLIGHT);
        let remote = self.remote;
        bounded(self.timeout, remote, "write a part", room).await?;
        self.inner.put(bytes);
        Ok(())
    }

    /// Completes the object; on return it is durable and visible in the store.
    ///
    /// # Errors
    /// Store errors.
    pub async fn finish(self) -> Result<(), StoreError> {
        bounded(
            self.timeout,
            self.remote,
            "complete an upload",
            self.inner.finish(),
        )
        .await?;
        Ok(())
    }

    /// Abandons the upload and removes what was written.
    ///
    /// # Errors
    /// Store errors.
    pub async fn abort(self) -> Result<(), StoreError> {
        bounded(
            self.timeout,
            self.remote,
            "abort an upload",
            self.inner.abort(),
        )
        .await
    }
}
