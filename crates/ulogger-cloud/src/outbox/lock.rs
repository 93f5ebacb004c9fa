//! The directory's lock: one owning process at a time, its pid in the
//! lock file for others to name.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::segments::io_error;
use crate::error::{Error, ErrorKind};

pub(super) const LOCK_FILE: &str = "LOCK";

/// Takes the directory's lock, or says who holds it.
pub(super) fn lock(dir: &Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_error("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(ErrorKind::OutboxLocked {
                dir: dir.to_path_buf(),
                pid: owner_pid(dir),
            }
            .into())
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error("lock", &path, e)),
    }
    file.set_len(0).map_err(|e| io_error("write", &path, e))?;
    file.write_all(std::process::id().to_string().as_bytes())
        .map_err(|e| io_error("write", &path, e))?;
    Ok(file)
}

/// The pid in the lock file, if one is there.
pub(super) fn owner_pid(dir: &Path) -> Option<u32> {
    fs::read_to_string(dir.join(LOCK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a process holds the directory's lock now.
pub(super) fn is_owned(dir: &Path) -> bool {
    match File::open(dir.join(LOCK_FILE)) {
        Ok(file) => match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(_) => true,
        },
        Err(_) => false,
    }
}
