//! The real binary with learned secrets and a shared secret file, killed and started again
//! while nothing shows the applications' secrets (their executor pods gone, or left with the
//! secret in a form the service does not read): an application bound to its driver pod, or
//! registered with a learned secret, is never opened by the shared secret meanwhile, and opens
//! again with its own secret once an executor pod of its driver shows it.

use std::path::Path;
use std::time::Duration;

use kubebed::store::DeleteOptions;
use spark_protocol::client::Client;

use super::{NODE, PATIENCE, PODS, TICK, api, driver, executor};
use crate::common::{metric, reqwest_get, spawn_service_env, write_secret};
use crate::spark_protocol::{open_stream, register_msg, write_map};

const SHARED: &str = "operator-shared-secret";
/// Registered with its learned secret, with data.
const REGISTERED: &str = "spark-0a11ce0000000001";
const REGISTERED_SECRET: &str = "registered-learned-secret";
/// Only authenticated: bound, nothing registered (kept while an executor pod of it is on the
/// node).
const BOUND: &str = "spark-0b0b0000000000002";
const BOUND_SECRET: &str = "bound-learned-secret";
const BLOCK: &[u8] = b"rows of the registered application";

/// Deletion with no grace period: the pod is gone from the API at once.
fn gone_at_once() -> DeleteOptions {
    DeleteOptions {
        grace: Some(0),
        ..DeleteOptions::default()
    }
}

fn kubeconfig(path: &Path, url: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: user\n  user: {{}}\ncontexts:\n- name: bed\n  context: {{cluster: bed, user: user}}\ncurrent-context: bed\n"
        ),
    )
    .unwrap();
}

/// Whether `secret` authenticates as `app` over SASL.
async fn authenticates(spark: &str, app: &str, secret: &str) -> Result<(), String> {
    let mut c = Client::connect(spark).await.map_err(|e| e.to_string())?;
    c.authenticate(app, secret.as_bytes())
        .await
        .map_err(|e| e.to_string())?
}

/// Waits until `secret` authenticates as `app`.
async fn until_authenticates(spark: &str, app: &str, secret: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while authenticates(spark, app, secret).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{app}'s secret never authenticates"
        );
        tokio::time::sleep(TICK).await;
    }
}

/// Waits until the service wrote the bindings of both applications to its state directory.
async fn until_bindings_written(state: &Path) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let n: i64 = rusqlite::Connection::open_with_flags(
            state.join("shuffle.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM pod_owners WHERE app_id IN (?1, ?2)",
                [REGISTERED, BOUND],
                |r| r.get(0),
            )
        })
        .unwrap_or(0);
        if n == 2 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bindings never written"
        );
        tokio::time::sleep(TICK).await;
    }
}

