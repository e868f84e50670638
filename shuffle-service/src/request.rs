//! Typed requests, built where each front end decodes bytes, so that ids are validated once,
//! before the core sees them, and the core checks every limit in one place.

use shuffle_proto::v1 as pb;
use spark_protocol::checksum::Algorithm;
use spark_protocol::message::ExecutorShuffleInfo;

use crate::error::{Result, ShuffleError};
use crate::ids::{AppId, ExecId, MapId, ReduceId, ShuffleId};

/// Reduce partitions `[start, end)` of one map output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    /// Shuffle.
    pub shuffle: ShuffleId,
    /// Map output.
    pub map: MapId,
    /// First reduce partition.
    pub start: ReduceId,
    /// One past the last.
    pub end: ReduceId,
}

impl TryFrom<&pb::BlockRange> for BlockRange {
    type Error = ShuffleError;

    fn try_from(b: &pb::BlockRange) -> Result<Self> {
        Ok(Self {
            shuffle: ShuffleId::new(b.shuffle_id)?,
            map: MapId::new(b.map_id)?,
            start: ReduceId::new(b.start_reduce)?,
            end: ReduceId::new(b.end_reduce)?,
        })
    }
}

/// Reduce partitions `[start, end)` of a map output, never empty: `0 <= start < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReduceRange {
    start: ReduceId,
    end: ReduceId,
}

impl ReduceRange {
    /// `[start, end)`; `None` unless `0 <= start < end`.
    pub fn new(start: i32, end: i32) -> Option<Self> {
        if start >= end {
            return None;
        }
        Some(Self {
            start: ReduceId::new(start).ok()?,
            end: ReduceId::new(end).ok()?,
        })
    }

    /// The one partition `[reduce, reduce + 1)`; `None` for a negative id or `i32::MAX`
    /// (whose successor is no id).
    pub fn single(reduce: i32) -> Option<Self> {
        Self::new(reduce, reduce.checked_add(1)?)
    }

    /// First partition.
    pub fn start(self) -> ReduceId {
        self.start
    }

    /// One past the last.
    pub fn end(self) -> ReduceId {
        self.end
    }

    /// These partitions of one map output.
    pub fn of(self, shuffle: ShuffleId, map: MapId) -> BlockRange {
        BlockRange {
            shuffle,
            map,
            start: self.start,
            end: self.end,
        }
    }
}

/// The blocks one fetch names, in the order they are sent. Spark's requests are kept as they
/// list them (map outputs with their reduce partitions), never one object per block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocks {
    /// Ranges of map outputs (gRPC `FetchBlocks`; Spark's `OpenBlocks` of shuffle blocks).
    Ranges(Vec<BlockRange>),
    /// Spark's `FetchShuffleBlocks`: for each map output of one shuffle, its partitions (one
    /// range per map output with batch fetch, one per partition without).
    Maps {
        /// Shuffle.
        shuffle: ShuffleId,
        /// Map outputs and their partitions; a map output may list none.
        maps: Vec<(MapId, Vec<ReduceRange>)>,
    },
    /// Spark's cached RDD blocks, whole files named `rdd_<rdd>_<partition>`.
    Files(Vec<String>),
}

impl Blocks {
    /// How many blocks (Spark's chunks) are named.
    pub fn count(&self) -> usize {
        match self {
            Self::Ranges(v) => v.len(),
            Self::Maps { maps, .. } => maps.iter().map(|(_, r)| r.len()).sum(),
            Self::Files(v) => v.len(),
        }
    }
}

/// A fetch of blocks of one executor, from either protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Application.
    pub app: AppId,
    /// Executor that wrote the blocks.
    pub exec: ExecId,
    /// Blocks, in the order they are sent.
    pub blocks: Blocks,
}

/// Spark's `DiagnoseCorruption`: a reader's checksum of one partition, to compare with the
/// one its writer recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// Executor that wrote the partition.
    pub exec: ExecId,
    /// The partition's block.
    pub block: BlockRange,
    /// The checksum the reader computed.
    pub checksum: i64,
    /// The algorithm of both checksums.
    pub algorithm: Algorithm,
}

