//! Bridge mode: the client on an MQTT connection the application holds.
//!
//! An application that already has a broker connection (or talks to a local
//! broker that bridges a topic prefix to the cloud, PROTOCOL §2 `P`) hands
//! it to the client as an [`MqttLink`] with
//! [`ClientBuilder::link`](crate::ClientBuilder::link) and gets
//! registration, uploads, core dumps, telemetry, log configurations and the
//! outbox's delivery on top of it.
//!
//! The link's contract is small: publish at QoS 1 and complete on *that*
//! publish's PUBACK, subscribe at QoS 1 and complete on the SUBACK,
//! unsubscribe, and tell the client through the [`LinkInbox`] it is given
//! what arrives and when the connection comes and goes. The client keeps
//! the rest: pacing to the platform's limits ([`Pacing`](crate::Pacing),
//! applied to a bridged link too, since the cloud's limits still apply to
//! the connection that reaches it), the inflight window
//! ([`MqttConfig::max_inflight`](crate::MqttConfig::max_inflight)), the
//! subscription slots, timeouts, routing replies and configurations to
//! whoever waits for them, and restoring its subscriptions when the link
//! reports that the broker lost the session.
//!
//! [`RumqttcLink`] is a ready adapter for a rumqttc `AsyncClient` and
//! `EventLoop` the application keeps.
//!
//! ```no_run
//! use ulogger_cloud::{Client, MqttConfig, RumqttcLink, wire::DeviceInfo};
//!
//! # async fn run() -> Result<(), ulogger_cloud::Error> {
//! // The application's own connection, to a local broker that bridges
//! // `ulogger/#` to the cloud.
//! let options = rumqttc::MqttOptions::new("cust-42-my-app", "localhost", 1883);
//! let (mqtt, mut events) = rumqttc::AsyncClient::new(options, 64);
//! let link = RumqttcLink::new(mqtt);
//! let feed = link.clone();
//! tokio::spawn(async move {
//!     loop {
//!         // In place of `events.poll()`: the link sees every event first.
//!         match feed.poll(&mut events).await {
//!             Ok(event) => { /* the application's own handling */ let _ = event; }
//!             Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
//!         }
//!     }
//! });
//!
//! // Topics, timeouts and pacing come from the configuration; its
//! // connection settings (broker, port, TLS files) are not used.
//! let config = MqttConfig::new(42).topic_prefix("ulogger/");
//! let client = Client::builder(config).link(link).build()?;
//! let device = DeviceInfo::new(7, "SN-0001", "sensor-board", "v1.2.0", "abcdef0");
//! let token = client.session_token(&device).await?;
//! # let _ = token; Ok(()) }
//! ```

mod bridge;
// Only the tests use it (see its documentation).
#[cfg(test)]
mod own;
mod rumqttc_link;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{MqttConfig, Security, Settings};
use crate::error::Error;

pub(crate) use bridge::{Bridge, BridgeReceiver, State as BridgeState};
pub use rumqttc_link::RumqttcLink;

/// What a link operation returns: a boxed future, so that [`MqttLink`]
/// stays dyn-compatible without an `async-trait` dependency.
pub type LinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// An MQTT connection the application holds, for the client to work on
/// (bridge mode, see [`ClientBuilder::link`](crate::ClientBuilder::link)).
///
/// Implementations forward to their MQTT client; the client calls them
/// from its tasks, concurrently, and wraps each call in its own timeouts
/// (a future that never completes is cut off after
/// [`MqttConfig::ack_timeout`](crate::MqttConfig::ack_timeout)).
///
/// # Errors
///
/// Fail an operation with an [`Error`] made from the matching
/// [`ErrorKind`](crate::ErrorKind) (it converts with `into()`, or
/// [`Error::from_link`] to keep your client's error as the source):
/// [`ConnectionLost`](crate::ErrorKind::ConnectionLost) when the connection
/// dropped and the operation will not be completed (the client retries
/// where its rules say so), [`SubscribeRefused`](crate::ErrorKind::SubscribeRefused)
/// for a SUBACK failure code, [`Shutdown`](crate::ErrorKind::Shutdown)
/// when the link is gone for good.
pub trait MqttLink: Send + Sync + 'static {
    /// Called once, when the client is built: the link hands every message
    /// the broker delivers, and every change of its connection, to
    /// `inbox`. A link that is already connected reports it at once
    /// ([`LinkInbox::connected`]); until it does, operations wait (for at
    /// most [`MqttConfig::connect_timeout`](crate::MqttConfig::connect_timeout)).
    fn attach(&self, inbox: LinkInbox);

    /// Publishes `payload` to `topic` at QoS 1, not retained, and completes
    /// once the broker acknowledged that very publish (its PUBACK).
    fn publish(&self, topic: String, payload: Bytes) -> LinkFuture<'_>;

    /// Subscribes to `filter` (an exact topic name) at QoS 1 and completes
    /// on the broker's SUBACK: `Ok` for a granted QoS, an error for a
    /// failure code ([`ErrorKind::SubscribeRefused`](crate::ErrorKind::SubscribeRefused)).
    fn subscribe(&self, filter: String) -> LinkFuture<'_>;

    /// Gives up the subscription to `filter`; completes on the UNSUBACK (or
    /// when the request is written, if the link cannot tell).
    fn unsubscribe(&self, filter: String) -> LinkFuture<'_>;
}

