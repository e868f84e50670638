//! Clients that hold resources by being slow: connections that never send a request head
//! (or only part of one), and uploads that trickle a byte just often enough to dodge the idle
//! timeout. Each is cut off within its documented limit, and real clients get through.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::*;

/// Reads until the server closes the connection; returns how long that took.
async fn closed_within(mut s: TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn connections_without_a_request_head_are_closed_at_the_header_timeout() {
    let timeout = Duration::from_millis(500);
    let s = TestServer::start(|c| {
        c.header_read_timeout = timeout;
        c.max_connections = 8;
    })
    .await;
    // Eight connections fill the cap: silent, one byte, an HTTP/2 preface prefix, half a head.
    let mut conns = Vec::new();
    for prefix in [
        &b""[..],
        b"",
        b"",
        b"",
        b"G",
        b"P",
        b"PRI * HTTP/2",
        b"GET /healthz HT",
    ] {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(prefix).await.unwrap();
        conns.push(c);
    }
    for c in conns {
        let took = closed_within(c, Duration::from_secs(10)).await;
        assert!(took <= Duration::from_secs(5), "closed after {took:?}");
    }
    // The slots are free again: a real client gets in.
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Those hyper had not started reading a head for are counted here; a half head may be
    // cut by hyper's own header timer first.
    let counted = metric(
        &s.metrics().await,
        "staging_connections_header_timeout_total",
    )
    .unwrap();
    assert!((6.0..=8.0).contains(&counted), "{counted}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_keep_alive_connection_that_goes_silent_is_closed_too() {
    let timeout = Duration::from_millis(500);
    let s = TestServer::start(|c| c.header_read_timeout = timeout).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: hyper's header timer covers the next request head.
    let took = closed_within(c, Duration::from_secs(10)).await;
    assert!(took <= Duration::from_secs(5), "closed after {took:?}");
    s.shutdown().await;
}

/// A body that sends one byte every `every`, `n` times.
fn trickle(every: Duration, n: usize) -> reqwest::Body {
    let s = futures::stream::unfold(0usize, move |i| async move {
        if i == n {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")),
            i + 1,
        ))
    });
    reqwest::Body::wrap_stream(s)
}

#[tokio::test]
async fn trickling_uploads_are_refused_and_free_their_slots() {
    let s = TestServer::start(|c| {
        c.limits.max_concurrent_uploads = 2;
        c.limits.upload_min_rate = 1000;
        c.limits.upload_rate_window = Duration::from_secs(1);
    })
    .await;
    let url = s.url("/api/v1/resources?namespace=ns");
    // Two trickling uploads take both slots: a byte every 100 ms never hits the idle timeout.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let req = s
                .client
                .post(&url)
                .header("content-type", "application/gzip")
                .body(trickle(Duration::from_millis(100), 600));
            tokio::spawn(req.send())
        })
        .collect();
    let mut statuses = Vec::new();
    for t in slow {
        let r = t.await.unwrap();
        statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
    }
    // Refused (408), or the connection cut while the client was still sending.
    assert!(
        statuses.iter().all(|s| *s == 408 || *s == 0),
        "{statuses:?}"
    );
    assert_eq!(
        metric(&s.metrics().await, "staging_uploads_too_slow_total"),
        Some(2.0)
    );
    // A real upload goes through.
    s.upload("ns", random_bytes(100_000)).await;
    s.shutdown().await;
}

#[tokio::test]
async fn the_admin_listener_gets_in_when_the_api_listener_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = staging_server::Config::for_data_dir(dir.path());
    config.max_connections = 2;
    config.validate().unwrap();
    let state = staging_server::AppState::open(&config, staging_server::Overrides::default())
        .await
        .unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_addr, admin_addr) = (api.local_addr().unwrap(), admin.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let listeners = staging_server::Listeners {
            api,
            admin: Some(admin),
        };
        staging_server::run(&config, state, listeners, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    // Two silent connections fill the API listener's cap (30 s header timeout)...
    let held = [
        TcpStream::connect(api_addr).await.unwrap(),
        TcpStream::connect(api_addr).await.unwrap(),
    ];
    let client = reqwest::Client::new();
    // ...which a third, once both are accepted, finds closed at once.
    let mut refused = false;
    for _ in 0..50 {
        let r = client
            .get(format!("http://{api_addr}/healthz"))
            .send()
            .await;
        if r.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "the API listener let a third connection in");
    // The admin listener has a cap of its own.
    let r = client
        .get(format!("http://{admin_addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = client
        .get(format!("http://{admin_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metric(&m, "staging_connections_refused_total").unwrap() >= 1.0);
    drop(held);
    let _ = tx.send(());
    server.await.unwrap();
}
