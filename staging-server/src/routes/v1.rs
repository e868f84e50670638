//! The native v1 API.
//!
//! - `POST /api/v1/resources?namespace=N&labels=k=v,...&owner_pod_uid=U&ttl=48h&unused_ttl=30m&sha256=HEX`
//!   with the bundle as the raw body (streamed) → 201 with id, token, sha256, size and expiry.
//! - `GET|HEAD /api/v1/resources/{id}/content` with `Authorization: Bearer <token>` (with
//!   presigned downloads on, a full GET may be redirected to the store; `?redirect=false`
//!   refuses that).
//! - `GET /api/v1/resources/{id}`: metadata.
//! - `DELETE /api/v1/resources/{id}`: revokes every token of the resource and deletes it.

use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api_error::ApiError;
use crate::auth::{UploadAuthError, credential};
use crate::db::Owner;
use crate::ingest::{Lifetimes, PendingUpload};
use crate::kube_auth::review::Refusal;
use crate::lifecycle::{self, DeleteReason};
use crate::state::AppState;
use staging_api::bodies::{Created, FileMeta, ResourceMetadata};
use staging_api::ids::{CredentialId, Labels, Namespace, PodUid, Sha256Digest};

use super::client_addr::ClientAddr;
use super::download;

/// Body types accepted for a bundle.
const ACCEPTED_TYPES: &[&str] = &[
    "application/octet-stream",
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/x-gtar",
    "application/x-compressed-tar",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    namespace: String,
    #[serde(default)]
    labels: String,
    owner_pod_uid: Option<String>,
    ttl: Option<String>,
    unused_ttl: Option<String>,
    sha256: Option<String>,
}

pub(super) fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `POST /api/v1/resources`.
pub(super) async fn upload(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    if !ctype
        .as_deref()
        .is_some_and(|c| ACCEPTED_TYPES.contains(&c))
    {
        return Err(ApiError::unsupported_media_type(format!(
            "send the bundle as one of: {}",
            ACCEPTED_TYPES.join(", ")
        )));
    }
    let q: UploadQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let namespace: Namespace = q.namespace.parse()?;
    check_upload(&state, &headers, client, &namespace).await?;
    let labels = Labels::parse_selector(&q.labels)?;
    let pod_uid = q
        .owner_pod_uid
        .as_deref()
        .map(str::parse::<PodUid>)
        .transpose()?
        .map(|u| u.to_string());
    let Lifetimes {
        unused_ttl,
        max_ttl,
    } = lifetimes(&state, q.ttl.as_deref(), q.unused_ttl.as_deref())?;
    let expected = match (q.sha256.as_deref(), content_digest(&headers)?) {
        (Some(hex), _) => Some(Sha256Digest::from_hex(hex)?),
        (None, header) => header,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());

    let mut pending =
        PendingUpload::begin(&state, "v1", Some(namespace.clone()), None, declared).await?;
    if let Err(e) = pending.write_stream(body.into_data_stream()).await {
        pending.discard().await;
        return Err(e);
    }
    let c = pending
        .commit(
            Owner {
                namespace: namespace.clone(),
                labels,
                pod_uid,
            },
            Lifetimes {
                unused_ttl,
                max_ttl,
            },
            expected,
        )
        .await?;
    let url = format!("/api/v1/resources/{}/content", c.id);
    let body = Created {
        id: c.id.to_string(),
        token: c.token,
        sha256: c.sha256.to_hex(),
        size: c.size,
        namespace: namespace.to_string(),
        expires_at: rfc3339(c.expires_at),
        unused_expires_at: rfc3339(c.unused_deadline),
        content_url: url.clone(),
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/resources/{}", c.id))],
        Json(body),
    )
        .into_response())
}

