//! Reading blocks, the one door both front ends fetch through: [`Core::fetch`] checks the
//! caller's authority over the application and the request's size, then hands out a
//! [`Fetch`], the executor with a cursor over the blocks requested; each block is opened when
//! its turn comes ([`Core::open_block`]). Spark's corruption diagnosis reads the same files.

use std::sync::Arc;

use spark_protocol::checksum;
use spark_protocol::message::Cause;

use super::{BlockRange, Blocks, Diagnosis, FetchRequest};
use super::{Core, Executor, OpenBlock, Presented, blocks};
use crate::error::{Result, ShuffleError};
use spark_protocol::ids::AppId;
use spark_protocol::layout;

/// Who asks, as each front end authenticated it.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// A gRPC caller and the credential it presented.
    Grpc(Presented<'a>),
    /// A Spark-protocol client.
    Spark {
        /// The application the connection authenticated as (`None`: authentication is off).
        client: Option<&'a AppId>,
    },
}

/// One block of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Reduce partitions of one map output.
    Range(BlockRange),
    /// A whole file of the executor (Spark's cached RDD block `rdd_<rdd>_<partition>`).
    File(String),
}

/// An authorized fetch: the executor whose files are served and a cursor over the blocks, in
/// the order they were requested.
#[derive(Debug)]
pub struct Fetch {
    executor: Arc<Executor>,
    blocks: Blocks,
    total: usize,
    taken: usize,
    /// Cursor into `Blocks::Maps`: map position, range position.
    map_pos: usize,
    range_pos: usize,
}

impl Fetch {
    fn new(executor: Arc<Executor>, blocks: Blocks) -> Self {
        Self {
            executor,
            total: blocks.count(),
            blocks,
            taken: 0,
            map_pos: 0,
            range_pos: 0,
        }
    }

    /// A fetch no caller was checked for, for tests of what consumes fetches.
    #[cfg(test)]
    pub(crate) fn unchecked(executor: Arc<Executor>, blocks: Blocks) -> Self {
        Self::new(executor, blocks)
    }

    /// The executor whose files are served.
    pub fn executor(&self) -> &Arc<Executor> {
        &self.executor
    }

    /// How many blocks the fetch names.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether it names none.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// How many blocks were handed out.
    pub fn taken(&self) -> usize {
        self.taken
    }
}

impl Iterator for Fetch {
    type Item = Block;

    fn next(&mut self) -> Option<Block> {
        let block = match &self.blocks {
            Blocks::Ranges(v) => Block::Range(*v.get(self.taken)?),
            Blocks::Files(v) => Block::File(v.get(self.taken)?.clone()),
            Blocks::Maps { shuffle, maps } => {
                // Map outputs that list no partition are passed over.
                while maps.get(self.map_pos)?.1.len() <= self.range_pos {
                    self.map_pos += 1;
                    self.range_pos = 0;
                }
                let (map, ranges) = &maps[self.map_pos];
                let range = ranges[self.range_pos];
                self.range_pos += 1;
                Block::Range(range.of(*shuffle, *map))
            }
        };
        self.taken += 1;
        Some(block)
    }
}

impl Core {
    /// Checks a caller's right to an application. gRPC: its token, or an admin token. Spark's
    /// protocol: the application the connection authenticated as, and an application
    /// registered through the gRPC API is gRPC's alone, whatever the connection authenticated
    /// with (otherwise Spark's own model holds: open when authentication is off).
    ///
    /// # Errors
    /// [`ShuffleError::Unauthenticated`] with no credential, [`ShuffleError::PermissionDenied`]
    /// with another application's, [`ShuffleError::ClientMismatch`] for a Spark connection of
    /// another application, [`ShuffleError::HeldByGrpc`].
    pub fn authorize(&self, app: &AppId, caller: &Caller<'_>) -> Result<()> {
        match caller {
            Caller::Grpc(presented) => {
                if presented.admin {
                    return Ok(());
                }
                self.inner
                    .registry
                    .check_token(app, presented.token)
                    .inspect_err(|_| self.refused("grpc"))
            }
            Caller::Spark { client } => {
                if let Some(c) = client
                    && *c != app
                {
                    return Err(ShuffleError::ClientMismatch {
                        client: c.to_string(),
                        app: app.to_string(),
                    });
                }
                self.authorize_spark(app)
            }
        }
    }

    /// Opens a fetch: checks the caller's authority, the number of blocks against
    /// `--max-fetch-blocks` (the same limit for both protocols), and finds the executor.
    ///
    /// # Errors
    /// See [`Core::authorize`]; [`ShuffleError::InvalidArgument`] for too many blocks (or none
    /// over gRPC); [`ShuffleError::NotFound`] for an unknown application or executor.
    pub fn fetch(&self, r: FetchRequest, caller: &Caller<'_>) -> Result<Fetch> {
        self.authorize(&r.app, caller)?;
        let n = r.blocks.count();
        let max = self.inner.max_fetch_blocks;
        // Spark's protocol answers a request of no block (a stream without chunks); the gRPC
        // API refuses it.
        let empty_ok = matches!(caller, Caller::Spark { .. });
        if (n == 0 && !empty_ok) || n > max {
            return Err(ShuffleError::InvalidArgument(format!(
                "{n} blocks in one request; 1 to {max} are served"
            )));
        }
        let executor = self.executor(&r.app, &r.exec)?;
        Ok(Fetch::new(executor, r.blocks))
    }

