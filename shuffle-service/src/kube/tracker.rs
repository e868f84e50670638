//! What the service knows about Spark's pods, and the decisions drawn from it: an
//! application's data goes only on positive evidence that the driver pod that owns it ended
//! (a delete event, a complete fresh list without it, or a final phase held for the grace
//! period). Errors, watch gaps and restarts only ever leave things as they are.
//!
//! Which driver pod owns an application: the one named by uid in the controlling owner
//! reference of the application's executor pods on this node, in their own namespace (Spark
//! sets it; owner references never cross namespaces). Once every driver watch has listed, an
//! application whose executor pods all name one driver pod, seen in that namespace with that
//! uid, is bound to it; the binding is persisted ([`Tracker::take_changes`]) and survives
//! restarts, so that pods turning up later naming another driver change nothing. Executor pods
//! naming different driver pods before a binding leave the application unbound: no driver
//! decides it, no secret is learned for it. Labels, creation times and pods of other
//! namespaces decide nothing, and only executor pods controlled by the owning driver pod teach
//! the application's secret.
//!
//! The tracker takes pod facts as they come, whichever way they arrive (lists, watch events),
//! and never talks to the API itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pods::{DriverPod, ExecutorPod, Phase};
use crate::core::PodOwner;
use crate::ids::AppId;
use crate::spark::secrets::Learned;

/// How long the fact that a driver pod is gone is kept once no application refers to it.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// Why an application's data is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The driver pod was deleted.
    DriverDeleted,
    /// The driver pod stayed `Succeeded` for the grace period.
    DriverSucceeded,
    /// The driver pod stayed `Failed` for the grace period.
    DriverFailed,
}

impl Reason {
    /// The metric and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DriverDeleted => "driver_deleted",
            Self::DriverSucceeded => "driver_succeeded",
            Self::DriverFailed => "driver_failed",
        }
    }
}

/// Which watch a list came from: executors or drivers, in one namespace or in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
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
    /// The driver pod that controls it, in its namespace.
    driver: Option<PodOwner>,
    namespace: String,
    /// Spark's secret from the pod, until it is learned or refused.
    secret: Option<Vec<u8>>,
    /// The pod's secret was offered already (learned or refused).
    taught: bool,
}

#[derive(Debug, Default)]
struct App {
    /// Executor pods present now.
    executors: HashSet<String>,
    /// The driver pod it is bound to.
    owner: Option<PodOwner>,
    removed: bool,
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
    state: DriverState,
}

/// What secrets arriving did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Learning {
    /// Secrets now answering for their application.
    pub learned: usize,
    /// Secrets refused because a different one is already known for the application.
    pub conflicts: usize,
}

impl Learning {
    fn add(&mut self, other: Self) {
        self.learned += other.learned;
        self.conflicts += other.conflicts;
    }
}

/// The state of the pods followed.
pub struct Tracker {
    grace: Duration,
    learned: Option<Arc<Learned>>,
    apps: HashMap<AppId, App>,
    executors: HashMap<String, Exec>,
    drivers: HashMap<String, Driver>,
    /// Watches per kind (one per namespace, or one for all); until every driver watch has
    /// listed, owners are not known and nothing is bound, decided or learned; until every
    /// watch has, nothing is pruned.
    scopes: usize,
    synced: HashSet<Scope>,
    /// Bindings made or dropped, not yet persisted.
    changes: Vec<(AppId, Option<PodOwner>)>,
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
    /// An empty tracker for `scopes` watches of each kind; `learned` receives verified
    /// secrets.
    pub fn new(grace: Duration, learned: Option<Arc<Learned>>, scopes: usize) -> Self {
        Self {
            grace,
            learned,
            apps: HashMap::new(),
            executors: HashMap::new(),
            drivers: HashMap::new(),
            scopes,
            synced: HashSet::new(),
            changes: Vec::new(),
        }
    }

    /// Takes back the bindings persisted before a restart.
    pub fn restore(&mut self, owners: impl IntoIterator<Item = (AppId, PodOwner)>) {
        for (app, owner) in owners {
            self.apps.entry(app).or_default().owner = Some(owner);
        }
    }