/// Checks the request's upload credential for `namespace`: a shared upload token (limited
/// to namespaces or not), or (with `--kube-auth`) a Kubernetes bearer token whose identity may
/// create pods there. `client` is the caller's address, whose review budget a Kubernetes
/// token's review takes from.
///
/// Returns which credential it is: the account its unnamed files are charged to beside the
/// namespace.
///
/// # Errors
/// 401 when the credential is missing or refused, 403 when the token or identity may not act
/// in the namespace, 429 when the client or the identity caused too many failed reviews
/// lately or the server's review budget is spent, 503 when the API server cannot be asked.
pub(super) async fn check_upload(
    state: &AppState,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    namespace: &Namespace,
) -> Result<CredentialId, ApiError> {
    let shared = state.upload_auth();
    let refused = |e: UploadAuthError| {
        state.metrics().auth_failure(e.as_str());
        match e {
            UploadAuthError::WrongNamespace => ApiError::forbidden(format!(
                "this upload token is limited to other namespaces than {namespace}"
            )),
            e => ApiError::unauthorized(format!("upload credential {}", e.as_str())),
        }
    };
    let Some(kube) = state.kube_auth() else {
        return shared.check_for(headers, namespace).map_err(refused);
    };
    // Anonymous uploads are never accepted with --kube-auth. A shared token decides alone,
    // and is never sent to the API server.
    if shared.required() {
        match shared.check_for(headers, namespace) {
            Ok(id) => return Ok(id),
            Err(e @ UploadAuthError::WrongNamespace) => return Err(refused(e)),
            Err(_) => {}
        }
    }
    let token = match credential(headers, false) {
        Ok(Some((t, _))) => t,
        Ok(None) => {
            state.metrics().auth_failure("missing");
            return Err(ApiError::unauthorized(
                "an upload token or a Kubernetes bearer token is required",
            ));
        }
        Err(_) => {
            state.metrics().auth_failure("malformed");
            return Err(ApiError::unauthorized(
                "the Authorization header is not a bearer token",
            ));
        }
    };
    match kube.authorize(token, namespace.as_str(), client).await {
        Ok(id) => Ok(CredentialId::kube(&id.user, id.uid.as_deref())),
        Err(e @ Refusal::Unauthenticated) => {
            state.metrics().auth_failure("invalid");
            let audiences = kube.audiences();
            Err(ApiError::unauthorized(if audiences.is_empty() {
                e.to_string()
            } else {
                format!(
                    "{e} for this server: it takes tokens bound to the audience {} (e.g. kubectl create token NAME --audience {})",
                    audiences.join(" or "),
                    audiences[0]
                )
            }))
        }
        Err(e @ Refusal::Forbidden { .. }) => {
            state.metrics().auth_failure("forbidden");
            Err(ApiError::forbidden(e.to_string()))
        }
        Err(e @ Refusal::Throttled { retry_after, .. }) => {
            state.metrics().auth_failure("throttled");
            Err(ApiError::too_many_requests(e.to_string(), retry_after))
        }
        Err(e @ Refusal::Unavailable(_)) => Err(ApiError::unavailable(e.to_string())),
    }
}

/// The lifetimes an upload asks for (`ttl`, `unused_ttl`), within the server's limits.
///
/// # Errors
/// 400 for an unparsable, zero or too long lifetime.
pub(super) fn lifetimes(
    state: &AppState,
    ttl: Option<&str>,
    unused_ttl: Option<&str>,
) -> Result<Lifetimes, ApiError> {
    let limits = state.limits();
    let lifetime = |raw: Option<&str>, default: Duration, max: Duration, name: &str| {
        let Some(raw) = raw else { return Ok(default) };
        let d = humantime::parse_duration(raw)
            .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))?;
        if d.is_zero() || d > max {
            return Err(ApiError::bad_request(format!(
                "{name} must be positive and at most {}",
                humantime::format_duration(max)
            )));
        }
        Ok(d)
    };
    let max_ttl = lifetime(ttl, limits.max_ttl, limits.max_ttl, "ttl")?;
    let unused_ttl = lifetime(
        unused_ttl,
        limits.unused_ttl.min(max_ttl),
        max_ttl,
        "unused_ttl",
    )?;
    Ok(Lifetimes {
        unused_ttl,
        max_ttl,
    })
}

