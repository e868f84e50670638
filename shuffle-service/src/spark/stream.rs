//! Streams opened by `OpenBlocks`/`FetchShuffleBlocks`, one table per connection: a stream id
//! means nothing on another connection, ids are random 63-bit numbers, and a stream holds the
//! request's ids and a cursor, never an object per block. Blocks are resolved when their chunk
//! is requested.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::{Block, Executor, Fetch};

/// An open stream: an authorized fetch, whose blocks are handed out in order.
#[derive(Debug)]
pub(crate) struct Stream {
    fetch: Fetch,
}

impl Stream {
    /// A stream over the blocks of `fetch`.
    pub(crate) fn new(fetch: Fetch) -> Self {
        Self { fetch }
    }

    /// Chunk count.
    #[cfg(test)]
    pub(crate) fn chunks(&self) -> usize {
        self.fetch.len()
    }

    /// Whether every chunk has been handed out.
    pub(crate) fn is_done(&self) -> bool {
        self.fetch.taken() >= self.fetch.len()
    }

    /// The block of chunk `index`, which must be the next one (Spark's rule). The cursor
    /// advances even when the block later fails to resolve, so later chunks still work.
    ///
    /// # Errors
    /// Text for the client: an out-of-order or past-the-end index.
    pub(crate) fn take(&mut self, index: i32) -> Result<Block, String> {
        let next = self.fetch.taken();
        if usize::try_from(index).ok() != Some(next) {
            return Err(format!(
                "Received out-of-order chunk index {index} (expected {next})"
            ));
        }
        self.fetch
            .next()
            .ok_or_else(|| format!("Chunk index {index} past the end of the stream"))
    }
}

/// One connection's streams, counted in a gauge while open.
#[derive(Debug, Default)]
pub(crate) struct StreamTable {
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
    pub(crate) fn counted(gauge: prometheus::IntGauge) -> Self {
        Self {
            streams: HashMap::new(),
            gauge: Some(gauge),
        }
    }

    /// Open streams.
    pub(crate) fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether none is open.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Registers a stream under a fresh random non-negative id.
    pub(crate) fn open(&mut self, stream: Stream) -> i64 {
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
    pub(crate) fn take(&mut self, id: i64, index: i32) -> Result<(Arc<Executor>, Block), String> {
        let s = self.streams.get_mut(&id).ok_or_else(|| {
            format!("Unknown stream ID {id} on this connection (closed or never opened)")
        })?;
        let r = s.take(index);
        let exec = Arc::clone(s.fetch.executor());
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
    use crate::core::{Blocks, ReduceRange};
    use spark_protocol::ids::{MapId, ShuffleId};

    fn stream(maps: Vec<(i64, Vec<i32>)>) -> Stream {
        let maps = maps
            .into_iter()
            .map(|(m, r)| {
                let r = r.into_iter().map(|x| ReduceRange::single(x).unwrap());
                (MapId::new(m).unwrap(), r.collect())
            })
            .collect();
        let exec = Arc::new(Executor {
            local_dirs: vec!["/x".into()],
            sub_dirs: 64,
            shuffle_manager: String::new(),
        });
        let blocks = Blocks::Maps {
            shuffle: ShuffleId::new(0).unwrap(),
            maps,
        };
        Stream::new(Fetch::unchecked(exec, blocks))
    }

    #[test]
    fn chunks_in_order_then_the_stream_closes() {
        let mut t = StreamTable::default();
        let s = stream(vec![(7, vec![1, 2]), (8, vec![]), (9, vec![5])]);
        assert_eq!(s.chunks(), 3);
        let id = t.open(s);
        assert!(id >= 0);
        let got: Vec<(i64, i32)> = (0..3)
            .map(|i| match t.take(id, i).unwrap().1 {
                Block::Range(b) => (b.map.get(), b.start.get()),
                Block::File(_) => unreachable!(),
            })
            .collect();
        assert_eq!(got, vec![(7, 1), (7, 2), (9, 5)]);
        assert!(t.is_empty());
        assert!(t.take(id, 3).unwrap_err().contains("Unknown stream"));
    }

    #[test]
    fn out_of_order() {
        let mut t = StreamTable::default();
        let id = t.open(stream(vec![(3, vec![0]), (4, vec![2])]));
        assert!(t.take(id, 1).unwrap_err().contains("out-of-order"));
        assert!(matches!(t.take(id, 0).unwrap().1, Block::Range(b) if b.map.get() == 3));
        assert!(matches!(t.take(id, 1).unwrap().1, Block::Range(b) if b.end.get() == 3));
    }
}
