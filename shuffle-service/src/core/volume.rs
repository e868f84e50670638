//! Volumes: the directories the service may serve from, write to and delete in.
//!
//! Every executor directory must canonically lie strictly below one volume root; paths are
//! canonicalised (symlinks resolved) before the check, so a link cannot lead outside. Each
//! volume has a kind, which says whether its data outlives a pod restart:
//!
//! | kind | typical mount | survives a pod restart |
//! |---|---|---|
//! | `hostPath` | node directory shared with executor pods (DaemonSet) | yes |
//! | `nvme-raid0` | node-local NVMe array mounted as a hostPath | yes |
//! | `pvc` | PersistentVolumeClaim (sidecar) | yes |
//! | `emptyDir` | pod-scoped scratch (sidecar) | no |
//!
//! Registrations are always persisted; after a restart those whose directories are gone (an
//! emptyDir that was recreated) are dropped by the vanished-directory sweep.
//!
//! Usage: the bytes a volume holds are measured by a scan at start and at every usage refresh,
//! plus the bytes the service writes in between (`shuffle_volume_used_bytes`); the whole
//! filesystem's figures (statvfs) are reported beside them. With a configured capacity, free
//! space is the capacity less the volume's bytes (and never more than the filesystem has);
//! without one, it is the filesystem's. A write that does not fit fails with RESOURCE_EXHAUSTED and
//! marks the volume full until space is freed.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::core::execfs::RootDir;
use crate::error::{Result, ShuffleError};

/// What backs a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// A node directory (DaemonSet).
    HostPath,
    /// A pod-scoped emptyDir.
    EmptyDir,
    /// Node-local NVMe RAID0.
    NvmeRaid0,
    /// A PersistentVolumeClaim.
    Pvc,
}

impl VolumeKind {
    /// The name used in flags, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostPath => "hostPath",
            Self::EmptyDir => "emptyDir",
            Self::NvmeRaid0 => "nvme-raid0",
            Self::Pvc => "pvc",
        }
    }

    /// Whether data on this kind survives a pod restart.
    pub fn survives_pod_restart(self) -> bool {
        !matches!(self, Self::EmptyDir)
    }
}

impl FromStr for VolumeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "hostpath" => Ok(Self::HostPath),
            "emptydir" => Ok(Self::EmptyDir),
            "nvme-raid0" | "nvme" | "raid0" => Ok(Self::NvmeRaid0),
            "pvc" => Ok(Self::Pvc),
            other => Err(format!(
                "unknown volume kind {other:?} (hostPath, emptyDir, nvme-raid0, pvc)"
            )),
        }
    }
}

/// A volume as configured: `PATH[:KIND[:CAPACITY]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Root directory.
    pub path: PathBuf,
    /// Kind.
    pub kind: VolumeKind,
    /// Optional capacity in bytes.
    pub capacity: Option<u64>,
}

impl FromStr for VolumeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("empty volume path")?;
        let kind = parts.next().map_or(Ok(VolumeKind::EmptyDir), str::parse)?;
        let capacity = parts.next().map(parse_size).transpose()?;
        if parts.next().is_some() {
            return Err(format!("{s:?}: expected PATH[:KIND[:CAPACITY]]"));
        }
        Ok(Self {
            path: PathBuf::from(path),
            kind,
            capacity,
        })
    }
}

/// Parses a size the way every size of the project is parsed
/// ([`service_runtime::size::ByteSize`]: `4096`, `512Mi`, `10GiB`, `100MB`; `k`, `M`, `G` are
/// decimal and `Ki`, `Mi`, `Gi` binary, as in Kubernetes).
///
/// # Errors
/// A sentence naming the bad size.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<service_runtime::size::ByteSize>().map(|b| b.0)
}

/// One volume.
#[derive(Debug)]
pub struct Volume {
    /// Index in the configuration, the `volume` metric label.
    pub index: usize,
    /// Canonical root.
    pub root: PathBuf,
    /// Kind.
    pub kind: VolumeKind,
    /// Configured capacity.
    pub capacity: Option<u64>,
    /// Bytes used (scanned + written since), when a capacity is configured.
    used: AtomicU64,
    /// Set when a write was refused for space; cleared when space is freed.
    full: AtomicBool,
    /// The root, held open: every operation on executor directories resolves beneath it.
    pub dir: RootDir,
}

impl Volume {
    /// Bytes of the files below the root: the last scan plus what the service wrote since.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Used bytes of the whole filesystem holding the volume.
    pub fn fs_used_bytes(&self) -> u64 {
        rustix::fs::statvfs(&self.root)
            .map(|s| (s.f_blocks - s.f_bfree) * s.f_frsize)
            .unwrap_or(0)
    }

    /// Bytes still free for writes.
    pub fn free_bytes(&self) -> u64 {
        let fs_free = rustix::fs::statvfs(&self.root)
            .map(|s| s.f_bavail * s.f_frsize)
            .unwrap_or(0);
        match self.capacity {
            Some(cap) => cap.saturating_sub(self.used_bytes()).min(fs_free),
            None => fs_free,
        }
    }

    /// Whether the volume is marked full.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Reserves room for `bytes`, or marks the volume full.
    ///
    /// # Errors
    /// [`ShuffleError::CapacityReached`].
    pub fn reserve(&self, bytes: u64) -> Result<()> {
        if self.free_bytes() < bytes {
            self.full.store(true, Ordering::Relaxed);
            return Err(ShuffleError::CapacityReached {
                root: self.root.clone(),
                kind: self.kind.as_str(),
                free: self.free_bytes(),
                needed: bytes,
            });
        }
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Returns `bytes` to the volume (a failed write, or a deletion).
    pub fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
        self.full.store(false, Ordering::Relaxed);
    }

