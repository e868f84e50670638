//! Blobs between tenants: unnamed blobs are charged and bounded, what another namespace holds
//! is not observable, one namespace's deletion never takes another's grant.

use std::collections::BTreeMap;
use std::time::Duration;

use staging_client::stage::{LocalFile, StageRequest, stage};
use staging_server::lifecycle::Sweeper;

use crate::common::{TestServer, content, metric, random_bytes, sha256_hex};

const MIB: usize = 1 << 20;

async fn put_blob(s: &TestServer, ns: &str, bytes: &[u8]) -> (u16, serde_json::Value) {
    put_blob_as(s, ns, &sha256_hex(bytes), bytes).await
}

async fn put_blob_as(
    s: &TestServer,
    ns: &str,
    sha: &str,
    bytes: &[u8],
) -> (u16, serde_json::Value) {
    let res = s
        .client
        .put(s.url(&format!("/api/v1/blobs/{sha}?namespace={ns}")))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

async fn delete_blob(s: &TestServer, ns: &str, sha: &str) -> u16 {
    s.client
        .delete(s.url(&format!("/api/v1/blobs/{sha}?namespace={ns}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn submit(s: &TestServer, ns: &str, files: &[(&str, &[u8])]) -> (u16, serde_json::Value) {
    let files: Vec<_> = files
        .iter()
        .map(|(name, b)| serde_json::json!({"name": name, "sha256": sha256_hex(b)}))
        .collect();
    let res = s
        .client
        .post(s.url("/api/v1/submissions"))
        .json(&serde_json::json!({"namespace": ns, "files": files}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// Bytes of the objects in the local store.
fn stored_bytes(s: &TestServer) -> u64 {
    let root = s.dir.path().join("objects").join("resources");
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().contains('#'))
                .map(|e| e.metadata().unwrap().len())
                .sum()
        })
        .unwrap_or(0)
}

/// Waits (bounded) until the local store holds `want` bytes: surplus and released blobs are
/// deleted off the request path.
async fn wait_stored(s: &TestServer, want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored_bytes(s) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "store holds {} bytes, expected {want}",
            stored_bytes(s)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unnamed_blobs_are_charged_to_their_namespace_and_the_capacity() {
    let s = TestServer::start(|c| {
        c.limits.capacity = Some(16 * MIB as u64);
        c.limits.namespace_quota_bytes = Some(8 * MIB as u64);
    })
    .await;
    // One tenant parks blobs it never names: only its quota's worth is accepted.
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..6u8 {
        let (status, body) = put_blob(&s, "parker", &content(3 * MIB, i)).await;
        match status {
            201 => accepted += 1,
            507 => {
                refused += 1;
                assert_eq!(body["code"], "insufficient_storage", "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((accepted, refused), (2, 4));
    wait_stored(&s, 6 * MIB as u64).await;
    // Another tenant still has room.
    let other = s.upload("other", random_bytes(6 * MIB)).await;
    assert_eq!(other["size"], 6 * MIB);
    // A declared length past the room is refused before anything is read.
    let res = s
        .client
        .put(s.url(&format!(
            "/api/v1/blobs/{}?namespace=parker",
            sha256_hex(b"x")
        )))
        .header("content-length", (3 * MIB).to_string())
        .body(vec![0u8; 3 * MIB])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 507);
    s.shutdown().await;
}

#[tokio::test]
async fn unnamed_bytes_are_bounded_and_their_sender_may_delete_them() {
    let s = TestServer::start(|c| {
        c.limits.namespace_unnamed_bytes = 5 * MIB as u64;
        c.limits.namespace_quota_bytes = Some(8 * MIB as u64);
    })
    .await;
    let a = content(3 * MIB, 1);
    let b = content(3 * MIB, 2);
    assert_eq!(put_blob(&s, "team-a", &a).await.0, 201);
    let (status, body) = put_blob(&s, "team-a", &b).await;
    // Refused by the bound on unnamed bytes (the quota would have room for it), before the
    // body is read as its declared length is past the room.
    assert_eq!(status, 507, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not named by a submission"),
        "{body}"
    );
    // The sender takes its blob back; then the other fits.
    assert_eq!(delete_blob(&s, "team-a", &sha256_hex(&a)).await, 204);
    assert_eq!(delete_blob(&s, "team-a", &sha256_hex(&a)).await, 404);
    assert_eq!(delete_blob(&s, "team-b", &sha256_hex(&b)).await, 404);
    wait_stored(&s, 0).await;
    assert_eq!(put_blob(&s, "team-a", &b).await.0, 201);
    // Naming moves the charge to the submission: 3 MiB, not 3 + 3, of the 8 MiB quota.
    let small = content(MIB, 3);
    assert_eq!(put_blob(&s, "team-a", &small).await.0, 201);
    let (status, body) = submit(&s, "team-a", &[("b.jar", &b), ("small.jar", &small)]).await;
    assert_eq!(status, 201, "{body}");
    // A named blob is deleted with its submission, not on its own.
    assert_eq!(delete_blob(&s, "team-a", &sha256_hex(&b)).await, 409);
    s.shutdown().await;
}

#[tokio::test]
async fn whether_another_namespace_holds_a_file_is_not_observable() {
    let s = TestServer::start(|_| {}).await;
    // team-a holds a low-entropy properties file.
    let held = b"spark.executor.memory=4g\nspark.executor.cores=2\n".to_vec();
    let mut new = held.clone();
    new[23] = b'8';
    assert_eq!(put_blob(&s, "team-a", &held).await.0, 201);
    assert_eq!(
        submit(&s, "team-a", &[("spark.properties", &held)]).await.0,
        201
    );
    s.state.refresh_census().await;
    let before = s.metrics().await;
    let public_before = s.public_metrics().await;
    // team-b sends the held content and a new one of the same size.
    let mut answers = Vec::new();
    for bytes in [&held, &new] {
        let received = metric(&s.public_metrics().await, "staging_upload_bytes_total").unwrap();
        let (status, mut body) = put_blob(&s, "team-b", bytes).await;
        body["sha256"] = serde_json::Value::Null;
        answers.push((status, body));
        // The body was received in full either way.
        let after = metric(&s.public_metrics().await, "staging_upload_bytes_total").unwrap();
        assert_eq!(after - received, bytes.len() as f64);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, 201);
    // ... and hashed in full: wrong bytes under the held digest are refused as under a new one.
    for target in [&held, &new] {
        let (status, body) = put_blob_as(&s, "team-c", &sha256_hex(target), b"guess").await;
        assert_eq!(status, 422, "{body}");
    }
    // The public listener shows no stored-data gauge at all; the admin one moves only when
    // the sweep's timer recomputes it, never on the request path.
    let public = s.public_metrics().await;
    for name in [
        "staging_stored_files",
        "staging_stored_files_bytes",
        "staging_stored_bytes",
        "staging_resources",
        "staging_pending_store_deletions",
    ] {
        assert!(
            !public.lines().any(|l| l.starts_with(name)),
            "{name} on the public listener:\n{public}"
        );
        assert!(!public_before.lines().any(|l| l.starts_with(name)));
    }
    let admin_now = s
        .client
        .get(format!("http://{}/metrics", s.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&admin_now, "staging_stored_files"),
        metric(&before, "staging_stored_files")
    );
    let after = s.metrics().await;
    assert_eq!(metric(&after, "staging_stored_files"), Some(2.0), "{after}");
    s.shutdown().await;
}

fn stage_request(s: &TestServer, ns: &str, files: Vec<LocalFile>) -> StageRequest {
    StageRequest {
        server: s.url(""),
        namespace: ns.into(),
        labels: BTreeMap::from([("spark-role".to_owned(), "driver".to_owned())]),
        ttl: None,
        unused_ttl: None,
        credential: None,
        files,
        retries: 0,
    }
}

#[tokio::test]
async fn another_namespaces_deletion_never_takes_a_grant() {
    // Submissions live past the one-hour grace unless deleted.
    let s = TestServer::start(|c| c.limits.unused_ttl = c.limits.max_ttl).await;
    let popular = content(40_000, 9);
    // team-a names the popular file.
    assert_eq!(put_blob(&s, "team-a", &popular).await.0, 201);
    let (status, a) = submit(&s, "team-a", &[("lib.jar", &popular)]).await;
    assert_eq!(status, 201);
    // team-b sends it, then team-a deletes its last submission naming it.
    assert_eq!(put_blob(&s, "team-b", &popular).await.0, 201);
    let res = s
        .client
        .delete(s.url(&format!("/api/v1/resources/{}", a["id"].as_str().unwrap())))
        .bearer_auth(a["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    // team-b's grant, seconds old, still stands.
    let (status, b) = submit(&s, "team-b", &[("lib.jar", &popular)]).await;
    assert_eq!(status, 201, "{b}");

    // Churn: team-a stages and deletes the same file while team-b stages it, every round
    // succeeding at once (no retries).
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("lib.jar");
    std::fs::write(&path, &popular).unwrap();
    let files = vec![LocalFile {
        path,
        name: "lib.jar".into(),
    }];
    for round in 0..10 {
        let a = stage(&s.client, &stage_request(&s, "team-a", files.clone()))
            .await
            .unwrap_or_else(|e| panic!("team-a round {round}: {e}"));
        let res = s
            .client
            .delete(s.url(&format!("/api/v1/resources/{}", a.id)))
            .bearer_auth(&a.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
        let b = stage(&s.client, &stage_request(&s, "team-b", files.clone()))
            .await
            .unwrap_or_else(|e| panic!("team-b round {round}: {e}"));
        assert_eq!(
            b.sent_files, 0,
            "team-b's own grant is kept while it names it"
        );
    }
    // An unnamed grant ends with its own grace: team-c sends the file and never names it.
    assert_eq!(put_blob(&s, "team-c", &popular).await.0, 201);
    let sweeper = Sweeper::new(s.state.clone());
    s.clock
        .advance(staging_server::db::UNNAMED_BLOB_GRACE + Duration::from_secs(1));
    sweeper.sweep_once().await.unwrap();
    let (status, body) = submit(&s, "team-c", &[("lib.jar", &popular)]).await;
    assert_eq!(status, 409, "{body}");
    // team-b's submissions still name it: the bytes stay.
    assert_eq!(stored_bytes(&s), popular.len() as u64);
    // Once every submission is gone (maximum TTL), the bytes go.
    s.clock.advance(Duration::from_secs(8 * 24 * 3600));
    sweeper.sweep_once().await.unwrap();
    wait_stored(&s, 0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_file_of_another_namespace_cannot_be_claimed_without_its_bytes() {
    let s = TestServer::start(|_| {}).await;
    let file = content(20_000, 21);
    let sha = sha256_hex(&file);
    assert_eq!(put_blob(&s, "team-a", &file).await.0, 201);
    // Knowing the digest, team b sends no body: refused as wrong bytes, and it holds nothing.
    let (status, body) = put_blob_as(&s, "team-b", &sha, b"").await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = submit(&s, "team-b", &[("lib.jar", &file)]).await;
    assert_eq!(status, 409, "{body}");
    // Team a, which holds it, needs no body.
    assert_eq!(put_blob_as(&s, "team-a", &sha, b"").await.0, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn a_resend_does_not_keep_an_unnamed_file_past_its_grace() {
    let s = TestServer::start(|_| {}).await;
    let file = content(50_000, 40);
    let sha = sha256_hex(&file);
    let grace = staging_server::db::UNNAMED_BLOB_GRACE;
    let sweeper = Sweeper::new(s.state.clone());
    assert_eq!(put_blob(&s, "team-a", &file).await.0, 201);
    // The sender sends it again shortly before the grace ends, without a body and with it:
    // held both times ...
    s.clock.advance(grace - Duration::from_secs(600));
    assert_eq!(put_blob_as(&s, "team-a", &sha, b"").await.0, 200);
    assert_eq!(put_blob(&s, "team-a", &file).await.0, 200);
    sweeper.sweep_once().await.unwrap();
    // ... but the grace counts from the first send: it ends on time.
    s.clock.advance(Duration::from_secs(601));
    assert_eq!(sweeper.sweep_once().await.unwrap().unnamed_blobs, 1);
    let (status, body) = submit(&s, "team-a", &[("lib.jar", &file)]).await;
    assert_eq!(status, 409, "{body}");
    wait_stored(&s, 0).await;
    assert_eq!(put_blob_as(&s, "team-a", &sha, b"").await.0, 422);
    // Sending the bytes again is a new first send, and a submission keeps what it names.
    assert_eq!(put_blob(&s, "team-a", &file).await.0, 201);
    assert_eq!(submit(&s, "team-a", &[("lib.jar", &file)]).await.0, 201);
    assert_eq!(
        s.state.db().usage_drift().await.unwrap(),
        Vec::<String>::new()
    );
    s.shutdown().await;
}

fn ns(name: &str) -> staging_api::ids::Namespace {
    name.parse().unwrap()
}

/// Asserts that the running counters hold what a recount of the rows gives.
async fn assert_counted(s: &TestServer, step: &str) {
    let drift = s.state.db().usage_drift().await.unwrap();
    assert!(drift.is_empty(), "after {step}: {drift:#?}");
}

#[tokio::test]
async fn charges_are_running_counters_right_across_grants_collection_deletion_and_a_restart() {
    use staging_server::db::MIN_CHARGE;
    let tweak = |c: &mut staging_server::Config| {
        c.limits.namespace_max_blobs = 6;
        // Submissions live past the grace unless deleted.
        c.limits.unused_ttl = c.limits.max_ttl;
    };
    let s = TestServer::start(tweak).await;
    let usage = async |s: &TestServer, n: &str| s.state.db().usage(ns(n)).await.unwrap();

    // Tiny files cost the minimum each, and a namespace holds at most six unnamed.
    let tiny: Vec<Vec<u8>> = (0..7).map(|i| content(10, 60 + i)).collect();
    for t in &tiny[..6] {
        assert_eq!(put_blob(&s, "team-a", t).await.0, 201);
    }
    let u = usage(&s, "team-a").await;
    assert_eq!((u.unnamed_count, u.unnamed_bytes), (6, 6 * MIN_CHARGE));
    let (status, body) = put_blob(&s, "team-a", &tiny[6]).await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already holds 6 files"),
        "{body}"
    );
    assert_counted(&s, "tiny files").await;

    // Naming moves the charge from unnamed to committed.
    let (status, first) = submit(
        &s,
        "team-a",
        &[("a", &tiny[0]), ("b", &tiny[1]), ("c", &tiny[2])],
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let big = content(100_000, 90);
    assert_eq!(put_blob(&s, "team-a", &big).await.0, 201);
    let (status, second) = submit(&s, "team-a", &[("big", &big), ("d", &tiny[3])]).await;
    assert_eq!(status, 201, "{second}");
    let u = usage(&s, "team-a").await;
    assert_eq!(
        (u.committed_count, u.committed_bytes, u.unnamed_count),
        (2, 4 * MIN_CHARGE + 100_000, 2)
    );
    assert_counted(&s, "submissions").await;

    // Another namespace's grants on the same files are its own, and it may take one back.
    assert_eq!(put_blob(&s, "team-b", &tiny[0]).await.0, 201);
    assert_eq!(put_blob(&s, "team-b", &big).await.0, 201);
    assert_eq!(delete_blob(&s, "team-b", &sha256_hex(&tiny[0])).await, 204);
    assert_eq!(usage(&s, "team-b").await.unnamed_bytes, 100_000);
    assert_counted(&s, "another namespace's grants").await;

    // Deleting a submission makes its files unnamed again (they go with their grace).
    let res = s
        .client
        .delete(s.url(&format!(
            "/api/v1/resources/{}",
            first["id"].as_str().unwrap()
        )))
        .bearer_auth(first["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(usage(&s, "team-a").await.unnamed_count, 5);
    // A bundle is charged too.
    s.upload("team-c", random_bytes(1000)).await;
    assert_eq!(usage(&s, "team-c").await.committed_bytes, MIN_CHARGE);
    assert_counted(&s, "deletion and a bundle").await;

    // Past the grace: a dead grant is replaced by a new send, the others are collected.
    s.clock
        .advance(staging_server::db::UNNAMED_BLOB_GRACE + Duration::from_secs(1));
    assert_eq!(put_blob(&s, "team-a", &tiny[4]).await.0, 201);
    assert_counted(&s, "a dead grant replaced").await;
    Sweeper::new(s.state.clone()).sweep_once().await.unwrap();
    let a = usage(&s, "team-a").await;
    assert_eq!(
        (a.committed_count, a.unnamed_count, a.unnamed_bytes),
        (1, 1, MIN_CHARGE)
    );
    assert_eq!(usage(&s, "team-b").await.unnamed_count, 0);
    assert_counted(&s, "collection").await;

    // The counters are kept, not recounted, across a restart.
    let before = (
        usage(&s, "team-a").await,
        usage(&s, "team-b").await,
        usage(&s, "team-c").await,
    );
    let dir = s.shutdown().await;
    let s = TestServer::start_in(dir, tweak, None).await;
    assert_counted(&s, "a restart").await;
    assert_eq!(
        before,
        (
            usage(&s, "team-a").await,
            usage(&s, "team-b").await,
            usage(&s, "team-c").await
        )
    );
    s.shutdown().await;
}
