//! The validation the API server applies before storing, for what Spark and the project's
//! manifests send: names, pods' containers, volumes and mounts, Secrets' data, the update
//! strategies of Deployments and DaemonSets.

use std::collections::HashSet;

use serde_json::Value;

use crate::resources::{DAEMONSETS, DEPLOYMENTS, PODS, Resource, SECRETS};
use crate::rollout::{daemonset, deployment};
use crate::status::ApiError;

/// An RFC 1123 subdomain (most object names).
#[must_use]
pub fn is_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Moves a Secret's `stringData` into `data` (base64), as the API server does on write.
pub fn normalize(res: &Resource, obj: &mut Value) {
    use base64::Engine as _;
    if *res != SECRETS {
        return;
    }
    if let Some(sd) = obj.get_mut("stringData").map(Value::take)
        && let Some(sd) = sd.as_object()
    {
        for (k, v) in sd {
            let enc =
                base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
            obj["data"][k] = Value::String(enc);
        }
        if let Some(o) = obj.as_object_mut() {
            o.remove("stringData");
        }
    }
}

/// Checks an object about to be stored.
///
/// # Errors
/// 422 with the field at fault.
pub fn object(res: &Resource, name: &str, obj: &Value) -> Result<(), ApiError> {
    let bad = |why: String| Err(ApiError::invalid(res, name, why));
    if !is_subdomain(name) {
        return bad(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ));
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if !v.is_string() || v.as_str().is_some_and(|s| s.len() > 63) {
                return bad(format!("metadata.labels: Invalid value: {k:?}"));
            }
        }
    }
    if *res == SECRETS {
        use base64::Engine as _;
        if let Some(data) = obj["data"].as_object() {
            for (k, v) in data {
                let ok = v
                    .as_str()
                    .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
                if !ok {
                    return bad(format!("data[{k}]: Invalid value: not base64"));
                }
            }
        }
    }
    if *res == PODS {
        pod(obj).or_else(bad)?;
    }
    if *res == DEPLOYMENTS {
        deployment::Spec::from_json(&obj["spec"])
            .map(|_| ())
            .or_else(bad)?;
    }
    if *res == DAEMONSETS {
        daemonset::Spec::from_json(&obj["spec"])
            .map(|_| ())
            .or_else(bad)?;
    }
    Ok(())
}

fn pod(obj: &Value) -> Result<(), String> {
    let spec = &obj["spec"];
    let containers = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if containers.is_empty() {
        return Err("spec.containers: Required value".into());
    }
    let mut volumes = HashSet::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let n = v["name"].as_str().unwrap_or_default();
        if n.is_empty() {
            return Err(format!("spec.volumes[{i}].name: Required value"));
        }
        if !volumes.insert(n.to_string()) {
            return Err(format!("spec.volumes[{i}].name: Duplicate value: {n:?}"));
        }
    }
    let mut names = HashSet::new();
    let init = spec["initContainers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (field, list) in [("initContainers", init), ("containers", containers)] {
        for (i, c) in list.iter().enumerate() {
            let n = c["name"].as_str().unwrap_or_default();
            if n.is_empty() {
                return Err(format!("spec.{field}[{i}].name: Required value"));
            }
            if !names.insert(n.to_string()) {
                return Err(format!("spec.{field}[{i}].name: Duplicate value: {n:?}"));
            }
            if c["image"].as_str().is_none_or(str::is_empty) {
                return Err(format!("spec.{field}[{i}].image: Required value"));
            }
            let mut paths = HashSet::new();
            for (j, m) in c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let vn = m["name"].as_str().unwrap_or_default();
                if !volumes.contains(vn) {
                    return Err(format!(
                        "spec.{field}[{i}].volumeMounts[{j}].name: Not found: {vn:?}"
                    ));
                }
                let p = m["mountPath"].as_str().unwrap_or_default();
                if !p.starts_with('/') {
                    return Err(format!(
                        "spec.{field}[{i}].volumeMounts[{j}].mountPath: Invalid value: {p:?}"
                    ));
                }
                if !paths.insert(p.to_string()) {
                    return Err(format!(
                        "spec.{field}[{i}].volumeMounts[{j}].mountPath: Invalid value: {p:?}: must be unique"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(is_subdomain("pi-py-c2f6d1a232618954-exec-1"));
        assert!(!is_subdomain("Pi"));
        assert!(!is_subdomain("-a"));
        assert!(!is_subdomain(""));
    }

    #[test]
    fn duplicate_volume_or_mount_is_rejected() {
        let p = json!({"spec": {
            "containers": [{"name": "c", "image": "i", "volumeMounts": [
                {"name": "v", "mountPath": "/a"}, {"name": "v", "mountPath": "/a"}]}],
            "volumes": [{"name": "v", "emptyDir": {}}]}});
        let e = object(&PODS, "p", &p).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("must be unique"), "{}", e.message);
        let p = json!({"spec": {
            "containers": [{"name": "c", "image": "i"}],
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]}});
        assert!(
            object(&PODS, "p", &p)
                .unwrap_err()
                .message
                .contains("Duplicate")
        );
    }

    #[test]
    fn update_strategies_are_checked_as_the_api_server_checks_them() {
        let d = |strategy: Value| json!({"spec": {"strategy": strategy}});
        let refused = [
            d(json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}})),
            d(json!({"rollingUpdate": {"maxUnavailable": "110%"}})),
            d(json!({"rollingUpdate": {"maxSurge": "1"}})),
            d(json!({"rollingUpdate": {"maxSurge": -1}})),
            d(json!({"type": "Recreate", "rollingUpdate": {}})),
            d(json!({"type": "Rolling"})),
        ];
        for obj in refused {
            let e = object(&DEPLOYMENTS, "d", &obj).unwrap_err();
            assert_eq!(e.code, 422, "{obj}");
            assert!(e.message.contains("spec.strategy"), "{}", e.message);
        }
        object(
            &DEPLOYMENTS,
            "d",
            &d(json!({"rollingUpdate": {"maxSurge": 0}})),
        )
        .unwrap();
        let ds = json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0}}}});
        let e = object(&DAEMONSETS, "ds", &ds).unwrap_err();
        assert!(
            e.message.contains("may not be 0 when `maxSurge` is 0"),
            "{}",
            e.message
        );
        let ds = json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}});
        object(&DAEMONSETS, "ds", &ds).unwrap();
    }
}
