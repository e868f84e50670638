//! Shared application state and start-up recovery.
//!
//! [`AppState::open`] takes an exclusive lock on the data directory (one process per database),
//! opens the database and the store, loads the signing key, and recovers from a crash:
//! pending rows (uploads cut short) are deleted with their objects, and objects without a row,
//! and local staging files, are removed. Only then does the server accept requests, so nothing
//! partial is ever visible.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::Registry;
use tokio::sync::Semaphore;

use crate::auth::UploadAuth;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Limits};
use crate::db::{Db, DbError, Quotas};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reserve::Reserve;
use crate::store::BlobStore;
use crate::token::TokenKeys;
use staging_api::ids::{CredentialId, Namespace};

/// Name of the lock file in the data directory.
const LOCK_FILE: &str = "staging.lock";
/// Name of the database file in the data directory.
const DB_FILE: &str = "staging.db";
/// Longest start-up waits for the store to answer the instance registration.
const CLAIM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// State shared by every request handler and background task.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    store: BlobStore,
    keys: TokenKeys,
    upload_auth: UploadAuth,
    kube_auth: Option<Arc<crate::kube_auth::review::KubeAuth>>,
    metrics: Metrics,
    registry: Registry,
    clock: Arc<dyn Clock>,
    limits: Limits,
    uploads: Arc<Semaphore>,
    /// Upload slots held per namespace (or credential).
    upload_shares: service_runtime::peer::PeerCounts<Uploader>,
    draining: AtomicBool,
    reserve: Reserve,
    /// This database's instance id (see `crate::instance`).
    instance: crate::instance::InstanceId,
    /// Whether the store prefix may be registered by other instances too.
    store_shared: bool,
    /// Age before an object without a row counts as an orphan.
    orphan_grace: std::time::Duration,
    /// Whether the server runs `--replicated`.
    replicated: bool,
    /// This replica's part in the shared state (`--replicated`), set once it is loaded.
    replica: std::sync::OnceLock<Arc<crate::replica::Replica>>,
    /// Lifetime of presigned download URLs, when downloads may be redirected to the store.
    presigned_url_ttl: Option<std::time::Duration>,
    /// Held for the life of the process: the exclusive lock on the data directory.
    _lock: Option<File>,
}

/// Whose share of the upload slots an upload takes: its namespace, or before that is known
/// (a v0 body whose owner part comes after the bundle) its credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Uploader {
    /// The upload's namespace.
    Namespace(Namespace),
    /// The credential that sends it (anonymous uploads share one).
    Credential(CredentialId),
}

/// An error that may say the disk is full (see [`AppState::with_room`]).
pub trait MayBeFull {
    /// Whether the disk (or the database's quota) is full.
    fn is_full(&self) -> bool;
}

impl MayBeFull for DbError {
    fn is_full(&self) -> bool {
        DbError::is_full(self)
    }
}

impl MayBeFull for crate::replica::WriteError {
    fn is_full(&self) -> bool {
        matches!(self, Self::Db(e) if e.is_full())
    }
}

