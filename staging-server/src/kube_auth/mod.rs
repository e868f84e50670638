//! Uploads authenticated with Kubernetes credentials (`--kube-auth`), and the Kubernetes API
//! client (the `kube` crate) they and the owner watch (`crate::kube`) use.
//!
//! - `review`: `TokenReview` and `SubjectAccessReview`, cached; `review_limit` keeps their
//!   budgets per client address, identity and server.
//!
//! The shared state holds the reviewer, so this sits below it; the owner watch, which acts on
//! the state, builds its client here too.

pub(crate) mod review;
mod review_limit;

use std::time::Duration;

use kube::Client;

/// Why no API client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No service account in the pod and no usable kubeconfig.
    #[error("no Kubernetes configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The configuration found does not make a client (its TLS settings, say).
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Builds the API client of the credential reviews from the pod's service account (or
/// `KUBECONFIG` outside a pod).
///
/// # Errors
/// No usable configuration.
pub async fn client() -> Result<Client, ClientError> {
    build(Duration::from_secs(30)).await
}

/// Builds an API client whose connections may stay silent for `read_timeout`.
///
/// # Errors
/// No usable configuration.
pub(crate) async fn build(read_timeout: Duration) -> Result<Client, ClientError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = kube::Config::infer().await?;
    // The owner watch retries what failed, and a review that fails answers 503; a call that
    // hangs must not hold every later round or request.
    config.default_retry = false;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(read_timeout);
    config.write_timeout = Some(Duration::from_secs(30));
    Ok(Client::try_from(config)?)
}
