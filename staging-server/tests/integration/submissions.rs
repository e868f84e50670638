//! Submissions of content-addressed files: dedup, namespace grants, digests, fetch, and
//! deletion of the last reference.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use staging_client::fetch::FetchArgs;
use staging_client::stage::{LocalFile, StageRequest, stage};
use staging_server::lifecycle::Sweeper;

use crate::common::{TestServer, metric, random_bytes, sha256_hex};

fn files(dir: &std::path::Path, n: usize, seed: usize) -> Vec<LocalFile> {
    (0..n)
        .map(|i| {
            let name = format!("lib-{i}.jar");
            let path = dir.join(&name);
            if !path.exists() {
                let mut b = random_bytes(20_000 + i * 7 + seed);
                b[0] = i as u8;
                std::fs::write(&path, b).unwrap();
            }
            LocalFile { path, name }
        })
        .collect()
}

fn request(server: &TestServer, ns: &str, files: Vec<LocalFile>) -> StageRequest {
    StageRequest {
        server: server.url(""),
        namespace: ns.into(),
        labels: BTreeMap::from([("spark-role".to_owned(), "driver".to_owned())]),
        ttl: None,
        unused_ttl: None,
        credential: None,
        files,
        retries: 0,
    }
}

/// Objects in the local store.
fn objects(server: &TestServer) -> usize {
    let root = server.dir.path().join("objects").join("resources");
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().contains('#'))
                .count()
        })
        .unwrap_or(0)
}

