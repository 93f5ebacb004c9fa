//! The writer thread: owns every write to the directory, batching
//! concurrent appends into one fsync (group commit), recording acks,
//! evicting, expiring and rewriting the status file.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::config::WhenFull;
use super::format::{self, AckState, Kind, StoredRecord};
use super::segments::{
    acks_path, injected_write_error, io_error, open_acks, read_frames, remove_segment,
    segment_path, write_replacing, AcksFile, STATUS_FILE,
};
use super::state::{unix_ms, Entry, EntryState, Ledger};
use super::status;
use crate::crash::crash_point;
use crate::durable;
use crate::error::{Error, ErrorKind};
use crate::wire::DeviceInfo;

/// A segment takes appends until it is this large.
pub(super) const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// One batch takes at most this many appends.
pub(super) const BATCH_APPENDS: usize = 1024;

/// How often the writer evicts records past their age, reports failures
/// still going on and rewrites the status file, while there is something
/// to do so for: an empty outbox with its status written and no failure
/// going on waits for the next request without a timer (an idle gateway
/// sleeps; a change made outside the writer sends [`Request::Refresh`]).
pub(super) const IDLE_TICK: Duration = Duration::from_secs(1);

/// A record to append, as the caller gave it.
pub(super) struct NewRecord(StoredRecord);

impl NewRecord {
    pub fn new(kind: Kind, device: Option<&DeviceInfo>, payload: &[u8]) -> NewRecord {
        let (app_id, serial, device_type, git_version, git_hash) = match device {
            Some(d) => (
                d.app_id,
                d.serial.clone(),
                d.device_type.clone(),
                d.git_version.clone(),
                d.git_hash.clone(),
            ),
            None => Default::default(),
        };
        NewRecord(StoredRecord {
            id: 0,
            enqueued_ms: unix_ms(),
            kind,
            app_id,
            serial,
            device_type,
            git_version,
            git_hash,
            payload: payload.to_vec(),
        })
    }

    /// A telemetry message of `serial` (empty for a batch) for the topic
    /// of `app_id`.
    pub fn telemetry(kind: Kind, app_id: u32, serial: &str, payload: &[u8]) -> NewRecord {
        let mut record = NewRecord::new(kind, None, payload);
        record.0.app_id = app_id;
        record.0.serial = serial.to_owned();
        record
    }
}

/// What the writer thread is asked to do.
pub(super) enum Request {
    Append {
        record: NewRecord,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// Record what became of a record.
    Ack { id: u64, state: AckState },
    /// Reply once everything before this is durable.
    Flush { reply: oneshot::Sender<()> },
    /// Sync, write the status file and stop.
    Close,
    /// Something outside the writer changed the status (a connection
    /// failed or came up): rewrite the status file, even if idle.
    Refresh,
}

/// The segment taking appends.
pub(super) struct Active {
    pub(super) number: u64,
    pub(super) file: File,
    pub(super) len: u64,
}

/// A run of failures of one kind of write, logged once with how often it
/// repeated rather than once per batch: a failing disk fails every append,
/// and a warning each would bury the first (the one that says why).
pub(super) struct Failures {
    pub(super) what: &'static str,
    pub(super) failing: bool,
    pub(super) repeats: u64,
}

impl Failures {
    pub(super) fn new(what: &'static str) -> Failures {
        Failures {
            what,
            failing: false,
            repeats: 0,
        }
    }

    /// Notes a failure; logs it if it starts a run. True when logged.
    fn failed(&mut self, error: &Error) -> bool {
        if self.failing {
            self.repeats += 1;
            return false;
        }
        self.failing = true;
        tracing::warn!(what = self.what, error = %super::state::error_chain(error), "outbox writes failing (the data they covered is treated as lost; repeats are counted, not logged each)");
        true
    }

    /// Notes a success; logs the end of a run with its repeats.
    fn succeeded(&mut self) {
        if self.failing {
            tracing::info!(
                what = self.what,
                repeats = self.repeats,
                "outbox writes succeed again"
            );
            self.failing = false;
            self.repeats = 0;
        }
    }

