//! The project's end-to-end tests (`tests/integration/`): unmodified Spark 4.3 in `k8s://` mode
//! and `staging-server submit` on the kubebed test bed, with the services deployed from `k8s/`
//! as shipped. This library is their harness: a bed with Spark's image, the test jobs
//! (`tests/spark/`), and what the tests read back (metrics, result lines, pod dumps).
//!
//! The tests need root, network namespaces, Java and pyspark: they are ignored in a bare
//! `cargo test`; `scripts/test.sh` runs them where those are, and reports them as skipped
//! otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubebed::bed::Bed;
use kubebed::resources::PODS;
use kubebed::testing::{bed_with, images, spark_image, workspace};
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

/// A bed of `nodes` nodes with the bed's images and Spark's, which carries the shuffle test
/// job at `/opt/spark/tests/shuffle_job.py` (cluster mode's `local://` primary resource).
pub async fn bed(nodes: u8, dir: &Path) -> Bed {
    let mut images = images();
    let mut spark = spark_image(dir);
    spark.files.push((
        spark_file("shuffle_job.py"),
        "/opt/spark/tests/shuffle_job.py".to_owned(),
    ));
    images.insert("kubebed/spark", spark);
    bed_with(nodes, images, dir).await
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
pub fn result_line(log: &str, key: &str) -> Value {
    // The JVM's log lines share the file with Python's stdout: a line may go on after the
    // JSON object, so only the object's own text is parsed.
    log.lines()
        .rev()
        .find_map(|l| {
            let start = l.find('{')?;
            serde_json::Deserializer::from_str(&l[start..])
                .into_iter::<Value>()
                .next()?
                .ok()
                .filter(|v| v.get(key).is_some())
        })
        .unwrap_or_else(|| panic!("no result line in the driver's log:\n{log}"))
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
