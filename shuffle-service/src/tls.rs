//! TLS of the gRPC, admin and Spark listeners (each optional): the certificate reloaded when
//! its files change, each reload and refusal counted by listener, and the served
//! certificate's expiry exported (`shuffle_tls_certificate_expiry_timestamp_seconds`) so an
//! alert fires before it lapses. Handshakes run on each connection's own task
//! ([`crate::listen`], [`crate::spark::listener`]).

use std::sync::Arc;

use service_runtime::tls::{Reload, ReloadingCert, TlsFiles};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Loads `files` and keeps them reloaded until `stop`; the server configuration for `alpn`.
/// `listener` names the listener in metrics (`grpc`, `admin`, `spark`).
///
/// # Errors
/// [`crate::ShuffleError::Tls`]: the files cannot be used.
pub(crate) fn server_config(
    files: &TlsFiles,
    alpn: &[&[u8]],
    reload_interval: std::time::Duration,
    listener: &'static str,
    metrics: &Metrics,
    stop: CancellationToken,
) -> crate::Result<Arc<rustls::ServerConfig>> {
    let cert = ReloadingCert::new(files.clone())
        .map_err(|source| crate::ShuffleError::Tls { listener, source })?;
    let config = cert.server_config(alpn);
    let expiry = metrics.tls_expiry.with_label_values(&[listener]);
    let reloaded = metrics
        .tls_reloads
        .with_label_values(&[listener, "reloaded"]);
    let refused = metrics
        .tls_reloads
        .with_label_values(&[listener, "refused"]);
    reloaded.inc_by(0);
    refused.inc_by(0);
    if let Some(t) = cert.not_after() {
        expiry.set(t);
    }
    tracing::info!(
        listener,
        cert = %files.cert.display(),
        not_after = cert.not_after().unwrap_or_default(),
        "TLS certificate loaded"
    );
    tokio::spawn(cert.watch_observed(
        reload_interval,
        async move { stop.cancelled().await },
        move |r| match r {
            Reload::Reloaded { not_after } => {
                reloaded.inc();
                if let Some(t) = not_after {
                    expiry.set(*t);
                }
            }
            Reload::Refused(_) => refused.inc(),
        },
    ));
    Ok(config)
}
