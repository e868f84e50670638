//! Server configuration: the clap arguments of `serve` ([`ServeArgs`]), an optional TOML file,
//! and the validated runtime [`Config`].
//!
//! Precedence is command line > `STAGING_*` environment > `--config` TOML file > defaults. Every
//! argument is an `Option` so that "not given" can fall through to the file and then to the
//! `DEFAULT_*` constant; switches too, so that `--kube-auth=false` can turn off what the file
//! turned on. Loading is pure: it reads the files it is pointed at and nothing else (whether the
//! process runs in a cluster is the caller's to say), binds nothing and changes no environment.
//! Every rule a [`Config`] must keep is checked by [`Config::validate`], so that a `Config` built
//! in a test is held to the same rules as a loaded one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use service_runtime::secret::SecretError;

mod args;
mod file;
mod secrets;
mod validate;

pub use args::{SecretArg, ServeArgs};
use file::FileConfig;
use secrets::{read_upload_tokens, read_verify_keys, secret_value};

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
/// Default `--replica-sync-interval`.
pub const DEFAULT_REPLICA_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Default `--leader-lease`.
pub const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(15);
/// Default `--snapshot-every`.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1000;
/// Lifetime of a presigned download URL: the time between the redirect and the client's request
/// to the store, with room for a slow DNS lookup or connection; a store checks it when the
/// request starts, so a long transfer is not cut by it.
pub const DEFAULT_PRESIGNED_URL_TTL: Duration = Duration::from_secs(60);
/// Longest lifetime of a presigned download URL: such a URL reads its object for as long as it
/// lives, whatever becomes of the token or the resource meanwhile, so it is kept short.
pub const MAX_PRESIGNED_URL_TTL: Duration = Duration::from_secs(15 * 60);
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

