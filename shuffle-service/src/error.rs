//! The service error (with the error of Spark's authentication secrets it carries), and its
//! two mappings to what clients see: a gRPC `Status`, and the text of a Spark `RpcFailure` or
//! chunk failure. Internal causes (I/O, the database, a failed task, start-up) are logged with
//! their sources and never shown to clients.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use spark_protocol::ids::InvalidId;

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
    /// A write the volume's configured capacity cannot take.
    #[error("volume full: {} ({kind}) has {free} bytes free, {needed} bytes needed", root.display())]
    CapacityReached {
        /// The volume root.
        root: PathBuf,
        /// Its kind.
        kind: &'static str,
        /// Bytes free.
        free: u64,
        /// Bytes the write needs.
        needed: u64,
    },
    /// The filesystem refused a write for space (or quota).
    #[error("volume full: {}: {source}", path.display())]
    VolumeFull {
        /// The file written.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A corrupt file on disk.
    #[error("corrupt shuffle file: {0}")]
    Corrupt(String),
    /// A local I/O failure.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The metadata database failed.
    #[error("database: {source}")]
    Db {
        /// The cause.
        #[from]
        source: rusqlite::Error,
    },
    /// The metadata database was written by a newer version of the service.
    #[error(
        "{} has schema version {found}, which this service does not know (it reads versions up to {known}): a newer shuffle-service wrote it; run that version, or move the state directory aside (registrations are then lost)",
        path.display()
    )]
    UnknownSchema {
        /// The database file.
        path: PathBuf,
        /// Its version (`PRAGMA user_version`).
        found: i64,
        /// The newest version this service knows.
        known: i64,
    },
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {source}")]
    Task {
        /// The cause.
        #[from]
        source: tokio::task::JoinError,
    },
    /// Start-up: Spark's authentication secrets cannot be used.
    #[error("Spark authentication: {source}")]
    SparkSecret {
        /// The cause.
        #[from]
        source: SecretError,
    },
    /// Start-up: another process holds the state directory or a volume.
    #[error("{source}")]
    Locked {
        /// The cause.
        source: service_runtime::lock::LockError,
    },
    /// Start-up: a metric could not be registered (a name registered twice).
    #[error("metrics: {source}")]
    Metrics {
        /// The cause.
        #[from]
        source: prometheus::Error,
    },
    /// Start-up: a listener could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address (or the probe socket's path).
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// Start-up: a listener's TLS certificate and key cannot be used.
    #[error("TLS of the {listener} listener: {source}")]
    Tls {
        /// The listener (`grpc`, `admin`, `spark`).
        listener: &'static str,
        /// The cause.
        source: service_runtime::tls::TlsError,
    },
    /// Start-up: the gRPC reflection service could not be built.
    #[error("gRPC reflection: {source}")]
    Reflection {
        /// The cause.
        #[from]
        source: tonic_reflection::server::Error,
    },
    /// The service is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl ShuffleError {
    /// Wraps an I/O error with its path; a full disk becomes [`ShuffleError::VolumeFull`].
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if service_runtime::disk::is_full(&source) {
            return Self::VolumeFull { path, source };
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
            Self::CapacityReached { .. } | Self::VolumeFull { .. } => "resource_exhausted",
            Self::Corrupt(_) => "data_loss",
            Self::ShuttingDown => "unavailable",
            // The rest is internal (`is_internal`).
            _ => "internal",
        }
    }

    /// Whether the cause is the service's, not the request's: logged, and shown to clients
    /// as an internal error only.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Self::Io { .. }
                | Self::Db { .. }
                | Self::UnknownSchema { .. }
                | Self::Task { .. }
                | Self::SparkSecret { .. }
                | Self::Locked { .. }
                | Self::Metrics { .. }
                | Self::Bind { .. }
                | Self::Tls { .. }
                | Self::Reflection { .. }
        )
    }

    /// A bind failure of `addr`.
    pub fn bind(addr: SocketAddr, source: io::Error) -> Self {
        Self::Bind {
            addr: addr.to_string(),
            source,
        }
    }
}

/// Why a secret of Spark's authentication cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The file cannot be read, or its mode lets others read it.
    #[error(transparent)]
    Unreadable(#[from] service_runtime::secret::SecretError),
    /// The file holds nothing.
    #[error("{}: empty secret", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The per-application secrets' directory is not one.
    #[error("{}: not a directory", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
}

/// The text of a Spark `RpcFailure` or chunk failure for an error: internal causes are logged
/// and not shown.
pub(crate) fn failure_text(e: &ShuffleError) -> String {
    if e.is_internal() {
        tracing::error!(cause = %e, "internal error");
        return "internal error in the shuffle service".to_owned();
    }
    e.to_string()
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
            ShuffleError::CapacityReached { .. } | ShuffleError::VolumeFull { .. } => {
                Status::resource_exhausted(e.to_string())
            }
            ShuffleError::Corrupt(_) => Status::data_loss(e.to_string()),
            ShuffleError::ShuttingDown => Status::unavailable("shutting down"),
            _ => {
                tracing::error!(cause = %e, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Result of the shuffle core.
pub type Result<T, E = ShuffleError> = std::result::Result<T, E>;
