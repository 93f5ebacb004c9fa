//! What a device handed over before, recognised by content (PROTOCOL §5:
//! from agent 1.2.4 on a device re-offers its logs after a reset, and
//! ticks restart, so neither ticks nor sequence numbers tell a re-offer
//! apart; and a gateway that stopped between storing a buffer and its
//! final ack is offered the same buffer again).
//!
//! One file per device in `<outbox>/ble-seen/`: a line per buffer stored,
//! the hex SHA-256 of its [`content_key`], newest last, at most
//! [`KEPT`] kept. A key is appended and fdatasynced after the buffer is
//! durable in the outbox and before the final ack, so a re-offer after
//! any crash past that point is recognised. A crash between the outbox
//! and this file leaves a buffer unrecorded: it may be stored twice,
//! never lost (a key is never written for a buffer not yet stored).

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::wire::{BufferKind, LogHeader};

/// Creates `dir` as [`crate::durable::create_dir_all`] does, whose
/// fsync of the parent runs even when `dir` exists: once per directory
/// per process is enough, not once per pull. A directory is known by its
/// device and inode, so one removed and made again is synced again.
fn made_durable(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;

    /// Directories this process made durable; a handful at most (one
    /// per outbox), cleared if it ever grows.
    static DONE: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
    let id = |meta: std::fs::Metadata| (meta.dev(), meta.ino());
    let done = || {
        DONE.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Ok(meta) = std::fs::metadata(dir) {
        if done().contains(&id(meta)) {
            return Ok(());
        }
    }
    crate::durable::create_dir_all(dir)?;
    let meta = std::fs::metadata(dir)?;
    let mut done = done();
    if done.len() >= 64 {
        done.clear();
    }
    done.push(id(meta));
    Ok(())
}

/// Keys kept per device: far more than a device holds between two pulls
/// (one log buffer and one core dump), so a re-offer is always within.
pub(crate) const KEPT: usize = 256;

/// A buffer's identity across re-offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ContentKey([u8; 32]);

impl ContentKey {
    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(line: &[u8]) -> Option<ContentKey> {
        if line.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (byte, pair) in key.iter_mut().zip(line.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(ContentKey(key))
    }
}

/// The identity of a buffer as the device sent it (before the gateway
/// patches a token or a time in).
///
/// A log is its version, `used_bytes`, sequence number (versions 0-2)
/// and the data the checksum covers: not the token, nor v3/v4's
/// `anchor_tick` and v4's `epoch_time_us`, which the device samples when
/// the header is read out and so differ at each offer, nor the trailer
/// of agent 1.2.4+ (layout not public). A core dump, and anything that
/// does not parse, is all its bytes.
pub(crate) fn content_key(kind: BufferKind, data: &[u8]) -> ContentKey {
    let mut hash = Sha256::new();
    let log = match kind {
        BufferKind::Log => LogHeader::parse(data).ok().and_then(|header| {
            let body = data.get(header.header_len()..header.log_len())?;
            Some((header, body))
        }),
        _ => None,
    };
    match log {
        Some((header, body)) => {
            hash.update(b"log\0");
            hash.update([header.version]);
            hash.update(header.used_bytes.to_le_bytes());
            hash.update(header.sequence_number.unwrap_or(0).to_le_bytes());
            hash.update(body);
        }
        None => {
            hash.update(match kind {
                BufferKind::Log => b"raw-log\0".as_slice(),
                _ => b"core-dump\0".as_slice(),
            });
            hash.update(data);
        }
    }
    ContentKey(hash.finalize().into())
}

/// The keys of one device's buffers, loaded from and appended to its file.
pub(crate) struct SeenBuffers {
    path: PathBuf,
    file: File,
    order: VecDeque<ContentKey>,
    keys: HashSet<ContentKey>,
    /// Lines in the file (compacted when twice [`KEPT`]).
    lines: usize,
}

impl SeenBuffers {
    /// Opens (creating it and `dir` durably if need be) the record of the
    /// device `serial` in `dir`. A line torn by a power cut at the end is
    /// cut off; a line that is not a key is skipped.
    pub(crate) fn open(dir: &Path, serial: &str) -> io::Result<SeenBuffers> {
        made_durable(dir)?;
        let path = dir.join(file_name(serial));
        let created = match OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
            Err(e) => return Err(e),
        };
        let mut file = match created {
            Some(file) => {
                crate::durable::sync_dir(dir)?;
                file
            }
            None => open_existing(&path)?,
        };
        let mut bytes = Vec::new();
        // Bounded: a file longer than a compaction allows is not ours to
        // read whole (the newest keys are at the end, read those).
        let limit = (2 * KEPT as u64 + 1) * 65;
        let len = file.metadata()?.len();
        file.seek(io::SeekFrom::Start(len.saturating_sub(limit)))?;
        Read::by_ref(&mut file)
            .take(limit)
            .read_to_end(&mut bytes)?;
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            // A torn last line: the next append must start a line.
            file.set_len(len - (bytes.len() - whole) as u64)?;
            file.sync_data()?;
        }
        let mut seen = SeenBuffers {
            path,
            file,
            order: VecDeque::new(),
            keys: HashSet::new(),
            lines: 0,
        };
        for line in bytes[..whole].split(|&b| b == b'\n') {
            if let Some(key) = ContentKey::from_hex(line) {
                seen.remember(key);
                seen.lines += 1;
            }
        }
        if len > limit {
            seen.compact()?;
        }
        Ok(seen)
    }

    /// Whether a buffer with this key was stored before.
    pub(crate) fn contains(&self, key: &ContentKey) -> bool {
        self.keys.contains(key)
    }

    /// Records `key` durably (appended and fdatasynced; the file is
    /// rewritten with the newest [`KEPT`] keys when it grew to twice that).
    pub(crate) fn record(&mut self, key: ContentKey) -> io::Result<()> {
        if self.contains(&key) {
            return Ok(());
        }
        let mut line = key.hex();
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        self.remember(key);
        self.lines += 1;
        if self.lines >= 2 * KEPT {
            self.compact()?;
        }
        Ok(())
    }

    fn remember(&mut self, key: ContentKey) {
        if self.keys.insert(key) {
            self.order.push_back(key);
        }
        while self.order.len() > KEPT {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    fn compact(&mut self) -> io::Result<()> {
        let text: String = self.order.iter().map(|k| k.hex() + "\n").collect();
        crate::durable::replace_file(&self.path, text.as_bytes())?;
        self.file = open_existing(&self.path)?;
        self.lines = self.order.len();
        Ok(())
    }
}

fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).append(true).open(path)
}

