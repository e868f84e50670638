//! The secrets of the configuration: the signing key (a value or a file, never both), the keys
//! that only verify, and the upload tokens. Files are read with the secret-file rules of
//! `service_runtime::secret` (refused when others may read them); values are trimmed.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// A secret given either inline or as a file path (both at once is an error), trimmed.
pub(super) fn secret_value(
    name: &str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(format!(
            "{name} is set both as a value and as a file; set one"
        ))),
        (Some(v), None) => Ok(Some(v.trim().to_owned())),
        (None, Some(p)) => Ok(Some(
            service_runtime::secret::read_string(p)?.trim().to_owned(),
        )),
        (None, None) => Ok(None),
    }
}

/// The keys that only verify: values given inline (comma-separated) and the keys of each file,
/// one per line (`#` comments and blank lines left out, so that an empty file, or an empty
/// variable, names none), each trimmed.
pub(super) fn read_verify_keys(
    inline: Option<&str>,
    files: &[PathBuf],
) -> Result<Vec<Vec<u8>>, ConfigError> {
    let mut keys: Vec<String> = inline
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    for path in files {
        let text = service_runtime::secret::read_string(path)?;
        keys.extend(
            text.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .map(str::to_owned),
        );
    }
    Ok(keys
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .map(|k| k.as_bytes().to_vec())
        .collect())
}

pub(super) fn read_upload_tokens(
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Vec<crate::auth::UploadToken>, ConfigError> {
    let mut entries: Vec<String> = inline
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    if let Some(path) = file {
        let text = service_runtime::secret::read_string(path)?;
        entries.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let mut tokens = Vec::new();
    for entry in &entries {
        let token = crate::auth::UploadToken::parse(entry)
            .map_err(|e| ConfigError::invalid(format!("an upload token's namespaces: {e}")))?;
        tokens.extend(token);
    }
    Ok(tokens)
}
