//! Download tokens: every way a token can be wrong, and no 404 oracle.

use base64::Engine as _;

use crate::common::{TestServer, metric, random_bytes};

#[tokio::test]
async fn bad_tokens_are_401_with_bearer_challenge() {
    let s = TestServer::start(|_| {}).await;
    let up = s.upload("a", random_bytes(100)).await;
    let id = up["id"].as_str().unwrap();
    let token = up["token"].as_str().unwrap();
    let url = s.url(&format!("/api/v1/resources/{id}/content"));

    let other_key = staging_server::token::TokenKeys::from_secret(&[9u8; 32]);
    let now = s.state.now_ms();
    let (foreign, _) = other_key.issue(id.parse().unwrap(), now, now + 60_000);
    // Expired: minted by the server's own key with an expiry in the past.
    let (expired, _) = s
        .state
        .keys()
        .issue(id.parse().unwrap(), now - 120_000, now - 60_000);
    // alg=none with the real claims.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = token.split('.').nth(1).unwrap();
    let none = format!("{}.{claims}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#));
    // A valid signature over a token this server never recorded (unknown jti) is refused.
    let (unrecorded, _) = s.state.keys().issue(id.parse().unwrap(), now, now + 60_000);

    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing"),
        (Some("Basic dXNlcjpwYXNz".into()), "malformed"),
        (Some("Bearer".into()), "malformed"),
        (Some("Bearer not.a.jwt".into()), "malformed"),
        (Some(format!("Bearer {foreign}")), "invalid"),
        (Some(format!("Bearer {expired}")), "expired"),
        (Some(format!("Bearer {none}")), "invalid"),
        (Some(format!("Bearer {unrecorded}")), "invalid"),
    ];
    for (auth, reason) in cases {
        let mut r = s.client.get(&url);
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        let res = r.send().await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
        // No error message repeats the credential.
        if let Some(a) = &auth {
            let secret = a.trim_start_matches("Bearer ").trim_start_matches("Basic ");
            if secret.len() > 8 {
                assert!(!body["message"].as_str().unwrap().contains(secret));
            }
        }
        let m = s.metrics().await;
        assert!(
            metric(
                &m,
                &format!("staging_auth_failures_total{{reason=\"{reason}\"}}")
            )
            .unwrap()
                >= 1.0,
            "{reason}"
        );
    }
    // The good token still works.
    assert_eq!(s.get_content(id, token).await.status(), 200);
    s.shutdown().await;
}

#[tokio::test]
async fn authorization_comes_before_existence() {
    let s = TestServer::start(|_| {}).await;
    let a = s.upload("a", random_bytes(10)).await;
    let b = s.upload("a", random_bytes(10)).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    // Without a token, an unknown id and a known one answer the same.
    for id in [
        unknown.as_str(),
        a["id"].as_str().unwrap(),
        "not-even-a-uuid",
    ] {
        let res = s
            .client
            .get(s.url(&format!("/api/v1/resources/{id}/content")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{id}");
        let res = s
            .client
            .get(s.url(&format!("/api/v0/resources/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{id}");
    }
    // A valid token of resource A on B or on an unknown id: 403 both, never 404.
    let ta = a["token"].as_str().unwrap();
    for id in [b["id"].as_str().unwrap(), unknown.as_str()] {
        let res = s.get_content(id, ta).await;
        assert_eq!(res.status(), 403, "{id}");
    }
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "staging_auth_failures_total{reason=\"wrong_resource\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "staging_auth_failures_total{reason=\"expired\"}"),
        Some(0.0)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn delete_revokes_every_token_and_removes_bytes() {
    let s = TestServer::start(|_| {}).await;
    let up = s.upload("a", random_bytes(1000)).await;
    let id = up["id"].as_str().unwrap();
    let token = up["token"].as_str().unwrap();
    let del = s
        .client
        .delete(s.url(&format!("/api/v1/resources/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let res = s.get_content(id, token).await;
    assert_eq!(res.status(), 401);
    assert!(res.text().await.unwrap().contains("revoked"));
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "staging_auth_failures_total{reason=\"revoked\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "staging_cleanup_deletions_total{reason=\"deleted\"}"),
        Some(1.0)
    );
    assert!(s.state.store().list_ids().await.unwrap().is_empty());
    // Deleting again with the revoked token is refused like any bad token.
    let again = s
        .client
        .delete(s.url(&format!("/api/v1/resources/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401);
    s.shutdown().await;
}

#[tokio::test]
async fn uploaders_can_delete_with_their_upload_token() {
    let s = TestServer::start(|c| c.upload_tokens = vec!["upload-token-0123456789".into()]).await;
    let res = s
        .client
        .post(s.url("/api/v1/resources?namespace=a"))
        .bearer_auth("upload-token-0123456789")
        .header("content-type", "application/gzip")
        .body("abc")
        .send()
        .await
        .unwrap();
    let id = res.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = s.url(&format!("/api/v1/resources/{id}"));
    let res = s
        .client
        .delete(&url)
        .bearer_auth("upload-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = s
        .client
        .delete(&url)
        .bearer_auth("upload-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    s.shutdown().await;
}

#[tokio::test]
async fn tokens_survive_a_restart() {
    let s = TestServer::start(|_| {}).await;
    let up = s.upload("a", random_bytes(1000)).await;
    let dir = s.shutdown().await;
    let s = TestServer::start_in(dir, |_| {}, None).await;
    let res = s
        .get_content(up["id"].as_str().unwrap(), up["token"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), 200);
    s.shutdown().await;
}

#[tokio::test]
async fn a_rotated_key_verifies_its_tokens_until_it_is_removed() {
    const OLD: &[u8] = b"old-signing-key-0123456789abcdef0123456789";
    const NEW: &[u8] = b"new-signing-key-0123456789abcdef0123456789";
    let s = TestServer::start(|c| c.signing_key = Some(OLD.to_vec())).await;
    let old = s.upload("a", random_bytes(1000)).await;
    let dir = s.shutdown().await;

    // Rotated: the new key signs, the old one only verifies.
    let s = TestServer::start_in(
        dir,
        |c| {
            c.signing_key = Some(NEW.to_vec());
            c.verify_keys = vec![OLD.to_vec()];
        },
        None,
    )
    .await;
    let new = s.upload("a", random_bytes(1000)).await;
    for up in [&old, &new] {
        let res = s
            .get_content(up["id"].as_str().unwrap(), up["token"].as_str().unwrap())
            .await;
        assert_eq!(res.status(), 200);
    }
    let kid = |up: &serde_json::Value| {
        let header = up["token"].as_str().unwrap().split('.').next().unwrap();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"].clone()
    };
    assert_eq!(kid(&new), staging_server::token::key_id(NEW).as_str());
    assert_eq!(kid(&old), staging_server::token::key_id(OLD).as_str());
    let dir = s.shutdown().await;

    // The old key removed: its tokens are refused as invalid, the new ones still work.
    let s = TestServer::start_in(dir, |c| c.signing_key = Some(NEW.to_vec()), None).await;
    let res = s
        .get_content(old["id"].as_str().unwrap(), old["token"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        metric(
            &s.metrics().await,
            "staging_auth_failures_total{reason=\"invalid\"}"
        ),
        Some(1.0)
    );
    let res = s
        .get_content(new["id"].as_str().unwrap(), new["token"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), 200);
    s.shutdown().await;
}
