//! The API server stand-in over HTTP, against the request and answer shapes of
//! `spark-k8s-api-calls.md` (what Spark 4.3.0's fabric8 client sends and expects) and of
//! Kubernetes' API conventions.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kubebed::api::{ApiConfig, router};
use kubebed::store::Store;
use serde_json::{Value, json};

struct Api {
    base: String,
    store: Arc<Store>,
    http: reqwest::Client,
}

async fn start(config: ApiConfig) -> Api {
    let store = Store::new(1000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(Arc::clone(&store), config);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Api {
        base,
        store,
        http: reqwest::Client::new(),
    }
}

impl Api {
    async fn send(&self, method: &str, path: &str, ct: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", ct).body(b.to_string());
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        let v = r.json().await.unwrap_or(Value::Null);
        (code, v)
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, "", None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send("POST", path, "application/json", Some(body))
            .await
    }
    async fn apply(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(
            "PATCH",
            &format!("{path}?fieldManager=fabric8&force=true"),
            "application/apply-patch+yaml",
            Some(body),
        )
        .await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(
            "DELETE",
            path,
            "application/json",
            Some(json!({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})),
        )
        .await
    }
    /// Opens a watch; returns a receiver of events.
    async fn watch(&self, path_and_query: &str) -> tokio::sync::mpsc::Receiver<Value> {
        let r = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut s = r.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = s.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    if tx
                        .send(serde_json::from_slice(&line).unwrap())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        rx
    }
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no watch event within 10 s")
        .expect("watch ended")
}

fn driver_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "labels": {"spark-app-selector": "spark-0123", "spark-role": "driver"},
        "name": "pi-py-c2f6-driver"},
      "spec": {"containers": [{"name": "spark-kubernetes-driver", "image": "example/spark:4.3.0",
               "args": ["driver"]}], "restartPolicy": "Never"}})
}

#[tokio::test]
async fn spark_cluster_submission_and_garbage_collection() {
    let api = start(ApiConfig::default()).await;
    // Row 1: the driver pod; the answer carries metadata.uid.
    let (code, pod) = api
        .post("/api/v1/namespaces/default/pods", driver_pod())
        .await;
    assert_eq!(code, 201, "{pod}");
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(pod["metadata"]["namespace"], "default");
    assert_eq!(pod["status"]["phase"], "Pending");
    let owner = json!([{"apiVersion": "v1", "kind": "Pod", "controller": true, "name": "pi-py-c2f6-driver", "uid": uid}]);
    // Rows 2-4: server-side apply creates what does not exist (201).
    let (code, svc) = api
        .apply(
            "/api/v1/namespaces/default/services/pi-py-c2f6-driver-svc",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pi-py-c2f6-driver-svc",
                   "labels": {"spark-app-selector": "spark-0123"}, "ownerReferences": owner},
                   "spec": {"clusterIP": "None", "ports": [{"name": "driver-rpc-port", "port": 7078}]}}),
        )
        .await;
    assert_eq!(code, 201, "{svc}");
    let (code, _) = api
        .apply(
            "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/pi-py-c2f6-policy",
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": "pi-py-c2f6-policy", "namespace": "default", "ownerReferences": owner},
                   "spec": {"podSelector": {"matchLabels": {"spark-role": "executor"}}}}),
        )
        .await;
    assert_eq!(code, 201);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "spark-drv-1-conf-map", "namespace": "default", "ownerReferences": owner},
        "data": {"spark.properties": "a=b\n"}, "immutable": true});
    assert_eq!(
        api.apply(
            "/api/v1/namespaces/default/configmaps/spark-drv-1-conf-map",
            cm.clone()
        )
        .await
        .0,
        201
    );
    // Applying again answers 200.
    assert_eq!(
        api.apply(
            "/api/v1/namespaces/default/configmaps/spark-drv-1-conf-map",
            cm
        )
        .await
        .0,
        200
    );
    // Deleting the unbound driver pod removes it at once, and its dependents with it.
    let (code, gone) = api
        .delete("/api/v1/namespaces/default/pods/pi-py-c2f6-driver")
        .await;
    assert_eq!(code, 200);
    assert!(gone["metadata"]["deletionTimestamp"].is_string());
    for p in [
        "/api/v1/namespaces/default/services/pi-py-c2f6-driver-svc",
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/pi-py-c2f6-policy",
        "/api/v1/namespaces/default/configmaps/spark-drv-1-conf-map",
    ] {
        let (code, st) = api.get(p).await;
        assert_eq!(code, 404, "{p}: {st}");
        assert_eq!(st["kind"], "Status");
        assert_eq!(st["reason"], "NotFound");
    }
}

