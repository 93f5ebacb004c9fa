//! The publish half of the MQTT session, shared under one short lock by
//! the callers, the connection's reader task and the driver.
//!
//! The fast path crosses as few threads as it can. A caller that finds
//! the connection free to take its publish at once (link up, nothing
//! queued or being re-sent, room in the window, pacing budget left)
//! takes a packet id, records it in `inflight` with its acknowledgement
//! deadline, encodes it and writes it itself ([`super::writer`]); any
//! other caller pushes its publish onto `queue`, which the driver writes
//! in order as the window and pacing allow (one TLS write per burst).
//! The reader takes a publish out of `inflight` when its PUBACK arrives.
//! When that leaves the connection idle it completes the caller itself;
//! under load it parks the completion in `acked` for the driver, which
//! sends a batch of them from its own loop: completions sent from the
//! reader made tokio wake its other worker for almost every read and cost
//! a quarter more CPU per upload. The driver is woken through one
//! `Notify` only when it has something to do: by a caller that found the
//! queue empty, whose bytes the socket did not take at once, or whose
//! deadline needs the acknowledgement timer armed; by the reader when it
//! parked the first completion of a batch, or PUBACKs made room in a full
//! window (or emptied it while closing). See `docs/decisions.md`, section
//! 16.
//!
//! While the link is down the driver also enforces each caller's connect
//! timeout (so a waiting caller needs no timer or link subscription of
//! its own): a publish handed over, or left unacknowledged, while the
//! link is down fails `connect_timeout` after it first met the link down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::MutexGuard;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::chunks::Chunks;
use super::pacing::Pacer;
use super::{deadline_after, Done};
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Phase};

/// Packet ids of publishes. Subscribe and unsubscribe packets take theirs
/// from the rest of the range ([`FIRST_CONTROL_ID`]..), so that the driver
/// allocates those without this lock.
pub(crate) const LAST_PUBLISH_ID: u16 = 49_151;
/// The first packet id of subscribe and unsubscribe packets.
pub(crate) const FIRST_CONTROL_ID: u16 = LAST_PUBLISH_ID + 1;

/// Whether callers may hand publishes over, as the driver last set it.
#[derive(Debug)]
pub(crate) enum Gate {
    /// Connected: publishes are written as the window and pacing allow.
    Up,
    /// Reconnecting: publishes wait, each at most its connect timeout.
    Down,
    /// The last attempt failed in a way retrying cannot fix: callers fail
    /// at once with this error.
    Failed(Error),
    /// Shut down or shutting down: nothing more is taken.
    Closed,
}

/// A publish handed over and not yet written.
pub(crate) struct PublishCommand {
    pub topic: String,
    pub payload: Bytes,
    pub done: Done,
    /// When its caller stops waiting for the link to come back: set the
    /// first time the publish meets the link down, kept after that.
    pub connect_deadline: Option<Instant>,
}

/// A publish written (or to re-send) and not yet acknowledged.
pub(crate) struct Inflight {
    /// Order of arrival, so re-sends keep the callers' order.
    pub seq: u64,
    /// Which write of it is live on this connection (see the driver's
    /// deadlines).
    pub stamp: u64,
    pub topic: String,
    pub payload: Bytes,
    pub done: Done,
    pub connect_deadline: Option<Instant>,
}

/// When the acknowledgement of one written packet is due. `stamp` tells
/// the write it is for apart from a later use of the same packet id; an
/// entry whose packet was answered since is stale and skipped.
pub(crate) struct Deadline {
    pub at: Instant,
    pub pkid: u16,
    pub stamp: u64,
}

/// What became of a publish handed over.
pub(crate) enum HandOver {
    /// Queued for the driver; wake it if `wake`.
    Queued { wake: bool },
    /// Taken at once: the caller writes these bytes on connection
    /// `generation`, and wakes the driver if `arm_timer` (its
    /// acknowledgement timer is idle) or if the socket does not take them.
    Write {
        chunks: Chunks,
        generation: u64,
        arm_timer: bool,
    },
}

