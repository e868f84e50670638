//! The Kubernetes side of `submit`, with the user's kubeconfig (or the in-cluster service
//! account): the download token's Secret, and whether the job's pods exist.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::{ClientError, EXIT_AUTH, EXIT_FAILURE, EXIT_UNAVAILABLE};

/// Timeout of each API call (of each read, for a watch).
pub(super) const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The kubeconfig (or in-cluster) configuration.
///
/// # Errors
/// No usable configuration.
pub async fn config(context: Option<&str>) -> Result<kube::Config, ClientError> {
    let opts = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let cfg = match context {
        Some(_) => kube::Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| e.to_string()),
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(|e| {
        ClientError::new(
            EXIT_FAILURE,
            format!("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster): {e}"),
        )
    })?;
    Ok(cfg)
}

/// A client for `cfg`.
///
/// # Errors
/// A configuration the client cannot use.
pub fn client(mut cfg: kube::Config) -> Result<Client, ClientError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    cfg.read_timeout = Some(CALL_TIMEOUT);
    cfg.connect_timeout = Some(CALL_TIMEOUT);
    Client::try_from(cfg)
        .map_err(|e| ClientError::new(EXIT_FAILURE, format!("Kubernetes client: {e}")))
}

/// The bearer token of the configuration's user (a token, or a token file such as the
/// service account's).
///
/// # Errors
/// The user authenticates otherwise (client certificates, exec plugins).
pub fn bearer_token(cfg: &kube::Config) -> Result<String, ClientError> {
    use secrecy::ExposeSecret as _;
    if let Some(t) = &cfg.auth_info.token {
        return Ok(t.expose_secret().trim().to_owned());
    }
    if let Some(path) = &cfg.auth_info.token_file {
        return std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{path}: {e}")));
    }
    Err(ClientError::new(
        super::super::EXIT_USAGE,
        "--kube-auth needs a bearer token in the kubeconfig user (token or tokenFile); \
         for exec plugins or client certificates, pass a token with --token-file",
    ))
}

fn api_error(what: &str, e: &kube::Error) -> ClientError {
    let code = match e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => EXIT_AUTH,
        kube::Error::Api(s) if s.code < 500 => EXIT_FAILURE,
        _ => EXIT_UNAVAILABLE,
    };
    ClientError::new(code, format!("{what}: {e}"))
}

/// Creates the Secret `name` in `ns`.
///
/// # Errors
/// The API refused or failed.
pub async fn create_secret(
    client: &Client,
    ns: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    data: BTreeMap<String, String>,
) -> Result<(), ClientError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some(labels),
            ..Default::default()
        },
        string_data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    api.create(&PostParams::default(), &secret)
        .await
        .map(|_| ())
        .map_err(|e| api_error(&format!("creating Secret {ns}/{name}"), &e))
}

/// Deletes the Secret `name` in `ns`; a missing one is not an error.
///
/// # Errors
/// The API refused or failed.
pub async fn delete_secret(client: &Client, ns: &str, name: &str) -> Result<(), ClientError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_error(&format!("deleting Secret {ns}/{name}"), &e)),
    }
}

/// Whether any pod in `ns` matches `selector`.
///
/// # Errors
/// The API refused or failed.
pub async fn pods_exist(client: &Client, ns: &str, selector: &str) -> Result<bool, ClientError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list_metadata(&ListParams::default().labels(selector).limit(1))
        .await
        .map(|l| !l.items.is_empty())
        .map_err(|e| api_error(&format!("listing pods in {ns}"), &e))
}
