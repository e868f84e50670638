//! Tenants apart: an upload token limited to namespaces acts for those only (a digest known
//! from another namespace is no way in), a shared token cannot multiply its allowance of
//! unnamed files by making up namespaces, and the fork's v0 GET of a v1 submission is a clear
//! client error, not a store loss.

use std::collections::BTreeMap;

use staging_client::stage::{LocalFile, StageRequest, stage};

use std::time::Duration;

use staging_server::lifecycle::Sweeper;

use crate::common::{TestServer, content, metric, random_bytes, sha256_hex};

const TEAM_A: &str = "team-a-upload-token-0123456789";
const TEAM_B: &str = "team-b-upload-token-0123456789";

fn limited(entry: &str) -> staging_server::auth::UploadToken {
    staging_server::auth::UploadToken::parse(entry)
        .unwrap()
        .unwrap()
}

fn one_file(dir: &std::path::Path) -> (LocalFile, Vec<u8>) {
    let bytes = random_bytes(12_345);
    let path = dir.join("udfs.jar");
    std::fs::write(&path, &bytes).unwrap();
    (
        LocalFile {
            path,
            name: "udfs.jar".into(),
        },
        bytes,
    )
}

fn request(s: &TestServer, ns: &str, token: &str, file: LocalFile) -> StageRequest {
    StageRequest {
        server: s.url(""),
        namespace: ns.into(),
        labels: BTreeMap::from([("spark-role".to_owned(), "driver".to_owned())]),
        ttl: None,
        unused_ttl: None,
        credential: Some(token.into()),
        files: vec![file],
        retries: 0,
    }
}

