//! Block resolution and reading.
//!
//! A block (a reduce range of one map output) resolves to a segment of the `.data` file via the
//! `.index` file, both placed by Spark's formula among the executor's registered directories.
//! Index contents are cached in a cache bounded by bytes (SPARK-33206: the JVM's estimate was
//! wrong and blew the heap). Data files are opened when their block is sent, never earlier, and
//! the opened path is verified to lie under the executor's directories (a symlink planted in an
//! executor directory cannot lead out).

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::core::registry::Executor;
use crate::core::volume::Volumes;
use crate::error::{Result, ShuffleError};
use spark_protocol::ids::{MapId, ReduceId, ShuffleId};
use spark_protocol::layout;

/// A byte range of a data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Data file.
    pub path: PathBuf,
    /// Start offset.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// Index contents by path, bounded by bytes.
#[derive(Debug)]
pub(super) struct IndexCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<PathBuf, Arc<Vec<u64>>>,
    bytes: usize,
}

/// Bytes charged per cached index besides its offsets (key, map entry, allocation).
const ENTRY_OVERHEAD: usize = 160;

fn weight(path: &Path, offsets: &[u64]) -> usize {
    offsets.len() * 8 + path.as_os_str().len() + ENTRY_OVERHEAD
}

impl IndexCache {
    /// A cache holding at most `capacity` bytes.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(CacheInner::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cached offsets, or loads them (blocking I/O).
    ///
    /// # Errors
    /// [`ShuffleError::BlockNotFound`] for a missing index, [`ShuffleError::Corrupt`] for a
    /// malformed one.
    pub(super) fn get(
        &self,
        volumes: &Volumes,
        exec: &Executor,
        path: &Path,
    ) -> Result<Arc<Vec<u64>>> {
        if let Some(v) = self.lock().map.get(path) {
            return Ok(Arc::clone(v));
        }
        let (mut file, size) = open_verified(volumes, exec, path)?;
        if size > (crate::core::writer::MAX_PARTITIONS as u64 + 1) * 8 {
            return Err(ShuffleError::Corrupt(format!(
                "{}: index of {size} bytes",
                path.display()
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| ShuffleError::io(path, e))?;
        let offsets = Arc::new(
            layout::parse_index(path, &bytes).map_err(|e| ShuffleError::Corrupt(e.to_string()))?,
        );
        let w = weight(path, &offsets);
        if w <= self.capacity {
            let mut inner = self.lock();
            while inner.bytes + w > self.capacity {
                // Evict any entry; indexes are immutable, so a re-read is always correct.
                let Some(k) = inner.map.keys().next().cloned() else {
                    break;
                };
                if let Some(v) = inner.map.remove(&k) {
                    inner.bytes -= weight(&k, &v);
                }
            }
            if let Some(old) = inner.map.insert(path.to_owned(), Arc::clone(&offsets)) {
                inner.bytes -= weight(path, &old);
            }
            inner.bytes += w;
        }
        Ok(offsets)
    }

    /// Forgets an index (its files were deleted or rewritten).
    pub(super) fn forget(&self, path: &Path) {
        let mut inner = self.lock();
        if let Some(v) = inner.map.remove(path) {
            inner.bytes -= weight(path, &v);
        }
    }

    /// Forgets every index under `dir`.
    pub(super) fn forget_under(&self, dir: &Path) {
        let mut inner = self.lock();
        let keys: Vec<PathBuf> = inner
            .map
            .keys()
            .filter(|k| k.starts_with(dir))
            .cloned()
            .collect();
        for k in keys {
            if let Some(v) = inner.map.remove(&k) {
                inner.bytes -= weight(&k, &v);
            }
        }
    }
}

/// Resolves reduce partitions `[start, end)` of one map output (blocking I/O).
///
/// # Errors
/// Not found, out of range, or corrupt index.
pub(super) fn resolve(
    volumes: &Volumes,
    exec: &Executor,
    cache: &IndexCache,
    shuffle: ShuffleId,
    map: MapId,
    start: ReduceId,
    end: ReduceId,
) -> Result<Segment> {
    let index = layout::placement(
        &exec.local_dirs,
        exec.sub_dirs,
        &layout::index_file(shuffle, map),
    );
    let offsets = cache.get(volumes, exec, &index)?;
    let partitions = offsets.len() - 1;
    let (s, e) = (start.get(), end.get());
    if s >= e || e as usize > partitions {
        return Err(ShuffleError::OutOfRange {
            start: s,
            end: e,
            partitions,
        });
    }
    let offset = offsets[s as usize];
    let len = offsets[e as usize] - offset;
    Ok(Segment {
        path: layout::placement(
            &exec.local_dirs,
            exec.sub_dirs,
            &layout::data_file(shuffle, map),
        ),
        offset,
        len,
    })
}

/// Opens a file of an executor for reading, refusing any path that leaves the executor's
/// directories; returns the file and its size.
///
/// Registered directories are canonical and file paths are built from them with names that
/// hold no `/` or `..`; the file is opened beneath its volume's root handle with no symbolic
/// link followed ([`crate::core::execfs`]), so a link planted in an executor directory, or a
/// registered directory replaced by one, cannot lead out.
///
/// # Errors
/// Not found, refused path, I/O errors.
pub(super) fn open_verified(
    volumes: &Volumes,
    exec: &Executor,
    path: &Path,
) -> Result<(std::fs::File, u64)> {
    let root = exec
        .local_dirs
        .iter()
        .any(|d| path.starts_with(d))
        .then(|| volumes.containing(path))
        .flatten()
        .ok_or_else(|| {
            ShuffleError::PermissionDenied(format!(
                "{} lies outside the executor's directories",
                path.display()
            ))
        })?;
    root.dir.open_file(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ShuffleError::BlockNotFound(path.display().to_string())
        } else if crate::core::execfs::is_link_refusal(&e) {
            ShuffleError::PermissionDenied(format!(
                "{} resolves through a symbolic link",
                path.display()
            ))
        } else {
            ShuffleError::io(path, e)
        }
    })
}

/// A block opened for sending: the file (opened beneath its volume root, no link followed)
/// and the block's byte range in it, checked against the file's size. Each front end sends
/// it its own way: chunks for gRPC, `sendfile` for Spark.
#[derive(Debug)]
pub struct OpenBlock {
    /// The data file.
    pub file: std::fs::File,
    /// Where the block starts.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// The file's path (logs).
    pub path: PathBuf,
}

impl OpenBlock {
    /// Opens `seg`'s file and checks that the file holds the whole segment.
    ///
    /// # Errors
    /// Not found, refused path, or a data file shorter than its index says.
    pub fn open(volumes: &Volumes, exec: &Executor, seg: &Segment) -> Result<Self> {
        let (file, size) = open_verified(volumes, exec, &seg.path)?;
        if seg.offset + seg.len > size {
            return Err(ShuffleError::Corrupt(format!(
                "{}: {} bytes, index points to {}",
                seg.path.display(),
                size,
                seg.offset + seg.len
            )));
        }
        Ok(Self {
            file,
            offset: seg.offset,
            len: seg.len,
            path: seg.path.clone(),
        })
    }

