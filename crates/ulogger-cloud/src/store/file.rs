//! Durable file I/O and cross-process locking for the cache file.
//!
//! Writers replace the file by renaming a fully written and synced
//! temporary file over it, so readers never need a lock: whatever they open
//! is a complete file. Writers serialise on an exclusive lock of a sidecar
//! file (`<file>.lock`) so that a read-modify-write never loses another
//! process's entries.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::{StoreError, StoreOp};

/// A cache file is a few dozen bytes per device; anything this large is not
/// one, and reading it whole could exhaust memory.
pub(super) const MAX_FILE_LEN: u64 = 64 * 1024 * 1024;

/// The paths a file-backed store touches.
#[derive(Debug, Clone)]
pub(super) struct Paths {
    pub(super) file: PathBuf,
    pub(super) lock: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
}

impl Paths {
    pub(super) fn new(file: &Path) -> Result<Self, StoreError> {
        let name = file.file_name().ok_or_else(|| {
            StoreError::io(
                file,
                StoreOp::Read,
                io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"),
            )
        })?;
        let sibling = |suffix: &str| {
            let mut sibling = name.to_os_string();
            sibling.push(suffix);
            file.with_file_name(sibling)
        };
        let dir = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Paths {
            file: file.to_path_buf(),
            lock: sibling(".lock"),
            // Not Python's `<file>.tmp`: a Python writer must not truncate
            // our temporary file while we write it, nor we its.
            tmp: sibling(".tmp-rs"),
            dir,
        })
    }
}

/// Identifies one version of the file cheaply: a rename gives every write a
/// new inode, and an in-place edit changes the length or the mtime. The
/// store keeps the file it last read or wrote open, so its inode number
/// cannot be reused by a later file while we compare against it.
#[derive(Debug, Clone)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
    /// The inode's change time (seconds, nanoseconds), which a new or
    /// removed hard link also changes; not part of the version's identity
    /// (see [`is_unchanged`]).
    changed: (i64, i64),
}

impl PartialEq for Stamp {
    fn eq(&self, other: &Self) -> bool {
        (self.dev, self.ino, self.len, self.modified)
            == (other.dev, other.ino, other.len, other.modified)
    }
}

impl Eq for Stamp {}

impl Stamp {
    #[cfg(unix)]
    fn of(meta: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    fn of(meta: &Metadata) -> Self {
        Stamp {
            dev: 0,
            ino: 0,
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (0, 0),
        }
    }
}

/// The current stamp of the file at `path`, `None` when there is none.
pub(super) fn stamp(path: &Path) -> Result<Option<Stamp>, StoreError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(Stamp::of(&meta))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(path, StoreOp::Read, e)),
    }
}

/// True when `handle`, opened on the version of the file that `stamp`
/// describes, is still the file at `path`, unchanged.
///
/// On Unix this is usually one `fstat` of the handle, no path lookup: a
/// file replaced by a rename (ours, or the Python SDK's `os.replace`) or
/// deleted has lost its only link, and an in-place edit changes the length
/// or the mtime. When the inode has other links, or its change time moved
/// (a link came or went, or its mode changed), the path is checked instead,
/// and `stamp` takes the new change time if the file is the same.
pub(super) fn is_unchanged(
    path: &Path,
    handle: &File,
    stamp: &mut Stamp,
) -> Result<bool, StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = handle
            .metadata()
            .map_err(|e| StoreError::io(path, StoreOp::Read, e))?;
        let now = Stamp::of(&meta);
        if meta.nlink() == 0 {
            return Ok(false);
        }
        if meta.nlink() == 1 && now.changed == stamp.changed {
            return Ok(now == *stamp);
        }
        let unchanged = self::stamp(path)?.as_ref() == Some(&*stamp) && now == *stamp;
        if unchanged {
            stamp.changed = now.changed;
        }
        Ok(unchanged)
    }
    #[cfg(not(unix))]
    {
        let _ = handle;
        Ok(self::stamp(path)?.as_ref() == Some(&*stamp))
    }
}

/// A file as read: the open handle (which pins the inode), its stamp and
/// its bytes, all from the same open so they describe the same version.
pub(super) struct Snapshot {
    pub(super) handle: File,
    pub(super) stamp: Stamp,
    pub(super) bytes: Vec<u8>,
}

