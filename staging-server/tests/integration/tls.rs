//! TLS on the API listener: clients verify the server (system roots or `--ca-file`), a wrong
//! certificate is refused with a sentence that says so, a rotated certificate is served
//! without a restart, and a refused rotation is logged at the default level, counted, and
//! leaves the served certificate's expiry for the alert to see.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use staging_client::http;

use crate::common::TestServer;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        issuer: Issuer::new(params, key),
        pem: cert.pem(),
    }
}

/// Writes a server certificate for `localhost` signed by `ca`; returns its DER.
fn server_cert(ca: &Ca, dir: &Path, serial: u64) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.serial_number = Some(serial.into());
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    // Written next to the live files and renamed over them, as a Secret volume swaps them.
    std::fs::write(dir.join("tls.key.new"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt.new"), cert.pem()).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    cert.der().to_vec()
}

async fn served_cert(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let res = client.get(url).send().await.unwrap();
    res.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn clients_verify_the_server_and_rotation_needs_no_restart() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs = tempfile::tempdir().unwrap();
    let ours = ca("staging-ca");
    let first = server_cert(&ours, certs.path(), 1);
    std::fs::write(certs.path().join("ca.crt"), &ours.pem).unwrap();
    let files = service_runtime::tls::TlsFiles {
        cert: certs.path().join("tls.crt"),
        key: certs.path().join("tls.key"),
    };
    let s = TestServer::start(|c| {
        c.tls = Some(files);
        c.tls_reload_interval = Duration::from_millis(50);
    })
    .await;
    let url = format!("https://localhost:{}/healthz", s.addr.port());

    // Trusted with --ca-file.
    let ca_file = certs.path().join("ca.crt");
    let trusting = http::client(Some(&ca_file), Duration::from_secs(5), None).unwrap();
    let res = trusting.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // Without the CA: refused, and the message says why and what to do.
    let plain = http::client(None, Duration::from_secs(5), None).unwrap();
    let e = plain.get(&url).send().await.unwrap_err();
    let why = http::describe(&e);
    assert!(why.contains("TLS") && why.contains("--ca-file"), "{why}");
    assert!(!http::transient(&e), "a certificate failure is not retried");
    // A CA of someone else: refused too.
    let theirs = ca("other-ca");
    std::fs::write(certs.path().join("other.crt"), &theirs.pem).unwrap();
    let other = http::client(
        Some(&certs.path().join("other.crt")),
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    assert!(other.get(&url).send().await.is_err());
    // Plain HTTP to the TLS port gets nothing.
    assert!(
        reqwest::get(format!("http://localhost:{}/healthz", s.addr.port()))
            .await
            .is_err()
    );

    // Rotation: the next connections get the new certificate, no restart.
    // Without session resumption: a resumed session shows the certificate of its first
    // handshake.
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = rustls::pki_types::CertificateDer::from_pem_file(&ca_file).unwrap();
    roots.add(ca_der).unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.resumption = rustls::client::Resumption::disabled();
    let inspect = reqwest::Client::builder()
        .tls_info(true)
        .tls_backend_preconfigured(tls)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert_eq!(served_cert(&inspect, &url).await, first);
    let second = server_cert(&ours, certs.path(), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while served_cert(&inspect, &url).await != second {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file keeps the last good certificate in use.
    std::fs::write(certs.path().join("tls.crt"), "not a certificate").unwrap();
    for _ in 0..5 {
        assert_eq!(served_cert(&inspect, &url).await, second);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    s.shutdown().await;
}

/// Writes a server certificate for `localhost` valid until the start of `year`; returns the
/// expiry in seconds since the epoch.
fn server_cert_until(ca: &Ca, dir: &Path, year: i32) -> i64 {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let expiry = params.not_after.unix_timestamp();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    std::fs::write(dir.join("tls.key.new"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt.new"), cert.pem()).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    expiry
}

/// Log lines as the binary writes them with its default filter.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The /metrics text over TLS (the certificate names `localhost`).
async fn metrics_tls(s: &TestServer) -> String {
    let url = format!("https://localhost:{}/metrics", s.addr.port());
    s.client
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls /metrics until `series` has `value`.
async fn wait_for_metric(s: &TestServer, series: &str, value: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics_tls(s).await;
        if crate::common::metric(&m, series) == Some(value) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never became {value}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// A current-thread runtime (the default of tokio::test): the server's tasks run on this
// thread, where the capturing subscriber is the default.
#[tokio::test]
async fn a_refused_reload_is_logged_by_default_counted_and_expiry_exported() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        // The binary's filter when RUST_LOG is not set.
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            service_runtime::logging::default_filter(staging_server::DEFAULT_LOG_FILTER),
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let certs = tempfile::tempdir().unwrap();
    let ours = ca("staging-ca");
    let first = server_cert_until(&ours, certs.path(), 2040);
    std::fs::write(certs.path().join("ca.crt"), &ours.pem).unwrap();
    let ca_file = certs.path().join("ca.crt");
    let files = service_runtime::tls::TlsFiles {
        cert: certs.path().join("tls.crt"),
        key: certs.path().join("tls.key"),
    };
    let mut s = TestServer::start(|c| {
        c.tls = Some(files);
        c.tls_reload_interval = Duration::from_millis(50);
    })
    .await;
    s.client = http::client(Some(&ca_file), Duration::from_secs(5), None).unwrap();
    let expiry = "staging_tls_cert_expiry_timestamp_seconds";
    wait_for_metric(&s, expiry, first as f64).await;

    // A broken rotation: refused, logged at the default level, counted; the expiry stays
    // that of the certificate still served.
    std::fs::write(certs.path().join("tls.crt"), "not a certificate").unwrap();
    let m = wait_for_metric(&s, "staging_tls_reloads_total{outcome=\"refused\"}", 1.0).await;
    assert_eq!(crate::common::metric(&m, expiry), Some(first as f64), "{m}");
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("ERROR") && l.contains("TLS certificate not reloaded")),
        "{text}"
    );

    // A good one: served, logged, counted, and its expiry exported.
    let second = server_cert_until(&ours, certs.path(), 2041);
    wait_for_metric(&s, "staging_tls_reloads_total{outcome=\"reloaded\"}", 1.0).await;
    wait_for_metric(&s, expiry, second as f64).await;
    assert!(logs.text().contains("TLS certificate reloaded"));
    s.shutdown().await;
}
