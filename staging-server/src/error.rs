//! The crate error, [`Error`]: start-up and configuration failures, and the failures of the
//! store, database and metrics below the HTTP edge. What a client is answered is
//! `crate::api_error`, which sits above them all.

use std::io;
use std::path::PathBuf;

use crate::config::ConfigError;

/// Start-up and configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is refused: an invalid value, conflicting settings, a refused secret
    /// file, or a data directory or store prefix that another server holds.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An I/O operation on a local path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The metadata database failed to open (or is of an unknown schema version), or a query
    /// failed (start-up recovery).
    #[error("database: {0}")]
    Metadata(#[from] crate::db::DbError),
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] crate::store_error::StoreError),
    /// The shared state of the replicas (`--replicated`) could not be loaded.
    #[error("shared state: {0}")]
    Replica(#[from] crate::replica::WriteError),
    /// Metric registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A refused setting, named by a sentence.
    pub fn config(message: impl Into<String>) -> Self {
        Self::Config(ConfigError::Invalid(message.into()))
    }

    /// Whether this is a configuration problem (exit code 64) rather than a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Config(e) if e.is_usage())
    }
}

/// Crate result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
