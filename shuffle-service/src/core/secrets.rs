//! Secrets of Spark's authentication the operator configures: one shared secret
//! (`spark.authenticate.secret` on every application) and per-application secrets (a
//! directory of files named by application id, the shape of a mounted Kubernetes Secret); and
//! whether secrets are also learned from executor pods (Spark's own per-application secret on
//! `k8s://`, kept in [`crate::core::claims`]). Which of them answers for an application is
//! decided in one place, `crate::core::authority`.

use std::fmt;
use std::path::{Path, PathBuf};

use spark_protocol::ids::AppId;

use crate::error::SecretError;

/// Which kind of source answered for an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A secret the operator configured (the shared file or the per-application directory).
    Operator,
    /// A secret learned from the application's executor pods.
    Learned,
}

/// Where secrets come from. `Debug` shows which sources are configured, never a secret.
#[derive(Clone, Default)]
pub struct Secrets {
    shared: Option<Vec<u8>>,
    per_app_dir: Option<PathBuf>,
    learn: bool,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("shared", &self.shared.is_some())
            .field("per_app_dir", &self.per_app_dir)
            .field("learn", &self.learn)
            .finish()
    }
}

/// Reads a secret file with the rules every secret file of the project follows (mode, size,
/// trailing newline from `echo` or an editor dropped).
fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let s = service_runtime::secret::read(path)?;
    if s.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(s)
}

impl Secrets {
    /// Loads the shared secret file and remembers the per-application directory.
    ///
    /// # Errors
    /// An unreadable or empty shared secret, or a missing directory.
    pub fn load(shared: Option<&Path>, per_app_dir: Option<&Path>) -> Result<Self, SecretError> {
        let shared = shared.map(read_secret).transpose()?;
        if let Some(d) = per_app_dir
            && !d.is_dir()
        {
            return Err(SecretError::NotADirectory { path: d.to_owned() });
        }
        Ok(Self {
            shared,
            per_app_dir: per_app_dir.map(Path::to_path_buf),
            learn: false,
        })
    }

    /// Also answers with secrets learned at run time (and so requires authentication).
    #[must_use]
    pub fn with_learning(mut self) -> Self {
        self.learn = true;
        self
    }

    /// Whether secrets are learned from executor pods.
    pub fn learns(&self) -> bool {
        self.learn
    }

    /// Secrets for tests and embedding.
    pub fn shared(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            shared: Some(secret.into()),
            per_app_dir: None,
            learn: false,
        }
    }

    /// The shared secret, when configured.
    pub fn shared_secret(&self) -> Option<&[u8]> {
        self.shared.as_deref()
    }

    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        self.shared.is_some() || self.per_app_dir.is_some() || self.learn
    }

    /// The application's own secret file (blocking read of a small file). The id is
    /// validated by its type before it names a file.
    pub fn per_app(&self, app: &AppId) -> Option<Vec<u8>> {
        let d = self.per_app_dir.as_ref()?;
        match read_secret(&d.join(app.as_str())) {
            Ok(s) => Some(s),
            Err(e) => {
                // Any client names any id: the failed authentication that follows is what is
                // counted and logged (at a bounded rate); this line only helps debugging.
                if self.shared.is_none() && !self.learn {
                    tracing::debug!(app = %app, error = %e, "no secret for application");
                }
                None
            }
        }
    }

    /// Whether the operator gave the application a secret file of its own (it is then a
    /// Spark application, see `crate::core::authority`).
    pub fn has_per_app(&self, app: &AppId) -> bool {
        self.per_app_dir
            .as_ref()
            .is_some_and(|d| d.join(app.as_str()).is_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(s: &str) -> AppId {
        s.parse().expect("app id")
    }

    #[test]
    fn learning_turns_authentication_on() {
        assert!(!Secrets::default().enabled());
        let s = Secrets::default().with_learning();
        assert!(s.enabled() && s.learns());
        assert_eq!(s.per_app(&app("spark-a")), None);
        assert!(!s.has_per_app(&app("spark-a")));
    }

    #[test]
    fn a_per_application_file_answers_for_its_application_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("spark-a");
        std::fs::write(&f, "one\n").unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let s = Secrets::load(None, Some(dir.path())).unwrap();
        assert_eq!(s.per_app(&app("spark-a")).as_deref(), Some(&b"one"[..]));
        assert!(s.has_per_app(&app("spark-a")));
        assert_eq!(s.per_app(&app("spark-b")), None);
        assert!(!s.has_per_app(&app("spark-b")));
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let s = Secrets::shared(b"hunter2-shared".to_vec()).with_learning();
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
