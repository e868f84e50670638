//! WriteMapOutput: map output from clients that are not Spark, in Spark's exact layout.
//!
//! The data goes to a temporary file next to its final place, is fsynced and renamed; then the
//! index is written the same way, last, so a visible index always describes complete data
//! (readers, Spark's included, look for the index first). Any failure removes the temporary
//! files and leaves earlier output untouched; a crash leaves them behind, and the leftover
//! sweep ([`is_temp_name`], skipping the [`InFlight`] ones) removes them. Every directory is
//! created and every file created and renamed through handles opened beneath the volume root,
//! so no symbolic link planted by an executor is followed. Space is reserved on the volume first: a write
//! that does not fit fails with RESOURCE_EXHAUSTED before a byte is written.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{AtFlags, Mode, OFlags};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::core::execfs::RootDir;
use crate::core::registry::Executor;
use crate::core::volume::Volumes;
use crate::error::{Result, ShuffleError};
use spark_protocol::ids::{MapId, ShuffleId};
use spark_protocol::layout;

/// Most partitions one map output may have.
pub(super) const MAX_PARTITIONS: usize = 1 << 20;

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

/// Marks names of this writer's temporary files: `<final name>.tmp-<16 hex digits>`. Only
/// such names are ever swept as leftovers; Spark's own temporary files (`.<uuid>`) belong to
/// their executor.
const TEMP_MARK: &str = ".tmp-";