/// A file name for a serial that came from a device: kept as is when it
/// is short and plain, else percent-escaped, else (too long for a name)
/// its SHA-256.
pub(crate) fn file_name(serial: &str) -> String {
    let mut name = String::with_capacity(serial.len());
    for byte in serial.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    if name.is_empty() || name.len() > 200 {
        let digest: [u8; 32] = Sha256::digest(serial.as_bytes()).into();
        return format!("sha256-{}", ContentKey(digest).hex());
    }
    name
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::wire::{build_log, LogHeader};

    fn log(version: u8, data: &[u8], stamp: impl FnOnce(&mut LogHeader)) -> Vec<u8> {
        let mut header = LogHeader::new(version).unwrap();
        stamp(&mut header);
        build_log(header, data).unwrap()
    }

    /// The directory is made once per process, and made again when it
    /// was removed since (a new inode), rather than assumed still there.
    fn key(n: u8) -> ContentKey {
        content_key(BufferKind::CoreDump, &[n])
    }

    #[test]
    fn the_seen_folder_is_made_again_after_it_was_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("outbox").join("ble-seen");
        SeenBuffers::open(&dir, "A")
            .unwrap()
            .record(key(1))
            .unwrap();
        SeenBuffers::open(&dir, "B").unwrap();
        assert!(dir.join(file_name("A")).is_file());
        std::fs::remove_dir_all(root.path().join("outbox")).unwrap();
        let mut seen = SeenBuffers::open(&dir, "A").unwrap();
        assert!(!seen.contains(&key(1)), "the file went with its folder");
        seen.record(key(2)).unwrap();
        assert!(SeenBuffers::open(&dir, "A").unwrap().contains(&key(2)));
    }

    #[test]
    fn a_re_offered_log_has_the_same_key_whatever_its_readout_fields() {
        let first = log(4, b"frames", |h| {
            h.anchor_tick = Some(1);
            h.epoch_time_us = Some(0);
        });
        let mut again = log(4, b"frames", |h| {
            h.anchor_tick = Some(99_000);
            h.epoch_time_us = Some(1_700_000_000_000_000);
            h.session_token = 7;
        });
        again.extend_from_slice(b"trailer");
        assert_eq!(
            content_key(BufferKind::Log, &first),
            content_key(BufferKind::Log, &again)
        );
        let other = log(4, b"framez", |_| {});
        assert_ne!(
            content_key(BufferKind::Log, &first),
            content_key(BufferKind::Log, &other)
        );
        // Versions 0-2 carry a sequence number: two logs apart.
        let one = log(1, b"x", |h| h.sequence_number = Some(1));
        let two = log(1, b"x", |h| h.sequence_number = Some(2));
        assert_ne!(
            content_key(BufferKind::Log, &one),
            content_key(BufferKind::Log, &two)
        );
        // A core dump is all its bytes, and never a log's key.
        assert_ne!(
            content_key(BufferKind::CoreDump, &first),
            content_key(BufferKind::Log, &first)
        );
    }

    #[test]
    fn keys_survive_a_reopen_and_a_torn_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let a = content_key(BufferKind::CoreDump, b"a");
        let b = content_key(BufferKind::CoreDump, b"b");
        let c = content_key(BufferKind::CoreDump, b"c");
        {
            let mut seen = SeenBuffers::open(dir.path(), "SN 1/..").unwrap();
            seen.record(a).unwrap();
            seen.record(b).unwrap();
        }
        let path = dir.path().join(file_name("SN 1/.."));
        assert_eq!(path.file_name().unwrap(), "SN%201%2F%2E%2E");
        // A power cut in the middle of a third append.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&c.hex().as_bytes()[..20]).unwrap();
        drop(file);
        let mut seen = SeenBuffers::open(dir.path(), "SN 1/..").unwrap();
        assert!(seen.contains(&a) && seen.contains(&b) && !seen.contains(&c));
        seen.record(c).unwrap();
        let seen = SeenBuffers::open(dir.path(), "SN 1/..").unwrap();
        assert!(seen.contains(&c));
        assert_eq!(std::fs::read(&path).unwrap().len(), 3 * 65);
    }

    #[test]
    fn the_record_is_bounded_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let key = |n: usize| content_key(BufferKind::CoreDump, &n.to_le_bytes());
        let mut seen = SeenBuffers::open(dir.path(), "SN").unwrap();
        for n in 0..3 * KEPT {
            seen.record(key(n)).unwrap();
        }
        let len = std::fs::metadata(dir.path().join("SN")).unwrap().len();
        assert!(len <= (2 * KEPT * 65) as u64, "{len}");
        let seen = SeenBuffers::open(dir.path(), "SN").unwrap();
        assert!(!seen.contains(&key(0)));
        assert!(seen.contains(&key(3 * KEPT - 1)));
        assert!(seen.contains(&key(2 * KEPT)));
    }

    #[test]
    fn odd_serials_get_safe_distinct_names() {
        assert_eq!(file_name("AABBCCDDEEFF"), "AABBCCDDEEFF");
        assert_ne!(file_name("a.b"), file_name("a_b"));
        assert!(file_name("").starts_with("sha256-"));
        let long = "x".repeat(128);
        assert_eq!(file_name(&long), long);
        let odd = "é".repeat(64);
        assert!(file_name(&odd).starts_with("sha256-"));
        assert!(!file_name("../x").contains('/'));
    }
}
