//! Server configuration: the clap arguments of `serve`, an optional TOML file, and the validated
//! runtime [`Config`].
//!
//! Precedence is command line > `STAGING_*` environment > `--config` TOML file > defaults. Every
//! argument is an `Option` so that "not given" can fall through to the file and then to the
//! `DEFAULT_*` constant. Loading is pure: nothing is bound and the environment is not changed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret;
use crate::size::ByteSize;

/// The fork's port, so that existing `spark.kubernetes.resourceStagingServer.uri` values work.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10000";
/// Data directory for the SQLite database, the signing key and the local object store.
pub const DEFAULT_DATA_DIR: &str = "data/staging";
/// Largest accepted bundle. Spark dependency bundles are jars; 2 GiB leaves room for fat jars.
pub const DEFAULT_MAX_UPLOAD_SIZE: u64 = 2 << 30;
/// A bundle never downloaded within this time is deleted (the fork's 30 min default).
pub const DEFAULT_UNUSED_TTL: Duration = Duration::from_secs(30 * 60);
/// Absolute lifetime of any bundle, downloaded or not.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// How often the sweeper looks for expired bundles.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Uploads streaming at once; more are answered 503 with `Retry-After`.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS: usize = 32;
/// Uploads of one namespace (or, before its namespace is known, of one credential) at once:
/// a quarter of the slots, so that one tenant's uploads, however slow, leave the others
/// three quarters.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS_PER_NAMESPACE: usize = 8;
/// Open client connections; more are closed at accept.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Time a client has to send its request headers (slow-loris protection).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between two body chunks of an upload before it is abandoned, and longest a
/// connection's requests in progress may move no body byte either way (a download whose client
/// stopped reading) before the connection is closed.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Slowest upload accepted, in bytes per second over [`DEFAULT_UPLOAD_RATE_WINDOW`]: a client
/// that trickles a byte just often enough to dodge the idle timeout would otherwise hold an
/// upload slot for as long as it likes. 4 KiB/s is 32 kbit/s, far below any real link.
pub const DEFAULT_UPLOAD_MIN_RATE: u64 = 4 << 10;
/// The window over which the upload rate is measured.
pub const DEFAULT_UPLOAD_RATE_WINDOW: Duration = Duration::from_secs(30);
/// Longest one object-store request may take (connect, send, first byte and body of one
/// call), well under a client's patience; a store that accepts connections and never answers
/// otherwise blocks requests, /readyz and start-up for minutes.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an object-store connection may take to open.
pub const DEFAULT_STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes kept in a reserve file beside the database, released when the disk is full so that
/// deletions and start-up can still write (see `reserve`).
pub const DEFAULT_DISK_RESERVE: u64 = 32 << 20;
/// Bytes of files one namespace may hold sent but not yet named by a submission (they count
/// against its quota and the capacity as well).
pub const DEFAULT_NAMESPACE_UNNAMED_BYTES: u64 = 8 << 30;
/// Bytes of files one upload credential (an upload token, a Kubernetes identity, or anonymous
/// uploads) may hold sent but not yet named by a submission, across all the namespaces it
/// names: a shared token cannot multiply [`DEFAULT_NAMESPACE_UNNAMED_BYTES`] by making up
/// namespace names. Twice the namespace bound leaves room for a shared token serving several
/// teams' stagings at once (their files wait unnamed only between send and submission).
pub const DEFAULT_CREDENTIAL_UNNAMED_BYTES: u64 = 16 << 30;
/// Files one namespace may hold sent but not yet named by a submission: a staging names at
/// most [`crate::db::MAX_FILES`] files, so ten at once fit.
pub const DEFAULT_NAMESPACE_MAX_BLOBS: u64 = 10_000;
/// Namespaces that may hold files not named by a submission at once (a staging's files wait
/// unnamed for seconds; a thousand namespaces staging at the same moment is a large cluster).
pub const DEFAULT_MAX_UNNAMED_NAMESPACES: u64 = 1000;
/// Namespaces where one credential may hold such files at once: a tenth of
/// [`DEFAULT_MAX_UNNAMED_NAMESPACES`], so that one credential making up namespace names cannot
/// take every place, and still room for a shared token staging for a hundred teams at once.
pub const DEFAULT_CREDENTIAL_MAX_NAMESPACES: u64 = 100;
/// An object of the store without a row is deleted as an orphan only once it is this old.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(3600);
/// Time in-flight transfers get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// Default failed reviews one client address (or one identity) may cause at once.
pub const DEFAULT_REVIEW_BURST: u32 = 20;
/// Default failed reviews one client address (or one identity) may cause per minute after its
/// burst.
pub const DEFAULT_REVIEWS_PER_MINUTE: u32 = 60;
/// Default reviews of all callers together at once: a burst of new submitters (each valid
/// token is reviewed once a minute at most) without a queue at the API server.
pub const DEFAULT_GLOBAL_REVIEW_BURST: u32 = 100;
/// Default reviews of all callers together per minute after the burst: ten a second, a small
/// share of what one API server serves.
pub const DEFAULT_GLOBAL_REVIEWS_PER_MINUTE: u32 = 600;

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

