//! The admin HTTP port: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! (database answers, volumes reachable, not draining). The probes are also served on the
//! probe socket (`--probe-socket`, asked by `shuffle-service probe`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::Encoder as _;

use crate::core::Core;

#[derive(Clone)]
struct AdminState {
    core: Core,
    draining: Arc<AtomicBool>,
}

/// The admin router.
pub(crate) fn router(core: Core, draining: Arc<AtomicBool>) -> Router {
    probes()
        .route("/metrics", get(metrics))
        .with_state(AdminState { core, draining })
}

/// The probes alone (`/healthz`, `/readyz`), for the probe socket.
pub(crate) fn probe_router(core: Core, draining: Arc<AtomicBool>) -> Router {
    probes().with_state(AdminState { core, draining })
}

fn probes() -> Router<AdminState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned());
    }
    match s.core.ready().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    s.core.refresh_gauges();
    let mut buf = Vec::new();
    match prometheus::TextEncoder::new().encode(&s.core.prometheus().gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
