//! One long-lived MQTT connection shared by every operation of a client.
//!
//! rumqttc's `EventLoop` completes a publish when it is queued, and drops
//! queued publishes when a clean session reconnects, so it cannot tell a
//! caller that *its* publish reached the broker. This module keeps rumqttc's
//! packet codec (`mqttbytes`) but owns the session: it assigns packet ids,
//! completes each publish on its own PUBACK, pipelines up to `max_inflight`
//! publishes, paces publishes to the broker's rate limits (`pacing`),
//! holds at most `max_subscriptions` subscriptions, re-sends what was not
//! acknowledged after a reconnect (with the DUP flag), restores
//! subscriptions, and reconnects by itself with capped, jittered
//! exponential backoff. Publishes take a fast path of their own
//! (`session`): no command channel, no per-publish link subscription or
//! timer; on an idle connection the caller writes its publish and the
//! reader completes it on the PUBACK, under load the driver does both in
//! batches. See `docs/decisions.md` (sections 4 and 16).
//!
//! Everything here is private: `Client` is the public face.

pub(crate) mod backoff;
mod chunks;
mod connect;
mod driver;
pub(crate) mod pacing;
mod session;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{sleep_until, Instant};

use crate::config::Settings;
use crate::error::{Error, ErrorKind, Phase};
pub(crate) use session::PublishCommand;
use session::{HandOver, Session};
use writer::Writer;

/// A message the broker delivered to us.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub payload: Bytes,
    /// Set when the broker replays a retained message on subscription.
    pub retain: bool,
    /// Set when the broker re-sends a QoS 1 message it sent before.
    pub dup: bool,
}

/// What the connection is doing, as callers waiting on it see it.
#[derive(Debug, Clone)]
pub(crate) enum Connectivity {
    /// Not connected; `last_error` says why the last attempt failed.
    Connecting {
        last_error: Option<Error>,
        /// The last failure will not go away by retrying (TLS trust,
        /// refused CONNECT): waiting callers fail at once.
        permanent: bool,
    },
    Connected,
    /// Shut down: nothing more will be sent.
    Closed,
}

pub(crate) type Done = oneshot::Sender<Result<(), Error>>;

/// Subscription changes. They have a queue of their own so that they never
/// wait behind publishes held back by pacing or the inflight window.
pub(crate) enum Control {
    Subscribe { filter: String, done: Done },
    Unsubscribe { filter: String },
}

type Routes = HashMap<String, Vec<mpsc::UnboundedSender<Message>>>;

/// State shared between the handle and the driver task.
pub(crate) struct Hub {
    link: watch::Sender<Connectivity>,
    /// Exact topic -> listeners of messages arriving on it.
    routes: Mutex<Routes>,
    shutdown: watch::Sender<bool>,
    /// Publishes queued, in flight and acknowledged (see `session`).
    session: Mutex<Session>,
    /// Wakes the driver (see `session` for when).
    wake: Notify,
    /// The connection's write side (see `writer`). Never locked while
    /// `session` is held, nor the other way round.
    writer: Mutex<Writer>,
}

impl Hub {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        session::lock(&self.session)
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        // Each step leaves the writer consistent (bytes are either in
        // `out` or taken by the stream), so recover from a poisoned lock.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (each operation is a single insert or retain), so recover it.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends every listener: nothing more will arrive once closed.
    fn close_routes(&self) {
        self.routes().clear();
    }

    /// Hands a delivered message to its listeners, forgetting closed ones.
    fn route(&self, topic: &str, message: Message) {
        let mut routes = self.routes();
        if let Some(listeners) = routes.get_mut(topic) {
            listeners.retain(|l| l.send(message.clone()).is_ok());
            if listeners.is_empty() {
                routes.remove(topic);
            }
        }
    }
}

/// The caller's handle on the connection. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Transport {
    control: mpsc::UnboundedSender<Control>,
    shared: Arc<Hub>,
    settings: Arc<Settings>,
    /// Dropped with the last handle, which tells the driver to close.
    _closer: Arc<Closer>,
}

