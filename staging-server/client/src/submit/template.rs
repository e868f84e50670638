//! The driver and executor pod templates: the user's own template (if any) with the
//! init-container that fetches the staged files, the directory it fills, and the Secret
//! holding the download token.
//!
//! Spark reads templates as YAML; JSON is YAML, so the merged template is written as JSON.

use serde_json::{Value, json};

/// Name of the init-container.
pub const INIT_CONTAINER: &str = "stage-files";
/// Volume holding the staged files.
pub const FILES_VOLUME: &str = "staged-files";
/// Volume holding the download token.
pub const TOKEN_VOLUME: &str = "staging-token";
/// Volume holding the CA of the server, when the pods verify it.
pub const CA_VOLUME: &str = "staging-ca";
/// Where the token is mounted in the init-container.
const TOKEN_DIR: &str = "/etc/staging-token";
/// Where the CA is mounted in the init-container.
const CA_DIR: &str = "/etc/staging-ca";

/// Which pod a template is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The driver.
    Driver,
    /// The executors.
    Executor,
}

impl Role {
    /// `driver` or `executor`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Executor => "executor",
        }
    }
}

/// What the init-container needs.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// Secret with `resource-id` and `token`.
    pub secret: String,
    /// Directory of the staged files in every container.
    pub mount: String,
    /// Image of the init-container (this program).
    pub image: String,
    /// Server URL as the pods reach it.
    pub server: String,
    /// ConfigMap holding `ca.crt`, when the server's certificate is from a private CA.
    pub ca_config_map: Option<String>,
    /// Spark's container in the template, when the user names it
    /// (`spark.kubernetes.<role>.podTemplateContainerName`).
    pub container: Option<String>,
}

