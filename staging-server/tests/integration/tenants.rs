//! Tenants apart: an upload token limited to namespaces acts for those only (a digest known
//! from another namespace is no way in), and the fork's v0 GET of a v1 submission is a clear
//! client error, not a store loss.

use std::collections::BTreeMap;

use staging_client::stage::{LocalFile, StageRequest, stage};

use crate::common::{TestServer, metric, random_bytes, sha256_hex};

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
