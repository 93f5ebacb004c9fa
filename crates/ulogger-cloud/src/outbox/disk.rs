//! The outbox on disk: opening (lock, scan, repair) and the writer thread
//! that owns every write, batching concurrent appends into one fsync
//! (group commit).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::config::{OutboxConfig, WhenFull};
use super::format::{self, AckState, Kind, Scanned, StoredRecord};
use super::state::{unix_ms, Entry, EntryState, Shared, State};
use super::status;
use crate::crash::crash_point;
use crate::error::{Error, ErrorKind};
use crate::wire::DeviceInfo;

/// A segment takes appends until it is this large.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// One batch takes at most this many appends.
const BATCH_APPENDS: usize = 1024;
/// How often the writer evicts records past their age, syncs acks and
/// rewrites the status file.
const IDLE_TICK: Duration = Duration::from_secs(1);

pub(crate) const LOCK_FILE: &str = "LOCK";
pub(crate) const STATUS_FILE: &str = "status.json";
const CORRUPT_DIR: &str = "corrupt";

/// A record to append, as the caller gave it.
pub(crate) struct NewRecord(StoredRecord);

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
pub(crate) enum Request {
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
}

pub(crate) fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("seg-{segment:016}.log"))
}

fn acks_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("seg-{segment:016}.acks"))
}

fn io_error(op: &'static str, path: &Path, e: io::Error) -> Error {
    Error::with_source(
        ErrorKind::Outbox {
            path: path.to_path_buf(),
            op,
        },
        e,
    )
}

/// The segments in `dir`, by number.
fn segments(dir: &Path) -> Result<Vec<u64>, Error> {
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

/// What a scan of the directory found.
pub(crate) struct Loaded {
    pub state: State,
    pub max_id: u64,
    pub last_segment: u64,
}

/// Reads every segment and its acks. With `repair` (the owner, at open):
/// damaged bytes are copied to `corrupt/` and each damaged segment is
/// rewritten without them, cut acks tails are truncated, and segments with
/// nothing left are removed. Without it (a reader in another process),
/// nothing is changed.
pub(crate) fn load(dir: &Path, repair: bool, durable: bool) -> Result<Loaded, Error> {
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
                // The same record twice (a frame copied inside a payload
                // that damage made the scan land in, or a copied file):
                // counting it twice would break every counter and keep
                // its segment forever. The first copy is the record.
                tracing::warn!(segment = %path.display(), id = record.id, "an outbox record appears twice; keeping the first");
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

fn set_aside(
    dir: &Path,
    segment: u64,
    offset: usize,
    bytes: &[u8],
    durable: bool,
) -> Result<(), Error> {
    let corrupt = dir.join(CORRUPT_DIR);
    fs::create_dir_all(&corrupt).map_err(|e| io_error("create", &corrupt, e))?;
    let path = corrupt.join(format!("seg-{segment:016}-at-{offset}.bin"));
    write_replacing(&path, bytes, durable)
}

/// Replaces `path` with `bytes` atomically (temporary file, rename).
fn write_replacing(path: &Path, bytes: &[u8], durable: bool) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io_error("write", path, e))
}

fn remove_segment(dir: &Path, segment: u64) {
    for path in [segment_path(dir, segment), acks_path(dir, segment)] {
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), error = %e, "could not remove a delivered outbox segment");
            }
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
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

/// A full disk on demand, for tests without a small filesystem to fill
/// (failpoint `outbox-disk-full`, feature `failpoints`).
fn injected_write_error() -> io::Result<()> {
    #[cfg(feature = "failpoints")]
    crate::crash::setup();
    #[cfg(feature = "failpoints")]
    fail::fail_point!("outbox-disk-full", |_| Err(io::Error::from(
        io::ErrorKind::StorageFull
    )));
    Ok(())
}

