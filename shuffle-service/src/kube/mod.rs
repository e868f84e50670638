//! Following Spark's pods through the Kubernetes API (the `kube` crate).
//!
//! Spark 4 on Kubernetes never tells a shuffle service that an application ended. The service
//! watches the executor pods of its own node (`spark-role=executor`, `spec.nodeName`) and the
//! driver pods of the applications those pods and the node's data name, through one watch
//! whose label selector lists them (`drivers`): its API traffic follows what the node holds,
//! as the kubelet's does, not the cluster's number of jobs. When the driver pod that owns an application (named by
//! its executor pods' controlling owner reference, see `tracker`) is deleted, or stays
//! `Succeeded`/`Failed` for the grace period, the application's data on this node is deleted
//! as on `UnregisterApplication`, unless only its own lifecycle may end it (registered over
//! gRPC, or authenticated with an operator's secret: `crate::core::Lifecycle`). Optionally it
//! learns the Spark secret (`pods::SECRET_ENV`) of the executor pods of each driver pod that
//! claims an application; a client proving one of them binds the application to that driver
//! pod (`crate::core::claims`). Bindings are written to the state directory as soon as they
//! are made, and once more before the task ends.
//!
//! The watches list first, then watch; they re-list on `410 Gone` and retry after errors, with
//! exponential back-off (0.8 s to 30 s); lists are quorum reads, so a pod missing from a
//! complete list is really gone (for the driver watch: a driver pod labelled with one of the
//! applications the list selected). The client re-reads a rotated service-account token.
//!
//! What the watch acts on is a [`Holder`]: the service's [`Core`], or the stand-in the
//! `kube-scale` benchmark runs a thousand of in one process.

mod drivers;
pub mod metrics;
mod pods;
mod tracker;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{DriverScope, KubeSettings};
use crate::core::{Claims, Core, PodOwner};
use drivers::{DriverEvent, DriverWatch};
use metrics::KubeMetrics;
use spark_protocol::ids::AppId;
use tracker::{Scope, Tracker};

/// Server-side timeout of each watch request (seconds); the watch is then resumed from the
/// last version seen, and a connection that died silently is noticed within this.
pub const WATCH_TIMEOUT: u32 = 45;

/// How long to wait before trying again when no API client can be built.
const CLIENT_RETRY: Duration = Duration::from_secs(30);

/// The application data the pod watch acts on.
pub trait Holder: Send + Sync + 'static {
    /// The bindings and candidate secrets shared with authentication.
    fn claims(&self) -> &Arc<Claims>;
    /// Whether the application has data here.
    fn has_app(&self, app: &AppId) -> bool;
    /// Whether only the application's own lifecycle may end it.
    fn own_lifecycle(&self, app: &AppId) -> bool;
    /// Persists (or, with `None`, deletes) the driver pod an application is bound to.
    fn set_pod_owner(
        &self,
        app: &AppId,
        owner: Option<&PodOwner>,
    ) -> impl Future<Output = crate::Result<()>> + Send;
    /// Deletes the application's data because its driver pod ended; the directory count,
    /// `None` when nothing was removed.
    fn remove_app_following_pods(
        &self,
        app: &AppId,
        reason: &'static str,
    ) -> impl Future<Output = crate::Result<Option<usize>>> + Send;
}

impl<H: Holder> Holder for Arc<H> {
    fn claims(&self) -> &Arc<Claims> {
        (**self).claims()
    }

    fn has_app(&self, app: &AppId) -> bool {
        (**self).has_app(app)
    }

    fn own_lifecycle(&self, app: &AppId) -> bool {
        (**self).own_lifecycle(app)
    }

    fn set_pod_owner(
        &self,
        app: &AppId,
        owner: Option<&PodOwner>,
    ) -> impl Future<Output = crate::Result<()>> + Send {
        (**self).set_pod_owner(app, owner)
    }

