//! The `--config` TOML file: the settings of the flags, snake_case, all optional. Sizes are
//! [`ByteSize`]s and durations humantime strings, typed here by serde, so that a bad value is
//! refused with its line when the file is read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use service_runtime::duration::deserialize_opt as duration;

use super::KubeOwners;
use crate::size::ByteSize;

/// The TOML file: the same settings, snake_case, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<SocketAddr>,
    pub(super) admin_listen: Option<SocketAddr>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) store_url: Option<String>,
    #[serde(default)]
    pub(super) store_options: BTreeMap<String, String>,
    pub(super) upload_token_file: Option<PathBuf>,
    pub(super) insecure_allow_anonymous_upload: Option<bool>,
    pub(super) signing_key_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) verify_key_files: Vec<PathBuf>,
    pub(super) max_upload_size: Option<ByteSize>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) unused_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) max_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) sweep_interval: Option<Duration>,
    pub(super) namespace_quota_bytes: Option<ByteSize>,
    pub(super) namespace_quota_count: Option<u64>,
    pub(super) capacity: Option<ByteSize>,
    pub(super) max_concurrent_uploads: Option<usize>,
    pub(super) max_concurrent_uploads_per_namespace: Option<usize>,
    pub(super) max_connections: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) header_read_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) body_idle_timeout: Option<Duration>,
    pub(super) upload_min_rate: Option<ByteSize>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) upload_rate_window: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) store_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) store_connect_timeout: Option<Duration>,
    pub(super) disk_reserve: Option<ByteSize>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) shutdown_grace: Option<Duration>,
    pub(super) kube_owners: Option<KubeOwners>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) kube_owner_start_grace: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) kube_owner_end_grace: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) kube_owner_interval: Option<Duration>,
    pub(super) kube_keep_secrets: Option<bool>,
    pub(super) kube_auth: Option<bool>,
    #[serde(default)]
    pub(super) kube_auth_audiences: Vec<String>,
    pub(super) kube_auth_review_burst: Option<u32>,
    pub(super) kube_auth_reviews_per_minute: Option<u32>,
    pub(super) kube_auth_global_review_burst: Option<u32>,
    pub(super) kube_auth_global_reviews_per_minute: Option<u32>,
    pub(super) kube_auth_ipv6_prefix: Option<u8>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) namespace_unnamed_bytes: Option<ByteSize>,
    pub(super) credential_unnamed_bytes: Option<ByteSize>,
    pub(super) namespace_max_blobs: Option<u64>,
    pub(super) max_unnamed_namespaces: Option<u64>,
    pub(super) credential_max_namespaces: Option<u64>,
    pub(super) store_shared: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) orphan_grace: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) unnamed_blob_grace: Option<Duration>,
    pub(super) replicated: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) replica_sync_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) leader_lease: Option<Duration>,
    pub(super) snapshot_every: Option<u64>,
    pub(super) presigned_downloads: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) presigned_url_ttl: Option<Duration>,
}
