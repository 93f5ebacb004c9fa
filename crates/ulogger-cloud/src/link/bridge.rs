//! The client's side of a bridged link: what `Transport` does for our own
//! connection (waiting for the link, pacing, the inflight window,
//! subscription slots, timeouts, routing, restoring subscriptions after a
//! lost session), around an application's [`MqttLink`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, timeout_at, Instant};

use super::{IncomingMessage, LinkInbox, MqttLink};
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Phase};
use crate::transport::backoff::Backoff;
use crate::transport::pacing::Pacer;
use crate::transport::{deadline_after, Message};

/// The link's connection as the client sees it.
#[derive(Debug, Clone)]
pub(crate) enum State {
    /// Not (yet) connected; `reason` is what the link last reported.
    Down {
        reason: Option<String>,
    },
    Up,
    /// Shutting down: new operations are refused, those under way finish.
    Closing,
    Closed,
}

/// A filter the client holds, with how many of its parts hold it and the
/// subscription slot it takes.
struct Held {
    count: usize,
    slot: Option<OwnedSemaphorePermit>,
}

type Routes = HashMap<String, Vec<mpsc::UnboundedSender<Message>>>;

/// Receives what arrives on one topic; forgets its route when dropped (a
/// boot reply topic gets one message, so waiting for the next to prune it
/// would keep an entry per device ever registered).
pub(crate) struct BridgeReceiver {
    rx: mpsc::UnboundedReceiver<Message>,
    shared: Weak<BridgeHub>,
    topic: String,
}

impl BridgeReceiver {
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for BridgeReceiver {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        // Closed, so that this listener's sender reports it.
        self.rx.close();
        let mut routes = lock(&shared.routes);
        if let Some(listeners) = routes.get_mut(&self.topic) {
            listeners.retain(|tx| !tx.is_closed());
            if listeners.is_empty() {
                routes.remove(&self.topic);
            }
        }
    }
}

/// State shared by the bridge and the link's [`LinkInbox`].
pub(crate) struct BridgeHub {
    state: watch::Sender<State>,
    /// Exact topic -> listeners of messages arriving on it.
    routes: Mutex<Routes>,
    held: Mutex<HashMap<String, Held>>,
    /// Counts sessions the broker lost while we held subscriptions.
    lost_sessions: watch::Sender<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation: a panic cannot
    // leave the map half-changed, so a poisoned lock is safe to reuse.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BridgeHub {
    pub(super) fn deliver(&self, message: IncomingMessage) {
        let mut routes = lock(&self.routes);
        if let Some(listeners) = routes.get_mut(&message.topic) {
            let routed = Message {
                payload: message.payload,
                retain: message.retain,
                dup: message.dup,
            };
            listeners.retain(|l| l.send(routed.clone()).is_ok());
            if listeners.is_empty() {
                routes.remove(&message.topic);
            }
        }
    }

