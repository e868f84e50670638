//! A Deployment's decisions, as Kubernetes' Deployment and ReplicaSet controllers make them
//! together (`rolloutRolling`, `rolloutRecreate`, `syncRolloutStatus`), with the pods of each
//! template standing for a ReplicaSet: the pods of the current template (label
//! [`HASH_LABEL`]) are the new ReplicaSet's, every other template's the old ones', and a
//! pod being deleted belongs to none (a ReplicaSet does not count it).
//!
//! One kind of step per pass, as there: scale the current template's pods up (within
//! `replicas + maxSurge` pods) or down, or else delete old pods (first those that are not
//! available, then as many available ones as keep `replicas - maxUnavailable` available).
//! Each step changes pods, and the next pass, on that change, takes the next step.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use super::{IntOrPercent, PodView, deletion_order};

/// The label holding the template hash on a Deployment's pods.
pub const HASH_LABEL: &str = "pod-template-hash";

/// How a Deployment replaces its pods (`spec.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Every old pod is deleted, and the new ones are created once the old ones are gone.
    Recreate,
    /// Old pods are replaced step by step.
    RollingUpdate {
        /// Pods above `replicas` that may exist (default 25%, rounded up).
        max_surge: IntOrPercent,
        /// Pods below `replicas` that may be unavailable (default 25%, rounded down).
        max_unavailable: IntOrPercent,
    },
}

/// What of a Deployment's spec its controller acts on, Kubernetes' defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// `replicas` (default 1).
    pub replicas: i64,
    /// `strategy`.
    pub strategy: Strategy,
    /// `minReadySeconds`: how long a pod must have been ready to count as available.
    pub min_ready_seconds: i64,
    /// `paused`: no pod is created or deleted for the template until it is resumed.
    pub paused: bool,
}

impl Spec {
    /// Reads a Deployment's `spec`.
    ///
    /// # Errors
    /// A value the API server refuses, as its validation words it.
    pub fn from_json(spec: &Value) -> Result<Self, String> {
        let replicas = match &spec["replicas"] {
            Value::Null => 1,
            v => v
                .as_i64()
                .filter(|r| *r >= 0)
                .ok_or_else(|| format!("spec.replicas: Invalid value: {v}"))?,
        };
        let min_ready_seconds = match &spec["minReadySeconds"] {
            Value::Null => 0,
            v => v
                .as_i64()
                .filter(|r| *r >= 0)
                .ok_or_else(|| format!("spec.minReadySeconds: Invalid value: {v}"))?,
        };
        let s = &spec["strategy"];
        let strategy = match s["type"].as_str() {
            None | Some("RollingUpdate") => {
                let ru = &s["rollingUpdate"];
                let field = |f: &str| {
                    let v = IntOrPercent::from_json(&ru[f], IntOrPercent::Percent(25)).map_err(
                        |e| format!("spec.strategy.rollingUpdate.{f}: Invalid value: {e}"),
                    )?;
                    if f == "maxUnavailable" && matches!(v, IntOrPercent::Percent(p) if p > 100) {
                        return Err(format!(
                            "spec.strategy.rollingUpdate.{f}: Invalid value: {}: must not be greater than 100%",
                            ru[f]
                        ));
                    }
                    Ok(v)
                };
                let max_surge = field("maxSurge")?;
                let max_unavailable = field("maxUnavailable")?;
                if max_surge.is_zero() && max_unavailable.is_zero() {
                    return Err("spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0".into());
                }
                Strategy::RollingUpdate {
                    max_surge,
                    max_unavailable,
                }
            }
            Some("Recreate") => {
                if !s["rollingUpdate"].is_null() {
                    return Err("spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'".into());
                }
                Strategy::Recreate
            }
            Some(other) => {
                return Err(format!(
                    "spec.strategy.type: Unsupported value: {other:?}: supported values: \"Recreate\", \"RollingUpdate\""
                ));
            }
        };
        Ok(Self {
            replicas,
            strategy,
            min_ready_seconds,
            paused: spec["paused"].as_bool().unwrap_or(false),
        })
    }

    /// `(maxSurge, maxUnavailable)` in pods (`ResolveFenceposts`): a surge percentage rounds
    /// up, an unavailability percentage down, and when both come to zero one pod may be
    /// unavailable. Both are zero for `Recreate`.
    #[must_use]
    pub fn fenceposts(&self) -> (i64, i64) {
        let Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } = self.strategy
        else {
            return (0, 0);
        };
        let surge = max_surge.scaled(self.replicas, true);
        let mut unavailable = max_unavailable.scaled(self.replicas, false);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        (surge, unavailable.min(self.replicas))
    }

    /// The pods that must stay available (`replicas - maxUnavailable`).
    #[must_use]
    pub fn min_available(&self) -> i64 {
        self.replicas - self.fenceposts().1
    }
}

