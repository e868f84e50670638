//! Uploads authenticated with Kubernetes credentials, against the test bed's API server
//! (TokenReview and SubjectAccessReview answered from its identity table): rights follow the
//! whole reviewed identity, unknown tokens cannot drive the API server (nor lock out the
//! valid tokens of others behind the same address), and audience-bound tokens are required
//! when configured.

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
    put_from(&s.client, s, ns, token).await
}

async fn put_from(
    client: &reqwest::Client,
    s: &TestServer,
    ns: &str,
    token: Option<&str>,
) -> (u16, String) {
    // Distinct content each time: a blob the namespace has already is answered 200, not 201.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let bytes = random_bytes(3000 + N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let mut req = client
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

fn user(name: &str, groups: &[&str]) -> User {
    User {
        name: name.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

#[tokio::test]
async fn rights_follow_the_whole_identity_not_the_user_name() {
    let api = ApiConfig::default();
    let ids = api.identities.clone();
    // One user name, two tokens: only one carries the group that may create pods.
    ids.add_token(
        "dave-deployer",
        user("dave", &["system:authenticated", "deployers"]),
    );
    ids.add_token("dave-plain", user("dave", &["system:authenticated"]));
    ids.allow_group("deployers", "create", "pods", "team-a");
    // One user name, two tokens: one scoped down (narrower extra) to what cannot run pods.
    ids.add_token("erin-full", user("erin", &["system:authenticated"]));
    ids.set_extra("erin-full", "scopes.example.com", &["user:full"]);
    ids.add_token("erin-narrow", user("erin", &["system:authenticated"]));
    ids.set_extra("erin-narrow", "scopes.example.com", &["user:info"]);
    ids.allow_extra(
        "scopes.example.com",
        "user:full",
        "create",
        "pods",
        "team-a",
    );
    let client = bed_api(api).await;
    let s = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        |c| c.kube_auth = true,
        None,
        Some(client),
    )
    .await;

    // The allowed identity first, so that its decision is in the cache.
    assert_eq!(put(&s, "team-a", Some("dave-deployer")).await.0, 201);
    let (code, body) = put(&s, "team-a", Some("dave-plain")).await;
    assert_eq!(
        code, 403,
        "same user name without the granting group: {body}"
    );
    assert_eq!(put(&s, "team-a", Some("erin-full")).await.0, 201);
    let (code, body) = put(&s, "team-a", Some("erin-narrow")).await;
    assert_eq!(code, 403, "same user name with narrower extra: {body}");
    // And the other way round: a refusal of the narrower token does not stick to the wider.
    assert_eq!(put(&s, "team-a", Some("dave-deployer")).await.0, 201);
    assert_eq!(put(&s, "team-a", Some("erin-full")).await.0, 201);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_cannot_drive_the_api_server() {
    let api = ApiConfig::default();
    let ids = api.identities.clone();
    ids.add_token("gina-token", user("gina", &["system:authenticated"]));
    ids.allow("gina", "create", "pods", "team-a");
    let client = bed_api(api).await;
    let s = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        |c| {
            c.kube_auth = true;
            c.kube_auth_settings.review_burst = 5;
            c.kube_auth_settings.reviews_per_minute = 1;
        },
        None,
        Some(client),
    )
    .await;
    let started = std::time::Instant::now();

    // One bad token, again and again: reviewed once, then refused from the cache.
    for _ in 0..30 {
        let (code, body) = put(&s, "team-a", Some("guessed-token-1")).await;
        assert_eq!(code, 401, "{body}");
    }
    assert_eq!(ids.token_reviews(), 1);

    // Ever new bad tokens from one client: the client's budget bounds the reviews.
    let mut throttled = 0;
    for i in 0..40 {
        let res = s
            .client
            .put(s.url(&format!(
                "/api/v1/blobs/{}?namespace=team-a",
                "a".repeat(64)
            )))
            .bearer_auth(format!("guessed-token-{}", i + 2))
            .body("x")
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            401 => {}
            429 => {
                throttled += 1;
                let after: u64 = res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&after), "{after}");
                let body = res.text().await.unwrap();
                assert!(body.contains("too many"), "{body}");
            }
            other => panic!("{other}: {}", res.text().await.unwrap()),
        }
    }
    // The burst, and one more for each minute the test took.
    let minutes = started.elapsed().as_secs() / 60;
    let reviews = ids.token_reviews();
    assert!(reviews <= 5 + minutes + 1, "{reviews} reviews");
    assert!(
        throttled >= 40 - 5 - minutes as usize,
        "{throttled} throttled"
    );

    // Another client has a budget of its own.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    assert_eq!(
        put_from(&other, &s, "team-a", Some("gina-token")).await.0,
        201
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "staging_kube_auth_total{outcome=\"throttled\"}"),
        Some(throttled as f64),
        "{m}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn audience_bound_tokens_are_required_when_configured() {
    let api = ApiConfig::default();
    let ids = api.identities.clone();
    // The same user's token for the API server, one bound to this server, one to another
    // service.
    for token in ["hank-api", "hank-staging", "hank-vault"] {
        ids.add_token(token, user("hank", &["system:authenticated"]));
    }
    ids.bind_audiences("hank-staging", &["staging-server"]);
    ids.bind_audiences("hank-vault", &["vault"]);
    ids.allow("hank", "create", "pods", "team-a");
    let client = bed_api(api).await;
    let s = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        |c| {
            c.kube_auth = true;
            c.kube_auth_settings.audiences = vec!["staging-server".into()];
        },
        None,
        Some(client),
    )
    .await;
    assert_eq!(put(&s, "team-a", Some("hank-staging")).await.0, 201);
    for token in ["hank-api", "hank-vault"] {
        let (code, body) = put(&s, "team-a", Some(token)).await;
        assert_eq!(code, 401, "{token}: {body}");
        assert!(body.contains("audience staging-server"), "{body}");
    }
    s.shutdown().await;
}

