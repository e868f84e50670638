//! The API listener's certificate, watched: its files are looked at every interval and a
//! change is loaded (see [`service_runtime::tls::ReloadingCert`], which logs every reload and
//! every refused reload at the default level); each is counted here, and the expiry of the
//! certificate in use is exported, so that an alert fires before it lapses even when every
//! rotation since was refused.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use service_runtime::tls::{Reload, ReloadingCert};

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

/// Exports the expiry of the certificate `cert` serves now.
pub(crate) fn record_expiry(cert: &ReloadingCert, metrics: &TlsMetrics) {
    match cert.not_after() {
        Some(t) => metrics.expiry.set(t),
        None => tracing::warn!(
            cert = %cert.files().cert.display(),
            "the expiry of the TLS certificate could not be read; staging_tls_cert_expiry_timestamp_seconds is stale"
        ),
    }
}

/// Looks at the files every `interval` until `stop` resolves; every reload and refusal is
/// logged (by [`ReloadingCert::check`], at `info` and `error`, shown by the default filter),
/// counted, and the new expiry exported.
pub(crate) async fn watch(
    cert: Arc<ReloadingCert>,
    interval: Duration,
    metrics: TlsMetrics,
    stop: impl Future<Output = ()>,
) {
    let served = Arc::clone(&cert);
    cert.watch_observed(interval, stop, move |r| match r {
        Reload::Reloaded { .. } => {
            metrics.reloads.with_label_values(&["reloaded"]).inc();
            record_expiry(&served, &metrics);
        }
        Reload::Refused(_) => metrics.reloads.with_label_values(&["refused"]).inc(),
    })
    .await;
}
