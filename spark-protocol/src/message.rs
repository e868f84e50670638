//! RPC payloads: Spark's `BlockTransferMessage` (type byte, then fields), and the two
//! authentication payloads that share the RPC channel (`SaslMessage` 0xEA, `AuthMessage` 0xFB).

use bytes::{BufMut as _, Bytes, BytesMut};

use crate::wire::{self, DecodeError, Reader};

/// Where an executor keeps its shuffle files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorShuffleInfo {
    /// Absolute `blockmgr-*` directories.
    pub local_dirs: Vec<String>,
    /// Subdirectories per local directory.
    pub sub_dirs_per_local_dir: i32,
    /// Shuffle manager class (informational).
    pub shuffle_manager: String,
}

/// What `DiagnoseCorruption` concluded (`Cause` ordinals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cause {
    /// The data on disk does not match the writer's checksum.
    DiskIssue = 0,
    /// The data on disk is intact; the reader saw other bytes.
    NetworkIssue = 1,
    /// Could not tell.
    UnknownIssue = 2,
    /// Every checksum agrees.
    ChecksumVerifyPass = 3,
    /// The algorithm is not supported.
    UnsupportedChecksumAlgorithm = 4,
}

impl Cause {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => Self::DiskIssue,
            1 => Self::NetworkIssue,
            2 => Self::UnknownIssue,
            3 => Self::ChecksumVerifyPass,
            4 => Self::UnsupportedChecksumAlgorithm,
            _ => return Err(DecodeError::Invalid("corruption cause")),
        })
    }
}

/// A `BlockTransferMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Field names are Spark's.
pub enum BlockTransferMessage {
    /// 0
    OpenBlocks {
        app_id: String,
        exec_id: String,
        block_ids: Vec<String>,
    },
    /// 1 (executor to executor; never served here)
    UploadBlock {
        app_id: String,
        exec_id: String,
        block_id: String,
        metadata: Bytes,
        block_data: Bytes,
    },
    /// 2
    RegisterExecutor {
        app_id: String,
        exec_id: String,
        info: ExecutorShuffleInfo,
    },
    /// 3
    StreamHandle { stream_id: i64, num_chunks: i32 },
    /// 4 (Spark 3.5 layout; an opt-in driver liveness signal here)
    RegisterDriver {
        app_id: String,
        heartbeat_timeout_ms: i64,
    },
    /// 5 (Spark 3.5 layout)
    ShuffleServiceHeartbeat { app_id: String },
    /// 6
    UploadBlockStream { block_id: String, metadata: Bytes },
    /// 7
    RemoveBlocks {
        app_id: String,
        exec_id: String,
        block_ids: Vec<String>,
    },
    /// 8
    BlocksRemoved { num_removed_blocks: i32 },
    /// 9
    FetchShuffleBlocks {
        app_id: String,
        exec_id: String,
        shuffle_id: i32,
        map_ids: Vec<i64>,
        reduce_ids: Vec<Vec<i32>>,
        batch_fetch_enabled: bool,
    },
    /// 10
    GetLocalDirsForExecutors {
        app_id: String,
        exec_ids: Vec<String>,
    },
    /// 11
    LocalDirsForExecutors {
        exec_ids: Vec<String>,
        num_dirs_per_exec: Vec<i32>,
        all_dirs: Vec<String>,
    },
    /// 12 (push-based shuffle)
    PushBlockStream {
        app_id: String,
        app_attempt_id: i32,
        shuffle_id: i32,
        shuffle_merge_id: i32,
        map_index: i32,
        reduce_id: i32,
        index: i32,
    },
    /// 13 (push-based shuffle)
    FinalizeShuffleMerge {
        app_id: String,
        app_attempt_id: i32,
        shuffle_id: i32,
        shuffle_merge_id: i32,
    },
    /// 14 (push-based shuffle; bitmaps kept undecoded, never received by a service)
    MergeStatuses { raw: Bytes },
    /// 15 (push-based shuffle)
    FetchShuffleBlockChunks {
        app_id: String,
        exec_id: String,
        shuffle_id: i32,
        shuffle_merge_id: i32,
        reduce_ids: Vec<i32>,
        chunk_ids: Vec<Vec<i32>>,
    },
    /// 16
    DiagnoseCorruption {
        app_id: String,
        exec_id: String,
        shuffle_id: i32,
        map_id: i64,
        reduce_id: i32,
        checksum: i64,
        algorithm: String,
    },
    /// 17
    CorruptionCause(Cause),
    /// 18 (push-based shuffle)
    BlockPushReturnCode {
        return_code: u8,
        failure_block_id: String,
    },
    /// 19 (push-based shuffle, one-way)
    RemoveShuffleMerge {
        app_id: String,
        app_attempt_id: i32,
        shuffle_id: i32,
        shuffle_merge_id: i32,
    },
}

