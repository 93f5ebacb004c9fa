//! The client's connections: usually one, or several with distinct client
//! ids sharing the load ([`MqttConfig::connections`](crate::MqttConfig::connections)),
//! each our own MQTT session or a link the application handed in (bridge
//! mode, [`ClientBuilder::link`](crate::ClientBuilder::link)).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::config::Settings;
use crate::error::Error;
use crate::link::{Bridge, MqttLink};
use crate::transport::{self, Message, Transport};

use super::turns::Turn;

/// Which of `n` connections `key` gets. FNV-1a: stable across processes
/// and Rust versions, unlike the standard library's randomly keyed hasher.
fn slot_for(key: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // The remainder is below `n`, a usize.
    #[allow(clippy::cast_possible_truncation)]
    let slot = (hash % n as u64) as usize;
    slot
}

/// One connection of the client. Our own session is called directly, so
/// its hot path has no boxing and no dynamic dispatch; only a bridged link
/// goes through the [`MqttLink`] trait object.
#[derive(Clone)]
pub(crate) enum Connection {
    Own(Transport),
    Bridged(Arc<Bridge>),
}

/// Receives the messages delivered on one topic while it lives.
pub(crate) enum Receiver {
    Own(transport::TopicReceiver),
    Bridged(crate::link::BridgeReceiver),
}

impl Receiver {
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match self {
            Receiver::Own(listener) => listener.poll_recv(cx),
            Receiver::Bridged(rx) => rx.poll_recv(cx),
        }
    }
}

impl Connection {
    pub fn settings(&self) -> &Settings {
        match self {
            Connection::Own(t) => t.settings(),
            Connection::Bridged(b) => b.settings(),
        }
    }

    /// Publishes at QoS 1 and returns once the broker acknowledged it.
    pub async fn publish(&self, topic: String, payload: Bytes) -> Result<(), Error> {
        match self {
            Connection::Own(t) => t.publish(topic, payload).await,
            Connection::Bridged(b) => b.publish(topic, payload).await,
        }
    }

    /// Publishes at QoS 1 in `turn`: after the publishes of the device's
    /// earlier turns were handed to a connection, and passing the turn on
    /// as soon as this one is (on our own session, before its PUBACK; on
    /// a bridged link, whose hand-over is not visible, after it).
    pub async fn publish_in_turn(
        &self,
        topic: String,
        payload: Bytes,
        mut turn: Turn,
    ) -> Result<(), Error> {
        turn.wait().await;
        match self {
            Connection::Own(t) => {
                let acknowledged = t.start_publish(topic, payload);
                turn.pass();
                acknowledged?.await
            }
            Connection::Bridged(b) => b.publish(topic, payload).await,
        }
    }

    /// Subscribes at QoS 1 and returns once the broker granted it; the
    /// subscription outlives reconnects until every subscriber gave it up.
    pub async fn subscribe(&self, filter: String) -> Result<(), Error> {
        match self {
            Connection::Own(t) => t.subscribe(filter).await,
            Connection::Bridged(b) => b.subscribe(filter).await,
        }
    }

    /// Gives up one subscription to `filter` (without waiting).
    pub fn unsubscribe(&self, filter: String) {
        match self {
            Connection::Own(t) => t.unsubscribe(filter),
            Connection::Bridged(b) => b.unsubscribe(filter),
        }
    }

    /// Starts receiving what arrives on `topic`. Listen before subscribing
    /// so that nothing is missed.
    pub fn listen(&self, topic: &str) -> Receiver {
        match self {
            Connection::Own(t) => Receiver::Own(t.listen(topic)),
            Connection::Bridged(b) => Receiver::Bridged(b.listen(topic)),
        }
    }

    /// Waits until connected (see [`Transport::connected`]).
    pub async fn connected(&self) -> Result<(), Error> {
        match self {
            Connection::Own(t) => t.connected().await,
            Connection::Bridged(b) => b.connected().await,
        }
    }

    pub fn is_connected(&self) -> bool {
        match self {
            Connection::Own(t) => t.is_connected(),
            Connection::Bridged(b) => b.is_connected(),
        }
    }

    /// Waits until the link changes to connected or closed.
    pub async fn wait_connected(&self) {
        match self {
            Connection::Own(t) => t.wait_connected().await,
            Connection::Bridged(b) => b.wait_connected().await,
        }
    }

