//! The API server stand-in's HTTP front: Kubernetes' REST paths for the served resources
//! (`/api/v1/...`, `/apis/<group>/<version>/...`), list and watch (newline-delimited JSON over
//! a chunked response, as `kubectl` and client libraries read it without WebSocket), get,
//! create, replace, patch (merge, strategic, server-side apply), delete and delete-collection,
//! `/status` subresources, discovery and `/version`. Anything else answers as a real server
//! does: 404, 405 or 415 with a `Status` body.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::patch::{self, PatchKind};
use crate::resources::{self, Resource};
use crate::selector::Selector;
use crate::status::ApiError;
use crate::store::{DeleteOptions, Event, EventType, Store};

/// A switch that makes the API front unavailable (an API server outage): every request is
/// answered 503 and open watches end. The store, kubelets and controllers go on.
#[derive(Debug, Clone)]
pub struct Outage(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Outage {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl Outage {
    /// Starts (`true`) or ends (`false`) the outage.
    pub fn set(&self, down: bool) {
        self.0.send_replace(down);
    }

    /// Whether the front is down.
    #[must_use]
    pub fn is_down(&self) -> bool {
        *self.0.borrow()
    }

    async fn begins(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|down| *down).await;
    }
}

/// Settings of the HTTP front.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The outage switch.
    pub outage: Outage,
    /// How often a watch with `allowWatchBookmarks=true` gets a `BOOKMARK`.
    pub bookmark_interval: Duration,
    /// How long a watch without `timeoutSeconds` stays open before the server ends it.
    pub watch_timeout: Duration,
    /// Tokens and grants for `TokenReview` and `SubjectAccessReview`.
    pub identities: crate::authn::Identities,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            outage: Outage::default(),
            bookmark_interval: Duration::from_secs(60),
            watch_timeout: Duration::from_secs(1800),
            identities: crate::authn::Identities::default(),
        }
    }
}

#[derive(Clone)]
struct Ctx {
    store: Arc<Store>,
    config: ApiConfig,
}

/// The router.
pub fn router(store: Arc<Store>, config: ApiConfig) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(Ctx { store, config })
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Collection {
        res: Resource,
        ns: Option<String>,
    },
    Object {
        res: Resource,
        ns: String,
        name: String,
        status: bool,
    },
    Discovery(Value),
}

fn parse(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => {
            return Ok(Target::Discovery(json!({
                "major": "1", "minor": "34", "gitVersion": "v1.34.0-kubebed",
                "platform": "linux/amd64"
            })));
        }
        ["api"] => {
            return Ok(Target::Discovery(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ));
        }
        ["apis"] => return Ok(Target::Discovery(group_list())),
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        return resource_list(group, version).ok_or_else(ApiError::no_route);
    }
    let find =
        |plural: &str| resources::by_path(group, version, plural).ok_or_else(ApiError::no_route);
    match rest {
        [plural] => Ok(Target::Collection {
            res: find(plural)?,
            ns: None,
        }),
        ["namespaces", ns, plural] if group.is_empty() || *plural != "status" => {
            let res = find(plural)?;
            if !res.namespaced {
                return Err(ApiError::no_route());
            }
            Ok(Target::Collection {
                res,
                ns: Some((*ns).to_string()),
            })
        }
        ["namespaces", ns, plural, name] => {
            let res = find(plural)?;
            if !res.namespaced {
                return Err(ApiError::no_route());
            }
            Ok(Target::Object {
                res,
                ns: (*ns).to_string(),
                name: (*name).to_string(),
                status: false,
            })
        }
        ["namespaces", ns, plural, name, "status"] => Ok(Target::Object {
            res: find(plural)?,
            ns: (*ns).to_string(),
            name: (*name).to_string(),
            status: true,
        }),
        [plural, name] | [plural, name, "status"] => {
            let res = find(plural)?;
            if res.namespaced {
                return Err(ApiError::no_route());
            }
            Ok(Target::Object {
                res,
                ns: String::new(),
                name: (*name).to_string(),
                status: rest.len() == 3,
            })
        }
        _ => Err(ApiError::no_route()),
    }
}