/// A Deployment's `status` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// Pods not being deleted.
    pub replicas: i64,
    /// Of those, the current template's.
    pub updated_replicas: i64,
    /// Of those, the ready ones.
    pub ready_replicas: i64,
    /// Of those, the available ones (ready for `minReadySeconds`).
    pub available_replicas: i64,
    /// `replicas` of the spec less the available pods, at least zero.
    pub unavailable_replicas: i64,
}

impl Status {
    /// The rollout is complete: every desired pod is of the current template and available,
    /// and no other pod is left (`DeploymentComplete`).
    #[must_use]
    pub fn complete(&self, spec: &Spec) -> bool {
        self.updated_replicas == spec.replicas
            && self.replicas == spec.replicas
            && self.available_replicas == spec.replicas
    }
}

/// What to do in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Pods of the current template to create.
    pub create: usize,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// The status the pods had before these steps.
    pub status: Status,
    /// When a ready pod becomes available (milliseconds since the epoch): the next pass is due
    /// then even if nothing changes.
    pub wake_at: Option<i64>,
}

/// The next step of a Deployment with `spec` whose current template hashes to `hash`, given
/// every pod it owns, at `now` (milliseconds since the epoch).
#[must_use]
pub fn plan(spec: &Spec, hash: &str, pods: &[PodView], now: i64) -> Plan {
    let min_ready = spec.min_ready_seconds;
    let available = |p: &&&PodView| p.available(min_ready, now);
    // A finished pod is no replica; it is removed (a ReplicaSet leaves that to the pod
    // garbage collector) and replaced.
    let delete = pods
        .iter()
        .filter(|p| p.terminal && !p.terminating)
        .map(|p| p.name.clone())
        .collect();
    let active: Vec<&PodView> = pods.iter().filter(|p| p.active()).collect();
    let (new, old): (Vec<&PodView>, Vec<&PodView>) = active.iter().partition(|p| p.is_of(hash));
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let available_count = count(active.iter().filter(available).count());
    let status = Status {
        replicas: count(active.len()),
        updated_replicas: count(new.len()),
        ready_replicas: count(active.iter().filter(|p| p.ready()).count()),
        available_replicas: available_count,
        unavailable_replicas: (spec.replicas - available_count).max(0),
    };
    let mut plan = Plan {
        create: 0,
        delete,
        status,
        wake_at: pods
            .iter()
            .filter_map(|p| p.available_at(min_ready, now))
            .min(),
    };
    if spec.paused {
        return plan;
    }
    match spec.strategy {
        Strategy::Recreate => recreate(&mut plan, spec, hash, pods, &new, &old),
        Strategy::RollingUpdate { .. } => rolling(&mut plan, spec, &active, &new, &old, now),
    }
    plan
}

/// The current template's pods brought to `replicas`: created, or the surplus deleted in
/// [`deletion_order`].
fn scale_new(plan: &mut Plan, replicas: i64, new: &[&PodView]) {
    let have = i64::try_from(new.len()).unwrap_or(i64::MAX);
    if have < replicas {
        plan.create = usize::try_from(replicas - have).unwrap_or(0);
    } else if have > replicas {
        let surplus = usize::try_from(have - replicas).unwrap_or(0);
        plan.delete.extend(
            deletion_order(new.iter().copied())
                .into_iter()
                .take(surplus)
                .map(|p| p.name.clone()),
        );
    }
}

/// `rolloutRecreate`: delete every old pod; create the new ones only once no old pod is
/// left, terminating ones included (`oldPodsRunning`).
fn recreate(
    plan: &mut Plan,
    spec: &Spec,
    hash: &str,
    pods: &[PodView],
    new: &[&PodView],
    old: &[&PodView],
) {
    if !old.is_empty() {
        plan.delete.extend(old.iter().map(|p| p.name.clone()));
        return;
    }
    if pods.iter().any(|p| !p.is_of(hash) && !p.terminal) {
        return;
    }
    scale_new(plan, spec.replicas, new);
}

