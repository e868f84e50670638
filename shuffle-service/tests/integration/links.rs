//! Symbolic links planted by an executor in its own directories (after registration too) never
//! lead an operation into another application's data; leftovers of interrupted writes are
//! removed; a second service on the same directories and a missing persistent volume are
//! refused at start.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use shuffle_proto::v1 as pb;
use shuffle_service::Core;
use shuffle_service::config::Config;
use shuffle_service::core::{VolumeKind, VolumeSpec};
use spark_protocol::layout;

use crate::common::*;

/// Two applications, each with one executor directory and one map output (shuffle 0, map 1)
/// in its `<xx>` subdirectory; returns (token a, token b, dir a, dir b).
async fn two_apps(s: &TestService) -> (String, String, PathBuf, PathBuf) {
    let mut c = s.client().await;
    let ta = register_app(&mut c, "app-a").await;
    let tb = register_app(&mut c, "app-b").await;
    let (da, db) = (s.exec_dir("a/blockmgr"), s.exec_dir("b/blockmgr"));
    register_exec(&mut c, &ta, "app-a", "1", &[&da]).await;
    register_exec(&mut c, &tb, "app-b", "1", &[&db]).await;
    for (t, app) in [(&ta, "app-a"), (&tb, "app-b")] {
        write_output(&mut c, t, app, "1", 0, 1, &[vec![7; 10]])
            .await
            .unwrap();
    }
    (ta, tb, da, db)
}

fn placed(dir: &Path, name: &str) -> PathBuf {
    layout::placement(&[dir.to_path_buf()], 64, name)
}

/// Replaces `from` (a directory) by a link to `to`.
fn plant(from: &Path, to: &Path) {
    std::fs::remove_dir_all(from).unwrap();
    symlink(to, from).unwrap();
}

