//! The staging server and the Kubernetes API (the `kube` crate): the owner watch.
//!
//! - `owners` groups owners by label key, reads what a resource's owner pods show and decides
//!   whether the resource goes; `pods` holds what the watches selected (both pure, unit-tested
//!   without a cluster); `pod_watch` follows one group's pods (list, then watch); [`watch`]
//!   runs a watch per group, acts on the decisions and deletes the client's Secrets with them.
//!
//! The API client and the reviews of Kubernetes credentials (`--kube-auth`), which the shared
//! state holds, are `crate::kube_auth`, below the state; the owner watch sits above it.
//!
//! Their settings live with the configuration (`crate::config::OwnerSettings`,
//! `crate::config::KubeAuthSettings`). The client the user's own commands build (`submit`, with
//! the user's kubeconfig) is `staging-client`'s, not this one.

mod owners;
mod pod_watch;
mod pods;
pub mod watch;

use std::time::Duration;

use kube::Client;

pub use crate::kube_auth::client;

/// Builds the API client of the owner watch: as [`client`], but a connection may stay silent
/// for as long as a watch request lasts.
///
/// # Errors
/// No usable configuration.
pub async fn watch_client() -> Result<Client, crate::kube_auth::ClientError> {
    crate::kube_auth::build(Duration::from_secs(
        u64::from(pod_watch::WATCH_TIMEOUT) + 15,
    ))
    .await
}
