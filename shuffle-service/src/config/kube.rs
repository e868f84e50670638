//! Whether and how the service follows Spark's pods through the Kubernetes API.

use std::time::Duration;

use serde::Deserialize;

/// Whether the service follows Spark's pods through the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeWatch {
    /// On when running in a pod (`KUBERNETES_SERVICE_HOST` set) with a node name.
    #[default]
    Auto,
    /// On; a missing node name or API configuration is an error.
    On,
    /// Off: application data is deleted only on `UnregisterApplication` or the idle TTL.
    Off,
}

/// Which driver pods a node's service follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverScope {
    /// Only those of the applications with executor pods or data on this node, through one
    /// watch whose label selector names them (`crate::kube::drivers`).
    #[default]
    NodeApps,
    /// Every driver pod of the followed namespaces (the design before per-node selection,
    /// kept to measure it beside the other in `loadtest kube-scale`).
    All,
}

/// The Kubernetes settings, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSettings {
    /// The node whose executor pods are followed.
    pub node_name: String,
    /// Namespaces followed (empty: all).
    pub namespaces: Vec<String>,
    /// How long a driver pod stays `Succeeded`/`Failed` before the data goes.
    pub app_end_grace: Duration,
    /// Learn each application's Spark secret from its executor pods.
    pub learn_secrets: bool,
    /// Which driver pods are followed.
    pub drivers: DriverScope,
}

/// Resolves the Kubernetes settings: `auto` turns the watch on inside a pod with a node name.
pub(super) fn kube_settings(
    mode: KubeWatch,
    node_name: Option<String>,
    namespaces: Vec<String>,
    app_end_grace: Duration,
    learn_secrets: bool,
    in_cluster: bool,
) -> Result<Option<KubeSettings>, String> {
    let node_name = node_name.filter(|n| !n.trim().is_empty());
    let on = match (mode, &node_name) {
        (KubeWatch::Off, _) => false,
        (KubeWatch::On, Some(_)) => true,
        (KubeWatch::On, None) => {
            return Err("--kube-watch on needs --kube-node-name (SHUFFLE_KUBE_NODE_NAME, from the downward API's spec.nodeName)".into());
        }
        (KubeWatch::Auto, n) => in_cluster && n.is_some(),
    };
    if !on {
        if learn_secrets {
            return Err("--kube-learn-secrets needs the pod watch: --kube-watch on (or auto inside a pod) and --kube-node-name".into());
        }
        return Ok(None);
    }
    validate_namespaces(&namespaces)?;
    Ok(Some(KubeSettings {
        node_name: node_name.unwrap_or_default(),
        namespaces,
        app_end_grace,
        learn_secrets,
        drivers: DriverScope::NodeApps,
    }))
}

/// Checks that each followed namespace is a namespace name (a DNS label).
pub(super) fn validate_namespaces(namespaces: &[String]) -> Result<(), String> {
    for ns in namespaces {
        if ns.is_empty()
            || ns.len() > 63
            || !ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("kube_namespaces: {ns:?} is not a namespace name"));
        }
    }
    Ok(())
}
