//! The Spark protocol listener: accepts connections up to a limit (beyond it a connection is
//! closed at once, which Spark's client retries) and within the shares of
//! [`super::admission`] (per peer, then per application), runs the TLS handshake when configured
//! (bounded in time, on the connection's own task), serves each on its own task, and on
//! `stop` stops accepting and lets connections finish what they were asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use service_runtime::accept::{Accepted, Acceptor};
use service_runtime::peer::PeerKey;
use service_runtime::tls::HANDSHAKE_TIMEOUT;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::{Admission, Refused};
use super::conn::{self, Limits};
use super::deadline::Deadline;
use super::handler::Shared;
use super::transport::Wire;

/// The listener's connection caps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    /// Most connections at once.
    pub max_connections: usize,
    /// A peer's share (with authentication: of connections not yet authenticated).
    pub max_per_peer: usize,
    /// An application's share of authenticated connections.
    pub max_per_app: usize,
    /// IPv6 peers are grouped by this prefix length.
    pub ipv6_prefix: u8,
}

/// Accepts until `stop`, then waits for the open connections.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
    caps: Caps,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let Caps {
        max_connections,
        max_per_peer,
        max_per_app,
        ipv6_prefix,
    } = caps;
    let tracker = TaskTracker::new();
    let acceptor = Acceptor::new(listener, max_connections);
    let admission = Admission::new(max_per_peer, max_per_app, shared.secrets.enabled());
    let metrics = shared.core.metrics().clone();
    let trimmer = Arc::new(crate::memory::Trimmer::default());
    // Connections accepted and not yet closed, handshakes included.
    let open = Arc::new(AtomicUsize::new(0));
    while let Some(accepted) = acceptor.next(&stop).await {
        let (sock, peer, slot) = match accepted {
            Accepted::Open(c) => (c.stream, c.peer, c.permit),
            Accepted::Refused(peer, why) => {
                metrics.spark_connections_refused.inc();
                if let Some(left_out) = shared.logs.connection_limit.check() {
                    tracing::warn!(peer = %peer, limit = why.label(), max_connections, max_per_peer, left_out, "connection limit reached; closing");
                }
                continue;
            }
            Accepted::Failed(e) => {
                // Out of descriptors and the like: the acceptor has backed off.
                metrics.accept_failures.with_label_values(&["spark"]).inc();
                if let Some(left_out) = shared.logs.accept_failed.check() {
                    tracing::warn!(error = %e, left_out, "accept failed");
                }
                continue;
            }
        };
        let mut ticket = match admission.admit(PeerKey::new(peer.ip(), ipv6_prefix)) {
            Ok((ticket, _)) => ticket,
            Err(Refused::Peer | Refused::App) => {
                metrics.spark_connections_refused.inc();
                if let Some(left_out) = shared.logs.connection_limit.check() {
                    tracing::warn!(peer = %peer, limit = "max_connections_per_peer", max_connections, max_per_peer, left_out, "connection limit reached; closing");
                }
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let limits = limits.clone();
        let stop = stop.clone();
        let metrics = metrics.clone();
        let trimmer = Arc::clone(&trimmer);
        let tls = tls.clone();
        let open = Arc::clone(&open);
        tracker.spawn(async move {
            // Counted from the accept: a burst of handshakes, failed ones included, leaves
            // memory behind too, which the trim after the burst gives back.
            trimmer.opened(open.fetch_add(1, Ordering::SeqCst) + 1);
            let served = async {
                let wire = match tls {
                    None => Wire::Tcp(sock),
                    Some(config) => {
                        let accept = tokio_rustls::TlsAcceptor::from(config).accept(sock);
                        // A handshake is abandoned when the connection is closed to make room
                        // for a newer one of its peer.
                        let evicted = ticket.evicted();
                        let handshake = tokio::select! {
                            h = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept) => h,
                            () = evicted.cancelled() => {
                                metrics
                                    .spark_connections_closed
                                    .with_label_values(&[Deadline::Evicted.label()])
                                    .inc();
                                return;
                            }
                        };
                        match handshake {
                            Ok(Ok(t)) => Wire::Tls(Box::new(t)),
                            Ok(Err(e)) => {
                                let reason = handshake_failure(&e);
                                metrics
                                    .spark_tls_handshake_failures
                                    .with_label_values(&[reason])
                                    .inc();
                                tracing::debug!(error = %e, reason, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                metrics
                                    .spark_tls_handshake_failures
                                    .with_label_values(&["timeout"])
                                    .inc();
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                metrics.spark_connections.inc();
                conn::serve(wire, peer, &mut ticket, shared, limits, stop).await;
                metrics.spark_connections.dec();
            };
            served.await;
            // The peer's count and the slot go together.
            drop(ticket);
            drop(slot);
            if trimmer.closed(open.fetch_sub(1, Ordering::SeqCst) - 1) {
                let _ = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// The metric's reason for a failed handshake: the client went away (`closed`), or a TLS
/// error (`refused`: protocol, version, certificate).
fn handshake_failure(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    if matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    ) {
        "closed"
    } else {
        "refused"
    }
}