async fn wait_cleaned(s: &TestService) {
    while metric(&s.metrics().await, "shuffle_cleanup_backlog") != Some(0.0) {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn remove_shuffle_does_not_follow_a_linked_subdirectory() {
    let s = TestService::start(|_| {}).await;
    let (ta, _, da, db) = two_apps(&s).await;
    let b_data = placed(&db, "shuffle_0_1_0.data");
    let b_sub = b_data.parent().unwrap();
    // A's subdirectory with the same name becomes a link to B's.
    let a_sub = da.join(b_sub.file_name().unwrap());
    std::fs::create_dir_all(&a_sub).unwrap();
    plant(&a_sub, b_sub);
    let mut c = s.client().await;
    c.remove_shuffle(authed(
        pb::RemoveShuffleRequest {
            app_id: "app-a".into(),
            shuffle_id: 0,
        },
        &ta,
    ))
    .await
    .unwrap();
    assert!(b_data.exists(), "B's data survives A's RemoveShuffle");
    assert!(placed(&db, "shuffle_0_1_0.index").exists());
    s.shutdown().await;
}

#[tokio::test]
async fn cleanup_of_a_directory_replaced_by_a_link_spares_its_target() {
    let s = TestService::start(|_| {}).await;
    let (ta, tb, da, db) = two_apps(&s).await;
    // After registration, A's registered directory becomes a link to B's.
    plant(&da, &db);
    let mut c = s.client().await;
    c.unregister_application(authed(
        pb::UnregisterApplicationRequest {
            app_id: "app-a".into(),
        },
        &ta,
    ))
    .await
    .unwrap();
    wait_cleaned(&s).await;
    assert!(std::fs::symlink_metadata(&da).is_err(), "the link is gone");
    assert!(placed(&db, "shuffle_0_1_0.data").exists());
    assert_eq!(
        fetch(&mut c, &tb, "app-b", "1", &[(0, 1, 0, 1)])
            .await
            .unwrap()[0],
        vec![7; 10]
    );
    s.shutdown().await;
}

#[tokio::test]
async fn cleanup_removes_links_inside_not_their_targets() {
    let s = TestService::start(|_| {}).await;
    let (ta, _, da, db) = two_apps(&s).await;
    let b_data = placed(&db, "shuffle_0_1_0.data");
    // Links to B's directory and to one of B's files, planted inside A's tree.
    symlink(&db, da.join("to-b")).unwrap();
    symlink(&b_data, da.join("to-b-file")).unwrap();
    let mut c = s.client().await;
    c.unregister_application(authed(
        pb::UnregisterApplicationRequest {
            app_id: "app-a".into(),
        },
        &ta,
    ))
    .await
    .unwrap();
    wait_cleaned(&s).await;
    assert!(!da.exists());
    assert!(b_data.exists());
    assert!(placed(&db, "shuffle_0_1_0.index").exists());
    s.shutdown().await;
}

#[tokio::test]
async fn writes_never_cross_a_link() {
    let s = TestService::start(|_| {}).await;
    let (ta, _, da, db) = two_apps(&s).await;
    // A's subdirectories for shuffle 0 map 2 become links into B's directory.
    for name in ["shuffle_0_2_0.data", "shuffle_0_2_0.index"] {
        let sub = placed(&da, name).parent().unwrap().to_path_buf();
        if sub.is_dir() {
            std::fs::remove_dir_all(&sub).unwrap();
        }
        if std::fs::symlink_metadata(&sub).is_err() {
            let target = db.join(sub.file_name().unwrap());
            std::fs::create_dir_all(&target).unwrap();
            symlink(&target, &sub).unwrap();
        }
    }
    let mut c = s.client().await;
    let e = write_output(&mut c, &ta, "app-a", "1", 0, 2, &[vec![1; 10]])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    for name in ["shuffle_0_2_0.data", "shuffle_0_2_0.index"] {
        let target = placed(&db, name);
        assert!(
            !target.exists(),
            "{} was written through a link",
            target.display()
        );
    }
    let leftovers: Vec<_> = walk(&db)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    s.shutdown().await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn leftovers_of_interrupted_writes_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestService::start_in(dir, |_| {}).await;
    let (_, _, da, _) = two_apps(&s).await;
    let data = placed(&da, "shuffle_0_9_0.data");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    let ours = data.with_file_name("shuffle_0_9_0.data.tmp-0123456789abcdef");
    let ours_index = placed(&da, "shuffle_0_9_0.index")
        .with_file_name("shuffle_0_9_0.index.tmp-fedcba9876543210");
    std::fs::create_dir_all(ours_index.parent().unwrap()).unwrap();
    // Spark's own temporary file (its executor may still be writing it) is not ours.
    let sparks = data.with_file_name("shuffle_0_9_0.data.2c1b6f0e-8f7a-4c55-b1a4-0e8d8c2b9a11");
    for p in [&ours, &ours_index, &sparks] {
        std::fs::write(p, b"partial").unwrap();
    }
    // A restart (the state of a kill -9: nothing in flight) removes ours only.
    let dir = s.shutdown().await;
    let s = TestService::start_in(dir, |_| {}).await;
    while metric(&s.metrics().await, "shuffle_leftover_files_removed_total") != Some(2.0) {
        tokio::task::yield_now().await;
    }
    assert!(!ours.exists() && !ours_index.exists());
    assert!(sparks.exists());
    // The sweep does the same while the service runs.
    let again = data.with_file_name("shuffle_0_9_0.data.tmp-00000000000000aa");
    std::fs::write(&again, b"partial").unwrap();
    assert_eq!(s.core.remove_leftovers().await, 1);
    assert!(!again.exists());
    s.shutdown().await;
}

#[tokio::test]
async fn a_second_service_on_the_same_directories_is_refused() {
    let s = TestService::start(|_| {}).await;
    let mut config = Config::for_data_dir(s.dir.path());
    config.volumes = vec![VolumeSpec {
        path: s.volume.clone(),
        kind: VolumeKind::HostPath,
        capacity: None,
    }];
    let e = Core::open(&config.core(), prometheus::Registry::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("in use by another"), "{e}");
    // Another state directory over the same volume is refused too.
    config.state_dir = s.dir.path().join("other-state");
    let e = Core::open(&config.core(), prometheus::Registry::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("in use by another"), "{e}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_missing_persistent_volume_is_an_error_an_empty_dir_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in [VolumeKind::HostPath, VolumeKind::Pvc, VolumeKind::NvmeRaid0] {
        let mut config = Config::for_data_dir(tmp.path());
        config.volumes = vec![VolumeSpec {
            path: tmp.path().join("typo"),
            kind,
            capacity: None,
        }];
        let e = Core::open(&config.core(), prometheus::Registry::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!tmp.path().join("typo").exists());
    }
    let mut config = Config::for_data_dir(tmp.path());
    config.volumes = vec![VolumeSpec {
        path: tmp.path().join("scratch"),
        kind: VolumeKind::EmptyDir,
        capacity: None,
    }];
    let core = Core::open(&config.core(), prometheus::Registry::new()).await;
    assert!(core.is_ok());
    assert!(tmp.path().join("scratch").is_dir());
}

#[tokio::test]
async fn volume_used_bytes_reports_what_the_volume_holds() {
    let s = TestService::start(|_| {}).await;
    let (_, _, _, _) = two_apps(&s).await;
    s.core.rescan_usage().await;
    let m = s.metrics().await;
    let used = metric(
        &m,
        "shuffle_volume_used_bytes{kind=\"hostPath\",volume=\"0\"}",
    )
    .unwrap();
    // Two map outputs of 10 data bytes and 16 index bytes each.
    assert_eq!(used, 52.0, "{m}");
    let fs = metric(
        &m,
        "shuffle_volume_filesystem_used_bytes{kind=\"hostPath\",volume=\"0\"}",
    )
    .unwrap();
    assert!(fs >= used);
    s.shutdown().await;
}
