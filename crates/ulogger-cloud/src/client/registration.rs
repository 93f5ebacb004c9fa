//! Boot registration (PROTOCOL §3), one at a time per device serial.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::pool::Link;
use super::Client;
use crate::error::{Error, ErrorKind, Phase};
use crate::store::SessionStore;
use crate::transport::deadline_after;
use crate::wire::{self, validate_serial, DeviceInfo};

/// The result of a registration, as every caller that waited for it sees it.
#[derive(Clone)]
struct Outcome {
    git_hash: String,
    result: Result<u32, Error>,
}

type Slot = watch::Receiver<Option<Outcome>>;

/// Registrations in progress, by serial.
#[derive(Default)]
pub(super) struct Registrations {
    in_flight: Mutex<HashMap<String, Slot>>,
}

enum Role {
    Leader(watch::Sender<Option<Outcome>>),
    Follower(Slot),
}

impl Registrations {
    /// The device's token: from the store when `use_store` and it holds one
    /// for this firmware, else from a registration, shared with any other
    /// caller registering the same serial at the same time.
    pub async fn token(
        &self,
        client: &Client,
        device: &DeviceInfo,
        use_store: bool,
    ) -> Result<u32, Error> {
        // A bad serial is refused before it reaches the store, the map or
        // the broker. The registration topics are only built when a
        // registration is needed, not for every upload of a known device.
        validate_serial(&device.serial)?;
        loop {
            if use_store {
                if let Some(token) = client
                    .session_store()
                    .get(&device.serial, &device.git_hash)?
                {
                    return Ok(token);
                }
            }
            match self.join(&device.serial) {
                Role::Leader(outcome) => {
                    let _slot = SlotGuard {
                        registrations: self,
                        serial: &device.serial,
                    };
                    let result = handshake(client, device).await;
                    outcome.send_replace(Some(Outcome {
                        git_hash: device.git_hash.clone(),
                        result: result.clone(),
                    }));
                    return result;
                }
                Role::Follower(mut slot) => {
                    if let Ok(outcome) = slot.wait_for(Option::is_some).await {
                        if let Some(outcome) = outcome.as_ref() {
                            if outcome.git_hash == device.git_hash {
                                return outcome.result.clone();
                            }
                        }
                    }
                    // The leader registered another firmware, or was
                    // cancelled before it finished: go round again.
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn join(&self, serial: &str) -> Role {
        let mut in_flight = self.lock();
        match in_flight.get(serial) {
            Some(slot) => Role::Follower(slot.clone()),
            None => {
                let (tx, rx) = watch::channel(None);
                in_flight.insert(serial.to_owned(), rx);
                Role::Leader(tx)
            }
        }
    }
}

/// Frees the serial's slot when the leader finishes or is cancelled.
struct SlotGuard<'a> {
    registrations: &'a Registrations,
    serial: &'a str,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.registrations.lock().remove(self.serial);
    }
}

/// Gives up the reply-topic subscription however the handshake ends.
struct Unsubscribe<'a> {
    transport: &'a Link,
    topic: String,
}

impl Drop for Unsubscribe<'_> {
    fn drop(&mut self) {
        self.transport.unsubscribe(std::mem::take(&mut self.topic));
    }
}

async fn handshake(client: &Client, device: &DeviceInfo) -> Result<u32, Error> {
    let topics = &client.settings().topics;
    let reply_topic = topics.boot_reply(device.app_id, &device.serial)?;
    let boot_topic = topics.boot(device.app_id)?;
    let transport = client.transport();
    // Listen before subscribing, so a reply cannot slip past.
    let mut replies = transport.listen(&reply_topic);
    let _unsubscribe = Unsubscribe {
        transport,
        topic: reply_topic.clone(),
    };
    transport.subscribe(reply_topic).await?;
    transport
        .publish(boot_topic, Bytes::from(wire::boot_payload(device)))
        .await?;
    // The token timeout starts once the broker took the boot request;
    // waiting for a subscription slot or for pacing came before.
    let deadline = deadline_after(Instant::now(), client.settings().token_timeout);
    // PROTOCOL §3: what is not an answer does not end the wait, but a
    // timeout says what did arrive, which is usually the real problem.
    let mut not_answers = NotAnswers::default();
    let token = loop {
        tokio::select! {
            message = replies.recv() => {
                let Some(message) = message else {
                    return Err(ErrorKind::Shutdown.into());
                };
                // A retained message is an old answer to someone else's
                // registration, never the answer to this one.
                if message.retain {
                    tracing::debug!("ignoring a retained message on the boot reply topic");
                    continue;
                }
                match wire::parse_boot_reply(&message.payload)? {
                    Some(token) => break token,
                    None => {
                        tracing::debug!("ignoring a message on the boot reply topic that is not an answer");
                        not_answers.note(&message.payload);
                    }
                }
            }
            () = sleep_until(deadline) => return Err(not_answers.timeout()),
        }
    };
    store_token(client.session_store(), device, token).await?;
    tracing::debug!("registered");
    Ok(token)
}

/// Messages on the reply topic that were not an answer, for the timeout.
#[derive(Default)]
struct NotAnswers {
    count: usize,
    first: Option<String>,
}

impl NotAnswers {
    fn note(&mut self, payload: &[u8]) {
        self.count += 1;
        if self.first.is_none() {
            let shown = &payload[..payload.len().min(64)];
            let text = String::from_utf8_lossy(shown);
            let kind = if serde_json::from_slice::<serde_json::Value>(payload).is_ok() {
                "JSON without a token"
            } else {
                "not JSON"
            };
            self.first = Some(format!("{kind}: {text:?}"));
        }
    }

    fn timeout(self) -> Error {
        let kind = ErrorKind::Timeout(Phase::BootReply);
        match self.first {
            None => kind.into(),
            Some(first) => Error::with_source(
                kind,
                format!(
                    "{} message(s) arrived on the reply topic that were not an answer (a JSON object with a token), the first {first}",
                    self.count
                ),
            ),
        }
    }
}

/// Stores the token off the async threads: a file-backed store fsyncs.
async fn store_token(
    store: &Arc<SessionStore>,
    device: &DeviceInfo,
    token: u32,
) -> Result<(), Error> {
    let store = store.clone();
    let serial = device.serial.clone();
    let git_hash = device.git_hash.clone();
    tokio::task::spawn_blocking(move || store.set(&serial, token, &git_hash))
        .await
        .map_err(|e| Error::with_source(ErrorKind::Shutdown, e))??;
    Ok(())
}
