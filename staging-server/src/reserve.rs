//! Room to free room: a reserve file in the data directory.
//!
//! On a full disk SQLite cannot write even a deletion (in WAL mode every change, a DELETE
//! included, appends to the log first), so nothing could free space, and after a crash the
//! database could not even be reopened. The server therefore keeps a reserve file of
//! [`crate::config::DEFAULT_DISK_RESERVE`] bytes (written, not sparse) beside the database.
//! When a write that frees space, or start-up, finds the disk full, the reserve is deleted and
//! the write retried; the sweep writes the reserve again once the disk has twice its size
//! free. While the disk is full, uploads get 507, downloads go on, and `staging_storage_full`
//! is 1.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The reserve file's name in the data directory.
pub(crate) const RESERVE_FILE: &str = "reserve";

/// The reserve of one data directory.
#[derive(Debug)]
pub(crate) struct Reserve {
    path: PathBuf,
    size: u64,
}

impl Reserve {
    /// The reserve of `dir`, `size` bytes (0: none).
    pub(crate) fn new(dir: &Path, size: u64) -> Self {
        Self {
            path: dir.join(RESERVE_FILE),
            size,
        }
    }

    /// Whether the reserve file is in place.
    pub(crate) fn is_held(&self) -> bool {
        self.size == 0 || std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.size)
    }

    /// Writes the reserve if it is missing and the disk has twice its size free; returns
    /// whether it is in place afterwards (blocking).
    pub(crate) fn ensure(&self) -> bool {
        if self.is_held() {
            return true;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let free = rustix::fs::statvfs(dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(0);
        if free < self.size.saturating_mul(2) {
            return false;
        }
        let tmp = self.path.with_extension("tmp");
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            // Real blocks, not a sparse file: the point is to hold space.
            let zeros = vec![0u8; 1 << 20];
            let mut left = self.size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        match written {
            Ok(()) => true,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(cause = %e, "could not write the disk reserve");
                false
            }
        }
    }

    /// Deletes the reserve to make room; returns whether there was one to delete.
    pub(crate) fn release(&self) -> bool {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    bytes = self.size,
                    "disk full: released the disk reserve to let deletions through"
                );
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_released_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(dir.path(), 3 << 20);
        assert!(!r.is_held());
        assert!(r.ensure());
        assert_eq!(
            std::fs::metadata(dir.path().join(RESERVE_FILE))
                .unwrap()
                .len(),
            3 << 20
        );
        assert!(r.release());
        assert!(!r.release());
        assert!(r.ensure() && r.is_held());
        assert!(Reserve::new(dir.path(), 0).is_held());
    }
}
