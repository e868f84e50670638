//! The shuffle core shared by every front end: registrations, volumes, block resolution,
//! writes, removal and cleanup. Front ends (gRPC, Spark's protocol) authenticate and decode;
//! everything they do to data goes through [`Core`].

mod authority;
mod blocks;
pub(crate) mod claims;
mod cleanup;
mod db;
mod execfs;
mod fetch;
mod liveness;
mod ownership;
mod registry;
mod request;
mod secrets;
mod volume;
mod writer;

pub use authority::{Offer, Refusal, Registrant};
pub use blocks::{OpenBlock, Segment, SegmentReader};
pub use claims::{Claims, MAX_CANDIDATES};
pub use db::Durability;
pub use fetch::{Block, Caller, Fetch};
pub use liveness::{NotReady, SweepReport};
pub use ownership::{Lifecycle, PodOwner};
pub use registry::Executor;
pub use request::{BlockRange, Blocks, Diagnosis, ExecutorRegistration, FetchRequest, ReduceRange};
pub use secrets::{Secrets, Source};
pub use volume::{VolumeKind, VolumeSpec, Volumes, parse_size};
pub use writer::MapOutput;

pub use crate::error::SecretError;

use std::collections::BTreeMap;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::Registry as PromRegistry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, ShuffleError};
use crate::lograte::LogLimit;
use crate::metrics::Metrics;
use blocks::IndexCache;
use cleanup::Cleaner;
use db::Db;
use registry::{AppRegistration, AppSummary, Registry};
use spark_protocol::ids::{AppId, ExecId, ShuffleId};
use spark_protocol::layout;

/// What a gRPC caller presented: the application token (`authorization: Bearer`), and
/// whether its bearer is an admin token.
#[derive(Debug, Default, Clone, Copy)]
pub struct Presented<'a> {
    /// The bearer token, when not an admin token.
    pub token: Option<&'a str>,
    /// The bearer is an admin token.
    pub admin: bool,
}

/// What the core is opened with; built from the service's configuration
/// (`crate::config::Config::core`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory of the registration database (and its lock).
    pub state_dir: PathBuf,
    /// Volumes.
    pub volumes: Vec<VolumeSpec>,
    /// How registrations reach the disk.
    pub registry_sync: Durability,
    /// File of the secret Spark's clients of every application may prove.
    pub spark_auth_secret_file: Option<PathBuf>,
    /// Directory of per-application Spark secrets.
    pub spark_auth_secret_dir: Option<PathBuf>,
    /// Spark secrets are also learned from executor pods (`crate::kube`).
    pub learn_secrets: bool,
    /// Concurrent deletions per volume.
    pub cleanup_parallelism: usize,
    /// Index cache bound.
    pub index_cache_bytes: usize,
    /// Heartbeat timeout of a driver that gives none.
    pub heartbeat_timeout: Duration,
    /// Idle TTL of applications without a driver registration.
    pub idle_ttl: Duration,
    /// Most blocks in one fetch.
    pub max_fetch_blocks: usize,
}

/// Most directories one executor may register.
pub const MAX_LOCAL_DIRS: usize = 64;
/// Most subdirectories per local directory (Spark's default is 64).
pub const MAX_SUB_DIRS: u32 = 4096;

/// The shared core.
#[derive(Debug, Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    volumes: Arc<Volumes>,
    cache: IndexCache,
    in_flight: writer::InFlight,
    /// Exclusive locks on the state directory and every volume root, held for the life of
    /// the core.
    _locks: Vec<std::fs::File>,
    cleaner: Cleaner,
    metrics: Metrics,
    prometheus: PromRegistry,
    secrets: Secrets,
    /// Driver pod bindings and the secrets of claimants' executor pods.
    claims: Arc<Claims>,
    /// Rate limit of the log lines of refusals for an application's authority.
    authority_log: LogLimit,
    default_heartbeat_timeout: Duration,
    idle_ttl: Duration,
    max_fetch_blocks: usize,
    background: Background,
}

