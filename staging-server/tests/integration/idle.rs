//! Idle connections close after the header-read timeout, whatever the protocol: an HTTP/2
//! client that keeps the connection busy with PINGs, but opens no stream, is closed as an
//! idle HTTP/1.1 keep-alive is. One with a stream open stays while the stream moves, and is
//! closed once the stream has moved no body byte for the body idle timeout (a download whose
//! client stopped reading).

use std::time::Duration;

use crate::common::{TestServer, metric, random_bytes};

/// Opens an HTTP/2 connection (prior knowledge) and makes one request on it; returns the
/// request handle, the PING handle and the connection task.
async fn h2_connection(
    s: &TestServer,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::PingPong,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let ping = conn.ping_pong().unwrap();
    let task = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/healthz", s.addr))
        .body(())
        .unwrap();
    let (res, _) = send.send_request(req, true).unwrap();
    let res = res.await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    (send, ping, task)
}

#[tokio::test]
async fn an_http2_connection_that_answers_pings_is_closed_when_idle() {
    let timeout = Duration::from_millis(700);
    let s = TestServer::start(|c| c.header_read_timeout = timeout).await;
    let (_send, mut ping, task) = h2_connection(&s).await;

    // PINGs every 100 ms: the connection is never silent, but no stream is open.
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(10);
    let closed_after = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an idle HTTP/2 connection stayed open for 10 s"
        );
        if ping.ping(h2::Ping::opaque()).await.is_err() {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        closed_after >= timeout - Duration::from_millis(150),
        "{closed_after:?}"
    );
    // The server said GOAWAY: the connection ended without a protocol error.
    let ended = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "staging_connections_header_timeout_total"),
        Some(1.0),
        "{m}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn an_http2_stream_that_moves_keeps_its_connection() {
    let timeout = Duration::from_secs(1);
    let s = TestServer::start(|c| {
        c.header_read_timeout = timeout;
        c.limits.body_idle_timeout = timeout;
    })
    .await;
    let (send, mut ping, _task) = h2_connection(&s).await;
    // An upload whose body comes in pieces, slower than the header and body idle timeouts in
    // total but never pausing for one: the stream moves, the connection is not idle.
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post(format!("http://{}/api/v1/resources?namespace=a", s.addr))
        .header("content-type", "application/gzip")
        .body(())
        .unwrap();
    let (res, mut body) = send.send_request(req, false).unwrap();
    for _ in 0..8 {
        body.send_data(bytes::Bytes::from_static(b"0123456789"), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    body.send_data(bytes::Bytes::new(), true).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), res)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 201);
    // Still open after 2.4 s of upload (more than twice the timeout).
    ping.ping(h2::Ping::opaque()).await.unwrap();
    s.shutdown().await;
}

#[tokio::test]
async fn a_download_whose_client_stops_reading_is_closed() {
    let stall = Duration::from_secs(1);
    let s = TestServer::start(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.limits.body_idle_timeout = stall;
    })
    .await;
    let up = s.upload("a", random_bytes(4 << 20)).await;
    let (id, token) = (up["id"].as_str().unwrap(), up["token"].as_str().unwrap());
    // A client whose stream window is 16 KiB: the server sends that much, then waits for the
    // client to read.
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(16 << 10)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let mut ping = conn.ping_pong().unwrap();
    let task = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get(format!("http://{}/api/v1/resources/{id}/content", s.addr))
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (res, _) = send.send_request(req, true).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), res)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    // Slow but moving: 128 KiB every half body idle timeout, for three of them.
    let mut received = 0;
    for _ in 0..6 {
        let next = tokio::time::Instant::now() + stall / 2;
        while tokio::time::Instant::now() < next {
            assert!(!task.is_finished(), "closed while the download moved");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let round = received + (128 << 10);
        while received < round {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.data())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            received += chunk.len();
            body.flow_control().release_capacity(chunk.len()).unwrap();
        }
    }
    assert!(received > 0 && received < 4 << 20, "{received}");

    // Then it stops reading and only answers and sends PINGs: nothing moves, the window stays
    // at zero. The connection is told to go (GOAWAY) after the body idle timeout and dropped
    // one header timeout later, where it used to be held for as long as the client liked.
    let stopped = tokio::time::Instant::now();
    let deadline = stopped + Duration::from_secs(15);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a download nobody reads holds its connection"
        );
        if ping.ping(h2::Ping::opaque()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stopped.elapsed() >= stall - Duration::from_millis(100));
    let m = s.metrics().await;
    // At least this connection (on a loaded machine a pause of the slow reader longer than
    // the 1 s timeout may also have counted, without closing a download that moved on).
    assert!(
        metric(&m, "staging_connections_stalled_total").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    drop(body);
    s.shutdown().await;
}