    fn remove_app_following_pods(
        &self,
        app: &AppId,
        reason: &'static str,
    ) -> impl Future<Output = crate::Result<Option<usize>>> + Send {
        (**self).remove_app_following_pods(app, reason)
    }
}

impl Holder for Core {
    fn claims(&self) -> &Arc<Claims> {
        Core::claims(self)
    }

    fn has_app(&self, app: &AppId) -> bool {
        Core::has_app(self, app)
    }

    fn own_lifecycle(&self, app: &AppId) -> bool {
        Core::own_lifecycle(self, app)
    }

    fn set_pod_owner(
        &self,
        app: &AppId,
        owner: Option<&PodOwner>,
    ) -> impl Future<Output = crate::Result<()>> + Send {
        Core::set_pod_owner(self, app, owner)
    }

    fn remove_app_following_pods(
        &self,
        app: &AppId,
        reason: &'static str,
    ) -> impl Future<Output = crate::Result<Option<usize>>> + Send {
        Core::remove_app_following_pods(self, app, reason)
    }
}

type Events =
    Pin<Box<dyn Stream<Item = (Scope, Result<watcher::Event<Pod>, watcher::Error>)> + Send>>;

/// Why no API client could be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Neither a service account nor a kubeconfig is usable.
    #[error(transparent)]
    Config(#[from] kube::config::InferConfigError),
    /// The configuration found does not make a client.
    #[error(transparent)]
    Client(#[from] kube::Error),
}

/// Builds the API client from the pod's service account (or `KUBECONFIG` outside a pod).
///
/// # Errors
/// No usable configuration.
pub async fn client() -> Result<Client, ClientError> {
    // Both rustls back-ends may be compiled in; the process picks one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = kube::Config::infer().await?;
    // The watches back off themselves (0.8 s to 30 s) and count every error; the client's own
    // retries of 429/503 would hide an unavailable API server for minutes.
    config.default_retry = false;
    // Watches end after WATCH_TIMEOUT; a connection silent for longer is dead.
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(u64::from(WATCH_TIMEOUT) + 15));
    Ok(Client::try_from(config)?)
}

/// Builds the client from the environment (retrying), then follows the pods until `cancel`
/// fires; decisions are taken every `tick`.
pub async fn run(core: Core, settings: KubeSettings, tick: Duration, cancel: CancellationToken) {
    let metrics = match KubeMetrics::new(core.prometheus()) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "kube metrics not registered; pod watches off");
            return;
        }
    };
    let client = loop {
        match client().await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?CLIENT_RETRY,
                    "no Kubernetes API client; application data follows only the idle TTL");
                for w in ["executors", "drivers"] {
                    metrics.errors.with_label_values(&[w]).inc();
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(CLIENT_RETRY) => {}
        }
    };
    follow(core, client, metrics, settings, tick, cancel).await;
}

