//! Every filesystem operation on executor directories, resolved beneath a volume root.
//!
//! Executors own their directories and may plant symbolic links in them at any time (after
//! registration too): a subdirectory replaced by a link into another application's directory,
//! or a registered directory replaced by a link. So no operation here walks a path the way
//! `std::fs` does. Each volume root is opened once ([`RootDir`]); a path is resolved beneath
//! that handle with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
//! and everything after that (list, create, rename, unlink, recursive delete) is an `*at` call
//! on the directory handle it returned, with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW` on the last
//! component. A link is never followed: it is refused (`ELOOP`), or, where the operation is a
//! deletion, removed itself.
//!
//! Kernels before 5.6 lack `openat2`; there paths are walked one component at a time with
//! `openat(O_NOFOLLOW | O_DIRECTORY)`, which gives the same guarantee in more system calls.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Deepest directory tree a recursive delete descends into (Spark's is two levels deep); a
/// deeper tree is left in place and counted as an error rather than risking the stack.
pub(super) const MAX_DELETE_DEPTH: usize = 128;

/// Whether the kernel lacks `openat2` (before Linux 5.6).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// A volume root, held open for the life of the service.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned())
}

fn eloop() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::LOOP.raw_os_error())
}

/// Whether an error says that a symbolic link stood in the way.
pub(super) fn is_link_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

impl RootDir {
    /// Opens a canonical volume root.
    ///
    /// # Errors
    /// I/O errors opening it.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `path` relative to the root: plain names only (`.` for the root itself).
    fn relative<'a>(&self, path: &'a Path) -> io::Result<&'a Path> {
        let rel = path.strip_prefix(&self.path).map_err(|_| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} lies outside {}", path.display(), self.path.display()),
            )
        })?;
        if rel.as_os_str().is_empty() {
            return Ok(Path::new("."));
        }
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(invalid("not a plain path below the volume root"));
        }
        Ok(rel)
    }

    /// Opens `path` (below the root) with `flags`, following no link on the way.
    fn resolve(&self, path: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let rel = self.relative(path)?;
        let flags = flags | OFlags::CLOEXEC;
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            match rustix::fs::openat2(
                &self.fd,
                rel,
                flags,
                mode,
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // EXDEV: an escape attempt (`..` past the root); reported as a link refusal.
                Err(rustix::io::Errno::XDEV) => return Err(eloop()),
                r => return r.map_err(io::Error::from),
            }
        }
        self.walk(rel, flags, mode)
    }

    /// The fallback without `openat2`: one `openat(O_NOFOLLOW)` per component.
    fn walk(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let names: Vec<&OsStr> = rel.iter().collect();
        let (last, dirs) = names.split_last().ok_or_else(|| invalid("empty path"))?;
        let mut cur: Option<OwnedFd> = None;
        if *last == OsStr::new(".") {
            return Ok(rustix::fs::openat(&self.fd, ".", flags, mode)?);
        }
        for d in dirs {
            let base = cur.as_ref().map_or(self.fd.as_fd(), AsFd::as_fd);
            cur = Some(open_subdir(base, d, OFlags::PATH)?);
        }
        let base = cur.as_ref().map_or(self.fd.as_fd(), AsFd::as_fd);
        Ok(rustix::fs::openat(
            base,
            *last,
            flags | OFlags::NOFOLLOW,
            mode,
        )?)
    }

    /// Opens a file below the root for reading; returns it with its size. Anything but a
    /// regular file is `NotFound`.
    ///
    /// # Errors
    /// Not found, a link on the way (`ELOOP`), I/O errors.
    pub fn open_file(&self, path: &Path) -> io::Result<(File, u64)> {
        let file = File::from(self.resolve(path, OFlags::RDONLY, Mode::empty())?);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok((file, meta.len()))
    }

    /// Opens a directory below the root for listing and `*at` calls.
    ///
    /// # Errors
    /// Not found, a link on the way, not a directory, I/O errors.
    pub fn open_dir(&self, path: &Path) -> io::Result<OwnedFd> {
        self.resolve(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
    }

    /// Opens a directory below the root, creating it and any missing parent (mode 0755,
    /// reduced by the umask) without following a link.
    ///
    /// # Errors
    /// A link on the way, I/O errors.
    pub fn create_dirs(&self, path: &Path) -> io::Result<OwnedFd> {
        match self.open_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            r => return r,
        }
        let rel = self.relative(path)?;
        let mut cur = rustix::fs::openat(
            &self.fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for name in rel.iter() {
            match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            cur = open_subdir(cur.as_fd(), name, OFlags::RDONLY)?;
        }
        Ok(cur)
    }

    /// Removes a regular file (or a link, which is removed itself) below the root.
    ///
    /// # Errors
    /// Not found, a link among its parents, a directory, I/O errors.
    pub fn unlink(&self, path: &Path) -> io::Result<()> {
        let (parent, name) = split(path)?;
        let dir = self.open_dir(parent)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?)
    }

    /// Deletes `path` and everything below it without following a link; a link standing
    /// where the directory was is removed itself. Returns the number of entries that could not
    /// be removed. A missing `path` is no error.
    pub fn delete_tree(&self, path: &Path) -> u64 {
        let Ok((parent, name)) = split(path) else {
            return 1;
        };
        let dir = match self.open_dir(parent) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(dir = %path.display(), cause = %e, "cleanup refused");
                return 1;
            }
        };
        remove_entry(dir.as_fd(), name, 0, path)
    }

    /// The children of a directory below the root, with whether each is a directory (a link
    /// is not). The directory handle comes back too, for `*at` calls on the children.
    ///
    /// # Errors
    /// Not found, a link on the way, I/O errors.
    pub fn list(&self, path: &Path) -> io::Result<(OwnedFd, Vec<(OsString, bool)>)> {
        let dir = self.open_dir(path)?;
        let entries = read_entries(dir.as_fd())?;
        Ok((dir, entries))
    }
}

