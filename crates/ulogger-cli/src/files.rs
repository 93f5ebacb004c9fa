//! Reading the files the commands send or decode. Each holds one message
//! (or one device description), so a file over the limit is refused from
//! its size before any of it is read: a mistyped path to a disk image, or
//! `/dev/zero`, costs a `stat`, not the memory of the whole file (times
//! `--jobs`).

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use ulogger_cloud::wire::MAX_MESSAGE_SIZE;

use crate::exit::{Exit, Failure};

/// The most a device-info file may hold: far more than any encoding of
/// one, so only a wrong path reaches it.
pub const DEVICE_INFO_LIMIT: usize = 64 * 1024;

/// `what` for a file that holds one message.
pub const ONE_MESSAGE: &str = "one message";

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Opening or reading failed.
    Io(io::Error),
    /// The file is larger than `limit` bytes; none of it was kept.
    TooLarge {
        /// Its size, when the file system knows it (a regular file); else
        /// it only gave more than `limit` bytes when read.
        size: Option<u64>,
        /// The most it may hold.
        limit: usize,
        /// What it holds, for the message: "one message".
        what: &'static str,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "cannot read: {e}"),
            ReadError::TooLarge {
                size: Some(size),
                limit,
                what,
            } => write!(
                f,
                "the file is {size} bytes, more than {what} may be ({limit} bytes); none of it was read"
            ),
            ReadError::TooLarge {
                size: None,
                limit,
                what,
            } => write!(
                f,
                "reading it gave more than {what} may be ({limit} bytes); none of it was kept"
            ),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            ReadError::TooLarge { .. } => None,
        }
    }
}

/// The whole of `path` if it holds at most `limit` bytes. A regular file
/// over the limit is refused from its size, unread; anything else (a pipe,
/// a device, a file that grows while it is read) is read up to one byte
/// past the limit and then refused.
pub fn read_limited(path: &Path, limit: usize, what: &'static str) -> Result<Vec<u8>, ReadError> {
    let file = File::open(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
    if meta.is_file() && meta.len() > limit_u64 {
        return Err(ReadError::TooLarge {
            size: Some(meta.len()),
            limit,
            what,
        });
    }
    let expected = if meta.is_file() {
        usize::try_from(meta.len()).unwrap_or(limit)
    } else {
        0
    };
    read_to_limit(file, expected, limit, what)
}

/// Everything `reader` gives if it is at most `limit` bytes, reading one
/// byte past the limit at most; `capacity` is the size expected.
pub fn read_to_limit(
    reader: impl Read,
    capacity: usize,
    limit: usize,
    what: &'static str,
) -> Result<Vec<u8>, ReadError> {
    let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
    let mut bytes = Vec::with_capacity(capacity.min(limit));
    reader
        .take(limit_u64.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() > limit {
        return Err(ReadError::TooLarge {
            size: None,
            limit,
            what,
        });
    }
    Ok(bytes)
}

/// Refuses a folder among the FILE arguments of `command` before any work:
/// each holds one message, and a folder would otherwise fail late (after
/// connecting, for `upload`) as "Is a directory". The hint names the
/// folder's files the way a shell would.
pub fn refuse_folders(command: &str, paths: &[PathBuf]) -> Result<(), Exit> {
    match paths.iter().find(|path| path.is_dir()) {
        None => Ok(()),
        Some(folder) => Err(Exit::new(
            Failure::BadInput,
            anyhow::anyhow!(
                "{} is a folder; {command} takes files, one message each",
                folder.display()
            ),
        )
        .with_hint(Some(format!(
            "name the files in it: `ulogger {command} {}`",
            folder.join("*.bin").display()
        )))),
    }
}

/// [`read_limited`] of a file that holds one message (a log, a core dump)
/// on tokio's blocking pool, for the commands that read many at once.
pub async fn read_message(path: PathBuf) -> Result<Vec<u8>, ReadError> {
    tokio::task::spawn_blocking(move || read_limited(&path, MAX_MESSAGE_SIZE, ONE_MESSAGE))
        .await
        .unwrap_or_else(|e| Err(ReadError::Io(io::Error::other(e))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_file_at_the_limit_is_read_and_one_past_it_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("at.bin");
        std::fs::write(&at, vec![7u8; 100]).unwrap();
        assert_eq!(read_limited(&at, 100, ONE_MESSAGE).unwrap(), vec![7u8; 100]);
        let over = dir.path().join("over.bin");
        std::fs::write(&over, vec![7u8; 101]).unwrap();
        let err = read_limited(&over, 100, ONE_MESSAGE).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::TooLarge {
                    size: Some(101),
                    limit: 100,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the file is 101 bytes, more than one message may be (100 bytes); none of it was read"
        );
        let missing = read_limited(&dir.path().join("missing"), 100, ONE_MESSAGE).unwrap_err();
        assert!(
            matches!(&missing, ReadError::Io(e) if e.kind() == io::ErrorKind::NotFound),
            "{missing:?}"
        );
        assert!(
            missing.to_string().starts_with("cannot read: "),
            "{missing}"
        );
    }

    #[test]
    fn a_huge_sparse_file_is_refused_from_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("disk.img");
        // A terabyte, sparse: nothing of it is on disk, or read.
        File::create(&huge).unwrap().set_len(1 << 40).unwrap();
        let size = std::fs::metadata(&huge).unwrap().len();
        let err = read_limited(&huge, MAX_MESSAGE_SIZE, ONE_MESSAGE).unwrap_err();
        assert!(
            matches!(err, ReadError::TooLarge { size: Some(s), .. } if s == size),
            "{err:?}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_endless_device_is_read_one_byte_past_the_limit_and_refused() {
        let err = read_limited(Path::new("/dev/zero"), 4096, "a device-info file").unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::TooLarge {
                    size: None,
                    limit: 4096,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "reading it gave more than a device-info file may be (4096 bytes); none of it was kept"
        );
    }
}
