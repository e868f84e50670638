//! Serving: the accept loop, connection limits, graceful drain, and the background sweeper.
//!
//! The accept loop is hyper-util's, not `axum::serve`, because a public upload endpoint needs
//! a header-read timeout (slow-loris), idle and stalled connections closed (HTTP/2 included,
//! see [`service_runtime::progress`]) and a connection cap, which `axum::serve` does not offer.
//! On shutdown: readiness turns 503, the listeners close, in-flight requests and transfers get
//! the grace period to finish, then the sweeper is stopped and awaited.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use service_runtime::accept::{Accepted, Acceptor};
use service_runtime::progress::{Activity, Expiry, Watched};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::Config;
use crate::lifecycle::Sweeper;
use crate::routes;
use crate::state::AppState;

/// Most connections open at once on the admin listener (probes, scrapes), apart from the
/// public listener's `max_connections`.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Listeners for [`run`]: bound by the caller, so tests can bind port 0 first.
#[derive(Debug)]
pub struct Listeners {
    /// API listener.
    pub api: TcpListener,
    /// Optional admin listener.
    pub admin: Option<TcpListener>,
}

/// Serves until `shutdown` resolves, then drains within the configured grace period.
///
/// # Errors
/// Never returns an error today; the `Result` leaves room for listener failures.
pub async fn run(
    config: &Config,
    state: AppState,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let cancel = CancellationToken::new();
    let sweeper =
        tokio::spawn(Sweeper::new(state.clone()).run(config.sweep_interval, cancel.clone()));
    if let Some(r) = state.replica() {
        tokio::spawn(std::sync::Arc::clone(r).run(cancel.clone()));
    }
    let owners = config.owners.clone().map(|settings| {
        tokio::spawn(crate::kube::watch::follow(
            state.clone(),
            settings,
            cancel.clone(),
        ))
    });
    let graceful = Arc::new(GracefulShutdown::new());
    let stop = CancellationToken::new();

    let tls = match &config.tls {
        Some(files) => {
            let cert = service_runtime::tls::ReloadingCert::new(files.clone())
                .map_err(std::io::Error::other)?;
            let server_config = cert.server_config(&[b"h2", b"http/1.1"]);
            let metrics = crate::tls_watch::TlsMetrics::new(state.registry())
                .map_err(std::io::Error::other)?;
            crate::tls_watch::record_expiry(&cert, &metrics);
            let stopped = cancel.clone();
            tokio::spawn(crate::tls_watch::watch(
                cert,
                config.tls_reload_interval,
                metrics,
                async move { stopped.cancelled().await },
            ));
            Some(tokio_rustls::TlsAcceptor::from(server_config))
        }
        None => None,
    };
    let mut loops = Vec::new();
    loops.push(tokio::spawn(accept_loop(
        Acceptor::new(listeners.api, config.max_connections),
        tls,
        routes::router(state.clone()),
        Deadlines::of(config),
        state.clone(),
        Arc::clone(&graceful),
        stop.clone(),
    )));
    if let Some(admin) = listeners.admin {
        // A cap of its own, so that probes and scrapes still get in when the public
        // listener is full.
        loops.push(tokio::spawn(accept_loop(
            Acceptor::new(admin, ADMIN_MAX_CONNECTIONS),
            None,
            routes::admin_router(state.clone()),
            Deadlines::of(config),
            state.clone(),
            Arc::clone(&graceful),
            stop.clone(),
        )));
    }

    shutdown.await;
    state.start_draining();
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }
    // The accept loops, the only other holders, have exited; connections hold watchers, not
    // this handle. A failure here would silently skip the drain, so it is a bug, not a case.
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| {
        panic!("accept loops exited but still hold the graceful-shutdown handle")
    });
    match tokio::time::timeout(config.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            grace = ?config.shutdown_grace,
            "grace period elapsed with transfers still running; closing them"
        ),
    }
    cancel.cancel();
    let _ = sweeper.await;
    if let Some(o) = owners {
        let _ = o.await;
    }
    Ok(())
}

/// How long a connection may take or stay without doing anything.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// For the request head (from the accept, TLS included), and longest without a request
    /// in progress.
    header: Duration,
    /// Longest the requests in progress may move no body byte either way (the body idle
    /// timeout, which also bounds a pause inside an upload).
    stall: Duration,
}