/// `rolloutRolling`: `reconcileNewReplicaSet`, else `reconcileOldReplicaSets`.
fn rolling(
    plan: &mut Plan,
    spec: &Spec,
    active: &[&PodView],
    new: &[&PodView],
    old: &[&PodView],
    now: i64,
) {
    let (max_surge, _) = spec.fenceposts();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let available = |p: &&&PodView| p.available(spec.min_ready_seconds, now);
    let replicas = spec.replicas;
    let have = count(new.len());
    if have > replicas {
        scale_new(plan, replicas, new);
        return;
    }
    if have < replicas {
        // NewRSNewReplicas: up to replicas + maxSurge pods in all, never past replicas new.
        let up = (replicas + max_surge - count(active.len())).min(replicas - have);
        if up > 0 {
            plan.create = usize::try_from(up).unwrap_or(0);
            return;
        }
    }
    if old.is_empty() {
        return;
    }
    let min_available = spec.min_available();
    let new_unavailable = have - count(new.iter().filter(available).count());
    let max_scaled_down = count(active.len()) - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return;
    }
    // The old templates, oldest first (ReplicaSetsByCreationTimestamp).
    let mut groups: BTreeMap<Option<&str>, Vec<&PodView>> = BTreeMap::new();
    for p in old {
        groups.entry(p.hash.as_deref()).or_default().push(p);
    }
    let mut groups: Vec<Vec<&PodView>> = groups.into_values().collect();
    groups.sort_by_key(|g| g.iter().map(|p| p.created).min());
    // cleanupUnhealthyReplicas: old pods that are not available go first, as their deletion
    // costs no availability.
    let mut deleted: HashSet<&str> = HashSet::new();
    let mut cleaned = 0;
    for g in &groups {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = count(g.len()) - count(g.iter().filter(available).count());
        let k = unhealthy.min(max_scaled_down - cleaned);
        if k <= 0 {
            continue;
        }
        for p in deletion_order(g.iter().copied())
            .into_iter()
            .take(usize::try_from(k).unwrap_or(0))
        {
            deleted.insert(&p.name);
        }
        cleaned += k;
    }
    // scaleDownOldReplicaSetsForRollingUpdate: as many more as keep min_available available.
    let available_count = count(active.iter().filter(available).count());
    let mut budget = available_count - min_available;
    for g in &groups {
        if budget <= 0 {
            break;
        }
        let left: Vec<&PodView> = g
            .iter()
            .copied()
            .filter(|p| !deleted.contains(p.name.as_str()))
            .collect();
        let k = budget.min(count(left.len()));
        for p in deletion_order(left)
            .into_iter()
            .take(usize::try_from(k).unwrap_or(0))
        {
            deleted.insert(&p.name);
        }
        budget -= k;
    }
    // Deleted together, so their order does not matter; sorted, a pass reads the same twice.
    let mut names: Vec<String> = deleted.into_iter().map(str::to_string).collect();
    names.sort();
    plan.delete.extend(names);
}

/// A Deployment's `Available` and `Progressing` conditions at `now` (a Kubernetes timestamp),
/// from its status counts and its `prev` conditions: each keeps its times while it says the
/// same, so that an unchanged rollout writes no new status.
#[must_use]
pub fn conditions(prev: &Value, spec: &Spec, s: &Status, hash: &str, now: &str) -> Value {
    let minimum = s.available_replicas >= spec.min_available();
    let progressing = if spec.paused {
        (
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".to_string(),
        )
    } else if s.complete(spec) {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("Pods of template {hash:?} have successfully progressed."),
        )
    } else {
        (
            "True",
            "ReplicaSetUpdated",
            format!("Pods of template {hash:?} are progressing."),
        )
    };
    let wanted = [
        if minimum {
            (
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_string(),
            )
        } else {
            (
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_string(),
            )
        },
        ("Progressing", progressing.0, progressing.1, progressing.2),
    ];
    let out: Vec<Value> = wanted
        .into_iter()
        .map(|(kind, status, reason, message)| {
            let old = prev
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
            let same_status = old.is_some_and(|c| c["status"] == status);
            if let Some(c) = old
                && same_status
                && c["reason"] == reason
                && c["message"] == message.as_str()
            {
                return c.clone();
            }
            let since = old
                .filter(|_| same_status)
                .map_or_else(|| json!(now), |c| c["lastTransitionTime"].clone());
            json!({"type": kind, "status": status, "reason": reason, "message": message,
                   "lastUpdateTime": now, "lastTransitionTime": since})
        })
        .collect();
    json!(out)
}