    pub(super) fn connected(&self, session_present: bool) {
        let changed = self.state.send_if_modified(|state| match state {
            State::Closing | State::Closed => false,
            _ => {
                *state = State::Up;
                true
            }
        });
        if changed && !session_present && !lock(&self.held).is_empty() {
            self.lost_sessions.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub(super) fn disconnected(&self, reason: String) {
        self.state.send_if_modified(|state| match state {
            State::Closing | State::Closed => false,
            _ => {
                *state = State::Down {
                    reason: Some(reason),
                };
                true
            }
        });
    }

    pub(super) fn is_closed(&self) -> bool {
        matches!(*self.state.borrow(), State::Closed)
    }

    fn close(&self) {
        self.state.send_replace(State::Closed);
        lock(&self.routes).clear();
    }
}

/// The client's handle on a bridged link.
pub(crate) struct Bridge {
    link: Arc<dyn MqttLink>,
    shared: Arc<BridgeHub>,
    settings: Settings,
    pacer: Option<Mutex<Pacer>>,
    inflight: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    runtime: Handle,
}

impl Bridge {
    /// Attaches to `link` and starts restoring subscriptions after lost
    /// sessions, on the current Tokio runtime.
    pub fn start(settings: Settings, link: Arc<dyn MqttLink>) -> Result<Arc<Bridge>, Error> {
        let runtime = Handle::try_current().map_err(|_| Error::from(ErrorKind::NoRuntime))?;
        let shared = Arc::new(BridgeHub {
            state: watch::Sender::new(State::Down { reason: None }),
            routes: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            lost_sessions: watch::Sender::new(0),
        });
        let bridge = Arc::new(Bridge {
            pacer: Pacer::new(settings.pacing, Instant::now()).map(Mutex::new),
            inflight: Arc::new(Semaphore::new(usize::from(settings.max_inflight))),
            slots: Arc::new(Semaphore::new(usize::from(settings.max_subscriptions))),
            settings,
            link,
            shared,
            runtime,
        });
        bridge.runtime.spawn(restore_subscriptions(
            bridge.link.clone(),
            Arc::downgrade(&bridge.shared),
            bridge.shared.lost_sessions.subscribe(),
            bridge.shared.state.subscribe(),
            bridge.settings.ack_timeout,
        ));
        bridge.link.attach(LinkInbox {
            shared: bridge.shared.clone(),
        });
        Ok(bridge)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Publishes at QoS 1 through the link and returns on its PUBACK.
    /// Waiting for room in the inflight window and for pacing is not
    /// charged; the acknowledgement timeout runs from the hand-over.
    pub async fn publish(&self, topic: String, payload: Bytes) -> Result<(), Error> {
        let size = payload.len().saturating_add(topic.len()).saturating_add(4);
        let _permit = self
            .inflight
            .acquire()
            .await
            .map_err(|_| Error::from(ErrorKind::Shutdown))?;
        self.until_up(false).await?;
        self.pace(size).await;
        self.acknowledged(Phase::Acknowledgement, self.link.publish(topic, payload))
            .await
    }

    /// Subscribes at QoS 1 and returns on the SUBACK. The subscription is
    /// restored after a lost session until every subscriber of the filter
    /// unsubscribed (callers unsubscribe whatever the outcome).
    pub async fn subscribe(&self, filter: String) -> Result<(), Error> {
        self.hold(&filter).await?;
        self.until_up(false).await?;
        self.acknowledged(Phase::Subscribe, self.link.subscribe(filter))
            .await
    }

    /// Gives up one subscription to `filter` (without waiting).
    pub fn unsubscribe(&self, filter: String) {
        let slot = {
            let mut held = lock(&self.shared.held);
            let Some(entry) = held.get_mut(&filter) else {
                return;
            };
            entry.count = entry.count.saturating_sub(1);
            if entry.count > 0 {
                return;
            }
            held.remove(&filter).and_then(|entry| entry.slot)
        };
        let link = self.link.clone();
        let deadline = deadline_after(Instant::now(), self.settings.ack_timeout);
        self.runtime.spawn(async move {
            match timeout_at(deadline, link.unsubscribe(filter.clone())).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%filter, %error, "unsubscribe failed"),
                Err(_) => tracing::debug!(%filter, "unsubscribe timed out"),
            }
            // The slot is free once the broker has read the UNSUBSCRIBE.
            drop(slot);
        });
    }

    /// Starts receiving what arrives on `topic` (an exact topic name).
    pub fn listen(&self, topic: &str) -> BridgeReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        if !self.shared.is_closed() {
            lock(&self.shared.routes)
                .entry(topic.to_owned())
                .or_default()
                .push(tx);
        }
        BridgeReceiver {
            rx,
            shared: Arc::downgrade(&self.shared),
            topic: topic.to_owned(),
        }
    }