/// The core's background tasks; cancelled when the core is dropped.
#[derive(Debug)]
struct Background {
    cancel: CancellationToken,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Background {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Core {
    /// Opens the state directory and the volumes, reloads registrations and starts the
    /// cleaner. The core owns its background work: [`Core::shutdown`] finishes what is queued
    /// and waits for it; dropping the last handle of the core stops it (a drop guard, as
    /// mini-redis's `DbDropGuard`).
    ///
    /// # Errors
    /// Volume, database or metric registration errors.
    pub async fn open(config: &Settings, prometheus: PromRegistry) -> Result<Self> {
        let cancel = CancellationToken::new();
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| ShuffleError::io(&config.state_dir, e))?;
        let secrets = Secrets::load(
            config.spark_auth_secret_file.as_deref(),
            config.spark_auth_secret_dir.as_deref(),
        )?;
        let secrets = if config.learn_secrets {
            secrets.with_learning()
        } else {
            secrets
        };
        let volumes = Arc::new(Volumes::open(&config.volumes)?);
        // One service per state directory and per volume: two would both delete.
        let mut locks = vec![lock_dir(&config.state_dir)?];
        for v in volumes.iter() {
            locks.push(lock_dir(&v.root)?);
        }
        // Before the database: the rows it cannot read are counted as it loads them.
        let metrics = Metrics::new(&prometheus)?;
        let db = Db::open_with(
            &config.state_dir.join("shuffle.db"),
            config.registry_sync,
            db::UnreadableRows::new(metrics.db_unreadable_rows.clone()),
        )?;
        let registry = Registry::open(db).await?;
        let claims = Arc::new(Claims::default());
        claims.restore(
            registry
                .db()
                .owners()
                .await?
                .into_iter()
                .map(|(app, r)| (app, PodOwner::from(r))),
        );
        let authority_log = LogLimit::new(
            metrics
                .log_suppressed
                .with_label_values(&["authority_refused"]),
        );
        let (cleaner, handle) = Cleaner::start(
            Arc::clone(&volumes),
            config.cleanup_parallelism,
            metrics.clone(),
            cancel.clone(),
        );
        let core = Self {
            inner: Arc::new(Inner {
                registry,
                volumes,
                cache: IndexCache::new(config.index_cache_bytes),
                in_flight: writer::InFlight::default(),
                _locks: locks,
                cleaner,
                metrics,
                prometheus,
                secrets,
                claims,
                authority_log,
                default_heartbeat_timeout: config.heartbeat_timeout,
                idle_ttl: config.idle_ttl,
                max_fetch_blocks: config.max_fetch_blocks,
                background: Background {
                    cancel,
                    tasks: std::sync::Mutex::new(vec![handle]),
                },
            }),
        };
        core.refresh_gauges();
        Ok(core)
    }

    /// The token that stops the core's background work; tasks that belong to the core (the
    /// liveness sweep) watch it and are handed over with [`Core::adopt`].
    pub fn background(&self) -> CancellationToken {
        self.inner.background.cancel.clone()
    }

    /// Makes a background task the core's: [`Core::shutdown`] waits for it.
    pub fn adopt(&self, task: tokio::task::JoinHandle<()>) {
        self.inner.background.lock().push(task);
    }

    /// Stops the background work: queued deletions finish, then every task is awaited.
    pub async fn shutdown(&self) {
        self.inner.background.cancel.cancel();
        let tasks = std::mem::take(&mut *self.inner.background.lock());
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The Prometheus registry.
    pub fn prometheus(&self) -> &PromRegistry {
        &self.inner.prometheus
    }

    /// Updates the registration and volume gauges (counts under the registry's read lock, and
    /// a `statvfs` per volume): at start, with every sweep and usage rescan (their timers), and
    /// before every scrape of `/metrics`, never on a request's path.
    pub(crate) fn refresh_gauges(&self) {
        let m = &self.inner.metrics;
        let (apps, execs) = self.inner.registry.counts();
        m.apps.set(apps as i64);
        m.executors.set(execs as i64);
        for v in self.inner.volumes.iter() {
            let labels = [v.index.to_string(), v.kind.as_str().to_owned()];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            m.volume_used
                .with_label_values(&labels)
                .set(i64::try_from(v.used_bytes()).unwrap_or(i64::MAX));
            let cap = v.capacity.unwrap_or_else(|| {
                rustix::fs::statvfs(&v.root)
                    .map(|s| s.f_blocks * s.f_frsize)
                    .unwrap_or(0)
            });
            m.volume_capacity
                .with_label_values(&labels)
                .set(i64::try_from(cap).unwrap_or(i64::MAX));
            m.volume_fs_used
                .with_label_values(&labels)
                .set(i64::try_from(v.fs_used_bytes()).unwrap_or(i64::MAX));
            m.volume_full
                .with_label_values(&labels)
                .set(i64::from(v.is_full()));
        }
    }

    /// Registers a driver and returns the application's token and heartbeat timeout. An
    /// application Spark's side holds is refused whatever the caller presents
    /// (`authority`): its data would otherwise answer to two parties.
    ///
    /// # Errors
    /// An application registered by another caller whose credential is not presented, one
    /// Spark's side holds, limits, and registry (SQLite) failures.
    pub async fn register_app(
        &self,
        app: &AppId,
        heartbeat_timeout: Option<Duration>,
        namespace: String,
        driver_pod: String,
        presented: &Presented<'_>,
    ) -> Result<(String, Duration)> {
        let timeout = heartbeat_timeout.unwrap_or(self.inner.default_heartbeat_timeout);
        if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(86_400) {
            return Err(ShuffleError::InvalidArgument(
                "heartbeat timeout must be 1 s to 24 h".into(),
            ));
        }
        let reg = AppRegistration {
            heartbeat_timeout: timeout,
            namespace: bounded(namespace, 253),
            driver_pod: bounded(driver_pod, 253),
        };
        self.check_grpc_registration(app)?;
        let token = self
            .inner
            .registry
            .register_app(app, reg, presented.token)
            .await
            .inspect_err(|e| {
                if matches!(e, ShuffleError::HeldBySpark(_)) {
                    self.refuse_authority("grpc", app, "spark_application");
                }
            })?;
        tracing::info!(app = %app, timeout = ?timeout, "application registered");
        Ok((token, timeout))
    }

    fn refused(&self, protocol: &str) {
        self.inner
            .metrics
            .ownership_refusals
            .with_label_values(&[protocol])
            .inc();
    }

    /// Checks a Spark-protocol client's right to an application: one registered through the
    /// gRPC API is gRPC's alone, whatever the connection authenticated with. Otherwise Spark's
    /// own model holds (open when authentication is off).
    fn authorize_spark(&self, app: &AppId) -> Result<()> {
        if self.inner.registry.has_token(app) {
            self.refuse_authority("spark", app, Refusal::GrpcApplication.as_str());
            return Err(ShuffleError::HeldByGrpc(app.to_string()));
        }
        Ok(())
    }

    /// The secrets of Spark's authentication.
    pub fn spark_secrets(&self) -> &Secrets {
        &self.inner.secrets
    }

    /// Driver pod bindings and the secrets of claimants' executor pods.
    pub fn claims(&self) -> &Arc<Claims> {
        &self.inner.claims
    }

    /// A driver's liveness registration over Spark's protocol (`RegisterDriver`).
    ///
    /// # Errors
    /// An out-of-range timeout, an application registered over gRPC, or database errors.
    pub async fn register_driver(
        &self,
        app: &AppId,
        timeout: Duration,
        who: Registrant,
    ) -> Result<()> {
        if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(86_400) {
            return Err(ShuffleError::InvalidArgument(
                "heartbeat timeout must be 1 s to 24 h".into(),
            ));
        }
        self.inner
            .registry
            .register_driver(app, timeout, who)
            .await
            .inspect_err(|e| self.count_held_by_grpc(app, e))?;
        tracing::info!(app = %app, timeout = ?timeout, "driver registered over the Spark protocol");
        Ok(())
    }

    /// A heartbeat.
    ///
    /// # Errors
    /// [`ShuffleError::NotFound`] for an unknown application.
    pub fn heartbeat(&self, app: &AppId) -> Result<()> {
        if self.inner.registry.touch(app) {
            Ok(())
        } else {
            Err(ShuffleError::NotFound(format!("application {app}")))
        }
    }

    /// Removes an application and queues its data for deletion; returns the directory count.
    ///
    /// # Errors
    /// Database errors.
    pub async fn remove_app(&self, app: &AppId, reason: &'static str) -> Result<usize> {
        let Some(removed) = self.inner.registry.remove_app(app).await? else {
            return Ok(0);
        };
        Ok(self.discard(removed, reason))
    }

    /// Forgets a removed application's cached indexes and queues its directories for deletion.
    fn discard(&self, removed: registry::RemovedApp, reason: &'static str) -> usize {
        let app = &removed.app_id;
        for d in &removed.dirs {
            self.inner.cache.forget_under(d);
        }
        self.inner
            .metrics
            .apps_removed
            .with_label_values(&[reason])
            .inc();
        let n = self
            .inner
            .cleaner
            .enqueue(format!("{reason} {app}"), removed.dirs);
        tracing::info!(app = %app, reason, dirs = n, "application removed");
        n
    }

    /// Counts a Spark registration the registry refused for a gRPC application (it raced
    /// with the gRPC registration past [`Core::authorize_spark`]).
    fn count_held_by_grpc(&self, app: &AppId, e: &ShuffleError) {
        if matches!(e, ShuffleError::HeldByGrpc(_)) {
            self.refuse_authority("spark", app, Refusal::GrpcApplication.as_str());
        }
    }

    /// Whether an application is registered (has executors or a driver registration).
    pub fn has_app(&self, app: &AppId) -> bool {
        self.inner.registry.has_app(app)
    }

    /// Registers an executor after checking every directory against the volumes; `who`
    /// says who may end its application (an [`Lifecycle::Own`] mark stays once set).
    ///
    /// # Errors
    /// Invalid arguments, refused directories, a Spark registration of an application
    /// registered over gRPC, database errors.
    pub async fn register_executor(&self, r: ExecutorRegistration, who: Registrant) -> Result<()> {
        if r.local_dirs.is_empty() || r.local_dirs.len() > MAX_LOCAL_DIRS {
            return Err(ShuffleError::InvalidArgument(format!(
                "1 to {MAX_LOCAL_DIRS} local directories"
            )));
        }
        if r.sub_dirs == 0 || r.sub_dirs > MAX_SUB_DIRS {
            return Err(ShuffleError::InvalidArgument(format!(
                "1 to {MAX_SUB_DIRS} subdirectories"
            )));
        }
        let dirs: Vec<PathBuf> = r
            .local_dirs
            .iter()
            .map(|d| self.inner.volumes.admit_dir(d))
            .collect::<Result<_>>()?;
        let e = Executor {
            local_dirs: dirs,
            sub_dirs: r.sub_dirs,
            shuffle_manager: bounded(r.shuffle_manager, 1024),
        };
        self.inner
            .registry
            .register_executor(&r.app, &r.exec, e, who)
            .await
            .inspect_err(|e| self.count_held_by_grpc(&r.app, e))?;
        tracing::info!(app = %r.app, exec = %r.exec, "executor registered");
        Ok(())
    }

    /// The registered executor.
    ///
    /// # Errors
    /// [`ShuffleError::NotFound`].
    pub fn executor(&self, app: &AppId, exec: &ExecId) -> Result<Arc<Executor>> {
        self.inner.registry.executor(app, exec)
    }

    /// Resolves a block (blocking I/O for the index).
    fn resolve(&self, exec: &Executor, block: &BlockRange) -> Result<Segment> {
        blocks::resolve(
            &self.inner.volumes,
            exec,
            &self.inner.cache,
            block.shuffle,
            block.map,
            block.start,
            block.end,
        )
    }

    /// Writes a map output from `chunks` into the executor's directories.
    ///
    /// # Errors
    /// An unknown executor, a map output over the limits, a full disk, I/O; nothing partial
    /// stays visible.
    pub async fn write_map_output(
        &self,
        app: &AppId,
        exec: &ExecId,
        out: MapOutput,
        chunks: mpsc::Receiver<Result<Bytes>>,
    ) -> Result<u64> {
        let executor = self.executor(app, exec)?;
        let inner = Arc::clone(&self.inner);
        let result = tokio::task::spawn_blocking(move || {
            writer::write(&executor, &inner.volumes, &inner.in_flight, &out, chunks)
        })
        .await
        .map_err(ShuffleError::from)?;
        if let Ok(n) = &result {
            self.inner.metrics.bytes_written.inc_by(*n);
        }
        result
    }

    /// Deletes every file of `shuffle` in the application's executor directories.
    ///
    /// # Errors
    /// [`ShuffleError::NotFound`] for an unknown application.
    pub async fn remove_shuffle(&self, app: &AppId, shuffle: ShuffleId) -> Result<u64> {
        let execs = self.inner.registry.executors(app)?;
        let dirs: Vec<(PathBuf, u32)> = execs
            .iter()
            .flat_map(|(_, e)| e.local_dirs.iter().map(|d| (d.clone(), e.sub_dirs)))
            .collect();
        let volumes = Arc::clone(&self.inner.volumes);
        let found = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            for (dir, subs) in dirs {
                let Some(vol) = volumes.containing(&dir) else {
                    continue;
                };
                for s in 0..subs {
                    let sub = dir.join(format!("{s:02x}"));
                    // A subdirectory the executor replaced by a link is refused here: its
                    // files, wherever they are, are not this application's.
                    let (fd, entries) = match vol.dir.list(&sub) {
                        Ok(x) => x,
                        Err(e) if execfs::is_link_refusal(&e) => {
                            tracing::warn!(dir = %sub.display(), "skipping a subdirectory that is a symbolic link");
                            continue;
                        }
                        Err(_) => continue,
                    };
                    for (name, is_dir) in entries {
                        if !is_dir
                            && layout::is_shuffle_file(&name.to_string_lossy(), shuffle)
                            && execfs::is_regular_file(fd.as_fd(), &name)
                            && rustix::fs::unlinkat(&fd, &*name, rustix::fs::AtFlags::empty())
                                .is_ok()
                        {
                            found.push(sub.join(name));
                        }
                    }
                }
            }
            found
        })
        .await
        .map_err(ShuffleError::from)?;
        for p in &found {
            self.inner.cache.forget(p);
        }
        Ok(found.len() as u64)
    }

