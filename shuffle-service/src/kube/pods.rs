//! What the service reads from Spark's pods: the application an executor pod names, the
//! driver pod that controls it (its controlling owner reference, which Spark sets and which
//! names a pod of the executor's own namespace), a driver pod's uid and phase, and Spark's
//! per-application secret from an executor's environment. A driver pod's creation time is not
//! read, and its application label only scopes the lists of the node's driver watch (which
//! drivers a list answers for): anyone who may write pods in a namespace can set it, and the
//! same writer could delete the pod.

use k8s_openapi::api::core::v1::Pod;

use crate::core::PodOwner;
use spark_protocol::ids::AppId;

/// Label Spark puts on its driver and executor pods with the application id.
pub(crate) const APP_LABEL: &str = "spark-app-selector";
/// Label Spark puts on its pods with `driver` or `executor`.
pub(crate) const ROLE_LABEL: &str = "spark-role";
/// The environment variable holding Spark's per-application secret in executor pods.
pub(crate) const SECRET_ENV: &str = "_SPARK_AUTH_SECRET";

/// An executor pod on this node.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ExecutorPod {
    /// The pod's uid.
    pub uid: String,
    /// Its name (for logs).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The application (`spark-app-selector`).
    pub app: AppId,
    /// The driver pod that controls it, in its own namespace (none in client mode without a
    /// driver pod).
    pub driver: Option<PodOwner>,
    /// Spark's secret for the application, when asked for and present as a plain value.
    pub secret: Option<Vec<u8>>,
    /// The pod ended (`Succeeded` or `Failed`; a pod the kubelet rejected is `Failed`) or is
    /// being deleted.
    pub ended: bool,
}

impl std::fmt::Debug for ExecutorPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorPod")
            .field("uid", &self.uid)
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("app", &self.app)
            .field("driver", &self.driver)
            .field("secret", &self.secret.is_some())
            .field("ended", &self.ended)
            .finish()
    }
}

/// How far a driver pod got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Pending, Running or Unknown.
    Live,
    /// `Succeeded`.
    Succeeded,
    /// `Failed`.
    Failed,
}

/// A driver pod anywhere in the followed namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DriverPod {
    /// The pod's uid.
    pub uid: String,
    /// Its name (for logs).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its phase.
    pub phase: Phase,
    /// Its application label (`spark-app-selector`), when valid: which list covers it.
    pub app: Option<AppId>,
}

/// The pod's uid and namespace, when both are set.
pub(crate) fn identity(pod: &Pod) -> Option<(String, String)> {
    Some((pod.metadata.uid.clone()?, pod.metadata.namespace.clone()?))
}

/// Reads an executor pod; `None` for a pod without a valid application label.
pub(crate) fn executor(pod: &Pod, with_secret: bool) -> Option<ExecutorPod> {
    let (uid, namespace) = identity(pod)?;
    let app = pod.metadata.labels.as_ref()?.get(APP_LABEL)?.parse().ok()?;
    // Owner references never cross namespaces: the uid names a pod of this namespace.
    let driver = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Pod" && o.api_version == "v1" && o.controller == Some(true))
        .filter(|o| !o.uid.is_empty())
        .map(|o| PodOwner {
            namespace: namespace.clone(),
            driver_uid: o.uid.clone(),
        });
    let secret = if with_secret {
        pod.spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.env.iter().flatten())
            .find(|e| e.name == SECRET_ENV && e.value_from.is_none())
            .and_then(|e| e.value.as_deref())
            .filter(|v| !v.is_empty())
            .map(|v| v.as_bytes().to_vec())
    } else {
        None
    };
    // A pod being deleted has ended for this purpose: the kubelet stops it and no longer
    // counts it against the node, whatever phase it keeps while a finalizer holds it.
    let ended = pod.metadata.deletion_timestamp.is_some()
        || matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
    Some(ExecutorPod {
        uid,
        name: name(pod),
        namespace,
        app,
        driver,
        secret,
        ended,
    })
}

/// Reads a driver pod.
pub(crate) fn driver(pod: &Pod) -> Option<DriverPod> {
    let (uid, namespace) = identity(pod)?;
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        _ => Phase::Live,
    };
    let app = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(APP_LABEL))
        .and_then(|a| a.parse().ok());
    Some(DriverPod {
        uid,
        name: name(pod),
        namespace,
        phase,
        app,
    })
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn executor_pod(owner_kind: &str) -> Pod {
        pod(serde_json::json!({
            "metadata": {
                "name": "job-exec-1", "namespace": "spark", "uid": "e-1",
                "labels": {"spark-app-selector": "spark-0123abcd", "spark-role": "executor"},
                "ownerReferences": [{"apiVersion": "v1", "kind": owner_kind, "name": "job-driver",
                                     "uid": "d-1", "controller": true}]
            },
            "spec": {"containers": [{"name": "spark-kubernetes-executor", "env": [
                {"name": "SPARK_EXECUTOR_ID", "value": "1"},
                {"name": "_SPARK_AUTH_SECRET", "value": "00ff"}
            ]}]}
        }))
    }

    #[test]
    fn an_executor_names_its_application_driver_and_secret() {
        let e = executor(&executor_pod("Pod"), true).expect("executor");
        assert_eq!(e.app.as_str(), "spark-0123abcd");
        assert_eq!(e.namespace, "spark");
        assert_eq!(e.name, "job-exec-1");
        let d = e.driver.as_ref().expect("driver");
        assert_eq!(
            (d.namespace.as_str(), d.driver_uid.as_str()),
            ("spark", "d-1")
        );
        assert_eq!(e.secret.as_deref(), Some(&b"00ff"[..]));
        assert!(!format!("{e:?}").contains("00ff"));
        let e = executor(&executor_pod("Pod"), false).expect("executor");
        assert_eq!(e.secret, None);
    }

    #[test]
    fn only_a_controlling_pod_owner_is_a_driver() {
        let e = executor(&executor_pod("ReplicaSet"), false).expect("executor");
        assert_eq!(e.driver, None);
    }

    #[test]
    fn a_pod_without_a_valid_application_label_is_not_an_executor() {
        let p = pod(
            serde_json::json!({"metadata": {"uid": "u", "namespace": "n",
            "labels": {"spark-app-selector": "../etc"}}}),
        );
        assert!(executor(&p, true).is_none());
        let p = pod(serde_json::json!({"metadata": {"uid": "u", "namespace": "n"}}));
        assert!(executor(&p, true).is_none());
    }

    #[test]
    fn driver_phases() {
        for (phase, want) in [
            ("Succeeded", Phase::Succeeded),
            ("Failed", Phase::Failed),
            ("Running", Phase::Live),
            ("Unknown", Phase::Live),
        ] {
            let p = pod(
                serde_json::json!({"metadata": {"uid": "d", "namespace": "n",
                "creationTimestamp": "2026-12-01T10:00:00Z",
                "labels": {"spark-app-selector": "spark-1"}},
                "status": {"phase": phase}}),
            );
            let d = driver(&p).expect("driver");
            assert_eq!(d.phase, want);
            assert_eq!((d.uid.as_str(), d.namespace.as_str()), ("d", "n"));
            assert_eq!(d.app.as_ref().map(AppId::as_str), Some("spark-1"));
        }
    }
}
