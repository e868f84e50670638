//! A TCP proxy in front of the S3-protocol server (moto) whose behaviour a test switches:
//! forwarding, refusing connections (a store that is down), accepting without answering (a hung
//! store), or failing only the requests of presigned URLs (a store that refuses the pods but
//! not the server). It reads the head of the first request of each connection, so a test can
//! see what clients sent to the store.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Every connection is forwarded.
pub(crate) const FORWARD: u8 = 0;
/// Every connection is reset at once.
pub(crate) const REFUSE: u8 = 1;
/// Every connection is accepted and never answered.
pub(crate) const HANG: u8 = 2;
/// Requests of presigned URLs are answered 403; others are forwarded.
pub(crate) const REFUSE_PRESIGNED: u8 = 3;
/// Answers to requests of presigned URLs are cut after [`CUT_AFTER`] bytes; others are
/// forwarded.
pub(crate) const CUT_PRESIGNED: u8 = 4;

/// Bytes of an answer that [`CUT_PRESIGNED`] lets through.
const CUT_AFTER: usize = 4096;

/// The proxy.
pub(crate) struct Proxy {
    pub(crate) endpoint: String,
    mode: Arc<AtomicU8>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts forwarding to `upstream` (`host:port`).
    pub(crate) async fn start(upstream: String) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (m, h) = (Arc::clone(&mode), Arc::clone(&heads));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((client, _)) = l.accept().await {
                match m.load(Ordering::SeqCst) {
                    // Reset at once: what a client sees of a store that is down.
                    REFUSE => {
                        let _ = client.set_zero_linger();
                        drop(client);
                    }
                    // Accept and never answer.
                    HANG => held.push(client),
                    mode => {
                        let up = upstream.clone();
                        let heads = Arc::clone(&h);
                        tokio::spawn(async move {
                            let _ = relay(client, &up, mode, &heads).await;
                        });
                    }
                }
            }
        });
        Self {
            endpoint,
            mode,
            heads,
        }
    }

    pub(crate) fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// The heads of the first requests of connections that asked for a presigned URL.
    pub(crate) fn presigned_requests(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| is_presigned(h))
            .cloned()
            .collect()
    }
}

/// Whether a request head asks for a presigned URL (AWS signature version 4 in the query).
fn is_presigned(head: &str) -> bool {
    head.lines()
        .next()
        .is_some_and(|l| l.contains("X-Amz-Signature="))
}

/// Reads the first request head, records it, and then refuses, forwards or cuts the
/// connection as `mode` says.
async fn relay(
    mut client: TcpStream,
    upstream: &str,
    mode: u8,
    heads: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 << 10 {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let presigned = is_presigned(&head);
    heads.lock().unwrap().push(head);
    if presigned && mode == REFUSE_PRESIGNED {
        client
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
        return client.shutdown().await;
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&buf).await?;
    if !(presigned && mode == CUT_PRESIGNED) {
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    }
    // Let the head and a little of the body through, then close: a connection that breaks
    // in the middle of the answer.
    let mut sent = 0;
    while sent < CUT_AFTER {
        let n = server.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        let n = n.min(CUT_AFTER - sent);
        client.write_all(&chunk[..n]).await?;
        sent += n;
    }
    let _ = client.set_zero_linger();
    Ok(())
}
