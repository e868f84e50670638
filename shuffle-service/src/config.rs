//! Configuration of `shuffle-service serve`: flags, `SHUFFLE_*` env, optional TOML, defaults.
//! Precedence: flag > env > file > default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

mod connections;
mod kube;
mod settings;

pub use connections::*;
use kube::kube_settings;
pub use kube::{DriverScope, KubeSettings, KubeWatch};

use crate::core::Durability;
use crate::core::{VolumeSpec, parse_size};
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

/// Arguments of `shuffle-service serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "SHUFFLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listener.
    #[arg(long, env = "SHUFFLE_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// Admin HTTP listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "SHUFFLE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Unix socket serving /healthz and /readyz to `shuffle-service probe` (Kubernetes exec
    /// probes), apart from every TCP listener and its caps.
    #[arg(long, env = "SHUFFLE_PROBE_SOCKET")]
    pub probe_socket: Option<PathBuf>,
    /// Data directory for the default volume and state (when those are not given).
    #[arg(long, env = "SHUFFLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Volume PATH[:KIND[:CAPACITY]], KIND one of hostPath, emptyDir, nvme-raid0, pvc; repeatable.
    #[arg(long = "volume", env = "SHUFFLE_VOLUMES", value_delimiter = ',')]
    pub volumes: Vec<VolumeSpec>,
    /// Directory of the registration database.
    #[arg(long, env = "SHUFFLE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// File of admin tokens, one per line (mode 0600).
    #[arg(long, env = "SHUFFLE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Heartbeat timeout default.
    #[arg(long, env = "SHUFFLE_HEARTBEAT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// Idle TTL of applications without a driver registration.
    #[arg(long, env = "SHUFFLE_IDLE_TTL", value_parser = humantime::parse_duration)]
    pub idle_ttl: Option<Duration>,
    /// Liveness sweep period.
    #[arg(long, env = "SHUFFLE_SWEEP_INTERVAL", value_parser = humantime::parse_duration)]
    pub sweep_interval: Option<Duration>,
    /// Concurrent deletions per volume.
    #[arg(long, env = "SHUFFLE_CLEANUP_PARALLELISM")]
    pub cleanup_parallelism: Option<usize>,
    /// Index cache size (e.g. 64MiB).
    #[arg(long, env = "SHUFFLE_INDEX_CACHE_SIZE", value_parser = parse_size)]
    pub index_cache_size: Option<u64>,
    /// Drain time after SIGTERM.
    #[arg(long, env = "SHUFFLE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Most blocks per FetchBlocks request (and per Spark fetch).
    #[arg(long, env = "SHUFFLE_MAX_FETCH_BLOCKS")]
    pub max_fetch_blocks: Option<usize>,
    /// Spark protocol listener, or `off`.
    #[arg(long, env = "SHUFFLE_SPARK_LISTEN")]
    pub spark_listen: Option<String>,
    /// File holding the secret shared with every application (`spark.authenticate.secret`);
    /// enables SASL authentication on the Spark listener.
    #[arg(long, env = "SHUFFLE_SPARK_AUTH_SECRET_FILE")]
    pub spark_auth_secret_file: Option<PathBuf>,
    /// Directory of per-application secrets, one file named by application id (a mounted
    /// Kubernetes Secret); enables authentication.
    #[arg(long, env = "SHUFFLE_SPARK_AUTH_SECRET_DIR")]
    pub spark_auth_secret_dir: Option<PathBuf>,
    /// Serve Spark's protocol without authentication on a non-loopback address: any client
    /// that reaches the port reads and removes every application's blocks, as with Spark's
    /// own service with `spark.authenticate=false`.
    #[arg(long, env = "SHUFFLE_SPARK_ALLOW_UNAUTHENTICATED")]
    pub spark_allow_unauthenticated: bool,
    /// Accept a shared secret (`--spark-auth-secret-file`) beside learned secrets
    /// (`--kube-learn-secrets`). Refused otherwise: on a node where an application id is not
    /// yet the operator's, a tenant's pods claiming it make the service open it with their
    /// secret only, shadowing the shared one there. Give the operator's applications their own
    /// files (`--spark-auth-secret-dir`) instead, which nothing shadows.
    #[arg(long, env = "SHUFFLE_SPARK_ALLOW_SHARED_SECRET_WITH_LEARNED")]
    pub spark_allow_shared_secret_with_learned: bool,
    /// Channel ciphers accepted from clients with `spark.network.crypto.enabled=true`,
    /// comma-separated: `gcm`, `ctr` (default both; each client's own choice is recognised).
    #[arg(long, env = "SHUFFLE_SPARK_CIPHERS", value_delimiter = ',', value_parser = parse_cipher)]
    pub spark_ciphers: Vec<Cipher>,
    /// Refuse Spark connections that do not encrypt: SASL is offered with encryption
    /// (`auth-conf`) only.
    #[arg(long, env = "SHUFFLE_SPARK_REQUIRE_ENCRYPTION")]
    pub spark_require_encryption: bool,
    /// How registrations reach the disk: `full` (default; an acknowledged registration
    /// survives a power loss) or `normal` (faster; survives a process crash only).
    #[arg(long, env = "SHUFFLE_REGISTRY_SYNC", value_parser = parse_sync)]
    pub registry_sync: Option<Durability>,
    /// Most Spark-protocol connections at once.
    #[arg(long, env = "SHUFFLE_SPARK_MAX_CONNECTIONS")]
    pub spark_max_connections: Option<usize>,
    /// Most Spark-protocol connections from one peer (an IPv4 address, an IPv6 address or
    /// network) at once (default 1024): without authentication a connection beyond it is
    /// closed at once; with authentication it counts only connections not yet authenticated,
    /// and the peer's oldest of them is closed to admit a new one.
    #[arg(long, env = "SHUFFLE_SPARK_MAX_CONNECTIONS_PER_PEER")]
    pub spark_max_connections_per_peer: Option<usize>,
    /// Most authenticated Spark-protocol connections of one application at once (default
    /// 1024); a connection authenticating beyond it is closed.
    #[arg(long, env = "SHUFFLE_SPARK_MAX_CONNECTIONS_PER_APP")]
    pub spark_max_connections_per_app: Option<usize>,
    /// Idle Spark connections are closed after this long.
    #[arg(long, env = "SHUFFLE_SPARK_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub spark_idle_timeout: Option<Duration>,
    /// Memory for block bodies across Spark connections (e.g. 256MiB).
    #[arg(long, env = "SHUFFLE_SPARK_MEMORY", value_parser = parse_size)]
    pub spark_memory: Option<u64>,
    /// Memory for block bodies per Spark connection (e.g. 4MiB).
    #[arg(long, env = "SHUFFLE_SPARK_CONNECTION_MEMORY", value_parser = parse_size)]
    pub spark_connection_memory: Option<u64>,
    /// Block files open for sending at once across Spark connections.
    #[arg(long, env = "SHUFFLE_SPARK_OPEN_FILES")]
    pub spark_open_files: Option<usize>,
    /// Largest Spark frame accepted before the client authenticated (e.g. 16KiB); larger
    /// ones close the connection. Only SASL and AuthEngine messages come before.
    #[arg(long, env = "SHUFFLE_SPARK_PREAUTH_MAX_FRAME", value_parser = parse_size)]
    pub spark_preauth_max_frame: Option<u64>,
    /// Memory for partly received Spark frames across connections (e.g. 128MiB), reserved
    /// for a frame's declared length when its header arrives; a connection waits for it up
    /// to the idle timeout, then is closed.
    #[arg(long, env = "SHUFFLE_SPARK_FRAME_MEMORY", value_parser = parse_size)]
    pub spark_frame_memory: Option<u64>,
    /// The part of --spark-frame-memory one peer (IPv4 address, IPv6 address or network) may hold (default:
    /// a quarter of it, at least one largest frame).
    #[arg(long, env = "SHUFFLE_SPARK_FRAME_MEMORY_PER_PEER", value_parser = parse_size)]
    pub spark_frame_memory_per_peer: Option<u64>,
    /// Spark connections that have not authenticated within this are closed (when
    /// authentication is on) [default: 30s].
    #[arg(long, env = "SHUFFLE_SPARK_AUTH_TIMEOUT", value_parser = humantime::parse_duration)]
    pub spark_auth_timeout: Option<Duration>,
    /// Most gRPC connections at once; beyond it a connection is closed at once [default: 1024].
    #[arg(long, env = "SHUFFLE_GRPC_MAX_CONNECTIONS")]
    pub grpc_max_connections: Option<usize>,
    /// Most gRPC connections of one peer (IPv4 address, IPv6 address or network) at once [default: 64].
    #[arg(long, env = "SHUFFLE_GRPC_MAX_CONNECTIONS_PER_PEER")]
    pub grpc_max_connections_per_peer: Option<usize>,
    /// Most admin connections at once (probes, scrapes); beyond it a connection is closed
    /// [default: 64].
    #[arg(long, env = "SHUFFLE_ADMIN_MAX_CONNECTIONS")]
    pub admin_max_connections: Option<usize>,
    /// Most admin connections of one peer (IPv4 address, IPv6 address or network) at once, so
    /// that one client cannot lock the kubelet's probes out [default: 8].
    #[arg(long, env = "SHUFFLE_ADMIN_MAX_CONNECTIONS_PER_PEER")]
    pub admin_max_connections_per_peer: Option<usize>,
    /// The prefix length that groups IPv6 peers for every per-peer cap and share (128: each
    /// address its own peer, as pods have in a cluster; 64 where clients pick addresses in
    /// their /64) [default: 128].
    #[arg(long, env = "SHUFFLE_PEER_IPV6_PREFIX", value_parser = clap::value_parser!(u8).range(0..=128))]
    pub peer_ipv6_prefix: Option<u8>,
    /// gRPC and admin connections that send no byte within this are closed.
    #[arg(long, env = "SHUFFLE_CONNECTION_FIRST_BYTE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub connection_first_byte_timeout: Option<Duration>,
    /// gRPC and admin connections that have not finished TLS and sent a first request head
    /// (after the HTTP/2 preface) within this are closed.
    #[arg(long, env = "SHUFFLE_CONNECTION_FIRST_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    pub connection_first_request_timeout: Option<Duration>,
    /// gRPC and admin connections with no request in progress for this long are closed
    /// (HTTP/2: GOAWAY; PINGs do not count as activity), and so are those whose requests in
    /// progress move no body byte either way for this long.
    #[arg(long, env = "SHUFFLE_CONNECTION_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub connection_idle_timeout: Option<Duration>,
    /// Follow Spark's driver and executor pods through the Kubernetes API (deletes an
    /// application's data when the driver pod named by its executor pods' controlling owner
    /// reference ends; never one registered over gRPC or with an operator's secret): `auto`
    /// (on inside a pod with a node name), `on` or `off`.
    #[arg(long, env = "SHUFFLE_KUBE_WATCH", value_enum)]
    pub kube_watch: Option<KubeWatch>,
    /// The node this service runs on (from the downward API: `spec.nodeName`).
    #[arg(long, env = "SHUFFLE_KUBE_NODE_NAME")]
    pub kube_node_name: Option<String>,
    /// Namespaces whose Spark pods are followed, comma-separated (default: all, which needs
    /// a ClusterRole).
    #[arg(long, env = "SHUFFLE_KUBE_NAMESPACES", value_delimiter = ',')]
    pub kube_namespaces: Vec<String>,
    /// How long a driver pod stays `Succeeded` or `Failed` before its data is deleted.
    #[arg(long, env = "SHUFFLE_KUBE_APP_END_GRACE", value_parser = humantime::parse_duration)]
    pub kube_app_end_grace: Option<Duration>,
    /// Learn Spark's per-application secret (`_SPARK_AUTH_SECRET`) from the executor pods
    /// on this node, per driver pod claiming the application, so `spark.authenticate=true`
    /// works with it; the application is bound to the driver pod whose pods' secret a client
    /// first proves. Needs the watch; held in memory only; never used for an application
    /// registered over gRPC or with an operator's secret; an application bound or registered
    /// with it is never opened by the shared secret.
    #[arg(long, env = "SHUFFLE_KUBE_LEARN_SECRETS")]
    pub kube_learn_secrets: bool,
    /// PEM certificate chain of the Spark listener (TLS with --spark-tls-key, for
    /// `spark.ssl.rpc.enabled=true`); reloaded when the file changes.
    #[arg(long, env = "SHUFFLE_SPARK_TLS_CERT")]
    pub spark_tls_cert: Option<PathBuf>,
    /// PEM private key of the Spark listener.
    #[arg(long, env = "SHUFFLE_SPARK_TLS_KEY")]
    pub spark_tls_key: Option<PathBuf>,
    /// PEM certificate chain of the gRPC listener (TLS with --grpc-tls-key); reloaded when the
    /// file changes.
    #[arg(long, env = "SHUFFLE_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC listener.
    #[arg(long, env = "SHUFFLE_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<PathBuf>,
    /// PEM certificate chain of the admin listener (TLS with --admin-tls-key); reloaded when
    /// the file changes.
    #[arg(long, env = "SHUFFLE_ADMIN_TLS_CERT")]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key of the admin listener.
    #[arg(long, env = "SHUFFLE_ADMIN_TLS_KEY")]
    pub admin_tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    grpc_listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    probe_socket: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    volumes: Vec<String>,
    state_dir: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    heartbeat_timeout: Option<String>,
    idle_ttl: Option<String>,
    sweep_interval: Option<String>,
    cleanup_parallelism: Option<usize>,
    index_cache_size: Option<String>,
    shutdown_grace: Option<String>,
    max_fetch_blocks: Option<usize>,
    spark_listen: Option<String>,
    spark_auth_secret_file: Option<PathBuf>,
    spark_auth_secret_dir: Option<PathBuf>,
    spark_allow_unauthenticated: Option<bool>,
    spark_allow_shared_secret_with_learned: Option<bool>,
    #[serde(default)]
    spark_ciphers: Vec<String>,
    spark_require_encryption: Option<bool>,
    registry_sync: Option<String>,
    spark_max_connections: Option<usize>,
    spark_max_connections_per_peer: Option<usize>,
    spark_max_connections_per_app: Option<usize>,
    spark_idle_timeout: Option<String>,
    spark_memory: Option<String>,
    spark_connection_memory: Option<String>,
    spark_open_files: Option<usize>,
    spark_preauth_max_frame: Option<String>,
    spark_frame_memory: Option<String>,
    spark_frame_memory_per_peer: Option<String>,
    spark_auth_timeout: Option<String>,
    grpc_max_connections: Option<usize>,
    grpc_max_connections_per_peer: Option<usize>,
    admin_max_connections: Option<usize>,
    admin_max_connections_per_peer: Option<usize>,
    peer_ipv6_prefix: Option<u8>,
    connection_first_byte_timeout: Option<String>,
    connection_first_request_timeout: Option<String>,
    connection_idle_timeout: Option<String>,
    kube_watch: Option<KubeWatch>,
    kube_node_name: Option<String>,
    #[serde(default)]
    kube_namespaces: Vec<String>,
    kube_app_end_grace: Option<String>,
    kube_learn_secrets: Option<bool>,
    spark_tls_cert: Option<PathBuf>,
    spark_tls_key: Option<PathBuf>,
    grpc_tls_cert: Option<PathBuf>,
    grpc_tls_key: Option<PathBuf>,
    admin_tls_cert: Option<PathBuf>,
    admin_tls_key: Option<PathBuf>,
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

    /// Merges flags, env and file over the defaults.
    ///
    /// # Errors
    /// A sentence naming the bad setting.
    pub fn load(args: ServeArgs) -> Result<Self, String> {
        let file: FileConfig = match &args.config {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let dur = |cli: Option<Duration>,
                   f: Option<String>,
                   d: Duration,
                   name: &str|
         -> Result<Duration, String> {
            match (cli, f) {
                (Some(v), _) => Ok(v),
                (None, Some(s)) => {
                    humantime::parse_duration(&s).map_err(|e| format!("{name}: {e}"))
                }
                (None, None) => Ok(d),
            }
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mut c = Self::for_data_dir(&data_dir);
        if !args.volumes.is_empty() {
            c.volumes = args.volumes;
        } else if !file.volumes.is_empty() {
            c.volumes = file
                .volumes
                .iter()
                .map(|s| s.parse())
                .collect::<Result<_, _>>()?;
        }
        if let Some(s) = args.state_dir.or(file.state_dir) {
            c.state_dir = s;
        }
        if let Some(a) = args.grpc_listen.or(file.grpc_listen) {
            c.grpc_listen = a;
        }
        if let Some(a) = args.admin_listen.or(file.admin_listen) {
            c.admin_listen = a;
        }
        c.probe_socket = args.probe_socket.or(file.probe_socket);
        if let Some(p) = args.admin_token_file.or(file.admin_token_file) {
            c.admin_token_hashes = read_tokens(&p)?;
        }
        c.heartbeat_timeout = dur(
            args.heartbeat_timeout,
            file.heartbeat_timeout,
            c.heartbeat_timeout,
            "heartbeat_timeout",
        )?;
        c.idle_ttl = dur(args.idle_ttl, file.idle_ttl, c.idle_ttl, "idle_ttl")?;
        c.sweep_interval = dur(
            args.sweep_interval,
            file.sweep_interval,
            c.sweep_interval,
            "sweep_interval",
        )?;
        c.shutdown_grace = dur(
            args.shutdown_grace,
            file.shutdown_grace,
            c.shutdown_grace,
            "shutdown_grace",
        )?;
        if let Some(n) = args.cleanup_parallelism.or(file.cleanup_parallelism) {
            c.cleanup_parallelism = n;
        }
        if let Some(n) = args.max_fetch_blocks.or(file.max_fetch_blocks) {
            c.max_fetch_blocks = n;
        }
        match (args.index_cache_size, file.index_cache_size) {
            (Some(n), _) => c.index_cache_bytes = n as usize,
            (None, Some(s)) => c.index_cache_bytes = parse_size(&s)? as usize,
            _ => {}
        }
        match args.spark_listen.or(file.spark_listen).as_deref() {
            None => {}
            Some("off" | "none" | "") => c.spark_listen = None,
            Some(a) => {
                c.spark_listen = Some(a.parse().map_err(|e| format!("spark_listen {a:?}: {e}"))?);
            }
        }
        c.spark_auth_secret_file = args.spark_auth_secret_file.or(file.spark_auth_secret_file);
        c.spark_auth_secret_dir = args.spark_auth_secret_dir.or(file.spark_auth_secret_dir);
        c.spark_allow_unauthenticated =
            args.spark_allow_unauthenticated || file.spark_allow_unauthenticated.unwrap_or(false);
        c.spark_allow_shared_secret_with_learned = args.spark_allow_shared_secret_with_learned
            || file.spark_allow_shared_secret_with_learned.unwrap_or(false);
        if !args.spark_ciphers.is_empty() {
            c.spark_ciphers = args.spark_ciphers;
        } else if !file.spark_ciphers.is_empty() {
            c.spark_ciphers = file
                .spark_ciphers
                .iter()
                .map(|s| parse_cipher(s))
                .collect::<Result<_, _>>()?;
        }
        c.spark_require_encryption =
            args.spark_require_encryption || file.spark_require_encryption.unwrap_or(false);
        match (args.registry_sync, file.registry_sync) {
            (Some(d), _) => c.registry_sync = d,
            (None, Some(s)) => c.registry_sync = parse_sync(&s)?,
            (None, None) => {}
        }
        if let Some(n) = args.spark_max_connections.or(file.spark_max_connections) {
            c.spark_max_connections = n;
        }
        if let Some(n) = args
            .spark_max_connections_per_peer
            .or(file.spark_max_connections_per_peer)
        {
            c.spark_max_connections_per_peer = n;
        }
        if let Some(n) = args
            .spark_max_connections_per_app
            .or(file.spark_max_connections_per_app)
        {
            c.spark_max_connections_per_app = n;
        }
        if let Some(n) = args.spark_open_files.or(file.spark_open_files) {
            c.spark_open_files = n;
        }
        c.spark_idle_timeout = dur(
            args.spark_idle_timeout,
            file.spark_idle_timeout,
            c.spark_idle_timeout,
            "spark_idle_timeout",
        )?;
        let size = |cli: Option<u64>, f: Option<String>, d: u64| -> Result<u64, String> {
            match (cli, f) {
                (Some(v), _) => Ok(v),
                (None, Some(s)) => parse_size(&s),
                (None, None) => Ok(d),
            }
        };
        c.spark_memory = size(args.spark_memory, file.spark_memory, c.spark_memory)?;
        c.spark_connection_memory = size(
            args.spark_connection_memory,
            file.spark_connection_memory,
            c.spark_connection_memory,
        )?;
        if let Some(n) = args.grpc_max_connections.or(file.grpc_max_connections) {
            c.connections.grpc_max_connections = n;
        }
        if let Some(n) = args.admin_max_connections.or(file.admin_max_connections) {
            c.connections.admin_max_connections = n;
        }
        if let Some(n) = args
            .grpc_max_connections_per_peer
            .or(file.grpc_max_connections_per_peer)
        {
            c.connections.grpc_max_connections_per_peer = n;
        }
        if let Some(n) = args
            .admin_max_connections_per_peer
            .or(file.admin_max_connections_per_peer)
        {
            c.connections.admin_max_connections_per_peer = n;
        }
        if let Some(n) = args.peer_ipv6_prefix.or(file.peer_ipv6_prefix) {
            c.connections.peer_ipv6_prefix = n;
        }
        c.spark_auth_timeout = dur(
            args.spark_auth_timeout,
            file.spark_auth_timeout,
            c.spark_auth_timeout,
            "spark_auth_timeout",
        )?;
        c.connections.first_byte_timeout = dur(
            args.connection_first_byte_timeout,
            file.connection_first_byte_timeout,
            c.connections.first_byte_timeout,
            "connection_first_byte_timeout",
        )?;
        c.connections.first_request_timeout = dur(
            args.connection_first_request_timeout,
            file.connection_first_request_timeout,
            c.connections.first_request_timeout,
            "connection_first_request_timeout",
        )?;
        c.connections.idle_timeout = dur(
            args.connection_idle_timeout,
            file.connection_idle_timeout,
            c.connections.idle_timeout,
            "connection_idle_timeout",
        )?;
        c.spark_preauth_max_frame = size(
            args.spark_preauth_max_frame,
            file.spark_preauth_max_frame,
            c.spark_preauth_max_frame as u64,
        )?
        .try_into()
        .map_err(|_| "spark_preauth_max_frame: too large".to_owned())?;
        c.spark_frame_memory = size(
            args.spark_frame_memory,
            file.spark_frame_memory,
            c.spark_frame_memory,
        )?;
        c.spark_frame_memory_per_peer = match (
            args.spark_frame_memory_per_peer,
            file.spark_frame_memory_per_peer,
        ) {
            (Some(v), _) => Some(v),
            (None, Some(s)) => Some(parse_size(&s)?),
            (None, None) => None,
        };
        if c.spark_max_connections == 0
            || c.spark_max_connections_per_peer == 0
            || c.spark_max_connections_per_app == 0
            || c.spark_open_files < 64
            || c.spark_idle_timeout.is_zero()
            || c.spark_auth_timeout.is_zero()
            || c.spark_memory < 1024
            || c.spark_connection_memory < 1024
        {
            return Err(
                "Spark connection, file, memory limits, idle and auth timeouts must be positive"
                    .into(),
            );
        }
        c.kube = kube_settings(
            args.kube_watch.or(file.kube_watch).unwrap_or_default(),
            args.kube_node_name.or(file.kube_node_name),
            if args.kube_namespaces.is_empty() {
                file.kube_namespaces
            } else {
                args.kube_namespaces
            },
            dur(
                args.kube_app_end_grace,
                file.kube_app_end_grace,
                DEFAULT_KUBE_APP_END_GRACE,
                "kube_app_end_grace",
            )?,
            args.kube_learn_secrets || file.kube_learn_secrets.unwrap_or(false),
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        )?;
        let tls = |cert: Option<PathBuf>, key: Option<PathBuf>, which: &str| match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(service_runtime::tls::TlsFiles { cert, key })),
            (None, None) => Ok(None),
            _ => Err(format!(
                "give both --{which}-tls-cert and --{which}-tls-key, or neither"
            )),
        };
        c.grpc_tls = tls(
            args.grpc_tls_cert.or(file.grpc_tls_cert),
            args.grpc_tls_key.or(file.grpc_tls_key),
            "grpc",
        )?;
        c.spark_tls = tls(
            args.spark_tls_cert.or(file.spark_tls_cert),
            args.spark_tls_key.or(file.spark_tls_key),
            "spark",
        )?;
        c.admin_tls = tls(
            args.admin_tls_cert.or(file.admin_tls_cert),
            args.admin_tls_key.or(file.admin_tls_key),
            "admin",
        )?;
        c.validate()?;
        if c.cleanup_parallelism == 0 || c.max_fetch_blocks == 0 || c.sweep_interval.is_zero() {
            return Err(
                "cleanup parallelism, max fetch blocks and sweep interval must be positive".into(),
            );
        }
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

    /// Checks settings that are wrong together.
    ///
    /// # Errors
    /// A sentence naming the conflict.
    pub fn validate(&self) -> Result<(), String> {
        self.connections.validate()?;
        if self.spark_preauth_max_frame < 1024
            || self.spark_preauth_max_frame > self.spark_max_frame
        {
            return Err(format!(
                "--spark-preauth-max-frame must be between 1KiB and the largest frame ({} bytes)",
                self.spark_max_frame
            ));
        }
        if self.spark_frame_memory < self.spark_max_frame as u64 {
            return Err(format!(
                "--spark-frame-memory must hold at least one largest frame ({} bytes)",
                self.spark_max_frame
            ));
        }
        let per_peer = self.spark_frame_memory_per_peer();
        if per_peer < self.spark_max_frame as u64 || per_peer > self.spark_frame_memory {
            return Err(format!(
                "--spark-frame-memory-per-peer must hold at least one largest frame ({} bytes) and at most --spark-frame-memory ({} bytes)",
                self.spark_max_frame, self.spark_frame_memory
            ));
        }
        if self.spark_auth_secret_file.is_some()
            && self.kube.as_ref().is_some_and(|k| k.learn_secrets)
            && !self.spark_allow_shared_secret_with_learned
        {
            return Err("--spark-auth-secret-file with --kube-learn-secrets: on a node where an application id is not yet the operator's, a tenant's pods claiming it shadow the shared secret there. Give the operator's applications their own secret files (--spark-auth-secret-dir), or accept it with --spark-allow-shared-secret-with-learned".into());
        }
        let authenticated = self.spark_auth_secret_file.is_some()
            || self.spark_auth_secret_dir.is_some()
            || self.kube.as_ref().is_some_and(|k| k.learn_secrets);
        // Without authentication or TLS nothing on the Spark port is encrypted, and plaintext
        // clients are served: the flag would promise what it cannot keep.
        if self.spark_require_encryption && !authenticated && self.spark_tls.is_none() {
            return Err("--spark-require-encryption needs TLS (--spark-tls-cert/--spark-tls-key) or authentication (--spark-auth-secret-file, --spark-auth-secret-dir or --kube-learn-secrets): without either, Spark's clients connect in plaintext".into());
        }
        if let Some(addr) = self.spark_listen
            && !addr.ip().is_loopback()
            && !authenticated
            && !self.spark_allow_unauthenticated
        {
            return Err(format!(
                "the Spark listener on {addr} has no authentication: anyone who reaches it reads and removes every application's blocks. Configure --spark-auth-secret-file, --spark-auth-secret-dir or --kube-learn-secrets, listen on loopback, or accept it with --spark-allow-unauthenticated"
            ));
        }
        Ok(())
    }
}

fn parse_sync(s: &str) -> Result<Durability, String> {
    match s.to_ascii_lowercase().as_str() {
        "full" => Ok(Durability::Full),
        "normal" => Ok(Durability::Normal),
        other => Err(format!("registry sync {other:?}: expected full or normal")),
    }
}

fn read_tokens(path: &std::path::Path) -> Result<Vec<[u8; 32]>, String> {
    let text = service_runtime::secret::read_string(path).map_err(|e| e.to_string())?;
    let tokens: Vec<[u8; 32]> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(service_runtime::token::hash)
        .collect();
    if tokens.is_empty() {
        return Err(format!("{} holds no token", path.display()));
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
