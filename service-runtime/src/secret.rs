//! Secret files: refused when others may read them, when anyone but the owner may write
//! them, or when the group may read them and the owner is not root; trailing newlines dropped.
//!
//! A root-owned file that its group may read (`0440`, `0640`) is what Kubernetes mounts for a
//! Secret volume with `fsGroup`: the kubelet, not the file's group, decided who reads it, and
//! a non-root service has no other way to read a mounted Secret. Any other group-readable file
//! is refused.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Largest secret file read.
pub const MAX_SECRET_FILE: u64 = 64 << 10;

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Others may read it, group or others may write it, or the group may read a file not
    /// owned by root.
    #[error(
        "secret file {path} is readable by others, writable by group or others, or group-readable without being owned by root (mode {mode:o}); chmod 600 it"
    )]
    Insecure {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Larger than [`MAX_SECRET_FILE`].
    #[error("secret file {path} is larger than 64 KiB")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Reads a secret file (following a link, as Kubernetes mounts them), refusing modes that
/// let others read it, group or others write it, or the group read a file not owned by root
/// (see the module); trailing newlines and carriage returns are dropped.
///
/// # Errors
/// [`SecretError`].
pub fn read(path: &Path) -> Result<Vec<u8>, SecretError> {
    let io = |source| SecretError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    let group_read_ok = std::os::unix::fs::MetadataExt::uid(&meta) == 0;
    if mode & 0o027 != 0 || (mode & 0o040 != 0 && !group_read_ok) {
        return Err(SecretError::Insecure {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(SecretError::TooLarge {
            path: path.to_owned(),
        });
    }
    let mut s = std::fs::read(path).map_err(io)?;
    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        s.pop();
    }
    Ok(s)
}

/// [`read`] as text.
///
/// # Errors
/// [`SecretError`], or `Io` with `InvalidData` for text that is not UTF-8.
pub fn read_string(path: &Path) -> Result<String, SecretError> {
    String::from_utf8(read(path)?).map_err(|e| SecretError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_readable_files_and_trims() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "s3cret\n").unwrap();
        // Group-readable is refused unless root owns the file (a mounted Secret).
        let _ = std::os::unix::fs::chown(&p, Some(185), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(read(&p), Err(SecretError::Insecure { .. })));
        for bad in [0o604, 0o620, 0o602, 0o644] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(bad)).unwrap();
            assert!(
                matches!(read(&p), Err(SecretError::Insecure { .. })),
                "{bad:o}"
            );
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read(&p).unwrap(), b"s3cret");
    }

    #[test]
    fn a_root_owned_group_readable_file_is_a_mounted_secret() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "s3cret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o440)).unwrap();
        let root = rustix::process::getuid().is_root();
        let owned_by_root =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&p).unwrap()) == 0;
        assert_eq!(root, owned_by_root);
        if owned_by_root {
            assert_eq!(read(&p).unwrap(), b"s3cret");
            // Not when the owner is someone else.
            std::os::unix::fs::chown(&p, Some(185), None).unwrap();
        }
        assert!(matches!(read(&p), Err(SecretError::Insecure { .. })));
    }
}
