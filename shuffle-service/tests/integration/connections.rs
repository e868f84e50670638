//! Connections a stranger can hold: oversized frames before Spark authentication, partly
//! received frames beyond the shared budget, silent, idle and stalled connections on the gRPC
//! and admin listeners, a descriptor flood on one listener, and the memory a burst of TLS
//! handshakes leaves behind; [`peers`]: what one peer address may take of what all share;
//! [`stalls`]: requests, downloads and Spark frames that stop moving, and Spark clients that
//! never authenticate. Each test performs the attack on real sockets.

mod peers;
mod stalls;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::*;

/// Polls the admin `/metrics` until `series` reaches `at_least`; returns its value.
async fn metric_reaches(admin: &str, series: &str, at_least: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let m = reqwest_get(&format!("http://{admin}/metrics")).await;
        let v = metric(&m, series).unwrap_or(f64::NAN);
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {v} (wanted {at_least}):\n{}",
            m.lines()
                .filter(|l| l.starts_with("shuffle_spark") || l.starts_with("shuffle_http"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until the server closes the connection; fails after `within`.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) {
    let mut buf = vec![0u8; 64 << 10];
    let r = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(r.is_ok(), "connection still open after {within:?}");
}

/// A Spark frame header declaring `len` bytes of contents (an RPC request), and `body` bytes
/// of it.
fn frame_start(len: u64, body: usize) -> Vec<u8> {
    let mut v = ((len + 8) as i64).to_be_bytes().to_vec();
    v.push(3); // RpcRequest
    v.resize(8 + body, 0);
    v
}

#[tokio::test]
async fn frames_larger_than_a_handshake_before_authentication_close_the_connection() {
    let svc = TestService::start(|c| shared_spark_secret(c, "s3cret")).await;
    // 32 strangers each declare a 16 MiB frame (the largest allowed after authentication)
    // and send 256 KiB of it: on the old code each held its buffer, open.
    let mut conns = Vec::new();
    for _ in 0..32 {
        let mut s = TcpStream::connect(svc.spark).await.unwrap();
        let _ = s.write_all(&frame_start(16 << 20, 256 << 10)).await;
        conns.push(s);
    }
    for s in &mut conns {
        closed_by_server(s, Duration::from_secs(10)).await;
    }
    let m = svc.metrics().await;
    assert_eq!(
        metric(&m, "shuffle_spark_preauth_frames_refused_total"),
        Some(32.0),
        "{m}"
    );
    assert_eq!(metric(&m, "shuffle_spark_frame_memory_bytes"), Some(0.0));
    // A real client still authenticates and is served.
    let mut c = spark_protocol::client::Client::connect(&svc.spark.to_string())
        .await
        .unwrap();
    c.authenticate("app-1", b"s3cret").await.unwrap().unwrap();
    svc.shutdown().await;
}

#[tokio::test]
async fn partly_received_frames_share_one_budget() {
    let svc = TestService::start(|c| {
        c.spark_max_frame = 1 << 20;
        c.spark_frame_memory = 2 << 20;
        c.spark_frame_memory_per_peer = Some(2 << 20);
        c.spark_idle_timeout = Duration::from_secs(2);
    })
    .await;
    // Six clients each declare a 1 MiB frame, send 900 KiB of it, then trickle a byte now and
    // then so that they are never idle: together they would hold 5.7 MiB (a frame's declared
    // length is reserved as its header arrives); the budget is 2 MiB. They all come from one
    // address, whose share is here the whole budget (see `peers` for the share).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(svc.spark).await.unwrap();
        let mut stopped = stopped.clone();
        clients.push(tokio::spawn(async move {
            let _ = s.write_all(&frame_start(1 << 20, 900 << 10)).await;
            let mut buf = [0u8; 64];
            let deadline = Instant::now() + Duration::from_secs(60);
            // Whether the server closed the connection.
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return true },
                    _ = stopped.changed() => return false,
                    () = tokio::time::sleep(Duration::from_millis(300)) => {
                        if s.write_all(&[0]).await.is_err() || Instant::now() > deadline {
                            return true;
                        }
                    }
                }
            }
        }));
    }
    let admin = svc.admin.to_string();
    let reserved = metric_reaches(
        &admin,
        "shuffle_spark_frame_memory_bytes",
        1_500_000.0,
        Duration::from_secs(20),
    )
    .await;
    assert!(reserved <= (2 << 20) as f64, "{reserved}");
    // Those that cannot get memory wait the idle timeout and are closed.
    metric_reaches(
        &admin,
        r#"shuffle_spark_frame_memory_exhausted_total{limit="total"}"#,
        1.0,
        Duration::from_secs(20),
    )
    .await;
    let m = svc.metrics().await;
    let v = metric(&m, "shuffle_spark_frame_memory_bytes").unwrap();
    assert!(v <= (2 << 20) as f64, "{v}");
    stop.send(true).unwrap();
    let mut closed = 0;
    for c in clients {
        closed += usize::from(c.await.unwrap());
    }
    assert!(
        (1..6).contains(&closed),
        "{closed} of 6 closed by the service"
    );
    // Everything is given back once the connections are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&svc.metrics().await, "shuffle_spark_frame_memory_bytes") != Some(0.0) {
        assert!(Instant::now() < deadline, "reservations not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    svc.shutdown().await;
}

