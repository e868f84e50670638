//! App isolation, tokens, and traversal attempts through directories, ids and block names.

use shuffle_proto::v1 as pb;
use shuffle_proto::v1::shuffle_admin_client::ShuffleAdminClient;
use spark_protocol::layout;

use crate::common::*;

#[tokio::test]
async fn tokens_isolate_applications() {
    let s = TestService::start(|_| {}).await;
    let mut c = s.client().await;
    let ta = register_app(&mut c, "app-a").await;
    let tb = register_app(&mut c, "app-b").await;
    let da = s.exec_dir("a/blockmgr");
    register_exec(&mut c, &ta, "app-a", "1", &[&da]).await;
    write_output(&mut c, &ta, "app-a", "1", 0, 1, &[vec![1, 2, 3]])
        .await
        .unwrap();

    // B's token cannot read, register into, remove from or unregister A.
    let e = fetch(&mut c, &tb, "app-a", "1", &[(0, 1, 0, 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let db = s.exec_dir("b/blockmgr");
    let e = c
        .register_executor(authed(
            pb::RegisterExecutorRequest {
                app_id: "app-a".into(),
                exec_id: "9".into(),
                local_dirs: vec![db.display().to_string()],
                sub_dirs_per_local_dir: 64,
                shuffle_manager: String::new(),
            },
            &tb,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = c
        .unregister_application(authed(
            pb::UnregisterApplicationRequest {
                app_id: "app-a".into(),
            },
            &tb,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = c
        .remove_shuffle(authed(
            pb::RemoveShuffleRequest {
                app_id: "app-a".into(),
                shuffle_id: 0,
            },
            &tb,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // No token at all.
    let e = c
        .heartbeat(pb::HeartbeatRequest {
            app_id: "app-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // Re-registering A without its token is refused; with it, the same token comes back.
    let e = c
        .register_application(pb::RegisterApplicationRequest {
            app_id: "app-a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let again = c
        .register_application(authed(
            pb::RegisterApplicationRequest {
                app_id: "app-a".into(),
                ..Default::default()
            },
            &ta,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.token, ta);
    // B cannot register a directory of A (its cleanup would delete A's data).
    let e = c
        .register_executor(authed(
            pb::RegisterExecutorRequest {
                app_id: "app-b".into(),
                exec_id: "1".into(),
                local_dirs: vec![da.display().to_string()],
                sub_dirs_per_local_dir: 64,
                shuffle_manager: String::new(),
            },
            &tb,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A still reads its data.
    assert_eq!(
        fetch(&mut c, &ta, "app-a", "1", &[(0, 1, 0, 1)])
            .await
            .unwrap()[0],
        vec![1, 2, 3]
    );
    s.shutdown().await;
}

#[tokio::test]
async fn traversal_attempts_are_refused() {
    let s = TestService::start(|_| {}).await;
    let mut c = s.client().await;
    let t = register_app(&mut c, "app-t").await;
    let outside = s.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"top secret").unwrap();
    let link = s.volume.join("escape");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let reg = |dirs: Vec<String>, exec: &str| pb::RegisterExecutorRequest {
        app_id: "app-t".into(),
        exec_id: exec.into(),
        local_dirs: dirs,
        sub_dirs_per_local_dir: 64,
        shuffle_manager: String::new(),
    };
    for dirs in [
        vec![outside.display().to_string()],
        vec![link.display().to_string()],
        vec![format!("{}/../outside", s.volume.display())],
        vec![s.volume.display().to_string()],
        vec!["/etc".into()],
        vec!["relative".into()],
        vec![],
    ] {
        let e = c
            .register_executor(authed(reg(dirs.clone(), "1"), &t))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{dirs:?}");
    }
    let ok = s.exec_dir("blockmgr-t");
    for exec in ["../1", "a/b", "..", ""] {
        let e = c
            .register_executor(authed(reg(vec![ok.display().to_string()], exec), &t))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{exec:?}");
    }
    for app in ["../app", "a/b", ".."] {
        let e = c
            .register_application(pb::RegisterApplicationRequest {
                app_id: app.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{app:?}");
    }
    register_exec(&mut c, &t, "app-t", "1", &[&ok]).await;
    // Negative ids are refused before any path is built.
    let e = fetch(&mut c, &t, "app-t", "1", &[(-1, 0, 0, 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A data file planted as a symlink to a file outside is not served.
    let dirs = [ok.clone()];
    let data = layout::placement(&dirs, 64, "shuffle_0_1_0.data");
    let index = layout::placement(&dirs, 64, "shuffle_0_1_0.index");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    std::fs::create_dir_all(index.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), &data).unwrap();
    std::fs::write(&index, layout::encode_index(&[10])).unwrap();
    let e = fetch(&mut c, &t, "app-t", "1", &[(0, 1, 0, 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // RemoveBlocks names that could escape are skipped; the outside file survives.
    let removed = c
        .remove_blocks(authed(
            pb::RemoveBlocksRequest {
                app_id: "app-t".into(),
                exec_id: "1".into(),
                block_ids: vec![
                    "../../outside/secret".into(),
                    "..".into(),
                    "".into(),
                    "a\\b".into(),
                ],
            },
            &t,
        ))
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(removed, 0);
    assert!(outside.join("secret").exists());
    s.shutdown().await;
}

#[tokio::test]
async fn remove_blocks_and_local_dirs_follow_spark() {
    let s = TestService::start(|_| {}).await;
    let mut c = s.client().await;
    let t = register_app(&mut c, "app-r").await;
    let d = s.exec_dir("blockmgr-r");
    register_exec(&mut c, &t, "app-r", "3", &[&d]).await;
    write_output(&mut c, &t, "app-r", "3", 1, 5, &[vec![9; 100]])
        .await
        .unwrap();
    write_output(&mut c, &t, "app-r", "3", 2, 6, &[vec![8; 100]])
        .await
        .unwrap();
    let dirs = c
        .get_local_dirs(authed(
            pb::GetLocalDirsRequest {
                app_id: "app-r".into(),
                exec_ids: vec!["3".into()],
            },
            &t,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dirs.dirs["3"].dirs, vec![d.display().to_string()]);
    let e = c
        .get_local_dirs(authed(
            pb::GetLocalDirsRequest {
                app_id: "app-r".into(),
                exec_ids: vec!["3".into(), "4".into()],
            },
            &t,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let removed = c
        .remove_blocks(authed(
            pb::RemoveBlocksRequest {
                app_id: "app-r".into(),
                exec_id: "3".into(),
                block_ids: vec![
                    "shuffle_1_5_0.index".into(),
                    "shuffle_1_5_0.data".into(),
                    "shuffle_1_99_0.data".into(),
                ],
            },
            &t,
        ))
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(removed, 2, "counts only files actually deleted");
    let e = fetch(&mut c, &t, "app-r", "3", &[(1, 5, 0, 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let n = c
        .remove_shuffle(authed(
            pb::RemoveShuffleRequest {
                app_id: "app-r".into(),
                shuffle_id: 2,
            },
            &t,
        ))
        .await
        .unwrap()
        .into_inner()
        .files_removed;
    assert_eq!(n, 2);
    s.shutdown().await;
}

#[tokio::test]
async fn admin_calls_need_an_admin_token_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-tokens");
    std::fs::write(&token_file, "admin-token-0123456789\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hashes = vec![{
        use sha2::Digest;
        let h: [u8; 32] = sha2::Sha256::digest(b"admin-token-0123456789").into();
        h
    }];
    let s = TestService::start_in(dir, |c| c.admin_token_hashes = hashes).await;
    let mut c = s.client().await;
    register_app(&mut c, "app-l").await;
    let mut admin = ShuffleAdminClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap();
    let e = admin
        .list_applications(pb::ListApplicationsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = admin
        .list_applications(authed(pb::ListApplicationsRequest {}, "nope"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let apps = admin
        .list_applications(authed(
            pb::ListApplicationsRequest {},
            "admin-token-0123456789",
        ))
        .await
        .unwrap()
        .into_inner()
        .applications;
    assert_eq!(apps.len(), 1);
    assert_eq!(
        (
            apps[0].app_id.as_str(),
            apps[0].liveness.as_str(),
            apps[0].namespace.as_str()
        ),
        ("app-l", "heartbeat", "spark")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn grpc_health_and_admin_http() {
    use tonic_health::pb::health_client::HealthClient;
    let s = TestService::start(|_| {}).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(channel);
    let st = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "shuffle.v1.Shuffle".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        st,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert!(
        reqwest_get(&format!("http://{}/healthz", s.admin))
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        reqwest_get(&format!("http://{}/readyz", s.admin))
            .await
            .starts_with("HTTP/1.1 200")
    );
    let mut c = s.client().await;
    register_app(&mut c, "app-h").await;
    let m = s.metrics().await;
    for name in [
        "shuffle_rpc_requests_total",
        "shuffle_volume_used_bytes",
        "shuffle_cleanup_backlog",
        "shuffle_open_streams",
        "shuffle_bytes_served_total",
    ] {
        assert!(m.contains(name), "{name}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn reflection_is_served_as_v1_and_v1alpha() {
    use tokio_stream::StreamExt as _;
    let s = TestService::start(|_| {}).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut c = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(l)) =
            resp.next().await.unwrap().unwrap().message_response
        else {
            panic!("no service list");
        };
        let names: Vec<_> = l.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"shuffle.v1.Shuffle"), "{names:?}");
    }
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut c = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(l)) =
            resp.next().await.unwrap().unwrap().message_response
        else {
            panic!("no service list");
        };
        assert!(
            l.service
                .iter()
                .any(|s| s.name == "shuffle.v1.ShuffleAdmin")
        );
    }
    s.shutdown().await;
}
