//! The files of an outbox directory: their names, listing the segments,
//! reading a frame back, setting damaged bytes aside, replacing and
//! removing files, and opening a segment's acks file.

use std::fs::{self, File, OpenOptions};
use std::io::{self};
use std::path::{Path, PathBuf};

use super::format::{self, Scanned};
use super::state::Entry;
use crate::durable;
use crate::error::{Error, ErrorKind};

pub(super) const STATUS_FILE: &str = "status.json";

pub(super) const CORRUPT_DIR: &str = "corrupt";

pub(super) fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("seg-{segment:016}.log"))
}

pub(super) fn acks_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("seg-{segment:016}.acks"))
}

pub(super) fn io_error(op: &'static str, path: &Path, e: io::Error) -> Error {
    Error::with_source(
        ErrorKind::Outbox {
            path: path.to_path_buf(),
            op,
        },
        e,
    )
}

/// The segments in `dir`, by number.
pub(super) fn segments(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error("read", dir, e))? {
        let entry = entry.map_err(|e| io_error("read", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// `len` bytes of `file` from `offset`, read without moving a cursor, so
/// that readers may share the handle.
pub(super) fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut buf, offset)?;
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut buf)?;
    }
    Ok(buf)
}

pub(super) fn set_aside(
    dir: &Path,
    segment: u64,
    offset: usize,
    bytes: &[u8],
    durable: bool,
) -> Result<(), Error> {
    let corrupt = dir.join(CORRUPT_DIR);
    durable::create_dir_all(&corrupt).map_err(|e| io_error("create", &corrupt, e))?;
    let path = corrupt.join(format!("seg-{segment:016}-at-{offset}.bin"));
    write_replacing(&path, bytes, durable)
}

/// Replaces `path` with `bytes` atomically (see [`durable::replace_file`]).
pub(super) fn write_replacing(path: &Path, bytes: &[u8], durable: bool) -> Result<(), Error> {
    durable::replace_file_with(path, bytes, durable).map_err(|e| io_error("write", path, e))
}

/// Removes a segment's files, its records first: if they cannot go, its
/// acks stay too (without them the records would come back as queued).
/// True when the records are gone.
pub(super) fn remove_segment(dir: &Path, segment: u64) -> bool {
    let remove = |path: PathBuf| match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), error = %e, "could not remove an outbox segment");
            false
        }
        _ => true,
    };
    if !remove(segment_path(dir, segment)) {
        return false;
    }
    remove(acks_path(dir, segment));
    true
}

/// Opens a segment's acks file for appending. One it creates is synced
/// into the directory first (when durable): until then its acks, however
/// often the file is synced, could vanish with its name in a power cut.
pub(super) fn open_acks(dir: &Path, segment: u64, durable: bool) -> io::Result<AcksFile> {
    let path = acks_path(dir, segment);
    let mut options = OpenOptions::new();
    options.append(true);
    match options.open(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        opened => {
            let file = opened?;
            let len = file.metadata()?.len();
            return Ok(AcksFile { file, len });
        }
    }
    let file = options.create_new(true).open(&path)?;
    if durable {
        if let Err(e) = durable::sync_dir(dir) {
            // Not kept: the next ack creates it again and syncs again.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
    }
    Ok(AcksFile { file, len: 0 })
}

/// A full disk on demand, for tests without a small filesystem to fill
/// (failpoint `outbox-disk-full`, feature `failpoints`).
pub(super) fn injected_write_error() -> io::Result<()> {
    #[cfg(feature = "failpoints")]
    crate::crash::setup();
    #[cfg(feature = "failpoints")]
    fail::fail_point!("outbox-disk-full", |_| Err(io::Error::from(
        io::ErrorKind::StorageFull
    )));
    Ok(())
}

/// A segment's acks file, open for appending.
pub(super) struct AcksFile {
    pub(super) file: File,
    /// Its length after the last whole write, where a failed one is cut
    /// back to: entries after a torn one would be lost at the next open.
    pub(super) len: u64,
}

/// The frames of `letters` in the segment at `path`, one after another,
/// each checked (checksum, id) before it is copied anywhere.
pub(super) fn read_frames(path: &Path, letters: &[(u64, Entry)]) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut out = Vec::new();
    for (id, entry) in letters {
        let frame = read_at(&file, entry.offset, entry.frame_len as usize)?;
        match format::scan_segment(&frame).first() {
            Some(Scanned::Record {
                frame: range,
                record,
            }) if record.id == *id && range.len() == frame.len() => {
                out.extend_from_slice(&frame);
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "record {id} at {} no longer reads back intact",
                        entry.offset
                    ),
                ))
            }
        }
    }
    Ok(out)
}
