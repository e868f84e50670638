//! This crate's codecs against the golden bytes of Spark 4.3.0's own encoders, and against every
//! frame of three captures of a real Spark 4.3.0 job (default fetch, batch fetch, old fetch
//! protocol): each decodes, and re-encodes to the same bytes.

use bytes::{Bytes, BytesMut};
use spark_protocol::frame::{FrameDecoder, Message, StreamChunkId};
use spark_protocol::message::{
    BlockTransferMessage as Btm, Cause, ExecutorShuffleInfo, RpcPayload, SaslMessage,
};

fn h(s: &str) -> Bytes {
    Bytes::from(hex::decode(s).unwrap())
}

const REGISTER: &str = "02000000056170702d310000000130000000010000000e2f64302f626c6f636b6d67722d3100000040000000306f72672e6170616368652e737061726b2e73687566666c652e736f72742e536f727453687566666c654d616e61676572";

fn register() -> Btm {
    Btm::RegisterExecutor {
        app_id: "app-1".into(),
        exec_id: "0".into(),
        info: ExecutorShuffleInfo {
            local_dirs: vec!["/d0/blockmgr-1".into()],
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        },
    }
}

fn check_frame(m: &Message, golden: &str) {
    let bytes = m.to_bytes();
    assert_eq!(hex::encode(&bytes), golden, "encode {}", m.name());
    let mut buf = BytesMut::from(&h(golden)[..]);
    let decoded = FrameDecoder::new(1 << 20)
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(&decoded, m, "decode {}", m.name());
}

#[test]
fn golden_frames() {
    let id = StreamChunkId {
        stream_id: 5,
        chunk_index: 1,
    };
    check_frame(
        &Message::RpcRequest {
            request_id: 7,
            body: register().to_bytes(),
        },
        &format!("00000000000000720300000000000000070000005d{REGISTER}"),
    );
    check_frame(
        &Message::RpcResponse {
            request_id: 7,
            body: Bytes::new(),
        },
        "000000000000001504000000000000000700000000",
    );
    check_frame(
        &Message::RpcFailure {
            request_id: 7,
            error: "boom".into(),
        },
        "000000000000001905000000000000000700000004626f6f6d",
    );
    check_frame(
        &Message::ChunkFetchRequest(id),
        "000000000000001500000000000000000500000001",
    );
    check_frame(
        &Message::ChunkFetchSuccess(id, Bytes::from_static(b"abc")),
        "000000000000001801000000000000000500000001616263",
    );
    check_frame(
        &Message::ChunkFetchFailure(id, "err".into()),
        "000000000000001c0200000000000000050000000100000003657272",
    );
    check_frame(
        &Message::StreamRequest("5_1".into()),
        "00000000000000100600000003355f31",
    );
    // The body follows the frame, outside frameLen.
    check_frame(
        &Message::StreamResponse {
            stream_id: "5_1".into(),
            byte_count: 3,
        },
        "00000000000000180700000003355f310000000000000003",
    );
    check_frame(
        &Message::StreamFailure {
            stream_id: "5_1".into(),
            error: "err".into(),
        },
        "00000000000000170800000003355f3100000003657272",
    );
    check_frame(
        &Message::OneWayMessage(Bytes::from_static(b"xy")),
        "000000000000000f09000000027879",
    );
    // The zero-copy header of a ChunkFetchSuccess matches the encoder's.
    assert_eq!(
        hex::encode(spark_protocol::frame::chunk_success_header(id, 3)),
        "000000000000001801000000000000000500000001"
    );
}

