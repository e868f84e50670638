//! TLS on the API listener: clients verify the server (system roots or `--ca-file`), a wrong
//! certificate is refused with a sentence that says so, and a rotated certificate is served
//! without a restart.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use staging_server::client::http;

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
