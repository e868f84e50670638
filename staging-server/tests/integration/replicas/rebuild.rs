//! A replica that must reload the shared state and cannot (its snapshot unreadable): requests
//! that need the log are answered 503 for a few seconds without a download each, and the
//! replica recovers once the snapshot can be read.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::hooked::Hooked;
use super::{memory, replica, until};
use crate::common::random_bytes;
use staging_server::store::BlobStore;

#[tokio::test]
async fn a_replica_that_cannot_reload_answers_503_and_waits_before_it_tries_again() {
    let hooked = Arc::new(Hooked::default());
    let store = BlobStore::over(hooked.clone());
    let a = replica(Some(store.clone()), memory(), |c| c.snapshot_every = 10).await;
    until("a leader", || async { a.state.leads() }).await;
    // D reads the log only when a request names what it does not know.
    let d = replica(Some(store), memory(), |c| {
        c.replica_sync_interval = Duration::from_secs(60);
    })
    .await;
    let mut ups = Vec::new();
    for _ in 0..15 {
        ups.push(a.upload("team-a", random_bytes(1_000)).await);
    }
    until("a snapshot", || async {
        !hooked.positions("snapshots").await.is_empty()
    })
    .await;
    let at = hooked
        .positions("snapshots")
        .await
        .into_iter()
        .max()
        .unwrap();
    // Entries after the snapshot, then the log under it trimmed, as the leader does once two
    // snapshots are kept: D, behind it, must reload from the snapshot.
    for _ in 0..2 {
        ups.push(a.upload("team-a", random_bytes(1_000)).await);
    }
    hooked.trim_by_hand(at).await;

    hooked.refuse_snapshots.store(true, Ordering::Release);
    let (id, token) = (
        ups[0]["id"].as_str().unwrap(),
        ups[0]["token"].as_str().unwrap(),
    );
    let first = d.get_content(id, token).await.status();
    assert!(first.is_server_error(), "{first}");
    let tried = hooked.refused_reads.load(Ordering::Acquire);
    assert!(tried >= 1, "the snapshot was never read");
    // Within the back-off: refused at once, no download tried, with the wait left to retry
    // after (the back-off is 5 s).
    for _ in 0..3 {
        let r = d.get_content(id, token).await;
        assert_eq!(r.status(), 503);
        let after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=5).contains(&after), "Retry-After: {after}");
    }
    assert_eq!(hooked.refused_reads.load(Ordering::Acquire), tried);

    hooked.refuse_snapshots.store(false, Ordering::Release);
    until("the replica reloads after the back-off", || async {
        d.get_content(id, token).await.status() == 200
    })
    .await;
    for up in &ups {
        let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
        assert_eq!(d.get_content(id, token).await.status(), 200);
    }
    a.shutdown().await;
    d.shutdown().await;
}