fn group_list() -> Value {
    let mut groups: Vec<(&str, &str)> = resources::ALL
        .iter()
        .filter(|r| !r.group.is_empty())
        .map(|r| (r.group, r.version))
        .collect();
    groups.dedup();
    groups.sort_unstable();
    groups.dedup();
    json!({
        "kind": "APIGroupList", "apiVersion": "v1",
        "groups": groups.iter().map(|(g, v)| json!({
            "name": g,
            "versions": [{"groupVersion": format!("{g}/{v}"), "version": v}],
            "preferredVersion": {"groupVersion": format!("{g}/{v}"), "version": v},
        })).collect::<Vec<_>>(),
    })
}

fn resource_list(group: &str, version: &str) -> Option<Target> {
    let list: Vec<Value> = resources::ALL
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({
                "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            })
        })
        .collect();
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(Target::Discovery(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list,
    })))
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn body_value(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    if ct.contains("yaml") {
        return serde_yaml_ng::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    Err(ApiError::bad_request(
        "the body of the request could not be decoded as JSON",
    ))
}

fn selectors(q: &HashMap<String, String>) -> Result<(Selector, Selector), ApiError> {
    let labels = Selector::labels(q.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = Selector::fields(q.get("fieldSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn delete_options(q: &HashMap<String, String>, body: &Value) -> DeleteOptions {
    let grace = q
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse().ok())
        .or_else(|| body["gracePeriodSeconds"].as_i64());
    let policy = q
        .get("propagationPolicy")
        .map(String::as_str)
        .or_else(|| body["propagationPolicy"].as_str())
        .unwrap_or("Background");
    let orphan = policy == "Orphan" || body["orphanDependents"].as_bool() == Some(true);
    DeleteOptions {
        grace,
        orphan,
        uid: body["preconditions"]["uid"].as_str().map(str::to_string),
    }
}

async fn handle(
    State(ctx): State<Ctx>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if ctx.config.outage.is_down() {
        return ApiError::unavailable().into_response();
    }
    match serve(&ctx, &method, &uri, &q, &headers, &body) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %uri, code = e.code, reason = e.reason, "api error");
            e.into_response()
        }
    }
}

