//! Replicas behind the trimmed log, and writes whose answer is lost. Trimming frees positions
//! that a stale replica still writes to and reads; another stale replica's entry may sit there
//! (a stray). The trim mark decides what is the log: a stale writer reloads before it writes
//! and lands at the head; a write the log was trimmed past while it wrote answers 503 and is
//! not written twice; a stale reader never applies a stray. A write whose first answer was a
//! server error (the store client retried it and found the position taken) is recognised as
//! landed, not written twice. A replica replaying the log after loading a snapshot grants no
//! download until it is done.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use object_store::ObjectStoreExt as _;

use super::hooked::Hooked;
use super::{PATIENCE, memory, replica, value};
use crate::common::{TestServer, random_bytes};
use staging_server::store::BlobStore;

/// `f`, bounded by [`PATIENCE`].
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {PATIENCE:?}"))
}

/// Every upload of `ups` is downloaded from every replica of `rs`.
async fn served_by(rs: &[&TestServer], ups: &[serde_json::Value]) {
    for up in ups {
        let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
        for (i, r) in rs.iter().enumerate() {
            assert_eq!(
                r.get_content(id, token).await.status(),
                200,
                "replica {i}: {id}"
            );
        }
    }
}

/// How many times the replica loaded a snapshot (or an empty start).
async fn rebuilds(r: &TestServer) -> f64 {
    value(&r.metrics().await, "staging_replica_rebuilds_total")
}

/// A leader A that writes no snapshot of its own accord, and a replica D that reads the log
/// only when asked (a sync interval of a minute), placed at A's position after one upload;
/// then two snapshots taken on A, two uploads apart, the second trimming the log up to the
/// first, past D's position. Nothing trims the log afterwards. Returns the two, D's position
/// and the uploads.
async fn d_behind_the_trimmed_log(
    hooked: &Arc<Hooked>,
) -> (TestServer, TestServer, u64, Vec<serde_json::Value>) {
    let store = BlobStore::over(hooked.clone());
    let a = replica(Some(store.clone()), memory(), |c| {
        c.snapshot_every = 1_000_000;
    })
    .await;
    super::until("a leader", || async { a.state.leads() }).await;
    let d = replica(Some(store), memory(), |c| {
        c.replica_sync_interval = Duration::from_secs(60);
    })
    .await;
    let mut ups = vec![a.upload("team-a", random_bytes(1_000)).await];
    d.state.sync_shared().await.unwrap();
    let at = d.state.db().applied_seq().await.unwrap();
    let mut snapshots = Vec::new();
    for _ in 0..2 {
        for _ in 0..2 {
            ups.push(a.upload("team-a", random_bytes(1_000)).await);
        }
        snapshots.push(a.state.snapshot_shared().await.unwrap().unwrap());
    }
    assert!(snapshots[0] > at + 1, "{snapshots:?} after {at}");
    assert_eq!(hooked.trim_mark().await, snapshots[0]);
    assert!(hooked.positions("log").await.first() > Some(&snapshots[0]));
    (a, d, at, ups)
}

#[tokio::test]
async fn a_stale_replica_reloads_before_it_writes_and_writes_at_the_head() {
    let hooked = Arc::new(Hooked::default());
    let (a, d, _at, mut ups) = d_behind_the_trimmed_log(&hooked).await;
    let up = d.upload("team-a", random_bytes(1_000)).await;
    // D read the mark before its create and reloaded: its entry lies above the mark.
    let id = up["id"].as_str().unwrap().to_owned();
    let seq = hooked.position_naming(&id).await.unwrap();
    assert!(
        seq > hooked.trim_mark().await,
        "entry {seq} in the trimmed past"
    );
    assert_eq!(rebuilds(&d).await, 2.0, "D reloaded once, after its start");
    ups.push(up);
    // The leader, at the head, serves it, and every upload is served by both.
    served_by(&[&a, &d], &ups).await;
    a.shutdown().await;
    d.shutdown().await;
}