#[test]
fn golden_payloads() {
    let cases: Vec<(Btm, &str)> = vec![
        (register(), REGISTER),
        (
            Btm::OpenBlocks {
                app_id: "app-1".into(),
                exec_id: "0".into(),
                block_ids: vec!["shuffle_0_1_2".into()],
            },
            "00000000056170702d310000000130000000010000000d73687566666c655f305f315f32",
        ),
        (
            Btm::FetchShuffleBlocks {
                app_id: "app-1".into(),
                exec_id: "0".into(),
                shuffle_id: 0,
                map_ids: vec![1],
                reduce_ids: vec![vec![2, 3]],
                batch_fetch_enabled: false,
            },
            "09000000056170702d310000000130000000000000000100000000000000010000000100000002000000020000000300",
        ),
        (
            Btm::FetchShuffleBlocks {
                app_id: "app-1".into(),
                exec_id: "0".into(),
                shuffle_id: 0,
                map_ids: vec![1],
                reduce_ids: vec![vec![2, 5]],
                batch_fetch_enabled: true,
            },
            "09000000056170702d310000000130000000000000000100000000000000010000000100000002000000020000000501",
        ),
        (
            Btm::StreamHandle {
                stream_id: 0x0102_0304_0506_0708,
                num_chunks: 2,
            },
            "03010203040506070800000002",
        ),
        (
            Btm::GetLocalDirsForExecutors {
                app_id: "app-1".into(),
                exec_ids: vec!["0".into()],
            },
            "0a000000056170702d31000000010000000130",
        ),
        (
            Btm::LocalDirsForExecutors {
                exec_ids: vec!["0".into()],
                num_dirs_per_exec: vec![1],
                all_dirs: vec!["/d".into()],
            },
            "0b000000010000000130000000010000000100000001000000022f64",
        ),
        (
            Btm::RemoveBlocks {
                app_id: "app-1".into(),
                exec_id: "0".into(),
                block_ids: vec!["shuffle_0_1_0.data".into()],
            },
            "07000000056170702d310000000130000000010000001273687566666c655f305f315f302e64617461",
        ),
        (
            Btm::BlocksRemoved {
                num_removed_blocks: 1,
            },
            "0800000001",
        ),
        (
            Btm::DiagnoseCorruption {
                app_id: "app-1".into(),
                exec_id: "0".into(),
                shuffle_id: 0,
                map_id: 1,
                reduce_id: 2,
                checksum: 3,
                algorithm: "ADLER32".into(),
            },
            "10000000056170702d3100000001300000000000000000000000010000000200000000000000030000000741444c45523332",
        ),
        (Btm::CorruptionCause(Cause::NetworkIssue), "1101"),
    ];
    for (m, golden) in cases {
        assert_eq!(hex::encode(m.to_bytes()), golden, "encode {}", m.name());
        assert_eq!(Btm::decode(h(golden)).unwrap(), m, "decode {}", m.name());
    }
    // The authentication payloads share the RPC channel.
    let sasl = SaslMessage {
        app_id: "app-1".into(),
        payload: Bytes::from_static(b"xyz"),
    };
    assert_eq!(
        hex::encode(sasl.to_bytes()),
        "ea000000056170702d310000000378797a"
    );
    assert_eq!(
        RpcPayload::decode(sasl.to_bytes()).unwrap(),
        RpcPayload::Sasl(sasl)
    );
    let golden = h("fb000000056170702d3100000002010200000001 03"
        .replace(' ', "")
        .as_str());
    assert_eq!(
        RpcPayload::decode(golden.clone()).unwrap(),
        RpcPayload::AuthEngine(golden)
    );
}

#[test]
fn every_truncation_of_every_golden_payload_is_an_error() {
    for golden in [
        REGISTER,
        "09000000056170702d310000000130000000000000000100000000000000010000000100000002000000020000000501",
        "10000000056170702d3100000001300000000000000000000000010000000200000000000000030000000741444c45523332",
        "0b000000010000000130000000010000000100000001000000022f64",
    ] {
        let full = h(golden);
        for cut in 0..full.len() {
            assert!(
                Btm::decode(full.slice(..cut)).is_err(),
                "{golden} cut at {cut}"
            );
        }
        let mut longer = full.to_vec();
        longer.push(0);
        assert!(Btm::decode(Bytes::from(longer)).is_err());
    }
}

/// One reassembled TCP direction of a capture.
struct Flow {
    name: String,
    bytes: Vec<u8>,
}

