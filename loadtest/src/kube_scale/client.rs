//! Each simulated node's API client, counting what the API server sends it (requests made,
//! response bytes, watch events: one JSON line each, bookmarks included), and the node's
//! stand-in for the shuffle service's application data, which records each deletion decision.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::BodyExt as _;
use shuffle_service::core::{Claims, PodOwner};
use shuffle_service::kube::Holder;
use spark_protocol::ids::AppId;

/// What one client received.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) events: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    pub(crate) events: u64,
}

impl Counters {
    /// Counts a piece of a response body: its bytes, and its watch events (one JSON line each).
    pub(crate) fn received(&self, data: &[u8]) {
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let lines = data.iter().filter(|&&b| b == b'\n').count();
        self.events.fetch_add(lines as u64, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Sub for Counts {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            requests: self.requests - o.requests,
            bytes: self.bytes - o.bytes,
            events: self.events - o.events,
        }
    }
}

/// A client of `url` (plain HTTP) configured as the service's own, counting into `counters`.
pub(crate) fn client(url: &str, counters: Arc<Counters>) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::new(url.parse()?);
    config.default_retry = false;
    let c = Arc::clone(&counters);
    let count_requests =
        tower::util::MapRequestLayer::new(move |r: http::Request<kube::client::Body>| {
            c.requests.fetch_add(1, Ordering::Relaxed);
            r
        });
    let count_bodies =
        tower::util::MapResponseLayer::new(move |r: http::Response<Box<kube::client::DynBody>>| {
            let c = Arc::clone(&counters);
            r.map(move |body| {
                body.map_frame(move |f| {
                    if let Some(d) = f.data_ref() {
                        c.received(d);
                    }
                    f
                })
            })
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count_requests)
        .with_layer(&count_bodies)
        .build())
}

/// A deletion decision: node, application, when.
pub(crate) type Decision = (usize, AppId, Instant);

/// One simulated node's application data: the applications whose executors ran on it.
pub(crate) struct Node {
    pub(crate) index: usize,
    claims: Arc<Claims>,
    apps: Mutex<HashSet<AppId>>,
    decisions: Arc<Mutex<Vec<Decision>>>,
}

impl Node {
    pub(crate) fn new(index: usize, decisions: Arc<Mutex<Vec<Decision>>>) -> Self {
        Self {
            index,
            claims: Arc::new(Claims::default()),
            apps: Mutex::new(HashSet::new()),
            decisions,
        }
    }

    /// An executor of `app` registered here (its data arrived).
    pub(crate) fn holds(&self, app: AppId) {
        self.apps.lock().expect("apps").insert(app);
    }
}

impl Holder for Node {
    fn claims(&self) -> &Arc<Claims> {
        &self.claims
    }

    fn has_app(&self, app: &AppId) -> bool {
        self.apps.lock().expect("apps").contains(app)
    }

    fn own_lifecycle(&self, _: &AppId) -> bool {
        false
    }

    async fn set_pod_owner(&self, _: &AppId, _: Option<&PodOwner>) -> shuffle_service::Result<()> {
        Ok(())
    }

    async fn remove_app_following_pods(
        &self,
        app: &AppId,
        _: &'static str,
    ) -> shuffle_service::Result<Option<usize>> {
        if !self.apps.lock().expect("apps").remove(app) {
            return Ok(None);
        }
        let d = (self.index, app.clone(), Instant::now());
        self.decisions.lock().expect("decisions").push(d);
        Ok(Some(1))
    }
}

/// Bytes of a watch event line carrying `object`.
pub(crate) fn line_len(kind: &str, object: &serde_json::Value) -> u64 {
    let v = serde_json::json!({"type": kind, "object": object});
    serde_json::to_vec(&v).map_or(0, |b| b.len() as u64 + 1)
}
