//! What one peer address may take of what every client shares: admin and gRPC connection
//! slots (the kubelet's probes must still get in), and the Spark port's memory for partly
//! received frames. The second peer is 127.0.0.2: another address of the loopback network.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::*;

#[tokio::test]
async fn one_peer_cannot_take_the_admin_slots_the_kubelet_needs() {
    use http_body_util::BodyExt as _;
    let dir = tempfile::tempdir().unwrap();
    // Silent connections stay for a minute, longer than the test.
    let (_child, ready, _logs) = spawn_limited(
        dir.path(),
        &[
            "--admin-max-connections",
            "16",
            "--admin-max-connections-per-peer",
            "4",
            "--grpc-max-connections-per-peer",
            "4",
            "--connection-first-byte-timeout",
            "60s",
            "--connection-first-request-timeout",
            "60s",
        ],
        None,
    )
    .await;

    // One pod opens as many admin connections as the whole cap and holds them: before, it
    // took every slot and the kubelet's probes failed until the service was killed.
    let mut flood = Vec::new();
    for _ in 0..16 {
        flood.push(TcpStream::connect(&ready.admin).await.unwrap());
    }
    // The kubelet, from another address, still gets in; beyond its share of 4 the pod's
    // connections were closed at once.
    let refused = r#"shuffle_http_connections_refused_total{listener="admin",reason="max_connections_per_peer"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = get_from("127.0.0.2", &ready.admin, "/metrics").await;
        if metric(&m, refused) == Some(12.0) {
            break m;
        }
        assert!(Instant::now() < deadline, "{refused} not 12:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let open = r#"shuffle_http_connections{listener="admin"}"#;
    // The pod's four and the scrape itself.
    assert_eq!(metric(&metrics, open), Some(5.0), "{metrics}");
    let r = get_from("127.0.0.2", &ready.admin, "/healthz").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The pod's next connection is closed at once.
    let mut more = TcpStream::connect(&ready.admin).await.unwrap();
    closed_by_server(&mut more, Duration::from_secs(5)).await;

    // The same on the gRPC port: six from the pod, two refused; a health check from the
    // other address is answered.
    let mut grpc_flood = Vec::new();
    for _ in 0..6 {
        grpc_flood.push(TcpStream::connect(&ready.grpc).await.unwrap());
    }
    let refused = r#"shuffle_http_connections_refused_total{listener="grpc",reason="max_connections_per_peer"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = get_from("127.0.0.2", &ready.admin, "/metrics").await;
        if metric(&m, refused) == Some(2.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{refused} not 2:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grpc: std::net::SocketAddr = ready.grpc.parse().unwrap();
    let (mut send, _conn) = h2_client_on(connect_from("127.0.0.2", grpc).await, None).await;
    let (tx, response) = grpc_call(&mut send, grpc, "/grpc.health.v1.Health/Check", None);
    tx.send(data(&[0, 0, 0, 0, 0])).await.unwrap();
    drop(tx);
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), [0, 0, 0, 0, 2, 8, 1], "SERVING");

    // Once the pod lets go, its address gets in again.
    drop(flood);
    drop(grpc_flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get_from("127.0.0.1", &ready.admin, "/healthz").await;
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the pod's address stays refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_peers_partly_sent_frames_take_only_its_share_and_another_peers_frame_goes_through() {
    use shuffle_service::spark::message::BlockTransferMessage as Btm;
    let svc = TestService::start(|c| {
        c.spark_max_frame = 1 << 20;
        // A peer's share: a quarter, here one largest frame.
        c.spark_frame_memory = 4 << 20;
        c.spark_idle_timeout = Duration::from_secs(3);
    })
    .await;
    let admin = svc.admin.to_string();
    // Six connections from one address each declare a 1 MiB frame, send 100 KiB of it, then
    // trickle a byte every 300 ms so that they never go quiet. Reserved from their headers,
    // they would take 5.7 MiB, more than the whole budget: before, other clients' frames then
    // waited and were closed.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(svc.spark).await.unwrap();
        let mut stopped = stopped.clone();
        clients.push(tokio::spawn(async move {
            let _ = s.write_all(&frame_start(1 << 20, 100 << 10)).await;
            let mut buf = [0u8; 64];
            // Whether the server closed the connection.
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return true },
                    _ = stopped.changed() => return false,
                    () = tokio::time::sleep(Duration::from_millis(300)) => {
                        if s.write_all(&[0]).await.is_err() {
                            return true;
                        }
                    }
                }
            }
        }));
    }
    let share = (1u64 << 20) as f64;
    let reserved = metric_reaches(
        &admin,
        "shuffle_spark_frame_memory_bytes",
        900_000.0,
        Duration::from_secs(20),
    )
    .await;
    assert!(reserved <= share, "{reserved}");

    // Another address sends a 900 KiB frame meanwhile: it gets memory and an answer.
    let exec_ids: Vec<String> = (0..9_500).map(|i| format!("{i:0>90}")).collect();
    let s = connect_from("127.0.0.2", svc.spark).await;
    let mut other = shuffle_service::spark::client::Client::from_stream(s).unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        other.call(&Btm::GetLocalDirsForExecutors {
            app_id: "app-nobody".into(),
            exec_ids,
        }),
    )
    .await
    .expect("another peer's frame waited for memory")
    .unwrap();
    assert!(r.is_err(), "an unknown application: {r:?}");

    // The first address's other connections waited for its share and were closed.
    metric_reaches(
        &admin,
        r#"shuffle_spark_frame_memory_exhausted_total{limit="peer_share"}"#,
        1.0,
        Duration::from_secs(20),
    )
    .await;
    let m = svc.metrics().await;
    let v = metric(&m, "shuffle_spark_frame_memory_bytes").unwrap();
    assert!(v <= share, "{v}");
    assert_eq!(
        metric(
            &m,
            r#"shuffle_spark_frame_memory_exhausted_total{limit="total"}"#
        ),
        Some(0.0),
        "{m}"
    );
    stop.send(true).unwrap();
    let mut closed = 0;
    for c in clients {
        closed += usize::from(c.await.unwrap());
    }
    assert!(
        (1..6).contains(&closed),
        "{closed} of 6 closed by the service"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&svc.metrics().await, "shuffle_spark_frame_memory_bytes") != Some(0.0) {
        assert!(Instant::now() < deadline, "reservations not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    svc.shutdown().await;
}

#[tokio::test]
async fn one_peer_cannot_take_every_spark_connection() {
    use shuffle_service::spark::message::BlockTransferMessage as Btm;
    let dir = tempfile::tempdir().unwrap();
    let (_child, ready, _logs) = spawn_limited(
        dir.path(),
        &[
            "--spark-max-connections",
            "32",
            "--spark-max-connections-per-peer",
            "8",
        ],
        None,
    )
    .await;
    // One address opens every connection the listener has: it keeps its 8, the other 24 are
    // closed at once.
    let mut conns = Vec::new();
    for _ in 0..32 {
        conns.push(TcpStream::connect(&ready.spark).await.unwrap());
    }
    metric_reaches(
        &ready.admin,
        "shuffle_spark_connections_refused_total",
        24.0,
        Duration::from_secs(10),
    )
    .await;
    let checks = conns.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 1];
        // Closed: an end of stream (or a reset) at once; held: nothing within the wait.
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        (matches!(r, Ok(Ok(0) | Err(_))), s)
    });
    let results = futures::future::join_all(checks).await;
    let held = results.iter().filter(|(closed, _)| !closed).count();
    assert_eq!(held, 8, "connections one address keeps");
    // Another address still gets in and is answered.
    let s = connect_from("127.0.0.2", &ready.spark).await;
    let mut other = shuffle_service::spark::client::Client::from_stream(s).unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        other.call(&Btm::GetLocalDirsForExecutors {
            app_id: "app-nobody".into(),
            exec_ids: vec!["1".into()],
        }),
    )
    .await
    .expect("another peer was not answered")
    .unwrap();
    assert!(r.is_err(), "an unknown application: {r:?}");
}
