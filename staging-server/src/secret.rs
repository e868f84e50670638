//! Secret files read at start-up (the generated signing key in the data directory), refused
//! when others may read them, with the rules of [`service_runtime::secret`]; the secrets of the
//! configuration are read by `config`.

use std::path::Path;

use crate::config::ConfigError;
use crate::error::{Error, Result};

/// Reads a secret file, refusing it when its mode lets others read it (see
/// [`service_runtime::secret::read`]).
///
/// # Errors
/// [`Error::Config`] with [`ConfigError::Secret`] for a refused file, [`Error::Io`] if
/// unreadable.
pub(crate) fn read_secret_file(path: &Path) -> Result<String> {
    use service_runtime::secret::{self, SecretError};
    secret::read_string(path).map_err(|e| match e {
        SecretError::Io { path, source } => Error::io(path, source),
        refused => Error::Config(ConfigError::Secret(refused)),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn refuses_group_readable_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "s3cret\n").unwrap();
        // Group-readable is refused unless root owns the file (a mounted Secret).
        let _ = std::os::unix::fs::chown(&p, Some(185), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_secret_file(&p).unwrap_err();
        assert!(e.is_usage(), "{e}");
        assert!(
            matches!(
                e,
                Error::Config(ConfigError::Secret(
                    service_runtime::secret::SecretError::Insecure { .. }
                ))
            ),
            "{e}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&p).unwrap(), "s3cret");
    }
}
