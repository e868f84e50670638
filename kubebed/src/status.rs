//! Errors as the API server answers them: an HTTP status with a `Status` object.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::resources::Resource;

/// An API error: HTTP code, `reason` and message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub code: u16,
    /// `Status.reason` (`NotFound`, `AlreadyExists`, ...).
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`.
    pub details: Value,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Value) -> Self {
        Self {
            code,
            reason,
            message,
            details,
        }
    }

    /// 404 for an object.
    #[must_use]
    pub fn not_found(res: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
            json!({"name": name, "group": res.group, "kind": res.plural}),
        )
    }

    /// 404 for a path the server does not serve.
    #[must_use]
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!({}),
        )
    }

    /// 503 while the server is made unavailable (an outage).
    #[must_use]
    pub fn unavailable() -> Self {
        Self::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
            json!({}),
        )
    }

    /// 409 AlreadyExists.
    #[must_use]
    pub fn exists(res: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
            json!({"name": name, "group": res.group, "kind": res.plural}),
        )
    }

    /// 409 Conflict (stale `resourceVersion`).
    #[must_use]
    pub fn conflict(res: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res.qualified()
            ),
            json!({"name": name, "group": res.group, "kind": res.plural}),
        )
    }

    /// 422 Invalid.
    #[must_use]
    pub fn invalid(res: &Resource, name: &str, why: impl Into<String>) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {}", res.kind, why.into()),
            json!({"name": name, "group": res.group, "kind": res.kind}),
        )
    }

    /// 400 BadRequest.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into(), json!({}))
    }

    /// 405 MethodNotAllowed.
    #[must_use]
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
            json!({}),
        )
    }

    /// 410 Expired (a watch or list from a compacted `resourceVersion`).
    #[must_use]
    pub fn expired(rv: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {rv}"),
            json!({}),
        )
    }

    /// 415 UnsupportedMediaType.
    #[must_use]
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/apply-patch+yaml, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
            ),
            json!({}),
        )
    }

    /// The `Status` object.
    #[must_use]
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(self.status())).into_response()
    }
}
