//! One process per directory: an exclusive lock on a file in it, held for the life of the
//! process (released by the kernel when the process dies, kill -9 included).

use std::fs::File;
use std::path::{Path, PathBuf};

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    #[error("{dir} is in use by another {process} process")]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// What holds it (the binary's name).
        process: &'static str,
    },
    /// The lock file could not be created or locked.
    #[error("{path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Takes the exclusive lock of `dir` through its file `name`; keep the returned file open for
/// as long as the directory is in use.
///
/// # Errors
/// [`LockError::InUse`] when another process (or another open of the same file) holds it.
pub fn exclusive(dir: &Path, name: &str, process: &'static str) -> Result<File, LockError> {
    let path = dir.join(name);
    let file = File::create(&path).map_err(|source| LockError::Io {
        path: path.clone(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::InUse {
            dir: dir.to_owned(),
            process,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(LockError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = exclusive(dir.path(), "x.lock", "test").unwrap();
        let e = exclusive(dir.path(), "x.lock", "test").unwrap_err();
        assert!(
            e.to_string().contains("in use by another test process"),
            "{e}"
        );
        drop(first);
        assert!(exclusive(dir.path(), "x.lock", "test").is_ok());
    }
}
