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

#[tokio::test]
async fn spark_registrations_survive_kill_9() {
    use spark_protocol::client::Client;
    use spark_protocol::message::{BlockTransferMessage as Btm, ExecutorShuffleInfo};
    let dir = tempfile::tempdir().unwrap();
    let (mut child, ready) = spawn_service(dir.path(), &[]).await;
    let d = dir.path().join("vol/spark-1/executor-1/blockmgr-1");
    std::fs::create_dir_all(&d).unwrap();
    let mut c = Client::connect(&ready.spark).await.unwrap();
    let r = c
        .call(&Btm::RegisterExecutor {
            app_id: "app-spark-k".into(),
            exec_id: "3".into(),
            info: ExecutorShuffleInfo {
                local_dirs: vec![d.display().to_string()],
                sub_dirs_per_local_dir: 64,
                shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
            },
        })
        .await
        .unwrap();
    assert_eq!(r, Ok(None));
    child.kill().await.unwrap();

    // Spark executors register once: after a restart the registration must still be there.
    let (_child, ready) = spawn_service(dir.path(), &[]).await;
    let mut c = Client::connect(&ready.spark).await.unwrap();
    let r = c
        .call(&Btm::GetLocalDirsForExecutors {
            app_id: "app-spark-k".into(),
            exec_ids: vec!["3".into()],
        })
        .await
        .unwrap();
    assert_eq!(
        r,
        Ok(Some(Btm::LocalDirsForExecutors {
            exec_ids: vec!["3".into()],
            num_dirs_per_exec: vec![1],
            all_dirs: vec![d.canonicalize().unwrap().display().to_string()],
        }))
    );
}