    /// Every change of the link from now on, where the link is ours
    /// (a bridged link's failures are its owner's to report).
    pub fn link_events(
        &self,
    ) -> Option<tokio::sync::watch::Receiver<crate::transport::Connectivity>> {
        match self {
            Connection::Own(t) => Some(t.link_events()),
            Connection::Bridged(_) => None,
        }
    }

    /// Every change of the connection from now on, ours or a bridged
    /// link's (for [`ConnectionChanges`](super::ConnectionChanges)).
    pub fn states(&self) -> super::connection::States {
        match self {
            Connection::Own(t) => super::connection::States::Own(t.link_events()),
            Connection::Bridged(b) => super::connection::States::Bridged(b.states()),
        }
    }

    pub fn begin_shutdown(&self) {
        match self {
            Connection::Own(t) => t.begin_shutdown(),
            Connection::Bridged(b) => b.begin_shutdown(),
        }
    }

    pub async fn shutdown(&self) {
        match self {
            Connection::Own(t) => t.shutdown().await,
            Connection::Bridged(b) => b.shutdown().await,
        }
    }
}

pub(crate) struct Pool {
    links: Vec<Connection>,
    next: AtomicUsize,
}

impl Pool {
    /// Starts every connection (at least one setting is given).
    pub fn start(settings: Vec<Settings>) -> Result<Pool, Error> {
        let links = settings
            .into_iter()
            .map(|s| Transport::start(s).map(Connection::Own))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool::new(links))
    }

    /// Works on the application's links (at least one), all with
    /// `settings`.
    pub fn bridged(settings: &Settings, links: Vec<Arc<dyn MqttLink>>) -> Result<Pool, Error> {
        let links = links
            .into_iter()
            .map(|link| Bridge::start(settings.clone(), link).map(Connection::Bridged))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool::new(links))
    }

    fn new(links: Vec<Connection>) -> Pool {
        Pool {
            links,
            next: AtomicUsize::new(0),
        }
    }

    pub fn all(&self) -> &[Connection] {
        &self.links
    }

    /// The first connection (its settings are every connection's but the
    /// client id).
    pub fn first(&self) -> &Connection {
        &self.links[0]
    }

    /// The next connection in turn, preferring connected ones.
    pub fn pick(&self) -> &Connection {
        let n = self.links.len();
        if n == 1 {
            return &self.links[0];
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.links[(start + i) % n])
            .find(|t| t.is_connected())
            .unwrap_or(&self.links[start % n])
    }

    /// The connection `key` (a device serial) always gets: a hash of the
    /// key, so the choice needs no state and survives restarts.
    pub fn pick_for(&self, key: &str) -> &Connection {
        &self.links[slot_for(key, self.links.len())]
    }

    pub fn any_connected(&self) -> bool {
        self.links.iter().any(Connection::is_connected)
    }

    /// Waits until every connection is up (see [`Transport::connected`]).
    pub async fn connected(&self) -> Result<(), Error> {
        for link in &self.links {
            link.connected().await?;
        }
        Ok(())
    }

    pub async fn shutdown(&self) {
        for link in &self.links {
            link.begin_shutdown();
        }
        for link in &self.links {
            link.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::slot_for;

    #[test]
    fn a_device_always_gets_the_same_connection_and_devices_spread() {
        assert_eq!(slot_for("SN-1", 1), 0);
        for n in [2, 3, 8, 32] {
            let mut used = vec![0; n];
            for i in 0..1000 {
                let serial = format!("SN-{i:04}");
                let slot = slot_for(&serial, n);
                assert_eq!(slot, slot_for(&serial, n), "stable");
                used[slot] += 1;
            }
            // Every connection gets a fair share (within a factor of two).
            assert!(used.iter().all(|&c| c * n * 2 > 1000), "{n}: {used:?}");
        }
        // Fixed values: the choice must not change between releases, or a
        // restarted gateway would move devices between connections.
        assert_eq!(slot_for("SN-0001", 4), slot_for("SN-0001", 4));
        assert_eq!(slot_for("", 7), (0xcbf2_9ce4_8422_2325_u64 % 7) as usize);
    }
}
