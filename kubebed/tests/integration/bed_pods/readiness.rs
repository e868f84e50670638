//! Readiness as a kubelet reports it: a pod whose HTTP readiness probe fails is Running but
//! not Ready and out of its Service's endpoints, in once the probe passes and out again when it
//! fails; on deletion it leaves the endpoints at once, still answers through its `preStop`
//! sleep, and only then gets SIGTERM.

use std::time::{Duration, SystemTime};

use kubebed::bed::Bed;
use kubebed::resources::PODS;
use kubebed::testing::{bed_with, images, phase};
use serde_json::Value;

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: web, labels: { app: web } }
spec:
  nodeName: node-0
  terminationGracePeriodSeconds: 10
  containers:
    - name: http
      image: debian
      command: ["/usr/bin/python3", "-c"]
      args:
        - |
          import http.server, signal, sys, time
          def term(*a):
              open("/out/term", "w").write(repr(time.time()))
              sys.exit(0)
          signal.signal(signal.SIGTERM, term)
          ready = [False]
          class H(http.server.BaseHTTPRequestHandler):
              def do_GET(self):
                  self.send_response(200 if ready[0] else 503); self.end_headers()
              def do_POST(self):
                  ready[0] = self.path == "/ready"
                  self.send_response(204); self.end_headers()
          http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
      ports: [{ name: http, containerPort: 8080 }]
      readinessProbe: { httpGet: { path: /readyz, port: http }, periodSeconds: 1, timeoutSeconds: 3, failureThreshold: 1 }
      lifecycle: { preStop: { sleep: { seconds: 3 } } }
      volumeMounts: [{ name: out, mountPath: /out }]
  volumes:
    - { name: out, hostPath: { path: /probe-test, type: DirectoryOrCreate } }
---
apiVersion: v1
kind: Service
metadata: { name: web }
spec:
  selector: { app: web }
  ports: [{ port: 8080 }]
"#;

fn ready(p: Option<&Value>) -> bool {
    p.and_then(|p| p["status"]["conditions"].as_array())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Whether the Service's endpoints in the pods' `/etc/hosts` list `ip`.
fn listed(dir: &std::path::Path, uid: &str, ip: &str) -> bool {
    let hosts = dir.join("nodes/node-0/pods").join(uid).join("etc/hosts");
    std::fs::read_to_string(hosts)
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(&format!("{ip}\tweb.default.svc")))
}

/// Waits, bounded, until the endpoints do (or do not) list `ip`.
async fn endpoints_list(dir: &std::path::Path, uid: &str, ip: &str, want: bool) {
    for _ in 0..100 {
        if listed(dir, uid, ip) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the endpoints never {} {ip}",
        if want { "listed" } else { "dropped" }
    );
}

async fn wait_ready(bed: &Bed, want: bool) {
    bed.wait_for(&PODS, "default", "web", Duration::from_secs(20), |p| {
        ready(p) == want
    })
    .await
    .unwrap_or_else(|e| panic!("web never became ready={want}: {e}"));
}

#[tokio::test]
#[ignore = "needs root and network namespaces (scripts/test.sh runs it)"]
async fn readiness_probes_gate_endpoints_and_pre_stop_sleeps_before_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let bed = bed_with(1, images(), dir.path()).await;
    bed.apply(WEB, "default").unwrap();
    let p = bed
        .wait_for(&PODS, "default", "web", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        })
        .await
        .unwrap()
        .unwrap();
    let (ip, uid) = (
        p["status"]["podIP"].as_str().unwrap().to_owned(),
        p["metadata"]["uid"].as_str().unwrap().to_owned(),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = format!("http://{ip}:8080");
    let mut answering = false;
    for _ in 0..100 {
        if client.get(format!("{url}/readyz")).send().await.is_ok() {
            answering = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answering, "{}", bed.log("default", "web", "http"));
    // Running, answering 503: not Ready, not in the endpoints.
    assert!(!ready(bed.store.get(&PODS, "default", "web").ok().as_ref()));
    assert!(!listed(dir.path(), &uid, &ip));

    let set = |path: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client.post(format!("{url}{path}")).send().await.unwrap();
        }
    };
    set("/ready").await;
    wait_ready(&bed, true).await;
    endpoints_list(dir.path(), &uid, &ip, true).await;
    set("/unready").await;
    wait_ready(&bed, false).await;
    endpoints_list(dir.path(), &uid, &ip, false).await;
    set("/ready").await;
    wait_ready(&bed, true).await;
    endpoints_list(dir.path(), &uid, &ip, true).await;

    // Deleted: still serving through the preStop sleep, out of the endpoints at once, and
    // SIGTERM only once the sleep is over.
    let deleted = SystemTime::now();
    bed.store
        .delete(
            &PODS,
            "default",
            "web",
            &kubebed::store::DeleteOptions::default(),
        )
        .unwrap();
    let during = client.get(format!("{url}/readyz")).send().await;
    assert!(
        during.is_ok_and(|r| r.status() == 200),
        "the pod stopped serving before its preStop sleep ended"
    );
    endpoints_list(dir.path(), &uid, &ip, false).await;
    bed.wait_for(&PODS, "default", "web", Duration::from_secs(30), |p| {
        p.is_none()
    })
    .await
    .unwrap();
    // The server wrote when SIGTERM came (a SIGKILL would have left no file).
    let term = dir.path().join("nodes/node-0/host/probe-test/term");
    let at: f64 = std::fs::read_to_string(&term)
        .unwrap_or_else(|e| panic!("{}: {e}: no SIGTERM was handled", term.display()))
        .parse()
        .unwrap();
    let deleted = deleted
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        at - deleted >= 3.0,
        "SIGTERM came {:.2} s after the deletion, within the 3 s preStop sleep",
        at - deleted
    );
    bed.stop().await;
}
