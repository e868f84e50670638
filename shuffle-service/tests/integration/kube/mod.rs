//! The pod watches against the test bed's API server (plain HTTP on loopback, no root): an
//! application's data goes when its driver pod ends, and only then; API outages, restarts
//! and other namespaces' pods delete nothing; Spark's secret is learned and forgotten.
//! `ownership` performs the attacks of tenants who write pods in their own namespace;
//! `restart` restarts the real binary between an application's binding and its pods' return;
//! `selection` follows the node's own applications as they come and go.

mod ownership;
mod restart;
mod selection;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kubebed::api::{ApiConfig, router};
use kubebed::resources::PODS;
use kubebed::store::{DeleteOptions, Store};
use serde_json::{Value, json};
use shuffle_service::config::{Config, KubeSettings};
use shuffle_service::kube::metrics::KubeMetrics;
use spark_protocol::client::Client as SparkClient;
use spark_protocol::ids::AppId;
use tokio_util::sync::CancellationToken;

use crate::common::{TestService, metric};
use crate::spark_protocol::register_msg;

const NODE: &str = "node-1";
const GRACE: Duration = Duration::from_millis(300);
const TICK: Duration = Duration::from_millis(50);
/// Bound on every wait for something that must happen.
const PATIENCE: Duration = Duration::from_secs(20);

pub(crate) struct Api {
    store: Arc<Store>,
    config: ApiConfig,
    url: String,
    stop: CancellationToken,
}

pub(crate) async fn api(history: usize) -> Api {
    let store = Store::new(history);
    for ns in ["spark", "team-a", "team-b", "other"] {
        store
            .create(
                &kubebed::resources::NAMESPACES,
                "",
                json!({"metadata": {"name": ns}}),
            )
            .unwrap();
    }
    let config = ApiConfig::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let app = router(Arc::clone(&store), config.clone());
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Api {
        store,
        config,
        url,
        stop,
    }
}

pub(crate) fn driver(ns: &str, name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"spark-app-selector": app, "spark-role": "driver"}},
        "spec": {"containers": [{"name": "spark-kubernetes-driver", "image": "spark"}]}})
}

pub(crate) fn executor(
    ns: &str,
    name: &str,
    app: &str,
    owner: &Value,
    secret: Option<&str>,
) -> Value {
    let mut env = vec![json!({"name": "SPARK_EXECUTOR_ID", "value": "1"})];
    if let Some(s) = secret {
        env.push(json!({"name": "_SPARK_AUTH_SECRET", "value": s}));
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"spark-app-selector": app, "spark-role": "executor", "spark-exec-id": "1"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "controller": true,
                "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}]},
        "spec": {"nodeName": NODE,
            "containers": [{"name": "spark-kubernetes-executor", "image": "spark", "env": env}]}})
}

pub(crate) fn set_phase(store: &Store, ns: &str, name: &str, phase: &str) {
    store
        .update(&PODS, ns, name, |p| {
            p["status"]["phase"] = json!(phase);
            Ok(())
        })
        .unwrap();
}

/// Registers executor `exec` of `app` over Spark's protocol, as Spark's executors do, in the
/// directory `blockmgr-<app>`, after authenticating with `secret` when given; returns the
/// directory.
pub(crate) async fn spark_register(
    svc: &TestService,
    app: &str,
    exec: &str,
    secret: Option<&[u8]>,
) -> Result<PathBuf, String> {
    let d = svc.exec_dir(&format!("blockmgr-{app}"));
    let mut c = SparkClient::connect(svc.spark).await.unwrap();
    if let Some(s) = secret {
        c.authenticate(app, s)
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)?;
    }
    c.call(&register_msg(app, exec, &[&d]))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)?;
    Ok(d)
}

/// The service with one executor per application registered over Spark's protocol, and the
/// pod watches running.
pub(crate) struct Fixture {
    svc: TestService,
    api: Api,
    metrics: prometheus::Registry,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    learn_secrets: bool,
    tweak: fn(&mut Config),
}

impl Fixture {
    async fn start(api: Api, learn_secrets: bool, apps: &[&str]) -> Self {
        Self::start_with(api, learn_secrets, apps, |_| {}).await
    }