/// Merges the staging pieces into `user` (a parsed template, or `None`).
///
/// # Errors
/// A template that is not a Pod, or that already uses one of the names added here.
pub fn merge(user: Option<Value>, role: Role, w: &Wiring) -> Result<Value, String> {
    let mut pod = user.unwrap_or_else(|| json!({"apiVersion": "v1", "kind": "Pod"}));
    if !pod.is_object() {
        return Err("the pod template is not a YAML mapping".into());
    }
    if let Some(kind) = pod.get("kind").and_then(Value::as_str)
        && kind != "Pod"
    {
        return Err(format!("the pod template is a {kind}, not a Pod"));
    }
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    if pod.get("metadata").is_none_or(|m| !m.is_object()) {
        pod["metadata"] = json!({});
    }
    if pod["metadata"].get("name").is_none() {
        // Spark names the pod; a name keeps validators quiet.
        pod["metadata"]["name"] = json!(format!("spark-{}-template", role.as_str()));
    }
    if pod.get("spec").is_none_or(|s| !s.is_object()) {
        pod["spec"] = json!({});
    }
    let spec = &mut pod["spec"];

    let volumes = list(spec, "volumes")?;
    for name in [FILES_VOLUME, TOKEN_VOLUME, CA_VOLUME] {
        if volumes.iter().any(|v| v["name"] == name) {
            return Err(format!(
                "the pod template already has a volume named {name}"
            ));
        }
    }
    volumes.push(json!({"name": FILES_VOLUME, "emptyDir": {}}));
    volumes.push(json!({
        "name": TOKEN_VOLUME,
        "secret": {"secretName": w.secret, "items": [{"key": "token", "path": "token"}]}
    }));
    let mut args = vec![
        json!("fetch"),
        json!(format!("--server={}", w.server)),
        json!(format!("--token-file={TOKEN_DIR}/token")),
        json!(format!("--dest={}", w.mount)),
    ];
    let mut mounts = vec![
        json!({"name": FILES_VOLUME, "mountPath": w.mount}),
        json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}),
    ];
    if let Some(cm) = &w.ca_config_map {
        volumes.push(json!({
            "name": CA_VOLUME,
            "configMap": {"name": cm, "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        }));
        args.push(json!(format!("--ca-file={CA_DIR}/ca.crt")));
        mounts.push(json!({"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": true}));
    }

    let inits = list(spec, "initContainers")?;
    if inits.iter().any(|c| c["name"] == INIT_CONTAINER) {
        return Err(format!(
            "the pod template already has an init-container named {INIT_CONTAINER}"
        ));
    }
    inits.push(json!({
        "name": INIT_CONTAINER,
        "image": w.image,
        "args": args,
        "env": [{
            "name": "STAGING_RESOURCE_ID",
            "valueFrom": {"secretKeyRef": {"name": w.secret, "key": "resource-id"}}
        }],
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"}
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 185,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}
        },
        "volumeMounts": mounts,
    }));

    let containers = list(spec, "containers")?;
    let index = match &w.container {
        Some(name) => match containers.iter().position(|c| c["name"] == name.as_str()) {
            Some(i) => i,
            None => {
                containers.push(json!({"name": name}));
                containers.len() - 1
            }
        },
        None if containers.is_empty() => {
            containers.push(json!({"name": format!("spark-kubernetes-{}", role.as_str())}));
            0
        }
        // Spark takes the first container when no name is configured.
        None => 0,
    };
    let c = &mut containers[index];
    let mounts = list(c, "volumeMounts")?;
    if mounts
        .iter()
        .any(|m| m["mountPath"].as_str() == Some(w.mount.as_str()))
    {
        return Err(format!(
            "Spark's container already mounts something at {}",
            w.mount
        ));
    }
    mounts.push(json!({"name": FILES_VOLUME, "mountPath": w.mount, "readOnly": true}));
    Ok(pod)
}

/// The array under `key`, created when absent.
fn list<'a>(obj: &'a mut Value, key: &str) -> Result<&'a mut Vec<Value>, String> {
    if obj.get(key).is_none_or(Value::is_null) {
        obj[key] = json!([]);
    }
    obj[key]
        .as_array_mut()
        .ok_or_else(|| format!("{key} in the pod template is not a list"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wiring() -> Wiring {
        Wiring {
            secret: "spark-staged-x".into(),
            mount: "/var/spark-staged".into(),
            image: "img:1".into(),
            server: "http://staging:10000".into(),
            ca_config_map: None,
            container: None,
        }
    }

    #[test]
    fn without_a_user_template() {
        let pod = merge(None, Role::Executor, &wiring()).unwrap();
        assert_eq!(
            pod["spec"]["containers"][0]["name"],
            "spark-kubernetes-executor"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            "/var/spark-staged"
        );
        let init = &pod["spec"]["initContainers"][0];
        assert_eq!(init["name"], INIT_CONTAINER);
        assert_eq!(init["args"][1], "--server=http://staging:10000");
        assert_eq!(
            init["env"][0]["valueFrom"]["secretKeyRef"]["name"],
            "spark-staged-x"
        );
        assert_eq!(
            pod["spec"]["volumes"][1]["secret"]["secretName"],
            "spark-staged-x"
        );
    }

    #[test]
    fn merged_into_a_user_template() {
        let user: Value = serde_yaml_ng::from_str(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {team: a}\nspec:\n  nodeSelector: {pool: spark}\n  initContainers: [{name: warm, image: busybox}]\n  containers:\n    - name: sidecar\n    - name: main\n      volumeMounts: [{name: cache, mountPath: /cache}]\n  volumes: [{name: cache, emptyDir: {}}]\n",
        )
        .unwrap();
        let mut w = wiring();
        w.container = Some("main".into());
        w.ca_config_map = Some("staging-ca".into());
        let pod = merge(Some(user), Role::Driver, &w).unwrap();
        assert_eq!(pod["metadata"]["labels"]["team"], "a");
        assert_eq!(pod["spec"]["nodeSelector"]["pool"], "spark");
        assert_eq!(pod["spec"]["initContainers"][0]["name"], "warm");
        assert_eq!(pod["spec"]["initContainers"][1]["name"], INIT_CONTAINER);
        assert!(pod["spec"]["containers"][0].get("volumeMounts").is_none());
        assert_eq!(
            pod["spec"]["containers"][1]["volumeMounts"][1]["name"],
            FILES_VOLUME
        );
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 4);
        assert_eq!(
            pod["spec"]["initContainers"][1]["args"][4],
            "--ca-file=/etc/staging-ca/ca.crt"
        );
    }

    #[test]
    fn refuses_clashes_and_non_pods() {
        let clash: Value =
            serde_yaml_ng::from_str("spec: {volumes: [{name: staged-files, emptyDir: {}}]}")
                .unwrap();
        assert!(merge(Some(clash), Role::Driver, &wiring()).is_err());
        let deployment: Value = serde_yaml_ng::from_str("kind: Deployment").unwrap();
        assert!(merge(Some(deployment), Role::Driver, &wiring()).is_err());
    }
}
