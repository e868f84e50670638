//! Operational endpoints: liveness, readiness, metrics, and the fork's ping.
//!
//! Liveness depends on nothing downstream; readiness checks the database and the store and
//! turns 503 as soon as shutdown starts, so Kubernetes stops routing before the drain.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder as _, TextEncoder};

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: the process is alive.
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /api/v0/ping`: the fork's readiness probe.
pub(super) async fn ping() -> &'static str {
    "pong"
}

/// `GET /readyz`: the database and the store answer, and the server is not draining.
pub(super) async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable("shutting down"));
    }
    state
        .db()
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(format!("database: {e}")))?;
    state
        .store()
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(format!("store: {e}")))?;
    Ok("ready")
}

/// `GET /metrics`: Prometheus text exposition.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&state.registry().gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            buf,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
