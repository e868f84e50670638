//! Attacks of a tenant who may write pods in its own namespace and knows another
//! application's id (Spark shows it in its UI, logs and metric names), against the real
//! service, its Spark port and the test bed's API server: relabelling an old pod as the
//! victim's driver, placing an executor pod with its own secret on the node, restarting the
//! service meanwhile, and claiming applications that no driver pod of Spark's owns.

use serde_json::{Value, json};
use spark_protocol::client::Client;
use spark_protocol::ids::AppId;
use spark_protocol::message::BlockTransferMessage as Btm;

use super::{Fixture, PATIENCE, PODS, TICK, api, driver, executor, spark_register};
use crate::common::{fetch, register_app, register_exec, shared_spark_secret, write_output};
use crate::spark_protocol::{open_stream, write_map};
use kubebed::store::{DeleteOptions, Store};

const APP: &str = "spark-5a1e0c0ffee";
const VICTIM_SECRET: &str = "victim-secret";
const EVIL_SECRET: &str = "attacker-secret";
const BLOCK: &[u8] = b"the victim's shuffle block";

/// A pod of the attacker's namespace that has nothing to do with Spark, created long ago.
fn old_pod(store: &Store, ns: &str, name: &str) -> Value {
    store
        .create(
            &PODS,
            ns,
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]}}),
        )
        .unwrap();
    store
        .update(&PODS, ns, name, |p| {
            p["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
            Ok(())
        })
        .unwrap()
}

/// Relabels a pod as the driver of `app`.
fn relabel_as_driver(store: &Store, ns: &str, name: &str, app: &str) {
    store
        .update(&PODS, ns, name, |p| {
            p["metadata"]["labels"] = json!({"spark-role": "driver", "spark-app-selector": app});
            Ok(())
        })
        .unwrap();
}

/// Whether a Spark client can authenticate as `app` with `secret`.
async fn authenticates(f: &Fixture, app: &str, secret: &str) -> bool {
    let mut c = Client::connect(f.svc.spark).await.unwrap();
    matches!(c.authenticate(app, secret.as_bytes()).await, Ok(Ok(())))
}

/// Waits until `secret` authenticates as `app`.
async fn until_authenticates(f: &Fixture, app: &str, secret: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !authenticates(f, app, secret).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{app}'s secret never authenticates"
        );
        tokio::time::sleep(TICK).await;
    }
}

/// Fetches shuffle 0, map 1, reduce 0 of `app` over Spark's protocol with `secret`.
async fn spark_fetch(f: &Fixture, app: &str, secret: &str) -> Result<Vec<u8>, String> {
    let mut c = Client::connect(f.svc.spark).await.unwrap();
    c.authenticate(app, secret.as_bytes())
        .await
        .map_err(|e| e.to_string())??;
    let (sid, n) = open_stream(
        &mut c,
        &Btm::FetchShuffleBlocks {
            app_id: app.into(),
            exec_id: "1".into(),
            shuffle_id: 0,
            map_ids: vec![1],
            reduce_ids: vec![vec![0]],
            batch_fetch_enabled: false,
        },
    )
    .await;
    let mut got = c.fetch_chunks(sid, n).await.map_err(|e| e.to_string())?;
    got.pop()
        .ok_or_else(|| "no chunk".to_owned())?
        .map(|b| b.to_vec())
}

/// The victim's job: its driver pod, an executor pod on the node carrying Spark's secret,
/// the executor registered with the learned secret and one map output written.
async fn victim_job(f: &Fixture) -> Value {
    let d = f
        .api
        .store
        .create(&PODS, "team-a", driver("team-a", "a-driver", APP))
        .unwrap();
    f.api
        .store
        .create(
            &PODS,
            "team-a",
            executor("team-a", "a-exec-1", APP, &d, Some(VICTIM_SECRET)),
        )
        .unwrap();
    until_authenticates(f, APP, VICTIM_SECRET).await;
    let dir = spark_register(&f.svc, APP, "1", Some(VICTIM_SECRET.as_bytes()))
        .await
        .unwrap();
    write_map(&[dir], 0, 1, &[BLOCK.to_vec()]);
    assert_eq!(spark_fetch(f, APP, VICTIM_SECRET).await.unwrap(), BLOCK);
    // The binding to the victim's driver pod reached the state directory.
    let app: AppId = APP.parse().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f
        .svc
        .core
        .pod_owners()
        .await
        .unwrap()
        .iter()
        .any(|(a, o)| *a == app && o.namespace == "team-a" && o.driver_uid == d["metadata"]["uid"])
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the binding was never persisted"
        );
        tokio::time::sleep(TICK).await;
    }
    d
}