    /// Waits until the link reports it is up; fails with the reason of
    /// the next disconnection it reports, or a connect timeout.
    pub async fn connected(&self) -> Result<(), Error> {
        self.until_up(true).await
    }

    pub fn is_connected(&self) -> bool {
        matches!(*self.shared.state.borrow(), State::Up)
    }

    /// Every change of the link's state from now on.
    pub fn states(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    /// Waits until the link is up or the bridge closing.
    pub async fn wait_connected(&self) {
        let mut state = self.shared.state.subscribe();
        let _ = state
            .wait_for(|s| matches!(s, State::Up | State::Closing | State::Closed))
            .await;
    }

    /// Starts closing without waiting (see [`Bridge::shutdown`]).
    pub fn begin_shutdown(self: &Arc<Self>) {
        if self.begin_closing() {
            let bridge = self.clone();
            self.runtime
                .spawn(async move { bridge.finish_closing().await });
        }
    }

    /// Refuses new operations, waits for the publishes under way to be
    /// acknowledged (or time out), then ends every listener. The
    /// application's connection stays open: it is not ours to close.
    pub async fn shutdown(&self) {
        self.begin_closing();
        self.finish_closing().await;
    }

    /// True if this call moved the bridge to closing.
    fn begin_closing(&self) -> bool {
        self.shared.state.send_if_modified(|state| match state {
            State::Closing | State::Closed => false,
            _ => {
                *state = State::Closing;
                true
            }
        })
    }

    async fn finish_closing(&self) {
        let all = u32::from(self.settings.max_inflight);
        let _ = self.inflight.acquire_many(all).await;
        self.shared.close();
    }

    /// Counts one more holder of `filter`, taking a subscription slot for
    /// a filter not held yet (waiting for one, uncharged, if none is free).
    async fn hold(&self, filter: &str) -> Result<(), Error> {
        let needs_slot = {
            let mut held = lock(&self.shared.held);
            let entry = held.entry(filter.to_owned()).or_insert(Held {
                count: 0,
                slot: None,
            });
            entry.count += 1;
            entry.slot.is_none()
        };
        if needs_slot {
            let slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::from(ErrorKind::Shutdown))?;
            if let Some(entry) = lock(&self.shared.held).get_mut(filter) {
                entry.slot.get_or_insert(slot);
            }
        }
        Ok(())
    }

    /// Waits for the link to be up, for at most the connect timeout from
    /// when this call first saw it down. With `fail_on_report`, a
    /// disconnection reported meanwhile ends the wait with its reason.
    async fn until_up(&self, fail_on_report: bool) -> Result<(), Error> {
        let mut state = self.shared.state.subscribe();
        let mut deadline = None;
        let mut fresh = false;
        loop {
            let now = state.borrow_and_update().clone();
            let reason = match now {
                State::Up => return Ok(()),
                State::Closing | State::Closed => return Err(ErrorKind::Shutdown.into()),
                State::Down { reason } => reason,
            };
            if fresh && fail_on_report {
                if let Some(reason) = reason {
                    return Err(Error::with_source(ErrorKind::ConnectionLost, reason));
                }
            }
            let at = *deadline.get_or_insert_with(|| {
                deadline_after(Instant::now(), self.settings.connect_timeout)
            });
            tokio::select! {
                changed = state.changed() => match changed {
                    Ok(()) => fresh = true,
                    Err(_) => return Err(ErrorKind::Shutdown.into()),
                },
                () = sleep_until(at) => {
                    let kind = ErrorKind::Timeout(Phase::Connect);
                    return Err(match reason {
                        Some(reason) => Error::with_source(kind, reason),
                        None => kind.into(),
                    });
                }
            }
        }
    }

    /// Waits until the pacer lets a publish of `size` bytes go.
    async fn pace(&self, size: usize) {
        let Some(pacer) = &self.pacer else {
            return;
        };
        loop {
            let now = Instant::now();
            let verdict = lock(pacer).try_take(now, size);
            match verdict {
                Ok(()) => return,
                Err(at) => sleep_until(at).await,
            }
        }
    }

