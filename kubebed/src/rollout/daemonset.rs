//! A DaemonSet's decisions, as Kubernetes' DaemonSet controller makes them (`manage`, then
//! `rollingUpdate` once `manage` has nothing left to do, and `updateDaemonSetStatus`), its
//! pods' template told apart by label [`HASH_LABEL`].
//!
//! `manage` keeps one pod on every node that should run one: it creates a pod on a node that has
//! none, where a pod still being deleted counts as one (so a node's new pod starts only once the
//! old one is gone, as a cluster's scheduler holds it while the old one keeps the node's host
//! ports), and deletes finished pods, surplus pods and pods on nodes that should not run one. Without
//! surge, `rollingUpdate` deletes old pods while fewer than `maxUnavailable` nodes are without
//! an available pod, and `manage` then starts the new ones; with `maxSurge`, it starts new pods
//! beside old ones on up to `maxSurge` nodes and deletes each old pod once its node's new pod
//! is available. Nodes are taken in name order (Kubernetes takes them in no fixed order).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{IntOrPercent, PodView};

/// The label holding the template hash on a DaemonSet's pods.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// How a DaemonSet replaces its pods (`spec.updateStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// A node's pod is replaced only once someone deletes it.
    OnDelete,
    /// Old pods are replaced node by node.
    RollingUpdate {
        /// Nodes that may be without an available pod (default 1; a percentage of the nodes
        /// that should run a pod, rounded up).
        max_unavailable: IntOrPercent,
        /// Nodes that may run a new pod beside the old one (default 0, rounded up).
        max_surge: IntOrPercent,
    },
}

/// What of a DaemonSet's spec its controller acts on, Kubernetes' defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// `updateStrategy`.
    pub strategy: Strategy,
    /// `minReadySeconds`: how long a pod must have been ready to count as available.
    pub min_ready_seconds: i64,
}

impl Spec {
    /// Reads a DaemonSet's `spec`.
    ///
    /// # Errors
    /// A value the API server refuses, as its validation words it.
    pub fn from_json(spec: &Value) -> Result<Self, String> {
        let min_ready_seconds = match &spec["minReadySeconds"] {
            Value::Null => 0,
            v => v
                .as_i64()
                .filter(|r| *r >= 0)
                .ok_or_else(|| format!("spec.minReadySeconds: Invalid value: {v}"))?,
        };
        let s = &spec["updateStrategy"];
        let strategy = match s["type"].as_str() {
            None | Some("RollingUpdate") => {
                let ru = &s["rollingUpdate"];
                let field = |f: &str, default| {
                    let v = IntOrPercent::from_json(&ru[f], default).map_err(|e| {
                        format!("spec.updateStrategy.rollingUpdate.{f}: Invalid value: {e}")
                    })?;
                    if matches!(v, IntOrPercent::Percent(p) if p > 100) {
                        return Err(format!(
                            "spec.updateStrategy.rollingUpdate.{f}: Invalid value: {}: must not be greater than 100%",
                            ru[f]
                        ));
                    }
                    Ok(v)
                };
                let max_unavailable = field("maxUnavailable", IntOrPercent::Int(1))?;
                let max_surge = field("maxSurge", IntOrPercent::Int(0))?;
                if max_surge.is_zero() && max_unavailable.is_zero() {
                    return Err("spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0".into());
                }
                Strategy::RollingUpdate {
                    max_unavailable,
                    max_surge,
                }
            }
            Some("OnDelete") => Strategy::OnDelete,
            Some(other) => {
                return Err(format!(
                    "spec.updateStrategy.type: Unsupported value: {other:?}: supported values: \"OnDelete\", \"RollingUpdate\""
                ));
            }
        };
        Ok(Self {
            strategy,
            min_ready_seconds,
        })
    }

    /// `(maxSurge, maxUnavailable)` in nodes out of `desired` (`SurgeCount`,
    /// `UnavailableCount`: percentages round up; when both come to zero, one node may be
    /// unavailable). Both are zero for `OnDelete`.
    #[must_use]
    pub fn counts(&self, desired: i64) -> (i64, i64) {
        let Strategy::RollingUpdate {
            max_unavailable,
            max_surge,
        } = self.strategy
        else {
            return (0, 0);
        };
        let surge = max_surge.scaled(desired, true);
        let mut unavailable = max_unavailable.scaled(desired, true);
        if desired > 0 && surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        (surge, unavailable)
    }

    /// Whether a node may hold an old and a new pod at once (`AllowsSurge`).
    #[must_use]
    pub fn allows_surge(&self) -> bool {
        self.counts(1).0 > 0
    }
}

