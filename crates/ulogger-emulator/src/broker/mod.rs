//! The MQTT 3.1.1 broker: shared state (sessions, subscriptions, retained
//! messages) here; the accept loop in `listener`, one connection's byte
//! stream (framing, buffers, byte rate, stalls) in `connection`, its MQTT
//! session from CONNECT to close in `session`, the platform's rules in
//! `rules` (its per-connection limits are configured in `crate::limits`
//! and enforced in `connection` and `session`).
//!
//! Deliberate simplifications, all invisible to a client that behaves as
//! the platform expects: every session is clean (a `clean_session = false`
//! CONNECT is accepted and treated as clean; CONNACK says no session is
//! present), QoS 1 deliveries are not resent, and a subscriber whose
//! mailbox overflows (it stopped reading) is disconnected.

mod connection;
mod listener;
mod retained;
mod router;
pub(crate) mod rules;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use listener::run_listener;
pub(crate) use listener::Tls;
pub(crate) use router::{topic_matches, valid_filter};

use crate::faults::FaultSwitches;
use crate::limits::{LimitCounters, PlatformLimits};
use crate::records::RecordLog;
use crate::supervise::{Failures, Task};
use retained::Retained;
use router::Subscriptions;

/// Messages a subscriber may have queued before it is disconnected.
const MAILBOX_DEPTH: usize = 4096;
/// Messages the cloud may have queued (it writes to disk, so it may lag
/// behind a burst; it is never disconnected).
pub(crate) const CLOUD_MAILBOX_DEPTH: usize = 65_536;
/// The connection id of the internal cloud subscriber.
pub(crate) const CLOUD_CONN_ID: u64 = 0;

/// Starts `broker` on `listener`: the cloud, reached through its
/// mailbox, subscribed to `filters` (QoS 1), then the accept loop as a
/// task.
pub(crate) fn start(
    broker: &Arc<Broker>,
    listener: tokio::net::TcpListener,
    tls: Tls,
    cloud: &Mailbox,
    filters: &[String],
    failures: &Arc<Failures>,
) -> Task {
    for filter in filters {
        broker.subscribe(cloud.clone(), filter, QoS::AtLeastOnce);
    }
    Box::pin(run_listener(
        listener,
        tls,
        broker.clone(),
        failures.clone(),
    ))
}

/// A message as routed between clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
}

/// A message on its way to one subscriber.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) message: Message,
    /// Set on deliveries to the cloud: fired once the cloud has stored the
    /// message (durably, with a data directory). The publisher's PUBACK
    /// waits for it; dropping it unfired means "not stored".
    pub(crate) stored: Option<oneshot::Sender<()>>,
}

impl Delivery {
    /// Tells the publisher, if it waits, that the message is stored.
    pub(crate) fn stored(self) {
        if let Some(stored) = self.stored {
            let _ = stored.send(());
        }
    }
}

/// How the broker reaches one connection (or the internal cloud).
#[derive(Clone)]
pub(crate) struct Mailbox {
    pub(crate) conn_id: u64,
    tx: mpsc::Sender<Delivery>,
    close: Arc<Notify>,
}

impl Mailbox {
    pub(crate) fn new(conn_id: u64) -> (Mailbox, mpsc::Receiver<Delivery>, Arc<Notify>) {
        Mailbox::with_depth(conn_id, MAILBOX_DEPTH)
    }

    pub(crate) fn with_depth(
        conn_id: u64,
        depth: usize,
    ) -> (Mailbox, mpsc::Receiver<Delivery>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(depth);
        let close = Arc::new(Notify::new());
        (
            Mailbox {
                conn_id,
                tx,
                close: close.clone(),
            },
            rx,
            close,
        )
    }

    fn deliver(&self, delivery: Delivery) {
        if let Err(mpsc::error::TrySendError::Full(delivery)) = self.tx.try_send(delivery) {
            if self.conn_id == CLOUD_CONN_ID {
                // Its `stored` signal is dropped with it, so the publisher
                // gets no PUBACK for it.
                tracing::error!(
                    topic = delivery.message.topic,
                    "cloud backlog full, message dropped"
                );
            } else {
                tracing::warn!(conn = self.conn_id, "subscriber too slow, disconnecting it");
                self.close.notify_one();
            }
        }
    }