/// What `Debug` prints in place of a secret.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
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
    #[arg(long, env = "STAGING_INSECURE_ALLOW_ANONYMOUS_UPLOAD")]
    pub insecure_allow_anonymous_upload: bool,
    /// File holding the download-token signing key (at least 32 bytes; mode 0600).
    /// Default: generated on first start as <data-dir>/signing.key.
    #[arg(long, env = "STAGING_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// The download-token signing key itself (prefer --signing-key-file).
    #[arg(long, env = "STAGING_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<SecretArg>,
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
    #[arg(long, env = "STAGING_KUBE_KEEP_SECRETS")]
    pub kube_keep_secrets: bool,
    /// Accept Kubernetes bearer tokens for uploads (TokenReview), for namespaces where the
    /// identity may create pods (SubjectAccessReview); upload tokens keep working beside them.
    #[arg(long, env = "STAGING_KUBE_AUTH")]
    pub kube_auth: bool,
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
    #[arg(long, env = "STAGING_STORE_SHARED")]
    pub store_shared: bool,
    /// An object without a row is deleted as an orphan only once it is this old (1h).
    #[arg(long, env = "STAGING_ORPHAN_GRACE", value_parser = humantime::parse_duration)]
    pub orphan_grace: Option<Duration>,
    /// How long a namespace keeps a file it sent that none of its submissions names, from the
    /// send (1h): the time a staging has between sending its files and naming them.
    #[arg(long, env = "STAGING_UNNAMED_BLOB_GRACE", value_parser = humantime::parse_duration)]
    pub unnamed_blob_grace: Option<Duration>,
}

/// Whether resources follow their owner pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeOwners {
    /// On when running in a pod (`KUBERNETES_SERVICE_HOST` set).
    #[default]
    Auto,
    /// On.
    On,
    /// Off: resources live by their TTLs and explicit deletes only.
    Off,
}

/// How the owner watch follows owner pods (`--kube-owners` and its `--kube-owner-*` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerSettings {
    /// A resource whose owner pods never appear is deleted this long after its upload.
    pub start_grace: Duration,
    /// A resource whose owner pods all ended is deleted after they stayed so this long.
    pub end_grace: Duration,
    /// Time between two rounds.
    pub interval: Duration,
    /// Also delete the Secrets the client made for a deleted resource.
    pub delete_secrets: bool,
}

/// Settings of the Kubernetes credential reviews (`--kube-auth-audience`, `--kube-auth-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeAuthSettings {
    /// Audiences a token must be valid for (empty: the API server's own, as Kubernetes
    /// defaults).
    pub audiences: Vec<String>,
    /// Failed reviews one client address (or one identity) may cause at once.
    pub review_burst: u32,
    /// Failed reviews one client address (or one identity) may cause per minute after its
    /// burst.
    pub reviews_per_minute: u32,
    /// Reviews of all callers together at once.
    pub global_review_burst: u32,
    /// Reviews of all callers together per minute after the burst.
    pub global_reviews_per_minute: u32,
    /// IPv6 client addresses are grouped by this prefix length for the per-address budgets.
    pub ipv6_prefix: u8,
}

