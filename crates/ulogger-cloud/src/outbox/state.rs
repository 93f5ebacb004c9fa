//! What an open outbox holds in memory: one small entry per record on
//! disk (its place and state, not its bytes), counters, and who waits for
//! which record.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Notify};

use super::config::OutboxConfig;
use super::format::{AckState, Kind};
use super::status::{OutboxRecord, OutboxStatus, RecordKind, RecordState};
use super::RecordId;
use crate::error::{Error, ErrorKind};

/// Takes one from `key`'s count, dropping the key at zero.
fn forget_one(counts: &mut BTreeMap<u64, usize>, key: u64) {
    if let std::collections::btree_map::Entry::Occupied(mut count) = counts.entry(key) {
        *count.get_mut() = count.get().saturating_sub(1);
        if *count.get() == 0 {
            count.remove();
        }
    }
}

/// The dead letters of one segment.
#[derive(Debug, Default, Clone, Copy)]
struct DeadIn {
    count: usize,
    bytes: u64,
}

impl DeadIn {
    fn add(&mut self, frame_len: u32) {
        self.count += 1;
        self.bytes += u64::from(frame_len);
    }
}

/// Takes one dead letter of `frame_len` bytes from `segment`'s, dropping
/// the segment at zero.
fn forget_dead(dead_in: &mut BTreeMap<u64, DeadIn>, segment: u64, frame_len: u32) {
    if let std::collections::btree_map::Entry::Occupied(mut dead) = dead_in.entry(segment) {
        let d = dead.get_mut();
        d.count = d.count.saturating_sub(1);
        d.bytes = d.bytes.saturating_sub(u64::from(frame_len));
        if d.count == 0 {
            dead.remove();
        }
    }
}

/// Outcomes remembered for callers that ask after the fact.
const RECENT_OUTCOMES: usize = 65_536;
/// The window over which the delivery rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Where a record is on disk and how far it got.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub segment: u64,
    pub offset: u64,
    pub frame_len: u32,
    pub size: u64,
    pub enqueued_ms: u64,
    pub kind: Kind,
    pub serial: String,
    pub app_id: u32,
    pub state: EntryState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryState {
    Queued,
    InFlight,
    Dead(String),
}

/// What finally became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    Dead(String),
    Evicted,
    Purged,
}

impl Outcome {
    pub fn into_result(self, id: RecordId) -> Result<(), Error> {
        match self {
            Outcome::Delivered => Ok(()),
            Outcome::Dead(reason) => Err(ErrorKind::DeadLetter { id, reason }.into()),
            Outcome::Evicted | Outcome::Purged => Err(ErrorKind::Evicted { id }.into()),
        }
    }
}

pub(crate) enum Wait {
    Done(Outcome),
    Pending(oneshot::Receiver<Outcome>),
}

#[derive(Default)]
pub(crate) struct State {
    pub entries: BTreeMap<u64, Entry>,
    /// Segment -> records in it still on disk (not delivered, evicted or
    /// purged).
    pub segments: BTreeMap<u64, usize>,
    /// Segment -> the dead letters among them: how many, and their frames'
    /// bytes on disk.
    dead_in: BTreeMap<u64, DeadIn>,
    pub bytes: u64,
    pub in_flight: usize,
    pub dead: usize,
    pub delivered: u64,
    pub evicted: u64,
    pub corrupt: u64,
    pub last_error: Option<String>,
    waiters: HashMap<u64, Vec<oneshot::Sender<Outcome>>>,
    recent: HashMap<u64, Outcome>,
    recent_order: VecDeque<u64>,
    deliveries: VecDeque<Instant>,
    /// Bumped on every change, so the status file is only rewritten when
    /// something changed.
    pub generation: u64,
}

impl State {
    /// Adds a record that is durable on disk.
    pub fn insert(&mut self, id: u64, entry: Entry) {
        *self.segments.entry(entry.segment).or_default() += 1;
        self.bytes += entry.size;
        if matches!(entry.state, EntryState::Dead(_)) {
            self.dead += 1;
            self.dead_in
                .entry(entry.segment)
                .or_default()
                .add(entry.frame_len);
        }
        self.entries.insert(id, entry);
        self.generation += 1;
    }