#[tokio::test]
async fn silent_connections_are_closed_at_their_deadlines() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::tls::ca();
    crate::tls::issue(&ca, certs.path(), "grpc", 1);
    let files = crate::tls::files(certs.path(), "grpc");
    let svc = TestService::start(move |c| {
        c.grpc_tls = Some(files);
        c.connections.first_byte_timeout = Duration::from_millis(500);
        c.connections.first_request_timeout = Duration::from_millis(1500);
    })
    .await;
    let admin = svc.admin.to_string();

    // A connection that sends nothing.
    let started = Instant::now();
    let mut silent = TcpStream::connect(svc.grpc).await.unwrap();
    closed_by_server(&mut silent, Duration::from_secs(10)).await;
    assert!(started.elapsed() >= Duration::from_millis(500));
    let series =
        r#"shuffle_http_connections_closed_total{listener="grpc",reason="first_byte_timeout"}"#;
    metric_reaches(&admin, series, 1.0, Duration::from_secs(5)).await;

    // A connection that completes TLS and then sends nothing.
    let started = Instant::now();
    let mut tls = tls_connect(svc.grpc, &ca.pem).await;
    closed_by_server(&mut tls, Duration::from_secs(10)).await;
    assert!(started.elapsed() >= Duration::from_millis(1400));
    let series =
        r#"shuffle_http_connections_closed_total{listener="grpc",reason="first_request_timeout"}"#;
    metric_reaches(&admin, series, 1.0, Duration::from_secs(5)).await;

    // A connection that starts a TLS handshake and stops.
    let mut half = TcpStream::connect(svc.grpc).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    closed_by_server(&mut half, Duration::from_secs(10)).await;
    let series = r#"shuffle_http_connections_closed_total{listener="grpc",reason="tls_handshake"}"#;
    metric_reaches(&admin, series, 1.0, Duration::from_secs(5)).await;

    // The admin port: a connection that sends half a request head.
    let mut slow = TcpStream::connect(svc.admin).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHo")
        .await
        .unwrap();
    closed_by_server(&mut slow, Duration::from_secs(10)).await;
    svc.shutdown().await;
}

async fn tls_connect(addr: SocketAddr, ca_pem: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// One frame of a request body the test sends.
type BodyFrame = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>;

/// A request body the test sends frame by frame.
type ChannelBody = http_body_util::StreamBody<tokio_stream::wrappers::ReceiverStream<BodyFrame>>;

/// A response the test awaits on a task.
type PendingResponse =
    tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>>;

/// An HTTP/2 client connection that answers the server's PINGs and sends its own every
/// 100 ms; the task ends when the server closes the connection.
async fn h2_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<ChannelBody>,
    tokio::task::JoinHandle<()>,
) {
    h2_client_on(TcpStream::connect(addr).await.unwrap(), None).await
}

