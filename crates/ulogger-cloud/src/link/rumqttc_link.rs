//! An [`MqttLink`] over a rumqttc `AsyncClient` and `EventLoop` that the
//! application keeps.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Outgoing, Packet, QoS,
    Request, SubscribeReasonCode,
};
use tokio::sync::oneshot;

use super::{IncomingMessage, LinkFuture, LinkInbox, MqttLink};
use crate::error::{Error, ErrorKind};

/// A bridged link over a rumqttc (0.25) connection the application keeps.
///
/// rumqttc completes `AsyncClient::publish` when the request is queued and
/// reports acknowledgements only as events with packet ids, so this adapter
/// needs to see every event: poll the event loop through
/// [`RumqttcLink::poll`] instead of `EventLoop::poll` (it returns every
/// event, for the application's own use). It ties each PUBACK and SUBACK to
/// the request that caused it by the order in which rumqttc writes
/// requests (`Outgoing::Publish(pkid)`, `Outgoing::Subscribe(pkid)` events
/// come in the order requests were queued), and recognises publishes
/// rumqttc re-sends after a reconnect by their packet id.
///
/// ```no_run
/// use ulogger_cloud::{Client, MqttConfig, RumqttcLink};
///
/// # async fn run() -> Result<(), ulogger_cloud::Error> {
/// let options = rumqttc::MqttOptions::new("cust-42-my-app", "localhost", 1883);
/// let (mqtt, mut events) = rumqttc::AsyncClient::new(options, 64);
/// let link = RumqttcLink::new(mqtt);
/// let feed = link.clone();
/// tokio::spawn(async move {
///     loop {
///         match feed.poll(&mut events).await {
///             Ok(event) => { /* the application's own use of it */ let _ = event; }
///             Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
///         }
///     }
/// });
/// let client = Client::builder(MqttConfig::new(42).topic_prefix("ulogger/"))
///     .link(link)
///     .build()?;
/// # let _ = client; Ok(()) }
/// ```
///
/// # What it cannot guarantee
///
/// - **Publish and subscribe through the link only.** rumqttc's events do
///   not name the topic, so a QoS 1 or 2 publish, a subscribe or an
///   unsubscribe the application makes directly on the same `AsyncClient`
///   would be taken for the client's next one, and acknowledgements
///   would be matched to the wrong requests. Make them with
///   [`MqttLink::publish`], [`MqttLink::subscribe`] and
///   [`MqttLink::unsubscribe`] on this link (they complete on the broker's
///   acknowledgement too); QoS 0 publishes are fine either way.
/// - **Clean sessions lose what was in flight.** When the connection drops,
///   rumqttc keeps unacknowledged publishes and queued requests, re-sends
///   them if the broker resumes the session (`session_present`), and drops
///   them if it does not (the default `clean_session = true`). Dropped ones
///   fail with [`ErrorKind::ConnectionLost`] when the new CONNACK arrives,
///   and the client retries uploads where its rules say so (the outbox
///   re-sends); one the broker had received before the drop then arrives
///   twice (at least once, as MQTT promises). Subscribes written but not
///   acknowledged before a drop are never re-sent by rumqttc: they fail at
///   once. After a lost session the client subscribes again by itself.
/// - **Packet ids.** rumqttc reuses a packet id only once its publish was
///   acknowledged, so a late PUBACK cannot complete another publish. A
///   publish whose caller gave up stays matched to its id until its PUBACK
///   or the end of its session.
/// - **Manual acks.** With `MqttOptions::set_manual_acks(true)` the
///   application must acknowledge incoming publishes itself, the client's
///   replies and configurations included.
/// - **Requests are identified by their payload's buffer** when the
///   connection drops (to tell what rumqttc set aside from what it still
///   queues): the client never publishes an empty payload, and neither
///   should the application through the link.
#[derive(Clone)]
pub struct RumqttcLink {
    inner: Arc<Inner>,
}

struct Inner {
    client: AsyncClient,
    inbox: OnceLock<LinkInbox>,
    state: Mutex<Matcher>,
    /// Held while a request is queued and sent, so that requests enter
    /// rumqttc's channel in the order of our queues.
    order: tokio::sync::Mutex<()>,
}

type Done = oneshot::Sender<Result<(), Error>>;

/// A request handed to rumqttc, waiting for its acknowledgement.
struct Pending {
    id: u64,
    /// What identifies it in the event loop's pending queue: the topic (or
    /// filter) and, for a publish, its payload's buffer.
    topic: String,
    payload: Option<Bytes>,
    /// rumqttc set it aside when the connection dropped: it survives only
    /// if the broker resumes the session.
    set_aside: bool,
    done: Option<Done>,
}

