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
use crate::db::{Db, Quotas};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::BlobStore;
use crate::token::TokenKeys;

/// Name of the lock file in the data directory.
const LOCK_FILE: &str = "staging.lock";
/// Name of the database file in the data directory.
const DB_FILE: &str = "staging.db";

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
    metrics: Metrics,
    registry: Registry,
    clock: Arc<dyn Clock>,
    limits: Limits,
    uploads: Arc<Semaphore>,
    draining: AtomicBool,
    /// Held for the life of the process: the exclusive lock on the data directory.
    _lock: Option<File>,
}

/// Pieces an embedding or a test may substitute.
#[derive(Debug, Default)]
pub struct Overrides {
    /// Clock (default: system clock).
    pub clock: Option<Arc<dyn Clock>>,
    /// Store (default: from the configuration).
    pub store: Option<BlobStore>,
    /// Registry (default: a fresh one).
    pub registry: Option<Registry>,
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
        let db = Db::open(&dir.join(DB_FILE))?;
        let store = match overrides.store {
            Some(s) => s,
            None => BlobStore::open(&config.store)?,
        };
        let keys = TokenKeys::load_or_generate(config.signing_key.as_deref(), dir)?;
        let registry = overrides.registry.unwrap_or_default();
        let metrics = Metrics::new(&registry)?;
        let state = Self {
            inner: Arc::new(Inner {
                db,
                store,
                keys,
                upload_auth: UploadAuth::new(&config.upload_tokens),
                metrics,
                registry,
                clock: overrides.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                limits: config.limits.clone(),
                uploads: Arc::new(Semaphore::new(config.limits.max_concurrent_uploads)),
                draining: AtomicBool::new(false),
                _lock: Some(lock),
            }),
        };
        state.recover().await?;
        state.refresh_census().await;
        Ok(state)
    }

    /// Removes everything a crash may have left: pending rows with their objects, objects with
    /// no row, and local staging files.
    async fn recover(&self) -> Result<()> {
        let db = self.db();
        let store = self.store();
        let staging = store.remove_local_leftovers()?;
        let now = self.now_ms();
        let pending = db.pending().await?;
        for id in &pending {
            store.delete(*id).await?;
            db.delete(*id, now).await?;
        }
        let mut orphans = 0;
        for id in store.list_ids().await? {
            if !db.exists(id).await? {
                store.delete(id).await?;
                orphans += 1;
            }
        }
        if staging + pending.len() + orphans > 0 {
            tracing::warn!(
                staging_files = staging,
                interrupted_uploads = pending.len(),
                orphan_objects = orphans,
                "removed leftovers of an interrupted run"
            );
        }
        Ok(())
    }

    /// Recomputes the resource gauges from the database.
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

    /// Token keys.
    pub fn keys(&self) -> &TokenKeys {
        &self.inner.keys
    }

    /// Upload credentials.
    pub fn upload_auth(&self) -> &UploadAuth {
        &self.inner.upload_auth
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
    let path = dir.join(LOCK_FILE);
    let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
            "data directory {} is in use by another staging-server process",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}