/// A SASL step from the client: `0xEA`, app id, token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslMessage {
    /// The application authenticating.
    pub app_id: String,
    /// The SASL token.
    pub payload: Bytes,
}

/// Tag byte of a `SaslMessage`.
pub const SASL_TAG: u8 = 0xEA;
/// Tag byte of an `AuthEngine` message.
pub const AUTH_ENGINE_TAG: u8 = 0xFB;

/// An RPC payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcPayload {
    /// A shuffle message.
    Block(BlockTransferMessage),
    /// A SASL step.
    Sasl(SaslMessage),
    /// An `AuthEngine` (network crypto) message, decoded by
    /// [`AuthMessage::decode`](crate::crypto::auth::AuthMessage::decode).
    AuthEngine(Bytes),
}

impl RpcPayload {
    /// Decodes an RPC or one-way body.
    ///
    /// # Errors
    /// A malformed payload.
    pub fn decode(body: Bytes) -> Result<Self, DecodeError> {
        match body.first() {
            Some(&SASL_TAG) => {
                let mut r = Reader::new(body.slice(1..));
                let app_id = r.string("app id")?;
                let payload = r.byte_array("sasl payload")?;
                r.finish()?;
                Ok(Self::Sasl(SaslMessage { app_id, payload }))
            }
            Some(&AUTH_ENGINE_TAG) => Ok(Self::AuthEngine(body)),
            _ => BlockTransferMessage::decode(body).map(Self::Block),
        }
    }
}

impl SaslMessage {
    /// The encoded message.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(SASL_TAG);
        wire::put_string(&mut b, &self.app_id);
        wire::put_byte_array(&mut b, &self.payload);
        b.freeze()
    }
}

impl BlockTransferMessage {
    /// The type byte.
    pub fn type_id(&self) -> u8 {
        match self {
            Self::OpenBlocks { .. } => 0,
            Self::UploadBlock { .. } => 1,
            Self::RegisterExecutor { .. } => 2,
            Self::StreamHandle { .. } => 3,
            Self::RegisterDriver { .. } => 4,
            Self::ShuffleServiceHeartbeat { .. } => 5,
            Self::UploadBlockStream { .. } => 6,
            Self::RemoveBlocks { .. } => 7,
            Self::BlocksRemoved { .. } => 8,
            Self::FetchShuffleBlocks { .. } => 9,
            Self::GetLocalDirsForExecutors { .. } => 10,
            Self::LocalDirsForExecutors { .. } => 11,
            Self::PushBlockStream { .. } => 12,
            Self::FinalizeShuffleMerge { .. } => 13,
            Self::MergeStatuses { .. } => 14,
            Self::FetchShuffleBlockChunks { .. } => 15,
            Self::DiagnoseCorruption { .. } => 16,
            Self::CorruptionCause(_) => 17,
            Self::BlockPushReturnCode { .. } => 18,
            Self::RemoveShuffleMerge { .. } => 19,
        }
    }

