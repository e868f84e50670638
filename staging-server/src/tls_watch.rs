//! The API listener's certificate, watched: its files are looked at every interval and a
//! change is loaded (see [`service_runtime::tls::ReloadingCert`]); every reload and every
//! refused reload is logged at the default level (as `staging_server` events, which the
//! default filter shows) and counted, and the expiry of the certificate in use is exported,
//! so that an alert fires before it lapses even when every rotation since was refused.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use service_runtime::tls::{ReloadingCert, TlsFiles};

/// Metrics of the certificate.
#[derive(Debug, Clone)]
pub(crate) struct TlsMetrics {
    /// Reloads by outcome (`reloaded`, `refused`).
    reloads: IntCounterVec,
    /// `notAfter` of the leaf certificate in use, in seconds since the epoch.
    expiry: IntGauge,
}

impl TlsMetrics {
    /// Registers the metrics on `registry`.
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "staging_tls_reloads_total",
                "Changes of the API listener's certificate files, by outcome (reloaded: now served; refused: unusable, the previous certificate stays).",
            ),
            &["outcome"],
        )?;
        let expiry = IntGauge::new(
            "staging_tls_cert_expiry_timestamp_seconds",
            "Expiry (notAfter) of the certificate the API listener serves, in seconds since the epoch.",
        )?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(expiry.clone()))?;
        for outcome in ["reloaded", "refused"] {
            reloads.with_label_values(&[outcome]);
        }
        Ok(Self { reloads, expiry })
    }
}

/// The leaf certificate's `notAfter`, in seconds since the epoch.
fn not_after(files: &TlsFiles) -> Option<i64> {
    let key = service_runtime::tls::load(files).ok()?;
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Exports the expiry of the certificate just loaded from `files`.
///
/// The files are read once more for it: should they change in between, the next look
/// notices the change and loads them again, so the gauge is right again one interval later.
pub(crate) fn record_expiry(files: &TlsFiles, metrics: &TlsMetrics) {
    match not_after(files) {
        Some(t) => metrics.expiry.set(t),
        None => tracing::warn!(
            cert = %files.cert.display(),
            "the expiry of the TLS certificate could not be read; staging_tls_cert_expiry_timestamp_seconds is stale"
        ),
    }
}

/// Looks at the files every `interval` until `stop` resolves; logs, counts and exports.
pub(crate) async fn watch(
    cert: Arc<ReloadingCert>,
    files: TlsFiles,
    interval: Duration,
    metrics: TlsMetrics,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(interval) => {}
        }
        match cert.reload_if_changed() {
            Ok(true) => {
                metrics.reloads.with_label_values(&["reloaded"]).inc();
                record_expiry(&files, &metrics);
                tracing::info!(
                    cert = %files.cert.display(),
                    expires = metrics.expiry.get(),
                    "TLS certificate reloaded"
                );
            }
            Ok(false) => {}
            Err(e) => {
                metrics.reloads.with_label_values(&["refused"]).inc();
                tracing::error!(
                    error = %e,
                    "TLS certificate not reloaded; the previous one stays in use"
                );
            }
        }
    }
}
