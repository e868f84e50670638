//! `submit` following its driver pod to the end (`staging_client::submit::driver::follow`)
//! against the test bed's API server (plain HTTP on loopback, no root): a driver that fails
//! while followed gives its exit code, a deleted or missing driver exit status 8, an API
//! server that cannot be reached exit status 7 once the outage limit has passed. Then the
//! same through the binary, with a stand-in spark-submit that creates the driver pod as Spark
//! would, already ended: `submit`'s exit status for each way the driver and spark-submit end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kube::Client;
use kubebed::api::{ApiConfig, router};
use kubebed::resources::{NAMESPACES, PODS};
use kubebed::store::{DeleteOptions, Store};
use serde_json::{Value, json};
use staging_client::submit::driver::{DriverPod, Outcome, SPARK_DRIVER_CONTAINER, follow};

const PATIENCE: Duration = Duration::from_secs(20);
const OUTAGE: Duration = Duration::from_secs(60);

/// The bed's API server on a port of its own, counting the watches it was asked for.
async fn api_server(store: &Arc<Store>) -> (Client, Arc<AtomicUsize>) {
    let watches = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&watches);
    let app = router(Arc::clone(store), ApiConfig::default()).layer(
        tower::util::MapRequestLayer::new(move |r: axum::extract::Request| {
            if r.uri().query().is_some_and(|q| q.contains("watch=true")) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            r
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (client(&url), watches)
}

fn client(url: &str) -> Client {
    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

fn store() -> Arc<Store> {
    let store = Store::new(1000);
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": "spark"}}))
        .unwrap();
    store
}

fn driver_pod(submission: &str) -> DriverPod {
    DriverPod {
        namespace: "spark".into(),
        selector: format!("spark-role=driver,staging-server/submission={submission}"),
        container: SPARK_DRIVER_CONTAINER.into(),
    }
}

fn pod(name: &str, submission: &str) -> Value {
    json!({"metadata": {"name": name,
            "labels": {"spark-role": "driver", "staging-server/submission": submission}},
        "spec": {"containers": [{"name": SPARK_DRIVER_CONTAINER, "image": "spark"}]},
        "status": {"phase": "Running"}})
}

/// Waits until the follower watches (it listed the pod running).
async fn until_watched(watches: &AtomicUsize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while watches.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no watch within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_driver_failing_while_followed_gives_its_exit_code_and_one_sentence() {
    let store = store();
    let (client, watches) = api_server(&store).await;
    store
        .create(&PODS, "spark", pod("etl-driver", "s1"))
        .unwrap();
    // Another submission's driver, failed: not this one's.
    let mut other = pod("other-driver", "s2");
    other["status"]["phase"] = json!("Failed");
    store.create(&PODS, "spark", other).unwrap();

    let following = tokio::spawn(async move { follow(&client, &driver_pod("s1"), OUTAGE).await });
    until_watched(&watches).await;
    assert!(!following.is_finished(), "a running driver has not ended");
    store
        .update(&PODS, "spark", "etl-driver", |p| {
            p["status"] = json!({"phase": "Failed", "containerStatuses": [{
                "name": SPARK_DRIVER_CONTAINER, "image": "spark", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]});
            Ok(())
        })
        .unwrap();
    let ended = tokio::time::timeout(PATIENCE, following)
        .await
        .expect("the end seen")
        .unwrap()
        .unwrap();
    assert_eq!(
        ended,
        Outcome::Failed {
            code: 3,
            message: "driver pod spark/etl-driver ended in phase Failed (Error), container spark-kubernetes-driver exit code 3; submit exits with 3".into()
        }
    );
}

#[tokio::test]
async fn a_driver_that_succeeded_keeps_spark_submits_status() {
    let store = store();
    let (client, _) = api_server(&store).await;
    let mut done = pod("etl-driver", "s1");
    done["status"]["phase"] = json!("Succeeded");
    store.create(&PODS, "spark", done).unwrap();
    let ended = tokio::time::timeout(PATIENCE, follow(&client, &driver_pod("s1"), OUTAGE))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended, Outcome::Succeeded);
}

#[tokio::test]
async fn a_driver_deleted_before_its_end_or_never_seen_is_exit_status_8() {
    let store = store();
    let (client, watches) = api_server(&store).await;
    let missing = tokio::time::timeout(PATIENCE, follow(&client, &driver_pod("s0"), OUTAGE))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(missing.code, 8, "{}", missing.message);
    assert!(
        missing.message.contains(
            "the driver pod labelled spark-role=driver,staging-server/submission=s0 in namespace spark disappeared"
        ),
        "{}",
        missing.message
    );

    store
        .create(&PODS, "spark", pod("etl-driver", "s1"))
        .unwrap();
    let following = tokio::spawn(async move { follow(&client, &driver_pod("s1"), OUTAGE).await });
    until_watched(&watches).await;
    store
        .delete(&PODS, "spark", "etl-driver", &DeleteOptions::default())
        .unwrap();
    let gone = tokio::time::timeout(PATIENCE, following)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(gone.code, 8, "{}", gone.message);
    assert_eq!(
        gone.message,
        "driver pod spark/etl-driver disappeared before it ended (deleted?); the job's outcome is unknown"
    );
}

#[tokio::test]
async fn an_api_server_out_of_reach_past_the_outage_limit_is_exit_status_7() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = client(&format!("http://127.0.0.1:{port}"));
    let started = std::time::Instant::now();
    // One retry after 1 s fits in 2 s, the next (2 s more) does not.
    let e = tokio::time::timeout(
        PATIENCE,
        follow(&client, &driver_pod("s1"), Duration::from_secs(2)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(e.code, 7, "{}", e.message);
    assert!(
        e.message.starts_with(
            "the Kubernetes API could not be reached for 2s while following the driver pod labelled"
        ),
        "{}",
        e.message
    );
    assert!(
        e.message.ends_with("the job's outcome is unknown"),
        "{}",
        e.message
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

/// A spark-submit stand-in: creates the driver pod, labelled as the command line says, with
/// the status in `FAKE_DRIVER_STATUS` (none when unset), then exits with `FAKE_EXIT`.
const FAKE_SPARK_SUBMIT: &str = r#"#!/usr/bin/env python3
import json, os, sys, urllib.request
label = "spark.kubernetes.driver.label.staging-server/submission="
ids = [a[len(label):] for a in sys.argv if a.startswith(label)]
status = os.environ.get("FAKE_DRIVER_STATUS")
if status:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "etl-driver",
                        "labels": {"spark-role": "driver", "staging-server/submission": ids[-1]}},
           "spec": {"containers": [{"name": "spark-kubernetes-driver", "image": "spark"}]},
           "status": json.loads(status)}
    req = urllib.request.Request(os.environ["FAKE_API"] + "/api/v1/namespaces/spark/pods",
                                 data=json.dumps(pod).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"#;

/// A new API server with its kubeconfig in `dir`: one driver pod per server.
async fn fresh_api(dir: &std::path::Path) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let app = router(store(), ApiConfig::default());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    std::fs::write(
        dir.join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: bed\nclusters: [{{name: bed, cluster: {{server: \"{api}\"}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: [{{name: bed, context: {{cluster: bed, user: u}}}}]\n"
        ),
    )
    .unwrap();
    api
}

/// One `submit` of a job without local files (nothing to stage, no staging server needed):
/// its exit code and standard error.
async fn submit(
    dir: &std::path::Path,
    api: &str,
    driver_status: Option<Value>,
    spark_exit: u8,
    extra_conf: &[&str],
) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_staging-server"));
    cmd.args(["submit", "--server", "http://127.0.0.1:9"])
        .args(["--init-image", "img", "--spark-submit"])
        .arg(dir.join("spark-submit"))
        .args([
            "--",
            "--master",
            &format!("k8s://{api}"),
            "--deploy-mode",
            "cluster",
        ])
        .args(["--conf", "spark.kubernetes.namespace=spark"]);
    for c in extra_conf {
        cmd.args(["--conf", c]);
    }
    cmd.arg("local:///opt/job.py")
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("FAKE_API", api)
        .env("FAKE_EXIT", spark_exit.to_string())
        .env_remove("FAKE_DRIVER_STATUS")
        .kill_on_drop(true);
    if let Some(s) = driver_status {
        cmd.env("FAKE_DRIVER_STATUS", s.to_string());
    }
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .expect("submit ended")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn submit_exits_with_the_failed_drivers_code_unless_spark_submit_does_not_wait() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("spark-submit");
    std::fs::write(&fake, FAKE_SPARK_SUBMIT).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let terminated = |code: i64, reason: &str| {
        json!({"phase": "Failed", "containerStatuses": [{"name": SPARK_DRIVER_CONTAINER,
            "image": "spark", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": reason}}}]})
    };

    // spark-submit exits 0, the driver failed: its exit code, in one sentence.
    let url = fresh_api(dir.path()).await;
    let (code, stderr) = submit(dir.path(), &url, Some(terminated(3, "Error")), 0, &[]).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.lines().last().unwrap_or_default()
            == "staging-server submit: driver pod spark/etl-driver ended in phase Failed (Error), container spark-kubernetes-driver exit code 3; submit exits with 3",
        "{stderr}"
    );

    // The driver succeeded: spark-submit's 0.
    let url = fresh_api(dir.path()).await;
    let (code, stderr) = submit(
        dir.path(),
        &url,
        Some(json!({"phase": "Succeeded"})),
        0,
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");

    // spark-submit failed: its status, nothing followed.
    let url = fresh_api(dir.path()).await;
    let (code, stderr) = submit(dir.path(), &url, Some(terminated(3, "Error")), 5, &[]).await;
    assert_eq!(code, Some(5), "{stderr}");
    assert!(!stderr.contains("ended in phase"), "{stderr}");

    // spark-submit does not wait: neither does submit, whatever the driver does.
    let url = fresh_api(dir.path()).await;
    let (code, stderr) = submit(
        dir.path(),
        &url,
        Some(json!({"phase": "Running"})),
        0,
        &["spark.kubernetes.submission.waitAppCompletion=false"],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("waitAppCompletion=false: spark-submit returned once the driver pod existed, and so does submit; the job's end is not followed"),
        "{stderr}"
    );

    // spark-submit exits 0 and there is no driver pod: gone, outcome unknown.
    let url = fresh_api(dir.path()).await;
    let (code, stderr) = submit(dir.path(), &url, None, 0, &[]).await;
    assert_eq!(code, Some(8), "{stderr}");
    assert!(stderr.contains("the job's outcome is unknown"), "{stderr}");
}
