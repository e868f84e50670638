//! Tests against real external components: an S3-protocol server (moto), Prometheus's
//! `promtool`, and a real Prometheus scraping `/metrics`. With moto, downloads redirected to
//! presigned URLs of the store are checked end to end through `fetch`.
//!
//! They are `#[ignore]`d so that a bare `cargo test` on a machine without the components counts
//! them as skipped, never as passed. `scripts/test.sh` (the project's test command, run by
//! `.ci/run`) provides the components and runs them with `--ignored`; a component that is
//! still missing then fails the test loudly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use staging_client::fetch::FetchArgs;
use staging_client::stage::{LocalFile, StageRequest, stage};
use staging_server::config::StoreLocation;
use staging_server::store::BlobStore;
use tokio::process::Command;

use crate::common::{TestServer, content, metric, random_bytes, sha256_hex};
use crate::store_proxy::Proxy;

/// Finds a tool: `$VAR`, then the project's venv, then `PATH`.
pub(crate) fn tool(var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.venv/bin")
        .join(name);
    if venv.exists() {
        return venv;
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "COMPONENT MISSING: {name} not found (set {var}, or run scripts/test.sh which installs it)"
    );
}

/// Starts moto on a free port of loopback with a bucket `staging-bucket`; returns it (killed
/// on drop) and its endpoint URL.
pub(crate) async fn start_moto() -> (tokio::process::Child, String) {
    kubebed::testing::moto(std::net::Ipv4Addr::LOCALHOST.into(), "staging-bucket").await
}

