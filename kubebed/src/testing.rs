//! What the tests that run on a bed share: the workspace's files and binaries, the images mapped
//! to this machine, a bed of `n` nodes, `kubectl apply -f <dir>` of the project's manifests,
//! `kubectl rollout status` of a Deployment or DaemonSet, and moto's S3-protocol server.
//! Used by the bed's own tests (`kubebed/tests/`), by the project's end-to-end tests (`e2e/`)
//! and by the staging server's tests of object stores. Functions panic with a message naming what is missing: they are for tests.

use std::path::{Path, PathBuf};

use crate::bed::{Bed, BedConfig};
use crate::images::{self, Image, Images};

mod moto;
pub use moto::moto;

/// The workspace root.
#[must_use]
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo put the service binaries (`cargo test --workspace` builds them).
///
/// # Panics
/// When a binary is missing.
#[must_use]
pub fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    let dir = target.join("debug");
    for b in ["shuffle-service", "staging-server"] {
        assert!(
            dir.join(b).exists(),
            "{} missing: build the workspace first (cargo build --workspace)",
            dir.join(b).display()
        );
    }
    dir
}

/// pyspark's package directory in the project's venv (a Spark distribution).
#[must_use]
pub fn spark_home() -> Option<PathBuf> {
    let lib = workspace().join(".venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages/pyspark"))
        .find(|p| p.join("jars").is_dir())
}

/// `JAVA_HOME` of the `java` on `PATH`.
#[must_use]
pub fn java_home() -> Option<PathBuf> {
    let out = std::process::Command::new("sh")
        .args(["-c", "readlink -f \"$(command -v java)\""])
        .output()
        .ok()?;
    let java = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some(java.parent()?.parent()?.to_path_buf()).filter(|h| h.join("bin/java").exists())
}

/// The bed's images: a plain Debian-like image (the host's root filesystem), busybox (the
/// same) and the project's image of the debug build ([`bin_dir`]).
#[must_use]
pub fn images() -> Images {
    images_of(&bin_dir())
}

/// [`images`] with the project's image made of the service binaries in `bin_dir` (a benchmark
/// runs the release build).
#[must_use]
pub fn images_of(bin_dir: &Path) -> Images {
    let mut i = Images::default();
    i.insert("debian", Image::default());
    i.insert("busybox", Image::default());
    i.insert(
        "ghcr.io/example/spark-k8s-services",
        images::services(bin_dir),
    );
    i
}

/// Spark's image (`kubebed/spark`), from the venv's pyspark and the host's Java, with its
/// scratch files under `dir`.
///
/// # Panics
/// When pyspark or Java is missing.
#[must_use]
pub fn spark_image(dir: &Path) -> Image {
    let (Some(home), Some(java)) = (spark_home(), java_home()) else {
        panic!("Spark's image needs pyspark in .venv and java on PATH");
    };
    let entry = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("images/spark/entrypoint.sh");
    images::spark(&home, &java, &entry, &dir.join("images/spark")).unwrap()
}

/// A bed with `nodes` nodes and `images`. The tests that use one are ignored unless asked for
/// (`scripts/test.sh` asks only where root and network namespaces are); asked for where they
/// cannot run, they fail.
///
/// # Panics
/// Without root and network namespaces, or when the bed does not start.
pub async fn bed_with(nodes: u8, images: Images, dir: &Path) -> Bed {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "kubebed=info".into()))
        .with_test_writer()
        .try_init();
    if let Err(e) = crate::net::Fabric::available() {
        panic!("the test bed needs root and network namespaces: {e:#}");
    }
    Bed::start(BedConfig {
        nodes,
        dir: dir.to_path_buf(),
        images,
        history: 100_000,
        api: crate::api::ApiConfig::default(),
    })
    .await
    .unwrap()
}

/// A manifest file of the project.
///
/// # Panics
/// When it cannot be read.
#[must_use]
pub fn manifest(rel: &str) -> String {
    std::fs::read_to_string(workspace().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Applies every manifest of a directory of the project as `kubectl apply -f <dir>` does: the
/// `*.yaml`/`*.yml`/`*.json` files directly in it (not in subdirectories), in name order,
/// `edit` applied to each file's text first.
///
/// # Panics
/// When the directory cannot be read or a manifest is refused.
pub fn apply_dir(bed: &Bed, rel: &str, namespace: &str, edit: impl Fn(String) -> String) {
    let dir = workspace().join(rel);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    for f in files {
        let text = edit(std::fs::read_to_string(&f).unwrap());
        bed.apply(&text, namespace)
            .unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
    }
}

/// Whether the rollout of a Deployment or DaemonSet is complete as `kubectl rollout status`
/// sees it: its controller has seen the current generation; a Deployment's desired pods are
/// all of the current template and available and no other pod is left (those being deleted
/// aside); a DaemonSet's nodes all run an available pod of the current template.
#[must_use]
pub fn rolled_out(obj: &serde_json::Value) -> bool {
    let s = &obj["status"];
    let n = |v: &serde_json::Value| v.as_i64().unwrap_or(0);
    if n(&s["observedGeneration"]) < n(&obj["metadata"]["generation"]) {
        return false;
    }
    match obj["kind"].as_str() {
        Some("Deployment") => {
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let updated = n(&s["updatedReplicas"]);
            updated >= want && n(&s["replicas"]) <= updated && n(&s["availableReplicas"]) >= updated
        }
        Some("DaemonSet") => {
            let desired = n(&s["desiredNumberScheduled"]);
            n(&s["updatedNumberScheduled"]) >= desired && n(&s["numberAvailable"]) >= desired
        }
        _ => false,
    }
}

/// Waits, as `kubectl rollout status` does, until the rollout of Deployment or DaemonSet
/// `ns/name` is complete ([`rolled_out`]); returns the object.
///
/// # Errors
/// The timeout, with the object's last status.
pub async fn rollout_status(
    bed: &Bed,
    res: &crate::resources::Resource,
    ns: &str,
    name: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<serde_json::Value> {
    let obj = bed
        .wait_for(res, ns, name, timeout, |o| o.is_some_and(rolled_out))
        .await?;
    obj.ok_or_else(|| anyhow::anyhow!("{ns}/{name} is gone"))
}

/// A pod's phase.
#[must_use]
pub fn phase(p: Option<&serde_json::Value>) -> &str {
    p.and_then(|p| p["status"]["phase"].as_str()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::rolled_out;

    #[test]
    fn rolled_out_reads_status_as_kubectl_rollout_status() {
        let d = |generation: i64, status: serde_json::Value| json!({"kind": "Deployment", "metadata": {"generation": generation}, "spec": {"replicas": 3}, "status": status});
        let done = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3});
        assert!(rolled_out(&d(2, done.clone())));
        // Not yet seen by the controller.
        assert!(!rolled_out(&d(3, done)));
        // Old pods left, or new ones not available.
        let old_left = json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 4});
        assert!(!rolled_out(&d(2, old_left)));
        let unavailable = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2});
        assert!(!rolled_out(&d(2, unavailable)));
        let ds = |updated: i64, available: i64| {
            json!({"kind": "DaemonSet", "metadata": {"generation": 1}, "status": {"observedGeneration": 1,
                "desiredNumberScheduled": 2, "updatedNumberScheduled": updated, "numberAvailable": available}})
        };
        assert!(rolled_out(&ds(2, 2)));
        assert!(!rolled_out(&ds(1, 2)));
        assert!(!rolled_out(&ds(2, 1)));
    }
}