#[tokio::test]
async fn a_write_the_log_was_trimmed_past_while_it_wrote_is_undecided_and_not_written_again() {
    let hooked = Arc::new(Hooked::default());
    let (a, d, at, ups) = d_behind_the_trimmed_log(&hooked).await;
    let mark = hooked.trim_mark().await;
    // D reads a mark below its position before its create, and the mark as it stands after:
    // the log was trimmed past the position in between, as a trim racing the write does.
    hooked.put_trim_mark(at).await;
    hooked.hold.store(true, Ordering::Release);
    let waiting = hooked.held.notified();
    let write = tokio::spawn(d.upload_request("team-a", random_bytes(1_000)).send());
    within("D's create held", waiting).await;
    let held = hooked.held_entry.lock().unwrap().clone().unwrap();
    assert!(
        String::from_utf8_lossy(&held).contains("\"op\":\"commit\""),
        "the held log write is not D's commit: {held:?}"
    );
    hooked.put_trim_mark(mark).await;
    hooked.hold.store(false, Ordering::Release);
    hooked.released.notify_waiters();

    assert_eq!(
        within("D's answer", write).await.unwrap().unwrap().status(),
        503
    );
    let text = d.metrics().await;
    assert_eq!(
        value(
            &text,
            "staging_replica_log_appends_total{outcome=\"undecided\"}"
        ),
        1.0,
        "{text}"
    );
    // Taken back, and written nowhere else.
    let jti = serde_json::from_slice::<serde_json::Value>(&held).unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        hooked.position_naming(&jti).await,
        None,
        "the undecided entry is in the log"
    );
    // D reloads at its next change, which lands at the head.
    let mut ups = ups;
    ups.push(d.upload("team-a", random_bytes(1_000)).await);
    served_by(&[&a, &d], &ups).await;
    a.shutdown().await;
    d.shutdown().await;
}

#[tokio::test]
async fn a_stale_replica_never_applies_stray_entries_as_the_log() {
    let hooked = Arc::new(Hooked::default());
    let (a, d, at, ups) = d_behind_the_trimmed_log(&hooked).await;
    // No trimming from here on: the strays below stay for D to meet.
    a.shutdown().await;
    // Strays at every trimmed position after D's, up to the log that remains: read as the
    // log, they would delete the first upload and skip the commits they replaced.
    let mark = hooked.trim_mark().await;
    let stray = serde_json::json!({
        "op": "delete", "origin": "stale", "id": ups[0]["id"], "now": 0
    })
    .to_string();
    for seq in at + 1..=mark {
        hooked
            .inner
            .put(&Hooked::entry_path(seq), stray.clone().into())
            .await
            .unwrap();
    }

    d.state.sync_shared().await.unwrap();
    assert!(
        hooked.positions("log").await.contains(&(at + 1)),
        "the strays are gone: D did not meet them"
    );
    assert_eq!(
        rebuilds(&d).await,
        2.0,
        "D loaded the snapshot, not the strays"
    );
    served_by(&[&d], &ups).await;
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
        let body = hooked.inner.get(&Hooked::entry_path(seq)).await.unwrap();
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

#[tokio::test]
async fn a_replica_reloading_refuses_downloads_until_it_has_replayed_the_log() {
    let hooked = Arc::new(Hooked::default());
    let (a, d, _at, ups) = d_behind_the_trimmed_log(&hooked).await;
    let (gone, kept) = (&ups[0], &ups[1]);
    let token = |up: &serde_json::Value| up["token"].as_str().unwrap().to_owned();
    let id = |up: &serde_json::Value| up["id"].as_str().unwrap().to_owned();
    let del = a
        .client
        .delete(a.url(&format!("/api/v1/resources/{}", id(gone))))
        .bearer_auth(token(gone))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);

    // D loads the snapshot, and its replay of the log after it waits: the snapshot may still
    // grant the deleted resource's token, so D grants none meanwhile.
    hooked.hold_replay.store(true, Ordering::Release);
    let waiting = hooked.held.notified();
    let state = d.state.clone();
    let sync = tokio::spawn(async move { state.sync_shared().await.unwrap() });
    within("D's replay held", waiting).await;
    for up in [gone, kept] {
        let r = d.get_content(&id(up), &token(up)).await;
        assert_eq!(r.status(), 503, "{}", id(up));
        assert!(r.headers().contains_key("retry-after"));
    }
    hooked.hold_replay.store(false, Ordering::Release);
    hooked.released.notify_waiters();
    within("D's replay", sync).await.unwrap();
    assert_eq!(d.get_content(&id(gone), &token(gone)).await.status(), 401);
    assert_eq!(d.get_content(&id(kept), &token(kept)).await.status(), 200);
    a.shutdown().await;
    d.shutdown().await;
}
