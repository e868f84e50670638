//! The gRPC and admin listeners: which connections they keep and for how long. Each listener
//! has a connection cap and a cap per peer (beyond either a connection is closed at once, so
//! one client cannot take the slots of the others, the kubelet's probes among them); a
//! connection must send its first byte within the first-byte timeout, and finish its TLS
//! handshake and send its first request head (after the HTTP/2 preface) within the
//! first-request timeout, both counted from the accept; afterwards a connection with no
//! request in progress for the idle timeout is closed gracefully (HTTP/2 GOAWAY; PINGs and
//! other frames do not count as activity), and one whose requests in progress have moved no
//! body byte for as long is closed at once (see [`service_runtime::progress`]). Freed memory
//! is given back after a burst of connections (see [`crate::memory`]).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounter, IntGauge};
use service_runtime::accept::{Accepted, Acceptor, Refusal};
use service_runtime::progress::{Activity, Expiry, Watched};
use service_runtime::tls::HANDSHAKE_TIMEOUT;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::config::ConnectionLimits;
use crate::linger::Lingering;
use crate::memory::Trimmer;
use crate::metrics::Metrics;
use crate::metrics::labels::CloseReason;

/// The request body the listeners' services get: hyper's, its frames counted as progress.
pub(crate) type RequestBody = Watched<Incoming>;

/// How long a connection closed for idleness may take to say goodbye (GOAWAY, lingering
/// requests) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

impl From<Expiry> for CloseReason {
    fn from(e: Expiry) -> Self {
        match e {
            Expiry::FirstRequest => Self::FirstRequest,
            Expiry::Idle => Self::Idle,
            Expiry::Stalled => Self::Stalled,
        }
    }
}

/// The HTTP version a listener speaks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Protocol {
    /// gRPC: HTTP/2 only, with these windows and frame size.
    Grpc {
        /// Per-stream window.
        stream_window: u32,
        /// Connection window.
        connection_window: u32,
        /// Largest frame.
        max_frame: u32,
    },
    /// Admin: HTTP/1.1 only.
    Admin,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Self::Grpc { .. } => "grpc",
            Self::Admin => "admin",
        }
    }

    fn builder(self, limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        match self {
            Self::Grpc {
                stream_window,
                connection_window,
                max_frame,
            } => {
                b = b.http2_only();
                b.http2()
                    .timer(TokioTimer::new())
                    .initial_stream_window_size(stream_window)
                    .initial_connection_window_size(connection_window)
                    .max_frame_size(max_frame);
            }
            Self::Admin => {
                b = b.http1_only();
                b.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.first_request_timeout);
            }
        }
        b
    }
}

/// One listener's settings.
#[derive(Debug, Clone)]
pub(crate) struct Listener {
    /// What it speaks.
    pub protocol: Protocol,
    /// Its connection cap.
    pub max_connections: usize,
    /// Its connection cap per peer (IPv4 address, IPv6 address or `--peer-ipv6-prefix` network).
    pub max_connections_per_peer: usize,
    /// Deadlines and idle close.
    pub limits: ConnectionLimits,
    /// TLS, when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Per-listener metric handles.
#[derive(Debug, Clone)]
struct Counters {
    open: IntGauge,
    refused: [IntCounter; 2],
    accept_failed: IntCounter,
    closed: [IntCounter; 5],
}

impl Counters {
    fn new(m: &Metrics, listener: &str) -> Self {
        Self {
            open: m.http_connections.with_label_values(&[listener]),
            refused: Refusal::ALL.map(|r| {
                m.http_connections_refused
                    .with_label_values(&[listener, r.label()])
            }),
            accept_failed: m.accept_failures.with_label_values(&[listener]),
            closed: CloseReason::ALL.map(|r| {
                m.http_connections_closed
                    .with_label_values(&[listener, r.label()])
            }),
        }
    }

    fn closed(&self, reason: CloseReason) {
        self.closed[reason as usize].inc();
    }

