//! Secret files: refused when group or others may read them, trailing newlines dropped.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Largest secret file read.
pub const MAX_SECRET_FILE: u64 = 64 << 10;

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Group or others may read it.
    #[error("secret file {path} is readable by group or others (mode {mode:o}); chmod 600 it")]
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
/// let group or others read it; trailing newlines and carriage returns are dropped.
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
    if mode & 0o077 != 0 {
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
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(read(&p), Err(SecretError::Insecure { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read(&p).unwrap(), b"s3cret");
    }
}
