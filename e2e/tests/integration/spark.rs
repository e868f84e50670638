//! Unmodified Spark 4.3.0 (pyspark's distribution as Spark's image, Java 17) in `k8s://` mode on
//! a two-node bed, with the shuffle service deployed from `k8s/shuffle-service/` as shipped.
//! Ignored in a bare `cargo test`; `scripts/test.sh` runs them as root where Java and pyspark are.

use std::path::PathBuf;
use std::time::Duration;

use kubebed::resources::{DAEMONSETS, PODS};
use serde_json::Value;

use e2e::{
    answers, bed, dump, event_log as events, eventually, metric, python, result_line, spark_file,
};
use kubebed::testing::{manifest, spark_home, workspace};

/// One Spark application at a time: the machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Deploys `k8s/shuffle-service/daemonset/` with its admin Secret, and waits until every node's
/// service answers.
async fn deploy_shuffle_service(bed: &kubebed::bed::Bed) {
    deploy_shuffle_service_with(bed, |t| t).await;
}

/// [`deploy_shuffle_service`] with each manifest's text edited first.
async fn deploy_shuffle_service_with(bed: &kubebed::bed::Bed, edit: impl Fn(String) -> String) {
    if let Err(e) = e2e::deploy_shuffle_service_with(bed, edit).await {
        panic!("{e:#}");
    }
}

/// The last metrics of every shuffle service sidecar, scraped while its pod was up by
/// [`collect_sidecar_metrics`].
async fn sidecar_metrics() -> Vec<String> {
    SIDECAR_METRICS.lock().await.values().cloned().collect()
}

static SIDECAR_METRICS: tokio::sync::Mutex<std::collections::BTreeMap<String, String>> =
    tokio::sync::Mutex::const_new(std::collections::BTreeMap::new());