    /// Spark's class name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        NAMES[usize::from(self.type_id())]
    }

    /// The encoded message.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// Appends the encoded message.
    pub fn encode(&self, b: &mut BytesMut) {
        b.put_u8(self.type_id());
        match self {
            Self::OpenBlocks {
                app_id,
                exec_id,
                block_ids,
            }
            | Self::RemoveBlocks {
                app_id,
                exec_id,
                block_ids,
            } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                wire::put_string_array(b, block_ids);
            }
            Self::UploadBlock {
                app_id,
                exec_id,
                block_id,
                metadata,
                block_data,
            } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                wire::put_string(b, block_id);
                wire::put_byte_array(b, metadata);
                wire::put_byte_array(b, block_data);
            }
            Self::RegisterExecutor {
                app_id,
                exec_id,
                info,
            } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                wire::put_string_array(b, &info.local_dirs);
                b.put_i32(info.sub_dirs_per_local_dir);
                wire::put_string(b, &info.shuffle_manager);
            }
            Self::StreamHandle {
                stream_id,
                num_chunks,
            } => {
                b.put_i64(*stream_id);
                b.put_i32(*num_chunks);
            }
            Self::RegisterDriver {
                app_id,
                heartbeat_timeout_ms,
            } => {
                wire::put_string(b, app_id);
                b.put_i64(*heartbeat_timeout_ms);
            }
            Self::ShuffleServiceHeartbeat { app_id } => wire::put_string(b, app_id),
            Self::UploadBlockStream { block_id, metadata } => {
                wire::put_string(b, block_id);
                wire::put_byte_array(b, metadata);
            }
            Self::BlocksRemoved { num_removed_blocks } => b.put_i32(*num_removed_blocks),
            Self::FetchShuffleBlocks {
                app_id,
                exec_id,
                shuffle_id,
                map_ids,
                reduce_ids,
                batch_fetch_enabled,
            } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                b.put_i32(*shuffle_id);
                wire::put_long_array(b, map_ids);
                b.put_i32(i32::try_from(reduce_ids.len()).expect("bounded"));
                for r in reduce_ids {
                    wire::put_int_array(b, r);
                }
                b.put_u8(u8::from(*batch_fetch_enabled));
            }
            Self::GetLocalDirsForExecutors { app_id, exec_ids } => {
                wire::put_string(b, app_id);
                wire::put_string_array(b, exec_ids);
            }
            Self::LocalDirsForExecutors {
                exec_ids,
                num_dirs_per_exec,
                all_dirs,
            } => {
                wire::put_string_array(b, exec_ids);
                wire::put_int_array(b, num_dirs_per_exec);
                wire::put_string_array(b, all_dirs);
            }
            Self::PushBlockStream {
                app_id,
                app_attempt_id,
                shuffle_id,
                shuffle_merge_id,
                map_index,
                reduce_id,
                index,
            } => {
                wire::put_string(b, app_id);
                for x in [
                    app_attempt_id,
                    shuffle_id,
                    shuffle_merge_id,
                    map_index,
                    reduce_id,
                    index,
                ] {
                    b.put_i32(*x);
                }
            }
            Self::FinalizeShuffleMerge {
                app_id,
                app_attempt_id,
                shuffle_id,
                shuffle_merge_id,
            }
            | Self::RemoveShuffleMerge {
                app_id,
                app_attempt_id,
                shuffle_id,
                shuffle_merge_id,
            } => {
                wire::put_string(b, app_id);
                b.put_i32(*app_attempt_id);
                b.put_i32(*shuffle_id);
                b.put_i32(*shuffle_merge_id);
            }
            Self::MergeStatuses { raw } => b.put_slice(raw),
            Self::FetchShuffleBlockChunks {
                app_id,
                exec_id,
                shuffle_id,
                shuffle_merge_id,
                reduce_ids,
                chunk_ids,
            } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                b.put_i32(*shuffle_id);
                b.put_i32(*shuffle_merge_id);
                wire::put_int_array(b, reduce_ids);
                b.put_i32(i32::try_from(chunk_ids.len()).expect("bounded"));
                for c in chunk_ids {
                    wire::put_int_array(b, c);
                }
            }
            Self::DiagnoseCorruption {
                app_id,
                exec_id,
                shuffle_id,
                map_id,
                reduce_id,
                checksum,
                algorithm,
            } => {
                wire::put_string(b, app_id);
                wire::put_string(b, exec_id);
                b.put_i32(*shuffle_id);
                b.put_i64(*map_id);
                b.put_i32(*reduce_id);
                b.put_i64(*checksum);
                wire::put_string(b, algorithm);
            }
            Self::CorruptionCause(c) => b.put_u8(*c as u8),
            Self::BlockPushReturnCode {
                return_code,
                failure_block_id,
            } => {
                b.put_u8(*return_code);
                wire::put_string(b, failure_block_id);
            }
        }
    }

    /// Decodes a payload.
    ///
    /// # Errors
    /// A malformed or unknown message.
    pub fn decode(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let t = r.u8("message type")?;
        let m = match t {
            0 => Self::OpenBlocks {
                app_id: r.string("app id")?,
                exec_id: r.string("exec id")?,
                block_ids: r.string_array("block ids")?,
            },
            1 => Self::UploadBlock {
                app_id: r.string("app id")?,
                exec_id: r.string("exec id")?,
                block_id: r.string("block id")?,
                metadata: r.byte_array("metadata")?,
                block_data: r.byte_array("block data")?,
            },
            2 => Self::RegisterExecutor {
                app_id: r.string("app id")?,
                exec_id: r.string("exec id")?,
                info: ExecutorShuffleInfo {
                    local_dirs: r.string_array("local dirs")?,
                    sub_dirs_per_local_dir: r.i32("sub dirs")?,
                    shuffle_manager: r.string("shuffle manager")?,
                },
            },
            3 => Self::StreamHandle {
                stream_id: r.i64("stream id")?,
                num_chunks: r.i32("chunk count")?,
            },
            4 => Self::RegisterDriver {
                app_id: r.string("app id")?,
                heartbeat_timeout_ms: r.i64("heartbeat timeout")?,
            },
            5 => Self::ShuffleServiceHeartbeat {
                app_id: r.string("app id")?,
            },
            6 => Self::UploadBlockStream {
                block_id: r.string("block id")?,
                metadata: r.byte_array("metadata")?,
            },
            7 => Self::RemoveBlocks {
                app_id: r.string("app id")?,
                exec_id: r.string("exec id")?,
                block_ids: r.string_array("block ids")?,
            },
            8 => Self::BlocksRemoved {
                num_removed_blocks: r.i32("removed count")?,
            },
            9 => {
                let app_id = r.string("app id")?;
                let exec_id = r.string("exec id")?;
                let shuffle_id = r.i32("shuffle id")?;
                let map_ids = r.long_array("map ids")?;
                let n = r.array_len("reduce id lists", 4)?;
                let reduce_ids = (0..n)
                    .map(|_| r.int_array("reduce ids"))
                    .collect::<Result<_, _>>()?;
                Self::FetchShuffleBlocks {
                    app_id,
                    exec_id,
                    shuffle_id,
                    map_ids,
                    reduce_ids,
                    batch_fetch_enabled: r.bool("batch flag")?,
                }
            }
            10 => Self::GetLocalDirsForExecutors {
                app_id: r.string("app id")?,
                exec_ids: r.string_array("exec ids")?,
            },
            11 => Self::LocalDirsForExecutors {
                exec_ids: r.string_array("exec ids")?,
                num_dirs_per_exec: r.int_array("dir counts")?,
                all_dirs: r.string_array("dirs")?,
            },
            12 => Self::PushBlockStream {
                app_id: r.string("app id")?,
                app_attempt_id: r.i32("attempt")?,
                shuffle_id: r.i32("shuffle id")?,
                shuffle_merge_id: r.i32("merge id")?,
                map_index: r.i32("map index")?,
                reduce_id: r.i32("reduce id")?,
                index: r.i32("index")?,
            },
            13 | 19 => {
                let app_id = r.string("app id")?;
                let app_attempt_id = r.i32("attempt")?;
                let shuffle_id = r.i32("shuffle id")?;
                let shuffle_merge_id = r.i32("merge id")?;
                if t == 13 {
                    Self::FinalizeShuffleMerge {
                        app_id,
                        app_attempt_id,
                        shuffle_id,
                        shuffle_merge_id,
                    }
                } else {
                    Self::RemoveShuffleMerge {
                        app_id,
                        app_attempt_id,
                        shuffle_id,
                        shuffle_merge_id,
                    }
                }
            }
            14 => Self::MergeStatuses { raw: r.rest() },
            15 => {
                let app_id = r.string("app id")?;
                let exec_id = r.string("exec id")?;
                let shuffle_id = r.i32("shuffle id")?;
                let shuffle_merge_id = r.i32("merge id")?;
                let reduce_ids = r.int_array("reduce ids")?;
                let n = r.array_len("chunk id lists", 4)?;
                let chunk_ids = (0..n)
                    .map(|_| r.int_array("chunk ids"))
                    .collect::<Result<_, _>>()?;
                Self::FetchShuffleBlockChunks {
                    app_id,
                    exec_id,
                    shuffle_id,
                    shuffle_merge_id,
                    reduce_ids,
                    chunk_ids,
                }
            }
            16 => Self::DiagnoseCorruption {
                app_id: r.string("app id")?,
                exec_id: r.string("exec id")?,
                shuffle_id: r.i32("shuffle id")?,
                map_id: r.i64("map id")?,
                reduce_id: r.i32("reduce id")?,
                checksum: r.i64("checksum")?,
                algorithm: r.string("algorithm")?,
            },
            17 => Self::CorruptionCause(Cause::from_u8(r.u8("cause")?)?),
            18 => Self::BlockPushReturnCode {
                return_code: r.u8("return code")?,
                failure_block_id: r.string("block id")?,
            },
            other => {
                return Err(DecodeError::UnknownType {
                    what: "block transfer message",
                    id: other as i8,
                });
            }
        };
        r.finish()?;
        Ok(m)
    }
}

const NAMES: [&str; 20] = [
    "OpenBlocks",
    "UploadBlock",
    "RegisterExecutor",
    "StreamHandle",
    "RegisterDriver",
    "ShuffleServiceHeartbeat",
    "UploadBlockStream",
    "RemoveBlocks",
    "BlocksRemoved",
    "FetchShuffleBlocks",
    "GetLocalDirsForExecutors",
    "LocalDirsForExecutors",
    "PushBlockStream",
    "FinalizeShuffleMerge",
    "MergeStatuses",
    "FetchShuffleBlockChunks",
    "DiagnoseCorruption",
    "CorruptionCause",
    "BlockPushReturnCode",
    "RemoveShuffleMerge",
];