    /// Replaces the used count with a fresh scan's result.
    pub fn set_scanned(&self, bytes: u64) {
        self.used.store(bytes, Ordering::Relaxed);
        if self.capacity.is_some_and(|c| bytes < c) {
            self.full.store(false, Ordering::Relaxed);
        }
    }
}

/// All volumes.
#[derive(Debug)]
pub struct Volumes {
    list: Vec<Volume>,
}

impl Volumes {
    /// Opens and canonicalises the roots. A missing emptyDir root is created (it is the
    /// service's own scratch space); a missing persistent root (hostPath, nvme-raid0, pvc) is an
    /// error, so a typo or an unmounted volume is not silently served from a fresh directory.
    ///
    /// # Errors
    /// A missing persistent root, I/O errors creating or resolving a root, two nested roots.
    pub fn open(specs: &[VolumeSpec]) -> Result<Self> {
        let mut list = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            if spec.kind.survives_pod_restart() {
                if !spec.path.is_dir() {
                    return Err(ShuffleError::InvalidArgument(format!(
                        "volume {} ({}) does not exist or is not a directory; a persistent volume must be mounted before the service starts",
                        spec.path.display(),
                        spec.kind.as_str()
                    )));
                }
            } else {
                std::fs::create_dir_all(&spec.path).map_err(|e| ShuffleError::io(&spec.path, e))?;
            }
            let root =
                std::fs::canonicalize(&spec.path).map_err(|e| ShuffleError::io(&spec.path, e))?;
            if let Some(other) = list
                .iter()
                .find(|v: &&Volume| v.root.starts_with(&root) || root.starts_with(&v.root))
            {
                return Err(ShuffleError::InvalidArgument(format!(
                    "volumes {} and {} overlap",
                    other.root.display(),
                    root.display()
                )));
            }
            list.push(Volume {
                index,
                kind: spec.kind,
                capacity: spec.capacity,
                used: AtomicU64::new(0),
                full: AtomicBool::new(false),
                dir: RootDir::open(&root).map_err(|e| ShuffleError::io(&root, e))?,
                root,
            });
        }
        if list.is_empty() {
            return Err(ShuffleError::InvalidArgument("no volume configured".into()));
        }
        Ok(Self { list })
    }

    /// Every volume.
    pub fn iter(&self) -> impl Iterator<Item = &Volume> {
        self.list.iter()
    }

    /// The volume holding a canonical path.
    pub fn containing(&self, canonical: &Path) -> Option<&Volume> {
        self.list.iter().find(|v| canonical.starts_with(&v.root))
    }

    /// Canonicalises an executor directory and checks that it lies strictly below a root.
    ///
    /// # Errors
    /// [`ShuffleError::DirectoryRefused`].
    pub fn admit_dir(&self, dir: &str) -> Result<PathBuf> {
        let refused = |reason: String| ShuffleError::DirectoryRefused {
            path: dir.chars().take(512).collect(),
            reason,
        };
        if dir.is_empty() || dir.contains('\0') || !dir.starts_with('/') {
            return Err(refused("must be a non-empty absolute path".into()));
        }
        let canonical =
            std::fs::canonicalize(dir).map_err(|e| refused(format!("cannot resolve: {e}")))?;
        if !canonical.is_dir() {
            return Err(refused("not a directory".into()));
        }
        match self.containing(&canonical) {
            Some(v) if canonical != v.root => Ok(canonical),
            Some(_) => Err(refused(
                "is a volume root itself; register a directory below it".into(),
            )),
            None => Err(refused("not under any configured volume".into())),
        }
    }

    /// Total bytes of regular files below `dir` (blocking; for usage scans).
    pub fn scan_bytes(dir: &Path) -> u64 {
        let mut total = 0;
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(e.path()),
                    Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                    _ => {}
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let v: VolumeSpec = "/data:hostPath:10GiB".parse().unwrap();
        assert_eq!((v.kind, v.capacity), (VolumeKind::HostPath, Some(10 << 30)));
        let v: VolumeSpec = "/data".parse().unwrap();
        assert_eq!((v.kind, v.capacity), (VolumeKind::EmptyDir, None));
        assert!("/d:floppy".parse::<VolumeSpec>().is_err());
        assert!("/d:pvc:1x".parse::<VolumeSpec>().is_err());
    }

    #[test]
    fn admission_is_canonical() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("app/exec")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let vols = Volumes::open(&[VolumeSpec {
            path: root.clone(),
            kind: VolumeKind::HostPath,
            capacity: None,
        }])
        .unwrap();
        assert!(
            vols.admit_dir(root.join("app/exec").to_str().unwrap())
                .is_ok()
        );
        for bad in [
            root.to_str().unwrap().to_owned(),
            root.join("escape").to_str().unwrap().to_owned(),
            root.join("app/../../outside").to_str().unwrap().to_owned(),
            outside.to_str().unwrap().to_owned(),
            "relative/dir".to_owned(),
            root.join("missing").to_str().unwrap().to_owned(),
        ] {
            assert!(vols.admit_dir(&bad).is_err(), "{bad}");
        }
    }
}
