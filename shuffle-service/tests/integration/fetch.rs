//! Register → write → fetch round trips, Spark's layout, sparse offsets past 2 GiB,
//! concurrency.

use std::io::{Seek, SeekFrom, Write};

use spark_protocol::layout;

use crate::common::*;

#[tokio::test]
async fn round_trips_over_random_sizes_and_ranges() {
    let s = TestService::start(|_| {}).await;
    let mut c = s.client().await;
    let token = register_app(&mut c, "app-1").await;
    let d0 = s.exec_dir("spark-x/executor-1/blockmgr-a");
    let d1 = s.exec_dir("spark-x/executor-1/blockmgr-b");
    register_exec(&mut c, &token, "app-1", "1", &[&d0, &d1]).await;

    let mut outputs = Vec::new();
    for map in 0..6i64 {
        // Random partition sizes including empty ones and one large one.
        let parts: Vec<Vec<u8>> = (0..9)
            .map(|r| {
                let n = match (map + r) % 4 {
                    0 => 0,
                    1 => 17,
                    2 => 70_000,
                    _ => {
                        if r == 3 {
                            3 << 20
                        } else {
                            1
                        }
                    }
                };
                random_bytes(n as usize, (map * 100 + r) as u64)
            })
            .collect();
        let n = write_output(&mut c, &token, "app-1", "1", 2, 1000 + map, &parts)
            .await
            .unwrap();
        assert_eq!(n, parts.iter().map(|p| p.len() as u64).sum::<u64>());
        outputs.push(parts);
    }
    // Files are where Spark's formula puts them.
    let dirs = [d0.clone(), d1.clone()];
    let data = layout::placement(&dirs, 64, "shuffle_2_1003_0.data");
    let index = layout::placement(&dirs, 64, "shuffle_2_1003_0.index");
    assert!(data.is_file() && index.is_file());
    assert_eq!(
        std::fs::read(&index).unwrap(),
        layout::encode_index(
            &outputs[3]
                .iter()
                .map(|p| p.len() as u64)
                .collect::<Vec<_>>()
        )
    );

    // Single blocks, batch ranges, empty blocks, in one request and in request order.
    let mut want = Vec::new();
    let mut blocks = Vec::new();
    for (m, parts) in outputs.iter().enumerate() {
        for r in 0..9 {
            blocks.push((2, 1000 + m as i64, r, r + 1));
            want.push(parts[r as usize].clone());
        }
        blocks.push((2, 1000 + m as i64, 2, 7));
        want.push(parts[2..7].concat());
    }
    let got = fetch(&mut c, &token, "app-1", "1", &blocks).await.unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "block {i} differs");
    }
    let m = s.metrics().await;
    assert!(metric(&m, "shuffle_blocks_served_total").unwrap() >= blocks.len() as f64);
    assert_eq!(metric(&m, "shuffle_registered_applications"), Some(1.0));
    assert_eq!(metric(&m, "shuffle_registered_executors"), Some(1.0));
    assert!(m.contains("shuffle_rpc_requests_total{code=\"OK\",method=\"FetchBlocks\"}"));

    // Errors: out of range, missing map output, duplicate write.
    let e = fetch(&mut c, &token, "app-1", "1", &[(2, 1000, 5, 12)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange);
    let e = fetch(&mut c, &token, "app-1", "1", &[(2, 9999, 0, 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = write_output(&mut c, &token, "app-1", "1", 2, 1000, &[vec![1]])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    s.shutdown().await;
}

#[tokio::test]
async fn serves_output_written_by_an_executor_with_offsets_past_2_gib() {
    let s = TestService::start(|_| {}).await;
    let mut c = s.client().await;
    let token = register_app(&mut c, "app-2").await;
    let d = s.exec_dir("blockmgr-big");
    register_exec(&mut c, &token, "app-2", "7", &[&d]).await;
    // Written the way an executor writes: data and index placed by the formula, directly.
    // The data file is sparse: 3 GiB long, real bytes only at the tail block.
    let dirs = [d.clone()];
    let data = layout::placement(&dirs, 64, "shuffle_0_5_0.data");
    let index = layout::placement(&dirs, 64, "shuffle_0_5_0.index");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    std::fs::create_dir_all(index.parent().unwrap()).unwrap();
    let tail = random_bytes(100_000, 5);
    let start: u64 = (5 << 29) + 12_345; // 2.5 GiB + a bit
    let mut f = std::fs::File::create(&data).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    f.write_all(&tail).unwrap();
    std::fs::write(&index, layout::encode_index(&[start, tail.len() as u64])).unwrap();
    let got = fetch(&mut c, &token, "app-2", "7", &[(0, 5, 1, 2)])
        .await
        .unwrap();
    assert!(got[0] == tail);
    // A truncated data file is reported, not served short.
    f.set_len(start + 10).unwrap();
    let e = fetch(&mut c, &token, "app-2", "7", &[(0, 5, 1, 2)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DataLoss);
    s.shutdown().await;
}

#[tokio::test]
async fn a_hundred_concurrent_fetch_streams() {
    let s = TestService::start(|_| {}).await;
    let mut c = s.client().await;
    let token = register_app(&mut c, "app-3").await;
    let d = s.exec_dir("blockmgr-c");
    register_exec(&mut c, &token, "app-3", "1", &[&d]).await;
    let parts: Vec<Vec<u8>> = (0..4)
        .map(|r| random_bytes(300_000 + r * 1000, r as u64))
        .collect();
    for map in 0..10 {
        write_output(&mut c, &token, "app-3", "1", 0, map, &parts)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut c = c.clone();
        let (token, parts) = (token.clone(), parts.clone());
        tasks.push(tokio::spawn(async move {
            let map = i % 10;
            let got = fetch(
                &mut c,
                &token,
                "app-3",
                "1",
                &[(0, map, 0, 4), (0, map, 1, 2)],
            )
            .await
            .unwrap();
            assert!(got[0] == parts.concat() && got[1] == parts[1]);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = s.metrics().await;
    assert_eq!(metric(&m, "shuffle_open_streams"), Some(0.0));
    s.shutdown().await;
}

#[tokio::test]
async fn an_independent_reader_reads_what_the_service_wrote() {
    // tests/spark_reader.py implements Spark's placement (Java String.hashCode) and index
    // format on its own; it must find and slice the files exactly as Spark would.
    let s = TestService::start(|_| {}).await;
    let mut c = s.client().await;
    let token = register_app(&mut c, "app-4").await;
    let d0 = s.exec_dir("blockmgr-r0");
    let d1 = s.exec_dir("blockmgr-r1");
    register_exec(&mut c, &token, "app-4", "1", &[&d0, &d1]).await;
    let parts: Vec<Vec<u8>> = vec![
        random_bytes(10, 1),
        vec![],
        random_bytes(5000, 2),
        random_bytes(1, 3),
    ];
    write_output(&mut c, &token, "app-4", "1", 4, 77, &parts)
        .await
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/spark_reader.py");
    for (r, part) in parts.iter().enumerate() {
        let out = tokio::process::Command::new("python3")
            .args([
                script,
                &format!("{},{}", d0.display(), d1.display()),
                "64",
                "4",
                "77",
                &r.to_string(),
            ])
            .output()
            .await
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(&out.stdout, part, "partition {r}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_fetch_finish() {
    let mut s = TestService::start(|_| {}).await;
    let mut c = s.client().await;
    let token = register_app(&mut c, "app-s").await;
    let d = s.exec_dir("blockmgr-s");
    register_exec(&mut c, &token, "app-s", "1", &[&d]).await;
    let big = random_bytes(24 << 20, 9);
    write_output(
        &mut c,
        &token,
        "app-s",
        "1",
        0,
        1,
        std::slice::from_ref(&big),
    )
    .await
    .unwrap();
    let req = shuffle_proto::v1::FetchBlocksRequest {
        app_id: "app-s".into(),
        exec_id: "1".into(),
        blocks: vec![shuffle_proto::v1::BlockRange {
            shuffle_id: 0,
            map_id: 1,
            start_reduce: 0,
            end_reduce: 1,
        }],
    };
    let mut stream = c
        .fetch_blocks(authed(req, &token))
        .await
        .unwrap()
        .into_inner();
    let mut got = stream.message().await.unwrap().unwrap().data.to_vec();
    let server = s.trigger_shutdown();
    while let Some(m) = stream.message().await.unwrap() {
        got.extend_from_slice(&m.data);
    }
    assert!(got == big, "the stream completed through shutdown");
    server.await.unwrap();
    // Stopped accepting: new connections are refused.
    assert!(tokio::net::TcpStream::connect(s.grpc).await.is_err());
}
