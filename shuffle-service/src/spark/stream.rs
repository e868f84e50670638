//! Streams opened by `OpenBlocks`/`FetchShuffleBlocks`, one table per connection: a stream id
//! means nothing on another connection, ids are random 63-bit numbers, and a stream holds the
//! request's ids and a cursor, never an object per block. Blocks are resolved when their chunk
//! is requested.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::Executor;
use crate::ids::{MapId, ReduceId, ShuffleId};

/// What one chunk is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRef {
    /// Reduce partitions `[start, end)` of one map output.
    Shuffle {
        /// Shuffle.
        shuffle: ShuffleId,
        /// Map task attempt.
        map: MapId,
        /// First partition.
        start: ReduceId,
        /// Partition after the last.
        end: ReduceId,
    },
    /// A cached RDD block: a whole file.
    Rdd {
        /// File name `rdd_<r>_<p>`.
        name: String,
    },
}

/// The blocks of a stream, as the request listed them.
#[derive(Debug)]
pub enum Blocks {
    /// `FetchShuffleBlocks`: for each map id, its reduce ids (batch: one `[start, end)` pair).
    Fetch {
        /// Shuffle.
        shuffle: ShuffleId,
        /// Map ids.
        maps: Vec<MapId>,
        /// Reduce ids per map.
        reduces: Vec<Vec<i32>>,
        /// Batch fetch: one chunk per map.
        batch: bool,
    },
    /// `OpenBlocks` of shuffle blocks: `(map, reduce)` in order.
    Open {
        /// Shuffle.
        shuffle: ShuffleId,
        /// Blocks.
        blocks: Vec<(MapId, ReduceId)>,
    },
    /// `OpenBlocks` of RDD blocks.
    Rdd(Vec<String>),
}

impl Blocks {
    /// Number of chunks.
    pub fn chunks(&self) -> usize {
        match self {
            Self::Fetch {
                maps,
                reduces,
                batch,
                ..
            } => {
                if *batch {
                    maps.len()
                } else {
                    reduces.iter().map(Vec::len).sum()
                }
            }
            Self::Open { blocks, .. } => blocks.len(),
            Self::Rdd(v) => v.len(),
        }
    }
}

/// An open stream.
#[derive(Debug)]
pub struct Stream {
    /// The executor whose files are served.
    pub executor: Arc<Executor>,
    blocks: Blocks,
    total: usize,
    next: usize,
    // Cursor into `Blocks::Fetch` (map position, reduce position) or the flat index.
    map_pos: usize,
    reduce_pos: usize,
}

impl Stream {
    /// A stream over `blocks` of `executor`.
    pub fn new(executor: Arc<Executor>, blocks: Blocks) -> Self {
        let total = blocks.chunks();
        Self {
            executor,
            blocks,
            total,
            next: 0,
            map_pos: 0,
            reduce_pos: 0,
        }
    }

    /// Chunk count.
    pub fn chunks(&self) -> usize {
        self.total
    }

    /// Whether every chunk has been handed out.
    pub fn is_done(&self) -> bool {
        self.next >= self.total
    }

    /// The block of chunk `index`, which must be the next one (Spark's rule). The cursor
    /// advances even when the block later fails to resolve, so later chunks still work.
    ///
    /// # Errors
    /// Text for the client: an out-of-order or past-the-end index.
    pub fn take(&mut self, index: i32) -> Result<BlockRef, String> {
        if usize::try_from(index).ok() != Some(self.next) {
            return Err(format!(
                "Received out-of-order chunk index {index} (expected {})",
                self.next
            ));
        }
        if self.next >= self.total {
            return Err(format!("Chunk index {index} past the end of the stream"));
        }
        self.next += 1;
        Ok(match &self.blocks {
            Blocks::Fetch {
                shuffle,
                maps,
                reduces,
                batch,
            } => {
                while reduces[self.map_pos].len() <= self.reduce_pos && !*batch {
                    self.map_pos += 1;
                    self.reduce_pos = 0;
                }
                let map = maps[self.map_pos];
                let r = &reduces[self.map_pos];
                let (start, end) = if *batch {
                    self.map_pos += 1;
                    (r[0], r[1])
                } else {
                    let x = r[self.reduce_pos];
                    self.reduce_pos += 1;
                    (x, x + 1)
                };
                BlockRef::Shuffle {
                    shuffle: *shuffle,
                    map,
                    start: ReduceId::new(start).expect("validated at open"),
                    end: ReduceId::new(end).expect("validated at open"),
                }
            }
            Blocks::Open { shuffle, blocks } => {
                let (map, r) = blocks[self.next - 1];
                BlockRef::Shuffle {
                    shuffle: *shuffle,
                    map,
                    start: r,
                    end: ReduceId::new(r.get() + 1).expect("validated at open"),
                }
            }
            Blocks::Rdd(names) => BlockRef::Rdd {
                name: names[self.next - 1].clone(),
            },
        })
    }
}