    /// Hands a message over, waiting for room (attach mode: the external
    /// broker's flow control applies instead of disconnecting).
    pub(crate) async fn forward(&self, message: Message) -> Result<(), ()> {
        let delivery = Delivery {
            message,
            stored: None,
        };
        self.tx.send(delivery).await.map_err(|_| ())
    }

    /// Asks the connection to close now.
    fn close(&self) {
        self.close.notify_one();
    }
}

/// A client connection accepted or ended by the broker, as
/// [`Emulator::watch_clients`](crate::Emulator::watch_clients) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The broker accepted a CONNECT.
    Connected {
        /// The MQTT client id.
        client_id: String,
        /// Where the connection came from.
        peer: std::net::SocketAddr,
    },
    /// That connection ended (closed by either side, lost, or taken over
    /// by a newer connection with the same client id).
    Disconnected {
        /// The MQTT client id.
        client_id: String,
        /// Where the connection came from.
        peer: std::net::SocketAddr,
    },
}

/// Client events kept for a watcher that falls behind.
const CLIENT_EVENTS: usize = 256;

/// State shared by all connections of one broker.
pub(crate) struct Broker {
    /// Connections accepted and ended, for watchers (none: dropped).
    client_events: broadcast::Sender<ClientEvent>,
    customer_id: u32,
    pub(crate) faults: Arc<FaultSwitches>,
    pub(crate) records: Arc<RecordLog>,
    /// Enforced on client connections only: the internal cloud subscribes
    /// and publishes through the methods below, never through a session.
    pub(crate) limits: PlatformLimits,
    pub(crate) limit_counters: LimitCounters,
    /// `EmulatorConfig::stall_timeout`: for the CONNECT, and for the rest
    /// of a packet begun.
    pub(crate) stall_timeout: Duration,
    sessions: Mutex<HashMap<String, Mailbox>>,
    subscriptions: Mutex<Subscriptions>,
    retained: Mutex<Retained>,
    /// Cloud messages that found no subscriber, kept until a deadline for
    /// the first subscription that matches (see [`Broker::publish_from_cloud`]).
    lingering: Mutex<Vec<(Message, Instant)>>,
    /// Set when the boot guard trips: connections are refused from then on.
    quarantined: AtomicBool,
    next_conn_id: AtomicU64,
}