impl<L: MqttLink + ?Sized> MqttLink for Arc<L> {
    fn attach(&self, inbox: LinkInbox) {
        (**self).attach(inbox);
    }

    fn publish(&self, topic: String, payload: Bytes) -> LinkFuture<'_> {
        (**self).publish(topic, payload)
    }

    fn subscribe(&self, filter: String) -> LinkFuture<'_> {
        (**self).subscribe(filter)
    }

    fn unsubscribe(&self, filter: String) -> LinkFuture<'_> {
        (**self).unsubscribe(filter)
    }
}

/// A message the broker delivered on a link, for [`LinkInbox::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IncomingMessage {
    /// The topic it was published to.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// The broker replayed a retained message on subscription (the
    /// RETAIN flag of an incoming PUBLISH).
    pub retain: bool,
    /// The broker re-sent a QoS 1 message it sent before (the DUP flag).
    pub dup: bool,
}

impl IncomingMessage {
    /// A message on `topic`, neither retained nor a re-delivery.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        IncomingMessage {
            topic: topic.into(),
            payload: payload.into(),
            retain: false,
            dup: false,
        }
    }

    /// Sets the RETAIN flag as the broker sent it.
    #[must_use]
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Sets the DUP flag as the broker sent it.
    #[must_use]
    pub fn dup(mut self, dup: bool) -> Self {
        self.dup = dup;
        self
    }
}

/// Where a link reports to the client ([`MqttLink::attach`]): incoming
/// messages and the state of its connection. Cheap to clone; after the
/// client shut down, reports are ignored.
#[derive(Clone)]
pub struct LinkInbox {
    shared: Arc<bridge::BridgeHub>,
}

impl LinkInbox {
    /// A message the broker delivered. Messages on topics nobody in the
    /// client waits for (the application's own) are ignored.
    pub fn deliver(&self, message: IncomingMessage) {
        self.shared.deliver(message);
    }

    /// The connection is up (a CONNACK was accepted). `session_present` is
    /// the CONNACK's flag: `false` means the broker holds none of the
    /// client's subscriptions, and the client subscribes to them again.
    pub fn connected(&self, session_present: bool) {
        self.shared.connected(session_present);
    }

    /// The connection is down; `reason` says why (it is reported to
    /// callers whose wait for the connection times out).
    pub fn disconnected(&self, reason: impl std::fmt::Display) {
        self.shared.disconnected(reason.to_string());
    }

    /// True once the client shut down: reports are no longer needed.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

impl std::fmt::Debug for LinkInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkInbox")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// The settings of a bridged client: everything [`MqttConfig`] checks but
/// its connection (the link's owner made that), so no TLS files are read.
pub(crate) fn bridged_settings(config: &MqttConfig) -> Result<Settings, Error> {
    if config.connections != 1 {
        return Err(Error::config(
            "connections",
            "applies to the client's own connections; in bridge mode hand in one link per connection (ClientBuilder::link) and leave it at 1",
        ));
    }
    let mut checked = config.clone();
    checked.security = Security::Tls;
    checked.cert_file = None;
    checked.key_file = None;
    checked.ca_file = None;
    if checked.broker.is_empty() {
        crate::DEFAULT_BROKER.clone_into(&mut checked.broker);
    }
    if checked.port == 0 {
        checked.port = crate::DEFAULT_PORT;
    }
    let mut settings = checked.validate()?;
    settings.tls = None;
    Ok(settings)
}
