//! The settings each component is opened with, taken from the validated [`Config`]: the
//! components own their settings types, so that they never import the configuration.

use super::Config;
use crate::core;

impl Config {
    /// The core's settings.
    pub fn core(&self) -> core::Settings {
        core::Settings {
            state_dir: self.state_dir.clone(),
            volumes: self.volumes.clone(),
            registry_sync: self.registry_sync,
            spark_auth_secret_file: self.spark_auth_secret_file.clone(),
            spark_auth_secret_dir: self.spark_auth_secret_dir.clone(),
            learn_secrets: self.kube.as_ref().is_some_and(|k| k.learn_secrets),
            cleanup_parallelism: self.cleanup_parallelism,
            index_cache_bytes: self.index_cache_bytes,
            heartbeat_timeout: self.heartbeat_timeout,
            idle_ttl: self.idle_ttl,
            max_fetch_blocks: self.max_fetch_blocks,
        }
    }
}
