//! Boot registration (PROTOCOL §3), one at a time per device serial.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::pool::Connection;
use super::Client;
use crate::config::RegistrationLimit;
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

/// The first wait after a serial's registration failed; it doubles with
/// each further failure, up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest wait before a serial that keeps failing registers again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Registrations in progress, by serial, and what keeps them from
/// becoming a storm (PROTOCOL §3: the platform quarantines a customer
/// whose boot messages run away).
pub(super) struct Registrations {
    in_flight: Mutex<HashMap<String, Slot>>,
    gate: RateGate,
    /// Serials whose last registration failed: how often in a row, and
    /// not before when they may try again.
    failed: Mutex<HashMap<String, (u32, Instant)>>,
}

enum Role {
    Leader(watch::Sender<Option<Outcome>>),
    Follower(Slot),
}

impl Registrations {
    pub fn new(limit: RegistrationLimit) -> Registrations {
        Registrations {
            in_flight: Mutex::default(),
            gate: RateGate::new(limit),
            failed: Mutex::default(),
        }
    }

    /// Waits until `serial` may register: after its backoff if its last
    /// registration failed, then for a slot under the rate cap.
    async fn admit(&self, serial: &str) {
        let not_before = lock(&self.failed).get(serial).map(|&(_, at)| at);
        if let Some(at) = not_before.filter(|&at| at > Instant::now()) {
            tracing::info!(
                serial,
                wait_ms = (at - Instant::now()).as_millis() as u64,
                "registration of this device failed just before: waiting before trying again"
            );
            sleep_until(at).await;
        }
        if let Some(at) = self.gate.reserve(Instant::now()) {
            tracing::info!(
                serial,
                wait_ms = (at - Instant::now()).as_millis() as u64,
                "registration delayed by the registration rate cap (RegistrationLimit), \
                 which keeps the customer clear of the platform's quarantine"
            );
            sleep_until(at).await;
        }
    }

    /// Remembers how a registration of `serial` ended, for its backoff.
    fn settle(&self, serial: &str, result: &Result<u32, Error>) {
        let mut failed = lock(&self.failed);
        match result {
            Ok(_) => {
                failed.remove(serial);
            }
            Err(_) => {
                let failures = failed.get(serial).map_or(0, |&(n, _)| n).saturating_add(1);
                let delay = FIRST_RETRY_DELAY
                    .saturating_mul(1 << failures.saturating_sub(1).min(16))
                    .min(MAX_RETRY_DELAY);
                failed.insert(serial.to_owned(), (failures, Instant::now() + delay));
            }
        }
    }

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
                    self.admit(&device.serial).await;
                    let result = handshake(client, device).await;
                    self.settle(&device.serial, &result);
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
        lock(&self.in_flight)
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The registration rate cap: a token bucket kept as the time it is full
/// again (a GCRA), in which each registration reserves its slot.
struct RateGate {
    /// Time between registrations on average; `None`: no cap.
    interval: Option<Duration>,
    /// How far ahead of the average a burst may run.
    tolerance: Duration,
    full_at: Mutex<Option<Instant>>,
}

impl RateGate {
    fn new(limit: RegistrationLimit) -> RateGate {
        let interval = limit
            .per_second
            .map(|rate| Duration::from_secs(1) / rate.max(1));
        RateGate {
            interval,
            tolerance: interval.unwrap_or_default() * limit.burst.saturating_sub(1),
            full_at: Mutex::new(None),
        }
    }

    /// Reserves the next slot; returns when it is, if later than `now`.
    fn reserve(&self, now: Instant) -> Option<Instant> {
        let interval = self.interval?;
        let mut full_at = lock(&self.full_at);
        let tat = full_at.map_or(now, |tat| tat.max(now));
        let start = tat.checked_sub(self.tolerance).unwrap_or(now).max(now);
        *full_at = Some(tat + interval);
        (start > now).then_some(start)
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

/// Gives up the reply-topic subscription however the handshake ends
/// (also the ELF upload's).
pub(super) struct Unsubscribe<'a> {
    pub(super) transport: &'a Connection,
    pub(super) topic: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_lets_a_burst_of_20_go_then_10_per_second() {
        let gate = RateGate::new(RegistrationLimit::platform());
        let now = Instant::now();
        for i in 0..20 {
            assert_eq!(
                gate.reserve(now),
                None,
                "registration {i} of the burst waited"
            );
        }
        // Then one every 100 ms, each in its own slot.
        for k in 1..=5u32 {
            assert_eq!(
                gate.reserve(now),
                Some(now + Duration::from_millis(100) * k)
            );
        }
        // Two seconds on, 20 have come back: 15 free after the 5 above.
        let later = now + Duration::from_secs(2);
        for _ in 0..15 {
            assert_eq!(gate.reserve(later), None);
        }
        assert!(gate.reserve(later).is_some());
    }

    #[test]
    fn no_cap_never_waits() {
        let gate = RateGate::new(RegistrationLimit::off());
        let now = Instant::now();
        assert!((0..10_000).all(|_| gate.reserve(now).is_none()));
    }

    #[test]
    fn a_serial_that_keeps_failing_waits_longer_each_time_up_to_a_minute() {
        let registrations = Registrations::new(RegistrationLimit::off());
        let failure: Result<u32, Error> = Err(ErrorKind::Timeout(Phase::BootReply).into());
        let mut waits = Vec::new();
        for _ in 0..9 {
            let before = Instant::now();
            registrations.settle("SN", &failure);
            let (_, at) = registrations.failed.lock().unwrap()["SN"];
            waits.push((at - before).as_secs_f64().round() as u64);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        registrations.settle("SN", &Ok(5));
        assert!(registrations.failed.lock().unwrap().is_empty());
    }
}
