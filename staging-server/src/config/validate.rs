//! The rules a [`Config`] must keep, alone and across settings: checked by
//! [`Config::validate`] for a loaded configuration and for one built in code alike.

use std::time::Duration;

use super::{Config, ConfigError, MAX_PRESIGNED_URL_TTL};

/// Shortest upload token accepted: 16 characters leave no room for guessing.
const MIN_UPLOAD_TOKEN_LEN: usize = 16;
/// Shortest token key accepted: 32 bytes, the output size of HS256's SHA-256 (RFC 7518 §3.2).
const MIN_KEY_LEN: usize = 32;

impl Config {
    /// Checks every rule a configuration must keep, alone and across settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the broken rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_replication()?;
        let exposed = !self.listen.ip().is_loopback();
        if exposed
            && self.upload_tokens.is_empty()
            && !self.kube_auth
            && !self.insecure_allow_anonymous_upload
        {
            return Err(ConfigError::invalid(format!(
                "listening on {} (not loopback) without upload tokens; set --upload-token-file \
                 or --kube-auth, or --insecure-allow-anonymous-upload to accept uploads from anyone",
                self.listen
            )));
        }
        if self
            .upload_tokens
            .iter()
            .any(|t| t.secret.len() < MIN_UPLOAD_TOKEN_LEN)
        {
            return Err(ConfigError::invalid(
                "upload tokens must be at least 16 characters",
            ));
        }
        let k = &self.kube_auth_settings;
        if !self.kube_auth && !k.audiences.is_empty() {
            return Err(ConfigError::invalid(
                "--kube-auth-audience needs --kube-auth",
            ));
        }
        if k.review_burst == 0
            || k.reviews_per_minute == 0
            || k.global_review_burst == 0
            || k.global_reviews_per_minute == 0
        {
            return Err(ConfigError::invalid(
                "--kube-auth-review-burst, --kube-auth-reviews-per-minute and their --kube-auth-global-* \
                 counterparts must be positive",
            ));
        }
        if k.ipv6_prefix > 128 {
            return Err(ConfigError::invalid(
                "--kube-auth-ipv6-prefix must be at most 128",
            ));
        }
        if let Some(key) = &self.signing_key
            && key.len() < MIN_KEY_LEN
        {
            return Err(ConfigError::invalid(
                "the signing key must be at least 32 bytes",
            ));
        }
        if self.verify_keys.iter().any(|k| k.len() < MIN_KEY_LEN) {
            return Err(ConfigError::invalid(
                "keys that verify tokens must be at least 32 bytes",
            ));
        }
        let l = &self.limits;
        if l.unused_ttl.is_zero() || l.max_ttl.is_zero() || l.unused_ttl > l.max_ttl {
            return Err(ConfigError::invalid(
                "TTLs must be positive and --unused-ttl must not exceed --max-ttl",
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
            return Err(ConfigError::invalid("limits must be positive"));
        }
        if self.header_read_timeout.is_zero() || l.body_idle_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "--header-read-timeout and --body-idle-timeout must be positive",
            ));
        }
        if l.upload_rate_window < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "--upload-rate-window must be at least 1s",
            ));
        }
        if self.store_timeout.is_zero() || self.store_connect_timeout.is_zero() {
            return Err(ConfigError::invalid("store timeouts must be positive"));
        }
        if self.unnamed_blob_grace < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "--unnamed-blob-grace must be at least 1s (a staging sends its files, then names them)",
            ));
        }
        if self.sweep_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "--sweep-interval must be at least 100ms",
            ));
        }
        if let Some(ttl) = self.presigned_url_ttl
            && !(Duration::from_secs(1)..=MAX_PRESIGNED_URL_TTL).contains(&ttl)
        {
            return Err(ConfigError::invalid(format!(
                "--presigned-url-ttl must be between 1s and {}",
                humantime::format_duration(MAX_PRESIGNED_URL_TTL)
            )));
        }
        if let Some(o) = &self.owners
            && o.interval < Duration::from_secs(1)
        {
            return Err(ConfigError::invalid(
                "--kube-owner-interval must be at least 1s",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The rules of `--replicated`: a store every replica reaches and that honours conditional
    /// writes (not the local filesystem), and bounds in the ranges the mode is built for.
    fn validate_replication(&self) -> Result<(), ConfigError> {
        if !self.replicated {
            let tuned = self.replica_sync_interval != super::DEFAULT_REPLICA_SYNC_INTERVAL
                || self.leader_lease != super::DEFAULT_LEADER_LEASE
                || self.snapshot_every != super::DEFAULT_SNAPSHOT_EVERY;
            if tuned {
                return Err(ConfigError::invalid(
                    "--replica-sync-interval, --leader-lease and --snapshot-every need --replicated",
                ));
            }
            return Ok(());
        }
        if let super::StoreLocation::Url { url, .. } = &self.store {
            let scheme = url.split("://").next().unwrap_or_default();
            if !["s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "memory"].contains(&scheme) {
                return Err(ConfigError::invalid(format!(
                    "--replicated needs S3, GCS or Azure (conditional writes), not {scheme}://"
                )));
            }
        }
        if matches!(self.store, super::StoreLocation::Local(_)) {
            return Err(ConfigError::invalid(
                "--replicated needs an object store every replica reaches (s3://, gs://, az://): \
                 the replicas share their state through it, and a local directory is one \
                 replica's",
            ));
        }
        let sync = Duration::from_millis(100)..=Duration::from_secs(60);
        if !sync.contains(&self.replica_sync_interval) {
            return Err(ConfigError::invalid(
                "--replica-sync-interval must be between 100ms and 60s",
            ));
        }
        let lease = Duration::from_secs(2)..=Duration::from_secs(300);
        if !lease.contains(&self.leader_lease) {
            return Err(ConfigError::invalid(
                "--leader-lease must be between 2s and 5m",
            ));
        }
        if self.snapshot_every < 10 {
            return Err(ConfigError::invalid("--snapshot-every must be at least 10"));
        }
        Ok(())
    }
}
