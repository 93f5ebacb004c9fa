//! The gateway's side of one BLE connection to one device: the transfer
//! state machine of PROTOCOL §6, sans I/O.

use std::fmt;
use std::time::{Duration, Instant};

use super::chunk::{Chunk, DropReason};

/// Which notifying characteristic of the uLogger service data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Characteristic {
    /// `log_data`: chunks of the log buffer.
    LogData,
    /// `core_dump_data`: chunks of the core dump.
    CoreDumpData,
}

impl fmt::Display for Characteristic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Characteristic::LogData => "log_data",
            Characteristic::CoreDumpData => "core_dump_data",
        })
    }
}

/// What a transferred buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferKind {
    /// A binary log buffer (PROTOCOL §5).
    Log,
    /// A core-dump package (PROTOCOL §10).
    CoreDump,
}

impl BufferKind {
    fn characteristic(self) -> Characteristic {
        match self {
            BufferKind::Log => Characteristic::LogData,
            BufferKind::CoreDump => Characteristic::CoreDumpData,
        }
    }

    fn of(characteristic: Characteristic) -> BufferKind {
        match characteristic {
            Characteristic::LogData => BufferKind::Log,
            Characteristic::CoreDumpData => BufferKind::CoreDump,
        }
    }
}

/// Names one transfer of a [`BlePull`], to say which buffer became durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub(super) u32);

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transfer {}", self.0)
    }
}

/// A complete buffer, handed to the caller to make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Pass it to [`BlePull::durable`] or [`BlePull::rejected_durably`].
    pub id: TransferId,
    /// A log or a core dump.
    pub kind: BufferKind,
    /// The buffer, exactly the `total_len` bytes the device announced.
    pub data: Vec<u8>,
    /// When the chunk at offset 0, which holds the log header, arrived. A
    /// v4 log whose `epoch_time_us` is 0 gets the gateway's clock of this
    /// moment (PROTOCOL §5), never of its upload.
    pub header_arrived_at: Instant,
}

/// What the caller should do next. Every effect of a [`BlePull`] comes out
/// as one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullAction {
    /// Write these two bytes to `log_ack`, without response.
    WriteAck([u8; 2]),
    /// Make this buffer durable, then call [`BlePull::durable`] (or
    /// [`BlePull::rejected_durably`]) with its id; until then the device
    /// is not told it may erase it.
    Deliver(Delivery),
    /// The notification was dropped; nothing was stored or acknowledged.
    Dropped(DropReason),
    /// The pull is over and every buffer it delivered was acknowledged;
    /// disconnect.
    Finished(PullSummary),
    /// The pull cannot go on: drop the link and try again later. The device
    /// keeps whatever it was not finally acknowledged for.
    GiveUp(GiveUpReason),
    /// Nothing to do yet.
    Nothing,
}

/// Why a [`BlePull`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// No progress after the last acknowledgement was re-sent the allowed
    /// number of times.
    Stalled {
        /// The transfer that stalled.
        kind: BufferKind,
        /// The offset acknowledged in vain.
        offset: u16,
        /// How many times it was re-sent.
        reacks: u32,
    },
    /// Too many notifications dropped since the last progress: a broken or
    /// hostile device, or a flood.
    Flood {
        /// Notifications dropped since the last accepted chunk.
        dropped: u32,
    },
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::Stalled {
                kind,
                offset,
                reacks,
            } => write!(
                f,
                "{kind:?} transfer stalled at offset {offset} after {reacks} re-sent acks"
            ),
            GiveUpReason::Flood { dropped } => {
                write!(f, "{dropped} notifications dropped without progress")
            }
        }
    }
}

/// What a pull did, for its summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PullSummary {
    /// Logs made durable and finally acknowledged.
    pub logs: u32,
    /// Core dumps made durable and finally acknowledged.
    pub core_dumps: u32,
    /// Of those, buffers stored as rejected ([`BlePull::rejected_durably`]).
    pub rejected: u32,
    /// Bytes of the buffers finally acknowledged.
    pub bytes: usize,
    /// Acknowledgements re-sent because nothing arrived.
    pub reacks: u32,
    /// Notifications dropped.
    pub dropped: u32,
}

/// The caller named a transfer that is not waiting to be made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{id} is not waiting to be made durable")]
pub struct NotAwaitingDurable {
    /// The transfer named.
    pub id: TransferId,
}

