//! Spark's protocol against the in-process service: executors registering, every fetch path
//! (chunks, batch, old protocol, streams, RDD blocks), removal counts, local dirs, corruption
//! diagnosis, SASL, and what hostile or broken clients get.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use spark_protocol::checksum::{self, Algorithm};
use spark_protocol::client::Client;
use spark_protocol::frame::{Message, StreamChunkId};
use spark_protocol::ids::{MapId, ShuffleId};
use spark_protocol::layout;
use spark_protocol::message::{BlockTransferMessage as Btm, Cause, ExecutorShuffleInfo};

use crate::common::{TestService, random_bytes};

pub(crate) const APP: &str = "app-20261121000000-0001";

pub(crate) fn register_msg(app: &str, exec: &str, dirs: &[&Path]) -> Btm {
    Btm::RegisterExecutor {
        app_id: app.into(),
        exec_id: exec.into(),
        info: ExecutorShuffleInfo {
            local_dirs: dirs.iter().map(|d| d.display().to_string()).collect(),
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        },
    }
}

/// Writes a map output as a Spark executor does: data, index and ADLER32 checksums placed by
/// Spark's formula.
pub(crate) fn write_map(dirs: &[PathBuf], shuffle: i32, map: i64, parts: &[Vec<u8>]) {
    let (s, m) = (ShuffleId::new(shuffle).unwrap(), MapId::new(map).unwrap());
    let place = |name: &str| {
        let p = layout::placement(dirs, 64, name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    };
    std::fs::write(place(&layout::data_file(s, m)), parts.concat()).unwrap();
    let lens: Vec<u64> = parts.iter().map(|p| p.len() as u64).collect();
    std::fs::write(
        place(&layout::index_file(s, m)),
        layout::encode_index(&lens),
    )
    .unwrap();
    let sums: Vec<u8> = parts
        .iter()
        .flat_map(|p| {
            checksum::checksum(Algorithm::Adler32, &mut &p[..])
                .unwrap()
                .to_be_bytes()
        })
        .collect();
    std::fs::write(place(&layout::checksum_file(s, m, "ADLER32")), sums).unwrap();
}

async fn registered(svc: &TestService, exec: &str) -> (Client, Vec<PathBuf>) {
    let dirs = vec![
        svc.exec_dir(&format!("blockmgr-{exec}-a")),
        svc.exec_dir(&format!("blockmgr-{exec}-b")),
    ];
    let mut c = Client::connect(svc.spark).await.unwrap();
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    assert_eq!(
        c.call(&register_msg(APP, exec, &refs)).await.unwrap(),
        Ok(None)
    );
    (c, dirs)
}

pub(crate) async fn open_stream(c: &mut Client, m: &Btm) -> (i64, i32) {
    match c.call(m).await.unwrap() {
        Ok(Some(Btm::StreamHandle {
            stream_id,
            num_chunks,
        })) => (stream_id, num_chunks),
        other => panic!("expected a stream handle, got {other:?}"),
    }
}

pub(crate) fn fetch_msg(
    exec: &str,
    shuffle: i32,
    maps: &[i64],
    reduces: Vec<Vec<i32>>,
    batch: bool,
) -> Btm {
    Btm::FetchShuffleBlocks {
        app_id: APP.into(),
        exec_id: exec.into(),
        shuffle_id: shuffle,
        map_ids: maps.to_vec(),
        reduce_ids: reduces,
        batch_fetch_enabled: batch,
    }
}

#[tokio::test]
async fn every_fetch_path_returns_the_bytes_spark_wrote() {
    let svc = TestService::start(|_| {}).await;
    let (mut c, dirs) = registered(&svc, "1").await;
    // Sizes cross the in-memory/sendfile boundary (64 KiB) and include empty partitions.
    let parts_a: Vec<Vec<u8>> = [0, 10, 70_000, 0, 3 << 20, 1]
        .iter()
        .enumerate()
        .map(|(i, n)| random_bytes(*n, i as u64 + 1))
        .collect();
    let parts_b: Vec<Vec<u8>> = [5, 0, 65_536]
        .iter()
        .enumerate()
        .map(|(i, n)| random_bytes(*n, i as u64 + 100))
        .collect();
    write_map(&dirs, 3, 11, &parts_a);
    write_map(&dirs, 3, 12, &parts_b);

    // Default protocol: one chunk per (map, reduce), in message order.
    let (sid, n) = open_stream(
        &mut c,
        &fetch_msg("1", 3, &[11, 12], vec![vec![0, 2, 4, 5], vec![2, 1]], false),
    )
    .await;
    assert_eq!(n, 6);
    let got = c.fetch_chunks(sid, n).await.unwrap();
    let want = [
        &parts_a[0],
        &parts_a[2],
        &parts_a[4],
        &parts_a[5],
        &parts_b[2],
        &parts_b[1],
    ];
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.as_ref().unwrap().as_ref(), &w[..]);
    }
    // Batch fetch: one contiguous range per map.
    let (sid, n) = open_stream(
        &mut c,
        &fetch_msg("1", 3, &[11, 12], vec![vec![1, 5], vec![0, 3]], true),
    )
    .await;
    assert_eq!(n, 2);
    let got = c.fetch_chunks(sid, n).await.unwrap();
    assert_eq!(
        got[0].as_ref().unwrap().as_ref(),
        &parts_a[1..5].concat()[..]
    );
    assert_eq!(got[1].as_ref().unwrap().as_ref(), &parts_b.concat()[..]);
    // Fetch to disk: StreamRequest, bodies outside the frame, replies in order.
    let (sid, n) = open_stream(
        &mut c,
        &fetch_msg("1", 3, &[11], vec![vec![4, 3, 2]], false),
    )
    .await;
    let got = c.fetch_streams(sid, n).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().as_ref(), &parts_a[4][..]);
    assert!(got[1].as_ref().unwrap().is_empty());
    assert_eq!(got[2].as_ref().unwrap().as_ref(), &parts_a[2][..]);
    // Old protocol: OpenBlocks with shuffle block ids.
    let (sid, n) = open_stream(
        &mut c,
        &Btm::OpenBlocks {
            app_id: APP.into(),
            exec_id: "1".into(),
            block_ids: vec!["shuffle_3_12_0".into(), "shuffle_3_11_2".into()],
        },
    )
    .await;
    let got = c.fetch_chunks(sid, n).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().as_ref(), &parts_b[0][..]);
    assert_eq!(got[1].as_ref().unwrap().as_ref(), &parts_a[2][..]);
    // A missing map output fails its chunk only.
    let (sid, n) = open_stream(
        &mut c,
        &fetch_msg("1", 3, &[99, 12], vec![vec![0], vec![0]], false),
    )
    .await;
    let got = c.fetch_chunks(sid, n).await.unwrap();
    assert!(
        got[0].as_ref().unwrap_err().contains("not found"),
        "{got:?}"
    );
    assert_eq!(got[1].as_ref().unwrap().as_ref(), &parts_b[0][..]);

    let metrics = svc.metrics().await;
    assert!(
        metrics
            .contains(r#"shuffle_rpc_requests_total{code="OK",method="spark/RegisterExecutor"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("shuffle_blocks_served_total 14"),
        "{metrics}"
    );
    assert!(metrics.contains("shuffle_registered_executors 1"));
    svc.shutdown().await;
}