/// Locks a mutex whose data stays consistent between statements, so that
/// a panic elsewhere (reported separately) does not cascade.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Broker {
    pub(crate) fn new(
        customer_id: u32,
        faults: Arc<FaultSwitches>,
        records: Arc<RecordLog>,
        limits: PlatformLimits,
        stall_timeout: Duration,
    ) -> Broker {
        Broker {
            client_events: broadcast::Sender::new(CLIENT_EVENTS),
            customer_id,
            faults,
            records,
            limits,
            limit_counters: LimitCounters::default(),
            stall_timeout,
            sessions: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(Subscriptions::default()),
            retained: Mutex::new(Retained::default()),
            lingering: Mutex::new(Vec::new()),
            quarantined: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(CLOUD_CONN_ID + 1),
        }
    }

    pub(crate) fn customer_id(&self) -> u32 {
        self.customer_id
    }

    /// Quarantines the customer as the platform does after a
    /// registration storm: every connection is closed now and refused
    /// from now on. Returns how many were closed.
    pub(crate) fn quarantine(&self) -> usize {
        self.quarantined.store(true, Ordering::SeqCst);
        self.disconnect("")
    }

    pub(crate) fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::SeqCst)
    }

    /// Tells the watchers of client connections (if any) of `event`.
    pub(crate) fn client_event(&self, event: ClientEvent) {
        let _ = self.client_events.send(event);
    }

    /// Client connections accepted and ended from now on.
    pub(crate) fn watch_clients(&self) -> broadcast::Receiver<ClientEvent> {
        self.client_events.subscribe()
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connected client; a previous connection with the same
    /// client id is told to close (AWS IoT's take-over rule).
    pub(crate) fn register(&self, client_id: &str, mailbox: Mailbox) {
        if let Some(previous) = lock(&self.sessions).insert(client_id.to_string(), mailbox) {
            tracing::info!(
                client_id,
                "client id taken over, closing the older connection"
            );
            previous.close();
        }
    }

    /// Forgets a connection: its registration (unless a newer connection
    /// took the client id over) and its subscriptions.
    pub(crate) fn unregister(&self, client_id: &str, conn_id: u64) {
        {
            let mut sessions = lock(&self.sessions);
            if sessions.get(client_id).map(|m| m.conn_id) == Some(conn_id) {
                sessions.remove(client_id);
            }
        }
        lock(&self.subscriptions).remove_connection(conn_id);
    }

    /// Subscribes and returns the retained messages the new subscription
    /// must receive.
    pub(crate) fn subscribe(&self, mailbox: Mailbox, filter: &str, qos: QoS) -> Vec<Message> {
        lock(&self.subscriptions).add(mailbox, filter, qos);
        let mut messages = lock(&self.retained).matching(filter);
        let now = Instant::now();
        let mut lingering = lock(&self.lingering);
        lingering.retain(|(message, deadline)| {
            if *deadline <= now {
                return false;
            }
            if topic_matches(filter, &message.topic) {
                messages.push(message.clone());
                return false;
            }
            true
        });
        messages
    }

    pub(crate) fn unsubscribe(&self, conn_id: u64, filter: &str) {
        lock(&self.subscriptions).remove(conn_id, filter);
    }

    /// Routes a message to every matching subscriber and keeps it if it is
    /// retained. Deliveries to established subscriptions carry retain = 0.
    ///
    /// Returns, when the cloud is among the subscribers, a signal that
    /// fires once the cloud has stored the message (and is dropped unfired
    /// if it never will be).
    pub(crate) fn publish(&self, message: Message) -> Option<oneshot::Receiver<()>> {
        if message.retain {
            lock(&self.retained).store(&message);
        }
        self.route(&message, true).1
    }

    /// Routes a message the cloud sends to every matching subscriber but
    /// the cloud itself (which must not take its own replies for
    /// requests). When nobody is subscribed yet and `linger` is set, the
    /// message waits that long for the first matching subscription: a
    /// device may publish its boot request first and subscribe to the
    /// reply topic only after the PUBACK (PROTOCOL §3), and the platform's
    /// reply, coming through a queue, still reaches it.
    pub(crate) fn publish_from_cloud(&self, message: Message, linger: Option<Duration>) {
        let (delivered, _) = self.route(&message, false);
        if let Some(linger) = linger.filter(|_| delivered == 0) {
            let now = Instant::now();
            let mut lingering = lock(&self.lingering);
            lingering.retain(|(m, deadline)| *deadline > now && m.topic != message.topic);
            lingering.push((message, now + linger));
        }
    }

    /// Hands `message` to every matching subscriber, the cloud only when
    /// `to_cloud`. Returns how many got it and, when the cloud did, the
    /// signal that fires once it stored the message.
    fn route(&self, message: &Message, to_cloud: bool) -> (usize, Option<oneshot::Receiver<()>>) {
        let deliveries = lock(&self.subscriptions).deliveries(message);
        let mut delivered = 0;
        let mut stored_signal = None;
        for (mailbox, qos) in deliveries {
            let is_cloud = mailbox.conn_id == CLOUD_CONN_ID;
            if is_cloud && !to_cloud {
                continue;
            }
            let stored = is_cloud.then(|| {
                let (tx, rx) = oneshot::channel();
                stored_signal = Some(rx);
                tx
            });
            delivered += 1;
            mailbox.deliver(Delivery {
                message: Message {
                    qos,
                    retain: false,
                    ..message.clone()
                },
                stored,
            });
        }
        (delivered, stored_signal)
    }

    /// Closes the connections whose client id starts with `prefix` (all of
    /// them for ""); returns how many.
    pub(crate) fn disconnect(&self, prefix: &str) -> usize {
        let sessions = lock(&self.sessions);
        let mut count = 0;
        for (_, mailbox) in sessions.iter().filter(|(id, _)| id.starts_with(prefix)) {
            mailbox.close();
            count += 1;
        }
        count
    }

    /// Client ids of the connected clients, sorted.
    pub(crate) fn clients(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.sessions).keys().cloned().collect();
        ids.sort();
        ids
    }
}
