//! The `--config` TOML file: the settings of the flags, snake_case, all optional. Every value
//! is typed here by serde and parsed as its flag parses it (sizes as [`ByteSize`], durations by
//! humantime, volumes, ciphers and the registry sync by the flags' own parsers), so that a bad
//! value is refused with its line when the file is read.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use service_runtime::duration::deserialize_opt as duration;
use service_runtime::size::ByteSize;
use spark_protocol::crypto::Cipher;

use super::{KubeWatch, SparkListen, parse_cipher, parse_sync};
use crate::core::{Durability, VolumeSpec};

/// The file's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) grpc_listen: Option<SocketAddr>,
    pub(super) admin_listen: Option<SocketAddr>,
    pub(super) probe_socket: Option<PathBuf>,
    pub(super) data_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "volumes")]
    pub(super) volumes: Vec<VolumeSpec>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) admin_token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) heartbeat_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) idle_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) sweep_interval: Option<Duration>,
    pub(super) cleanup_parallelism: Option<usize>,
    pub(super) index_cache_size: Option<ByteSize>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) shutdown_grace: Option<Duration>,
    pub(super) max_fetch_blocks: Option<usize>,
    #[serde(default, deserialize_with = "spark_listen")]
    pub(super) spark_listen: Option<SparkListen>,
    pub(super) spark_auth_secret_file: Option<PathBuf>,
    pub(super) spark_auth_secret_dir: Option<PathBuf>,
    pub(super) spark_allow_unauthenticated: Option<bool>,
    pub(super) spark_allow_shared_secret_with_learned: Option<bool>,
    #[serde(default, deserialize_with = "ciphers")]
    pub(super) spark_ciphers: Vec<Cipher>,
    pub(super) spark_require_encryption: Option<bool>,
    #[serde(default, deserialize_with = "registry_sync")]
    pub(super) registry_sync: Option<Durability>,
    pub(super) spark_max_connections: Option<usize>,
    pub(super) spark_max_connections_per_peer: Option<usize>,
    pub(super) spark_max_connections_per_app: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) spark_idle_timeout: Option<Duration>,
    pub(super) spark_memory: Option<ByteSize>,
    pub(super) spark_connection_memory: Option<ByteSize>,
    pub(super) spark_open_files: Option<usize>,
    pub(super) spark_preauth_max_frame: Option<ByteSize>,
    pub(super) spark_frame_memory: Option<ByteSize>,
    pub(super) spark_frame_memory_per_peer: Option<ByteSize>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) spark_auth_timeout: Option<Duration>,
    pub(super) grpc_max_connections: Option<usize>,
    pub(super) grpc_max_connections_per_peer: Option<usize>,
    pub(super) admin_max_connections: Option<usize>,
    pub(super) admin_max_connections_per_peer: Option<usize>,
    pub(super) peer_ipv6_prefix: Option<u8>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) connection_first_byte_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) connection_first_request_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) connection_idle_timeout: Option<Duration>,
    pub(super) kube_watch: Option<KubeWatch>,
    pub(super) kube_node_name: Option<String>,
    #[serde(default)]
    pub(super) kube_namespaces: Vec<String>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) kube_app_end_grace: Option<Duration>,
    pub(super) kube_learn_secrets: Option<bool>,
    pub(super) spark_tls_cert: Option<PathBuf>,
    pub(super) spark_tls_key: Option<PathBuf>,
    pub(super) grpc_tls_cert: Option<PathBuf>,
    pub(super) grpc_tls_key: Option<PathBuf>,
    pub(super) admin_tls_cert: Option<PathBuf>,
    pub(super) admin_tls_key: Option<PathBuf>,
}

/// A string parsed by `parse`, its error reported with the file's line.
fn parsed<'de, D, T, E>(d: D, parse: impl Fn(&str) -> Result<T, E>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: Display,
{
    parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Strings, each parsed by `parse`.
fn each_parsed<'de, D, T, E>(d: D, parse: impl Fn(&str) -> Result<T, E>) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    E: Display,
{
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse(s).map_err(serde::de::Error::custom))
        .collect()
}

fn volumes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<VolumeSpec>, D::Error> {
    each_parsed(d, VolumeSpec::from_str)
}

fn ciphers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cipher>, D::Error> {
    each_parsed(d, parse_cipher)
}

fn spark_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SparkListen>, D::Error> {
    parsed(d, SparkListen::from_str).map(Some)
}

fn registry_sync<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Durability>, D::Error> {
    parsed(d, parse_sync).map(Some)
}
