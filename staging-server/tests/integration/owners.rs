//! Resources that follow their owner pods, against the test bed's API server (plain HTTP on
//! loopback, no root): a resource goes with its ended driver and takes its Secret along, one
//! whose driver is queued stays, one whose owner never appears goes after the start grace, an
//! API outage decides nothing, and forty owners cost one watch, not forty lists a round.
//! Conditions are polled with a deadline; one check that nothing happens during an outage
//! waits a fixed 600 ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kube::Client;
use kubebed::api::{ApiConfig, router};
use kubebed::resources::{NAMESPACES, PODS, SECRETS};
use kubebed::store::{DeleteOptions, Store};
use serde_json::{Value, json};
use staging_api::ids::ResourceId;
use staging_api::wire::RESOURCE_LABEL;
use staging_server::config::OwnerSettings;
use staging_server::kube::watch::OwnerMetrics;
use tokio_util::sync::CancellationToken;

use crate::common::{TestServer, random_bytes};

const TICK: Duration = Duration::from_millis(50);
const PATIENCE: Duration = Duration::from_secs(20);

async fn upload(s: &TestServer, job: &str) -> ResourceId {
    let res = s
        .client
        .post(s.url(&format!(
            "/api/v1/resources?namespace=spark&labels=spark-role=driver,job={job}"
        )))
        .header("content-type", "application/gzip")
        .body(random_bytes(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    v["id"].as_str().unwrap().parse().unwrap()
}

fn pod(job: &str, phase: &str) -> Value {
    json!({"metadata": {"name": format!("{job}-driver"),
            "labels": {"spark-role": "driver", "job": job}},
        "spec": {"containers": [{"name": "spark-kubernetes-driver", "image": "spark"}]},
        "status": {"phase": phase}})
}

fn set_phase(store: &Store, job: &str, phase: &str) {
    store
        .update(&PODS, "spark", &format!("{job}-driver"), |p| {
            p["status"]["phase"] = json!(phase);
            Ok(())
        })
        .unwrap();
}

async fn exists(s: &TestServer, id: ResourceId) -> bool {
    s.state.db().exists(id).await.unwrap()
}

async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(TICK).await;
    }
}

#[tokio::test]
async fn resources_follow_their_owner_pods_and_take_their_secrets_along() {
    let store = Store::new(1000);
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": "spark"}}))
        .unwrap();
    let api = ApiConfig::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(Arc::clone(&store), api.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = TestServer::start(|_| {}).await;
    let ended = upload(&s, "ended").await;
    let queued = upload(&s, "queued").await;
    let never = upload(&s, "never").await;
    store
        .create(&PODS, "spark", pod("ended", "Running"))
        .unwrap();
    store
        .create(&PODS, "spark", pod("queued", "Pending"))
        .unwrap();
    for (name, id) in [("ended-files", ended), ("queued-files", queued)] {
        store
            .create(
                &SECRETS,
                "spark",
                json!({"metadata": {"name": name, "labels": {
                    "app.kubernetes.io/managed-by": "staging-server",
                    RESOURCE_LABEL: id.to_string()}},
                    "stringData": {"token": "t"}}),
            )
            .unwrap();
    }

    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_retry = false;
    let registry = prometheus::Registry::new();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(staging_server::kube::watch::run(
        s.state.clone(),
        Client::try_from(config).unwrap(),
        OwnerMetrics::new(&registry).unwrap(),
        OwnerSettings {
            start_grace: Duration::from_secs(900),
            end_grace: Duration::from_millis(200),
            interval: TICK,
            delete_secrets: true,
        },
        cancel.clone(),
    ));
    let seen = |id: ResourceId| {
        let db = s.state.db().clone();
        async move {
            db.owned(0, 100)
                .await
                .unwrap()
                .resources
                .iter()
                .any(|r| r.id == id && r.owner_seen_at.is_some())
        }
    };
    until("owners seen", async || {
        seen(ended).await && seen(queued).await
    })
    .await;

    // The driver ends: its resource and Secret go; the queued one's stay.
    set_phase(&store, "ended", "Succeeded");
    until("ended resource deleted", async || !exists(&s, ended).await).await;
    until("its Secret deleted", async || {
        store.get(&SECRETS, "spark", "ended-files").is_err()
    })
    .await;
    assert!(exists(&s, queued).await && exists(&s, never).await);
    assert!(store.get(&SECRETS, "spark", "queued-files").is_ok());

    // The start grace passes: the one whose owner never appeared goes; a queued driver keeps
    // its resource however long it waits.
    // Past the unused TTL too (30 minutes by default): the queued driver keeps its bundle.
    s.clock.advance(Duration::from_secs(3600));
    until("never-started resource deleted", async || {
        !exists(&s, never).await
    })
    .await;
    let due = s.state.db().expired(s.state.now_ms(), 10).await.unwrap();
    assert!(!due.iter().any(|(id, _)| *id == queued), "{due:?}");
    assert!(exists(&s, queued).await);

    // An outage, during which the queued driver is deleted: nothing is decided until the API
    // answers again, then it goes.
    api.outage.set(true);
    until("outage noticed", async || {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "staging_kube_owner_watch_up")
            .is_some_and(|f| f.get_metric()[0].get_gauge().get_value() == 0.0)
    })
    .await;
    store
        .delete(&PODS, "spark", "queued-driver", &DeleteOptions::default())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(exists(&s, queued).await, "deleted during an outage");
    api.outage.set(false);
    until("queued resource deleted after its driver", async || {
        !exists(&s, queued).await
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&s.state.registry().gather())
        .unwrap();
    for reason in ["owner_ended", "owner_never_started"] {
        assert!(
            text.contains(&format!(
                "staging_cleanup_deletions_total{{reason=\"{reason}\"}}"
            )),
            "{text}"
        );
    }
    s.shutdown().await;
}

/// The stand-in's router, counting the requests it answers.
fn counting_router(store: Arc<Store>, api: ApiConfig, n: Arc<AtomicUsize>) -> axum::Router {
    router(store, api).layer(tower::util::MapRequestLayer::new(
        move |r: axum::extract::Request| {
            n.fetch_add(1, Ordering::Relaxed);
            r
        },
    ))
}

async fn upload_owned(s: &TestServer, labels: &str) -> ResourceId {
    let res = s
        .client
        .post(s.url(&format!(
            "/api/v1/resources?namespace=spark&labels={labels}"
        )))
        .header("content-type", "application/gzip")
        .body(random_bytes(100))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    v["id"].as_str().unwrap().parse().unwrap()
}

fn submission_driver(name: &str, ns: &str, submission: &str, phase: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": ns,
            "labels": {"spark-role": "driver", "staging-server/submission": submission}},
        "spec": {"containers": [{"name": "spark-kubernetes-driver", "image": "spark"}]},
        "status": {"phase": phase}})
}

