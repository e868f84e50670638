//! The replicated staging server (`k8s/staging-server/replicated/`, as shipped) on the bed:
//! three replicas on one S3-protocol bucket (moto, on the bed's gateway, which the pods reach),
//! and a `submit` job of two executors during which one replica's pod is deleted (as the
//! driver pod starts) and the Deployment is rolled as `kubectl rollout restart` does (while the
//! executors' init-containers fetch: each step waits 10 s more than as shipped,
//! `minReadySeconds`, so that the rollout outlasts the executors' start on a slow machine).
//! No init-container fails or restarts, the job's results are right, and the rollout ends
//! with three new replicas.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kubebed::authn::User;
use kubebed::resources::{DEPLOYMENTS, PODS};
use kubebed::selector::Selector;
use kubebed::testing::{apply_dir, rollout_status};
use serde_json::Value;

use crate::submit::{UPLOAD_TOKEN, build_app, driver, submit_with, words_job};
use e2e::{bed, dump, eventually, result_line};

const ALICE: &str = "alice-bearer-token-replicated-0123";
const BUCKET: &str = "staging";
/// The download-token key every replica shares.
const SIGNING_KEY: &str = "3f1e5d7c9b2a4e6f8d0c1b3a5f7e9d2c4b6a8f0e1d3c5b7a9f2e4d6c8b0a1f3e";

/// Deploys the base directory, then the replicated variant on the bucket at `endpoint`, as
/// the README says; waits until its three replicas are ready.
async fn deploy_replicated(bed: &kubebed::bed::Bed, endpoint: &str) {
    bed.namespace("spark-staging").unwrap();
    bed.apply(
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: staging-upload-tokens}}\nstringData: {{tokens: {UPLOAD_TOKEN}}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: staging-signing-keys}}\nstringData: {{signing: {SIGNING_KEY}}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: staging-store-credentials}}\nstringData: {{access-key-id: testing, secret-access-key: testing}}\n"
        ),
        "spark-staging",
    )
    .unwrap();
    apply_dir(bed, "k8s/staging-server", "spark-staging", |t| t);
    apply_dir(bed, "k8s/staging-server/replicated", "spark-staging", |t| {
        let edited = t
            .replace(
                "store_url = \"s3://my-bucket/spark-staging\"",
                &format!("store_url = \"s3://{BUCKET}/spark-staging\""),
            )
            .replace(
                "    unnamed_blob_grace = \"1h\"\n",
                &format!(
                    "    unnamed_blob_grace = \"1h\"\n    [store_options]\n    aws_endpoint = \"{endpoint}\"\n    aws_allow_http = \"true\"\n    aws_virtual_hosted_style_request = \"false\"\n"
                ),
            );
        // The rollout's steps last longer than the executors' start (see the top).
        let edited = edited.replace("  replicas: 3\n", "  replicas: 3\n  minReadySeconds: 10\n");
        assert!(
            edited.contains("[store_options]") && edited.contains("minReadySeconds"),
            "the manifest changed"
        );
        edited
    });
    if let Err(e) = rollout_status(
        bed,
        &DEPLOYMENTS,
        "spark-staging",
        "staging-server",
        Duration::from_secs(180),
    )
    .await
    {
        panic!("{e}\n{}", dump(bed, "spark-staging"));
    }
}

/// The staging pods not being deleted.
fn replicas(bed: &kubebed::bed::Bed) -> Vec<Value> {
    let sel = Selector::labels("app.kubernetes.io/name=staging-server").unwrap();
    bed.store
        .list(&PODS, Some("spark-staging"), &sel, &Default::default())
        .0
        .into_iter()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
        .collect()
}

/// The Spark pods of the namespace (driver and executors).
fn spark_pods(bed: &kubebed::bed::Bed, role: &str) -> Vec<Value> {
    let sel = Selector::labels(&format!("spark-role={role}")).unwrap();
    bed.store
        .list(&PODS, Some("default"), &sel, &Default::default())
        .0
}

/// Whether `p`'s init-containers have all ended (with any code).
fn initialized(p: &Value) -> bool {
    p["status"]["initContainerStatuses"]
        .as_array()
        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["state"]["terminated"].is_object()))
}