/// [`h2_client`] on a connected socket, with a stream window of `stream_window` bytes when
/// given (what the client lets the server send before it reads).
async fn h2_client_on(
    tcp: TcpStream,
    stream_window: Option<u32>,
) -> (
    hyper::client::conn::http2::SendRequest<ChannelBody>,
    tokio::task::JoinHandle<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true);
    if let Some(w) = stream_window {
        builder.initial_stream_window_size(w);
    }
    let (send, conn) = builder.handshake(TokioIo::new(tcp)).await.unwrap();
    (
        send,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

/// A gRPC call whose request body the test sends (`tx`); the response is awaited on a task.
fn grpc_call(
    send: &mut hyper::client::conn::http2::SendRequest<ChannelBody>,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (tokio::sync::mpsc::Sender<BodyFrame>, PendingResponse) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let response = tokio::spawn(send.send_request(request.body(body).unwrap()));
    (tx, response)
}

/// One DATA frame.
fn data(b: &[u8]) -> BodyFrame {
    Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(b)))
}

/// A TCP connection to `addr` from `source` (another address of the loopback network is
/// another peer).
async fn connect_from(source: &str, addr: impl std::fmt::Display) -> TcpStream {
    let addr: SocketAddr = addr.to_string().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// [`reqwest_get`] from `source`.
async fn get_from(source: &str, addr: impl std::fmt::Display, path: &str) -> String {
    let mut s = connect_from(source, &addr).await;
    let _ = s
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn idle_http2_connections_are_closed_and_so_are_requests_that_stop_moving() {
    use http_body_util::BodyExt as _;
    let idle = Duration::from_secs(1);
    let svc = TestService::start(move |c| {
        c.connections.idle_timeout = idle;
        c.connections.first_byte_timeout = Duration::from_millis(500);
        c.connections.first_request_timeout = Duration::from_millis(1500);
    })
    .await;
    let admin = svc.admin.to_string();

    // The preface and PINGs, never a request: closed at the first-request deadline.
    let started = Instant::now();
    let (_send, conn) = h2_client(svc.grpc).await;
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("a connection without a request stays open")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1400));
    let series =
        r#"shuffle_http_connections_closed_total{listener="grpc",reason="first_request_timeout"}"#;
    metric_reaches(&admin, series, 1.0, Duration::from_secs(5)).await;

    // A health check whose request body comes a byte every 0.6 idle timeouts, three idle
    // timeouts in all: it never stops moving, so the connection stays.
    let (mut send, mut conn) = h2_client(svc.grpc).await;
    let (tx, response) = grpc_call(&mut send, svc.grpc, "/grpc.health.v1.Health/Check", None);
    for _ in 0..5 {
        let next = Instant::now() + idle * 3 / 5;
        while Instant::now() < next {
            assert!(!conn.is_finished(), "closed while the request body moved");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tx.send(data(&[0])).await.unwrap();
    }
    drop(tx);
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), [0, 0, 0, 0, 2, 8, 1], "SERVING");
    let answered = Instant::now();

    // Then idle, still sending PINGs: closed after the idle timeout.
    tokio::time::timeout(Duration::from_secs(10), &mut conn)
        .await
        .expect("an idle connection answering PINGs stays open")
        .unwrap();
    assert!(answered.elapsed() >= idle - Duration::from_millis(100));
    let series = r#"shuffle_http_connections_closed_total{listener="grpc",reason="idle"}"#;
    metric_reaches(&admin, series, 1.0, Duration::from_secs(5)).await;

    // A health check whose headers come and whose body never does, its client answering
    // PINGs: the request is in progress but does not move, so the connection is closed after
    // the idle timeout (it used to be held for as long as the client liked).
    let (mut send, conn) = h2_client(svc.grpc).await;
    let (_tx, response) = grpc_call(&mut send, svc.grpc, "/grpc.health.v1.Health/Check", None);
    let sent = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("a request that never sends its body holds its connection")
        .unwrap();
    assert!(sent.elapsed() >= idle - Duration::from_millis(100));
    let r = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_err(), "{r:?}");
    let series = r#"shuffle_http_connections_closed_total{listener="grpc",reason="stalled"}"#;
    metric_reaches(&admin, series, 1.0, Duration::from_secs(5)).await;
    svc.shutdown().await;
}

