//! The command-line arguments of `shuffle-service serve` (each also read from a `SHUFFLE_*`
//! environment variable).
//!
//! Every argument is an `Option` (or an empty list), so that "not given" falls through to the
//! `--config` file and then to the default. A switch is an `Option<bool>` too:
//! `--spark-require-encryption` alone (or `SHUFFLE_SPARK_REQUIRE_ENCRYPTION=true`) turns it on,
//! and `--spark-require-encryption=false` (or `SHUFFLE_SPARK_REQUIRE_ENCRYPTION=false`) turns off
//! what the file turned on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use service_runtime::size::ByteSize;
use spark_protocol::crypto::Cipher;

use super::{KubeWatch, parse_cipher, parse_sync};
use crate::core::{Durability, VolumeSpec};

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
    #[arg(long, env = "SHUFFLE_INDEX_CACHE_SIZE")]
    pub index_cache_size: Option<ByteSize>,
    /// Drain time after SIGTERM.
    #[arg(long, env = "SHUFFLE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Most blocks per FetchBlocks request (and per Spark fetch).
    #[arg(long, env = "SHUFFLE_MAX_FETCH_BLOCKS")]
    pub max_fetch_blocks: Option<usize>,
    /// Spark protocol listener, or `off`.
    // Parsed at load ([`SparkListen`]), so that a bad address is a configuration error (exit
    // code 64) as it always was, not clap's.
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
    #[arg(long, env = "SHUFFLE_SPARK_ALLOW_UNAUTHENTICATED", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub spark_allow_unauthenticated: Option<bool>,
    /// Accept a shared secret (`--spark-auth-secret-file`) beside learned secrets
    /// (`--kube-learn-secrets`). Refused otherwise: on a node where an application id is not
    /// yet the operator's, a tenant's pods claiming it make the service open it with their
    /// secret only, shadowing the shared one there. Give the operator's applications their own
    /// files (`--spark-auth-secret-dir`) instead, which nothing shadows.
    #[arg(long, env = "SHUFFLE_SPARK_ALLOW_SHARED_SECRET_WITH_LEARNED", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub spark_allow_shared_secret_with_learned: Option<bool>,
    /// Channel ciphers accepted from clients with `spark.network.crypto.enabled=true`,
    /// comma-separated: `gcm`, `ctr` (default both; each client's own choice is recognised).
    #[arg(long, env = "SHUFFLE_SPARK_CIPHERS", value_delimiter = ',', value_parser = parse_cipher)]
    pub spark_ciphers: Vec<Cipher>,
    /// Refuse Spark connections that do not encrypt: SASL is offered with encryption
    /// (`auth-conf`) only.
    #[arg(long, env = "SHUFFLE_SPARK_REQUIRE_ENCRYPTION", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub spark_require_encryption: Option<bool>,
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
    #[arg(long, env = "SHUFFLE_SPARK_MEMORY")]
    pub spark_memory: Option<ByteSize>,
    /// Memory for block bodies per Spark connection (e.g. 4MiB).
    #[arg(long, env = "SHUFFLE_SPARK_CONNECTION_MEMORY")]
    pub spark_connection_memory: Option<ByteSize>,
    /// Block files open for sending at once across Spark connections.
    #[arg(long, env = "SHUFFLE_SPARK_OPEN_FILES")]
    pub spark_open_files: Option<usize>,
    /// Largest Spark frame accepted before the client authenticated (e.g. 16KiB); larger
    /// ones close the connection. Only SASL and AuthEngine messages come before.
    #[arg(long, env = "SHUFFLE_SPARK_PREAUTH_MAX_FRAME")]
    pub spark_preauth_max_frame: Option<ByteSize>,
    /// Memory for partly received Spark frames across connections (e.g. 128MiB), reserved
    /// for a frame's declared length when its header arrives; a connection waits for it up
    /// to the idle timeout, then is closed.
    #[arg(long, env = "SHUFFLE_SPARK_FRAME_MEMORY")]
    pub spark_frame_memory: Option<ByteSize>,
    /// The part of --spark-frame-memory one peer (IPv4 address, IPv6 address or network) may hold (default:
    /// a quarter of it, at least one largest frame).
    #[arg(long, env = "SHUFFLE_SPARK_FRAME_MEMORY_PER_PEER")]
    pub spark_frame_memory_per_peer: Option<ByteSize>,
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
    #[arg(long, env = "SHUFFLE_KUBE_LEARN_SECRETS", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub kube_learn_secrets: Option<bool>,
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
