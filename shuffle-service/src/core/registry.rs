//! Applications and their executors: in memory for the request path, persisted in SQLite.
//!
//! Reads take a std `RwLock` briefly (never across an await). Mutations are serialised by an
//! async mutex and written to the database before memory, so a crash never loses an
//! acknowledged registration and memory never holds what the database lacks.
//!
//! Liveness: an application registered by its driver (RegisterApplication) carries a heartbeat
//! timeout; one known only from executor registrations (plain Spark) lives until an idle TTL
//! passes without any call, or until its directories vanish. After a restart every application
//! gets a fresh timeout from the moment the service is back.
//!
//! Who else may end an application: one registered over gRPC (it holds a token) or by a client
//! that authenticated with a secret the operator configured has its own lifecycle only (the
//! mark is persisted and never cleared); the others may also be ended by the pod watch when
//! the driver pod that owns them ends (`crate::kube`).
//!
//! One application, one protocol (`crate::core::authority`): an application holding a token
//! takes no registration over Spark's protocol, and one known from Spark's protocol gets no
//! token. Both are checked here under the write lock, so that two registrations racing over
//! the two protocols cannot both succeed. One registered by a client that proved a learned
//! secret is marked so (persisted, never cleared): the shared secret never opens it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::secrets::Source;
use crate::core::authority::Registrant;
use crate::core::db::{AppRow, Db, ExecRow};
use crate::error::{Result, ShuffleError};
use spark_protocol::ids::{AppId, ExecId};

/// A registered executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executor {
    /// Canonical local directories (`blockmgr-*`), each under a volume.
    pub local_dirs: Vec<PathBuf>,
    /// Subdirectories per local directory.
    pub sub_dirs: u32,
    /// Shuffle manager class (informational).
    pub shuffle_manager: String,
}

#[derive(Debug)]
struct App {
    token_hash: Option<[u8; 32]>,
    namespace: String,
    driver_pod: String,
    heartbeat_timeout: Option<Duration>,
    /// Ended only by its own lifecycle, never by the pod watch; learned secrets never answer
    /// for it.
    own_lifecycle: bool,
    /// Registered by a Spark client that proved a secret learned from pods: the shared secret
    /// never opens it.
    learned: bool,
    /// Last activity, as an offset from the registry's epoch: updated through a shared
    /// reference so that the fetch path needs only the read lock.
    last_seen: LastSeen,
    executors: HashMap<ExecId, Arc<Executor>>,
}

impl App {
    /// An application seen for the first time, without a driver registration yet.
    fn new() -> Self {
        Self {
            token_hash: None,
            namespace: String::new(),
            driver_pod: String::new(),
            heartbeat_timeout: None,
            own_lifecycle: false,
            learned: false,
            last_seen: LastSeen::now(),
            executors: HashMap::new(),
        }
    }
}

/// A last-activity time that can be updated through a shared reference.
#[derive(Debug)]
struct LastSeen {
    epoch: Instant,
    /// Milliseconds after `epoch`.
    ms: std::sync::atomic::AtomicU64,
}

