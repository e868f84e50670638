//! TTL expiry with the manual clock.

use std::time::Duration;

use std::sync::Arc;

use staging_server::clock::ManualClock;
use staging_server::db::Owner;
use staging_server::ingest::{Lifetimes, PendingUpload};
use staging_server::lifecycle::Sweeper;
use staging_server::{AppState, Config, Overrides};

use crate::common::{TestServer, metric, random_bytes};

#[tokio::test]
async fn unused_resources_expire_after_the_unused_ttl() {
    let s = TestServer::start(|c| c.limits.unused_ttl = Duration::from_secs(1800)).await;
    let unused = s.upload("a", random_bytes(100)).await;
    let used = s.upload("a", random_bytes(100)).await;
    assert_eq!(
        s.get_content(
            used["id"].as_str().unwrap(),
            used["token"].as_str().unwrap()
        )
        .await
        .status(),
        200
    );
    let sweeper = Sweeper::new(s.state.clone());

    s.clock.advance(Duration::from_secs(1799));
    assert_eq!(sweeper.sweep_once().await.unwrap().unused, 0);
    s.clock.advance(Duration::from_secs(2));
    let report = sweeper.sweep_once().await.unwrap();
    assert_eq!((report.unused, report.expired), (1, 0));

    assert_eq!(
        s.get_content(
            unused["id"].as_str().unwrap(),
            unused["token"].as_str().unwrap()
        )
        .await
        .status(),
        401
    );
    assert_eq!(
        s.get_content(
            used["id"].as_str().unwrap(),
            used["token"].as_str().unwrap()
        )
        .await
        .status(),
        200
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "staging_cleanup_deletions_total{reason=\"unused_ttl\"}"),
        Some(1.0)
    );
    assert_eq!(s.state.store().list_ids().await.unwrap().len(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn every_resource_expires_at_the_max_ttl() {
    let s = TestServer::start(|c| c.limits.max_ttl = Duration::from_secs(48 * 3600)).await;
    let up = s.upload("a", random_bytes(100)).await;
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
    assert_eq!(s.get_content(id, token).await.status(), 200);
    let sweeper = Sweeper::new(s.state.clone());
    s.clock.advance(Duration::from_secs(47 * 3600));
    assert_eq!(sweeper.sweep_once().await.unwrap().expired, 0);
    assert_eq!(s.get_content(id, token).await.status(), 200);
    s.clock.advance(Duration::from_secs(3601));
    assert_eq!(sweeper.sweep_once().await.unwrap().expired, 1);
    // The token expired with the resource.
    let res = s.get_content(id, token).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        metric(
            &s.metrics().await,
            "staging_cleanup_deletions_total{reason=\"max_ttl\"}"
        ),
        Some(1.0)
    );
    assert!(s.state.store().list_ids().await.unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn per_upload_ttls_are_honoured_and_capped() {
    let s = TestServer::start(|_| {}).await;
    let res = s
        .client
        .post(s.url("/api/v1/resources?namespace=a&unused_ttl=2h&ttl=3h"))
        .header("content-type", "application/gzip")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let sweeper = Sweeper::new(s.state.clone());
    // Past the server's 30 min default but within the requested 2 h: still there.
    s.clock.advance(Duration::from_secs(3600));
    assert_eq!(sweeper.sweep_once().await.unwrap().unused, 0);
    s.clock.advance(Duration::from_secs(3601));
    assert_eq!(sweeper.sweep_once().await.unwrap().unused, 1);
    s.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_keeps_running_through_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path());
    config.limits.unused_ttl = Duration::from_secs(60);
    let clock = ManualClock::new();
    let state = AppState::open(
        &config,
        Overrides {
            clock: Some(Arc::new(clock.clone())),
            store: None,
            registry: None,
            kube_client: None,
        },
    )
    .await
    .unwrap();
    let mut up = PendingUpload::begin(&state, "v1", Some("a".parse().unwrap()), None, None)
        .await
        .unwrap();
    up.write(bytes::Bytes::from_static(b"abc")).await.unwrap();
    let owner = Owner {
        namespace: "a".parse().unwrap(),
        labels: Default::default(),
        pod_uid: None,
    };
    let lifetimes = Lifetimes {
        unused_ttl: Duration::from_secs(60),
        max_ttl: Duration::from_secs(3600),
    };
    up.commit(owner, lifetimes, None).await.unwrap();

    // Break the database underneath the sweeper: its sweeps now fail.
    let conn = rusqlite::Connection::open(dir.path().join("staging.db")).unwrap();
    conn.execute_batch("ALTER TABLE resources RENAME TO resources_away;")
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task =
        tokio::spawn(Sweeper::new(state.clone()).run(Duration::from_secs(30), cancel.clone()));
    let m = state.metrics().clone();
    while m.cleanup_errors.get() < 3 {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    assert!(!task.is_finished(), "the sweeper died on an error");

    // Repair; within its backoff the sweeper deletes the expired resource.
    conn.execute_batch("ALTER TABLE resources_away RENAME TO resources;")
        .unwrap();
    clock.advance(Duration::from_secs(120));
    let deletions = m.cleanup_deletions.with_label_values(&["unused_ttl"]);
    let start = tokio::time::Instant::now();
    while deletions.get() < 1 {
        assert!(
            start.elapsed() <= staging_server::lifecycle::MAX_BACKOFF * 2,
            "no recovery"
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    cancel.cancel();
    task.await.unwrap();
}
