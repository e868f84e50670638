//! Operational endpoints: liveness, readiness, metrics, and the fork's ping.
//!
//! Liveness depends on nothing downstream; readiness checks the database and the store and
//! turns 503 as soon as shutdown starts, so Kubernetes stops routing before the drain.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder as _, TextEncoder};

use crate::api_error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: the process is alive.
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /api/v0/ping`: the fork's readiness probe.
pub(super) async fn ping() -> &'static str {
    "pong"
}

/// Longest a readiness check waits for the store: probes time out after a few seconds.
const READY_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /readyz` on the public listener: the database and the store answer, and the server is
/// not draining. The reason of a failure goes to the log and the admin listener only: the
/// store's URL and error text are internal.
pub(super) async fn readyz(State(state): State<AppState>) -> Result<String, ApiError> {
    ready(&state, false).await
}

/// `GET /readyz` on the admin listener, with the reason of a failure.
pub(super) async fn readyz_detailed(State(state): State<AppState>) -> Result<String, ApiError> {
    ready(&state, true).await
}

async fn ready(state: &AppState, detailed: bool) -> Result<String, ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable("shutting down"));
    }
    let fail = |what: &str, cause: String| {
        tracing::warn!(component = what, cause = %cause, "not ready");
        ApiError::unavailable(if detailed {
            format!("{what}: {cause}")
        } else {
            format!("{what} unavailable")
        })
    };
    if let Err(e) = state.db().ping().await {
        return Err(fail("database", e.to_string()));
    }
    // A replica replaying the log after a restore refuses downloads: out of the Service
    // until it is done.
    if state.replica().is_some_and(|r| r.view().is_none()) {
        return Err(fail(
            "shared state",
            "replaying the log after loading a snapshot".into(),
        ));
    }
    match tokio::time::timeout(READY_STORE_TIMEOUT, state.store().ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(fail("object store", e.to_string())),
        Err(_) => {
            return Err(fail(
                "object store",
                format!("no answer within {READY_STORE_TIMEOUT:?}"),
            ));
        }
    }
    // A full disk refuses uploads (507) but downloads go on: still ready.
    if state.metrics().storage_full.get() > 0 {
        Ok("ready; storage full: uploads are refused until space is freed".into())
    } else {
        Ok("ready".into())
    }
}

/// `GET /metrics` on the admin listener: every metric, in Prometheus text exposition.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    encode(&state.registry().gather())
}

/// `GET /metrics` on the public listener: without the stored-data gauges
/// ([`crate::metrics::ADMIN_ONLY`]), which would tell a tenant what others store.
pub(super) async fn metrics_public(State(state): State<AppState>) -> Response {
    let mut families = state.registry().gather();
    families.retain(|f| !crate::metrics::ADMIN_ONLY.contains(&f.name()));
    encode(&families)
}

fn encode(families: &[prometheus::proto::MetricFamily]) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(families, &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            buf,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
