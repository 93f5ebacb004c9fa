//! The task that owns the connection and its MQTT session state.
//!
//! One loop per connection: it writes what may go (re-sends first, then
//! new publishes, within the inflight window and the pacing budget),
//! handles what the broker sent (read by a task of its own, which
//! completes publishes on their PUBACK by itself: see `session`), fails
//! publishes and subscribes whose acknowledgement is overdue, and keeps
//! the link alive. While the link is down it fails publishes whose
//! connect timeout passed. A publish held back by pacing or the window
//! never holds up subscription changes, which arrive on a queue of their
//! own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    Packet, PubAck, Publish, Subscribe, SubscribeReasonCode, Unsubscribe,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{interval_at, sleep_until, timeout, Instant, MissedTickBehavior, Sleep};

use super::backoff::Backoff;
use super::connect::{self, Stream, MAX_INCOMING_PACKET};
use super::pacing::Pacer;
use super::session::{self, Inflight, PublishCommand, Session, FIRST_CONTROL_ID, LAST_PUBLISH_ID};
use super::{deadline_after, far_future, Control, Done, Link, Message, Shared};
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

/// When the acknowledgement of one written packet is due. `stamp` tells
/// the write it is for apart from a later use of the same packet id; an
/// entry whose packet was answered since is stale and skipped.
struct Deadline {
    at: Instant,
    pkid: u16,
    stamp: u64,
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
    /// armed in the order they fall due, so an armed timer already fires
    /// early enough.
    fn arm_ack(&mut self, at: Instant) {
        if !self.ack_armed {
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
    shared: Arc<Shared>,
    control: mpsc::UnboundedReceiver<Control>,
    control_open: bool,
    /// `None` when pacing is off: the unpaced path pays nothing for it.
    pacer: Option<Pacer>,
    /// Room in the window: publishes written and not yet acknowledged
    /// (in the shared session's `inflight`) at most.
    inflight_limit: usize,
    /// Inflight publishes to write again after a reconnect, oldest first.
    resend: VecDeque<u16>,
    /// Acknowledgements due on this connection, in the order written.
    deadlines: VecDeque<Deadline>,
    /// Subscribe packet ids never answered on this connection (publishes
    /// have theirs in the session; see [`MAX_ABANDONED`]).
    abandoned: HashSet<u16>,
    next_seq: u64,
    next_stamp: u64,
    subscriptions: HashMap<String, Subscription>,
    /// Filters waiting for a subscription slot, in order of arrival.
    queued_subscriptions: VecDeque<String>,
    /// Subscriptions holding a slot (every state but `Queued`).
    active_subscriptions: usize,
    subscription_limit: usize,
    /// SUBSCRIBE packet id -> its filter, until the SUBACK.
    pending_subacks: HashMap<u16, PendingSuback>,
    /// The last packet id given to a publish, and to a subscription
    /// change.
    last_pkid: u16,
    last_control_pkid: u16,
    closing: bool,
}

impl Driver {
    pub fn new(
        settings: Arc<Settings>,
        shared: Arc<Shared>,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Self {
        let subscription_limit =
            usize::from(settings.max_subscriptions).min(MAX_SUBSCRIPTION_SLOTS);
        let inflight_limit = usize::from(settings.max_inflight)
            .min(PUBLISH_IDS - MAX_ABANDONED);
        Driver {
            pacer: Pacer::new(settings.pacing, Instant::now()),
            settings,
            shared,
            control,
            control_open: true,
            inflight_limit,
            resend: VecDeque::new(),
            deadlines: VecDeque::new(),
            abandoned: HashSet::new(),
            next_seq: 0,
            next_stamp: 0,
            subscriptions: HashMap::new(),
            queued_subscriptions: VecDeque::new(),
            active_subscriptions: 0,
            subscription_limit,
            pending_subacks: HashMap::new(),
            last_pkid: 0,
            last_control_pkid: 0,
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
                    self.set_link(Link::Connecting {
                        last_error: Some(failure.error),
                        permanent: failure.permanent,
                    });
                    continue;
                }
                Err(_) => {
                    tracing::warn!(%broker, "connection attempt timed out");
                    backoff.failed();
                    self.set_link(Link::Connecting {
                        last_error: Some(ErrorKind::Timeout(Phase::Connect).into()),
                        permanent: false,
                    });
                    continue;
                }
            };
            tracing::info!(%broker, client_id = %self.settings.client_id, "connected");
            backoff.succeeded();
            self.set_link(Link::Connected);
            match self.serve(stream, buf, &mut shutdown).await {
                End::Closed => break,
                End::Lost(error) => {
                    let unacknowledged = self.shared.session().inflight.len();
                    tracing::warn!(%broker, %error, unacknowledged, "connection lost; reconnecting");
                    self.set_link(Link::Connecting {
                        last_error: Some(error),
                        permanent: false,
                    });
                }
            }
        }
        self.fail_everything();
        self.set_link(Link::Closed);
        self.shared.close_routes();
    }

    /// Publishes the link state, and lets the publish session follow it
    /// (under its lock, so that a caller queueing meanwhile sees either
    /// the old state or the new one and its consequences).
    fn set_link(&self, link: Link) {
        {
            let mut session = self.shared.session();
            match &link {
                Link::Connected => session.gate = session::Gate::Up,
                Link::Connecting {
                    last_error,
                    permanent,
                } => session.link_down(
                    Instant::now(),
                    self.settings.connect_timeout,
                    last_error.as_ref(),
                    *permanent,
                ),
                Link::Closed => {
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
        loop {
            let next = {
                let link = self.shared.link.borrow();
                let last_error = match &*link {
                    Link::Connecting { last_error, .. } => last_error.as_ref(),
                    _ => None,
                };
                self.shared
                    .session()
                    .expire_connect(Instant::now(), last_error)
            };
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
        let (reader, mut writer) = tokio::io::split(stream);
        let (packets_tx, mut packets) = mpsc::unbounded_channel();
        // The reader runs apart so that the broker can always deliver to
        // us, even while we are blocked writing a large batch to it.
        let reader = AbortOnDrop(tokio::spawn(read_packets(
            reader,
            buf,
            packets_tx,
            self.shared.clone(),
        )));
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut timers = Timers::new(Instant::now());
        self.restore_session(&mut out, &mut timers);

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
            let more = !timers.pace_armed && self.fill(&mut out, &mut timers);
            if !out.is_empty() {
                if let Err(e) = self.write_out(&mut writer, &mut out, &mut timers).await {
                    break End::Lost(e);
                }
            }
            if more {
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
                    encode(&Packet::PingReq, &mut out);
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
            encode(&Packet::Disconnect, &mut out);
            let _ = self.write_out(&mut writer, &mut out, &mut timers).await;
            let _ = writer.shutdown().await;
        }
        drop(reader);
        // What was pending belongs to this connection; the next one starts
        // a clean session and asks again.
        self.pending_subacks.clear();
        self.deadlines.clear();
        self.resend.clear();
        self.abandoned.clear();
        {
            let mut session = self.shared.session();
            session.abandoned.clear();
            session.window_full = false;
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
    fn restore_session(&mut self, out: &mut BytesMut, timers: &mut Timers) {
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
    }

    /// Encodes the publishes that may go now, up to one write batch:
    /// re-sends first, then the queued publishes in order, each within the
    /// inflight window and the pacing budget. When the pacer says "not
    /// yet", arms the pace timer and stops; when the window is full, asks
    /// the reader to wake us on the next PUBACK. Returns true when it
    /// stopped only because the batch is full (more may go at once).
    fn fill(&mut self, out: &mut BytesMut, timers: &mut Timers) -> bool {
        let now = Instant::now();
        let shared = self.shared.clone();
        let mut session = shared.session();
        self.trim_deadlines(&session);
        while out.len() < WRITE_BATCH {
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
                if !self.pace(now, size, timers) {
                    return false;
                }
                self.resend.pop_front();
                self.write_publish(&mut session, pkid, true, out, now, timers);
                continue;
            }
            let Some(next) = session.queue.front() else {
                return false;
            };
            if next.done.is_closed() {
                session.queue.pop_front(); // the caller gave up before it was sent
                continue;
            }
            if session.inflight.len() >= self.inflight_limit {
                session.window_full = true;
                return false;
            }
            let size = publish_len(&next.topic, &next.payload);
            if !self.pace(now, size, timers) {
                return false;
            }
            let Some(PublishCommand {
                topic,
                payload,
                done,
                connect_deadline,
            }) = session.queue.pop_front()
            else {
                return false;
            };
            let pkid = self.next_pkid(&session);
            self.next_seq += 1;
            session.inflight.insert(
                pkid,
                Inflight {
                    seq: self.next_seq,
                    stamp: 0,
                    topic,
                    payload,
                    done,
                    connect_deadline,
                },
            );
            self.write_publish(&mut session, pkid, false, out, now, timers);
        }
        !session.queue.is_empty() || !self.resend.is_empty()
    }

    /// Takes the pacing budget of a publish of `size` bytes; false, with
    /// the pace timer armed for when it may go, if it must wait.
    fn pace(&mut self, now: Instant, size: usize, timers: &mut Timers) -> bool {
        let Some(pacer) = &mut self.pacer else {
            return true;
        };
        match pacer.try_take(now, size) {
            Ok(()) => true,
            Err(at) => {
                timers.arm_pace(at);
                false
            }
        }
    }

    /// Encodes the inflight publish `pkid` and starts its acknowledgement
    /// deadline: the acknowledgement timeout counts from here.
    fn write_publish(
        &mut self,
        session: &mut Session,
        pkid: u16,
        dup: bool,
        out: &mut BytesMut,
        now: Instant,
        timers: &mut Timers,
    ) {
        let Some(entry) = session.inflight.get_mut(&pkid) else {
            return;
        };
        let mut publish =
            Publish::from_bytes(entry.topic.clone(), QoS::AtLeastOnce, entry.payload.clone());
        publish.pkid = pkid;
        publish.dup = dup;
        encode(&Packet::Publish(publish), out);
        self.next_stamp += 1;
        entry.stamp = self.next_stamp;
        self.push_deadline(pkid, self.next_stamp, now, timers);
    }

    fn push_deadline(&mut self, pkid: u16, stamp: u64, now: Instant, timers: &mut Timers) {
        let at = deadline_after(now, self.settings.ack_timeout);
        self.deadlines.push_back(Deadline { at, pkid, stamp });
        timers.arm_ack(at);
    }

    /// True while the write `deadline` is about still awaits its answer.
    fn is_live(&self, session: &Session, deadline: &Deadline) -> bool {
        if deadline.pkid <= LAST_PUBLISH_ID {
            session
                .inflight
                .get(&deadline.pkid)
                .is_some_and(|e| e.stamp == deadline.stamp)
        } else {
            self.pending_subacks
                .get(&deadline.pkid)
                .is_some_and(|p| p.stamp == deadline.stamp)
        }
    }

    /// Drops answered entries from the front of the deadline queue, and
    /// compacts it when answered ones pile up behind an old unanswered one.
    /// (The reader completes publishes without touching the queue, so this
    /// runs whenever the driver writes.)
    fn trim_deadlines(&mut self, session: &Session) {
        while let Some(front) = self.deadlines.front() {
            if self.is_live(session, front) {
                break;
            }
            self.deadlines.pop_front();
        }
        let live = session.inflight.len() + self.pending_subacks.len();
        if self.deadlines.len() > 2 * live + 64 {
            let mut deadlines = std::mem::take(&mut self.deadlines);
            deadlines.retain(|d| self.is_live(session, d));
            self.deadlines = deadlines;
        }
    }

    /// Fails every publish and subscribe whose acknowledgement is overdue
    /// at `now`, oldest first, and re-arms the timer for the next one.
    fn expire(
        &mut self,
        now: Instant,
        out: &mut BytesMut,
        timers: &mut Timers,
    ) -> Result<(), Error> {
        timers.ack_armed = false;
        let shared = self.shared.clone();
        let mut session = shared.session();
        while let Some(front) = self.deadlines.front() {
            if !self.is_live(&session, front) {
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
            // The broker may still answer; the id stays out of use until
            // then or until the connection ends.
            if pkid <= LAST_PUBLISH_ID {
                session.abandoned.insert(pkid);
                if let Some(entry) = session.inflight.remove(&pkid) {
                    tracing::debug!(pkid, "no PUBACK within the acknowledgement timeout");
                    let _ = entry
                        .done
                        .send(Err(ErrorKind::Timeout(Phase::Acknowledgement).into()));
                }
                continue;
            }
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

    /// A free publish packet id (1..=[`LAST_PUBLISH_ID`]).
    fn next_pkid(&mut self, session: &Session) -> u16 {
        // The window limit leaves ids free, so this finds one; the bound
        // only guards against a logic error.
        for _ in 0..PUBLISH_IDS {
            self.last_pkid = match self.last_pkid {
                LAST_PUBLISH_ID.. => 1,
                id => id + 1,
            };
            let id = self.last_pkid;
            if !session.inflight.contains_key(&id) && !session.abandoned.contains(&id) {
                return id;
            }
        }
        self.last_pkid
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
        out: &mut BytesMut,
        now: Instant,
        timers: &mut Timers,
    ) {
        let pkid = self.next_control_pkid();
        // One filter per SUBSCRIBE (the platform allows at most 8).
        let mut subscribe = Subscribe::new(filter.clone(), QoS::AtLeastOnce);
        subscribe.pkid = pkid;
        encode(&Packet::Subscribe(subscribe), out);
        if let Some(sub) = self.subscriptions.get_mut(&filter) {
            sub.state = SubState::Requested(pkid);
        }
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        self.pending_subacks
            .insert(pkid, PendingSuback { filter, stamp });
        self.push_deadline(pkid, stamp, now, timers);
    }

    fn send_unsubscribe(&mut self, filter: String, out: &mut BytesMut) {
        let mut unsubscribe = Unsubscribe::new(filter);
        unsubscribe.pkid = self.next_control_pkid();
        encode(&Packet::Unsubscribe(unsubscribe), out);
    }

    /// One subscription gave up its slot (its UNSUBSCRIBE, if it needed
    /// one, is already encoded): the longest-waiting one takes it.
    fn release_slot(&mut self, out: &mut BytesMut, now: Instant, timers: &mut Timers) {
        self.active_subscriptions = self.active_subscriptions.saturating_sub(1);
        self.promote_subscriptions(out, now, timers);
    }

    /// Sends the SUBSCRIBE of queued subscriptions while slots are free.
    fn promote_subscriptions(&mut self, out: &mut BytesMut, now: Instant, timers: &mut Timers) {
        while self.active_subscriptions < self.subscription_limit {
            let Some(filter) = self.queued_subscriptions.pop_front() else {
                return;
            };
            self.active_subscriptions += 1;
            self.send_subscribe(filter, out, now, timers);
        }
    }

    fn control(&mut self, command: Control, out: &mut BytesMut, now: Instant, timers: &mut Timers) {
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
        out: &mut BytesMut,
        timers: &mut Timers,
        awaiting_pong: &mut bool,
    ) -> Result<(), Error> {
        match packet {
            // The reader completes publishes by itself; this is for any
            // PUBACK that still comes this way.
            Packet::PubAck(ack) => self.shared.session().acknowledged(ack.pkid),
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
                    QoS::AtLeastOnce => encode(&Packet::PubAck(PubAck::new(publish.pkid)), out),
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

    /// Writes `out` to the broker and flushes it. Deadlines keep running
    /// meanwhile (a publish written earlier still fails on time while the
    /// broker is slow to take this batch), and a broker that takes no
    /// bytes at all for the acknowledgement timeout is a lost connection.
    async fn write_out(
        &mut self,
        writer: &mut WriteHalf<Box<dyn Stream>>,
        out: &mut BytesMut,
        timers: &mut Timers,
    ) -> Result<(), Error> {
        let stall = self.settings.ack_timeout;
        let lost = |e| Error::with_source(ErrorKind::ConnectionLost, e);
        loop {
            let flushing = out.is_empty();
            // Both steps are cancel-safe: a write either took bytes (and
            // `out` advanced past them) or took none.
            let step = async {
                if flushing {
                    writer.flush().await.map(|()| 1)
                } else {
                    writer.write_buf(out).await
                }
            };
            tokio::select! {
                biased;
                written = timeout(stall, step) => match written {
                    Ok(Ok(0)) => {
                        return Err(Error::with_source(
                            ErrorKind::ConnectionLost,
                            "the connection takes no more bytes",
                        ))
                    }
                    Ok(Ok(_)) if flushing => return Ok(()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(lost(e)),
                    Err(_) => {
                        return Err(Error::with_source(
                            ErrorKind::ConnectionLost,
                            "the broker took no bytes within the acknowledgement timeout",
                        ))
                    }
                },
                () = timers.ack.as_mut(), if timers.ack_armed => {
                    self.expire(Instant::now(), out, timers)?;
                }
            }
        }
    }
}

/// The size of the PUBLISH packet for `topic` and `payload` (QoS 1).
fn publish_len(topic: &str, payload: &Bytes) -> usize {
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

fn encode(packet: &Packet, out: &mut BytesMut) {
    // Sizes were checked before the command was queued; encoding into a
    // growable buffer with no size limit cannot fail.
    if let Err(e) = packet.write(out, usize::MAX) {
        tracing::error!(error = %e, "could not encode an MQTT packet");
    }
}

/// Reads what the broker sends. PUBACKs complete their publish here, all
/// of one read under one lock of the session (the driver is woken only
/// if it waits for them); everything else goes to the driver.
async fn read_packets(
    mut reader: ReadHalf<Box<dyn Stream>>,
    mut buf: BytesMut,
    packets: mpsc::UnboundedSender<Result<Packet, Error>>,
    shared: Arc<Shared>,
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
    shared: &Shared,
) -> bool {
    let mut session = None;
    let go_on = loop {
        match Packet::read(buf, MAX_INCOMING_PACKET) {
            Ok(Packet::PubAck(ack)) => session
                .get_or_insert_with(|| shared.session())
                .acknowledged(ack.pkid),
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
        let wake = session.driver_waits();
        drop(session);
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
