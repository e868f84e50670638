//! The project's end-to-end tests (`tests/integration/`): unmodified Spark 4.3 in `k8s://` mode
//! and `staging-server submit` on the kubebed test bed, with the services deployed from `k8s/`
//! as shipped. This library is their harness: a bed with Spark's image, the test jobs
//! (`tests/spark/`), and what the tests read back (metrics, result lines, pod dumps).
//!
//! The tests need root, network namespaces, Java and pyspark: they are ignored in a bare
//! `cargo test`; `scripts/test.sh` runs them where those are, and reports them as skipped
//! otherwise. The [`dra`] harness is also `loadtest dra`'s: the test keeps it working.

pub mod dra;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use kubebed::bed::Bed;
use kubebed::images::Images;
use kubebed::resources::{DAEMONSETS, PODS};
use kubebed::testing::{apply_dir, bed_with, images, manifest, spark_image, workspace};
use serde_json::Value;

/// A file of the test jobs (`e2e/tests/spark/<rel>`).
#[must_use]
pub fn spark_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/spark")
        .join(rel)
}

/// The venv's Python (with pyspark).
///
/// # Panics
/// When the venv is missing.
#[must_use]
pub fn python() -> PathBuf {
    let p = workspace().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/test-deps.sh",
        p.display()
    );
    p
}

/// A bed of `nodes` nodes with the bed's images and Spark's (see [`with_spark`]).
pub async fn bed(nodes: u8, dir: &Path) -> Bed {
    bed_with(nodes, with_spark(images(), dir), dir).await
}

/// `images` and Spark's image, which carries the test jobs at `/opt/spark/tests/` (cluster
/// mode's `local://` primary resources): `shuffle_job.py` and `dra_job.py`.
///
/// # Panics
/// When pyspark or Java is missing.
#[must_use]
pub fn with_spark(mut images: Images, dir: &Path) -> Images {
    let mut spark = spark_image(dir);
    for job in ["shuffle_job.py", "dra_job.py"] {
        spark
            .files
            .push((spark_file(job), format!("/opt/spark/tests/{job}")));
    }
    images.insert("kubebed/spark", spark);
    images
}

/// The sum of a series' samples in a Prometheus text exposition (lines starting with `name`).
#[must_use]
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The job's JSON result line (the last line of the driver's log that is a JSON object with
/// `key`).
///
/// # Panics
/// When there is none.
#[must_use]
pub fn result_line(log: &str, key: &str) -> Value {
    find_result_line(log, key)
        .unwrap_or_else(|| panic!("no result line in the driver's log:\n{log}"))
}

/// [`result_line`], or `None`.
#[must_use]
pub fn find_result_line(log: &str, key: &str) -> Option<Value> {
    // The JVM's log lines share the file with Python's stdout: a line may go on after the
    // JSON object, so only the object's own text is parsed.
    log.lines().rev().find_map(|l| {
        let start = l.find('{')?;
        serde_json::Deserializer::from_str(&l[start..])
            .into_iter::<Value>()
            .next()?
            .ok()
            .filter(|v| v.get(key).is_some())
    })
}

/// Spark's event log as JSON values, in order: a file per application, or a directory of
/// rolled files (Spark 4's default), under `dir`. Lines that do not parse (a file still being
/// written) are left out.
#[must_use]
pub fn event_log(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(event_log(&p));
        } else if let Ok(text) = std::fs::read_to_string(&p) {
            out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
    }
    out
}

/// Deploys `k8s/shuffle-service/daemonset/` (each manifest's text through `edit` first) with
/// its admin Secret, and waits until every node's service answers.
///
/// # Errors
/// The DaemonSet is not ready within a minute, or a node's service never answers; the error
/// carries the pods' dump.
///
/// # Panics
/// When a manifest is refused (see [`apply_dir`]).
pub async fn deploy_shuffle_service_with(
    bed: &Bed,
    edit: impl Fn(String) -> String,
) -> anyhow::Result<()> {
    bed.apply(
        &manifest("k8s/shuffle-service/daemonset/00-namespace.yaml"),
        "default",
    )?;
    bed.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: shuffle-admin-tokens}\nstringData: {tokens: 0123456789abcdef0123456789abcdef}\n",
        "spark-shuffle",
    )?;
    apply_dir(bed, "k8s/shuffle-service/daemonset", "default", edit);
    shuffle_service_ready(bed).await
}

/// Waits until the DaemonSet shuffle service is ready on every node of the bed (a minute at
/// most) and its health endpoint answers on each (30 s at most per node).
///
/// # Errors
/// It was not, with the namespace's state.
pub async fn shuffle_service_ready(bed: &Bed) -> anyhow::Result<()> {
    let n = bed.nodes.len();
    bed.wait_for(
        &DAEMONSETS,
        "spark-shuffle",
        "shuffle-service",
        Duration::from_secs(60),
        |d| d.is_some_and(|d| d["status"]["numberReady"].as_u64() == Some(n as u64)),
    )
    .await
    .with_context(|| dump(bed, "spark-shuffle"))?;
    for node in &bed.nodes {
        let url = format!("http://{}:7339/healthz", node.netns.ip);
        if !answers(&url).await {
            bail!("{url} never answered:\n{}", dump(bed, "spark-shuffle"));
        }
    }
    Ok(())
}

/// Whether `url` answers with a success within 30 s (polled every 200 ms).
pub async fn answers(url: &str) -> bool {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for _ in 0..150 {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Every pod of a namespace with its status and container logs.
pub fn dump(bed: &kubebed::bed::Bed, ns: &str) -> String {
    let pods = bed
        .store
        .list(&PODS, Some(ns), &Default::default(), &Default::default())
        .0;
    pods.iter()
        .map(|p| {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let containers: Vec<&str> = ["initContainers", "containers"]
                .iter()
                .flat_map(|k| p["spec"][k].as_array().into_iter().flatten())
                .filter_map(|c| c["name"].as_str())
                .collect();
            let logs: Vec<String> = containers
                .iter()
                .map(|c| format!("--- {c}:\n{}", bed.log(ns, name, c)))
                .collect();
            format!("== {name}: {}\n{}", p["status"], logs.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits (at most `within`) until `cond` holds, polling every 500 ms.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    true
}
