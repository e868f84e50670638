//! Requests that stop moving and clients that never authenticate: a gRPC download whose client
//! stopped reading (its HTTP/2 window stays at zero), a Spark client that trickles bytes and
//! never authenticates, and a Spark frame that stops arriving half-way.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::*;

#[tokio::test]
async fn a_download_whose_client_stops_reading_is_closed_after_the_idle_timeout() {
    use http_body_util::BodyExt as _;
    use prost::Message as _;
    use shuffle_proto::v1 as pb;
    let idle = Duration::from_secs(1);
    let svc = TestService::start(move |c| c.connections.idle_timeout = idle).await;
    let admin = svc.admin.to_string();
    let mut c = svc.client().await;
    let token = register_app(&mut c, "app-1").await;
    let d = svc.exec_dir("spark-x/executor-1/blockmgr-a");
    register_exec(&mut c, &token, "app-1", "1", &[&d]).await;
    let block = random_bytes(8 << 20, 7);
    write_output(&mut c, &token, "app-1", "1", 1, 1, &[block])
        .await
        .unwrap();
    let request = pb::FetchBlocksRequest {
        app_id: "app-1".into(),
        exec_id: "1".into(),
        blocks: vec![pb::BlockRange {
            shuffle_id: 1,
            map_id: 1,
            start_reduce: 0,
            end_reduce: 1,
        }],
    }
    .encode_to_vec();
    let mut message = vec![0];
    message.extend_from_slice(&(request.len() as u32).to_be_bytes());
    message.extend_from_slice(&request);

    // A client whose stream window is 16 KiB: the service sends that much, then waits for
    // the client to read. It reads 128 KiB every half idle timeout, three idle timeouts in
    // all: slow (the service's frames are 1 MiB messages), but moving, so the connection
    // stays.
    let tcp = TcpStream::connect(svc.grpc).await.unwrap();
    let (mut send, conn) = h2_client_on(tcp, Some(16 << 10)).await;
    let (tx, response) = grpc_call(
        &mut send,
        svc.grpc,
        "/shuffle.v1.Shuffle/FetchBlocks",
        Some(&token),
    );
    tx.send(data(&message)).await.unwrap();
    drop(tx);
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0;
    for _ in 0..6 {
        let next = Instant::now() + idle / 2;
        while Instant::now() < next {
            assert!(!conn.is_finished(), "closed while the download moved");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let round = received + (128 << 10);
        while received < round {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            received += frame.data_ref().map_or(0, |d| d.len());
        }
    }
    assert!(received > 0 && received < 8 << 20, "{received}");

    // Then it stops reading (and keeps answering PINGs): nothing moves, the window stays at
    // zero, and the connection is closed after the idle timeout instead of being held
    // forever with its block file open.
    let stopped = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("a download nobody reads holds its connection")
        .unwrap();
    assert!(stopped.elapsed() >= idle - Duration::from_millis(100));
    let series = r#"shuffle_http_connections_closed_total{listener="grpc",reason="stalled"}"#;
    metric_reaches(&admin, series, 1.0, Duration::from_secs(5)).await;
    drop(body);
    svc.shutdown().await;
}

#[tokio::test]
async fn a_stranger_that_trickles_bytes_is_closed_at_the_authentication_deadline() {
    use spark_protocol::message::BlockTransferMessage as Btm;
    let auth_timeout = Duration::from_secs(1);
    let svc = TestService::start(move |c| {
        shared_spark_secret(c, "s3cret");
        c.spark_auth_timeout = auth_timeout;
    })
    .await;
    // A client that authenticates, before the stranger comes.
    let mut client = spark_protocol::client::Client::connect(&svc.spark.to_string())
        .await
        .unwrap();
    client
        .authenticate("app-1", b"s3cret")
        .await
        .unwrap()
        .unwrap();

    // The stranger declares a 4 KiB frame (within the cap before authentication) and sends
    // it a byte every 100 ms: never idle, it would hold its connection for 400 s, and a
    // connection cap's worth of strangers every connection.
    let started = Instant::now();
    let mut s = TcpStream::connect(svc.spark).await.unwrap();
    s.write_all(&frame_start(4 << 10, 1)).await.unwrap();
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if s.write_all(&[0]).await.is_err() {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "an unauthenticated connection stayed open"
        );
    }
    assert!(started.elapsed() >= auth_timeout - Duration::from_millis(100));
    let series = r#"shuffle_spark_connections_closed_total{reason="auth_timeout"}"#;
    metric_reaches(&svc.admin.to_string(), series, 1.0, Duration::from_secs(5)).await;

    // The client that authenticated is served past the deadline.
    let r = client
        .call(&Btm::GetLocalDirsForExecutors {
            app_id: "app-1".into(),
            exec_ids: vec!["1".into()],
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    svc.shutdown().await;
}

#[tokio::test]
async fn a_frame_that_stops_arriving_half_way_is_closed_at_the_idle_timeout() {
    let idle = Duration::from_secs(1);
    let svc = TestService::start(move |c| c.spark_idle_timeout = idle).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(svc.spark).await.unwrap();
    s.write_all(&frame_start(64 << 10, 1000)).await.unwrap();
    closed_by_server(&mut s, Duration::from_secs(10)).await;
    assert!(started.elapsed() >= idle - Duration::from_millis(100));
    let series = r#"shuffle_spark_connections_closed_total{reason="stalled_frame"}"#;
    metric_reaches(&svc.admin.to_string(), series, 1.0, Duration::from_secs(5)).await;
    svc.shutdown().await;
}
