//! Bundles that follow their owner pods (Kubernetes): a committed resource names its owner
//! (namespace and labels, or a pod uid); every interval the server lists those pods and
//! deletes the resource when they have existed and all ended (`Succeeded`, `Failed` or gone)
//! for the end grace, or when none appeared within the start grace after the upload. With the
//! resource goes any Secret the project's client made for it (label
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

use crate::db::{OwnedResource, Owner};
use crate::lifecycle::{DeleteReason, remove};
use crate::state::AppState;
use staging_api::ids::ResourceId;

use staging_api::wire::{MANAGED_BY, MANAGED_BY_LABEL, RESOURCE_LABEL};
/// Resources read from the database per query (a round reads every page).
const PAGE: usize = 1000;

/// How owners are followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerSettings {
    /// A resource whose owner pods never appear is deleted this long after its upload.
    pub start_grace: Duration,
    /// A resource whose owner pods all ended is deleted after they stayed so this long.
    pub end_grace: Duration,
    /// Time between two rounds.
    pub interval: Duration,
    /// Also delete the Secrets the client made for a deleted resource.
    pub delete_secrets: bool,
}

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

/// What the owner pods of a resource show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// No matching pod.
    None,
    /// At least one pod not in a final phase.
    Live,
    /// Matching pods, all `Succeeded` or `Failed`.
    Ended,
}

/// Reads a list of the owner's pods.
pub fn seen(owner: &Owner, pods: &[Pod]) -> Seen {
    let mine = pods.iter().filter(|p| {
        owner
            .pod_uid
            .as_deref()
            .is_none_or(|u| p.metadata.uid.as_deref() == Some(u))
    });
    let mut any = false;
    for p in mine {
        any = true;
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if !matches!(phase, Some("Succeeded" | "Failed")) {
            return Seen::Live;
        }
    }
    if any { Seen::Ended } else { Seen::None }
}

/// The decision for one resource, given what its owner pods show now.
pub fn decide(
    r: &OwnedResource,
    now_ms: i64,
    seen: Seen,
    ended_since: Option<Instant>,
    now: Instant,
    settings: &OwnerSettings,
) -> Option<DeleteReason> {
    let started = r.owner_seen_at.is_some() || seen != Seen::None;
    match seen {
        Seen::Live => None,
        Seen::Ended | Seen::None if started => ended_since
            .filter(|t| now.duration_since(*t) >= settings.end_grace)
            .map(|_| DeleteReason::OwnerEnded),
        _ => {
            let age = u64::try_from(now_ms.saturating_sub(r.committed_at)).unwrap_or(0);
            (Duration::from_millis(age) >= settings.start_grace)
                .then_some(DeleteReason::OwnerNeverStarted)
        }
    }
}

/// The label selector of an owner.
fn selector(owner: &Owner) -> String {
    owner
        .labels
        .as_map()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
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
    loop {
        match state.db().owned(owned.len(), PAGE).await {
            Ok(page) => {
                let last = page.len() < PAGE;
                owned.extend(page);
                if last {
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

/// Builds the API client from the pod's service account (or `KUBECONFIG` outside a pod).
///
/// # Errors
/// No usable configuration.
pub async fn client() -> anyhow::Result<Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = kube::Config::infer().await?;
    // Each round retries what failed; a call that hangs must not hold every later round.
    config.default_retry = false;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    config.write_timeout = Some(Duration::from_secs(30));
    Ok(Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OwnerSettings {
        OwnerSettings {
            start_grace: Duration::from_secs(600),
            end_grace: Duration::from_secs(30),
            interval: Duration::from_secs(15),
            delete_secrets: true,
        }
    }

    fn resource(seen_at: Option<i64>) -> OwnedResource {
        OwnedResource {
            id: ResourceId::random(),
            owner: Owner {
                namespace: "ns".parse().unwrap(),
                labels: staging_api::ids::Labels::parse_selector("spark-role=driver").unwrap(),
                pod_uid: None,
            },
            committed_at: 1_000_000,
            owner_seen_at: seen_at,
        }
    }

    fn pod(uid: &str, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"uid": uid}, "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn live_pods_keep_a_resource_and_ended_ones_release_it_after_the_grace() {
        let s = settings();
        let t0 = Instant::now();
        let r = resource(Some(1_000_100));
        assert_eq!(seen(&r.owner, &[pod("a", "Running")]), Seen::Live);
        assert_eq!(
            seen(&r.owner, &[pod("a", "Succeeded"), pod("b", "Pending")]),
            Seen::Live
        );
        assert_eq!(
            seen(&r.owner, &[pod("a", "Succeeded"), pod("b", "Failed")]),
            Seen::Ended
        );
        assert_eq!(decide(&r, 2_000_000, Seen::Live, None, t0, &s), None);
        assert_eq!(decide(&r, 2_000_000, Seen::Ended, Some(t0), t0, &s), None);
        assert_eq!(
            decide(&r, 2_000_000, Seen::Ended, Some(t0), t0 + s.end_grace, &s),
            Some(DeleteReason::OwnerEnded)
        );
        // Gone (deleted) after being seen: ended as well.
        assert_eq!(
            decide(&r, 2_000_000, Seen::None, Some(t0), t0 + s.end_grace, &s),
            Some(DeleteReason::OwnerEnded)
        );
    }

    #[test]
    fn owners_that_never_appear_release_after_the_start_grace_only() {
        let s = settings();
        let t0 = Instant::now();
        let r = resource(None);
        assert_eq!(
            decide(&r, 1_000_000 + 599_000, Seen::None, None, t0, &s),
            None
        );
        assert_eq!(
            decide(&r, 1_000_000 + 600_000, Seen::None, None, t0, &s),
            Some(DeleteReason::OwnerNeverStarted)
        );
        // A queued (Pending) driver keeps it however long it waits.
        assert_eq!(seen(&r.owner, &[pod("a", "Pending")]), Seen::Live);
        assert_eq!(decide(&r, i64::MAX, Seen::Live, None, t0, &s), None);
    }

    #[test]
    fn an_owner_uid_selects_that_pod_only() {
        let mut r = resource(None);
        r.owner.pod_uid = Some("b".into());
        assert_eq!(seen(&r.owner, &[pod("a", "Running")]), Seen::None);
        assert_eq!(
            seen(&r.owner, &[pod("a", "Running"), pod("b", "Failed")]),
            Seen::Ended
        );
    }
}
