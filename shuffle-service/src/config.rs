//! Configuration of `shuffle-service serve`: flags and `SHUFFLE_*` env ([`ServeArgs`]), an
//! optional TOML file, defaults, and the validated runtime [`Config`].
//!
//! Precedence: flag > env > file > default. Every argument is an `Option`, so that "not given"
//! falls through to the file and then to the `DEFAULT_*` constant; switches too, so that
//! `--spark-require-encryption=false` can turn off what the file turned on. The file is typed
//! by serde (sizes, durations, volumes), never merged as strings. Loading is pure: it reads the
//! files it is pointed at and nothing else (whether the process runs in a cluster is the
//! caller's to say) and changes no environment. Every rule a [`Config`] must keep is checked by
//! [`Config::validate`], so that a `Config` built in a test is held to the same rules as a
//! loaded one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use service_runtime::secret::SecretError;

mod args;
mod connections;
mod file;
mod kube;
mod settings;

pub use args::ServeArgs;
pub use connections::*;
use file::FileConfig;
pub use kube::{DriverScope, KubeSettings, KubeWatch};
use kube::{kube_settings, validate_namespaces};

use crate::core::Durability;
use crate::core::VolumeSpec;
use spark_protocol::crypto::Cipher;

/// gRPC API address; 7337 is left to Spark's own protocol.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7338";
/// Admin HTTP address (/metrics, /healthz, /readyz).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7339";
/// Data directory holding the default volume and state directory.
pub const DEFAULT_DATA_DIR: &str = "data/shuffle";
/// Heartbeat timeout when a driver gives none (Spark's network timeout).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(120);
/// Applications known only from executors are removed after this long without any call.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(6 * 3600);
/// Liveness sweep period.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Concurrent deletions per volume.
pub const DEFAULT_CLEANUP_PARALLELISM: usize = 8;
/// Index cache bound.
pub const DEFAULT_INDEX_CACHE_BYTES: u64 = 64 << 20;
/// Drain time after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Most blocks in one FetchBlocks request.
pub const DEFAULT_MAX_FETCH_BLOCKS: usize = 100_000;
/// Spark protocol address (Spark's `spark.shuffle.service.port` default).
pub const DEFAULT_SPARK_LISTEN: &str = "127.0.0.1:7337";
/// Most Spark-protocol connections at once.
pub const DEFAULT_SPARK_MAX_CONNECTIONS: usize = 4096;
/// Default of `--spark-max-connections-per-peer`: a quarter of the listener, so that one
/// address (a pod, or a node's hostNetwork executors together) cannot take every connection.
pub const DEFAULT_SPARK_MAX_CONNECTIONS_PER_PEER: usize = 1024;
/// Most authenticated Spark-protocol connections of one application at once: a quarter of
/// the cap, more than an application of a thousand executors opens to one node (one
/// connection per executor, Spark's `numConnectionsPerPeer`).
pub const DEFAULT_SPARK_MAX_CONNECTIONS_PER_APP: usize = 1024;
/// Spark-protocol connections idle this long are closed (Spark's `connectionTimeout`).
pub const DEFAULT_SPARK_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest Spark frame accepted from a client.
pub const DEFAULT_SPARK_MAX_FRAME: u64 = 16 << 20;
/// Largest Spark frame accepted before the client authenticated (when authentication is on).
pub const DEFAULT_SPARK_PREAUTH_MAX_FRAME: u64 = 16 << 10;
/// Memory for partly received Spark frames across connections.
pub const DEFAULT_SPARK_FRAME_MEMORY: u64 = 128 << 20;
/// A Spark connection must authenticate within this when authentication is on: Spark's client
/// does so in its first round trips, so only a stranger needs longer.
pub const DEFAULT_SPARK_AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// The share of `--spark-frame-memory` one peer may hold, as a divisor: a quarter, so that one
/// client (or one pod's many connections) cannot starve the others.
pub const SPARK_FRAME_MEMORY_PEER_DIVISOR: u64 = 4;
/// Memory for block bodies across Spark connections.
pub const DEFAULT_SPARK_MEMORY: u64 = 64 << 20;
/// Memory for block bodies per Spark connection.
pub const DEFAULT_SPARK_CONNECTION_MEMORY: u64 = 1 << 20;
/// Block files open for sending at once across Spark connections.
pub const DEFAULT_SPARK_OPEN_FILES: usize = 4096;
/// Spark block bodies up to this size are read and batched; larger ones go by sendfile.
pub const DEFAULT_SPARK_SMALL_BODY: u64 = 16 << 10;
/// How often capacity-limited volumes are rescanned.
pub const DEFAULT_USAGE_SCAN_INTERVAL: Duration = Duration::from_secs(300);
/// How long a driver pod stays `Succeeded` or `Failed` before its application's data goes.
pub const DEFAULT_KUBE_APP_END_GRACE: Duration = Duration::from_secs(30);

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting is invalid or two settings conflict.
    #[error("{0}")]
    Invalid(String),
    /// The `--config` file cannot be read.
    #[error("{}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The `--config` file is not TOML, names an unknown key or holds a bad value.
    #[error("{}: {source}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        source: Box<toml::de::Error>,
    },
    /// The admin token file is refused or cannot be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl ConfigError {
    /// Whether the operator's settings are at fault (exit code 64, `EX_USAGE`) rather than the
    /// machine. Every refusal of the configuration is: the files read at load are the ones the
    /// operator named, so one that cannot be read is a setting to correct too.
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Invalid(_) | Self::ReadFile { .. } | Self::ParseFile { .. } | Self::Secret(_) => {
                true
            }
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}

