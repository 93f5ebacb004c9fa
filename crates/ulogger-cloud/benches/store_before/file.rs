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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    #[cfg(unix)]
    fn of(meta: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }

    #[cfg(not(unix))]
    fn of(meta: &Metadata) -> Self {
        Stamp {
            dev: 0,
            ino: 0,
            len: meta.len(),
            modified: meta.modified().ok(),
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
    let written = tmp
        .write_all(contents)
        .and_then(|()| tmp.sync_all())
        .and_then(|()| tmp.metadata());
    let meta = match written {
        Ok(meta) => meta,
        Err(e) => {
            let _ = fs::remove_file(&paths.tmp);
            return Err(write_err(e));
        }
    };
    if let Err(e) = fs::rename(&paths.tmp, &paths.file) {
        let _ = fs::remove_file(&paths.tmp);
        return Err(StoreError::io(&paths.file, StoreOp::Rename, e));
    }
    sync_dir(&paths.dir)?;
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

/// Creates `dir` and missing parents, owner-only (tokens are credentials).
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| StoreError::io(dir, StoreOp::CreateDir, e))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, StoreOp::SyncDir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), StoreError> {
    // Directories cannot be opened for syncing here; the rename is as
    // durable as the platform makes it.
    Ok(())
}