/// The attacker's move: its old pod relabelled as the driver of `APP`, and a pod of its
/// namespace on the node with executor labels, controlled by that pod, with its own secret.
fn impostor(store: &Store, old: &Value) {
    relabel_as_driver(store, "team-b", "old-web", APP);
    store
        .create(
            &PODS,
            "team-b",
            executor("team-b", "x-exec", APP, old, Some(EVIL_SECRET)),
        )
        .unwrap();
}

/// Deletes the attacker's pod, waits until the driver watch saw it go, lets several grace
/// periods pass, and checks that the victim's data is all there.
async fn delete_impostor_and_check(f: &Fixture, deletes_before: f64) {
    f.api
        .store
        .delete(&PODS, "team-b", "old-web", &DeleteOptions::default())
        .unwrap();
    f.wait_metric(
        "shuffle_kube_watch_events_total{type=\"delete\",watch=\"drivers\"}",
        deletes_before + 1.0,
    )
    .await;
    f.quiet_period().await;
    assert!(f.has(APP) && f.dir_exists(APP), "the victim's data went");
    assert_eq!(spark_fetch(f, APP, VICTIM_SECRET).await.unwrap(), BLOCK);
}

#[tokio::test]
async fn an_old_pod_relabelled_as_the_driver_in_another_namespace_neither_reads_nor_deletes() {
    let api = api(1000).await;
    let old = old_pod(&api.store, "team-b", "old-web");
    let f = Fixture::start(api, true, &[]).await;
    f.synced().await;
    let victim_driver = victim_job(&f).await;
    impostor(&f.api.store, &old);
    // Both changes reached the watches (the relabelled pod now matches the driver selector).
    f.wait_metric(
        "shuffle_kube_watch_events_total{type=\"apply\",watch=\"executors\"}",
        2.0,
    )
    .await;
    f.wait_metric(
        "shuffle_kube_watch_events_total{type=\"apply\",watch=\"drivers\"}",
        2.0,
    )
    .await;
    assert!(!authenticates(&f, APP, EVIL_SECRET).await);
    assert_eq!(spark_fetch(&f, APP, VICTIM_SECRET).await.unwrap(), BLOCK);
    delete_impostor_and_check(&f, 0.0).await;
    // The victim's own driver still decides.
    f.api
        .store
        .delete(
            &PODS,
            "team-a",
            victim_driver["metadata"]["name"].as_str().unwrap(),
            &DeleteOptions::default(),
        )
        .unwrap();
    f.gone(APP).await;
    f.stop().await;
}

#[tokio::test]
async fn after_a_restart_an_impostor_driver_of_another_namespace_gets_neither_secret_nor_data() {
    let api = api(1000).await;
    let old = old_pod(&api.store, "team-b", "old-web");
    let f = Fixture::start(api, true, &[]).await;
    f.synced().await;
    victim_job(&f).await;
    impostor(&f.api.store, &old);
    // The service restarts: its learned secrets are gone, both claims are listed afresh.
    let f = f.restart().await;
    f.synced().await;
    until_authenticates(&f, APP, VICTIM_SECRET).await;
    assert!(!authenticates(&f, APP, EVIL_SECRET).await);
    assert_eq!(spark_fetch(&f, APP, VICTIM_SECRET).await.unwrap(), BLOCK);
    // The victim's executors register again with their secret.
    spark_register(&f.svc, APP, "2", Some(VICTIM_SECRET.as_bytes()))
        .await
        .unwrap();
    delete_impostor_and_check(&f, 0.0).await;
    f.stop().await;
}

/// Fake driver and executor pods of the attacker's namespace claiming `APP`; waits until the
/// service learned the planted secret (which must then answer for nothing).
async fn plant_secret(f: &Fixture) {
    let dx = f
        .api
        .store
        .create(&PODS, "team-b", driver("team-b", "old-web", APP))
        .unwrap();
    f.api
        .store
        .create(
            &PODS,
            "team-b",
            executor("team-b", "x-exec", APP, &dx, Some(EVIL_SECRET)),
        )
        .unwrap();
    let claims = f.svc.core.claims();
    let app = APP.parse().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while claims.view(&app).candidates.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the planted secret never reached the service"
        );
        tokio::time::sleep(TICK).await;
    }
}

