//! What the owner watch keeps of a pod (namespace, uid, phase, and only the labels whose keys
//! an owner of its group names: a few hundred bytes whatever labels the pod carries), and the
//! pods each watched [`Group`] has selected, indexed by the namespace and value of the group's
//! key label so that an owner's pods are found without a scan. Each group's entry belongs to
//! one run of its watch (a generation): writes of an earlier, stopped run are ignored. Pure:
//! [`super::pod_watch`] feeds it, [`super::watch`] reads it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Pod;

use super::owners::Group;
use crate::db::Owner;

/// What the owner watch keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnerPod {
    /// Namespace.
    pub(super) namespace: String,
    /// Uid (unique in the cluster, never reused).
    pub(super) uid: String,
    /// Labels.
    pub(super) labels: BTreeMap<String, String>,
    /// `status.phase`, when set.
    pub(super) phase: Option<String>,
}

impl OwnerPod {
    /// The parts of `p` the owner watch reads, its labels limited to `keys` (all of them when
    /// `None`); `None` without a namespace or uid (never so for a pod the API server sends).
    pub(super) fn of(p: &Pod, keys: Option<&BTreeSet<String>>) -> Option<Self> {
        let labels = p
            .metadata
            .labels
            .iter()
            .flatten()
            .filter(|(k, _)| keys.is_none_or(|keys| keys.contains(*k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some(Self {
            namespace: p.metadata.namespace.clone()?,
            uid: p.metadata.uid.clone()?,
            labels,
            phase: p.status.as_ref().and_then(|s| s.phase.clone()),
        })
    }

    /// Whether this pod is one of `owner`'s: its namespace, every owner label, and the
    /// owner's pod uid when it names one.
    pub(super) fn belongs_to(&self, owner: &Owner) -> bool {
        self.namespace == owner.namespace.as_str()
            && owner
                .labels
                .as_map()
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
            && owner.pod_uid.as_deref().is_none_or(|u| u == self.uid)
    }
}

/// The pods one group's watch selected, as of its last event.
#[derive(Debug, Default)]
struct Selected {
    /// The run of the group's watch that wrote it.
    generation: u64,
    /// Whether the pods are a complete, current picture: a list succeeded and no watch error
    /// followed. Until then nothing is decided from them.
    synced: bool,
    /// The label keys kept (those the group's owners named at the last list).
    keys: BTreeSet<String>,
    pods: HashMap<String, OwnerPod>,
    /// (namespace, value of the group's key) to pod uids.
    index: HashMap<(String, String), BTreeSet<String>>,
}

impl Selected {
    fn key(group: &Group, p: &OwnerPod) -> Option<(String, String)> {
        let v = p.labels.get(&group.key)?;
        Some((p.namespace.clone(), v.clone()))
    }

    fn remove(&mut self, group: &Group, uid: &str) {
        if let Some(old) = self.pods.remove(uid)
            && let Some(k) = Self::key(group, &old)
            && let Some(set) = self.index.get_mut(&k)
        {
            set.remove(uid);
            if set.is_empty() {
                self.index.remove(&k);
            }
        }
    }

    fn insert(&mut self, group: &Group, p: OwnerPod) {
        self.remove(group, &p.uid);
        if let Some(k) = Self::key(group, &p) {
            self.index.entry(k).or_default().insert(p.uid.clone());
        }
        self.pods.insert(p.uid.clone(), p);
    }
}

/// The pods of every watched group.
#[derive(Debug, Default)]
pub(crate) struct PodCache {
    groups: HashMap<Group, Selected>,
    /// The run of each group's watch that may write (the one the owner watch started last).
    runs: HashMap<Group, u64>,
}

impl PodCache {
    /// Replaces `group`'s pods with a complete list made by run `generation` of its watch,
    /// keeping the labels `keys`; the group is synced from now on.
    pub(super) fn replace(
        &mut self,
        group: &Group,
        generation: u64,
        keys: BTreeSet<String>,
        pods: impl IntoIterator<Item = OwnerPod>,
    ) {
        if self.runs.get(group) != Some(&generation) {
            return;
        }
        let mut s = Selected {
            generation,
            synced: true,
            keys,
            ..Selected::default()
        };
        for p in pods {
            s.insert(group, p);
        }
        self.groups.insert(group.clone(), s);
    }

    /// The group's entry, if run `generation` of its watch wrote it.
    fn current(&mut self, group: &Group, generation: u64) -> Option<&mut Selected> {
        self.groups
            .get_mut(group)
            .filter(|s| s.generation == generation)
    }

    /// A pod of `group` was added or changed.
    pub(super) fn apply(&mut self, group: &Group, generation: u64, p: OwnerPod) {
        if let Some(s) = self.current(group, generation) {
            s.insert(group, p);
        }
    }

    /// A pod of `group` was deleted (or stopped matching its selector).
    pub(super) fn delete(&mut self, group: &Group, generation: u64, uid: &str) {
        if let Some(s) = self.current(group, generation) {
            s.remove(group, uid);
        }
    }

    /// `group`'s watch failed: its pods decide nothing until its next complete list.
    pub(super) fn unsync(&mut self, group: &Group, generation: u64) {
        if let Some(s) = self.current(group, generation) {
            s.synced = false;
        }
    }

    /// Run `generation` of `group`'s watch starts: from now on only its writes count.
    pub(super) fn start(&mut self, group: &Group, generation: u64) {
        self.groups.remove(group);
        self.runs.insert(group.clone(), generation);
    }

    /// Forgets a group no longer watched; its watch's late writes are ignored.
    pub(super) fn drop_group(&mut self, group: &Group) {
        self.groups.remove(group);
        self.runs.remove(group);
    }

    /// `owner`'s pods in `group`, or `None` while the group is not synced or its last list
    /// did not keep every label the owner names.
    pub(super) fn pods_of(&self, group: &Group, owner: &Owner) -> Option<Vec<&OwnerPod>> {
        let s = self.groups.get(group).filter(|s| s.synced)?;
        if !owner.labels.as_map().keys().all(|k| s.keys.contains(k)) {
            return None;
        }
        let Some(v) = owner.labels.as_map().get(&group.key) else {
            return Some(Vec::new());
        };
        let k = (owner.namespace.as_str().to_owned(), v.clone());
        Some(
            s.index
                .get(&k)
                .into_iter()
                .flatten()
                .filter_map(|uid| s.pods.get(uid))
                .filter(|p| p.belongs_to(owner))
                .collect(),
        )
    }

    /// Pods held, over every group.
    pub(super) fn len(&self) -> usize {
        self.groups.values().map(|s| s.pods.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use staging_api::ids::Labels;

    pub(crate) fn pod(ns: &str, uid: &str, labels: &[(&str, &str)], phase: &str) -> OwnerPod {
        OwnerPod {
            namespace: ns.into(),
            uid: uid.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            phase: Some(phase.into()),
        }
    }

    fn owner(ns: &str, sel: &str) -> Owner {
        Owner {
            namespace: ns.parse().unwrap(),
            labels: Labels::parse_selector(sel).unwrap(),
            pod_uid: None,
        }
    }

    fn keys(k: &[&str]) -> BTreeSet<String> {
        k.iter().map(|s| (*s).to_owned()).collect()
    }

    fn group() -> Group {
        Group {
            key: "job".into(),
            role: Some("driver".into()),
        }
    }

    #[test]
    fn an_owner_finds_its_own_namespaces_pods_with_all_its_labels_only() {
        let g = group();
        let mut c = PodCache::default();
        let o = owner("a", "job=x,spark-role=driver");
        assert!(c.pods_of(&g, &o).is_none(), "nothing decided before a list");
        c.start(&g, 1);
        c.replace(
            &g,
            1,
            keys(&["job", "spark-role"]),
            [
                pod(
                    "a",
                    "1",
                    &[("job", "x"), ("spark-role", "driver")],
                    "Running",
                ),
                pod(
                    "b",
                    "2",
                    &[("job", "x"), ("spark-role", "driver")],
                    "Running",
                ),
                pod(
                    "a",
                    "3",
                    &[("job", "y"), ("spark-role", "driver")],
                    "Running",
                ),
                pod("a", "4", &[("job", "x")], "Running"),
            ],
        );
        let got: Vec<_> = c.pods_of(&g, &o).unwrap().iter().map(|p| &p.uid).collect();
        assert_eq!(got, ["1"]);
    }

    #[test]
    fn changes_and_deletions_follow_and_a_failed_watch_decides_nothing() {
        let g = group();
        let mut c = PodCache::default();
        let o = owner("a", "job=x");
        c.start(&g, 1);
        c.replace(&g, 1, keys(&["job"]), []);
        assert_eq!(c.pods_of(&g, &o).unwrap().len(), 0);
        c.apply(&g, 1, pod("a", "1", &[("job", "x")], "Running"));
        assert_eq!(
            c.pods_of(&g, &o).unwrap()[0].phase.as_deref(),
            Some("Running")
        );
        // Relabelled away from the owner: no longer its pod.
        c.apply(&g, 1, pod("a", "1", &[("job", "z")], "Running"));
        assert_eq!(c.pods_of(&g, &o).unwrap().len(), 0);
        c.apply(&g, 1, pod("a", "1", &[("job", "x")], "Succeeded"));
        assert_eq!(c.len(), 1);
        c.unsync(&g, 1);
        assert!(c.pods_of(&g, &o).is_none());
        // The run's next list.
        c.replace(
            &g,
            1,
            keys(&["job"]),
            [pod("a", "1", &[("job", "x")], "Succeeded")],
        );
        c.delete(&g, 1, "1");
        assert_eq!(c.pods_of(&g, &o).unwrap().len(), 0);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_stopped_watchs_late_writes_and_owners_naming_unkept_labels_decide_nothing() {
        let g = group();
        let mut c = PodCache::default();
        c.start(&g, 2);
        c.replace(&g, 2, keys(&["job"]), []);
        // Run 1 of the watch, stopped, still delivering.
        c.apply(&g, 1, pod("a", "1", &[("job", "x")], "Running"));
        c.unsync(&g, 1);
        c.replace(
            &g,
            1,
            keys(&["job"]),
            [pod("a", "9", &[("job", "x")], "Running")],
        );
        assert_eq!(c.pods_of(&g, &owner("a", "job=x")).unwrap().len(), 0);
        // An owner naming a label the last list did not keep: undecided until a list keeps it.
        assert!(c.pods_of(&g, &owner("a", "job=x,team=t")).is_none());
        c.drop_group(&g);
        c.apply(&g, 2, pod("a", "1", &[("job", "x")], "Running"));
        c.replace(
            &g,
            2,
            keys(&["job"]),
            [pod("a", "1", &[("job", "x")], "Running")],
        );
        assert_eq!(c.len(), 0);
        assert!(c.pods_of(&g, &owner("a", "job=x")).is_none());
    }

    #[test]
    fn only_the_labels_owners_name_are_kept() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "a", "uid": "1",
                "labels": {"job": "x", "big": "y".repeat(63), "other": "z"}},
            "status": {"phase": "Running"}}))
        .unwrap();
        let kept = OwnerPod::of(&p, Some(&keys(&["job"]))).unwrap();
        assert_eq!(kept.labels.len(), 1);
        assert_eq!(OwnerPod::of(&p, None).unwrap().labels.len(), 3);
    }
}