/// See the module documentation.
pub(crate) struct Session {
    pub gate: Gate,
    /// Publishes handed over, oldest first.
    pub queue: VecDeque<PublishCommand>,
    /// Publish packet id -> the publish awaiting its PUBACK.
    pub inflight: HashMap<u16, Inflight>,
    /// Completions of acknowledged publishes, parked by the reader for
    /// the driver to send (see the module documentation).
    pub acked: Vec<Done>,
    /// Publish packet ids never answered on this connection: not reused
    /// until answered or until the connection ends.
    pub abandoned: HashSet<u16>,
    /// The driver left publishes queued for want of room in the window:
    /// the reader wakes it once PUBACKs made room.
    pub window_full: bool,
    /// Shutting down: nothing more is taken, and the reader wakes the
    /// driver when the last acknowledgement came.
    pub closing: bool,
    /// `None` when pacing is off: the unpaced path pays nothing for it.
    pub pacer: Option<Pacer>,
    /// Publish acknowledgements due on this connection, in write order.
    pub deadlines: VecDeque<Deadline>,
    /// Room in the window: publishes written and not yet acknowledged.
    pub inflight_limit: usize,
    /// The driver is re-sending after a reconnect: new publishes wait
    /// behind the re-sends.
    pub resending: bool,
    /// The driver's acknowledgement timer is armed.
    pub ack_armed: bool,
    /// Counts connections, so that bytes encoded for one are never
    /// written on the next.
    pub generation: u64,
    last_pkid: u16,
    next_seq: u64,
    next_stamp: u64,
}

impl Session {
    pub fn new(settings: &Settings, inflight_limit: usize) -> Session {
        Session {
            gate: Gate::Down,
            queue: VecDeque::new(),
            inflight: HashMap::new(),
            acked: Vec::new(),
            abandoned: HashSet::new(),
            window_full: false,
            closing: false,
            pacer: Pacer::new(settings.pacing, Instant::now()),
            deadlines: VecDeque::new(),
            inflight_limit,
            resending: false,
            ack_armed: false,
            generation: 0,
            last_pkid: 0,
            next_seq: 0,
            next_stamp: 0,
        }
    }

    /// Takes a caller's publish: at once if the connection is free to
    /// take it (see the module documentation), else onto the queue.
    pub fn hand_over(
        &mut self,
        mut command: PublishCommand,
        settings: &Settings,
    ) -> Result<HandOver, Error> {
        let now = Instant::now();
        match &self.gate {
            Gate::Up => {}
            Gate::Down => {
                command.connect_deadline = Some(deadline_after(now, settings.connect_timeout));
            }
            Gate::Failed(e) => return Err(e.clone()),
            Gate::Closed => return Err(ErrorKind::Shutdown.into()),
        }
        if self.closing {
            return Err(ErrorKind::Shutdown.into());
        }
        // Only an idle connection: under load the driver's batched writes
        // (one per burst) cost less than a write per caller.
        let free = matches!(self.gate, Gate::Up)
            && self.queue.is_empty()
            && !self.resending
            && self.inflight.is_empty()
            && self.inflight_limit > 0;
        let size = publish_len(&command.topic, &command.payload);
        if free && self.pace(now, size).is_ok() {
            self.trim_deadlines();
            let pkid = self.next_pkid();
            self.next_seq += 1;
            self.inflight.insert(
                pkid,
                Inflight {
                    seq: self.next_seq,
                    stamp: 0,
                    topic: command.topic,
                    payload: command.payload,
                    done: command.done,
                    connect_deadline: None,
                },
            );
            let mut chunks = Chunks::default();
            self.start_write(pkid, false, &mut chunks, now, settings.ack_timeout);
            let arm_timer = !self.ack_armed;
            self.ack_armed = true;
            return Ok(HandOver::Write {
                chunks,
                generation: self.generation,
                arm_timer,
            });
        }
        let wake = self.queue.is_empty();
        self.queue.push_back(command);
        Ok(HandOver::Queued { wake })
    }