impl Default for KubeAuthSettings {
    fn default() -> Self {
        Self {
            audiences: Vec::new(),
            review_burst: DEFAULT_REVIEW_BURST,
            reviews_per_minute: DEFAULT_REVIEWS_PER_MINUTE,
            global_review_burst: DEFAULT_GLOBAL_REVIEW_BURST,
            global_reviews_per_minute: DEFAULT_GLOBAL_REVIEWS_PER_MINUTE,
            ipv6_prefix: service_runtime::peer::DEFAULT_IPV6_PREFIX,
        }
    }
}

/// The TOML file: the same settings, snake_case, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    store_url: Option<String>,
    #[serde(default)]
    store_options: BTreeMap<String, String>,
    upload_token_file: Option<PathBuf>,
    #[serde(default)]
    insecure_allow_anonymous_upload: bool,
    signing_key_file: Option<PathBuf>,
    max_upload_size: Option<ByteSize>,
    #[serde(default, with = "humantime_serde_opt")]
    unused_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    max_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    sweep_interval: Option<Duration>,
    namespace_quota_bytes: Option<ByteSize>,
    namespace_quota_count: Option<u64>,
    capacity: Option<ByteSize>,
    max_concurrent_uploads: Option<usize>,
    max_concurrent_uploads_per_namespace: Option<usize>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    body_idle_timeout: Option<Duration>,
    upload_min_rate: Option<ByteSize>,
    #[serde(default, with = "humantime_serde_opt")]
    upload_rate_window: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    store_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    store_connect_timeout: Option<Duration>,
    disk_reserve: Option<ByteSize>,
    #[serde(default, with = "humantime_serde_opt")]
    shutdown_grace: Option<Duration>,
    kube_owners: Option<KubeOwners>,
    #[serde(default, with = "humantime_serde_opt")]
    kube_owner_start_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    kube_owner_end_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    kube_owner_interval: Option<Duration>,
    #[serde(default)]
    kube_keep_secrets: bool,
    #[serde(default)]
    kube_auth: bool,
    #[serde(default)]
    kube_auth_audiences: Vec<String>,
    kube_auth_review_burst: Option<u32>,
    kube_auth_reviews_per_minute: Option<u32>,
    kube_auth_global_review_burst: Option<u32>,
    kube_auth_global_reviews_per_minute: Option<u32>,
    kube_auth_ipv6_prefix: Option<u8>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    namespace_unnamed_bytes: Option<ByteSize>,
    credential_unnamed_bytes: Option<ByteSize>,
    namespace_max_blobs: Option<u64>,
    max_unnamed_namespaces: Option<u64>,
    credential_max_namespaces: Option<u64>,
    #[serde(default)]
    store_shared: bool,
    #[serde(default, with = "humantime_serde_opt")]
    orphan_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    unnamed_blob_grace: Option<Duration>,
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Where bundle bytes live.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The local filesystem under this directory.
    Local(PathBuf),
    /// Any object_store URL, with builder options.
    Url {
        /// The URL (`s3://bucket/prefix`, ...).
        url: String,
        /// Builder options (`aws_endpoint`, ...).
        options: BTreeMap<String, String>,
    },
}

impl fmt::Debug for StoreLocation {
    // Option values are left out: they may hold the store's credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(root) => f.debug_tuple("Local").field(root).finish(),
            Self::Url { url, options } => f
                .debug_struct("Url")
                .field("url", url)
                .field(
                    "options",
                    &options
                        .keys()
                        .map(|k| (k, Redacted))
                        .collect::<BTreeMap<_, _>>(),
                )
                .finish(),
        }
    }
}