/// Takes the directory's lock, or says who holds it.
fn lock(dir: &Path) -> Result<File, Error> {
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
pub(crate) fn owner_pid(dir: &Path) -> Option<u32> {
    fs::read_to_string(dir.join(LOCK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a process holds the directory's lock now.
pub(crate) fn is_owned(dir: &Path) -> bool {
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

/// Opens the directory for its owner.
pub(crate) fn open(config: OutboxConfig) -> Result<(Shared, Writer), Error> {
    let dir = config.dir.clone();
    create_private_dir(&dir)?;
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
        status_generation: u64::MAX,
        _lock: lock,
    };
    Ok((Shared::new(config, loaded.state), writer))
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| io_error("create", dir, e))
}

/// The segment taking appends.
struct Active {
    number: u64,
    file: File,
    len: u64,
}

/// Owns every write to the directory.
pub(crate) struct Writer {
    dir: PathBuf,
    durable: bool,
    max_bytes: u64,
    max_records: usize,
    max_age: Duration,
    when_full: WhenFull,
    next_id: u64,
    next_segment: u64,
    active: Option<Active>,
    acks: HashMap<u64, File>,
    dirty_acks: Vec<u64>,
    status_generation: u64,
    _lock: File,
}

impl Writer {
    pub fn run(mut self, requests: Receiver<Request>, shared: Arc<Shared>) {
        // Housekeeping (age limit, lazy ack sync, status file) runs about
        // once a tick, busy or idle.
        let mut next_tick = std::time::Instant::now() + IDLE_TICK;
        loop {
            let now = std::time::Instant::now();
            if now >= next_tick {
                self.expire(&shared);
                self.sync_acks();
                self.write_status(&shared);
                next_tick = now + IDLE_TICK;
            }
            let first = match requests.recv_timeout(next_tick.saturating_duration_since(now)) {
                Ok(request) => request,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
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
    fn handle(&mut self, batch: Vec<Request>, shared: &Shared) -> bool {
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
    fn ack(&mut self, id: u64, state: AckState, shared: &Shared) {
        self.acks(vec![(id, state)], shared);
    }

    /// Writes what became of records, one write per acks file, then
    /// applies it.
    fn acks(&mut self, acks: Vec<(u64, AckState)>, shared: &Shared) {
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
            if let Err(e) = written {
                // Without the ack a record is simply sent again after a
                // restart: at least once, as promised.
                tracing::warn!(segment, error = %e, "could not record outbox acknowledgements");
            }
        }
        if known
            .iter()
            .any(|(_, ack)| matches!(ack, AckState::Dead(_)))
        {
            // A dead letter must not come back as queued after a crash.
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
    }

    fn write_ack(&mut self, segment: u64, entry: &[u8]) -> io::Result<()> {
        let file = match self.acks.entry(segment) {
            std::collections::hash_map::Entry::Occupied(file) => file.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(acks_path(&self.dir, segment))?,
            ),
        };
        file.write_all(entry)?;
        if !self.dirty_acks.contains(&segment) {
            self.dirty_acks.push(segment);
        }
        Ok(())
    }

    /// Acks are written at once (a crash of the process loses none) but
    /// synced lazily: a power cut can only make a delivered record be
    /// sent again.
    fn sync_acks(&mut self) {
        if !self.durable {
            self.dirty_acks.clear();
            return;
        }
        for segment in self.dirty_acks.drain(..) {
            if let Some(file) = self.acks.get(&segment) {
                if let Err(e) = file.sync_data() {
                    tracing::warn!(segment, error = %e, "could not sync outbox acknowledgements");
                }
            }
        }
    }

    fn remove_if_done(&mut self, segment: u64, shared: &Shared) {
        if self.active.as_ref().is_some_and(|a| a.number == segment) {
            return;
        }
        let mut state = shared.lock();
        if state.segments.get(&segment).copied().unwrap_or(0) == 0 {
            state.segments.remove(&segment);
            drop(state);
            self.acks.remove(&segment);
            self.dirty_acks.retain(|s| *s != segment);
            remove_segment(&self.dir, segment);
        }
    }

    /// Makes room under the bounds, or refuses appends that do not fit.
    fn make_room(&mut self, records: usize, bytes: u64, shared: &Shared) -> Result<(), Error> {
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

    fn expire(&mut self, shared: &Shared) {
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
        shared: &Shared,
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
        let (number, base) = match self.write_batch(&buf) {
            Ok(at) => at,
            Err(e) => {
                tracing::warn!(error = %super::state::error_chain(&e), "could not append to the outbox");
                for f in framed {
                    let _ = f.reply.send(Err(e.clone()));
                }
                return;
            }
        };
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

    /// Writes `buf` at the end of the active segment and syncs it; on
    /// failure the segment is cut back so no partial record stays.
    /// Returns the segment and the offset the batch starts at.
    fn write_batch(&mut self, buf: &[u8]) -> Result<(u64, u64), Error> {
        if self.active.is_none() {
            let number = self.next_segment;
            let path = segment_path(&self.dir, number);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_error("create", &path, e))?;
            if self.durable {
                sync_dir(&self.dir).map_err(|e| io_error("sync", &self.dir, e))?;
            }
            self.next_segment += 1;
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
            .and_then(|()| active.file.write_all(buf))
            .and_then(|()| {
                crash_point!("outbox-before-sync");
                if self.durable {
                    active.file.sync_data()
                } else {
                    Ok(())
                }
            });
        crash_point!("outbox-after-sync");
        if let Err(e) = written {
            // Leave no partial record behind; if even that fails, the
            // next open finds the torn tail by its checksum.
            let _ = active.file.set_len(active.len);
            return Err(io_error("append to", &path, e));
        }
        let base = active.len;
        let number = active.number;
        active.len += buf.len() as u64;
        if active.len >= SEGMENT_BYTES {
            self.active = None;
        }
        Ok((number, base))
    }

    fn write_status(&mut self, shared: &Shared) {
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
    use super::*;

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