/// A node the DaemonSet considers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// Whether it should run the DaemonSet's pod (its labels hold the template's
    /// `nodeSelector`).
    pub should_run: bool,
}

/// A DaemonSet's `status` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// Nodes that should run a pod.
    pub desired_number_scheduled: i64,
    /// Of those, the nodes that have one.
    pub current_number_scheduled: i64,
    /// Nodes that have a pod and should not.
    pub number_misscheduled: i64,
    /// Nodes whose (oldest) pod is ready.
    pub number_ready: i64,
    /// Nodes whose (oldest) pod is of the current template.
    pub updated_number_scheduled: i64,
    /// Nodes whose (oldest) pod is available.
    pub number_available: i64,
    /// Nodes that should run a pod less those with an available one.
    pub number_unavailable: i64,
}

/// What to do in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Nodes to start a pod of the current template on.
    pub create_on: Vec<String>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// The status the pods had before these steps.
    pub status: Status,
    /// When a ready pod becomes available (milliseconds since the epoch): the next pass is due
    /// then even if nothing changes.
    pub wake_at: Option<i64>,
}

/// Oldest first (`podByCreationTimestampAndPhase`).
fn oldest_first(pods: &mut [&PodView]) {
    pods.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
}

/// The node's pods not being deleted, as `(new, old)`, or `None` when there is more than one
/// of either (`findUpdatedPodsOnNode`).
fn new_and_old<'a>(
    pods: &[&'a PodView],
    hash: &str,
) -> Option<(Option<&'a PodView>, Option<&'a PodView>)> {
    let (mut new, mut old) = (None, None);
    for p in pods.iter().filter(|p| !p.terminating) {
        let slot = if p.is_of(hash) { &mut new } else { &mut old };
        if slot.replace(*p).is_some() {
            return None;
        }
    }
    Some((new, old))
}

/// The next step of a DaemonSet with `spec` whose current template hashes to `hash`, on
/// `nodes`, given every pod it owns, at `now` (milliseconds since the epoch). Pods on nodes
/// not in `nodes` are left alone.
#[must_use]
pub fn plan(spec: &Spec, hash: &str, nodes: &[Node], pods: &[PodView], now: i64) -> Plan {
    let min_ready = spec.min_ready_seconds;
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    // A finished pod already being deleted is gone as far as the controller cares.
    let mut by_node: BTreeMap<&str, Vec<&PodView>> = BTreeMap::new();
    for p in pods.iter().filter(|p| !(p.terminal && p.terminating)) {
        if let Some(n) = p.node.as_deref() {
            by_node.entry(n).or_default().push(p);
        }
    }
    for v in by_node.values_mut() {
        oldest_first(v);
    }
    let on = |n: &Node| by_node.get(n.name.as_str()).cloned().unwrap_or_default();
    let mut plan = Plan {
        status: status(hash, min_ready, &nodes, &on, now),
        wake_at: pods
            .iter()
            .filter_map(|p| p.available_at(min_ready, now))
            .min(),
        ..Plan::default()
    };
    manage(&mut plan, spec, hash, &nodes, &on, now);
    if !plan.create_on.is_empty() || !plan.delete.is_empty() {
        // As there, the update waits until what `manage` asked for has happened.
        return plan;
    }
    if let Strategy::RollingUpdate { .. } = spec.strategy {
        let desired = plan.status.desired_number_scheduled;
        let (max_surge, max_unavailable) = spec.counts(desired);
        if max_surge == 0 {
            replace_without_surge(&mut plan, spec, hash, &nodes, &on, max_unavailable, now);
        } else {
            replace_with_surge(&mut plan, spec, hash, &nodes, &on, max_surge, now);
        }
    }
    plan
}

fn status<'a>(
    hash: &str,
    min_ready: i64,
    nodes: &[&Node],
    on: &impl Fn(&Node) -> Vec<&'a PodView>,
    now: i64,
) -> Status {
    let mut s = Status::default();
    for n in nodes {
        let pods = on(n);
        if !n.should_run {
            s.number_misscheduled += i64::from(!pods.is_empty());
            continue;
        }
        s.desired_number_scheduled += 1;
        let Some(pod) = pods.first() else {
            continue;
        };
        s.current_number_scheduled += 1;
        s.number_ready += i64::from(pod.ready());
        s.number_available += i64::from(pod.available(min_ready, now));
        s.updated_number_scheduled += i64::from(pod.is_of(hash));
    }
    s.number_unavailable = s.desired_number_scheduled - s.number_available;
    s
}