    /// As [`Fixture::start`], with `tweak` applied to the service's configuration (again at
    /// each restart).
    pub(crate) async fn start_with(
        api: Api,
        learn_secrets: bool,
        apps: &[&str],
        tweak: fn(&mut Config),
    ) -> Self {
        let svc = TestService::start(|c| Self::configure(c, learn_secrets, tweak)).await;
        for app in apps {
            spark_register(&svc, app, "1", None).await.unwrap();
        }
        let mut f = Self {
            svc,
            api,
            metrics: prometheus::Registry::new(),
            cancel: CancellationToken::new(),
            task: tokio::spawn(async {}),
            learn_secrets,
            tweak,
        };
        f.follow(learn_secrets);
        f
    }

    fn configure(c: &mut Config, learn_secrets: bool, tweak: fn(&mut Config)) {
        c.kube = Some(KubeSettings {
            node_name: NODE.into(),
            learn_secrets,
            ..KubeSettings::default()
        });
        tweak(c);
    }

    /// Stops the watches and the service, and starts both again on the same state directory
    /// and volume: what a restart of the service's pod does.
    pub(crate) async fn restart(mut self) -> Self {
        self.cancel.cancel();
        let _ = std::mem::replace(&mut self.task, tokio::spawn(async {})).await;
        let (learn, tweak) = (self.learn_secrets, self.tweak);
        let dir = self.svc.shutdown().await;
        self.svc = TestService::start_in(dir, |c| Self::configure(c, learn, tweak)).await;
        self.follow(learn);
        self
    }

    /// Starts (or restarts) the watches, as a service start would.
    fn follow(&mut self, learn_secrets: bool) {
        self.cancel.cancel();
        self.cancel = CancellationToken::new();
        self.metrics = prometheus::Registry::new();
        let mut config = kube::Config::new(self.api.url.parse().unwrap());
        // As the service's own client (`shuffle_service::kube::client`).
        config.default_retry = false;
        let client = Client::try_from(config).unwrap();
        let settings = KubeSettings {
            node_name: NODE.into(),
            namespaces: vec![],
            app_end_grace: GRACE,
            learn_secrets,
            ..KubeSettings::default()
        };
        self.task = tokio::spawn(shuffle_service::kube::follow(
            self.svc.core.clone(),
            client,
            KubeMetrics::new(&self.metrics).unwrap(),
            settings,
            TICK,
            self.cancel.clone(),
        ));
    }

    fn has(&self, app: &str) -> bool {
        self.svc.core.has_app(&app.parse::<AppId>().unwrap())
    }

    fn dir_exists(&self, app: &str) -> bool {
        self.svc.volume.join(format!("blockmgr-{app}")).exists()
    }

    /// Waits until `app` is removed and its directory deleted.
    async fn gone(&self, app: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.has(app) || self.dir_exists(app) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{app} still there after {PATIENCE:?}"
            );
            tokio::time::sleep(TICK).await;
        }
    }

    /// Waits until both watches have completed a list.
    async fn synced(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = prometheus::TextEncoder::new()
                .encode_to_string(&self.metrics.gather())
                .unwrap();
            let up = |w: &str| metric(&text, &format!("shuffle_kube_watch_up{{watch=\"{w}\"}}"));
            if up("executors") == Some(1.0) && up("drivers") == Some(1.0) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "watches never synced:\n{text}"
            );
            tokio::time::sleep(TICK).await;
        }
    }

    fn kube_metric(&self, series: &str) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.metrics.gather())
            .unwrap();
        metric(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    }

    /// Waits until a watch metric reaches at least `n` (a series not yet written counts 0).
    pub(crate) async fn wait_metric(&self, series: &str, n: f64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let value = || {
            let text = prometheus::TextEncoder::new()
                .encode_to_string(&self.metrics.gather())
                .unwrap();
            metric(&text, series).unwrap_or(0.0)
        };
        while value() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} < {n}:\n{}",
                prometheus::TextEncoder::new()
                    .encode_to_string(&self.metrics.gather())
                    .unwrap()
            );
            tokio::time::sleep(TICK).await;
        }
    }

    /// Waits until a watch has completed `n` lists.
    async fn relisted(&self, watch: &str, n: f64) {
        let series = format!("shuffle_kube_watch_relists_total{{watch=\"{watch}\"}}");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.kube_metric(&series) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} < {n}:\n{}",
                prometheus::TextEncoder::new()
                    .encode_to_string(&self.metrics.gather())
                    .unwrap()
            );
            tokio::time::sleep(TICK).await;
        }
    }

    /// Waits until the driver watch reports the outage (error counted, not up).
    async fn noticed_outage(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.kube_metric("shuffle_kube_watch_errors_total{watch=\"drivers\"}") < 1.0
            || self.kube_metric("shuffle_kube_watch_up{watch=\"drivers\"}") != 0.0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "outage never noticed"
            );
            tokio::time::sleep(TICK).await;
        }
    }

    /// Lets several grace periods and ticks pass (to show that nothing happens). Real time:
    /// the watches talk to the bed's API server over loopback and take their decisions by the
    /// process clock, which paused tokio time does not move.
    async fn quiet_period(&self) {
        tokio::time::sleep(GRACE * 4).await;
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        self.api.stop.cancel();
        self.svc.shutdown().await;
    }
}