    fn refused(&self, refusal: Refusal) {
        self.refused[refusal as usize].inc();
    }
}

/// Serves `service` on `listener` until `stop`; then lets each connection finish its
/// requests (HTTP/2 GOAWAY, HTTP/1 close after the response) and waits for them.
/// `lingering` tracks the graceful closes of the sockets.
pub(crate) async fn serve<S, B>(
    listener: TcpListener,
    settings: Listener,
    service: S,
    metrics: &Metrics,
    lingering: TaskTracker,
    stop: CancellationToken,
) where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let name = settings.protocol.label();
    let counters = Counters::new(metrics, name);
    let builder = settings.protocol.builder(&settings.limits);
    let acceptor = Acceptor::new(listener, settings.max_connections)
        .per_peer(settings.max_connections_per_peer)
        .ipv6_prefix(settings.limits.peer_ipv6_prefix);
    let trimmer = Arc::new(Trimmer::default());
    let tracker = TaskTracker::new();
    while let Some(accepted) = acceptor.next(&stop).await {
        let (stream, permit) = match accepted {
            Accepted::Open(c) => (c.stream, c.permit),
            Accepted::Refused(peer, refusal) => {
                counters.refused(refusal);
                tracing::debug!(
                    listener = name,
                    %peer,
                    cap = refusal.label(),
                    max_connections = settings.max_connections,
                    max_connections_per_peer = settings.max_connections_per_peer,
                    "connection cap reached; closing"
                );
                continue;
            }
            Accepted::Failed(e) => {
                counters.accept_failed.inc();
                tracing::debug!(listener = name, error = %e, "accept failed");
                continue;
            }
        };
        counters.open.inc();
        trimmer.opened(acceptor.open_connections());
        let conn = Conn {
            settings: settings.clone(),
            counters: counters.clone(),
            builder: builder.clone(),
            lingering: lingering.clone(),
            stop: stop.clone(),
        };
        let service = service.clone();
        let trimmer = Arc::clone(&trimmer);
        tracker.spawn(async move {
            let counters = conn.counters.clone();
            conn.run(stream, service).await;
            counters.open.dec();
            drop(permit);
            if trimmer.closed(counters.open.get().max(0) as usize) {
                let _ = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// One accepted connection.
struct Conn {
    settings: Listener,
    counters: Counters,
    builder: auto::Builder<TokioExecutor>,
    lingering: TaskTracker,
    stop: CancellationToken,
}

/// A connection's stream once its first byte came and TLS, if any, is done.
type Io = Either<tokio_rustls::server::TlsStream<Lingering>, Lingering>;

impl Conn {
    /// Waits for the first byte, then runs the TLS handshake; `None` when the connection is
    /// closed for either (counted).
    async fn open(
        &self,
        stream: tokio::net::TcpStream,
        accepted: Instant,
        first_deadline: Instant,
    ) -> Option<Io> {
        // A client that connects and sends nothing holds a descriptor: it gets a short
        // deadline of its own.
        let mut byte = [0u8; 1];
        let first_byte = self.settings.limits.first_byte_timeout;
        match tokio::time::timeout(first_byte, stream.peek(&mut byte)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return None,
            Err(_) => {
                self.counters.closed(CloseReason::FirstByte);
                return None;
            }
        }
        let stream = Lingering::new(stream, self.lingering.clone());
        let Some(config) = &self.settings.tls else {
            return Some(Either::Right(stream));
        };
        let deadline = first_deadline.min(accepted + HANDSHAKE_TIMEOUT);
        let accept = tokio_rustls::TlsAcceptor::from(Arc::clone(config)).accept(stream);
        match tokio::time::timeout_at(deadline, accept).await {
            Ok(Ok(s)) => Some(Either::Left(s)),
            Ok(Err(e)) => {
                self.counters.closed(CloseReason::TlsHandshake);
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.counters.closed(CloseReason::TlsHandshake);
                tracing::debug!("TLS handshake timed out");
                None
            }
        }
    }

    async fn run<S, B>(self, stream: tokio::net::TcpStream, service: S)
    where
        S: tower::Service<http::Request<RequestBody>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let limits = self.settings.limits;
        let accepted = Instant::now();
        let first_deadline = accepted + limits.first_request_timeout;
        // Before the first byte and during the handshake there is nothing to finish at stop.
        let io = tokio::select! {
            io = self.open(stream, accepted, first_deadline) => match io {
                Some(io) => io,
                None => return,
            },
            () = self.stop.cancelled() => return,
        };
        let activity = Activity::new();
        let tracked = {
            let activity = Arc::clone(&activity);
            tower::service_fn(move |req: http::Request<Incoming>| {
                let guard = activity.begin();
                let service = service.clone();
                let req = req.map(|body| Watched::new(body, &activity));
                async move {
                    let response = service.oneshot(req).await?;
                    // The request stays in progress until its response body is done; each
                    // piece the connection takes from it is progress.
                    Ok::<_, S::Error>(response.map(|body| Watched::ending(body, guard)))
                }
            })
        };
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(tracked));
        let mut conn = std::pin::pin!(conn);
        // Set when the connection was told to close: dropped at this instant if it has not.
        let mut give_up: Option<Instant> = None;
        let mut closing = false;
        let expired = activity.expired(first_deadline, limits.idle_timeout, limits.idle_timeout);
        let mut expired = std::pin::pin!(expired);
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                expiry = expired.as_mut(), if !closing => {
                    let reason = CloseReason::from(expiry);
                    self.counters.closed(reason);
                    tracing::debug!(reason = reason.label(), "closing connection");
                    if matches!(reason, CloseReason::FirstRequest | CloseReason::Stalled) {
                        // No request was ever made, or nothing moved for the idle timeout:
                        // nothing to finish (HTTP/1 would wait for a half-sent head, HTTP/2
                        // for streams that do not move).
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    give_up = Some(Instant::now() + CLOSE_GRACE);
                }
                () = self.stop.cancelled(), if !closing => {
                    // Requests in progress finish; the server bounds the wait.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep_until(give_up.unwrap_or_else(Instant::now)), if give_up.is_some() => {
                    return;
                }
            }
        }
    }
}