    /// Takes the pacing budget of a publish of `size` bytes, or says when
    /// it may go.
    pub fn pace(&mut self, now: Instant, size: usize) -> Result<(), Instant> {
        match &mut self.pacer {
            None => Ok(()),
            Some(pacer) => pacer.try_take(now, size),
        }
    }

    /// Moves the next queued publish into `inflight` under a new packet
    /// id, which it returns.
    pub fn take_queued(&mut self) -> Option<u16> {
        let command = self.queue.pop_front()?;
        let pkid = self.next_pkid();
        self.next_seq += 1;
        self.inflight.insert(
            pkid,
            Inflight {
                seq: self.next_seq,
                stamp: 0,
                topic: command.topic,
                payload: command.payload,
                done: command.done,
                connect_deadline: command.connect_deadline,
            },
        );
        Some(pkid)
    }

    /// Appends the inflight publish `pkid` to `out` (its header encoded,
    /// its payload shared, not copied) and starts its acknowledgement
    /// deadline: the acknowledgement timeout counts from here. Nothing
    /// when `pkid` is not in flight.
    pub fn start_write(
        &mut self,
        pkid: u16,
        dup: bool,
        out: &mut Chunks,
        now: Instant,
        ack_timeout: Duration,
    ) {
        let Some(entry) = self.inflight.get_mut(&pkid) else {
            return;
        };
        out.publish(&entry.topic, pkid, dup, entry.payload.clone());
        self.next_stamp += 1;
        entry.stamp = self.next_stamp;
        let at = deadline_after(now, ack_timeout);
        self.deadlines.push_back(Deadline {
            at,
            pkid,
            stamp: self.next_stamp,
        });
    }

    /// True while the write `deadline` is about still awaits its PUBACK.
    pub fn is_live(&self, deadline: &Deadline) -> bool {
        self.inflight
            .get(&deadline.pkid)
            .is_some_and(|e| e.stamp == deadline.stamp)
    }

    /// Drops answered entries from the front of the deadline queue, and
    /// compacts it when answered ones pile up behind an old unanswered one.
    /// (The reader completes publishes without touching the queue.)
    pub fn trim_deadlines(&mut self) {
        while let Some(front) = self.deadlines.front() {
            if self.is_live(front) {
                break;
            }
            self.deadlines.pop_front();
        }
        if self.deadlines.len() > 2 * self.inflight.len() + 64 {
            let mut deadlines = std::mem::take(&mut self.deadlines);
            deadlines.retain(|d| self.is_live(d));
            self.deadlines = deadlines;
        }
    }

    /// A free publish packet id (1..=[`LAST_PUBLISH_ID`]).
    fn next_pkid(&mut self) -> u16 {
        // The window limit leaves ids free, so this finds one; the bound
        // only guards against a logic error.
        for _ in 0..LAST_PUBLISH_ID {
            self.last_pkid = match self.last_pkid {
                LAST_PUBLISH_ID.. => 1,
                id => id + 1,
            };
            let id = self.last_pkid;
            if !self.inflight.contains_key(&id) && !self.abandoned.contains(&id) {
                return id;
            }
        }
        self.last_pkid
    }

    /// Takes the publish `pkid` out of `inflight` on its PUBACK and
    /// returns its completion (to send once the lock is released). A late
    /// PUBACK, for a publish that already timed out, frees its packet id.
    pub fn acknowledged(&mut self, pkid: u16) -> Option<Done> {
        match self.inflight.remove(&pkid) {
            Some(entry) => Some(entry.done),
            None => {
                self.abandoned.remove(&pkid);
                None
            }
        }
    }

    /// After a batch of acknowledgements taken out of `inflight`: parks
    /// their completions in `acked` unless the connection is idle now
    /// (nothing queued or in flight), when the caller (the reader) sends
    /// them at once, after unlocking. Returns whether to wake the driver:
    /// for the first completion parked, or when it waits for the
    /// acknowledgements (room in its window, or the last one while
    /// closing).
    pub fn acknowledged_batch(&mut self, done: &mut Vec<Done>) -> bool {
        let mut wake = self.window_full || (self.closing && self.inflight.is_empty());
        self.window_full = false;
        let idle = self.inflight.is_empty() && self.queue.is_empty();
        if !idle && !done.is_empty() {
            wake |= self.acked.is_empty();
            self.acked.append(done);
        }
        wake
    }

