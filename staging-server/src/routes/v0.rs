//! The fork-compatible v0 API: `POST /api/v0/resources[/]` (multipart) and
//! `GET /api/v0/resources/{id}` with the secret in `Authorization`, raw or as a bearer token.
//!
//! The fork client sends the `resources` part (the bundle) before `resourcesOwner`, so the
//! bundle streams into a pending upload first and is committed once the owner is known and
//! valid. Either order is accepted. The `resourceSecret` returned is a download token (a JWT),
//! which fits in the fork's raw header as it is. An upload token limited to namespaces is
//! checked against `ownerNamespace` as soon as that part is read.
//!
//! The v0 GET serves bundles only: a submission of separate files (uploaded with v1) is
//! answered 409 naming the v1 routes that serve it.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::api_error::ApiError;
use crate::auth::{Scope, UploadAuthError};
use crate::db::Owner;
use crate::ingest::{Lifetimes, PendingUpload};
use crate::state::AppState;
use staging_api::bodies::{V0Owner, V0Response};
use staging_api::ids::CredentialId;

use super::download;

/// Largest accepted `resourcesOwner` part.
const MAX_OWNER_JSON: usize = 64 << 10;

/// `POST /api/v0/resources`.
pub(super) async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let scope = match state.upload_auth().check(&headers) {
        Ok(scope) => scope,
        Err(e) => {
            state.metrics().auth_failure(e.as_str());
            return Err(ApiError::unauthorized(format!(
                "upload credential {}",
                e.as_str()
            )));
        }
    };
    // With --kube-auth, anonymous uploads are off; the fork's API takes upload tokens only.
    if state.kube_auth().is_some() && !state.upload_auth().required() {
        state.metrics().auth_failure("missing");
        return Err(ApiError::unauthorized(
            "the v0 API needs an upload token; this server has none and takes Kubernetes credentials on /api/v1",
        ));
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(ctype).map_err(|_| {
        ApiError::unsupported_media_type("expected multipart/form-data with a boundary")
    })?;
    let limit = state.limits().max_upload_size;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The multipart framing and the owner part add a little over the bundle itself.
    if declared.is_some_and(|n| n > limit.saturating_add(MAX_OWNER_JSON as u64 * 2)) {
        return Err(ApiError::too_large(limit));
    }

    let mut multipart = multer::Multipart::new(body.into_data_stream(), boundary);
    let mut pending: Option<PendingUpload> = None;
    let mut owner: Option<V0Owner> = None;
    // An upload whose owner part has not come yet (the fork's client sends the bundle first)
    // takes its credential's share of the upload slots, for the whole upload.
    let sender = state.upload_auth().credential(&headers).ok();
    if let Err(e) = read_parts(
        &state,
        (scope, sender),
        &mut multipart,
        &mut pending,
        &mut owner,
    )
    .await
    {
        if let Some(p) = pending {
            p.discard().await;
        }
        return Err(e);
    }
    let pending = pending.ok_or_else(|| ApiError::bad_request("part `resources` is missing"))?;
    let Some(owner) = owner else {
        pending.discard().await;
        return Err(ApiError::bad_request("part `resourcesOwner` is missing"));
    };
    let limits = state.limits();
    let committed = pending
        .commit(
            Owner {
                namespace: owner.owner_namespace,
                labels: owner.owner_labels,
                pod_uid: None,
            },
            Lifetimes {
                unused_ttl: limits.unused_ttl,
                max_ttl: limits.max_ttl,
            },
            None,
        )
        .await?;
    Ok(Json(V0Response {
        resource_id: committed.id.to_string(),
        resource_secret: committed.token,
    })
    .into_response())
}

/// Reads the multipart parts, streaming `resources` into a pending upload and parsing
/// `resourcesOwner`, in whichever order they come.
async fn read_parts(
    state: &AppState,
    (scope, sender): (Scope<'_>, Option<CredentialId>),
    multipart: &mut multer::Multipart<'static>,
    pending: &mut Option<PendingUpload>,
    owner: &mut Option<V0Owner>,
) -> Result<(), ApiError> {
    let idle = state.limits().body_idle_timeout;
    loop {
        let field = tokio::time::timeout(idle, multipart.next_field())
            .await
            .map_err(|_| ApiError::bad_request("the client stopped sending"))?
            .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?;
        let Some(mut field) = field else { break };
        match field.name() {
            Some("resources") => {
                if pending.is_some() {
                    return Err(ApiError::bad_request("part `resources` appears twice"));
                }
                let ns = owner.as_ref().map(|o| o.owner_namespace.clone());
                let up = pending
                    .insert(PendingUpload::begin(state, "v0", ns, sender.clone(), None).await?);
                loop {
                    let chunk = up.next_piece(field.chunk()).await?.map_err(|e| {
                        ApiError::bad_request(format!("malformed multipart body: {e}"))
                    })?;
                    match chunk {
                        Some(c) => up.write(c).await?,
                        None => break,
                    }
                }
            }
            Some("resourcesOwner") => {
                if owner.is_some() {
                    return Err(ApiError::bad_request("part `resourcesOwner` appears twice"));
                }
                let mut buf: Vec<u8> = Vec::new();
                while let Some(c) = field
                    .chunk()
                    .await
                    .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?
                {
                    if buf.len() + c.len() > MAX_OWNER_JSON {
                        return Err(ApiError::bad_request("part `resourcesOwner` is too large"));
                    }
                    buf.extend_from_slice(&c);
                }
                let parsed = parse_owner(Bytes::from(buf))?;
                if !scope.allows(&parsed.owner_namespace) {
                    state
                        .metrics()
                        .auth_failure(UploadAuthError::WrongNamespace.as_str());
                    return Err(ApiError::forbidden(format!(
                        "this upload token is limited to other namespaces than {}",
                        parsed.owner_namespace
                    )));
                }
                *owner = Some(parsed);
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!("unexpected part {other:?}")));
            }
            None => return Err(ApiError::bad_request("a part has no name")),
        }
    }
    Ok(())
}

fn parse_owner(bytes: Bytes) -> Result<V0Owner, ApiError> {
    let owner: V0Owner = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("resourcesOwner: {e}")))?;
    if owner.owner_type != "Pod" {
        return Err(ApiError::bad_request(
            "resourcesOwner: ownerType must be \"Pod\"",
        ));
    }
    Ok(owner)
}

/// `GET /api/v0/resources/{id}`.
pub(super) async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let res = download::authorize(&state, &headers, &id, true).await?;
    if res.api == "files" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "files_resource",
            format!(
                "resource {id} is a submission of separate files, which the v0 API does not serve: GET /api/v1/resources/{id} lists them, /api/v1/resources/{id}/files/{{name}} serves each"
            ),
        ));
    }
    download::serve(
        &state,
        &res,
        &res.object(),
        &headers,
        method == Method::HEAD,
        // Fork clients do not expect a redirect.
        download::Delivery::Direct,
    )
    .await
}
