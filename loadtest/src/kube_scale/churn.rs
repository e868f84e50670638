//! The churn: Spark jobs as the API server sees them, written straight into the stand-in's
//! store (the harness plays Spark's driver, the scheduler and the kubelets). A job's driver
//! pod is created on a node and runs; its executors are created on other nodes (each one's
//! data arrives on its node); dynamic allocation deletes one executor and creates another
//! every so often; at its end the driver pod succeeds, its executors are deleted, and the
//! driver pod is deleted a while later. Pods carry an environment the size Spark gives them
//! (a driver's Spark configuration, an executor's settings), so that bytes are realistic.

use std::sync::Arc;

use anyhow::Context as _;
use kubebed::resources::PODS;
use kubebed::store::{DeleteOptions, Store};
use serde_json::{Value, json};

/// A small deterministic generator (xorshift64*): the same seed, the same churn.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Namespaces the jobs are spread over.
pub(crate) const NAMESPACES: usize = 8;

pub(crate) fn namespace(job: usize) -> String {
    format!("spark-{}", job % NAMESPACES)
}

/// An API store holding the namespaces the jobs run in.
pub(crate) fn store() -> anyhow::Result<Arc<Store>> {
    let store = Store::new(1_000_000);
    for i in 0..NAMESPACES {
        store
            .create(
                &kubebed::resources::NAMESPACES,
                "",
                json!({"metadata": {"name": namespace(i)}}),
            )
            .context("namespace")?;
    }
    Ok(store)
}

pub(crate) fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

pub(crate) fn app_id(job: usize) -> String {
    format!("spark-{job:08x}0123456789abcdef01234567")
}

/// Spark's configuration as a driver pod carries it (about 4 KiB).
fn spark_env(app: &str, n: usize) -> Vec<Value> {
    let mut env: Vec<Value> = (0..n)
        .map(|i| {
            json!({"name": format!("SPARK_CONF_{i:02}"),
                   "value": format!("spark.kubernetes.setting.number{i}=/opt/spark/work-dir/{app}/value-{i}")})
        })
        .collect();
    env.push(json!({"name": "SPARK_APPLICATION_ID", "value": app}));
    env
}

fn pod(ns: &str, name: &str, app: &str, role: &str, node: &str, env: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"spark-app-selector": app, "spark-role": role,
                       "app.kubernetes.io/managed-by": "spark", "spark-version": "4.0.0"},
            "annotations": {"example.com/team": "analytics"}},
        "spec": {"nodeName": node, "restartPolicy": "Never", "serviceAccountName": "spark",
            "containers": [{"name": format!("spark-kubernetes-{role}"),
                "image": "registry.example.com/spark:4.0.0", "env": env,
                "resources": {"requests": {"cpu": "1", "memory": "4Gi"},
                              "limits": {"memory": "4505Mi"}},
                "volumeMounts": [{"name": "spark-local-dir-1", "mountPath": "/var/data/spark-1"}]}],
            "volumes": [{"name": "spark-local-dir-1", "hostPath": {"path": "/mnt/spark"}}]}})
}

fn running(store: &Store, ns: &str, name: &str) {
    let _ = store.update(&PODS, ns, name, |p| {
        p["status"] = json!({"phase": "Running", "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}]});
        Ok(())
    });
}

fn delete_now(store: &Store, ns: &str, name: &str) {
    let opts = DeleteOptions {
        grace: Some(0),
        ..DeleteOptions::default()
    };
    let _ = store.delete(&PODS, ns, name, &opts);
}

/// One job's pods.
pub(crate) struct Job {
    pub(crate) index: usize,
    pub(crate) app: String,
    ns: String,
    driver: Value,
    /// Live executors: (pod name, node).
    pub(crate) executors: Vec<(String, usize)>,
    next_exec: usize,
}

impl Job {
    /// Creates the driver pod on `node` and makes it run.
    pub(crate) fn start(store: &Arc<Store>, index: usize, node: usize) -> Self {
        let app = app_id(index);
        let ns = namespace(index);
        let name = format!("job-{index}-driver");
        let d = pod(
            &ns,
            &name,
            &app,
            "driver",
            &node_name(node),
            spark_env(&app, 48),
        );
        let driver = store.create(&PODS, &ns, d).unwrap_or(Value::Null);
        running(store, &ns, &name);
        Self {
            index,
            app,
            ns,
            driver,
            executors: Vec::new(),
            next_exec: 1,
        }
    }

    /// Creates one executor pod on `node` and makes it run.
    pub(crate) fn add_executor(&mut self, store: &Store, node: usize) {
        let name = format!("job-{}-exec-{}", self.index, self.next_exec);
        let mut env = spark_env(&self.app, 16);
        env.push(json!({"name": "SPARK_EXECUTOR_ID", "value": self.next_exec.to_string()}));
        self.next_exec += 1;
        let mut p = pod(
            &self.ns,
            &name,
            &self.app,
            "executor",
            &node_name(node),
            env,
        );
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Pod",
            "controller": true, "name": self.driver["metadata"]["name"],
            "uid": self.driver["metadata"]["uid"]}]);
        if store.create(&PODS, &self.ns, p).is_ok() {
            running(store, &self.ns, &name);
            self.executors.push((name, node));
        }
    }

    /// Deletes the oldest executor pod.
    pub(crate) fn remove_executor(&mut self, store: &Store) {
        if !self.executors.is_empty() {
            let (name, _) = self.executors.remove(0);
            delete_now(store, &self.ns, &name);
        }
    }

    /// The driver succeeds and deletes its executors.
    pub(crate) fn end(&mut self, store: &Store) {
        let name = format!("job-{}-driver", self.index);
        let _ = store.update(&PODS, &self.ns, &name, |p| {
            p["status"]["phase"] = json!("Succeeded");
            p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
            Ok(())
        });
        for (e, _) in std::mem::take(&mut self.executors) {
            delete_now(store, &self.ns, &e);
        }
    }

    /// The finished driver pod is deleted.
    pub(crate) fn delete(&self, store: &Store) {
        delete_now(store, &self.ns, &format!("job-{}-driver", self.index));
    }
}
