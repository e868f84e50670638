//! A whole bed: the store and its API server on the pod network's gateway address, the pod
//! network, one kubelet per node and the controllers; `apply` creates or updates the objects of
//! a manifest file as `kubectl apply` would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiConfig, router};
use crate::controllers::{Controllers, resource_of};
use crate::images::Images;
use crate::kubelet::{self, Hosts, NodeCtx, Roots};
use crate::net::Fabric;
use crate::patch::PatchKind;
use crate::resources::Resource;
use crate::store::Store;
use crate::tls::ApiTls;

/// How to build a bed.
#[derive(Debug, Clone)]
pub struct BedConfig {
    /// Number of nodes (`node-0`, `node-1`, ...).
    pub nodes: u8,
    /// Working directory (node roots, pods, persistent volumes, logs).
    pub dir: PathBuf,
    /// Images pods may use.
    pub images: Images,
    /// Watch history kept by the store.
    pub history: usize,
    /// API front settings.
    pub api: ApiConfig,
}

/// A running bed.
#[derive(Debug)]
pub struct Bed {
    /// The store (tests read and change objects directly too).
    pub store: Arc<Store>,
    /// The API server's URL (`http://<gateway>:<port>`), reachable from pods and the host.
    pub api_url: String,
    /// The API server's address.
    pub api_addr: SocketAddr,
    /// The API server's HTTPS URL (what `KUBERNETES_SERVICE_*` in pods point at).
    pub api_https_url: String,
    /// The CA of the HTTPS front (PEM).
    pub api_ca_pem: String,
    /// Makes both API fronts unavailable (503, watches end) while set.
    pub outage: crate::api::Outage,
    /// Tokens and grants the API's `TokenReview` and `SubjectAccessReview` answer from.
    pub identities: crate::authn::Identities,
    /// The nodes.
    pub nodes: Vec<Arc<NodeCtx>>,
    /// The network.
    pub fabric: Arc<Fabric>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    kubelets: std::sync::Mutex<Vec<Kubelet>>,
}

/// A node's kubelet task, and the token that loses the node.
#[derive(Debug)]
struct Kubelet {
    lost: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Kubelet {
    fn spawn(ctx: &Arc<NodeCtx>, cancel: &CancellationToken) -> Self {
        let lost = CancellationToken::new();
        let task = tokio::spawn(kubelet::run(Arc::clone(ctx), cancel.clone(), lost.clone()));
        Self {
            lost,
            task: Some(task),
        }
    }
}

impl Bed {
    /// Writes a kubeconfig for the plain HTTP front, with `token` as the user's bearer token
    /// (none: anonymous), and returns its path.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_kubeconfig(
        &self,
        path: &std::path::Path,
        namespace: &str,
        token: Option<&str>,
    ) -> std::io::Result<()> {
        let user = match token {
            Some(t) => format!("{{token: \"{t}\"}}"),
            None => "{}".to_owned(),
        };
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster: {{server: \"{}\"}}\nusers:\n- name: user\n  user: {user}\ncontexts:\n- name: bed\n  context: {{cluster: bed, user: user, namespace: {namespace}}}\ncurrent-context: bed\n",
                self.api_url
            ),
        )
    }

