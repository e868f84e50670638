//! Pods on a real bed: own addresses in their own network namespaces, reachable across nodes,
//! volumes and environment as a kubelet provides them, graceful deletion, and an address that
//! stops answering once its pod is gone; Deployments and DaemonSets rolling out a changed
//! template ([`rollouts`]); a node lost and brought back ([`node_loss`]); readiness probes and
//! `preStop` sleeps ([`readiness`]). Needs root and network namespaces.

mod node_loss;
mod readiness;
mod rollouts;

use std::time::Duration;

use kubebed::resources::PODS;
use serde_json::json;

use kubebed::testing::{apply_dir, bed_with, images, manifest, phase};

const SERVER: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: server, labels: { app: server } }
spec:
  nodeName: node-0
  terminationGracePeriodSeconds: 5
  securityContext: { runAsUser: 185, runAsGroup: 185, fsGroup: 2000 }
  containers:
    - name: http
      image: debian:12
      command: ["/usr/bin/python3", "-c"]
      args:
        - |
          import http.server, os, signal, sys
          signal.signal(signal.SIGTERM, lambda *a: (print("got SIGTERM", flush=True), sys.exit(0)))
          body = (os.environ["GREETING"] + "|" + open("/etc/greeting/text").read() + "|" + os.environ["POD_IP"] + "|" + str(os.getuid()) + "|" + open("/etc/hosts").read()).encode()
          class H(http.server.BaseHTTPRequestHandler):
              def do_GET(self):
                  self.send_response(200); self.end_headers(); self.wfile.write(body)
          print("serving", flush=True)
          http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
      env:
        - { name: POD_IP, valueFrom: { fieldRef: { fieldPath: status.podIP } } }
        - { name: GREETING, valueFrom: { secretKeyRef: { name: greeting, key: word } } }
      volumeMounts:
        - { name: text, mountPath: /etc/greeting, readOnly: true }
  volumes:
    - name: text
      configMap: { name: greeting-text }
---
apiVersion: v1
kind: Service
metadata: { name: server }
spec:
  selector: { app: server }
  ports: [{ port: 8080 }]
"#;

