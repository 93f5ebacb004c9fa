//! The publish half of the MQTT session, shared under one short lock by
//! the callers, the connection's reader task and the driver.
//!
//! The fast path crosses as few threads as it can: a caller pushes its
//! publish onto `queue` and waits on its own completion; the driver moves
//! publishes from `queue` into `inflight` as it writes them (one TLS write
//! per burst); the reader completes a publish straight from `inflight`
//! when its PUBACK arrives. The driver is woken through one [`Notify`]
//! only when it may be idle: by a caller that found the queue empty, or
//! by the reader when PUBACKs made room in a full window (or emptied it
//! while closing). See `docs/decisions.md`, section 16.
//!
//! While the link is down the driver also enforces each caller's connect
//! timeout (so a waiting caller needs no timer or link subscription of
//! its own): a publish handed over, or left unacknowledged, while the
//! link is down fails `connect_timeout` after it first met the link down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::MutexGuard;

use bytes::Bytes;
use tokio::time::Instant;

use super::{deadline_after, Done};
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

/// See the module documentation.
pub(crate) struct Session {
    pub gate: Gate,
    /// Publishes handed over, oldest first.
    pub queue: VecDeque<PublishCommand>,
    /// Publish packet id -> the publish awaiting its PUBACK.
    pub inflight: HashMap<u16, Inflight>,
    /// Publish packet ids never answered on this connection: not reused
    /// until answered or until the connection ends.
    pub abandoned: HashSet<u16>,
    /// The driver left publishes queued for want of room in the window:
    /// the reader wakes it once PUBACKs made room.
    pub window_full: bool,
    /// Shutting down: nothing more is taken, and the reader wakes the
    /// driver when the last acknowledgement came.
    pub closing: bool,
}

impl Session {
    pub fn new() -> Session {
        Session {
            gate: Gate::Down,
            queue: VecDeque::new(),
            inflight: HashMap::new(),
            abandoned: HashSet::new(),
            window_full: false,
            closing: false,
        }
    }

    /// Queues a caller's publish; returns whether the driver must be woken
    /// (it may be idle only when the queue was empty).
    pub fn enqueue(
        &mut self,
        mut command: PublishCommand,
        connect_timeout: std::time::Duration,
    ) -> Result<bool, Error> {
        match &self.gate {
            Gate::Up => {}
            Gate::Down => {
                command.connect_deadline = Some(deadline_after(Instant::now(), connect_timeout));
            }
            Gate::Failed(e) => return Err(e.clone()),
            Gate::Closed => return Err(ErrorKind::Shutdown.into()),
        }
        if self.closing {
            return Err(ErrorKind::Shutdown.into());
        }
        let wake = self.queue.is_empty();
        self.queue.push_back(command);
        Ok(wake)
    }

    /// Completes the publish `pkid` on its PUBACK. A late PUBACK, for a publish that already
    /// timed out, frees its packet id.
    pub fn acknowledged(&mut self, pkid: u16) {
        match self.inflight.remove(&pkid) {
            Some(entry) => {
                let _ = entry.done.send(Ok(()));
            }
            None => {
                self.abandoned.remove(&pkid);
            }
        }
    }

    /// After a batch of acknowledgements: whether the driver waits for
    /// them (room in its window, or the last one while closing).
    pub fn driver_waits(&mut self) -> bool {
        let waits = self.window_full || (self.closing && self.inflight.is_empty());
        self.window_full = false;
        waits
    }

    /// The link went down (`permanent`: for good): every publish that has
    /// no connect deadline yet gets one from `now`; or, for a permanent
    /// failure, every publish fails with `error` at once.
    pub fn link_down(
        &mut self,
        now: Instant,
        connect_timeout: std::time::Duration,
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

/// Locks a session. A panic while holding the lock cannot leave it worse
/// than a lost connection would (each step is a single insert, remove or
/// completion), so recover it rather than spread the panic.
pub(crate) fn lock(session: &std::sync::Mutex<Session>) -> MutexGuard<'_, Session> {
    session
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
