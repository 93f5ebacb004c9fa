//! The task that owns the connection and its MQTT session state.
//!
//! One loop per connection: it writes what may go (re-sends first, then
//! new publishes, within the inflight window and the pacing budget),
//! completes the publishes whose PUBACK the reader took while others were
//! in flight, handles what the broker sent (read by a task of its own,
//! which takes PUBACKs by itself: see `session`), fails
//! publishes and subscribes whose acknowledgement is overdue, and keeps
//! the link alive. While the link is down it fails publishes whose
//! connect timeout passed. A publish held back by pacing or the window
//! never holds up subscription changes, which arrive on a queue of their
//! own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Packet, PubAck, Subscribe, SubscribeReasonCode, Unsubscribe};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{interval_at, sleep_until, timeout, Instant, MissedTickBehavior, Sleep};

use super::backoff::Backoff;
use super::chunks::Chunks;
use super::connect::{self, Stream, MAX_INCOMING_PACKET};
use super::session::{self, publish_len, Deadline, Session, FIRST_CONTROL_ID, LAST_PUBLISH_ID};
use super::writer::Step;
use super::{deadline_after, far_future, Connectivity, Control, Done, Hub, Message};
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Phase};

/// Writes are batched up to about this many bytes before hitting the socket.
const WRITE_BATCH: usize = 256 * 1024;
/// Packet ids of publishes (1..=LAST_PUBLISH_ID) and of subscription
/// changes (the rest).
const PUBLISH_IDS: usize = LAST_PUBLISH_ID as usize;
const CONTROL_IDS: usize = (u16::MAX - FIRST_CONTROL_ID) as usize + 1;
/// Packet ids whose acknowledgement never came are not reused on the same
/// connection (a late PUBACK must not complete another publish). A
/// connection that left this many unanswered is broken: open a new one.
const MAX_ABANDONED: usize = 4_096;
/// Subscription slots actually used at most, whatever is configured, so
/// that packet ids never run out.
const MAX_SUBSCRIPTION_SLOTS: usize = 8_192;

/// Room in the window of one connection: `max_inflight`, within what the
/// publish packet ids allow.
pub(crate) fn inflight_limit(settings: &Settings) -> usize {
    usize::from(settings.max_inflight).min(PUBLISH_IDS - MAX_ABANDONED)
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// Waiting for a free slot (`max_subscriptions`); nothing sent yet.
    Queued,
    /// SUBSCRIBE sent with this packet id, SUBACK awaited.
    Requested(u16),
    Granted,
    /// Held from an earlier connection; asked for again on the next one.
    Lapsed,
}

/// A subscription some callers hold.
struct Subscription {
    holders: usize,
    state: SubState,
    waiters: Vec<Done>,
}

/// A SUBSCRIBE awaiting its SUBACK.
struct PendingSuback {
    filter: String,
    stamp: u64,
}

/// How a connection ended.
enum End {
    /// Shut down on request, after draining.
    Closed,
    /// Lost; reconnect.
    Lost(Error),
}

/// The connection's two timers. Each stays armed across loop turns and is
/// only reset when it fired or was idle, so that neither costs a timer
/// registration per publish.
struct Timers {
    /// Fires no later than the oldest acknowledgement deadline.
    ack: Pin<Box<Sleep>>,
    ack_armed: bool,
    /// Fires when the pacer lets the next publish go.
    pace: Pin<Box<Sleep>>,
    pace_armed: bool,
}

impl Timers {
    fn new(now: Instant) -> Timers {
        Timers {
            ack: Box::pin(sleep_until(far_future(now))),
            ack_armed: false,
            pace: Box::pin(sleep_until(far_future(now))),
            pace_armed: false,
        }
    }

    /// Makes sure the acknowledgement timer fires by `at`. Deadlines are
    /// mostly armed in the order they fall due, so an armed timer usually
    /// fires early enough already and costs nothing more.
    fn arm_ack(&mut self, at: Instant) {
        if !self.ack_armed || at < self.ack.deadline() {
            self.ack.as_mut().reset(at);
            self.ack_armed = true;
        }
    }

    fn arm_pace(&mut self, at: Instant) {
        self.pace.as_mut().reset(at);
        self.pace_armed = true;
    }
}