/// Limits and lifetimes, grouped because the request path needs them together.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted bundle.
    pub max_upload_size: u64,
    /// Unused bundles are deleted after this.
    pub unused_ttl: Duration,
    /// Every bundle is deleted after this.
    pub max_ttl: Duration,
    /// Per-namespace stored bytes.
    pub namespace_quota_bytes: Option<u64>,
    /// Per-namespace stored bundles.
    pub namespace_quota_count: Option<u64>,
    /// Total stored bytes.
    pub capacity: Option<u64>,
    /// Concurrent uploads.
    pub max_concurrent_uploads: usize,
    /// Concurrent uploads of one namespace (or credential).
    pub max_concurrent_uploads_per_namespace: usize,
    /// Pause allowed between body chunks, and longest a connection's requests in progress
    /// may move no body byte.
    pub body_idle_timeout: Duration,
    /// Slowest accepted upload, bytes per second over `upload_rate_window` (0: off).
    pub upload_min_rate: u64,
    /// Window of the upload rate.
    pub upload_rate_window: Duration,
    /// Per-namespace bytes of files sent but not named by a submission.
    pub namespace_unnamed_bytes: u64,
    /// Per-credential bytes of such files, across namespaces.
    pub credential_unnamed_bytes: u64,
    /// Per-namespace count of such files.
    pub namespace_max_blobs: u64,
    /// Namespaces holding such files at once.
    pub max_unnamed_namespaces: u64,
    /// Namespaces where one credential holds such files at once.
    pub credential_max_namespaces: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_size: DEFAULT_MAX_UPLOAD_SIZE,
            unused_ttl: DEFAULT_UNUSED_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            namespace_quota_bytes: None,
            namespace_quota_count: None,
            capacity: None,
            max_concurrent_uploads: DEFAULT_MAX_CONCURRENT_UPLOADS,
            max_concurrent_uploads_per_namespace: DEFAULT_MAX_CONCURRENT_UPLOADS_PER_NAMESPACE,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            upload_min_rate: DEFAULT_UPLOAD_MIN_RATE,
            upload_rate_window: DEFAULT_UPLOAD_RATE_WINDOW,
            namespace_unnamed_bytes: DEFAULT_NAMESPACE_UNNAMED_BYTES,
            credential_unnamed_bytes: DEFAULT_CREDENTIAL_UNNAMED_BYTES,
            namespace_max_blobs: DEFAULT_NAMESPACE_MAX_BLOBS,
            max_unnamed_namespaces: DEFAULT_MAX_UNNAMED_NAMESPACES,
            credential_max_namespaces: DEFAULT_CREDENTIAL_MAX_NAMESPACES,
        }
    }
}

/// Validated runtime configuration of the server. Its `Debug` never prints the signing key, the
/// upload tokens or the store's option values.
#[derive(Clone)]
pub struct Config {
    /// API listener address.
    pub listen: SocketAddr,
    /// Optional admin listener address.
    pub admin_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Bundle storage.
    pub store: StoreLocation,
    /// Upload tokens in clear, to be hashed by `auth` (empty = anonymous upload).
    pub upload_tokens: Vec<crate::auth::UploadToken>,
    /// Explicit signing key; `None` = generated and persisted in the data dir.
    pub signing_key: Option<Vec<u8>>,
    /// Limits and lifetimes.
    pub limits: Limits,
    /// Sweep period.
    pub sweep_interval: Duration,
    /// Connection cap.
    pub max_connections: usize,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Longest one object-store request may take.
    pub store_timeout: Duration,
    /// Longest an object-store connection may take to open.
    pub store_connect_timeout: Duration,
    /// Size of the disk reserve file.
    pub disk_reserve: u64,
    /// Following owner pods (`None`: off).
    pub owners: Option<OwnerSettings>,
    /// Uploads may authenticate with Kubernetes credentials.
    pub kube_auth: bool,
    /// Audiences and review limits of `--kube-auth`.
    pub kube_auth_settings: KubeAuthSettings,
    /// TLS of the API listener (`None`: plain HTTP).
    pub tls: Option<service_runtime::tls::TlsFiles>,
    /// How often the TLS files are looked at for a new certificate.
    pub tls_reload_interval: Duration,
    /// Start although another instance registered the store prefix.
    pub store_shared: bool,
    /// Age before an object without a row counts as an orphan.
    pub orphan_grace: Duration,
    /// How long a grant on a file no submission of its namespace names lives after its send.
    pub unnamed_blob_grace: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every field is named, so that a new one cannot be added without deciding here
        // whether it may be printed.
        let Self {
            listen,
            admin_listen,
            data_dir,
            store,
            upload_tokens,
            signing_key,
            limits,
            sweep_interval,
            max_connections,
            header_read_timeout,
            shutdown_grace,
            store_timeout,
            store_connect_timeout,
            disk_reserve,
            owners,
            kube_auth,
            kube_auth_settings,
            tls,
            tls_reload_interval,
            store_shared,
            orphan_grace,
            unnamed_blob_grace,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("admin_listen", admin_listen)
            .field("data_dir", data_dir)
            .field("store", store)
            // An upload token's own Debug shows its namespaces, never the token.
            .field("upload_tokens", upload_tokens)
            .field("signing_key", &signing_key.as_ref().map(|_| Redacted))
            .field("limits", limits)
            .field("sweep_interval", sweep_interval)
            .field("max_connections", max_connections)
            .field("header_read_timeout", header_read_timeout)
            .field("shutdown_grace", shutdown_grace)
            .field("store_timeout", store_timeout)
            .field("store_connect_timeout", store_connect_timeout)
            .field("disk_reserve", disk_reserve)
            .field("owners", owners)
            .field("kube_auth", kube_auth)
            .field("kube_auth_settings", kube_auth_settings)
            .field("tls", tls)
            .field("tls_reload_interval", tls_reload_interval)
            .field("store_shared", store_shared)
            .field("orphan_grace", orphan_grace)
            .field("unnamed_blob_grace", unnamed_blob_grace)
            .finish()
    }
}