    /// Applies what became of a record (already written to its acks file).
    /// Returns the segment it was in when it left the disk for good.
    pub fn settle(&mut self, id: u64, state: &AckState) -> Option<u64> {
        self.generation += 1;
        let entry = self.entries.get_mut(&id)?;
        let (segment, frame_len) = (entry.segment, entry.frame_len);
        let was = std::mem::replace(&mut entry.state, EntryState::Queued);
        match was {
            EntryState::InFlight => self.in_flight -= 1,
            EntryState::Dead(_) => {
                self.dead -= 1;
                forget_dead(&mut self.dead_in, segment, frame_len);
            }
            EntryState::Queued => {}
        }
        let outcome = match state {
            AckState::Retry => return None,
            AckState::Dead(reason) => {
                entry.state = EntryState::Dead(reason.clone());
                self.dead += 1;
                self.dead_in.entry(segment).or_default().add(frame_len);
                Outcome::Dead(reason.clone())
            }
            AckState::Delivered => {
                self.delivered += 1;
                let now = Instant::now();
                self.deliveries.push_back(now);
                while self
                    .deliveries
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > RATE_WINDOW)
                {
                    self.deliveries.pop_front();
                }
                Outcome::Delivered
            }
            AckState::Evicted => {
                self.evicted += 1;
                Outcome::Evicted
            }
            AckState::Purged => Outcome::Purged,
        };
        let gone = !matches!(outcome, Outcome::Dead(_));
        let segment = if gone {
            let entry = self.entries.remove(&id)?;
            self.bytes -= entry.size;
            let left = self.segments.entry(entry.segment).or_default();
            *left = left.saturating_sub(1);
            Some(entry.segment)
        } else {
            None
        };
        self.remember(id, outcome);
        segment
    }

    /// When everything `segment` still holds is dead letters (and it holds
    /// some): the bytes of their frames.
    pub fn only_dead_in(&self, segment: u64) -> Option<u64> {
        let held = self.segments.get(&segment).copied().unwrap_or(0);
        let dead = self.dead_in.get(&segment)?;
        (held > 0 && dead.count == held).then_some(dead.bytes)
    }

    /// The records `segment` holds, oldest first.
    pub fn entries_in(&self, segment: u64) -> Vec<(u64, Entry)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.segment == segment)
            .map(|(id, e)| (*id, e.clone()))
            .collect()
    }

    /// Record `id`, which was in segment `from`, is now at `offset` in
    /// segment `to` (a dead letter moved out of a segment, see the
    /// writer's `relocate_dead`).
    pub fn moved(&mut self, id: u64, from: u64, to: u64, offset: u64) {
        let Some(entry) = self.entries.get_mut(&id).filter(|e| e.segment == from) else {
            return;
        };
        entry.segment = to;
        entry.offset = offset;
        let dead = matches!(entry.state, EntryState::Dead(_));
        forget_one(&mut self.segments, from);
        *self.segments.entry(to).or_default() += 1;
        if dead {
            let frame_len = entry.frame_len;
            forget_dead(&mut self.dead_in, from, frame_len);
            self.dead_in.entry(to).or_default().add(frame_len);
        }
        self.generation += 1;
    }

    fn remember(&mut self, id: u64, outcome: Outcome) {
        for waiter in self.waiters.remove(&id).unwrap_or_default() {
            let _ = waiter.send(outcome.clone());
        }
        if self.recent.insert(id, outcome).is_none() {
            self.recent_order.push_back(id);
        }
        while self.recent_order.len() > RECENT_OUTCOMES {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    /// The oldest records, to free `records` records and `bytes` bytes. A
    /// record in flight may be among them: it is counted as evicted, and
    /// its delivery, if it still succeeds, changes nothing.
    pub fn eviction_candidates(&self, records: usize, bytes: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let (mut freed_records, mut freed_bytes) = (0usize, 0u64);
        for (id, entry) in &self.entries {
            if freed_records >= records && freed_bytes >= bytes {
                break;
            }
            out.push(*id);
            freed_records += 1;
            freed_bytes += entry.size;
        }
        out
    }

    /// Records older than `max_age`.
    pub fn expired(&self, max_age: Duration) -> Vec<u64> {
        let now = unix_ms();
        let max = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        self.entries
            .iter()
            .take_while(|(_, e)| now.saturating_sub(e.enqueued_ms) > max)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The state shared by the writer thread, the delivery task and callers.
pub(crate) struct Shared {
    pub config: OutboxConfig,
    state: Mutex<State>,
    /// Woken when a record becomes deliverable.
    pub wake: Notify,
    pub opened: Instant,
}

impl Shared {
    pub fn new(config: OutboxConfig, state: State) -> Shared {
        Shared {
            config,
            state: Mutex::new(state),
            wake: Notify::new(),
            opened: Instant::now(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // Each mutation keeps the state consistent between statements.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records taken for delivery whose fate is not on disk yet.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Takes up to `max` queued records, oldest first, and marks them in
    /// flight.
    pub fn take_queued(&self, max: usize) -> Vec<(u64, Entry)> {
        let mut state = self.lock();
        let mut out = Vec::new();
        for (id, entry) in state.entries.iter_mut() {
            if out.len() >= max {
                break;
            }
            if entry.state == EntryState::Queued {
                entry.state = EntryState::InFlight;
                out.push((*id, entry.clone()));
            }
        }
        state.in_flight += out.len();
        state.generation += 1;
        out
    }

    /// Puts a record that could not be delivered now back in the queue.
    pub fn requeue(&self, id: u64, error: &Error) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(&id) {
            if entry.state == EntryState::InFlight {
                entry.state = EntryState::Queued;
                state.in_flight -= 1;
            }
        }
        state.last_error = Some(error_chain(error));
        state.generation += 1;
    }

    pub fn note_error(&self, error: &Error) {
        let mut state = self.lock();
        state.last_error = Some(error_chain(error));
        state.generation += 1;
    }

    pub fn wait_for(&self, id: u64) -> Wait {
        let mut state = self.lock();
        if let Some(outcome) = state.recent.get(&id) {
            return Wait::Done(outcome.clone());
        }
        if !state.entries.contains_key(&id) {
            // Delivered long ago, or never enqueued here.
            return Wait::Done(Outcome::Purged);
        }
        let (tx, rx) = oneshot::channel();
        state.waiters.entry(id).or_default().push(tx);
        Wait::Pending(rx)
    }

    pub fn dead_ids(&self) -> Vec<u64> {
        self.lock()
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, EntryState::Dead(_)))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn status(&self) -> OutboxStatus {
        let state = self.lock();
        let queued: Vec<&Entry> = state
            .entries
            .values()
            .filter(|e| e.state == EntryState::Queued)
            .collect();
        let now = unix_ms();
        let window = self.opened.elapsed().min(RATE_WINDOW).as_secs_f64();
        let recent = state
            .deliveries
            .iter()
            .filter(|t| t.elapsed() <= RATE_WINDOW)
            .count();
        OutboxStatus {
            dir: self.config.dir.clone(),
            owner_pid: Some(std::process::id()),
            queued: queued.len(),
            queued_bytes: queued.iter().map(|e| e.size).sum(),
            oldest_age: queued
                .first()
                .map(|e| Duration::from_millis(now.saturating_sub(e.enqueued_ms))),
            in_flight: state.in_flight,
            dead: state.dead,
            delivered: state.delivered,
            evicted: state.evicted,
            corrupt: state.corrupt,
            last_error: state.last_error.clone(),
            delivery_rate: if window > 0.0 {
                recent as f64 / window
            } else {
                0.0
            },
        }
    }

    pub fn records(&self) -> Vec<OutboxRecord> {
        let now = unix_ms();
        self.lock()
            .entries
            .iter()
            .map(|(id, e)| OutboxRecord {
                id: RecordId(*id),
                kind: match e.kind {
                    Kind::Log => RecordKind::Log,
                    Kind::CoreDump => RecordKind::CoreDump,
                    Kind::Metrics => RecordKind::Metrics,
                    Kind::Events => RecordKind::Events,
                    Kind::TextLogs => RecordKind::TextLogs,
                },
                app_id: e.app_id,
                serial: e.serial.clone(),
                size: e.size,
                age: Duration::from_millis(now.saturating_sub(e.enqueued_ms)),
                state: match &e.state {
                    EntryState::Queued => RecordState::Queued,
                    EntryState::InFlight => RecordState::InFlight,
                    EntryState::Dead(reason) => RecordState::Dead {
                        reason: reason.clone(),
                    },
                },
            })
            .collect()
    }
}

/// An error and its causes on one line, each said once.
pub(crate) fn error_chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