/// Reads a classic little- or big-endian pcap (Ethernet, Linux SLL/SLL2 or BSD null; IPv4 or
/// IPv6) and reassembles every TCP direction to or from `port` by sequence number.
fn flows(path: &std::path::Path, port: u16) -> Vec<Flow> {
    use std::collections::BTreeMap;
    let data = std::fs::read(path).unwrap();
    let le = match &data[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a classic pcap"),
    };
    let u32at = |b: &[u8], o: usize| {
        let a = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let be16 = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    let be32 = |b: &[u8], o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let link = u32at(&data, 20);
    let mut isn: BTreeMap<(u16, bool), u32> = BTreeMap::new();
    let mut segs: BTreeMap<(u16, bool), BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32at(&data, off + 8) as usize;
        let pkt = &data[off + 16..off + 16 + incl];
        off += 16 + incl;
        let (eth, p) = match link {
            1 => (be16(pkt, 12), &pkt[14..]),
            113 => (be16(pkt, 14), &pkt[16..]),
            276 => (be16(pkt, 0), &pkt[20..]),
            0 => (if pkt[0] == 2 { 0x0800 } else { 0x86dd }, &pkt[4..]),
            other => panic!("link type {other}"),
        };
        let t = match eth {
            0x0800 if p[9] == 6 => {
                let ihl = usize::from(p[0] & 15) * 4;
                &p[ihl..usize::from(be16(p, 2))]
            }
            0x86dd if p[6] == 6 => &p[40..40 + usize::from(be16(p, 4))],
            _ => continue,
        };
        let (sport, dport, seq) = (be16(t, 0), be16(t, 2), be32(t, 4));
        let doff = usize::from(t[12] >> 4) * 4;
        let syn = t[13] & 0x02 != 0;
        let key = if dport == port {
            (sport, true)
        } else if sport == port {
            (dport, false)
        } else {
            continue;
        };
        if syn {
            isn.insert(key, seq.wrapping_add(1));
            continue;
        }
        let payload = &t[doff..];
        if !payload.is_empty() {
            let base = *isn.entry(key).or_insert(seq);
            segs.entry(key)
                .or_default()
                .insert(seq.wrapping_sub(base), payload.to_vec());
        }
    }
    segs.into_iter()
        .map(|((p, c2s), parts)| {
            let mut buf = Vec::new();
            for (o, part) in parts {
                let o = o as usize;
                assert!(o <= buf.len(), "gap in the capture");
                if o + part.len() > buf.len() {
                    buf.extend_from_slice(&part[buf.len() - o..]);
                }
            }
            Flow {
                name: format!(":{p} {}", if c2s { "c2s" } else { "s2c" }),
                bytes: buf,
            }
        })
        .collect()
}

#[test]
fn captures_of_real_spark_decode_and_reencode_byte_for_byte() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spark-ess");
    let mut totals = std::collections::BTreeMap::<String, usize>::new();
    for file in [
        "ess-4.3.0.pcap",
        "ess-4.3.0-batchfetch.pcap",
        "ess-4.3.0-oldfetchprotocol.pcap",
    ] {
        let flows = flows(&dir.join(file), 7447);
        assert!(!flows.is_empty(), "{file}: no flows");
        for flow in flows {
            let mut buf = BytesMut::from(&flow.bytes[..]);
            let decoder = FrameDecoder::new(i32::MAX as usize);
            let mut reencoded = BytesMut::new();
            while !buf.is_empty() {
                let m = decoder
                    .decode(&mut buf)
                    .unwrap_or_else(|e| panic!("{file} {}: {e}", flow.name))
                    .unwrap_or_else(|| panic!("{file} {}: partial frame at the end", flow.name));
                m.encode(&mut reencoded);
                let n = usize::try_from(m.trailing_body_len()).unwrap();
                reencoded.extend_from_slice(&buf.split_to(n));
                let payload = match &m {
                    Message::RpcRequest { body, .. }
                    | Message::RpcResponse { body, .. }
                    | Message::OneWayMessage(body) => Some(body.clone()),
                    _ => None,
                };
                let mut key = format!("{} {}", &flow.name[flow.name.len() - 3..], m.name());
                if let Some(body) = payload.filter(|b| !b.is_empty()) {
                    let btm = Btm::decode(body.clone())
                        .unwrap_or_else(|e| panic!("{file} {}: payload: {e}", flow.name));
                    assert_eq!(btm.to_bytes(), body, "{file}: payload re-encoding");
                    key = format!("{key} {}", btm.name());
                }
                *totals.entry(key).or_default() += 1;
            }
            assert_eq!(
                &reencoded[..],
                &flow.bytes[..],
                "{file} {}: re-encoding differs",
                flow.name
            );
        }
    }
    // What the captures hold, per the decoded listings beside them.
    for (key, want) in [
        ("c2s RpcRequest RegisterExecutor", 11),
        ("s2c RpcResponse", 11),
        ("c2s RpcRequest FetchShuffleBlocks", 27),
        ("c2s RpcRequest OpenBlocks", 24),
        ("s2c RpcResponse StreamHandle", 51),
        ("c2s ChunkFetchRequest", 449),
        ("s2c ChunkFetchSuccess", 449),
    ] {
        assert_eq!(
            totals.get(key).copied(),
            Some(want),
            "{key}; all: {totals:?}"
        );
    }
}
