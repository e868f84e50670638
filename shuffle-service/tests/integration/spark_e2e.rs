//! Real Spark 4.3.0 (pyspark from the project's venv, Java 17) against the real binary's Spark
//! listener: jobs in `local-cluster` with dynamic allocation, so reducers on fresh
//! executors fetch the blocks of executors that are gone. One executor per job, two in the
//! default scenario, whose SQL query reads one executor's map output from the other within a
//! job (AQE's batch fetches). Each test checks the job results
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
    /// Every byte between Spark and the service, both ways (with `Opts::capture`).
    wire: Vec<u8>,
}

#[derive(Default)]
struct Opts<'a> {
    secret: Option<&'a str>,
    service_args: &'a [&'a str],
    spark_conf: &'a [&'a str],
    capture: bool,
}

async fn run(scenario: &str, secret: Option<&str>) -> Run {
    run_with(
        scenario,
        Opts {
            secret,
            ..Opts::default()
        },
    )
    .await
}

/// Most bytes a capture keeps.
const CAPTURE_LIMIT: usize = 512 << 20;

/// A TCP relay in front of the service that keeps a copy of what passes.
async fn recording_relay(
    to: String,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let wire = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let w = wire.clone();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&to).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut into, w) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    w.clone(),
                ),
                (Box::new(sr) as _, Box::new(cw) as _, w.clone()),
            ] {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        {
                            let mut w = w.lock().unwrap();
                            if w.len() + n <= CAPTURE_LIMIT {
                                w.extend_from_slice(&buf[..n]);
                            }
                        }
                        if into.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown().await;
                });
            }
        }
    });
    (addr, wire, task)
}

