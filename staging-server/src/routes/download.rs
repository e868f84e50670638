//! Download authorization and content serving, shared by v0 and v1.
//!
//! Authorization runs before any existence check: a request without a valid token for the
//! id in its path learns nothing about whether that id exists (no 404 oracle). Only a holder
//! of a valid, unrevoked token for exactly this resource can get a 404 (the resource expired).
//!
//! With presigned downloads on, a v1 GET of a whole object may instead be answered 307 with a
//! short-lived presigned URL of the object in the store ([`Delivery::MayRedirect`]), once every
//! check of a direct download has passed; the redirect carries the validators and digests the
//! direct answer would (and the size in [`OBJECT_SIZE_HEADER`]) so that the client can verify
//! what the store sends. Only plain full GETs are redirected: HEAD, a `Range` (or `If-Range`)
//! and a matching `If-None-Match` are answered here, where they cost the server little or
//! nothing, so that resumption keeps the server's validators; `?redirect=false` asks for the
//! bytes from the server (a client whose store download failed). The fork's v0 route is never
//! redirected: its clients do not expect it.

use std::ops::Range;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::TryStreamExt as _;

use crate::api_error::ApiError;
use crate::auth::credential;
use crate::db::{Resource, TokenState};
use staging_api::ids::ResourceId;

/// How stale the last-access stamp may get before a download rewrites it.
const ACCESS_STAMP_MS: i64 = 60_000;
use crate::metrics::InflightGuard;
use crate::state::AppState;
use crate::store::StoreError;
use staging_api::wire::{OBJECT_SIZE_HEADER, REDIRECT_PARAM};

/// Whether a download may be answered by a redirect to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// The bytes come from the server (v0, or a client that asked so).
    Direct,
    /// A plain full GET may be redirected to a presigned store URL, if the server is
    /// configured so.
    MayRedirect,
}

impl Delivery {
    /// A v1 download's delivery from its query: `redirect=false` asks for the bytes from the
    /// server. Other parameters are left alone, as before redirects existed.
    pub(super) fn from_query(query: Option<&str>) -> Self {
        let refused = query_pairs(query.unwrap_or_default())
            .any(|(k, v)| k == REDIRECT_PARAM && v == "false");
        if refused {
            Self::Direct
        } else {
            Self::MayRedirect
        }
    }
}

/// The `key=value` pairs of a query (values are not percent-decoded: the one looked at is a
/// plain word).
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The bytes to serve: a bundle, or one file of a submission.
#[derive(Debug, Clone, Copy)]
pub(super) struct Object {
    /// Store object.
    pub id: ResourceId,
    /// Size.
    pub size: u64,
    /// Digest.
    pub sha256: staging_api::ids::Sha256Digest,
}

impl Resource {
    /// The bundle's own object.
    pub(super) fn object(&self) -> Object {
        Object {
            id: self.id,
            size: self.size,
            sha256: self.sha256,
        }
    }
}

/// Checks the request's download token against the resource named in the path, and loads the
/// resource.
///
/// # Errors
/// 401 for missing, malformed, invalid, expired or revoked tokens; 403 for a valid token of
/// another resource; 404 when a valid token's resource is gone.
pub(super) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    path_id: &str,
    allow_raw: bool,
) -> Result<Resource, ApiError> {
    let fail = |reason: &str, msg: &str| {
        state.metrics().auth_failure(reason);
        ApiError::unauthorized(msg.to_owned())
    };
    let token = match credential(headers, allow_raw) {
        Ok(Some((t, _))) => t,
        Ok(None) => return Err(fail("missing", "a download token is required")),
        Err(_) => {
            return Err(fail(
                "malformed",
                "the Authorization header is not a bearer token",
            ));
        }
    };
    let verified = state.keys().verify(token, state.now_ms()).map_err(|e| {
        fail(
            e.as_str(),
            &format!("download token refused ({})", e.as_str()),
        )
    })?;
    if verified.resource != path_id {
        state.metrics().auth_failure("wrong_resource");
        return Err(ApiError::forbidden(
            "the token does not grant this resource",
        ));
    }
    let id: ResourceId = path_id
        .parse()
        .map_err(|_| fail("invalid", "download token refused (invalid)"))?;
    // A replica replaying the log after a restore grants nothing: its database may still
    // grant a token revoked since. Checked before and after the lookup, so that a restore
    // between the two is noticed too.
    let view = state.replica().map(|r| r.view());
    let reloading = || ApiError::unavailable("the shared state is being reloaded; retry");
    if view == Some(None) {
        return Err(reloading());
    }
    let mut found = state.db().authorize(verified.jti.clone(), id).await?;
    // A token this server signed for a resource this replica has not applied yet (committed
    // on another replica a moment ago): read the shared log, then look again.
    if found.0 == TokenState::Unknown
        && let Some(r) = state.replica()
    {
        r.refresh()
            .await
            .map_err(|e| crate::ingest::write_error(state, e))?;
        found = state.db().authorize(verified.jti, id).await?;
    }
    if state.replica().map(|r| r.view()) != view {
        return Err(reloading());
    }
    match found {
        (TokenState::Valid, Some(res)) => Ok(res),
        (TokenState::Valid, None) => Err(ApiError::not_found(
            "resource not found (expired or deleted)",
        )),
        (TokenState::Revoked, _) => Err(fail("revoked", "download token refused (revoked)")),
        (TokenState::Unknown, _) => Err(fail("invalid", "download token refused (invalid)")),
    }
}

