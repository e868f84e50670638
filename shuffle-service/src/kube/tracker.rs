//! What the service knows about Spark's pods, and the decisions drawn from it: an
//! application's data goes only on positive evidence that the driver pod that owns it ended
//! (a delete event, a complete fresh list without it, or a final phase held for the grace
//! period). Errors, watch gaps and restarts only ever leave things as they are.
//!
//! Which driver pods claim an application: those named by uid in the controlling owner
//! reference of the application's executor pods on this node, in their own namespace (Spark
//! sets it; owner references never cross namespaces), seen in that namespace with that uid.
//! Any tenant can make such pods for an id it knows, so neither being first nor being alone
//! decides who owns the application (`crate::core::claims`): with learned secrets on, the
//! secret each claimant's executor pods carry is only a candidate, and the application is
//! bound to the claimant whose secret a client then proves; without, an application whose
//! executor pods all name one driver pod is bound to it once every driver watch has listed
//! (that binding only decides the end of unauthenticated data, which any client may delete).
//! A binding is persisted and survives restarts, and a later claimant never replaces it.
//! While more than one driver pod claims an application it is counted as contested and a
//! warning names the pods. Labels, creation times and pods of other namespaces decide
//! nothing.
//!
//! The tracker takes pod facts as they come, whichever way they arrive (lists, watch events),
//! and never talks to the API itself. It names the applications whose drivers it needs
//! ([`Tracker::wanted`]): those with executor pods on this node or a binding, the node's own.
//! A list of the driver pods of some applications (selected by their application label) is
//! evidence only about the driver pods carrying one of those labels.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pods::{DriverPod, ExecutorPod, Phase};
use crate::core::PodOwner;
use crate::core::claims::{Claims, Offered};
use spark_protocol::ids::AppId;

/// How long the fact that a driver pod is gone is kept once no application refers to it.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// Why an application's data is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // Named as the removal reasons they are counted under.
pub(crate) enum Reason {
    /// The driver pod was deleted.
    DriverDeleted,
    /// The driver pod stayed `Succeeded` for the grace period.
    DriverSucceeded,
    /// The driver pod stayed `Failed` for the grace period.
    DriverFailed,
}

impl Reason {
    /// The metric and log label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::DriverDeleted => "driver_deleted",
            Self::DriverSucceeded => "driver_succeeded",
            Self::DriverFailed => "driver_failed",
        }
    }
}

/// Which watch a list came from: executors or drivers, in one namespace or in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Scope {
    /// Driver pods (otherwise executor pods).
    pub drivers: bool,
    /// The namespace (`None`: all).
    pub namespace: Option<String>,
}

impl Scope {
    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

struct Exec {
    app: AppId,
    /// The pod's name (for logs).
    name: String,
    /// The driver pod that controls it, in its namespace.
    driver: Option<PodOwner>,
    namespace: String,
    /// Spark's secret from the pod, until it is offered.
    secret: Option<Vec<u8>>,
    /// The pod's secret was offered already (kept, same or refused).
    taught: bool,
    /// The pod ended (its claimant is not live by it).
    ended: bool,
}

#[derive(Debug, Default)]
struct App {
    /// Executor pods present now.
    executors: HashSet<String>,
    removed: bool,
    /// More than one driver pod claims it (a warning was written).
    contested: bool,
}

#[derive(Debug, Clone, Copy)]
enum DriverState {
    Live,
    Final { reason: Reason, since: Instant },
    Gone { since: Instant },
}

#[derive(Debug)]
struct Driver {
    namespace: String,
    name: String,
    /// Its application label when last seen: which lists of selected applications cover it.
    label: Option<AppId>,
    state: DriverState,
}

/// What secrets arriving did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Learning {
    /// Claimants whose secret is now known.
    pub learned: usize,
    /// Secrets refused because a different one is already known for the same claimant.
    pub conflicts: usize,
}

impl Learning {
    fn add(&mut self, other: Self) {
        self.learned += other.learned;
        self.conflicts += other.conflicts;
    }
}