async fn run_with(scenario: &str, o: Opts<'_>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("vol/local");
    std::fs::create_dir_all(&local).unwrap();
    let mut extra = vec!["--sweep-interval", "1s"];
    let secret_file = dir.path().join("spark-secret");
    if let Some(s) = o.secret {
        crate::common::write_secret(&secret_file, s);
        extra.extend(["--spark-auth-secret-file", secret_file.to_str().unwrap()]);
    }
    extra.extend(o.service_args);
    let (mut child, Ready { admin, spark, .. }) = spawn_service(dir.path(), &extra).await;
    let (port, wire, relay) = if o.capture {
        let (addr, wire, task) = recording_relay(spark.clone()).await;
        (
            addr.rsplit(':').next().unwrap().to_owned(),
            Some(wire),
            Some(task),
        )
    } else {
        (spark.rsplit(':').next().unwrap().to_owned(), None, None)
    };
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spark/e2e.py"))
        .args(["--port", &port, "--scenario", scenario])
        .env("SPARK_LOCAL_DIRS", &local)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .env("SPARK_WORKER_DIR", dir.path().join("work"))
        .env("PYSPARK_PYTHON", python())
        .env("JDK_JAVA_OPTIONS", kubebed::images::SHORT_LIVED_JVM)
        .kill_on_drop(true);
    if let Some(s) = o.secret {
        cmd.args(["--secret", s]);
    }
    for c in o.spark_conf {
        cmd.args(["--conf", c]);
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
    if let Some(t) = relay {
        t.abort();
    }
    let wire = wire
        .map(|w| std::mem::take(&mut *w.lock().unwrap()))
        .unwrap_or_default();
    Run {
        seen,
        metrics,
        wire,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
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
    let Run {
        seen, metrics: m, ..
    } = run("default", None).await;
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
    let Run {
        seen, metrics: m, ..
    } = run("oldfetch", None).await;
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
    let Run {
        seen, metrics: m, ..
    } = run("todisk", None).await;
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
    let Run {
        seen, metrics: m, ..
    } = run(
        "auth",
        Some("bd49e3777e114f26358daa2c6c769594e57d27bd44c901830a1e325cd2717e74"),
    )
    .await;
    assert_eq!(seen["reduce_through_service"], "ok");
    assert!(ok(&m, "SaslMessage") >= 2.0, "{m}");
    assert!(
        ok(&m, "RegisterExecutor") >= 2.0,
        "one executor per job\n{m}"
    );
    assert!(ok(&m, "ChunkFetchRequest") > 0.0, "{m}");
    assert_eq!(metric(&m, "shuffle_spark_auth_failures_total"), 0.0, "{m}");
}

/// Network crypto as Spark configures it, and what the wire shows.
async fn crypto_run(conf: &[&str]) -> Run {
    let _one = SERIAL.lock().await;
    let mut spark_conf = vec![
        "spark.network.crypto.enabled=true",
        // No fallback: the job passes only if the AuthEngine exchange and channel work.
        "spark.network.crypto.saslFallback=false",
    ];
    spark_conf.extend(conf);
    let run = run_with(
        "crypto",
        Opts {
            secret: Some("bd49e3777e114f26358daa2c6c769594e57d27bd44c901830a1e325cd2717e74"),
            service_args: &["--spark-require-encryption"],
            spark_conf: &spark_conf,
            capture: true,
        },
    )
    .await;
    let m = &run.metrics;
    assert_eq!(run.seen["reduce_through_service"], "ok");
    assert!(ok(m, "AuthMessage") >= 2.0, "{m}");
    assert_eq!(ok(m, "SaslMessage"), 0.0, "{m}");
    assert!(
        ok(m, "RegisterExecutor") >= 2.0,
        "one executor per job\n{m}"
    );
    assert!(ok(m, "ChunkFetchRequest") > 0.0, "{m}");
    assert_eq!(metric(m, "shuffle_spark_auth_failures_total"), 0.0, "{m}");
    assert_eq!(failed(m), 0.0, "{m}");
    no_plaintext_on_the_wire(&run);
    run
}

/// The rows' text is in the shuffle files the service sent, and nowhere in the bytes that
/// crossed between Spark and the service.
fn no_plaintext_on_the_wire(run: &Run) {
    let marker = run.seen["marker"].as_str().unwrap().as_bytes();
    assert_eq!(
        run.seen["marker_in_shuffle_files"], true,
        "the rows' text is in the shuffle files (the check below would see plaintext)"
    );
    assert!(
        run.wire.len() > 100_000,
        "{} bytes captured",
        run.wire.len()
    );
    assert!(
        !contains(&run.wire, marker),
        "block data crossed the wire in the clear"
    );
}

#[tokio::test]
#[ignore = "needs pyspark 4.3.0 and Java 17 (scripts/test.sh)"]
async fn real_spark_network_crypto_ctr_engine_v1() {
    // Spark's defaults: AES/CTR/NoPadding, authEngineVersion 1.
    crypto_run(&[]).await;
}

#[tokio::test]
#[ignore = "needs pyspark 4.3.0 and Java 17 (scripts/test.sh)"]
async fn real_spark_network_crypto_gcm_engine_v2() {
    crypto_run(&[
        "spark.network.crypto.cipher=AES/GCM/NoPadding",
        "spark.network.crypto.authEngineVersion=2",
    ])
    .await;
}

#[tokio::test]
#[ignore = "needs pyspark 4.3.0 and Java 17 (scripts/test.sh)"]
async fn real_spark_network_crypto_gcm_engine_v1_and_ctr_engine_v2() {
    crypto_run(&["spark.network.crypto.cipher=AES/GCM/NoPadding"]).await;
    crypto_run(&["spark.network.crypto.authEngineVersion=2"]).await;
}

#[tokio::test]
#[ignore = "needs pyspark 4.3.0 and Java 17 (scripts/test.sh)"]
async fn real_spark_sasl_encryption() {
    let _one = SERIAL.lock().await;
    let run = run_with(
        "crypto",
        Opts {
            secret: Some("bd49e3777e114f26358daa2c6c769594e57d27bd44c901830a1e325cd2717e74"),
            // Only qop auth-conf is offered: the job passes only if the layer works.
            service_args: &["--spark-require-encryption"],
            spark_conf: &["spark.authenticate.enableSaslEncryption=true"],
            capture: true,
        },
    )
    .await;
    let m = &run.metrics;
    assert_eq!(run.seen["reduce_through_service"], "ok");
    assert!(ok(m, "SaslMessage") >= 2.0, "{m}");
    assert_eq!(ok(m, "AuthMessage"), 0.0, "{m}");
    assert!(
        ok(m, "RegisterExecutor") >= 2.0,
        "one executor per job\n{m}"
    );
    assert!(ok(m, "ChunkFetchRequest") > 0.0, "{m}");
    assert_eq!(metric(m, "shuffle_spark_auth_failures_total"), 0.0, "{m}");
    assert_eq!(failed(m), 0.0, "{m}");
    no_plaintext_on_the_wire(&run);
}

/// A CA, and a certificate for `localhost` and 127.0.0.1 signed by it: PEM files for the
/// service, a PKCS12 key store and trust store for Spark's JVMs (`openssl`, `keytool`).
fn tls_material(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    let ok = |c: &mut std::process::Command| {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(std::process::Command::new("openssl")
        .current_dir(dir)
        .args([
            "pkcs12",
            "-export",
            "-in",
            "tls.crt",
            "-inkey",
            "tls.key",
            "-certfile",
        ])
        .args([
            "ca.pem",
            "-name",
            "spark",
            "-out",
            "keystore.p12",
            "-passout",
        ])
        .arg("pass:changeit"));
    ok(std::process::Command::new("keytool")
        .current_dir(dir)
        .args([
            "-importcert",
            "-noprompt",
            "-alias",
            "ca",
            "-file",
            "ca.pem",
        ])
        .args(["-keystore", "truststore.p12", "-storetype", "PKCS12"])
        .args(["-storepass", "changeit"]));
}

#[tokio::test]
#[ignore = "needs pyspark 4.3.0 and Java 17 (scripts/test.sh)"]
async fn real_spark_tls() {
    let _one = SERIAL.lock().await;
    let certs = tempfile::tempdir().unwrap();
    tls_material(certs.path());
    let p = |f: &str| certs.path().join(f).display().to_string();
    let (crt, key) = (p("tls.crt"), p("tls.key"));
    let conf = [
        "spark.ssl.rpc.enabled=true".to_owned(),
        format!("spark.ssl.rpc.keyStore={}", p("keystore.p12")),
        "spark.ssl.rpc.keyStorePassword=changeit".to_owned(),
        "spark.ssl.rpc.keyPassword=changeit".to_owned(),
        format!("spark.ssl.rpc.trustStore={}", p("truststore.p12")),
        "spark.ssl.rpc.trustStorePassword=changeit".to_owned(),
    ];
    let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
    let run = run_with(
        "crypto",
        Opts {
            secret: None,
            service_args: &["--spark-tls-cert", &crt, "--spark-tls-key", &key],
            spark_conf: &conf,
            capture: true,
        },
    )
    .await;
    let m = &run.metrics;
    assert_eq!(run.seen["reduce_through_service"], "ok");
    assert!(
        ok(m, "RegisterExecutor") >= 2.0,
        "one executor per job\n{m}"
    );
    assert!(ok(m, "ChunkFetchRequest") > 0.0, "{m}");
    // No handshake refused: Spark's TLS and the service's agree. (A handshake that timed out or
    // that the client abandoned is retried by Spark and is not a disagreement; on a loaded
    // machine a cold JVM's first handshake can take longer than the deadline.)
    assert_eq!(
        metric(
            m,
            "shuffle_spark_tls_handshake_failures_total{reason=\"refused\"}"
        ),
        0.0,
        "{m}"
    );
    assert_eq!(failed(m), 0.0, "{m}");
    no_plaintext_on_the_wire(&run);
}

/// Starts a Spark job against a service it must not get into, waits until the service has
/// refused `refusals` of its connections (by the metric `counter`), and returns the metrics.
async fn refused(
    service_args: &[&str],
    secret: &str,
    spark_conf: &[&str],
    counter: &str,
    refusals: f64,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("vol/local");
    std::fs::create_dir_all(&local).unwrap();
    let (mut child, Ready { admin, spark, .. }) = spawn_service(dir.path(), service_args).await;
    let port = spark.rsplit(':').next().unwrap().to_owned();
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spark/e2e.py"))
        .args(["--port", &port, "--scenario", "crypto", "--secret", secret])
        .env("SPARK_LOCAL_DIRS", &local)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .env("SPARK_WORKER_DIR", dir.path().join("work"))
        .env("PYSPARK_PYTHON", python())
        .env("JDK_JAVA_OPTIONS", kubebed::images::SHORT_LIVED_JVM)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for c in spark_conf {
        cmd.args(["--conf", c]);
    }
    let mut job = cmd.spawn().unwrap();
    // Bounded: 240 looks, 0.5 s apart.
    let mut metrics = String::new();
    for _ in 0..240 {
        metrics = reqwest_get(&format!("http://{admin}/metrics")).await;
        if metric(&metrics, counter) >= refusals {
            break;
        }
        assert!(
            job.try_wait().unwrap().is_none_or(|s| !s.success()),
            "the job succeeded against a service that should refuse it"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let _ = job.kill().await;
    child.kill().await.unwrap();
    metrics
}

#[tokio::test]
#[ignore = "needs pyspark 4.3.0 and Java 17 (scripts/test.sh)"]
async fn real_spark_with_a_wrong_secret_or_an_untrusted_certificate_is_refused() {
    let _one = SERIAL.lock().await;
    // Network crypto with another secret than the service's.
    let secret_dir = tempfile::tempdir().unwrap();
    let f = secret_dir.path().join("secret");
    crate::common::write_secret(&f, "the-service-secret");
    let m = refused(
        &["--spark-auth-secret-file", f.to_str().unwrap()],
        "another-secret",
        &[
            "spark.network.crypto.enabled=true",
            "spark.network.crypto.cipher=AES/GCM/NoPadding",
        ],
        "shuffle_spark_auth_failures_total",
        2.0,
    )
    .await;
    assert!(
        metric(&m, "shuffle_spark_auth_failures_total") >= 2.0,
        "{m}"
    );
    assert_eq!(ok(&m, "RegisterExecutor"), 0.0, "{m}");
    assert_eq!(metric(&m, "shuffle_blocks_served_total"), 0.0, "{m}");

    // TLS: Spark trusts one CA, the service's certificate comes from another.
    let spark_certs = tempfile::tempdir().unwrap();
    tls_material(spark_certs.path());
    let service_certs = tempfile::tempdir().unwrap();
    tls_material(service_certs.path());
    let p = |d: &tempfile::TempDir, f: &str| d.path().join(f).display().to_string();
    let (crt, key) = (p(&service_certs, "tls.crt"), p(&service_certs, "tls.key"));
    let conf = [
        "spark.ssl.rpc.enabled=true".to_owned(),
        format!("spark.ssl.rpc.keyStore={}", p(&spark_certs, "keystore.p12")),
        "spark.ssl.rpc.keyStorePassword=changeit".to_owned(),
        "spark.ssl.rpc.keyPassword=changeit".to_owned(),
        format!(
            "spark.ssl.rpc.trustStore={}",
            p(&spark_certs, "truststore.p12")
        ),
        "spark.ssl.rpc.trustStorePassword=changeit".to_owned(),
    ];
    let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
    let m = refused(
        &["--spark-tls-cert", &crt, "--spark-tls-key", &key],
        // No spark.authenticate: the TLS handshake alone must refuse the job.
        "",
        &conf,
        "shuffle_spark_tls_handshake_failures_total",
        2.0,
    )
    .await;
    assert!(
        metric(&m, "shuffle_spark_tls_handshake_failures_total") >= 2.0,
        "{m}"
    );
    assert_eq!(ok(&m, "RegisterExecutor"), 0.0, "{m}");
    assert_eq!(metric(&m, "shuffle_blocks_served_total"), 0.0, "{m}");
}