impl LastSeen {
    fn now() -> Self {
        Self {
            epoch: Instant::now(),
            ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle(&self, now: Instant) -> Duration {
        let seen =
            self.epoch + Duration::from_millis(self.ms.load(std::sync::atomic::Ordering::Relaxed));
        now.saturating_duration_since(seen)
    }
}

/// Options of a driver registration.
#[derive(Debug, Clone, Default)]
pub(super) struct AppRegistration {
    /// Heartbeat timeout.
    pub heartbeat_timeout: Duration,
    /// Kubernetes namespace (informational).
    pub namespace: String,
    /// Driver pod name (informational).
    pub driver_pod: String,
}

/// An application as listed for operators.
#[derive(Debug, Clone)]
pub struct AppSummary {
    /// Id.
    pub app_id: AppId,
    /// Namespace.
    pub namespace: String,
    /// Driver pod.
    pub driver_pod: String,
    /// Registered executors.
    pub executors: usize,
    /// Time since the last call.
    pub idle: Duration,
    /// Heartbeat timeout, when the driver registered.
    pub heartbeat_timeout: Option<Duration>,
}

/// A removed application: what cleanup must delete.
#[derive(Debug, Clone)]
pub(super) struct RemovedApp {
    /// Id.
    pub app_id: AppId,
    /// Every local directory of its executors.
    pub dirs: Vec<PathBuf>,
}

/// The registry.
#[derive(Debug)]
pub(super) struct Registry {
    apps: RwLock<HashMap<AppId, App>>,
    writes: Mutex<()>,
    db: Db,
}

use service_runtime::token::hash as hash_token;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Registry {
    /// Loads every registration from the database.
    ///
    /// # Errors
    /// Database errors.
    pub(super) async fn open(db: Db) -> Result<Self> {
        let (apps, execs) = db.load().await?;
        let mut map: HashMap<AppId, App> = HashMap::new();
        let unreadable = db.unreadable();
        for a in apps {
            let Ok(id) = a.app_id.parse::<AppId>() else {
                unreadable.skipped("apps", &a.app_id, "app_id");
                continue;
            };
            map.insert(
                id,
                App {
                    token_hash: a.token_hash,
                    namespace: a.namespace,
                    driver_pod: a.driver_pod,
                    heartbeat_timeout: a.heartbeat_timeout_ms.map(Duration::from_millis),
                    own_lifecycle: a.own_lifecycle || a.token_hash.is_some(),
                    learned: a.learned_secret,
                    last_seen: LastSeen::now(),
                    executors: HashMap::new(),
                },
            );
        }
        for e in execs {
            let row = format!("{}/{}", e.app_id, e.exec_id);
            let (Ok(app), Ok(exec)) = (e.app_id.parse::<AppId>(), e.exec_id.parse::<ExecId>())
            else {
                unreadable.skipped("executors", &row, "app_id or exec_id");
                continue;
            };
            // Every executor row is written with its application's: one without is what
            // remains of an application row left out above.
            let Some(a) = map.get_mut(&app) else {
                unreadable.skipped("executors", &row, "its application");
                continue;
            };
            {
                a.executors.insert(
                    exec,
                    Arc::new(Executor {
                        local_dirs: e.local_dirs,
                        sub_dirs: e.sub_dirs,
                        shuffle_manager: e.shuffle_manager,
                    }),
                );
            }
        }
        Ok(Self {
            apps: RwLock::new(map),
            writes: Mutex::new(()),
            db,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<AppId, App>> {
        self.apps.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<AppId, App>> {
        self.apps.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The database.
    pub(super) fn db(&self) -> &Db {
        &self.db
    }

    /// Checks a presented app token. An application without a token (registered only by
    /// executors over Spark's protocol) cannot be used through the token-checked API.
    ///
    /// # Errors
    /// [`ShuffleError::Unauthenticated`] for no token, [`ShuffleError::PermissionDenied`] for
    /// a token that is not this application's, [`ShuffleError::NotFound`] for an unknown app.
    pub(super) fn check_token(&self, app: &AppId, presented: Option<&str>) -> Result<()> {
        let presented = presented.ok_or(ShuffleError::Unauthenticated("missing bearer token"))?;
        let apps = self.read();
        let a = apps.get(app).ok_or_else(|| {
            ShuffleError::PermissionDenied(format!("token not valid for application {app}"))
        })?;
        match &a.token_hash {
            Some(h) if service_runtime::token::matches(presented, h) => Ok(()),
            _ => Err(ShuffleError::PermissionDenied(format!(
                "token not valid for application {app}"
            ))),
        }
    }

    /// Registers a driver, returning the application's token.
    ///
    /// Who may register: a new application, anyone (the token returned is its credential);
    /// an application with a token, only its holder (who gets the same token back); an
    /// application already known without a token (registered over Spark's protocol), nobody:
    /// it is Spark's, and a token would hand its data to a second party.
    ///
    /// # Errors
    /// [`ShuffleError::AlreadyRegistered`] without the current token,
    /// [`ShuffleError::HeldBySpark`] for an application registered over Spark's protocol;
    /// database errors.
    pub(super) async fn register_app(
        &self,
        app: &AppId,
        reg: AppRegistration,
        presented: Option<&str>,
    ) -> Result<String> {
        let _w = self.writes.lock().await;
        let existing = self.read().get(app).map(|a| a.token_hash);
        let fresh = || {
            let mut raw = [0u8; 32];
            rand::fill(&mut raw[..]);
            hex::encode(raw)
        };
        let token = match (existing, presented) {
            (Some(Some(h)), Some(p)) if service_runtime::token::matches(p, &h) => p.to_owned(),
            (Some(Some(_)), _) => return Err(ShuffleError::AlreadyRegistered(app.to_string())),
            (Some(None), _) => return Err(ShuffleError::HeldBySpark(app.to_string())),
            (None, _) => fresh(),
        };
        let hash = hash_token(&token);
        self.db
            .put_app(
                AppRow {
                    app_id: app.to_string(),
                    token_hash: Some(hash),
                    namespace: reg.namespace.clone(),
                    driver_pod: reg.driver_pod.clone(),
                    heartbeat_timeout_ms: Some(
                        u64::try_from(reg.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX),
                    ),
                    own_lifecycle: true,
                    learned_secret: false,
                },
                now_ms(),
            )
            .await?;
        let mut apps = self.write();
        let a = apps.entry(app.clone()).or_insert_with(App::new);
        a.token_hash = Some(hash);
        a.namespace = reg.namespace;
        a.driver_pod = reg.driver_pod;
        a.heartbeat_timeout = Some(reg.heartbeat_timeout);
        a.own_lifecycle = true;
        a.last_seen.touch();
        Ok(token)
    }

    /// Whether an application holds a token of the gRPC API (then Spark-protocol access to
    /// it needs authentication).
    pub(super) fn has_token(&self, app: &AppId) -> bool {
        self.read().get(app).is_some_and(|a| a.token_hash.is_some())
    }

    /// Whether only the application's own lifecycle ends it (see the module's doc).
    pub(super) fn own_lifecycle(&self, app: &AppId) -> bool {
        self.read().get(app).is_some_and(|a| a.own_lifecycle)
    }

    /// Whether a Spark client that proved a learned secret registered the application.
    pub(super) fn learned(&self, app: &AppId) -> bool {
        self.read().get(app).is_some_and(|a| a.learned)
    }

    /// Refuses a Spark-protocol registration of an application that holds a token; returns
    /// the marks the registration sets (own lifecycle, learned secret).
    fn admit(&self, app: &AppId, who: Registrant) -> Result<(bool, bool)> {
        if matches!(who, Registrant::Spark(_)) && self.has_token(app) {
            return Err(ShuffleError::HeldByGrpc(app.to_string()));
        }
        Ok((
            who.lifecycle() == crate::core::Lifecycle::Own,
            who == Registrant::Spark(Some(Source::Learned)),
        ))
    }

    /// Records a driver's liveness signal without a token (Spark's `RegisterDriver` over the
    /// Spark protocol): the application then lives by heartbeats and `timeout`, like one
    /// registered through the gRPC API. The registrant's marks are set (never cleared).
    ///
    /// # Errors
    /// [`ShuffleError::HeldByGrpc`] for an application registered over gRPC; database errors.
    pub(super) async fn register_driver(
        &self,
        app: &AppId,
        timeout: Duration,
        who: Registrant,
    ) -> Result<()> {
        let _w = self.writes.lock().await;
        let (own_lifecycle, learned) = self.admit(app, who)?;
        let (token_hash, namespace, driver_pod) = self
            .read()
            .get(app)
            .map(|a| (a.token_hash, a.namespace.clone(), a.driver_pod.clone()))
            .unwrap_or_default();
        self.db
            .put_app(
                AppRow {
                    app_id: app.to_string(),
                    token_hash,
                    namespace,
                    driver_pod,
                    heartbeat_timeout_ms: Some(
                        u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    ),
                    own_lifecycle,
                    learned_secret: learned,
                },
                now_ms(),
            )
            .await?;
        let mut apps = self.write();
        let a = apps.entry(app.clone()).or_insert_with(App::new);
        a.heartbeat_timeout = Some(timeout);
        a.own_lifecycle |= own_lifecycle;
        a.learned |= learned;
        a.last_seen.touch();
        Ok(())
    }

    /// Registers (or re-registers) an executor. A directory may belong to one application only:
    /// otherwise one application's cleanup could delete another's data. The registrant's
    /// marks are set (never cleared).
    ///
    /// # Errors
    /// [`ShuffleError::DirectoryRefused`] for a directory of another application,
    /// [`ShuffleError::HeldByGrpc`] for a Spark registration of an application registered over
    /// gRPC; database errors.
    pub(super) async fn register_executor(
        &self,
        app: &AppId,
        exec: &ExecId,
        e: Executor,
        who: Registrant,
    ) -> Result<()> {
        let _w = self.writes.lock().await;
        let (own_lifecycle, learned) = self.admit(app, who)?;
        {
            let apps = self.read();
            for (other_id, other) in apps.iter().filter(|(id, _)| *id != app) {
                for d in other.executors.values().flat_map(|x| x.local_dirs.iter()) {
                    if let Some(mine) = e
                        .local_dirs
                        .iter()
                        .find(|m| m.starts_with(d) || d.starts_with(m))
                    {
                        return Err(ShuffleError::DirectoryRefused {
                            path: mine.display().to_string(),
                            reason: format!("overlaps a directory of application {other_id}"),
                        });
                    }
                }
            }
        }
        self.db
            .put_executor(
                ExecRow {
                    app_id: app.to_string(),
                    exec_id: exec.to_string(),
                    local_dirs: e.local_dirs.clone(),
                    sub_dirs: e.sub_dirs,
                    shuffle_manager: e.shuffle_manager.clone(),
                },
                own_lifecycle,
                learned,
                now_ms(),
            )
            .await?;
        let mut apps = self.write();
        let a = apps.entry(app.clone()).or_insert_with(App::new);
        a.own_lifecycle |= own_lifecycle;
        a.learned |= learned;
        a.executors.insert(exec.clone(), Arc::new(e));
        a.last_seen.touch();
        Ok(())
    }

    /// Whether an application is registered.
    pub(super) fn has_app(&self, app: &AppId) -> bool {
        self.read().contains_key(app)
    }

    /// Records activity of an application; returns whether it is registered.
    pub(super) fn touch(&self, app: &AppId) -> bool {
        match self.read().get(app) {
            Some(a) => {
                a.last_seen.touch();
                true
            }
            None => false,
        }
    }

    /// A registered executor (and records activity).
    ///
    /// # Errors
    /// [`ShuffleError::NotFound`].
    pub(super) fn executor(&self, app: &AppId, exec: &ExecId) -> Result<Arc<Executor>> {
        let apps = self.read();
        let a = apps
            .get(app)
            .ok_or_else(|| ShuffleError::NotFound(format!("application {app}")))?;
        a.last_seen.touch();
        a.executors
            .get(exec)
            .cloned()
            .ok_or_else(|| ShuffleError::NotFound(format!("executor {exec} of application {app}")))
    }

    /// Every executor of an application.
    ///
    /// # Errors
    /// [`ShuffleError::NotFound`].
    pub(super) fn executors(&self, app: &AppId) -> Result<Vec<(ExecId, Arc<Executor>)>> {
        let apps = self.read();
        let a = apps
            .get(app)
            .ok_or_else(|| ShuffleError::NotFound(format!("application {app}")))?;
        Ok(a.executors
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect())
    }

    /// Removes an application from the database and memory; returns its directories.
    ///
    /// # Errors
    /// Database errors (memory is then unchanged).
    pub(super) async fn remove_app(&self, app: &AppId) -> Result<Option<RemovedApp>> {
        self.remove_app_if(app, |_| true).await
    }

    /// Removes an application, unless only its own lifecycle may end it (checked under the
    /// write lock, so a registration that sets the mark meanwhile is never undone).
    ///
    /// # Errors
    /// Database errors (memory is then unchanged).
    pub(super) async fn remove_app_following_pods(
        &self,
        app: &AppId,
    ) -> Result<Option<RemovedApp>> {
        self.remove_app_if(app, |a| !a.own_lifecycle).await
    }

    async fn remove_app_if(
        &self,
        app: &AppId,
        allowed: impl Fn(&App) -> bool,
    ) -> Result<Option<RemovedApp>> {
        let _w = self.writes.lock().await;
        if !self.read().get(app).is_some_and(&allowed) {
            return Ok(None);
        }
        self.db.delete_app(app.to_string()).await?;
        let removed = self.write().remove(app);
        Ok(removed.map(|a| RemovedApp {
            app_id: app.clone(),
            dirs: a
                .executors
                .values()
                .flat_map(|e| e.local_dirs.iter().cloned())
                .collect(),
        }))
    }

    /// Applications whose liveness has lapsed: heartbeat timeout for driver-registered ones,
    /// idle TTL for the others.
    pub(super) fn lapsed(&self, idle_ttl: Duration) -> Vec<AppId> {
        let now = Instant::now();
        self.read()
            .iter()
            .filter(|(_, a)| a.last_seen.idle(now) > a.heartbeat_timeout.unwrap_or(idle_ttl))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Applications none of whose executor directories exist any more (the cluster manager
    /// removed them), among those with executors. The directories are checked on the blocking
    /// pool over a snapshot, never under the lock on a runtime thread.
    pub(super) async fn vanished(&self) -> Vec<AppId> {
        let snapshot: Vec<(AppId, Vec<PathBuf>)> = self
            .read()
            .iter()
            .filter(|(_, a)| !a.executors.is_empty())
            .map(|(id, a)| {
                let dirs = a
                    .executors
                    .values()
                    .flat_map(|e| e.local_dirs.iter().cloned())
                    .collect();
                (id.clone(), dirs)
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            snapshot
                .into_iter()
                .filter(|(_, dirs)| dirs.iter().all(|d| !d.exists()))
                .map(|(id, _)| id)
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Every registered executor directory with its subdirectory count.
    pub(super) fn all_dirs(&self) -> Vec<(PathBuf, u32)> {
        self.read()
            .values()
            .flat_map(|a| a.executors.values())
            .flat_map(|e| e.local_dirs.iter().map(|d| (d.clone(), e.sub_dirs)))
            .collect()
    }

    /// Every application, for operators.
    pub(super) fn list(&self) -> Vec<AppSummary> {
        let now = Instant::now();
        let mut v: Vec<AppSummary> = self
            .read()
            .iter()
            .map(|(id, a)| AppSummary {
                app_id: id.clone(),
                namespace: a.namespace.clone(),
                driver_pod: a.driver_pod.clone(),
                executors: a.executors.len(),
                idle: a.last_seen.idle(now),
                heartbeat_timeout: a.heartbeat_timeout,
            })
            .collect();
        v.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        v
    }

    /// (applications, executors) counts.
    pub(super) fn counts(&self) -> (usize, usize) {
        let apps = self.read();
        (apps.len(), apps.values().map(|a| a.executors.len()).sum())
    }
}