#[tokio::test]
async fn fake_pods_neither_read_nor_delete_an_application_registered_over_grpc() {
    let api = api(1000).await;
    let f = Fixture::start(api, true, &[]).await;
    f.synced().await;
    let mut c = f.svc.client().await;
    let token = register_app(&mut c, APP).await;
    let d = f.svc.exec_dir(&format!("blockmgr-{APP}"));
    register_exec(&mut c, &token, APP, "1", &[&d]).await;
    write_output(&mut c, &token, APP, "1", 0, 1, &[BLOCK.to_vec()])
        .await
        .unwrap();
    plant_secret(&f).await;
    assert!(
        !authenticates(&f, APP, EVIL_SECRET).await,
        "a planted secret opened an application registered over gRPC"
    );
    f.api
        .store
        .delete(&PODS, "team-b", "old-web", &DeleteOptions::default())
        .unwrap();
    f.wait_metric(
        "shuffle_kube_watch_events_total{type=\"delete\",watch=\"drivers\"}",
        1.0,
    )
    .await;
    f.quiet_period().await;
    assert!(
        f.has(APP) && f.dir_exists(APP),
        "a fake driver's end deleted it"
    );
    let got = fetch(&mut c, &token, APP, "1", &[(0, 1, 0, 1)])
        .await
        .unwrap();
    assert_eq!(got, vec![BLOCK.to_vec()]);
    f.stop().await;
}

#[tokio::test]
async fn fake_pods_neither_shadow_the_operators_secret_nor_delete_its_application_after_a_restart()
{
    const OPERATOR: &str = "operator-secret";
    let api = api(1000).await;
    let f = Fixture::start_with(api, true, &[], |c| shared_spark_secret(c, OPERATOR)).await;
    f.synced().await;
    // A job without a driver pod of Spark's making authenticates with the operator's secret.
    let dir = spark_register(&f.svc, APP, "1", Some(OPERATOR.as_bytes()))
        .await
        .unwrap();
    write_map(&[dir], 0, 1, &[BLOCK.to_vec()]);
    // The mark survives a restart.
    let f = f.restart().await;
    f.synced().await;
    plant_secret(&f).await;
    assert!(
        !authenticates(&f, APP, EVIL_SECRET).await,
        "a learned secret shadowed the operator's"
    );
    assert_eq!(spark_fetch(&f, APP, OPERATOR).await.unwrap(), BLOCK);
    f.api
        .store
        .delete(&PODS, "team-b", "old-web", &DeleteOptions::default())
        .unwrap();
    f.wait_metric(
        "shuffle_kube_watch_events_total{type=\"delete\",watch=\"drivers\"}",
        1.0,
    )
    .await;
    f.quiet_period().await;
    assert!(
        f.has(APP) && f.dir_exists(APP),
        "a fake driver's end deleted it"
    );
    assert_eq!(spark_fetch(&f, APP, OPERATOR).await.unwrap(), BLOCK);
    f.stop().await;
}

/// The tenant's pre-emptive move: it learned `APP` (Spark's UI, a log line) before the
/// victim's executors reach this node, and makes its own driver pod and an executor pod on
/// the node controlled by it, with `APP` in the label and a secret of its own.
fn pre_create(store: &Store) -> Value {
    let dt = store
        .create(&PODS, "team-b", driver("team-b", "b-driver", APP))
        .unwrap();
    store
        .create(
            &PODS,
            "team-b",
            executor("team-b", "b-exec", APP, &dt, Some(EVIL_SECRET)),
        )
        .unwrap();
    dt
}

/// Waits until the service knows the secrets of `n` claimants of `APP`.
async fn until_candidates(f: &Fixture, n: usize) {
    let app: AppId = APP.parse().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while f.svc.core.claims().view(&app).candidates.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no claimant's secret ever reached the service"
        );
        tokio::time::sleep(TICK).await;
    }
}

/// A counter of the service's own metrics (0 when not written yet).
async fn svc_metric(f: &Fixture, series: &str) -> f64 {
    crate::common::metric(&f.svc.metrics().await, series).unwrap_or(0.0)
}

