//! Uploads authenticated with Kubernetes credentials, against the test bed's API server
//! (TokenReview and SubjectAccessReview answered from its identity table).

use std::sync::Arc;

use kubebed::api::{ApiConfig, router};
use kubebed::authn::User;
use kubebed::store::Store;

use crate::common::{TestServer, metric, random_bytes, sha256_hex};

const SHARED: &str = "shared-upload-token-0123456789";

async fn bed_api(api: ApiConfig) -> kube::Client {
    let store = Store::new(100);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(Arc::clone(&store), api);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

async fn put(s: &TestServer, ns: &str, token: Option<&str>) -> (u16, String) {
    // Distinct content each time: a blob the namespace has already is answered 200, not 201.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let bytes = random_bytes(3000 + N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let mut req = s
        .client
        .put(s.url(&format!(
            "/api/v1/blobs/{}?namespace={ns}",
            sha256_hex(&bytes)
        )))
        .body(bytes);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn uploads_need_pod_create_rights_in_their_namespace() {
    let api = ApiConfig::default();
    let ids = api.identities.clone();
    for user in ["alice", "bob", "carol"] {
        ids.add_token(
            &format!("{user}-token"),
            User {
                name: user.into(),
                groups: vec!["system:authenticated".into()],
            },
        );
    }
    ids.allow("alice", "create", "pods", "team-a");
    ids.allow("carol", "create", "pods", "team-a");
    let outage = api.outage.clone();
    let client = bed_api(api).await;
    let s = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        |c| {
            c.kube_auth = true;
            c.upload_tokens = vec![SHARED.into()];
        },
        None,
        Some(client),
    )
    .await;

    assert_eq!(put(&s, "team-a", Some("alice-token")).await.0, 201);
    let (code, body) = put(&s, "team-b", Some("alice-token")).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("alice may not create pods in namespace team-b"),
        "{body}"
    );
    assert_eq!(put(&s, "team-a", Some("bob-token")).await.0, 403);
    let (code, body) = put(&s, "team-a", Some("stolen-token")).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(put(&s, "team-a", None).await.0, 401);
    // Shared upload tokens still work beside Kubernetes credentials.
    assert_eq!(put(&s, "team-b", Some(SHARED)).await.0, 201);
    // The same rule for submissions.
    let res = s
        .client
        .post(s.url("/api/v1/submissions"))
        .bearer_auth("bob-token")
        .json(&serde_json::json!({"namespace": "team-a",
            "files": [{"name": "x.jar", "sha256": "a".repeat(64)}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // The API server down: an identity not yet reviewed is refused with 503, not let in.
    outage.set(true);
    let (code, body) = put(&s, "team-a", Some("carol-token")).await;
    assert_eq!(code, 503, "{body}");
    outage.set(false);
    assert_eq!(put(&s, "team-a", Some("carol-token")).await.0, 201);

    let m = s.metrics().await;
    for (outcome, n) in [
        ("allowed", 2.0),
        ("forbidden", 3.0),
        ("unauthenticated", 1.0),
        ("unavailable", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("staging_kube_auth_total{{outcome=\"{outcome}\"}}")
            ),
            Some(n),
            "{outcome}\n{m}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn without_upload_tokens_the_fork_api_is_closed_too() {
    let client = bed_api(ApiConfig::default()).await;
    let s = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        |c| c.kube_auth = true,
        None,
        Some(client),
    )
    .await;
    let (ctype, body) = crate::uploads::fork_multipart(
        &random_bytes(100),
        r#"{"ownerNamespace":"a","ownerLabels":{"x":"y"},"ownerType":"Pod"}"#,
        false,
    );
    let res = s
        .client
        .post(s.url("/api/v0/resources"))
        .header("content-type", ctype)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(put(&s, "a", None).await.0, 401);
    s.shutdown().await;
}
