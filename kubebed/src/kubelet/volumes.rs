//! A pod's volumes on the node: emptyDir, hostPath (under the node's own root, so that two
//! nodes on one machine keep separate host directories), configMap, secret and
//! persistentVolumeClaim (a directory per claim under the bed, bound on first use), with
//! `defaultMode`/`items`/`optional` and the `fsGroup` ownership a kubelet applies.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{KeyToPath, Pod, Volume};
use serde_json::{Value, json};

use super::launch::clean_path;
use crate::resources::{CONFIGMAPS, Resource, SECRETS};
use crate::store::Store;

/// Why volumes are not ready.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Something it needs does not exist yet (a kubelet retries).
    #[error("{0}")]
    Wait(String),
    /// Cannot ever work.
    #[error("{0}")]
    Fail(String),
}

/// Where a node keeps things.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The node's root filesystem for hostPath volumes.
    pub host: PathBuf,
    /// Persistent volumes of the bed (shared by all nodes).
    pub pvs: PathBuf,
}

/// PersistentVolumeClaims.
const PVCS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "persistentvolumeclaims",
    kind: "PersistentVolumeClaim",
    namespaced: true,
};

/// Where a pod's service-account credentials are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Writes the pod's service-account volume (`token`, `ca.crt`, `namespace`, 0644 and
/// `fsGroup`-owned as the kubelet's projected volume) unless the pod or its service account
/// turns automounting off or no CA is known; returns the directory.
///
/// # Errors
/// [`VolumeError::Fail`] when the files cannot be written.
pub fn service_account(
    store: &Store,
    pod: &Pod,
    pod_dir: &Path,
    ca_pem: Option<&str>,
) -> Result<Option<PathBuf>, VolumeError> {
    let Some(ca) = ca_pem else { return Ok(None) };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let sa_name = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let automount = spec.automount_service_account_token.or_else(|| {
        store
            .get(&crate::resources::SERVICEACCOUNTS, &ns, &sa_name)
            .ok()
            .and_then(|sa| sa["automountServiceAccountToken"].as_bool())
    });
    if automount == Some(false) {
        return Ok(None);
    }
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok());
    let dir = pod_dir.join("serviceaccount");
    std::fs::create_dir_all(&dir).map_err(|e| io("service account", &e))?;
    let token = format!("kubebed.{ns}.{sa_name}.{}", uuid::Uuid::new_v4().simple());
    for (name, body) in [
        ("token", token.as_str()),
        ("ca.crt", ca),
        ("namespace", &ns),
    ] {
        let p = dir.join(name);
        if name == "token" || !p.exists() {
            std::fs::write(&p, body).map_err(|e| io("service account", &e))?;
        }
        set_mode(&p, 0o644)?;
        if let Some(g) = fs_group {
            chown(&p, None, Some(g))?;
        }
    }
    set_mode(&dir, 0o755)?;
    Ok(Some(dir))
}

fn io(what: &str, e: &std::io::Error) -> VolumeError {
    VolumeError::Fail(format!("{what}: {e}"))
}