impl Config {
    /// A configuration for tests and embedding: loopback, anonymous upload, defaults.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            listen: DEFAULT_LISTEN.parse().expect("constant address parses"),
            admin_listen: None,
            store: StoreLocation::Local(data_dir.join("objects")),
            data_dir,
            upload_tokens: Vec::new(),
            signing_key: None,
            limits: Limits::default(),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            store_timeout: DEFAULT_STORE_TIMEOUT,
            store_connect_timeout: DEFAULT_STORE_CONNECT_TIMEOUT,
            disk_reserve: DEFAULT_DISK_RESERVE,
            owners: None,
            kube_auth: false,
            kube_auth_settings: KubeAuthSettings::default(),
            tls: None,
            tls_reload_interval: service_runtime::tls::RELOAD_INTERVAL,
            store_shared: false,
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            unnamed_blob_grace: crate::db::UNNAMED_BLOB_GRACE,
        }
    }

    /// Merges the arguments over the optional TOML file and the defaults, then validates.
    ///
    /// # Errors
    /// [`Error::Config`] for conflicting or invalid settings, the secret-file errors of
    /// `secret`, and I/O errors reading the files.
    pub fn load(args: ServeArgs) -> Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("--config {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mut options = file.store_options;
        for kv in &args.store_options {
            let (k, v) = kv
                .expose()
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("--store-option {kv:?} is not KEY=VALUE")))?;
            options.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let store = match args.store_url.or(file.store_url) {
            None => StoreLocation::Local(data_dir.join("objects")),
            Some(url) if url.starts_with("file://") => {
                StoreLocation::Local(PathBuf::from(url.trim_start_matches("file://")))
            }
            Some(url) => StoreLocation::Url { url, options },
        };
        let token_file = args.upload_token_file.or(file.upload_token_file);
        let upload_tokens = read_upload_tokens(
            args.upload_tokens.as_ref().map(SecretArg::expose),
            token_file.as_deref(),
        )?;
        let signing_key = secret::resolve(
            "signing key",
            args.signing_key.as_ref().map(SecretArg::expose),
            args.signing_key_file.or(file.signing_key_file).as_deref(),
        )?
        .map(String::into_bytes);
        let d = Limits::default();
        let store_connect_timeout = args
            .store_connect_timeout
            .or(file.store_connect_timeout)
            .unwrap_or(DEFAULT_STORE_CONNECT_TIMEOUT);
        // Each attempt of the store client fails fast on a dead endpoint; the whole call is
        // bounded by --store-timeout on top of the client's retries.
        let store = match store {
            StoreLocation::Url { url, mut options } => {
                options
                    .entry("connect_timeout".into())
                    .or_insert_with(|| format!("{}ms", store_connect_timeout.as_millis()));
                StoreLocation::Url { url, options }
            }
            local => local,
        };
        let mut config = Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("constant address parses")),
            admin_listen: args.admin_listen.or(file.admin_listen),
            data_dir,
            store,
            upload_tokens,
            signing_key,
            limits: Limits {
                max_upload_size: args
                    .max_upload_size
                    .or(file.max_upload_size)
                    .map_or(d.max_upload_size, |b| b.0),
                unused_ttl: args.unused_ttl.or(file.unused_ttl).unwrap_or(d.unused_ttl),
                max_ttl: args.max_ttl.or(file.max_ttl).unwrap_or(d.max_ttl),
                namespace_quota_bytes: args
                    .namespace_quota_bytes
                    .or(file.namespace_quota_bytes)
                    .map(|b| b.0),
                namespace_quota_count: args.namespace_quota_count.or(file.namespace_quota_count),
                capacity: args.capacity.or(file.capacity).map(|b| b.0),
                max_concurrent_uploads: args
                    .max_concurrent_uploads
                    .or(file.max_concurrent_uploads)
                    .unwrap_or(d.max_concurrent_uploads),
                max_concurrent_uploads_per_namespace: args
                    .max_concurrent_uploads_per_namespace
                    .or(file.max_concurrent_uploads_per_namespace)
                    .unwrap_or(d.max_concurrent_uploads_per_namespace),
                body_idle_timeout: args
                    .body_idle_timeout
                    .or(file.body_idle_timeout)
                    .unwrap_or(d.body_idle_timeout),
                upload_min_rate: args
                    .upload_min_rate
                    .or(file.upload_min_rate)
                    .map_or(d.upload_min_rate, |b| b.0),
                upload_rate_window: args
                    .upload_rate_window
                    .or(file.upload_rate_window)
                    .unwrap_or(d.upload_rate_window),
                namespace_unnamed_bytes: args
                    .namespace_unnamed_bytes
                    .or(file.namespace_unnamed_bytes)
                    .map_or(d.namespace_unnamed_bytes, |b| b.0),
                credential_unnamed_bytes: args
                    .credential_unnamed_bytes
                    .or(file.credential_unnamed_bytes)
                    .map_or(d.credential_unnamed_bytes, |b| b.0),
                namespace_max_blobs: args
                    .namespace_max_blobs
                    .or(file.namespace_max_blobs)
                    .unwrap_or(d.namespace_max_blobs),
                max_unnamed_namespaces: args
                    .max_unnamed_namespaces
                    .or(file.max_unnamed_namespaces)
                    .unwrap_or(d.max_unnamed_namespaces),
                credential_max_namespaces: args
                    .credential_max_namespaces
                    .or(file.credential_max_namespaces)
                    .unwrap_or(d.credential_max_namespaces),
            },
            sweep_interval: args
                .sweep_interval
                .or(file.sweep_interval)
                .unwrap_or(DEFAULT_SWEEP_INTERVAL),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            header_read_timeout: args
                .header_read_timeout
                .or(file.header_read_timeout)
                .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            store_timeout: args
                .store_timeout
                .or(file.store_timeout)
                .unwrap_or(DEFAULT_STORE_TIMEOUT),
            store_connect_timeout,
            disk_reserve: args
                .disk_reserve
                .or(file.disk_reserve)
                .map_or(DEFAULT_DISK_RESERVE, |b| b.0),
            kube_auth: false,
            kube_auth_settings: KubeAuthSettings::default(),
            tls: None,
            tls_reload_interval: service_runtime::tls::RELOAD_INTERVAL,
            store_shared: args.store_shared || file.store_shared,
            orphan_grace: args
                .orphan_grace
                .or(file.orphan_grace)
                .unwrap_or(DEFAULT_ORPHAN_GRACE),
            unnamed_blob_grace: args
                .unnamed_blob_grace
                .or(file.unnamed_blob_grace)
                .unwrap_or(crate::db::UNNAMED_BLOB_GRACE),
            owners: match args.kube_owners.or(file.kube_owners).unwrap_or_default() {
                KubeOwners::Off => None,
                KubeOwners::Auto if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() => None,
                KubeOwners::Auto | KubeOwners::On => Some(OwnerSettings {
                    start_grace: args
                        .kube_owner_start_grace
                        .or(file.kube_owner_start_grace)
                        .unwrap_or(Duration::from_secs(15 * 60)),
                    end_grace: args
                        .kube_owner_end_grace
                        .or(file.kube_owner_end_grace)
                        .unwrap_or(Duration::from_secs(60)),
                    interval: args
                        .kube_owner_interval
                        .or(file.kube_owner_interval)
                        .unwrap_or(Duration::from_secs(15))
                        .max(Duration::from_secs(1)),
                    delete_secrets: !(args.kube_keep_secrets || file.kube_keep_secrets),
                }),
            },
        };
        config.kube_auth = args.kube_auth || file.kube_auth;
        let k = KubeAuthSettings::default();
        config.kube_auth_settings = KubeAuthSettings {
            audiences: if args.kube_auth_audiences.is_empty() {
                file.kube_auth_audiences
            } else {
                args.kube_auth_audiences
            }
            .into_iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
            review_burst: args
                .kube_auth_review_burst
                .or(file.kube_auth_review_burst)
                .unwrap_or(k.review_burst),
            reviews_per_minute: args
                .kube_auth_reviews_per_minute
                .or(file.kube_auth_reviews_per_minute)
                .unwrap_or(k.reviews_per_minute),
            global_review_burst: args
                .kube_auth_global_review_burst
                .or(file.kube_auth_global_review_burst)
                .unwrap_or(k.global_review_burst),
            global_reviews_per_minute: args
                .kube_auth_global_reviews_per_minute
                .or(file.kube_auth_global_reviews_per_minute)
                .unwrap_or(k.global_reviews_per_minute),
            ipv6_prefix: args
                .kube_auth_ipv6_prefix
                .or(file.kube_auth_ipv6_prefix)
                .unwrap_or(k.ipv6_prefix)
                .min(128),
        };
        config.tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(service_runtime::tls::TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "give both --tls-cert and --tls-key, or neither".into(),
                ));
            }
        };
        config.validate(
            args.insecure_allow_anonymous_upload || file.insecure_allow_anonymous_upload,
        )?;
        Ok(config)
    }

    /// Checks the cross-field rules.
    ///
    /// # Errors
    /// [`Error::Config`] naming the broken rule.
    pub fn validate(&self, allow_anonymous: bool) -> Result<()> {
        let exposed = !self.listen.ip().is_loopback();
        if exposed && self.upload_tokens.is_empty() && !self.kube_auth && !allow_anonymous {
            return Err(Error::Config(format!(
                "listening on {} (not loopback) without upload tokens; set --upload-token-file \
                 or --kube-auth, or --insecure-allow-anonymous-upload to accept uploads from anyone",
                self.listen
            )));
        }
        let k = &self.kube_auth_settings;
        if !self.kube_auth && !k.audiences.is_empty() {
            return Err(Error::Config(
                "--kube-auth-audience needs --kube-auth".into(),
            ));
        }
        if k.review_burst == 0
            || k.reviews_per_minute == 0
            || k.global_review_burst == 0
            || k.global_reviews_per_minute == 0
        {
            return Err(Error::Config(
                "--kube-auth-review-burst, --kube-auth-reviews-per-minute and their --kube-auth-global-* \
                 counterparts must be positive"
                    .into(),
            ));
        }
        if let Some(key) = &self.signing_key
            && key.len() < 32
        {
            return Err(Error::Config(
                "the signing key must be at least 32 bytes".into(),
            ));
        }
        let l = &self.limits;
        if l.unused_ttl.is_zero() || l.max_ttl.is_zero() || l.unused_ttl > l.max_ttl {
            return Err(Error::Config(
                "TTLs must be positive and --unused-ttl must not exceed --max-ttl".into(),
            ));
        }
        if l.max_concurrent_uploads == 0
            || l.max_concurrent_uploads_per_namespace == 0
            || self.max_connections == 0
            || l.max_upload_size == 0
            || l.namespace_max_blobs == 0
            || l.max_unnamed_namespaces == 0
            || l.credential_max_namespaces == 0
        {
            return Err(Error::Config("limits must be positive".into()));
        }
        if self.header_read_timeout.is_zero() || l.body_idle_timeout.is_zero() {
            return Err(Error::Config(
                "--header-read-timeout and --body-idle-timeout must be positive".into(),
            ));
        }
        if l.upload_rate_window < Duration::from_secs(1) {
            return Err(Error::Config(
                "--upload-rate-window must be at least 1s".into(),
            ));
        }
        if self.store_timeout.is_zero() || self.store_connect_timeout.is_zero() {
            return Err(Error::Config("store timeouts must be positive".into()));
        }
        if self.unnamed_blob_grace < Duration::from_secs(1) {
            return Err(Error::Config(
                "--unnamed-blob-grace must be at least 1s (a staging sends its files, then names them)".into(),
            ));
        }
        if self.sweep_interval < Duration::from_millis(100) {
            return Err(Error::Config(
                "--sweep-interval must be at least 100ms".into(),
            ));
        }
        Ok(())
    }
}

