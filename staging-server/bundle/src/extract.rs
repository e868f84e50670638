//! Safe extraction of a downloaded bundle.
//!
//! The `tar` crate's `unpack` has had traversal bugs, so entries are filtered here and written
//! by hand. Accepted: regular files whose name is one valid path component ([`names`]).
//! Refused: any other entry type (symlinks, hard links, directories, devices, FIFOs),
//! absolute or multi-component paths, duplicates, and archives over the caps on entry count,
//! entry size, total size or decompression ratio. Files are created with create-new in a
//! temporary directory inside the destination and moved into place only when the whole archive
//! passed; an existing file is never overwritten.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::read::GzDecoder;

use staging_api::names;

/// Caps applied while extracting.
#[derive(Debug, Clone, Copy)]
pub struct ExtractLimits {
    /// Entries in the archive.
    pub max_entries: u64,
    /// Bytes of one file.
    pub max_entry_bytes: u64,
    /// Bytes of all files.
    pub max_total_bytes: u64,
    /// Uncompressed bytes per compressed byte, checked once past [`RATIO_GRACE`].
    pub max_ratio: u64,
}

/// Uncompressed bytes before the ratio cap applies (small archives compress very well).
pub const RATIO_GRACE: u64 = 1 << 20;

impl Default for ExtractLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_entry_bytes: 2 << 30,
            max_total_bytes: 8 << 30,
            max_ratio: 200,
        }
    }
}

/// Why an archive was refused or could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// The archive breaks a safety rule.
    #[error("unsafe archive: {0}")]
    Unsafe(String),
    /// The archive is corrupt.
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    /// Writing the files failed.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io {
        path: path.to_owned(),
        source,
    }
}

struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Extracts the tar.gz at `archive` into `dest` (which must exist); returns the file names in
/// archive order. A file already in `dest` with the same content is left as it is, so a
/// re-run (an init container restarted after it finished or was killed midway) succeeds.
///
/// # Errors
/// [`ExtractError`]: among others a file of `dest` with other content (never overwritten);
/// on error nothing new is left in `dest`.
pub fn extract(
    archive: &Path,
    dest: &Path,
    limits: ExtractLimits,
) -> Result<Vec<String>, ExtractError> {
    let tmp = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(dest)
        .map_err(io_err(dest))?;
    let names = unpack_into(archive, tmp.path(), limits)?;
    // Refuse before moving anything, so a clash leaves dest untouched.
    let mut present = HashSet::new();
    for name in &names {
        let target = dest.join(name);
        match target.symlink_metadata() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&target)(e)),
            Ok(m) if m.is_file() && same_content(&tmp.path().join(name), &target)? => {
                present.insert(name.clone());
            }
            Ok(_) => {
                return Err(ExtractError::Unsafe(format!(
                    "{name} already exists in the destination with other content"
                )));
            }
        }
    }
    for name in names.iter().filter(|n| !present.contains(*n)) {
        let from = tmp.path().join(name);
        let to = dest.join(name);
        // A hard link fails if the target exists, which makes the move no-overwrite even
        // against a file created after the check above.
        fs::hard_link(&from, &to).map_err(io_err(&to))?;
        fs::remove_file(&from).map_err(io_err(&from))?;
    }
    let dir = File::open(dest).map_err(io_err(dest))?;
    dir.sync_all().map_err(io_err(dest))?;
    Ok(names)
}

/// Whether two regular files hold the same bytes.
fn same_content(a: &Path, b: &Path) -> Result<bool, ExtractError> {
    let (ma, mb) = (
        fs::metadata(a).map_err(io_err(a))?,
        fs::metadata(b).map_err(io_err(b))?,
    );
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let mut fa = io::BufReader::new(File::open(a).map_err(io_err(a))?);
    let mut fb = io::BufReader::new(File::open(b).map_err(io_err(b))?);
    let (mut ba, mut bb) = ([0u8; 8192], [0u8; 8192]);
    loop {
        let n = fa.read(&mut ba).map_err(io_err(a))?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n]).map_err(io_err(b))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn unpack_into(
    archive: &Path,
    dir: &Path,
    limits: ExtractLimits,
) -> Result<Vec<String>, ExtractError> {
    let file = File::open(archive).map_err(io_err(archive))?;
    let compressed = Arc::new(AtomicU64::new(0));
    let reader = Counting {
        inner: io::BufReader::new(file),
        count: Arc::clone(&compressed),
    };
    let mut tar = tar::Archive::new(GzDecoder::new(reader));
    let corrupt = |e: io::Error| ExtractError::Corrupt(e.to_string());
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    let mut total: u64 = 0;
    for (index, entry) in tar.entries().map_err(corrupt)?.enumerate() {
        let mut entry = entry.map_err(corrupt)?;
        if index as u64 >= limits.max_entries {
            return Err(ExtractError::Unsafe(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        let kind = entry.header().entry_type();
        let path = entry.path().map_err(corrupt)?.into_owned();
        let shown = path.display().to_string();
        if !kind.is_file() {
            return Err(ExtractError::Unsafe(format!(
                "entry {shown:?} is a {kind:?}, only regular files are accepted"
            )));
        }
        let mut comps = path.components();
        let name = match (comps.next(), comps.next()) {
            (Some(Component::Normal(n)), None) => n.to_str().unwrap_or_default().to_owned(),
            _ => {
                return Err(ExtractError::Unsafe(format!(
                    "entry {shown:?} is not a plain file name"
                )));
            }
        };
        names::validate(&name).map_err(ExtractError::Unsafe)?;
        if !seen.insert(name.clone()) {
            return Err(ExtractError::Unsafe(format!(
                "entry {name:?} appears twice"
            )));
        }
        let size = entry.header().size().map_err(corrupt)?;
        if size > limits.max_entry_bytes {
            return Err(ExtractError::Unsafe(format!(
                "entry {name:?} has {size} bytes, over the limit of {}",
                limits.max_entry_bytes
            )));
        }
        total = total.saturating_add(size);
        if total > limits.max_total_bytes {
            return Err(ExtractError::Unsafe(format!(
                "archive holds more than {} bytes",
                limits.max_total_bytes
            )));
        }
        let target = dir.join(&name);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&target)
            .map_err(io_err(&target))?;
        copy_checked(&mut entry, &mut out, &compressed, total - size, limits).map_err(
            |e| match e {
                CopyError::Io(source) => ExtractError::Io {
                    path: target.clone(),
                    source,
                },
                CopyError::Ratio => ExtractError::Unsafe(format!(
                    "decompression ratio over {}:1 (zip bomb?)",
                    limits.max_ratio
                )),
            },
        )?;
        out.sync_all().map_err(io_err(&target))?;
        names.push(name);
    }
    Ok(names)
}

enum CopyError {
    Io(io::Error),
    Ratio,
}

fn copy_checked(
    from: &mut impl Read,
    to: &mut File,
    compressed: &AtomicU64,
    before: u64,
    limits: ExtractLimits,
) -> Result<(), CopyError> {
    use std::io::Write as _;
    let mut buf = vec![0u8; 64 << 10];
    let mut written = before;
    loop {
        let n = from.read(&mut buf).map_err(CopyError::Io)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).map_err(CopyError::Io)?;
        written += n as u64;
        let c = compressed.load(Ordering::Relaxed).max(1);
        if written > RATIO_GRACE && written / c > limits.max_ratio {
            return Err(CopyError::Ratio);
        }
    }
}
