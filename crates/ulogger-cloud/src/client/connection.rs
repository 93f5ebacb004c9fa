//! Whether the client's connections are up, for those who say so to a
//! person (a service's log, a metrics endpoint): [`Client::connection_changes`]
//! and [`Client::is_connected`].

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::sync::watch;

use super::Client;
use crate::error::{Error, ErrorKind};
use crate::link::BridgeState;
use crate::transport::Connectivity as OwnState;

/// The state of one of a client's connections, as a
/// [`ConnectionEvent`] reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The connection came up: the broker accepted it (and, on the
    /// client's own connection, its session was restored).
    Up,
    /// The connection went down; it is being opened again in the
    /// background. `error` says why, when known (a bridged link's
    /// reason is a [`ErrorKind::ConnectionLost`] with the link's words
    /// as its source).
    Down {
        /// Why it went down.
        error: Option<Error>,
    },
    /// The client shut down: nothing more will be reported for this
    /// connection.
    Closed,
}

/// One change of one of a client's connections.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionEvent {
    /// Which connection: 0 for the first (a client has
    /// [`MqttConfig::connections`](crate::MqttConfig::connections) of them).
    pub connection: usize,
    /// That connection's MQTT client id.
    pub client_id: String,
    /// Its new state.
    pub state: ConnectionState,
}

/// Follows the client's connections; made by
/// [`Client::connection_changes`].
///
/// Only changes between up and down are events: the failed attempts of
/// a connection that is down are not (the error of a waiting call, and
/// an outbox's [`last_error`](crate::OutboxStatus::last_error), say
/// those). A connection that is already up when the watch is made is
/// reported up by the first call to [`next`](ConnectionChanges::next).
pub struct ConnectionChanges {
    watched: Vec<Watched>,
}

/// A wait for the next change of connection `usize`: false when its
/// state can no longer change.
type ChangeWait<'a> = Pin<Box<dyn Future<Output = (usize, bool)> + Send + 'a>>;

/// One connection's state changes, and what was last said about it.
struct Watched {
    client_id: String,
    states: States,
    up: bool,
    closed: bool,
}

/// The state changes of a connection: ours, or a bridged link's.
pub(crate) enum States {
    Own(watch::Receiver<OwnState>),
    Bridged(watch::Receiver<BridgeState>),
}

/// What a connection's state means for events.
enum Now {
    Up,
    Down(Option<Error>),
    Closed,
}

impl States {
    fn now(&mut self) -> Now {
        match self {
            States::Own(rx) => match &*rx.borrow_and_update() {
                OwnState::Connected => Now::Up,
                OwnState::Connecting { last_error, .. } => Now::Down(last_error.clone()),
                OwnState::Closed => Now::Closed,
            },
            States::Bridged(rx) => match &*rx.borrow_and_update() {
                BridgeState::Up => Now::Up,
                BridgeState::Down { reason } => Now::Down(
                    reason
                        .clone()
                        .map(|r| Error::with_source(ErrorKind::ConnectionLost, r)),
                ),
                BridgeState::Closing | BridgeState::Closed => Now::Closed,
            },
        }
    }

    /// Waits for the next change; false when the state can no longer
    /// change (its sender is gone).
    async fn changed(&mut self) -> bool {
        match self {
            States::Own(rx) => rx.changed().await.is_ok(),
            States::Bridged(rx) => rx.changed().await.is_ok(),
        }
    }
}

impl Watched {
    /// The event the connection's current state makes, if any.
    fn event(&mut self, connection: usize) -> Option<ConnectionEvent> {
        if self.closed {
            return None;
        }
        let state = match self.states.now() {
            Now::Up if !self.up => {
                self.up = true;
                ConnectionState::Up
            }
            Now::Down(error) if self.up => {
                self.up = false;
                ConnectionState::Down { error }
            }
            Now::Closed => {
                self.closed = true;
                ConnectionState::Closed
            }
            Now::Up | Now::Down(_) => return None,
        };
        Some(ConnectionEvent {
            connection,
            client_id: self.client_id.clone(),
            state,
        })
    }
}

impl ConnectionChanges {
    /// The next change of any of the client's connections; `None` once
    /// every one of them reported [`ConnectionState::Closed`].
    /// Cancel-safe: a change is taken only when it is returned.
    pub async fn next(&mut self) -> Option<ConnectionEvent> {
        loop {
            for (connection, watched) in self.watched.iter_mut().enumerate() {
                if let Some(event) = watched.event(connection) {
                    return Some(event);
                }
            }
            // Waits for a change of any connection still open (usually
            // one: a boxed wait per connection is cheap at this rate).
            let mut waits: Vec<ChangeWait<'_>> = self
                .watched
                .iter_mut()
                .enumerate()
                .filter(|(_, w)| !w.closed)
                .map(|(i, w)| Box::pin(async move { (i, w.states.changed().await) }) as Pin<Box<_>>)
                .collect();
            if waits.is_empty() {
                return None;
            }
            let (index, open) = std::future::poll_fn(|cx| {
                for wait in &mut waits {
                    if let Poll::Ready(done) = wait.as_mut().poll(cx) {
                        return Poll::Ready(done);
                    }
                }
                Poll::Pending
            })
            .await;
            drop(waits);
            if !open {
                // Gone without saying so (its runtime was dropped).
                let watched = &mut self.watched[index];
                watched.closed = true;
                return Some(ConnectionEvent {
                    connection: index,
                    client_id: watched.client_id.clone(),
                    state: ConnectionState::Closed,
                });
            }
        }
    }
}

impl std::fmt::Debug for ConnectionChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionChanges")
            .field("connections", &self.watched.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// True while at least one of the client's connections is up.
    pub fn is_connected(&self) -> bool {
        self.any_connected()
    }

    /// Follows the client's connections from now on: each coming up and
    /// going down, for a service to say so in its log. See
    /// [`ConnectionChanges`].
    ///
    /// ```no_run
    /// use ulogger_cloud::{Client, ConnectionState, MqttConfig};
    ///
    /// # async fn run() -> Result<(), ulogger_cloud::Error> {
    /// let config = MqttConfig::new(42).client_cert("gw.pem.crt", "gw.pem.key");
    /// let client = Client::builder(config).build()?;
    /// let mut changes = client.connection_changes();
    /// while let Some(event) = changes.next().await {
    ///     match event.state {
    ///         ConnectionState::Up => println!("{} connected", event.client_id),
    ///         ConnectionState::Down { error } => println!("connection lost: {error:?}"),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn connection_changes(&self) -> ConnectionChanges {
        ConnectionChanges {
            watched: self
                .inner
                .pool
                .all()
                .iter()
                .map(|link| Watched {
                    client_id: link.settings().client_id.clone(),
                    states: link.states(),
                    up: false,
                    closed: false,
                })
                .collect(),
        }
    }
}
