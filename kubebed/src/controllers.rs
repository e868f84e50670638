//! The controllers a bed needs, reconciled together after every change (and when a ready pod
//! becomes available after `minReadySeconds`): a scheduler (round robin over Ready nodes,
//! honouring `nodeSelector` and `nodeName`), DaemonSets (one pod per node matching the
//! template's `nodeSelector`) and Deployments (pods owned directly by the Deployment, without
//! ReplicaSets), both replacing the pods of a changed template by their update strategy
//! (decided in [`crate::rollout`]), and Service endpoints for the pods' `/etc/hosts`: the
//! Ready pods that are not being deleted (with `publishNotReadyAddresses`, every pod with an
//! address that has not ended and is not being deleted).

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::kubelet::Hosts;
use crate::kubelet::hosts::ServiceEntry;
use crate::resources::{self, DAEMONSETS, DEPLOYMENTS, NODES, PODS, Resource};
use crate::rollout::{PodView, daemonset, deployment, template_hash};
use crate::selector::{Selector, matches_label_selector};
use crate::store::{self, DeleteOptions, Store};

const SERVICES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "services",
    kind: "Service",
    namespaced: true,
};

fn all(store: &Store, res: &Resource) -> Vec<Value> {
    store
        .list(res, None, &Selector::default(), &Selector::default())
        .0
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..5].to_string()
}