impl Deadlines {
    fn of(config: &Config) -> Self {
        Self {
            header: config.header_read_timeout,
            stall: config.limits.body_idle_timeout,
        }
    }
}

async fn accept_loop(
    acceptor: Acceptor,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    deadlines: Deadlines,
    state: AppState,
    graceful: Arc<GracefulShutdown>,
    stop: CancellationToken,
) {
    let header_timeout = deadlines.header;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    while let Some(accepted) = acceptor.next(&stop).await {
        let (stream, peer, permit) = match accepted {
            Accepted::Open(c) => (c.stream, c.peer, c.permit),
            Accepted::Refused(peer, _) => {
                state.metrics().connections_refused.inc();
                tracing::warn!(%peer, "connection cap reached; closing");
                continue;
            }
            Accepted::Failed(e) => {
                tracing::warn!(cause = %e, "accept failed");
                continue;
            }
        };
        // Requests in progress on this connection. With none for the header timeout, the
        // connection closes: before its first request (a client that sends nothing, one
        // byte, or only a TLS handshake), and between requests, HTTP/1.1 keep-alive and
        // HTTP/2 alike, however many PINGs or SETTINGS the client answers. With requests in
        // progress whose bodies move no byte for the body idle timeout (an upload whose body
        // never comes, a download its client stopped reading), it closes too.
        let activity = Activity::new();
        let tracked = Arc::clone(&activity);
        let router = router.clone();
        let svc = tower::service_fn(move |mut req: Request<Incoming>| {
            let in_flight = tracked.begin();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let req = req.map(|body| axum::body::Body::new(Watched::new(body, &tracked)));
            let call = router.clone().oneshot(req);
            async move {
                let res = call.await?;
                Ok::<_, std::convert::Infallible>(
                    res.map(|body| axum::body::Body::new(Watched::ending(body, in_flight))),
                )
            }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let timed_out = state.metrics().connections_timed_out.clone();
        let stalled = state.metrics().connections_stalled.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // Held until the connection ends: the drain after SIGTERM waits for it.
            let _watcher = watcher;
            let started = tokio::time::Instant::now();
            // The TLS handshake counts against the header timeout too.
            let io = match tls {
                None => tokio_util::either::Either::Right(stream),
                Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                    Ok(Ok(s)) => tokio_util::either::Either::Left(s),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, cause = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        timed_out.inc();
                        tracing::debug!(%peer, "no TLS handshake within the header read timeout; closing");
                        return;
                    }
                },
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
                .into_owned();
            let mut conn = std::pin::pin!(conn);
            // The first request head is due within the header timeout of the accept, the TLS
            // handshake included.
            let expired =
                activity.expired(started + header_timeout, header_timeout, deadlines.stall);
            let result = tokio::select! {
                r = conn.as_mut() => Some(r),
                expiry = expired => {
                    match expiry {
                        Expiry::FirstRequest => {
                            timed_out.inc();
                            // Nothing to finish: closed at once, slot freed.
                            tracing::debug!(%peer, "no request head within the header read timeout; closing");
                            drop(permit);
                            return;
                        }
                        Expiry::Idle => {
                            timed_out.inc();
                            tracing::debug!(%peer, "no request in progress for the header read timeout; closing");
                        }
                        Expiry::Stalled => {
                            // GOAWAY, then one more header timeout: an upload's own 408 (body
                            // idle timeout, minimum rate) still gets out meanwhile.
                            stalled.inc();
                            tracing::debug!(%peer, "requests in progress moved nothing for the body idle timeout; closing");
                        }
                    }
                    None
                }
                () = stop.cancelled() => None,
            };
            let result = match result {
                Some(r) => r,
                None => {
                    // HTTP/2 says GOAWAY, HTTP/1.1 closes once its response is out. A peer
                    // that does not let that finish is dropped after one more timeout.
                    conn.as_mut().graceful_shutdown();
                    let deadline = if stop.is_cancelled() {
                        None
                    } else {
                        Some(header_timeout)
                    };
                    match deadline {
                        None => conn.await,
                        Some(d) => match tokio::time::timeout(d, conn).await {
                            Ok(r) => r,
                            Err(_) => Ok(()),
                        },
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, cause = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}
