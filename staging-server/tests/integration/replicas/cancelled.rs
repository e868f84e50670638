//! A client gone while its upload's commit waits on the shared log: the commit runs to its
//! end all the same, and bytes the log refused are deleted at once, not left to the leader's
//! orphan sweep (an hour later) uncharged to anyone.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::hooked::Hooked;
use super::{memory, replica, until};
use crate::common::random_bytes;
use staging_server::store::BlobStore;

#[tokio::test]
async fn a_client_gone_mid_commit_leaves_no_refused_bytes() {
    let slow = Arc::new(Hooked::default());
    let (hold, held, released) = (slow.hold.clone(), slow.held.clone(), slow.released.clone());
    let store = BlobStore::over(slow.clone());
    // One resource per namespace: the second upload's commit is refused.
    let a = replica(Some(store), memory(), |c| {
        c.limits.namespace_quota_count = Some(1);
    })
    .await;

    // The second upload starts while the namespace is empty (past the check at its start)
    // and sends its body slowly; the first commits meanwhile.
    let (tx, body) = crate::common::fed_body(4);
    tx.send(Ok(Bytes::from(random_bytes(64 << 10))))
        .await
        .unwrap();
    let second = tokio::spawn(a.upload_request("team-a", body).send());
    until(
        "the server receives the second upload's first bytes",
        || async {
            super::value(&a.metrics().await, "staging_upload_bytes_total") >= f64::from(64 << 10)
        },
    )
    .await;
    let first = a.upload("team-a", random_bytes(1000)).await;
    let kept = first["id"].as_str().unwrap().to_owned();

    // The second upload's commit waits on the log; its client goes away meanwhile.
    hold.store(true, Ordering::Release);
    let waiting = held.notified();
    drop(tx);
    waiting.await;
    let entry = slow.held_entry.lock().unwrap().clone().unwrap();
    assert!(
        String::from_utf8_lossy(&entry).contains("team-a"),
        "the held log write is not the second upload's commit: {entry:?}"
    );
    second.abort();
    let _ = second.await;
    hold.store(false, Ordering::Release);
    released.notify_waiters();

    // Refused everywhere (the quota), and its bytes deleted at once: only the first remains.
    until("the refused upload's bytes are deleted", || async {
        slow.names("resources").await.len() == 1
    })
    .await;
    let left = slow.names("resources").await;
    assert!(left[0].ends_with(&kept), "{left:?}");
    a.shutdown().await;
}
