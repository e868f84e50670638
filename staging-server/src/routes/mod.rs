//! The HTTP router: route table, middleware stack, and the JSON fallbacks.
//!
//! Layers wrap from the inside out: `route_layer` metrics see the matched route template;
//! around everything, a request id is set, the trace span records method, route and request
//! id (never headers, so credentials stay out of logs), and internal error causes attached by
//! [`ApiError`] are logged.

mod client_addr;
mod download;
mod files;
mod health;
mod v0;
mod v1;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::api_error::{ApiError, InternalCause};
use crate::state::AppState;

/// Largest submission body (the JSON list of at most [`crate::db::MAX_FILES`] files).
pub(super) const SUBMISSION_BODY_LIMIT: usize = 1 << 20;

/// The full API router (also serving the operational endpoints).
pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/api/v0/resources", post(v0::upload))
        .route("/api/v0/resources/", post(v0::upload))
        .route("/api/v0/resources/{id}", get(v0::download))
        .route("/api/v0/ping", get(health::ping))
        .route("/api/v1/resources", post(v1::upload))
        .route(
            "/api/v1/resources/{id}",
            get(v1::metadata).delete(v1::delete),
        )
        .route("/api/v1/resources/{id}/content", get(v1::content))
        .route("/api/v1/resources/{id}/files/{name}", get(files::file))
        .route(
            "/api/v1/blobs/{sha256}",
            put(files::put_blob).delete(files::delete_blob),
        )
        .route("/api/v1/submissions", post(files::submit))
        .merge(ops_routes(false))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Upload size is enforced by the ingest pipeline on the running byte count.
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    with_common_layers(router)
}

/// The operational endpoints alone, for the optional admin listener.
pub fn admin_router(state: AppState) -> Router {
    let router = ops_routes(true)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .fallback(not_found)
        .with_state(state);
    with_common_layers(router)
}

/// The operational endpoints; `detailed` (the admin listener) says why it is not ready and
/// serves the stored-data gauges.
fn ops_routes(detailed: bool) -> Router<AppState> {
    let (readyz, metrics) = if detailed {
        (get(health::readyz_detailed), get(health::metrics))
    } else {
        (get(health::readyz), get(health::metrics_public))
    };
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", readyz)
        .route("/metrics", metrics)
}

fn with_common_layers(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(make_span)
                    .on_response(DefaultOnResponse::new().level(Level::INFO)),
            )
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(middleware::from_fn(log_internal_errors)),
    )
}

fn make_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %req.method(), route, request_id)
}

async fn log_internal_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if let Some(cause) = res.extensions().get::<InternalCause>() {
        tracing::error!(cause = %cause.0, "internal error");
    }
    res
}

async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let res = next.run(req).await;
    let m = state.metrics();
    m.requests
        .with_label_values(&[route.as_str(), method.as_str(), res.status().as_str()])
        .inc();
    m.request_duration
        .with_label_values(&[route.as_str(), method.as_str()])
        .observe(start.elapsed().as_secs_f64());
    res
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
    .into_response()
}
