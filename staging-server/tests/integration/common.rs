//! Test harness: an in-process server on 127.0.0.1:0 with a manual clock.

use std::net::SocketAddr;
use std::sync::Arc;

use staging_server::clock::ManualClock;
use staging_server::{AppState, Config, Listeners, Overrides};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) state: AppState,
    pub(crate) clock: ManualClock,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with the default test configuration changed by `tweak`.
    pub(crate) async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tweak, None).await
    }

    /// Starts a server in `dir`, optionally on a given store.
    pub(crate) async fn start_in(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
        store: Option<staging_server::store::BlobStore>,
    ) -> Self {
        Self::start_with(dir, tweak, store, None).await
    }

    /// Starts a server in `dir` with an optional store and Kubernetes client.
    pub(crate) async fn start_with(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
        store: Option<staging_server::store::BlobStore>,
        kube_client: Option<kube::Client>,
    ) -> Self {
        let mut config = Config::for_data_dir(dir.path());
        tweak(&mut config);
        config.validate().unwrap();
        let clock = ManualClock::new();
        let state = AppState::open(
            &config,
            Overrides {
                clock: Some(Arc::new(clock.clone())),
                store,
                registry: None,
                kube_client,
            },
        )
        .await
        .unwrap();
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = api.local_addr().unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let st = state.clone();
        let handle = tokio::spawn(async move {
            let listeners = Listeners {
                api,
                admin: Some(admin),
            };
            staging_server::run(&config, st, listeners, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            admin_addr,
            state,
            clock,
            dir,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The v1 upload of `body` into namespace `ns`, ready to send (it borrows nothing from
    /// the server, so it can be sent from a task of its own).
    pub(crate) fn upload_request(
        &self,
        ns: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(&format!(
                "/api/v1/resources?namespace={ns}&labels=spark-role=driver"
            )))
            .header("content-type", "application/gzip")
            .body(body)
    }

    /// Uploads `bytes` through v1 into namespace `ns`; returns the JSON answer.
    pub(crate) async fn upload(&self, ns: &str, bytes: Vec<u8>) -> serde_json::Value {
        let res = self.upload_request(ns, bytes).send().await.unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        res.json().await.unwrap()
    }

    /// GET of a resource's content with a bearer token.
    pub(crate) async fn get_content(&self, id: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/api/v1/resources/{id}/content")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// The admin listener's /metrics text, after recomputing the stored-data gauges as the
    /// sweep's timer does.
    pub(crate) async fn metrics(&self) -> String {
        self.state.refresh_census().await;
        self.client
            .get(format!("http://{}/metrics", self.admin_addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The public listener's /metrics text, as any client sees it.
    pub(crate) async fn public_metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the server and waits until it has exited.
    pub(crate) async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
        self.dir
    }

    /// Sends the shutdown signal without waiting.
    pub(crate) fn trigger_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().unwrap()
    }
}

/// The value of a sample line `name{labels} value` in Prometheus text.
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sender of a [`fed_body`].
pub(crate) type Feed = tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>;

/// A request body the test sends chunk by chunk through the returned sender (at most
/// `capacity` chunks queued); it ends when the sender is dropped, and until then a slow or
/// stalled client is what the server sees.
pub(crate) fn fed_body(capacity: usize) -> (Feed, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    (tx, reqwest::Body::wrap_stream(stream))
}

/// Random bytes.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand_fill(&mut v);
    v
}

/// Distinct content of `n` bytes (at least 2) for `seed`.
pub(crate) fn content(n: usize, seed: u8) -> Vec<u8> {
    let mut b = random_bytes(n);
    b[0] = seed;
    b[1] = seed.wrapping_mul(31);
    b
}

fn rand_fill(buf: &mut [u8]) {
    // A small xorshift: test data needs no cryptographic randomness.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ buf.len() as u64;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
