//! Opening an outbox: take the lock, scan the segments and their acks,
//! repair what a crash or a damaged disk left (for the owner only), and
//! hand the writer what it needs.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use super::config::OutboxConfig;
use super::format::{self, AckState, Scanned};
use super::lock::lock;
use super::segments::{
    acks_path, io_error, remove_segment, segment_path, segments, set_aside, write_replacing,
};
use super::state::{unix_ms, Entry, EntryState, Ledger, State};
use super::writer::{Failures, Writer};
use crate::durable;
use crate::error::Error;

/// What a scan of the directory found.
pub(super) struct Loaded {
    pub state: State,
    pub max_id: u64,
    pub last_segment: u64,
}

/// Reads every segment and its acks. With `repair` (the owner, at open):
/// damaged bytes are copied to `corrupt/` and each damaged segment is
/// rewritten without them, cut acks tails are truncated, and segments with
/// nothing left are removed. Without it (a reader in another process),
/// nothing is changed.
pub(super) fn load(dir: &Path, repair: bool, durable: bool) -> Result<Loaded, Error> {
    let mut state = State::default();
    let mut max_id = 0;
    let mut last_segment = 0;
    for segment in segments(dir)? {
        last_segment = last_segment.max(segment);
        let path = segment_path(dir, segment);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            // Removed by the owner while we looked (read-only scan).
            Err(e) if e.kind() == io::ErrorKind::NotFound && !repair => continue,
            Err(e) => return Err(io_error("read", &path, e)),
        };
        let acks_file = acks_path(dir, segment);
        let ack_bytes = match fs::read(&acks_file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error("read", &acks_file, e)),
        };
        let (acks, valid) = format::scan_acks(&ack_bytes);
        if repair && valid < ack_bytes.len() {
            tracing::warn!(file = %acks_file.display(), "an acks file ends in an entry cut short; removing it (its record will be sent again)");
            let file = OpenOptions::new()
                .write(true)
                .open(&acks_file)
                .map_err(|e| io_error("repair", &acks_file, e))?;
            file.set_len(valid as u64)
                .map_err(|e| io_error("repair", &acks_file, e))?;
        }
        let mut fates: HashMap<u64, AckState> = HashMap::new();
        for (id, ack) in acks {
            fates.insert(id, ack);
        }

        let scanned = format::scan_segment(&bytes);
        let mut damaged = Vec::new();
        let mut torn = false;
        let mut kept = Vec::new();
        for item in scanned {
            match item {
                Scanned::Record { frame, record } => kept.push((frame, record)),
                Scanned::Damaged(range) => damaged.push(range),
                Scanned::TornTail(_) => torn = true,
            }
        }
        state.corrupt += damaged.len() as u64;
        if repair && (torn || !damaged.is_empty()) {
            for range in &damaged {
                tracing::warn!(segment = %path.display(), offset = range.start, bytes = range.len(), "outbox bytes failed their checksum; set aside in corrupt/");
                set_aside(dir, segment, range.start, &bytes[range.clone()], durable)?;
            }
            // Rewrite the segment with the valid records only, so the
            // damage is reported once and offsets are right.
            let mut clean = Vec::with_capacity(bytes.len());
            let mut moved = Vec::with_capacity(kept.len());
            for (frame, record) in kept {
                let start = clean.len();
                clean.extend_from_slice(&bytes[frame]);
                moved.push((start..clean.len(), record));
            }
            write_replacing(&path, &clean, durable)?;
            kept = moved;
        }

        let mut left = 0;
        for (frame, record) in kept {
            max_id = max_id.max(record.id);
            if state.entries.contains_key(&record.id) {
                // The same record twice (a dead letter copied to a newer
                // segment by `relocate_dead` before the process stopped,
                // a frame copied inside a payload that damage made the
                // scan land in, or a copied file):
                // counting it twice would break every counter and keep
                // its segment forever. The first copy is the record.
                tracing::warn!(segment = %path.display(), id = record.id, "an outbox record appears twice (a dead letter being moved when the process stopped, or damage); keeping the first");
                continue;
            }
            let entry_state = match fates.get(&record.id) {
                Some(AckState::Delivered | AckState::Evicted | AckState::Purged) => continue,
                Some(AckState::Dead(reason)) => EntryState::Dead(reason.clone()),
                Some(AckState::Retry) | None => EntryState::Queued,
            };
            left += 1;
            state.insert(
                record.id,
                Entry {
                    segment,
                    offset: frame.start as u64,
                    frame_len: (frame.end - frame.start) as u32,
                    size: record.payload.len() as u64,
                    enqueued_ms: record.enqueued_ms,
                    kind: record.kind,
                    serial: record.serial,
                    app_id: record.app_id,
                    state: entry_state,
                },
            );
        }
        if left == 0 && repair {
            remove_segment(dir, segment);
            state.segments.remove(&segment);
        }
    }
    Ok(Loaded {
        state,
        max_id,
        last_segment,
    })
}

/// Opens the directory for its owner.
pub(super) fn open(config: OutboxConfig) -> Result<(Ledger, Writer), Error> {
    // Fault points read `FAILPOINTS` (and drop any other configuration)
    // on their first use: done here, a test that opens an outbox and then
    // configures a point keeps its configuration.
    #[cfg(feature = "failpoints")]
    crate::crash::setup();
    let dir = config.dir.clone();
    // A directory created here is synced into its parent (and so on up)
    // before any record in it is reported durable.
    durable::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
    let lock = lock(&dir)?;
    let loaded = load(&dir, true, config.durable)?;
    if loaded.state.corrupt > 0 {
        tracing::warn!(dir = %dir.display(), damaged = loaded.state.corrupt, "outbox records failed their checksum and were set aside");
    }
    tracing::info!(dir = %dir.display(), records = loaded.state.entries.len(), "outbox opened");
    // Ids increase across runs even when every segment was delivered and
    // removed: start from the clock when it is ahead.
    let next_id = (loaded.max_id + 1).max(unix_ms().saturating_mul(1000));
    let writer = Writer {
        dir: dir.clone(),
        durable: config.durable,
        max_bytes: config.max_bytes,
        max_records: config.max_records,
        max_age: config.max_age,
        when_full: config.when_full,
        next_id,
        next_segment: loaded.last_segment + 1,
        active: None,
        acks: HashMap::new(),
        dirty_acks: Vec::new(),
        ack_sync_interval: config.ack_sync_interval,
        ack_sync_every: config.ack_sync_every,
        unsynced_acks: 0,
        unsynced_since: None,
        append_failures: Failures::new("appends"),
        ack_failures: Failures::new("acknowledgements"),
        status_generation: u64::MAX,
        _lock: lock,
    };
    Ok((Ledger::new(config, loaded.state), writer))
}