    /// Resolves a block of a fetch and opens it for sending (blocking).
    ///
    /// # Errors
    /// An unknown or invalid block, a corrupt or missing index, a missing file, a link on the
    /// way (refused), I/O.
    pub fn open_block(&self, exec: &Executor, block: &Block) -> Result<OpenBlock> {
        match block {
            Block::Range(range) => {
                let seg = self.resolve(exec, range)?;
                OpenBlock::open(&self.inner.volumes, exec, &seg)
            }
            Block::File(name) => OpenBlock::whole(&self.inner.volumes, exec, name),
        }
    }

    /// Spark's `DiagnoseCorruption`: compares the reader's checksum of a partition with the
    /// writer's (its `.checksum.<ALGO>` file) and the data on disk. Whatever cannot be read is
    /// an unknown issue.
    pub async fn diagnose(&self, app: &AppId, d: Diagnosis) -> Cause {
        let Ok(executor) = self.executor(app, &d.exec) else {
            return Cause::UnknownIssue;
        };
        let core = self.clone();
        tokio::task::spawn_blocking(move || {
            let block = d.block;
            let Ok(seg) = core.resolve(&executor, &block) else {
                return Cause::UnknownIssue;
            };
            let file = layout::placement(
                &executor.local_dirs,
                executor.sub_dirs,
                &layout::checksum_file(block.shuffle, block.map, d.algorithm.as_str()),
            );
            let volumes = &core.inner.volumes;
            let (Ok((sums, _)), Ok((data, _))) = (
                blocks::open_verified(volumes, &executor, &file),
                blocks::open_verified(volumes, &executor, &seg.path),
            ) else {
                return Cause::UnknownIssue;
            };
            let range = (seg.offset, seg.len);
            let reduce = block.start.get() as u32;
            checksum::diagnose(d.algorithm, sums, data, reduce, range, d.checksum).unwrap_or_else(
                |e| {
                    tracing::info!(file = %seg.path.display(), error = %e, "cannot diagnose corruption");
                    Cause::UnknownIssue
                },
            )
        })
        .await
        .unwrap_or(Cause::UnknownIssue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ReduceRange;
    use spark_protocol::ids::{MapId, ShuffleId};

    fn exec() -> Arc<Executor> {
        Arc::new(Executor {
            local_dirs: vec!["/x".into()],
            sub_dirs: 64,
            shuffle_manager: String::new(),
        })
    }

    fn reduces(b: Block) -> (i64, i32, i32) {
        match b {
            Block::Range(r) => (r.map.get(), r.start.get(), r.end.get()),
            Block::File(_) => unreachable!(),
        }
    }

    #[test]
    fn map_outputs_without_partitions_are_passed_over() {
        let single = |r| ReduceRange::single(r).unwrap();
        let maps = vec![
            (MapId::new(7).unwrap(), vec![single(1), single(2)]),
            (MapId::new(8).unwrap(), vec![]),
            (MapId::new(9).unwrap(), vec![single(5)]),
        ];
        let f = Fetch::new(
            exec(),
            Blocks::Maps {
                shuffle: ShuffleId::new(0).unwrap(),
                maps,
            },
        );
        assert_eq!(f.len(), 3);
        let got: Vec<_> = f.map(reduces).collect();
        assert_eq!(got, vec![(7, 1, 2), (7, 2, 3), (9, 5, 6)]);
    }

    #[test]
    fn batches_are_one_block_per_map_output() {
        let maps = vec![
            (
                MapId::new(3).unwrap(),
                vec![ReduceRange::new(0, 4).unwrap()],
            ),
            (
                MapId::new(4).unwrap(),
                vec![ReduceRange::new(2, 5).unwrap()],
            ),
        ];
        let mut f = Fetch::new(
            exec(),
            Blocks::Maps {
                shuffle: ShuffleId::new(1).unwrap(),
                maps,
            },
        );
        assert_eq!(f.next().map(reduces), Some((3, 0, 4)));
        assert_eq!(f.next().map(reduces), Some((4, 2, 5)));
        assert_eq!(f.next(), None);
        assert_eq!(f.taken(), 2);
    }

    #[test]
    fn ranges_that_are_not_one_are_refused() {
        assert!(ReduceRange::new(3, 3).is_none());
        assert!(ReduceRange::new(-1, 3).is_none());
        assert!(ReduceRange::single(i32::MAX).is_none());
        assert!(ReduceRange::single(-1).is_none());
        assert_eq!(ReduceRange::single(4).unwrap().end().get(), 5);
    }
}