/// Forty owners cost one list and one watch, not forty lists a round: the API requests do not
/// grow with the number of jobs. An owner whose resource arrives after the watch started is
/// followed by that same watch, and a pod of another namespace with the same labels is not
/// the owner.
#[tokio::test]
async fn owners_are_followed_by_one_watch_whatever_their_number() {
    const JOBS: usize = 40;
    let store = Store::new(1000);
    for ns in ["spark", "other"] {
        store
            .create(&NAMESPACES, "", json!({"metadata": {"name": ns}}))
            .unwrap();
    }
    let requests = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = counting_router(
        Arc::clone(&store),
        ApiConfig::default(),
        Arc::clone(&requests),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = TestServer::start(|_| {}).await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let sub = format!("s{i}");
        ids.push(
            upload_owned(
                &s,
                &format!("staging-server/submission={sub},spark-role=driver"),
            )
            .await,
        );
        store
            .create(
                &PODS,
                "spark",
                submission_driver(&format!("d{i}"), "spark", &sub, "Running"),
            )
            .unwrap();
    }
    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_retry = false;
    let registry = prometheus::Registry::new();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(staging_server::kube::watch::run(
        s.state.clone(),
        Client::try_from(config).unwrap(),
        OwnerMetrics::new(&registry).unwrap(),
        OwnerSettings {
            start_grace: Duration::from_secs(900),
            end_grace: Duration::from_millis(100),
            interval: TICK,
            delete_secrets: false,
        },
        cancel.clone(),
    ));
    let all_seen = || {
        let db = s.state.db().clone();
        async move {
            let owned = db.owned(0, 1000).await.unwrap().resources;
            owned.iter().filter(|r| r.owner_seen_at.is_some()).count()
        }
    };
    until("every owner seen", async || all_seen().await == JOBS).await;

    // A late resource, whose driver appears after the watch started, and a same-labelled pod in
    // another namespace that must not count as its owner.
    let late = upload_owned(&s, "staging-server/submission=late,spark-role=driver").await;
    store
        .create(
            &PODS,
            "other",
            submission_driver("impostor", "other", "late", "Running"),
        )
        .unwrap();
    store
        .create(
            &PODS,
            "spark",
            submission_driver("late", "spark", "late", "Running"),
        )
        .unwrap();
    until("late owner seen", async || all_seen().await == JOBS + 1).await;

    // Half the drivers end; their resources go (many rounds at a 50 ms interval); the
    // others stay.
    for i in 0..JOBS / 2 {
        store
            .update(&PODS, "spark", &format!("d{i}"), |p| {
                p["status"]["phase"] = json!("Succeeded");
                Ok(())
            })
            .unwrap();
    }
    store
        .delete(&PODS, "spark", "late", &DeleteOptions::default())
        .unwrap();
    for (i, id) in ids.iter().enumerate().take(JOBS / 2) {
        until(&format!("resource {i} deleted"), async || {
            !exists(&s, *id).await
        })
        .await;
    }
    // The impostor in the other namespace, still running, does not keep the late resource.
    until("late resource deleted", async || !exists(&s, late).await).await;
    for id in &ids[JOBS / 2..] {
        assert!(exists(&s, *id).await);
    }
    let made = requests.load(Ordering::Relaxed);
    // One list and the watch (reopened if the stand-in ended it): far from a list per owner
    // and round (40 owners x dozens of rounds).
    assert!(made <= 6, "{made} API requests for {JOBS} owners");
    let watches = registry
        .gather()
        .iter()
        .find(|f| f.name() == "staging_kube_owner_watches")
        .map(|f| f.get_metric()[0].get_gauge().get_value());
    assert_eq!(watches, Some(1.0));
    cancel.cancel();
    task.await.unwrap();
    s.shutdown().await;
}