/// The state of the pods followed.
pub(crate) struct Tracker {
    grace: Duration,
    claims: Arc<Claims>,
    /// Secrets are learned (and applications bound by authentication only).
    learn: bool,
    apps: HashMap<AppId, App>,
    executors: HashMap<String, Exec>,
    drivers: HashMap<String, Driver>,
    /// Watches per kind (one per namespace, or one for all); until every driver watch has
    /// listed, claimants are not known and nothing is bound, decided or learned; until every
    /// watch has, nothing is pruned.
    scopes: usize,
    synced: HashSet<Scope>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("apps", &self.apps.len())
            .field("executors", &self.executors.len())
            .field("drivers", &self.drivers.len())
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// An empty tracker for `scopes` watches of each kind, over the bindings of `claims`
    /// (restored ones included); with `learn`, claimants' secrets go to `claims`.
    pub(crate) fn new(grace: Duration, claims: Arc<Claims>, learn: bool, scopes: usize) -> Self {
        let apps = claims
            .bound()
            .into_iter()
            .map(|(app, _)| (app, App::default()))
            .collect();
        Self {
            grace,
            claims,
            learn,
            apps,
            executors: HashMap::new(),
            drivers: HashMap::new(),
            scopes,
            synced: HashSet::new(),
        }
    }

    fn ready(&self) -> bool {
        self.synced.iter().filter(|s| s.drivers).count() >= self.scopes
    }

    /// Whether every executor watch has completed a list (the node's applications are known).
    pub(crate) fn executors_listed(&self) -> bool {
        self.synced.iter().filter(|s| !s.drivers).count() >= self.scopes
    }

    fn all_listed(&self) -> bool {
        self.synced.len() >= 2 * self.scopes
    }

    /// Applications followed.
    pub(crate) fn apps(&self) -> usize {
        self.apps.len()
    }

    /// The applications whose driver pods this node needs to follow: those with executor
    /// pods on this node, with data not yet pruned, or bound (restored bindings included).
    pub(crate) fn wanted(&self) -> BTreeSet<AppId> {
        self.apps.keys().cloned().collect()
    }

    /// Driver pods known (including recently gone ones).
    pub(crate) fn drivers(&self) -> usize {
        self.drivers.len()
    }

    /// Applications whose executor pods on this node name more than one driver pod.
    pub(crate) fn contested(&self) -> usize {
        self.apps
            .values()
            .filter(|a| self.claimants(a).len() > 1)
            .count()
    }

    /// An executor pod was added or changed.
    pub(crate) fn executor_seen(&mut self, e: ExecutorPod) -> Learning {
        // A pod relabelled to another application offers its secret to that one.
        let taught = self
            .executors
            .get(&e.uid)
            .is_some_and(|x| x.taught && x.app == e.app);
        let mut left = None;
        if let Some(old) = self.executors.get(&e.uid)
            && old.app != e.app
        {
            // Relabelled to another application: it leaves the first one.
            let old_app = old.app.clone();
            if let Some(a) = self.apps.get_mut(&old_app) {
                a.executors.remove(&e.uid);
            }
            left = Some(old_app);
        }
        let app = self.apps.entry(e.app.clone()).or_default();
        app.executors.insert(e.uid.clone());
        let secret = e.secret.filter(|_| self.learn && !taught);
        self.executors.insert(
            e.uid,
            Exec {
                app: e.app.clone(),
                name: e.name,
                driver: e.driver,
                namespace: e.namespace,
                secret,
                taught,
                ended: e.ended,
            },
        );
        let mut out = self.settle(&e.app);
        if let Some(old) = left {
            out.add(self.settle(&old));
        }
        out
    }

    /// An executor pod was deleted (the pods left may now name one driver pod).
    pub(crate) fn executor_gone(&mut self, uid: &str) -> Learning {
        let Some(mut x) = self.executors.remove(uid) else {
            return Learning::default();
        };
        if let Some(s) = &mut x.secret {
            s.fill(0);
        }
        if let Some(a) = self.apps.get_mut(&x.app) {
            a.executors.remove(uid);
        }
        self.settle(&x.app)
    }