    /// Deletes named block files of one executor, Spark's RemoveBlocks: names are file names
    /// placed by the formula; names that could escape (`/`, `\`, NUL, `.`, `..`, empty) are
    /// skipped. Returns how many files were deleted.
    ///
    /// # Errors
    /// [`ShuffleError::NotFound`] for an unknown executor.
    pub async fn remove_blocks(
        &self,
        app: &AppId,
        exec: &ExecId,
        names: Vec<String>,
    ) -> Result<u32> {
        let executor = self.executor(app, exec)?;
        let paths: Vec<PathBuf> = names
            .iter()
            .filter(|n| {
                let ok = valid_block_file_name(n);
                if !ok {
                    tracing::warn!(app = %app, exec = %exec, name = %n.chars().take(200).collect::<String>(), "skipping an invalid block id");
                }
                ok
            })
            .map(|n| layout::placement(&executor.local_dirs, executor.sub_dirs, n))
            .collect();
        for p in &paths {
            self.inner.cache.forget(p);
        }
        let volumes = Arc::clone(&self.inner.volumes);
        let removed = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .filter(|p| {
                    volumes.containing(p).is_some_and(|v| {
                        v.dir.open_dir(p.parent().unwrap_or(p)).is_ok_and(|d| {
                            p.file_name().is_some_and(|n| {
                                execfs::is_regular_file(d.as_fd(), n)
                                    && rustix::fs::unlinkat(&d, n, rustix::fs::AtFlags::empty())
                                        .is_ok()
                            })
                        })
                    })
                })
                .count()
        })
        .await
        .map_err(ShuffleError::from)?;
        Ok(u32::try_from(removed).unwrap_or(u32::MAX))
    }

    /// The local directories of the given executors; any unknown one fails the whole call.
    ///
    /// # Errors
    /// [`ShuffleError::NotFound`].
    pub fn local_dirs(
        &self,
        app: &AppId,
        execs: &[ExecId],
    ) -> Result<BTreeMap<ExecId, Vec<PathBuf>>> {
        execs
            .iter()
            .map(|e| {
                self.executor(app, e)
                    .map(|x| (e.clone(), x.local_dirs.clone()))
            })
            .collect()
    }

    /// Every application.
    pub fn list_apps(&self) -> Vec<AppSummary> {
        self.inner.registry.list()
    }
}

/// Name of the lock file in the state directory and in each volume root.
pub const LOCK_FILE: &str = ".shuffle-service.lock";

/// Takes the exclusive lock of a directory, refusing a second service on it.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    use service_runtime::lock::{self, LockError};
    lock::exclusive(dir, LOCK_FILE, "shuffle-service").map_err(|e| match e {
        LockError::Io { path, source } => ShuffleError::io(path, source),
        source => ShuffleError::Locked { source },
    })
}

/// Spark 4.3's `validateBlockId`, stricter: a plain file name.
pub fn valid_block_file_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && n.len() <= 255 && !n.contains(['/', '\\', '\0'])
}

fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