impl TryFrom<&pb::FetchBlocksRequest> for FetchRequest {
    type Error = ShuffleError;

    fn try_from(r: &pb::FetchBlocksRequest) -> Result<Self> {
        Ok(Self {
            app: r.app_id.parse()?,
            exec: r.exec_id.parse()?,
            blocks: Blocks::Ranges(
                r.blocks
                    .iter()
                    .map(BlockRange::try_from)
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

/// An executor registration, from either protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorRegistration {
    /// Application.
    pub app: AppId,
    /// Executor.
    pub exec: ExecId,
    /// Its directories, as given (admitted against the volumes by the core).
    pub local_dirs: Vec<String>,
    /// Subdirectories per directory.
    pub sub_dirs: u32,
    /// Shuffle manager class (informational).
    pub shuffle_manager: String,
}

impl TryFrom<pb::RegisterExecutorRequest> for ExecutorRegistration {
    type Error = ShuffleError;

    fn try_from(r: pb::RegisterExecutorRequest) -> Result<Self> {
        Ok(Self {
            app: r.app_id.parse()?,
            exec: r.exec_id.parse()?,
            local_dirs: r.local_dirs,
            sub_dirs: r.sub_dirs_per_local_dir,
            shuffle_manager: r.shuffle_manager,
        })
    }
}

impl ExecutorRegistration {
    /// Spark's `RegisterExecutor` of an application already checked by the front end.
    ///
    /// # Errors
    /// A malformed executor id or a negative subdirectory count.
    pub fn from_spark(app: AppId, exec_id: &str, info: ExecutorShuffleInfo) -> Result<Self> {
        Ok(Self {
            app,
            exec: exec_id.parse()?,
            local_dirs: info.local_dirs,
            sub_dirs: u32::try_from(info.sub_dirs_per_local_dir)
                .map_err(|_| ShuffleError::InvalidArgument("negative subDirsPerLocalDir".into()))?,
            shuffle_manager: info.shuffle_manager,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `grpc_requests` fuzz corpus (`fuzz/corpus/grpc_requests`, inputs AFL found
    /// included) through the conversions: what converts holds the message's blocks, in order,
    /// and its ids unchanged.
    #[test]
    fn grpc_requests_corpus() {
        use prost::Message as _;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/grpc_requests");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            n += 1;
            let Some((kind, body)) = data.split_first() else {
                continue;
            };
            if kind % 2 == 0 {
                if let Ok(m) = pb::FetchBlocksRequest::decode(body)
                    && let Ok(r) = FetchRequest::try_from(&m)
                {
                    assert_eq!(r.blocks.count(), m.blocks.len());
                    assert_eq!((r.app.as_str(), r.exec.as_str()), (&*m.app_id, &*m.exec_id));
                }
            } else if let Ok(m) = pb::RegisterExecutorRequest::decode(body)
                && let Ok(r) = ExecutorRegistration::try_from(m.clone())
            {
                assert_eq!((r.app.as_str(), r.exec.as_str()), (&*m.app_id, &*m.exec_id));
            }
        }
        assert!(n > 0, "no corpus in {}", dir.display());
    }

    #[test]
    fn ids_are_validated_at_the_edge() {
        let mut r = pb::FetchBlocksRequest {
            app_id: "app-1".into(),
            exec_id: "1".into(),
            blocks: vec![pb::BlockRange {
                shuffle_id: 0,
                map_id: 1,
                start_reduce: 0,
                end_reduce: 1,
            }],
        };
        assert_eq!(FetchRequest::try_from(&r).unwrap().blocks.count(), 1);
        r.blocks[0].map_id = -1;
        assert!(FetchRequest::try_from(&r).is_err());
        r.blocks.clear();
        r.app_id = "../x".into();
        assert!(FetchRequest::try_from(&r).is_err());
        let info = ExecutorShuffleInfo {
            local_dirs: vec!["/v/a".into()],
            sub_dirs_per_local_dir: -1,
            shuffle_manager: String::new(),
        };
        assert!(ExecutorRegistration::from_spark("app-1".parse().unwrap(), "1", info).is_err());
    }
}