    /// A driver pod was added or changed.
    pub(crate) fn driver_seen(&mut self, d: DriverPod, now: Instant) -> Learning {
        let uid = d.uid.clone();
        let entry = self.drivers.entry(d.uid).or_insert(Driver {
            namespace: d.namespace,
            name: d.name.clone(),
            label: d.app.clone(),
            state: DriverState::Live,
        });
        entry.name = d.name;
        entry.label = d.app;
        entry.state = match (entry.state, d.phase) {
            (s @ (DriverState::Gone { .. } | DriverState::Final { .. }), _)
            | (s @ DriverState::Live, Phase::Live) => s,
            (DriverState::Live, Phase::Succeeded) => DriverState::Final {
                reason: Reason::DriverSucceeded,
                since: now,
            },
            (DriverState::Live, Phase::Failed) => DriverState::Final {
                reason: Reason::DriverFailed,
                since: now,
            },
        };
        let apps: HashSet<AppId> = self
            .executors
            .values()
            .filter(|x| x.driver.as_ref().is_some_and(|o| o.driver_uid == uid))
            .map(|x| x.app.clone())
            .collect();
        let mut out = Learning::default();
        for a in apps {
            out.add(self.settle(&a));
        }
        out
    }

    /// A driver pod was deleted.
    pub(crate) fn driver_gone(&mut self, d: DriverPod, now: Instant) {
        let uid = d.uid.clone();
        self.driver_seen(d, now);
        if let Some(entry) = self.drivers.get_mut(&uid)
            && !matches!(entry.state, DriverState::Gone { .. })
        {
            entry.state = DriverState::Gone { since: now };
        }
    }

    /// A complete, fresh list of `scope` held exactly the pods `present`: executor pods not in
    /// it are forgotten, driver pods not in it are gone. The first complete list of every
    /// driver watch makes claimants known: applications are bound (without learned secrets)
    /// and claimants' secrets offered then.
    pub(crate) fn relisted(
        &mut self,
        scope: &Scope,
        present: &HashSet<String>,
        now: Instant,
    ) -> Learning {
        self.listed(scope, None, present, now)
    }

    /// As [`Tracker::relisted`] for a list of the driver pods of `apps` only (selected by
    /// their application label): driver pods last seen with another label, or none, are not
    /// covered by it and stay as they are.
    pub(crate) fn drivers_listed(
        &mut self,
        scope: &Scope,
        apps: &BTreeSet<AppId>,
        present: &HashSet<String>,
        now: Instant,
    ) -> Learning {
        debug_assert!(scope.drivers);
        self.listed(scope, Some(apps), present, now)
    }

    fn listed(
        &mut self,
        scope: &Scope,
        apps: Option<&BTreeSet<AppId>>,
        present: &HashSet<String>,
        now: Instant,
    ) -> Learning {
        if scope.drivers {
            let was_ready = self.ready();
            self.synced.insert(scope.clone());
            self.mark_gone(scope, apps, present, now);
            if !was_ready && self.ready() {
                let apps: Vec<AppId> = self.apps.keys().cloned().collect();
                let mut out = Learning::default();
                for a in apps {
                    out.add(self.settle(&a));
                }
                return out;
            }
        } else {
            self.synced.insert(scope.clone());
            let stale: Vec<String> = self
                .executors
                .iter()
                .filter(|(uid, x)| scope.covers(&x.namespace) && !present.contains(*uid))
                .map(|(uid, _)| uid.clone())
                .collect();
            let mut out = Learning::default();
            for uid in stale {
                out.add(self.executor_gone(&uid));
            }
            return out;
        }
        Learning::default()
    }

    fn mark_gone(
        &mut self,
        scope: &Scope,
        apps: Option<&BTreeSet<AppId>>,
        present: &HashSet<String>,
        now: Instant,
    ) {
        for (uid, d) in &mut self.drivers {
            let covered =
                apps.is_none_or(|apps| d.label.as_ref().is_some_and(|l| apps.contains(l)));
            if covered
                && scope.covers(&d.namespace)
                && !present.contains(uid)
                && !matches!(d.state, DriverState::Gone { .. })
            {
                d.state = DriverState::Gone { since: now };
            }
        }
    }

    /// The distinct driver pods the application's executor pods name.
    fn claimants<'a>(&'a self, a: &'a App) -> HashSet<&'a PodOwner> {
        a.executors
            .iter()
            .filter_map(|u| self.executors.get(u)?.driver.as_ref())
            .collect()
    }