    /// Runs a link operation within the acknowledgement timeout.
    async fn acknowledged(
        &self,
        phase: Phase,
        operation: super::LinkFuture<'_>,
    ) -> Result<(), Error> {
        let deadline = deadline_after(Instant::now(), self.settings.ack_timeout);
        timeout_at(deadline, operation)
            .await
            .unwrap_or_else(|_| Err(ErrorKind::Timeout(phase).into()))
    }
}

/// Subscribes again to every held filter each time the link reports a
/// session the broker lost, retrying with backoff those that fail while
/// the link stays up. Ends when the bridge closes.
async fn restore_subscriptions(
    link: Arc<dyn MqttLink>,
    shared: Weak<BridgeHub>,
    mut lost: watch::Receiver<u64>,
    mut state: watch::Receiver<State>,
    ack_timeout: std::time::Duration,
) {
    let mut backoff = Backoff::default();
    let mut pending: Vec<String> = Vec::new();
    loop {
        let retry_at = (!pending.is_empty()).then(|| Instant::now() + backoff.next_delay());
        tokio::select! {
            changed = lost.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(shared) = shared.upgrade() else { return };
                pending = lock(&shared.held).keys().cloned().collect();
                backoff.succeeded();
            }
            changed = state.changed() => {
                if changed.is_err() || matches!(*state.borrow(), State::Closing | State::Closed) {
                    return;
                }
                continue;
            }
            () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
        }
        if !matches!(*state.borrow(), State::Up) {
            // The next `connected` report says whether to go again.
            continue;
        }
        let mut failed = Vec::new();
        for filter in std::mem::take(&mut pending) {
            let still_held = shared
                .upgrade()
                .is_some_and(|s| lock(&s.held).contains_key(&filter));
            if !still_held {
                continue;
            }
            let deadline = deadline_after(Instant::now(), ack_timeout);
            match timeout_at(deadline, link.subscribe(filter.clone())).await {
                Ok(Ok(())) => tracing::debug!(%filter, "subscription restored"),
                Ok(Err(error)) => {
                    tracing::warn!(%filter, %error, "could not restore a subscription; will retry");
                    failed.push(filter);
                }
                Err(_) => {
                    tracing::warn!(%filter, "restoring a subscription timed out; will retry");
                    failed.push(filter);
                }
            }
        }
        if failed.is_empty() {
            backoff.succeeded();
        } else {
            backoff.failed();
        }
        pending = failed;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::link::LinkFuture;
    use crate::MqttConfig;

    /// A link that never comes up: route bookkeeping needs none.
    struct Idle;

    impl MqttLink for Idle {
        fn attach(&self, _inbox: LinkInbox) {}
        fn publish(&self, _topic: String, _payload: Bytes) -> LinkFuture<'_> {
            Box::pin(std::future::pending())
        }
        fn subscribe(&self, _filter: String) -> LinkFuture<'_> {
            Box::pin(std::future::pending())
        }
        fn unsubscribe(&self, _filter: String) -> LinkFuture<'_> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_dropped_listener_leaves_no_route_behind() {
        let settings = MqttConfig::new(42).validate().unwrap();
        let bridge = Bridge::start(settings, Arc::new(Idle)).unwrap();
        let routes = || lock(&bridge.shared.routes).len();
        let first = bridge.listen("boot/v0/42/7/SN-1");
        let second = bridge.listen("boot/v0/42/7/SN-1");
        let other = bridge.listen("config/v0/42/7/SN-1");
        assert_eq!(routes(), 2);
        drop(first);
        assert_eq!(routes(), 2, "a listener is still on SN-1's topic");
        drop(second);
        assert_eq!(routes(), 1, "SN-1's reply topic is forgotten");
        drop(other);
        assert_eq!(routes(), 0);
    }
}
