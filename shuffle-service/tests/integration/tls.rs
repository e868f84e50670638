//! TLS on the gRPC and admin listeners: clients that trust the CA are served (gRPC over h2,
//! the admin endpoints over HTTP/1.1), others are refused, and a rotated certificate is served
//! without a restart.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use service_runtime::tls::TlsFiles;

use crate::common::TestService;

pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

pub(crate) fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        issuer: Issuer::new(params, key),
        pem: cert.pem(),
    }
}

/// Writes `<name>.crt` and `<name>.key` for `localhost`; returns the certificate's DER.
pub(crate) fn issue(ca: &Ca, dir: &Path, name: &str, serial: u64) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.serial_number = Some(serial.into());
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.key.new")), key.serialize_pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.crt.new")), cert.pem()).unwrap();
    std::fs::rename(
        dir.join(format!("{name}.key.new")),
        dir.join(format!("{name}.key")),
    )
    .unwrap();
    std::fs::rename(
        dir.join(format!("{name}.crt.new")),
        dir.join(format!("{name}.crt")),
    )
    .unwrap();
    cert.der().to_vec()
}

pub(crate) fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    }
}

/// A client trusting `ca_pem` that never resumes sessions (a resumed session shows the
/// certificate of its first handshake), HTTP/2 only when `h2`.
fn client(ca_pem: &str, h2: bool) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.resumption = rustls::client::Resumption::disabled();
    if h2 {
        tls.alpn_protocols = vec![b"h2".to_vec()];
    }
    let mut b = reqwest::Client::builder()
        .tls_info(true)
        .tls_backend_preconfigured(tls)
        .pool_max_idle_per_host(0);
    if h2 {
        b = b.http2_prior_knowledge();
    }
    b.build().unwrap()
}

async fn served(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = client.get(url).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn grpc_and_admin_listeners_serve_tls_and_follow_rotation() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs = tempfile::tempdir().unwrap();
    let ours = ca();
    issue(&ours, certs.path(), "grpc", 1);
    let first = issue(&ours, certs.path(), "admin", 2);
    let (g, a) = (files(certs.path(), "grpc"), files(certs.path(), "admin"));
    let svc = TestService::start(move |c| {
        c.grpc_tls = Some(g);
        c.admin_tls = Some(a);
        c.tls_reload_interval = Duration::from_millis(50);
    })
    .await;

    // gRPC over TLS (h2): the standard health check answers SERVING.
    let grpc = client(&ours.pem, true);
    let res = grpc
        .post(format!(
            "https://localhost:{}/grpc.health.v1.Health/Check",
            svc.grpc.port()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // One message: flag 0, length 2, field 1 (status) = 1 (SERVING).
    assert_eq!(res.bytes().await.unwrap().as_ref(), [0, 0, 0, 0, 2, 8, 1]);

    // Admin over TLS.
    let admin = client(&ours.pem, false);
    let url = format!("https://localhost:{}/healthz", svc.admin.port());
    assert_eq!(served(&admin, &url).await, first);
    // Not trusted without the CA, and no plaintext on a TLS port.
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
    assert!(
        reqwest::get(format!("http://localhost:{}/healthz", svc.admin.port()))
            .await
            .is_err()
    );

    // Rotation, no restart.
    let second = issue(&ours, certs.path(), "admin", 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while served(&admin, &url).await != second {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    svc.shutdown().await;
}

async fn spark_tls_connect(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

async fn next_frame<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut bytes::BytesMut,
) -> spark_protocol::frame::Message {
    use tokio::io::AsyncReadExt as _;
    let decoder = spark_protocol::frame::FrameDecoder::new(64 << 20);
    loop {
        if let Some(m) = decoder.decode(buf).unwrap() {
            return m;
        }
        assert!(s.read_buf(buf).await.unwrap() > 0, "connection closed");
    }
}

#[tokio::test]
async fn spark_port_over_tls_serves_clients_that_trust_it_only() {
    use spark_protocol::client::chunk_fetch_requests;
    use spark_protocol::frame::Message;
    use spark_protocol::message::BlockTransferMessage as Btm;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use crate::spark_protocol::{APP, fetch_msg, register_msg, write_map};

    let (ca, other) = (ca(), ca());
    let certs = tempfile::tempdir().unwrap();
    issue(&ca, certs.path(), "spark", 1);
    let svc = TestService::start(|c| c.spark_tls = Some(files(certs.path(), "spark"))).await;
    let dirs = vec![svc.exec_dir("blockmgr-tls")];
    // Bodies past the in-memory limit are copied through TLS in 256 KiB pieces: one of an
    // odd size, so that a piece is still pending when the next frame comes.
    let parts = vec![
        crate::common::random_bytes((3 << 20) + 12_345, 5),
        crate::common::random_bytes(100, 6),
        crate::common::random_bytes(70_001, 7),
        crate::common::random_bytes(9, 8),
    ];
    write_map(&dirs, 1, 1, &parts);

    let mut s = spark_tls_connect(svc.spark, &ca.pem).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let rpc = async |s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
                     buf: &mut bytes::BytesMut,
                     id: i64,
                     m: Btm| {
        s.write_all(
            &Message::RpcRequest {
                request_id: id,
                body: m.to_bytes(),
            }
            .to_bytes(),
        )
        .await
        .unwrap();
        match next_frame(s, buf).await {
            Message::RpcResponse { body, .. } => body,
            other => panic!("{other:?}"),
        }
    };
    let refs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    assert!(
        rpc(&mut s, &mut buf, 1, register_msg(APP, "1", &refs))
            .await
            .is_empty()
    );
    let handle = rpc(
        &mut s,
        &mut buf,
        2,
        fetch_msg("1", 1, &[1], vec![vec![0, 1, 2, 3]], false),
    )
    .await;
    let Btm::StreamHandle {
        stream_id,
        num_chunks,
    } = Btm::decode(handle).unwrap()
    else {
        panic!("no stream handle");
    };
    s.write_all(&chunk_fetch_requests(stream_id, num_chunks))
        .await
        .unwrap();
    for part in &parts {
        match next_frame(&mut s, &mut buf).await {
            Message::ChunkFetchSuccess(_, body) => assert_eq!(&body[..], &part[..]),
            other => panic!("{other:?}"),
        }
    }

    // A client that trusts another CA refuses the service's certificate.
    assert!(spark_tls_connect(svc.spark, &other.pem).await.is_err());
    // A plaintext client gets no frame: its bytes are not a TLS handshake.
    let mut plain = tokio::net::TcpStream::connect(svc.spark).await.unwrap();
    plain
        .write_all(
            &Message::RpcRequest {
                request_id: 1,
                body: register_msg(APP, "2", &refs).to_bytes(),
            }
            .to_bytes(),
        )
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply).await;
    assert!(
        reply.first().is_none_or(|b| *b == 0x15),
        "a TLS alert at most: {reply:?}"
    );
    let m = svc.metrics().await;
    let failures: f64 = m
        .lines()
        .filter(|l| l.starts_with("shuffle_spark_tls_handshake_failures_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(failures >= 2.0, "{m}");
    assert!(m.contains("shuffle_blocks_served_total 4"), "{m}");
    svc.shutdown().await;
}