    /// The claimants of `app` with an executor pod on this node that has not ended.
    fn live_claimants(&self, app: &AppId) -> HashSet<PodOwner> {
        let Some(a) = self.apps.get(app) else {
            return HashSet::new();
        };
        a.executors
            .iter()
            .filter_map(|u| self.executors.get(u))
            .filter(|x| !x.ended)
            .filter_map(|x| x.driver.clone())
            .collect()
    }

    /// The driver pod named by `owner`, if seen with that uid in that namespace.
    fn resolve(&self, owner: &PodOwner) -> Option<&Driver> {
        self.drivers
            .get(&owner.driver_uid)
            .filter(|d| d.namespace == owner.namespace)
    }

    /// `namespace/name/uid` of a claimant, for logs.
    fn describe(&self, o: &PodOwner) -> String {
        let name = self.resolve(o).map_or("?", |d| d.name.as_str());
        format!("{}/{}/{}", o.namespace, name, o.driver_uid)
    }

    /// Takes the application's claimants into account: without learned secrets, binds it
    /// when its executor pods name one driver pod, seen in their namespace; with, offers the
    /// secrets its claimants' executor pods carry (binding is left to authentication).
    fn settle(&mut self, app: &AppId) -> Learning {
        if !self.ready() {
            return Learning::default();
        }
        let Some(a) = self.apps.get(app) else {
            return Learning::default();
        };
        let claimants: Vec<PodOwner> = self.claimants(a).into_iter().cloned().collect();
        let removed = a.removed;
        self.report_contest(app, &claimants);
        if !self.learn {
            if let [only] = claimants.as_slice()
                && self.resolve(only).is_some()
                && self.claims.owner(app).is_none()
                && self.claims.bind(app, only) == Ok(true)
            {
                tracing::info!(app = %app, namespace = %only.namespace, driver_uid = %only.driver_uid,
                    "application bound to its driver pod");
            }
            return Learning::default();
        }
        if removed {
            return Learning::default();
        }
        let present: HashSet<&PodOwner> = claimants
            .iter()
            .filter(|o| self.resolve(o).is_some())
            .collect();
        let live = self.live_claimants(app);
        self.claims.retain(app, &present, &live.iter().collect());
        self.teach(app, &live)
    }

    /// Writes a warning when more than one driver pod starts claiming the application, and a
    /// note when only one is left.
    fn report_contest(&mut self, app: &AppId, claimants: &[PodOwner]) {
        let was = self.apps.get(app).is_some_and(|a| a.contested);
        let is = claimants.len() > 1;
        if is && !was {
            let mut pods: Vec<String> = claimants.iter().map(|o| self.describe(o)).collect();
            pods.sort();
            let bound = self
                .claims
                .owner(app)
                .map_or_else(|| "none".to_owned(), |o| self.describe(&o));
            tracing::warn!(app = %app, claimants = %pods.join(", "), bound = %bound,
                "several driver pods claim this application on this node; no later claimant replaces a binding, and none is bound but by a client proving its secret");
        } else if was && !is {
            tracing::info!(app = %app, "only one driver pod claims this application now");
        }
        if let Some(a) = self.apps.get_mut(app) {
            a.contested = is;
        }
    }

    /// The live state of the driver pod the application is bound to.
    fn owner(&self, app: &AppId) -> Option<&Driver> {
        self.resolve(&self.claims.owner(app)?)
    }

    /// Applications whose driver pod ended: deleted, or in a final phase for the grace period.
    /// Those already removed are listed too: an executor that registers after its driver ended
    /// (killed a moment later) must not leave data behind; see [`Tracker::is_removed`].
    pub(crate) fn due(&self, now: Instant) -> Vec<(AppId, Reason)> {
        let mut out = Vec::new();
        if !self.ready() {
            return out;
        }
        for id in self.apps.keys() {
            let Some(d) = self.owner(id) else { continue };
            match d.state {
                DriverState::Gone { .. } => out.push((id.clone(), Reason::DriverDeleted)),
                DriverState::Final { reason, since } if now.duration_since(since) >= self.grace => {
                    out.push((id.clone(), reason));
                }
                _ => {}
            }
        }
        out
    }

    /// Whether the application's data was deleted already.
    pub(crate) fn is_removed(&self, app: &AppId) -> bool {
        self.apps.get(app).is_some_and(|a| a.removed)
    }

