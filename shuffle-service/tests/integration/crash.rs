//! kill -9 of the real binary, restart, fetch: registrations survive (SPARK-27736).

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::*;

async fn start(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shuffle-service"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--spark-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .arg("--volume")
        .arg(format!("{}:hostPath", dir.join("vol").display()))
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let grpc = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("service exited before it was ready");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["fields"]["message"] == "shuffle service ready" {
            break v["fields"]["grpc"].as_str().unwrap().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, grpc)
}

#[tokio::test]
async fn registrations_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, grpc) = start(dir.path()).await;
    let mut c = shuffle_proto::v1::shuffle_client::ShuffleClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let token = register_app(&mut c, "app-k").await;
    let d = dir.path().join("vol/spark-1/executor-1/blockmgr-1");
    std::fs::create_dir_all(&d).unwrap();
    register_exec(&mut c, &token, "app-k", "1", &[&d]).await;
    let parts = vec![random_bytes(1000, 1), random_bytes(2000, 2)];
    write_output(&mut c, &token, "app-k", "1", 0, 1, &parts)
        .await
        .unwrap();
    child.kill().await.unwrap();

    let (_child, grpc) = start(dir.path()).await;
    let mut c = shuffle_proto::v1::shuffle_client::ShuffleClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let got = fetch(&mut c, &token, "app-k", "1", &[(0, 1, 1, 2)])
        .await
        .unwrap();
    assert!(got[0] == parts[1]);
}
