//! kill -9 of the real binary in the middle of an upload, then restart: nothing partial is
//! visible and no temporary data is left.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::{metric, random_bytes};

pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    /// The admin listener, when started with `--admin-listen`.
    pub(crate) admin: Option<SocketAddr>,
}

/// Starts the binary on port 0 and waits for its "ready" log line, which names the address.
pub(crate) async fn start(dir: &Path) -> Proc {
    start_with(dir, &[]).await
}

/// [`start`] with extra arguments.
pub(crate) async fn start_with(dir: &Path, extra: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_staging-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "staging_server=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (addr, admin) = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("server exited before it was ready");
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v["fields"]["message"] == "staging server ready" {
            break (
                v["fields"]["listen"].as_str().unwrap().parse().unwrap(),
                v["fields"]["admin"].as_str().and_then(|a| a.parse().ok()),
            );
        }
    };
    // Keep draining the log so the pipe never fills.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Proc { child, addr, admin }
}

fn staging_files(dir: &Path) -> Vec<String> {
    let res = dir.join("objects/resources");
    std::fs::read_dir(&res)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn pending_rows(dir: &Path) -> i64 {
    let c = rusqlite::Connection::open(dir.join("staging.db")).unwrap();
    c.query_row(
        "SELECT COUNT(*) FROM resources WHERE state = 'pending'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn kill_9_mid_upload_leaves_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut p = start(dir.path()).await;
    let base = format!("http://{}", p.addr);

    // A committed resource that must survive.
    let kept = random_bytes(300_000);
    let res = client
        .post(format!("{base}/api/v1/resources?namespace=a"))
        .header("content-type", "application/gzip")
        .body(kept.clone())
        .send()
        .await
        .unwrap();
    let kept_up: serde_json::Value = res.json().await.unwrap();

    // An upload that is cut by the kill: 4 MiB sent, then the client waits.
    let (tx, body) = crate::common::fed_body(8);
    for _ in 0..4 {
        tx.send(Ok(Bytes::from(random_bytes(1 << 20))))
            .await
            .unwrap();
    }
    let c2 = client.clone();
    let url = format!("{base}/api/v1/resources?namespace=a");
    let cut = tokio::spawn(async move {
        c2.post(url)
            .header("content-type", "application/gzip")
            .body(body)
            .send()
            .await
    });
    // Wait until the server has the bytes and a staging file holds some of them.
    loop {
        let m = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let got = metric(&m, "staging_upload_bytes_total").unwrap_or(0.0);
        if got >= (4 << 20) as f64 + kept.len() as f64
            && staging_files(dir.path()).iter().any(|f| f.contains('#'))
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    p.child.kill().await.unwrap();
    assert!(
        cut.await.unwrap().is_err(),
        "the cut upload must not succeed"
    );
    drop(tx);
    // The crash really left partial state behind.
    assert!(staging_files(dir.path()).iter().any(|f| f.contains('#')));
    assert_eq!(pending_rows(dir.path()), 1);

    // Restart: recovery removes it all before serving.
    let p = start_with(dir.path(), &["--admin-listen", "127.0.0.1:0"]).await;
    let base = format!("http://{}", p.addr);
    let admin = format!("http://{}", p.admin.unwrap());
    assert_eq!(
        staging_files(dir.path()),
        vec![kept_up["id"].as_str().unwrap().to_owned()]
    );
    assert_eq!(pending_rows(dir.path()), 0);
    let m = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&m, "staging_resources{state=\"pending\"}"),
        Some(0.0)
    );
    assert_eq!(metric(&m, "staging_resources{state=\"unused\"}"), Some(1.0));
    // The committed resource and its token survived.
    let got = client
        .get(format!(
            "{base}/api/v1/resources/{}/content",
            kept_up["id"].as_str().unwrap()
        ))
        .bearer_auth(kept_up["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), kept);
    drop(p);
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _p = start(dir.path()).await;
    let out = Command::new(env!("CARGO_BIN_EXE_staging-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another"));
}

#[tokio::test]
async fn exposed_listener_without_upload_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_staging-server"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-allow-anonymous-upload"));
}