/// `manage` (`podsShouldBeOnNode` for every node).
fn manage<'a>(
    plan: &mut Plan,
    spec: &Spec,
    hash: &str,
    nodes: &[&Node],
    on: &impl Fn(&Node) -> Vec<&'a PodView>,
    now: i64,
) {
    for n in nodes {
        let pods = on(n);
        if !n.should_run {
            plan.delete.extend(
                pods.iter()
                    .filter(|p| !p.terminating)
                    .map(|p| p.name.clone()),
            );
            continue;
        }
        if pods.is_empty() {
            plan.create_on.push(n.name.clone());
            continue;
        }
        let mut running: Vec<&PodView> = Vec::new();
        for p in pods.iter().filter(|p| !p.terminating) {
            if p.terminal {
                plan.delete.push(p.name.clone());
            } else {
                running.push(p);
            }
        }
        if !spec.allows_surge() {
            // One pod a node: the oldest stays.
            plan.delete
                .extend(running.iter().skip(1).map(|p| p.name.clone()));
            continue;
        }
        if running.is_empty() {
            plan.create_on.push(n.name.clone());
            continue;
        }
        // With surge, a node may hold the oldest pod of each template; the old one goes once
        // it is not ready or the new one is available.
        let (mut oldest_new, mut oldest_old) = (None, None);
        for p in running {
            let slot = if p.is_of(hash) {
                &mut oldest_new
            } else {
                &mut oldest_old
            };
            if slot.is_none() {
                *slot = Some(p);
            } else {
                plan.delete.push(p.name.clone());
            }
        }
        if let (Some(new), Some(old)) = (oldest_new, oldest_old)
            && (!old.ready() || new.available(spec.min_ready_seconds, now))
        {
            plan.delete.push(old.name.clone());
        }
    }
}

/// `rollingUpdate` without surge: delete old pods while fewer than `max_unavailable` nodes are
/// without an available pod; old pods that are not available are replaced at once.
fn replace_without_surge<'a>(
    plan: &mut Plan,
    spec: &Spec,
    hash: &str,
    nodes: &[&Node],
    on: &impl Fn(&Node) -> Vec<&'a PodView>,
    max_unavailable: i64,
    now: i64,
) {
    let available = |p: &PodView| p.available(spec.min_ready_seconds, now);
    let mut unavailable = 0;
    let mut replace: Vec<String> = Vec::new();
    let mut candidates: Vec<String> = Vec::new();
    for n in nodes {
        let pods = on(n);
        if pods.is_empty() {
            // Only between a pod's removal and its successor's creation, which `manage`
            // makes in the same pass; counted all the same.
            unavailable += i64::from(n.should_run);
            continue;
        }
        match new_and_old(&pods, hash) {
            None | Some((None, None) | (Some(_), Some(_))) => unavailable += 1,
            Some((Some(new), None)) => unavailable += i64::from(!available(new)),
            Some((None, Some(old))) => {
                if !available(old) {
                    replace.push(old.name.clone());
                    unavailable += 1;
                } else if unavailable < max_unavailable {
                    candidates.push(old.name.clone());
                }
            }
        }
    }
    let room = usize::try_from((max_unavailable - unavailable).max(0)).unwrap_or(0);
    plan.delete.extend(replace);
    plan.delete.extend(candidates.into_iter().take(room));
}

/// `rollingUpdate` with surge: start a new pod beside an old one on up to `max_surge` nodes
/// at once (at once where the old pod is not available); `manage` deletes each old pod once
/// its node's new pod is available.
fn replace_with_surge<'a>(
    plan: &mut Plan,
    spec: &Spec,
    hash: &str,
    nodes: &[&Node],
    on: &impl Fn(&Node) -> Vec<&'a PodView>,
    max_surge: i64,
    now: i64,
) {
    let available = |p: &PodView| p.available(spec.min_ready_seconds, now);
    let mut surging = 0;
    let mut replace: Vec<String> = Vec::new();
    let mut candidates: Vec<String> = Vec::new();
    for n in nodes.iter().filter(|n| n.should_run) {
        let pods = on(n);
        match new_and_old(&pods, hash) {
            None => surging += 1,
            Some((_, None)) => {}
            Some((None, Some(old))) => {
                if !available(old) {
                    replace.push(n.name.clone());
                } else if surging < max_surge {
                    candidates.push(n.name.clone());
                }
            }
            Some((Some(new), Some(old))) => {
                if available(new) {
                    plan.delete.push(old.name.clone());
                } else {
                    surging += 1;
                }
            }
        }
    }
    let room = usize::try_from((max_surge - surging).max(0)).unwrap_or(0);
    plan.create_on.extend(replace);
    plan.create_on.extend(candidates.into_iter().take(room));
}
