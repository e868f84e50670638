//! The staging server and the Kubernetes API (the `kube` crate): the API client, the owner
//! watch and the reviews of Kubernetes credentials.
//!
//! - `owners` reads what a resource's owner pods show and decides whether the resource goes
//!   (pure, unit-tested without a cluster); [`watch`] lists the pods every interval, acts on
//!   those decisions and deletes the client's Secrets with them.
//! - `review`: uploads authenticated with Kubernetes credentials (`--kube-auth`),
//!   `TokenReview` and `SubjectAccessReview`, cached; `review_limit` keeps their budgets per
//!   client address, identity and server.
//!
//! Their settings live with the configuration (`crate::config::OwnerSettings`,
//! `crate::config::KubeAuthSettings`). The client the user's own commands build (`submit`, with
//! the user's kubeconfig) is `staging-client`'s, not this one.

mod owners;
pub(crate) mod review;
mod review_limit;
pub mod watch;

use std::time::Duration;

use kube::Client;

/// Builds the API client from the pod's service account (or `KUBECONFIG` outside a pod).
///
/// # Errors
/// No usable configuration.
pub async fn client() -> anyhow::Result<Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = kube::Config::infer().await?;
    // Each owner-watch round retries what failed, and a review that fails answers 503; a call
    // that hangs must not hold every later round or request.
    config.default_retry = false;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    config.write_timeout = Some(Duration::from_secs(30));
    Ok(Client::try_from(config)?)
}