#[tokio::test]
async fn rdd_blocks_removal_counts_local_dirs_and_diagnosis() {
    let svc = TestService::start(|_| {}).await;
    let (mut c, dirs) = registered(&svc, "2").await;
    let parts = vec![random_bytes(1000, 1), random_bytes(2000, 2)];
    write_map(&dirs, 0, 5, &parts);
    let rdd = layout::placement(&dirs, 64, "rdd_4_7");
    std::fs::create_dir_all(rdd.parent().unwrap()).unwrap();
    std::fs::write(&rdd, b"cached partition").unwrap();

    let (sid, n) = open_stream(
        &mut c,
        &Btm::OpenBlocks {
            app_id: APP.into(),
            exec_id: "2".into(),
            block_ids: vec!["rdd_4_7".into(), "rdd_4_8".into()],
        },
    )
    .await;
    let got = c.fetch_chunks(sid, n).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().as_ref(), b"cached partition");
    assert_eq!(got[1].as_ref().unwrap_err(), "Chunk was not found");

    // GetLocalDirsForExecutors: the registered (canonical) directories; unknown ids fail all.
    let r = c
        .call(&Btm::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["2".into()],
        })
        .await
        .unwrap();
    assert_eq!(
        r,
        Ok(Some(Btm::LocalDirsForExecutors {
            exec_ids: vec!["2".into()],
            num_dirs_per_exec: vec![2],
            all_dirs: dirs.iter().map(|d| d.display().to_string()).collect(),
        }))
    );
    let r = c
        .call(&Btm::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["2".into(), "77".into()],
        })
        .await
        .unwrap();
    assert!(r.unwrap_err().contains("not found"));

    // DiagnoseCorruption from the checksum file.
    let writer_sum = checksum::checksum(Algorithm::Adler32, &mut &parts[1][..]).unwrap();
    let diagnose = |sum: i64, alg: &str| Btm::DiagnoseCorruption {
        app_id: APP.into(),
        exec_id: "2".into(),
        shuffle_id: 0,
        map_id: 5,
        reduce_id: 1,
        checksum: sum,
        algorithm: alg.into(),
    };
    for (sum, alg, cause) in [
        (writer_sum, "ADLER32", Cause::ChecksumVerifyPass),
        (writer_sum + 1, "ADLER32", Cause::NetworkIssue),
        (writer_sum, "CRC32", Cause::UnknownIssue),
        (writer_sum, "MD5", Cause::UnsupportedChecksumAlgorithm),
    ] {
        assert_eq!(
            c.call(&diagnose(sum, alg)).await.unwrap(),
            Ok(Some(Btm::CorruptionCause(cause))),
            "{alg} {sum}"
        );
    }
    // Flip a byte of partition 1 on disk: a disk issue.
    let data = layout::placement(&dirs, 64, "shuffle_0_5_0.data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[1500] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    assert_eq!(
        c.call(&diagnose(writer_sum, "ADLER32")).await.unwrap(),
        Ok(Some(Btm::CorruptionCause(Cause::DiskIssue)))
    );

    // RemoveBlocks counts the files really deleted; hostile names are skipped.
    let remove = |ids: &[&str]| Btm::RemoveBlocks {
        app_id: APP.into(),
        exec_id: "2".into(),
        block_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
    };
    let ids = [
        "shuffle_0_5_0.index",
        "shuffle_0_5_0.data",
        "rdd_4_7",
        "../../etc/passwd",
        "..",
        "",
    ];
    assert_eq!(
        c.call(&remove(&ids)).await.unwrap(),
        Ok(Some(Btm::BlocksRemoved {
            num_removed_blocks: 3
        }))
    );
    assert!(!rdd.exists());
    assert_eq!(
        c.call(&remove(&ids)).await.unwrap(),
        Ok(Some(Btm::BlocksRemoved {
            num_removed_blocks: 0
        }))
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn refusals_are_clean_failures() {
    let svc = TestService::start(|_| {}).await;
    let (mut c, _dirs) = registered(&svc, "3").await;
    let outside = tempfile::tempdir().unwrap();
    let r = c
        .call(&register_msg(APP, "4", &[outside.path()]))
        .await
        .unwrap();
    assert!(r.unwrap_err().contains("refused"));
    let cases = [
        fetch_msg("9", 0, &[1], vec![vec![0]], false),
        fetch_msg("3", 0, &[1, 2], vec![vec![0]], false),
        fetch_msg("3", 0, &[1], vec![vec![3, 3]], true),
        fetch_msg("3", -1, &[1], vec![vec![0]], false),
        fetch_msg("../x", 0, &[1], vec![vec![0]], false),
        Btm::OpenBlocks {
            app_id: APP.into(),
            exec_id: "3".into(),
            block_ids: vec!["shuffle_0_1_0".into(), "shuffle_1_1_0".into()],
        },
        Btm::OpenBlocks {
            app_id: APP.into(),
            exec_id: "3".into(),
            block_ids: vec!["../../secret".into()],
        },
        Btm::OpenBlocks {
            app_id: APP.into(),
            exec_id: "3".into(),
            block_ids: vec!["rdd_1_../2".into()],
        },
        Btm::UploadBlock {
            app_id: APP.into(),
            exec_id: "3".into(),
            block_id: "rdd_1_1".into(),
            metadata: Bytes::new(),
            block_data: Bytes::from_static(b"x"),
        },
        Btm::FinalizeShuffleMerge {
            app_id: APP.into(),
            app_attempt_id: 0,
            shuffle_id: 0,
            shuffle_merge_id: 0,
        },
    ];
    for m in &cases {
        let r = c.call(m).await.unwrap();
        assert!(r.is_err(), "{m:?} -> {r:?}");
    }
    // Streams belong to the connection that opened them, and chunks come in order.
    let (sid, _) = open_stream(&mut c, &fetch_msg("3", 0, &[1], vec![vec![0, 1]], false)).await;
    let mut other = Client::connect(svc.spark).await.unwrap();
    let got = other.fetch_chunks(sid, 1).await.unwrap();
    assert!(
        got[0].as_ref().unwrap_err().contains("Unknown stream"),
        "{got:?}"
    );
    c.send(&Message::ChunkFetchRequest(StreamChunkId {
        stream_id: sid,
        chunk_index: 1,
    }))
    .await
    .unwrap();
    match c.recv().await.unwrap().message {
        Message::ChunkFetchFailure(_, e) => assert!(e.contains("out-of-order"), "{e}"),
        m => panic!("{m:?}"),
    }
    // A fetch naming no block answers a handle with no chunks and keeps no stream.
    let (_, n) = open_stream(&mut c, &fetch_msg("3", 0, &[1], vec![vec![]], false)).await;
    assert_eq!(n, 0);
    assert!(svc.metrics().await.contains("shuffle_open_streams 1"));
    // SASL while authentication is off, and an AuthEngine message: failures, connection open.
    assert!(c.authenticate(APP, b"s").await.unwrap().is_err());
    let r = c.rpc(Bytes::from_static(&[0xfb, 0, 0])).await.unwrap();
    assert!(r.is_err());
    // An upload stream is refused and the connection closed (its body is not read).
    c.send(&Message::UploadStream {
        request_id: 9,
        meta: Bytes::from_static(b"\x0c"),
        body_byte_count: 1 << 30,
    })
    .await
    .unwrap();
    assert!(matches!(
        c.recv().await.unwrap().message,
        Message::RpcFailure { request_id: 9, .. }
    ));
    assert!(c.recv().await.is_err());
    // Closing the connection dropped its stream.
    assert!(svc.metrics().await.contains("shuffle_open_streams 0"));
    svc.shutdown().await;
}

#[tokio::test]
async fn a_malformed_frame_closes_only_its_connection() {
    let svc = TestService::start(|_| {}).await;
    let (mut good, dirs) = registered(&svc, "5").await;
    write_map(&dirs, 0, 1, &[b"abc".to_vec()]);
    let garbage: Vec<Vec<u8>> = vec![
        (-5i64).to_be_bytes().to_vec(),
        (8i64).to_be_bytes().to_vec(),
        (1i64 << 40).to_be_bytes().to_vec(),
        [&(9i64 + 4).to_be_bytes()[..], &[42, 0, 0, 0, 0]].concat(),
        // RpcRequest whose payload claims a huge string.
        [
            &(8i64 + 1 + 12 + 5).to_be_bytes()[..],
            &[3],
            &[0; 8],
            &[0, 0, 0, 5],
            &[0, 0x7f, 0xff, 0xff, 0xff],
        ]
        .concat(),
        // A response type sent by a client.
        Message::RpcResponse {
            request_id: 1,
            body: Bytes::new(),
        }
        .to_bytes()
        .to_vec(),
    ];
    for g in &garbage {
        let mut bad = Client::connect(svc.spark).await.unwrap();
        bad.send_raw(g).await.unwrap();
        // The malformed RPC payload gets an RpcFailure; frames close the connection.
        loop {
            match bad.recv().await {
                Ok(i) => assert!(matches!(i.message, Message::RpcFailure { .. }), "{g:?}"),
                Err(_) => break,
            }
            bad.send_raw(&(3i64).to_be_bytes()).await.unwrap();
        }
    }
    let (sid, n) = open_stream(&mut good, &fetch_msg("5", 0, &[1], vec![vec![0]], false)).await;
    assert_eq!(
        good.fetch_chunks(sid, n).await.unwrap()[0]
            .as_ref()
            .unwrap()
            .as_ref(),
        b"abc"
    );
    let metrics = svc.metrics().await;
    assert!(
        metrics.contains("shuffle_spark_malformed_frames_total 6"),
        "{metrics}"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn sasl_authentication_binds_the_connection_to_its_application() {
    let svc = TestService::start(|c| {
        crate::common::shared_spark_secret(c, "s3cr3t\n");
    })
    .await;
    let dir = svc.exec_dir("blockmgr-auth");
    // Without authentication: refused, and the connection closed.
    let mut c = Client::connect(svc.spark).await.unwrap();
    let r = c.call(&register_msg(APP, "1", &[&dir])).await.unwrap();
    assert!(r.unwrap_err().contains("authentication required"));
    assert!(c.recv().await.is_err());
    // A wrong secret fails.
    let mut c = Client::connect(svc.spark).await.unwrap();
    assert!(c.authenticate(APP, b"wrong").await.unwrap().is_err());
    // A malformed AuthEngine challenge is refused and its connection closed; SASL on a new
    // connection succeeds.
    let mut c = Client::connect(svc.spark).await.unwrap();
    assert!(
        c.rpc(Bytes::from_static(&[0xfb, 1, 2]))
            .await
            .unwrap()
            .is_err()
    );
    assert!(c.recv().await.is_err());
    let mut c = Client::connect(svc.spark).await.unwrap();
    c.authenticate(APP, b"s3cr3t").await.unwrap().unwrap();
    assert_eq!(
        c.call(&register_msg(APP, "1", &[&dir])).await.unwrap(),
        Ok(None)
    );
    // Authenticated as APP: another application's requests are refused.
    let r = c
        .call(&register_msg("app-other", "1", &[&dir]))
        .await
        .unwrap();
    assert!(r.clone().unwrap_err().contains("not authorized"), "{r:?}");
    let metrics = svc.metrics().await;
    assert!(
        metrics.contains("shuffle_spark_auth_failures_total 1"),
        "{metrics}"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn register_driver_and_heartbeats_drive_the_application_lifecycle() {
    let svc = TestService::start(|_| {}).await;
    let mut c = Client::connect(svc.spark).await.unwrap();
    let r = c
        .call(&Btm::RegisterDriver {
            app_id: APP.into(),
            heartbeat_timeout_ms: 30_000,
        })
        .await
        .unwrap();
    assert_eq!(r, Ok(None));
    c.send(&Message::OneWayMessage(
        Btm::ShuffleServiceHeartbeat { app_id: APP.into() }.to_bytes(),
    ))
    .await
    .unwrap();
    let apps = svc.core.list_apps();
    assert_eq!(apps.len(), 1);
    assert_eq!(
        apps[0].heartbeat_timeout,
        Some(std::time::Duration::from_secs(30))
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_spark_connections_and_stops_accepting() {
    let mut svc = TestService::start(|_| {}).await;
    let (mut c, dirs) = registered(&svc, "6").await;
    write_map(&dirs, 0, 1, &[random_bytes(1 << 20, 9)]);
    let (sid, n) = open_stream(&mut c, &fetch_msg("6", 0, &[1], vec![vec![0]], false)).await;
    let got = c.fetch_chunks(sid, n).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().len(), 1 << 20);
    let server = svc.trigger_shutdown();
    assert!(c.recv().await.is_err(), "the idle connection is closed");
    server.await.unwrap();
    assert!(
        Client::connect(svc.spark).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn removal_and_reads_never_follow_a_planted_symlink() {
    let svc = TestService::start(|_| {}).await;
    let (mut c, dirs) = registered(&svc, "7").await;
    // The executor's subdirectory for this name is a symlink to a directory outside.
    let name = "shuffle_0_1_0.data";
    let placed = layout::placement(&dirs, 64, name);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join(name), b"not yours").unwrap();
    std::os::unix::fs::symlink(outside.path(), placed.parent().unwrap()).unwrap();
    let r = c
        .call(&Btm::RemoveBlocks {
            app_id: APP.into(),
            exec_id: "7".into(),
            block_ids: vec![name.into()],
        })
        .await
        .unwrap();
    assert_eq!(
        r,
        Ok(Some(Btm::BlocksRemoved {
            num_removed_blocks: 0
        }))
    );
    assert!(outside.path().join(name).exists());
    // An RDD block behind a symlinked file is refused too.
    let rdd = layout::placement(&dirs, 64, "rdd_1_1");
    std::fs::create_dir_all(rdd.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(outside.path().join(name), &rdd).unwrap();
    let (sid, n) = open_stream(
        &mut c,
        &Btm::OpenBlocks {
            app_id: APP.into(),
            exec_id: "7".into(),
            block_ids: vec!["rdd_1_1".into()],
        },
    )
    .await;
    let got = c.fetch_chunks(sid, n).await.unwrap();
    assert!(
        got[0].as_ref().unwrap_err().contains("symbolic link"),
        "{got:?}"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn blocks_over_2_gib_go_by_stream_with_64_bit_sizes() {
    let svc = TestService::start(|_| {}).await;
    let (mut c, dirs) = registered(&svc, "8").await;
    // A sparse 3 GiB partition after a 5-byte one: offsets past 2^31 and 2^32.
    let (s, m) = (ShuffleId::new(0).unwrap(), MapId::new(1).unwrap());
    let big: u64 = 3 << 30;
    let place = |name: &str| {
        let p = layout::placement(&dirs, 64, name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    };
    let data = std::fs::File::create(place(&layout::data_file(s, m))).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&data, b"head!", 0).unwrap();
    data.set_len(5 + big + 4).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&data, b"tail", 5 + big).unwrap();
    std::fs::write(
        place(&layout::index_file(s, m)),
        layout::encode_index(&[5, big, 4]),
    )
    .unwrap();
    // In a frame it cannot go (Spark's frames stay below 2 GiB): a clean chunk failure.
    let (sid, _) = open_stream(&mut c, &fetch_msg("8", 0, &[1], vec![vec![1]], false)).await;
    let got = c.fetch_chunks(sid, 1).await.unwrap();
    assert!(
        got[0].as_ref().unwrap_err().contains("fetch it to disk"),
        "{got:?}"
    );
    // As a stream: a 64-bit size, then the bytes; the last partition follows at 3 GiB + 5.
    let (sid, _) = open_stream(&mut c, &fetch_msg("8", 0, &[1], vec![vec![1, 2]], false)).await;
    c.send(&Message::StreamRequest(format!("{sid}_0")))
        .await
        .unwrap();
    match c.recv_frame().await.unwrap() {
        Message::StreamResponse { byte_count, .. } => assert_eq!(byte_count as u64, big),
        m => panic!("{m:?}"),
    }
    let first = c.read_raw(1 << 20).await.unwrap();
    assert!(first.iter().all(|b| *b == 0));
    drop(c);
    let mut c2 = Client::connect(svc.spark).await.unwrap();
    let (sid, n) = open_stream(&mut c2, &fetch_msg("8", 0, &[1], vec![vec![2, 0]], false)).await;
    let got = c2.fetch_streams(sid, n).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().as_ref(), b"tail");
    assert_eq!(got[1].as_ref().unwrap().as_ref(), b"head!");
    svc.shutdown().await;
}

#[tokio::test]
async fn per_application_secrets_come_from_a_directory() {
    let svc = TestService::start(|c| {
        // As a mounted Kubernetes Secret: one file per application id.
        crate::common::per_app_spark_secret(c, APP, "app-secret");
    })
    .await;
    let mut c = Client::connect(svc.spark).await.unwrap();
    c.authenticate(APP, b"app-secret").await.unwrap().unwrap();
    let mut c = Client::connect(svc.spark).await.unwrap();
    let r = c
        .authenticate("app-without-secret", b"app-secret")
        .await
        .unwrap();
    assert!(r.unwrap_err().contains("no secret"));
    // Another application's secret does not open this one.
    let mut c = Client::connect(svc.spark).await.unwrap();
    assert!(c.authenticate(APP, b"wrong").await.unwrap().is_err());
    svc.shutdown().await;
}

#[tokio::test]
async fn control_replies_overtake_queued_block_data() {
    let svc = TestService::start(|_| {}).await;
    let (mut c, dirs) = registered(&svc, "9").await;
    // 48 MiB of block data queued on one connection: far more than the socket buffers hold.
    let parts: Vec<Vec<u8>> = (0..16).map(|i| random_bytes(3 << 20, i)).collect();
    write_map(&dirs, 0, 1, &parts);
    let (sid, n) = open_stream(
        &mut c,
        &fetch_msg("9", 0, &[1], vec![(0..16).collect()], false),
    )
    .await;
    let mut req = spark_protocol::client::chunk_fetch_requests(sid, n);
    // Then a control RPC on the same connection.
    Message::RpcRequest {
        request_id: 77,
        body: Btm::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["9".into()],
        }
        .to_bytes(),
    }
    .encode(&mut req);
    c.send_raw(&req).await.unwrap();
    let mut chunks_before_reply = None;
    let mut chunks = 0;
    for _ in 0..=n {
        match c.recv().await.unwrap().message {
            Message::ChunkFetchSuccess(id, b) => {
                assert_eq!(b.as_ref(), &parts[id.chunk_index as usize][..]);
                chunks += 1;
            }
            Message::RpcResponse { request_id: 77, .. } => chunks_before_reply = Some(chunks),
            m => panic!("{m:?}"),
        }
    }
    let before = chunks_before_reply.expect("the RPC was answered");
    assert!(
        before < n,
        "the reply waited for every block: {before} of {n}"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_malformed_frames_is_counted_and_logged_at_a_bounded_rate() {
    let svc = TestService::start(|_| {}).await;
    let floods = 200u64;
    for _ in 0..floods {
        let mut bad = Client::connect(svc.spark).await.unwrap();
        bad.send_raw(&(-5i64).to_be_bytes()).await.unwrap();
        // The service closes the connection.
        while bad.recv().await.is_ok() {}
    }
    let m = svc.metrics().await;
    let rejected = crate::common::metric(&m, "shuffle_spark_malformed_frames_total").unwrap();
    assert_eq!(rejected as u64, floods);
    let suppressed = crate::common::metric(
        &m,
        "shuffle_log_lines_suppressed_total{event=\"spark_malformed_frame\"}",
    )
    .unwrap();
    assert_eq!(
        suppressed as u64,
        floods - u64::from(shuffle_service::lograte::LINES_PER_WINDOW)
    );
    svc.shutdown().await;
}