/// Follows the pods through `client` until `cancel` fires; decisions are taken every `tick`.
pub async fn follow<H: Holder>(
    core: H,
    client: Client,
    metrics: KubeMetrics,
    settings: KubeSettings,
    tick: Duration,
    cancel: CancellationToken,
) {
    let claims = Arc::clone(core.claims());
    // Bindings written before a restart are in `claims` already (read when the core opened).
    let mut tracker = Tracker::new(
        settings.app_end_grace,
        Arc::clone(&claims),
        settings.learn_secrets,
        settings.namespaces.len().max(1),
    );
    let mut events = streams(&client, &settings);
    // The node's applications, for the driver watches that select them.
    let selective = settings.drivers == DriverScope::NodeApps;
    let (wanted_tx, wanted_rx) = watch::channel(tracker.wanted());
    let (driver_tx, mut driver_rx) = mpsc::channel(256);
    let stop_drivers = cancel.child_token();
    let _stop_drivers = stop_drivers.clone().drop_guard();
    // The driver watches start once the executor watches listed: the node's applications are
    // known then, and their drivers are listed in one request.
    let mut driver_tx = selective.then_some(driver_tx);
    let mut lists: HashMap<Scope, HashSet<String>> = HashMap::new();
    let mut failing: HashMap<&'static str, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(node = %settings.node_name, namespaces = ?settings.namespaces,
        grace = ?settings.app_end_grace, learn_secrets = settings.learn_secrets,
        "following Spark's pods");
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                persist(&core, &claims).await;
                return;
            }
            ev = events.next() => {
                let Some((scope, ev)) = ev else {
                    persist(&core, &claims).await;
                    return;
                };
                on_event(&mut tracker, &mut lists, &mut failing, &metrics, &settings, scope, ev);
                if selective {
                    want(&wanted_tx, &tracker);
                    if tracker.executors_listed()
                        && let Some(tx) = driver_tx.take()
                    {
                        for (api, ns) in apis(&client, &settings) {
                            let scope = Scope {
                                drivers: true,
                                namespace: ns,
                            };
                            let w = DriverWatch::new(
                                api,
                                scope,
                                wanted_rx.clone(),
                                tx.clone(),
                                stop_drivers.clone(),
                            );
                            tokio::spawn(w.run());
                        }
                    }
                }
            }
            Some((scope, ev)) = driver_rx.recv(), if selective => {
                on_driver_event(&mut tracker, &mut failing, &metrics, &scope, ev);
                want(&wanted_tx, &tracker);
            }
            // A handshake bound an application: written at once, not at the next tick.
            () = claims.changed() => persist(&core, &claims).await,
            _ = ticker.tick() => {
                // A watch resumed after an error yields nothing until something changes; a
                // whole watch period without a new error means it is up again.
                failing.retain(|watch, since| {
                    let recovered = since.elapsed() > Duration::from_secs(u64::from(WATCH_TIMEOUT) + 15);
                    if recovered {
                        metrics.up.with_label_values(&[watch]).set(1);
                        tracing::info!(watch = *watch, "pod watch recovered");
                    }
                    !recovered
                });
                decide(&core, &mut tracker).await;
                if selective {
                    tracker.forget_unwanted_drivers();
                    want(&wanted_tx, &tracker);
                }
                metrics.apps.set(gauge(tracker.apps()));
                metrics.drivers.set(gauge(tracker.drivers()));
                metrics.contested.set(gauge(tracker.contested()));
                metrics.secrets.set(gauge(claims.with_secrets()));
            }
        }
    }
}