pub(crate) struct Driver {
    settings: Arc<Settings>,
    shared: Arc<Hub>,
    control: mpsc::UnboundedReceiver<Control>,
    control_open: bool,
    /// Inflight publishes to write again after a reconnect, oldest first.
    resend: VecDeque<u16>,
    /// SUBACKs due on this connection, in the order written (the
    /// session holds the PUBACKs').
    deadlines: VecDeque<Deadline>,
    /// Subscribe packet ids never answered on this connection (publishes
    /// have theirs in the session; see [`MAX_ABANDONED`]).
    abandoned: HashSet<u16>,
    next_stamp: u64,
    subscriptions: HashMap<String, Subscription>,
    /// Filters waiting for a subscription slot, in order of arrival.
    queued_subscriptions: VecDeque<String>,
    /// Subscriptions holding a slot (every state but `Queued`).
    active_subscriptions: usize,
    subscription_limit: usize,
    /// SUBSCRIBE packet id -> its filter, until the SUBACK.
    pending_subacks: HashMap<u16, PendingSuback>,
    /// The last packet id given to a subscription change.
    last_control_pkid: u16,
    /// Completions taken from the session, to send once the lock is
    /// released (kept for its allocation).
    acked: Vec<Done>,
    /// `write_out` took a wake-up meant for the loop: look for work again
    /// before waiting.
    woken: bool,
    closing: bool,
}

impl Driver {
    pub fn new(
        settings: Arc<Settings>,
        shared: Arc<Hub>,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Self {
        let subscription_limit =
            usize::from(settings.max_subscriptions).min(MAX_SUBSCRIPTION_SLOTS);
        Driver {
            settings,
            shared,
            control,
            control_open: true,
            resend: VecDeque::new(),
            deadlines: VecDeque::new(),
            abandoned: HashSet::new(),
            next_stamp: 0,
            subscriptions: HashMap::new(),
            queued_subscriptions: VecDeque::new(),
            active_subscriptions: 0,
            subscription_limit,
            pending_subacks: HashMap::new(),
            last_control_pkid: 0,
            acked: Vec::new(),
            woken: false,
            closing: false,
        }
    }

    pub async fn run(mut self) {
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut backoff = Backoff::new(self.settings.max_reconnect_delay);
        let mut last_attempt: Option<Instant> = None;
        let broker = self.settings.broker();
        while !*shutdown.borrow_and_update() {
            if let Some(previous) = last_attempt {
                let pause = async {
                    tokio::select! {
                        () = sleep_until(previous + backoff.next_delay()) => true,
                        _ = shutdown.changed() => false,
                    }
                };
                if !self.while_down(pause).await {
                    continue;
                }
            }
            last_attempt = Some(Instant::now());
            tracing::debug!(%broker, client_id = %self.settings.client_id, "connecting");
            let mut buf = BytesMut::with_capacity(16 * 1024);
            let attempt = self
                .while_down(timeout(
                    self.settings.connect_timeout,
                    connect::open(&self.settings, &mut buf),
                ))
                .await;
            let stream = match attempt {
                Ok(Ok(stream)) => stream,
                Ok(Err(failure)) => {
                    tracing::warn!(%broker, error = %failure.error, source = ?std::error::Error::source(&failure.error), "connection attempt failed");
                    backoff.failed();
                    self.set_link(Connectivity::Connecting {
                        last_error: Some(failure.error),
                        permanent: failure.permanent,
                    });
                    continue;
                }
                Err(_) => {
                    tracing::warn!(%broker, "connection attempt timed out");
                    backoff.failed();
                    self.set_link(Connectivity::Connecting {
                        last_error: Some(ErrorKind::Timeout(Phase::Connect).into()),
                        permanent: false,
                    });
                    continue;
                }
            };
            tracing::info!(%broker, client_id = %self.settings.client_id, "connected");
            backoff.succeeded();
            // `serve` reports the link up once the session is restored.
            match self.serve(stream, buf, &mut shutdown).await {
                End::Closed => break,
                End::Lost(error) => {
                    let unacknowledged = self.shared.session().inflight.len();
                    tracing::warn!(%broker, %error, unacknowledged, "connection lost; reconnecting");
                    self.set_link(Connectivity::Connecting {
                        last_error: Some(error),
                        permanent: false,
                    });
                }
            }
        }
        self.fail_everything();
        self.set_link(Connectivity::Closed);
        self.shared.close_routes();
    }

    /// Publishes the link state, and lets the publish session follow it
    /// (under its lock, so that a caller queueing meanwhile sees either
    /// the old state or the new one and its consequences).
    fn set_link(&self, link: Connectivity) {
        {
            let mut session = self.shared.session();
            match &link {
                Connectivity::Connected => session.gate = session::Gate::Up,
                Connectivity::Connecting {
                    last_error,
                    permanent,
                } => session.link_down(
                    Instant::now(),
                    self.settings.connect_timeout,
                    last_error.as_ref(),
                    *permanent,
                ),
                Connectivity::Closed => {
                    session.gate = session::Gate::Closed;
                    session.fail_all(|| ErrorKind::Shutdown.into());
                }
            }
        }
        self.shared.link.send_replace(link);
    }

    /// Runs `work` (a pause or a connection attempt) while the link is
    /// down, failing meanwhile the publishes whose connect timeout passed.
    async fn while_down<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut timer = Box::pin(sleep_until(far_future(Instant::now())));
        let mut parked = Vec::new();
        loop {
            let next = {
                let link = self.shared.link.borrow();
                let last_error = match &*link {
                    Connectivity::Connecting { last_error, .. } => last_error.as_ref(),
                    _ => None,
                };
                let mut session = self.shared.session();
                // Acknowledged on the connection that just ended: sent
                // below, not under the lock.
                parked.append(&mut session.acked);
                session.expire_connect(Instant::now(), last_error)
            };
            send_acked(&mut parked);
            timer
                .as_mut()
                .reset(next.unwrap_or_else(|| far_future(Instant::now())));
            tokio::select! {
                biased;
                out = &mut work => return out,
                () = timer.as_mut() => {}
                // A caller queued a publish (and its deadline).
                () = self.shared.wake.notified() => {}
            }
        }
    }