/// Starts the real binary like [`spawn_service`], its open-file limit (soft and hard) set to
/// `nofile`, its log lines sent to the returned channel.
async fn spawn_limited(
    dir: &std::path::Path,
    extra: &[&str],
    nofile: Option<u64>,
) -> (
    tokio::process::Child,
    Ready,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::AsyncBufReadExt as _;
    std::fs::create_dir_all(dir.join("vol")).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_shuffle-service"));
    cmd.args([
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--spark-listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir)
    .arg("--volume")
    .arg(format!("{}:hostPath", dir.join("vol").display()))
    .args(extra)
    .env("LOG_FORMAT", "json")
    .env_remove("RUST_LOG")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    if let Some(n) = nofile {
        set_nofile(&mut cmd, n);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ready = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("service exited before it was ready");
        let _ = tx.send(line.clone());
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"] == "shuffle service ready" {
            let s = |k: &str| f[k].as_str().unwrap().to_owned();
            break Ready {
                grpc: s("grpc"),
                admin: s("admin"),
                spark: s("spark"),
            };
        }
    };
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            let _ = tx.send(l);
        }
    });
    (child, ready, rx)
}

/// Sets the child's open-file limit, soft and hard, so that it cannot raise it.
#[allow(unsafe_code)]
fn set_nofile(cmd: &mut tokio::process::Command, n: u64) {
    use rustix::process::{Resource, Rlimit, setrlimit};
    // SAFETY: the closure runs in the child between fork and exec; it makes one system call
    // (setrlimit), which is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(n),
                    maximum: Some(n),
                },
            )
            .map_err(std::io::Error::from)
        });
    }
}

async fn healthz_answers(admin: &str) {
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest_get(&format!("http://{admin}/healthz")),
    )
    .await
    .expect("/healthz did not answer");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

async fn spark_answers(spark: &str) {
    use spark_protocol::message::BlockTransferMessage as Btm;
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = spark_protocol::client::Client::connect(spark)
            .await
            .unwrap();
        c.call(&Btm::GetLocalDirsForExecutors {
            app_id: "app-nobody".into(),
            exec_ids: vec!["1".into()],
        })
        .await
        .unwrap()
    })
    .await
    .expect("the Spark port did not answer");
    assert!(r.is_err(), "an unknown application: {r:?}");
}

