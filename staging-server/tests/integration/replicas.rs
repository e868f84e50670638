//! Several replicas on one store (`--replicated`): in-process servers with their own data
//! directories sharing one in-memory object store (and, in `external::s3_replicas_*`, one
//! moto bucket). An upload on one replica is downloadable from the others at once; a deletion
//! on one is refused by the others within seconds (the sync interval, 200 ms here, plus store
//! calls, on a loaded test machine); quotas hold across replicas
//! under concurrent uploads; a replica started later loads the snapshot and the log; one
//! replica leads, and another takes over when it stops; a client gone mid-commit leaves no
//! refused bytes behind ([`cancelled`]); a replica that cannot reload the shared state answers
//! 503 and waits before it tries again ([`rebuild`]); replicas behind the trimmed log write at
//! its head and never apply another stale replica's entries, a write the log was trimmed past
//! answers 503 undecided, a write whose answer was lost lands once, and a replica replaying the
//! log grants no download ([`stale`]). [`hooked`] is the store they hook into.

mod cancelled;
mod hooked;
mod rebuild;
mod stale;

use std::time::{Duration, Instant};

use staging_server::config::StoreLocation;
use staging_server::store::BlobStore;

use crate::common::{TestServer, random_bytes};

const KEY: &[u8] = b"replicas-share-this-signing-key-0123456789";
/// The replicas' sync interval in these tests.
const SYNC: Duration = Duration::from_millis(200);
/// Bound on every wait for something that must happen.
const PATIENCE: Duration = Duration::from_secs(20);

/// Starts one replica on `store` (`location` names it in the configuration).
pub(crate) async fn replica(
    store: Option<BlobStore>,
    location: StoreLocation,
    tweak: impl FnOnce(&mut staging_server::Config),
) -> TestServer {
    TestServer::start_in(
        tempfile::tempdir().unwrap(),
        |c| {
            c.store = location;
            c.replicated = true;
            c.replica_sync_interval = SYNC;
            c.leader_lease = Duration::from_secs(2);
            c.signing_key = Some(KEY.to_vec());
            tweak(c);
        },
        store,
    )
    .await
}

fn memory() -> StoreLocation {
    StoreLocation::Url {
        url: "memory://".into(),
        options: Default::default(),
    }
}

async fn three(tweak: impl Fn(&mut staging_server::Config) + Copy) -> (BlobStore, [TestServer; 3]) {
    let store = BlobStore::in_memory();
    let a = replica(Some(store.clone()), memory(), tweak).await;
    let b = replica(Some(store.clone()), memory(), tweak).await;
    let c = replica(Some(store.clone()), memory(), tweak).await;
    (store, [a, b, c])
}

