//! Template changes rolled out on a real bed: a Deployment's pods replaced step by step within
//! `maxSurge` and `maxUnavailable`, then all at once with `Recreate`; a DaemonSet's node by
//! node, then only where a pod is deleted with `OnDelete`. The pods ignore SIGTERM, so each
//! stays terminating for its grace period (1 s) as a draining server would. A watcher checks
//! every state the store goes through against the strategy's bounds.

use std::sync::Arc;
use std::time::Duration;

use kubebed::bed::Bed;
use kubebed::resources::{DAEMONSETS, DEPLOYMENTS, PODS, Resource};
use kubebed::rollout::{daemonset, deployment, template_hash};
use kubebed::selector::Selector;
use kubebed::store::Store;
use kubebed::testing::{bed_with, images, rollout_status};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: web }
spec:
  replicas: 4
  minReadySeconds: 1
  selector: { matchLabels: { app: web } }
  strategy: { rollingUpdate: { maxSurge: 1, maxUnavailable: 1 } }
  template:
    metadata: { labels: { app: web }, annotations: { rev: "1" } }
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: c
          image: debian
          command: ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
"#;

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: { name: agent }
spec:
  minReadySeconds: 1
  selector: { matchLabels: { app: agent } }
  template:
    metadata: { labels: { app: agent }, annotations: { rev: "1" } }
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: c
          image: debian
          command: ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
"#;

/// The longest a rollout may take here.
const ROLLOUT: Duration = Duration::from_secs(60);

fn ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn terminating(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_string()
}

fn terminal(p: &Value) -> bool {
    matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

fn label<'a>(p: &'a Value, key: &str) -> &'a str {
    p["metadata"]["labels"][key].as_str().unwrap_or_default()
}

fn pods(store: &Store, selector: &str) -> Vec<Value> {
    store
        .list(
            &PODS,
            Some("default"),
            &Selector::labels(selector).unwrap(),
            &Selector::default(),
        )
        .0
}

/// Checks `check` against the pods matching `selector` after every change of the store, until
/// `stop` (or [`ROLLOUT`] twice over); returns how many states it checked, or the first that
/// failed with why.
fn watch(
    store: Arc<Store>,
    selector: &'static str,
    stop: CancellationToken,
    check: impl Fn(&[Value]) -> Result<(), String> + Send + 'static,
) -> JoinHandle<Result<usize, String>> {
    let mut events = store.subscribe();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + ROLLOUT * 2;
        let mut checked = 0;
        loop {
            let now = pods(&store, selector);
            check(&now).map_err(|why| format!("{why}: {now:#?}"))?;
            checked += 1;
            tokio::select! {
                () = stop.cancelled() => return Ok(checked),
                () = tokio::time::sleep_until(deadline) => return Ok(checked),
                _ = events.recv() => {}
            }
        }
    })
}

/// Waits until the rollout is complete as `kubectl rollout status` sees it.
async fn rolled_out(bed: &Bed, res: &Resource, name: &str) -> Value {
    match rollout_status(bed, res, "default", name, ROLLOUT).await {
        Ok(d) => d,
        Err(e) => panic!("{e}\n{:#?}", pods(&bed.store, "app")),
    }
}

/// Waits until the controller has seen the object's current generation and `done` holds.
async fn wait_status(
    bed: &Bed,
    res: &Resource,
    name: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let got = bed
        .wait_for(res, "default", name, ROLLOUT, |d| {
            d.is_some_and(|d| {
                d["status"]["observedGeneration"] == d["metadata"]["generation"] && done(d)
            })
        })
        .await;
    match got {
        Ok(d) => d.unwrap(),
        Err(e) => panic!("{e}\n{:#?}", pods(&bed.store, "app")),
    }
}

/// Waits until exactly `n` pods match `selector` (the old ones' grace periods over).
async fn settled(bed: &Bed, selector: &str, n: usize) {
    let mut events = bed.store.subscribe();
    let deadline = tokio::time::Instant::now() + ROLLOUT;
    loop {
        let now = pods(&bed.store, selector);
        if now.len() == n {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => panic!("never {n} pods: {now:#?}"),
            _ = events.recv() => {}
        }
    }
}