#[tokio::test]
async fn a_succeeded_driver_takes_its_data_after_the_grace_and_leaves_another_job_alone() {
    let api = api(1000).await;
    let da = api
        .store
        .create(&PODS, "team-a", driver("team-a", "a-driver", "spark-a"))
        .unwrap();
    let db = api
        .store
        .create(&PODS, "team-b", driver("team-b", "b-driver", "spark-b"))
        .unwrap();
    api.store
        .create(
            &PODS,
            "team-a",
            executor("team-a", "a-exec-1", "spark-a", &da, None),
        )
        .unwrap();
    api.store
        .create(
            &PODS,
            "team-b",
            executor("team-b", "b-exec-1", "spark-b", &db, None),
        )
        .unwrap();
    let f = Fixture::start(api, false, &["spark-a", "spark-b"]).await;
    f.synced().await;
    set_phase(&f.api.store, "team-a", "a-driver", "Running");
    set_phase(&f.api.store, "team-a", "a-driver", "Succeeded");
    f.gone("spark-a").await;
    assert!(f.has("spark-b") && f.dir_exists("spark-b"));
    let text = f.svc.metrics().await;
    assert_eq!(
        metric(
            &text,
            "shuffle_applications_removed_total{reason=\"driver_succeeded\"}"
        ),
        Some(1.0),
        "{text}"
    );
    // An executor of the ended application registering late (its pod not killed yet) leaves
    // nothing behind either.
    spark_register(&f.svc, "spark-a", "2", None).await.unwrap();
    f.gone("spark-a").await;
    let text = f.svc.metrics().await;
    assert_eq!(
        metric(
            &text,
            "shuffle_applications_removed_total{reason=\"driver_succeeded\"}"
        ),
        Some(2.0),
        "{text}"
    );
    // A driver that failed goes the same way.
    set_phase(&f.api.store, "team-b", "b-driver", "Failed");
    f.gone("spark-b").await;
    f.stop().await;
}

#[tokio::test]
async fn an_api_outage_deletes_nothing_and_a_driver_deleted_meanwhile_is_noticed_after() {
    let api = api(1000).await;
    let da = api
        .store
        .create(&PODS, "spark", driver("spark", "a-driver", "spark-a"))
        .unwrap();
    api.store
        .create(
            &PODS,
            "spark",
            executor("spark", "a-exec-1", "spark-a", &da, None),
        )
        .unwrap();
    let f = Fixture::start(api, false, &["spark-a"]).await;
    f.synced().await;
    f.api.config.outage.set(true);
    // The client retries 503s a few times before the watch reports an error.
    f.noticed_outage().await;
    f.quiet_period().await;
    assert!(f.has("spark-a"), "an outage alone deleted the application");
    // Deleted while the watches cannot see it: found on the list after the outage.
    f.api
        .store
        .delete(&PODS, "spark", "a-driver", &DeleteOptions::default())
        .unwrap();
    f.quiet_period().await;
    assert!(f.has("spark-a"));
    f.api.config.outage.set(false);
    f.gone("spark-a").await;
    f.stop().await;
}

