//! Durable file writes: a temporary file in the same directory, `sync_all`,
//! rename over the target, then fsync of the directory, so a reader never
//! sees a half-written file and a crash never loses a file we reported.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Fails with the error named by the argument of fault point `name` when
/// it is configured to fire (`return(eio)`, the default, or
/// `return(enospc)`), as the kernel would. Without the `failpoints`
/// feature it never fails. The points:
///
/// | point | where |
/// |---|---|
/// | `emulator-write-file` | a payload (or other whole file) written |
/// | `emulator-sync-file` | its fsync |
/// | `emulator-sync-dir` | a directory fsync (a new file, directory or rename) |
/// | `emulator-write-index` | a line appended to `index.jsonl` |
/// | `emulator-sync-index` | its fdatasync |
pub(crate) fn fault(name: &str) -> io::Result<()> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |arg: Option<String>| {
        // The same numbers on Linux, the BSDs and macOS.
        let errno = match arg.as_deref() {
            Some("enospc") => 28,
            _ => 5,
        };
        Err(io::Error::from_raw_os_error(errno))
    });
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    Ok(())
}

/// Who may read a file written by [`write_atomic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The default permissions (payloads, certificates).
    Shared,
    /// Owner only (mode 0600 on Unix): private keys.
    OwnerOnly,
}

/// Writes `bytes` to `path` atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], access: Access) -> io::Result<()> {
    write_atomic_with(path, bytes, access, true)
}

/// Writes `bytes` to `path` atomically; durably (fsyncs) when `sync`.
pub(crate) fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    access: Access,
    sync: bool,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut file = open_new(&tmp, access)?;
        fault("emulator-write-file")?;
        file.write_all(bytes)?;
        if sync {
            fault("emulator-sync-file")?;
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, path)?;
        if sync {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn open_new(path: &Path, access: Access) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if access == Access::OwnerOnly {
            options.mode(0o600);
        }
    }
    #[cfg(not(unix))]
    let _ = access;
    options.open(path)
}

/// Makes a rename or a new file in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fault("emulator-sync-dir")?;
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Creates `dir` and its missing parents, and returns once each new
/// directory's entry is durable: its parent fsynced, up to a directory
/// that already existed (decision 18). The parent of `dir` is synced even
/// when `dir` existed: a run that created it may have stopped before
/// syncing, and nothing else would make its entry durable; that sync is
/// skipped if the parent may not be read, since we did not create `dir`.
/// Without `sync` it only creates (a temporary data directory).
pub(crate) fn create_dir_all(dir: &Path, sync: bool) -> io::Result<()> {
    // Deepest first: `dir`, then each missing ancestor.
    let mut missing = Vec::new();
    let mut cursor = dir;
    loop {
        match fs::metadata(cursor) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", cursor.display()),
                ))
            }
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
    for new in missing.iter().rev() {
        match fs::create_dir(new) {
            // Another process got there first: syncing its entry again
            // costs nothing and covers a creator that stopped early.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
    }
    if !sync {
        return Ok(());
    }
    if missing.is_empty() {
        return match sync_dir(parent_of(dir)) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
            other => other,
        };
    }
    for new in &missing {
        sync_dir(parent_of(new))?;
    }
    Ok(())
}

/// The directory holding `path`'s entry (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Reads a file of JSON lines opened for reading and appending, cuts off a
/// last line that a crash left without its newline, and returns the whole
/// lines. Appenders write each line (newline included) in one `write` and
/// only then act on it, so a cut line was never acted on.
pub(crate) fn repair_jsonl(file: &mut File) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut text)?;
    let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < text.len() {
        tracing::warn!(
            bytes = text.len() - whole,
            "a line cut short by a crash ends the file; removing it"
        );
        file.set_len(whole as u64)?;
        file.sync_all()?;
        text.truncate(whole);
    }
    Ok(text)
}

/// `name` with every character that is not safe in a file name on every
/// platform (anything but ASCII letters, digits, `-` and `_`) replaced by `_`.
pub(crate) fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        write_atomic(&path, b"first version", Access::Shared).unwrap();
        write_atomic(&path, b"second", Access::Shared).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_line_cut_short_is_removed_and_whole_lines_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        assert_eq!(repair_jsonl(&mut file).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        file.write_all(b"{\"d\":4}\n").unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            b"{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n"
        );
        // Whole files and empty ones are left as they are.
        assert_eq!(repair_jsonl(&mut file).unwrap().len(), 24);
        let empty = dir.path().join("e.jsonl");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&empty)
            .unwrap();
        assert!(repair_jsonl(&mut file).unwrap().is_empty());
    }

    #[test]
    fn directories_are_created_with_their_parents_and_a_file_in_the_way_fails() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a").join("b");
        create_dir_all(&deep, true).unwrap();
        assert!(deep.is_dir());
        // Existing: only the parent is synced again.
        create_dir_all(&deep, true).unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(create_dir_all(&file, true).is_err());
        assert!(create_dir_all(&file.join("x"), false).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn owner_only_files_have_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        write_atomic(&path, b"secret", Access::OwnerOnly).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