/// Changes the template's `rev` annotation (as an edited manifest applied would); returns the
/// new template's hash.
fn set_rev(bed: &Bed, res: &Resource, name: &str, rev: u32) -> String {
    let changed = bed
        .store
        .update(res, "default", name, |o| {
            o["spec"]["template"]["metadata"]["annotations"]["rev"] = json!(rev.to_string());
            Ok(())
        })
        .unwrap();
    template_hash(&changed["spec"]["template"])
}

#[tokio::test]
#[ignore = "needs root and network namespaces (scripts/test.sh runs it)"]
async fn a_deployment_rolls_within_surge_and_unavailability_then_recreates() {
    let dir = tempfile::tempdir().unwrap();
    let bed = bed_with(2, images(), dir.path()).await;
    bed.apply(DEPLOYMENT, "default").unwrap();
    let first = rolled_out(&bed, &DEPLOYMENTS, "web").await;
    let v1 = template_hash(&first["spec"]["template"]);
    let before = pods(&bed.store, "app=web");
    assert_eq!(before.len(), 4);
    assert!(
        before
            .iter()
            .all(|p| label(p, deployment::HASH_LABEL) == v1)
    );

    // Rolling: never more than 4 + 1 pods besides those being deleted, never more than one of
    // the 4 unready, and old and new pods side by side along the way.
    let stop = CancellationToken::new();
    let both = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_both = Arc::clone(&both);
    let old = v1.clone();
    let watcher = watch(
        Arc::clone(&bed.store),
        "app=web",
        stop.clone(),
        move |pods| {
            let live: Vec<&Value> = pods
                .iter()
                .filter(|p| !terminating(p) && !terminal(p))
                .collect();
            if live.len() > 5 {
                return Err(format!("{} pods", live.len()));
            }
            let unready = 4_usize.saturating_sub(live.iter().filter(|p| ready(p)).count());
            if unready > 1 {
                return Err(format!("{unready} unready"));
            }
            if live.iter().any(|p| label(p, deployment::HASH_LABEL) == old)
                && live.iter().any(|p| label(p, deployment::HASH_LABEL) != old)
            {
                seen_both.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        },
    );
    let started = tokio::time::Instant::now();
    let v2 = set_rev(&bed, &DEPLOYMENTS, "web", 2);
    assert_ne!(v1, v2);
    let done = rolled_out(&bed, &DEPLOYMENTS, "web").await;
    let took = started.elapsed();
    stop.cancel();
    let checked = watcher.await.unwrap().unwrap();
    assert!(
        both.load(std::sync::atomic::Ordering::Relaxed),
        "no step had old and new pods"
    );
    assert_eq!(done["status"]["readyReplicas"], 4);
    assert!(
        done["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable"),
        "{}",
        done["status"]
    );
    let live: Vec<Value> = pods(&bed.store, "app=web")
        .into_iter()
        .filter(|p| !terminating(p))
        .collect();
    assert_eq!(live.len(), 4);
    assert!(live.iter().all(|p| label(p, deployment::HASH_LABEL) == v2));
    assert!(live.iter().all(|p| {
        p["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("web-{v2}-"))
    }));
    println!("rolling update of 4 pods: {took:?}, {checked} states checked");
    settled(&bed, "app=web", 4).await;

    // Recreate: every old pod goes, and no new pod exists before the last old one has stopped.
    bed.store
        .update(&DEPLOYMENTS, "default", "web", |d| {
            d["spec"]["strategy"] = json!({"type": "Recreate"});
            Ok(())
        })
        .unwrap();
    let stop = CancellationToken::new();
    let old = v2.clone();
    let watcher = watch(
        Arc::clone(&bed.store),
        "app=web",
        stop.clone(),
        move |pods| {
            // An old pod counts until its containers have stopped (a terminal phase), as
            // `oldPodsRunning` counts them.
            let old_left = pods
                .iter()
                .any(|p| label(p, deployment::HASH_LABEL) == old && !terminal(p));
            let new_made = pods.iter().any(|p| label(p, deployment::HASH_LABEL) != old);
            if old_left && new_made {
                return Err("a new pod beside an old one".into());
            }
            Ok(())
        },
    );
    let started = tokio::time::Instant::now();
    let v3 = set_rev(&bed, &DEPLOYMENTS, "web", 3);
    rolled_out(&bed, &DEPLOYMENTS, "web").await;
    let took = started.elapsed();
    stop.cancel();
    let checked = watcher.await.unwrap().unwrap();
    let live = pods(&bed.store, "app=web");
    assert_eq!(live.len(), 4);
    assert!(
        live.iter()
            .all(|p| label(p, deployment::HASH_LABEL) == v3 && ready(p))
    );
    println!("recreate of 4 pods: {took:?}, {checked} states checked");
    bed.stop().await;
}

#[tokio::test]
#[ignore = "needs root and network namespaces (scripts/test.sh runs it)"]
async fn a_daemonset_rolls_node_by_node_then_on_delete() {
    let dir = tempfile::tempdir().unwrap();
    let bed = bed_with(2, images(), dir.path()).await;
    bed.apply(DAEMONSET, "default").unwrap();
    let first = rolled_out(&bed, &DAEMONSETS, "agent").await;
    assert_eq!(first["status"]["desiredNumberScheduled"], 2);
    let v1 = template_hash(&first["spec"]["template"]);
    let before = pods(&bed.store, "app=agent");
    assert_eq!(before.len(), 2);

    // maxUnavailable 1, no surge: at most one node without a ready pod, never two pods on a
    // node (a node's new pod waits until the old one, terminating for 1 s, is gone).
    let stop = CancellationToken::new();
    let watcher = watch(Arc::clone(&bed.store), "app=agent", stop.clone(), |pods| {
        let mut without = 0;
        for node in ["node-0", "node-1"] {
            let here: Vec<&Value> = pods
                .iter()
                .filter(|p| p["spec"]["nodeName"] == node && !terminal(p))
                .collect();
            if here.len() > 1 {
                return Err(format!("{} pods on {node}", here.len()));
            }
            without += usize::from(!here.iter().any(|p| ready(p) && !terminating(p)));
        }
        if without > 1 {
            return Err(format!("{without} nodes without a ready pod"));
        }
        Ok(())
    });
    let started = tokio::time::Instant::now();
    let v2 = set_rev(&bed, &DAEMONSETS, "agent", 2);
    let done = rolled_out(&bed, &DAEMONSETS, "agent").await;
    let took = started.elapsed();
    stop.cancel();
    let checked = watcher.await.unwrap().unwrap();
    assert_eq!(done["status"]["numberReady"], 2);
    let after = pods(&bed.store, "app=agent");
    assert_eq!(after.len(), 2);
    for p in &after {
        assert_eq!(label(p, daemonset::HASH_LABEL), v2);
        assert!(
            before
                .iter()
                .all(|b| b["metadata"]["uid"] != p["metadata"]["uid"]),
            "{p}"
        );
    }
    assert_ne!(v1, v2);
    println!("rolling update of 2 nodes: {took:?}, {checked} states checked");

    // OnDelete: a changed template replaces only the pod that is deleted.
    bed.store
        .update(&DAEMONSETS, "default", "agent", |d| {
            d["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
            Ok(())
        })
        .unwrap();
    let v3 = set_rev(&bed, &DAEMONSETS, "agent", 3);
    // A node's pod, not one still on its way out.
    let on = |node: &str| {
        pods(&bed.store, "app=agent")
            .into_iter()
            .find(|p| p["spec"]["nodeName"] == node && !terminating(p))
            .unwrap()
    };
    let kept = on("node-1");
    let replaced = on("node-0");
    bed.store
        .delete(
            &PODS,
            "default",
            replaced["metadata"]["name"].as_str().unwrap(),
            &kubebed::store::DeleteOptions::default(),
        )
        .unwrap();
    let d = wait_status(&bed, &DAEMONSETS, "agent", |d| {
        d["status"]["updatedNumberScheduled"] == 1 && d["status"]["numberAvailable"] == 2
    })
    .await;
    let fresh = on("node-0");
    assert_eq!(label(&fresh, daemonset::HASH_LABEL), v3, "{d}");
    assert_eq!(on("node-1")["metadata"]["uid"], kept["metadata"]["uid"]);
    assert_eq!(label(&on("node-1"), daemonset::HASH_LABEL), v2);
    bed.stop().await;
}
