//! The fuzz targets, as plain functions: each binary in `src/bin` hands AFL's input to one of
//! them, and `tests/corpus.rs` replays the checked-in corpus through them under `cargo test`.
//! A target panics only when an invariant breaks (a decoder accepting what it must refuse, a
//! file escaping the destination); decoding errors are the expected outcome of most inputs.

use std::io::Write as _;

use bytes::{Bytes, BytesMut};
use spark_protocol::frame::{FrameDecoder, Message};
use spark_protocol::message::{BlockTransferMessage, RpcPayload};

/// Largest frame the service accepts (its default).
const MAX_FRAME: usize = 16 << 20;

/// Spark transport frames, fed in pieces as a socket delivers them; every decoded frame must
/// encode back to bytes that decode to the same message.
pub fn spark_frames(data: &[u8]) {
    let dec = FrameDecoder::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    // Split the input at a point chosen by its first byte, so both halves are exercised.
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        while let Ok(Some(m)) = dec.decode(&mut buf) {
            round_trip(&m);
        }
    }
}

fn round_trip(m: &Message) {
    let bytes = m.to_bytes();
    let dec = FrameDecoder::new(usize::MAX >> 1);
    let mut buf = BytesMut::from(&bytes[..]);
    // Frames that announce a body (stream responses) carry it outside the frame.
    if m.trailing_body_len() > 0 {
        return;
    }
    match dec.decode(&mut buf) {
        Ok(Some(again)) => assert_eq!(again.to_bytes(), bytes, "re-encoding changed the frame"),
        other => panic!("an encoded frame did not decode: {other:?}"),
    }
}

/// RPC payloads (SASL, AuthEngine, BlockTransferMessages); a decoded message re-encodes to the
/// bytes it came from, up to what the decoder ignores.
pub fn spark_messages(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let _ = RpcPayload::decode(body.clone());
    if let Ok(m) = BlockTransferMessage::decode(body) {
        let again = BlockTransferMessage::decode(m.to_bytes()).expect("re-encoded message decodes");
        assert_eq!(again.to_bytes(), m.to_bytes());
    }
}

/// Network crypto's decoders: an `AuthMessage` (which must re-encode to itself, and which the
/// server's answer refuses without the secret's seal) and Spark's AES-GCM messages fed in two
/// pieces under both key sizes (nothing forged may decrypt).
pub fn spark_crypto(data: &[u8]) {
    use spark_protocol::crypto::auth::{AuthMessage, respond};
    use spark_protocol::crypto::gcm::GcmOpener;
    if let Ok(m) = AuthMessage::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(AuthMessage::decode(m.to_bytes()).expect("re-encoded"), m);
        assert!(respond(b"fuzz-secret", &m).is_err());
    }
    for key in [&[7u8; 16][..], &[7u8; 32][..]] {
        let mut opener = GcmOpener::new(key, 1 << 20).expect("valid key length");
        let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
        let mut raw = bytes::BytesMut::from(&data[..split]);
        let mut out = bytes::BytesMut::new();
        if opener.open(&mut raw, &mut out).is_ok() {
            raw.extend_from_slice(&data[split..]);
            let _ = opener.open(&mut raw, &mut out);
        }
        assert!(out.is_empty(), "a forged GCM segment decrypted");
    }
}

/// A SASL DIGEST-MD5 server fed client tokens split from the input by 0xff bytes: it must
/// never complete without the secret's response, and never panic.
pub fn sasl(data: &[u8]) {
    let mut server = spark_protocol::sasl::DigestServer::with_nonce(b"secret", "nonce".into());
    for token in data.split(|b| *b == 0xff).take(4) {
        if server.step(token).is_err() {
            return;
        }
    }
    // Completing needs a response computed from the secret, which random bytes do not hold
    // (the corpus seeds carry a valid exchange for another secret).
    assert!(!server.is_complete() || data.windows(8).any(|w| w == b"response"));
}

/// Spark index files: offsets must come back non-decreasing, starting at zero.
pub fn index_file(data: &[u8]) {
    if let Ok(offsets) = spark_protocol::layout::parse_index(std::path::Path::new("x"), data) {
        assert_eq!(offsets.first(), Some(&0));
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    }
}

/// Ids from requests: what parses is a plain file-name component.
pub fn ids(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [
        s.parse::<spark_protocol::ids::AppId>()
            .map(|a| a.to_string()),
        s.parse::<spark_protocol::ids::ExecId>()
            .map(|e| e.to_string()),
    ]
    .into_iter()
    .flatten()
    {
        assert!(!parsed.is_empty() && parsed != "." && parsed != "..");
        assert!(!parsed.contains(['/', '\\', '\0']));
    }
}

/// Bundles as the init-container extracts them: whatever the archive holds, everything that
/// lands in the destination is a regular file directly inside it, and a refused archive leaves
/// nothing behind.
pub fn archive(data: &[u8]) {
    use staging_bundle::extract::{ExtractLimits, extract};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bundle.tar.gz");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .expect("write input");
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).expect("dest");
    let limits = ExtractLimits {
        max_entries: 64,
        max_entry_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
        max_ratio: 200,
    };
    let result = extract(&path, &dest, limits);
    let mut entries = Vec::new();
    for e in std::fs::read_dir(&dest).expect("read dest") {
        let e = e.expect("entry");
        let t = e.file_type().expect("type");
        assert!(t.is_file(), "{:?} is not a regular file", e.path());
        entries.push(e.file_name());
    }
    match result {
        Ok(names) => assert_eq!(entries.len(), names.len()),
        Err(_) => assert!(entries.is_empty(), "a refused archive left {entries:?}"),
    }
    // Nothing was written beside the destination.
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside.len(), 2, "{beside:?}");
}