/// Prepares every volume; returns volume name → host directory or file.
///
/// # Errors
/// [`VolumeError::Wait`] for a missing ConfigMap, Secret, claim or `Directory` host path;
/// [`VolumeError::Fail`] for what cannot work.
pub fn prepare(
    store: &Store,
    roots: &Roots,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok());
    let mut out = HashMap::new();
    for v in spec.volumes.unwrap_or_default() {
        let dir = pod_dir.join("volumes").join(&v.name);
        let path = volume(store, roots, &ns, &v, &dir, fs_group)?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

fn volume(
    store: &Store,
    roots: &Roots,
    ns: &str,
    v: &Volume,
    dir: &Path,
    fs_group: Option<u32>,
) -> Result<PathBuf, VolumeError> {
    if v.empty_dir.is_some() {
        std::fs::create_dir_all(dir).map_err(|e| io("emptyDir", &e))?;
        let mut mode = 0o777;
        if let Some(g) = fs_group {
            chown(dir, None, Some(g))?;
            mode |= 0o2000;
        }
        set_mode(dir, mode)?;
        return Ok(dir.to_path_buf());
    }
    if let Some(hp) = &v.host_path {
        if !clean_path(&hp.path) {
            return Err(VolumeError::Fail(format!(
                "hostPath {:?} is not an absolute clean path",
                hp.path
            )));
        }
        let on_node = roots.host.join(hp.path.trim_start_matches('/'));
        let kind = hp.type_.as_deref().unwrap_or("");
        match kind {
            "" | "DirectoryOrCreate" => {
                if !on_node.exists() {
                    // As a kubelet: created root-owned, 0755.
                    std::fs::create_dir_all(&on_node).map_err(|e| io("hostPath", &e))?;
                    set_mode(&on_node, 0o755)?;
                }
            }
            "FileOrCreate" => {
                if !on_node.exists() {
                    if let Some(p) = on_node.parent() {
                        std::fs::create_dir_all(p).map_err(|e| io("hostPath", &e))?;
                    }
                    std::fs::write(&on_node, b"").map_err(|e| io("hostPath", &e))?;
                    set_mode(&on_node, 0o644)?;
                }
            }
            "Directory" if !on_node.is_dir() => {
                return Err(VolumeError::Wait(format!(
                    "MountVolume.SetUp failed for volume {:?} : hostPath type check failed: {} is not a directory",
                    v.name, hp.path
                )));
            }
            "File" if !on_node.is_file() => {
                return Err(VolumeError::Wait(format!(
                    "MountVolume.SetUp failed for volume {:?} : hostPath type check failed: {} is not a file",
                    v.name, hp.path
                )));
            }
            "Directory" | "File" => {}
            other => {
                return Err(VolumeError::Fail(format!(
                    "hostPath type {other:?} is not supported by the test bed"
                )));
            }
        }
        return Ok(on_node);
    }
    if let Some(cm) = &v.config_map {
        let obj = match store.get(&CONFIGMAPS, ns, &cm.name) {
            Ok(o) => o,
            Err(_) if cm.optional == Some(true) => json!({}),
            Err(_) => {
                return Err(VolumeError::Wait(format!(
                    "MountVolume.SetUp failed for volume {:?} : configmap {:?} not found",
                    v.name, cm.name
                )));
            }
        };
        let mut data: Vec<(String, Vec<u8>)> = obj["data"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().unwrap_or_default().as_bytes().to_vec(),
                )
            })
            .collect();
        for (k, b) in obj["binaryData"].as_object().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.as_str().unwrap_or_default())
                .unwrap_or_default();
            data.push((k.clone(), bytes));
        }
        let mode = cm.default_mode.unwrap_or(0o644);
        write_keys(
            dir,
            &data,
            cm.items.as_deref(),
            mode,
            fs_group,
            &CONFIGMAPS,
            &cm.name,
        )?;
        return Ok(dir.to_path_buf());
    }
    if let Some(sec) = &v.secret {
        let name = sec.secret_name.clone().unwrap_or_default();
        let obj = match store.get(&SECRETS, ns, &name) {
            Ok(o) => o,
            Err(_) if sec.optional == Some(true) => json!({}),
            Err(_) => {
                return Err(VolumeError::Wait(format!(
                    "MountVolume.SetUp failed for volume {:?} : secret {name:?} not found",
                    v.name
                )));
            }
        };
        let data: Vec<(String, Vec<u8>)> = obj["data"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, b)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b.as_str().unwrap_or_default())
                    .unwrap_or_default();
                (k.clone(), bytes)
            })
            .collect();
        let mode = sec.default_mode.unwrap_or(0o644);
        write_keys(
            dir,
            &data,
            sec.items.as_deref(),
            mode,
            fs_group,
            &SECRETS,
            &name,
        )?;
        return Ok(dir.to_path_buf());
    }
    if let Some(pvc) = &v.persistent_volume_claim {
        let claim = store.get(&PVCS, ns, &pvc.claim_name).map_err(|_| {
            VolumeError::Wait(format!(
                "persistentvolumeclaim {:?} not found",
                pvc.claim_name
            ))
        })?;
        let uid = claim["metadata"]["uid"].as_str().unwrap_or_default();
        let path = roots.pvs.join(ns).join(format!("{}-{uid}", pvc.claim_name));
        if !path.exists() {
            std::fs::create_dir_all(&path).map_err(|e| io("persistentVolumeClaim", &e))?;
            set_mode(&path, 0o777)?;
        }
        if let Some(g) = fs_group {
            chown(&path, None, Some(g))?;
        }
        let _ = store.update(&PVCS, ns, &pvc.claim_name, |c| {
            c["status"]["phase"] = json!("Bound");
            Ok(())
        });
        return Ok(path);
    }
    Err(VolumeError::Fail(format!(
        "volume {:?}: only emptyDir, hostPath, configMap, secret and persistentVolumeClaim volumes are supported by the test bed",
        v.name
    )))
}