#[tokio::test]
async fn a_token_limited_to_namespaces_is_refused_for_another() {
    let s = TestServer::start(|c| {
        c.upload_tokens = vec![
            limited(&format!("{TEAM_A} team-a")),
            limited(&format!("{TEAM_B} team-b team-c")),
        ];
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let (file, bytes) = one_file(work.path());
    let sha = sha256_hex(&bytes);
    let victim = stage(&s.client, &request(&s, "team-a", TEAM_A, file.clone()))
        .await
        .unwrap();

    // Team b's token, knowing the digest, cannot claim the file for team a ...
    let res = s
        .client
        .post(s.url("/api/v1/submissions"))
        .bearer_auth(TEAM_B)
        .json(&serde_json::json!({
            "namespace": "team-a",
            "files": [{"name": "udfs.jar", "sha256": sha}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body = res.text().await.unwrap();
    assert!(
        body.contains("limited to other namespaces than team-a"),
        "{body}"
    );
    // ... nor send blobs, bundles or fork uploads for it.
    let res = s
        .client
        .put(s.url(&format!("/api/v1/blobs/{sha}?namespace=team-a")))
        .bearer_auth(TEAM_B)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = s
        .client
        .post(s.url("/api/v1/resources?namespace=team-a"))
        .bearer_auth(TEAM_B)
        .header("content-type", "application/gzip")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    for owner_first in [true, false] {
        let (ctype, body) = crate::uploads::fork_multipart(
            &bytes,
            r#"{"ownerNamespace":"team-a","ownerLabels":{},"ownerType":"Pod"}"#,
            owner_first,
        );
        let res = s
            .client
            .post(s.url("/api/v0/resources"))
            .header("content-type", ctype)
            .bearer_auth(TEAM_B)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "owner first: {owner_first}");
    }
    // Nor delete team a's submission: it learns nothing, and the submission stays.
    let res = s
        .client
        .delete(s.url(&format!("/api/v1/resources/{}", victim.id)))
        .bearer_auth(TEAM_B)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = s
        .client
        .get(s.url(&format!("/api/v1/resources/{}", victim.id)))
        .bearer_auth(&victim.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // In its own namespaces it works, the same file included.
    for ns in ["team-b", "team-c"] {
        stage(&s.client, &request(&s, ns, TEAM_B, file.clone()))
            .await
            .unwrap();
    }
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "staging_auth_failures_total{reason=\"wrong_namespace\"}"
        ),
        Some(5.0),
        "{m}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_fork_api_get_of_a_submission_is_a_client_error() {
    let s = TestServer::start(|_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let (file, _) = one_file(work.path());
    let mut req = request(&s, "team-a", "unused", file);
    req.credential = None;
    let sub = stage(&s.client, &req).await.unwrap();
    let res = s
        .client
        .get(s.url(&format!("/api/v0/resources/{}", sub.id)))
        .header("authorization", &sub.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "files_resource");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("v0 API does not serve"), "{message}");
    assert!(message.contains("/files/"), "{message}");
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "staging_store_errors_total{kind=\"lost\"}").unwrap_or(0.0),
        0.0,
        "{m}"
    );
    s.shutdown().await;
}

const SHARED: &str = "shared-upload-token-0123456789";
const SHARED_2: &str = "second-shared-upload-token-0123";

/// Sends `bytes` as a file of `ns` with `token`.
async fn send(s: &TestServer, token: &str, ns: &str, bytes: &[u8]) -> (u16, String) {
    send_as(s, token, ns, &sha256_hex(bytes), bytes).await
}

/// Sends `bytes` as the file `sha` of `ns` with `token`.
async fn send_as(s: &TestServer, token: &str, ns: &str, sha: &str, bytes: &[u8]) -> (u16, String) {
    let res = s
        .client
        .put(s.url(&format!("/api/v1/blobs/{sha}?namespace={ns}")))
        .bearer_auth(token)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn a_shared_token_cannot_multiply_its_unnamed_allowance_with_made_up_namespaces() {
    const MIB: usize = 1 << 20;
    let s = TestServer::start(|c| {
        c.upload_tokens = vec![
            SHARED.into(),
            SHARED_2.into(),
            limited(&format!("{TEAM_A} team-a")),
        ];
        c.limits.namespace_unnamed_bytes = 2 * MIB as u64;
        c.limits.credential_unnamed_bytes = 3 * MIB as u64;
        c.limits.max_unnamed_namespaces = 5;
    })
    .await;
    // The attack: a file of 1 MiB into ever new made-up namespaces, each of which would have
    // 2 MiB of its own.
    let mut accepted = Vec::new();
    for i in 0..10u8 {
        let bytes = content(MIB, i);
        let (code, body) = send(&s, SHARED, &format!("made-up-{i}"), &bytes).await;
        match code {
            201 => accepted.push(bytes),
            507 => assert!(
                body.contains("this credential's bound on files not named by a submission"),
                "{body}"
            ),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(
        accepted.len(),
        3,
        "the token's 3 MiB, not 2 MiB in each of 10 namespaces"
    );
    // Another credential's allowance is its own.
    assert_eq!(send(&s, TEAM_A, "team-a", &content(MIB, 100)).await.0, 201);

    // The namespaces holding unnamed files are capped too, whatever the credentials: four
    // hold some now, one more fits, then none; a namespace holding some still takes more.
    assert_eq!(
        send(&s, SHARED_2, "made-up-20", &content(1000, 101))
            .await
            .0,
        201
    );
    let (code, body) = send(&s, SHARED_2, "made-up-21", &content(1000, 102)).await;
    assert_eq!(code, 507, "{body}");
    assert!(body.contains("namespaces already hold files"), "{body}");
    assert_eq!(
        send(&s, SHARED_2, "made-up-20", &content(1000, 103))
            .await
            .0,
        201
    );

    // Naming a file gives its charge back to the token.
    let res = s
        .client
        .post(s.url("/api/v1/submissions"))
        .bearer_auth(SHARED)
        .json(&serde_json::json!({"namespace": "made-up-0",
            "files": [{"name": "x.jar", "sha256": sha256_hex(&accepted[0])}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(
        send(&s, SHARED, "made-up-21", &content(MIB, 104)).await.0,
        201
    );
    // Unnamed files go with their grace, however often they are offered again; then the
    // allowances are whole again.
    s.clock
        .advance(staging_server::db::UNNAMED_BLOB_GRACE - Duration::from_secs(60));
    for (i, bytes) in accepted.iter().enumerate().skip(1) {
        let sha = sha256_hex(bytes);
        let (code, _) = send_as(&s, SHARED, &format!("made-up-{i}"), &sha, b"").await;
        assert_eq!(code, 200);
    }
    s.clock.advance(Duration::from_secs(3600));
    Sweeper::new(s.state.clone()).sweep_once().await.unwrap();
    for i in 0..3u8 {
        let (code, body) = send(
            &s,
            SHARED,
            &format!("made-up-{}", 30 + i),
            &content(MIB, 110 + i),
        )
        .await;
        assert_eq!(code, 201, "{body}");
    }
    assert_eq!(
        s.state.db().usage_drift().await.unwrap(),
        Vec::<String>::new()
    );
    s.shutdown().await;
}

#[tokio::test]
async fn one_credential_cannot_take_every_place_for_unnamed_files() {
    let s = TestServer::start(|c| {
        c.upload_tokens = vec![
            SHARED.into(),
            SHARED_2.into(),
            limited(&format!("{TEAM_A} team-a")),
        ];
        c.limits.max_unnamed_namespaces = 4;
        c.limits.credential_max_namespaces = 2;
    })
    .await;
    // Tiny files into ever new made-up namespaces: two places, then refused ...
    for i in 0..2u8 {
        let (code, body) = send(&s, SHARED, &format!("made-up-{i}"), &content(100, i)).await;
        assert_eq!(code, 201, "{body}");
    }
    let (code, body) = send(&s, SHARED, "made-up-2", &content(100, 2)).await;
    assert_eq!(code, 507, "{body}");
    assert!(body.contains("in 2 namespaces"), "{body}");
    // ... while its namespaces take more, and other credentials still find places.
    assert_eq!(send(&s, SHARED, "made-up-1", &content(100, 3)).await.0, 201);
    assert_eq!(
        send(&s, SHARED_2, "made-up-2", &content(100, 4)).await.0,
        201
    );
    assert_eq!(send(&s, TEAM_A, "team-a", &content(100, 5)).await.0, 201);
    assert_eq!(
        s.state.db().usage_drift().await.unwrap(),
        Vec::<String>::new()
    );
    s.shutdown().await;
}