/// Waits until `f` holds, polling with a deadline; returns how long it took.
pub(crate) async fn until<F, Fut>(what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A metric's value in a scrape (0 when absent).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Which replicas lead now.
fn leaders(rs: &[&TestServer]) -> usize {
    rs.iter().filter(|r| r.state.leads()).count()
}

#[tokio::test]
async fn an_upload_on_one_replica_is_downloadable_from_the_others_at_once() {
    let (_store, [a, b, c]) = three(|_| {}).await;
    let bytes = random_bytes(300_000);
    let up = a.upload("team-a", bytes.clone()).await;
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
    // No waiting: the first request to B and C reads the log.
    for r in [&b, &c] {
        let got = r.get_content(id, token).await;
        assert_eq!(got.status(), 200);
        assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
    }
    for r in [a, b, c] {
        r.shutdown().await;
    }
}

#[tokio::test]
async fn a_deletion_on_one_replica_is_refused_by_the_others_within_seconds() {
    let (_store, [a, b, c]) = three(|_| {}).await;
    let up = a.upload("team-a", random_bytes(10_000)).await;
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
    for r in [&a, &c] {
        assert_eq!(r.get_content(id, token).await.status(), 200);
    }
    let del = b
        .client
        .delete(b.url(&format!("/api/v1/resources/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let mut slowest = Duration::ZERO;
    for r in [&a, &c] {
        // 410 while the bytes are gone but the deletion is not applied here yet, then 401
        // (the token revoked), as a single server answers for a deleted resource's token.
        let took = until("the deletion reaches the replica", || async {
            match r.get_content(id, token).await.status().as_u16() {
                200 | 410 => false,
                401 => true,
                other => panic!("a deleted resource's token got {other}"),
            }
        })
        .await;
        slowest = slowest.max(took);
    }
    assert!(
        slowest <= Duration::from_secs(5),
        "a deletion took {slowest:?} to reach the other replicas (sync interval {SYNC:?})"
    );
    for r in [a, b, c] {
        r.shutdown().await;
    }
}

#[tokio::test]
async fn quotas_hold_across_replicas_under_concurrent_uploads() {
    const QUOTA: u64 = 5;
    let (_store, rs) = three(|c| c.limits.namespace_quota_count = Some(QUOTA)).await;
    let mut tasks = Vec::new();
    for i in 0..15 {
        let upload = rs[i % 3].upload_request("team-q", random_bytes(2_000));
        tasks.push(tokio::spawn(async move {
            upload.send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let created = statuses.iter().filter(|s| **s == 201).count() as u64;
    assert_eq!(created, QUOTA, "statuses {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 507),
        "{statuses:?}"
    );
    // Every replica agrees, and its counters match its rows.
    for r in &rs {
        r.state.sync_shared().await.unwrap();
        let used = r.state.db().usage("team-q".parse().unwrap()).await.unwrap();
        assert_eq!(used.committed_count, QUOTA);
        assert!(r.state.db().usage_drift().await.unwrap().is_empty());
    }
    for r in rs {
        r.shutdown().await;
    }
}

#[tokio::test]
async fn a_replica_started_later_loads_the_snapshot_and_the_log() {
    let store = BlobStore::in_memory();
    let tweak = |c: &mut staging_server::Config| c.snapshot_every = 10;
    let a = replica(Some(store.clone()), memory(), tweak).await;
    until("a leader", || async { a.state.leads() }).await;
    let mut ups = Vec::new();
    for _ in 0..25 {
        ups.push(a.upload("team-a", random_bytes(1_000)).await);
    }
    until("a snapshot", || async {
        value(&a.metrics().await, "staging_replica_snapshots_total") >= 1.0
    })
    .await;
    let d = replica(Some(store.clone()), memory(), tweak).await;
    for up in &ups {
        let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
        assert_eq!(d.get_content(id, token).await.status(), 200);
    }
    let text = d.metrics().await;
    assert!(text.contains("staging_replica_rebuilds_total 1"), "{text}");
    a.shutdown().await;
    d.shutdown().await;
}

#[tokio::test]
async fn one_replica_leads_and_another_takes_over_when_it_stops() {
    let (_store, [a, b, c]) = three(|_| {}).await;
    until("one leader", || async { leaders(&[&a, &b, &c]) == 1 }).await;
    let (leader, rest): (Vec<TestServer>, Vec<TestServer>) =
        [a, b, c].into_iter().partition(|r| r.state.leads());
    let leader = leader.into_iter().next().unwrap();
    leader.shutdown().await;
    let took = until("a new leader", || async {
        leaders(&rest.iter().collect::<Vec<_>>()) == 1
    })
    .await;
    // The lease is 2 s: taken over once a renewal is a lease late, checked every third of a
    // lease: within two and a half leases of the stop.
    assert!(took <= Duration::from_secs(5), "failover took {took:?}");
    for r in rest {
        r.shutdown().await;
    }
}

#[tokio::test]
async fn a_file_sent_to_one_replica_is_named_by_a_submission_on_another() {
    let (_store, [a, b, c]) = three(|_| {}).await;
    let bytes = random_bytes(5_000);
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let sent = a
        .client
        .put(a.url(&format!("/api/v1/blobs/{sha}?namespace=team-a")))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success(), "{}", sent.text().await.unwrap());
    let sub = b
        .client
        .post(b.url("/api/v1/submissions"))
        .json(&serde_json::json!({
            "namespace": "team-a",
            "labels": {"spark-role": "driver"},
            "files": [{"name": "app.jar", "sha256": sha}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(sub.status(), 201, "{}", sub.text().await.unwrap());
    let created: serde_json::Value = sub.json().await.unwrap();
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let got = c
        .client
        .get(c.url(&format!("/api/v1/resources/{id}/files/app.jar")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
    for r in [a, b, c] {
        r.shutdown().await;
    }
}

/// One request through the replicas in turn, as `fetch` and `upload` retry: the next replica
/// on a refused connection or a 503, a few rounds at most. The status and body of the first
/// answer that is neither.
async fn through_any(
    client: &reqwest::Client,
    addrs: &std::sync::Mutex<Vec<std::net::SocketAddr>>,
    make: impl Fn(&reqwest::Client, std::net::SocketAddr) -> reqwest::RequestBuilder,
) -> Option<(u16, bytes::Bytes)> {
    for round in 0..20u32 {
        let now: Vec<_> = addrs.lock().unwrap().clone();
        for addr in now {
            if let Ok(res) = make(client, addr).send().await {
                let status = res.status().as_u16();
                if status != 503
                    && let Ok(body) = res.bytes().await
                {
                    return Some((status, body));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10 * u64::from(round + 1))).await;
    }
    None
}

#[tokio::test]
async fn a_rolling_restart_under_load_fails_no_fetch_and_loses_no_acknowledged_upload() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let (store, rs) = three(|_| {}).await;
    let bytes = random_bytes(100_000);
    let first = rs[0].upload("team-a", bytes.clone()).await;
    let (id, token) = (
        first["id"].as_str().unwrap().to_owned(),
        first["token"].as_str().unwrap().to_owned(),
    );
    let addrs = Arc::new(Mutex::new(rs.iter().map(|r| r.addr).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let fetches = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (addrs, stop, fetches, failed, acked) = (
            addrs.clone(),
            stop.clone(),
            fetches.clone(),
            failed.clone(),
            acked.clone(),
        );
        let (id, token, want) = (id.clone(), token.clone(), bytes.clone());
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            // Bounded: at most this many rounds, whatever the restarts take.
            for i in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let got = through_any(&client, &addrs, |c, a| {
                    c.get(format!("http://{a}/api/v1/resources/{id}/content"))
                        .bearer_auth(&token)
                })
                .await;
                fetches.fetch_add(1, Ordering::Relaxed);
                match got {
                    Some((200, body)) if body.as_ref() == want.as_slice() => {}
                    other => failed
                        .lock()
                        .unwrap()
                        .push(format!("fetch: {:?}", other.map(|(s, _)| s))),
                }
                if worker == 0 && i % 4 == 0 {
                    let up = through_any(&client, &addrs, |c, a| {
                        c.post(format!(
                            "http://{a}/api/v1/resources?namespace=team-a&labels=spark-role=driver"
                        ))
                        .header("content-type", "application/gzip")
                        .body(vec![i as u8; 3_000])
                    })
                    .await;
                    match up {
                        Some((201, body)) => {
                            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            acked.lock().unwrap().push((
                                v["id"].as_str().unwrap().to_owned(),
                                v["token"].as_str().unwrap().to_owned(),
                            ));
                        }
                        other => failed
                            .lock()
                            .unwrap()
                            .push(format!("upload: {:?}", other.map(|(s, _)| s))),
                    }
                }
            }
        }));
    }
    // Roll: a new replica first (surge), then the old one leaves.
    let mut rolled = Vec::new();
    for old in rs {
        let new = replica(Some(store.clone()), memory(), |_| {}).await;
        addrs.lock().unwrap().push(new.addr);
        let fetched = fetches.load(Ordering::Relaxed);
        until("load on the new replica", || async {
            fetches.load(Ordering::Relaxed) > fetched + 20
        })
        .await;
        addrs.lock().unwrap().retain(|a| *a != old.addr);
        old.shutdown().await;
        rolled.push(new);
    }
    let fetched = fetches.load(Ordering::Relaxed);
    until("load after the roll", || async {
        fetches.load(Ordering::Relaxed) > fetched + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "failed during the roll: {failed:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    for (id, token) in &acked {
        for r in &rolled {
            assert_eq!(r.get_content(id, token).await.status(), 200, "acked {id}");
        }
    }
    for r in rolled {
        r.shutdown().await;
    }
}
