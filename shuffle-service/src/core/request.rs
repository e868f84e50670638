//! Typed requests of the core. Each front end builds them where it decodes bytes (the gRPC
//! API in `crate::service`, Spark's protocol in `crate::spark::request`), so that ids are
//! validated once, before the core sees them, and the core checks every limit in one place.

use spark_protocol::checksum::Algorithm;

use spark_protocol::ids::{AppId, ExecId, MapId, ReduceId, ShuffleId};

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
