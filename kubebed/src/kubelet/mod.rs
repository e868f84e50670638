//! A kubelet stand-in for one node: registers its Node, runs every pod bound to it as local
//! processes ([`pod`]), and stops them when they are deleted.

pub mod env;
pub mod hosts;
pub mod launch;
pub mod pod;
pub mod probe;
pub mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::images::Images;
use crate::net::{Fabric, Netns};
use crate::resources::{NODES, PODS};
use crate::selector::Selector;
use crate::store::{EventType, Store};

pub use hosts::Hosts;
pub use volumes::Roots;

/// What a node's kubelet works with.
#[derive(Debug)]
pub struct NodeCtx {
    /// Node name.
    pub name: String,
    /// Node index in the fabric.
    pub index: u8,
    /// The node's network namespace and address.
    pub netns: Netns,
    /// The node's directory (pods under `pods/<uid>`).
    pub dir: PathBuf,
    /// Where hostPath and persistent volumes live.
    pub roots: Roots,
    /// The store.
    pub store: Arc<Store>,
    /// The network.
    pub fabric: Arc<Fabric>,
    /// Known images.
    pub images: Arc<Images>,
    /// The API server's HTTPS address as pods reach it (`KUBERNETES_SERVICE_*`).
    pub api: Option<(String, u16)>,
    /// The CA certificate of the API server (PEM), mounted as the service account's `ca.crt`.
    pub api_ca: Option<String>,
    /// Name resolution files.
    pub hosts: Arc<Hosts>,
}

fn node_object(ctx: &NodeCtx) -> Value {
    json!({
        "metadata": {"name": ctx.name, "labels": {
            "kubernetes.io/hostname": ctx.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        "spec": {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ctx.netns.ip.to_string()},
                          {"type": "Hostname", "address": ctx.name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status"}],
            "nodeInfo": {"kubeletVersion": "v1.34.0-kubebed", "operatingSystem": "linux", "architecture": "amd64"},
        },
    })
}

/// Runs the node until `cancel`, then stops its pods (a 5 s grace each), waits for them and
/// removes its Node; or until `lost`, then stops its pods with no grace (SIGTERM and SIGKILL
/// at once), as close to a machine that stops as processes get, and leaves its Node for
/// whoever declares it gone.
pub async fn run(ctx: Arc<NodeCtx>, cancel: CancellationToken, lost: CancellationToken) {
    if let Err(e) = ctx.store.create(&NODES, "", node_object(&ctx)) {
        tracing::warn!(node = %ctx.name, error = %e, "node registration");
    }
    let mut events = ctx.store.subscribe();
    let mut running: HashMap<String, watch::Sender<Option<i64>>> = HashMap::new();
    let mut tasks: JoinSet<String> = JoinSet::new();
    let mine = Selector::fields(&format!("spec.nodeName={}", ctx.name)).unwrap_or_default();
    let relist = |running: &mut HashMap<String, watch::Sender<Option<i64>>>,
                  tasks: &mut JoinSet<String>| {
        let (pods, _) = ctx.store.list(&PODS, None, &Selector::default(), &mine);
        for p in pods {
            consider(&ctx, EventType::Modified, &p, running, tasks);
        }
    };
    relist(&mut running, &mut tasks);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = lost.cancelled() => break,
            Some(done) = tasks.join_next() => {
                if let Ok(uid) = done { running.remove(&uid); }
            }
            ev = events.recv() => match ev {
                Ok(ev) if ev.res == PODS && ev.object["spec"]["nodeName"].as_str() == Some(ctx.name.as_str()) => {
                    consider(&ctx, ev.kind, &ev.object, &mut running, &mut tasks);
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => relist(&mut running, &mut tasks),
                Err(RecvError::Closed) => break,
            }
        }
    }
    let grace = if lost.is_cancelled() { 0 } else { 5 };
    for tx in running.values() {
        let _ = tx.send(Some(grace));
    }
    while tasks.join_next().await.is_some() {}
    if lost.is_cancelled() {
        return;
    }
    let _ = ctx.store.delete(
        &NODES,
        "",
        &ctx.name,
        &crate::store::DeleteOptions::default(),
    );
}

fn consider(
    ctx: &Arc<NodeCtx>,
    kind: EventType,
    pod: &Value,
    running: &mut HashMap<String, watch::Sender<Option<i64>>>,
    tasks: &mut JoinSet<String>,
) {
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let terminating = pod["metadata"]["deletionTimestamp"].is_string();
    if let Some(tx) = running.get(&uid) {
        if kind == EventType::Deleted {
            let _ = tx.send(Some(0));
        } else if terminating {
            let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30);
            let _ = tx.send_if_modified(|cur| {
                if cur.is_none_or(|g| grace < g) {
                    *cur = Some(grace);
                    true
                } else {
                    false
                }
            });
        }
        return;
    }
    let terminal = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if terminating && kind != EventType::Deleted {
        // Deleted while no kubelet ran it (its node was lost, or it ended before): nothing to
        // stop, so the kubelet's final delete removes it, as a restarted kubelet does.
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let _ = ctx.store.remove_terminated(&PODS, ns, name, &uid);
        return;
    }
    if kind == EventType::Deleted || terminal {
        return;
    }
    let (tx, rx) = watch::channel(None);
    running.insert(uid.clone(), tx);
    let ctx = Arc::clone(ctx);
    let pod = pod.clone();
    tasks.spawn(async move {
        pod::run(ctx, pod, rx).await;
        uid
    });
}
