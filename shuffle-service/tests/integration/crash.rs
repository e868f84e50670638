//! kill -9 of the real binary, restart, fetch: registrations survive (SPARK-27736).

use crate::common::*;

#[tokio::test]
async fn registrations_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, ready) = spawn_service(dir.path(), &[]).await;
    let grpc = ready.grpc;
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

    let (_child, ready) = spawn_service(dir.path(), &[]).await;
    let grpc = ready.grpc;
    let mut c = shuffle_proto::v1::shuffle_client::ShuffleClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let got = fetch(&mut c, &token, "app-k", "1", &[(0, 1, 1, 2)])
        .await
        .unwrap();
    assert!(got[0] == parts[1]);
}
