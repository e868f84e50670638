//! A TLS server certificate that follows its files: the PEM certificate chain and key are
//! read at start and read again whenever either file changes (modification time, size or
//! inode, so that the symlink swap of a Kubernetes Secret volume, as cert-manager rotation
//! does it, counts), without a restart. New connections get the new certificate; open ones
//! keep theirs. A file that cannot be read or parsed, or a key that does not match the
//! certificate, keeps the previous certificate in use and is logged. Reloads and refusals are
//! logged at `info` and `error` under the `service_runtime` target (on by default, see
//! [`crate::logging`]) and reported to an observer, which counts them; the served
//! certificate's expiry is read from its leaf so that an alert can fire before it lapses.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the files are looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Where a listener's certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// Which file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The key does not fit the certificate, or TLS refused them.
    #[error("TLS certificate {cert} and key {key}: {message}")]
    Pair {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Identity of a file's current content, as far as metadata tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// The provider in use: the process default, else aws-lc-rs.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Reads and checks a certificate chain and its key.
///
/// # Errors
/// [`TlsError`] naming the file or the mismatch.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let file_err = |path: &Path, message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err(&files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err(&files.cert, "no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_err(&files.key, format!("no usable PEM private key: {e}")))?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message: e.to_string(),
    })
}

/// When a DER certificate expires, in Unix seconds; `None` when it cannot be parsed.
#[must_use]
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// What one look at the files found, for an observer to count.
#[derive(Debug)]
pub enum Reload<'a> {
    /// A new certificate is in use; it expires then (Unix seconds), if that could be read.
    Reloaded {
        /// Expiry of the new leaf certificate.
        not_after: Option<i64>,
    },
    /// The changed files were refused; the previous certificate stays in use.
    Refused(&'a TlsError),
}

/// No expiry known.
const NO_EXPIRY: i64 = i64::MIN;

/// The current certificate of a listener.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Option<Stamp>, Option<Stamp>)>,
    expiry: AtomicI64,
}

fn leaf_expiry(key: &CertifiedKey) -> i64 {
    key.cert.first().and_then(not_after).unwrap_or(NO_EXPIRY)
}

impl ReloadingCert {
    /// Loads the files.
    ///
    /// # Errors
    /// [`TlsError`] when they cannot be used.
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamps = (stamp(&files.cert), stamp(&files.key));
        let key = load(&files)?;
        Ok(Arc::new(Self {
            files,
            expiry: AtomicI64::new(leaf_expiry(&key)),
            current: RwLock::new(Arc::new(key)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// When the certificate in use expires (Unix seconds), if its leaf could be parsed.
    #[must_use]
    pub fn not_after(&self) -> Option<i64> {
        Some(self.expiry.load(Ordering::Relaxed)).filter(|e| *e != NO_EXPIRY)
    }

    /// The certificate file.
    #[must_use]
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Loads the files again if they changed; returns whether a new certificate is in use.
    ///
    /// # Errors
    /// [`TlsError`] when the changed files cannot be used (the previous certificate stays).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            // Recorded before loading: a broken file is reported once, not every interval.
            *seen = now;
        }
        let key = load(&self.files)?;
        self.expiry.store(leaf_expiry(&key), Ordering::Relaxed);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        Ok(true)
    }

    /// Reloads every `interval` until `stop` resolves, logging each outcome.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: impl Future<Output = ()>) {
        self.watch_observed(interval, stop, |_| {}).await;
    }

    /// [`Self::check`] every `interval` until `stop` resolves, telling `observer` of each
    /// reload and refusal.
    pub async fn watch_observed(
        self: Arc<Self>,
        interval: Duration,
        stop: impl Future<Output = ()>,
        observer: impl Fn(&Reload<'_>),
    ) {
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(interval) => {}
            }
            self.check(&observer);
        }
    }

    /// Looks at the files once: reloads them if they changed, logs the outcome (at `info` or
    /// `error`) and tells `observer`.
    pub fn check(&self, observer: &impl Fn(&Reload<'_>)) {
        match self.reload_if_changed() {
            Ok(true) => {
                let not_after = self.not_after();
                tracing::info!(
                    cert = %self.files.cert.display(),
                    not_after = not_after.unwrap_or_default(),
                    "TLS certificate reloaded"
                );
                observer(&Reload::Reloaded { not_after });
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(
                    cert = %self.files.cert.display(),
                    error = %e,
                    "TLS certificate not reloaded; the previous one stays in use"
                );
                observer(&Reload::Refused(&e));
            }
        }
    }

    /// A server configuration that presents the current certificate, with `alpn` protocols.
    #[must_use]
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| {
                rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports the default protocol versions")
            })
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs TLS handshakes for the connections of `incoming`, each on its own task (a slow or
/// silent client holds only its own), and yields the finished ones; failed or timed-out
/// handshakes are dropped and logged at debug level. Ends when `incoming` ends.
pub fn handshakes<S, I>(
    incoming: I,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> impl futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<S>>> + Send + 'static
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    I: futures::Stream<Item = std::io::Result<S>> + Send + 'static,
{
    use futures::StreamExt as _;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        while let Some(conn) = incoming.next().await {
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(cause = %e, "accept failed");
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(cause = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