/// `--spark-listen`: an address, or `off` (also `none` or empty) for no Spark listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparkListen(pub Option<SocketAddr>);

impl FromStr for SparkListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" | "none" | "" => Ok(Self(None)),
            a => a
                .parse()
                .map(|a| Self(Some(a)))
                .map_err(|e| format!("spark_listen {a:?}: {e}")),
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listener.
    pub grpc_listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Unix socket of the probes (`shuffle-service probe`), if any.
    pub probe_socket: Option<PathBuf>,
    /// Volumes.
    pub volumes: Vec<VolumeSpec>,
    /// State directory.
    pub state_dir: PathBuf,
    /// SHA-256 of the admin tokens.
    pub admin_token_hashes: Vec<[u8; 32]>,
    /// Default heartbeat timeout.
    pub heartbeat_timeout: Duration,
    /// Idle TTL.
    pub idle_ttl: Duration,
    /// Sweep period.
    pub sweep_interval: Duration,
    /// Deletions per volume.
    pub cleanup_parallelism: usize,
    /// Index cache bound.
    pub index_cache_bytes: usize,
    /// Drain time.
    pub shutdown_grace: Duration,
    /// Most blocks per fetch.
    pub max_fetch_blocks: usize,
    /// Usage rescan period.
    pub usage_scan_interval: Duration,
    /// Spark protocol listener (`None`: off).
    pub spark_listen: Option<SocketAddr>,
    /// Shared Spark secret file.
    pub spark_auth_secret_file: Option<PathBuf>,
    /// Per-application Spark secrets.
    pub spark_auth_secret_dir: Option<PathBuf>,
    /// Spark's protocol may be served without authentication beyond loopback.
    pub spark_allow_unauthenticated: bool,
    /// A shared secret beside learned secrets is accepted.
    pub spark_allow_shared_secret_with_learned: bool,
    /// Channel ciphers accepted with network crypto.
    pub spark_ciphers: Vec<Cipher>,
    /// Connections that do not encrypt are refused.
    pub spark_require_encryption: bool,
    /// How registrations reach the disk.
    pub registry_sync: Durability,
    /// Most Spark connections.
    pub spark_max_connections: usize,
    /// Most Spark connections from one peer (with authentication: not yet authenticated).
    pub spark_max_connections_per_peer: usize,
    /// Most authenticated Spark connections of one application.
    pub spark_max_connections_per_app: usize,
    /// Idle close.
    pub spark_idle_timeout: Duration,
    /// Largest client frame.
    pub spark_max_frame: usize,
    /// Body memory across connections.
    pub spark_memory: u64,
    /// Body memory per connection.
    pub spark_connection_memory: u64,
    /// Open block files across connections.
    pub spark_open_files: usize,
    /// Bodies read into memory up to this size.
    pub spark_small_body: u64,
    /// Largest client frame before authentication.
    pub spark_preauth_max_frame: usize,
    /// Memory for partly received frames across connections.
    pub spark_frame_memory: u64,
    /// The part of it one peer may hold; `None`: a quarter, at least one largest frame.
    pub spark_frame_memory_per_peer: Option<u64>,
    /// Unauthenticated connections are closed after this (when authentication is on).
    pub spark_auth_timeout: Duration,
    /// Connection caps, deadlines and idle close of the gRPC and admin listeners.
    pub connections: ConnectionLimits,
    /// Following Spark's pods (`None`: off).
    pub kube: Option<KubeSettings>,
    /// TLS of the gRPC listener (`None`: plaintext).
    pub grpc_tls: Option<service_runtime::tls::TlsFiles>,
    /// TLS of the Spark listener (`None`: plaintext).
    pub spark_tls: Option<service_runtime::tls::TlsFiles>,
    /// TLS of the admin listener (`None`: plain HTTP).
    pub admin_tls: Option<service_runtime::tls::TlsFiles>,
    /// How often TLS files are looked at for a new certificate.
    pub tls_reload_interval: Duration,
}

