//! The object store fails under the server: a real S3-protocol server (moto) behind a proxy
//! the test switches between forwarding, refusing connections (a store that is down) and
//! accepting without answering (a hung store). Requests fail fast with 503 and Retry-After,
//! /readyz keeps the store's details private, a DELETE during the outage is completed by the
//! sweep, and a resource whose bytes vanished answers 410 (and `fetch` stops at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use staging_server::config::StoreLocation;
use staging_server::lifecycle::Sweeper;
use staging_server::store::BlobStore;
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;
use crate::external::{s3_options, start_moto};

const FORWARD: u8 = 0;
const REFUSE: u8 = 1;
const HANG: u8 = 2;

/// A TCP proxy to `upstream` whose behaviour the test switches.
struct Proxy {
    endpoint: String,
    mode: Arc<AtomicU8>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let m = Arc::clone(&mode);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut client, _)) = l.accept().await {
                match m.load(Ordering::SeqCst) {
                    FORWARD => {
                        let up = upstream.clone();
                        tokio::spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(up).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                    // Reset at once: what a client sees of a store that is down.
                    REFUSE => {
                        let _ = client.set_zero_linger();
                        drop(client);
                    }
                    // Accept and never answer.
                    _ => held.push(client),
                }
            }
        });
        Self { endpoint, mode }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

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
#[ignore = "needs moto_server (S3 protocol); run through scripts/test.sh"]
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
