//! The service error and its one gRPC mapping.

use std::io;
use std::path::PathBuf;

use crate::ids::InvalidId;

/// Errors of the shuffle core, named by what happened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShuffleError {
    /// A malformed id.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// A request field that makes no sense.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A directory outside every configured volume, or otherwise unusable.
    #[error("directory {path} refused: {reason}")]
    DirectoryRefused {
        /// The directory as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// Missing or wrong credential.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// A credential of another application, or a non-admin calling an admin RPC.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A Spark connection authenticated as one application asking for another's data.
    #[error("Client for {client} not authorized for application {app}.")]
    ClientMismatch {
        /// The application the connection authenticated as.
        client: String,
        /// The application asked for.
        app: String,
    },
    /// The map output already exists (the first committed attempt wins, as in Spark).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The application is already registered (with another token).
    #[error("application {0} is already registered")]
    AlreadyRegistered(String),
    /// A gRPC registration of an application Spark's side holds (registered over Spark's
    /// protocol, bound to its driver pod, claimed by executor pods with a secret, or given a
    /// secret file by the operator): one application, one protocol.
    #[error(
        "application {0} belongs to Spark's protocol on this node (registered by Spark, bound to its driver pod, claimed by its executor pods, or given its own secret file); it cannot be registered through the gRPC API"
    )]
    HeldBySpark(String),
    /// A Spark-protocol registration or request for an application registered over gRPC.
    #[error("application {0} was registered through the gRPC API; Spark's protocol may not use it")]
    HeldByGrpc(String),
    /// Unknown application or executor.
    #[error("{0} not found")]
    NotFound(String),
    /// Block or file not found.
    #[error("block not found: {0}")]
    BlockNotFound(String),
    /// A reduce range outside the map output.
    #[error("reduce range {start}..{end} outside 0..{partitions}")]
    OutOfRange {
        /// Range start.
        start: i32,
        /// Range end.
        end: i32,
        /// Partitions of the map output.
        partitions: usize,
    },
    /// Not enough space on the volume.
    #[error("volume full: {0}")]
    VolumeFull(String),
    /// A corrupt file on disk.
    #[error("corrupt shuffle file: {0}")]
    Corrupt(String),
    /// A local I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The metadata database failed.
    #[error("database: {0}")]
    Db(String),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
    /// The service is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl ShuffleError {
    /// Wraps an I/O error with its path; a full disk becomes [`ShuffleError::VolumeFull`].
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if service_runtime::disk::is_full(&source) {
            return Self::VolumeFull(format!("{}: {source}", path.display()));
        }
        Self::Io { path, source }
    }

    /// A short stable name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidId(_) | Self::InvalidArgument(_) | Self::DirectoryRefused { .. } => {
                "invalid_argument"
            }
            Self::Unauthenticated(_) => "unauthenticated",
            Self::PermissionDenied(_) | Self::ClientMismatch { .. } => "permission_denied",
            Self::HeldBySpark(_) | Self::HeldByGrpc(_) => "failed_precondition",
            Self::AlreadyRegistered(_) | Self::AlreadyExists(_) => "already_exists",
            Self::NotFound(_) | Self::BlockNotFound(_) => "not_found",
            Self::OutOfRange { .. } => "out_of_range",
            Self::VolumeFull(_) => "resource_exhausted",
            Self::Corrupt(_) => "data_loss",
            Self::Io { .. } | Self::Db(_) | Self::Task(_) => "internal",
            Self::ShuttingDown => "unavailable",
        }
    }
}

impl From<tokio::task::JoinError> for ShuffleError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Task(e.to_string())
    }
}

impl From<rusqlite::Error> for ShuffleError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(e.to_string())
    }
}

impl From<ShuffleError> for tonic::Status {
    fn from(e: ShuffleError) -> Self {
        use tonic::Status;
        match &e {
            ShuffleError::InvalidId(_)
            | ShuffleError::InvalidArgument(_)
            | ShuffleError::DirectoryRefused { .. } => Status::invalid_argument(e.to_string()),
            ShuffleError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
            ShuffleError::PermissionDenied(_) | ShuffleError::ClientMismatch { .. } => {
                Status::permission_denied(e.to_string())
            }
            // The id is taken by the other protocol: no credential changes that.
            ShuffleError::HeldBySpark(_) | ShuffleError::HeldByGrpc(_) => {
                Status::failed_precondition(e.to_string())
            }
            ShuffleError::AlreadyRegistered(_) | ShuffleError::AlreadyExists(_) => {
                Status::already_exists(e.to_string())
            }
            ShuffleError::NotFound(_) | ShuffleError::BlockNotFound(_) => {
                Status::not_found(e.to_string())
            }
            ShuffleError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
            ShuffleError::VolumeFull(_) => Status::resource_exhausted(e.to_string()),
            ShuffleError::Corrupt(_) => Status::data_loss(e.to_string()),
            ShuffleError::ShuttingDown => Status::unavailable("shutting down"),
            ShuffleError::Io { .. } | ShuffleError::Db(_) | ShuffleError::Task(_) => {
                tracing::error!(cause = %e, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Result of the shuffle core.
pub type Result<T, E = ShuffleError> = std::result::Result<T, E>;
