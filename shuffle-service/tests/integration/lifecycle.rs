//! Cleanup on unregister and on heartbeat timeout (paused time), a full volume.

use std::time::Duration;

use shuffle_proto::v1 as pb;
use shuffle_service::Core;
use shuffle_service::config::Config;
use shuffle_service::core::{VolumeKind, VolumeSpec};

use crate::common::*;
use spark_protocol::ids::AppId;

async fn wait_cleaned(s: &TestService) {
    loop {
        if metric(&s.metrics().await, "shuffle_cleanup_backlog") == Some(0.0) {
            return;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn unregister_deletes_every_directory_of_the_app_only() {
    let s = TestService::start(|_| {}).await;
    let mut c = s.client().await;
    let ta = register_app(&mut c, "app-u").await;
    let tb = register_app(&mut c, "app-keep").await;
    let d1 = s.exec_dir("u/exec-1/blockmgr");
    let d2 = s.exec_dir("u/exec-2/blockmgr");
    let keep = s.exec_dir("keep/blockmgr");
    register_exec(&mut c, &ta, "app-u", "1", &[&d1]).await;
    register_exec(&mut c, &ta, "app-u", "2", &[&d2]).await;
    register_exec(&mut c, &tb, "app-keep", "1", &[&keep]).await;
    for m in 0..20 {
        write_output(
            &mut c,
            &ta,
            "app-u",
            "1",
            0,
            m,
            &[vec![1; 1000], vec![2; 10]],
        )
        .await
        .unwrap();
        write_output(&mut c, &ta, "app-u", "2", 0, 100 + m, &[vec![1; 1000]])
            .await
            .unwrap();
    }
    write_output(&mut c, &tb, "app-keep", "1", 0, 1, &[vec![7; 10]])
        .await
        .unwrap();
    let r = c
        .unregister_application(authed(
            pb::UnregisterApplicationRequest {
                app_id: "app-u".into(),
            },
            &ta,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.directories_scheduled, 2);
    wait_cleaned(&s).await;
    assert!(!d1.exists() && !d2.exists());
    assert_eq!(
        fetch(&mut c, &tb, "app-keep", "1", &[(0, 1, 0, 1)])
            .await
            .unwrap()[0],
        vec![7; 10]
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "shuffle_applications_removed_total{reason=\"unregistered\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, "shuffle_registered_applications"), Some(1.0));
    assert!(metric(&m, "shuffle_cleanup_seconds_count").unwrap() >= 1.0);
    // The token of a removed app is worthless now.
    let e = c
        .heartbeat(authed(
            pb::HeartbeatRequest {
                app_id: "app-u".into(),
            },
            &ta,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    s.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timeout_and_idle_ttl_remove_apps() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path());
    config.idle_ttl = Duration::from_secs(3600);
    let core = Core::open(&config.core(), prometheus::Registry::new())
        .await
        .unwrap();
    let vol = config.volumes[0].path.canonicalize().unwrap();
    let dir_a = vol.join("a");
    let dir_b = vol.join("b");
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let (a, b): (AppId, AppId) = (
        "driver-app".parse().unwrap(),
        "plain-spark-app".parse().unwrap(),
    );
    core.register_app(
        &a,
        Some(Duration::from_secs(30)),
        String::new(),
        String::new(),
        &Default::default(),
    )
    .await
    .unwrap();
    core.register_executor(
        shuffle_service::core::ExecutorRegistration {
            app: a.clone(),
            exec: "1".parse().unwrap(),
            local_dirs: vec![dir_a.display().to_string()],
            sub_dirs: 64,
            shuffle_manager: String::new(),
        },
        shuffle_service::core::Registrant::Grpc,
    )
    .await
    .unwrap();
    // An application known only from its executors (plain Spark, no driver signal).
    core.register_executor(
        shuffle_service::core::ExecutorRegistration {
            app: b.clone(),
            exec: "1".parse().unwrap(),
            local_dirs: vec![dir_b.display().to_string()],
            sub_dirs: 64,
            shuffle_manager: String::new(),
        },
        shuffle_service::core::Registrant::Spark(None),
    )
    .await
    .unwrap();

    tokio::time::advance(Duration::from_secs(20)).await;
    core.heartbeat(&a).unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(core.sweep().await.lapsed, 0, "heartbeat kept it alive");
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(core.sweep().await.lapsed, 1);
    assert_eq!(core.list_apps().len(), 1);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(core.sweep().await.lapsed, 1);
    assert!(core.list_apps().is_empty());
    core.shutdown().await;
    assert!(!dir_a.exists() && !dir_b.exists());
    let m = core.metrics();
    assert_eq!(
        m.apps_removed
            .with_label_values(&["heartbeat_timeout"])
            .get(),
        1
    );
    assert_eq!(m.apps_removed.with_label_values(&["idle_ttl"]).get(), 1);
}

#[tokio::test]
async fn apps_whose_directories_vanished_are_dropped() {
    let s = TestService::start(|_| {}).await;
    let d = s.exec_dir("gone/blockmgr");
    s.core
        .register_executor(
            shuffle_service::core::ExecutorRegistration {
                app: "app-v".parse().unwrap(),
                exec: "1".parse().unwrap(),
                local_dirs: vec![d.display().to_string()],
                sub_dirs: 64,
                shuffle_manager: String::new(),
            },
            shuffle_service::core::Registrant::Spark(None),
        )
        .await
        .unwrap();
    std::fs::remove_dir_all(s.volume.join("gone")).unwrap();
    assert_eq!(s.core.sweep().await.vanished, 1);
    assert!(s.core.list_apps().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn a_full_volume_refuses_writes_and_keeps_serving() {
    let s = TestService::start(|c| {
        let p = c.volumes[0].path.clone();
        c.volumes = vec![VolumeSpec {
            path: p,
            kind: VolumeKind::Pvc,
            capacity: Some(1 << 20),
        }];
    })
    .await;
    let mut c = s.client().await;
    let t = register_app(&mut c, "app-f").await;
    let d = s.exec_dir("blockmgr-f");
    register_exec(&mut c, &t, "app-f", "1", &[&d]).await;
    let first = vec![random_bytes(600_000, 1)];
    write_output(&mut c, &t, "app-f", "1", 0, 1, &first)
        .await
        .unwrap();
    let e = write_output(&mut c, &t, "app-f", "1", 0, 2, &[random_bytes(600_000, 2)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    // No partial or temporary file of the refused write; the first output is intact.
    let leftovers: Vec<_> = walk(&d)
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().contains("shuffle_0_2_") || p.to_string_lossy().contains(".tmp-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        fetch(&mut c, &t, "app-f", "1", &[(0, 1, 0, 1)])
            .await
            .unwrap()[0]
            == first[0]
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "shuffle_volume_full{kind=\"pvc\",volume=\"0\"}"),
        Some(1.0)
    );
    assert!(
        metric(
            &m,
            "shuffle_rpc_requests_total{code=\"ResourceExhausted\",method=\"WriteMapOutput\"}"
        )
        .is_some()
    );
    s.shutdown().await;
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![d.to_owned()];
    while let Some(x) = stack.pop() {
        for e in std::fs::read_dir(&x).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path())
            } else {
                out.push(e.path())
            }
        }
    }
    out
}