    /// The link went down (`permanent`: for good): every publish that has
    /// no connect deadline yet gets one from `now`; or, for a permanent
    /// failure, every publish fails with `error` at once.
    pub fn link_down(
        &mut self,
        now: Instant,
        connect_timeout: Duration,
        error: Option<&Error>,
        permanent: bool,
    ) {
        if let (true, Some(error)) = (permanent, error) {
            self.gate = Gate::Failed(error.clone());
            self.fail_all(|| error.clone());
            return;
        }
        self.gate = Gate::Down;
        let deadline = deadline_after(now, connect_timeout);
        for command in &mut self.queue {
            command.connect_deadline.get_or_insert(deadline);
        }
        for entry in self.inflight.values_mut() {
            entry.connect_deadline.get_or_insert(deadline);
        }
    }

    /// While the link is down: fails every publish whose connect deadline
    /// passed at `now` (`last_error`, the last attempt's failure, is the
    /// cause); returns the next deadline to come.
    pub fn expire_connect(&mut self, now: Instant, last_error: Option<&Error>) -> Option<Instant> {
        if !matches!(self.gate, Gate::Down) {
            return None;
        }
        let timed_out = || match last_error {
            Some(e) => Error::with_source(ErrorKind::Timeout(Phase::Connect), e.clone()),
            None => ErrorKind::Timeout(Phase::Connect).into(),
        };
        let mut next: Option<Instant> = None;
        let mut keep = |deadline: Option<Instant>| match deadline {
            Some(at) if at <= now => false,
            Some(at) => {
                next = Some(next.map_or(at, |n| n.min(at)));
                true
            }
            None => true,
        };
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for command in self.queue.drain(..) {
            if keep(command.connect_deadline) {
                kept.push_back(command);
            } else {
                let _ = command.done.send(Err(timed_out()));
            }
        }
        self.queue = kept;
        let overdue: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, entry)| !keep(entry.connect_deadline))
            .map(|(pkid, _)| *pkid)
            .collect();
        for pkid in overdue {
            if let Some(entry) = self.inflight.remove(&pkid) {
                let _ = entry.done.send(Err(timed_out()));
            }
        }
        next
    }

    /// While closing: publishes whose callers gave up were told they
    /// failed, so waiting for their PUBACK would only delay the stop.
    /// Their ids stay out of use on this connection.
    pub fn forget_abandoned(&mut self) {
        let gone: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, entry)| entry.done.is_closed())
            .map(|(pkid, _)| *pkid)
            .collect();
        for pkid in gone {
            self.inflight.remove(&pkid);
            self.abandoned.insert(pkid);
        }
    }

    /// Ends every publish with `error()`.
    pub fn fail_all(&mut self, error: impl Fn() -> Error) {
        for command in self.queue.drain(..) {
            let _ = command.done.send(Err(error()));
        }
        for (_, entry) in self.inflight.drain() {
            let _ = entry.done.send(Err(error()));
        }
    }
}

/// The size of the PUBLISH packet for `topic` and `payload` (QoS 1).
pub(crate) fn publish_len(topic: &str, payload: &Bytes) -> usize {
    // Topic length, topic, packet id, payload.
    let remaining = 2usize
        .saturating_add(topic.len())
        .saturating_add(2)
        .saturating_add(payload.len());
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    remaining.saturating_add(1 + length_bytes)
}