    /// The application's data was deleted: its secrets are forgotten; the record stays while
    /// its executor pods do, so that it is not deleted again.
    pub(crate) fn removed(&mut self, app: &AppId) {
        if let Some(a) = self.apps.get_mut(app) {
            a.removed = true;
        }
        self.claims.forget_secrets(app);
    }

    /// Drops what no longer matters, once every watch has listed: removed applications
    /// without executor pods, applications without executor pods that `registered` no longer
    /// knows (their data went by another way), with their bindings and secrets, and old
    /// tombstones of drivers no followed application is bound to.
    pub(crate) fn prune(&mut self, now: Instant, registered: impl Fn(&AppId) -> bool) {
        if !self.all_listed() {
            return;
        }
        let drop: Vec<AppId> = self
            .apps
            .iter()
            .filter(|(id, a)| a.executors.is_empty() && (a.removed || !registered(id)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in drop {
            self.apps.remove(&id);
            self.claims.unbind(&id);
        }
        let bound: HashSet<String> = self
            .claims
            .bound()
            .into_iter()
            .map(|(_, o)| o.driver_uid)
            .collect();
        let old: Vec<String> = self
            .drivers
            .iter()
            .filter(|(uid, d)| {
                matches!(d.state, DriverState::Gone { since } if now.duration_since(since) >= TOMBSTONE_TTL)
                    && !bound.contains(uid.as_str())
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in old {
            self.drivers.remove(&uid);
        }
    }

    /// Forgets the driver pods no followed application needs: neither named by an executor
    /// pod on this node, nor bound, nor labelled with a wanted application. For a driver
    /// watch that selects the node's applications, whose lists say nothing about the others
    /// (a forgotten one needed again is listed again with its application).
    pub(crate) fn forget_unwanted_drivers(&mut self) {
        let needed: HashSet<&str> = self
            .executors
            .values()
            .filter_map(|x| Some(x.driver.as_ref()?.driver_uid.as_str()))
            .collect();
        let bound: HashSet<String> = self
            .claims
            .bound()
            .into_iter()
            .map(|(_, o)| o.driver_uid)
            .collect();
        let apps = &self.apps;
        self.drivers.retain(|uid, d| {
            needed.contains(uid.as_str())
                || bound.contains(uid)
                || d.label.as_ref().is_some_and(|l| apps.contains_key(l))
        });
    }

    /// Offers the secrets waiting in the executor pods of the application's claimants (each
    /// pod once; one refused for too many claimants is offered again later).
    fn teach(&mut self, app: &AppId, live: &HashSet<PodOwner>) -> Learning {
        let mut out = Learning::default();
        let Some(a) = self.apps.get(app) else {
            return out;
        };
        let waiting: Vec<(String, PodOwner)> = a
            .executors
            .iter()
            .filter_map(|uid| {
                let x = self.executors.get(uid)?;
                let claimant = x.driver.as_ref()?;
                (!x.taught && x.secret.is_some() && self.resolve(claimant).is_some())
                    .then(|| (uid.clone(), claimant.clone()))
            })
            .collect();
        // Once an ended claimant finds the candidates full, so would the others (only a live
        // one takes a place): they wait for the next settle without a scan each.
        let mut ended_full = false;
        for (uid, claimant) in waiting {
            let is_live = live.contains(&claimant);
            if ended_full && !is_live {
                continue;
            }
            let Some(x) = self.executors.get_mut(&uid) else {
                continue;
            };
            let Some(secret) = x.secret.as_deref() else {
                continue;
            };
            match self.claims.offer(app, &claimant, secret, is_live) {
                Offered::New => out.learned += 1,
                Offered::Same => {}
                Offered::Conflict => {
                    out.conflicts += 1;
                    tracing::warn!(app = %app, pod = %format!("{}/{}/{uid}", x.namespace, x.name),
                        "an executor pod carries a different Spark secret than its driver pod's other executor pods; the first one stays");
                }
                Offered::Full => {
                    // The contest warning names the claimants; this pod is offered again once
                    // some of them went.
                    ended_full |= !is_live;
                    tracing::debug!(app = %app, pod = %format!("{}/{}/{uid}", x.namespace, x.name),
                        "too many driver pods claim this application");
                    continue;
                }
            }
            x.taught = true;
            if let Some(mut s) = x.secret.take() {
                s.fill(0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