/// Tells the driver watches which applications the node follows now.
fn want(tx: &watch::Sender<BTreeSet<AppId>>, tracker: &Tracker) {
    let now = tracker.wanted();
    tx.send_if_modified(|w| {
        let changed = *w != now;
        if changed {
            *w = now;
        }
        changed
    });
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The pods of each followed namespace (or of all), with the namespace.
fn apis(client: &Client, settings: &KubeSettings) -> Vec<(Api<Pod>, Option<String>)> {
    if settings.namespaces.is_empty() {
        return vec![(Api::all(client.clone()), None)];
    }
    settings
        .namespaces
        .iter()
        .map(|n| (Api::namespaced(client.clone(), n), Some(n.clone())))
        .collect()
}

/// The executor watch of each namespace (or one across all namespaces), and with
/// [`DriverScope::All`] a watch of every driver pod beside it.
fn streams(client: &Client, settings: &KubeSettings) -> futures::stream::SelectAll<Events> {
    let mut all = futures::stream::SelectAll::new();
    for (api, ns) in apis(client, settings) {
        let executors = watcher::Config::default()
            .timeout(WATCH_TIMEOUT)
            .labels(&format!("{}=executor", pods::ROLE_LABEL))
            .fields(&format!("spec.nodeName={}", settings.node_name));
        let drivers = watcher::Config::default()
            .timeout(WATCH_TIMEOUT)
            .labels(&format!("{}=driver", pods::ROLE_LABEL));
        let mut watches = vec![(false, executors)];
        if settings.drivers == DriverScope::All {
            watches.push((true, drivers));
        }
        for (is_driver, cfg) in watches {
            let scope = Scope {
                drivers: is_driver,
                namespace: ns.clone(),
            };
            let s: Events = Box::pin(
                watcher(api.clone(), cfg)
                    .default_backoff()
                    .map(move |ev| (scope.clone(), ev)),
            );
            all.push(s);
        }
    }
    all
}

fn on_event(
    tracker: &mut Tracker,
    lists: &mut HashMap<Scope, HashSet<String>>,
    failing: &mut HashMap<&'static str, Instant>,
    metrics: &KubeMetrics,
    settings: &KubeSettings,
    scope: Scope,
    ev: Result<watcher::Event<Pod>, watcher::Error>,
) {
    let watch = if scope.drivers {
        "drivers"
    } else {
        "executors"
    };
    let now = Instant::now();
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            // An incomplete list proves nothing: it is dropped, the next one starts over.
            lists.remove(&scope);
            failing.insert(watch, now);
            metrics.errors.with_label_values(&[watch]).inc();
            metrics.up.with_label_values(&[watch]).set(0);
            tracing::warn!(watch, error = %e, "pod watch error; retrying with back-off, nothing is deleted meanwhile");
            return;
        }
    };
    let mut learning = tracker::Learning::default();
    if failing.remove(watch).is_some() && !matches!(ev, watcher::Event::Init) {
        metrics.up.with_label_values(&[watch]).set(1);
        tracing::info!(watch, "pod watch recovered");
    }
    match ev {
        watcher::Event::Init => {
            lists.insert(scope.clone(), HashSet::new());
        }
        watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
            if let (Some(list), Some((uid, _))) = (lists.get_mut(&scope), pods::identity(&pod)) {
                list.insert(uid);
            }
            metrics.events.with_label_values(&[watch, "apply"]).inc();
            if scope.drivers {
                if let Some(d) = pods::driver(&pod) {
                    learning = tracker.driver_seen(d, now);
                }
            } else if let Some(e) = pods::executor(&pod, settings.learn_secrets) {
                learning = tracker.executor_seen(e);
            }
        }
        watcher::Event::InitDone => {
            if let Some(list) = lists.remove(&scope) {
                learning = tracker.relisted(&scope, &list, now);
            }
            metrics.relists.with_label_values(&[watch]).inc();
            metrics.up.with_label_values(&[watch]).set(1);
            tracing::info!(
                watch,
                apps = tracker.apps(),
                drivers = tracker.drivers(),
                "pod list complete"
            );
        }
        watcher::Event::Delete(pod) => {
            metrics.events.with_label_values(&[watch, "delete"]).inc();
            if scope.drivers {
                if let Some(d) = pods::driver(&pod) {
                    tracker.driver_gone(d, now);
                }
            } else if let Some((uid, _)) = pods::identity(&pod) {
                learning = tracker.executor_gone(&uid);
            }
        }
    }
    report(metrics, watch, learning);
}