/// Locks a session. A panic while holding the lock cannot leave it worse
/// than a lost connection would (each step is a single insert, remove or
/// completion), so recover it rather than spread the panic.
pub(crate) fn lock(session: &std::sync::Mutex<Session>) -> MutexGuard<'_, Session> {
    session
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MqttConfig, Pacing, Security};
    use rumqttc::mqttbytes::v4::Packet;
    use tokio::sync::oneshot;

    fn settings(connect_timeout: Duration) -> Settings {
        MqttConfig::new(42)
            .broker("127.0.0.1")
            .port(1883)
            .security(Security::Plaintext)
            .pacing(Pacing::off())
            .connect_timeout(connect_timeout)
            .validate()
            .unwrap()
    }

    fn command(payload: &'static [u8]) -> (PublishCommand, oneshot::Receiver<Result<(), Error>>) {
        let (done, rx) = oneshot::channel();
        let command = PublishCommand {
            topic: "binlog/v0/42/7".to_owned(),
            payload: Bytes::from_static(payload),
            done,
            connect_deadline: None,
        };
        (command, rx)
    }

    fn up(settings: &Settings) -> Session {
        let mut session = Session::new(settings, 100);
        session.gate = Gate::Up;
        session
    }

    #[test]
    fn an_idle_connection_hands_the_publish_back_to_the_caller_to_write() {
        let settings = settings(Duration::from_secs(5));
        let mut session = up(&settings);
        let (first, _rx) = command(b"one");
        let HandOver::Write {
            chunks, arm_timer, ..
        } = session.hand_over(first, &settings).unwrap()
        else {
            panic!("an idle connection takes the publish at once");
        };
        assert!(arm_timer, "the acknowledgement timer was idle");
        let mut bytes = chunks.concatenated();
        let Packet::Publish(publish) = Packet::read(&mut bytes, 1 << 20).unwrap() else {
            panic!("a PUBLISH");
        };
        assert_eq!((publish.pkid, publish.dup), (1, false));
        assert_eq!(&publish.payload[..], b"one");
        assert_eq!(
            session.deadlines.len(),
            1,
            "its deadline runs from the write"
        );
        assert!(session.inflight.contains_key(&1));

        // One in flight: the next waits in the queue for the driver, who
        // is woken only by the first of a burst.
        let (second, _rx2) = command(b"two");
        let (third, _rx3) = command(b"three");
        assert!(matches!(
            session.hand_over(second, &settings).unwrap(),
            HandOver::Queued { wake: true }
        ));
        assert!(matches!(
            session.hand_over(third, &settings).unwrap(),
            HandOver::Queued { wake: false }
        ));
        assert_eq!(session.take_queued(), Some(2));
    }

    #[test]
    fn the_reader_completes_a_publish_on_its_own_puback_only() {
        let settings = settings(Duration::from_secs(5));
        let mut session = up(&settings);
        let (first, mut rx) = command(b"one");
        session.hand_over(first, &settings).unwrap();
        assert!(session.acknowledged(7).is_none(), "not ours");
        assert!(rx.try_recv().is_err(), "still waiting");
        let done = session.acknowledged(1).expect("publish 1 was in flight");
        done.send(Ok(())).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
        // A late PUBACK for an id given up on frees it.
        session.abandoned.insert(3);
        assert!(session.acknowledged(3).is_none());
        assert!(!session.abandoned.contains(&3));
    }

    #[test]
    fn under_load_completions_are_parked_for_the_driver_and_on_an_idle_connection_sent_at_once() {
        let settings = settings(Duration::from_secs(5));
        let mut session = up(&settings);
        let mut receivers = Vec::new();
        for payload in [&b"one"[..], b"two", b"three"] {
            let (cmd, rx) = command(payload);
            session.hand_over(cmd, &settings).unwrap();
            receivers.push(rx);
        }
        assert_eq!(session.take_queued(), Some(2));
        assert_eq!(session.take_queued(), Some(3));

        // Two still in flight: parked, and the driver woken for the first.
        let mut done: Vec<Done> = session.acknowledged(1).into_iter().collect();
        assert!(session.acknowledged_batch(&mut done), "wake the driver");
        assert!(done.is_empty(), "nothing for the reader to send");
        assert_eq!(session.acked.len(), 1);
        let mut done: Vec<Done> = session.acknowledged(2).into_iter().collect();
        assert!(
            !session.acknowledged_batch(&mut done),
            "the driver was woken already and has not taken the first"
        );
        assert_eq!(session.acked.len(), 2);
        assert!(receivers[0].try_recv().is_err(), "not sent yet");

        // The last one leaves the connection idle: the reader sends it.
        let mut done: Vec<Done> = session.acknowledged(3).into_iter().collect();
        assert!(!session.acknowledged_batch(&mut done));
        assert_eq!(done.len(), 1, "the reader completes it itself");
        assert_eq!(
            session.acked.len(),
            2,
            "the parked ones wait for the driver"
        );

        // While closing, the last acknowledgement wakes the driver.
        session.acked.clear();
        session.closing = true;
        assert!(session.acknowledged_batch(&mut Vec::new()));
    }

    #[test]
    fn publishes_meet_the_connect_timeout_only_while_the_link_is_down() {
        let timeout = Duration::from_millis(100);
        let settings = settings(timeout);
        let mut session = up(&settings);
        let (in_flight, mut in_flight_rx) = command(b"written");
        session.hand_over(in_flight, &settings).unwrap();
        let (queued, mut queued_rx) = command(b"queued");
        session.hand_over(queued, &settings).unwrap();
        let now = Instant::now();
        assert_eq!(
            session.expire_connect(now + timeout * 2, None),
            None,
            "link up"
        );

        let cause: Error = ErrorKind::ConnectionLost.into();
        session.link_down(now, timeout, Some(&cause), false);
        assert_eq!(
            session.expire_connect(now, Some(&cause)),
            Some(now + timeout),
            "both wait until `timeout` after the link went down"
        );
        let (late, mut late_rx) = command(b"handed over while down");
        session.hand_over(late, &settings).unwrap();
        assert!(session
            .expire_connect(now + timeout, Some(&cause))
            .is_some());
        for rx in [&mut in_flight_rx, &mut queued_rx] {
            let err = rx.try_recv().unwrap().unwrap_err();
            assert_eq!(err.timeout_phase(), Some(Phase::Connect), "{err:?}");
            assert!(std::error::Error::source(&err).is_some(), "names the cause");
        }
        assert!(late_rx.try_recv().is_err(), "its own deadline is later");
        assert!(session.inflight.is_empty());
        assert_eq!(session.queue.len(), 1);
    }

    #[test]
    fn a_permanent_failure_fails_every_publish_and_every_later_one_at_once() {
        let settings = settings(Duration::MAX);
        let mut session = Session::new(&settings, 100);
        let (queued, mut rx) = command(b"queued");
        assert!(matches!(
            session.hand_over(queued, &settings).unwrap(),
            HandOver::Queued { wake: true }
        ));
        let refused: Error = ErrorKind::ConnectionRefused {
            reason: "not authorized".to_owned(),
        }
        .into();
        session.link_down(Instant::now(), Duration::MAX, Some(&refused), true);
        let err = rx.try_recv().unwrap().unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::ConnectionRefused { .. }));
        let (later, _rx) = command(b"later");
        let Err(err) = session.hand_over(later, &settings) else {
            panic!("refused at once");
        };
        assert!(matches!(err.kind(), ErrorKind::ConnectionRefused { .. }));
        session.gate = Gate::Closed;
        let (closed, _rx) = command(b"closed");
        assert!(matches!(
            session
                .hand_over(closed, &settings)
                .map(|_| ())
                .unwrap_err()
                .kind(),
            ErrorKind::Shutdown
        ));
    }

    #[test]
    fn publish_packet_ids_stay_in_their_range_and_skip_ids_in_use() {
        let settings = settings(Duration::from_secs(5));
        let mut session = up(&settings);
        session.last_pkid = LAST_PUBLISH_ID - 1;
        session.abandoned.insert(LAST_PUBLISH_ID);
        session.abandoned.insert(1);
        let (first, _rx) = command(b"x");
        session.queue.push_back(first);
        assert_eq!(
            session.take_queued(),
            Some(2),
            "wraps, skipping abandoned ids"
        );
        let (second, _rx2) = command(b"y");
        session.queue.push_back(second);
        assert_eq!(session.take_queued(), Some(3));
        const { assert!(FIRST_CONTROL_ID > LAST_PUBLISH_ID) };
    }
}
