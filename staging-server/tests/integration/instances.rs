//! Two servers with their own databases on one store prefix: the second is refused unless told
//! to share it, and an orphan sweep deletes only objects it can prove it left behind.

use std::path::Path;
use std::time::Duration;

use staging_server::config::StoreLocation;
use tokio::process::Command;

use crate::common::{TestServer, random_bytes};
use crate::crash::start_with;

/// Uploads `bytes` to a server at `addr`; returns id and token.
async fn upload(addr: std::net::SocketAddr, bytes: Vec<u8>) -> (String, String) {
    let res = reqwest::Client::new()
        .post(format!(
            "http://{addr}/api/v1/resources?namespace=team-a&labels=spark-role=driver"
        ))
        .header("content-type", "application/gzip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: serde_json::Value = res.json().await.unwrap();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

async fn download(addr: std::net::SocketAddr, id: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/resources/{id}/content"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn store_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

#[tokio::test]
async fn a_second_instance_on_the_same_store_is_refused_and_deletes_nothing() {
    let shared = tempfile::tempdir().unwrap();
    let first_dir = tempfile::tempdir().unwrap();
    let url = store_url(shared.path());
    let first = start_with(first_dir.path(), &["--store-url", &url]).await;
    let bytes = random_bytes(100_000);
    let (id, token) = upload(first.addr, bytes.clone()).await;

    // A second process with its own database on the same prefix is refused at start.
    let second_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_staging-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(second_dir.path())
        .args(["--store-url", &url])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("the second instance started instead of refusing")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("another staging-server instance"),
        "{stderr}"
    );
    assert!(stderr.contains("--store-shared"), "{stderr}");

    // Told to share the prefix, it starts, and its orphan sweep, even long after, deletes
    // nothing of the first's.
    let second = TestServer::start_in(
        second_dir,
        |c| {
            c.store = StoreLocation::Local(shared.path().to_owned());
            c.store_shared = true;
        },
        None,
    )
    .await;
    second.clock.advance(Duration::from_secs(24 * 3600));
    assert_eq!(second.state.queue_orphans().await.unwrap(), Some(0));
    staging_server::lifecycle::retry_deletions(&second.state)
        .await
        .unwrap();
    let res = download(first.addr, &id, &token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap(), bytes);
    second.shutdown().await;
    drop(first);
}

#[tokio::test]
async fn orphans_are_deleted_only_past_the_grace() {
    let s = TestServer::start(|c| c.orphan_grace = Duration::from_secs(600)).await;
    let (id, _) = {
        let v = s.upload("team-a", random_bytes(1000)).await;
        (v["id"].as_str().unwrap().to_owned(), v)
    };
    // An object without a row (a process that died between writing and recording it).
    let stray = staging_api::ids::ResourceId::random();
    let objects = s.dir.path().join("objects").join("resources");
    std::fs::write(objects.join(stray.to_string()), b"left behind").unwrap();
    assert_eq!(
        s.state.queue_orphans().await.unwrap(),
        Some(0),
        "within the grace"
    );
    s.clock.advance(Duration::from_secs(601));
    assert_eq!(s.state.queue_orphans().await.unwrap(), Some(1));
    staging_server::lifecycle::retry_deletions(&s.state)
        .await
        .unwrap();
    assert!(!objects.join(stray.to_string()).exists());
    assert!(objects.join(&id).exists(), "a recorded object stays");
    s.shutdown().await;
}