/// Store options for moto at `endpoint`.
pub(crate) fn s3_options(endpoint: &str) -> BTreeMap<String, String> {
    [
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "testing"),
        ("aws_secret_access_key", "testing"),
        ("aws_region", "us-east-1"),
        ("aws_virtual_hosted_style_request", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[tokio::test]
#[ignore = "needs moto (S3 protocol); run through scripts/test.sh"]
async fn s3_backend_against_a_real_s3_protocol_server() {
    let (_moto, endpoint) = start_moto().await;
    let client = reqwest::Client::new();
    let options = s3_options(&endpoint);
    let store = BlobStore::open(&StoreLocation::Url {
        url: "s3://staging-bucket/spark".into(),
        options,
    })
    .unwrap();
    let s = TestServer::start_in(tempfile::tempdir().unwrap(), |_| {}, Some(store.clone())).await;

    // 20 MiB: three multipart parts of 8 MiB.
    let data = random_bytes(20 << 20);
    let up = s.upload("a", data.clone()).await;
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
    let listed = client
        .get(format!(
            "{endpoint}/staging-bucket?list-type=2&prefix=spark/resources/"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains(&format!("spark/resources/{id}")),
        "{listed}"
    );
    let got = s.get_content(id, token).await;
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == data);
    let part = s
        .client
        .get(s.url(&format!("/api/v1/resources/{id}/content")))
        .bearer_auth(token)
        .header("range", "bytes=10485760-10485769")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), data[10_485_760..10_485_770]);
    // A digest mismatch leaves nothing in the bucket.
    let bad = s
        .client
        .post(s.url(&format!(
            "/api/v1/resources?namespace=a&sha256={}",
            "0".repeat(64)
        )))
        .header("content-type", "application/gzip")
        .body(random_bytes(6 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    assert_eq!(store.list_ids().await.unwrap().len(), 1);
    let del = s
        .client
        .delete(s.url(&format!("/api/v1/resources/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    // Removal of the abandoned upload runs in the background: wait for the bucket to empty.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.list_ids().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "bucket not emptied");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        s.client
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.shutdown().await;
}

#[tokio::test]
#[ignore = "needs promtool (Prometheus); run through scripts/test.sh"]
async fn promtool_accepts_the_metrics() {
    let s = TestServer::start(|_| {}).await;
    let up = s.upload("a", random_bytes(100)).await;
    let _ = s.get_content(up["id"].as_str().unwrap(), "bad").await;
    let text = s.metrics().await;
    let mut child = Command::new(tool("PROMTOOL", "promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.shutdown().await;
}

#[tokio::test]
#[ignore = "needs prometheus; run through scripts/test.sh"]
async fn a_real_prometheus_scrapes_the_server() {
    let s = TestServer::start(|_| {}).await;
    s.upload("a", random_bytes(1234)).await;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: staging\n    static_configs:\n      - targets: ['{}']\n",
            s.addr
        ),
    )
    .unwrap();
    // Prometheus cannot report a port-0 bind, so take a free port from the OS.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _prom = Command::new(tool("PROMETHEUS", "prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            work.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=staging_upload_bytes_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the server"
        );
        if let Ok(res) = s.client.get(&query).send().await
            && let Ok(v) = res.json::<serde_json::Value>().await
            && let Some(r) = v["data"]["result"].as_array().and_then(|r| r.first())
        {
            assert_eq!(r["value"][1], "1234");
            break;
        }
        // Waiting on an external process's scrape interval (1 s); nothing to be signalled by.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = s
        .client
        .get(format!("http://127.0.0.1:{port}/api/v1/query?query=up"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(up["data"]["result"][0]["value"][1], "1");
    s.shutdown().await;
}

#[tokio::test]
#[ignore = "needs moto (S3 protocol); run through scripts/test.sh"]
async fn s3_a_second_instance_on_one_bucket_prefix_is_refused_and_deletes_nothing() {
    use std::sync::Arc;

    use staging_server::clock::ManualClock;
    use staging_server::{AppState, Config, Overrides};

    let (_moto, endpoint) = start_moto().await;
    let location = StoreLocation::Url {
        url: "s3://staging-bucket/spark".into(),
        options: s3_options(&endpoint),
    };
    let first = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        |c| c.store = location.clone(),
        None,
    )
    .await;
    let up = first.upload("a", random_bytes(100_000)).await;
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());

    // A second server with its own database on the same bucket prefix is refused.
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path());
    config.store = location.clone();
    let err = AppState::open(&config, Overrides::default())
        .await
        .expect_err("a second instance on the prefix must be refused");
    assert!(err.is_usage(), "{err}");
    assert!(err.to_string().contains("--store-shared"), "{err}");
    assert!(err.to_string().contains("spark/instances/"), "{err}");

    // Told to share it, it starts; a day later its orphan sweep still deletes nothing.
    config.store_shared = true;
    let clock = ManualClock::new();
    let second = AppState::open(
        &config,
        Overrides {
            clock: Some(Arc::new(clock.clone())),
            ..Overrides::default()
        },
    )
    .await
    .unwrap();
    clock.advance(Duration::from_secs(24 * 3600));
    assert_eq!(second.queue_orphans().await.unwrap(), Some(0));
    staging_server::lifecycle::retry_deletions(&second)
        .await
        .unwrap();
    let got = first.get_content(id, token).await;
    assert_eq!(got.status(), 200);
    first.shutdown().await;
}

/// A server on moto behind `proxy` (so that presigned URLs point at the proxy) with presigned
/// downloads on.
pub(crate) async fn presigning_server(proxy: &Proxy) -> TestServer {
    let store = BlobStore::open(&StoreLocation::Url {
        url: "s3://staging-bucket/spark".into(),
        options: s3_options(&proxy.endpoint),
    })
    .unwrap();
    TestServer::start_in(
        tempfile::tempdir().unwrap(),
        |c| c.presigned_url_ttl = Some(Duration::from_secs(60)),
        Some(store),
    )
    .await
}

/// `fetch` arguments for resource `id` into `dest`, its token in a file beside `dest`, with no
/// retries: whatever it needs must work the first time.
pub(crate) fn fetch_args(
    s: &TestServer,
    id: &str,
    token: &str,
    dest: &std::path::Path,
) -> FetchArgs {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct P {
        #[command(flatten)]
        f: FetchArgs,
    }
    let token_file = dest.with_extension("token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::create_dir_all(dest).unwrap();
    P::parse_from([
        "fetch",
        "--server",
        &s.url(""),
        "--id",
        id,
        "--token-file",
        token_file.to_str().unwrap(),
        "--dest",
        dest.to_str().unwrap(),
        "--retries",
        "0",
    ])
    .f
}

/// A bundle of `app.jar` (`jar`) and `conf.txt`, uploaded; returns the upload's answer.
pub(crate) async fn upload_bundle(
    s: &TestServer,
    work: &std::path::Path,
    jar: &[u8],
) -> serde_json::Value {
    use staging_bundle::create::{Input, write_archive};
    std::fs::write(work.join("app.jar"), jar).unwrap();
    std::fs::write(work.join("conf.txt"), b"k=v").unwrap();
    let inputs = ["app.jar", "conf.txt"].map(|n| Input {
        path: work.join(n),
        name: n.into(),
    });
    s.upload("a", write_archive(Vec::new(), &inputs).unwrap())
        .await
}

#[tokio::test]
#[ignore = "needs moto (S3 protocol); run through scripts/test.sh"]
async fn s3_presigned_downloads_come_from_the_store_verified_by_fetch() {
    let (_moto, endpoint) = start_moto().await;
    let proxy = Proxy::start(endpoint.trim_start_matches("http://").to_owned()).await;
    let s = presigning_server(&proxy).await;
    let work = tempfile::tempdir().unwrap();
    let jar = random_bytes(3 << 20);
    let up = upload_bundle(&s, work.path(), &jar).await;
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
    // A client that shows redirects instead of following them.
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, token: &str| raw.get(s.url(path)).bearer_auth(token);
    let bundle = format!("/api/v1/resources/{id}/content");

    // A plain GET: 307 to the store, with what the client needs to check the bytes, and not
    // counted as downloaded by the server until the bytes move.
    let r = get(&bundle, token).send().await.unwrap();
    assert_eq!(r.status(), 307);
    let h = r.headers().clone();
    let location = h["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!(
            "{}/staging-bucket/spark/resources/{id}?",
            proxy.endpoint
        )),
        "{location}"
    );
    assert!(location.contains("X-Amz-Expires=60"), "{location}");
    let sha = up["sha256"].as_str().unwrap();
    assert_eq!(h["etag"], format!("\"{sha}\"").as_str());
    assert!(h["repr-digest"].to_str().unwrap().starts_with("sha-256=:"));
    assert_eq!(h["staging-object-size"], up["size"].to_string().as_str());
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
    // The first download, redirected, makes the resource active all the same.
    let meta: serde_json::Value = s
        .client
        .get(s.url(&format!("/api/v1/resources/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(meta["first_download_at"].is_string(), "{meta}");
    // The URL alone reads the object: no token.
    let direct = reqwest::get(&location).await.unwrap();
    assert_eq!(direct.status(), 200);
    assert_eq!(sha256_hex(&direct.bytes().await.unwrap()), sha);

    // fetch follows it, checks the digest and unpacks.
    let dest = work.path().join("bundle");
    let names = staging_client::fetch::run(fetch_args(&s, id, token, &dest))
        .await
        .unwrap();
    assert_eq!(names, ["app.jar", "conf.txt"]);
    assert!(std::fs::read(dest.join("app.jar")).unwrap() == jar);

    // A submission: each file redirected, each checked.
    let files: Vec<LocalFile> = (0..2)
        .map(|i| {
            let path = work.path().join(format!("lib-{i}.jar"));
            std::fs::write(&path, content(200_000 + i, i as u8)).unwrap();
            LocalFile {
                path,
                name: format!("lib-{i}.jar"),
            }
        })
        .collect();
    let staged = stage(
        &s.client,
        &StageRequest {
            server: s.url(""),
            namespace: "a".into(),
            labels: BTreeMap::from([("spark-role".to_owned(), "driver".to_owned())]),
            ttl: None,
            unused_ttl: None,
            credential: None,
            files: files.clone(),
            retries: 0,
        },
    )
    .await
    .unwrap();
    let dest = work.path().join("files");
    let names = staging_client::fetch::run(fetch_args(&s, &staged.id, &staged.token, &dest))
        .await
        .unwrap();
    assert_eq!(names, ["lib-0.jar", "lib-1.jar"]);
    for f in &files {
        assert!(std::fs::read(dest.join(&f.name)).unwrap() == std::fs::read(&f.path).unwrap());
    }

    // Every byte came from the store, and no token went there.
    let m = s.metrics().await;
    assert_eq!(metric(&m, "staging_download_redirects_total"), Some(4.0));
    assert_eq!(metric(&m, "staging_download_bytes_total"), Some(0.0));
    let presigned = proxy.presigned_requests();
    assert_eq!(presigned.len(), 4, "{presigned:?}");
    for head in &presigned {
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("\r\nauthorization:"), "{head}");
        assert!(
            !head.contains(token) && !head.contains(&staged.token),
            "{head}"
        );
    }

    // What is served directly: ranges, HEAD, a matching validator, a client that refuses the
    // redirect, and the fork's v0 route.
    let r = get(&bundle, token)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let r = raw
        .head(s.url(&bundle))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get(&bundle, token)
        .header("if-none-match", format!("\"{sha}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = get(&format!("{bundle}?redirect=false"), token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sha256_hex(&r.bytes().await.unwrap()), sha);
    let r = get(&format!("/api/v0/resources/{id}"), token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sha256_hex(&r.bytes().await.unwrap()), sha);
    let r = get(
        &format!(
            "/api/v1/resources/{}/files/lib-0.jar?redirect=false",
            staged.id
        ),
        &staged.token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // No valid token, no redirect: the answers of a direct download.
    for (path, token, status) in [
        (bundle.clone(), "not-a-token", 401),
        (bundle.clone(), staged.token.as_str(), 403),
        (
            format!("/api/v1/resources/{}/files/nope.jar", staged.id),
            staged.token.as_str(),
            404,
        ),
        (
            format!("/api/v1/resources/{}/content", staged.id),
            staged.token.as_str(),
            409,
        ),
    ] {
        let r = get(&path, token).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert!(r.headers().get("location").is_none(), "{path}");
    }
    assert_eq!(
        metric(&s.metrics().await, "staging_download_redirects_total"),
        Some(4.0)
    );
    s.shutdown().await;
}

#[tokio::test]
#[ignore = "needs moto (S3 protocol); run through scripts/test.sh"]
async fn s3_replicas_share_one_bucket_through_conditional_writes() {
    let (_moto, endpoint) = start_moto().await;
    let location = StoreLocation::Url {
        url: "s3://staging-bucket/replicated".into(),
        options: s3_options(&endpoint),
    };
    let tweak = |c: &mut staging_server::Config| c.snapshot_every = 10;
    let a = crate::replicas::replica(None, location.clone(), tweak).await;
    let b = crate::replicas::replica(None, location.clone(), tweak).await;
    let c = crate::replicas::replica(None, location.clone(), tweak).await;
    // The lease is taken with a conditional create and renewed with conditional updates:
    // exactly one replica leads.
    let deadline = Instant::now() + Duration::from_secs(20);
    while [&a, &b, &c].iter().filter(|r| r.state.leads()).count() != 1 {
        assert!(Instant::now() < deadline, "no single leader on moto");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bytes = random_bytes(200_000);
    let up = a.upload("team-a", bytes.clone()).await;
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
    let got = b.get_content(id, token).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
    // Concurrent commits on all three land at distinct log positions.
    let mut tasks = Vec::new();
    for r in [&a, &b, &c] {
        for _ in 0..4 {
            let upload = r.upload_request("team-b", random_bytes(1_000));
            tasks.push(tokio::spawn(async move {
                let resp = upload.send().await.unwrap();
                let status = resp.status().as_u16();
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                (status, body["id"].as_str().unwrap_or_default().to_owned())
            }));
        }
    }
    let mut acked = Vec::new();
    for t in tasks {
        let (status, id) = t.await.unwrap();
        assert_eq!(status, 201);
        acked.push(id);
    }
    for (i, r) in [&a, &b, &c].into_iter().enumerate() {
        r.state.sync_shared().await.unwrap();
        let used = r.state.db().usage("team-b".parse().unwrap()).await.unwrap();
        if used.committed_count != 12 {
            panic!(
                "replica {i} counts {} of the 12 commits acknowledged: {}",
                used.committed_count,
                replicated_log_diagnosis(&endpoint, &acked, [&a, &b, &c]).await
            );
        }
    }
    let del = c
        .client
        .delete(c.url(&format!("/api/v1/resources/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.get_content(id, token).await.status() == 200 {
        assert!(Instant::now() < deadline, "the deletion never reached A");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The leader streams a snapshot into the bucket (a multipart upload of one part: the
    // database is small; parts of S3's minimum size are the resources' own, tested above). The
    // log up to it is removed, so a replica started now has the commits only if it loads the
    // snapshot, then the log after it.
    crate::replicas::until("a snapshot on moto", || async {
        !objects_under(&endpoint, "replicated/state/snapshots")
            .await
            .is_empty()
    })
    .await;
    let seq = |key: &str| key.rsplit('/').next().unwrap().parse::<u64>().unwrap();
    let snapshots = objects_under(&endpoint, "replicated/state/snapshots").await;
    let at = snapshots.iter().map(|k| seq(k)).max().unwrap();
    let log = objects_under(&endpoint, "replicated/state/log").await;
    let covered: Vec<&String> = log.iter().filter(|k| seq(k) <= at).collect();
    assert!(covered.len() >= 10, "{log:?} up to {at}");
    // Trimmed as the leader trims: the mark first.
    put_object(&endpoint, "replicated/state/trimmed", at.to_string()).await;
    for key in covered {
        delete_object(&endpoint, key).await;
    }
    let d = crate::replicas::replica(None, location.clone(), tweak).await;
    let used = d.state.db().usage("team-b".parse().unwrap()).await.unwrap();
    assert_eq!(used.committed_count, 12);
    // The deletion is in the snapshot or the log after it: the token is revoked.
    assert_eq!(d.get_content(id, token).await.status(), 401);
    let text = d.metrics().await;
    assert!(text.contains("staging_replica_rebuilds_total 1"), "{text}");
    for r in [a, b, c, d] {
        r.shutdown().await;
    }
}

/// What the shared log and each replica hold of the `acked` commits, for a failure message.
async fn replicated_log_diagnosis(
    endpoint: &str,
    acked: &[String],
    replicas: [&TestServer; 3],
) -> String {
    use object_store::ObjectStoreExt as _;
    let store = bucket(endpoint);
    let mut out = String::new();
    let snapshots = objects_under(endpoint, "replicated/state/snapshots").await;
    out.push_str(&format!("snapshots {snapshots:?}; "));
    let mut logged = Vec::new();
    for key in objects_under(endpoint, "replicated/state/log").await {
        let body = match store
            .get(&object_store::path::Path::from(key.as_str()))
            .await
        {
            Ok(g) => g.bytes().await.unwrap_or_default(),
            Err(e) => {
                out.push_str(&format!("{key}: {e}; "));
                continue;
            }
        };
        let entry: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let (op, id) = (
            entry["op"].as_str().unwrap_or("?"),
            entry["id"].as_str().unwrap_or(""),
        );
        out.push_str(&format!(
            "{}={op}:{id}; ",
            key.rsplit('/').next().unwrap_or("")
        ));
        logged.push(id.to_owned());
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !logged.contains(id)).collect();
    out.push_str(&format!("acked but not in the log: {missing:?}; "));
    for (i, r) in replicas.into_iter().enumerate() {
        let at = r.state.db().applied_seq().await;
        let mut present = Vec::new();
        for id in acked {
            let known = r.state.db().get(id.parse().unwrap()).await;
            present.push(matches!(known, Ok(Some(_))));
        }
        out.push_str(&format!("replica {i} at {at:?} holds {present:?}; "));
    }
    out
}

/// The moto bucket, read and written past the server.
fn bucket(endpoint: &str) -> Box<dyn object_store::ObjectStore> {
    let url = url::Url::parse("s3://staging-bucket").unwrap();
    object_store::parse_url_opts(&url, s3_options(endpoint))
        .unwrap()
        .0
}

/// The objects under `prefix` in the moto bucket.
async fn objects_under(endpoint: &str, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt as _;
    bucket(endpoint)
        .list(Some(&object_store::path::Path::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// Writes the object `key` of the moto bucket.
async fn put_object(endpoint: &str, key: &str, body: String) {
    use object_store::ObjectStoreExt as _;
    bucket(endpoint)
        .put(&object_store::path::Path::from(key), body.into())
        .await
        .unwrap();
}

/// Deletes the object `key` of the moto bucket.
async fn delete_object(endpoint: &str, key: &str) {
    use object_store::ObjectStoreExt as _;
    bucket(endpoint)
        .delete(&object_store::path::Path::from(key))
        .await
        .unwrap();
}

/// Whether the replica behind `admin` holds the leader lease.
async fn leads(client: &reqwest::Client, admin: std::net::SocketAddr) -> bool {
    match client.get(format!("http://{admin}/metrics")).send().await {
        Ok(r) => r
            .text()
            .await
            .is_ok_and(|t| crate::common::metric(&t, "staging_replica_leader") == Some(1.0)),
        Err(_) => false,
    }
}

#[tokio::test]
#[ignore = "needs moto (S3 protocol); run through scripts/test.sh"]
async fn s3_replicas_survive_kill_9_of_a_replica_mid_upload_and_of_the_leader_mid_sweep() {
    use crate::crash::start_with;

    let (_moto, endpoint) = start_moto().await;
    let mut args: Vec<String> = [
        "--store-url=s3://staging-bucket/killed",
        "--replicated",
        "--replica-sync-interval=200ms",
        "--leader-lease=2s",
        "--sweep-interval=300ms",
        "--orphan-grace=1s",
        "--unused-ttl=4s",
        "--signing-key=replicas-share-this-signing-key-0123456789",
        "--admin-listen=127.0.0.1:0",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for (k, v) in s3_options(&endpoint) {
        args.push(format!("--store-option={k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs = Vec::new();
    for d in &dirs {
        procs.push(start_with(d.path(), &args).await);
    }
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let mut found = None;
        for (i, p) in procs.iter().enumerate() {
            if leads(&client, p.admin.unwrap()).await {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let follower = (leader + 1) % 3;
    let survivor = (leader + 2) % 3;
    let base = |i: usize, procs: &Vec<crate::crash::Proc>| format!("http://{}", procs[i].addr);
    let upload = |url: String, ttl: &'static str| {
        let client = client.clone();
        async move {
            let res = client
                .post(format!(
                    "{url}/api/v1/resources?namespace=a&unused_ttl={ttl}"
                ))
                .header("content-type", "application/gzip")
                .body(random_bytes(20_000))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            let v: serde_json::Value = res.json().await.unwrap();
            (
                v["id"].as_str().unwrap().to_owned(),
                v["token"].as_str().unwrap().to_owned(),
            )
        }
    };
    // HEAD: it answers as a download would without recording one (a download would stop
    // the unused TTL).
    let status = |url: String, id: String, token: String| {
        let client = client.clone();
        async move {
            client
                .head(format!("{url}/api/v1/resources/{id}/content"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Kept: acknowledged uploads with a long unused TTL, through each replica.
    let mut kept = Vec::new();
    for i in 0..3 {
        kept.push(upload(base(i, &procs), "1h").await);
    }

    // 1. kill -9 of a follower in the middle of an upload.
    let (tx, body) = crate::common::fed_body(4);
    tx.send(Ok(bytes::Bytes::from(random_bytes(1 << 20))))
        .await
        .unwrap();
    let cut = tokio::spawn({
        let (client, url) = (client.clone(), base(follower, &procs));
        async move {
            client
                .post(format!("{url}/api/v1/resources?namespace=a"))
                .header("content-type", "application/gzip")
                .body(body)
                .send()
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while objects_under(&endpoint, "killed/state/pending")
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the upload was never marked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    procs[follower].child.start_kill().unwrap();
    procs[follower].child.wait().await.unwrap();
    // The client sees its upload fail; nothing of it is visible anywhere (checked below).
    drop(tx);
    let _ = cut.await.unwrap();

    // 2. kill -9 of the leader once its sweep has begun deleting expired resources.
    let mut expiring = Vec::new();
    for _ in 0..20 {
        expiring.push(upload(base(survivor, &procs), "4s").await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    'first: loop {
        for (id, token) in &expiring {
            if status(base(survivor, &procs), id.clone(), token.clone()).await != 200 {
                break 'first;
            }
        }
        assert!(Instant::now() < deadline, "the sweep never began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    procs[leader].child.start_kill().unwrap();
    procs[leader].child.wait().await.unwrap();

    // The survivor takes the lease over and finishes: every expired resource goes, its bytes
    // and the dead replica's upload mark too; every kept upload stays.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = 0;
        for (id, token) in &expiring {
            if status(base(survivor, &procs), id.clone(), token.clone()).await == 200 {
                left += 1;
            }
        }
        let objects = objects_under(&endpoint, "killed/resources").await.len();
        let marks = objects_under(&endpoint, "killed/state/pending").await.len();
        if left == 0 && objects == kept.len() && marks == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the kills: {left} expired resources still served, {objects} objects \
             (want {}), {marks} upload marks",
            kept.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(leads(&client, procs[survivor].admin.unwrap()).await);
    for (id, token) in &kept {
        assert_eq!(
            status(base(survivor, &procs), id.clone(), token.clone()).await,
            200
        );
    }
}
