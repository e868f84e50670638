//! The isolation invariant over both protocols, in both orders: nothing reads, removes or
//! unregisters an application's data without its credential (gRPC token, Spark secret) or
//! the admin token.

use std::path::Path;

use shuffle_proto::v1 as pb;
use spark_protocol::client::Client;
use spark_protocol::ids::{MapId, ShuffleId};
use spark_protocol::layout;
use spark_protocol::message::{BlockTransferMessage as Btm, ExecutorShuffleInfo};

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

fn register_req() -> pb::RegisterApplicationRequest {
    pb::RegisterApplicationRequest {
        app_id: APP.into(),
        ..Default::default()
    }
}

/// Spark first: C's executors register over Spark's protocol with C's own secret; no gRPC
/// client gets a token for C, whatever it presents (one application, one protocol), nor
/// reads or deletes it; the admin token still reads it without any registration.
#[tokio::test]
async fn spark_first_then_grpc_registration_is_refused_whatever_is_presented() {
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
    // No credential, a made-up token, the admin token: refused, nothing handed out.
    for req in [
        tonic::Request::new(register_req()),
        authed(register_req(), "made-up"),
        authed(register_req(), "admin-token"),
    ] {
        let e = c.register_application(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("Spark's protocol"), "{e:?}");
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
    assert_eq!(
        metric(
            &m,
            "shuffle_authority_refusals_total{protocol=\"grpc\",reason=\"spark_application\"}"
        ),
        Some(3.0),
        "{m}"
    );
    assert!(
        metric(&m, "shuffle_ownership_refusals_total{protocol=\"grpc\"}").unwrap() >= 2.0,
        "{m}"
    );
    // The admin token reads it, without any registration; C's executors still work.
    assert_eq!(
        fetch(&mut c, "admin-token", APP, "1", &[(0, 1, 0, 1)])
            .await
            .unwrap()[0],
        b"c's rows"
    );
    assert_eq!(
        spark.call(&register_msg("2", &dir)).await.unwrap(),
        Ok(None)
    );
    svc.shutdown().await;
}

/// Spark first, authentication off: the data is as open as Spark's own service over Spark's
/// protocol, but the gRPC API hands out no token for it.
#[tokio::test]
async fn spark_first_without_authentication_refuses_grpc_registration() {
    let svc = TestService::start(|_| {}).await;
    let dir = svc.exec_dir("c/blockmgr");
    let mut spark = Client::connect(svc.spark).await.unwrap();
    assert_eq!(
        spark.call(&register_msg("1", &dir)).await.unwrap(),
        Ok(None)
    );
    let mut c = svc.client().await;
    let e = c.register_application(register_req()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    // A restart keeps the rule: the registration is in the state directory.
    let dir = svc.shutdown().await;
    let svc = TestService::start_in(dir, |_| {}).await;
    let mut c = svc.client().await;
    let e = c.register_application(register_req()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
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
        assert!(e.contains("registered through the gRPC API"), "{e}");
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
        metric(
            &m,
            "shuffle_authority_refusals_total{protocol=\"spark\",reason=\"grpc_application\"}"
        ),
        Some(5.0),
        "{m}"
    );
    svc.shutdown().await;
}

/// gRPC first with Spark authentication on: whoever registers an id over gRPC first holds
/// it over gRPC alone. Spark's executors of that id, authenticating with the operator's shared
/// secret (network crypto or SASL), are refused and never join the gRPC registrant's
/// application; after a restart too.
#[tokio::test]
async fn grpc_first_then_spark_with_the_shared_secret_is_refused() {
    const SHARED: &str = "operator-shared";
    let svc = TestService::start(|c| shared_spark_secret(c, SHARED)).await;
    let mut c = svc.client().await;
    let token = register_app(&mut c, APP).await;
    let refused = |r: Result<(), String>| {
        let e = r.unwrap_err();
        assert!(e.contains("registered through the gRPC API"), "{e}");
    };
    let mut sasl = Client::connect(svc.spark).await.unwrap();
    refused(sasl.authenticate(APP, SHARED.as_bytes()).await.unwrap());
    let mut crypto = Client::connect(svc.spark).await.unwrap();
    refused(
        crypto
            .authenticate_crypto(
                APP,
                SHARED.as_bytes(),
                spark_protocol::crypto::Cipher::Ctr,
                spark_protocol::crypto::EngineVersion::V1,
            )
            .await
            .unwrap(),
    );
    // Another application's executors still authenticate with the shared secret, but may
    // not reach into the gRPC one.
    let mut other = Client::connect(svc.spark).await.unwrap();
    other
        .authenticate("app-other", SHARED.as_bytes())
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
    let m = svc.metrics().await;
    assert_eq!(
        metric(
            &m,
            "shuffle_authority_refusals_total{protocol=\"spark\",reason=\"grpc_application\"}"
        ),
        Some(2.0),
        "{m}"
    );
    // Nothing of Spark's joined the gRPC registrant's application.
    let dirs = c
        .get_local_dirs(authed(
            pb::GetLocalDirsRequest {
                app_id: APP.into(),
                exec_ids: vec!["1".into()],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(dirs.code(), tonic::Code::NotFound);
    // A restart keeps the rule: the token is in the state directory.
    let dir = svc.shutdown().await;
    let svc = TestService::start_in(dir, |c| shared_spark_secret(c, SHARED)).await;
    let mut sasl = Client::connect(svc.spark).await.unwrap();
    refused(sasl.authenticate(APP, SHARED.as_bytes()).await.unwrap());
    svc.shutdown().await;
}

/// An id the operator gave a secret file of its own is a Spark application: nobody
/// registers it over gRPC, even before its executors come.
#[tokio::test]
async fn an_id_with_its_own_secret_file_is_never_registered_over_grpc() {
    let svc = TestService::start(|c| per_app_spark_secret(c, APP, "c-secret")).await;
    let mut c = svc.client().await;
    let e = c.register_application(register_req()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    // Its executors then authenticate and register as usual.
    let dir = svc.exec_dir("c/blockmgr");
    let mut spark = Client::connect(svc.spark).await.unwrap();
    spark.authenticate(APP, SECRET).await.unwrap().unwrap();
    assert_eq!(
        spark.call(&register_msg("1", &dir)).await.unwrap(),
        Ok(None)
    );
    svc.shutdown().await;
}

fn sha(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}