#[tokio::test]
async fn pods_a_tenant_makes_before_the_victims_executors_arrive_bind_nothing() {
    let api = api(1000).await;
    pre_create(&api.store);
    let f = Fixture::start(api, true, &[]).await;
    f.synced().await;
    until_candidates(&f, 1).await;
    // Alone on the node, the tenant's pods bind nothing.
    f.quiet_period().await;
    let app: AppId = APP.parse().unwrap();
    assert_eq!(f.svc.core.claims().owner(&app), None);
    assert!(f.svc.core.pod_owners().await.unwrap().is_empty());
    // The victim's job arrives: two driver pods claim APP; the victim's executor proves its
    // secret, which binds APP to the victim's driver pod, registers and writes.
    let victim_driver = victim_job(&f).await;
    f.wait_metric("shuffle_kube_contested_applications", 1.0)
        .await;
    // Network crypto works as well as SASL for the victim.
    let mut c = Client::connect(f.svc.spark).await.unwrap();
    c.authenticate_crypto(
        APP,
        VICTIM_SECRET.as_bytes(),
        spark_protocol::crypto::Cipher::Gcm,
        spark_protocol::crypto::EngineVersion::V2,
    )
    .await
    .unwrap()
    .unwrap();
    // The tenant, proving its own pods' secret now, is refused, and counted as such.
    assert!(!authenticates(&f, APP, EVIL_SECRET).await);
    assert!(
        svc_metric(
            &f,
            "shuffle_authority_refusals_total{protocol=\"spark\",reason=\"bound_to_another_driver\"}"
        )
        .await
            >= 1.0
    );
    // The tenant's driver pod ends: nothing of the victim's goes.
    delete_tenant_driver_and_check(&f).await;
    // A restart keeps the binding: the victim's secret answers, the tenant's does not.
    let f = f.restart().await;
    f.synced().await;
    until_authenticates(&f, APP, VICTIM_SECRET).await;
    assert!(!authenticates(&f, APP, EVIL_SECRET).await);
    assert_eq!(spark_fetch(&f, APP, VICTIM_SECRET).await.unwrap(), BLOCK);
    // The victim's own driver still decides.
    f.api
        .store
        .delete(
            &PODS,
            "team-a",
            victim_driver["metadata"]["name"].as_str().unwrap(),
            &DeleteOptions::default(),
        )
        .unwrap();
    f.gone(APP).await;
    f.stop().await;
}

/// Deletes the tenant's driver pod, waits until the driver watch saw it go, lets several grace
/// periods pass, and checks that the victim's data is all there.
async fn delete_tenant_driver_and_check(f: &Fixture) {
    f.api
        .store
        .delete(&PODS, "team-b", "b-driver", &DeleteOptions::default())
        .unwrap();
    f.wait_metric(
        "shuffle_kube_watch_events_total{type=\"delete\",watch=\"drivers\"}",
        1.0,
    )
    .await;
    f.quiet_period().await;
    assert!(f.has(APP) && f.dir_exists(APP), "the victim's data went");
    assert_eq!(spark_fetch(f, APP, VICTIM_SECRET).await.unwrap(), BLOCK);
}

/// What stays open, made visible: a tenant that pre-creates pods AND authenticates with its
/// own pods' secret before any executor of the victim does binds the id on this node to its
/// own driver pod. The victim's executors on this node are then refused (counted, logged),
/// never served into the tenant's application, and the tenant sees nothing of the victim's.
#[tokio::test]
async fn a_tenant_that_authenticates_first_locks_the_id_on_the_node_but_reads_nothing() {
    let api = api(1000).await;
    pre_create(&api.store);
    let f = Fixture::start(api, true, &[]).await;
    f.synced().await;
    until_candidates(&f, 1).await;
    until_authenticates(&f, APP, EVIL_SECRET).await;
    let dv = f
        .api
        .store
        .create(&PODS, "team-a", driver("team-a", "a-driver", APP))
        .unwrap();
    f.api
        .store
        .create(
            &PODS,
            "team-a",
            executor("team-a", "a-exec-1", APP, &dv, Some(VICTIM_SECRET)),
        )
        .unwrap();
    f.wait_metric("shuffle_kube_contested_applications", 1.0)
        .await;
    until_candidates(&f, 2).await;
    let err = spark_register(&f.svc, APP, "1", Some(VICTIM_SECRET.as_bytes()))
        .await
        .unwrap_err();
    assert!(err.contains("bound to another driver pod"), "{err}");
    assert!(
        svc_metric(
            &f,
            "shuffle_authority_refusals_total{protocol=\"spark\",reason=\"bound_to_another_driver\"}"
        )
        .await
            >= 1.0
    );
    assert!(!f.has(APP), "nothing of the victim's was registered");
    f.stop().await;
}