impl Pending {
    fn finish(mut self, result: Result<(), Error>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
    }

    fn is(&self, request: &Request) -> bool {
        match (request, &self.payload) {
            (Request::Publish(p), Some(payload)) => {
                p.topic == self.topic
                    && p.payload.len() == payload.len()
                    && p.payload.as_ptr() == payload.as_ptr()
            }
            (Request::Subscribe(s), None) => s.filters.iter().any(|f| f.path == self.topic),
            (Request::Unsubscribe(u), None) => u.topics.contains(&self.topic),
            _ => false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Publish,
    Subscribe,
    Unsubscribe,
}

/// Requests of one kind: queued (no packet id yet, in order) and written.
#[derive(Default)]
struct Track {
    queued: VecDeque<Pending>,
    written: HashMap<u16, Pending>,
}

#[derive(Default)]
struct Matcher {
    next_id: u64,
    connected: bool,
    publishes: Track,
    subscribes: Track,
    unsubscribes: Track,
}

impl Matcher {
    fn track(&mut self, kind: Kind) -> &mut Track {
        match kind {
            Kind::Publish => &mut self.publishes,
            Kind::Subscribe => &mut self.subscribes,
            Kind::Unsubscribe => &mut self.unsubscribes,
        }
    }

    /// rumqttc wrote a request of `kind` with packet id `pkid`.
    fn written(&mut self, kind: Kind, pkid: u16) {
        let track = self.track(kind);
        if pkid == 0 || track.written.contains_key(&pkid) {
            // QoS 0, or a publish re-sent after a resumed session.
            return;
        }
        match track.queued.pop_front() {
            Some(pending) => {
                track.written.insert(pkid, pending);
            }
            None => tracing::debug!(
                pkid,
                "a request the client did not make (the application's own) was written"
            ),
        }
    }

    fn acknowledged(&mut self, kind: Kind, pkid: u16, result: Result<(), Error>) {
        if let Some(pending) = self.track(kind).written.remove(&pkid) {
            pending.finish(result);
        }
    }

    /// The connection dropped; `set_aside` is what rumqttc keeps for a
    /// resumed session.
    fn dropped(&mut self, set_aside: &VecDeque<Request>) {
        self.connected = false;
        for kind in [Kind::Publish, Kind::Subscribe, Kind::Unsubscribe] {
            let track = self.track(kind);
            if kind != Kind::Publish {
                // rumqttc never re-sends a (un)subscribe it wrote.
                for (_, pending) in track.written.drain() {
                    pending.finish(Err(ErrorKind::ConnectionLost.into()));
                }
            }
            for pending in track.written.values_mut() {
                pending.set_aside = true;
            }
            // Match each queued request to one set-aside request, in order.
            let mut used = vec![false; set_aside.len()];
            for pending in &mut track.queued {
                let found = set_aside
                    .iter()
                    .enumerate()
                    .find(|(i, r)| !used[*i] && pending.is(r));
                if let Some((i, _)) = found {
                    used[i] = true;
                    pending.set_aside = true;
                }
            }
        }
    }

    /// A CONNACK: without a session, rumqttc dropped what it set aside.
    fn connected(&mut self, session_present: bool) {
        self.connected = true;
        if session_present {
            for kind in [Kind::Publish, Kind::Subscribe, Kind::Unsubscribe] {
                let track = self.track(kind);
                track.queued.iter_mut().for_each(|p| p.set_aside = false);
                track.written.values_mut().for_each(|p| p.set_aside = false);
            }
            return;
        }
        for kind in [Kind::Publish, Kind::Subscribe, Kind::Unsubscribe] {
            let track = self.track(kind);
            for (_, pending) in track.written.drain() {
                pending.finish(Err(lost_session()));
            }
            let (lost, kept): (VecDeque<_>, VecDeque<_>) =
                track.queued.drain(..).partition(|p| p.set_aside);
            track.queued = kept;
            for pending in lost {
                pending.finish(Err(lost_session()));
            }
        }
    }
}

fn lost_session() -> Error {
    Error::from_link(
        ErrorKind::ConnectionLost,
        "the connection dropped and the broker did not resume the session, so rumqttc discarded the request",
    )
}

impl RumqttcLink {
    /// A link over `client`. Poll its event loop with [`RumqttcLink::poll`]
    /// from then on.
    pub fn new(client: AsyncClient) -> RumqttcLink {
        RumqttcLink {
            inner: Arc::new(Inner {
                client,
                inbox: OnceLock::new(),
                state: Mutex::new(Matcher::default()),
                order: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Polls `eventloop` (the one of the `AsyncClient` this link was made
    /// with) and returns what it returned, after taking note of it:
    /// acknowledgements complete the client's requests, messages go to
    /// the client, connection changes are reported. Call it in a loop in
    /// place of `EventLoop::poll`, as its documentation asks.
    pub async fn poll(&self, eventloop: &mut EventLoop) -> Result<Event, ConnectionError> {
        let result = eventloop.poll().await;
        self.observe(&result, &eventloop.pending);
        result
    }

    fn matcher(&self) -> MutexGuard<'_, Matcher> {
        self.inner.matcher()
    }

    fn observe(&self, result: &Result<Event, ConnectionError>, set_aside: &VecDeque<Request>) {
        let inbox = self.inner.inbox.get();
        let event = match result {
            Ok(event) => event,
            Err(error) => {
                self.matcher().dropped(set_aside);
                if let Some(inbox) = inbox {
                    inbox.disconnected(error);
                }
                return;
            }
        };
        match event {
            Event::Incoming(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                self.matcher().connected(ack.session_present);
                if let Some(inbox) = inbox {
                    inbox.connected(ack.session_present);
                }
            }
            Event::Incoming(Packet::Publish(publish)) => {
                if let Some(inbox) = inbox {
                    inbox.deliver(
                        IncomingMessage::new(publish.topic.clone(), publish.payload.clone())
                            .retain(publish.retain)
                            .dup(publish.dup),
                    );
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                self.matcher().acknowledged(Kind::Publish, ack.pkid, Ok(()));
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                let mut matcher = self.matcher();
                let topic = matcher
                    .subscribes
                    .written
                    .get(&ack.pkid)
                    .map(|p| p.topic.clone())
                    .unwrap_or_default();
                let refused = ack.return_codes.is_empty()
                    || ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure));
                let result = if refused {
                    Err(ErrorKind::SubscribeRefused { topic }.into())
                } else {
                    Ok(())
                };
                matcher.acknowledged(Kind::Subscribe, ack.pkid, result);
            }
            Event::Incoming(Packet::UnsubAck(ack)) => {
                self.matcher()
                    .acknowledged(Kind::Unsubscribe, ack.pkid, Ok(()));
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                self.matcher().written(Kind::Publish, *pkid)
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) => {
                self.matcher().written(Kind::Subscribe, *pkid);
            }
            Event::Outgoing(Outgoing::Unsubscribe(pkid)) => {
                self.matcher().written(Kind::Unsubscribe, *pkid);
            }
            _ => {}
        }
    }

    /// Hands a request of `kind` to rumqttc and waits for its
    /// acknowledgement.
    ///
    /// Queueing and handing over run in a task of their own: a caller that
    /// gives up half-way must not leave a queued entry whose request never
    /// reached rumqttc (or reached it unrecorded), which would shift every
    /// match after it.
    async fn request(
        &self,
        kind: Kind,
        topic: String,
        payload: Option<Bytes>,
    ) -> Result<(), Error> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| Error::from(ErrorKind::NoRuntime))?;
        let (done, rx) = oneshot::channel();
        let inner = self.inner.clone();
        runtime.spawn(async move { inner.hand_over(kind, topic, payload, done).await });
        rx.await
            .unwrap_or_else(|_| Err(ErrorKind::ConnectionLost.into()))
    }
}

impl Inner {
    fn matcher(&self) -> MutexGuard<'_, Matcher> {
        // Each critical section leaves the maps consistent before it can
        // panic (no user code runs under the lock).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues the request and sends it to rumqttc's channel, in the same
    /// order as every other request of ours.
    async fn hand_over(&self, kind: Kind, topic: String, payload: Option<Bytes>, done: Done) {
        let _order = self.order.lock().await;
        let id = {
            let mut matcher = self.matcher();
            matcher.next_id += 1;
            let id = matcher.next_id;
            matcher.track(kind).queued.push_back(Pending {
                id,
                topic: topic.clone(),
                payload: payload.clone(),
                set_aside: false,
                done: Some(done),
            });
            id
        };
        let sent = match kind {
            Kind::Publish => {
                let payload = payload.unwrap_or_default();
                self.client
                    .publish_bytes(topic, QoS::AtLeastOnce, false, payload)
                    .await
            }
            Kind::Subscribe => self.client.subscribe(topic, QoS::AtLeastOnce).await,
            Kind::Unsubscribe => self.client.unsubscribe(topic).await,
        };
        if let Err(error) = sent {
            let mut matcher = self.matcher();
            let queued = &mut matcher.track(kind).queued;
            if let Some(at) = queued.iter().position(|p| p.id == id) {
                if let Some(pending) = queued.remove(at) {
                    pending.finish(Err(Error::from_link(
                        ErrorKind::Shutdown,
                        format!("rumqttc did not take the request (its event loop is gone, or it found the topic invalid): {error}"),
                    )));
                }
            }
        }
    }
}

impl MqttLink for RumqttcLink {
    fn attach(&self, inbox: LinkInbox) {
        if self.inner.inbox.set(inbox.clone()).is_ok() && self.matcher().connected {
            inbox.connected(true);
        }
    }

    fn publish(&self, topic: String, payload: Bytes) -> LinkFuture<'_> {
        Box::pin(self.request(Kind::Publish, topic, Some(payload)))
    }

    fn subscribe(&self, filter: String) -> LinkFuture<'_> {
        Box::pin(self.request(Kind::Subscribe, filter, None))
    }

    fn unsubscribe(&self, filter: String) -> LinkFuture<'_> {
        Box::pin(self.request(Kind::Unsubscribe, filter, None))
    }
}