    fn ready(&self) -> bool {
        self.synced.iter().filter(|s| s.drivers).count() >= self.scopes
    }

    fn all_listed(&self) -> bool {
        self.synced.len() >= 2 * self.scopes
    }

    /// Applications followed.
    pub fn apps(&self) -> usize {
        self.apps.len()
    }

    /// Driver pods known (including recently gone ones).
    pub fn drivers(&self) -> usize {
        self.drivers.len()
    }

    /// Applications whose executor pods on this node name more than one driver pod.
    pub fn contested(&self) -> usize {
        self.apps
            .values()
            .filter(|a| self.claims(a).len() > 1)
            .count()
    }

    /// Bindings made or dropped since the last call, to persist; a failed write is handed
    /// back with [`Tracker::retry_change`].
    pub fn take_changes(&mut self) -> Vec<(AppId, Option<PodOwner>)> {
        std::mem::take(&mut self.changes)
    }

    /// A binding change that could not be persisted, to try again (unless a newer one came).
    pub fn retry_change(&mut self, app: AppId, owner: Option<PodOwner>) {
        if !self.changes.iter().any(|(a, _)| *a == app) {
            self.changes.push((app, owner));
        }
    }

    /// An executor pod was added or changed.
    pub fn executor_seen(&mut self, e: ExecutorPod) -> Learning {
        let taught = self.executors.get(&e.uid).is_some_and(|x| x.taught);
        if let Some(old) = self.executors.get(&e.uid)
            && old.app != e.app
        {
            // Relabelled to another application: it leaves the first one.
            let old_app = old.app.clone();
            if let Some(a) = self.apps.get_mut(&old_app) {
                a.executors.remove(&e.uid);
            }
        }
        let app = self.apps.entry(e.app.clone()).or_default();
        app.executors.insert(e.uid.clone());
        let secret = e.secret.filter(|_| self.learned.is_some() && !taught);
        self.executors.insert(
            e.uid,
            Exec {
                app: e.app.clone(),
                driver: e.driver,
                namespace: e.namespace,
                secret,
                taught,
            },
        );
        self.settle(&e.app)
    }