/// Pieces an embedding or a test may substitute.
#[derive(Default)]
pub struct Overrides {
    /// Clock (default: system clock).
    pub clock: Option<Arc<dyn Clock>>,
    /// Store (default: from the configuration).
    pub store: Option<BlobStore>,
    /// Registry (default: a fresh one).
    pub registry: Option<Registry>,
    /// Kubernetes client for `--kube-auth` (default: in-cluster or kubeconfig).
    pub kube_client: Option<kube::Client>,
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overrides")
            .field("clock", &self.clock)
            .field("store", &self.store)
            .field("kube_client", &self.kube_client.is_some())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Opens everything the configuration names and recovers from an earlier crash.
    ///
    /// # Errors
    /// [`Error::Config`] if another process holds the data directory, and any error opening
    /// the database, the store or the key.
    pub async fn open(config: &Config, overrides: Overrides) -> Result<Self> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = lock_data_dir(dir)?;
        let reserve = Reserve::new(dir, config.disk_reserve);
        // After a crash on a full disk, opening the database needs room (WAL recovery).
        let db = match Db::open(&dir.join(DB_FILE)) {
            Err(e) if e.is_full() && reserve.release() => Db::open(&dir.join(DB_FILE))?,
            r => r?,
        }
        .with_unnamed_grace(config.unnamed_blob_grace);
        let store = match overrides.store {
            Some(s) => s,
            None => BlobStore::open(&config.store)?.with_timeout(config.store_timeout),
        };
        if config.presigned_url_ttl.is_some() && !store.can_presign() {
            return Err(Error::config(
                "--presigned-downloads needs a store that signs URLs (an s3://, gs:// or az:// --store-url)",
            ));
        }
        let keys =
            TokenKeys::load_or_generate(config.signing_key.as_deref(), &config.verify_keys, dir)?;
        tracing::info!(kid = keys.kid(), verify_only = ?keys.verify_only_kids(), "download-token keys");
        let instance = db.instance_id().await?;
        let registry = overrides.registry.unwrap_or_default();
        let metrics = Metrics::new(&registry)?;
        db.register_metrics(&registry)?;
        let kube_auth = if config.kube_auth {
            let client = match overrides.kube_client {
                Some(c) => c,
                None => crate::kube_auth::client().await.map_err(|e| {
                    Error::config(format!(
                        "--kube-auth needs the Kubernetes API (service account or kubeconfig): {e}"
                    ))
                })?,
            };
            Some(Arc::new(crate::kube_auth::review::KubeAuth::new(
                client,
                config.kube_auth_settings.clone(),
                &registry,
            )?))
        } else {
            None
        };
        let state = Self {
            inner: Arc::new(Inner {
                db,
                store,
                keys,
                upload_auth: UploadAuth::new(&config.upload_tokens),
                kube_auth,
                metrics,
                registry,
                clock: overrides.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                limits: config.limits.clone(),
                uploads: Arc::new(Semaphore::new(config.limits.max_concurrent_uploads)),
                upload_shares: service_runtime::peer::PeerCounts::default(),
                draining: AtomicBool::new(false),
                reserve,
                instance,
                store_shared: config.store_shared || config.replicated,
                replicated: config.replicated,
                orphan_grace: config.orphan_grace,
                replica: std::sync::OnceLock::new(),
                presigned_url_ttl: config.presigned_url_ttl,
                _lock: Some(lock),
            }),
        };
        match state.recover().await {
            Err(Error::Metadata(e)) if e.is_full() => {
                state.note_full();
                if !state.release_reserve().await {
                    return Err(Error::Metadata(e));
                }
                state.recover().await?;
            }
            r => r?,
        }
        state.claim_store().await?;
        if config.replicated {
            state.start_replica(config).await?;
        }
        state.ensure_reserve().await;
        state.refresh_census().await;
        Ok(state)
    }

    /// Loads the shared state (`--replicated`): after `recover`, so that the pending rows of
    /// an interrupted run have their deletions queued (a rebuild keeps the queue).
    async fn start_replica(&self, config: &Config) -> Result<()> {
        if !self.store().shareable() {
            return Err(Error::config(
                "--replicated needs an object store every replica reaches (s3://, gs://, az://)",
            ));
        }
        let replica = crate::replica::Replica::start(
            self.store().state_store(),
            self.db().clone(),
            self.inner.instance.to_string(),
            crate::replica::ReplicaSettings {
                sync_interval: config.replica_sync_interval,
                lease: config.leader_lease,
                snapshot_every: config.snapshot_every,
                scratch: config.data_dir.clone(),
            },
            &self.inner.registry,
        )
        .await?;
        // Marks of uploads this replica received before it stopped: none of them is in
        // progress any more.
        replica.forget_own_uploads().await;
        let _ = self.inner.replica.set(replica);
        Ok(())
    }

    /// Age before an object without a row counts as an orphan.
    pub fn orphan_grace(&self) -> std::time::Duration {
        self.inner.orphan_grace
    }

    /// This replica's part in the shared state, when the server runs `--replicated`.
    pub(crate) fn replica(&self) -> Option<&Arc<crate::replica::Replica>> {
        self.inner.replica.get()
    }

    /// Applies the other replicas' changes now (nothing for a single server).
    ///
    /// # Errors
    /// The shared state cannot be read.
    pub async fn sync_shared(&self) -> Result<()> {
        if let Some(r) = self.replica() {
            r.sync().await?;
        }
        Ok(())
    }

    /// Writes a snapshot of the shared state now and trims the log as the leader does after
    /// one; returns its position (`None` for a single server).
    ///
    /// # Errors
    /// The shared state cannot be written.
    pub async fn snapshot_shared(&self) -> Result<Option<u64>> {
        match self.replica() {
            Some(r) => Ok(Some(r.snapshot().await?)),
            None => Ok(None),
        }
    }

    /// Whether this process does the work that must happen once: always for a single server,
    /// the leader's for replicas.
    pub fn leads(&self) -> bool {
        self.replica().is_none_or(|r| r.is_leader())
    }

    /// Registers this instance on the store prefix, refusing to start on a prefix another
    /// instance registered (unless shared). Bounded by [`CLAIM_TIMEOUT`]: a store that is down
    /// or hung does not hold start-up; the orphan sweep then checks again before deleting.
    async fn claim_store(&self) -> Result<()> {
        // Replicas share the prefix by design; their orphan sweep is the leader's, on the
        // shared state.
        if self.inner.replicated {
            return Ok(());
        }
        let claim =
            crate::instance::claim(self.store(), self.inner.instance, self.inner.store_shared);
        match tokio::time::timeout(CLAIM_TIMEOUT, claim).await {
            Ok(Ok(crate::instance::Claim::Sole)) => Ok(()),
            Ok(Ok(crate::instance::Claim::Shared(others))) => {
                tracing::warn!(
                    instance = %self.inner.instance,
                    others = %others.join(","),
                    "the store prefix is shared with other instances (--store-shared): the orphan sweep deletes nothing"
                );
                Ok(())
            }
            Ok(Err(e @ Error::Config(_))) => Err(e),
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, "could not register on the store; the orphan sweep checks again before deleting");
                Ok(())
            }
            Err(_) => {
                tracing::warn!(timeout = ?CLAIM_TIMEOUT, "the store did not answer the registration; the orphan sweep checks again before deleting");
                Ok(())
            }
        }
    }

    /// Removes what a crash may have left locally before serving: local staging files, and
    /// pending rows (their bytes are queued for deletion). Nothing here waits on the object
    /// store, so a store that is down or hung does not hold start-up; the sweeper deletes the
    /// queued bytes and looks for orphan objects once the store answers.
    async fn recover(&self) -> Result<()> {
        let db = self.db();
        let staging = self.store().remove_local_leftovers()?;
        let now = self.now_ms();
        let pending = db.pending().await?;
        for id in &pending {
            if self.inner.replicated {
                // The shared log may have committed it: the leader's orphan sweep decides.
                db.drop_pending_row(*id).await?;
            } else {
                db.delete(*id, now).await?;
            }
        }
        if staging + pending.len() > 0 {
            tracing::warn!(
                staging_files = staging,
                interrupted_uploads = pending.len(),
                "removed leftovers of an interrupted run"
            );
        }
        Ok(())
    }

    /// Queues the deletion of every stored object that has no row (an upload whose process
    /// died between writing the bytes and recording them) and is older than the orphan
    /// grace; returns how many. Only when this instance is the only one registered on the
    /// store prefix: an object of another instance is never this one's orphan.
    ///
    /// # Errors
    /// Store or database errors; [`Error::Config`] when another instance registered the
    /// prefix and it is not shared (the sweep then deletes nothing and logs it).
    pub async fn queue_orphans(&self) -> Result<Option<usize>> {
        // Replicas: the leader, with the shared state applied, knows every committed row; the
        // bytes of uploads in progress on live replicas are marked.
        let mut in_progress = std::collections::HashSet::new();
        if let Some(r) = self.replica() {
            if !r.is_leader() {
                return Ok(None);
            }
            // The marks first: an upload that commits after they were read is in the log read
            // next (its mark goes only after its commit is applied).
            in_progress.extend(r.live_uploads(crate::clock::SystemClock.now_ms()).await?);
            r.sync().await?;
        } else {
            match crate::instance::claim(self.store(), self.inner.instance, self.inner.store_shared)
                .await?
            {
                crate::instance::Claim::Sole => {}
                crate::instance::Claim::Shared(_) => return Ok(Some(0)),
            }
        }
        let cutoff = self
            .now_ms()
            .saturating_sub(crate::clock::duration_ms(self.inner.orphan_grace));
        let mut orphans = 0;
        for (id, written_at) in self.store().list_objects().await? {
            if written_at < cutoff && !in_progress.contains(&id) && !self.db().exists(id).await? {
                self.db().queue_deletion(id, self.now_ms()).await?;
                orphans += 1;
            }
        }
        if orphans > 0 {
            tracing::warn!(
                orphan_objects = orphans,
                "queued objects without a resource for deletion"
            );
        }
        Ok(Some(orphans))
    }

    /// Records that the disk was found full: uploads are refused with 507 until the sweep
    /// finds room again.
    pub fn note_full(&self) {
        self.metrics().storage_full.set(1);
    }

    /// Deletes the disk reserve (blocking work off the runtime); whether there was one.
    pub async fn release_reserve(&self) -> bool {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.reserve.release())
            .await
            .unwrap_or(false)
    }

    /// Writes the disk reserve again when the disk has room; clears the full flag when the
    /// reserve is in place. Run at start and by every sweep.
    pub async fn ensure_reserve(&self) {
        let inner = Arc::clone(&self.inner);
        let held = tokio::task::spawn_blocking(move || inner.reserve.ensure())
            .await
            .unwrap_or(false);
        if held {
            self.metrics().storage_full.set(0);
        }
    }

    /// Runs a database write that frees space (a deletion); when the disk is full, releases
    /// the reserve and tries once more.
    ///
    /// # Errors
    /// The write's error, when the retry fails too or there was no reserve to release.
    pub async fn with_room<T, E, F, Fut>(&self, op: F) -> Result<T, E>
    where
        E: MayBeFull,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        match op().await {
            Err(e) if e.is_full() => {
                self.note_full();
                if self.release_reserve().await {
                    op().await
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }

    /// Recomputes the gauges of stored data from the database: two full counts, so it runs
    /// at start and at the end of every sweep (the sweeper's timer, `--sweep-interval`), never
    /// on the request path; tests call it before they read the gauges.
    pub async fn refresh_census(&self) {
        match self.db().census().await {
            Ok(c) => self.metrics().set_census(c),
            Err(e) => tracing::warn!(cause = %e, "could not count resources"),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The bundle store.
    pub fn store(&self) -> &BlobStore {
        &self.inner.store
    }

    /// Lifetime of presigned download URLs; `None` when every download goes through the server.
    pub fn presigned_url_ttl(&self) -> Option<std::time::Duration> {
        self.inner.presigned_url_ttl
    }

    /// Token keys.
    pub fn keys(&self) -> &TokenKeys {
        &self.inner.keys
    }

    /// Upload credentials.
    pub fn upload_auth(&self) -> &UploadAuth {
        &self.inner.upload_auth
    }

    /// The Kubernetes credential reviewer, with `--kube-auth`.
    pub fn kube_auth(&self) -> Option<&crate::kube_auth::review::KubeAuth> {
        self.inner.kube_auth.as_deref()
    }

    /// Metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The registry the metrics live on.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Quotas derived from the limits.
    pub fn quotas(&self) -> Quotas {
        let l = &self.inner.limits;
        Quotas {
            namespace_bytes: l.namespace_quota_bytes,
            namespace_count: l.namespace_quota_count,
            capacity: l.capacity,
            unnamed_bytes: Some(l.namespace_unnamed_bytes),
            credential_unnamed_bytes: Some(l.credential_unnamed_bytes),
            namespace_max_blobs: Some(l.namespace_max_blobs),
            max_unnamed_namespaces: Some(l.max_unnamed_namespaces),
            credential_max_namespaces: Some(l.credential_max_namespaces),
        }
    }

    /// Now, by the injected clock.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Upload slots.
    pub fn upload_slots(&self) -> &Arc<Semaphore> {
        &self.inner.uploads
    }

    /// Upload slots held per namespace (or credential).
    pub(crate) fn upload_shares(&self) -> &service_runtime::peer::PeerCounts<Uploader> {
        &self.inner.upload_shares
    }

    /// Marks the server as draining: readiness fails from now on.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }
}

fn lock_data_dir(dir: &Path) -> Result<File> {
    use service_runtime::lock::{self, LockError};
    lock::exclusive(dir, LOCK_FILE, "staging-server").map_err(|e| match e {
        LockError::Io { path, source } => Error::io(path, source),
        other => Error::config(other.to_string()),
    })
}