fn read_upload_tokens(
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Vec<crate::auth::UploadToken>> {
    let mut entries: Vec<String> = inline
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    if let Some(path) = file {
        let text = secret::read_secret_file(path)?;
        entries.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let mut tokens = Vec::new();
    for entry in &entries {
        let token = crate::auth::UploadToken::parse(entry)
            .map_err(|e| Error::Config(format!("an upload token's namespaces: {e}")))?;
        tokens.extend(token);
    }
    if tokens.iter().any(|t| t.secret.len() < 16) {
        return Err(Error::Config(
            "upload tokens must be at least 16 characters".into(),
        ));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_anonymous_upload_on_exposed_listener() {
        let args = ServeArgs {
            listen: Some("0.0.0.0:10000".parse().unwrap()),
            ..Default::default()
        };
        assert!(Config::load(args.clone()).unwrap_err().is_usage());
        let ok = ServeArgs {
            insecure_allow_anonymous_upload: true,
            ..args
        };
        assert!(Config::load(ok).is_ok());
    }

    #[test]
    fn cli_overrides_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staging.toml");
        std::fs::write(&path, "unused_ttl = \"5m\"\nmax_upload_size = \"1MiB\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            max_upload_size: Some(ByteSize(10)),
            ..Default::default()
        };
        let c = Config::load(args).unwrap();
        assert_eq!(c.limits.unused_ttl, Duration::from_secs(300));
        assert_eq!(c.limits.max_upload_size, 10);
        assert_eq!(c.limits.max_ttl, DEFAULT_MAX_TTL);
    }

    #[test]
    fn rejects_unknown_file_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staging.toml");
        std::fs::write(&path, "lisen = \"0.0.0.0:1\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(Config::load(args).is_err());
    }

    #[test]
    fn debug_never_prints_tokens_keys_or_store_options() {
        const TOKEN: &str = "upload-token-0123456789";
        const KEY: &str = "signing-key-0123456789-0123456789-0123456789";
        const STORE_SECRET: &str = "store-secret-0123456789";
        let mut config = Config::for_data_dir("/data");
        config.upload_tokens = vec![crate::auth::UploadToken::from(TOKEN)];
        config.signing_key = Some(KEY.as_bytes().to_vec());
        config.store = StoreLocation::Url {
            url: "s3://bucket/prefix".into(),
            options: BTreeMap::from([("aws_secret_access_key".into(), STORE_SECRET.into())]),
        };
        let printed = format!("{config:?}");
        for secret in [TOKEN, KEY, STORE_SECRET] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        // The rest is still there to read.
        assert!(printed.contains("aws_secret_access_key") && printed.contains("/data"));

        let args = ServeArgs {
            upload_tokens: Some(TOKEN.parse().unwrap()),
            signing_key: Some(KEY.parse().unwrap()),
            store_options: vec![
                format!("aws_secret_access_key={STORE_SECRET}")
                    .parse()
                    .unwrap(),
            ],
            ..Default::default()
        };
        let printed = format!("{args:?} {:#?}", args);
        for secret in [TOKEN, KEY, STORE_SECRET] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }
}