/// An RFC 9530 `Content-Digest` or `Repr-Digest` with a `sha-256` member, if present.
fn content_digest(headers: &HeaderMap) -> Result<Option<Sha256Digest>, ApiError> {
    use base64::Engine as _;
    for name in ["content-digest", "repr-digest"] {
        let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        for member in v.split(',') {
            let Some((alg, val)) = member.trim().split_once('=') else {
                continue;
            };
            if !alg.trim().eq_ignore_ascii_case("sha-256") {
                continue;
            }
            let b64 = val.trim().trim_matches(':');
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| ApiError::bad_request(format!("{name}: sha-256 is not base64")))?;
            let arr: [u8; 32] = raw.try_into().map_err(|_| {
                ApiError::bad_request(format!("{name}: sha-256 has the wrong length"))
            })?;
            return Ok(Some(Sha256Digest(arr)));
        }
    }
    Ok(None)
}

/// `GET|HEAD /api/v1/resources/{id}/content[?redirect=false]`.
pub(super) async fn content(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let res = download::authorize(&state, &headers, &id, false).await?;
    if res.api == "files" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "files_resource",
            format!(
                "resource {id} holds separate files: GET /api/v1/resources/{id} lists them, /api/v1/resources/{id}/files/{{name}} serves each"
            ),
        ));
    }
    download::serve(
        &state,
        &res,
        &res.object(),
        &headers,
        method == Method::HEAD,
        download::Delivery::from_query(query.as_deref()),
    )
    .await
}

/// `GET /api/v1/resources/{id}`.
pub(super) async fn metadata(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ResourceMetadata>, ApiError> {
    let r = download::authorize(&state, &headers, &id, false).await?;
    let files = if r.api == "files" {
        let files = state.db().files(r.id).await.map_err(ApiError::internal)?;
        Some(
            files
                .into_iter()
                .map(|f| FileMeta {
                    name: f.name,
                    sha256: f.sha256.to_hex(),
                    size: f.size,
                })
                .collect(),
        )
    } else {
        None
    };
    Ok(Json(ResourceMetadata {
        files,
        id: r.id.to_string(),
        namespace: r.owner.namespace.to_string(),
        labels: r.owner.labels.as_map().clone(),
        owner_pod_uid: r.owner.pod_uid.clone(),
        size: r.size,
        sha256: r.sha256.to_hex(),
        api: r.api.clone(),
        committed_at: rfc3339(r.committed_at),
        first_download_at: r.first_access_at.map(rfc3339),
        expires_at: rfc3339(r.expires_at),
        unused_expires_at: r
            .first_access_at
            .is_none()
            .then(|| rfc3339(r.unused_deadline)),
    }))
}

/// `DELETE /api/v1/resources/{id}`: with the resource's download token, or an upload token
/// (a token limited to namespaces deletes in those only; for another namespace's resource it
/// gets the same 404 as for a missing one, so it learns nothing about it).
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let uploader =
        if state.upload_auth().required() && matches!(credential(&headers, false), Ok(Some(_))) {
            state.upload_auth().check(&headers).ok()
        } else {
            None
        };
    let id = match uploader {
        Some(scope) => {
            let id = id
                .parse()
                .map_err(|_| ApiError::not_found("resource not found"))?;
            if let crate::auth::Scope::Namespaces(_) = scope {
                let mut res = state.db().get(id).await?;
                if res.is_none()
                    && let Some(r) = state.replica()
                {
                    r.refresh()
                        .await
                        .map_err(|e| crate::ingest::write_error(&state, e))?;
                    res = state.db().get(id).await?;
                }
                if !res.is_some_and(|r| scope.allows(&r.owner.namespace)) {
                    return Err(ApiError::not_found(
                        "resource not found (expired or deleted)",
                    ));
                }
            }
            id
        }
        None => download::authorize(&state, &headers, &id, false).await?.id,
    };
    if lifecycle::remove(&state, id, DeleteReason::Deleted)
        .await
        .map_err(|e| crate::ingest::write_error(&state, e))?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "resource not found (expired or deleted)",
        ))
    }
}