#[tokio::test]
#[ignore = "needs root and network namespaces (scripts/test.sh runs it)"]
async fn pods_get_addresses_volumes_env_and_stop_answering_when_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let bed = bed_with(2, images(), dir.path()).await;
    bed.apply(SERVER, "default").unwrap();
    // The pod waits for its Secret and ConfigMap, as on a cluster.
    let p = bed.store.get(&PODS, "default", "server").unwrap();
    assert_eq!(phase(Some(&p)), "Pending");
    bed.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: greeting}\nstringData: {word: hello}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: greeting-text}\ndata: {text: world}\n",
        "default",
    )
    .unwrap();
    let p = bed
        .wait_for(&PODS, "default", "server", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        })
        .await
        .unwrap()
        .unwrap();
    let ip = p["status"]["podIP"].as_str().unwrap().to_string();
    assert_ne!(ip, p["status"]["hostIP"].as_str().unwrap());
    // From the host, once the server listens.
    let url = format!("http://{ip}:8080/");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut body = None;
    for _ in 0..100 {
        if let Ok(r) = client.get(&url).send().await {
            body = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = body.unwrap_or_else(|| {
        panic!(
            "{url} never answered; log: {}",
            bed.log("default", "server", "http")
        )
    });
    let parts: Vec<&str> = body.splitn(5, '|').collect();
    assert_eq!(&parts[..4], &["hello", "world", ip.as_str(), "185"]);
    // Its /etc/hosts names the Service (refreshed in place once the endpoint was known).
    // From a pod on the other node, by the Service's name.
    let client_pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"nodeName": "node-1", "restartPolicy": "Never", "containers": [{"name": "c", "image": "debian",
            "command": ["/usr/bin/python3", "-c",
                "import urllib.request; print(urllib.request.urlopen('http://server.default.svc.cluster.local:8080/', timeout=5).read().decode()[:5])"]}]}});
    bed.store.create(&PODS, "default", client_pod).unwrap();
    let c = bed
        .wait_for(&PODS, "default", "client", Duration::from_secs(30), |p| {
            matches!(phase(p), "Succeeded" | "Failed")
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        phase(Some(&c)),
        "Succeeded",
        "{}",
        bed.log("default", "client", "c")
    );
    assert_eq!(bed.log("default", "client", "c").trim(), "hello");
    assert_eq!(
        c["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    // Deleting: SIGTERM, the pod leaves, its address stops answering.
    bed.store
        .delete(
            &PODS,
            "default",
            "server",
            &kubebed::store::DeleteOptions::default(),
        )
        .unwrap();
    bed.wait_for(&PODS, "default", "server", Duration::from_secs(30), |p| {
        p.is_none()
    })
    .await
    .unwrap();
    let r = client.get(&url).send().await;
    assert!(r.is_err(), "{url} still answers after its pod was deleted");
    bed.stop().await;
}

#[tokio::test]
#[ignore = "needs root and network namespaces (scripts/test.sh runs it)"]
async fn init_containers_run_in_order_and_native_sidecars_stay_until_the_main_container_ends() {
    let dir = tempfile::tempdir().unwrap();
    let bed = bed_with(1, images(), dir.path()).await;
    // Each step appends to a shared emptyDir; the sidecar keeps appending until stopped.
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: { name: ordered }
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  initContainers:
    - { name: first, image: debian, command: ["/bin/sh", "-c", "echo first >> /shared/log"],
        volumeMounts: [{ name: shared, mountPath: /shared }] }
    - name: sidecar
      image: debian
      restartPolicy: Always
      command: ["/bin/sh", "-c", "echo sidecar-up >> /shared/log; trap 'echo sidecar-term >> /shared/log; exit 0' TERM; while true; do sleep 0.1; done"]
      volumeMounts: [{ name: shared, mountPath: /shared }]
    # Started, not necessarily past its first line (no startupProbe): wait for it, bounded.
    - { name: second, image: debian, command: ["/bin/sh", "-c", "for i in $(seq 100); do grep -q sidecar-up /shared/log && break; sleep 0.05; done; grep -q sidecar-up /shared/log && echo second >> /shared/log"],
        volumeMounts: [{ name: shared, mountPath: /shared }] }
  containers:
    - { name: main, image: debian, command: ["/bin/sh", "-c", "echo main >> /shared/log; cat /shared/log"],
        volumeMounts: [{ name: shared, mountPath: /shared }] }
  volumes:
    - { name: shared, emptyDir: {} }
"#;
    bed.apply(pod, "default").unwrap();
    let p = bed
        .wait_for(&PODS, "default", "ordered", Duration::from_secs(30), |p| {
            matches!(phase(p), "Succeeded" | "Failed")
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(phase(Some(&p)), "Succeeded", "{}", p["status"]);
    assert_eq!(
        bed.log("default", "ordered", "main")
            .lines()
            .collect::<Vec<_>>(),
        ["first", "sidecar-up", "second", "main"]
    );
    // The sidecar was stopped with SIGTERM once the main container ended.
    let inits = p["status"]["initContainerStatuses"].as_array().unwrap();
    let sidecar = inits.iter().find(|c| c["name"] == "sidecar").unwrap();
    assert_eq!(sidecar["state"]["terminated"]["exitCode"], 0, "{sidecar}");
    bed.stop().await;
}

#[tokio::test]
#[ignore = "needs root and network namespaces (scripts/test.sh runs it)"]
async fn the_nvme_raid0_daemonset_runs_as_shipped_on_labelled_nodes_only() {
    let dir = tempfile::tempdir().unwrap();
    let bed = bed_with(2, images(), dir.path()).await;
    bed.store
        .update(&kubebed::resources::NODES, "", "node-0", |n| {
            n["metadata"]["labels"]["spark.example.com/nvme-raid0"] = json!("true");
            Ok(())
        })
        .unwrap();
    bed.apply(
        &manifest("k8s/shuffle-service/nvme-raid0/00-namespace.yaml"),
        "default",
    )
    .unwrap();
    bed.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: shuffle-admin-tokens}\nstringData: {tokens: 0123456789abcdef0123456789abcdef}\n",
        "spark-shuffle",
    )
    .unwrap();
    apply_dir(&bed, "k8s/shuffle-service/nvme-raid0", "default", |t| t);
    let ready = bed
        .wait_for(
            &kubebed::resources::DAEMONSETS,
            "spark-shuffle",
            "shuffle-service",
            Duration::from_secs(60),
            |d| {
                d.is_some_and(|d| {
                    d["status"]["numberReady"].as_u64() == Some(1)
                        && d["status"]["desiredNumberScheduled"].as_u64() == Some(1)
                })
            },
        )
        .await;
    assert!(ready.is_ok(), "{ready:?}");
    let pods = bed
        .store
        .list(
            &PODS,
            Some("spark-shuffle"),
            &Default::default(),
            &Default::default(),
        )
        .0;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["spec"]["nodeName"], "node-0");
    let url = format!("http://{}:7339/healthz", bed.nodes[0].netns.ip);
    let mut up = false;
    for _ in 0..100 {
        if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(up, "{url} never answered");
    // The volume is on the array's mount point, as the manifest says.
    assert!(
        bed.nodes[0]
            .roots
            .host
            .join("mnt/k8s-disks/0/spark/shuffle-state")
            .is_dir()
    );
    bed.stop().await;
}
