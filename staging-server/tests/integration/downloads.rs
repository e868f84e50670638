//! Downloads: validators, conditional requests, ranges, HEAD, and drain on shutdown.

use crate::common::{TestServer, metric, random_bytes, sha256_hex};

#[tokio::test]
async fn range_etag_head_and_304() {
    let s = TestServer::start(|_| {}).await;
    let data = random_bytes(100_000);
    let up = s.upload("a", data.clone()).await;
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
    let url = s.url(&format!("/api/v1/resources/{id}/content"));
    let get = |h: &[(&str, &str)]| {
        let mut r = s.client.get(&url).bearer_auth(token);
        for (k, v) in h {
            r = r.header(*k, *v);
        }
        r.send()
    };

    let full = get(&[]).await.unwrap();
    let etag = format!("\"{}\"", sha256_hex(&data));
    assert_eq!(full.headers()["etag"], etag.as_str());
    assert_eq!(full.headers()["content-length"], "100000");
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert_eq!(full.headers()["cache-control"], "no-store");
    assert_eq!(full.headers()["x-content-type-options"], "nosniff");
    assert!(
        full.headers()["repr-digest"]
            .to_str()
            .unwrap()
            .starts_with("sha-256=:")
    );

    let part = get(&[("range", "bytes=10-19")]).await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(part.bytes().await.unwrap(), data[10..20]);

    let tail = get(&[("range", "bytes=-5")]).await.unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap(), data[99_995..]);

    let open = get(&[("range", "bytes=99990-")]).await.unwrap();
    assert_eq!(open.bytes().await.unwrap(), data[99_990..]);

    let bad = get(&[("range", "bytes=100000-")]).await.unwrap();
    assert_eq!(bad.status(), 416);
    assert_eq!(bad.headers()["content-range"], "bytes */100000");

    // If-Range with a stale validator: the whole body.
    let stale = get(&[("range", "bytes=0-0"), ("if-range", "\"other\"")])
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);

    let cached = get(&[("if-none-match", etag.as_str())]).await.unwrap();
    assert_eq!(cached.status(), 304);
    assert!(cached.bytes().await.unwrap().is_empty());
    let changed = get(&[("if-none-match", "\"nope\"")]).await.unwrap();
    assert_eq!(changed.status(), 200);

    let head = s.client.head(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "100000");
    assert_eq!(head.headers()["etag"], etag.as_str());
    assert!(head.bytes().await.unwrap().is_empty());
    let head_range = s
        .client
        .head(&url)
        .bearer_auth(token)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(head_range.status(), 206);
    assert_eq!(head_range.headers()["content-length"], "10");
    s.shutdown().await;
}

#[tokio::test]
async fn empty_bundles_are_served() {
    let s = TestServer::start(|_| {}).await;
    let up = s.upload("a", Vec::new()).await;
    let res = s
        .get_content(up["id"].as_str().unwrap(), up["token"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], "0");
    assert!(res.bytes().await.unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn first_download_moves_a_resource_to_active_and_counts_bytes() {
    let s = TestServer::start(|_| {}).await;
    let up = s.upload("a", random_bytes(5000)).await;
    let m = s.metrics().await;
    assert_eq!(metric(&m, "staging_resources{state=\"unused\"}"), Some(1.0));
    let res = s
        .get_content(up["id"].as_str().unwrap(), up["token"].as_str().unwrap())
        .await;
    assert_eq!(res.bytes().await.unwrap().len(), 5000);
    let m = s.metrics().await;
    assert_eq!(metric(&m, "staging_resources{state=\"active\"}"), Some(1.0));
    assert_eq!(metric(&m, "staging_resources{state=\"unused\"}"), Some(0.0));
    assert_eq!(metric(&m, "staging_download_bytes_total"), Some(5000.0));
    assert_eq!(metric(&m, "staging_upload_bytes_total"), Some(5000.0));
    assert_eq!(metric(&m, "staging_stored_bytes"), Some(5000.0));
    assert!(metric(&m, "staging_http_requests_total{method=\"GET\",route=\"/api/v1/resources/{id}/content\",status=\"200\"}").is_some());
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let s = TestServer::start(|_| {}).await;
    s.upload("a", random_bytes(10)).await;
    let res = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = res.text().await.unwrap();
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(name.starts_with("staging_"), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        samples += 1;
    }
    assert!(samples > 20);
    for name in [
        "staging_http_requests_total",
        "staging_http_request_duration_seconds_bucket",
        "staging_upload_bytes_total",
        "staging_download_bytes_total",
        "staging_auth_failures_total",
        "staging_cleanup_deletions_total",
        "staging_cleanup_errors_total",
    ] {
        assert!(text.contains(&format!("\n{name}")), "missing {name}");
    }
    // The stored-data gauges are on the admin listener only.
    let admin = s.metrics().await;
    for name in ["staging_resources", "staging_stored_bytes"] {
        assert!(!text.contains(&format!("\n{name}")), "{name} is public");
        assert!(admin.contains(&format!("\n{name}")), "missing {name}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let mut s = TestServer::start(|_| {}).await;
    assert_eq!(
        s.client
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.client
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.state.start_draining();
    assert_eq!(
        s.client
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        s.client
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.trigger_shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_download_finish() {
    let mut s = TestServer::start(|_| {}).await;
    let data = random_bytes(32 << 20);
    let up = s.upload("a", data.clone()).await;
    let mut res = s
        .get_content(up["id"].as_str().unwrap(), up["token"].as_str().unwrap())
        .await;
    let first = res.chunk().await.unwrap().unwrap();
    let handle = s.trigger_shutdown();
    let mut got = first.to_vec();
    while let Some(c) = res.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    handle.await.unwrap();
    // The listener is closed after the drain.
    assert!(reqwest::get(s.url("/healthz")).await.is_err());
}

#[tokio::test]
async fn presigned_downloads_need_a_store_that_signs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = staging_server::Config::for_data_dir(dir.path());
    config.presigned_url_ttl = Some(std::time::Duration::from_secs(60));
    let e = staging_server::AppState::open(&config, staging_server::Overrides::default())
        .await
        .expect_err("the local store signs no URLs");
    assert!(
        e.is_usage() && e.to_string().contains("--presigned-downloads"),
        "{e}"
    );
    // Off, every download goes through the server: no redirect, whatever the store.
    let s = TestServer::start(|_| {}).await;
    let up = s.upload("a", random_bytes(1000)).await;
    let r = s
        .get_content(up["id"].as_str().unwrap(), up["token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        metric(&s.metrics().await, "staging_download_redirects_total"),
        Some(0.0)
    );
    s.shutdown().await;
}
