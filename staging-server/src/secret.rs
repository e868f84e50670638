//! Secrets from a value or a `*_FILE`: never both, files must not be group/world-readable.

use std::path::Path;

use crate::error::{Error, Result};

/// Reads a secret file, refusing it when its mode lets group or others read it.
///
/// # Errors
/// [`Error::InsecureSecretFile`] for a mode with any of `0o077`, [`Error::Io`] if unreadable.
pub(crate) fn read_secret_file(path: &Path) -> Result<String> {
    use service_runtime::secret::{self, SecretError};
    secret::read_string(path).map_err(|e| match e {
        SecretError::Insecure { path, mode } => Error::InsecureSecretFile { path, mode },
        SecretError::Io { path, source } => Error::io(path, source),
        other => Error::Config(other.to_string()),
    })
}

/// Resolves a secret given either inline or as a file path; both at once is an error.
///
/// # Errors
/// [`Error::Config`] if both are set, or the errors of [`read_secret_file`].
pub(crate) fn resolve(
    name: &str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>> {
    match (value, file) {
        (Some(_), Some(_)) => Err(Error::Config(format!(
            "{name} is set both as a value and as a file; set one"
        ))),
        (Some(v), None) => Ok(Some(v.trim().to_owned())),
        (None, Some(p)) => Ok(Some(read_secret_file(p)?.trim().to_owned())),
        (None, None) => Ok(None),
    }
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
        assert!(matches!(
            read_secret_file(&p),
            Err(Error::InsecureSecretFile { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            resolve("k", None, Some(&p)).unwrap().as_deref(),
            Some("s3cret")
        );
        assert!(resolve("k", Some("x"), Some(&p)).is_err());
    }
}