// === What a tenant's uploads and pods must not cost the API server ===

/// Starts the owner watch against `url` with `interval`, returning its registry and cancel.
fn start_watch(
    s: &TestServer,
    url: &str,
    interval: Duration,
) -> (
    prometheus::Registry,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_retry = false;
    let registry = prometheus::Registry::new();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(staging_server::kube::watch::run(
        s.state.clone(),
        Client::try_from(config).unwrap(),
        OwnerMetrics::new(&registry).unwrap(),
        OwnerSettings {
            start_grace: Duration::from_secs(900),
            end_grace: Duration::from_secs(60),
            interval,
            delete_secrets: false,
        },
        cancel.clone(),
    ));
    (registry, cancel, task)
}

fn gauge(registry: &prometheus::Registry, name: &str) -> Option<f64> {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .map(|f| f.get_metric()[0].get_gauge().get_value())
}

/// A tenant uploading bundles whose owners name Spark's application label with a different
/// `spark-role` value each: every such role is a group of its own, counted against
/// `MAX_OTHER_GROUPS` (only Spark's own roles are always watched), so the watches stay bounded.
#[tokio::test]
async fn owners_naming_unusual_roles_open_a_bounded_number_of_watches() {
    const UPLOADS: usize = 24;
    let store = Store::new(1000);
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": "spark"}}))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(Arc::clone(&store), ApiConfig::default());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = TestServer::start(|_| {}).await;
    for i in 0..UPLOADS {
        upload_owned(&s, &format!("spark-app-selector=spark-x,spark-role=r{i}")).await;
    }
    let (registry, cancel, task) = start_watch(&s, &url, TICK);
    until("watches started", async || {
        gauge(&registry, "staging_kube_owner_watches").is_some_and(|w| w > 0.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watches = gauge(&registry, "staging_kube_owner_watches").unwrap();
    cancel.cancel();
    task.await.unwrap();
    s.shutdown().await;
    let bound = 2 + staging_server::kube::watch::MAX_OTHER_GROUPS;
    assert!(
        watches <= bound as f64,
        "{watches} cluster-wide pod watches opened by one tenant's {UPLOADS} uploads (bound {bound})"
    );
}

/// Owners no watch follows (no labels, or keys past the limits) are listed once per
/// `--kube-owner-interval`, although any change a watch reports starts a round: a tenant
/// relabelling one of its own pods that a watched group selects, ten times a second, does not
/// make the server list them more often.
#[tokio::test]
async fn changes_a_tenant_makes_do_not_list_unwatched_owners_more_than_once_per_interval() {
    let store = Store::new(1000);
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": "spark"}}))
        .unwrap();
    let fallback_lists = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&fallback_lists);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(Arc::clone(&store), ApiConfig::default()).layer(
        tower::util::MapRequestLayer::new(move |r: axum::extract::Request| {
            // The namespaced list of the label-less owner (the watches are cluster-wide).
            if r.uri().path() == "/api/v1/namespaces/spark/pods"
                && !r.uri().query().unwrap_or("").contains("watch")
            {
                n.fetch_add(1, Ordering::Relaxed);
            }
            r
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = TestServer::start(|_| {}).await;
    // The tenant's own owner in a watched group, and its pod.
    upload_owned(&s, "spark-app-selector=spark-t,spark-role=driver").await;
    store
        .create(
            &PODS,
            "spark",
            json!({"metadata": {"name": "t-driver",
                "labels": {"spark-role": "driver", "spark-app-selector": "spark-t", "flip": "a"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
                "status": {"phase": "Running"}}),
        )
        .unwrap();
    // An owner no watch follows (a uid only): listed at each round.
    let res = s
        .client
        .post(s.url(
            "/api/v1/resources?namespace=spark&labels=&owner_pod_uid=0b8f6c1e-1111-4222-8333-944444444444",
        ))
        .header("content-type", "application/gzip")
        .body(random_bytes(100))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    let interval = Duration::from_secs(30);
    let (registry, cancel, task) = start_watch(&s, &url, interval);
    until("watch up", async || {
        gauge(&registry, "staging_kube_owner_watches") == Some(1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = fallback_lists.load(Ordering::Relaxed);
    // The tenant flips a label of its own pod for 5 s (well inside one interval).
    for i in 0..50 {
        store
            .update(&PODS, "spark", "t-driver", |p| {
                p["metadata"]["labels"]["flip"] = json!(if i % 2 == 0 { "b" } else { "a" });
                Ok(())
            })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = fallback_lists.load(Ordering::Relaxed) - before;
    cancel.cancel();
    task.await.unwrap();
    s.shutdown().await;
    assert!(
        during <= 1,
        "{during} lists of a fallback owner in 5 s with a {interval:?} interval, driven by another tenant's relabelling"
    );
}
