//! The resource types the stand-in serves, as the API server names them.

/// One served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Version (`v1`).
    pub version: &'static str,
    /// Plural name in URLs (`pods`).
    pub plural: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

impl Resource {
    /// `apiVersion` of its objects (`v1`, `apps/v1`).
    #[must_use]
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Kind of its lists (`PodList`).
    #[must_use]
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// `plural.group`, as in error messages and RBAC (`networkpolicies.networking.k8s.io`).
    #[must_use]
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn r(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group,
        version,
        plural,
        kind,
        namespaced,
    }
}

/// Pods.
pub const PODS: Resource = r("", "v1", "pods", "Pod", true);
/// Nodes.
pub const NODES: Resource = r("", "v1", "nodes", "Node", false);
/// Namespaces.
pub const NAMESPACES: Resource = r("", "v1", "namespaces", "Namespace", false);
/// Secrets.
pub const SECRETS: Resource = r("", "v1", "secrets", "Secret", true);
/// ConfigMaps.
pub const CONFIGMAPS: Resource = r("", "v1", "configmaps", "ConfigMap", true);
/// Service accounts.
pub const SERVICEACCOUNTS: Resource = r("", "v1", "serviceaccounts", "ServiceAccount", true);
/// DaemonSets.
pub const DAEMONSETS: Resource = r("apps", "v1", "daemonsets", "DaemonSet", true);
/// Deployments.
pub const DEPLOYMENTS: Resource = r("apps", "v1", "deployments", "Deployment", true);

/// Every served resource type.
pub const ALL: &[Resource] = &[
    PODS,
    NODES,
    NAMESPACES,
    SECRETS,
    CONFIGMAPS,
    r("", "v1", "services", "Service", true),
    r(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
    ),
    SERVICEACCOUNTS,
    r("", "v1", "events", "Event", true),
    DAEMONSETS,
    DEPLOYMENTS,
    r(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
    ),
    r("networking.k8s.io", "v1", "ingresses", "Ingress", true),
    r(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
    ),
    r("rbac.authorization.k8s.io", "v1", "roles", "Role", true),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
    ),
    r(
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        "PriorityClass",
        false,
    ),
];

/// The resource served under `group/version` with this plural name.
#[must_use]
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<Resource> {
    ALL.iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of objects with this `apiVersion` and `kind`.
#[must_use]
pub fn by_kind(api_version: &str, kind: &str) -> Option<Resource> {
    ALL.iter()
        .copied()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}