/// What `Debug` prints in place of a secret.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting is invalid, two settings conflict, or what they name refuses them (another
    /// process holds the data directory, another instance the store prefix).
    #[error("configuration: {0}")]
    Invalid(String),
    /// The `--config` file cannot be read.
    #[error("configuration: --config {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The `--config` file is not TOML, names an unknown key or holds a bad value.
    #[error("configuration: {}: {source}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        source: Box<toml::de::Error>,
    },
    /// A secret file (upload tokens, signing key) is refused or cannot be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl ConfigError {
    /// Whether the operator's settings are at fault (exit code 64, `EX_USAGE`) rather than the
    /// machine: everything but a secret file that exists and cannot be read.
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::Secret(SecretError::Io { .. }))
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
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
    /// Keys that only verify download tokens (previous signing keys, see `token`).
    pub verify_keys: Vec<Vec<u8>>,
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
    /// Uploads without a token are accepted on a non-loopback listener.
    pub insecure_allow_anonymous_upload: bool,
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
    /// Several replicas share the state through the object store (`crate::replica`).
    pub replicated: bool,
    /// How often a replica applies the others' changes: the bound on how long a deletion on
    /// one replica is still served by another.
    pub replica_sync_interval: Duration,
    /// The leader lease's duration: how long the work that must happen once waits when its
    /// replica dies.
    pub leader_lease: Duration,
    /// Shared-log entries between two snapshots of the shared state.
    pub snapshot_every: u64,
    /// v1 downloads may be answered by a redirect to a presigned store URL of this lifetime
    /// (`None`: every download goes through the server).
    pub presigned_url_ttl: Option<Duration>,
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
            verify_keys,
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
            insecure_allow_anonymous_upload,
            kube_auth_settings,
            tls,
            tls_reload_interval,
            store_shared,
            orphan_grace,
            unnamed_blob_grace,
            replicated,
            replica_sync_interval,
            leader_lease,
            snapshot_every,
            presigned_url_ttl,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("admin_listen", admin_listen)
            .field("data_dir", data_dir)
            .field("store", store)
            // An upload token's own Debug shows its namespaces, never the token.
            .field("upload_tokens", upload_tokens)
            .field("signing_key", &signing_key.as_ref().map(|_| Redacted))
            // How many, never which: a kid is logged at start, the keys never.
            .field("verify_keys", &verify_keys.len())
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
            .field(
                "insecure_allow_anonymous_upload",
                insecure_allow_anonymous_upload,
            )
            .field("kube_auth_settings", kube_auth_settings)
            .field("tls", tls)
            .field("tls_reload_interval", tls_reload_interval)
            .field("store_shared", store_shared)
            .field("orphan_grace", orphan_grace)
            .field("unnamed_blob_grace", unnamed_blob_grace)
            .field("replicated", replicated)
            .field("replica_sync_interval", replica_sync_interval)
            .field("leader_lease", leader_lease)
            .field("snapshot_every", snapshot_every)
            .field("presigned_url_ttl", presigned_url_ttl)
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
            verify_keys: Vec::new(),
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
            insecure_allow_anonymous_upload: false,
            kube_auth_settings: KubeAuthSettings::default(),
            tls: None,
            tls_reload_interval: service_runtime::tls::RELOAD_INTERVAL,
            store_shared: false,
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            unnamed_blob_grace: crate::db::UNNAMED_BLOB_GRACE,
            replicated: false,
            replica_sync_interval: DEFAULT_REPLICA_SYNC_INTERVAL,
            leader_lease: DEFAULT_LEADER_LEASE,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            presigned_url_ttl: None,
        }
    }

    /// Merges the arguments over the optional TOML file and the defaults, then validates.
    /// `in_cluster` says whether the process runs in a Kubernetes pod (the caller looks at
    /// `KUBERNETES_SERVICE_HOST`): `--kube-owners auto` follows owner pods only there.
    ///
    /// # Errors
    /// [`ConfigError`]: an unreadable or invalid file, a refused secret file, conflicting or
    /// invalid settings.
    pub fn load(args: ServeArgs, in_cluster: bool) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mut options = file.store_options;
        for kv in &args.store_options {
            let (k, v) = kv.expose().split_once('=').ok_or_else(|| {
                ConfigError::invalid(format!("--store-option {kv:?} is not KEY=VALUE"))
            })?;
            options.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let store_connect_timeout = args
            .store_connect_timeout
            .or(file.store_connect_timeout)
            .unwrap_or(DEFAULT_STORE_CONNECT_TIMEOUT);
        let store = match args.store_url.or(file.store_url) {
            None => StoreLocation::Local(data_dir.join("objects")),
            Some(url) if url.starts_with("file://") => {
                StoreLocation::Local(PathBuf::from(url.trim_start_matches("file://")))
            }
            Some(url) => {
                // Each attempt of the store client fails fast on a dead endpoint; the whole
                // call is bounded by --store-timeout on top of the client's retries.
                options
                    .entry("connect_timeout".into())
                    .or_insert_with(|| format!("{}ms", store_connect_timeout.as_millis()));
                StoreLocation::Url { url, options }
            }
        };
        let token_file = args.upload_token_file.or(file.upload_token_file);
        let upload_tokens = read_upload_tokens(
            args.upload_tokens.as_ref().map(SecretArg::expose),
            token_file.as_deref(),
        )?;
        let signing_key = secret_value(
            "signing key",
            args.signing_key.as_ref().map(SecretArg::expose),
            args.signing_key_file.or(file.signing_key_file).as_deref(),
        )?
        .map(String::into_bytes);
        let verify_keys = read_verify_keys(
            args.verify_keys.as_ref().map(SecretArg::expose),
            if args.verify_key_files.is_empty() {
                &file.verify_key_files
            } else {
                &args.verify_key_files
            },
        )?;
        let d = Limits::default();
        let limits = Limits {
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
        };
        let owners = match args.kube_owners.or(file.kube_owners).unwrap_or_default() {
            KubeOwners::Off => None,
            KubeOwners::Auto if !in_cluster => None,
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
                delete_secrets: !args
                    .kube_keep_secrets
                    .or(file.kube_keep_secrets)
                    .unwrap_or(false),
            }),
        };
        let k = KubeAuthSettings::default();
        let kube_auth_settings = KubeAuthSettings {
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
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(service_runtime::tls::TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::invalid(
                    "give both --tls-cert and --tls-key, or neither",
                ));
            }
        };
        let presigned_url_ttl = args.presigned_url_ttl.or(file.presigned_url_ttl);
        let presigned_url_ttl = match (
            args.presigned_downloads
                .or(file.presigned_downloads)
                .unwrap_or(false),
            presigned_url_ttl,
        ) {
            (true, ttl) => Some(ttl.unwrap_or(DEFAULT_PRESIGNED_URL_TTL)),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ConfigError::invalid(
                    "--presigned-url-ttl needs --presigned-downloads",
                ));
            }
        };
        let config = Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("constant address parses")),
            admin_listen: args.admin_listen.or(file.admin_listen),
            data_dir,
            store,
            upload_tokens,
            signing_key,
            verify_keys,
            limits,
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
            owners,
            kube_auth: args.kube_auth.or(file.kube_auth).unwrap_or(false),
            insecure_allow_anonymous_upload: args
                .insecure_allow_anonymous_upload
                .or(file.insecure_allow_anonymous_upload)
                .unwrap_or(false),
            kube_auth_settings,
            tls,
            tls_reload_interval: service_runtime::tls::RELOAD_INTERVAL,
            store_shared: args.store_shared.or(file.store_shared).unwrap_or(false),
            orphan_grace: args
                .orphan_grace
                .or(file.orphan_grace)
                .unwrap_or(DEFAULT_ORPHAN_GRACE),
            unnamed_blob_grace: args
                .unnamed_blob_grace
                .or(file.unnamed_blob_grace)
                .unwrap_or(crate::db::UNNAMED_BLOB_GRACE),
            replicated: args.replicated.or(file.replicated).unwrap_or(false),
            replica_sync_interval: args
                .replica_sync_interval
                .or(file.replica_sync_interval)
                .unwrap_or(DEFAULT_REPLICA_SYNC_INTERVAL),
            leader_lease: args
                .leader_lease
                .or(file.leader_lease)
                .unwrap_or(DEFAULT_LEADER_LEASE),
            snapshot_every: args
                .snapshot_every
                .or(file.snapshot_every)
                .unwrap_or(DEFAULT_SNAPSHOT_EVERY),
            presigned_url_ttl,
        };
        config.validate()?;
        Ok(config)
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

#[cfg(test)]
mod tests;