/// Reads the whole file, `None` when it does not exist.
pub(super) fn read(path: &Path) -> Result<Option<Snapshot>, StoreError> {
    let err = |e| StoreError::io(path, StoreOp::Read, e);
    let mut handle = match File::open(path) {
        Ok(handle) => handle,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let meta = handle.metadata().map_err(err)?;
    if meta.len() > MAX_FILE_LEN {
        return Err(StoreError::corrupt(
            path,
            format!(
                "the file is {} bytes, more than a session-token cache can be ({MAX_FILE_LEN})",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    (&mut handle)
        .take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(Some(Snapshot {
        handle,
        stamp: Stamp::of(&meta),
        bytes,
    }))
}

/// Replaces the file durably with `contents`: temporary file in the same
/// directory, sync, rename over the file, sync the directory. Returns the
/// new file's handle and stamp.
pub(super) fn write_atomically(
    paths: &Paths,
    contents: &[u8],
) -> Result<(File, Stamp), StoreError> {
    let write_err = |e| StoreError::io(&paths.tmp, StoreOp::Write, e);
    let mut tmp = create_private(&paths.tmp).map_err(write_err)?;
    let written = tmp.write_all(contents).and_then(|()| tmp.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&paths.tmp);
        return Err(write_err(e));
    }
    if let Err(e) = fs::rename(&paths.tmp, &paths.file) {
        let _ = fs::remove_file(&paths.tmp);
        return Err(StoreError::io(&paths.file, StoreOp::Rename, e));
    }
    sync_dir(&paths.dir)?;
    // After the rename, which changes the inode's change time.
    let meta = tmp
        .metadata()
        .map_err(|e| StoreError::io(&paths.file, StoreOp::Read, e))?;
    Ok((tmp, Stamp::of(&meta)))
}

/// Opens (creating, with the directory if need be) the sidecar lock file.
pub(super) fn open_lock(paths: &Paths) -> Result<File, StoreError> {
    let err = |e| StoreError::io(&paths.lock, StoreOp::Lock, e);
    match open_lock_file(&paths.lock) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_private_dir(&paths.dir)?;
            open_lock_file(&paths.lock).map_err(err)
        }
        other => other.map_err(err),
    }
}

/// True when `handle` is still the file at the lock path (nobody deleted or
/// replaced the lock file since we opened it).
pub(super) fn is_current_lock(paths: &Paths, handle: &File) -> Result<bool, StoreError> {
    let err = |e| StoreError::io(&paths.lock, StoreOp::Lock, e);
    let held = handle.metadata().map_err(err)?;
    match stamp(&paths.lock)? {
        Some(now) => Ok(same_file(&Stamp::of(&held), &now)),
        None => Ok(false),
    }
}

fn same_file(a: &Stamp, b: &Stamp) -> bool {
    a.dev == b.dev && a.ino == b.ino
}

/// Holds the exclusive lock on the lock file until dropped.
pub(super) struct LockGuard<'a>(&'a File);

impl<'a> LockGuard<'a> {
    pub(super) fn acquire(handle: &'a File, path: &Path) -> Result<Self, StoreError> {
        handle
            .lock()
            .map_err(|e| StoreError::io(path, StoreOp::Lock, e))?;
        Ok(LockGuard(handle))
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Closing the handle would release the lock too; unlocking keeps
        // the handle usable for the next mutation.
        let _ = self.0.unlock();
    }
}

/// Renames a corrupt file to `<file>.corrupt-<unix seconds>` (with a `-N`
/// suffix if that exists already) and returns the new path.
pub(super) fn move_aside(paths: &Paths) -> Result<PathBuf, StoreError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = paths
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = paths.file.with_file_name(format!("{name}.corrupt-{secs}"));
    let mut n = 0u32;
    while target.exists() {
        n = n.saturating_add(1);
        target = paths
            .file
            .with_file_name(format!("{name}.corrupt-{secs}-{n}"));
    }
    fs::rename(&paths.file, &target)
        .map_err(|e| StoreError::io(&paths.file, StoreOp::MoveAside, e))?;
    sync_dir(&paths.dir)?;
    Ok(target)
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Creates or truncates `path` readable and writable by its owner only.
fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        // A stale temporary file keeps the mode it was created with.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}

/// Creates `dir` and missing parents, owner-only (tokens are
/// credentials), durably: a token file synced into a directory whose own
/// entry never reached the disk would vanish with it.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    crate::durable::create_dir_all(dir).map_err(|e| StoreError::io(dir, StoreOp::CreateDir, e))
}

/// Makes the rename of the file durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::durable::sync_dir(dir).map_err(|e| StoreError::io(dir, StoreOp::SyncDir, e))
}