fn owned_by(pod: &Value, uid: &str) -> bool {
    pod["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|r| r.iter().any(|o| o["uid"].as_str() == Some(uid)))
}

fn terminal(p: &Value) -> bool {
    matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// Milliseconds since the epoch, the clock of [`crate::rollout`]'s decisions.
fn now_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// The controllers' state.
#[derive(Debug)]
pub struct Controllers {
    store: Arc<Store>,
    hosts: Arc<Hosts>,
    next_node: std::sync::atomic::AtomicUsize,
}

impl Controllers {
    /// New controllers over `store`.
    #[must_use]
    pub fn new(store: Arc<Store>, hosts: Arc<Hosts>) -> Self {
        Self {
            store,
            hosts,
            next_node: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Reconciles after every batch of changes, and when a pass asked to be woken (a ready
    /// pod becoming available), until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut events = self.store.subscribe();
        let mut wake = self.reconcile();
        loop {
            let due = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = due => wake = self.reconcile(),
                ev = events.recv() => match ev {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
                        wake = self.reconcile();
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }

    /// One pass of every controller; returns when the next pass is due if nothing changes
    /// before (a ready pod becoming available after `minReadySeconds`).
    pub fn reconcile(&self) -> Option<tokio::time::Instant> {
        let nodes: Vec<Value> = all(&self.store, &NODES)
            .into_iter()
            .filter(|n| {
                n["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                }) && !n["metadata"]["deletionTimestamp"].is_string()
            })
            .collect();
        let now = now_millis();
        let wake = [self.daemonsets(&nodes, now), self.deployments(now)]
            .into_iter()
            .flatten()
            .min();
        self.schedule(&nodes);
        self.endpoints();
        wake.map(|at| {
            let ms = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
            tokio::time::Instant::now() + std::time::Duration::from_millis(ms)
        })
    }

    fn schedule(&self, nodes: &[Value]) {
        if nodes.is_empty() {
            return;
        }
        for p in all(&self.store, &PODS) {
            if p["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
                || p["metadata"]["deletionTimestamp"].is_string()
            {
                continue;
            }
            let fits: Vec<&Value> = nodes
                .iter()
                .filter(|n| {
                    p["spec"]["nodeSelector"]
                        .as_object()
                        .is_none_or(|sel| sel.iter().all(|(k, v)| n["metadata"]["labels"][k] == *v))
                })
                .collect();
            if fits.is_empty() {
                continue;
            }
            let i = self
                .next_node
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                % fits.len();
            let node = fits[i]["metadata"]["name"].clone();
            let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let _ = self.store.update(&PODS, ns, name, |p| {
                p["spec"]["nodeName"] = node.clone();
                Ok(())
            });
        }
    }

    /// A pod of `owner`'s template, labelled with the template's hash.
    fn pod_from_template(
        owner: &Value,
        res: &Resource,
        name: String,
        hash_label: &str,
        hash: &str,
    ) -> Value {
        let t = &owner["spec"]["template"];
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": t["metadata"]["labels"].clone(),
                "annotations": t["metadata"]["annotations"].clone(),
                "ownerReferences": [{
                    "apiVersion": res.api_version(), "kind": res.kind,
                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": t["spec"].clone(),
        });
        if !pod["metadata"]["labels"].is_object() {
            pod["metadata"]["labels"] = json!({});
        }
        pod["metadata"]["labels"][hash_label] = json!(hash);
        if pod["metadata"]["annotations"].is_null()
            && let Some(m) = pod["metadata"].as_object_mut()
        {
            m.remove("annotations");
        }
        if pod["spec"]["restartPolicy"].is_null() {
            pod["spec"]["restartPolicy"] = json!("Always");
        }
        pod
    }

    /// Deletes pods as a controller does: gracefully, each with its own grace period.
    fn delete_pods(&self, ns: &str, names: &[String]) {
        for pn in names {
            if let Err(e) = self.store.delete(&PODS, ns, pn, &DeleteOptions::default())
                && e.code != 404
            {
                tracing::warn!(pod = %pn, error = %e, "deleting pod");
            }
        }
    }

    /// Writes `status` unless the object already has it.
    fn set_status(&self, res: &Resource, obj: &Value, status: Value) {
        if obj["status"] == status {
            return;
        }
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let _ = self.store.update(res, ns, name, |o| {
            o["status"] = status;
            Ok(())
        });
    }

    /// One pass over every DaemonSet; returns when the next pass is due without a change
    /// (a ready pod becoming available).
    fn daemonsets(&self, nodes: &[Value], now: i64) -> Option<i64> {
        let pods = all(&self.store, &PODS);
        let mut wake: Option<i64> = None;
        for ds in all(&self.store, &DAEMONSETS) {
            if ds["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            let uid = ds["metadata"]["uid"].as_str().unwrap_or_default();
            let ns = ds["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = ds["metadata"]["name"].as_str().unwrap_or_default();
            let spec = match daemonset::Spec::from_json(&ds["spec"]) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(daemonset = name, error = %e, "not reconciled");
                    continue;
                }
            };
            let hash = template_hash(&ds["spec"]["template"]);
            let mine: Vec<PodView> = pods
                .iter()
                .filter(|p| owned_by(p, uid))
                .map(|p| PodView::of(p, daemonset::HASH_LABEL))
                .collect();
            // Only nodes whose labels hold the template's nodeSelector should run a pod.
            let selector = &ds["spec"]["template"]["spec"]["nodeSelector"];
            let nodes: Vec<daemonset::Node> = nodes
                .iter()
                .map(|n| daemonset::Node {
                    name: n["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    should_run: selector
                        .as_object()
                        .into_iter()
                        .flatten()
                        .all(|(k, v)| n["metadata"]["labels"][k.as_str()] == *v),
                })
                .collect();
            let plan = daemonset::plan(&spec, &hash, &nodes, &mine, now);
            self.delete_pods(ns, &plan.delete);
            for node in &plan.create_on {
                let mut pod = Self::pod_from_template(
                    &ds,
                    &DAEMONSETS,
                    format!("{name}-{}", short_id()),
                    daemonset::HASH_LABEL,
                    &hash,
                );
                pod["spec"]["nodeName"] = json!(node);
                if let Err(e) = self.store.create(&PODS, ns, pod) {
                    tracing::warn!(daemonset = name, node, error = %e, "creating pod");
                }
            }
            let s = plan.status;
            let status = json!({
                "desiredNumberScheduled": s.desired_number_scheduled,
                "currentNumberScheduled": s.current_number_scheduled,
                "numberMisscheduled": s.number_misscheduled,
                "numberReady": s.number_ready,
                "updatedNumberScheduled": s.updated_number_scheduled,
                "numberAvailable": s.number_available,
                "numberUnavailable": s.number_unavailable,
                "observedGeneration": ds["metadata"]["generation"],
            });
            self.set_status(&DAEMONSETS, &ds, status);
            wake = wake.into_iter().chain(plan.wake_at).min();
        }
        wake
    }

    /// One pass over every Deployment; returns when the next pass is due without a change
    /// (a ready pod becoming available).
    fn deployments(&self, now: i64) -> Option<i64> {
        let pods = all(&self.store, &PODS);
        let mut wake: Option<i64> = None;
        for d in all(&self.store, &DEPLOYMENTS) {
            if d["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            let uid = d["metadata"]["uid"].as_str().unwrap_or_default();
            let ns = d["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            let spec = match deployment::Spec::from_json(&d["spec"]) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(deployment = name, error = %e, "not reconciled");
                    continue;
                }
            };
            let hash = template_hash(&d["spec"]["template"]);
            let mine: Vec<PodView> = pods
                .iter()
                .filter(|p| owned_by(p, uid))
                .map(|p| PodView::of(p, deployment::HASH_LABEL))
                .collect();
            let plan = deployment::plan(&spec, &hash, &mine, now);
            self.delete_pods(ns, &plan.delete);
            for _ in 0..plan.create {
                let pod = Self::pod_from_template(
                    &d,
                    &DEPLOYMENTS,
                    format!("{name}-{hash}-{}", short_id()),
                    deployment::HASH_LABEL,
                    &hash,
                );
                if let Err(e) = self.store.create(&PODS, ns, pod) {
                    tracing::warn!(deployment = name, error = %e, "creating pod");
                }
            }
            let s = plan.status;
            let conditions =
                deployment::conditions(&d["status"]["conditions"], &spec, &s, &hash, &store::now());
            let status = json!({
                "replicas": s.replicas,
                "updatedReplicas": s.updated_replicas,
                "readyReplicas": s.ready_replicas,
                "availableReplicas": s.available_replicas,
                "unavailableReplicas": s.unavailable_replicas,
                "observedGeneration": d["metadata"]["generation"],
                "conditions": conditions,
            });
            self.set_status(&DEPLOYMENTS, &d, status);
            wake = wake.into_iter().chain(plan.wake_at).min();
        }
        wake
    }

    fn endpoints(&self) {
        let pods = all(&self.store, &PODS);
        let entries = all(&self.store, &SERVICES)
            .iter()
            .filter_map(|svc| {
                let sel = svc["spec"]["selector"].as_object()?;
                let ns = svc["metadata"]["namespace"].as_str()?;
                let not_ready_too = svc["spec"]["publishNotReadyAddresses"] == json!(true);
                let ips = pods
                    .iter()
                    .filter(|p| {
                        p["metadata"]["namespace"].as_str() == Some(ns)
                            && !terminal(p)
                            && !p["metadata"]["deletionTimestamp"].is_string()
                            && (not_ready_too || PodView::of(p, "").ready())
                            && matches_label_selector(
                                &json!({"matchLabels": sel}),
                                &p["metadata"]["labels"],
                            )
                    })
                    .filter_map(|p| p["status"]["podIP"].as_str()?.parse().ok())
                    .collect();
                Some(ServiceEntry {
                    namespace: ns.to_string(),
                    name: svc["metadata"]["name"].as_str()?.to_string(),
                    ips,
                })
            })
            .collect();
        self.hosts.set_services(entries);
    }
}

/// The resource types a manifest may hold, for `apply`.
#[must_use]
pub fn resource_of(obj: &Value) -> Option<Resource> {
    resources::by_kind(
        obj["apiVersion"].as_str().unwrap_or_default(),
        obj["kind"].as_str().unwrap_or_default(),
    )
}