#[tokio::test]
async fn a_flood_of_silent_grpc_connections_leaves_the_spark_port_and_probes_answering() {
    let dir = tempfile::tempdir().unwrap();
    // 256 descriptors in all; 300 silent connections on the gRPC port would take every one.
    let (_child, ready, _logs) = spawn_limited(
        dir.path(),
        &[
            "--grpc-max-connections",
            "64",
            "--admin-max-connections",
            "16",
            "--spark-max-connections",
            "32",
            "--spark-open-files",
            "64",
            "--connection-first-byte-timeout",
            "3s",
        ],
        Some(256),
    )
    .await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(&ready.grpc).await.unwrap());
    }
    healthz_answers(&ready.admin).await;
    spark_answers(&ready.spark).await;
    let refused =
        r#"shuffle_http_connections_refused_total{listener="grpc",reason="max_connections"}"#;
    metric_reaches(&ready.admin, refused, 200.0, Duration::from_secs(10)).await;
    // The silent ones within the cap are closed at the first-byte deadline.
    let closed =
        r#"shuffle_http_connections_closed_total{listener="grpc",reason="first_byte_timeout"}"#;
    metric_reaches(&ready.admin, closed, 64.0, Duration::from_secs(20)).await;
    for s in &mut flood {
        closed_by_server(s, Duration::from_secs(10)).await;
    }
    healthz_answers(&ready.admin).await;
    spark_answers(&ready.spark).await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn memory_taken_by_a_burst_of_tls_handshakes_is_given_back() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::tls::ca();
    crate::tls::issue(&ca, certs.path(), "grpc", 1);
    let (cert, key) = (
        certs.path().join("grpc.crt").display().to_string(),
        certs.path().join("grpc.key").display().to_string(),
    );
    let (child, ready, _logs) = spawn_limited(
        dir.path(),
        &[
            "--grpc-tls-cert",
            &cert,
            "--grpc-tls-key",
            &key,
            // All 500 come from one address.
            "--grpc-max-connections-per-peer",
            "1024",
        ],
        None,
    )
    .await;
    let pid = child.id().unwrap();
    let addr: SocketAddr = ready.grpc.parse().unwrap();
    healthz_answers(&ready.admin).await;
    let before = rss_kib(pid);
    // 500 handshakes, all held open at once, then closed.
    let mut open = Vec::new();
    for chunk in 0..10 {
        let batch: Vec<_> = (0..50)
            .map(|_| {
                let pem = ca.pem.clone();
                tokio::spawn(async move { tls_connect(addr, &pem).await })
            })
            .collect();
        for t in batch {
            open.push(t.await.unwrap());
        }
        assert_eq!(open.len(), (chunk + 1) * 50);
    }
    let peak = rss_kib(pid);
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(15);
    let target = before + (peak.saturating_sub(before)) / 2;
    let mut after = rss_kib(pid);
    while after > target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss_kib(pid);
    }
    eprintln!("RSS before {before} KiB, with 500 TLS connections {peak} KiB, after {after} KiB");
    assert!(peak > before, "the burst took memory: {before} -> {peak}");
    assert!(
        after <= target,
        "RSS before {before} KiB, peak {peak} KiB, after {after} KiB"
    );
}

#[tokio::test]
async fn a_refused_certificate_reload_is_logged_counted_and_the_expiry_exported() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::tls::ca();
    let der = crate::tls::issue(&ca, certs.path(), "grpc", 1);
    let expiry = service_runtime::tls::not_after(&der.into()).unwrap();
    let (cert, key) = (
        certs.path().join("grpc.crt").display().to_string(),
        certs.path().join("grpc.key").display().to_string(),
    );
    let (_child, ready, mut logs) = spawn_limited(
        dir.path(),
        &["--grpc-tls-cert", &cert, "--grpc-tls-key", &key],
        None,
    )
    .await;
    let m = reqwest_get(&format!("http://{}/metrics", ready.admin)).await;
    assert_eq!(
        metric(
            &m,
            r#"shuffle_tls_certificate_expiry_timestamp_seconds{listener="grpc"}"#
        ),
        Some(expiry as f64),
        "{m}"
    );
    // A certificate that does not parse: refused, logged at the default level, counted.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let line = tokio::time::timeout_at(deadline, logs.recv())
            .await
            .expect("no refusal logged")
            .expect("log closed");
        if line.contains("TLS certificate not reloaded") {
            assert!(line.contains("ERROR"), "{line}");
            break;
        }
    }
    let series = r#"shuffle_tls_certificate_reloads_total{listener="grpc",result="refused"}"#;
    metric_reaches(&ready.admin, series, 1.0, Duration::from_secs(5)).await;
    // A new certificate: reloaded, logged, counted, and its expiry exported.
    crate::tls::issue(&ca, certs.path(), "grpc", 2);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let line = tokio::time::timeout_at(deadline, logs.recv())
            .await
            .expect("no reload logged")
            .expect("log closed");
        if line.contains("TLS certificate reloaded") {
            assert!(line.contains("INFO"), "{line}");
            break;
        }
    }
    let series = r#"shuffle_tls_certificate_reloads_total{listener="grpc",result="reloaded"}"#;
    metric_reaches(&ready.admin, series, 1.0, Duration::from_secs(5)).await;
}