/// Timeouts and limits of a [`BlePull`].
///
/// ```
/// use std::time::Duration;
/// use ulogger_wire::PullConfig;
/// let config = PullConfig::new().stall_timeout(Duration::from_millis(500)).max_reacks(3);
/// assert_eq!(config.get_max_reacks(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct PullConfig {
    stall_timeout: Duration,
    max_reacks: u32,
    first_chunk_timeout: Duration,
    core_dump_timeout: Duration,
    max_dropped: u32,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            stall_timeout: Duration::from_secs(1),
            max_reacks: 5,
            // Past the device's 2 s timer, which starts a log transfer by
            // itself and re-sends a core-dump chunk whose first copy was lost.
            first_chunk_timeout: Duration::from_secs(3),
            // Ten times the ~100 ms after which a device with a core dump
            // pending starts it (PROTOCOL §6).
            core_dump_timeout: Duration::from_secs(1),
            max_dropped: 1024,
        }
    }
}

impl PullConfig {
    /// The defaults: stall timeout 1 s, 5 re-sent acks, 3 s for a first
    /// chunk, 1 s for a core dump after the logs, 1,024 dropped
    /// notifications.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a transfer may go without progress before the last
    /// acknowledgement is re-sent (the only way a device re-sends a log
    /// chunk).
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// How many times the same acknowledgement is re-sent before the pull
    /// gives up.
    pub fn max_reacks(mut self, reacks: u32) -> Self {
        self.max_reacks = reacks;
        self
    }

    /// How long to wait for the first chunk after ack 0; silence means
    /// nothing to send.
    pub fn first_chunk_timeout(mut self, timeout: Duration) -> Self {
        self.first_chunk_timeout = timeout;
        self
    }

    /// How long to wait, after the logs' final ack, for the first chunk
    /// of a core dump (a device with one pending starts it about 100 ms
    /// later); silence means there is none. A core dump whose first chunk
    /// is lost is missed for this pull, never lost: the device keeps its
    /// logs and core dump until the core dump completes, and offers the
    /// logs again at the next connection (recognised as stored before).
    pub fn core_dump_timeout(mut self, timeout: Duration) -> Self {
        self.core_dump_timeout = timeout;
        self
    }

    /// How many notifications may be dropped in a row without progress
    /// before the pull gives up on the device.
    pub fn max_dropped(mut self, dropped: u32) -> Self {
        self.max_dropped = dropped;
        self
    }

    /// The stall timeout.
    pub fn get_stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// The number of re-sent acks allowed.
    pub fn get_max_reacks(&self) -> u32 {
        self.max_reacks
    }

    /// The first-chunk timeout.
    pub fn get_first_chunk_timeout(&self) -> Duration {
        self.first_chunk_timeout
    }

    /// The core-dump timeout.
    pub fn get_core_dump_timeout(&self) -> Duration {
        self.core_dump_timeout
    }

