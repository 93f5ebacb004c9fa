//! The outbox's segment and acks decoders, through the public API: the
//! input becomes one segment file (and its acks file) in a fresh
//! directory, which is listed read-only, opened with repair, and listed
//! and opened again. Nothing may panic or fail, and what is reported must
//! add up: every record is queued or dead, the counters match the records,
//! the read-only scan agrees with the repairing open, and damage is
//! reported once (a second open finds none).
//!
//! Input: `flags u8 | acks length u16 LE | acks bytes | segment bytes`.
//! Flag bit 0 recomputes the CRC of every frame in the segment and bit 1
//! that of every acks entry, so that mutations reach what lies behind the
//! checksums (ids, kinds, strings, repeated ids, dead reasons) instead of
//! stopping at a mismatch. The layouts (see the outbox's `format.rs`):
//! frame `"uLOB" | body length u32 | CRC-32 of body u32 | body`; acks entry
//! `id u64 | state u8 | reason length u16 | reason | CRC-32 of all before u32`.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use ulogger_cloud::{Outbox, OutboxConfig, OutboxRecord, OutboxStatus, RecordState};

const SEGMENT: &str = "seg-0000000000000001.log";
const ACKS: &str = "seg-0000000000000001.acks";
const MAGIC: &[u8; 4] = b"uLOB";

fuzz_target!(|data: &[u8]| {
    let (flags, acks, segment) = split(data);
    let mut segment = segment.to_vec();
    let mut acks = acks.to_vec();
    if flags & 1 != 0 {
        fix_frame_crcs(&mut segment);
    }
    if flags & 2 != 0 {
        fix_ack_crcs(&mut acks);
    }

    let dir = Scratch::new();
    std::fs::write(dir.0.join(SEGMENT), &segment).unwrap();
    if !acks.is_empty() {
        std::fs::write(dir.0.join(ACKS), &acks).unwrap();
    }

    let listed = OutboxRecord::list(&dir.0).expect("a read-only scan of readable files");
    let outbox =
        Outbox::open(OutboxConfig::new(&dir.0).durable(false)).expect("an open that repairs");
    let records = outbox.records();
    check(&records, &outbox.status());
    assert_eq!(
        summary(&listed),
        summary(&records),
        "the read-only scan and the open disagree"
    );
    drop(outbox);

    assert_eq!(
        summary(&OutboxRecord::list(&dir.0).expect("a second scan")),
        summary(&records),
        "the repaired files hold other records"
    );
    let again = Outbox::open(OutboxConfig::new(&dir.0).durable(false)).expect("a second open");
    let status = again.status();
    assert_eq!(status.corrupt, 0, "damage reported twice: {status:?}");
    assert_eq!(summary(&again.records()), summary(&records));
});

fn split(data: &[u8]) -> (u8, &[u8], &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return (0, &[], &[]);
    };
    let Some((len, rest)) = rest.split_first_chunk::<2>() else {
        return (flags, &[], rest);
    };
    let (acks, segment) = rest.split_at(usize::from(u16::from_le_bytes(*len)).min(rest.len()));
    (flags, acks, segment)
}

/// Counters and records of a freshly opened outbox must agree.
fn check(records: &[OutboxRecord], status: &OutboxStatus) {
    let queued: Vec<_> = records
        .iter()
        .filter(|r| r.state == RecordState::Queued)
        .collect();
    let dead = records
        .iter()
        .filter(|r| matches!(r.state, RecordState::Dead { .. }))
        .count();
    assert_eq!(status.in_flight, 0, "{status:?}");
    assert_eq!(queued.len() + dead, records.len(), "{records:?}");
    assert_eq!(status.queued, queued.len(), "{status:?} {records:?}");
    assert_eq!(status.dead, dead, "{status:?} {records:?}");
    assert_eq!(
        status.queued_bytes,
        queued.iter().map(|r| r.size).sum::<u64>(),
        "{status:?} {records:?}"
    );
    assert!(
        records.windows(2).all(|w| w[0].id < w[1].id),
        "records out of order or repeated: {records:?}"
    );
}

/// What must not change between scans (ages do).
fn summary(records: &[OutboxRecord]) -> Vec<(u64, u64, String, RecordState)> {
    records
        .iter()
        .map(|r| (r.id.0, r.size, r.serial.clone(), r.state.clone()))
        .collect()
}

fn fix_frame_crcs(buf: &mut [u8]) {
    let mut pos = 0;
    while pos + 12 <= buf.len() {
        if &buf[pos..pos + 4] != MAGIC {
            pos += 1;
            continue;
        }
        let len = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let Some(body) = buf.get(pos + 12..pos + 12 + len) else {
            pos += 1;
            continue;
        };
        let crc = crc32fast::hash(body);
        buf[pos + 8..pos + 12].copy_from_slice(&crc.to_le_bytes());
        pos += 12 + len;
    }
}

fn fix_ack_crcs(buf: &mut [u8]) {
    let mut pos = 0;
    while pos + 11 <= buf.len() {
        let reason = usize::from(u16::from_le_bytes([buf[pos + 9], buf[pos + 10]]));
        let end = pos + 11 + reason;
        if end + 4 > buf.len() {
            break;
        }
        let crc = crc32fast::hash(&buf[pos..end]);
        buf[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        pos = end + 4;
    }
}

/// A fresh directory, on tmpfs where there is one (the target writes and
/// renames files on every run), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "outbox-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
