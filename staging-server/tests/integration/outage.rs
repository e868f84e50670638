//! The object store fails under the server: a real S3-protocol server (moto) behind a proxy
//! the test switches between forwarding, refusing connections (a store that is down) and
//! accepting without answering (a hung store). Requests fail fast with 503 and Retry-After,
//! /readyz keeps the store's details private, a DELETE during the outage is completed by the
//! sweep, and a resource whose bytes vanished answers 410 (and `fetch` stops at once).

use std::time::{Duration, Instant};

use staging_server::config::StoreLocation;
use staging_server::lifecycle::Sweeper;
use staging_server::store::BlobStore;

use crate::common::*;
use crate::external::{s3_options, start_moto};
use crate::store_proxy::{FORWARD, HANG, Proxy, REFUSE};

fn has_object(listing: &str, id: &str) -> bool {
    listing.contains(&format!("spark/resources/{id}"))
}

async fn bucket(endpoint: &str) -> String {
    reqwest::get(format!(
        "{endpoint}/staging-bucket?list-type=2&prefix=spark/resources/"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap()
}

#[tokio::test]
#[ignore = "needs moto (S3 protocol); run through scripts/test.sh"]
async fn s3_outages_fail_fast_and_deletions_are_completed_later() {
    let (_moto, endpoint) = start_moto().await;
    let proxy = Proxy::start(endpoint.trim_start_matches("http://").to_owned()).await;
    let mut options = s3_options(&proxy.endpoint);
    options.insert("connect_timeout".into(), "1s".into());
    let timeout = Duration::from_secs(2);
    let store = BlobStore::open(&StoreLocation::Url {
        url: "s3://staging-bucket/spark".into(),
        options,
    })
    .unwrap()
    .with_timeout(timeout);
    let s = TestServer::start_in(tempfile::tempdir().unwrap(), |_| {}, Some(store)).await;
    let a = s.upload("ns", random_bytes(300_000)).await;
    let b = s.upload("ns", random_bytes(1000)).await;
    let (a_id, a_tok) = (a["id"].as_str().unwrap(), a["token"].as_str().unwrap());
    let (b_id, b_tok) = (b["id"].as_str().unwrap(), b["token"].as_str().unwrap());

    for mode in [REFUSE, HANG] {
        proxy.set(mode);
        let start = Instant::now();
        let r = s.get_content(a_id, a_tok).await;
        assert_eq!(r.status(), 503, "mode {mode}");
        assert_eq!(r.headers()["retry-after"], "5");
        let up = s
            .client
            .post(s.url("/api/v1/resources?namespace=ns"))
            .header("content-type", "application/gzip")
            .body(random_bytes(1000))
            .send()
            .await
            .unwrap();
        assert_eq!(up.status(), 503, "mode {mode}");
        assert!(
            start.elapsed() < timeout * 4,
            "mode {mode}: {:?}",
            start.elapsed()
        );
        // Readiness fails fast and names neither the store's address nor its error.
        let start = Instant::now();
        let ready = s.client.get(s.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let text = ready.text().await.unwrap();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("http"),
            "{text}"
        );
        assert!(start.elapsed() < Duration::from_secs(4));
    }
    let m = s.metrics().await;
    // The store client retries resets until the store timeout cuts it: both outages count
    // as timeouts unless the client gave up first.
    let counted = metric(&m, "staging_store_errors_total{kind=\"unavailable\"}").unwrap()
        + metric(&m, "staging_store_errors_total{kind=\"timeout\"}").unwrap();
    assert!(counted >= 4.0, "{counted}");

    // DELETE during the outage: the resource is gone for clients at once, its bytes stay
    // queued.
    let del = s
        .client
        .delete(s.url(&format!("/api/v1/resources/{b_id}")))
        .bearer_auth(b_tok)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    assert!(has_object(&bucket(&endpoint).await, b_id));
    let sweeper = Sweeper::new(s.state.clone());
    sweeper.sweep_once().await.unwrap();
    assert!(has_object(&bucket(&endpoint).await, b_id));
    // B's bytes, and those of the uploads refused during the outage.
    assert!(metric(&s.metrics().await, "staging_pending_store_deletions").unwrap() >= 1.0);

    // The store is back: the sweep completes the deletion, the server recovers by itself.
    proxy.set(FORWARD);
    sweeper.sweep_once().await.unwrap();
    assert!(!has_object(&bucket(&endpoint).await, b_id));
    assert_eq!(
        metric(&s.metrics().await, "staging_pending_store_deletions"),
        Some(0.0)
    );
    assert_eq!(s.get_content(a_id, a_tok).await.status(), 200);
    assert_eq!(
        s.client
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A's bytes vanish from the bucket behind the server's back: 410, counted, and `fetch`
    // gives up at once with its not-found code.
    let gone = reqwest::Client::new()
        .delete(format!("{endpoint}/staging-bucket/spark/resources/{a_id}"))
        .send()
        .await
        .unwrap();
    assert!(gone.status().is_success());
    let r = s.get_content(a_id, a_tok).await;
    assert_eq!(r.status(), 410);
    assert_eq!(
        metric(
            &s.metrics().await,
            "staging_store_errors_total{kind=\"lost\"}"
        ),
        Some(1.0)
    );
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("token"), a_tok).unwrap();
    let start = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_staging-server"))
        .args([
            "fetch",
            "--server",
            &s.url(""),
            "--id",
            a_id,
            "--token-file",
        ])
        .arg(work.path().join("token"))
        .arg("--dest")
        .arg(work.path())
        .output()
        .await
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(staging_client::EXIT_NOT_FOUND.into()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.shutdown().await;
}

#[tokio::test]
#[ignore = "needs moto (S3 protocol); run through scripts/test.sh"]
async fn s3_a_store_failing_redirected_downloads_sends_fetch_back_to_the_server() {
    use crate::external::{fetch_args, presigning_server, upload_bundle};
    use crate::store_proxy::{CUT_PRESIGNED, REFUSE_PRESIGNED};

    let (_moto, endpoint) = start_moto().await;
    let proxy = Proxy::start(endpoint.trim_start_matches("http://").to_owned()).await;
    let s = presigning_server(&proxy).await;
    let work = tempfile::tempdir().unwrap();
    let jar = random_bytes(1 << 20);
    let up = upload_bundle(&s, work.path(), &jar).await;
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
    let size = up["size"].as_f64().unwrap();

    // The store refuses the pods (403), or breaks the connection in the middle of the body:
    // fetch asks the server for the bytes, once, without retries, and succeeds.
    for (n, mode) in [REFUSE_PRESIGNED, CUT_PRESIGNED].into_iter().enumerate() {
        proxy.set(mode);
        let dest = work.path().join(format!("dest-{mode}"));
        let names = staging_client::fetch::run(fetch_args(&s, id, token, &dest))
            .await
            .unwrap();
        assert_eq!(names, ["app.jar", "conf.txt"], "mode {mode}");
        assert!(std::fs::read(dest.join("app.jar")).unwrap() == jar);
        let m = s.metrics().await;
        let redirects = (n + 1) as f64;
        assert_eq!(
            metric(&m, "staging_download_redirects_total"),
            Some(redirects)
        );
        assert_eq!(
            metric(&m, "staging_download_bytes_total"),
            Some(size * redirects),
            "mode {mode}: the server served the bytes"
        );
    }
    assert_eq!(proxy.presigned_requests().len(), 2);

    // The store holds other bytes than the server recorded: fetch refuses them, asks the
    // server, which streams the same wrong bytes, and fails with the digest code; nothing is
    // unpacked.
    proxy.set(FORWARD);
    let other = random_bytes(up["size"].as_u64().unwrap() as usize);
    let put = reqwest::Client::new()
        .put(format!("{endpoint}/staging-bucket/spark/resources/{id}"))
        .body(other)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let dest = work.path().join("dest-corrupt");
    let e = staging_client::fetch::run(fetch_args(&s, id, token, &dest))
        .await
        .unwrap_err();
    assert_eq!(e.code, staging_client::EXIT_INTEGRITY, "{e}");
    assert!(!dest.join("app.jar").exists());
    let m = s.metrics().await;
    assert_eq!(metric(&m, "staging_download_redirects_total"), Some(3.0));
    assert_eq!(metric(&m, "staging_download_bytes_total"), Some(size * 3.0));

    // The store has lost the object: the redirect leads to a 404 there, the server then says
    // 410, and fetch stops with its not-found code.
    // (Through the store client: moto refuses an anonymous DELETE of an object written
    // anonymously.)
    s.state.store().delete(id.parse().unwrap()).await.unwrap();
    let e = staging_client::fetch::run(fetch_args(&s, id, token, &work.path().join("dest-lost")))
        .await
        .unwrap_err();
    assert_eq!(e.code, staging_client::EXIT_NOT_FOUND, "{e}");
    s.shutdown().await;
}