/// Scrapes the sidecars of running executor pods every 500 ms until `stop`; keeps each pod's
/// last scrape (a sidecar's counters go with its pod).
async fn collect_sidecar_metrics(
    store: std::sync::Arc<kubebed::store::Store>,
    stop: tokio_util::sync::CancellationToken,
) {
    SIDECAR_METRICS.lock().await.clear();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let sel = kubebed::selector::Selector::labels("spark-role=executor").unwrap();
    while !stop.is_cancelled() {
        for p in store
            .list(&PODS, Some("default"), &sel, &Default::default())
            .0
        {
            let (Some(name), Some(ip)) = (
                p["metadata"]["name"].as_str(),
                p["status"]["podIP"].as_str(),
            ) else {
                continue;
            };
            if let Ok(r) = http.get(format!("http://{ip}:7339/metrics")).send().await
                && let Ok(t) = r.text().await
            {
                SIDECAR_METRICS.lock().await.insert(name.to_string(), t);
            }
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn shuffle_metrics(bed: &kubebed::bed::Bed) -> Vec<String> {
    let mut out = Vec::new();
    for node in &bed.nodes {
        let url = format!("http://{}:7339/metrics", node.netns.ip);
        out.push(reqwest::get(&url).await.unwrap().text().await.unwrap());
    }
    out
}

/// Runs `tests/spark/shuffle_job.py` in client mode (the driver on the host, at the pod
/// network's gateway address) with executors from the DaemonSet mode's executor pod template;
/// returns its result line and event log.
async fn client_job(
    bed: &kubebed::bed::Bed,
    dir: &std::path::Path,
    mode: &str,
) -> (Value, Vec<Value>) {
    client_job_with(
        bed,
        dir,
        mode,
        "k8s/shuffle-service/daemonset/spark/executor-pod-template.yaml",
    )
    .await
}

/// [`client_job`] with another executor pod template of `k8s/`.
async fn client_job_with(
    bed: &kubebed::bed::Bed,
    dir: &std::path::Path,
    mode: &str,
    template: &str,
) -> (Value, Vec<Value>) {
    client_job_with_confs(bed, dir, mode, template, &[]).await
}

/// [`client_job_with`] with extra Spark settings (`key=value`).
async fn client_job_with_confs(
    bed: &kubebed::bed::Bed,
    dir: &std::path::Path,
    mode: &str,
    template: &str,
    confs: &[String],
) -> (Value, Vec<Value>) {
    let child = start_client_job(bed, dir, mode, template, confs, &[]);
    finish_client_job(bed, dir, child).await
}

/// Starts `tests/spark/shuffle_job.py` as [`client_job_with_confs`] does, with `extra`
/// arguments for the script (output in `dir/driver.{out,err}`).
fn start_client_job(
    bed: &kubebed::bed::Bed,
    dir: &std::path::Path,
    mode: &str,
    template: &str,
    confs: &[String],
    extra: &[&str],
) -> tokio::process::Child {
    let event_dir = dir.join("events");
    std::fs::create_dir_all(&event_dir).unwrap();
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(spark_file("shuffle_job.py"))
        .args(["--mode", mode, "--api", &bed.api_url])
        .arg("--master")
        .arg(format!("k8s://{}", bed.api_url))
        .arg("--driver-host")
        .arg(bed.fabric.gateway.to_string())
        .args(["--image", "kubebed/spark:4.3.0"])
        .arg("--executor-template")
        .arg(workspace().join(template))
        .arg("--event-dir")
        .arg(&event_dir)
        .args(confs.iter().flat_map(|c| ["--conf", c.as_str()]))
        .args(extra)
        .env("PYSPARK_PYTHON", python())
        .env("JDK_JAVA_OPTIONS", kubebed::images::SHORT_LIVED_JVM)
        .env_remove("SPARK_HOME")
        .stdout(std::fs::File::create(dir.join("driver.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("driver.err")).unwrap())
        .kill_on_drop(true);
    cmd.spawn().unwrap()
}

/// The driver's warnings and errors (`dir/driver.err`), stack frames left out.
fn driver_log(dir: &std::path::Path) -> String {
    let err = std::fs::read_to_string(dir.join("driver.err")).unwrap_or_default();
    err.lines()
        .filter(|l| {
            !l.trim_start().starts_with("at ")
                && (l.contains(" WARN ")
                    || l.contains(" ERROR ")
                    || l.contains("Exception")
                    || l.contains("Error"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for a job of [`start_client_job`] to end; returns its result line and event log.
async fn finish_client_job(
    bed: &kubebed::bed::Bed,
    dir: &std::path::Path,
    mut child: tokio::process::Child,
) -> (Value, Vec<Value>) {
    let Ok(status) = tokio::time::timeout(Duration::from_secs(400), child.wait()).await else {
        panic!(
            "the Spark job took over 400 s\n{}\n{}",
            driver_log(dir),
            dump(bed, "default")
        );
    };
    let status = status.unwrap();
    let stdout = std::fs::read_to_string(dir.join("driver.out")).unwrap_or_default();
    assert!(
        status.success(),
        "the Spark job failed:\n{stdout}\n{}\n{}",
        driver_log(dir),
        dump(bed, "default")
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("no result line ({e}):\n{stdout}\n{}", driver_log(dir)));
    assert_eq!(seen["ok1"], true, "{seen}");
    assert_eq!(seen["ok2"], true, "{seen}");
    (seen, events(&dir.join("events")))
}

/// What both reads did, from the event log: the executors of the first job's tasks, and of
/// the second job's (which must run only its reduce stage).
struct Jobs {
    first: Vec<String>,
    second: Vec<String>,
}

/// No failed task, no stage attempt beyond the first, the second job ran only its reduce
/// stage, and every remote block Spark read was served by the node services.
async fn check_shuffle(bed: &kubebed::bed::Bed, ev: &[Value]) -> Jobs {
    check_shuffle_with(ev, shuffle_metrics(bed).await)
}

/// [`check_shuffle`] against the given services' metrics.
fn check_shuffle_with(ev: &[Value], m: Vec<String>) -> Jobs {
    let failures: Vec<&Value> = ev
        .iter()
        .filter(|e| {
            e["Event"] == "SparkListenerTaskEnd" && e["Task End Reason"]["Reason"] != "Success"
        })
        .collect();
    assert!(failures.is_empty(), "failed tasks: {failures:?}");
    let retried: Vec<&Value> = ev
        .iter()
        .filter(|e| {
            e["Event"] == "SparkListenerStageSubmitted"
                && e["Stage Info"]["Stage Attempt ID"].as_u64() != Some(0)
        })
        .collect();
    assert!(retried.is_empty(), "stages retried: {retried:?}");
    let jobs: Vec<&Value> = ev
        .iter()
        .filter(|e| e["Event"] == "SparkListenerJobStart")
        .collect();
    assert_eq!(jobs.len(), 2, "two jobs expected");
    let stages_of = |job: &Value| -> Vec<u64> {
        job["Stage IDs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect()
    };
    let executors_of = |stages: &[u64]| -> Vec<String> {
        let mut x: Vec<String> = ev
            .iter()
            .filter(|e| {
                e["Event"] == "SparkListenerTaskEnd"
                    && e["Stage ID"].as_u64().is_some_and(|s| stages.contains(&s))
            })
            .filter_map(|e| e["Task Info"]["Executor ID"].as_str().map(str::to_string))
            .collect();
        x.sort();
        x.dedup();
        x
    };
    let submitted: Vec<u64> = ev
        .iter()
        .filter(|e| e["Event"] == "SparkListenerStageSubmitted")
        .filter_map(|e| e["Stage Info"]["Stage ID"].as_u64())
        .collect();
    let ran_in_second: Vec<u64> = stages_of(jobs[1])
        .into_iter()
        .filter(|s| submitted.contains(s))
        .collect();
    assert_eq!(
        ran_in_second.len(),
        1,
        "the second job should run only its reduce stage: {submitted:?}"
    );
    let remote: u64 = ev
        .iter()
        .filter(|e| e["Event"] == "SparkListenerTaskEnd")
        .filter_map(|e| e["Task Metrics"]["Shuffle Read Metrics"]["Remote Blocks Fetched"].as_u64())
        .sum();
    let per_node: Vec<f64> = m
        .iter()
        .map(|t| metric(t, "shuffle_blocks_served_total"))
        .collect();
    let served: f64 = per_node.iter().sum();
    eprintln!("remote blocks fetched by Spark: {remote}; served per service: {per_node:?}");
    assert!(
        remote > 0,
        "no remote block was read: the test proves nothing"
    );
    #[allow(clippy::cast_precision_loss)]
    let remote_f = remote as f64;
    assert!(
        (served - remote_f).abs() < 0.5,
        "Spark fetched {remote} remote blocks, the node services served {served}:\n{}",
        m.join("\n")
    );
    Jobs {
        first: executors_of(&stages_of(jobs[0])),
        second: executors_of(&ran_in_second),
    }
}

fn live_executor_pods(bed: &kubebed::bed::Bed) -> Vec<Value> {
    let sel = kubebed::selector::Selector::labels("spark-role=executor").unwrap();
    bed.store
        .list(&PODS, Some("default"), &sel, &Default::default())
        .0
}

/// The shuffle service's pods.
fn service_pods(bed: &kubebed::bed::Bed) -> Vec<Value> {
    bed.store
        .list(
            &PODS,
            Some("spark-shuffle"),
            &Default::default(),
            &Default::default(),
        )
        .0
}

/// Rolls the shuffle service's DaemonSet as `kubectl rollout restart` does (a changed template
/// annotation) and waits until the rollout is complete as `kubectl rollout status` sees it,
/// checking every state on the way: never both nodes without a ready service, never two
/// service pods on a node. Returns how long it took.
async fn restart_shuffle_service(bed: &kubebed::bed::Bed) -> Duration {
    let started = tokio::time::Instant::now();
    let mut events = bed.store.subscribe();
    bed.store
        .update(&DAEMONSETS, "spark-shuffle", "shuffle-service", |d| {
            d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] =
                serde_json::json!(kubebed::store::now());
            Ok(())
        })
        .unwrap();
    let ready = |p: &Value| {
        !p["metadata"]["deletionTimestamp"].is_string()
            && p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    };
    let deadline = started + Duration::from_secs(180);
    loop {
        let pods = service_pods(bed);
        let mut without = 0;
        for node in &bed.nodes {
            let here: Vec<&Value> = pods
                .iter()
                .filter(|p| {
                    p["spec"]["nodeName"] == node.name.as_str()
                        && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                })
                .collect();
            assert!(
                here.len() <= 1,
                "two service pods on {}: {here:#?}",
                node.name
            );
            without += usize::from(!here.iter().any(|p| ready(p)));
        }
        assert!(
            without <= 1,
            "{without} nodes without a ready service:\n{}",
            dump(bed, "spark-shuffle")
        );
        let ds = bed
            .store
            .get(&DAEMONSETS, "spark-shuffle", "shuffle-service")
            .unwrap();
        if kubebed::testing::rolled_out(&ds) {
            return started.elapsed();
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                panic!("the rollout never ended: {}\n{}", ds["status"], dump(bed, "spark-shuffle"));
            }
            _ = events.recv() => {}
        }
    }
}

/// Dynamic allocation removes the executors that wrote the map output; while the application
/// holds between its two reads, the shuffle service's DaemonSet is rolled node by node as
/// shipped (one node at a time, `minReadySeconds: 10`); the reducers, on new executors, then
/// fetch every block from the new service pods, which took the registrations back from their
/// node's state directory.
#[tokio::test]
#[ignore = "needs root, network namespaces, Java and pyspark (scripts/test.sh runs it)"]
async fn client_mode_reducers_fetch_removed_executors_blocks_from_a_daemonset_rolled_mid_job() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let bed = bed(2, dir.path()).await;
    deploy_shuffle_service(&bed).await;
    let job = start_client_job(
        &bed,
        dir.path(),
        "dynamic",
        "k8s/shuffle-service/daemonset/spark/executor-pod-template.yaml",
        &[],
        &["--release", "rolled"],
    );
    let out = || std::fs::read_to_string(dir.path().join("driver.out")).unwrap_or_default();
    let held = eventually(Duration::from_secs(300), || {
        out().contains("\"held\": true")
    })
    .await;
    assert!(
        held,
        "the job never held:\n{}\n{}\n{}",
        out(),
        driver_log(dir.path()),
        dump(&bed, "default")
    );
    let held = result_line(&out(), "held");
    assert_eq!(
        held["all_removed"], true,
        "dynamic allocation never removed the executors: {held}"
    );
    // The first read's blocks were served by the pods about to be replaced: their counts now.
    let before = shuffle_metrics(&bed).await;
    let old: Vec<Value> = service_pods(&bed)
        .iter()
        .map(|p| p["metadata"]["uid"].clone())
        .collect();
    let took = restart_shuffle_service(&bed).await;
    eprintln!(
        "shuffle service rolled on {} nodes in {took:?}",
        bed.nodes.len()
    );
    let now = service_pods(&bed);
    assert_eq!(now.len(), bed.nodes.len());
    assert!(
        now.iter().all(|p| !old.contains(&p["metadata"]["uid"])),
        "{now:#?}"
    );
    for node in &bed.nodes {
        let url = format!("http://{}:7339/readyz", node.netns.ip);
        assert!(
            answers(&url).await,
            "{url} never answered:\n{}",
            dump(&bed, "spark-shuffle")
        );
    }
    bed.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: rolled}\n",
        "default",
    )
    .unwrap();
    let (seen, ev) = finish_client_job(&bed, dir.path(), job).await;
    assert_eq!(seen["released"], true, "{seen}");
    // No failed task (a fetch failure is one), no retried stage, and every remote block Spark
    // read was served: the first read's by the old pods, the second's by the new ones.
    let jobs = check_shuffle_with(&ev, [before, shuffle_metrics(&bed).await].concat());
    assert!(!jobs.first.is_empty() && !jobs.second.is_empty());
    assert!(
        jobs.second.iter().all(|x| !jobs.first.contains(x)),
        "reduce tasks ran on first-round executors: {:?} vs {:?}",
        jobs.second,
        jobs.first
    );
    // Every first-round executor's pod is gone from the API.
    let pods = live_executor_pods(&bed);
    for x in &jobs.first {
        assert!(
            !pods
                .iter()
                .any(|p| p["metadata"]["labels"]["spark-exec-id"] == x.as_str()),
            "executor {x}'s pod is still there"
        );
    }
    bed.stop().await;
}

#[tokio::test]
#[ignore = "needs root, network namespaces, Java and pyspark (scripts/test.sh runs it)"]
async fn client_mode_an_executor_pod_deleted_mid_job_still_has_its_blocks_served() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let bed = bed(2, dir.path()).await;
    deploy_shuffle_service(&bed).await;
    let (seen, ev) = client_job(&bed, dir.path(), "delete-pod").await;
    assert_eq!(
        seen["lost"], true,
        "Spark never noticed the deleted pod: {seen}"
    );
    let victim = seen["deleted"]["executor"].as_str().unwrap().to_string();
    let jobs = check_shuffle(&bed, &ev).await;
    assert!(
        jobs.first.contains(&victim),
        "the deleted executor wrote no map output: {seen}"
    );
    assert!(!jobs.second.contains(&victim));
    let pod = seen["deleted"]["pod"].as_str().unwrap();
    assert!(
        bed.store.get(&PODS, "default", pod).is_err(),
        "{pod} is still there"
    );
    bed.stop().await;
}

#[tokio::test]
#[ignore = "needs root, network namespaces, Java and pyspark (scripts/test.sh runs it)"]
async fn cluster_mode_spark_submit_with_dynamic_allocation_on_the_daemonset() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let bed = bed(2, dir.path()).await;
    deploy_shuffle_service(&bed).await;
    // The event log goes to a node directory the driver (uid 185) may write.
    for node in &bed.nodes {
        let d = node.roots.host.join("var/spark-events");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    }
    let template =
        workspace().join("k8s/shuffle-service/daemonset/spark/executor-pod-template.yaml");
    let (driver, log) = cluster_submit(
        &bed,
        dir.path(),
        &[
            ("spark.kubernetes.driver.master", bed.api_url.clone()),
            (
                "spark.kubernetes.container.image",
                "kubebed/spark:4.3.0".into(),
            ),
            ("spark.kubernetes.namespace", "default".into()),
            (
                "spark.kubernetes.executor.podTemplateFile",
                template.to_str().unwrap().into(),
            ),
            (
                "spark.kubernetes.driver.volumes.hostPath.events.mount.path",
                "/var/spark-events".into(),
            ),
            (
                "spark.kubernetes.driver.volumes.hostPath.events.options.path",
                "/var/spark-events".into(),
            ),
            ("spark.eventLog.enabled", "true".into()),
            ("spark.eventLog.dir", "file:///var/spark-events".into()),
            ("spark.eventLog.compress", "false".into()),
            ("spark.kubernetes.report.interval", "5s".into()),
        ],
        &[
            "--name",
            "kubebed-shuffle",
            "local:///opt/spark/tests/shuffle_job.py",
            "--mode",
            "dynamic",
        ],
    )
    .await;
    let seen = result_line(&log, "ok2");
    assert_eq!(
        (seen["ok1"].as_bool(), seen["ok2"].as_bool()),
        (Some(true), Some(true)),
        "{seen}"
    );
    assert_eq!(seen["all_removed"], true, "{seen}");
    let node = driver["spec"]["nodeName"].as_str().unwrap();
    let events_dir = bed
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap()
        .roots
        .host
        .join("var/spark-events");
    let ev = events(&events_dir);
    let jobs = check_shuffle(&bed, &ev).await;
    assert!(
        jobs.second.iter().all(|x| !jobs.first.contains(x)),
        "{:?} vs {:?}",
        jobs.second,
        jobs.first
    );
    // The executors' owner is the driver pod: deleting it collects what is left of the app.
    assert!(
        live_executor_pods(&bed)
            .iter()
            .all(|p| { p["metadata"]["ownerReferences"][0]["uid"] == driver["metadata"]["uid"] })
    );
    bed.stop().await;
}

#[tokio::test]
#[ignore = "needs root, network namespaces, Java and pyspark (scripts/test.sh runs it)"]
async fn client_mode_pvc_sidecars_serve_static_executors_with_the_shipped_configuration() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let bed = bed(2, dir.path()).await;
    // The exact lines of the mode's spark-defaults.conf (the template path is the test's own).
    let confs: Vec<String> = manifest("k8s/shuffle-service/sidecar-pvc/spark/spark-defaults.conf")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(char::is_whitespace))
        .filter(|(k, _)| *k != "spark.kubernetes.executor.podTemplateFile")
        .map(|(k, v)| format!("{k}={}", v.trim()))
        .collect();
    assert!(
        confs.iter().any(|c| c.contains("claimName=OnDemand")),
        "{confs:?}"
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let scraper = tokio::spawn(collect_sidecar_metrics(
        std::sync::Arc::clone(&bed.store),
        stop.clone(),
    ));
    // Spark deletes its claims when the application stops: watch for them meanwhile.
    let claims = {
        let (store, stop) = (std::sync::Arc::clone(&bed.store), stop.clone());
        let pvcs = kubebed::resources::by_kind("v1", "PersistentVolumeClaim").unwrap();
        tokio::spawn(async move {
            let mut seen = 0;
            while !stop.is_cancelled() && seen == 0 {
                seen = store
                    .list(
                        &pvcs,
                        Some("default"),
                        &Default::default(),
                        &Default::default(),
                    )
                    .0
                    .len();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            seen
        })
    };
    let (_seen, ev) = client_job_with_confs(
        &bed,
        dir.path(),
        "static",
        "k8s/shuffle-service/sidecar-pvc/spark/executor-pod-template.yaml",
        &confs,
    )
    .await;
    stop.cancel();
    scraper.await.unwrap();
    assert!(claims.await.unwrap() > 0, "Spark made no on-demand claim");
    let jobs = check_shuffle_with(&ev, sidecar_metrics().await);
    assert_eq!(jobs.first.len(), 2, "both executors should hold map output");
    bed.stop().await;
}

#[tokio::test]
#[ignore = "needs root, network namespaces, Java and pyspark (scripts/test.sh runs it)"]
async fn client_mode_sidecar_shuffle_services_serve_static_executors() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let bed = bed(2, dir.path()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let scraper = tokio::spawn(collect_sidecar_metrics(
        std::sync::Arc::clone(&bed.store),
        stop.clone(),
    ));
    let (_seen, ev) = client_job_with(
        &bed,
        dir.path(),
        "static",
        "k8s/shuffle-service/sidecar-emptydir/spark/executor-pod-template.yaml",
    )
    .await;
    stop.cancel();
    scraper.await.unwrap();
    let jobs = check_shuffle_with(&ev, sidecar_metrics().await);
    assert_eq!(jobs.first.len(), 2, "both executors should hold map output");
    bed.stop().await;
}

/// Runs `spark-submit --deploy-mode cluster` from the host with `confs`; returns the driver pod
/// (Succeeded) and its log.
async fn cluster_submit(
    bed: &kubebed::bed::Bed,
    dir: &std::path::Path,
    confs: &[(&str, String)],
    tail: &[&str],
) -> (Value, String) {
    let mut child = start_cluster_submit(dir, bed, confs, tail);
    let Ok(status) = tokio::time::timeout(Duration::from_secs(400), child.wait()).await else {
        panic!("spark-submit took over 400 s\n{}", dump(bed, "default"));
    };
    let submit_log = std::fs::read_to_string(dir.join("submit.err")).unwrap_or_default();
    assert!(
        status.unwrap().success(),
        "spark-submit failed:\n{submit_log}"
    );
    let ns = confs
        .iter()
        .find(|(k, _)| *k == "spark.kubernetes.namespace")
        .map_or("default", |(_, v)| v.as_str());
    let driver = driver_pod(bed, ns).unwrap_or_else(|| panic!("no driver pod:\n{submit_log}"));
    let name = driver["metadata"]["name"].as_str().unwrap();
    let log = bed.log(ns, name, "spark-kubernetes-driver");
    assert_eq!(
        driver["status"]["phase"],
        "Succeeded",
        "driver pod: {}\n{log}\n{}",
        driver["status"],
        dump(bed, ns)
    );
    (driver, log)
}

/// The one driver pod of a namespace.
fn driver_pod(bed: &kubebed::bed::Bed, ns: &str) -> Option<Value> {
    let sel = kubebed::selector::Selector::labels("spark-role=driver").unwrap();
    let drivers = bed.store.list(&PODS, Some(ns), &sel, &Default::default()).0;
    assert!(drivers.len() <= 1, "one driver pod expected in {ns}");
    drivers.into_iter().next()
}

/// Starts `spark-submit --deploy-mode cluster` (output in `dir/submit.{out,err}`).
fn start_cluster_submit(
    dir: &std::path::Path,
    bed: &kubebed::bed::Bed,
    confs: &[(&str, String)],
    tail: &[&str],
) -> tokio::process::Child {
    let submit = workspace().join(".venv/bin/spark-submit");
    assert!(
        submit.exists(),
        "{} missing: run scripts/test-deps.sh",
        submit.display()
    );
    std::fs::create_dir_all(dir).unwrap();
    let mut args: Vec<String> = vec![
        "--master".into(),
        format!("k8s://{}", bed.api_url),
        "--deploy-mode".into(),
        "cluster".into(),
    ];
    for (k, v) in confs {
        args.push("--conf".into());
        args.push(format!("{k}={v}"));
    }
    args.extend(tail.iter().map(|s| (*s).to_string()));
    let mut cmd = tokio::process::Command::new(&submit);
    cmd.args(&args)
        .env("SPARK_HOME", spark_home().unwrap())
        .env("JDK_JAVA_OPTIONS", kubebed::images::SHORT_LIVED_JVM)
        .env_remove("PYSPARK_PYTHON")
        .env_remove("PYSPARK_DRIVER_PYTHON")
        .stdout(std::fs::File::create(dir.join("submit.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("submit.err")).unwrap())
        .kill_on_drop(true);
    cmd.spawn().unwrap()
}

/// The `blockmgr-*` directories Spark's executors left in every node's hostPath.
fn block_dirs(bed: &kubebed::bed::Bed) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    for node in &bed.nodes {
        let root = node.roots.host.join("var/spark/local");
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("blockmgr-") {
                out.insert(e.path());
            }
        }
    }
    out
}

/// Sums a series over every node's shuffle service.
async fn node_sum(bed: &kubebed::bed::Bed, series: &str) -> f64 {
    shuffle_metrics(bed)
        .await
        .iter()
        .map(|t| metric(t, series))
        .sum()
}

#[tokio::test]
#[ignore = "needs root, network namespaces, Java and pyspark (scripts/test.sh runs it)"]
async fn driver_pods_ending_take_their_jobs_data_and_learned_secrets_authenticate() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let bed = bed(2, dir.path()).await;
    // As shipped, with Spark's per-application secrets learned from executor pods (which turns
    // authentication on) and a grace of 20 s instead of 30 s.
    deploy_shuffle_service_with(&bed, |t| {
        t.replace("# - --kube-learn-secrets", "- --kube-learn-secrets")
            .replace("            - --spark-allow-unauthenticated\n", "")
            .replace("--kube-app-end-grace=30s", "--kube-app-end-grace=20s")
    })
    .await;
    for ns in ["team-a", "team-b"] {
        bed.namespace(ns).unwrap();
    }
    let template =
        workspace().join("k8s/shuffle-service/daemonset/spark/executor-pod-template.yaml");
    let confs = |ns: &str| {
        vec![
            ("spark.kubernetes.driver.master", bed.api_url.clone()),
            (
                "spark.kubernetes.container.image",
                "kubebed/spark:4.3.0".to_owned(),
            ),
            ("spark.kubernetes.namespace", ns.to_owned()),
            (
                "spark.kubernetes.executor.podTemplateFile",
                template.to_str().unwrap().to_owned(),
            ),
            ("spark.authenticate", "true".to_owned()),
            ("spark.kubernetes.report.interval", "2s".to_owned()),
        ]
    };
    let tail = |ns: &'static str, mode: &'static str| {
        vec![
            "local:///opt/spark/tests/shuffle_job.py",
            "--mode",
            mode,
            "--namespace",
            ns,
            "--release",
            "release",
        ]
    };
    // Job A runs its shuffle, then holds.
    let api = bed.api_url.clone();
    let mut tail_a = tail("team-a", "hold");
    tail_a.extend(["--api", api.as_str()]);
    let mut submit_a = start_cluster_submit(&dir.path().join("a"), &bed, &confs("team-a"), &tail_a);
    let held = eventually(Duration::from_secs(300), || {
        driver_pod(&bed, "team-a").is_some_and(|d| {
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            bed.log("team-a", name, "spark-kubernetes-driver")
                .contains("\"held\": true")
        })
    })
    .await;
    let driver_a = driver_pod(&bed, "team-a").expect("driver A");
    let name_a = driver_a["metadata"]["name"].as_str().unwrap().to_owned();
    let log_a = bed.log("team-a", &name_a, "spark-kubernetes-driver");
    assert!(
        held,
        "job A never held:\n{log_a}\n{}\n{}\n{}",
        dump(&bed, "team-a"),
        dump(&bed, "spark-shuffle"),
        shuffle_metrics(&bed)
            .await
            .iter()
            .flat_map(|t| t.lines().filter(|l| l.starts_with("shuffle_kube")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let held_line = result_line(&log_a, "held");
    assert_eq!(held_line["ok1"], true, "{held_line}");
    let app_a = held_line["app_id"].as_str().unwrap().to_owned();
    let dirs_a = block_dirs(&bed);
    assert!(!dirs_a.is_empty(), "job A left no block directories");

    // The secret learned for A answers; a wrong one is refused on every node.
    let exec_sel = kubebed::selector::Selector::labels(&format!(
        "spark-role=executor,spark-app-selector={app_a}"
    ))
    .unwrap();
    let exec_a = bed
        .store
        .list(&PODS, Some("team-a"), &exec_sel, &Default::default())
        .0
        .remove(0);
    let secret = exec_a["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "_SPARK_AUTH_SECRET")
        .and_then(|e| e["value"].as_str())
        .expect("Spark's secret in the executor pod")
        .to_owned();
    for node in &bed.nodes {
        let addr = (node.netns.ip, 7337);
        let mut c = spark_protocol::client::Client::connect(addr).await.unwrap();
        let wrong = c.authenticate(&app_a, b"not-the-secret").await;
        assert!(
            !matches!(wrong, Ok(Ok(()))),
            "{}: a wrong secret was accepted",
            node.name
        );
        let mut c = spark_protocol::client::Client::connect(addr).await.unwrap();
        let right = c.authenticate(&app_a, secret.as_bytes()).await.unwrap();
        assert!(right.is_ok(), "{}: {right:?}", node.name);
    }

    // Job B runs to the end (authenticated registrations and fetches through the services).
    let (driver_b, log_b) = cluster_submit(
        &bed,
        &dir.path().join("b"),
        &confs("team-b"),
        &tail("team-b", "static"),
    )
    .await;
    let seen_b = result_line(&log_b, "ok2");
    assert_eq!(
        (seen_b["ok1"].as_bool(), seen_b["ok2"].as_bool()),
        (Some(true), Some(true)),
        "{seen_b}"
    );
    let dirs_ab = block_dirs(&bed);
    assert!(
        dirs_ab.len() > dirs_a.len(),
        "job B left no block directories"
    );
    // Within the grace plus one sweep of its driver pod's Succeeded phase, B's data is gone
    // from every node and A's is untouched.
    let gone = eventually(Duration::from_secs(60), || block_dirs(&bed) == dirs_a).await;
    assert!(
        gone,
        "B's data stayed: {:?} vs {dirs_a:?}",
        block_dirs(&bed)
    );
    assert!(
        node_sum(
            &bed,
            "shuffle_applications_removed_total{reason=\"driver_succeeded\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(driver_b["status"]["phase"], "Succeeded");

    // An API server outage: the services notice, and delete nothing meanwhile.
    bed.outage.set(true);
    let noticed = {
        let mut n = false;
        for _ in 0..60 {
            if node_sum(&bed, "shuffle_kube_watch_up{watch=\"drivers\"}").await == 0.0 {
                n = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        n
    };
    assert!(noticed, "the services never noticed the outage");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(block_dirs(&bed), dirs_a, "data deleted during the outage");
    bed.outage.set(false);

    // A's driver pod deleted mid-job: its data goes.
    bed.store
        .delete(
            &PODS,
            "team-a",
            &name_a,
            &kubebed::store::DeleteOptions::default(),
        )
        .unwrap();
    // After an outage each service resumes within its back-off (at most 30 s) or, if its
    // connection died silently, within the watch timeout (60 s), then one sweep.
    let gone = eventually(Duration::from_secs(150), || block_dirs(&bed).is_empty()).await;
    assert!(
        gone,
        "A's data stayed: {:?}\n{}",
        block_dirs(&bed),
        dump(&bed, "spark-shuffle")
    );
    let _ = submit_a.kill().await;
    // The secret went with the application.
    let mut c = spark_protocol::client::Client::connect((bed.nodes[0].netns.ip, 7337))
        .await
        .unwrap();
    let after = c.authenticate(&app_a, secret.as_bytes()).await;
    assert!(!matches!(after, Ok(Ok(()))), "A's secret still answers");
    bed.stop().await;
}