fn fetch_args(server: &TestServer, id: &str, token_file: PathBuf, dest: PathBuf) -> FetchArgs {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct P {
        #[command(flatten)]
        f: FetchArgs,
    }
    P::parse_from([
        "fetch",
        "--server",
        &server.url(""),
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

#[tokio::test]
async fn resubmission_sends_nothing_and_one_changed_file_only_itself() {
    let server = TestServer::start(|_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let twenty = files(work.path(), 20, 0);
    let total: u64 = twenty
        .iter()
        .map(|f| std::fs::metadata(&f.path).unwrap().len())
        .sum();
    let first = stage(&server.client, &request(&server, "team-a", twenty.clone()))
        .await
        .unwrap();
    assert_eq!(first.sent_files, 20);
    assert_eq!(first.sent_bytes, total);
    assert_eq!(first.size, total);
    let again = stage(&server.client, &request(&server, "team-a", twenty.clone()))
        .await
        .unwrap();
    assert_eq!((again.sent_files, again.sent_bytes), (0, 0));
    assert_ne!(
        again.id, first.id,
        "each submission has its own id and token"
    );
    assert_eq!(again.sha256, first.sha256);
    // One jar changes.
    std::fs::write(&twenty[7].path, b"rebuilt").unwrap();
    let third = stage(&server.client, &request(&server, "team-a", twenty.clone()))
        .await
        .unwrap();
    assert_eq!((third.sent_files, third.sent_bytes), (1, 7));
    // 21 distinct files, each stored once.
    assert_eq!(objects(&server), 21);
    let m = server.metrics().await;
    // Quotas count each submission's full size.
    assert_eq!(
        metric(&m, "staging_stored_bytes"),
        Some((3 * total - 20_000 - 7 * 7 + 7) as f64),
        "{m}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_digest_is_not_a_capability_across_namespaces() {
    let server = TestServer::start(|_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let one = files(work.path(), 1, 1);
    stage(&server.client, &request(&server, "team-a", one.clone()))
        .await
        .unwrap();
    let sha = sha256_hex(&std::fs::read(&one[0].path).unwrap());
    // Another namespace naming the digest without the bytes is asked to send them.
    let res = server
        .client
        .post(server.url("/api/v1/submissions"))
        .json(&serde_json::json!({
            "namespace": "team-b",
            "files": [{"name": "lib-0.jar", "sha256": sha}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "missing_files");
    assert_eq!(body["missing"][0], sha.as_str());
    // Sending other bytes under that digest is refused; nothing is granted.
    let res = server
        .client
        .put(server.url(&format!("/api/v1/blobs/{sha}?namespace=team-b")))
        .body(b"not the same bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422, "{}", res.text().await.unwrap());
    // With the bytes, team-b may use it; the store still holds one copy.
    let b = stage(&server.client, &request(&server, "team-b", one.clone()))
        .await
        .unwrap();
    assert_eq!(b.sent_files, 1);
    // The surplus copy is deleted off the request path.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while objects(&server) != 1 {
        assert!(std::time::Instant::now() < deadline, "{}", objects(&server));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn submissions_are_validated() {
    let server = TestServer::start(|_| {}).await;
    let post = |body: serde_json::Value| {
        server
            .client
            .post(server.url("/api/v1/submissions"))
            .json(&body)
            .send()
    };
    let sha = "a".repeat(64);
    // Over the 1 MiB limit of a submission body.
    let res = server
        .client
        .post(server.url("/api/v1/submissions"))
        .body(vec![b' '; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    for (body, want) in [
        (serde_json::json!({"namespace": "a", "files": []}), 400),
        (
            serde_json::json!({"namespace": "A!", "files": [{"name": "x", "sha256": sha}]}),
            400,
        ),
        (
            serde_json::json!({"namespace": "a", "files": [{"name": "../x", "sha256": sha}]}),
            400,
        ),
        (
            serde_json::json!({"namespace": "a", "files": [{"name": "x", "sha256": "zz"}]}),
            400,
        ),
        (
            serde_json::json!({"namespace": "a", "files": [{"name": "x", "sha256": sha}, {"name": "x", "sha256": sha}]}),
            400,
        ),
        (
            serde_json::json!({"namespace": "a", "ttl": "forever", "files": [{"name": "x", "sha256": sha}]}),
            400,
        ),
        (
            serde_json::json!({"namespace": "a", "extra": 1, "files": [{"name": "x", "sha256": sha}]}),
            400,
        ),
    ] {
        let res = post(body.clone()).await.unwrap();
        assert_eq!(res.status(), want, "{body}: {}", res.text().await.unwrap());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn fetch_gets_each_file_and_shared_bytes_outlive_one_submission() {
    let server = TestServer::start(|_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let three = files(work.path(), 3, 2);
    let a = stage(&server.client, &request(&server, "team-a", three.clone()))
        .await
        .unwrap();
    let b = stage(
        &server.client,
        &request(&server, "team-a", three[..1].to_vec()),
    )
    .await
    .unwrap();
    // The bundle route says where the files are.
    let res = server.get_content(&a.id, &a.token).await;
    assert_eq!(res.status(), 409);

    let token_file = work.path().join("token");
    std::fs::write(&token_file, &a.token).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let got = staging_client::fetch::run(fetch_args(
        &server,
        &a.id,
        token_file.clone(),
        dest.path().to_owned(),
    ))
    .await
    .unwrap();
    assert_eq!(got, ["lib-0.jar", "lib-1.jar", "lib-2.jar"]);
    for f in &three {
        assert_eq!(
            std::fs::read(dest.path().join(&f.name)).unwrap(),
            std::fs::read(&f.path).unwrap()
        );
    }
    // A restarted init-container finds its files and succeeds.
    staging_client::fetch::run(fetch_args(
        &server,
        &a.id,
        token_file.clone(),
        dest.path().to_owned(),
    ))
    .await
    .unwrap();
    // A file of other content in the destination is never overwritten.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("lib-1.jar"), b"mine").unwrap();
    let e = staging_client::fetch::run(fetch_args(
        &server,
        &a.id,
        token_file.clone(),
        other.path().to_owned(),
    ))
    .await
    .unwrap_err();
    assert!(e.message.contains("never overwritten"), "{}", e.message);
    assert_eq!(
        std::fs::read(other.path().join("lib-1.jar")).unwrap(),
        b"mine"
    );

    // Deleting a: lib-0 is still named by b; the other two stay as team-a's unnamed files
    // until the grace of its own send ends (below).
    let res = server
        .client
        .delete(server.url(&format!("/api/v1/resources/{}", a.id)))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(objects(&server), 3);
    let res = server
        .client
        .get(server.url(&format!("/api/v1/resources/{}/files/lib-0.jar", b.id)))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        std::fs::read(&three[0].path).unwrap()
    );
    // a's token no longer reads anything.
    let res = server
        .client
        .get(server.url(&format!("/api/v1/resources/{}/files/lib-0.jar", a.id)))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Past the grace of team-a's send, the files no submission names go.
    server
        .clock
        .advance(staging_server::db::UNNAMED_BLOB_GRACE + Duration::from_secs(1));
    Sweeper::new(server.state.clone())
        .sweep_once()
        .await
        .unwrap();
    assert_eq!(objects(&server), 1);
    // b expires: the last bytes go.
    server.clock.advance(Duration::from_secs(8 * 24 * 3600));
    Sweeper::new(server.state.clone())
        .sweep_once()
        .await
        .unwrap();
    assert_eq!(objects(&server), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn files_sent_but_never_submitted_are_deleted_after_the_grace() {
    let server = TestServer::start(|_| {}).await;
    let bytes = random_bytes(5000);
    let sha = sha256_hex(&bytes);
    let res = server
        .client
        .put(server.url(&format!("/api/v1/blobs/{sha}?namespace=team-a")))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // Sent again: the namespace has it, the body is not needed.
    let res = server
        .client
        .put(server.url(&format!("/api/v1/blobs/{sha}?namespace=team-a")))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(objects(&server), 1);
    let sweeper = Sweeper::new(server.state.clone());
    sweeper.sweep_once().await.unwrap();
    assert_eq!(objects(&server), 1, "within the grace");
    server
        .clock
        .advance(staging_server::db::UNNAMED_BLOB_GRACE + Duration::from_secs(1));
    let report = sweeper.sweep_once().await.unwrap();
    assert_eq!(report.unnamed_blobs, 1);
    assert_eq!(objects(&server), 0);
    server.shutdown().await;
}
