//! A container's environment as a kubelet builds it: the image's, the API server's
//! `KUBERNETES_SERVICE_*`, `envFrom`, then `env` in order, with `valueFrom` (`fieldRef`,
//! `secretKeyRef`, `configMapKeyRef`, `resourceFieldRef`) and `$(VAR)` references to variables
//! defined before.

use k8s_openapi::api::core::v1::Container;
use serde_json::Value;

use super::volumes::{VolumeError, key_value};
use crate::images::Image;
use crate::resources::{CONFIGMAPS, Resource, SECRETS};
use crate::store::Store;

/// What the environment is built from.
#[derive(Debug)]
pub struct EnvSource<'a> {
    /// The pod as stored (with its status: `podIP`, `hostIP`).
    pub pod: &'a Value,
    /// The image.
    pub image: &'a Image,
    /// The store, for Secrets and ConfigMaps.
    pub store: &'a Store,
    /// `host:port` of the API server.
    pub api: Option<(String, u16)>,
    /// The host name inside.
    pub hostname: &'a str,
}

fn set(env: &mut Vec<(String, String)>, k: &str, v: String) {
    match env.iter_mut().find(|(n, _)| n == k) {
        Some(e) => e.1 = v,
        None => env.push((k.to_string(), v)),
    }
}

/// Expands `$(VAR)` with what is defined so far; `$$(VAR)` escapes; unknown references stay.
#[must_use]
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(")
            && let Some(end) = t.find(')')
        {
            let name = &t[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn field(pod: &Value, path: &str) -> Option<String> {
    let meta = &pod["metadata"];
    let bracket = |p: &str, map: &str| -> Option<String> {
        let k = p
            .strip_prefix(&format!("metadata.{map}['"))?
            .strip_suffix("']")?;
        meta[map][k].as_str().map(str::to_string)
    };
    match path {
        "metadata.name" | "metadata.namespace" | "metadata.uid" => meta
            [path.trim_start_matches("metadata.")]
        .as_str()
        .map(str::to_string),
        "spec.nodeName" => pod["spec"]["nodeName"].as_str().map(str::to_string),
        "spec.serviceAccountName" => Some(
            pod["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
        ),
        "status.podIP" | "status.hostIP" => pod["status"][path.trim_start_matches("status.")]
            .as_str()
            .map(str::to_string),
        "status.podIPs" => pod["status"]["podIP"].as_str().map(str::to_string),
        p if p.starts_with("metadata.labels['") => bracket(p, "labels"),
        p if p.starts_with("metadata.annotations['") => bracket(p, "annotations"),
        _ => None,
    }
}

fn from_object(
    store: &Store,
    ns: &str,
    res: &Resource,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, VolumeError> {
    match store.get(res, ns, name) {
        Ok(o) => match key_value(&o, res, key) {
            Some(v) => Ok(Some(v)),
            None if optional => Ok(None),
            None => Err(VolumeError::Wait(format!(
                "CreateContainerConfigError: couldn't find key {key} in {} {ns}/{name}",
                res.kind
            ))),
        },
        Err(_) if optional => Ok(None),
        Err(_) => Err(VolumeError::Wait(format!(
            "CreateContainerConfigError: {} {name:?} not found",
            res.kind.to_lowercase()
        ))),
    }
}

/// Builds the environment.
///
/// # Errors
/// [`VolumeError::Wait`] for a missing Secret/ConfigMap or key (retried, as
/// `CreateContainerConfigError`); [`VolumeError::Fail`] for an unsupported `fieldRef`.
pub fn build(src: &EnvSource<'_>, c: &Container) -> Result<Vec<(String, String)>, VolumeError> {
    let ns = src.pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let mut env: Vec<(String, String)> = vec![(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    )];
    for (k, v) in &src.image.env {
        set(&mut env, k, v.clone());
    }
    set(&mut env, "HOSTNAME", src.hostname.to_string());
    if let Some((host, port)) = &src.api {
        set(&mut env, "KUBERNETES_SERVICE_HOST", host.clone());
        set(&mut env, "KUBERNETES_SERVICE_PORT", port.to_string());
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (res, name, optional) = if let Some(cm) = &from.config_map_ref {
            (CONFIGMAPS, cm.name.clone(), cm.optional == Some(true))
        } else if let Some(s) = &from.secret_ref {
            (SECRETS, s.name.clone(), s.optional == Some(true))
        } else {
            continue;
        };
        match src.store.get(&res, ns, &name) {
            Ok(o) => {
                for k in o["data"].as_object().into_iter().flatten().map(|(k, _)| k) {
                    if let Some(v) = key_value(&o, &res, k) {
                        set(&mut env, &format!("{prefix}{k}"), v);
                    }
                }
            }
            Err(_) if optional => {}
            Err(_) => {
                return Err(VolumeError::Wait(format!(
                    "CreateContainerConfigError: {} {name:?} not found",
                    res.kind.to_lowercase()
                )));
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                Some(field(src.pod, &f.field_path).ok_or_else(|| {
                    VolumeError::Fail(format!("unsupported fieldRef {:?}", f.field_path))
                })?)
            } else if let Some(s) = &from.secret_key_ref {
                from_object(
                    src.store,
                    ns,
                    &SECRETS,
                    &s.name,
                    &s.key,
                    s.optional == Some(true),
                )?
            } else if let Some(cm) = &from.config_map_key_ref {
                from_object(
                    src.store,
                    ns,
                    &CONFIGMAPS,
                    &cm.name,
                    &cm.key,
                    cm.optional == Some(true),
                )?
            } else if let Some(r) = &from.resource_field_ref {
                let res = c.resources.clone().unwrap_or_default();
                let q = match r.resource.as_str() {
                    "limits.memory" => res.limits.and_then(|l| l.get("memory").cloned()),
                    "limits.cpu" => res.limits.and_then(|l| l.get("cpu").cloned()),
                    "requests.memory" => res.requests.and_then(|l| l.get("memory").cloned()),
                    "requests.cpu" => res.requests.and_then(|l| l.get("cpu").cloned()),
                    _ => None,
                };
                Some(q.map_or_else(|| "0".to_string(), |q| q.0))
            } else {
                None
            }
        } else {
            Some(expand(e.value.as_deref().unwrap_or_default(), &env))
        };
        if let Some(v) = value {
            set(&mut env, &e.name, v);
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_in_order() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)/$(B)/$$(A)/$", &env), "x/$(B)/$(A)/$");
    }

    #[test]
    fn field_refs() {
        let pod = serde_json::json!({"metadata": {"name": "p", "namespace": "n", "labels": {"a": "b"}},
            "spec": {"nodeName": "node-a"}, "status": {"podIP": "10.1.2.3"}});
        assert_eq!(field(&pod, "status.podIP").as_deref(), Some("10.1.2.3"));
        assert_eq!(field(&pod, "metadata.labels['a']").as_deref(), Some("b"));
        assert_eq!(field(&pod, "spec.nodeName").as_deref(), Some("node-a"));
        assert_eq!(
            field(&pod, "spec.serviceAccountName").as_deref(),
            Some("default")
        );
        assert_eq!(field(&pod, "status.nope"), None);
    }
}
