//! Submissions of individually stored files (content addressing, see `crate::db`'s blobs).
//!
//! - `PUT /api/v1/blobs/{sha256}?namespace=N`: one file's bytes (raw body). 201 when received,
//!   200 when the namespace already had it (the body is not read). 422 when the bytes do not
//!   have that digest, 507 over a quota, the capacity or the bound on unnamed bytes. Whether
//!   another namespace holds the content changes nothing: the body is read, hashed and
//!   written in full either way, and the answer is the same.
//! - `DELETE /api/v1/blobs/{sha256}?namespace=N`: N's grant on a blob none of its submissions
//!   names (204; 404 when N holds none; 409 when one of its submissions names it).
//! - `POST /api/v1/submissions`: JSON `{namespace, labels, owner_pod_uid, ttl, unused_ttl,
//!   files: [{name, sha256}]}`. 201 with the resource id and token, as an upload; 409
//!   `missing_files` with the digests to send first.
//! - `GET|HEAD /api/v1/resources/{id}/files/{name}`: one file, with the resource's download
//!   token (ranges, validators, digests and redirects to the store as for bundle content).

use std::collections::HashSet;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api_error::ApiError;
use crate::clock::duration_ms;
use crate::db::{
    BlobRelease, FileRef, FilesCommit, FilesOutcome, MAX_FILES, Owner, manifest_digest,
};
use crate::ingest::{BLOB_API, PendingUpload};
use crate::state::AppState;
use staging_api::bodies::{BlobReceived, Created, MISSING_FILES, MissingFiles, Submission};
use staging_api::ids::{Labels, Namespace, PodUid, Sha256Digest};

use super::download;
use super::v1::{lifetimes, rfc3339};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobQuery {
    namespace: String,
}