/// gRPC request messages as a client may send them (protobuf bytes): what decodes re-encodes
/// to a message that decodes to the same, and the ids the service's typed requests take from
/// it parse only into plain file-name components (the conversion into the service's typed
/// requests replays this corpus in `shuffle-service`'s tests, `grpc_requests_corpus`).
pub fn grpc_requests(data: &[u8]) {
    use prost::Message as _;
    use shuffle_proto::v1 as pb;
    use spark_protocol::ids::{AppId, ExecId, MapId, ReduceId, ShuffleId};
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    let plain = |s: &str| {
        assert!(!s.is_empty() && s != "." && s != "..");
        assert!(!s.contains(['/', '\\', '\0']));
    };
    let ids = |app: &str, exec: &str| {
        if let Ok(a) = app.parse::<AppId>() {
            plain(a.as_str());
        }
        if let Ok(e) = exec.parse::<ExecId>() {
            plain(e.as_str());
        }
    };
    if kind % 2 == 0 {
        if let Ok(m) = pb::FetchBlocksRequest::decode(body) {
            assert_eq!(
                pb::FetchBlocksRequest::decode(&m.encode_to_vec()[..]).ok(),
                Some(m.clone())
            );
            ids(&m.app_id, &m.exec_id);
            for b in &m.blocks {
                let valid = ShuffleId::new(b.shuffle_id).is_ok()
                    && MapId::new(b.map_id).is_ok()
                    && ReduceId::new(b.start_reduce).is_ok()
                    && ReduceId::new(b.end_reduce).is_ok();
                assert!(!valid || (b.shuffle_id >= 0 && b.map_id >= 0));
            }
        }
    } else if let Ok(m) = pb::RegisterExecutorRequest::decode(body) {
        assert_eq!(
            pb::RegisterExecutorRequest::decode(&m.encode_to_vec()[..]).ok(),
            Some(m.clone())
        );
        ids(&m.app_id, &m.exec_id);
    }
}

/// v0 (fork) uploads: the input is a multipart body (boundary `B`) as posted to
/// `/api/v0/resources`, read part by part as the server reads it (multer's framing, the
/// `resourcesOwner` part as the fork's owner JSON): nothing panics, and an owner that parses
/// names a valid namespace. The whole route replays this corpus against a real server state
/// in `staging-server`'s tests (`uploads::v0_upload_corpus`: never a 5xx but 507).
pub fn v0_upload(data: &[u8]) {
    use staging_api::bodies::V0Owner;
    let body = Bytes::copy_from_slice(data);
    let stream = futures::stream::once(futures::future::ready(Ok::<_, std::io::Error>(body)));
    let mut parts = multer::Multipart::new(stream, "B");
    futures::executor::block_on(async {
        while let Ok(Some(mut field)) = parts.next_field().await {
            let owner = field.name() == Some("resourcesOwner");
            let mut buf = Vec::new();
            while let Ok(Some(chunk)) = field.chunk().await {
                buf.extend_from_slice(&chunk);
            }
            if owner && let Ok(o) = serde_json::from_slice::<V0Owner>(&buf) {
                let ns = o.owner_namespace.as_str();
                assert!(ns.parse::<staging_api::ids::Namespace>().is_ok(), "{ns:?}");
            }
        }
    });
}

/// Spark checksum files (`DiagnoseCorruption`): the checksum file and the data file come from
/// the input; when the block lies inside both, the cause matches one computed independently.
pub fn checksum_files(data: &[u8]) {
    use spark_protocol::checksum::{self, Algorithm};
    use spark_protocol::message::Cause;
    if data.len() < 6 {
        return;
    }
    let alg = [Algorithm::Adler32, Algorithm::Crc32, Algorithm::Crc32c][usize::from(data[0]) % 3];
    let reduce = u32::from(data[1] % 8);
    let (offset, len) = (u64::from(data[2]), u64::from(data[3]) * 4);
    let reader = i64::from(data[4]);
    let rest = &data[5..];
    let (sums, file) = rest.split_at(usize::from(data[4]) % (rest.len() + 1));
    let diagnosed = checksum::diagnose(
        alg,
        std::io::Cursor::new(sums),
        std::io::Cursor::new(file),
        reduce,
        (offset, len),
        reader,
    );
    let at = reduce as usize * 8;
    let end = (offset + len) as usize;
    if sums.len() >= at + 8 && end <= file.len() {
        let writer = i64::from_be_bytes(sums[at..at + 8].try_into().expect("8 bytes"));
        let actual = checksum::checksum(alg, &mut &file[offset as usize..end]).expect("in memory");
        let expected = if writer != actual {
            Cause::DiskIssue
        } else if writer != reader {
            Cause::NetworkIssue
        } else {
            Cause::ChecksumVerifyPass
        };
        assert_eq!(diagnosed.ok(), Some(expected));
    }
}