    /// Once a tick: how often a run still going repeated since the last
    /// report. The repeats reported (0 when nothing was logged).
    fn report(&mut self) -> u64 {
        let repeats = std::mem::take(&mut self.repeats);
        if self.failing && repeats > 0 {
            tracing::warn!(what = self.what, repeats, "outbox writes still failing");
        }
        repeats
    }
}

/// Owns every write to the directory.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) durable: bool,
    pub(super) max_bytes: u64,
    pub(super) max_records: usize,
    pub(super) max_age: Duration,
    pub(super) when_full: WhenFull,
    pub(super) next_id: u64,
    pub(super) next_segment: u64,
    pub(super) active: Option<Active>,
    pub(super) acks: HashMap<u64, AcksFile>,
    pub(super) dirty_acks: Vec<u64>,
    pub(super) ack_sync_interval: Duration,
    pub(super) ack_sync_every: usize,
    /// Acks written since the last sync, and since when the oldest waits.
    pub(super) unsynced_acks: usize,
    pub(super) unsynced_since: Option<Instant>,
    pub(super) append_failures: Failures,
    pub(super) ack_failures: Failures,
    pub(super) status_generation: u64,
    pub(super) _lock: File,
}

impl Writer {
    pub fn run(mut self, requests: Receiver<Request>, shared: Arc<Ledger>) {
        // Housekeeping (age limit, status file) runs about once a tick,
        // busy or idle; acks are synced by their own deadline.
        let mut next_tick = Instant::now() + IDLE_TICK;
        // Segments left holding only dead letters by an earlier run (or by
        // a crash in the middle of moving them).
        let segments: Vec<u64> = shared.lock().segments.keys().copied().collect();
        for segment in segments {
            self.relocate_dead(segment, &shared);
        }
        loop {
            let now = Instant::now();
            if now >= next_tick {
                self.expire(&shared);
                self.write_status(&shared);
                self.append_failures.report();
                self.ack_failures.report();
                next_tick = now + IDLE_TICK;
            }
            if self.ack_sync_due(now) {
                self.sync_acks();
            }
            let wake = match self.ack_sync_deadline() {
                Some(deadline) => Some(deadline.min(next_tick)),
                None if self.idle(&shared) => None,
                None => Some(next_tick),
            };
            let first = match wake {
                Some(wake) => match requests.recv_timeout(wake.saturating_duration_since(now)) {
                    Ok(request) => request,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                // Housekeeping has nothing to do until a request comes;
                // the tick is then due at once.
                None => match requests.recv() {
                    Ok(request) => {
                        next_tick = Instant::now();
                        request
                    }
                    Err(_) => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < BATCH_APPENDS {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            if !self.handle(batch, &shared) {
                break;
            }
        }
        self.sync_acks();
        self.write_status(&shared);
    }

    /// Handles one batch; false when asked to close.
    fn handle(&mut self, batch: Vec<Request>, shared: &Ledger) -> bool {
        let mut appends = Vec::new();
        let mut acks = Vec::new();
        let mut flushes = Vec::new();
        let mut close = false;
        for request in batch {
            match request {
                Request::Append { record, reply } => appends.push((record, reply)),
                Request::Ack { id, state } => acks.push((id, state)),
                Request::Flush { reply } => flushes.push(reply),
                Request::Close => close = true,
                Request::Refresh => {}
            }
        }
        if !acks.is_empty() {
            self.acks(acks, shared);
        }
        if !appends.is_empty() {
            self.append(appends, shared);
        }
        if !flushes.is_empty() {
            self.sync_acks();
            for reply in flushes {
                let _ = reply.send(());
            }
        }
        !close
    }

    /// Writes what became of one record and applies it.
    fn ack(&mut self, id: u64, state: AckState, shared: &Ledger) {
        self.acks(vec![(id, state)], shared);
    }

    /// Writes what became of records, one write per acks file, then
    /// applies it.
    fn acks(&mut self, acks: Vec<(u64, AckState)>, shared: &Ledger) {
        let mut by_segment: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut known = Vec::with_capacity(acks.len());
        {
            let state = shared.lock();
            for (id, ack) in acks {
                if let Some(entry) = state.entries.get(&id) {
                    format::encode_ack(id, &ack, by_segment.entry(entry.segment).or_default());
                    known.push((id, ack));
                }
            }
        }
        for (segment, entries) in &by_segment {
            let written = self.write_ack(*segment, entries);
            crash_point!("outbox-after-ack");
            match written {
                Ok(()) => self.ack_failures.succeeded(),
                // Without the ack a record is simply sent again after a
                // restart: at least once, as promised.
                Err(e) => {
                    self.ack_failures.failed(&io_error(
                        "append to",
                        &acks_path(&self.dir, *segment),
                        e,
                    ));
                }
            }
        }
        self.note_unsynced(known.len());
        // Before the records are settled, so that whoever learns of an
        // outcome finds it synced if it was due.
        if known
            .iter()
            .any(|(_, ack)| matches!(ack, AckState::Dead(_)))
        {
            // A dead letter must not come back as queued after a crash.
            self.sync_acks();
        } else if self.ack_sync_due(Instant::now()) {
            self.sync_acks();
        }
        let mut emptied = Vec::new();
        {
            let mut state = shared.lock();
            for (id, ack) in &known {
                if let Some(segment) = state.settle(*id, ack) {
                    emptied.push(segment);
                }
            }
        }
        if !known.is_empty() {
            // Room in the delivery window, or records handed back.
            shared.wake.notify_one();
        }
        emptied.sort_unstable();
        emptied.dedup();
        for segment in emptied {
            self.remove_if_done(segment, shared);
        }
        let mut touched: Vec<u64> = by_segment.into_keys().collect();
        touched.sort_unstable();
        for segment in touched {
            self.relocate_dead(segment, shared);
        }
    }

    /// Moves the dead letters out of `segment` once nothing else in it is
    /// left, if they take at most half of it: copied to the active segment
    /// with their ids and their dead acks (durable), then the segment is
    /// removed. Without this, a dead letter kept (up to `max_age`) would
    /// keep a whole segment of delivered records on disk, and disk use
    /// could grow far past `max_bytes`. The half makes each byte moved
    /// free at least one other; a segment mostly of dead letters stays.
    ///
    /// A crash after the copy and before the removal leaves both copies;
    /// the next open keeps the first (the old one, with its acks) and moves
    /// it again, so a letter is never lost nor counted twice. Any failure
    /// leaves the segment as it was.
    fn relocate_dead(&mut self, segment: u64, shared: &Ledger) {
        if self.active.as_ref().is_some_and(|a| a.number == segment) {
            return;
        }
        // Cheap checks first: this runs after every batch of acks.
        let Some(moved_bytes) = shared.lock().only_dead_in(segment) else {
            return;
        };
        let path = segment_path(&self.dir, segment);
        let file_len = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "could not look at an outbox segment holding only dead letters");
                return;
            }
        };
        if moved_bytes.saturating_mul(2) > file_len {
            return;
        }
        // Only the writer changes dead letters and segments, so this is
        // what `moved_bytes` counted.
        let letters = shared.lock().entries_in(segment);
        debug_assert_eq!(
            letters
                .iter()
                .map(|(_, e)| u64::from(e.frame_len))
                .sum::<u64>(),
            moved_bytes,
            "dead-letter bytes counted wrong"
        );
        let frames = match read_frames(&path, &letters) {
            Ok(frames) => frames,
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "could not read the dead letters of an outbox segment; it stays");
                return;
            }
        };
        let (number, base) = match self.write_batch(&frames, shared) {
            Ok(at) => at,
            Err(e) => {
                tracing::warn!(error = %super::state::error_chain(&e), "could not move dead letters out of an outbox segment; it stays");
                return;
            }
        };
        let mut acks = Vec::new();
        for (id, entry) in &letters {
            if let EntryState::Dead(reason) = &entry.state {
                format::encode_ack(*id, &AckState::Dead(reason.clone()), &mut acks);
            }
        }
        let acked = self
            .write_ack(number, &acks)
            .and_then(|()| match self.acks.get(&number) {
                Some(acks) if self.durable => {
                    crate::crash::fault("outbox-sync-acks").and_then(|()| acks.file.sync_data())
                }
                _ => Ok(()),
            });
        if let Err(e) = acked {
            // The copies have no dead acks: the old segment must stay the
            // record (the first copy wins at the next open).
            tracing::warn!(segment = number, error = %e, "could not record moved dead letters; their segment stays");
            return;
        }
        if !self.remove_files(segment) {
            // The old copies stay the record (the first copy wins at the
            // next open); the new ones count for nothing.
            return;
        }
        let mut state = shared.lock();
        let mut offset = base;
        for (id, entry) in &letters {
            state.moved(*id, segment, number, offset);
            offset += u64::from(entry.frame_len);
        }
        tracing::info!(
            from = segment,
            to = number,
            letters = letters.len(),
            bytes = moved_bytes,
            freed = file_len,
            "moved dead letters out of an outbox segment"
        );
    }

    fn write_ack(&mut self, segment: u64, entry: &[u8]) -> io::Result<()> {
        let file = match self.acks.entry(segment) {
            std::collections::hash_map::Entry::Occupied(file) => file.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(open_acks(&self.dir, segment, self.durable)?)
            }
        };
        let written =
            crate::crash::fault("outbox-write-acks").and_then(|()| file.file.write_all(entry));
        if !self.dirty_acks.contains(&segment) {
            self.dirty_acks.push(segment);
        }
        if let Err(e) = written {
            // Leave no torn entry: the next open would stop reading there
            // and lose every ack written after it.
            let _ = file.file.set_len(file.len);
            return Err(e);
        }
        file.len += entry.len() as u64;
        Ok(())
    }

    /// Notes `count` acks written and not yet synced.
    fn note_unsynced(&mut self, count: usize) {
        if count > 0 {
            self.unsynced_acks += count;
            self.unsynced_since.get_or_insert_with(Instant::now);
        }
    }

    /// Whether the acks written are due to be synced: enough of them
    /// wait, or the oldest has waited the interval.
    fn ack_sync_due(&self, now: Instant) -> bool {
        self.unsynced_since.is_some_and(|since| {
            self.unsynced_acks >= self.ack_sync_every
                || now.saturating_duration_since(since) >= self.ack_sync_interval
        })
    }

    /// When the acks written must be synced at the latest.
    fn ack_sync_deadline(&self) -> Option<Instant> {
        self.unsynced_since
            .and_then(|since| since.checked_add(self.ack_sync_interval))
    }

    /// Acks are written at once (a crash of the process loses none) but
    /// synced in groups (`ack_sync_interval`, `ack_sync_every`): a power
    /// cut can only make the records delivered since the last sync be
    /// sent again.
    fn sync_acks(&mut self) {
        self.unsynced_acks = 0;
        self.unsynced_since = None;
        if !self.durable {
            self.dirty_acks.clear();
            return;
        }
        for segment in std::mem::take(&mut self.dirty_acks) {
            let Some(acks) = self.acks.get(&segment) else {
                continue;
            };
            let synced =
                crate::crash::fault("outbox-sync-acks").and_then(|()| acks.file.sync_data());
            match synced {
                Ok(()) => self.ack_failures.succeeded(),
                // The acks it covered may be lost (Linux can drop pages a
                // failed writeback covered and report the error once): at
                // worst their records are sent again after a power cut.
                // Syncing again could only succeed without them.
                Err(e) => {
                    self.ack_failures
                        .failed(&io_error("sync", &acks_path(&self.dir, segment), e));
                }
            }
        }
    }

    fn remove_if_done(&mut self, segment: u64, shared: &Ledger) {
        if self.active.as_ref().is_some_and(|a| a.number == segment) {
            return;
        }
        let mut state = shared.lock();
        if state.segments.get(&segment).copied().unwrap_or(0) == 0 {
            state.segments.remove(&segment);
            drop(state);
            self.remove_files(segment);
        }
    }

    /// Removes `segment`'s files and forgets its acks file; true when its
    /// records are gone (see [`remove_segment`]).
    fn remove_files(&mut self, segment: u64) -> bool {
        self.acks.remove(&segment);
        self.dirty_acks.retain(|s| *s != segment);
        remove_segment(&self.dir, segment)
    }

    /// Makes room under the bounds, or refuses appends that do not fit.
    fn make_room(&mut self, records: usize, bytes: u64, shared: &Ledger) -> Result<(), Error> {
        let (held_records, held_bytes) = {
            let state = shared.lock();
            (state.entries.len(), state.bytes)
        };
        let over_records = (held_records + records).saturating_sub(self.max_records);
        let over_bytes = (held_bytes + bytes).saturating_sub(self.max_bytes);
        if over_records == 0 && over_bytes == 0 {
            return Ok(());
        }
        let full = || {
            Error::from(ErrorKind::OutboxFull {
                records: held_records,
                bytes: held_bytes,
            })
        };
        if self.when_full == WhenFull::Reject
            || records > self.max_records
            || bytes > self.max_bytes
        {
            return Err(full());
        }
        let victims = shared.lock().eviction_candidates(over_records, over_bytes);
        let freed: u64 = {
            let state = shared.lock();
            victims
                .iter()
                .filter_map(|id| state.entries.get(id))
                .map(|e| e.size)
                .sum()
        };
        if victims.len() < over_records || freed < over_bytes {
            // Everything left is in flight.
            return Err(full());
        }
        tracing::warn!(
            records = victims.len(),
            bytes = freed,
            "outbox full: evicting the oldest records"
        );
        for id in victims {
            self.ack(id, AckState::Evicted, shared);
        }
        Ok(())
    }

    /// Nothing for housekeeping to do: no record to age, the status file
    /// up to date, no write failure going on.
    fn idle(&self, shared: &Ledger) -> bool {
        let (empty, generation) = {
            let state = shared.lock();
            (state.entries.is_empty(), state.generation)
        };
        empty
            && generation == self.status_generation
            && !self.append_failures.failing
            && !self.ack_failures.failing
            && self.append_failures.repeats == 0
            && self.ack_failures.repeats == 0
    }

    fn expire(&mut self, shared: &Ledger) {
        let expired = shared.lock().expired(self.max_age);
        if !expired.is_empty() {
            tracing::warn!(records = expired.len(), max_age = ?self.max_age, "evicting outbox records past their maximum age");
            for id in expired {
                self.ack(id, AckState::Evicted, shared);
            }
        }
    }

    /// Appends a batch with one write and one fsync, then makes it
    /// visible to delivery and answers every caller.
    fn append(
        &mut self,
        appends: Vec<(NewRecord, oneshot::Sender<Result<u64, Error>>)>,
        shared: &Ledger,
    ) {
        struct Framed {
            frame: std::ops::Range<usize>,
            record: StoredRecord,
            reply: oneshot::Sender<Result<u64, Error>>,
        }
        let mut buf = Vec::new();
        let mut framed: Vec<Framed> = Vec::with_capacity(appends.len());
        let mut batch_bytes = 0u64;
        for (NewRecord(mut record), reply) in appends {
            let size = record.payload.len() as u64;
            if let Err(e) = self.make_room(framed.len() + 1, batch_bytes + size, shared) {
                let _ = reply.send(Err(e));
                continue;
            }
            record.id = self.next_id;
            let start = buf.len();
            if let Err(reason) = format::encode_record(&record, &mut buf) {
                let _ = reply.send(Err(Error::config("outbox record", reason)));
                continue;
            }
            self.next_id += 1;
            batch_bytes += size;
            framed.push(Framed {
                frame: start..buf.len(),
                record,
                reply,
            });
        }
        if framed.is_empty() {
            return;
        }
        let (number, base) = match self.write_batch(&buf, shared) {
            Ok(at) => at,
            Err(e) => {
                self.append_failures.failed(&e);
                for f in framed {
                    let _ = f.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        self.append_failures.succeeded();
        let mut replies = Vec::with_capacity(framed.len());
        {
            let mut state = shared.lock();
            for Framed {
                frame,
                record,
                reply,
            } in framed
            {
                replies.push((reply, record.id));
                state.insert(
                    record.id,
                    Entry {
                        segment: number,
                        offset: base + frame.start as u64,
                        frame_len: (frame.end - frame.start) as u32,
                        size: record.payload.len() as u64,
                        enqueued_ms: record.enqueued_ms,
                        kind: record.kind,
                        serial: record.serial,
                        app_id: record.app_id,
                        state: EntryState::Queued,
                    },
                );
            }
        }
        shared.wake.notify_one();
        for (reply, id) in replies {
            let _ = reply.send(Ok(id));
        }
    }

    /// Writes `buf` at the end of the active segment and syncs it.
    /// Returns the segment and the offset the batch starts at.
    ///
    /// After any failure the batch counts as lost, and so does anything
    /// else the failed write or fsync covered: Linux may drop dirty pages
    /// whose writeback failed and report the error only once, so a later
    /// fsync of the same file could succeed without them. So the segment
    /// is cut back (no partial record stays) and sealed, and the next
    /// batch goes to a fresh segment with the next free number; records
    /// synced into the old one before stay where they are.
    fn write_batch(&mut self, buf: &[u8], shared: &Ledger) -> Result<(u64, u64), Error> {
        if self.active.is_none() {
            // The number is used up whatever happens: a file left by a
            // failed attempt must not fail every later one with "exists".
            let number = self.next_segment;
            self.next_segment += 1;
            let path = segment_path(&self.dir, number);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_error("create", &path, e))?;
            if self.durable {
                if let Err(e) = durable::sync_dir(&self.dir) {
                    // Its name may never reach the disk, and every record
                    // synced into it would vanish with it.
                    let _ = fs::remove_file(&path);
                    return Err(io_error("sync", &self.dir, e));
                }
            }
            self.active = Some(Active {
                number,
                file,
                len: 0,
            });
        }
        let Some(active) = self.active.as_mut() else {
            return Err(ErrorKind::Shutdown.into());
        };
        let path = segment_path(&self.dir, active.number);
        let written = injected_write_error()
            .and_then(|()| crate::crash::fault("outbox-write-segment"))
            .and_then(|()| active.file.write_all(buf))
            .map_err(|e| io_error("append to", &path, e))
            .and_then(|()| {
                crash_point!("outbox-before-sync");
                if self.durable {
                    crate::crash::fault("outbox-sync-segment")
                        .and_then(|()| active.file.sync_data())
                        .map_err(|e| io_error("sync", &path, e))
                } else {
                    Ok(())
                }
            });
        crash_point!("outbox-after-sync");
        if let Err(e) = written {
            // If even the cut fails, the next open finds a torn tail by
            // its checksum, or whole records whose callers were told they
            // failed (sent then, at least once).
            let _ = active.file.set_len(active.len);
            let number = active.number;
            self.active = None;
            // Gone at once if nothing in it is left (or ever was).
            self.remove_if_done(number, shared);
            return Err(e);
        }
        let base = active.len;
        let number = active.number;
        active.len += buf.len() as u64;
        if active.len >= SEGMENT_BYTES {
            self.active = None;
        }
        Ok((number, base))
    }

    fn write_status(&mut self, shared: &Ledger) {
        let generation = shared.lock().generation;
        if generation == self.status_generation {
            return;
        }
        self.status_generation = generation;
        let status = shared.status();
        let path = self.dir.join(STATUS_FILE);
        match serde_json::to_vec_pretty(&status::StatusFile::from_status(&status)) {
            Ok(bytes) => {
                if let Err(e) = write_replacing(&path, &bytes, false) {
                    tracing::debug!(error = %e, "could not write the outbox status file");
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not encode the outbox status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::config::OutboxConfig;
    use super::super::format::Scanned;
    use super::super::load::load;
    use super::super::segments::{read_at, segments};
    use super::*;
    use crate::outbox::{Outbox, RecordState};

    fn log_files(dir: &Path) -> Vec<u64> {
        segments(dir).unwrap()
    }

    async fn ack(outbox: &Outbox, id: u64, state: AckState) {
        outbox.send(Request::Ack { id, state }).unwrap();
        outbox.flush().await.unwrap();
    }

    /// An outbox in `dir` holding, in one sealed segment, a small record
    /// to become a dead letter and `others` records of `other_size` bytes;
    /// returns the ids, the doomed one first.
    async fn sealed_segment(
        dir: &Path,
        doomed_size: usize,
        others: usize,
        other_size: usize,
    ) -> Vec<u64> {
        let outbox = Outbox::open(OutboxConfig::new(dir)).unwrap();
        let mut ids = vec![
            outbox
                .append(Kind::Log, None, &vec![1; doomed_size])
                .await
                .unwrap()
                .0,
        ];
        for n in 0..others {
            ids.push(
                outbox
                    .append(Kind::Log, None, &vec![n as u8; other_size])
                    .await
                    .unwrap()
                    .0,
            );
        }
        drop(outbox);
        ids
    }

    #[tokio::test]
    async fn a_segment_left_with_only_dead_letters_is_moved_out_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ids = sealed_segment(dir.path(), 100, 10, 1024).await;
        assert_eq!(log_files(dir.path()), [1]);
        // Reopened, the first segment is sealed: appends go to a new one.
        let outbox = Outbox::open(OutboxConfig::new(dir.path())).unwrap();
        ack(&outbox, ids[0], AckState::Dead("refused for good".into())).await;
        for id in &ids[1..ids.len() - 1] {
            ack(&outbox, *id, AckState::Delivered).await;
        }
        assert_eq!(log_files(dir.path()), [1], "a record is still queued in it");
        ack(&outbox, ids[ids.len() - 1], AckState::Delivered).await;

        // Only the dead letter was left: it moved to a segment of its own
        // and the 10 KiB of delivered records went with the old one.
        assert_eq!(log_files(dir.path()), [2]);
        assert!(!acks_path(dir.path(), 1).exists());
        let listed = outbox.records();
        assert!(
            matches!(&listed[..], [r] if r.id.0 == ids[0] && matches!(&r.state, RecordState::Dead { reason } if reason == "refused for good")),
            "{listed:?}"
        );
        let entry = outbox.shared.lock().entries[&ids[0]].clone();
        assert_eq!(entry.segment, 2);
        let file = File::open(segment_path(dir.path(), 2)).unwrap();
        let frame = read_at(&file, entry.offset, entry.frame_len as usize).unwrap();
        match format::scan_segment(&frame).first() {
            Some(Scanned::Record { record, .. }) => {
                assert_eq!((record.id, &record.payload[..]), (ids[0], &[1u8; 100][..]));
            }
            _ => panic!("the moved record reads back"),
        }
        let status = outbox.status();
        assert_eq!((status.dead, status.queued), (1, 0), "{status:?}");
        drop(outbox);

        // Another run sees the same dead letter, and can retry it.
        let outbox = Outbox::open(OutboxConfig::new(dir.path())).unwrap();
        assert_eq!(outbox.status().dead, 1);
        assert_eq!(outbox.retry_dead().await.unwrap(), 1);
        let listed = outbox.records();
        assert!(
            matches!(&listed[..], [r] if r.id.0 == ids[0] && r.state == RecordState::Queued),
            "{listed:?}"
        );
    }

    #[tokio::test]
    async fn a_segment_mostly_of_dead_letters_stays_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let ids = sealed_segment(dir.path(), 8 * 1024, 2, 1024).await;
        let outbox = Outbox::open(OutboxConfig::new(dir.path())).unwrap();
        ack(&outbox, ids[0], AckState::Dead("refused".into())).await;
        ack(&outbox, ids[1], AckState::Delivered).await;
        ack(&outbox, ids[2], AckState::Delivered).await;
        // Moving 8 KiB to free 2 KiB is not worth it.
        assert_eq!(log_files(dir.path()), [1]);
        assert_eq!(outbox.shared.lock().entries[&ids[0]].segment, 1);
        assert_eq!(outbox.status().dead, 1);
    }

    #[tokio::test]
    async fn once_the_large_dead_letters_are_gone_the_small_ones_move() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(OutboxConfig::new(dir.path())).unwrap();
        let large = outbox
            .append(Kind::Log, None, &[7; 8 * 1024])
            .await
            .unwrap()
            .0;
        let small = outbox.append(Kind::Log, None, &[8; 100]).await.unwrap().0;
        let other = outbox.append(Kind::Log, None, &[9; 1024]).await.unwrap().0;
        drop(outbox);
        let outbox = Outbox::open(OutboxConfig::new(dir.path())).unwrap();
        ack(&outbox, large, AckState::Dead("refused".into())).await;
        ack(&outbox, small, AckState::Dead("refused".into())).await;
        ack(&outbox, other, AckState::Delivered).await;
        assert_eq!(log_files(dir.path()), [1], "mostly dead letters: it stays");
        // The large one purged: what is left is small enough to move.
        ack(&outbox, large, AckState::Purged).await;
        assert_eq!(log_files(dir.path()), [2]);
        let state = outbox.shared.lock();
        assert_eq!(state.entries.keys().copied().collect::<Vec<_>>(), [small]);
        assert_eq!(state.entries[&small].segment, 2);
        assert_eq!(
            state.only_dead_in(2),
            Some(u64::from(state.entries[&small].frame_len))
        );
        assert_eq!(state.only_dead_in(1), None);
    }

    /// A crash after the copy and before the old segment's removal leaves
    /// the letter in both: the old copy (first) is the record, the new one
    /// is ignored, and the move is made again at open.
    #[tokio::test]
    async fn a_move_cut_short_by_a_crash_is_made_again_and_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut doomed = NewRecord::new(Kind::Log, None, b"doomed").0;
        doomed.id = 7;
        let mut delivered = NewRecord::new(Kind::Log, None, &[9; 512]).0;
        delivered.id = 8;
        let (mut first, mut copy) = (Vec::new(), Vec::new());
        format::encode_record(&doomed, &mut first).unwrap();
        format::encode_record(&delivered, &mut first).unwrap();
        format::encode_record(&doomed, &mut copy).unwrap();
        fs::write(segment_path(dir.path(), 1), &first).unwrap();
        fs::write(segment_path(dir.path(), 2), &copy).unwrap();
        let mut acks = Vec::new();
        format::encode_ack(7, &AckState::Dead("refused".into()), &mut acks);
        format::encode_ack(8, &AckState::Delivered, &mut acks);
        fs::write(acks_path(dir.path(), 1), &acks).unwrap();
        let mut copy_acks = Vec::new();
        format::encode_ack(7, &AckState::Dead("refused".into()), &mut copy_acks);
        fs::write(acks_path(dir.path(), 2), &copy_acks).unwrap();

        let outbox = Outbox::open(OutboxConfig::new(dir.path())).unwrap();
        outbox.flush().await.unwrap();
        // Segment 2 held only an ignored copy (removed at load); segment 1
        // was moved out at open.
        assert_eq!(log_files(dir.path()), [3]);
        let status = outbox.status();
        assert_eq!((status.dead, status.queued), (1, 0), "{status:?}");
        let state = outbox.shared.lock();
        assert_eq!(state.bytes, 6);
        assert_eq!(state.entries.len(), 1);
        assert_eq!(state.entries[&7].segment, 3);
        assert_eq!(state.segments.keys().copied().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn a_run_of_failures_is_logged_once_then_counted() {
        let error = io_error("sync", Path::new("seg"), io::Error::from_raw_os_error(5));
        let mut failures = Failures::new("appends");
        assert!(failures.failed(&error), "the first is logged");
        assert!(!failures.failed(&error), "a repeat is counted");
        assert!(!failures.failed(&error));
        assert_eq!(failures.report(), 2);
        assert_eq!(failures.report(), 0, "counted since the last report");
        failures.succeeded();
        assert!(failures.failed(&error), "a new run is logged again");
    }

    #[test]
    fn a_record_found_twice_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = NewRecord::new(Kind::Log, None, b"payload").0;
        record.id = 7;
        let mut frame = Vec::new();
        format::encode_record(&record, &mut frame).unwrap();
        let mut segment = frame.clone();
        segment.extend_from_slice(&frame);
        fs::write(segment_path(dir.path(), 1), &segment).unwrap();
        let mut acks = Vec::new();
        format::encode_ack(7, &AckState::Dead("refused".into()), &mut acks);
        fs::write(acks_path(dir.path(), 1), &acks).unwrap();

        let loaded = load(dir.path(), false, false).unwrap();
        assert_eq!(loaded.state.entries.len(), 1);
        assert_eq!(loaded.state.dead, 1);
        assert_eq!(loaded.state.bytes, 7);
        assert_eq!(loaded.state.segments.get(&1), Some(&1));
    }
}