#[tokio::test]
#[ignore = "needs root, network namespaces, Java, pyspark and moto (scripts/test.sh runs it)"]
async fn s3_three_replicas_serve_a_job_through_a_pod_deletion_and_a_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let bed = bed(2, dir.path()).await;
    let (_moto, endpoint) = kubebed::testing::moto(bed.fabric.gateway.into(), BUCKET).await;
    deploy_replicated(&bed, &endpoint).await;
    let names: Vec<String> = replicas(&bed)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 3, "{}", dump(&bed, "spark-staging"));
    bed.identities.add_token(
        ALICE,
        User {
            name: "alice".into(),
            groups: vec!["system:authenticated".into()],
        },
    );
    bed.identities.allow("alice", "create", "pods", "default");
    let kubeconfig = dir.path().join("alice.kubeconfig");
    bed.write_kubeconfig(&kubeconfig, "default", Some(ALICE))
        .unwrap();
    let work = build_app(dir.path());
    std::fs::write(work.join("words.txt"), "alpha\nbeta\n").unwrap();
    // The submitter uploads to one replica (outside the cluster, as through an Ingress); the
    // pods fetch through the Service, whose endpoints are the ready replicas.
    let upload_ip = replicas(&bed)[0]["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = format!("http://{upload_ip}:10000");
    let job_dir: PathBuf = dir.path().join("job");
    let words = words_job("words.txt");
    let confs = [
        ("spark.executor.instances", "2"),
        // The executors' pods stay after the job, for their init-containers' statuses.
        ("spark.kubernetes.executor.deleteOnTermination", "false"),
    ];
    // `submit` ended: the disruption stops waiting (and the job's failure is what is shown).
    let submitted = AtomicBool::new(false);
    let job = async {
        let job = submit_with(&bed, &job_dir, &kubeconfig, &server, &work, &words, &confs).await;
        submitted.store(true, Ordering::Release);
        job
    };
    let disrupt = async {
        let ended = || submitted.load(Ordering::Acquire);
        // The driver pod exists: it starts. One replica's pod goes.
        let started = eventually(Duration::from_secs(180), || {
            ended() || !spark_pods(&bed, "driver").is_empty()
        })
        .await;
        assert!(started, "no driver pod:\n{}", dump(&bed, "default"));
        if ended() {
            return None;
        }
        let victim = names[1].clone();
        bed.store
            .delete(
                &PODS,
                "spark-staging",
                &victim,
                &kubebed::store::DeleteOptions::default(),
            )
            .unwrap();
        // The driver past its init-container: the executors are asked for. The Deployment is
        // rolled (`kubectl rollout restart`) while their init-containers fetch.
        let initialized = eventually(Duration::from_secs(180), || {
            ended() || spark_pods(&bed, "driver").iter().any(initialized)
        })
        .await;
        assert!(
            initialized,
            "the driver's init-container never ended:\n{}",
            dump(&bed, "default")
        );
        if ended() {
            return None;
        }
        let rolled_at = kubebed::store::now();
        bed.store
            .update(&DEPLOYMENTS, "spark-staging", "staging-server", |d| {
                d["spec"]["template"]["metadata"]["annotations"]
                    ["kubectl.kubernetes.io/restartedAt"] = serde_json::json!(rolled_at.clone());
                Ok(())
            })
            .unwrap();
        let rolled = rollout_status(
            &bed,
            &DEPLOYMENTS,
            "spark-staging",
            "staging-server",
            Duration::from_secs(240),
        )
        .await;
        if let Err(e) = rolled {
            panic!("{e}\n{}", dump(&bed, "spark-staging"));
        }
        Some((victim, rolled_at, kubebed::store::now()))
    };
    let (job, disrupted) = tokio::join!(job, disrupt);
    assert!(
        job.ok,
        "submit failed:\n{}\n{}",
        job.stderr,
        dump(&bed, "default")
    );
    let (victim, rolled_at, rolled_out) =
        disrupted.expect("the job ended before its driver started");
    let (pod, log) = driver(&bed, &job.submission());
    assert_eq!(pod["status"]["phase"], "Succeeded", "{log}");
    let seen = result_line(&log, "lines");
    assert_eq!(
        seen["lines"],
        serde_json::json!(["alpha", "beta"]),
        "{seen}"
    );
    assert_eq!(
        seen["plus"],
        serde_json::json!([1000, 1001, 1002]),
        "{seen}"
    );

    // Every init-container of the job ended 0 at its first run.
    let executors = spark_pods(&bed, "executor");
    assert!(executors.len() >= 2, "{}", dump(&bed, "default"));
    let mut fetched_during_roll = 0;
    for p in executors.iter().chain([&pod]) {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        for c in p["status"]["initContainerStatuses"].as_array().unwrap() {
            assert_eq!(
                (
                    c["state"]["terminated"]["exitCode"].as_i64(),
                    c["restartCount"].as_i64()
                ),
                (Some(0), Some(0)),
                "{name}: init-container {} failed or restarted: {c}\n{}",
                c["name"],
                dump(&bed, "default")
            );
            if c["state"]["terminated"]["finishedAt"]
                .as_str()
                .is_some_and(|t| t > rolled_at.as_str() && t < rolled_out.as_str())
            {
                fetched_during_roll += 1;
            }
        }
    }
    // The rollout did overlap the executors' fetches (else this test shows nothing).
    assert!(
        fetched_during_roll >= 1,
        "no init-container fetched during the rollout ({rolled_at} to {rolled_out}):\n{}",
        dump(&bed, "default")
    );
    // Three replicas again, none of them from before the rollout.
    let now: Vec<String> = replicas(&bed)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(now.len(), 3, "{}", dump(&bed, "spark-staging"));
    assert!(
        now.iter().all(|n| !names.contains(n) && *n != victim),
        "replicas from before the rollout are left: {now:?} (before: {names:?})"
    );
    bed.stop().await;
}
