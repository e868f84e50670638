//! The controllers a bed needs, reconciled together after every change: a scheduler (round
//! robin over Ready nodes, honouring `nodeSelector` and `nodeName`), DaemonSets (one pod per
//! node matching the template's `nodeSelector`), Deployments (pods owned directly by the Deployment, without ReplicaSets), and Service
//! endpoints for the pods' `/etc/hosts`.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::kubelet::Hosts;
use crate::kubelet::hosts::ServiceEntry;
use crate::resources::{self, DAEMONSETS, DEPLOYMENTS, NODES, PODS, Resource};
use crate::selector::{Selector, matches_label_selector};
use crate::store::{DeleteOptions, Store};

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

fn ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
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

    /// Reconciles after every batch of changes until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut events = self.store.subscribe();
        self.reconcile();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                ev = events.recv() => match ev {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
                        self.reconcile();
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }

    /// One pass of every controller.
    pub fn reconcile(&self) {
        let nodes: Vec<Value> = all(&self.store, &NODES)
            .into_iter()
            .filter(|n| {
                n["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                }) && !n["metadata"]["deletionTimestamp"].is_string()
            })
            .collect();
        self.daemonsets(&nodes);
        self.deployments();
        self.schedule(&nodes);
        self.endpoints();
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

    fn pod_from_template(owner: &Value, res: &Resource, name: String) -> Value {
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

    fn daemonsets(&self, nodes: &[Value]) {
        let pods = all(&self.store, &PODS);
        for ds in all(&self.store, &DAEMONSETS) {
            if ds["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            let uid = ds["metadata"]["uid"].as_str().unwrap_or_default();
            let ns = ds["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = ds["metadata"]["name"].as_str().unwrap_or_default();
            let mine: Vec<&Value> = pods.iter().filter(|p| owned_by(p, uid)).collect();
            for p in &mine {
                if terminal(p) && !p["metadata"]["deletionTimestamp"].is_string() {
                    let pn = p["metadata"]["name"].as_str().unwrap_or_default();
                    let _ = self.store.delete(&PODS, ns, pn, &DeleteOptions::default());
                }
            }
            // Only nodes whose labels hold the template's nodeSelector.
            let selector = &ds["spec"]["template"]["spec"]["nodeSelector"];
            let eligible: Vec<&Value> = nodes
                .iter()
                .filter(|n| {
                    selector
                        .as_object()
                        .into_iter()
                        .flatten()
                        .all(|(k, v)| n["metadata"]["labels"][k.as_str()] == *v)
                })
                .collect();
            let mut ready_count = 0;
            for n in &eligible {
                let node = n["metadata"]["name"].as_str().unwrap_or_default();
                let on_node: Vec<&&Value> = mine
                    .iter()
                    .filter(|p| p["spec"]["nodeName"].as_str() == Some(node))
                    .collect();
                ready_count += on_node.iter().filter(|p| ready(p)).count();
                if on_node.is_empty() {
                    let mut pod =
                        Self::pod_from_template(&ds, &DAEMONSETS, format!("{name}-{}", short_id()));
                    pod["spec"]["nodeName"] = json!(node);
                    if let Err(e) = self.store.create(&PODS, ns, pod) {
                        tracing::warn!(daemonset = name, node, error = %e, "creating pod");
                    }
                }
            }
            let status = json!({"desiredNumberScheduled": eligible.len(), "currentNumberScheduled": eligible.len(),
                                "numberReady": ready_count, "numberAvailable": ready_count,
                                "observedGeneration": ds["metadata"]["generation"]});
            if ds["status"] != status {
                let _ = self.store.update(&DAEMONSETS, ns, name, |d| {
                    d["status"] = status.clone();
                    Ok(())
                });
            }
        }
    }

    fn deployments(&self) {
        let pods = all(&self.store, &PODS);
        for d in all(&self.store, &DEPLOYMENTS) {
            if d["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            let uid = d["metadata"]["uid"].as_str().unwrap_or_default();
            let ns = d["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            let want = usize::try_from(d["spec"]["replicas"].as_u64().unwrap_or(1)).unwrap_or(1);
            let mut live: Vec<&Value> = Vec::new();
            for p in pods.iter().filter(|p| owned_by(p, uid)) {
                if p["metadata"]["deletionTimestamp"].is_string() {
                    continue;
                }
                if terminal(p) {
                    let pn = p["metadata"]["name"].as_str().unwrap_or_default();
                    let _ = self.store.delete(&PODS, ns, pn, &DeleteOptions::default());
                    continue;
                }
                live.push(p);
            }
            let hash = &uid[..uid.len().min(8)];
            for _ in live.len()..want {
                let pod = Self::pod_from_template(
                    &d,
                    &DEPLOYMENTS,
                    format!("{name}-{hash}-{}", short_id()),
                );
                if let Err(e) = self.store.create(&PODS, ns, pod) {
                    tracing::warn!(deployment = name, error = %e, "creating pod");
                }
            }
            for extra in live.iter().skip(want) {
                let pn = extra["metadata"]["name"].as_str().unwrap_or_default();
                let _ = self.store.delete(&PODS, ns, pn, &DeleteOptions::default());
            }
            let ready_count = live.iter().take(want).filter(|p| ready(p)).count();
            let status = json!({"replicas": live.len().min(want), "readyReplicas": ready_count,
                                "availableReplicas": ready_count, "updatedReplicas": live.len().min(want),
                                "observedGeneration": d["metadata"]["generation"]});
            if d["status"] != status {
                let _ = self.store.update(&DEPLOYMENTS, ns, name, |x| {
                    x["status"] = status.clone();
                    Ok(())
                });
            }
        }
    }

    fn endpoints(&self) {
        let pods = all(&self.store, &PODS);
        let entries = all(&self.store, &SERVICES)
            .iter()
            .filter_map(|svc| {
                let sel = svc["spec"]["selector"].as_object()?;
                let ns = svc["metadata"]["namespace"].as_str()?;
                let ips = pods
                    .iter()
                    .filter(|p| {
                        p["metadata"]["namespace"].as_str() == Some(ns)
                            && !terminal(p)
                            && !p["metadata"]["deletionTimestamp"].is_string()
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
