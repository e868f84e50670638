//! Uploads: v1 and the fork-shaped v0, limits, quotas and error codes.

use bytes::Bytes;
use futures::StreamExt as _;

use crate::common::{TestServer, metric, random_bytes, sha256_hex};

#[tokio::test]
async fn v1_upload_answers_201_with_id_token_digest_and_expiry() {
    let s = TestServer::start(|_| {}).await;
    let data = random_bytes(3 << 20);
    let res = s
        .client
        .post(s.url("/api/v1/resources?namespace=spark-jobs&labels=spark-role=driver,team=x&ttl=2h&unused_ttl=10m"))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/resources/{}", body["id"].as_str().unwrap())
    );
    assert_eq!(body["sha256"], sha256_hex(&data));
    assert_eq!(body["size"], data.len() as u64);
    assert_eq!(body["namespace"], "spark-jobs");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));

    let got = s
        .get_content(
            body["id"].as_str().unwrap(),
            body["token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), data);

    let meta: serde_json::Value = s
        .client
        .get(s.url(&location))
        .bearer_auth(body["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["labels"]["team"], "x");
    assert_eq!(meta["api"], "v1");
    assert!(meta["first_download_at"].is_string());
    s.shutdown().await;
}

#[tokio::test]
async fn v1_rejects_bad_requests_with_json_errors() {
    let s = TestServer::start(|_| {}).await;
    let post = |q: &str, ctype: Option<&str>| {
        let mut r = s
            .client
            .post(s.url(&format!("/api/v1/resources?{q}")))
            .body("x");
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        r.send()
    };
    let cases = [
        ("namespace=ok", Some("text/plain"), 415),
        ("namespace=ok", None, 415),
        ("namespace=../etc", Some("application/gzip"), 400),
        ("namespace=Upper", Some("application/gzip"), 400),
        (
            "namespace=ok&labels=bad%20key=v",
            Some("application/gzip"),
            400,
        ),
        ("namespace=ok&labels=novalue", Some("application/gzip"), 400),
        ("namespace=ok&ttl=1000d", Some("application/gzip"), 400),
        (
            "namespace=ok&owner_pod_uid=not-a-uid",
            Some("application/gzip"),
            400,
        ),
        ("namespace=ok&sha256=zz", Some("application/gzip"), 400),
        ("namespace=ok&surprise=1", Some("application/gzip"), 400),
        ("labels=a=b", Some("application/gzip"), 400),
    ];
    for (q, ctype, want) in cases {
        let res = post(q, ctype).await.unwrap();
        assert_eq!(res.status(), want, "{q} {ctype:?}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(
            body["code"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
    // Unknown routes and methods are JSON too.
    let res = s.client.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["code"],
        "not_found"
    );
    let res = s
        .client
        .put(s.url("/api/v1/resources"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["code"],
        "method_not_allowed"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn digest_mismatch_is_422_and_stores_nothing() {
    let s = TestServer::start(|_| {}).await;
    let wrong = "0".repeat(64);
    let res = s
        .client
        .post(s.url(&format!("/api/v1/resources?namespace=a&sha256={wrong}")))
        .header("content-type", "application/gzip")
        .body(random_bytes(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["code"],
        "digest_mismatch"
    );
    // A Content-Digest header is honoured the same way.
    let res = s
        .client
        .post(s.url("/api/v1/resources?namespace=a"))
        .header("content-type", "application/gzip")
        .header(
            "content-digest",
            "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:",
        )
        .body(random_bytes(10))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    s.state.refresh_census().await;
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "staging_resources{state=\"pending\"}"),
        Some(0.0)
    );
    assert_eq!(metric(&m, "staging_stored_bytes"), Some(0.0));
    assert!(s.state.store().list_ids().await.unwrap().is_empty());
    // The correct digest commits.
    let data = random_bytes(1000);
    let res = s
        .client
        .post(s.url(&format!(
            "/api/v1/resources?namespace=a&sha256={}",
            sha256_hex(&data)
        )))
        .header("content-type", "application/gzip")
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    s.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_early() {
    let s = TestServer::start(|c| c.limits.max_upload_size = 64 << 10).await;
    // Declared too large: refused before the body is read.
    let res = s
        .client
        .post(s.url("/api/v1/resources?namespace=a"))
        .header("content-type", "application/gzip")
        .body(random_bytes(1 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // Chunked with no length: refused once the count passes the limit, while the client is
    // still sending (the stream below would go on for 1 GiB).
    let chunks = futures::stream::iter(0..16384)
        .map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 65536])));
    let res = s
        .client
        .post(s.url("/api/v1/resources?namespace=a"))
        .header("content-type", "application/gzip")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    match res {
        Ok(r) => assert_eq!(r.status(), 413),
        // The server may close the connection before the client reads the answer.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    assert!(s.state.store().list_ids().await.unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn uploads_need_a_token_when_tokens_are_configured() {
    let s = TestServer::start(|c| c.upload_tokens = vec!["upload-token-0123456789".into()]).await;
    let post = |auth: Option<&'static str>| {
        let mut r = s
            .client
            .post(s.url("/api/v1/resources?namespace=a"))
            .header("content-type", "application/gzip")
            .body("x");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    for (auth, reason) in [
        (None, "missing"),
        (Some("Bearer wrong-token-0123456789"), "invalid"),
        (Some("upload-token-0123456789"), "malformed"),
    ] {
        let res = post(auth).await.unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let m = s.metrics().await;
        assert!(
            metric(
                &m,
                &format!("staging_auth_failures_total{{reason=\"{reason}\"}}")
            )
            .unwrap()
                >= 1.0
        );
    }
    assert_eq!(
        post(Some("Bearer upload-token-0123456789"))
            .await
            .unwrap()
            .status(),
        201
    );
    s.shutdown().await;
}

#[tokio::test]
async fn quotas_and_capacity_answer_507() {
    let s = TestServer::start(|c| {
        c.limits.namespace_quota_bytes = Some(100_000);
        c.limits.namespace_quota_count = Some(2);
        c.limits.capacity = Some(250_000);
    })
    .await;
    let up = |ns: &'static str, n: usize| {
        s.client
            .post(s.url(&format!("/api/v1/resources?namespace={ns}")))
            .header("content-type", "application/gzip")
            .body(random_bytes(n))
            .send()
    };
    assert_eq!(up("a", 80_000).await.unwrap().status(), 201);
    // Bytes quota of namespace a: 80k + 30k > 100k.
    let res = up("a", 30_000).await.unwrap();
    assert_eq!(res.status(), 507);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["code"],
        "insufficient_storage"
    );
    // Count quota of namespace b: two fit, the third does not.
    assert_eq!(up("b", 10).await.unwrap().status(), 201);
    assert_eq!(up("b", 10).await.unwrap().status(), 201);
    assert_eq!(up("b", 10).await.unwrap().status(), 507);
    // Global capacity: 80k + 20 used, 90k more in c fits, then 90k in d does not.
    assert_eq!(up("c", 90_000).await.unwrap().status(), 201);
    assert_eq!(up("d", 90_000).await.unwrap().status(), 507);
    // Nothing half-stored by the refusals.
    assert_eq!(s.state.store().list_ids().await.unwrap().len(), 4);
    s.shutdown().await;
}

#[tokio::test]
async fn upload_slots_are_bounded_503() {
    let s = TestServer::start(|c| c.limits.max_concurrent_uploads = 1).await;
    let (tx, body) = crate::common::fed_body(1);
    tx.send(Ok(Bytes::from_static(b"first chunk")))
        .await
        .unwrap();
    let client = s.client.clone();
    let url = s.url("/api/v1/resources?namespace=a");
    let slow = tokio::spawn(async move {
        client
            .post(url)
            .header("content-type", "application/gzip")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    });
    // Wait until the first upload holds the slot (observable through the in-flight gauge).
    loop {
        let m = s.metrics().await;
        if metric(&m, "staging_inflight_transfers{direction=\"upload\"}") == Some(1.0) {
            break;
        }
        tokio::task::yield_now().await;
    }
    let res = s
        .client
        .post(s.url("/api/v1/resources?namespace=a"))
        .header("content-type", "application/gzip")
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    drop(tx);
    assert_eq!(slow.await.unwrap(), 201);
    s.shutdown().await;
}

/// Starts an upload to `namespace` that sends one chunk and then holds its slot until the
/// returned sender is dropped.
fn held_upload(
    s: &TestServer,
    namespace: &str,
) -> (
    crate::common::Feed,
    tokio::task::JoinHandle<reqwest::StatusCode>,
) {
    let (tx, body) = crate::common::fed_body(1);
    tx.try_send(Ok(Bytes::from_static(b"first chunk"))).unwrap();
    let request = s
        .client
        .post(s.url(&format!("/api/v1/resources?namespace={namespace}")))
        .header("content-type", "application/gzip")
        .body(body);
    (
        tx,
        tokio::spawn(async move { request.send().await.unwrap().status() }),
    )
}

#[tokio::test]
async fn one_namespace_holds_only_its_share_of_the_upload_slots() {
    let s = TestServer::start(|c| {
        c.limits.max_concurrent_uploads = 8;
        c.limits.max_concurrent_uploads_per_namespace = 2;
    })
    .await;
    // A tenant opens as many uploads as the server has slots and sends nothing more: before,
    // it held every slot and every other tenant got 503 until its uploads timed out.
    let held: Vec<_> = (0..8).map(|_| held_upload(&s, "greedy")).collect();
    loop {
        let m = s.metrics().await;
        let refused = metric(&m, "staging_uploads_refused_for_share_total");
        let inflight = metric(&m, "staging_inflight_transfers{direction=\"upload\"}");
        if refused == Some(6.0) && inflight == Some(2.0) {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Another namespace uploads at once.
    let res = s
        .client
        .post(s.url("/api/v1/resources?namespace=other"))
        .header("content-type", "application/gzip")
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let mut statuses = Vec::new();
    for (tx, task) in held {
        drop(tx);
        statuses.push(task.await.unwrap().as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 201, 503, 503, 503, 503, 503, 503]);
    s.shutdown().await;
}

/// The multipart request exactly as the fork's Retrofit client shapes it: the bundle part
/// first, without a filename and with the part type `multipart/form-data`, then the owner
/// JSON, posted to the trailing-slash URL.
pub(crate) fn fork_multipart(
    bundle: &[u8],
    owner_json: &str,
    owner_first: bool,
) -> (String, Vec<u8>) {
    let boundary = "b2f1c8e6-6a3c-4b8e-9a53-1c5b0b8e7f10";
    let resources = [
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"resources\"\r\nContent-Transfer-Encoding: binary\r\nContent-Type: multipart/form-data\r\nContent-Length: {}\r\n\r\n", bundle.len()).into_bytes(),
        bundle.to_vec(),
        b"\r\n".to_vec(),
    ]
    .concat();
    let owner = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"resourcesOwner\"\r\nContent-Transfer-Encoding: binary\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{owner_json}\r\n",
        owner_json.len()
    )
    .into_bytes();
    let mut body = if owner_first {
        [owner, resources].concat()
    } else {
        [resources, owner].concat()
    };
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

const OWNER: &str = r#"{"ownerNamespace":"spark-jobs","ownerLabels":{"spark-app-selector":"spark-3f2c","spark-role":"driver"},"ownerType":"Pod"}"#;

#[tokio::test]
async fn v0_upload_shaped_like_the_fork_client_round_trips() {
    let s = TestServer::start(|_| {}).await;
    for (owner_first, path) in [(false, "/api/v0/resources/"), (true, "/api/v0/resources")] {
        let bundle = random_bytes(200_000);
        let (ctype, body) = fork_multipart(&bundle, OWNER, owner_first);
        let res = s
            .client
            .post(s.url(path))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let ids: serde_json::Value = res.json().await.unwrap();
        let id = ids["resourceId"].as_str().unwrap();
        let secret = ids["resourceSecret"].as_str().unwrap();
        // The fork's init-container sends the secret raw, without a scheme.
        let got = s
            .client
            .get(s.url(&format!("/api/v0/resources/{id}")))
            .header("authorization", secret)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.headers()["content-type"], "application/octet-stream");
        assert_eq!(got.bytes().await.unwrap(), bundle);
        // Bearer works on v0 too; the v1 route does not take a raw secret.
        let bearer = s
            .client
            .get(s.url(&format!("/api/v0/resources/{id}")))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap();
        assert_eq!(bearer.status(), 200);
        let raw_v1 = s
            .client
            .get(s.url(&format!("/api/v1/resources/{id}/content")))
            .header("authorization", secret)
            .send()
            .await
            .unwrap();
        assert_eq!(raw_v1.status(), 401);
    }
    assert_eq!(
        s.client
            .get(s.url("/api/v0/ping"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "pong"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn v0_rejects_malformed_owners_and_bodies() {
    let s = TestServer::start(|_| {}).await;
    let bundle = random_bytes(1000);
    let bad_owners = [
        "{not json",
        r#"{"ownerNamespace":"../../etc","ownerLabels":{},"ownerType":"Pod"}"#,
        r#"{"ownerNamespace":"ok","ownerLabels":{"bad key":"v"},"ownerType":"Pod"}"#,
        r#"{"ownerNamespace":"ok","ownerLabels":{},"ownerType":"Node"}"#,
        r#"{"ownerNamespace":"ok","ownerLabels":{},"ownerType":"Pod","extra":1}"#,
    ];
    for owner in bad_owners {
        let (ctype, body) = fork_multipart(&bundle, owner, false);
        let res = s
            .client
            .post(s.url("/api/v0/resources"))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{owner}");
    }
    // Missing owner part.
    let boundary = "xyz";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"resources\"\r\n\r\nabc\r\n--{boundary}--\r\n"
    );
    let res = s
        .client
        .post(s.url("/api/v0/resources"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Not multipart at all.
    let res = s
        .client
        .post(s.url("/api/v0/resources"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    // Nothing stored by any of it: refused uploads are removed before the answer.
    assert!(s.state.store().list_ids().await.unwrap().is_empty());
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "staging_resources{state=\"pending\"}"),
        Some(0.0)
    );
    s.shutdown().await;
}

/// The `v0_upload` fuzz corpus (`fuzz/corpus/v0_upload`, inputs AFL found included) through the
/// whole v0 route of a real server state: whatever a multipart body holds, the answer is never
/// a server error but 507 (a full quota), and the server never panics.
#[tokio::test]
async fn v0_upload_corpus() {
    use tower::ServiceExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut config = staging_server::Config::for_data_dir(dir.path());
    config.limits.max_upload_size = 64 << 10;
    config.limits.capacity = Some(8 << 20);
    config.disk_reserve = 0;
    let state = staging_server::AppState::open(&config, staging_server::Overrides::default())
        .await
        .unwrap();
    let router = staging_server::router(state);
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/v0_upload");
    let mut n = 0;
    for e in std::fs::read_dir(&corpus).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        let req = axum::http::Request::post("/api/v0/resources")
            .header("content-type", "multipart/form-data; boundary=B")
            .body(axum::body::Body::from(data))
            .unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        assert!(
            !res.status().is_server_error() || res.status().as_u16() == 507,
            "v0 upload answered {}",
            res.status()
        );
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", corpus.display());
}