fn serve(
    ctx: &Ctx,
    method: &Method,
    uri: &Uri,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let path = uri.path();
    if matches!(path, "/healthz" | "/readyz" | "/livez") {
        return Ok((StatusCode::OK, "ok").into_response());
    }
    if *method == Method::POST {
        let review = match path {
            "/apis/authentication.k8s.io/v1/tokenreviews" => Some(true),
            "/apis/authorization.k8s.io/v1/subjectaccessreviews" => Some(false),
            _ => None,
        };
        if let Some(token) = review {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("review: {e}")))?;
            let out = if token {
                ctx.config.identities.token_review(&v)
            } else {
                ctx.config.identities.access_review(&v)
            };
            return Ok(json_response(StatusCode::CREATED, &out));
        }
    }
    let store = &ctx.store;
    let target = parse(path)?;
    tracing::debug!(%method, %uri, "request");
    match (target, method.clone()) {
        (Target::Discovery(v), Method::GET) => Ok(json_response(StatusCode::OK, &v)),
        (Target::Collection { res, ns }, Method::GET) => {
            let (labels, fields) = selectors(q)?;
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let upgrade = headers
                    .get(header::UPGRADE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
                if upgrade {
                    // No WebSocket here: a complete 200 without an upgrade, which fabric8 (Spark's
                    // client) answers by repeating the watch as a plain streamed GET.
                    return Ok(json_response(StatusCode::OK, &json!({})));
                }
                let since = q
                    .get("resourceVersion")
                    .filter(|v| !v.is_empty())
                    .map(|v| v.parse::<u64>())
                    .transpose()
                    .map_err(|_| ApiError::bad_request("invalid resourceVersion"))?;
                let timeout = q
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse().ok())
                    .map_or(ctx.config.watch_timeout, Duration::from_secs);
                let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
                return watch(ctx, res, ns, labels, fields, since, timeout, bookmarks);
            }
            let (items, rv) = store.list(&res, ns.as_deref(), &labels, &fields);
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": res.list_kind(), "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items,
                }),
            ))
        }
        (Target::Collection { res, ns }, Method::POST) => {
            let Some(ns) = ns.or_else(|| (!res.namespaced).then(String::new)) else {
                return Err(ApiError::method_not_allowed());
            };
            let obj = body_value(headers, body)?;
            check_kind(&res, &obj)?;
            let created = store.create(&res, &ns, obj)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Target::Collection { res, ns }, Method::DELETE) => {
            let (labels, fields) = selectors(q)?;
            let opts = delete_options(q, &body_value(headers, body).unwrap_or(Value::Null));
            let items = store.delete_collection(&res, ns.as_deref(), &labels, &fields, &opts)?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": res.list_kind(), "apiVersion": res.api_version(),
                        "metadata": {"resourceVersion": store.resource_version().to_string()},
                        "items": items}),
            ))
        }
        (Target::Object { res, ns, name, .. }, Method::GET) => {
            Ok(json_response(StatusCode::OK, &store.get(&res, &ns, &name)?))
        }
        (
            Target::Object {
                res,
                ns,
                name,
                status,
            },
            Method::PUT,
        ) => {
            let obj = body_value(headers, body)?;
            check_kind(&res, &obj)?;
            if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &store.replace(&res, &ns, &name, obj, status)?,
            ))
        }
        (
            Target::Object {
                res,
                ns,
                name,
                status,
            },
            Method::PATCH,
        ) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchKind::from_content_type(ct)
                .ok_or_else(|| ApiError::unsupported_media_type(ct))?;
            let p = body_value(headers, body)?;
            if kind == PatchKind::Apply && q.get("fieldManager").is_none_or(String::is_empty) {
                return Err(ApiError::bad_request(
                    "PATCH, application/apply-patch+yaml requires fieldManager to be set",
                ));
            }
            let patched = store.update(&res, &ns, &name, |cur| {
                let mut p = p.clone();
                if status {
                    p = json!({"status": p["status"].clone()});
                }
                patch::apply(cur, &p, kind);
                Ok(())
            });
            match patched {
                Ok(v) => Ok(json_response(StatusCode::OK, &v)),
                Err(e) if e.code == 404 && kind == PatchKind::Apply && !status => {
                    check_kind(&res, &p)?;
                    let mut obj = p;
                    obj["metadata"]["name"] = json!(name);
                    let created = store.create(&res, &ns, obj)?;
                    Ok(json_response(StatusCode::CREATED, &created))
                }
                Err(e) => Err(e),
            }
        }
        (
            Target::Object {
                res,
                ns,
                name,
                status: false,
            },
            Method::DELETE,
        ) => {
            let opts = delete_options(q, &body_value(headers, body).unwrap_or(Value::Null));
            Ok(json_response(
                StatusCode::OK,
                &store.delete(&res, &ns, &name, &opts)?,
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn check_kind(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    let kind = obj["kind"].as_str();
    let api = obj["apiVersion"].as_str();
    if kind.is_some_and(|k| k != res.kind) || api.is_some_and(|a| a != res.api_version()) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            api.unwrap_or_default(),
            res.api_version()
        )));
    }
    Ok(())
}