    /// The number of dropped notifications allowed without progress.
    pub fn get_max_dropped(&self) -> u32 {
        self.max_dropped
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Receiving {
    id: TransferId,
    kind: BufferKind,
    total_len: u16,
    data: Vec<u8>,
    header_arrived_at: Instant,
    last_ack_at: Instant,
    reacks: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Ack 0 is still to be written.
    Starting {
        since: Instant,
    },
    /// Ack 0 written; a log, a core dump or silence may follow.
    AwaitingFirst {
        since: Instant,
        last_ack_at: Instant,
    },
    Receiving(Receiving),
    /// Complete; the final ack waits for the caller's durability.
    AwaitingDurable {
        id: TransferId,
        kind: BufferKind,
        total_len: u16,
    },
    /// The logs are finally acknowledged; a core dump may follow about
    /// 100 ms later. Nothing is written meanwhile: any ack could reach the
    /// device during the core dump and, being at least its total length,
    /// erase it unread. A lost first core-dump chunk is re-sent by the
    /// device's own 2 s timer.
    AwaitingCoreDump {
        since: Instant,
    },
    Finished,
    GaveUp(GiveUpReason),
}

/// The gateway's side of one connection to one device (PROTOCOL §6): it
/// asks for the logs with ack 0, reassembles the log and then the core
/// dump, acknowledges each chunk, re-sends the last acknowledgement when a
/// transfer stalls, and writes a final acknowledgement, the device's delete
/// command, only after the caller said the buffer is durable.
///
/// Sans I/O: the caller feeds it notifications and the time, and does what
/// the returned [`PullAction`] says. Call [`poll`](Self::poll) when
/// [`deadline`](Self::deadline) passes (it first returns the ack 0 that
/// starts the pull), and stop when [`is_over`](Self::is_over). Memory is
/// bounded by one buffer of at most 65,535 bytes.
///
/// A driver (e.g. over BlueZ) is a loop of this shape:
///
/// ```text
/// connect, read config, subscribe to log_data and core_dump_data
/// pull = BlePull::new(config, now)
/// loop until pull.is_over():
///     wait for the first of: a notification, pull.deadline(), a buffer made durable
///     action = pull.on_notification(from, bytes, now) | pull.poll(now) | pull.durable(id, now)
///     WriteAck(a)  -> write a to log_ack, without response, once
///     Deliver(d)   -> hand d to the outbox; when it is durable, call pull.durable(d.id, now)
///     GiveUp(_)    -> disconnect (the device keeps what was not finally acked)
///     Finished(_)  -> disconnect
/// ```
///
/// ```
/// use std::time::Instant;
/// use ulogger_wire::{BlePull, BufferKind, Characteristic, PullAction, PullConfig};
/// let now = Instant::now();
/// let mut pull = BlePull::new(PullConfig::new(), now);
/// assert_eq!(pull.poll(now), PullAction::WriteAck([0, 0]));
/// // offset 0, total 3: the whole log in one chunk.
/// let PullAction::Deliver(log) = pull.on_notification(Characteristic::LogData, b"\0\0\x03\0abc", now)
/// else { panic!() };
/// assert_eq!((log.kind, &log.data[..]), (BufferKind::Log, &b"abc"[..]));
/// // ... store the log durably, then:
/// assert_eq!(pull.durable(log.id, now)?, PullAction::WriteAck([3, 0]));
/// # Ok::<(), ulogger_wire::NotAwaitingDurable>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlePull {
    config: PullConfig,
    phase: Phase,
    next_id: u32,
    dropped_since_progress: u32,
    summary: PullSummary,
}

impl BlePull {
    /// A pull of a device just connected; the first [`poll`](Self::poll)
    /// returns the ack 0 that asks it for its data.
    pub fn new(config: PullConfig, now: Instant) -> Self {
        BlePull {
            config,
            phase: Phase::Starting { since: now },
            next_id: 0,
            dropped_since_progress: 0,
            summary: PullSummary::default(),
        }
    }

    /// Handles one notification from `log_data` or `core_dump_data`.
    pub fn on_notification(
        &mut self,
        from: Characteristic,
        notification: &[u8],
        now: Instant,
    ) -> PullAction {
        if self.is_over() {
            return PullAction::Dropped(DropReason::NotExpected);
        }
        let chunk = match Chunk::parse(notification) {
            Ok(chunk) => chunk,
            Err(reason) => return self.drop(reason),
        };
        match &mut self.phase {
            Phase::Starting { .. } | Phase::AwaitingFirst { .. } => {
                // Either transfer may come first: the core dump when the
                // device has no logs, and a log before ack 0 when the
                // device's timer started it.
                self.begin(BufferKind::of(from), chunk, now)
            }
            Phase::AwaitingCoreDump { .. } if from == Characteristic::CoreDumpData => {
                self.begin(BufferKind::CoreDump, chunk, now)
            }
            Phase::AwaitingCoreDump { .. } => self.drop(DropReason::WrongCharacteristic {
                expected: Characteristic::CoreDumpData,
                got: from,
            }),
            Phase::Receiving(receiving) => {
                let expected = receiving.kind.characteristic();
                let next = receiving.next_expected();
                if from != expected {
                    let reason = DropReason::WrongCharacteristic {
                        expected,
                        got: from,
                    };
                    self.drop(reason)
                } else if chunk.total_len != receiving.total_len {
                    let reason = DropReason::TotalLenChanged {
                        first: receiving.total_len,
                        got: chunk.total_len,
                    };
                    self.drop(reason)
                } else if chunk.offset != next {
                    let reason = DropReason::UnexpectedOffset {
                        expected: next,
                        got: chunk.offset,
                    };
                    self.drop(reason)
                } else {
                    receiving.data.extend_from_slice(chunk.payload);
                    self.progress(now)
                }
            }
            Phase::AwaitingDurable { .. } | Phase::Finished | Phase::GaveUp(_) => {
                self.drop(DropReason::NotExpected)
            }
        }
    }