impl Config {
    /// Defaults under `data_dir`: one emptyDir volume, state beside it, loopback listeners.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let d = data_dir.into();
        Self {
            grpc_listen: DEFAULT_GRPC_LISTEN.parse().expect("constant"),
            admin_listen: DEFAULT_ADMIN_LISTEN.parse().expect("constant"),
            probe_socket: None,
            volumes: vec![VolumeSpec {
                path: d.join("volume"),
                kind: crate::core::VolumeKind::EmptyDir,
                capacity: None,
            }],
            state_dir: d.join("state"),
            admin_token_hashes: Vec::new(),
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            idle_ttl: DEFAULT_IDLE_TTL,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            cleanup_parallelism: DEFAULT_CLEANUP_PARALLELISM,
            index_cache_bytes: DEFAULT_INDEX_CACHE_BYTES as usize,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_fetch_blocks: DEFAULT_MAX_FETCH_BLOCKS,
            usage_scan_interval: DEFAULT_USAGE_SCAN_INTERVAL,
            spark_listen: Some(DEFAULT_SPARK_LISTEN.parse().expect("constant")),
            spark_auth_secret_file: None,
            spark_auth_secret_dir: None,
            spark_allow_unauthenticated: false,
            spark_allow_shared_secret_with_learned: false,
            spark_ciphers: vec![Cipher::Gcm, Cipher::Ctr],
            spark_require_encryption: false,
            registry_sync: Durability::Full,
            spark_max_connections: DEFAULT_SPARK_MAX_CONNECTIONS,
            spark_max_connections_per_peer: DEFAULT_SPARK_MAX_CONNECTIONS_PER_PEER,
            spark_max_connections_per_app: DEFAULT_SPARK_MAX_CONNECTIONS_PER_APP,
            spark_idle_timeout: DEFAULT_SPARK_IDLE_TIMEOUT,
            spark_max_frame: DEFAULT_SPARK_MAX_FRAME as usize,
            spark_memory: DEFAULT_SPARK_MEMORY,
            spark_connection_memory: DEFAULT_SPARK_CONNECTION_MEMORY,
            spark_open_files: DEFAULT_SPARK_OPEN_FILES,
            spark_small_body: DEFAULT_SPARK_SMALL_BODY,
            spark_preauth_max_frame: DEFAULT_SPARK_PREAUTH_MAX_FRAME as usize,
            spark_frame_memory: DEFAULT_SPARK_FRAME_MEMORY,
            spark_frame_memory_per_peer: None,
            spark_auth_timeout: DEFAULT_SPARK_AUTH_TIMEOUT,
            connections: ConnectionLimits::default(),
            kube: None,
            grpc_tls: None,
            spark_tls: None,
            admin_tls: None,
            tls_reload_interval: service_runtime::tls::RELOAD_INTERVAL,
        }
    }
    /// Merges flags, env and file over the defaults, then validates. `in_cluster` says whether
    /// the process runs in a Kubernetes pod (the caller looks at `KUBERNETES_SERVICE_HOST`):
    /// `--kube-watch auto` follows Spark's pods only there.
    ///
    /// # Errors
    /// [`ConfigError`]: an unreadable or invalid file, a refused token file, conflicting or
    /// invalid settings.
    pub fn load(args: ServeArgs, in_cluster: bool) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let d = Self::for_data_dir(&data_dir);
        let size = |a: Option<service_runtime::size::ByteSize>, f, default: u64| {
            a.or(f).map_or(default, |b| b.0)
        };
        let tls = |cert: Option<PathBuf>, key: Option<PathBuf>, which: &str| match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(service_runtime::tls::TlsFiles { cert, key })),
            (None, None) => Ok(None),
            _ => Err(ConfigError::invalid(format!(
                "give both --{which}-tls-cert and --{which}-tls-key, or neither"
            ))),
        };
        let c = Self {
            grpc_listen: args
                .grpc_listen
                .or(file.grpc_listen)
                .unwrap_or(d.grpc_listen),
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or(d.admin_listen),
            probe_socket: args.probe_socket.or(file.probe_socket),
            volumes: [args.volumes, file.volumes]
                .into_iter()
                .find(|v| !v.is_empty())
                .unwrap_or(d.volumes),
            state_dir: args.state_dir.or(file.state_dir).unwrap_or(d.state_dir),
            admin_token_hashes: match args.admin_token_file.or(file.admin_token_file) {
                Some(p) => read_tokens(&p)?,
                None => d.admin_token_hashes,
            },
            heartbeat_timeout: args
                .heartbeat_timeout
                .or(file.heartbeat_timeout)
                .unwrap_or(d.heartbeat_timeout),
            idle_ttl: args.idle_ttl.or(file.idle_ttl).unwrap_or(d.idle_ttl),
            sweep_interval: args
                .sweep_interval
                .or(file.sweep_interval)
                .unwrap_or(d.sweep_interval),
            cleanup_parallelism: args
                .cleanup_parallelism
                .or(file.cleanup_parallelism)
                .unwrap_or(d.cleanup_parallelism),
            index_cache_bytes: size(
                args.index_cache_size,
                file.index_cache_size,
                d.index_cache_bytes as u64,
            ) as usize,
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(d.shutdown_grace),
            max_fetch_blocks: args
                .max_fetch_blocks
                .or(file.max_fetch_blocks)
                .unwrap_or(d.max_fetch_blocks),
            usage_scan_interval: d.usage_scan_interval,
            spark_listen: args
                .spark_listen
                .map(|a| a.parse::<SparkListen>())
                .transpose()
                .map_err(ConfigError::Invalid)?
                .or(file.spark_listen)
                .map_or(d.spark_listen, |l| l.0),
            spark_auth_secret_file: args.spark_auth_secret_file.or(file.spark_auth_secret_file),
            spark_auth_secret_dir: args.spark_auth_secret_dir.or(file.spark_auth_secret_dir),
            spark_allow_unauthenticated: args
                .spark_allow_unauthenticated
                .or(file.spark_allow_unauthenticated)
                .unwrap_or(d.spark_allow_unauthenticated),
            spark_allow_shared_secret_with_learned: args
                .spark_allow_shared_secret_with_learned
                .or(file.spark_allow_shared_secret_with_learned)
                .unwrap_or(d.spark_allow_shared_secret_with_learned),
            spark_ciphers: [args.spark_ciphers, file.spark_ciphers]
                .into_iter()
                .find(|c| !c.is_empty())
                .unwrap_or(d.spark_ciphers),
            spark_require_encryption: args
                .spark_require_encryption
                .or(file.spark_require_encryption)
                .unwrap_or(d.spark_require_encryption),
            registry_sync: args
                .registry_sync
                .or(file.registry_sync)
                .unwrap_or(d.registry_sync),
            spark_max_connections: args
                .spark_max_connections
                .or(file.spark_max_connections)
                .unwrap_or(d.spark_max_connections),
            spark_max_connections_per_peer: args
                .spark_max_connections_per_peer
                .or(file.spark_max_connections_per_peer)
                .unwrap_or(d.spark_max_connections_per_peer),
            spark_max_connections_per_app: args
                .spark_max_connections_per_app
                .or(file.spark_max_connections_per_app)
                .unwrap_or(d.spark_max_connections_per_app),
            spark_idle_timeout: args
                .spark_idle_timeout
                .or(file.spark_idle_timeout)
                .unwrap_or(d.spark_idle_timeout),
            spark_max_frame: d.spark_max_frame,
            spark_memory: size(args.spark_memory, file.spark_memory, d.spark_memory),
            spark_connection_memory: size(
                args.spark_connection_memory,
                file.spark_connection_memory,
                d.spark_connection_memory,
            ),
            spark_open_files: args
                .spark_open_files
                .or(file.spark_open_files)
                .unwrap_or(d.spark_open_files),
            spark_small_body: d.spark_small_body,
            spark_preauth_max_frame: size(
                args.spark_preauth_max_frame,
                file.spark_preauth_max_frame,
                d.spark_preauth_max_frame as u64,
            )
            .try_into()
            .map_err(|_| ConfigError::invalid("spark_preauth_max_frame: too large"))?,
            spark_frame_memory: size(
                args.spark_frame_memory,
                file.spark_frame_memory,
                d.spark_frame_memory,
            ),
            spark_frame_memory_per_peer: args
                .spark_frame_memory_per_peer
                .or(file.spark_frame_memory_per_peer)
                .map(|b| b.0),
            spark_auth_timeout: args
                .spark_auth_timeout
                .or(file.spark_auth_timeout)
                .unwrap_or(d.spark_auth_timeout),
            connections: ConnectionLimits {
                grpc_max_connections: args
                    .grpc_max_connections
                    .or(file.grpc_max_connections)
                    .unwrap_or(d.connections.grpc_max_connections),
                grpc_max_connections_per_peer: args
                    .grpc_max_connections_per_peer
                    .or(file.grpc_max_connections_per_peer)
                    .unwrap_or(d.connections.grpc_max_connections_per_peer),
                admin_max_connections: args
                    .admin_max_connections
                    .or(file.admin_max_connections)
                    .unwrap_or(d.connections.admin_max_connections),
                admin_max_connections_per_peer: args
                    .admin_max_connections_per_peer
                    .or(file.admin_max_connections_per_peer)
                    .unwrap_or(d.connections.admin_max_connections_per_peer),
                peer_ipv6_prefix: args
                    .peer_ipv6_prefix
                    .or(file.peer_ipv6_prefix)
                    .unwrap_or(d.connections.peer_ipv6_prefix),
                first_byte_timeout: args
                    .connection_first_byte_timeout
                    .or(file.connection_first_byte_timeout)
                    .unwrap_or(d.connections.first_byte_timeout),
                first_request_timeout: args
                    .connection_first_request_timeout
                    .or(file.connection_first_request_timeout)
                    .unwrap_or(d.connections.first_request_timeout),
                idle_timeout: args
                    .connection_idle_timeout
                    .or(file.connection_idle_timeout)
                    .unwrap_or(d.connections.idle_timeout),
            },
            kube: kube_settings(
                args.kube_watch.or(file.kube_watch).unwrap_or_default(),
                args.kube_node_name.or(file.kube_node_name),
                if args.kube_namespaces.is_empty() {
                    file.kube_namespaces
                } else {
                    args.kube_namespaces
                },
                args.kube_app_end_grace
                    .or(file.kube_app_end_grace)
                    .unwrap_or(DEFAULT_KUBE_APP_END_GRACE),
                args.kube_learn_secrets
                    .or(file.kube_learn_secrets)
                    .unwrap_or(false),
                in_cluster,
            )
            .map_err(ConfigError::Invalid)?,
            grpc_tls: tls(
                args.grpc_tls_cert.or(file.grpc_tls_cert),
                args.grpc_tls_key.or(file.grpc_tls_key),
                "grpc",
            )?,
            spark_tls: tls(
                args.spark_tls_cert.or(file.spark_tls_cert),
                args.spark_tls_key.or(file.spark_tls_key),
                "spark",
            )?,
            admin_tls: tls(
                args.admin_tls_cert.or(file.admin_tls_cert),
                args.admin_tls_key.or(file.admin_tls_key),
                "admin",
            )?,
            tls_reload_interval: d.tls_reload_interval,
        };
        c.validate()?;
        Ok(c)
    }
}

