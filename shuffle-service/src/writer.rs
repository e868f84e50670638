//! WriteMapOutput: map output from clients that are not Spark, in Spark's exact layout.
//!
//! The data goes to a temporary file next to its final place, is fsynced and renamed; then the
//! index is written the same way, last, so a visible index always describes complete data
//! (readers, Spark's included, look for the index first). Any failure removes the temporary
//! files and leaves earlier output untouched. Space is reserved on the volume first: a write
//! that does not fit fails with RESOURCE_EXHAUSTED before a byte is written.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::{Result, ShuffleError};
use crate::ids::{MapId, ShuffleId};
use crate::layout;
use crate::registry::Executor;
use crate::volume::Volumes;

/// Most partitions one map output may have.
pub const MAX_PARTITIONS: usize = 1 << 20;

/// A map output about to be written.
#[derive(Debug, Clone)]
pub struct MapOutput {
    /// Shuffle.
    pub shuffle: ShuffleId,
    /// Map attempt.
    pub map: MapId,
    /// Partition lengths.
    pub lengths: Vec<u64>,
}

impl MapOutput {
    /// Total data bytes.
    ///
    /// # Errors
    /// [`ShuffleError::InvalidArgument`] for too many partitions or an overflowing total.
    pub fn total(&self) -> Result<u64> {
        if self.lengths.is_empty() || self.lengths.len() > MAX_PARTITIONS {
            return Err(ShuffleError::InvalidArgument(format!(
                "a map output has 1 to {MAX_PARTITIONS} partitions"
            )));
        }
        self.lengths
            .iter()
            .try_fold(0u64, |a, l| a.checked_add(*l))
            .filter(|t| *t <= i64::MAX as u64)
            .ok_or_else(|| ShuffleError::InvalidArgument("partition lengths overflow".into()))
    }
}

/// Deletes temporary files unless disarmed.
struct TempGuard(Vec<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let mut raw = [0u8; 8];
    rand::fill(&mut raw[..]);
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp-{}", hex::encode(raw)));
    PathBuf::from(s)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ShuffleError::io(dir, e))
}

/// Writes a map output whose data arrives on `chunks` (blocking; run on the blocking pool).
/// Returns the bytes written.
///
/// # Errors
/// Already existing output, a volume without room, a data length that disagrees with the
/// header, or I/O errors.
pub fn write(
    exec: &Executor,
    volumes: &Volumes,
    out: &MapOutput,
    mut chunks: mpsc::Receiver<Result<Bytes>>,
) -> Result<u64> {
    let total = out.total()?;
    let data = layout::placement(
        &exec.local_dirs,
        exec.sub_dirs,
        &layout::data_file(out.shuffle, out.map),
    );
    let index = layout::placement(
        &exec.local_dirs,
        exec.sub_dirs,
        &layout::index_file(out.shuffle, out.map),
    );
    if index.exists() {
        return Err(ShuffleError::AlreadyExists(format!(
            "map output {} of shuffle {}",
            out.map, out.shuffle
        )));
    }
    let volume = exec
        .local_dirs
        .iter()
        .find(|d| data.starts_with(d))
        .and_then(|d| volumes.containing(d))
        .ok_or_else(|| {
            ShuffleError::InvalidArgument("executor directory left its volume".into())
        })?;
    let index_bytes = layout::encode_index(&out.lengths);
    let needed = total + index_bytes.len() as u64;
    volume.reserve(needed)?;
    let result = write_files(&data, &index, total, &index_bytes, &mut chunks);
    if result.is_err() {
        volume.release(needed);
    }
    result.map(|()| total)
}

fn write_files(
    data: &Path,
    index: &Path,
    total: u64,
    index_bytes: &[u8],
    chunks: &mut mpsc::Receiver<Result<Bytes>>,
) -> Result<()> {
    for p in [data, index] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ShuffleError::io(dir, e))?;
        }
    }
    let data_tmp = temp_name(data);
    let index_tmp = temp_name(index);
    let mut guard = TempGuard(vec![data_tmp.clone(), index_tmp.clone()]);

    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&data_tmp)
        .map_err(|e| ShuffleError::io(&data_tmp, e))?;
    let mut written: u64 = 0;
    while let Some(chunk) = chunks.blocking_recv() {
        let chunk = chunk?;
        written += chunk.len() as u64;
        if written > total {
            return Err(ShuffleError::InvalidArgument(format!(
                "more data than the {total} bytes the header announced"
            )));
        }
        f.write_all(&chunk)
            .map_err(|e| ShuffleError::io(&data_tmp, e))?;
    }
    if written != total {
        return Err(ShuffleError::InvalidArgument(format!(
            "{written} bytes of data, the header announced {total}"
        )));
    }
    f.sync_all().map_err(|e| ShuffleError::io(&data_tmp, e))?;
    drop(f);
    std::fs::rename(&data_tmp, data).map_err(|e| ShuffleError::io(data, e))?;

    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&index_tmp)
        .map_err(|e| ShuffleError::io(&index_tmp, e))?;
    f.write_all(index_bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ShuffleError::io(&index_tmp, e))?;
    drop(f);
    std::fs::rename(&index_tmp, index).map_err(|e| ShuffleError::io(index, e))?;
    for dir in [data.parent(), index.parent()].into_iter().flatten() {
        sync_dir(dir)?;
    }
    guard.0.clear();
    Ok(())
}