/// Takes in what a selecting driver watch reported.
fn on_driver_event(
    tracker: &mut Tracker,
    failing: &mut HashMap<&'static str, Instant>,
    metrics: &KubeMetrics,
    scope: &Scope,
    ev: DriverEvent,
) {
    const WATCH: &str = "drivers";
    let now = Instant::now();
    let mut learning = tracker::Learning::default();
    match ev {
        DriverEvent::Error(e) => {
            failing.insert(WATCH, now);
            metrics.errors.with_label_values(&[WATCH]).inc();
            metrics.up.with_label_values(&[WATCH]).set(0);
            tracing::warn!(watch = WATCH, error = %e, "pod watch error; retrying with back-off, nothing is deleted meanwhile");
            return;
        }
        DriverEvent::Listed { apps, pods, full } => {
            let present: HashSet<String> = pods.iter().map(|d| d.uid.clone()).collect();
            // Counted as the executor watch counts the pods of its lists.
            metrics
                .events
                .with_label_values(&[WATCH, "apply"])
                .inc_by(pods.len() as u64);
            for d in pods {
                add(&mut learning, tracker.driver_seen(d, now));
            }
            add(
                &mut learning,
                tracker.drivers_listed(scope, &apps, &present, now),
            );
            // A complete list counts as a relist; a list of added applications' drivers
            // counts as a renewal (below).
            if full {
                metrics.relists.with_label_values(&[WATCH]).inc();
            }
            if failing.remove(WATCH).is_some() {
                tracing::info!(watch = WATCH, "pod watch recovered");
            }
            metrics.up.with_label_values(&[WATCH]).set(1);
            if full {
                tracing::info!(
                    watch = WATCH,
                    apps = apps.len(),
                    drivers = present.len(),
                    "driver pods of this node's applications listed"
                );
            } else {
                metrics.renewals.inc();
                tracing::debug!(watch = WATCH, added = apps.len(), "driver watch renewed");
            }
        }
        DriverEvent::Apply(d) => {
            recovered(failing, metrics, WATCH);
            metrics.events.with_label_values(&[WATCH, "apply"]).inc();
            learning = tracker.driver_seen(d, now);
        }
        DriverEvent::Delete(d) => {
            recovered(failing, metrics, WATCH);
            metrics.events.with_label_values(&[WATCH, "delete"]).inc();
            tracker.driver_gone(d, now);
        }
    }
    report(metrics, WATCH, learning);
}

fn add(total: &mut tracker::Learning, l: tracker::Learning) {
    total.learned += l.learned;
    total.conflicts += l.conflicts;
}

fn recovered(
    failing: &mut HashMap<&'static str, Instant>,
    metrics: &KubeMetrics,
    watch: &'static str,
) {
    if failing.remove(watch).is_some() {
        metrics.up.with_label_values(&[watch]).set(1);
        tracing::info!(watch, "pod watch recovered");
    }
}

fn report(metrics: &KubeMetrics, watch: &'static str, learning: tracker::Learning) {
    if learning.learned > 0 {
        tracing::info!(
            watch,
            learned = learning.learned,
            "Spark secrets learned from executor pods"
        );
    }
    if learning.conflicts > 0 {
        // The tracker's warning names the pod.
        metrics.secret_conflicts.inc_by(learning.conflicts as u64);
    }
}

/// Writes the bindings made or dropped since the last call; a failed write is tried again at
/// the next tick.
async fn persist<H: Holder>(core: &H, claims: &Claims) {
    for (app, owner) in claims.take_pending() {
        if let Err(e) = core.set_pod_owner(&app, owner.as_ref()).await {
            tracing::warn!(app = %app, error = %e, "driver pod binding not persisted yet; retrying");
            claims.retry(app, owner);
        }
    }
}

/// Persists new bindings, then deletes the data of applications whose driver ended (except
/// those with their own lifecycle); a failed write or deletion is tried again at the next tick.
async fn decide<H: Holder>(core: &H, tracker: &mut Tracker) {
    let now = Instant::now();
    persist(core, core.claims()).await;
    for (app, reason) in tracker.due(now) {
        if tracker.is_removed(&app) && !core.has_app(&app) {
            continue;
        }
        if core.own_lifecycle(&app) {
            // Registered over gRPC or with an operator's secret: its own lifecycle ends it.
            continue;
        }
        match core.remove_app_following_pods(&app, reason.as_str()).await {
            Ok(dirs) => {
                let dirs = dirs.unwrap_or(0);
                tracing::info!(app = %app, reason = reason.as_str(), dirs, "driver pod ended; application data deleted");
                tracker.removed(&app);
            }
            Err(e) => {
                tracing::warn!(app = %app, error = %e, "application data not deleted yet; retrying");
            }
        }
    }
    tracker.prune(now, |app| core.has_app(app));
}