impl Config {
    /// The part of the frame memory one peer may hold: as configured, or a quarter of it and
    /// at least one largest frame.
    pub fn spark_frame_memory_per_peer(&self) -> u64 {
        self.spark_frame_memory_per_peer.unwrap_or_else(|| {
            (self.spark_frame_memory / SPARK_FRAME_MEMORY_PEER_DIVISOR)
                .max(self.spark_max_frame as u64)
                .min(self.spark_frame_memory)
        })
    }
    /// Checks every rule a configuration must keep, alone and across settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the broken rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.connections.validate().map_err(ConfigError::Invalid)?;
        if self.spark_max_connections == 0
            || self.spark_max_connections_per_peer == 0
            || self.spark_max_connections_per_app == 0
            || self.spark_open_files < 64
            || self.spark_idle_timeout.is_zero()
            || self.spark_auth_timeout.is_zero()
            || self.spark_memory < 1024
            || self.spark_connection_memory < 1024
        {
            return Err(ConfigError::invalid(
                "Spark connection, file, memory limits, idle and auth timeouts must be positive",
            ));
        }
        if self.cleanup_parallelism == 0
            || self.max_fetch_blocks == 0
            || self.sweep_interval.is_zero()
        {
            return Err(ConfigError::invalid(
                "cleanup parallelism, max fetch blocks and sweep interval must be positive",
            ));
        }
        if let Some(k) = &self.kube {
            if k.node_name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "the pod watch needs --kube-node-name (SHUFFLE_KUBE_NODE_NAME, from the downward API's spec.nodeName)",
                ));
            }
            validate_namespaces(&k.namespaces).map_err(ConfigError::Invalid)?;
        }
        if self.spark_preauth_max_frame < 1024
            || self.spark_preauth_max_frame > self.spark_max_frame
        {
            return Err(ConfigError::invalid(format!(
                "--spark-preauth-max-frame must be between 1KiB and the largest frame ({} bytes)",
                self.spark_max_frame
            )));
        }
        if self.spark_frame_memory < self.spark_max_frame as u64 {
            return Err(ConfigError::invalid(format!(
                "--spark-frame-memory must hold at least one largest frame ({} bytes)",
                self.spark_max_frame
            )));
        }
        let per_peer = self.spark_frame_memory_per_peer();
        if per_peer < self.spark_max_frame as u64 || per_peer > self.spark_frame_memory {
            return Err(ConfigError::invalid(format!(
                "--spark-frame-memory-per-peer must hold at least one largest frame ({} bytes) and at most --spark-frame-memory ({} bytes)",
                self.spark_max_frame, self.spark_frame_memory
            )));
        }
        if self.spark_auth_secret_file.is_some()
            && self.kube.as_ref().is_some_and(|k| k.learn_secrets)
            && !self.spark_allow_shared_secret_with_learned
        {
            return Err(ConfigError::invalid(
                "--spark-auth-secret-file with --kube-learn-secrets: on a node where an application id is not yet the operator's, a tenant's pods claiming it shadow the shared secret there. Give the operator's applications their own secret files (--spark-auth-secret-dir), or accept it with --spark-allow-shared-secret-with-learned",
            ));
        }
        let authenticated = self.spark_auth_secret_file.is_some()
            || self.spark_auth_secret_dir.is_some()
            || self.kube.as_ref().is_some_and(|k| k.learn_secrets);
        // Without authentication or TLS nothing on the Spark port is encrypted, and plaintext
        // clients are served: the flag would promise what it cannot keep.
        if self.spark_require_encryption && !authenticated && self.spark_tls.is_none() {
            return Err(ConfigError::invalid(
                "--spark-require-encryption needs TLS (--spark-tls-cert/--spark-tls-key) or authentication (--spark-auth-secret-file, --spark-auth-secret-dir or --kube-learn-secrets): without either, Spark's clients connect in plaintext",
            ));
        }
        if let Some(addr) = self.spark_listen
            && !addr.ip().is_loopback()
            && !authenticated
            && !self.spark_allow_unauthenticated
        {
            return Err(ConfigError::invalid(format!(
                "the Spark listener on {addr} has no authentication: anyone who reaches it reads and removes every application's blocks. Configure --spark-auth-secret-file, --spark-auth-secret-dir or --kube-learn-secrets, listen on loopback, or accept it with --spark-allow-unauthenticated"
            )));
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::ParseFile {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

fn parse_sync(s: &str) -> Result<Durability, String> {
    match s.to_ascii_lowercase().as_str() {
        "full" => Ok(Durability::Full),
        "normal" => Ok(Durability::Normal),
        other => Err(format!("registry sync {other:?}: expected full or normal")),
    }
}

fn read_tokens(path: &Path) -> Result<Vec<[u8; 32]>, ConfigError> {
    let text = service_runtime::secret::read_string(path)?;
    let tokens: Vec<[u8; 32]> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(service_runtime::token::hash)
        .collect();
    if tokens.is_empty() {
        return Err(ConfigError::invalid(format!(
            "{} holds no token",
            path.display()
        )));
    }
    Ok(tokens)
}

/// `gcm` / `ctr`, or Spark's `AES/GCM/NoPadding` / `AES/CTR/NoPadding`.
fn parse_cipher(s: &str) -> Result<Cipher, String> {
    Cipher::parse(s.trim()).ok_or_else(|| {
        format!("unknown cipher {s:?}: use gcm (AES/GCM/NoPadding) or ctr (AES/CTR/NoPadding)")
    })
}

#[cfg(test)]
mod tests;
