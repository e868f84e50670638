//! The owner watch: the server follows the owner pods that resources name through one watch
//! per owner [`Group`] (`super::pod_watch`; see `super::owners` for the groups), and deletes
//! the resources whose owners ended or never started (`super::owners` decides). The API cost
//! follows the number of groups (one or two in practice: `submit`'s label and Spark's), not
//! the number of owners or jobs. Owners without labels, owners of groups past
//! [`MAX_OTHER_GROUPS`] and owners whose labels would take their group past [`MAX_GROUP_KEYS`]
//! are followed by a list of their pods once per interval instead.
//!
//! A round reads the owned resources from the database and decides each from the watched pods
//! (no API request beyond those lists); rounds run when a watch reports a change, when a grace
//! runs out, and at least every interval, at most one per [`MIN_ROUND_GAP`]. With the resource
//! goes any Secret the project's client made for it (label [`RESOURCE_LABEL`]`=<id>` and
//! `app.kubernetes.io/managed-by=staging-server`, in the owner's namespace). Only a complete,
//! current picture decides: while a group's watch has failed and not listed again, or a list
//! failed, its owners' resources stay as they are, and the TTLs stay as the backstop.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::owners::{Group, Seen, age, decide, seen, selector};
use super::pod_watch::{self, GroupWatch, Shared};
use super::pods::{OwnerPod, PodCache};
use crate::config::OwnerSettings;
use crate::db::{OwnedResource, Owner};
use crate::lifecycle::remove;
use crate::state::AppState;
use staging_api::ids::ResourceId;
use staging_api::wire::{MANAGED_BY, MANAGED_BY_LABEL, RESOURCE_LABEL};

/// Resources read from the database per query (a round reads every page).
const PAGE: usize = 1000;

/// How long to wait before trying again when no API client can be built.
const CLIENT_RETRY: Duration = Duration::from_secs(30);

/// Most groups watched at once besides the submission label's and Spark's application
/// label's (which are always watched): label keys are the uploaders' to choose, and each
/// group is a watch on the API server. Owners of further groups are listed at each round.
pub const MAX_OTHER_GROUPS: usize = 8;

/// The shortest time between two rounds woken by changes: changes that arrive together are
/// decided in one round.
pub const MIN_ROUND_GAP: Duration = Duration::from_secs(1);