/// One connection's streams, counted in a gauge while open.
#[derive(Debug, Default)]
pub struct StreamTable {
    streams: HashMap<i64, Stream>,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for StreamTable {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.sub(self.streams.len() as i64);
        }
    }
}

impl StreamTable {
    /// A table whose open streams are counted in `gauge`.
    pub fn counted(gauge: prometheus::IntGauge) -> Self {
        Self {
            streams: HashMap::new(),
            gauge: Some(gauge),
        }
    }

    /// Open streams.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Registers a stream under a fresh random non-negative id.
    pub fn open(&mut self, stream: Stream) -> i64 {
        loop {
            let id = (rand::random::<u64>() >> 1) as i64;
            if let std::collections::hash_map::Entry::Vacant(v) = self.streams.entry(id) {
                v.insert(stream);
                if let Some(g) = &self.gauge {
                    g.inc();
                }
                return id;
            }
        }
    }

    /// The block of chunk `index` of stream `id`, and the stream's executor; the stream is
    /// dropped after its last chunk.
    ///
    /// # Errors
    /// Text for the client.
    pub fn take(&mut self, id: i64, index: i32) -> Result<(Arc<Executor>, BlockRef), String> {
        let s = self.streams.get_mut(&id).ok_or_else(|| {
            format!("Unknown stream ID {id} on this connection (closed or never opened)")
        })?;
        let r = s.take(index);
        let exec = Arc::clone(&s.executor);
        if s.is_done() {
            self.streams.remove(&id);
            if let Some(g) = &self.gauge {
                g.dec();
            }
        }
        r.map(|b| (exec, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Arc<Executor> {
        Arc::new(Executor {
            local_dirs: vec!["/x".into()],
            sub_dirs: 64,
            shuffle_manager: String::new(),
        })
    }

    fn ids(v: &[i64]) -> Vec<MapId> {
        v.iter().map(|m| MapId::new(*m).unwrap()).collect()
    }

    #[test]
    fn fetch_order_skips_empty_lists_and_closes() {
        let mut t = StreamTable::default();
        let s = Stream::new(
            exec(),
            Blocks::Fetch {
                shuffle: ShuffleId::new(0).unwrap(),
                maps: ids(&[7, 8, 9]),
                reduces: vec![vec![1, 2], vec![], vec![5]],
                batch: false,
            },
        );
        assert_eq!(s.chunks(), 3);
        let id = t.open(s);
        assert!(id >= 0);
        let got: Vec<(i64, i32)> = (0..3)
            .map(|i| match t.take(id, i).unwrap().1 {
                BlockRef::Shuffle { map, start, .. } => (map.get(), start.get()),
                BlockRef::Rdd { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(got, vec![(7, 1), (7, 2), (9, 5)]);
        assert!(t.is_empty());
        assert!(t.take(id, 3).unwrap_err().contains("Unknown stream"));
    }

    #[test]
    fn batch_and_out_of_order() {
        let mut t = StreamTable::default();
        let id = t.open(Stream::new(
            exec(),
            Blocks::Fetch {
                shuffle: ShuffleId::new(1).unwrap(),
                maps: ids(&[3, 4]),
                reduces: vec![vec![0, 4], vec![2, 5]],
                batch: true,
            },
        ));
        assert!(t.take(id, 1).unwrap_err().contains("out-of-order"));
        assert_eq!(
            t.take(id, 0).unwrap().1,
            BlockRef::Shuffle {
                shuffle: ShuffleId::new(1).unwrap(),
                map: MapId::new(3).unwrap(),
                start: ReduceId::new(0).unwrap(),
                end: ReduceId::new(4).unwrap(),
            }
        );
        assert!(matches!(
            t.take(id, 1).unwrap().1,
            BlockRef::Shuffle { end, .. } if end.get() == 5
        ));
    }
}