    /// Runs the timers: writes ack 0 at the start, re-sends a stalled
    /// acknowledgement, gives up, or ends a pull that met silence. Call it
    /// when [`deadline`](Self::deadline) passes; calling it earlier is
    /// harmless.
    pub fn poll(&mut self, now: Instant) -> PullAction {
        let config = self.config;
        match &mut self.phase {
            Phase::Starting { .. } => {
                self.phase = Phase::AwaitingFirst {
                    since: now,
                    last_ack_at: now,
                };
                PullAction::WriteAck(0u16.to_le_bytes())
            }
            Phase::AwaitingFirst { since, last_ack_at } => {
                if reached(now, *since, config.first_chunk_timeout) {
                    self.finish()
                } else if reached(now, *last_ack_at, config.stall_timeout) {
                    // Harmless whatever the device is doing: nothing was
                    // acknowledged yet, so ack 0 can only (re)start a
                    // transfer, never complete one.
                    *last_ack_at = now;
                    self.summary.reacks = self.summary.reacks.saturating_add(1);
                    PullAction::WriteAck(0u16.to_le_bytes())
                } else {
                    PullAction::Nothing
                }
            }
            Phase::Receiving(receiving) => {
                if !reached(now, receiving.last_ack_at, config.stall_timeout) {
                    return PullAction::Nothing;
                }
                let offset = receiving.next_expected();
                if receiving.reacks >= config.max_reacks {
                    let reason = GiveUpReason::Stalled {
                        kind: receiving.kind,
                        offset,
                        reacks: receiving.reacks,
                    };
                    self.phase = Phase::GaveUp(reason);
                    return PullAction::GiveUp(reason);
                }
                receiving.reacks += 1;
                receiving.last_ack_at = now;
                self.summary.reacks = self.summary.reacks.saturating_add(1);
                PullAction::WriteAck(offset.to_le_bytes())
            }
            Phase::AwaitingCoreDump { since } => {
                if reached(now, *since, config.core_dump_timeout) {
                    self.finish()
                } else {
                    PullAction::Nothing
                }
            }
            Phase::AwaitingDurable { .. } => PullAction::Nothing,
            Phase::Finished => PullAction::Finished(self.summary),
            Phase::GaveUp(reason) => PullAction::GiveUp(*reason),
        }
    }

    /// When [`poll`](Self::poll) has something to do; `None` while the
    /// pull waits for the caller (a buffer to make durable) or is over.
    pub fn deadline(&self) -> Option<Instant> {
        let config = &self.config;
        match &self.phase {
            Phase::Starting { since } => Some(*since),
            Phase::AwaitingFirst { since, last_ack_at } => {
                let silence = since.checked_add(config.first_chunk_timeout);
                let reack = last_ack_at.checked_add(config.stall_timeout);
                silence.into_iter().chain(reack).min()
            }
            Phase::Receiving(receiving) => receiving.last_ack_at.checked_add(config.stall_timeout),
            Phase::AwaitingCoreDump { since } => since.checked_add(config.core_dump_timeout),
            Phase::AwaitingDurable { .. } | Phase::Finished | Phase::GaveUp(_) => None,
        }
    }

    /// Says the delivered buffer `id` is durable: returns the final
    /// acknowledgement to write, which makes the device erase it.
    ///
    /// Write it once. If the write fails, drop the link rather than write
    /// it again: a repeated final log ack that reaches the device once its
    /// core dump is under way sets the core dump's offset, and if the log
    /// was at least as long as the core dump, that completes the core dump
    /// and erases it unread. A dropped link only costs a duplicate log.
    ///
    /// # Errors
    ///
    /// [`NotAwaitingDurable`] when `id` is not the buffer waiting, e.g.
    /// because the pull gave up meanwhile: then nothing may be written,
    /// and the device offers the buffer again on the next pull.
    pub fn durable(
        &mut self,
        id: TransferId,
        now: Instant,
    ) -> Result<PullAction, NotAwaitingDurable> {
        self.acknowledge(id, now, false)
    }

    /// Says the delivered buffer `id` failed validation and was stored
    /// durably as rejected: it is acknowledged as [`durable`](Self::durable)
    /// does, so the device is not stuck re-sending it, and counted apart.
    ///
    /// # Errors
    ///
    /// As [`durable`](Self::durable).
    pub fn rejected_durably(
        &mut self,
        id: TransferId,
        now: Instant,
    ) -> Result<PullAction, NotAwaitingDurable> {
        self.acknowledge(id, now, true)
    }

