//! Resources that follow their owner pods, against the test bed's API server (plain HTTP on
//! loopback, no root): a resource goes with its ended driver and takes its Secret along, one
//! whose driver is queued stays, one whose owner never appears goes after the start grace, and
//! an API outage decides nothing.

use std::sync::Arc;
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
