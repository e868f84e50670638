//! The command-line arguments of `staging-server serve` (each also read from a `STAGING_*`
//! environment variable).
//!
//! Every argument is an `Option`, so that "not given" falls through to the `--config` file and
//! then to the default. A switch is an `Option<bool>` too: `--kube-auth` alone (or
//! `STAGING_KUBE_AUTH=true`) turns it on, and `--kube-auth=false` (or
//! `STAGING_KUBE_AUTH=false`) turns off what the file turned on.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use super::{KubeOwners, Redacted};
use crate::size::ByteSize;

/// A flag value that is, or may hold, a secret (upload tokens, the signing key, store options):
/// taken as given, and printed by `Debug` as `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretArg(String);

impl SecretArg {
    /// The value as given.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretArg {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Redacted, f)
    }
}

/// Arguments of `staging-server serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file; command-line flags and env override its values.
    #[arg(long, env = "STAGING_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the API listener.
    #[arg(long, env = "STAGING_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Optional separate listener for /metrics, /healthz and /readyz (also served on --listen).
    #[arg(long, env = "STAGING_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory for the database, the signing key and the default local object store.
    #[arg(long, env = "STAGING_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Object store URL (s3://bucket/prefix, gs://, az://, memory://, file:///path).
    /// Default: the local filesystem under <data-dir>/objects.
    #[arg(long, env = "STAGING_STORE_URL")]
    pub store_url: Option<String>,
    /// Object store option KEY=VALUE (e.g. aws_endpoint=http://minio:9000); repeatable.
    /// Credentials are best left to the store's usual env variables (AWS_*, GOOGLE_*, AZURE_*).
    #[arg(
        long = "store-option",
        env = "STAGING_STORE_OPTIONS",
        value_delimiter = ','
    )]
    pub store_options: Vec<SecretArg>,
    /// File of upload bearer tokens, one per line (`#` comments allowed): `TOKEN` acts for
    /// every namespace, `TOKEN NAMESPACE...` only for the namespaces named after it.
    #[arg(long, env = "STAGING_UPLOAD_TOKEN_FILE")]
    pub upload_token_file: Option<PathBuf>,
    /// Upload bearer tokens, comma-separated, each `TOKEN [NAMESPACE...]` (prefer
    /// --upload-token-file).
    #[arg(long, env = "STAGING_UPLOAD_TOKENS", hide_env_values = true)]
    pub upload_tokens: Option<SecretArg>,
    /// Allow uploads without a token on a non-loopback listener. Anyone who reaches the port
    /// can then fill the store.
    #[arg(long, env = "STAGING_INSECURE_ALLOW_ANONYMOUS_UPLOAD", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub insecure_allow_anonymous_upload: Option<bool>,
    /// File holding the download-token signing key (at least 32 bytes; mode 0600).
    /// Default: generated on first start as <data-dir>/signing.key.
    #[arg(long, env = "STAGING_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// The download-token signing key itself (prefer --signing-key-file).
    #[arg(long, env = "STAGING_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<SecretArg>,
    /// File of keys that only verify download tokens, one per line (each at least 32 bytes;
    /// mode 0600; `#` comments allowed, an empty file names none): previous signing keys, kept
    /// after a rotation until the tokens they signed have expired. Repeatable or
    /// comma-separated.
    #[arg(
        long = "verify-key-file",
        env = "STAGING_VERIFY_KEY_FILES",
        value_delimiter = ','
    )]
    pub verify_key_files: Vec<PathBuf>,
    /// Keys that only verify download tokens, comma-separated (prefer --verify-key-file).
    #[arg(long, env = "STAGING_VERIFY_KEYS", hide_env_values = true)]
    pub verify_keys: Option<SecretArg>,
    /// Largest accepted bundle (e.g. 2GiB).
    #[arg(long, env = "STAGING_MAX_UPLOAD_SIZE")]
    pub max_upload_size: Option<ByteSize>,
    /// Delete bundles never downloaded within this time (e.g. 30m).
    #[arg(long, env = "STAGING_UNUSED_TTL", value_parser = humantime::parse_duration)]
    pub unused_ttl: Option<Duration>,
    /// Delete every bundle this long after upload (e.g. 48h).
    #[arg(long, env = "STAGING_MAX_TTL", value_parser = humantime::parse_duration)]
    pub max_ttl: Option<Duration>,
    /// How often expired bundles are swept.
    #[arg(long, env = "STAGING_SWEEP_INTERVAL", value_parser = humantime::parse_duration)]
    pub sweep_interval: Option<Duration>,
    /// Bytes one namespace may keep stored.
    #[arg(long, env = "STAGING_NAMESPACE_QUOTA_BYTES")]
    pub namespace_quota_bytes: Option<ByteSize>,
    /// Bundles one namespace may keep stored.
    #[arg(long, env = "STAGING_NAMESPACE_QUOTA_COUNT")]
    pub namespace_quota_count: Option<u64>,
    /// Total bytes the server may keep stored.
    #[arg(long, env = "STAGING_CAPACITY")]
    pub capacity: Option<ByteSize>,
    /// Uploads streaming at once.
    #[arg(long, env = "STAGING_MAX_CONCURRENT_UPLOADS")]
    pub max_concurrent_uploads: Option<usize>,
    /// Uploads of one namespace (or, before its namespace is known, of one credential)
    /// streaming at once [default: 8].
    #[arg(long, env = "STAGING_MAX_CONCURRENT_UPLOADS_PER_NAMESPACE")]
    pub max_concurrent_uploads_per_namespace: Option<usize>,
    /// Open client connections.
    #[arg(long, env = "STAGING_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Time allowed for request headers.
    #[arg(long, env = "STAGING_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Longest pause between two chunks of an upload body (408), and longest a connection's
    /// requests in progress may move no body byte either way before it is closed [default: 60s].
    #[arg(long, env = "STAGING_BODY_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub body_idle_timeout: Option<Duration>,
    /// Slowest accepted upload, bytes per second over --upload-rate-window (0 turns the check
    /// off).
    #[arg(long, env = "STAGING_UPLOAD_MIN_RATE")]
    pub upload_min_rate: Option<ByteSize>,
    /// Window over which the upload rate is measured.
    #[arg(long, env = "STAGING_UPLOAD_RATE_WINDOW", value_parser = humantime::parse_duration)]
    pub upload_rate_window: Option<Duration>,
    /// Longest one object-store request may take.
    #[arg(long, env = "STAGING_STORE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub store_timeout: Option<Duration>,
    /// Longest an object-store connection may take to open.
    #[arg(long, env = "STAGING_STORE_CONNECT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub store_connect_timeout: Option<Duration>,
    /// Size of the reserve file that lets deletions through on a full disk (0: none).
    #[arg(long, env = "STAGING_DISK_RESERVE")]
    pub disk_reserve: Option<ByteSize>,
    /// Time in-flight transfers get after SIGTERM.
    #[arg(long, env = "STAGING_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Delete a resource when its owner pods end (Kubernetes API): `auto` (on inside a pod),
    /// `on` or `off`.
    #[arg(long, env = "STAGING_KUBE_OWNERS", value_enum)]
    pub kube_owners: Option<KubeOwners>,
    /// A resource whose owner pods never appear is deleted this long after its upload (15m).
    #[arg(long, env = "STAGING_KUBE_OWNER_START_GRACE", value_parser = humantime::parse_duration)]
    pub kube_owner_start_grace: Option<Duration>,
    /// A resource whose owner pods all ended is deleted after they stayed so this long (1m).
    #[arg(long, env = "STAGING_KUBE_OWNER_END_GRACE", value_parser = humantime::parse_duration)]
    pub kube_owner_end_grace: Option<Duration>,
    /// Time between two looks at the owner pods (15s).
    #[arg(long, env = "STAGING_KUBE_OWNER_INTERVAL", value_parser = humantime::parse_duration)]
    pub kube_owner_interval: Option<Duration>,
    /// Keep the Secrets the client made for resources deleted with their owner.
    #[arg(long, env = "STAGING_KUBE_KEEP_SECRETS", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub kube_keep_secrets: Option<bool>,
    /// Accept Kubernetes bearer tokens for uploads (TokenReview), for namespaces where the
    /// identity may create pods (SubjectAccessReview); upload tokens keep working beside them.
    #[arg(long, env = "STAGING_KUBE_AUTH", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub kube_auth: Option<bool>,
    /// With --kube-auth, accept only tokens bound to one of these audiences (TokenReview
    /// `audiences`), e.g. tokens made with `kubectl create token --audience staging-server`;
    /// comma-separated. Default: tokens for the API server's own audience.
    #[arg(
        long = "kube-auth-audience",
        env = "STAGING_KUBE_AUTH_AUDIENCES",
        value_delimiter = ','
    )]
    pub kube_auth_audiences: Vec<String>,
    /// With --kube-auth, failed Kubernetes API reviews one client address (IPv6: see --kube-auth-ipv6-prefix)
    /// may cause at once (20): token reviews of tokens the API server does not authenticate
    /// (and, per identity, access reviews that refuse and reviews of its new tokens). Reviews
    /// of valid tokens and answers from the cache are free to the address.
    #[arg(long, env = "STAGING_KUBE_AUTH_REVIEW_BURST")]
    pub kube_auth_review_burst: Option<u32>,
    /// With --kube-auth, failed reviews one client address (or identity) may cause per minute
    /// after its burst (60); beyond, tokens not in the cache are answered 429 with
    /// Retry-After.
    #[arg(long, env = "STAGING_KUBE_AUTH_REVIEWS_PER_MINUTE")]
    pub kube_auth_reviews_per_minute: Option<u32>,
    /// With --kube-auth, Kubernetes API reviews of all callers together at once (100),
    /// whatever their outcome: what the server may ask of the API server.
    #[arg(long, env = "STAGING_KUBE_AUTH_GLOBAL_REVIEW_BURST")]
    pub kube_auth_global_review_burst: Option<u32>,
    /// With --kube-auth, reviews of all callers together per minute after that burst (600);
    /// beyond, what needs a review is answered 429 with Retry-After.
    #[arg(long, env = "STAGING_KUBE_AUTH_GLOBAL_REVIEWS_PER_MINUTE")]
    pub kube_auth_global_reviews_per_minute: Option<u32>,
    /// With --kube-auth, the prefix length that makes one IPv6 client for the per-address
    /// review budgets (128: each address, as pods have in a cluster, where a node's pods share
    /// one /64; 64 for clients on networks that hand each host a /64) [default: 128].
    #[arg(long, env = "STAGING_KUBE_AUTH_IPV6_PREFIX", value_parser = clap::value_parser!(u8).range(0..=128))]
    pub kube_auth_ipv6_prefix: Option<u8>,
    /// PEM certificate chain of the API listener (TLS when given, with --tls-key); reloaded
    /// when the file changes.
    #[arg(long, env = "STAGING_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the API listener.
    #[arg(long, env = "STAGING_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Bytes of files one namespace may hold sent but not yet named by a submission (8GiB).
    #[arg(long, env = "STAGING_NAMESPACE_UNNAMED_BYTES")]
    pub namespace_unnamed_bytes: Option<ByteSize>,
    /// Bytes of files one upload credential (an upload token, a Kubernetes identity, or
    /// anonymous uploads) may hold sent but not yet named by a submission, across every
    /// namespace it names (16GiB).
    #[arg(long, env = "STAGING_CREDENTIAL_UNNAMED_BYTES")]
    pub credential_unnamed_bytes: Option<ByteSize>,
    /// Files one namespace may hold sent but not yet named by a submission (10000).
    #[arg(long, env = "STAGING_NAMESPACE_MAX_BLOBS")]
    pub namespace_max_blobs: Option<u64>,
    /// Namespaces that may hold files not yet named by a submission at once (1000).
    #[arg(long, env = "STAGING_MAX_UNNAMED_NAMESPACES")]
    pub max_unnamed_namespaces: Option<u64>,
    /// Namespaces where one upload credential may hold files not yet named by a submission at
    /// once (100).
    #[arg(long, env = "STAGING_CREDENTIAL_MAX_NAMESPACES")]
    pub credential_max_namespaces: Option<u64>,
    /// Start on a store prefix that another server instance (its own database) has registered,
    /// instead of refusing to; the orphan sweep then deletes nothing.
    #[arg(long, env = "STAGING_STORE_SHARED", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub store_shared: Option<bool>,
    /// An object without a row is deleted as an orphan only once it is this old (1h).
    #[arg(long, env = "STAGING_ORPHAN_GRACE", value_parser = humantime::parse_duration)]
    pub orphan_grace: Option<Duration>,
    /// How long a namespace keeps a file it sent that none of its submissions names, from the
    /// send (1h): the time a staging has between sending its files and naming them.
    #[arg(long, env = "STAGING_UNNAMED_BLOB_GRACE", value_parser = humantime::parse_duration)]
    pub unnamed_blob_grace: Option<Duration>,
    /// Run as one of several replicas sharing their state through the object store (S3, GCS
    /// or Azure): any replica serves any resource, and one at a time (the leader) sweeps.
    #[arg(long, env = "STAGING_REPLICATED", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub replicated: Option<bool>,
    /// With --replicated: how often a replica applies the others' changes, the bound on how
    /// long a deletion on one replica is still served by another (1s).
    #[arg(long, env = "STAGING_REPLICA_SYNC_INTERVAL", value_parser = humantime::parse_duration)]
    pub replica_sync_interval: Option<Duration>,
    /// With --replicated: the leader lease, how long the leader's work waits when its replica
    /// dies (15s).
    #[arg(long, env = "STAGING_LEADER_LEASE", value_parser = humantime::parse_duration)]
    pub leader_lease: Option<Duration>,
    /// With --replicated: shared-log entries between two snapshots of the shared state (1000).
    #[arg(long, env = "STAGING_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Answer v1 downloads with a redirect (307) to a short-lived presigned URL of the object in
    /// the store (S3, GCS, Azure), so that the bytes come from the store; pods must reach the
    /// store. Ranges, HEAD, v0 and clients asking `?redirect=false` are served directly.
    #[arg(long, env = "STAGING_PRESIGNED_DOWNLOADS", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub presigned_downloads: Option<bool>,
    /// Lifetime of a presigned download URL (1s to 15m) [default: 60s].
    #[arg(long, env = "STAGING_PRESIGNED_URL_TTL", value_parser = humantime::parse_duration)]
    pub presigned_url_ttl: Option<Duration>,
}
