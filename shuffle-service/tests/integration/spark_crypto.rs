//! Encrypted channels against the in-process service: network crypto
//! (`spark.network.crypto.enabled=true`, every cipher and engine version Spark offers) and
//! SASL encryption (`auth-conf`), over every fetch path (in-memory and file-sized bodies,
//! chunks and streams), with secrets from a shared file and from a per-application
//! directory; wrong secrets, refused ciphers and unencrypted clients.

use std::path::{Path, PathBuf};

use spark_protocol::client::Client;
use spark_protocol::crypto::{Cipher, EngineVersion};
use spark_protocol::message::BlockTransferMessage as Btm;

use crate::common::{TestService, random_bytes};
use crate::spark_protocol::{APP, fetch_msg, open_stream, register_msg, write_map};

const VERSIONS: [EngineVersion; 2] = [EngineVersion::V1, EngineVersion::V2];

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, Copy)]
enum Channel {
    Crypto(Cipher, EngineVersion),
    SaslConf,
}

const CHANNELS: [Channel; 5] = [
    Channel::Crypto(Cipher::Ctr, EngineVersion::V1),
    Channel::Crypto(Cipher::Ctr, EngineVersion::V2),
    Channel::Crypto(Cipher::Gcm, EngineVersion::V1),
    Channel::Crypto(Cipher::Gcm, EngineVersion::V2),
    Channel::SaslConf,
];

async fn connect(svc: &TestService, secret: &[u8], ch: Channel) -> Client {
    match ch {
        Channel::Crypto(c, v) => encrypted(svc, secret, c, v).await,
        Channel::SaslConf => {
            let mut client = Client::connect(svc.spark).await.unwrap();
            client
                .authenticate_sasl_encrypted(APP, secret)
                .await
                .unwrap()
                .unwrap();
            client
        }
    }
}

async fn encrypted(svc: &TestService, secret: &[u8], c: Cipher, v: EngineVersion) -> Client {
    let mut client = Client::connect(svc.spark).await.unwrap();
    client
        .authenticate_crypto(APP, secret, c, v)
        .await
        .unwrap()
        .unwrap();
    client
}

async fn serves_everything(svc: &TestService, secret: &[u8]) {
    // Sizes cross the in-memory/sendfile boundary and the 32 KiB GCM segment.
    let parts: Vec<Vec<u8>> = [0, 10, 32_752, 70_000, 3 << 20, 1]
        .iter()
        .enumerate()
        .map(|(i, n)| random_bytes(*n, i as u64 + 7))
        .collect();
    for (k, ch) in CHANNELS.iter().enumerate() {
        let exec = format!("{k}");
        let dirs = vec![svc.exec_dir(&format!("blockmgr-crypto-{k}"))];
        let mut client = connect(svc, secret, *ch).await;
        let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        assert_eq!(
            client.call(&register_msg(APP, &exec, &refs)).await.unwrap(),
            Ok(None),
            "{ch:?}"
        );
        write_map(&dirs, 1, k as i64, &parts);
        let reduces: Vec<i32> = (0..parts.len() as i32).collect();
        let m = fetch_msg(&exec, 1, &[k as i64], vec![reduces.clone()], false);
        let (sid, n) = open_stream(&mut client, &m).await;
        let got = client.fetch_chunks(sid, n).await.unwrap();
        for (i, g) in got.iter().enumerate() {
            assert_eq!(
                g.as_ref().unwrap().as_ref(),
                &parts[i][..],
                "{ch:?} chunk {i}"
            );
        }
        let (sid, n) = open_stream(&mut client, &m).await;
        let got = client.fetch_streams(sid, n).await.unwrap();
        for (i, g) in got.iter().enumerate() {
            assert_eq!(
                g.as_ref().unwrap().as_ref(),
                &parts[i][..],
                "{ch:?} stream {i}"
            );
        }
    }
}

#[tokio::test]
async fn every_cipher_and_engine_version_serves_every_fetch_path() {
    let svc = TestService::start(|c| {
        crate::common::shared_spark_secret(c, "s3cr3t\n");
    })
    .await;
    serves_everything(&svc, b"s3cr3t").await;
    let m = svc.metrics().await;
    assert_eq!(metric(&m, "shuffle_spark_auth_failures_total"), 0.0, "{m}");
    svc.shutdown().await;
}

#[tokio::test]
async fn per_application_secrets_work_with_network_crypto() {
    let svc = TestService::start(|c| {
        crate::common::per_app_spark_secret(c, APP, "app-secret");
    })
    .await;
    serves_everything(&svc, b"app-secret").await;
    svc.shutdown().await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_nothing_is_served() {
    let svc = TestService::start(|c| {
        crate::common::shared_spark_secret(c, "right");
    })
    .await;
    let dirs = vec![svc.exec_dir("blockmgr-w")];
    write_map(&dirs, 1, 1, &[b"secret rows".to_vec()]);
    for v in VERSIONS {
        let mut c = Client::connect(svc.spark).await.unwrap();
        let r = c
            .authenticate_crypto(APP, b"wrong", Cipher::Gcm, v)
            .await
            .unwrap();
        assert_eq!(r, Err("Authentication failed.".to_owned()));
        // The connection is closed: nothing more is read from it.
        assert!(c.recv().await.is_err());
    }
    // A client that skips the handshake is refused too.
    let mut c = Client::connect(svc.spark).await.unwrap();
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let r = c.call(&register_msg(APP, "1", &refs)).await.unwrap();
    assert!(r.unwrap_err().contains("authentication required"));
    let m = svc.metrics().await;
    assert_eq!(metric(&m, "shuffle_spark_auth_failures_total"), 2.0, "{m}");
    assert_eq!(metric(&m, "shuffle_blocks_served_total"), 0.0, "{m}");
    svc.shutdown().await;
}

#[tokio::test]
async fn a_cipher_left_out_and_unencrypted_clients_can_be_refused() {
    let svc = TestService::start(|c| {
        crate::common::shared_spark_secret(c, "k");
        c.spark_ciphers = vec![Cipher::Gcm];
        c.spark_require_encryption = true;
    })
    .await;
    // CTR: the handshake succeeds (the cipher is not part of it), the first encrypted
    // request closes the connection.
    let mut c = encrypted(&svc, b"k", Cipher::Ctr, EngineVersion::V1).await;
    let r = c
        .call(&Btm::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["1".into()],
        })
        .await;
    assert!(r.is_err(), "{r:?}");
    // GCM works.
    let mut c = encrypted(&svc, b"k", Cipher::Gcm, EngineVersion::V2).await;
    let r = c
        .call(&Btm::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec![],
        })
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    // SASL without encryption is refused (only qop auth-conf is offered); with it, served.
    let mut c = Client::connect(svc.spark).await.unwrap();
    let r = c.authenticate(APP, b"k").await.unwrap();
    assert!(r.unwrap_err().contains("qop"));
    let mut c = connect(&svc, b"k", Channel::SaslConf).await;
    let r = c
        .call(&Btm::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec![],
        })
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    svc.shutdown().await;
}