#[tokio::test]
async fn executor_watch_with_selectors_and_graceful_deletion() {
    let api = start(ApiConfig::default()).await;
    let exec = |n: u32, app: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("x-exec-{n}"),
            "labels": {"spark-app-selector": app, "spark-role": "executor", "spark-exec-id": n.to_string()}},
            "spec": {"containers": [{"name": "e", "image": "i"}], "nodeName": "node-a",
                     "terminationGracePeriodSeconds": 30}})
    };
    api.post("/api/v1/namespaces/default/pods", exec(1, "spark-a"))
        .await;
    api.post("/api/v1/namespaces/default/pods", exec(2, "spark-b"))
        .await;
    // Row 12, percent-encoded as fabric8 sends it.
    let mut rx = api
        .watch("/api/v1/namespaces/default/pods?allowWatchBookmarks=true&labelSelector=spark-app-selector%3Dspark-a%2Cspark-role%3Dexecutor%2Cspark-exec-inactive%21%3Dtrue&watch=true")
        .await;
    let ev = next(&mut rx).await;
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "x-exec-1");
    api.post("/api/v1/namespaces/default/pods", exec(3, "spark-a"))
        .await;
    let ev = next(&mut rx).await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("x-exec-3"))
    );
    // Row 19: marking an executor inactive takes it out of the selection: DELETED for this watch.
    let (code, _) = api
        .send("PATCH", "/api/v1/namespaces/default/pods/x-exec-3", "application/strategic-merge-patch+json",
              Some(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"spark-exec-inactive": "true"}}})))
        .await;
    assert_eq!(code, 200);
    let ev = next(&mut rx).await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("x-exec-3"))
    );
    // A bound pod is deleted gracefully: MODIFIED with deletionTimestamp, then DELETED once
    // its kubelet has stopped it.
    let (code, marked) = api.delete("/api/v1/namespaces/default/pods/x-exec-1").await;
    assert_eq!(code, 200);
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    let ev = next(&mut rx).await;
    assert_eq!(ev["type"], "MODIFIED");
    assert!(ev["object"]["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        api.get("/api/v1/namespaces/default/pods/x-exec-1").await.0,
        200
    );
    let uid = marked["metadata"]["uid"].as_str().unwrap();
    api.store
        .remove_terminated(&kubebed::resources::PODS, "default", "x-exec-1", uid)
        .unwrap();
    let ev = next(&mut rx).await;
    assert_eq!(ev["type"], "DELETED");
    assert!(ev["object"]["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        api.get("/api/v1/namespaces/default/pods/x-exec-1").await.0,
        404
    );
    // Rows 22: collection delete answers a PodList of what it deleted.
    let (code, list) = api
        .delete("/api/v1/namespaces/default/pods?labelSelector=spark-app-selector%3Dspark-b%2Cspark-role%3Dexecutor")
        .await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn resume_bookmarks_and_gone() {
    let api = start(ApiConfig {
        bookmark_interval: Duration::from_millis(100),
        ..ApiConfig::default()
    })
    .await;
    let (_, cm) = api
        .post(
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": "a"}, "data": {"k": "1"}}),
        )
        .await;
    let rv = cm["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.post(
        "/api/v1/namespaces/default/configmaps",
        json!({"metadata": {"name": "b"}}),
    )
    .await;
    // Resuming from `rv` replays only what came after it.
    let mut rx = api
        .watch(&format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&allowWatchBookmarks=true"))
        .await;
    let ev = next(&mut rx).await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b"))
    );
    let ev = next(&mut rx).await;
    assert_eq!(ev["type"], "BOOKMARK");
    assert!(
        ev["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > rv.parse().unwrap()
    );
    // After compaction the same resume is 410 Gone, as an ERROR event.
    api.store.compact();
    let mut rx = api
        .watch(&format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}"
        ))
        .await;
    let ev = next(&mut rx).await;
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    // A timeoutSeconds watch ends by itself.
    let mut rx = api
        .watch("/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1")
        .await;
    assert_eq!(next(&mut rx).await["type"], "ADDED");
    assert_eq!(next(&mut rx).await["type"], "ADDED");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn what_is_not_served_answers_as_a_real_server() {
    let api = start(ApiConfig::default()).await;
    let (code, st) = api
        .get("/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors")
        .await;
    assert_eq!((code, st["reason"].as_str()), (404, Some("NotFound")));
    let (code, st) = api
        .send(
            "PUT",
            "/api/v1/namespaces/default/pods",
            "application/json",
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );
    let (code, st) = api
        .send(
            "PATCH",
            "/api/v1/namespaces/default",
            "application/json-patch+json",
            Some(json!([])),
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let (code, st) = api
        .post(
            "/api/v1/namespaces/nope/configmaps",
            json!({"metadata": {"name": "a"}}),
        )
        .await;
    assert_eq!((code, st["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(st["message"], "namespaces \"nope\" not found");
    let (code, st) = api
        .post(
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": "Bad_Name"}}),
        )
        .await;
    assert_eq!((code, st["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = api
        .post(
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": "a"}}),
        )
        .await;
    assert_eq!(code, 201);
    let (code, st) = api
        .post(
            "/api/v1/namespaces/default/configmaps",
            json!({"metadata": {"name": "a"}}),
        )
        .await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("AlreadyExists")));
    // A stale resourceVersion on replace is a conflict.
    let (code, st) = api
        .send(
            "PUT",
            "/api/v1/namespaces/default/configmaps/a",
            "application/json",
            Some(json!({"metadata": {"name": "a", "resourceVersion": "1"}})),
        )
        .await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("Conflict")));
    // Secrets: stringData becomes base64 data.
    let (code, s) = api
        .post(
            "/api/v1/namespaces/default/secrets",
            json!({"metadata": {"name": "s"}, "stringData": {"token": "abc"}}),
        )
        .await;
    assert_eq!(code, 201);
    assert_eq!(s["data"]["token"], "YWJj");
    assert!(s.get("stringData").is_none());
    let (code, v) = api.get("/version").await;
    assert_eq!(code, 200);
    assert_eq!(v["major"], "1");
}

#[tokio::test]
async fn an_outage_ends_watches_and_answers_503_until_it_is_over() {
    let config = ApiConfig::default();
    let outage = config.outage.clone();
    let api = start(config).await;
    let mut watch = api
        .http
        .get(format!("{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=290&allowWatchBookmarks=true", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    outage.set(true);
    let end = tokio::time::timeout(Duration::from_secs(10), watch.chunk())
        .await
        .expect("the watch should end with the outage");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let (code, body) = api
        .send("GET", "/api/v1/namespaces/default/configmaps", "", None)
        .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (503, Some("ServiceUnavailable"))
    );
    outage.set(false);
    let (code, _) = api
        .send("GET", "/api/v1/namespaces/default/configmaps", "", None)
        .await;
    assert_eq!(code, 200);
}

/// What a node's driver watch relies on: a watch resumed from a `resourceVersion` with a
/// set-based selector replays only the selected objects' changes after it (the real server's
/// watch cache filters its history by the new selector), and an object whose labels leave the
/// selection is `DELETED` for that watch.
#[tokio::test]
async fn a_resumed_watch_with_a_set_based_selector_replays_the_selected_changes() {
    let api = start(ApiConfig::default()).await;
    let pod = |name: &str, app: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name,
            "labels": {"spark-app-selector": app, "spark-role": "driver"}},
          "spec": {"containers": [{"name": "c", "image": "i"}]}})
    };
    let (_, a) = api
        .post("/api/v1/namespaces/default/pods", pod("a", "spark-a"))
        .await;
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    api.post("/api/v1/namespaces/default/pods", pod("b", "spark-b"))
        .await;
    api.post("/api/v1/namespaces/default/pods", pod("c", "spark-c"))
        .await;
    let sel = "spark-role%3Ddriver%2Cspark-app-selector%20in%20(spark-a%2Cspark-b)";
    let mut rx = api
        .watch(&format!(
            "/api/v1/pods?watch=true&resourceVersion={rv}&labelSelector={sel}"
        ))
        .await;
    let ev = next(&mut rx).await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b")),
        "c is not selected, a is older than the version resumed from"
    );
    // b's label changes to an application not selected: DELETED for this watch.
    api.send(
        "PATCH",
        "/api/v1/namespaces/default/pods/b",
        "application/merge-patch+json",
        Some(json!({"metadata": {"labels": {"spark-app-selector": "spark-z"}}})),
    )
    .await;
    let ev = next(&mut rx).await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("b"))
    );
    // notin and exists select as the real server does.
    let (_, list) = api
        .get("/api/v1/pods?labelSelector=spark-app-selector%20notin%20(spark-a),spark-role")
        .await;
    let mut names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["b", "c"]);
}
