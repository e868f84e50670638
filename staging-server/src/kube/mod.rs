//! The staging server and the Kubernetes API (the `kube` crate): the API client, the owner
//! watch and the reviews of Kubernetes credentials.
//!
//! - `owners` groups owners by label key, reads what a resource's owner pods show and decides
//!   whether the resource goes; `pods` holds what the watches selected (both pure, unit-tested
//!   without a cluster); `pod_watch` follows one group's pods (list, then watch); [`watch`]
//!   runs a watch per group, acts on the decisions and deletes the client's Secrets with them.
//! - `review`: uploads authenticated with Kubernetes credentials (`--kube-auth`),
//!   `TokenReview` and `SubjectAccessReview`, cached; `review_limit` keeps their budgets per
//!   client address, identity and server.
//!
//! Their settings live with the configuration (`crate::config::OwnerSettings`,
//! `crate::config::KubeAuthSettings`). The client the user's own commands build (`submit`, with
//! the user's kubeconfig) is `staging-client`'s, not this one.

mod owners;
mod pod_watch;
mod pods;
pub(crate) mod review;
mod review_limit;
pub mod watch;

use std::time::Duration;

use kube::Client;

/// Builds the API client of the credential reviews from the pod's service account (or
/// `KUBECONFIG` outside a pod).
///
/// # Errors
/// No usable configuration.
pub async fn client() -> anyhow::Result<Client> {
    build(Duration::from_secs(30)).await
}

/// Builds the API client of the owner watch: as [`client`], but a connection may stay silent
/// for as long as a watch request lasts.
///
/// # Errors
/// No usable configuration.
pub async fn watch_client() -> anyhow::Result<Client> {
    build(Duration::from_secs(
        u64::from(pod_watch::WATCH_TIMEOUT) + 15,
    ))
    .await
}

async fn build(read_timeout: Duration) -> anyhow::Result<Client> {
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