#[tokio::test]
async fn a_restart_deletes_nothing_without_evidence_and_relists_after_410() {
    // A short history: the watch resumes from a compacted version and gets 410 Gone.
    let api = api(4).await;
    let da = api
        .store
        .create(&PODS, "spark", driver("spark", "a-driver", "spark-a"))
        .unwrap();
    api.store
        .create(
            &PODS,
            "spark",
            executor("spark", "a-exec-1", "spark-a", &da, None),
        )
        .unwrap();
    // spark-b's executor names a driver that was never seen (a client-mode driver pod).
    let ghost = json!({"metadata": {"name": "ghost", "uid": "0000-ghost"}});
    api.store
        .create(
            &PODS,
            "spark",
            executor("spark", "b-exec-1", "spark-b", &ghost, None),
        )
        .unwrap();
    let mut f = Fixture::start(api, false, &["spark-a", "spark-b"]).await;
    f.synced().await;
    // A restart of the watches, then many unrelated changes so that resuming hits 410.
    f.follow(false);
    f.synced().await;
    f.api.config.outage.set(true);
    for i in 0..20 {
        f.api
            .store
            .create(
                &kubebed::resources::CONFIGMAPS,
                "spark",
                json!({"metadata": {"name": format!("cm-{i}")}, "data": {}}),
            )
            .unwrap();
    }
    f.api.store.compact();
    f.noticed_outage().await;
    f.api.config.outage.set(false);
    // Resuming from the last version seen answers 410 Gone: a fresh list follows.
    f.relisted("drivers", 2.0).await;
    f.relisted("executors", 2.0).await;
    f.quiet_period().await;
    assert!(f.has("spark-a") && f.has("spark-b"));
    f.api
        .store
        .delete(&PODS, "spark", "a-driver", &DeleteOptions::default())
        .unwrap();
    f.gone("spark-a").await;
    assert!(f.has("spark-b"), "no evidence about spark-b's driver");
    f.stop().await;
}

#[tokio::test]
async fn spark_secrets_are_learned_from_executor_pods_of_the_owning_driver_and_forgotten() {
    let api = api(1000).await;
    let da = api
        .store
        .create(&PODS, "spark", driver("spark", "a-driver", "spark-a"))
        .unwrap();
    let f = Fixture::start(api, true, &[]).await;
    f.synced().await;
    f.api
        .store
        .create(
            &PODS,
            "spark",
            executor("spark", "a-exec-1", "spark-a", &da, Some("c0ffee")),
        )
        .unwrap();
    let app: AppId = "spark-a".parse().unwrap();
    let claims = std::sync::Arc::clone(f.svc.core.claims());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while claims.view(&app).candidates.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "secret never learned"
        );
        tokio::time::sleep(TICK).await;
    }
    // Spark's executor authenticates with it (which binds the application to a-driver) and
    // registers.
    spark_register(&f.svc, "spark-a", "1", Some(b"c0ffee"))
        .await
        .unwrap();
    assert_eq!(
        claims.owner(&app).map(|o| o.driver_uid),
        da["metadata"]["uid"].as_str().map(str::to_owned)
    );
    // A pod of another namespace that claims spark-a with its own secret, controlled by a
    // driver pod of its namespace: ignored.
    let dx = f
        .api
        .store
        .create(&PODS, "other", driver("other", "x-driver", "spark-a"))
        .unwrap();
    f.api
        .store
        .create(
            &PODS,
            "other",
            executor("other", "x-exec", "spark-a", &dx, Some("evil")),
        )
        .unwrap();
    f.wait_metric("shuffle_kube_contested_applications", 1.0)
        .await;
    assert_eq!(claims.owner_secret(&app).as_deref(), Some(&b"c0ffee"[..]));
    f.api
        .store
        .delete(&PODS, "spark", "a-driver", &DeleteOptions::default())
        .unwrap();
    f.gone("spark-a").await;
    assert_eq!(claims.with_secrets(), 0, "forgotten with the application");
    f.stop().await;
}
