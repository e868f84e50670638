//! The owner watch: every interval the server lists the owner pods of each resource that names
//! them and deletes the resources whose owners ended or never started (`super::owners`
//! decides). With the resource goes any Secret the project's client made for it (label
//! [`RESOURCE_LABEL`]`=<id>` and `app.kubernetes.io/managed-by=staging-server`, in the owner's
//! namespace). Only a successful list decides; an API error leaves everything as it is, and the
//! TTLs stay as the backstop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;

use super::owners::{Seen, decide, seen, selector};
use crate::config::OwnerSettings;
use crate::lifecycle::remove;
use crate::state::AppState;
use staging_api::ids::ResourceId;
use staging_api::wire::{MANAGED_BY, MANAGED_BY_LABEL, RESOURCE_LABEL};

/// Resources read from the database per query (a round reads every page).
const PAGE: usize = 1000;

/// How long to wait before trying again when no API client can be built.
const CLIENT_RETRY: Duration = Duration::from_secs(30);

/// Metrics of the owner watch.
#[derive(Debug, Clone)]
pub struct OwnerMetrics {
    /// 1 while the last round's lists all succeeded.
    pub up: IntGauge,
    /// Failed API calls, by call (`list_pods`, `delete_secrets`).
    pub errors: IntCounterVec,
}

impl OwnerMetrics {
    /// Creates and registers the metrics.
    ///
    /// # Errors
    /// A registration conflict.
    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            up: IntGauge::new(
                "staging_kube_owner_watch_up",
                "1 while the last round of owner pod lists succeeded.",
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "staging_kube_errors_total",
                    "Kubernetes API calls of the owner watch that failed.",
                ),
                &["call"],
            )?,
        };
        r.register(Box::new(m.up.clone()))?;
        r.register(Box::new(m.errors.clone()))?;
        for c in ["list_pods", "delete_secrets"] {
            m.errors.with_label_values(&[c]).inc_by(0);
        }
        Ok(m)
    }
}

/// Registers the metrics, builds the API client (trying again every `CLIENT_RETRY` while
/// there is none) and follows owners until `cancel` fires.
pub async fn follow(state: AppState, settings: OwnerSettings, cancel: CancellationToken) {
    let metrics = match OwnerMetrics::new(state.registry()) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "owner metrics not registered; owner watch off");
            return;
        }
    };
    // Without a client (no service account, no kubeconfig) resources live by their
    // TTLs; trying again costs nothing.
    let client = loop {
        match super::client().await {
            Ok(c) => break c,
            Err(e) => {
                metrics.errors.with_label_values(&["list_pods"]).inc();
                tracing::error!(error = %e, "no Kubernetes API client; resources follow their TTLs only");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(CLIENT_RETRY) => {}
        }
    };
    run(state, client, metrics, settings, cancel).await;
}

/// Follows owners until `cancel` fires.
pub async fn run(
    state: AppState,
    client: Client,
    metrics: OwnerMetrics,
    settings: OwnerSettings,
    cancel: CancellationToken,
) {
    let mut ended: HashMap<ResourceId, Instant> = HashMap::new();
    tracing::info!(start_grace = ?settings.start_grace, end_grace = ?settings.end_grace,
        "following the owner pods of staged resources");
    loop {
        round(&state, &client, &metrics, &settings, &mut ended).await;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
    }
}

async fn round(
    state: &AppState,
    client: &Client,
    metrics: &OwnerMetrics,
    settings: &OwnerSettings,
    ended: &mut HashMap<ResourceId, Instant>,
) {
    // Every owned resource, page by page, so that none waits behind older ones.
    let mut owned = Vec::new();
    let mut offset = 0;
    loop {
        match state.db().owned(offset, PAGE).await {
            Ok(page) => {
                offset += page.read;
                owned.extend(page.resources);
                if page.read < PAGE {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "owned resources not read");
                return;
            }
        }
    }
    let mut healthy = true;
    let mut lists: HashMap<(String, String), Option<Vec<Pod>>> = HashMap::new();
    for r in &owned {
        let ns = r.owner.namespace.as_str().to_owned();
        let sel = selector(&r.owner);
        let key = (ns.clone(), sel.clone());
        if !lists.contains_key(&key) {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let got = match api.list(&ListParams::default().labels(&sel)).await {
                Ok(l) => Some(l.items),
                Err(e) => {
                    healthy = false;
                    metrics.errors.with_label_values(&["list_pods"]).inc();
                    tracing::warn!(namespace = %ns, error = %e, "owner pods not listed; nothing decided for them");
                    None
                }
            };
            lists.insert(key.clone(), got);
        }
        let Some(Some(pods)) = lists.get(&key) else {
            continue;
        };
        let now = Instant::now();
        let s = seen(&r.owner, pods);
        if s != Seen::None
            && r.owner_seen_at.is_none()
            && let Err(e) = state.db().mark_owner_seen(r.id, state.now_ms()).await
        {
            // Until recorded, the unused TTL still applies and a later round without pods
            // reads the owner as never started (the start grace then decides).
            tracing::warn!(resource = %r.id, error = %e, "owner pods seen but not recorded");
        }
        let since = match s {
            Seen::Live => {
                ended.remove(&r.id);
                None
            }
            _ if r.owner_seen_at.is_some() || s != Seen::None => {
                Some(*ended.entry(r.id).or_insert(now))
            }
            _ => None,
        };
        let Some(reason) = decide(r, state.now_ms(), s, since, now, settings) else {
            continue;
        };
        match remove(state, r.id, reason).await {
            Ok(_) => {
                ended.remove(&r.id);
                tracing::info!(resource = %r.id, namespace = %ns, reason = ?reason, "resource deleted with its owner");
                if settings.delete_secrets {
                    delete_secrets(client, metrics, &ns, r.id).await;
                }
            }
            Err(e) => tracing::warn!(resource = %r.id, error = %e, "resource not deleted yet"),
        }
    }
    ended.retain(|id, _| owned.iter().any(|r| r.id == *id));
    metrics.up.set(i64::from(healthy));
}

async fn delete_secrets(client: &Client, metrics: &OwnerMetrics, ns: &str, id: ResourceId) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let sel = format!("{RESOURCE_LABEL}={id},{MANAGED_BY_LABEL}={MANAGED_BY}");
    if let Err(e) = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&sel),
        )
        .await
    {
        metrics.errors.with_label_values(&["delete_secrets"]).inc();
        tracing::warn!(namespace = %ns, resource = %id, error = %e, "the resource's Secret was not deleted");
    }
}