    /// The buffer waiting to be made durable, if any.
    pub fn awaiting_durable(&self) -> Option<TransferId> {
        match self.phase {
            Phase::AwaitingDurable { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Whether the pull finished or gave up; disconnect.
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Finished | Phase::GaveUp(_))
    }

    /// What the pull did so far.
    pub fn summary(&self) -> &PullSummary {
        &self.summary
    }

    fn acknowledge(
        &mut self,
        id: TransferId,
        now: Instant,
        rejected: bool,
    ) -> Result<PullAction, NotAwaitingDurable> {
        let Phase::AwaitingDurable {
            id: waiting,
            kind,
            total_len,
        } = self.phase
        else {
            return Err(NotAwaitingDurable { id });
        };
        if waiting != id {
            return Err(NotAwaitingDurable { id });
        }
        match kind {
            BufferKind::Log => {
                self.summary.logs = self.summary.logs.saturating_add(1);
                self.phase = Phase::AwaitingCoreDump { since: now };
            }
            BufferKind::CoreDump => {
                // The device erases its logs and crash region on this ack
                // and has nothing more for this connection.
                self.summary.core_dumps = self.summary.core_dumps.saturating_add(1);
                self.phase = Phase::Finished;
            }
        }
        self.summary.rejected = self.summary.rejected.saturating_add(u32::from(rejected));
        self.summary.bytes = self.summary.bytes.saturating_add(usize::from(total_len));
        Ok(PullAction::WriteAck(total_len.to_le_bytes()))
    }

    fn begin(&mut self, kind: BufferKind, chunk: Chunk<'_>, now: Instant) -> PullAction {
        if chunk.offset != 0 {
            return self.drop(DropReason::UnexpectedOffset {
                expected: 0,
                got: chunk.offset,
            });
        }
        let id = TransferId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        let mut data = Vec::with_capacity(usize::from(chunk.total_len));
        data.extend_from_slice(chunk.payload);
        self.phase = Phase::Receiving(Receiving {
            id,
            kind,
            total_len: chunk.total_len,
            data,
            header_arrived_at: now,
            last_ack_at: now,
            reacks: 0,
        });
        self.progress(now)
    }

    /// After an accepted chunk: acknowledge it, or deliver the buffer when
    /// it is complete (without the final ack).
    fn progress(&mut self, now: Instant) -> PullAction {
        self.dropped_since_progress = 0;
        let Phase::Receiving(receiving) = &mut self.phase else {
            return PullAction::Nothing;
        };
        let next = receiving.next_expected();
        if next < receiving.total_len {
            receiving.last_ack_at = now;
            receiving.reacks = 0;
            return PullAction::WriteAck(next.to_le_bytes());
        }
        let delivery = Delivery {
            id: receiving.id,
            kind: receiving.kind,
            data: std::mem::take(&mut receiving.data),
            header_arrived_at: receiving.header_arrived_at,
        };
        self.phase = Phase::AwaitingDurable {
            id: receiving.id,
            kind: receiving.kind,
            total_len: receiving.total_len,
        };
        PullAction::Deliver(delivery)
    }

    fn drop(&mut self, reason: DropReason) -> PullAction {
        self.summary.dropped = self.summary.dropped.saturating_add(1);
        if self.is_over() {
            return PullAction::Dropped(reason);
        }
        self.dropped_since_progress = self.dropped_since_progress.saturating_add(1);
        if self.dropped_since_progress > self.config.max_dropped {
            let reason = GiveUpReason::Flood {
                dropped: self.dropped_since_progress,
            };
            self.phase = Phase::GaveUp(reason);
            return PullAction::GiveUp(reason);
        }
        PullAction::Dropped(reason)
    }

    fn finish(&mut self) -> PullAction {
        self.phase = Phase::Finished;
        PullAction::Finished(self.summary)
    }
}

/// Whether `timeout` after `since` has passed; a timeout too long for the
/// clock never passes.
fn reached(now: Instant, since: Instant, timeout: Duration) -> bool {
    since.checked_add(timeout).is_some_and(|at| now >= at)
}

impl Receiving {
    fn next_expected(&self) -> u16 {
        // `data` never grows past `total_len`, a u16.
        u16::try_from(self.data.len()).unwrap_or(u16::MAX)
    }
}