    /// Ends every pending operation with `Shutdown`: nothing is dropped
    /// without its caller hearing of it.
    fn fail_everything(&mut self) {
        let shutdown = || Err(Error::from(ErrorKind::Shutdown));
        self.complete_acked();
        {
            let mut session = self.shared.session();
            session.gate = session::Gate::Closed;
            session.fail_all(|| ErrorKind::Shutdown.into());
        }
        for (_, sub) in self.subscriptions.drain() {
            for waiter in sub.waiters {
                let _ = waiter.send(shutdown());
            }
        }
        self.control.close();
        while let Ok(command) = self.control.try_recv() {
            if let Control::Subscribe { done, .. } = command {
                let _ = done.send(shutdown());
            }
        }
    }

    async fn serve(
        &mut self,
        stream: Box<dyn Stream>,
        buf: BytesMut,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let (reader, writer) = tokio::io::split(stream);
        let (packets_tx, mut packets) = mpsc::unbounded_channel();
        // The reader runs apart so that the broker can always deliver to
        // us, even while we are blocked writing a large batch to it.
        let reader = AbortOnDrop(tokio::spawn(read_packets(
            reader,
            buf,
            packets_tx,
            self.shared.clone(),
        )));
        let mut out = Chunks::with_blocks(4096);
        let mut timers = Timers::new(Instant::now());
        // Bytes a caller encoded for an earlier connection are dropped
        // (they carry its generation), and their publishes re-sent from
        // `restore_session`.
        let generation = self.shared.session().generation + 1;
        self.shared.writer().attach(writer, generation);
        self.restore_session(generation, &mut out, &mut timers);
        // Callers may write from now on, not before: the session opens
        // its gate only once it knows this connection's generation. (The
        // link used to be reported up before `restore_session`; a caller
        // that took the fast path in between had its bytes dropped, and
        // its publish's first write went out as a re-send, with DUP.)
        self.set_link(Connectivity::Connected);

        let keep_alive = Duration::from_secs(u64::from(self.settings.keep_alive));
        let ping_period = if keep_alive.is_zero() {
            Duration::from_secs(u64::MAX / 4)
        } else {
            keep_alive
        };
        let mut ping = interval_at(deadline_after(Instant::now(), ping_period), ping_period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut awaiting_pong = false;

        let end = loop {
            // A full batch leaves more to write: write it and come back
            // before waiting for anything.
            let more = self.fill(&mut out, &mut timers);
            if !out.is_empty() || self.shared.writer().pending() {
                if let Err(e) = self.write_out(&mut out, &mut timers).await {
                    break End::Lost(e);
                }
            }
            if more || std::mem::take(&mut self.woken) {
                continue;
            }
            if self.closing {
                let drained = {
                    let mut session = self.shared.session();
                    session.forget_abandoned();
                    session.queue.is_empty() && session.inflight.is_empty()
                };
                if drained && self.pending_subacks.is_empty() {
                    break End::Closed;
                }
            }
            tokio::select! {
                packet = packets.recv() => match packet {
                    Some(Ok(packet)) => {
                        if let Err(e) = self.incoming(packet, &mut out, &mut timers, &mut awaiting_pong) {
                            break End::Lost(e);
                        }
                    }
                    Some(Err(e)) => break End::Lost(e),
                    None => break End::Lost(ErrorKind::ConnectionLost.into()),
                },
                // New publishes, or room in the window: `fill` at the top
                // of the loop writes what may go.
                () = self.shared.wake.notified() => {}
                command = self.control.recv(), if self.control_open => match command {
                    Some(command) => {
                        let now = Instant::now();
                        self.control(command, &mut out, now, &mut timers);
                        while let Ok(command) = self.control.try_recv() {
                            self.control(command, &mut out, now, &mut timers);
                        }
                    }
                    None => self.control_open = false,
                },
                () = timers.pace.as_mut(), if timers.pace_armed => timers.pace_armed = false,
                () = timers.ack.as_mut(), if timers.ack_armed => {
                    if let Err(e) = self.expire(Instant::now(), &mut out, &mut timers) {
                        break End::Lost(e);
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        break End::Lost(Error::with_source(
                            ErrorKind::ConnectionLost,
                            "no PINGRESP within the keep-alive interval",
                        ));
                    }
                    out.packet(&Packet::PingReq);
                    awaiting_pong = true;
                }
                _ = shutdown.changed(), if !self.closing => {
                    // Take no new work; finish what was handed over. Every
                    // written packet has its acknowledgement deadline, so
                    // draining ends.
                    self.closing = true;
                    self.shared.session().closing = true;
                    self.control.close();
                }
            }
        };
        if matches!(end, End::Closed) {
            out.packet(&Packet::Disconnect);
            let _ = self.write_out(&mut out, &mut timers).await;
        }
        let writer = self.shared.writer().detach();
        if let (End::Closed, Some(mut writer)) = (&end, writer) {
            let _ = writer.shutdown().await;
        }
        drop(reader);
        // Acknowledged is acknowledged, however the connection ended.
        self.complete_acked();
        // What was pending belongs to this connection; the next one starts
        // a clean session and asks again.
        self.pending_subacks.clear();
        self.deadlines.clear();
        self.resend.clear();
        self.abandoned.clear();
        {
            let mut session = self.shared.session();
            session.abandoned.clear();
            session.deadlines.clear();
            session.window_full = false;
            session.resending = false;
            session.ack_armed = false;
        }
        for sub in self.subscriptions.values_mut() {
            if sub.state != SubState::Queued {
                sub.state = SubState::Lapsed;
            }
        }
        end
    }

    /// After (re)connecting: subscribe again to everything that holds a
    /// slot, and line up every publish that was not acknowledged for a
    /// re-send in the callers' order (written by [`Driver::fill`], paced
    /// like any other publish).
    fn restore_session(&mut self, generation: u64, out: &mut Chunks, timers: &mut Timers) {
        let now = Instant::now();
        let filters: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, sub)| sub.state != SubState::Queued)
            .map(|(filter, _)| filter.clone())
            .collect();
        for filter in filters {
            self.send_subscribe(filter, out, now, timers);
        }
        // Callers that gave up on a publish were told it failed; sending it
        // now would only duplicate what they will retry.
        let mut session = self.shared.session();
        session.generation = generation;
        session.inflight.retain(|_, entry| !entry.done.is_closed());
        let mut order: Vec<(u64, u16)> = session
            .inflight
            .iter()
            .map(|(pkid, entry)| (entry.seq, *pkid))
            .collect();
        order.sort_unstable();
        if !order.is_empty() {
            tracing::info!(count = order.len(), "re-sending unacknowledged publishes");
        }
        self.resend = order.into_iter().map(|(_, pkid)| pkid).collect();
        session.resending = !self.resend.is_empty();
    }

    /// Sends the completions the reader parked in the session.
    fn complete_acked(&mut self) {
        self.acked.append(&mut self.shared.session().acked);
        send_acked(&mut self.acked);
    }

    /// Sends the completions the reader parked (see [`Driver::fill`]), then
    /// encodes the publishes that may go now, up to one write batch:
    /// re-sends first, then the queued publishes in order, each within the
    /// inflight window and the pacing budget. When the pacer says "not
    /// yet", arms the pace timer and stops; when the window is full, asks
    /// the reader to wake us on the next PUBACK. Arms the acknowledgement
    /// timer for deadlines callers started. Returns true when it stopped
    /// only because the batch is full (more may go at once).
    fn fill(&mut self, out: &mut Chunks, timers: &mut Timers) -> bool {
        let now = Instant::now();
        let shared = self.shared.clone();
        let more = {
            let mut session = shared.session();
            session.trim_deadlines();
            // Under the lock only headers are encoded: payloads are shared
            // with the session, not copied (see `chunks`).
            let more = !timers.pace_armed && self.fill_locked(&mut session, out, now, timers);
            if let Some(front) = session.deadlines.front() {
                timers.arm_ack(front.at);
            }
            session.ack_armed = timers.ack_armed;
            self.acked.append(&mut session.acked);
            more
        };
        // Completions before the write, so that their callers hand their
        // next publishes over while this batch is written.
        send_acked(&mut self.acked);
        more
    }

    /// Picks the publishes that may go now, up to one write batch of
    /// bytes, and starts their deadlines.
    fn fill_locked(
        &mut self,
        session: &mut Session,
        out: &mut Chunks,
        now: Instant,
        timers: &mut Timers,
    ) -> bool {
        let ack_timeout = self.settings.ack_timeout;
        let mut bytes = 0usize;
        while bytes < WRITE_BATCH {
            if let Some(&pkid) = self.resend.front() {
                let Some(entry) = session.inflight.get(&pkid) else {
                    self.resend.pop_front();
                    continue;
                };
                if entry.done.is_closed() {
                    // The caller gave up while we were reconnecting.
                    session.inflight.remove(&pkid);
                    self.resend.pop_front();
                    continue;
                }
                let size = publish_len(&entry.topic, &entry.payload);
                if let Err(at) = session.pace(now, size) {
                    timers.arm_pace(at);
                    return false;
                }
                self.resend.pop_front();
                bytes = bytes.saturating_add(size);
                session.start_write(pkid, true, out, now, ack_timeout);
                continue;
            }
            session.resending = false;
            let Some(next) = session.queue.front() else {
                return false;
            };
            if next.done.is_closed() {
                session.queue.pop_front(); // the caller gave up before it was sent
                continue;
            }
            if session.inflight.len() >= session.inflight_limit {
                session.window_full = true;
                return false;
            }
            let size = publish_len(&next.topic, &next.payload);
            if let Err(at) = session.pace(now, size) {
                timers.arm_pace(at);
                return false;
            }
            if let Some(pkid) = session.take_queued() {
                bytes = bytes.saturating_add(size);
                session.start_write(pkid, false, out, now, ack_timeout);
            }
        }
        !session.queue.is_empty() || !self.resend.is_empty()
    }

    fn push_deadline(&mut self, pkid: u16, stamp: u64, now: Instant, timers: &mut Timers) {
        let at = deadline_after(now, self.settings.ack_timeout);
        self.deadlines.push_back(Deadline { at, pkid, stamp });
        timers.arm_ack(at);
    }

    /// True while the SUBSCRIBE `deadline` is about still awaits its
    /// SUBACK.
    fn is_live(&self, deadline: &Deadline) -> bool {
        self.pending_subacks
            .get(&deadline.pkid)
            .is_some_and(|p| p.stamp == deadline.stamp)
    }

    /// Fails every publish and subscribe whose acknowledgement is overdue
    /// at `now`, oldest first, and re-arms the timer for the next one.
    fn expire(&mut self, now: Instant, out: &mut Chunks, timers: &mut Timers) -> Result<(), Error> {
        timers.ack_armed = false;
        let shared = self.shared.clone();
        let mut session = shared.session();
        while let Some(front) = session.deadlines.front() {
            if !session.is_live(front) {
                session.deadlines.pop_front();
                continue;
            }
            if front.at > now {
                timers.arm_ack(front.at);
                break;
            }
            let Some(Deadline { pkid, .. }) = session.deadlines.pop_front() else {
                break;
            };
            // The broker may still answer; the id stays out of use until
            // then or until the connection ends.
            session.abandoned.insert(pkid);
            if let Some(entry) = session.inflight.remove(&pkid) {
                tracing::debug!(pkid, "no PUBACK within the acknowledgement timeout");
                let _ = entry
                    .done
                    .send(Err(ErrorKind::Timeout(Phase::Acknowledgement).into()));
            }
        }
        session.ack_armed = timers.ack_armed;
        while let Some(front) = self.deadlines.front() {
            if !self.is_live(front) {
                self.deadlines.pop_front();
                continue;
            }
            if front.at > now {
                timers.arm_ack(front.at);
                break;
            }
            let Some(Deadline { pkid, .. }) = self.deadlines.pop_front() else {
                break;
            };
            self.abandoned.insert(pkid);
            if let Some(pending) = self.pending_subacks.remove(&pkid) {
                tracing::debug!(filter = %pending.filter, "no SUBACK within the acknowledgement timeout");
                let requested = self
                    .subscriptions
                    .get(&pending.filter)
                    .is_some_and(|sub| sub.state == SubState::Requested(pkid));
                if requested {
                    if let Some(sub) = self.subscriptions.remove(&pending.filter) {
                        for waiter in sub.waiters {
                            let _ = waiter.send(Err(ErrorKind::Timeout(Phase::Subscribe).into()));
                        }
                    }
                    // A late grant must not leave the broker holding a
                    // subscription we no longer count.
                    self.send_unsubscribe(pending.filter, out);
                    self.release_slot(out, now, timers);
                }
            }
        }
        let abandoned = self.abandoned.len() + session.abandoned.len();
        if abandoned >= MAX_ABANDONED {
            return Err(Error::with_source(
                ErrorKind::ConnectionLost,
                format!("{abandoned} packets got no acknowledgement; opening a new connection"),
            ));
        }
        Ok(())
    }

    /// A free packet id for a subscription change
    /// ([`FIRST_CONTROL_ID`]..=65,535).
    fn next_control_pkid(&mut self) -> u16 {
        // The subscription slots and the abandoned limit leave ids free.
        for _ in 0..CONTROL_IDS {
            self.last_control_pkid = match self.last_control_pkid.checked_add(1) {
                Some(id) if id >= FIRST_CONTROL_ID => id,
                _ => FIRST_CONTROL_ID,
            };
            let id = self.last_control_pkid;
            if !self.pending_subacks.contains_key(&id) && !self.abandoned.contains(&id) {
                return id;
            }
        }
        self.last_control_pkid
    }

    fn send_subscribe(
        &mut self,
        filter: String,
        out: &mut Chunks,
        now: Instant,
        timers: &mut Timers,
    ) {
        let pkid = self.next_control_pkid();
        // One filter per SUBSCRIBE (the platform allows at most 8).
        let mut subscribe = Subscribe::new(filter.clone(), QoS::AtLeastOnce);
        subscribe.pkid = pkid;
        out.packet(&Packet::Subscribe(subscribe));
        if let Some(sub) = self.subscriptions.get_mut(&filter) {
            sub.state = SubState::Requested(pkid);
        }
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        self.pending_subacks
            .insert(pkid, PendingSuback { filter, stamp });
        self.push_deadline(pkid, stamp, now, timers);
    }

    fn send_unsubscribe(&mut self, filter: String, out: &mut Chunks) {
        let mut unsubscribe = Unsubscribe::new(filter);
        unsubscribe.pkid = self.next_control_pkid();
        out.packet(&Packet::Unsubscribe(unsubscribe));
    }

    /// One subscription gave up its slot (its UNSUBSCRIBE, if it needed
    /// one, is already encoded): the longest-waiting one takes it.
    fn release_slot(&mut self, out: &mut Chunks, now: Instant, timers: &mut Timers) {
        self.active_subscriptions = self.active_subscriptions.saturating_sub(1);
        self.promote_subscriptions(out, now, timers);
    }

    /// Sends the SUBSCRIBE of queued subscriptions while slots are free.
    fn promote_subscriptions(&mut self, out: &mut Chunks, now: Instant, timers: &mut Timers) {
        while self.active_subscriptions < self.subscription_limit {
            let Some(filter) = self.queued_subscriptions.pop_front() else {
                return;
            };
            self.active_subscriptions += 1;
            self.send_subscribe(filter, out, now, timers);
        }
    }

    fn control(&mut self, command: Control, out: &mut Chunks, now: Instant, timers: &mut Timers) {
        match command {
            Control::Subscribe { filter, done } => match self.subscriptions.get_mut(&filter) {
                Some(sub) => {
                    sub.holders += 1;
                    if sub.state == SubState::Granted {
                        let _ = done.send(Ok(()));
                    } else {
                        sub.waiters.push(done);
                    }
                }
                None => {
                    self.subscriptions.insert(
                        filter.clone(),
                        Subscription {
                            holders: 1,
                            state: SubState::Queued,
                            waiters: vec![done],
                        },
                    );
                    self.queued_subscriptions.push_back(filter);
                    self.promote_subscriptions(out, now, timers);
                }
            },
            Control::Unsubscribe { filter } => {
                let Some(sub) = self.subscriptions.get_mut(&filter) else {
                    return;
                };
                sub.holders = sub.holders.saturating_sub(1);
                if sub.holders > 0 {
                    return;
                }
                let Some(sub) = self.subscriptions.remove(&filter) else {
                    return;
                };
                for waiter in sub.waiters {
                    let _ = waiter.send(Err(ErrorKind::Shutdown.into()));
                }
                if sub.state == SubState::Queued {
                    self.queued_subscriptions.retain(|f| *f != filter);
                } else {
                    // The slot is free once the UNSUBSCRIBE is written: the
                    // broker reads it before the next SUBSCRIBE.
                    self.send_unsubscribe(filter, out);
                    self.release_slot(out, now, timers);
                }
            }
        }
    }

    fn incoming(
        &mut self,
        packet: Packet,
        out: &mut Chunks,
        timers: &mut Timers,
        awaiting_pong: &mut bool,
    ) -> Result<(), Error> {
        match packet {
            // The reader completes publishes by itself; this is for any
            // PUBACK that still comes this way.
            Packet::PubAck(ack) => {
                let done = self.shared.session().acknowledged(ack.pkid);
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
            }
            Packet::SubAck(ack) => {
                let Some(pending) = self.pending_subacks.remove(&ack.pkid) else {
                    self.abandoned.remove(&ack.pkid);
                    return Ok(());
                };
                let ours = self
                    .subscriptions
                    .get(&pending.filter)
                    .is_some_and(|sub| sub.state == SubState::Requested(ack.pkid));
                if !ours {
                    // Given up (unsubscribed) while the SUBSCRIBE was out.
                    return Ok(());
                }
                let granted = !ack.return_codes.is_empty()
                    && ack
                        .return_codes
                        .iter()
                        .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                if granted {
                    if let Some(sub) = self.subscriptions.get_mut(&pending.filter) {
                        sub.state = SubState::Granted;
                        for waiter in sub.waiters.drain(..) {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                } else {
                    if let Some(sub) = self.subscriptions.remove(&pending.filter) {
                        for waiter in sub.waiters {
                            let _ = waiter.send(Err(ErrorKind::SubscribeRefused {
                                topic: pending.filter.clone(),
                            }
                            .into()));
                        }
                    }
                    self.release_slot(out, Instant::now(), timers);
                }
            }
            Packet::Publish(publish) => {
                match publish.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => out.packet(&Packet::PubAck(PubAck::new(publish.pkid))),
                    QoS::ExactlyOnce => {
                        return Err(ErrorKind::Protocol(
                            "QoS 2 delivery on a QoS 1 subscription".to_owned(),
                        )
                        .into())
                    }
                }
                self.shared.route(
                    &publish.topic,
                    Message {
                        payload: publish.payload,
                        retain: publish.retain,
                        dup: publish.dup,
                    },
                );
            }
            Packet::PingResp => *awaiting_pong = false,
            Packet::UnsubAck(_) => {}
            other => {
                return Err(ErrorKind::Protocol(format!(
                    "unexpected packet from the broker: {other:?}"
                ))
                .into())
            }
        }
        Ok(())
    }

    /// Writes `out` (after whatever callers left in the shared writer) to
    /// the broker and flushes it. Deadlines keep running meanwhile (a
    /// publish written earlier still fails on time while the broker is
    /// slow to take this batch), and a broker that takes no bytes at all
    /// for the acknowledgement timeout is a lost connection.
    async fn write_out(&mut self, out: &mut Chunks, timers: &mut Timers) -> Result<(), Error> {
        let stall = self.settings.ack_timeout;
        let shared = self.shared.clone();
        shared.writer().push(out);
        loop {
            // Each step is cancel-safe: a write either took bytes (and the
            // writer's buffer advanced past them) or took none.
            let step = std::future::poll_fn(|cx| shared.writer().poll_step(cx));
            tokio::select! {
                biased;
                written = timeout(stall, step) => match written {
                    Ok(Ok(Step::Done)) => return Ok(()),
                    Ok(Ok(Step::Progress)) => {}
                    Ok(Err(e)) => return Err(Error::with_source(ErrorKind::ConnectionLost, e)),
                    Err(_) => {
                        return Err(Error::with_source(
                            ErrorKind::ConnectionLost,
                            "the broker took no bytes within the acknowledgement timeout",
                        ))
                    }
                },
                () = timers.ack.as_mut(), if timers.ack_armed => {
                    self.expire(Instant::now(), out, timers)?;
                    shared.writer().push(out);
                }
                // Completions parked while the broker is slow to take
                // this batch need not wait for it.
                () = shared.wake.notified() => {
                    self.complete_acked();
                    self.woken = true;
                }
            }
        }
    }
}