#[tokio::test]
async fn grpc_registration_of_an_id_its_executor_pods_claim_or_bind_is_refused() {
    let api = api(1000).await;
    let f = Fixture::start(api, true, &[]).await;
    f.synced().await;
    // The victim's executor pod is on the node with its secret: claimed, not yet bound.
    let d = f
        .api
        .store
        .create(&PODS, "team-a", driver("team-a", "a-driver", APP))
        .unwrap();
    f.api
        .store
        .create(
            &PODS,
            "team-a",
            executor("team-a", "a-exec-1", APP, &d, Some(VICTIM_SECRET)),
        )
        .unwrap();
    until_candidates(&f, 1).await;
    let e = grpc_register(&f).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    // Bound and registered with the learned secret: refused too, and the victim's executors
    // keep working.
    until_authenticates(&f, APP, VICTIM_SECRET).await;
    let dir = spark_register(&f.svc, APP, "1", Some(VICTIM_SECRET.as_bytes()))
        .await
        .unwrap();
    write_map(&[dir], 0, 1, &[BLOCK.to_vec()]);
    let e = grpc_register(&f).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert_eq!(spark_fetch(&f, APP, VICTIM_SECRET).await.unwrap(), BLOCK);
    // After a restart, with the executor pod gone meanwhile (nothing claims it now): the
    // registration and the binding keep the rule.
    let app: AppId = APP.parse().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f
        .svc
        .core
        .pod_owners()
        .await
        .unwrap()
        .iter()
        .any(|(a, _)| *a == app)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "binding not persisted"
        );
        tokio::time::sleep(TICK).await;
    }
    f.api
        .store
        .delete(
            &PODS,
            "team-a",
            "a-exec-1",
            &DeleteOptions {
                grace: Some(0),
                ..DeleteOptions::default()
            },
        )
        .unwrap();
    let f = f.restart().await;
    f.synced().await;
    let e = grpc_register(&f).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        svc_metric(
            &f,
            "shuffle_authority_refusals_total{protocol=\"grpc\",reason=\"spark_application\"}"
        )
        .await
            >= 1.0
    );
    f.stop().await;
}

/// Registers `APP` over gRPC, with no credential.
async fn grpc_register(
    f: &Fixture,
) -> Result<tonic::Response<shuffle_proto::v1::RegisterApplicationResponse>, tonic::Status> {
    f.svc
        .client()
        .await
        .register_application(shuffle_proto::v1::RegisterApplicationRequest {
            app_id: APP.into(),
            ..Default::default()
        })
        .await
}

/// Pods that cost a tenant nothing on the node: created with the node's name, the victim's
/// application label and each its own driver pod, and rejected by the kubelet (`Failed`),
/// more of them than the claimants the service keeps secrets for. The victim's running
/// executor still teaches its secret, which authenticates and reads its blocks.
#[tokio::test]
async fn a_tenants_rejected_pods_on_the_node_do_not_lock_the_victim_out() {
    let api = api(1000).await;
    let f = Fixture::start(api, true, &[]).await;
    f.synced().await;
    let rejected = shuffle_service::core::MAX_CANDIDATES + 8;
    for i in 0..rejected {
        let d = f
            .api
            .store
            .create(
                &PODS,
                "team-b",
                driver("team-b", &format!("b-driver-{i}"), APP),
            )
            .unwrap();
        let name = format!("b-exec-{i}");
        f.api
            .store
            .create(
                &PODS,
                "team-b",
                executor("team-b", &name, APP, &d, Some(EVIL_SECRET)),
            )
            .unwrap();
        super::set_phase(&f.api.store, "team-b", &name, "Failed");
    }
    f.wait_metric(
        "shuffle_kube_watch_events_total{type=\"apply\",watch=\"executors\"}",
        (2 * rejected) as f64,
    )
    .await;
    victim_job(&f).await;
    assert!(!authenticates(&f, APP, EVIL_SECRET).await);
    f.stop().await;
}