    /// Opens a whole file of the executor by name (an RDD block), placed by Spark's formula.
    ///
    /// # Errors
    /// Not found, refused path.
    pub fn whole(volumes: &Volumes, exec: &Executor, name: &str) -> Result<Self> {
        let path = layout::placement(&exec.local_dirs, exec.sub_dirs, name);
        let (file, len) = open_verified(volumes, exec, &path)?;
        Ok(Self {
            file,
            offset: 0,
            len,
            path,
        })
    }
}

/// An open block read in chunks (the gRPC front end).
#[derive(Debug)]
pub struct SegmentReader {
    file: std::fs::File,
    left: u64,
    path: PathBuf,
}

impl SegmentReader {
    /// Reads `block` from its start.
    ///
    /// # Errors
    /// I/O errors seeking.
    pub fn new(mut block: OpenBlock) -> Result<Self> {
        block
            .file
            .seek(SeekFrom::Start(block.offset))
            .map_err(|e| ShuffleError::io(&block.path, e))?;
        Ok(Self {
            file: block.file,
            left: block.len,
            path: block.path,
        })
    }

    /// The next chunk of at most `max` bytes, or `None` at the end.
    ///
    /// # Errors
    /// I/O errors, or a file that shrank.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
        if self.left == 0 {
            return Ok(None);
        }
        let n = usize::try_from(self.left).unwrap_or(usize::MAX).min(max);
        // read_to_end fills spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(n);
        let got = (&mut self.file)
            .take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|e| ShuffleError::io(&self.path, e))?;
        if got != n {
            return Err(ShuffleError::Corrupt(format!(
                "{}: file shrank while read",
                self.path.display()
            )));
        }
        self.left -= n as u64;
        Ok(Some(Bytes::from(buf)))
    }
}