/// What a watcher of (`ns`, selectors) sees of an event, if anything: an object that stops
/// matching is `DELETED` for it, one that starts matching is `ADDED`.
fn visible(
    ev: &Event,
    ns: Option<&str>,
    labels: &Selector,
    fields: &Selector,
) -> Option<EventType> {
    let matches = |o: &Value| {
        ns.is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            && labels.matches_labels(o)
            && fields.matches_fields(o)
    };
    let now = matches(&ev.object);
    match (ev.kind, ev.old.as_ref().map(matches)) {
        (EventType::Modified, Some(true)) if !now => Some(EventType::Deleted),
        (EventType::Modified, Some(false)) if now => Some(EventType::Added),
        (EventType::Modified, Some(false)) => None,
        (k, _) => now.then_some(k),
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

#[allow(clippy::too_many_arguments)]
fn watch(
    ctx: &Ctx,
    res: Resource,
    ns: Option<String>,
    labels: Selector,
    fields: Selector,
    since: Option<u64>,
    timeout: Duration,
    bookmarks: bool,
) -> Result<Response, ApiError> {
    let start = match ctx.store.watch(&res, since) {
        Ok(s) => s,
        Err(e) if e.code == 410 => {
            // As the real server: 200, then one ERROR event with the Status.
            let body = line("ERROR", &e.status());
            return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        Err(e) => return Err(e),
    };
    let store = Arc::clone(&ctx.store);
    let interval = ctx.config.bookmark_interval;
    let outage = ctx.config.outage.clone();
    let stream = async_stream(start, move |mut start, tx| async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_rv = start.rv;
        for ev in &start.initial {
            if let Some(k) = visible(ev, ns.as_deref(), &labels, &fields)
                && tx.send(line(k.as_str(), &ev.object)).await.is_err()
            {
                return;
            }
            last_rv = last_rv.max(ev.rv);
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                () = tx.closed() => return,
                () = outage.begins() => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = store.resource_version().max(last_rv);
                    let mut bm = json!({"kind": res.kind, "apiVersion": res.api_version(),
                                    "metadata": {"resourceVersion": rv.to_string(),
                                                 "creationTimestamp": null}});
                    // As the real server serializes an empty Go object: a Pod's spec and
                    // status are structs, present and empty (Spark's submission client
                    // reads both from every event it gets, bookmarks included).
                    if res.kind == "Pod" {
                        bm["spec"] = json!({"containers": null});
                        bm["status"] = json!({});
                    }
                    if tx.send(line("BOOKMARK", &bm)).await.is_err() { return; }
                }
                ev = start.live.recv() => match ev {
                    Ok(ev) => {
                        if ev.res != res || ev.rv <= last_rv { continue; }
                        last_rv = ev.rv;
                        if let Some(k) = visible(&ev, ns.as_deref(), &labels, &fields)
                            && tx.send(line(k.as_str(), &ev.object)).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher too slow for the event rate is cut off; it resumes from
                    // the last version it saw, as from a real server.
                    Err(RecvError::Lagged(_) | RecvError::Closed) => return,
                }
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// A stream fed by a task through a small channel.
fn async_stream<S, F, Fut>(
    state: S,
    f: F,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static
where
    S: Send + 'static,
    F: FnOnce(S, tokio::sync::mpsc::Sender<Bytes>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(state, tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(matches!(parse("/api/v1/namespaces/default/pods").unwrap(),
            Target::Collection { res, ns: Some(ns) } if res.plural == "pods" && ns == "default"));
        assert!(matches!(
            parse("/api/v1/pods").unwrap(),
            Target::Collection { ns: None, .. }
        ));
        assert!(matches!(parse("/api/v1/namespaces/default").unwrap(),
            Target::Object { res, name, .. } if res.plural == "namespaces" && name == "default"));
        assert!(matches!(
            parse("/api/v1/namespaces/d/pods/p/status").unwrap(),
            Target::Object { status: true, .. }
        ));
        assert!(matches!(
            parse("/apis/networking.k8s.io/v1/namespaces/d/networkpolicies/x").unwrap(),
            Target::Object { .. }
        ));
        assert_eq!(parse("/api/v1/namespaces/d/widgets").unwrap_err().code, 404);
        assert_eq!(parse("/api/v1/nodes/n/pods").unwrap_err().code, 404);
        assert_eq!(
            parse("/apis/monitoring.coreos.com/v1/namespaces/d/servicemonitors")
                .unwrap_err()
                .code,
            404
        );
    }
}
