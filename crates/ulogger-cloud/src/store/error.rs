//! What can go wrong with the session-token store.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// An error from [`SessionStore`](super::SessionStore).
///
/// Every variant that concerns a file names it, so the message alone tells
/// a user which file to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O operation on the store's file, its directory, its lock file or
    /// its temporary file failed.
    #[error("session store {path}: {op} failed: {source}", path = path.display())]
    Io {
        /// The file or directory the operation was applied to.
        path: PathBuf,
        /// What the store was doing.
        op: StoreOp,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The store's file exists but does not hold a session-token cache.
    ///
    /// The file is left untouched;
    /// [`SessionStore::open_or_reset`](super::SessionStore::open_or_reset)
    /// moves it aside and starts empty.
    #[error("session store {path} is corrupt: {reason}", path = path.display())]
    Corrupt {
        /// The corrupt file.
        path: PathBuf,
        /// What is wrong with it (with a line and column where known).
        reason: String,
    },

    /// The default store path could not be derived: neither `ULOGGER_HOME`
    /// nor `HOME` is set to a non-empty value.
    #[error("no default session store path: neither ULOGGER_HOME nor HOME is set")]
    NoHomeDir,
}

impl StoreError {
    /// True when the store's file exists but is not a valid session-token
    /// cache (see [`StoreError::Corrupt`]).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }

    pub(super) fn io(path: impl Into<PathBuf>, op: StoreOp, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// The same error again, for each caller whose change was in a group
    /// write that failed: the I/O error keeps its kind and its message.
    pub(super) fn replicate(&self) -> Self {
        match self {
            StoreError::Io { path, op, source } => StoreError::Io {
                path: path.clone(),
                op: *op,
                source: io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::Corrupt { path, reason } => StoreError::Corrupt {
                path: path.clone(),
                reason: reason.clone(),
            },
            StoreError::NoHomeDir => StoreError::NoHomeDir,
        }
    }

    pub(super) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The file operation that failed, carried by [`StoreError::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp {
    /// Reading the store's file (or its metadata).
    Read,
    /// Creating the store's directory.
    CreateDir,
    /// Opening or locking the sidecar lock file (`<file>.lock`).
    Lock,
    /// Writing or syncing the temporary file that replaces the store's file.
    Write,
    /// Renaming the temporary file over the store's file.
    Rename,
    /// Syncing the directory so that the rename is durable.
    SyncDir,
    /// Moving a corrupt file aside.
    MoveAside,
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreOp::Read => "reading",
            StoreOp::CreateDir => "creating the directory",
            StoreOp::Lock => "locking",
            StoreOp::Write => "writing",
            StoreOp::Rename => "renaming into place",
            StoreOp::SyncDir => "syncing the directory",
            StoreOp::MoveAside => "moving the corrupt file aside",
        })
    }
}