/// Serves a resource's bytes with validators, conditional requests and single byte ranges, or
/// (`delivery` allowing it, presigned downloads on, a plain full GET) redirects to the store.
///
/// # Errors
/// 416 for unsatisfiable ranges, 500 when the store fails.
pub(super) async fn serve(
    state: &AppState,
    res: &Resource,
    object: &Object,
    headers: &HeaderMap,
    head: bool,
    delivery: Delivery,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", object.sha256.to_hex());
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(
            "repr-digest",
            format!("sha-256=:{}:", object.sha256.to_base64()),
        )
        .header("digest", format!("sha-256={}", object.sha256.to_base64()));

    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && inm
            .split(',')
            .map(str::trim)
            .any(|t| t == etag || t == "*" || t == format!("W/{etag}"))
    {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(ApiError::internal);
    }

    if let Some(ttl) = state.presigned_url_ttl()
        && delivery == Delivery::MayRedirect
        && plain_full_get(headers, head)
        && object.size > 0
    {
        // The access counts as a download: the first one makes the resource active.
        stamp_access(state, res).await;
        match state.store().presigned_get(object.id, ttl).await {
            Ok(Some(url)) => {
                state.metrics().download_redirects.inc();
                return builder
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    // The URL reads the object for its lifetime: keep it out of caches and of
                    // the Referer of whatever the client fetches next.
                    .header(header::LOCATION, url.as_str())
                    .header(header::REFERRER_POLICY, "no-referrer")
                    .header(OBJECT_SIZE_HEADER, object.size)
                    .body(Body::empty())
                    .map_err(ApiError::internal);
            }
            // The store signs no URLs: the start-up check keeps this from happening.
            Ok(None) => {}
            // Serving the bytes is still possible: a signing failure costs the redirect only.
            Err(e) => {
                tracing::warn!(resource = %res.id, cause = %e, "could not presign a download; serving it directly");
            }
        }
    }

    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // If-Range: serve the range only if the representation is still the one the client has.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match range_header.filter(|_| if_range_ok) {
        None => None,
        Some(h) => match parse_range(h, object.size) {
            RangeSpec::Ignore => None,
            RangeSpec::Satisfiable(r) => Some(r),
            RangeSpec::Unsatisfiable => {
                return builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{}", object.size))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(
                        r#"{"code":"range_not_satisfiable","message":"the range is outside the resource"}"#,
                    ))
                    .map_err(ApiError::internal);
            }
        },
    };

    let (status, len) = match &range {
        Some(r) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", r.start, r.end - 1, object.size),
            );
            (StatusCode::PARTIAL_CONTENT, r.end - r.start)
        }
        None => (StatusCode::OK, object.size),
    };
    builder = builder
        .status(status)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )
        .header(header::CONTENT_LENGTH, len);

    if head {
        return builder.body(Body::empty()).map_err(ApiError::internal);
    }
    stamp_access(state, res).await;
    // A zero-length object has no satisfiable range and nothing to read.
    if len == 0 {
        return builder.body(Body::empty()).map_err(ApiError::internal);
    }
    let stream = match state
        .store()
        .read(object.id, range.unwrap_or(0..object.size))
        .await
    {
        Ok(s) => s,
        Err(StoreError::NotFound { .. }) => {
            state
                .metrics()
                .store_errors
                .with_label_values(&["lost"])
                .inc();
            tracing::error!(resource = %res.id, "the bytes of a committed resource are gone from the store");
            return Err(ApiError::lost(res.id));
        }
        Err(e) => return Err(ApiError::store(e, state.metrics())),
    };
    let counter = state.metrics().download_bytes.clone();
    let guard = InflightGuard::new(state.metrics().inflight.with_label_values(&["download"]));
    let stream = stream.inspect_ok(move |b| {
        let _keep = &guard;
        counter.inc_by(b.len() as u64);
    });
    builder
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}

