//! What the service knows about Spark's pods, and the decisions drawn from it: an
//! application's data goes only on positive evidence that its driver pod ended (a delete
//! event, a complete fresh list without it, or a final phase held for the grace period).
//! Errors, watch gaps and restarts only ever leave things as they are.
//!
//! Which driver pod owns an application: the oldest driver pod labelled with its id
//! (`spark-app-selector`). Spark labels its driver before anything shows the id, so a pod
//! copying the label is always younger; two created in the same second own nothing. The
//! owner's namespace must also be one in which an executor pod of the application was seen on
//! this node, and only executor pods of that namespace teach the application's secret: a pod
//! in another namespace that claims the id changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pods::{DriverPod, ExecutorPod, Phase};
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
    namespace: String,
    /// Spark's secret from the pod, until it is learned or refused.
    secret: Option<Vec<u8>>,
    /// The pod's secret was offered already (learned or refused).
    taught: bool,
}

#[derive(Debug, Default)]
struct App {
    /// Namespaces in which executor pods of the application were seen on this node.
    namespaces: HashSet<String>,
    /// Executor pods present now.
    executors: HashSet<String>,
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
    app: Option<AppId>,
    created: i64,
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

/// The state of the pods followed.
pub struct Tracker {
    grace: Duration,
    learned: Option<Arc<Learned>>,
    apps: HashMap<AppId, App>,
    executors: HashMap<String, Exec>,
    drivers: HashMap<String, Driver>,
    by_app: HashMap<AppId, Vec<String>>,
    /// Driver watches (one per namespace, or one for all) that completed a list; until all
    /// have, owners are not known and nothing is decided or learned.
    driver_scopes: usize,
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
    /// An empty tracker for `driver_scopes` driver watches; `learned` receives verified
    /// secrets.
    pub fn new(grace: Duration, learned: Option<Arc<Learned>>, driver_scopes: usize) -> Self {
        Self {
            grace,
            learned,
            apps: HashMap::new(),
            executors: HashMap::new(),
            drivers: HashMap::new(),
            by_app: HashMap::new(),
            driver_scopes,
            synced: HashSet::new(),
        }
    }

    fn ready(&self) -> bool {
        self.synced.len() >= self.driver_scopes
    }

    /// Applications followed.
    pub fn apps(&self) -> usize {
        self.apps.len()
    }

    /// Driver pods known (including recently gone ones).
    pub fn drivers(&self) -> usize {
        self.drivers.len()
    }

    /// An executor pod was added or changed.
    pub fn executor_seen(&mut self, e: ExecutorPod) -> Learning {
        let app = self.apps.entry(e.app.clone()).or_default();
        app.namespaces.insert(e.namespace.clone());
        app.executors.insert(e.uid.clone());
        let taught = self.executors.get(&e.uid).is_some_and(|x| x.taught);
        let secret = e.secret.filter(|_| self.learned.is_some() && !taught);
        self.executors.insert(
            e.uid,
            Exec {
                app: e.app.clone(),
                namespace: e.namespace,
                secret,
                taught,
            },
        );
        self.teach(&e.app)
    }

    /// An executor pod was deleted.
    pub fn executor_gone(&mut self, uid: &str) {
        if let Some(x) = self.executors.remove(uid)
            && let Some(a) = self.apps.get_mut(&x.app)
        {
            a.executors.remove(uid);
        }
    }

