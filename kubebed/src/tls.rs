//! The API server's HTTPS front, as pods reach it in a cluster: a certificate authority made
//! for the bed, a server certificate for the gateway address and the `kubernetes.default.svc`
//! names, and the CA handed to pods in their service-account volume (`ca.crt`).

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The bed's certificate authority and the API server's TLS configuration.
#[derive(Clone)]
pub struct ApiTls {
    /// The CA certificate (PEM), what pods find in `ca.crt`.
    pub ca_pem: String,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls").finish_non_exhaustive()
    }
}

impl ApiTls {
    /// Makes a CA and a server certificate for `ip` and the in-cluster names.
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn new(ip: IpAddr) -> anyhow::Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "kubebed-ca");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec![
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
        ])?;
        server.subject_alt_names.push(SanType::IpAddress(ip));
        server
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        let cert = server.signed_by(&key, &issuer)?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .context("API server certificate")?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Serves `app` over TLS on `listener` until `stop` fires; each connection on its own task.
    pub async fn serve(self, listener: TcpListener, app: Router, stop: CancellationToken) {
        loop {
            let (tcp, _) = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "API server accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acceptor = self.acceptor.clone();
            let app = app.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = TowerToHyperService::new(app);
                let builder = Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = conn => {}
                }
            });
        }
    }
}