/// Waits until the binary's driver and executor watches have listed.
async fn until_synced(admin: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = reqwest_get(&format!("http://{admin}/metrics")).await;
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

#[tokio::test]
async fn after_a_restart_the_shared_secret_never_opens_a_bound_or_learned_application() {
    let api = api(1000).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubeconfig");
    kubeconfig(&config, &api.url);
    let secret_file = dir.path().join("shared-secret");
    write_secret(&secret_file, SHARED);
    let state = dir.path().join("state");
    let args = [
        "--kube-watch",
        "on",
        "--kube-node-name",
        NODE,
        "--kube-learn-secrets",
        "--spark-auth-secret-file",
        secret_file.to_str().unwrap(),
        "--spark-allow-shared-secret-with-learned",
        "--sweep-interval",
        "100ms",
    ];
    let env = [("KUBECONFIG", config.as_path())];
    for (ns, app, secret) in [
        ("team-a", REGISTERED, REGISTERED_SECRET),
        ("team-b", BOUND, BOUND_SECRET),
    ] {
        let d = api
            .store
            .create(&PODS, ns, driver(ns, &format!("{app}-driver"), app))
            .unwrap();
        api.store
            .create(
                &PODS,
                ns,
                executor(ns, &format!("{app}-exec"), app, &d, Some(secret)),
            )
            .unwrap();
    }
    let (mut child, ready) = spawn_service_env(dir.path(), &args, &env).await;
    // REGISTERED's executor proves its learned secret, registers and writes a block;
    // BOUND's only proves its secret.
    until_authenticates(&ready.spark, REGISTERED, REGISTERED_SECRET).await;
    let exec_dir = dir.path().join(format!("vol/blockmgr-{REGISTERED}"));
    std::fs::create_dir_all(&exec_dir).unwrap();
    let mut c = Client::connect(&ready.spark).await.unwrap();
    c.authenticate(REGISTERED, REGISTERED_SECRET.as_bytes())
        .await
        .unwrap()
        .unwrap();
    c.call(&register_msg(REGISTERED, "1", &[&exec_dir]))
        .await
        .unwrap()
        .unwrap();
    write_map(&[exec_dir.canonicalize().unwrap()], 0, 1, &[BLOCK.to_vec()]);
    until_authenticates(&ready.spark, BOUND, BOUND_SECRET).await;
    until_bindings_written(&state).await;
    // Before the restart the shared secret opens neither (their own secrets are known).
    for app in [REGISTERED, BOUND] {
        assert!(authenticates(&ready.spark, app, SHARED).await.is_err());
    }

    child.kill().await.unwrap();
    // While the service is down, REGISTERED's executor pod goes (dynamic allocation), and
    // BOUND's is replaced by one whose secret comes from a Secret reference, which the service
    // does not read: after the restart nothing shows either secret.
    for (ns, app) in [("team-a", REGISTERED), ("team-b", BOUND)] {
        api.store
            .delete(&PODS, ns, &format!("{app}-exec"), &gone_at_once())
            .unwrap();
    }
    let d = api
        .store
        .get(&PODS, "team-b", &format!("{BOUND}-driver"))
        .unwrap();
    let mut by_reference = executor("team-b", &format!("{BOUND}-exec-2"), BOUND, &d, None);
    by_reference["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "_SPARK_AUTH_SECRET",
            "valueFrom": {"secretKeyRef": {"name": "spark-secret", "key": "secret"}}}));
    api.store.create(&PODS, "team-b", by_reference).unwrap();
    let (mut child, ready) = spawn_service_env(dir.path(), &args, &env).await;
    until_synced(&ready.admin).await;
    // Several decision ticks pass (to show that nothing drops the bindings meanwhile).
    tokio::time::sleep(Duration::from_millis(800)).await;
    for app in [REGISTERED, BOUND] {
        let e = authenticates(&ready.spark, app, SHARED).await.unwrap_err();
        assert!(e.contains("not known on this node yet"), "{app}: {e}");
    }
    // The shared secret still serves an application nothing ties to pods.
    authenticates(&ready.spark, "spark-0c0c0000000000003", SHARED)
        .await
        .unwrap();
    let text = reqwest_get(&format!("http://{}/metrics", ready.admin)).await;
    assert_eq!(
        metric(
            &text,
            "shuffle_authority_refusals_total{protocol=\"spark\",reason=\"awaiting_learned_secret\"}"
        ),
        Some(2.0),
        "{text}"
    );
    // An executor pod of REGISTERED's driver comes back: its secret opens it again, and its
    // block is there.
    let d = api
        .store
        .get(&PODS, "team-a", &format!("{REGISTERED}-driver"))
        .unwrap();
    api.store
        .create(
            &PODS,
            "team-a",
            executor(
                "team-a",
                &format!("{REGISTERED}-exec-2"),
                REGISTERED,
                &d,
                Some(REGISTERED_SECRET),
            ),
        )
        .unwrap();
    until_authenticates(&ready.spark, REGISTERED, REGISTERED_SECRET).await;
    assert!(
        authenticates(&ready.spark, REGISTERED, SHARED)
            .await
            .is_err()
    );
    let mut c = Client::connect(&ready.spark).await.unwrap();
    c.authenticate(REGISTERED, REGISTERED_SECRET.as_bytes())
        .await
        .unwrap()
        .unwrap();
    let (sid, n) = open_stream(
        &mut c,
        &spark_protocol::message::BlockTransferMessage::FetchShuffleBlocks {
            app_id: REGISTERED.into(),
            exec_id: "1".into(),
            shuffle_id: 0,
            map_ids: vec![1],
            reduce_ids: vec![vec![0]],
            batch_fetch_enabled: false,
        },
    )
    .await;
    let got = c.fetch_chunks(sid, n).await.unwrap();
    assert_eq!(got[0].as_deref().unwrap(), BLOCK);
    child.kill().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    api.stop.cancel();
}