fn write_keys(
    dir: &Path,
    data: &[(String, Vec<u8>)],
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    fs_group: Option<u32>,
    res: &Resource,
    name: &str,
) -> Result<(), VolumeError> {
    // Prepared again when another volume of the pod had to wait: start over.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io("volume", &e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io("volume", &e))?;
    let files: Vec<(String, &[u8], i32)> = match items {
        Some(items) => items
            .iter()
            .map(|i| {
                let bytes = data
                    .iter()
                    .find(|(k, _)| *k == i.key)
                    .map(|(_, b)| b.as_slice())
                    .ok_or_else(|| {
                        VolumeError::Fail(format!("{} {name:?} has no key {:?}", res.kind, i.key))
                    })?;
                Ok((i.path.clone(), bytes, i.mode.unwrap_or(default_mode)))
            })
            .collect::<Result<_, VolumeError>>()?,
        None => data
            .iter()
            .map(|(k, b)| (k.clone(), b.as_slice(), default_mode))
            .collect(),
    };
    // The kubelet's atomic-writer layout: files in a timestamped directory, `..data` linking
    // to it, and each top-level name a link through `..data`.
    let stamp = format!("..{}", uuid::Uuid::new_v4().simple());
    let real = dir.join(&stamp);
    std::fs::create_dir_all(&real).map_err(|e| io("volume", &e))?;
    let mut tops = std::collections::BTreeSet::new();
    for (rel, bytes, mode) in files {
        if rel.starts_with('/')
            || rel.starts_with("..")
            || rel.split('/').any(|c| c == ".." || c.is_empty())
        {
            return Err(VolumeError::Fail(format!(
                "item path {rel:?} is not relative and clean"
            )));
        }
        let path = real.join(&rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| io("volume", &e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| io("volume", &e))?;
        let mut mode = u32::try_from(mode).unwrap_or(0o644) & 0o777;
        if let Some(g) = fs_group {
            // What a kubelet does to volumes it manages ownership of: the group is fsGroup
            // and the group may read.
            chown(&path, None, Some(g))?;
            mode |= 0o440;
        }
        set_mode(&path, mode)?;
        tops.insert(rel.split('/').next().unwrap_or_default().to_string());
    }
    std::os::unix::fs::symlink(&stamp, dir.join("..data")).map_err(|e| io("volume", &e))?;
    for top in tops {
        std::os::unix::fs::symlink(format!("..data/{top}"), dir.join(&top))
            .map_err(|e| io("volume", &e))?;
    }
    if let Some(g) = fs_group {
        chown(dir, None, Some(g))?;
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<(), VolumeError> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| io("chmod", &e))
}

fn chown(p: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), VolumeError> {
    std::os::unix::fs::chown(p, uid, gid).map_err(|e| io("chown", &e))
}

/// The value of a ConfigMap or Secret key (Secrets decoded), for `env`.
#[must_use]
pub fn key_value(obj: &Value, res: &Resource, key: &str) -> Option<String> {
    let raw = obj["data"][key].as_str()?;
    if *res == SECRETS {
        let b = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
        Some(String::from_utf8_lossy(&b).into_owned())
    } else {
        Some(raw.to_string())
    }
}