    /// An executor pod was deleted (the pods left may now name one driver pod).
    pub fn executor_gone(&mut self, uid: &str) -> Learning {
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
    pub fn driver_seen(&mut self, d: DriverPod, now: Instant) -> Learning {
        let uid = d.uid.clone();
        let entry = self.drivers.entry(d.uid).or_insert(Driver {
            namespace: d.namespace,
            state: DriverState::Live,
        });
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
    pub fn driver_gone(&mut self, d: DriverPod, now: Instant) {
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
    /// driver watch makes owners known: applications are bound and secrets waiting are
    /// learned then.
    pub fn relisted(&mut self, scope: &Scope, present: &HashSet<String>, now: Instant) -> Learning {
        if scope.drivers {
            let was_ready = self.ready();
            self.synced.insert(scope.clone());
            self.mark_gone(scope, present, now);
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

    fn mark_gone(&mut self, scope: &Scope, present: &HashSet<String>, now: Instant) {
        for (uid, d) in &mut self.drivers {
            if scope.covers(&d.namespace)
                && !present.contains(uid)
                && !matches!(d.state, DriverState::Gone { .. })
            {
                d.state = DriverState::Gone { since: now };
            }
        }
    }

    /// The distinct driver pods the application's executor pods name.
    fn claims<'a>(&'a self, a: &'a App) -> HashSet<&'a PodOwner> {
        a.executors
            .iter()
            .filter_map(|u| self.executors.get(u)?.driver.as_ref())
            .collect()
    }

    /// The driver pod named by `owner`, if seen with that uid in that namespace.
    fn resolve(&self, owner: &PodOwner) -> Option<&Driver> {
        self.drivers
            .get(&owner.driver_uid)
            .filter(|d| d.namespace == owner.namespace)
    }

    /// Binds the application when its executor pods name one driver pod, seen in their
    /// namespace, then learns what its owner's executor pods carry.
    fn settle(&mut self, app: &AppId) -> Learning {
        if !self.ready() {
            return Learning::default();
        }
        let Some(a) = self.apps.get(app) else {
            return Learning::default();
        };
        if a.owner.is_none() {
            let claims = self.claims(a);
            let only = match claims.len() {
                1 => claims.into_iter().next().cloned(),
                _ => None,
            };
            if let Some(owner) = only.filter(|o| self.resolve(o).is_some()) {
                tracing::info!(app = %app, namespace = %owner.namespace, driver_uid = %owner.driver_uid,
                    "application bound to its driver pod");
                self.changes.push((app.clone(), Some(owner.clone())));
                if let Some(a) = self.apps.get_mut(app) {
                    a.owner = Some(owner);
                }
            }
        }
        self.teach(app)
    }

    /// The live state of the driver pod the application is bound to.
    fn owner(&self, a: &App) -> Option<&Driver> {
        self.resolve(a.owner.as_ref()?)
    }

    /// Applications whose driver pod ended: deleted, or in a final phase for the grace period.
    /// Those already removed are listed too: an executor that registers after its driver ended
    /// (killed a moment later) must not leave data behind; see [`Tracker::is_removed`].
    pub fn due(&self, now: Instant) -> Vec<(AppId, Reason)> {
        let mut out = Vec::new();
        if !self.ready() {
            return out;
        }
        for (id, a) in &self.apps {
            let Some(d) = self.owner(a) else { continue };
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
    pub fn is_removed(&self, app: &AppId) -> bool {
        self.apps.get(app).is_some_and(|a| a.removed)
    }

    /// The application's data was deleted: its secret is forgotten; the record stays while
    /// its executor pods do, so that it is not deleted again.
    pub fn removed(&mut self, app: &AppId) {
        if let Some(a) = self.apps.get_mut(app) {
            a.removed = true;
        }
        if let Some(l) = &self.learned {
            l.forget(app);
        }
    }

    /// Drops what no longer matters, once every watch has listed: removed applications
    /// without executor pods, applications without executor pods that `registered` no longer
    /// knows (their data went by another way), with their bindings, and old tombstones of
    /// drivers no followed application is bound to.
    pub fn prune(&mut self, now: Instant, registered: impl Fn(&AppId) -> bool) {
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
            if let Some(a) = self.apps.remove(&id)
                && a.owner.is_some()
            {
                self.changes.push((id.clone(), None));
            }
            if let Some(l) = &self.learned {
                l.forget(&id);
            }
        }
        let bound: HashSet<&str> = self
            .apps
            .values()
            .filter_map(|a| a.owner.as_ref().map(|o| o.driver_uid.as_str()))
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

    /// Learns the secrets waiting in the executor pods controlled by the application's owner.
    fn teach(&mut self, app: &AppId) -> Learning {
        let mut out = Learning::default();
        let Some(learned) = self.learned.clone() else {
            return out;
        };
        let Some(a) = self.apps.get(app) else {
            return out;
        };
        let Some(owner) = a.owner.clone().filter(|_| !a.removed) else {
            return out;
        };
        if self.resolve(&owner).is_none() {
            return out;
        }
        for uid in &a.executors {
            if let Some(x) = self.executors.get_mut(uid)
                && x.driver.as_ref() == Some(&owner)
                && let Some(mut secret) = x.secret.take()
            {
                x.taught = true;
                if learned.learn(app, &secret) {
                    out.learned += 1;
                } else {
                    out.conflicts += 1;
                }
                secret.fill(0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn app(s: &str) -> AppId {
        s.parse().expect("app id")
    }

    fn owner(ns: &str, uid: &str) -> PodOwner {
        PodOwner {
            namespace: ns.into(),
            driver_uid: uid.into(),
        }
    }

    /// An executor pod controlled by driver pod `driver` of its namespace.
    fn exec(uid: &str, ns: &str, a: &str, driver: &str, secret: Option<&str>) -> ExecutorPod {
        ExecutorPod {
            uid: uid.into(),
            namespace: ns.into(),
            app: app(a),
            driver: Some(owner(ns, driver)),
            secret: secret.map(|s| s.as_bytes().to_vec()),
        }
    }

    fn driver(uid: &str, ns: &str, phase: Phase) -> DriverPod {
        DriverPod {
            uid: uid.into(),
            namespace: ns.into(),
            phase,
        }
    }

    fn drivers_all() -> Scope {
        Scope {
            drivers: true,
            namespace: None,
        }
    }

    fn executors_all() -> Scope {
        Scope {
            drivers: false,
            namespace: None,
        }
    }

    /// A tracker whose driver watch listed no pod.
    fn tracker(learned: Option<Arc<Learned>>) -> Tracker {
        let mut t = Tracker::new(GRACE, learned, 1);
        t.relisted(&drivers_all(), &HashSet::new(), Instant::now());
        t
    }

    fn ids(v: Vec<(AppId, Reason)>) -> Vec<(String, Reason)> {
        let mut v: Vec<_> = v
            .into_iter()
            .map(|(a, r)| (a.as_str().to_owned(), r))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn a_succeeded_driver_ends_its_application_after_the_grace_only() {
        let t0 = Instant::now();
        let mut t = tracker(None);
        t.driver_seen(driver("d1", "ns", Phase::Live), t0);
        t.driver_seen(driver("d2", "ns", Phase::Live), t0);
        t.executor_seen(exec("e1", "ns", "spark-a", "d1", None));
        t.executor_seen(exec("e2", "ns", "spark-b", "d2", None));
        t.driver_seen(driver("d1", "ns", Phase::Succeeded), t0);
        assert!(t.due(t0 + GRACE / 2).is_empty());
        assert_eq!(
            ids(t.due(t0 + GRACE)),
            vec![("spark-a".into(), Reason::DriverSucceeded)]
        );
        t.removed(&app("spark-a"));
        assert!(t.is_removed(&app("spark-a")));
    }

    #[test]
    fn a_deleted_driver_ends_its_application_at_once_even_if_executors_are_seen_later() {
        let t0 = Instant::now();
        let mut t = tracker(None);
        t.driver_seen(driver("d1", "ns", Phase::Live), t0);
        t.driver_gone(driver("d1", "ns", Phase::Live), t0);
        assert!(t.due(t0).is_empty(), "no executor names d1 on this node");
        t.executor_seen(exec("e1", "ns", "spark-a", "d1", None));
        assert_eq!(
            ids(t.due(t0)),
            vec![("spark-a".into(), Reason::DriverDeleted)]
        );
    }

    #[test]
    fn restarts_errors_and_unknown_drivers_delete_nothing() {
        let t0 = Instant::now();
        let mut t = Tracker::new(GRACE, None, 1);
        // A fresh start: executors listed, their drivers not (yet) seen.
        t.executor_seen(exec("e1", "ns", "spark-a", "d1", None));
        t.executor_seen(exec("e2", "ns", "spark-b", "d2", None));
        t.relisted(&drivers_all(), &HashSet::new(), t0);
        assert!(t.due(t0 + GRACE * 10).is_empty());
        // An executor without a controlling driver pod (client mode) names none.
        let mut e = exec("e3", "ns", "spark-c", "d3", None);
        e.driver = None;
        t.executor_seen(e);
        t.driver_gone(driver("d3", "ns", Phase::Live), t0);
        assert!(t.due(t0 + GRACE * 10).is_empty());
        assert!(t.take_changes().is_empty(), "nothing bound");
    }

    #[test]
    fn a_driver_missing_from_a_complete_list_is_gone_but_only_in_the_listed_namespace() {
        let t0 = Instant::now();
        let mut t = Tracker::new(GRACE, None, 2);
        let ns = |n: &str| Scope {
            drivers: true,
            namespace: Some(n.into()),
        };
        let listed = |u: &str| HashSet::from([u.to_owned()]);
        t.driver_seen(driver("d1", "ns1", Phase::Live), t0);
        t.driver_seen(driver("d2", "ns2", Phase::Live), t0);
        t.relisted(&ns("ns1"), &listed("d1"), t0);
        t.relisted(&ns("ns2"), &listed("d2"), t0);
        t.executor_seen(exec("e1", "ns1", "spark-a", "d1", None));
        t.executor_seen(exec("e2", "ns2", "spark-b", "d2", None));
        assert!(t.due(t0).is_empty());
        // A later list of ns1 without d1; d2 is not in it, but ns2 was not listed.
        t.relisted(&ns("ns1"), &HashSet::new(), t0);
        assert_eq!(
            ids(t.due(t0)),
            vec![("spark-a".into(), Reason::DriverDeleted)]
        );
    }

    #[test]
    fn labels_and_creation_times_of_another_namespace_decide_nothing_once_bound() {
        let t0 = Instant::now();
        let learned = Arc::new(Learned::default());
        let mut t = tracker(Some(Arc::clone(&learned)));
        t.driver_seen(driver("d1", "victim", Phase::Live), t0);
        let l = t.executor_seen(exec("e1", "victim", "spark-a", "d1", Some("good")));
        assert_eq!(l.learned, 1);
        assert_eq!(
            t.take_changes(),
            vec![(app("spark-a"), Some(owner("victim", "d1")))]
        );
        // Another namespace's pod (old, relabelled as a driver) and an executor pod it
        // controls, with its own secret.
        t.driver_seen(driver("dx", "attacker", Phase::Live), t0);
        let l = t.executor_seen(exec("ex", "attacker", "spark-a", "dx", Some("evil")));
        assert_eq!(l, Learning::default(), "not the owner's pod: never offered");
        assert_eq!(learned.get(&app("spark-a")).as_deref(), Some(&b"good"[..]));
        assert_eq!(t.contested(), 1);
        t.driver_gone(driver("dx", "attacker", Phase::Failed), t0);
        assert!(t.due(t0 + GRACE).is_empty());
        // The owner still decides.
        t.driver_gone(driver("d1", "victim", Phase::Live), t0);
        assert_eq!(
            ids(t.due(t0)),
            vec![("spark-a".into(), Reason::DriverDeleted)]
        );
    }

    #[test]
    fn an_owner_reference_into_another_namespace_is_not_followed() {
        let t0 = Instant::now();
        let learned = Arc::new(Learned::default());
        let mut t = tracker(Some(Arc::clone(&learned)));
        t.driver_seen(driver("d1", "victim", Phase::Live), t0);
        // A pod of "attacker" whose owner reference carries the victim driver's uid.
        t.executor_seen(exec("ex", "attacker", "spark-a", "d1", Some("evil")));
        assert!(learned.is_empty());
        t.driver_gone(driver("d1", "victim", Phase::Live), t0);
        assert!(t.due(t0).is_empty());
        assert!(t.take_changes().is_empty());
    }

    #[test]
    fn executor_pods_naming_different_drivers_before_a_binding_bind_nothing() {
        let t0 = Instant::now();
        let learned = Arc::new(Learned::default());
        let mut t = Tracker::new(GRACE, Some(Arc::clone(&learned)), 1);
        // A restart: both are listed before the driver list completes.
        t.executor_seen(exec("e1", "victim", "spark-a", "d1", Some("good")));
        t.executor_seen(exec("ex", "attacker", "spark-a", "dx", Some("evil")));
        t.driver_seen(driver("dx", "attacker", Phase::Live), t0);
        t.driver_seen(driver("d1", "victim", Phase::Live), t0);
        let l = t.relisted(
            &drivers_all(),
            &HashSet::from(["d1".to_owned(), "dx".to_owned()]),
            t0,
        );
        assert_eq!(l, Learning::default());
        assert!(learned.is_empty());
        t.driver_gone(driver("dx", "attacker", Phase::Live), t0);
        assert!(t.due(t0).is_empty());
        // The impostor leaves: the application is bound to the one driver left.
        let l = t.executor_gone("ex");
        assert_eq!(l.learned, 1);
        assert_eq!(learned.get(&app("spark-a")).as_deref(), Some(&b"good"[..]));
    }

    #[test]
    fn a_binding_restored_after_a_restart_holds_against_a_lone_impostor() {
        let t0 = Instant::now();
        let learned = Arc::new(Learned::default());
        let mut t = Tracker::new(GRACE, Some(Arc::clone(&learned)), 1);
        t.restore([(app("spark-a"), owner("victim", "d1"))]);
        t.executor_seen(exec("ex", "attacker", "spark-a", "dx", Some("evil")));
        t.driver_seen(driver("dx", "attacker", Phase::Live), t0);
        t.driver_seen(driver("d1", "victim", Phase::Live), t0);
        t.relisted(
            &drivers_all(),
            &HashSet::from(["d1".to_owned(), "dx".to_owned()]),
            t0,
        );
        assert!(learned.is_empty());
        t.executor_seen(exec("e1", "victim", "spark-a", "d1", Some("good")));
        assert_eq!(learned.get(&app("spark-a")).as_deref(), Some(&b"good"[..]));
        t.driver_gone(driver("dx", "attacker", Phase::Live), t0);
        assert!(t.due(t0).is_empty());
        t.driver_seen(driver("d1", "victim", Phase::Failed), t0);
        assert_eq!(
            ids(t.due(t0 + GRACE)),
            vec![("spark-a".into(), Reason::DriverFailed)]
        );
        assert!(t.take_changes().is_empty(), "restored, not new");
    }

    #[test]
    fn secrets_conflicts_and_forgetting() {
        let t0 = Instant::now();
        let learned = Arc::new(Learned::default());
        let mut t = Tracker::new(GRACE, Some(Arc::clone(&learned)), 1);
        let l = t.executor_seen(exec("e1", "ns", "spark-a", "d1", Some("s3cret")));
        assert_eq!(
            l,
            Learning::default(),
            "not before the driver list is complete"
        );
        t.driver_seen(driver("d1", "ns", Phase::Live), t0);
        let l = t.relisted(&drivers_all(), &HashSet::from(["d1".to_owned()]), t0);
        assert_eq!(l.learned, 1);
        let l = t.executor_seen(exec("e2", "ns", "spark-a", "d1", Some("other")));
        assert_eq!(l.conflicts, 1);
        // The same pod again offers nothing new.
        let l = t.executor_seen(exec("e2", "ns", "spark-a", "d1", Some("other")));
        assert_eq!(l, Learning::default());
        assert_eq!(
            learned.get(&app("spark-a")).as_deref(),
            Some(&b"s3cret"[..])
        );
        t.driver_gone(driver("d1", "ns", Phase::Live), t0);
        for (a, _) in t.due(t0) {
            t.removed(&a);
        }
        assert_eq!(learned.get(&app("spark-a")), None);
    }

    #[test]
    fn pruning_keeps_live_applications_and_drops_finished_ones_with_their_bindings() {
        let t0 = Instant::now();
        let learned = Arc::new(Learned::default());
        let mut t = tracker(Some(Arc::clone(&learned)));
        t.driver_seen(driver("d1", "ns", Phase::Live), t0);
        t.executor_seen(exec("e1", "ns", "spark-a", "d1", Some("s")));
        t.executor_seen(exec("e2", "ns", "spark-b", "d2", None));
        assert_eq!(t.take_changes().len(), 1);
        t.executor_gone("e1");
        // Not before every watch has listed.
        t.prune(t0, |_| false);
        assert_eq!(t.apps(), 2);
        t.relisted(&executors_all(), &HashSet::from(["e2".to_owned()]), t0);
        // Dynamic allocation removed every executor of spark-a: still registered, kept.
        t.prune(t0, |_| true);
        assert_eq!(t.apps(), 2);
        assert!(!learned.is_empty());
        // Its data went by the idle TTL: dropped with its binding, secret forgotten.
        t.prune(t0, |a| a.as_str() != "spark-a");
        assert_eq!(t.apps(), 1);
        assert!(learned.is_empty());
        assert_eq!(t.take_changes(), vec![(app("spark-a"), None)]);
        t.relisted(&executors_all(), &HashSet::new(), t0);
        t.prune(t0, |_| false);
        assert_eq!(t.apps(), 0);
        // Tombstones of drivers no application is bound to go after their time.
        t.driver_gone(driver("d1", "ns", Phase::Live), t0);
        t.prune(t0, |_| false);
        assert_eq!(t.drivers(), 1);
        t.prune(t0 + TOMBSTONE_TTL, |_| false);
        assert_eq!(t.drivers(), 0);
    }
}