    /// Starts a bed.
    ///
    /// # Errors
    /// No root or no network namespaces, or the API server cannot bind.
    pub async fn start(config: BedConfig) -> anyhow::Result<Self> {
        Fabric::available()?;
        let fabric = Arc::new(tokio::task::spawn_blocking(Fabric::create).await??);
        let store = Store::new(config.history);
        let listener = tokio::net::TcpListener::bind((fabric.gateway, 0))
            .await
            .context("binding the API server")?;
        let api_addr = listener.local_addr()?;
        let api_url = format!("http://{api_addr}");
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let app = router(Arc::clone(&store), config.api.clone());
        let stop = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        }));
        let tls = ApiTls::new(fabric.gateway.into())?;
        let tls_listener = tokio::net::TcpListener::bind((fabric.gateway, 0))
            .await
            .context("binding the API server's HTTPS front")?;
        let https_addr = tls_listener.local_addr()?;
        let api_https_url = format!("https://{https_addr}");
        let api_ca_pem = tls.ca_pem.clone();
        tasks.push(tokio::spawn(tls.serve(
            tls_listener,
            router(Arc::clone(&store), config.api.clone()),
            cancel.clone(),
        )));
        let hosts = Arc::new(Hosts::default());
        let images = Arc::new(config.images.clone());
        let mut nodes = Vec::new();
        let mut kubelets = Vec::new();
        for i in 0..config.nodes {
            let f = Arc::clone(&fabric);
            let netns = tokio::task::spawn_blocking(move || f.node(i)).await??;
            let name = format!("node-{i}");
            let dir = config.dir.join("nodes").join(&name);
            std::fs::create_dir_all(dir.join("host"))?;
            let ctx = Arc::new(NodeCtx {
                name,
                index: i,
                netns,
                roots: Roots {
                    host: dir.join("host"),
                    pvs: config.dir.join("pvs"),
                },
                dir,
                store: Arc::clone(&store),
                fabric: Arc::clone(&fabric),
                images: Arc::clone(&images),
                api: Some((https_addr.ip().to_string(), https_addr.port())),
                api_ca: Some(api_ca_pem.clone()),
                hosts: Arc::clone(&hosts),
            });
            kubelets.push(Kubelet::spawn(&ctx, &cancel));
            nodes.push(ctx);
        }
        let controllers = Controllers::new(Arc::clone(&store), hosts);
        tasks.push(tokio::spawn(controllers.run(cancel.clone())));
        tracing::info!(%api_url, nodes = nodes.len(), "bed up");
        Ok(Self {
            store,
            api_url,
            api_addr,
            api_https_url,
            api_ca_pem,
            outage: config.api.outage.clone(),
            identities: config.api.identities.clone(),
            nodes,
            fabric,
            cancel,
            tasks,
            kubelets: std::sync::Mutex::new(kubelets),
        })
    }

    /// Creates or updates every object of a manifest (YAML, several documents), in order, in
    /// `namespace` unless an object names its own. Like `kubectl apply`, a kind the server
    /// does not serve is an error.
    ///
    /// # Errors
    /// Bad YAML, an unknown kind, or what the API server refuses.
    pub fn apply(&self, manifest: &str, namespace: &str) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(manifest) {
            let mut obj: Value = serde::Deserialize::deserialize(doc).context("parsing YAML")?;
            yaml11_octal_modes(&mut obj);
            if obj.is_null() {
                continue;
            }
            let Some(res) = resource_of(&obj) else {
                bail!(
                    "no matches for kind {:?} in version {:?} (the bed serves what a cluster without that API would)",
                    obj["kind"].as_str().unwrap_or_default(),
                    obj["apiVersion"].as_str().unwrap_or_default()
                );
            };
            out.push(self.apply_object(&res, obj, namespace)?);
        }
        Ok(out)
    }

    fn apply_object(&self, res: &Resource, obj: Value, namespace: &str) -> anyhow::Result<Value> {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or(namespace)
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match self.store.create(res, &ns, obj.clone()) {
            Ok(v) => Ok(v),
            Err(e) if e.code == 409 => self
                .store
                .update(res, &ns, &name, |cur| {
                    crate::patch::apply(cur, &obj, PatchKind::Apply);
                    Ok(())
                })
                .map_err(|e| anyhow::anyhow!("{} {ns}/{name}: {}", res.kind, e.message)),
            Err(e) => bail!("{} {ns}/{name}: {}", res.kind, e.message),
        }
    }

    /// Creates a namespace.
    ///
    /// # Errors
    /// It exists or the name is invalid.
    pub fn namespace(&self, name: &str) -> anyhow::Result<()> {
        self.store
            .create(
                &crate::resources::NAMESPACES,
                "",
                json!({"metadata": {"name": name}}),
            )
            .map_err(|e| anyhow::anyhow!(e.message))?;
        Ok(())
    }

    /// Waits until `pred` holds for an object (checked after every change), up to `timeout`.
    ///
    /// # Errors
    /// The timeout, with the object's last state.
    pub async fn wait_for(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        timeout: Duration,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> anyhow::Result<Option<Value>> {
        let mut events = self.store.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let cur = self.store.get(res, ns, name).ok();
            if pred(cur.as_ref()) {
                return Ok(cur);
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    bail!("timed out after {timeout:?} waiting for {} {ns}/{name}; last state: {}",
                        res.kind, cur.map_or_else(|| "absent".to_string(), |c| c["status"].to_string()));
                }
                _ = events.recv() => {}
            }
        }
    }

    /// A pod's container log.
    #[must_use]
    pub fn log(&self, ns: &str, pod: &str, container: &str) -> String {
        let Ok(p) = self.store.get(&crate::resources::PODS, ns, pod) else {
            return String::new();
        };
        let uid = p["metadata"]["uid"].as_str().unwrap_or_default();
        let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
        let path = self.nodes.iter().find(|n| n.name == node).map(|n| {
            n.dir
                .join("pods")
                .join(uid)
                .join("logs")
                .join(format!("{container}.log"))
        });
        path.and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    fn kubelets_lock(&self) -> std::sync::MutexGuard<'_, Vec<Kubelet>> {
        self.kubelets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Loses node `index` as a machine that stops does: its link and its pods' links go down
    /// (their addresses stop answering and packets to them are dropped: a peer's connection
    /// gets no reset, it times out), its Node leaves the API (as the node lifecycle controller
    /// removes a node that is gone; no new pod is bound to it), then every process of its pods
    /// is stopped with no grace (SIGTERM and SIGKILL at once) and its pods leave the API (as
    /// the pod garbage collector removes a gone node's pods; at once here, where a cluster
    /// takes its eviction timeout). Unlike a stopped machine, its kubelet still records each
    /// container's exit in the pod's status just before the pod goes. [`Bed::restore_node`]
    /// brings it back, its hostPath and persistent volumes as they were.
    ///
    /// # Errors
    /// No such node, the node lost already, or `ip` failures (the node is then left as it
    /// was, not lost).
    pub async fn lose_node(&self, index: usize) -> anyhow::Result<()> {
        let node = self.nodes.get(index).context("no such node")?;
        let lost = {
            let kubelets = self.kubelets_lock();
            let k = kubelets.get(index).context("no such node")?;
            if k.lost.is_cancelled() {
                bail!("node {} is lost already", node.name);
            }
            k.lost.clone()
        };
        let (fabric, netns, i) = (Arc::clone(&self.fabric), node.netns.clone(), node.index);
        let down =
            tokio::task::spawn_blocking(move || fabric.set_node_links(i, &netns, false)).await?;
        if let Err(e) = down {
            let (fabric, netns) = (Arc::clone(&self.fabric), node.netns.clone());
            let _ =
                tokio::task::spawn_blocking(move || fabric.set_node_links(i, &netns, true)).await;
            return Err(e);
        }
        let _ = self.store.delete(
            &crate::resources::NODES,
            "",
            &node.name,
            &crate::store::DeleteOptions::default(),
        );
        lost.cancel();
        let task = self.kubelets_lock()[index].task.take();
        if let Some(t) = task {
            let _ = t.await;
        }
        tracing::info!(node = %node.name, "node lost");
        Ok(())
    }

    /// Brings a lost node back (a node that is not lost is left as it is): its links up, a
    /// new kubelet registering its Node (the DaemonSet controller then starts its daemon pods
    /// on it again).
    ///
    /// # Errors
    /// No such node, or `ip` failures.
    pub async fn restore_node(&self, index: usize) -> anyhow::Result<()> {
        let node = self.nodes.get(index).context("no such node")?;
        if !self.kubelets_lock()[index].lost.is_cancelled() {
            return Ok(());
        }
        let (fabric, netns, i) = (Arc::clone(&self.fabric), node.netns.clone(), node.index);
        tokio::task::spawn_blocking(move || fabric.set_node_links(i, &netns, true)).await??;
        let mut kubelets = self.kubelets_lock();
        if let Some(old) = kubelets[index].task.take() {
            // Lost while its kubelet was still stopping (an interrupted `lose_node`).
            old.abort();
        }
        kubelets[index] = Kubelet::spawn(node, &self.cancel);
        tracing::info!(node = %node.name, "node back");
        Ok(())
    }

    /// Stops every pod (5 s grace), the kubelets, controllers and API server; removes the
    /// network.
    pub async fn stop(self) {
        self.cancel.cancel();
        let kubelets = std::mem::take(&mut *self.kubelets_lock());
        for t in kubelets.into_iter().filter_map(|k| k.task) {
            let _ = t.await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// `kubectl` reads manifests as YAML 1.1, where an unquoted `0440` is an octal integer; the
/// YAML 1.2 parser here reads it as a string. File modes (`defaultMode`, `mode`) are the only
/// fields where Kubernetes manifests write octal, so those are converted.
fn yaml11_octal_modes(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if (k == "defaultMode" || k == "mode")
                    && let Some(s) = x.as_str()
                    && s.len() > 1
                    && s.starts_with('0')
                    && let Ok(n) = i64::from_str_radix(&s[1..], 8)
                {
                    *x = json!(n);
                } else {
                    yaml11_octal_modes(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(yaml11_octal_modes),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_modes_as_kubectl_reads_them() {
        let mut v: Value = serde_yaml_ng::from_str(
            "volumes:\n- secret: {defaultMode: 0440, items: [{key: a, path: a, mode: 0400}]}\n",
        )
        .unwrap();
        yaml11_octal_modes(&mut v);
        assert_eq!(v["volumes"][0]["secret"]["defaultMode"], 0o440);
        assert_eq!(v["volumes"][0]["secret"]["items"][0]["mode"], 0o400);
    }
}
