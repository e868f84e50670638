//! The isolation invariant over both protocols, in both orders: nothing reads, removes or
//! unregisters an application's data without its credential (gRPC token, Spark secret) or
//! the admin token.

use std::path::Path;

use shuffle_proto::v1 as pb;
use shuffle_service::ids::{MapId, ShuffleId};
use shuffle_service::layout;
use shuffle_service::spark::client::Client;
use shuffle_service::spark::message::{BlockTransferMessage as Btm, ExecutorShuffleInfo};

use crate::common::*;

const APP: &str = "app-20261201000000-0003";
const SECRET: &[u8] = b"c-secret";

fn register_msg(exec: &str, dir: &Path) -> Btm {
    Btm::RegisterExecutor {
        app_id: APP.into(),
        exec_id: exec.into(),
        info: ExecutorShuffleInfo {
            local_dirs: vec![dir.display().to_string()],
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        },
    }
}

fn write_spark_output(dir: &Path, bytes: &[u8]) {
    let (s, m) = (ShuffleId::new(0).unwrap(), MapId::new(1).unwrap());
    for (name, data) in [
        (layout::data_file(s, m), bytes.to_vec()),
        (
            layout::index_file(s, m),
            layout::encode_index(&[bytes.len() as u64]),
        ),
    ] {
        let p = layout::placement(&[dir.to_path_buf()], 64, &name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

fn with_secret<T>(mut r: tonic::Request<T>, secret: &[u8]) -> tonic::Request<T> {
    r.metadata_mut().insert(
        shuffle_proto::SPARK_APP_SECRET,
        std::str::from_utf8(secret).unwrap().parse().unwrap(),
    );
    r
}

fn register_req() -> pb::RegisterApplicationRequest {
    pb::RegisterApplicationRequest {
        app_id: APP.into(),
        ..Default::default()
    }
}

/// Spark first: C's executors register over Spark's protocol with C's own secret; a gRPC
/// client without a credential cannot claim C, read it or delete it.
#[tokio::test]
async fn spark_first_then_grpc_needs_ownership() {
    let admin_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(admin_file.path(), "admin-token\n").unwrap();
    std::fs::set_permissions(
        admin_file.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let svc = TestService::start(|c| {
        let d = c.state_dir.parent().unwrap().join("secrets");
        std::fs::create_dir_all(&d).unwrap();
        write_secret(&d.join(APP), SECRET);
        c.spark_auth_secret_dir = Some(d);
        c.admin_token_hashes = vec![sha(b"admin-token")];
    })
    .await;
    let dir = svc.exec_dir("c/blockmgr");
    write_spark_output(&dir, b"c's rows");
    let mut spark = Client::connect(svc.spark).await.unwrap();
    spark.authenticate(APP, SECRET).await.unwrap().unwrap();
    assert_eq!(
        spark.call(&register_msg("1", &dir)).await.unwrap(),
        Ok(None)
    );

    let mut c = svc.client().await;
    // No credential, a made-up token, a wrong secret: refused, nothing handed out.
    for req in [
        tonic::Request::new(register_req()),
        authed(register_req(), "made-up"),
        with_secret(tonic::Request::new(register_req()), b"wrong"),
    ] {
        let e = c.register_application(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    }
    let e = fetch(&mut c, "made-up", APP, "1", &[(0, 1, 0, 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = c
        .unregister_application(authed(
            pb::UnregisterApplicationRequest { app_id: APP.into() },
            "made-up",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(dir.exists());
    let m = svc.metrics().await;
    assert!(
        metric(&m, "shuffle_ownership_refusals_total{protocol=\"grpc\"}").unwrap() >= 5.0,
        "{m}"
    );

    // The application's own secret proves ownership: a token comes back and reads C's data.
    let token = c
        .register_application(with_secret(tonic::Request::new(register_req()), SECRET))
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(
        fetch(&mut c, &token, APP, "1", &[(0, 1, 0, 1)])
            .await
            .unwrap()[0],
        b"c's rows"
    );
    // The admin token reads it too, without any registration.
    assert_eq!(
        fetch(&mut c, "admin-token", APP, "1", &[(0, 1, 0, 1)])
            .await
            .unwrap()[0],
        b"c's rows"
    );
    svc.shutdown().await;
}

/// Spark first, authentication off: the data is as open as Spark's own service over Spark's
/// protocol, but the gRPC API hands out no token for it without the admin token.
#[tokio::test]
async fn spark_first_without_authentication_needs_the_admin_token() {
    let svc = TestService::start(|_| {}).await;
    let dir = svc.exec_dir("c/blockmgr");
    let mut spark = Client::connect(svc.spark).await.unwrap();
    assert_eq!(
        spark.call(&register_msg("1", &dir)).await.unwrap(),
        Ok(None)
    );
    let mut c = svc.client().await;
    let e = c.register_application(register_req()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("admin token"), "{e:?}");
    svc.shutdown().await;
}

/// gRPC first: C holds a token; an unauthenticated Spark connection cannot register into C,
/// read C's blocks, list its directories or remove its blocks.
#[tokio::test]
async fn grpc_first_then_unauthenticated_spark_is_refused() {
    let svc = TestService::start(|_| {}).await;
    let mut c = svc.client().await;
    let token = register_app(&mut c, APP).await;
    let dir = svc.exec_dir("c/blockmgr");
    register_exec(&mut c, &token, APP, "1", &[&dir]).await;
    write_output(&mut c, &token, APP, "1", 0, 1, &[b"c's rows".to_vec()])
        .await
        .unwrap();

    let mut spark = Client::connect(svc.spark).await.unwrap();
    let other = svc.exec_dir("attacker/blockmgr");
    let refused = |r: Result<Option<Btm>, String>| {
        let e = r.unwrap_err();
        assert!(e.contains("needs authentication"), "{e}");
    };
    refused(spark.call(&register_msg("2", &other)).await.unwrap());
    refused(
        spark
            .call(&Btm::FetchShuffleBlocks {
                app_id: APP.into(),
                exec_id: "1".into(),
                shuffle_id: 0,
                map_ids: vec![1],
                reduce_ids: vec![vec![0]],
                batch_fetch_enabled: false,
            })
            .await
            .unwrap(),
    );
    refused(
        spark
            .call(&Btm::OpenBlocks {
                app_id: APP.into(),
                exec_id: "1".into(),
                block_ids: vec!["shuffle_0_1_0".into()],
            })
            .await
            .unwrap(),
    );
    refused(
        spark
            .call(&Btm::GetLocalDirsForExecutors {
                app_id: APP.into(),
                exec_ids: vec!["1".into()],
            })
            .await
            .unwrap(),
    );
    refused(
        spark
            .call(&Btm::RemoveBlocks {
                app_id: APP.into(),
                exec_id: "1".into(),
                block_ids: vec!["shuffle_0_1_0.data".into()],
            })
            .await
            .unwrap(),
    );
    assert_eq!(
        fetch(&mut c, &token, APP, "1", &[(0, 1, 0, 1)])
            .await
            .unwrap()[0],
        b"c's rows"
    );
    let m = svc.metrics().await;
    assert_eq!(
        metric(&m, "shuffle_ownership_refusals_total{protocol=\"spark\"}"),
        Some(5.0)
    );
    svc.shutdown().await;
}

/// gRPC first with Spark authentication on: a Spark connection authenticated with C's own
/// secret is C, and is served; another application's secret is not.
#[tokio::test]
async fn grpc_first_then_spark_with_the_apps_secret() {
    let svc = TestService::start(|c| {
        let d = c.state_dir.parent().unwrap().join("secrets");
        std::fs::create_dir_all(&d).unwrap();
        write_secret(&d.join(APP), SECRET);
        write_secret(&d.join("app-other"), b"other-secret");
        c.spark_auth_secret_dir = Some(d);
    })
    .await;
    let mut c = svc.client().await;
    let token = register_app(&mut c, APP).await;
    let dir = svc.exec_dir("c/blockmgr");
    register_exec(&mut c, &token, APP, "1", &[&dir]).await;
    write_output(&mut c, &token, APP, "1", 0, 1, &[b"c's rows".to_vec()])
        .await
        .unwrap();
    let mut other = Client::connect(svc.spark).await.unwrap();
    other
        .authenticate("app-other", b"other-secret")
        .await
        .unwrap()
        .unwrap();
    let e = other
        .call(&Btm::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["1".into()],
        })
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.contains("not authorized"), "{e}");
    let mut own = Client::connect(svc.spark).await.unwrap();
    own.authenticate(APP, SECRET).await.unwrap().unwrap();
    assert!(matches!(
        own.call(&Btm::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["1".into()],
        })
        .await
        .unwrap(),
        Ok(Some(Btm::LocalDirsForExecutors { .. }))
    ));
    svc.shutdown().await;
}

fn sha(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}