/// Opens a directory below `base` by name, refusing a link.
fn open_subdir(base: BorrowedFd<'_>, name: &OsStr, extra: OFlags) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        base,
        name,
        extra | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(invalid("no parent directory")),
    }
}

/// The entries of an open directory (`.` and `..` left out), each with whether it is a
/// directory, as `lstat` sees it.
pub(super) fn read_entries(dir: BorrowedFd<'_>) -> io::Result<Vec<(OsString, bool)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_owned();
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => rustix::fs::statat(dir, &*name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
            _ => false,
        };
        out.push((name, is_dir));
    }
    Ok(out)
}

/// Whether `name` in `dir` is a regular file (a link is not).
pub(super) fn is_regular_file(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile)
}

/// Removes `name` in `parent` and, when it is a directory, everything below it; returns the
/// number of failures. `shown` names the entry in logs.
pub(super) fn remove_entry(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    depth: usize,
    shown: &Path,
) -> u64 {
    let is_dir = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => FileType::from_raw_mode(s.st_mode) == FileType::Directory,
        Err(rustix::io::Errno::NOENT) => return 0,
        Err(e) => {
            tracing::warn!(path = %shown.display(), cause = %e, "cleanup failed");
            return 1;
        }
    };
    let mut errors = 0;
    if is_dir {
        if depth >= MAX_DELETE_DEPTH {
            tracing::warn!(path = %shown.display(), "directory tree too deep to delete");
            return 1;
        }
        let dir = match open_subdir(parent, name, OFlags::RDONLY) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(path = %shown.display(), cause = %e, "cleanup failed");
                return 1;
            }
        };
        match read_entries(dir.as_fd()) {
            Ok(children) => {
                for (child, _) in children {
                    errors += remove_entry(dir.as_fd(), &child, depth + 1, shown);
                }
            }
            Err(e) => {
                tracing::warn!(path = %shown.display(), cause = %e, "cleanup failed");
                return 1;
            }
        }
    }
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    match rustix::fs::unlinkat(parent, name, flags) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => {
            tracing::warn!(path = %shown.display(), cause = %e, "cleanup failed");
            errors += 1;
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, RootDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("vol/a/0c")).unwrap();
        std::fs::create_dir_all(tmp.path().join("vol/b/0c")).unwrap();
        let vol = tmp.path().join("vol").canonicalize().unwrap();
        std::fs::write(vol.join("b/0c/shuffle_0_1_0.data"), b"b's").unwrap();
        let r = RootDir::open(&vol).unwrap();
        (tmp, r, vol.join("a"), vol.join("b"))
    }

    #[test]
    fn links_are_never_followed() {
        let (_t, r, a, b) = setup();
        std::fs::remove_dir(a.join("0c")).unwrap();
        symlink(b.join("0c"), a.join("0c")).unwrap();
        let e = r.open_file(&a.join("0c/shuffle_0_1_0.data")).unwrap_err();
        assert!(is_link_refusal(&e), "{e}");
        assert!(is_link_refusal(&r.list(&a.join("0c")).unwrap_err()));
        assert!(is_link_refusal(
            &r.unlink(&a.join("0c/shuffle_0_1_0.data")).unwrap_err()
        ));
        assert!(r.create_dirs(&a.join("0c/x")).is_err());
        // Deleting a's tree removes the link, not b's files.
        assert_eq!(r.delete_tree(&a), 0);
        assert!(!a.exists());
        assert_eq!(
            std::fs::read(b.join("0c/shuffle_0_1_0.data")).unwrap(),
            b"b's"
        );
    }

    #[test]
    fn a_registered_directory_replaced_by_a_link() {
        let (_t, r, a, b) = setup();
        std::fs::remove_dir_all(&a).unwrap();
        symlink(&b, &a).unwrap();
        assert_eq!(r.delete_tree(&a), 0);
        assert!(std::fs::symlink_metadata(&a).is_err());
        assert!(b.join("0c/shuffle_0_1_0.data").exists());
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let (t, r, a, _) = setup();
        assert!(r.open_file(&t.path().join("elsewhere")).is_err());
        assert!(r.open_dir(&a.join("../..")).is_err());
        assert!(r.open_dir(&a.join("..")).is_err());
        // The root itself may be opened (as the parent of an executor directory), never
        // deleted.
        assert!(r.open_dir(r.path()).is_ok());
        assert_eq!(r.delete_tree(r.path()), 1);
        assert!(r.path().is_dir());
    }

    #[test]
    fn create_and_delete_nested() {
        let (_t, r, a, _) = setup();
        let fd = r.create_dirs(&a.join("x/y/z")).unwrap();
        drop(fd);
        std::fs::write(a.join("x/y/z/f"), b"1").unwrap();
        assert_eq!(r.delete_tree(&a.join("x")), 0);
        assert!(!a.join("x").exists());
        assert_eq!(r.delete_tree(&a.join("missing")), 0);
    }
}
