//! A node lost as a stopped machine is (`Bed::lose_node`): its pods' processes killed with no
//! grace (a pod that ignores SIGTERM goes at once), its pods and Node gone from the API, its
//! pods' addresses silent; then brought back, its DaemonSet pod started on it again.

use std::time::Duration;

use kubebed::resources::{DAEMONSETS, NODES, PODS};
use kubebed::selector::Selector;
use kubebed::testing::{bed_with, images, phase};
use serde_json::Value;

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: { name: agent }
spec:
  selector: { matchLabels: { app: agent } }
  template:
    metadata: { labels: { app: agent } }
    spec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: c
          image: debian
          command: ["/usr/bin/python3", "-c"]
          args:
            - |
              import http.server, signal
              signal.signal(signal.SIGTERM, signal.SIG_IGN)
              class H(http.server.BaseHTTPRequestHandler):
                  def do_GET(self):
                      self.send_response(200); self.end_headers(); self.wfile.write(b"up")
              http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

fn agents(bed: &kubebed::bed::Bed) -> Vec<Value> {
    bed.store
        .list(
            &PODS,
            Some("default"),
            &Selector::labels("app=agent").unwrap(),
            &Selector::default(),
        )
        .0
}

async fn answers(url: &str) -> bool {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for _ in 0..100 {
        if http.get(url).send().await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn two_running(bed: &kubebed::bed::Bed) -> Vec<Value> {
    bed.wait_for(
        &DAEMONSETS,
        "default",
        "agent",
        Duration::from_secs(60),
        |d| d.is_some_and(|d| d["status"]["numberReady"] == 2),
    )
    .await
    .unwrap();
    let pods = agents(bed);
    assert_eq!(pods.len(), 2, "{pods:#?}");
    assert!(
        pods.iter().all(|p| phase(Some(p)) == "Running"),
        "{pods:#?}"
    );
    pods
}

#[tokio::test]
#[ignore = "needs root and network namespaces (scripts/test.sh runs it)"]
async fn a_lost_node_takes_its_pods_at_once_and_comes_back_with_its_daemon_pod() {
    let dir = tempfile::tempdir().unwrap();
    let bed = bed_with(2, images(), dir.path()).await;
    bed.apply(DAEMONSET, "default").unwrap();
    let pods = two_running(&bed).await;
    let on = |pods: &[Value], node: &str| {
        pods.iter()
            .find(|p| p["spec"]["nodeName"] == node)
            .cloned()
            .unwrap()
    };
    let lost = on(&pods, "node-1");
    let url = format!("http://{}:8080/", lost["status"]["podIP"].as_str().unwrap());
    assert!(answers(&url).await, "{url} never answered");

    // The pod ignores SIGTERM with a 30 s grace: a lost node does not wait for it.
    let started = tokio::time::Instant::now();
    bed.lose_node(1).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let left = agents(&bed);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["spec"]["nodeName"], "node-0");
    assert!(bed.store.get(&NODES, "", "node-1").is_err());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(http.get(&url).send().await.is_err(), "{url} still answers");
    assert!(bed.lose_node(1).await.is_err(), "a node is lost only once");

    bed.restore_node(1).await.unwrap();
    let back = two_running(&bed).await;
    let fresh = on(&back, "node-1");
    assert_ne!(fresh["metadata"]["uid"], lost["metadata"]["uid"]);
    let url = format!(
        "http://{}:8080/",
        fresh["status"]["podIP"].as_str().unwrap()
    );
    assert!(
        answers(&url).await,
        "{url} never answered after the node came back"
    );
    bed.stop().await;
}