/// `PUT /api/v1/blobs/{sha256}`.
pub(super) async fn put_blob(
    State(state): State<AppState>,
    super::client_addr::ClientAddr(client): super::client_addr::ClientAddr,
    Path(sha): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let q: BlobQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let namespace: Namespace = q.namespace.parse()?;
    let sender = super::v1::check_upload(&state, &headers, client, &namespace).await?;
    let sha256 = Sha256Digest::from_hex(&sha)?;
    // Only the namespace's own grant is looked at: another namespace's copy changes nothing.
    // Asking does not renew the grant.
    if state
        .db()
        .holds(sha256, namespace.clone(), state.now_ms())
        .await
        .map_err(|e| crate::ingest::db_error(&state, e))?
    {
        return Ok((
            StatusCode::OK,
            Json(BlobReceived {
                sha256: sha256.to_hex(),
                stored: false,
            }),
        )
            .into_response());
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut pending = PendingUpload::begin(
        &state,
        BLOB_API,
        Some(namespace.clone()),
        Some(sender.clone()),
        declared,
    )
    .await?;
    if let Err(e) = pending.write_stream(body.into_data_stream()).await {
        pending.discard().await;
        return Err(e);
    }
    pending.commit_blob(namespace, sender, sha256).await?;
    Ok((
        StatusCode::CREATED,
        Json(BlobReceived {
            sha256: sha256.to_hex(),
            stored: true,
        }),
    )
        .into_response())
}

/// `DELETE /api/v1/blobs/{sha256}`: the sender takes back a blob it has not named. The bytes
/// go off the request path when no one else holds them, so the answer does not tell.
pub(super) async fn delete_blob(
    State(state): State<AppState>,
    Path(sha): Path<String>,
    RawQuery(query): RawQuery,
    super::client_addr::ClientAddr(client): super::client_addr::ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q: BlobQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let namespace: Namespace = q.namespace.parse()?;
    super::v1::check_upload(&state, &headers, client, &namespace).await?;
    let sha256 = Sha256Digest::from_hex(&sha)?;
    let now = state.now_ms();
    let released = state
        .with_room(|| state.release_blob(sha256, namespace.clone(), now))
        .await
        .map_err(|e| crate::ingest::write_error(&state, e))?;
    match released {
        BlobRelease::Released(freed) => {
            if let Some(object) = freed {
                let st = state.clone();
                tokio::spawn(async move {
                    if st.store().delete(object).await.is_ok() {
                        let _ = st.db().deletion_done(object).await;
                    }
                });
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        BlobRelease::NotHeld => Err(ApiError::not_found(format!(
            "namespace {namespace} holds no file {sha256}"
        ))),
        BlobRelease::Named => Err(ApiError::new(
            StatusCode::CONFLICT,
            "named_by_submission",
            format!(
                "a submission of namespace {namespace} names file {sha256}; delete the submission"
            ),
        )),
    }
}

/// `POST /api/v1/submissions`.
pub(super) async fn submit(
    State(state): State<AppState>,
    super::client_addr::ClientAddr(client): super::client_addr::ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // A small body: read whole, within the idle timeout, so a client trickling it cannot
    // hold the connection.
    let limit = super::SUBMISSION_BODY_LIMIT;
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return Err(ApiError::too_large(limit as u64));
    }
    let body = tokio::time::timeout(
        state.limits().body_idle_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the submission was not received in time",
        )
    })?
    .map_err(|e| ApiError::bad_request(format!("submission body: {e}")))?;
    let sub: Submission = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("submission: {e}")))?;
    let namespace: Namespace = sub.namespace.parse()?;
    super::v1::check_upload(&state, &headers, client, &namespace).await?;
    let selector = sub
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let labels = Labels::parse_selector(&selector)?;
    let pod_uid = sub
        .owner_pod_uid
        .as_deref()
        .map(str::parse::<PodUid>)
        .transpose()?
        .map(|u| u.to_string());
    if sub.files.is_empty() || sub.files.len() > MAX_FILES {
        return Err(ApiError::bad_request(format!(
            "a submission names 1 to {MAX_FILES} files"
        )));
    }
    let mut names = HashSet::new();
    let mut files = Vec::with_capacity(sub.files.len());
    for f in sub.files {
        staging_api::names::validate(&f.name).map_err(ApiError::bad_request)?;
        if !names.insert(f.name.clone()) {
            return Err(ApiError::bad_request(format!(
                "file name {:?} appears twice",
                f.name
            )));
        }
        files.push(FileRef {
            name: f.name,
            sha256: Sha256Digest::from_hex(&f.sha256)?,
        });
    }
    let lt = lifetimes(&state, sub.ttl.as_deref(), sub.unused_ttl.as_deref())?;
    let id = staging_api::ids::ResourceId::random();
    let now = state.now_ms();
    let expires_at = now.saturating_add(duration_ms(lt.max_ttl));
    let unused_ttl_ms = duration_ms(lt.unused_ttl);
    let (token, jti) = state.keys().issue(id, now, expires_at);
    let manifest = manifest_digest(&files);
    let outcome = state
        .commit_files(FilesCommit {
            id,
            owner: Owner {
                namespace: namespace.clone(),
                labels,
                pod_uid,
            },
            files,
            manifest,
            now,
            unused_ttl_ms,
            expires_at,
            jti,
            quotas: state.quotas(),
        })
        .await
        .map_err(|e| crate::ingest::write_error(&state, e))?;
    match outcome {
        FilesOutcome::Committed(size) => {
            tracing::info!(resource = %id, size, "submission committed");
            let body = Created {
                id: id.to_string(),
                token,
                sha256: manifest.to_hex(),
                size,
                namespace: namespace.to_string(),
                expires_at: rfc3339(expires_at),
                unused_expires_at: rfc3339(now.saturating_add(unused_ttl_ms)),
                content_url: format!("/api/v1/resources/{id}/files"),
            };
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, format!("/api/v1/resources/{id}"))],
                Json(body),
            )
                .into_response())
        }
        FilesOutcome::Missing(missing) => Ok((
            StatusCode::CONFLICT,
            Json(MissingFiles {
                code: MISSING_FILES.to_owned(),
                message: format!(
                    "{} file(s) are not stored for namespace {namespace}; send them with PUT /api/v1/blobs/{{sha256}}",
                    missing.len()
                ),
                missing: missing.iter().map(Sha256Digest::to_hex).collect(),
            }),
        )
            .into_response()),
        FilesOutcome::QuotaExceeded(why) => Err(ApiError::insufficient_storage(why)),
    }
}

/// `GET|HEAD /api/v1/resources/{id}/files/{name}[?redirect=false]`.
pub(super) async fn file(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let res = download::authorize(&state, &headers, &id, false).await?;
    let files = state.db().files(res.id).await.map_err(ApiError::internal)?;
    let Some(f) = files.into_iter().find(|f| f.name == name) else {
        return Err(ApiError::not_found(format!(
            "resource {id} has no file {name:?}"
        )));
    };
    let object = download::Object {
        id: f.object,
        size: f.size,
        sha256: f.sha256,
    };
    download::serve(
        &state,
        &res,
        &object,
        &headers,
        method == Method::HEAD,
        download::Delivery::from_query(query.as_deref()),
    )
    .await
}