/// A server with `--kube-auth` against `client`, its configuration changed by `tweak`.
async fn kube_server(
    client: kube::Client,
    tweak: impl FnOnce(&mut staging_server::Config),
) -> TestServer {
    TestServer::start_with(
        tempfile::tempdir().unwrap(),
        |c| {
            c.kube_auth = true;
            tweak(c);
        },
        None,
        Some(client),
    )
    .await
}

/// A client whose connections come from `ip` (a loopback address of 127/8).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn junk_tokens_from_one_address_spend_only_what_needs_a_review() {
    let api = ApiConfig::default();
    let ids = api.identities.clone();
    for name in ["nina", "olga", "pia"] {
        ids.add_token(
            &format!("{name}-token"),
            user(name, &["system:authenticated"]),
        );
        ids.allow(name, "create", "pods", "team-a");
    }
    let client = bed_api(api).await;
    let s = kube_server(client, |c| {
        c.kube_auth_settings.review_burst = 3;
        c.kube_auth_settings.reviews_per_minute = 1;
        c.kube_auth_settings.global_review_burst = 12;
        c.kube_auth_settings.global_reviews_per_minute = 1;
    })
    .await;
    let started = std::time::Instant::now();
    // Two users behind one address (a proxy, SNAT): the neighbour stages first (a token
    // review and an access review of the server's 12).
    let neighbour = client_from("127.0.0.1");
    let attacker = client_from("127.0.0.1");
    assert_eq!(
        put_from(&neighbour, &s, "team-a", Some("nina-token"))
            .await
            .0,
        201
    );
    // Valid tokens cost the address nothing: more of them than its failure budget pass.
    for name in ["olga", "pia", "olga", "pia"] {
        let token = format!("{name}-token");
        assert_eq!(
            put_from(&neighbour, &s, "team-a", Some(&token)).await.0,
            201
        );
    }
    // The attacker sends junk tokens from the same address: three reviews, then 429.
    let mut codes = Vec::new();
    for i in 0..10 {
        let (code, body) = put_from(&attacker, &s, "team-a", Some(&format!("junk-{i}"))).await;
        if code == 429 {
            assert!(body.contains("from this client address"), "{body}");
        }
        codes.push(code);
    }
    let minutes = started.elapsed().as_secs() / 60;
    let unauthenticated = codes.iter().filter(|c| **c == 401).count();
    assert!(
        (3..=3 + minutes as usize).contains(&unauthenticated),
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == 429).count(),
        10 - unauthenticated
    );
    // The neighbour's tokens are in the cache: they keep working from that address.
    for token in ["nina-token", "olga-token"] {
        assert_eq!(put_from(&neighbour, &s, "team-a", Some(token)).await.0, 201);
    }
    // A valid token from another address is reviewed on that address's budget.
    ids.add_token("quinn-token", user("quinn", &["system:authenticated"]));
    ids.allow("quinn", "create", "pods", "team-a");
    assert_eq!(
        put_from(&client_from("127.0.0.2"), &s, "team-a", Some("quinn-token"))
            .await
            .0,
        201
    );

    // The server's budget holds whatever the number of addresses: junk from many addresses
    // is reviewed until it is spent (12 reviews in all), then refused without a review.
    let reviews_before = ids.token_reviews();
    let mut server_throttled = 0;
    for host in 3..40 {
        let c = client_from(&format!("127.0.0.{host}"));
        let (code, body) = put_from(&c, &s, "team-a", Some(&format!("junk-from-{host}"))).await;
        match code {
            401 => {}
            429 => {
                assert!(body.contains("on this server"), "{body}");
                server_throttled += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    let minutes = started.elapsed().as_secs() / 60;
    let reviews = ids.token_reviews();
    // 3 users (a token and an access review each), the first junk token (the next two came
    // from an address that had just failed: the failing addresses' budget), quinn's two.
    let spent_before = 2 * 3 + 1 + 2;
    assert!(
        reviews - reviews_before <= 12 - spent_before + minutes,
        "{} reviews after the server's budget: {reviews_before} before",
        reviews - reviews_before
    );
    assert!(server_throttled >= 37 - (12 - spent_before + minutes) as usize);
    // Identities in the cache still work when the server's budget is spent.
    assert_eq!(
        put_from(&neighbour, &s, "team-a", Some("nina-token"))
            .await
            .0,
        201
    );
    s.shutdown().await;
}

#[tokio::test]
async fn refused_access_reviews_cost_the_identity_not_its_address() {
    let api = ApiConfig::default();
    let ids = api.identities.clone();
    ids.add_token("rita-token", user("rita", &["system:authenticated"]));
    ids.allow("rita", "create", "pods", "team-a");
    ids.add_token("sam-token", user("sam", &["system:authenticated"]));
    ids.allow("sam", "create", "pods", "team-a");
    let client = bed_api(api).await;
    let s = kube_server(client, |c| {
        c.kube_auth_settings.review_burst = 3;
        c.kube_auth_settings.reviews_per_minute = 1;
    })
    .await;
    // A valid identity asking for ever new namespaces where it has no rights.
    let mut codes = Vec::new();
    for i in 0..8 {
        let (code, body) = put(&s, &format!("made-up-{i}"), Some("rita-token")).await;
        if code == 429 {
            assert!(body.contains("for this identity"), "{body}");
        }
        codes.push(code);
    }
    // Its budget of three: the review of its token, then two refusals.
    assert_eq!(codes.iter().filter(|c| **c == 403).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 6, "{codes:?}");
    // Until its budget refills, a namespace not yet decided for it is not asked either, even
    // one where it may create pods; another identity from the same address is unaffected.
    assert_eq!(put(&s, "team-a", Some("rita-token")).await.0, 429);
    assert_eq!(put(&s, "team-a", Some("sam-token")).await.0, 201);
    s.shutdown().await;
}

#[tokio::test]
async fn tokens_minted_in_bulk_cost_their_address_once_their_identity_spent_its_budget() {
    let api = ApiConfig::default();
    let ids = api.identities.clone();
    // One identity with many valid tokens (as anyone allowed to create its service account's
    // tokens can mint), and a neighbour behind the same address.
    for i in 0..12 {
        ids.add_token(
            &format!("mint-{i}"),
            user("minter", &["system:authenticated"]),
        );
    }
    ids.allow("minter", "create", "pods", "team-a");
    ids.add_token("tara-token", user("tara", &["system:authenticated"]));
    ids.allow("tara", "create", "pods", "team-a");
    let client = bed_api(api).await;
    let s = kube_server(client, |c| {
        c.kube_auth_settings.review_burst = 3;
        c.kube_auth_settings.reviews_per_minute = 1;
    })
    .await;
    let neighbour = client_from("127.0.0.1");
    assert_eq!(
        put_from(&neighbour, &s, "team-a", Some("tara-token"))
            .await
            .0,
        201
    );
    // The identity's budget covers three new tokens (its first access review was allowed and
    // cost nothing); the next three are let in but cost the address, then the address is
    // spent for tokens not in the cache.
    let minter = client_from("127.0.0.1");
    let mut codes = Vec::new();
    for i in 0..12 {
        codes.push(
            put_from(&minter, &s, "team-a", Some(&format!("mint-{i}")))
                .await
                .0,
        );
    }
    assert_eq!(&codes[..6], &[201; 6], "{codes:?}");
    assert!(codes[6..].iter().all(|c| *c == 429), "{codes:?}");
    assert!(ids.token_reviews() <= 1 + 6 + 2, "{}", ids.token_reviews());
    // The neighbour's cached token still works.
    assert_eq!(
        put_from(&neighbour, &s, "team-a", Some("tara-token"))
            .await
            .0,
        201
    );
    s.shutdown().await;
}

#[tokio::test]
async fn addresses_sending_junk_spend_a_server_budget_of_their_own() {
    let api = ApiConfig::default();
    let ids = api.identities.clone();
    ids.add_token("rosa-token", user("rosa", &["system:authenticated"]));
    ids.allow("rosa", "create", "pods", "team-a");
    let client = bed_api(api).await;
    let s = kube_server(client, |c| {
        // Each address could fail 100 times: only the server's budget (6) stops them.
        c.kube_auth_settings.review_burst = 100;
        c.kube_auth_settings.reviews_per_minute = 100;
        c.kube_auth_settings.global_review_burst = 6;
        c.kube_auth_settings.global_reviews_per_minute = 1;
    })
    .await;
    // Three addresses send junk until the server refuses them without a review: their first
    // junk token each is reviewed on everyone's budget (3 of 6), the rest on the budget of
    // failing addresses (6), then 429.
    let mut reviewed = 0;
    let mut throttled = 0;
    for round in 0..6 {
        for host in 2..5 {
            let c = client_from(&format!("127.0.0.{host}"));
            let (code, body) =
                put_from(&c, &s, "team-a", Some(&format!("junk-{host}-{round}"))).await;
            match code {
                401 => reviewed += 1,
                429 => {
                    assert!(body.contains("on this server"), "{body}");
                    throttled += 1;
                }
                other => panic!("{other}: {body}"),
            }
        }
    }
    assert!((9..=10).contains(&reviewed), "reviewed {reviewed}");
    assert_eq!(reviewed + throttled, 18);
    // A submitter at another address is still reviewed (token and access: 2 of the 3 left).
    assert_eq!(
        put_from(&client_from("127.0.0.9"), &s, "team-a", Some("rosa-token"))
            .await
            .0,
        201
    );
}

#[tokio::test]
async fn valid_tokens_beyond_their_identitys_budget_do_not_spend_everyones_reviews() {
    let api = ApiConfig::default();
    let ids = api.identities.clone();
    // One pod presents many valid tokens of its service account (projected volumes, each
    // another token); a submitter elsewhere needs reviews too.
    for i in 0..12 {
        ids.add_token(
            &format!("mint-{i}"),
            user("minter", &["system:authenticated"]),
        );
    }
    ids.allow("minter", "create", "pods", "team-a");
    ids.add_token("rosa-token", user("rosa", &["system:authenticated"]));
    ids.allow("rosa", "create", "pods", "team-a");
    let client = bed_api(api).await;
    let s = kube_server(client, |c| {
        // An address or an identity may cause three failed reviews; the server twelve
        // reviews in all.
        c.kube_auth_settings.review_burst = 3;
        c.kube_auth_settings.reviews_per_minute = 1;
        c.kube_auth_settings.global_review_burst = 12;
        c.kube_auth_settings.global_reviews_per_minute = 1;
    })
    .await;
    // Four of the tenant's pods (four addresses), three tokens each.
    for (pod, host) in (2..6).enumerate() {
        let c = client_from(&format!("127.0.0.{host}"));
        for t in 0..3 {
            let token = format!("mint-{}", pod * 3 + t);
            let _ = put_from(&c, &s, "team-a", Some(&token)).await;
        }
    }
    // Before, each of the minter's tokens was reviewed on everyone's budget until it was
    // spent and the submitter got 429; beyond its identity's budget the minter's address now
    // draws on the budget of failing addresses.
    assert_eq!(
        put_from(&client_from("127.0.0.9"), &s, "team-a", Some("rosa-token"))
            .await
            .0,
        201
    );
    s.shutdown().await;
}
