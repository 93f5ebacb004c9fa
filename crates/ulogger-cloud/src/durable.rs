//! The one rule that makes new files and directories durable, for the
//! outbox, the session store, the BLE gateway's records and the CLI's
//! inbox (decision 18):
//!
//! - a created file or directory is durable only once its parent
//!   directory is fsynced, and so on up to a directory that already
//!   existed (under strict POSIX a power cut may otherwise take the whole
//!   new directory, with every record "synced" inside it);
//! - a rename (or a removal) is durable only once the directory holding
//!   it is fsynced.
//!
//! Nothing is reported durable before that. `fsync` of a file covers its
//! bytes, never the name that leads to it.

use std::fs;
use std::io;
use std::path::Path;

/// Makes the entries of `dir` durable: files created, renamed or removed
/// in it (fault point `sync-dir`).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    crate::crash::fault("sync-dir")?;
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened for syncing here; a new entry is as
        // durable as the platform makes it.
        let _ = dir;
        Ok(())
    }
}

/// The directory holding `path`'s entry (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing parents, owner-only (mode 0700: the
/// outbox holds devices' logs, the store their tokens), and returns once
/// each new directory's parent is synced, up to one that existed. The
/// parent of `dir` is synced even when `dir` existed already: a process
/// that created it may have stopped before syncing, and nothing else
/// would ever make its entry durable. That extra sync is skipped if the
/// parent may not be read (syncing opens it): we did not create `dir`,
/// and refusing to open what worked before would help nobody.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    create_dir_all_with(dir, sync_dir)
}

fn create_dir_all_with(
    dir: &Path,
    mut sync: impl FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
    // Deepest first: `dir`, then each missing ancestor.
    let mut missing = Vec::new();
    let mut cursor = dir;
    loop {
        match fs::metadata(cursor) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(cursor);
                let parent = parent_of(cursor);
                if parent == cursor {
                    return Err(e);
                }
                cursor = parent;
            }
            Err(e) => return Err(e),
        }
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    for new in missing.iter().rev() {
        match builder.create(new) {
            // Another process got there first; syncing its entry again
            // costs nothing and covers a creator that stopped early.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
    }
    if missing.is_empty() {
        return match sync(parent_of(dir)) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
            other => other,
        };
    }
    for new in &missing {
        sync(parent_of(new))?;
    }
    Ok(())
}

/// Replaces (or creates) `path` with `contents` durably: a temporary
/// file beside it (`.<name>.tmp`, owner-only), written and fsynced,
/// renamed over `path`, then the directory fsynced. A crash at any point
/// leaves either the old file whole or the new one whole; a failure
/// removes the temporary file and is returned, never reported durable.
/// The directory must exist (see [`create_dir_all`]). Fault points
/// `write-file` and `sync-file` (see the crate's crash points).
pub fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    replace_file_with(path, contents, true)
}

/// [`replace_file`], with the syncs only when `sync` (an outbox in a
/// temporary directory skips them: it dies with the process anyway).
pub(crate) fn replace_file_with(path: &Path, contents: &[u8], sync: bool) -> io::Result<()> {
    use std::io::Write;
    let dir = parent_of(path);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "a file path has a file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut file| {
        crate::crash::fault("write-file")?;
        file.write_all(contents)?;
        if sync {
            crate::crash::fault("sync-file")?;
            file.sync_all()?;
        }
        Ok(())
    });
    let renamed = written.and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = renamed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Removes `path` durably (its directory fsynced after). A file already
/// gone is no error.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => other?,
    }
    sync_dir(parent_of(path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::path::PathBuf;

    /// Runs `create_dir_all` with a sync that records each directory,
    /// failing at the `fail_at`-th sync if given.
    fn create_recording(dir: &Path, fail_at: Option<usize>) -> (io::Result<()>, Vec<PathBuf>) {
        let mut synced = Vec::new();
        let result = create_dir_all_with(dir, |d| {
            if Some(synced.len()) == fail_at {
                return Err(io::Error::from_raw_os_error(5));
            }
            synced.push(d.to_path_buf());
            Ok(())
        });
        (result, synced)
    }

    #[test]
    fn nested_directories_are_created_owner_only_and_synced_up_to_the_one_that_existed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/c");
        let (result, synced) = create_recording(&dir, None);
        result.unwrap();
        // Each new directory's parent, deepest first, ending with the
        // directory that existed.
        assert_eq!(
            synced,
            [
                root.path().join("a/b"),
                root.path().join("a"),
                root.path().to_path_buf()
            ]
        );
        #[cfg(unix)]
        for new in ["a", "a/b", "a/b/c"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(root.path().join(new))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{new}");
        }
    }

    #[test]
    fn an_existing_directory_still_has_its_parent_synced() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("there");
        fs::create_dir(&dir).unwrap();
        let (result, synced) = create_recording(&dir, None);
        result.unwrap();
        assert_eq!(synced, [root.path().to_path_buf()]);
    }

    #[test]
    fn an_unreadable_parent_of_an_existing_directory_is_no_error() {
        let root = tempfile::tempdir().unwrap();
        let created = create_dir_all_with(root.path(), |_| {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        });
        created.unwrap();
        // One we create must be synced into its parent, or fail.
        let created = create_dir_all_with(&root.path().join("new"), |_| {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        });
        assert_eq!(created.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn a_failed_sync_is_returned_not_reported_durable() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        // The last sync (of the directory that existed) fails.
        let (result, synced) = create_recording(&dir, Some(1));
        assert_eq!(result.unwrap_err().raw_os_error(), Some(5));
        assert_eq!(synced, [root.path().join("a")]);
        // Created all the same; a second call finds it and syncs its parent.
        assert!(dir.is_dir());
        let (result, synced) = create_recording(&dir, None);
        result.unwrap();
        assert_eq!(synced, [root.path().join("a")]);
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("file"), b"x").unwrap();
        let (result, synced) = create_recording(&root.path().join("file/dir"), None);
        assert!(result.is_err());
        assert!(synced.is_empty(), "{synced:?}");
    }

    #[test]
    fn the_real_syncs_succeed_on_a_real_directory() {
        let root = tempfile::tempdir().unwrap();
        create_dir_all(&root.path().join("x/y")).unwrap();
        assert!(root.path().join("x/y").is_dir());
        // A bare relative name has `.` as its parent.
        assert_eq!(parent_of(Path::new("name")), Path::new("."));
    }

    #[test]
    fn a_replaced_file_holds_the_new_contents_and_no_temporary_is_left() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("state");
        replace_file(&file, b"one").unwrap();
        replace_file(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state"]);
        remove_file(&file).unwrap();
        remove_file(&file).unwrap();
        assert!(!file.exists());
    }

    #[test]
    fn a_replace_that_cannot_rename_leaves_the_old_file_and_no_temporary() {
        let root = tempfile::tempdir().unwrap();
        // A directory in the way: the rename fails.
        let target = root.path().join("busy");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"x").unwrap();
        assert!(replace_file(&target, b"new").is_err());
        assert!(target.is_dir());
        assert!(!root.path().join(".busy.tmp").exists());
    }
}