impl std::fmt::Debug for RumqttcLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RumqttcLink")
            .field("connected", &self.matcher().connected)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rumqttc::Publish;

    fn queue(
        matcher: &mut Matcher,
        topic: &str,
        payload: &Bytes,
    ) -> oneshot::Receiver<Result<(), Error>> {
        let (done, rx) = oneshot::channel();
        matcher.next_id += 1;
        let id = matcher.next_id;
        matcher.publishes.queued.push_back(Pending {
            id,
            topic: topic.to_owned(),
            payload: Some(payload.clone()),
            set_aside: false,
            done: Some(done),
        });
        rx
    }

    fn request(topic: &str, payload: &Bytes, pkid: u16) -> Request {
        let mut publish = Publish::from_bytes(topic, QoS::AtLeastOnce, payload.clone());
        publish.pkid = pkid;
        Request::Publish(publish)
    }

    #[test]
    fn a_resumed_session_keeps_matching_replays_and_set_aside_requests() {
        let mut m = Matcher::default();
        m.connected(false);
        let (a, b, c) = (
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c"),
        );
        let mut ra = queue(&mut m, "t", &a);
        let mut rb = queue(&mut m, "t", &b);
        let mut rc = queue(&mut m, "t", &c);
        m.written(Kind::Publish, 1); // a
                                     // The connection drops: rumqttc sets aside `a` (written) and `b`
                                     // (drained from its channel); `c` is still in the channel.
        m.dropped(&VecDeque::from([request("t", &a, 1), request("t", &b, 0)]));
        m.connected(true);
        m.written(Kind::Publish, 1); // `a` re-sent with its id: a replay
        m.written(Kind::Publish, 2); // `b`
        m.written(Kind::Publish, 3); // `c`
        m.acknowledged(Kind::Publish, 3, Ok(()));
        assert!(rc.try_recv().unwrap().is_ok());
        assert!(ra.try_recv().is_err() && rb.try_recv().is_err());
        m.acknowledged(Kind::Publish, 1, Ok(()));
        m.acknowledged(Kind::Publish, 2, Ok(()));
        assert!(ra.try_recv().unwrap().is_ok());
        assert!(rb.try_recv().unwrap().is_ok());
    }

    #[test]
    fn a_lost_session_fails_what_was_set_aside_and_keeps_what_is_still_queued() {
        let mut m = Matcher::default();
        m.connected(false);
        let (a, b, c) = (
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c"),
        );
        let mut ra = queue(&mut m, "t", &a);
        let mut rb = queue(&mut m, "t", &b);
        let mut rc = queue(&mut m, "t", &c);
        m.written(Kind::Publish, 1);
        m.dropped(&VecDeque::from([request("t", &a, 1), request("t", &b, 0)]));
        m.connected(false);
        let lost =
            |r: Result<(), Error>| matches!(r.unwrap_err().kind(), ErrorKind::ConnectionLost);
        assert!(lost(ra.try_recv().unwrap()));
        assert!(lost(rb.try_recv().unwrap()));
        // `c` left the channel after the reconnect and gets id 1 again.
        m.written(Kind::Publish, 1);
        m.acknowledged(Kind::Publish, 1, Ok(()));
        assert!(rc.try_recv().unwrap().is_ok());
    }

    #[test]
    fn requests_of_the_application_and_unknown_acks_are_ignored() {
        let mut m = Matcher::default();
        m.written(Kind::Publish, 0); // QoS 0
        m.written(Kind::Publish, 7); // nothing of ours queued
        m.acknowledged(Kind::Publish, 7, Ok(()));
        m.acknowledged(Kind::Subscribe, 9, Ok(()));
        assert!(m.publishes.written.is_empty() && m.publishes.queued.is_empty());
    }
}
