//! What one peer address may take of what every client shares: admin and gRPC connection
//! slots (the kubelet's probes must still get in), and the Spark port's memory for partly
//! received frames. The second peer is 127.0.0.2: another address of the loopback network.

use std::io;
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
    use spark_protocol::message::BlockTransferMessage as Btm;
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
    let mut other = spark_protocol::client::Client::from_stream(s).unwrap();
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
    use spark_protocol::message::BlockTransferMessage as Btm;
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
    let mut other = spark_protocol::client::Client::from_stream(s).unwrap();
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

/// Runs `shuffle-service probe` (as a Kubernetes exec probe does) and returns whether it
/// succeeded, with its error output.
async fn exec_probe(socket: &std::path::Path, path: &str) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_shuffle-service"))
        .arg("probe")
        .arg("--socket")
        .arg(socket)
        .arg(path)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_pod_on_the_kubelets_own_address_cannot_fail_the_exec_probes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("probe.sock");
    let socket_arg = socket.display().to_string();
    let (mut child, ready, _logs) = spawn_limited(
        dir.path(),
        &[
            "--probe-socket",
            &socket_arg,
            "--admin-max-connections-per-peer",
            "4",
            "--connection-first-byte-timeout",
            "60s",
            "--connection-first-request-timeout",
            "60s",
        ],
        None,
    )
    .await;

    // With hostNetwork, a tenant's pod connects from the node's address, the kubelet's own:
    // it holds every admin slot that address may have.
    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(TcpStream::connect(&ready.admin).await.unwrap());
    }
    let refused = r#"shuffle_http_connections_refused_total{listener="admin",reason="max_connections_per_peer"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &get_from("127.0.0.2", &ready.admin, "/metrics").await,
        refused,
    ) != Some(4.0)
    {
        assert!(Instant::now() < deadline, "{refused} not 4");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut more = TcpStream::connect(&ready.admin).await.unwrap();
    closed_by_server(&mut more, Duration::from_secs(5)).await;

    // The exec probes ask the socket in the container, which no pod reaches: both answer.
    assert_eq!(exec_probe(&socket, "/healthz").await, (true, String::new()));
    assert_eq!(exec_probe(&socket, "/readyz").await, (true, String::new()));
    // The socket serves the probes only.
    let (ok, err) = exec_probe(&socket, "/metrics").await;
    assert!(!ok && err.contains("404"), "{err}");

    // A service that is gone fails them.
    child.kill().await.unwrap();
    child.wait().await.unwrap();
    let (ok, err) = exec_probe(&socket, "/healthz").await;
    assert!(!ok, "{err}");
    drop(flood);
}

/// An authenticated client of `app`, or the reason it was not served: answered a call
/// (whatever the answer) after authenticating, or the connection closed on it.
async fn authenticated_call(spark: SocketAddr, app: &str, secret: &[u8]) -> io::Result<()> {
    use spark_protocol::message::BlockTransferMessage as Btm;
    let mut c = spark_protocol::client::Client::connect(&spark.to_string()).await?;
    c.authenticate(app, secret)
        .await?
        .map_err(io::Error::other)?;
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        c.call(&Btm::GetLocalDirsForExecutors {
            app_id: app.into(),
            exec_ids: vec!["1".into()],
        }),
    )
    .await
    .map_err(|_| io::Error::other("no answer"))?;
    answered.map(drop)
}

#[tokio::test]
async fn a_neighbour_holding_unauthenticated_connections_cannot_lock_out_its_nodes_executors() {
    // The DaemonSet: every executor of the node, whatever its tenant, connects from the
    // node's address; a tenant's pod there holds as many connections as that address may
    // have, and never authenticates (each closed at the auth deadline and opened again).
    let svc = TestService::start(|c| {
        shared_spark_secret(c, "s3cret");
        c.spark_max_connections = 32;
        c.spark_max_connections_per_peer = 8;
        c.spark_max_connections_per_app = 2;
    })
    .await;
    let mut strangers = Vec::new();
    for _ in 0..8 {
        strangers.push(TcpStream::connect(svc.spark).await.unwrap());
    }
    // Before, the node's executors were refused at once until the strangers left. Now an
    // executor's connection is admitted, the address's oldest stranger closed for it, and
    // once authenticated it no longer counts against the address.
    authenticated_call(svc.spark, "app-1", b"s3cret")
        .await
        .expect("an executor of the node is served");
    closed_by_server(&mut strangers[0], Duration::from_secs(5)).await;
    let m = svc.metrics().await;
    let evicted = r#"shuffle_spark_connections_closed_total{reason="evicted_for_newer"}"#;
    assert_eq!(metric(&m, evicted), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "shuffle_spark_connections_refused_total"),
        Some(0.0)
    );

    // The pod churns: 200 more connections as fast as it can open them, none authenticated.
    // Each closes an older one at once, and the closed ones count against the address until
    // their slots are free, so the address never holds more than twice its share of the
    // listener's 32 slots: another address still gets in.
    let mut churn = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(svc.spark).await {
            churn.push(s);
        }
    }
    let other = connect_from("127.0.0.2", svc.spark).await;
    let mut other = spark_protocol::client::Client::from_stream(other).unwrap();
    other
        .authenticate("app-3", b"s3cret")
        .await
        .unwrap()
        .expect("another address is served during the churn");
    drop(churn);

    // An application holds at most its share of authenticated connections: a tenant
    // authenticating many connections as its own application does not take the others'.
    let spark = svc.spark.to_string();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = spark_protocol::client::Client::connect(&spark)
            .await
            .unwrap();
        c.authenticate("app-greedy", b"s3cret")
            .await
            .unwrap()
            .unwrap();
        held.push(c);
    }
    assert!(
        authenticated_call(svc.spark, "app-greedy", b"s3cret")
            .await
            .is_err(),
        "a third connection of the application was served"
    );
    let share = r#"shuffle_spark_connections_closed_total{reason="application_share"}"#;
    metric_reaches(&svc.admin.to_string(), share, 1.0, Duration::from_secs(5)).await;
    authenticated_call(svc.spark, "app-2", b"s3cret")
        .await
        .expect("another application is served");
    drop(held);
    svc.shutdown().await;
}