/// Metrics of the owner watch.
#[derive(Debug, Clone)]
pub struct OwnerMetrics {
    /// 1 while the last round could decide every owner.
    pub up: IntGauge,
    /// Failed API calls, by call (`list_pods`, `watch_pods`, `delete_secrets`).
    pub errors: IntCounterVec,
    /// Watches open (one per owner group).
    pub watches: IntGauge,
    /// Pods the watches hold.
    pub pods: IntGauge,
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
                "1 while the last round of the owner watch could decide every owner (its group's watch current, or its list answered).",
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "staging_kube_errors_total",
                    "Kubernetes API calls of the owner watch that failed.",
                ),
                &["call"],
            )?,
            watches: IntGauge::new(
                "staging_kube_owner_watches",
                "Pod watches of the owner watch (one per owner group).",
            )?,
            pods: IntGauge::new("staging_kube_owner_pods", "Pods held by the owner watch.")?,
        };
        r.register(Box::new(m.up.clone()))?;
        r.register(Box::new(m.errors.clone()))?;
        r.register(Box::new(m.watches.clone()))?;
        r.register(Box::new(m.pods.clone()))?;
        for c in ["list_pods", "watch_pods", "delete_secrets"] {
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
        match super::watch_client().await {
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

/// Most label keys the owners of one group may name together (each kept on every pod the
/// group selects); owners naming further keys are listed at each interval instead.
pub const MAX_GROUP_KEYS: usize = 32;

/// A list of an owner's pods: when made, and the pods (`None` after an error).
type Listed = (Instant, Option<Vec<OwnerPod>>);

/// A group's watch as it runs.
struct Running {
    stop: CancellationToken,
    keys: tokio::sync::watch::Sender<BTreeSet<String>>,
}

/// The group watches running, and the lists of owners no watch follows.
struct Watches {
    client: Client,
    shared: Shared,
    running: HashMap<Group, Running>,
    generation: u64,
    /// Lists of owners no watch follows, by (namespace, selector): when made, and the pods
    /// (`None` after an error). Each is made again once per interval, whatever wakes the rounds.
    lists: HashMap<(String, String), Listed>,
    cancel: CancellationToken,
}

impl Watches {
    /// Runs a watch for every group of `wanted` (keeping the label keys it names) and for no
    /// other.
    fn set(&mut self, wanted: &BTreeMap<Group, BTreeSet<String>>) {
        self.running.retain(|g, r| {
            let keep = wanted.contains_key(g);
            if !keep {
                r.stop.cancel();
                lock(&self.shared.cache).drop_group(g);
                tracing::info!(selector = %g.selector(), "owner pod watch stopped: no owner left in its group");
            }
            keep
        });
        for (g, keys) in wanted {
            if let Some(r) = self.running.get(g) {
                r.keys.send_if_modified(|k| {
                    let grows = !keys.is_subset(k);
                    if grows {
                        k.clone_from(keys);
                    }
                    grows
                });
                continue;
            }
            let stop = self.cancel.child_token();
            let (tx, rx) = tokio::sync::watch::channel(keys.clone());
            self.generation += 1;
            lock(&self.shared.cache).start(g, self.generation);
            tracing::info!(selector = %g.selector(), "owner pod watch started");
            tokio::spawn(pod_watch::run(GroupWatch {
                client: self.client.clone(),
                group: g.clone(),
                generation: self.generation,
                keys: rx,
                shared: self.shared.clone(),
                cancel: stop.clone(),
            }));
            self.running.insert(g.clone(), Running { stop, keys: tx });
        }
        self.shared.metrics.watches.set(self.running.len() as i64);
    }

    /// The pods of an owner no watch follows: its list, made again once per `interval`.
    async fn listed(&mut self, ns: &str, sel: &str, interval: Duration) -> Option<&[OwnerPod]> {
        let key = (ns.to_owned(), sel.to_owned());
        let fresh = self
            .lists
            .get(&key)
            .is_some_and(|(at, _)| at.elapsed() < interval);
        if !fresh {
            let got = list(&self.client, &self.shared, ns, sel).await;
            self.lists.insert(key.clone(), (Instant::now(), got));
        }
        self.lists.get(&key).and_then(|(_, p)| p.as_deref())
    }
}

fn lock(cache: &Mutex<PodCache>) -> std::sync::MutexGuard<'_, PodCache> {
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Follows owners until `cancel` fires.
pub async fn run(
    state: AppState,
    client: Client,
    metrics: OwnerMetrics,
    settings: OwnerSettings,
    cancel: CancellationToken,
) {
    let shared = Shared {
        cache: Arc::new(Mutex::new(PodCache::default())),
        wake: Arc::new(Notify::new()),
        metrics,
    };
    let mut watches = Watches {
        client,
        shared: shared.clone(),
        running: HashMap::new(),
        generation: 0,
        lists: HashMap::new(),
        cancel: cancel.child_token(),
    };
    let mut ended: HashMap<ResourceId, Instant> = HashMap::new();
    tracing::info!(start_grace = ?settings.start_grace, end_grace = ?settings.end_grace,
        "following the owner pods of staged resources");
    loop {
        let started = tokio::time::Instant::now();
        // Replicas: the leader decides (its deletions go through the shared log); the others
        // wait, and start their graces afresh if they become leader.
        let due = if state.leads() {
            round(&state, &mut watches, &settings, &mut ended).await
        } else {
            ended.clear();
            None
        };
        // At most one round per MIN_ROUND_GAP, whatever wakes it.
        let wait = due
            .map_or(settings.interval, |d| d.min(settings.interval))
            .max(MIN_ROUND_GAP);
        tokio::select! {
            () = cancel.cancelled() => break,
            () = shared.wake.notified() => {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep_until(started + MIN_ROUND_GAP) => {}
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
    watches.cancel.cancel();
}

/// Reads every owned resource, page by page, so that none waits behind older ones.
async fn owned(state: &AppState) -> Option<Vec<OwnedResource>> {
    let mut owned = Vec::new();
    let mut offset = 0;
    loop {
        match state.db().owned(offset, PAGE).await {
            Ok(page) => {
                offset += page.read;
                owned.extend(page.resources);
                if page.read < PAGE {
                    return Some(owned);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "owned resources not read");
                return None;
            }
        }
    }
}

/// The groups to watch for `owned`, each with the label keys its owners name: the
/// well-known ones, the ones already watched, then new ones (oldest owners first) up to
/// [`MAX_OTHER_GROUPS`]. A group's keys only grow while it runs (the ones it keeps first), up
/// to [`MAX_GROUP_KEYS`].
fn wanted_groups(
    owned: &[OwnedResource],
    running: &HashMap<Group, BTreeSet<String>>,
) -> BTreeMap<Group, BTreeSet<String>> {
    let groups: BTreeSet<Group> = owned.iter().filter_map(|r| Group::of(&r.owner)).collect();
    let mut wanted: BTreeMap<Group, BTreeSet<String>> = groups
        .iter()
        .filter(|g| g.is_well_known() || running.contains_key(*g))
        .map(|g| (g.clone(), running.get(g).cloned().unwrap_or_default()))
        .collect();
    let mut others = wanted.keys().filter(|g| !g.is_well_known()).count();
    for r in owned {
        let Some(g) = Group::of(&r.owner) else {
            continue;
        };
        let names = r.owner.labels.as_map();
        if names.len() > MAX_GROUP_KEYS {
            // Never fits: listed instead, and opens no group.
            continue;
        }
        let keys = match wanted.get_mut(&g) {
            Some(k) => k,
            None if others < MAX_OTHER_GROUPS => {
                others += 1;
                wanted.entry(g).or_default()
            }
            None => continue,
        };
        let new = names.keys().filter(|k| !keys.contains(*k)).count();
        if keys.len() + new <= MAX_GROUP_KEYS {
            keys.extend(names.keys().cloned());
        }
    }
    wanted
}

/// Whether `wanted` follows `owner` by a watch: its group is watched and keeps every label
/// it names.
fn watched(wanted: &BTreeMap<Group, BTreeSet<String>>, owner: &Owner) -> Option<Group> {
    let g = Group::of(owner)?;
    let keys = wanted.get(&g)?;
    owner
        .labels
        .as_map()
        .keys()
        .all(|k| keys.contains(k))
        .then_some(g)
}

/// One round; returns how long until the next grace runs out, if one is running.
async fn round(
    state: &AppState,
    watches: &mut Watches,
    settings: &OwnerSettings,
    ended: &mut HashMap<ResourceId, Instant>,
) -> Option<Duration> {
    let owned = owned(state).await?;
    let running: HashMap<Group, BTreeSet<String>> = watches
        .running
        .iter()
        .map(|(g, r)| (g.clone(), r.keys.borrow().clone()))
        .collect();
    let wanted = wanted_groups(&owned, &running);
    watches.set(&wanted);
    let shared = watches.shared.clone();
    let client = watches.client.clone();
    let mut healthy = true;
    let mut due: Option<Duration> = None;
    let mut soonest = |d: Duration| due = Some(due.map_or(d, |x| x.min(d)));
    let mut listed: HashSet<(String, String)> = HashSet::new();
    for r in &owned {
        let ns = r.owner.namespace.as_str().to_owned();
        let s = match watched(&wanted, &r.owner) {
            Some(g) => lock(&shared.cache).pods_of(&g, &r.owner).map(seen),
            None => {
                let sel = selector(&r.owner);
                let pods = watches.listed(&ns, &sel, settings.interval).await;
                let s = pods.map(|pods| seen(pods.iter().filter(|p| p.belongs_to(&r.owner))));
                listed.insert((ns.clone(), sel));
                s
            }
        };
        let Some(s) = s else {
            healthy = false;
            continue;
        };
        let now = Instant::now();
        if s != Seen::None
            && r.owner_seen_at.is_none()
            && let Err(e) = state.mark_owner_seen(r.id, state.now_ms()).await
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
            match since {
                Some(t) => soonest(settings.end_grace.saturating_sub(now.duration_since(t))),
                None if s == Seen::None => {
                    soonest(settings.start_grace.saturating_sub(age(r, state.now_ms())));
                }
                None => {}
            }
            continue;
        };
        match remove(state, r.id, reason).await {
            Ok(_) => {
                ended.remove(&r.id);
                tracing::info!(resource = %r.id, namespace = %ns, reason = ?reason, "resource deleted with its owner");
                if settings.delete_secrets {
                    delete_secrets(&client, &shared.metrics, &ns, r.id).await;
                }
            }
            Err(e) => tracing::warn!(resource = %r.id, error = %e, "resource not deleted yet"),
        }
    }
    ended.retain(|id, _| owned.iter().any(|r| r.id == *id));
    watches.lists.retain(|k, _| listed.contains(k));
    shared.metrics.up.set(i64::from(healthy));
    shared.metrics.pods.set(lock(&shared.cache).len() as i64);
    due
}

/// Lists the pods of an owner no watch follows; `None` after an error (counted).
async fn list(client: &Client, shared: &Shared, ns: &str, sel: &str) -> Option<Vec<OwnerPod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    match api.list(&ListParams::default().labels(sel)).await {
        Ok(l) => Some(
            l.items
                .iter()
                .filter_map(|p| OwnerPod::of(p, None))
                .collect(),
        ),
        Err(e) => {
            shared
                .metrics
                .errors
                .with_label_values(&["list_pods"])
                .inc();
            tracing::warn!(namespace = %ns, error = %e, "owner pods not listed; nothing decided for them");
            None
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Owner;
    use staging_api::ids::Labels;

    fn owned(labels: &str) -> OwnedResource {
        OwnedResource {
            id: ResourceId::random(),
            owner: Owner {
                namespace: "ns".parse().unwrap(),
                labels: Labels::parse_selector(labels).unwrap(),
                pod_uid: None,
            },
            committed_at: 0,
            owner_seen_at: None,
        }
    }

    #[test]
    fn uploaders_label_keys_open_a_bounded_number_of_watches() {
        let mut all = vec![
            owned("staging-server/submission=a,spark-role=driver"),
            owned("spark-app-selector=b,spark-role=driver"),
        ];
        // A tenant naming a new label key on every upload, or Spark's with new roles.
        all.extend((0..50).map(|i| owned(&format!("key{i:02}=x"))));
        all.extend((0..50).map(|i| owned(&format!("spark-app-selector=b,spark-role=r{i}"))));
        let wanted = wanted_groups(&all, &HashMap::new());
        assert_eq!(wanted.len(), 2 + MAX_OTHER_GROUPS);
        assert_eq!(wanted.keys().filter(|g| g.is_well_known()).count(), 2);
        // Groups already watched keep their watch; new ones wait for a free slot.
        all.insert(0, owned("aaa=x"));
        let running: HashMap<Group, BTreeSet<String>> = wanted.clone().into_iter().collect();
        assert_eq!(wanted_groups(&all, &running), wanted);
        assert!(watched(&wanted, &owned("aaa=x").owner).is_none());
    }

    #[test]
    fn a_group_keeps_the_label_keys_its_owners_name_up_to_a_bound() {
        let mut all = vec![owned("spark-app-selector=a,spark-role=driver")];
        // One owner naming many extra keys.
        let many: Vec<String> = (0..MAX_GROUP_KEYS).map(|i| format!("k{i:02}=v")).collect();
        let wide = owned(&format!(
            "spark-app-selector=b,spark-role=driver,{}",
            many.join(",")
        ));
        all.push(wide.clone());
        all.push(owned("spark-app-selector=c,spark-role=driver,team=x"));
        let wanted = wanted_groups(&all, &HashMap::new());
        let keys = wanted.values().next().unwrap();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(watched(&wanted, &all[0].owner).is_some());
        assert!(watched(&wanted, &all[2].owner).is_some());
        // The wide owner is listed instead of widening every pod of the group.
        assert!(watched(&wanted, &wide.owner).is_none());
        // An owner naming more keys than a group keeps, first of its group, opens none.
        let wider = owned(&format!("team=a,{}", many.join(",")));
        let alone = wanted_groups(std::slice::from_ref(&wider), &HashMap::new());
        assert!(alone.is_empty(), "{alone:?}");
    }
}