/// Whether `name` is a temporary file of this writer (a leftover after a crash, unless a write
/// is in flight).
pub(super) fn is_temp_name(name: &str) -> bool {
    let Some((base, suffix)) = name.rsplit_once(TEMP_MARK) else {
        return false;
    };
    base.starts_with("shuffle_")
        && (base.ends_with(".data") || base.ends_with(".index"))
        && suffix.len() == 16
        && suffix.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Temporary files being written now; the leftover sweep skips them.
#[derive(Debug, Default)]
pub(super) struct InFlight(Mutex<HashSet<PathBuf>>);

impl InFlight {
    fn insert(&self, p: &Path) {
        self.lock().insert(p.to_path_buf());
    }

    fn remove(&self, p: &Path) {
        self.lock().remove(p);
    }

    /// Whether a temporary file is being written.
    pub(super) fn contains(&self, p: &Path) -> bool {
        self.lock().contains(p)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One file being written: its directory handle (opened beneath the volume root, no link
/// followed), its final and temporary names; the temporary file is removed on drop unless it
/// was renamed into place.
struct Pending<'a> {
    dir: OwnedFd,
    name: OsString,
    tmp: OsString,
    tmp_path: PathBuf,
    path: PathBuf,
    in_flight: &'a InFlight,
    done: bool,
}

impl<'a> Pending<'a> {
    fn new(root: &RootDir, path: &Path, in_flight: &'a InFlight) -> Result<Self> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(ShuffleError::InvalidArgument("no file name".into()));
        };
        let dir = root.create_dirs(parent).map_err(|e| refused(parent, e))?;
        let mut raw = [0u8; 8];
        rand::fill(&mut raw[..]);
        let mut tmp = name.to_owned();
        tmp.push(format!("{TEMP_MARK}{}", hex::encode(raw)));
        let tmp_path = parent.join(&tmp);
        in_flight.insert(&tmp_path);
        Ok(Self {
            dir,
            name: name.to_owned(),
            tmp,
            tmp_path,
            path: path.to_path_buf(),
            in_flight,
            done: false,
        })
    }

    fn exists(&self) -> bool {
        rustix::fs::statat(&self.dir, &*self.name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    fn create(&self) -> Result<File> {
        rustix::fs::openat(
            &self.dir,
            &*self.tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(File::from)
        .map_err(|e| ShuffleError::io(&self.tmp_path, e.into()))
    }

    /// Renames the synced temporary file into place (replacing nothing: the caller checked).
    fn commit(&mut self) -> Result<()> {
        rustix::fs::renameat(&self.dir, &*self.tmp, &self.dir, &*self.name)
            .map_err(|e| ShuffleError::io(&self.path, e.into()))?;
        self.done = true;
        Ok(())
    }

    fn sync_dir(&self) -> Result<()> {
        rustix::fs::fsync(&self.dir).map_err(|e| ShuffleError::io(&self.path, e.into()))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = rustix::fs::unlinkat(&self.dir, &*self.tmp, AtFlags::empty());
        }
        self.in_flight.remove(&self.tmp_path);
    }
}

fn refused(path: &Path, e: std::io::Error) -> ShuffleError {
    if crate::core::execfs::is_link_refusal(&e) {
        ShuffleError::PermissionDenied(format!(
            "{} resolves through a symbolic link",
            path.display()
        ))
    } else {
        ShuffleError::io(path, e)
    }
}

/// Writes a map output whose data arrives on `chunks` (blocking; run on the blocking pool).
/// Returns the bytes written.
///
/// # Errors
/// Already existing output, a volume without room, a data length that disagrees with the
/// header, a symbolic link on the way, or I/O errors.
pub(super) fn write(
    exec: &Executor,
    volumes: &Volumes,
    in_flight: &InFlight,
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
    let volume_of = |p: &Path| {
        exec.local_dirs
            .iter()
            .find(|d| p.starts_with(d))
            .and_then(|d| volumes.containing(d))
            .ok_or_else(|| {
                ShuffleError::InvalidArgument("executor directory left its volume".into())
            })
    };
    let (data_vol, index_vol) = (volume_of(&data)?, volume_of(&index)?);
    let mut index_file = Pending::new(&index_vol.dir, &index, in_flight)?;
    if index_file.exists() {
        return Err(ShuffleError::AlreadyExists(format!(
            "map output {} of shuffle {}",
            out.map, out.shuffle
        )));
    }
    let mut data_file = Pending::new(&data_vol.dir, &data, in_flight)?;
    let index_bytes = layout::encode_index(&out.lengths);
    let needed = total + index_bytes.len() as u64;
    data_vol.reserve(needed)?;
    let result = write_files(
        &mut data_file,
        &mut index_file,
        total,
        &index_bytes,
        &mut chunks,
    );
    if result.is_err() {
        data_vol.release(needed);
    }
    result.map(|()| total)
}

fn write_files(
    data: &mut Pending<'_>,
    index: &mut Pending<'_>,
    total: u64,
    index_bytes: &[u8],
    chunks: &mut mpsc::Receiver<Result<Bytes>>,
) -> Result<()> {
    let mut f = data.create()?;
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
            .map_err(|e| ShuffleError::io(&data.tmp_path, e))?;
    }
    if written != total {
        return Err(ShuffleError::InvalidArgument(format!(
            "{written} bytes of data, the header announced {total}"
        )));
    }
    f.sync_all()
        .map_err(|e| ShuffleError::io(&data.tmp_path, e))?;
    drop(f);
    data.commit()?;

    let mut f = index.create()?;
    f.write_all(index_bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ShuffleError::io(&index.tmp_path, e))?;
    drop(f);
    index.commit()?;
    data.sync_dir()?;
    index.sync_dir()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names() {
        assert!(is_temp_name("shuffle_0_1_0.data.tmp-0123456789abcdef"));
        assert!(is_temp_name("shuffle_0_1_0.index.tmp-0123456789abcdef"));
        assert!(!is_temp_name("shuffle_0_1_0.data"));
        assert!(!is_temp_name("shuffle_0_1_0.data.tmp-0123"));
        assert!(!is_temp_name(
            "shuffle_0_1_0.data.5f1d0c4e-0c1a-4b8e-9a55-2d1f2a3b4c5d"
        ));
        assert!(!is_temp_name("rdd_0_1.tmp-0123456789abcdef"));
    }
}
