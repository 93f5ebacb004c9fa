//! Where the emulator keeps what it receives: the directory the user gave
//! (kept: synced as it is written and reused by the next start) or a
//! temporary one (no syncs, removed with the emulator).

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::EmulatorError;

/// The data directory of one emulator.
pub(crate) struct DataDir {
    path: PathBuf,
    /// Set for a temporary directory: removed when dropped.
    temp: Option<TempDir>,
}

impl DataDir {
    /// The directory given (`Some`: kept), or a new temporary one.
    pub(crate) fn open(given: Option<&Path>) -> Result<DataDir, EmulatorError> {
        if let Some(dir) = given {
            return Ok(DataDir {
                path: dir.to_path_buf(),
                temp: None,
            });
        }
        let temp = tempfile::Builder::new()
            .prefix("ulogger-emulator-")
            .tempdir()
            .map_err(|e| EmulatorError::io("create", std::env::temp_dir(), e))?;
        Ok(DataDir {
            path: temp.path().to_path_buf(),
            temp: Some(temp),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is kept (given by the user) rather than temporary.
    pub(crate) fn kept(&self) -> bool {
        self.temp.is_none()
    }

    /// The directory when it is kept, `None` when temporary.
    pub(crate) fn kept_path(&self) -> Option<&Path> {
        self.kept().then_some(self.path.as_path())
    }

    /// The path, and the temporary directory to drop once nothing writes
    /// to it any more.
    pub(crate) fn into_parts(self) -> (PathBuf, Option<TempDir>) {
        (self.path, self.temp)
    }
}
