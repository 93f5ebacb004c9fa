//! What an open outbox holds in memory: one small entry per record on
//! disk (its place and state, not its bytes), counters, and who waits for
//! which record.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Notify};

use super::config::OutboxConfig;
use super::format::{AckState, Kind};
use super::status::{OutboxFailure, OutboxRecord, OutboxStatus, RecordKind, RecordState};
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
    /// The delivery failure that has not cleared yet (no delivery since).
    pub failure: Option<Failing>,
    waiters: HashMap<u64, Vec<oneshot::Sender<Outcome>>>,
    recent: HashMap<u64, Outcome>,
    recent_order: VecDeque<u64>,
    deliveries: VecDeque<Instant>,
    /// Bumped on every change, so the status file is only rewritten when
    /// something changed.
    pub generation: u64,
}

/// A failure that has not cleared, kept with its error value so callers
/// can say what to do about it, not only what it was.
#[derive(Debug, Clone)]
pub(crate) struct Failing {
    pub error: Error,
    pub text: String,
    pub since: SystemTime,
    pub attempts: u64,
    /// Noted from the connection rather than from a record.
    pub link: bool,
}

impl State {
    /// Remembers a failure: the same cause again only counts an attempt
    /// (keeping when it started), so callers can summarise a repeating
    /// failure instead of repeating it.
    pub fn note_error(&mut self, error: &Error, link: bool) {
        let text = error_chain(error);
        match &mut self.failure {
            Some(failing) if failing.text == text => {
                failing.attempts += 1;
                failing.error = error.clone();
                failing.link = link;
            }
            _ => {
                self.failure = Some(Failing {
                    error: error.clone(),
                    text,
                    since: SystemTime::now(),
                    attempts: 1,
                    link,
                });
            }
        }
        self.generation += 1;
    }

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
                // A delivery is the proof that the path works again.
                self.failure = None;
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
pub(crate) struct Ledger {
    pub config: OutboxConfig,
    state: Mutex<State>,
    /// Woken when a record becomes deliverable.
    pub wake: Notify,
    pub opened: Instant,
}

impl Ledger {
    pub fn new(config: OutboxConfig, state: State) -> Ledger {
        Ledger {
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
        if !out.is_empty() {
            state.in_flight += out.len();
            state.generation += 1;
        }
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
        state.note_error(error, false);
    }

    /// Remembers a delivery failure (see [`State::note_error`]).
    pub fn note_error(&self, error: &Error) {
        self.lock().note_error(error, false);
    }

    /// Remembers a failed connection attempt: it stops every delivery,
    /// though no record was tried.
    pub fn note_link_error(&self, error: &Error) {
        self.lock().note_error(error, true);
    }

    /// The connection came up: a failure that was only the connection's
    /// is over (a record's own failure waits for a delivery to clear).
    pub fn link_up(&self) {
        let mut state = self.lock();
        if state.failure.as_ref().is_some_and(|f| f.link) {
            state.failure = None;
            state.generation += 1;
        }
    }

    /// The failure that has not cleared yet, with its cause.
    pub fn failure(&self) -> Option<OutboxFailure> {
        self.lock().failure.as_ref().map(|f| OutboxFailure {
            error: f.error.clone(),
            text: f.text.clone(),
            since: f.since,
            attempts: f.attempts,
        })
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
            last_error: state.failure.as_ref().map(|f| f.text.clone()),
            failing_since: state.failure.as_ref().map(|f| f.since),
            failed_attempts: state.failure.as_ref().map_or(0, |f| f.attempts),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn refused() -> Error {
        Error::with_source(
            ErrorKind::Connect {
                broker: "localhost:1".to_owned(),
            },
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )
    }

    #[test]
    fn a_failure_is_kept_with_its_start_counted_when_it_repeats_and_cleared_by_a_delivery() {
        let shared = Ledger::new(OutboxConfig::new("unused"), State::default());
        let status = shared.status();
        assert_eq!(status.last_error, None);
        assert_eq!(status.failing_since, None);
        assert_eq!(status.failed_attempts, 0);

        let before = SystemTime::now();
        shared.note_link_error(&refused());
        let first = shared.status();
        let text = first.last_error.clone().expect("a last error");
        assert!(
            text.starts_with("could not connect to localhost:1: "),
            "{text}"
        );
        assert!(text.contains("refused"), "{text}");
        let since = first.failing_since.expect("since when");
        assert!(since >= before);
        assert_eq!(first.failed_attempts, 1);

        // The same cause again: counted, its start kept, its value kept
        // for hints.
        shared.note_link_error(&refused());
        shared.note_link_error(&refused());
        let again = shared.status();
        assert_eq!(again.last_error.as_deref(), Some(text.as_str()));
        assert_eq!(again.failing_since, Some(since));
        assert_eq!(again.failed_attempts, 3);
        let failure = shared.failure().expect("a failure");
        assert!(matches!(failure.error.kind(), ErrorKind::Connect { .. }));
        assert_eq!((failure.since, failure.attempts), (since, 3));

        // Another cause starts a new failure.
        shared.note_error(&ErrorKind::Timeout(crate::error::Phase::Connect).into());
        let other = shared.status();
        assert_ne!(other.last_error.as_deref(), Some(text.as_str()));
        assert_eq!(other.failed_attempts, 1);

        // The connection coming up does not clear a record's failure ...
        shared.link_up();
        assert!(shared.status().last_error.is_some());
        // ... a delivery does.
        {
            let mut state = shared.lock();
            state.insert(
                7,
                Entry {
                    segment: 0,
                    offset: 0,
                    frame_len: 10,
                    size: 1,
                    enqueued_ms: unix_ms(),
                    kind: Kind::Log,
                    serial: "s".to_owned(),
                    app_id: 1,
                    state: EntryState::Queued,
                },
            );
            state.settle(7, &AckState::Delivered);
        }
        let cleared = shared.status();
        assert_eq!(cleared.last_error, None);
        assert_eq!(cleared.failing_since, None);
        assert_eq!(cleared.failed_attempts, 0);

        // A connection failure clears when the connection comes up.
        shared.note_link_error(&refused());
        shared.link_up();
        assert_eq!(shared.failure().map(|f| f.text), None);
    }
}
