//! Real Spark 4.3.0 (pyspark from the project's venv, Java 17) against the real binary's Spark
//! listener: jobs in `local-cluster[2,1,1024]` with dynamic allocation, so reducers on fresh
//! executors fetch the blocks of executors that are gone. Each test checks the job results
//! (in `tests/spark/e2e.py`) and the service's metrics.
//!
//! Ignored in a bare `cargo test`; `scripts/test.sh` runs them when pyspark and Java are
//! installed, and reports them as skipped otherwise.

use crate::common::{Ready, reqwest_get, spawn_service};
use std::path::PathBuf;

/// One Spark cluster at a time: two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/test-deps.sh (installs pyspark)",
        p.display()
    );
    p
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(line_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Run {
    seen: serde_json::Value,
    metrics: String,
}

async fn run(scenario: &str, secret: Option<&str>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("vol/local");
    std::fs::create_dir_all(&local).unwrap();
    let mut extra = vec!["--sweep-interval", "1s"];
    let secret_file = dir.path().join("spark-secret");
    if let Some(s) = secret {
        crate::common::write_secret(&secret_file, s);
        extra.extend(["--spark-auth-secret-file", secret_file.to_str().unwrap()]);
    }
    let (mut child, Ready { admin, spark, .. }) = spawn_service(dir.path(), &extra).await;
    let port = spark.rsplit(':').next().unwrap().to_owned();
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spark/e2e.py"))
        .args(["--port", &port, "--scenario", scenario])
        .env("SPARK_LOCAL_DIRS", &local)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .env("SPARK_WORKER_DIR", dir.path().join("work"))
        .env("PYSPARK_PYTHON", python())
        .kill_on_drop(true);
    if let Some(s) = secret {
        cmd.args(["--secret", s]);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(400), cmd.output())
        .await
        .expect("the Spark job took over 400 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Spark scenario {scenario} failed:\n{stdout}\n{}",
        stderr
            .lines()
            .filter(|l| !l.trim_start().starts_with("at "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a result line")).unwrap();
    let metrics = reqwest_get(&format!("http://{admin}/metrics")).await;
    child.kill().await.unwrap();
    Run { seen, metrics }
}

fn ok(m: &str, method: &str) -> f64 {
    metric(
        m,
        &format!("shuffle_rpc_requests_total{{code=\"OK\",method=\"spark/{method}\"}}"),
    )
}

fn failed(m: &str) -> f64 {
    metric(m, "shuffle_rpc_requests_total{code=\"FAILED\"")
}

#[tokio::test]
#[ignore = "needs pyspark 4.3.0 and Java 17 (scripts/test.sh)"]
async fn real_spark_default_fetch_batch_fetch_and_remove_blocks() {
    let _one = SERIAL.lock().await;
    let Run { seen, metrics: m } = run("default", None).await;
    assert_eq!(seen["reduce_through_service"], "ok");
    assert_eq!(seen["sql"], "ok");
    assert!(
        ok(&m, "RegisterExecutor") >= 4.0,
        "two executors per job\n{m}"
    );
    assert!(ok(&m, "FetchShuffleBlocks") > 0.0, "{m}");
    assert!(ok(&m, "ChunkFetchRequest") > 0.0, "{m}");
    assert!(
        metric(&m, "shuffle_spark_batch_fetches_total") > 0.0,
        "AQE batch fetch\n{m}"
    );
    assert!(ok(&m, "RemoveBlocks") > 0.0, "{m}");
    assert!(metric(&m, "shuffle_blocks_served_total") > 0.0);
    assert_eq!(failed(&m), 0.0, "{m}");
}

#[tokio::test]
#[ignore = "needs pyspark 4.3.0 and Java 17 (scripts/test.sh)"]
async fn real_spark_old_fetch_protocol() {
    let _one = SERIAL.lock().await;
    let Run { seen, metrics: m } = run("oldfetch", None).await;
    assert_eq!(seen["reduce_through_service"], "ok");
    assert!(ok(&m, "OpenBlocks") > 0.0, "{m}");
    assert_eq!(ok(&m, "FetchShuffleBlocks"), 0.0, "{m}");
    assert!(ok(&m, "ChunkFetchRequest") > 0.0, "{m}");
    assert_eq!(failed(&m), 0.0, "{m}");
}

#[tokio::test]
#[ignore = "needs pyspark 4.3.0 and Java 17 (scripts/test.sh)"]
async fn real_spark_fetch_to_disk() {
    let _one = SERIAL.lock().await;
    let Run { seen, metrics: m } = run("todisk", None).await;
    assert_eq!(seen["reduce_through_service"], "ok");
    assert!(ok(&m, "StreamRequest") > 0.0, "{m}");
    assert_eq!(failed(&m), 0.0, "{m}");
}

#[tokio::test]
#[ignore = "needs pyspark 4.3.0 and Java 17 (scripts/test.sh)"]
async fn real_spark_authenticate() {
    let _one = SERIAL.lock().await;
    // The shape of Spark's own per-application secrets on Kubernetes (64 hex characters): its
    // base64 is longer than 76 characters, so Spark's SASL password has a line break in it.
    let Run { seen, metrics: m } = run(
        "auth",
        Some("bd49e3777e114f26358daa2c6c769594e57d27bd44c901830a1e325cd2717e74"),
    )
    .await;
    assert_eq!(seen["reduce_through_service"], "ok");
    assert!(ok(&m, "SaslMessage") >= 2.0, "{m}");
    assert!(ok(&m, "RegisterExecutor") >= 4.0, "{m}");
    assert!(ok(&m, "ChunkFetchRequest") > 0.0, "{m}");
    assert_eq!(metric(&m, "shuffle_spark_auth_failures_total"), 0.0, "{m}");
}