/// Whether a request asks for the whole body and nothing else: a GET without `Range` or
/// `If-Range`. (A matching `If-None-Match` was answered 304 before this is asked.)
fn plain_full_get(headers: &HeaderMap, head: bool) -> bool {
    !head && !headers.contains_key(header::RANGE) && !headers.contains_key(header::IF_RANGE)
}

/// Records a download, only when it changes something: the first download, or a last-access
/// time over a minute old. Most downloads of a busy bundle are then read-only.
async fn stamp_access(state: &AppState, res: &Resource) {
    let now = state.now_ms();
    let stale = res.last_access_at.is_none_or(|t| t < now - ACCESS_STAMP_MS);
    if !(res.first_access_at.is_none() || stale) {
        return;
    }
    // Replicas write the stamp to the shared log off the download's path, one per resource
    // at a time.
    if let Some(r) = state.replica() {
        // Only the first download matters to the sweeps (the unused TTL); later stamps would
        // be log entries nothing reads.
        if res.first_access_at.is_none() && r.stamping(res.id) {
            let (st, r, id) = (state.clone(), std::sync::Arc::clone(r), res.id);
            tokio::spawn(async move {
                if let Err(e) = st.record_access(id, now).await {
                    tracing::warn!(resource = %id, cause = %e, "could not record the download");
                }
                r.stamped(id);
            });
        }
        return;
    }
    match state.db().record_access(res.id, now).await {
        Ok(_) => {}
        // A failed access stamp must not fail the download; the sweeper would at worst
        // treat the resource as unused, which the operator sees in the logs.
        Err(e) if e.is_full() => {
            state.note_full();
            tracing::debug!(resource = %res.id, "disk full: download served without its access stamp");
        }
        Err(e) => {
            tracing::warn!(resource = %res.id, cause = %e, "could not record the download")
        }
    }
}

/// A parsed `Range` header.
#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Not a single byte range we serve: answer with the whole body (RFC 9110 allows this).
    Ignore,
    /// Serve these bytes.
    Satisfiable(Range<u64>),
    /// 416.
    Unsatisfiable,
}

fn parse_range(header: &str, size: u64) -> RangeSpec {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = if a.is_empty() {
        // Suffix range: the last N bytes.
        match b.parse::<u64>() {
            Ok(0) => return RangeSpec::Unsatisfiable,
            Ok(n) => Some(size.saturating_sub(n)..size),
            Err(_) => None,
        }
    } else {
        match (a.parse::<u64>(), b) {
            (Ok(start), "") => Some(start..size),
            (Ok(start), end) => match end.parse::<u64>() {
                Ok(end) if end >= start => Some(start..end.saturating_add(1).min(size)),
                _ => None,
            },
            _ => None,
        }
    };
    match parsed {
        None => RangeSpec::Ignore,
        Some(r) if r.start >= size || r.is_empty() => RangeSpec::Unsatisfiable,
        Some(r) => RangeSpec::Satisfiable(r),
    }
}

#[cfg(test)]
mod tests {
    use super::{Delivery, RangeSpec, parse_range, plain_full_get};
    use axum::http::{HeaderMap, HeaderValue, header};

    #[test]
    fn only_plain_full_gets_may_be_redirected() {
        let mut h = HeaderMap::new();
        assert!(plain_full_get(&h, false));
        assert!(!plain_full_get(&h, true), "HEAD");
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        assert!(plain_full_get(&h, false), "a validator that did not match");
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-"));
        assert!(!plain_full_get(&h, false), "Range");
        h.remove(header::RANGE);
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"x\""));
        assert!(!plain_full_get(&h, false), "If-Range");
    }

    #[test]
    fn a_client_may_refuse_the_redirect() {
        assert_eq!(Delivery::from_query(None), Delivery::MayRedirect);
        assert_eq!(Delivery::from_query(Some("")), Delivery::MayRedirect);
        assert_eq!(
            Delivery::from_query(Some("x=1&redirect=true")),
            Delivery::MayRedirect
        );
        assert_eq!(
            Delivery::from_query(Some("redirect=false")),
            Delivery::Direct
        );
        assert_eq!(
            Delivery::from_query(Some("a&redirect=false&b=2")),
            Delivery::Direct
        );
        assert_eq!(
            Delivery::from_query(Some("noredirect=false")),
            Delivery::MayRedirect
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Satisfiable(0..10));
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeSpec::Satisfiable(90..100)
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeSpec::Satisfiable(90..100)
        );
        assert_eq!(
            parse_range("bytes=-1000", 100),
            RangeSpec::Satisfiable(0..100)
        );
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            RangeSpec::Satisfiable(50..100)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Ignore);
    }
}
