//! Replicas behind the trimmed log, and writes whose answer is lost. Trimming frees positions
//! that a stale replica still writes to and reads; another stale replica's entry may sit there
//! (a stray, until its writer takes it back). The trim mark decides what is the log, whatever
//! strays lie around: a stale writer's entry ends at the head and every replica applies it, a
//! stale reader never applies a stray. A write whose first answer was lost (the store client
//! retried it and found the position taken) is recognised as landed, not written twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt as _;
use object_store::path::Path;

use super::hooked::Hooked;
use super::{PATIENCE, memory, replica, value};
use crate::common::{TestServer, random_bytes};
use staging_server::store::BlobStore;

/// The log entry at `seq`, as the store names it.
fn entry_path(seq: u64) -> Path {
    Path::from(format!("state/log/{seq:020}"))
}

/// The trim mark (0 before any trimming).
async fn trim_mark(hooked: &Hooked) -> u64 {
    match hooked.inner.get(&Path::from("state/trimmed")).await {
        Ok(g) => String::from_utf8(g.bytes().await.unwrap().to_vec())
            .unwrap()
            .parse()
            .unwrap(),
        Err(object_store::Error::NotFound { .. }) => 0,
        Err(e) => panic!("{e}"),
    }
}

/// A leader A that snapshots every 10 entries, and a replica D that reads the log only when
/// asked (a sync interval of a minute), placed at A's position after one upload; then uploads
/// on A until the log is trimmed past D's position. Returns the two, D's position and the
/// uploads.
async fn d_behind_the_trimmed_log(
    hooked: &Arc<Hooked>,
) -> (TestServer, TestServer, u64, Vec<serde_json::Value>) {
    let store = BlobStore::over(hooked.clone());
    let a = replica(Some(store.clone()), memory(), |c| c.snapshot_every = 10).await;
    super::until("a leader", || async { a.state.leads() }).await;
    let d = replica(Some(store), memory(), |c| {
        c.replica_sync_interval = Duration::from_secs(60);
    })
    .await;
    let mut ups = vec![a.upload("team-a", random_bytes(1_000)).await];
    d.state.sync_shared().await.unwrap();
    let at = d.state.db().applied_seq().await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    // Trimmed, and done with it: every entry up to the mark deleted.
    loop {
        let mark = trim_mark(hooked).await;
        if mark >= at + 2 && hooked.positions("log").await.first() > Some(&mark) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log was not trimmed past {at}"
        );
        ups.push(a.upload("team-a", random_bytes(1_000)).await);
    }
    (a, d, at, ups)
}

#[tokio::test]
async fn a_stale_replica_writes_at_the_head_even_beside_another_stale_replicas_stray_entry() {
    let hooked = Arc::new(Hooked::default());
    let (a, d, at, mut ups) = d_behind_the_trimmed_log(&hooked).await;
    // Another stale replica's entry at D's own position, not yet taken back: the entry before
    // the one D writes is there, as if the log went on from D.
    let stray = serde_json::json!({"op": "access", "id": ups[0]["id"], "now": 0}).to_string();
    hooked
        .inner
        .put(&entry_path(at), stray.into())
        .await
        .unwrap();

    ups.push(d.upload("team-a", random_bytes(1_000)).await);
    // D's entry landed at a trimmed position first (taken back), then at the head.
    let text = d.metrics().await;
    assert!(
        value(&text, "staging_replica_log_appends_total{outcome=\"lost\"}") >= 1.0,
        "{text}"
    );
    assert!(!hooked.positions("log").await.contains(&(at + 1)));
    // The leader, at the head, serves it, and every upload is served by both.
    for up in &ups {
        let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
        assert_eq!(a.get_content(id, token).await.status(), 200, "A: {id}");
        assert_eq!(d.get_content(id, token).await.status(), 200, "D: {id}");
    }
    a.shutdown().await;
    d.shutdown().await;
}

#[tokio::test]
async fn a_stale_replica_never_applies_stray_entries_as_the_log() {
    let hooked = Arc::new(Hooked::default());
    let (a, d, at, ups) = d_behind_the_trimmed_log(&hooked).await;
    // Strays at every trimmed position after D's, up to the log that remains: read as the
    // log, they would delete the first upload and skip the commits they replaced.
    let mark = trim_mark(&hooked).await;
    let stray = serde_json::json!({
        "op": "delete", "origin": "stale", "id": ups[0]["id"], "now": 0
    })
    .to_string();
    for seq in at + 1..=mark {
        hooked
            .inner
            .put(&entry_path(seq), stray.clone().into())
            .await
            .unwrap();
    }

    d.state.sync_shared().await.unwrap();
    for up in &ups {
        let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
        assert_eq!(d.get_content(id, token).await.status(), 200, "D: {id}");
    }
    assert!(
        d.metrics()
            .await
            .contains("staging_replica_rebuilds_total 2"),
        "D loaded the snapshot rather than the strays"
    );
    a.shutdown().await;
    d.shutdown().await;
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_is_recognised_as_landed() {
    let hooked = Arc::new(Hooked::default());
    let store = BlobStore::over(hooked.clone());
    let a = replica(Some(store), memory(), |_| {}).await;
    hooked.lose_answer.store(true, Ordering::Release);
    let up = a.upload("team-a", random_bytes(1_000)).await;
    assert!(
        !hooked.lose_answer.load(Ordering::Acquire),
        "no answer was lost"
    );
    let id = up["id"].as_str().unwrap();
    let mut naming = 0;
    for seq in hooked.positions("log").await {
        let body = hooked.inner.get(&entry_path(seq)).await.unwrap();
        if String::from_utf8_lossy(&body.bytes().await.unwrap()).contains(id) {
            naming += 1;
        }
    }
    assert_eq!(naming, 1, "the commit is in the log once");
    assert_eq!(
        a.get_content(id, up["token"].as_str().unwrap())
            .await
            .status(),
        200
    );
    a.shutdown().await;
}
