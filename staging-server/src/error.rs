//! The crate error, [`Error`]: start-up and configuration failures, and the failures of the
//! store, database and metrics below the HTTP edge. What a client is answered is
//! `crate::api_error`, which sits above them all.

use std::io;
use std::path::PathBuf;

/// Start-up and configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid or two settings conflict.
    #[error("configuration: {0}")]
    Config(String),
    /// A secret file is readable by group or others.
    #[error(
        "secret file {path} is readable by others, writable by group or others, or group-readable without being owned by root (mode {mode:o}); chmod 600 it"
    )]
    InsecureSecretFile {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
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
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// An object-store call did not finish within the configured timeout.
    #[error("object store: no answer within the timeout ({0})")]
    StoreTimeout(&'static str),
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

    /// Whether this is a configuration problem (exit code 64) rather than a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Config(_) | Self::InsecureSecretFile { .. })
    }
}

/// Crate result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