struct Closer(Arc<Hub>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

/// Receives the messages delivered on one topic while it lives.
pub(crate) struct TopicReceiver {
    rx: mpsc::UnboundedReceiver<Message>,
    /// To forget the route when dropped: a boot reply topic gets one
    /// message, so waiting for the next to prune it would keep an entry
    /// per device ever registered.
    routes: std::sync::Weak<Hub>,
    topic: String,
}

impl Drop for TopicReceiver {
    fn drop(&mut self) {
        let Some(shared) = self.routes.upgrade() else {
            return;
        };
        // Closed, so that this listener's sender reports it.
        self.rx.close();
        let mut routes = shared.routes();
        if let Some(listeners) = routes.get_mut(&self.topic) {
            listeners.retain(|tx| !tx.is_closed());
            if listeners.is_empty() {
                routes.remove(&self.topic);
            }
        }
    }
}

impl TopicReceiver {
    /// The next message (the test-only `OwnLink` awaits them this way;
    /// the pool polls).
    #[cfg(test)]
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Transport {
    /// Starts the connection's driver on the current Tokio runtime. The
    /// first connection attempt starts at once; operations wait for it.
    pub fn start(settings: Settings) -> Result<Transport, Error> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| Error::from(ErrorKind::NoRuntime))?;
        let settings = Arc::new(settings);
        let (control, control_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Hub {
            link: watch::Sender::new(Connectivity::Connecting {
                last_error: None,
                permanent: false,
            }),
            routes: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(false),
            session: Mutex::new(Session::new(&settings, driver::inflight_limit(&settings))),
            wake: Notify::new(),
            writer: Mutex::new(Writer::new()),
        });
        runtime.spawn(driver::Driver::new(settings.clone(), shared.clone(), control_rx).run());
        Ok(Transport {
            control,
            _closer: Arc::new(Closer(shared.clone())),
            shared,
            settings,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Publishes at QoS 1 and returns once the broker acknowledged it.
    /// The acknowledgement timeout runs from when the PUBLISH is written;
    /// waiting for pacing or room in the window does not count. While the
    /// link is down the connect timeout runs instead (from when the
    /// publish first met the link down), and a permanent connection
    /// failure ends the wait at once; the driver enforces both, so the
    /// caller only waits for its answer.
    pub async fn publish(&self, topic: String, payload: Bytes) -> Result<(), Error> {
        self.start_publish(topic, payload)?.await
    }

    /// Hands a QoS 1 publish to the connection now (it is written, or
    /// queued in order behind the publishes handed over before it) and
    /// returns what waits for its acknowledgement. Two publishes started
    /// one after the other reach the broker in that order.
    pub fn start_publish(
        &self,
        topic: String,
        payload: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<(), Error>> + Send + 'static, Error> {
        if *self.shared.shutdown.borrow() {
            return Err(ErrorKind::Shutdown.into());
        }
        let (done, rx) = oneshot::channel();
        let command = PublishCommand {
            topic,
            payload,
            done,
            connect_deadline: None,
        };
        let handed = self.shared.session().hand_over(command, &self.settings)?;
        let wake = match handed {
            HandOver::Queued { wake } => wake,
            HandOver::Write {
                mut chunks,
                generation,
                arm_timer,
            } => {
                let written = self.shared.writer().write_now(&mut chunks, generation);
                arm_timer || !written
            }
        };
        if wake {
            self.shared.wake.notify_one();
        }
        // The driver answers every publish it took, Shutdown included; a
        // dropped sender means the runtime dropped the driver.
        Ok(async move { rx.await.unwrap_or_else(|_| Err(ErrorKind::Shutdown.into())) })
    }

    /// Subscribes at QoS 1 and returns once the broker granted it. The
    /// subscription is restored after every reconnect until every
    /// subscriber of the filter unsubscribed. Beyond `max_subscriptions`
    /// it waits for a slot; the subscribe timeout runs from when the
    /// SUBSCRIBE is written.
    pub async fn subscribe(&self, filter: String) -> Result<(), Error> {
        let (done, rx) = oneshot::channel();
        let sent = self
            .control
            .send(Control::Subscribe { filter, done })
            .is_ok();
        self.submit(std::future::ready(sent), rx).await
    }

    /// Gives up one subscription to `filter` (without waiting).
    pub fn unsubscribe(&self, filter: String) {
        // A closed driver means the subscription will not outlive the
        // connection; nothing for the caller to do.
        let _ = self.control.send(Control::Unsubscribe { filter });
    }

    /// Starts receiving what arrives on `topic` (an exact topic name).
    /// Listen before subscribing so that nothing is missed.
    pub fn listen(&self, topic: &str) -> TopicReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared
            .routes()
            .entry(topic.to_owned())
            .or_default()
            .push(tx);
        TopicReceiver {
            rx,
            routes: Arc::downgrade(&self.shared),
            topic: topic.to_owned(),
        }
    }

    /// How many topics have listeners (for tests of route bookkeeping).
    #[cfg(test)]
    pub(crate) fn routed_topics(&self) -> usize {
        self.shared.routes().len()
    }

    /// Waits until connected. Fails with the reason of the next failed
    /// attempt (a stale failure from before the call does not count unless
    /// it is permanent), or with a connect timeout.
    pub async fn connected(&self) -> Result<(), Error> {
        let mut link = self.shared.link.subscribe();
        let deadline = deadline_after(Instant::now(), self.settings.connect_timeout);
        let mut fresh = false;
        loop {
            let state = link.borrow_and_update().clone();
            match state {
                Connectivity::Connected => return Ok(()),
                Connectivity::Closed => return Err(ErrorKind::Shutdown.into()),
                Connectivity::Connecting {
                    last_error: Some(e),
                    permanent,
                } if permanent || fresh => return Err(e),
                Connectivity::Connecting { .. } => {}
            }
            tokio::select! {
                changed = link.changed() => match changed {
                    Ok(()) => fresh = true,
                    Err(_) => return Err(ErrorKind::Shutdown.into()),
                },
                () = sleep_until(deadline) => return Err(ErrorKind::Timeout(Phase::Connect).into()),
            }
        }
    }

    /// True while the connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(*self.shared.link.borrow(), Connectivity::Connected)
    }

    /// Waits until the link changes to connected or closed.
    pub async fn wait_connected(&self) {
        let mut link = self.shared.link.subscribe();
        let _ = link
            .wait_for(|l| matches!(l, Connectivity::Connected | Connectivity::Closed))
            .await;
    }

    /// Every change of the link from now on (for those who report
    /// failed connection attempts: each attempt is one change).
    pub(crate) fn link_events(&self) -> watch::Receiver<Connectivity> {
        self.shared.link.subscribe()
    }

    /// Starts closing without waiting (see [`Transport::shutdown`]).
    pub fn begin_shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Closes the connection after the publishes already handed over were
    /// written (at the paced rate) and acknowledged, or failed with their
    /// acknowledgement timeout.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let mut link = self.shared.link.subscribe();
        // The driver ends by publishing `Closed` (or by being dropped with
        // the runtime), so either way this returns.
        let _ = link.wait_for(|l| matches!(l, Connectivity::Closed)).await;
    }

    /// Queues one subscription change (`send` resolves to whether the
    /// driver took it) and waits for the driver's verdict on it.
    ///
    /// While the link is up the driver alone decides: it fails a subscribe
    /// whose acknowledgement does not come within the acknowledgement
    /// timeout *of being written*, so time spent waiting for a
    /// subscription slot is not charged to it. While the link is down the connect
    /// timeout runs (from when the caller first saw it down), and a
    /// permanent connection failure ends the wait at once.
    async fn submit(
        &self,
        send: impl Future<Output = bool>,
        mut rx: oneshot::Receiver<Result<(), Error>>,
    ) -> Result<(), Error> {
        if *self.shared.shutdown.borrow() {
            return Err(ErrorKind::Shutdown.into());
        }
        tokio::pin!(send);
        let mut queued = false;
        let mut link = self.shared.link.subscribe();
        let mut connect_deadline = None;
        loop {
            let state = link.borrow_and_update().clone();
            let deadline = match &state {
                Connectivity::Connected => None,
                Connectivity::Connecting {
                    last_error: Some(e),
                    permanent: true,
                } => return Err(e.clone()),
                Connectivity::Connecting { .. } => {
                    Some(*connect_deadline.get_or_insert_with(|| {
                        deadline_after(Instant::now(), self.settings.connect_timeout)
                    }))
                }
                Connectivity::Closed => {
                    // The driver may have answered just before closing.
                    return match rx.try_recv() {
                        Ok(result) => result,
                        Err(_) => Err(ErrorKind::Shutdown.into()),
                    };
                }
            };
            tokio::select! {
                sent = &mut send, if !queued => {
                    if !sent {
                        return Err(ErrorKind::Shutdown.into());
                    }
                    queued = true;
                }
                result = &mut rx, if queued => {
                    return result.unwrap_or_else(|_| Err(ErrorKind::Shutdown.into()));
                }
                changed = link.changed() => if changed.is_err() {
                    return Err(ErrorKind::Shutdown.into());
                },
                () = until(deadline) => {
                    return Err(match state {
                        Connectivity::Connecting { last_error: Some(e), .. } => {
                            Error::with_source(ErrorKind::Timeout(Phase::Connect), e)
                        }
                        _ => ErrorKind::Timeout(Phase::Connect).into(),
                    });
                }
            }
        }
    }
}

/// Sleeps until `deadline`, or forever for none (without making a timer).
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// About thirty years: "never" for a deadline, yet far from overflowing.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + after`, or practically never when that is not representable
/// (`Duration::MAX` as a timeout must not panic).
pub(crate) fn deadline_after(now: Instant, after: Duration) -> Instant {
    now.checked_add(after).unwrap_or_else(|| far_future(now))
}

/// A time that will practically never come.
pub(crate) fn far_future(now: Instant) -> Instant {
    now.checked_add(FAR_FUTURE).unwrap_or(now)
}
