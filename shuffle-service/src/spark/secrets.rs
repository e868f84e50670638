//! Secrets of Spark's authentication: one shared secret (`spark.authenticate.secret` on every
//! application), per-application secrets (a directory of files named by application id, the
//! shape of a mounted Kubernetes Secret), or both, the per-application one winning.

use std::path::{Path, PathBuf};

use crate::ids::AppId;

/// Where secrets come from.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    shared: Option<Vec<u8>>,
    per_app_dir: Option<PathBuf>,
}

/// Reads a secret file with the rules every secret file of the project follows (mode, size,
/// trailing newline from `echo` or an editor dropped).
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let s = service_runtime::secret::read(path).map_err(|e| e.to_string())?;
    if s.is_empty() {
        return Err(format!("{}: empty secret", path.display()));
    }
    Ok(s)
}

impl Secrets {
    /// Loads the shared secret file and remembers the per-application directory.
    ///
    /// # Errors
    /// An unreadable or empty shared secret, or a missing directory.
    pub fn load(shared: Option<&Path>, per_app_dir: Option<&Path>) -> Result<Self, String> {
        let shared = shared.map(read_secret).transpose()?;
        if let Some(d) = per_app_dir
            && !d.is_dir()
        {
            return Err(format!("{}: not a directory", d.display()));
        }
        Ok(Self {
            shared,
            per_app_dir: per_app_dir.map(Path::to_path_buf),
        })
    }

    /// Secrets for tests and embedding.
    pub fn shared(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            shared: Some(secret.into()),
            per_app_dir: None,
        }
    }

    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        self.shared.is_some() || self.per_app_dir.is_some()
    }

    /// The secret of an application (blocking read of a small file). The id is validated by
    /// its type before it names a file.
    pub fn lookup(&self, app: &AppId) -> Option<Vec<u8>> {
        if let Some(d) = &self.per_app_dir {
            match read_secret(&d.join(app.as_str())) {
                Ok(s) => return Some(s),
                Err(e) if self.shared.is_none() => {
                    tracing::warn!(app = %app, error = %e, "no secret for application");
                }
                Err(_) => {}
            }
        }
        self.shared.clone()
    }
}