/// Completes acknowledged publishes (leaving `done` empty).
fn send_acked(done: &mut Vec<Done>) {
    for done in done.drain(..) {
        let _ = done.send(Ok(()));
    }
}

/// Reads what the broker sends. PUBACKs are taken here, all of one read
/// under one lock of the session, and completed here on an idle
/// connection, else by the driver (see `session`); everything else goes
/// to the driver.
async fn read_packets(
    mut reader: ReadHalf<Box<dyn Stream>>,
    mut buf: BytesMut,
    packets: mpsc::UnboundedSender<Result<Packet, Error>>,
    shared: Arc<Hub>,
) {
    loop {
        if !dispatch(&mut buf, &packets, &shared) {
            return;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = packets.send(Err(Error::with_source(
                    ErrorKind::ConnectionLost,
                    "the broker closed the connection",
                )));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = packets.send(Err(Error::with_source(ErrorKind::ConnectionLost, e)));
                return;
            }
        }
    }
}

/// Handles every whole packet in `buf`; false when reading must stop (a
/// malformed packet, or the driver is gone).
fn dispatch(
    buf: &mut BytesMut,
    packets: &mpsc::UnboundedSender<Result<Packet, Error>>,
    shared: &Hub,
) -> bool {
    let mut session = None;
    let mut done = Vec::new();
    let go_on = loop {
        match Packet::read(buf, MAX_INCOMING_PACKET) {
            Ok(Packet::PubAck(ack)) => done.extend(
                session
                    .get_or_insert_with(|| shared.session())
                    .acknowledged(ack.pkid),
            ),
            Ok(packet) => {
                if packets.send(Ok(packet)).is_err() {
                    break false;
                }
            }
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break true,
            Err(e) => {
                let _ = packets.send(Err(ErrorKind::Protocol(format!(
                    "malformed packet from the broker: {e}"
                ))
                .into()));
                break false;
            }
        }
    };
    if let Some(mut session) = session {
        let wake = session.acknowledged_batch(&mut done);
        drop(session);
        // Waking the callers may wake threads: not under the lock.
        send_acked(&mut done);
        if wake {
            shared.wake.notify_one();
        }
    }
    go_on
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