    /// A driver pod was added or changed.
    pub fn driver_seen(&mut self, d: DriverPod, now: Instant) -> Learning {
        let app = d.app.clone();
        if !self.drivers.contains_key(&d.uid)
            && let Some(a) = &app
        {
            self.by_app
                .entry(a.clone())
                .or_default()
                .push(d.uid.clone());
        }
        let entry = self.drivers.entry(d.uid).or_insert(Driver {
            namespace: d.namespace,
            app: d.app,
            created: d.created,
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
        match app {
            Some(a) => self.teach(&a),
            None => Learning::default(),
        }
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
    /// driver watch makes owners known: secrets waiting are learned then.
    pub fn relisted(&mut self, scope: &Scope, present: &HashSet<String>, now: Instant) -> Learning {
        if scope.drivers {
            let was_ready = self.ready();
            self.synced.insert(scope.clone());
            if !was_ready && self.ready() {
                let apps: Vec<AppId> = self.apps.keys().cloned().collect();
                let mut out = Learning::default();
                for a in apps {
                    let l = self.teach(&a);
                    out.learned += l.learned;
                    out.conflicts += l.conflicts;
                }
                self.mark_gone(scope, present, now);
                return out;
            }
            self.mark_gone(scope, present, now);
        } else {
            let stale: Vec<String> = self
                .executors
                .iter()
                .filter(|(uid, x)| scope.covers(&x.namespace) && !present.contains(*uid))
                .map(|(uid, _)| uid.clone())
                .collect();
            for uid in stale {
                self.executor_gone(&uid);
            }
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

    /// The driver pod that owns an application: the oldest one labelled with it (none on a tie).
    fn owner(&self, app: &AppId) -> Option<&Driver> {
        let mut best: Option<&Driver> = None;
        let mut tie = false;
        for d in self
            .by_app
            .get(app)?
            .iter()
            .filter_map(|u| self.drivers.get(u))
        {
            match best {
                Some(b) if d.created == b.created => tie = true,
                Some(b) if d.created > b.created => {}
                _ => {
                    best = Some(d);
                    tie = false;
                }
            }
        }
        if tie { None } else { best }
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
            let Some(d) = self.owner(id) else { continue };
            if !a.namespaces.contains(&d.namespace) {
                continue;
            }
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

    /// Drops what no longer matters: removed applications without executor pods,
    /// applications without executor pods that `registered` no longer knows (their data went
    /// by another way), and old tombstones of drivers no followed application refers to.
    pub fn prune(&mut self, now: Instant, registered: impl Fn(&AppId) -> bool) {
        let drop: Vec<AppId> = self
            .apps
            .iter()
            .filter(|(id, a)| a.executors.is_empty() && (a.removed || !registered(id)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in drop {
            self.apps.remove(&id);
            if let Some(l) = &self.learned {
                l.forget(&id);
            }
        }
        let old: Vec<String> = self
            .drivers
            .iter()
            .filter(|(_, d)| {
                matches!(d.state, DriverState::Gone { since } if now.duration_since(since) >= TOMBSTONE_TTL)
                    && d.app.as_ref().is_none_or(|a| !self.apps.contains_key(a))
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in old {
            if let Some(d) = self.drivers.remove(&uid)
                && let Some(a) = d.app
                && let Some(v) = self.by_app.get_mut(&a)
            {
                v.retain(|u| *u != uid);
                if v.is_empty() {
                    self.by_app.remove(&a);
                }
            }
        }
    }

    /// Learns the secrets waiting in the application's executor pods of its owner's namespace.
    fn teach(&mut self, app: &AppId) -> Learning {
        let mut out = Learning::default();
        let Some(learned) = self.learned.clone() else {
            return out;
        };
        if !self.ready() {
            return out;
        }
        let Some(ns) = self.owner(app).map(|d| d.namespace.clone()) else {
            return out;
        };
        let Some(a) = self.apps.get(app) else {
            return out;
        };
        if a.removed {
            return out;
        }
        for uid in &a.executors {
            if let Some(x) = self.executors.get_mut(uid)
                && x.namespace == ns
                && let Some(secret) = x.secret.take()
            {
                x.taught = true;
                if learned.learn(app, &secret) {
                    out.learned += 1;
                } else {
                    out.conflicts += 1;
                }
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

    fn exec(uid: &str, ns: &str, a: &str, secret: Option<&str>) -> ExecutorPod {
        ExecutorPod {
            uid: uid.into(),
            namespace: ns.into(),
            app: app(a),
            driver_uid: None,
            secret: secret.map(|s| s.as_bytes().to_vec()),
        }
    }

    fn driver(uid: &str, ns: &str, a: &str, created: i64, phase: Phase) -> DriverPod {
        DriverPod {
            uid: uid.into(),
            namespace: ns.into(),
            app: Some(app(a)),
            created,
            phase,
        }
    }

    fn drivers_all() -> Scope {
        Scope {
            drivers: true,
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
        t.executor_seen(exec("e1", "ns", "spark-a", None));
        t.executor_seen(exec("e2", "ns", "spark-b", None));
        t.driver_seen(driver("d1", "ns", "spark-a", 1, Phase::Live), t0);
        t.driver_seen(driver("d2", "ns", "spark-b", 1, Phase::Live), t0);
        t.driver_seen(driver("d1", "ns", "spark-a", 1, Phase::Succeeded), t0);
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
        t.driver_seen(driver("d1", "ns", "spark-a", 1, Phase::Live), t0);
        t.driver_gone(driver("d1", "ns", "spark-a", 1, Phase::Live), t0);
        assert!(
            t.due(t0).is_empty(),
            "no executor of spark-a seen on this node"
        );
        t.executor_seen(exec("e1", "ns", "spark-a", None));
        assert_eq!(
            ids(t.due(t0)),
            vec![("spark-a".into(), Reason::DriverDeleted)]
        );
    }

    #[test]
    fn restarts_errors_and_unknown_drivers_delete_nothing() {
        let t0 = Instant::now();
        let mut t = tracker(None);
        // A fresh start: executors listed, their drivers not (yet) seen or without a label.
        t.executor_seen(exec("e1", "ns", "spark-a", None));
        t.executor_seen(exec("e2", "ns", "spark-b", None));
        t.relisted(&drivers_all(), &HashSet::new(), t0);
        assert!(t.due(t0 + GRACE * 10).is_empty());
    }

    #[test]
    fn a_driver_missing_from_a_complete_list_is_gone_but_only_in_the_listed_namespace() {
        let t0 = Instant::now();
        let mut t = Tracker::new(GRACE, None, 2);
        t.executor_seen(exec("e1", "ns1", "spark-a", None));
        t.executor_seen(exec("e2", "ns2", "spark-b", None));
        t.driver_seen(driver("d1", "ns1", "spark-a", 1, Phase::Live), t0);
        t.driver_seen(driver("d2", "ns2", "spark-b", 1, Phase::Live), t0);
        let ns = |n: &str| Scope {
            drivers: true,
            namespace: Some(n.into()),
        };
        let listed = |u: &str| HashSet::from([u.to_owned()]);
        t.relisted(&ns("ns1"), &listed("d1"), t0);
        t.relisted(&ns("ns2"), &listed("d2"), t0);
        assert!(t.due(t0).is_empty());
        // A later list of ns1 without d1; d2 is not in it, but ns2 was not listed.
        t.relisted(&ns("ns1"), &HashSet::new(), t0);
        assert_eq!(
            ids(t.due(t0)),
            vec![("spark-a".into(), Reason::DriverDeleted)]
        );
    }

    #[test]
    fn a_younger_driver_pod_copying_the_label_changes_nothing() {
        let t0 = Instant::now();
        let mut t = tracker(None);
        t.executor_seen(exec("e1", "victim", "spark-a", None));
        t.driver_seen(driver("d1", "victim", "spark-a", 100, Phase::Live), t0);
        // Seen first (a fresh list may come in any order), but created later.
        t.driver_seen(driver("dx", "attacker", "spark-a", 101, Phase::Failed), t0);
        t.executor_seen(exec("ex", "attacker", "spark-a", None));
        t.driver_gone(driver("dx", "attacker", "spark-a", 101, Phase::Failed), t0);
        assert!(t.due(t0 + GRACE).is_empty());
    }

    #[test]
    fn an_owner_in_a_namespace_without_executors_here_decides_nothing() {
        let t0 = Instant::now();
        let mut t = tracker(None);
        // A client-mode application (no labelled driver) whose id another namespace copies.
        t.executor_seen(exec("e1", "victim", "spark-a", None));
        t.driver_seen(driver("dx", "attacker", "spark-a", 5, Phase::Failed), t0);
        t.driver_gone(driver("dx", "attacker", "spark-a", 5, Phase::Failed), t0);
        assert!(t.due(t0 + GRACE).is_empty());
    }

    #[test]
    fn two_driver_pods_of_the_same_second_own_nothing() {
        let t0 = Instant::now();
        let mut t = tracker(None);
        t.executor_seen(exec("e1", "ns", "spark-a", None));
        t.driver_seen(driver("d1", "ns", "spark-a", 7, Phase::Live), t0);
        t.driver_seen(driver("d2", "ns", "spark-a", 7, Phase::Live), t0);
        t.driver_gone(driver("d1", "ns", "spark-a", 7, Phase::Live), t0);
        assert!(t.due(t0).is_empty());
    }

    #[test]
    fn secrets_come_only_from_the_owners_namespace_and_are_forgotten_with_the_application() {
        let t0 = Instant::now();
        let learned = Arc::new(Learned::default());
        let mut t = Tracker::new(GRACE, Some(Arc::clone(&learned)), 1);
        // The copy comes first in the lists; nothing is learned before the owner is known.
        let l = t.executor_seen(exec("ex", "attacker", "spark-a", Some("evil")));
        assert_eq!(l, Learning::default());
        let l = t.executor_seen(exec("e1", "ns", "spark-a", Some("s3cret")));
        assert_eq!(l, Learning::default());
        t.driver_seen(driver("dx", "attacker", "spark-a", 9, Phase::Live), t0);
        let l = t.driver_seen(driver("d1", "ns", "spark-a", 8, Phase::Live), t0);
        assert_eq!(
            l,
            Learning::default(),
            "not before the driver list is complete"
        );
        let listed = HashSet::from(["dx".to_owned(), "d1".to_owned()]);
        let l = t.relisted(&drivers_all(), &listed, t0);
        assert_eq!(l.learned, 1);
        assert_eq!(
            learned.get(&app("spark-a")).as_deref(),
            Some(&b"s3cret"[..])
        );
        let l = t.executor_seen(exec("e2", "ns", "spark-a", Some("other")));
        assert_eq!(l.conflicts, 1);
        // The same pod again offers nothing new.
        let l = t.executor_seen(exec("e2", "ns", "spark-a", Some("other")));
        assert_eq!(l, Learning::default());
        t.driver_gone(driver("d1", "ns", "spark-a", 8, Phase::Live), t0);
        for (a, _) in t.due(t0) {
            t.removed(&a);
        }
        assert_eq!(learned.get(&app("spark-a")), None);
    }

    #[test]
    fn pruning_keeps_live_applications_and_drops_finished_ones() {
        let t0 = Instant::now();
        let learned = Arc::new(Learned::default());
        let mut t = tracker(Some(Arc::clone(&learned)));
        t.driver_seen(driver("d1", "ns", "spark-a", 1, Phase::Live), t0);
        t.executor_seen(exec("e1", "ns", "spark-a", Some("s")));
        t.executor_seen(exec("e2", "ns", "spark-b", None));
        // Dynamic allocation removed every executor of spark-a: still registered, kept.
        t.executor_gone("e1");
        t.prune(t0, |_| true);
        assert_eq!(t.apps(), 2);
        assert!(!learned.is_empty());
        // Its data went by the idle TTL: dropped, secret forgotten.
        t.prune(t0, |a| a.as_str() != "spark-a");
        assert_eq!(t.apps(), 1);
        assert!(learned.is_empty());
        // An executor relist without e2 forgets it.
        let execs = Scope {
            drivers: false,
            namespace: None,
        };
        t.relisted(&execs, &HashSet::new(), t0);
        t.prune(t0, |_| false);
        assert_eq!(t.apps(), 0);
        // Tombstones of drivers no application refers to go after their time.
        t.driver_gone(driver("d1", "ns", "spark-a", 1, Phase::Live), t0);
        t.prune(t0, |_| false);
        assert_eq!(t.drivers(), 1);
        t.prune(t0 + TOMBSTONE_TTL, |_| false);
        assert_eq!(t.drivers(), 0);
    }
}
