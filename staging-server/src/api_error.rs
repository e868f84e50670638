//! The one HTTP mapping of errors, [`ApiError`]: what a client is answered.
//!
//! Every error response is JSON `{"code": "...", "message": "..."}`
//! ([`staging_api::bodies::ErrorBody`]). Internal failures say only "internal error" to the
//! client; the cause goes to the log through a response extension that the tracing middleware
//! reads, so details never leak to callers. This module sits above the store, the database and
//! the metrics (it classifies their failures); none of them depends on it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;
use staging_api::bodies::ErrorBody;
use staging_api::ids::InvalidField;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Logged, never sent.
    internal: Option<String>,
    /// `Retry-After` of a 429 or of a 503 whose wait is known.
    retry_after: Option<std::time::Duration>,
}

/// The cause of an internal error, attached to the response for the logging middleware.
#[derive(Debug, Clone)]
pub(crate) struct InternalCause(pub String);

/// `Retry-After` of a 503 that knows no better wait (the server sheds load, drains, ...).
const BUSY_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// `Retry-After` of a 503 for an object store that is down or does not answer.
const STORE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl ApiError {
    /// An error with an explicit status, machine code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            internal: None,
            retry_after: None,
        }
    }

    /// 429 with `Retry-After` (whole seconds, at least 1).
    pub fn too_many_requests(message: impl Into<String>, after: std::time::Duration) -> Self {
        Self {
            retry_after: Some(after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
        }
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401; the response carries `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 for a valid credential that does not grant this action.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413 for a body over the configured limit.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body exceeds the limit of {limit} bytes"),
        )
    }

    /// 415.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 507 when a quota or the store's capacity is exhausted.
    pub fn insufficient_storage(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            message,
        )
    }

    /// 503 when the server sheds load or is shutting down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 503 for what cannot be served for `after` (its `Retry-After`, whole seconds, at least 1).
    pub fn unavailable_for(message: impl Into<String>, after: std::time::Duration) -> Self {
        Self {
            retry_after: Some(after),
            ..Self::unavailable(message)
        }
    }

    /// The one mapping of object-store failures: 507 for a full store, 503 (with
    /// `Retry-After`) for a store that is down or does not answer in time, so clients and
    /// proxies know to retry, 500 otherwise. Timeouts and outages are counted.
    pub fn store(e: StoreError, metrics: &crate::metrics::Metrics) -> Self {
        if let Some(kind) = e.metric_kind() {
            metrics.store_errors.with_label_values(&[kind]).inc();
        }
        match e {
            StoreError::Full { .. } => {
                metrics.storage_full.set(1);
                Self::insufficient_storage("the store is out of space")
            }
            StoreError::Timeout { .. } | StoreError::Unavailable { .. } => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "store_unavailable",
                message: "the object store is not answering; retry later".into(),
                internal: Some(e.to_string()),
                // A store outage lasts longer than a busy moment.
                retry_after: Some(STORE_RETRY_AFTER),
            },
            _ => Self::internal(e),
        }
    }

    /// 410 for a committed resource whose bytes are gone from the store: retrying cannot
    /// help, so clients stop at once.
    pub fn lost(id: staging_api::ids::ResourceId) -> Self {
        Self::new(
            StatusCode::GONE,
            "lost",
            format!("the bytes of resource {id} are gone from the store; upload it again"),
        )
    }

    /// 500; the cause is logged, the client sees "internal error".
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error".into(),
            internal: Some(cause.to_string()),
            retry_after: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        Self::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(ErrorBody {
                code: self.code.to_owned(),
                message: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Every 503 says when to retry: a busy moment unless the error knows better.
        let after = self.retry_after.or_else(|| {
            (self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(BUSY_RETRY_AFTER)
        });
        if let Some(after) = after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some(cause) = self.internal {
            res.extensions_mut().insert(InternalCause(cause));
        }
        res
    }
}
