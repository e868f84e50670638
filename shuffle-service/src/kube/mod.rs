//! Following Spark's pods through the Kubernetes API (the `kube` crate).
//!
//! Spark 4 on Kubernetes never tells a shuffle service that an application ended. The service
//! watches the executor pods of its own node (`spark-role=executor`, `spec.nodeName`) and the
//! driver pods (`spark-role=driver`); when the driver pod that owns an application (named by
//! its executor pods' controlling owner reference, see [`tracker`]) is deleted, or stays
//! `Succeeded`/`Failed` for the grace period, the application's data on this node is deleted
//! as on `UnregisterApplication`, unless only its own lifecycle may end it (registered over
//! gRPC, or authenticated with an operator's secret: `crate::core::Lifecycle`). Optionally it
//! learns the Spark secret ([`pods::SECRET_ENV`]) of the executor pods of each driver pod that
//! claims an application; a client proving one of them binds the application to that driver
//! pod (`crate::core::claims`). Bindings are written to the state directory as soon as they
//! are made, and once more before the task ends.
//!
//! The watches list first, then watch; they re-list on `410 Gone` and after errors, with
//! exponential back-off (0.8 s to 30 s); lists are quorum reads, so a pod missing from a
//! complete list is really gone. The client re-reads a rotated service-account token.

pub mod metrics;
pub mod pods;
pub mod tracker;

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::config::KubeSettings;
use crate::core::{Claims, Core};
use metrics::KubeMetrics;
use tracker::{Scope, Tracker};

/// Server-side timeout of each watch request (seconds); the watch is then resumed from the
/// last version seen, and a connection that died silently is noticed within this.
const WATCH_TIMEOUT: u32 = 45;

/// How long to wait before trying again when no API client can be built.
const CLIENT_RETRY: Duration = Duration::from_secs(30);

type Events =
    Pin<Box<dyn Stream<Item = (Scope, Result<watcher::Event<Pod>, watcher::Error>)> + Send>>;

/// Builds the API client from the pod's service account (or `KUBECONFIG` outside a pod).
///
/// # Errors
/// No usable configuration.
pub async fn client() -> anyhow::Result<Client> {
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
pub async fn follow(
    core: Core,
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
                metrics.apps.set(gauge(tracker.apps()));
                metrics.drivers.set(gauge(tracker.drivers()));
                metrics.contested.set(gauge(tracker.contested()));
                metrics.secrets.set(gauge(claims.with_secrets()));
            }
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One watch per kind and namespace (or one per kind across all namespaces).
fn streams(client: &Client, settings: &KubeSettings) -> futures::stream::SelectAll<Events> {
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut all = futures::stream::SelectAll::new();
    for ns in scopes {
        let api: Api<Pod> = match &ns {
            Some(n) => Api::namespaced(client.clone(), n),
            None => Api::all(client.clone()),
        };
        let executors = watcher::Config::default()
            .timeout(WATCH_TIMEOUT)
            .labels(&format!("{}=executor", pods::ROLE_LABEL))
            .fields(&format!("spec.nodeName={}", settings.node_name));
        let drivers = watcher::Config::default()
            .timeout(WATCH_TIMEOUT)
            .labels(&format!("{}=driver", pods::ROLE_LABEL));
        for (is_driver, cfg) in [(false, executors), (true, drivers)] {
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
async fn persist(core: &Core, claims: &Claims) {
    for (app, owner) in claims.take_pending() {
        if let Err(e) = core.set_pod_owner(&app, owner.as_ref()).await {
            tracing::warn!(app = %app, error = %e, "driver pod binding not persisted yet; retrying");
            claims.retry(app, owner);
        }
    }
}

/// Persists new bindings, then deletes the data of applications whose driver ended (except
/// those with their own lifecycle); a failed write or deletion is tried again at the next tick.
async fn decide(core: &Core, tracker: &mut Tracker) {
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
