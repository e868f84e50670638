//! Secrets of Spark's authentication: one shared secret (`spark.authenticate.secret` on every
//! application), per-application secrets (a directory of files named by application id, the
//! shape of a mounted Kubernetes Secret), secrets learned from executor pods (Spark's own
//! per-application secret on `k8s://`, see `crate::kube`), or several: a per-application file
//! wins over a learned secret, which wins over the shared one. An application that only its
//! own lifecycle may end (registered over gRPC, or authenticated with a secret the operator
//! configured) is answered for by the operator's secrets only: a learned secret never
//! replaces or shadows them (see [`Secrets::find`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::ids::AppId;

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
    learned: Option<Arc<Learned>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("shared", &self.shared.is_some())
            .field("per_app_dir", &self.per_app_dir)
            .field("learned", &self.learned)
            .finish()
    }
}

/// Per-application secrets learned at run time, in memory only. Overwritten bytes are
/// zeroed when an application is forgotten.
#[derive(Default)]
pub struct Learned {
    map: RwLock<HashMap<AppId, Vec<u8>>>,
}

impl fmt::Debug for Learned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Learned")
            .field("applications", &self.len())
            .finish()
    }
}

impl Learned {
    /// Remembers an application's secret. Returns `false` (and keeps the first) when a
    /// different secret is already known for the application.
    pub fn learn(&self, app: &AppId, secret: &[u8]) -> bool {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(app) {
            Some(known) => bool::from(subtle::ConstantTimeEq::ct_eq(known.as_slice(), secret)),
            None => {
                map.insert(app.clone(), secret.to_vec());
                true
            }
        }
    }

    /// Forgets an application's secret.
    pub fn forget(&self, app: &AppId) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut s) = map.remove(app) {
            s.fill(0);
        }
    }

    /// The secret of an application, if learned.
    pub fn get(&self, app: &AppId) -> Option<Vec<u8>> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(app)
            .cloned()
    }

    /// Number of applications with a learned secret.
    pub fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no secret is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
            learned: None,
        })
    }

    /// Also answers with secrets learned at run time (and so requires authentication).
    #[must_use]
    pub fn with_learned(mut self, learned: Arc<Learned>) -> Self {
        self.learned = Some(learned);
        self
    }

    /// The learned secrets, when that source is on.
    pub fn learned(&self) -> Option<&Arc<Learned>> {
        self.learned.as_ref()
    }

    /// Secrets for tests and embedding.
    pub fn shared(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            shared: Some(secret.into()),
            per_app_dir: None,
            learned: None,
        }
    }

    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        self.shared.is_some() || self.per_app_dir.is_some() || self.learned.is_some()
    }

    /// The secret of an application, from any source (see [`Secrets::find`]).
    pub fn lookup(&self, app: &AppId) -> Option<Vec<u8>> {
        self.find(app, true).map(|(s, _)| s)
    }

    /// The secret of an application and its source (blocking read of a small file): the
    /// per-application file, else (when `learned_allowed`) a learned secret, else the shared
    /// one. The id is validated by its type before it names a file.
    pub fn find(&self, app: &AppId, learned_allowed: bool) -> Option<(Vec<u8>, Source)> {
        let learned = self.learned.as_ref().filter(|_| learned_allowed);
        if let Some(d) = &self.per_app_dir {
            match read_secret(&d.join(app.as_str())) {
                Ok(s) => return Some((s, Source::Operator)),
                Err(e) if self.shared.is_none() && learned.is_none() => {
                    tracing::warn!(app = %app, error = %e, "no secret for application");
                }
                Err(_) => {}
            }
        }
        if let Some(s) = learned.and_then(|l| l.get(app)) {
            return Some((s, Source::Learned));
        }
        self.shared.clone().map(|s| (s, Source::Operator))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(s: &str) -> AppId {
        s.parse().expect("app id")
    }

    #[test]
    fn a_learned_secret_answers_for_its_application_only_and_is_forgotten() {
        let learned = Arc::new(Learned::default());
        let secrets = Secrets::default().with_learned(Arc::clone(&learned));
        assert!(secrets.enabled());
        assert!(learned.learn(&app("spark-a"), b"one"));
        assert_eq!(
            secrets.lookup(&app("spark-a")).as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(secrets.lookup(&app("spark-b")), None);
        learned.forget(&app("spark-a"));
        assert_eq!(secrets.lookup(&app("spark-a")), None);
    }

    #[test]
    fn a_learned_secret_never_answers_where_it_is_not_allowed() {
        let learned = Arc::new(Learned::default());
        learned.learn(&app("spark-a"), b"learned");
        let secrets = Secrets::shared(b"shared".to_vec()).with_learned(learned);
        assert_eq!(
            secrets.find(&app("spark-a"), true),
            Some((b"learned".to_vec(), Source::Learned))
        );
        assert_eq!(
            secrets.find(&app("spark-a"), false),
            Some((b"shared".to_vec(), Source::Operator))
        );
        let only_learned = Secrets::default().with_learned(Arc::new(Learned::default()));
        assert_eq!(only_learned.find(&app("spark-a"), false), None);
    }

    #[test]
    fn a_second_different_secret_does_not_replace_the_first() {
        let learned = Learned::default();
        assert!(learned.learn(&app("spark-a"), b"one"));
        assert!(learned.learn(&app("spark-a"), b"one"));
        assert!(!learned.learn(&app("spark-a"), b"two"));
        assert_eq!(learned.get(&app("spark-a")).as_deref(), Some(&b"one"[..]));
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let learned = Arc::new(Learned::default());
        learned.learn(&app("spark-a"), b"hunter2-learned");
        let s = Secrets::shared(b"hunter2-shared".to_vec()).with_learned(learned);
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
