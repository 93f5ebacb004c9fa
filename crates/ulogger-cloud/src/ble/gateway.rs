//! A gateway that runs for ever: keeps discovery on, picks devices, and
//! pulls each of them with [`pull_device`](super::pull_device) now and then, several at once,
//! with backoff after failures (decision 35 in `docs/decisions.md`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bluer::{Adapter, AdapterEvent};
use futures_util::stream::{Stream, StreamExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use super::scan::describe;
use super::{ble, Address, BleSession, PullOptions, PullReport, SERVICE_UUID};
use crate::{Client, Error, ErrorKind};

/// What happened to one device when the [`Gateway`] tried it.
#[derive(Debug)]
#[non_exhaustive]
pub struct GatewayEvent {
    /// The device.
    pub address: Address,
    /// The name it advertises, if BlueZ knows one.
    pub name: Option<String>,
    /// What the pull did, or why it failed. A device found not to be a
    /// uLogger device fails with [`GatewayEvent::is_not_ulogger`].
    pub outcome: Result<PullReport, Error>,
    /// Failures in a row of this device, this one included (0 after a
    /// success).
    pub failures: u32,
    /// How long until the gateway may try the device again.
    pub next_try_in: Duration,
}

impl GatewayEvent {
    /// Whether the device turned out not to be a uLogger device (it has no
    /// uLogger service): the gateway leaves it alone for
    /// [`Gateway::not_ulogger_hold`].
    pub fn is_not_ulogger(&self) -> bool {
        matches!(&self.outcome, Err(e) if matches!(e.kind(), ErrorKind::Ble { step, .. } if *step == crate::error::BLE_NOT_ULOGGER))
    }
}

/// A continuous BLE gateway: discovery stays on, devices on the allow-lists
/// (or every device seen, with no list) are pulled with [`pull_device`](super::pull_device),
/// at most [`max_connections`](Gateway::max_connections) at once, each at
/// most once per [`min_interval`](Gateway::min_interval), with exponential
/// backoff after failures. Devices BlueZ holds connected when it starts (a
/// gateway killed during a pull leaves the link up, and such a device no
/// longer advertises) are pulled first.
///
/// Settings never fail; [`run`](Gateway::run) checks them.
///
/// ```no_run
/// # async fn demo(client: ulogger_cloud::Client) -> Result<(), ulogger_cloud::Error> {
/// use std::time::Duration;
/// use ulogger_cloud::ble::Gateway;
///
/// let (events, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
/// let stop = std::sync::Arc::new(tokio::sync::Notify::new());
/// let gateway = Gateway::new("hci0")
///     .name("uLogger Example")
///     .max_connections(2)
///     .min_interval(Duration::from_secs(60));
/// let running = tokio::spawn({
///     let stop = stop.clone();
///     async move { gateway.run(&client, events, stop.notified()).await }
/// });
/// while let Some(event) = outcomes.recv().await {
///     match &event.outcome {
///         Ok(report) => println!("{}: {report}", event.address),
///         Err(e) => println!("{}: {e}", event.address),
///     }
/// #   break;
/// }
/// stop.notify_one();
/// # let _ = running.await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Gateway {
    adapter: String,
    names: Vec<String>,
    addresses: Vec<Address>,
    max_connections: usize,
    min_interval: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    not_ulogger_hold: Duration,
    rescan_interval: Duration,
    shutdown_grace: Duration,
    max_remembered: usize,
    options: PullOptions,
}

/// What the gateway remembers of a device between its pulls.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// Not tried before then.
    not_before: Instant,
    /// Failures in a row.
    failures: u32,
}

type Discovery = Pin<Box<dyn Stream<Item = AdapterEvent> + Send>>;
type Pulled = (Address, Option<String>, Result<PullReport, Error>);

impl Gateway {
    /// The most pulls [`max_connections`](Self::max_connections) allows
    /// at once: more links than any controller holds.
    pub const MAX_CONNECTIONS: usize = 64;

    /// A gateway on adapter `adapter` (`hci0`) with the defaults: every
    /// device seen is tried (no allow-list), 4 pulls at once, 30 s at least
    /// between two pulls of one device, backoff from 5 s doubling to 5 min
    /// after failures, 6 h before a device that is no uLogger device is
    /// tried again, BlueZ's list re-read every second, 10 s for pulls
    /// under way to end at shutdown, and [`PullOptions::new`].
    pub fn new(adapter: impl Into<String>) -> Self {
        Gateway {
            adapter: adapter.into(),
            names: Vec::new(),
            addresses: Vec::new(),
            max_connections: 4,
            min_interval: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            not_ulogger_hold: Duration::from_secs(6 * 3600),
            rescan_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            max_remembered: 4096,
            options: PullOptions::new(),
        }
    }

    /// Pull devices advertising exactly this name (may be given several
    /// times). With names or addresses given, only devices matching one of
    /// them are ever connected.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.names.push(name.into());
        self
    }

    /// Pull the device with this address (may be given several times).
    /// See [`name`](Self::name).
    pub fn address(mut self, address: Address) -> Self {
        self.addresses.push(address);
        self
    }

    /// How many devices may be pulled at once (default 4; from 1 to
    /// [`Gateway::MAX_CONNECTIONS`]). Each pull holds a link; controllers
    /// manage a handful.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// The least time between the end of one pull of a device and the
    /// start of the next (default 30 s), so a device found empty is not
    /// reconnected in a loop.
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// The wait after a device's first failure, doubled after each further
    /// one up to `max` (defaults 5 s and 5 min); each wait is drawn between
    /// its half and its whole, so gateways and devices do not fall in step.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// How long a device found not to be a uLogger device is left alone
    /// (default 6 h).
    pub fn not_ulogger_hold(mut self, hold: Duration) -> Self {
        self.not_ulogger_hold = hold;
        self
    }

    /// How often BlueZ's device list is read again for devices due a pull
    /// (default 1 s; a newly found device and a finished pull are looked
    /// at at once anyway).
    pub fn rescan_interval(mut self, interval: Duration) -> Self {
        self.rescan_interval = interval;
        self
    }

    /// At shutdown, how long pulls under way may take to end (default
    /// 10 s). Those cut short lose nothing: the device keeps every buffer
    /// not finally acknowledged, and their links are dropped.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The options of every pull (cloned per pull; default
    /// [`PullOptions::new`]).
    pub fn pull_options(mut self, options: PullOptions) -> Self {
        self.options = options;
        self
    }

    fn check(&self) -> Result<(), Error> {
        let invalid = |field: &'static str, reason: &str| -> Result<(), Error> {
            Err(ErrorKind::InvalidConfig {
                field,
                reason: reason.into(),
            }
            .into())
        };
        if !(1..=Self::MAX_CONNECTIONS).contains(&self.max_connections) {
            return invalid("max_connections", "must be from 1 to 64");
        }
        if self.rescan_interval.is_zero() {
            return invalid("rescan_interval", "must be more than zero");
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return invalid(
                "backoff",
                "the initial wait must be more than zero and at most the maximum",
            );
        }
        Ok(())
    }

    /// The wait after `failures` failures in a row: doubled per failure
    /// from the initial one, at most the maximum, drawn in its upper half.
    fn backoff_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let full = self
            .backoff_initial
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max);
        full / 2 + full.mul_f64(rand::random::<f64>() / 2.0)
    }

    /// Runs until `shutdown` completes, sending one [`GatewayEvent`] per
    /// device tried to `events` (a closed receiver is not an error).
    ///
    /// `client` must have an outbox: every pull stores into it, and the
    /// client delivers in its background as usual. At shutdown no new
    /// pull starts; pulls under way get
    /// [`shutdown_grace`](Self::shutdown_grace) to end, and are then cut
    /// short and their links dropped.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a setting out of range;
    /// [`ErrorKind::NoOutbox`]; [`ErrorKind::Ble`] when bluetoothd cannot
    /// be reached (not running, or no permission: the user needs the
    /// `bluetooth` group or a D-Bus policy allowing `org.bluez`), the
    /// adapter does not exist, or discovery cannot start. Once running,
    /// failures are the devices' (reported as events) and discovery that
    /// stops (the adapter powered off) is started again.
    pub async fn run(
        self,
        client: &Client,
        events: UnboundedSender<GatewayEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        self.check()?;
        client.outbox()?;
        // One connection to bluetoothd for every pull (see BleSession).
        let bluetooth = BleSession::new().await?;
        let adapter = bluetooth
            .session()
            .adapter(&self.adapter)
            .map_err(|e| ble("opening the adapter", e))?;
        let mut discovery = Some(start_discovery(&adapter).await?);
        let mut state = State {
            gateway: &self,
            client,
            bluetooth: &bluetooth,
            adapter: &adapter,
            events: &events,
            memory: HashMap::new(),
            in_flight: HashMap::new(),
            pulls: JoinSet::new(),
        };
        let mut rescan = tokio::time::interval(self.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            state.schedule().await;
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = state.pulls.join_next_with_id(), if !state.pulls.is_empty() => {
                    state.finished(joined);
                }
                event = next_event(&mut discovery) => match event {
                    Some(AdapterEvent::DeviceRemoved(address)) => state.forget(address),
                    Some(_) => {}
                    None => {
                        tracing::warn!(adapter = %self.adapter, "discovery stopped (adapter powered off?); starting it again");
                        discovery = None;
                    }
                },
                _ = rescan.tick() => {
                    if discovery.is_none() {
                        match start_discovery(&adapter).await {
                            Ok(started) => discovery = Some(started),
                            Err(e) => tracing::debug!(error = %e, "discovery not started yet"),
                        }
                    }
                }
            }
        }
        drop(discovery);
        state.stop().await;
        Ok(())
    }
}

async fn start_discovery(adapter: &Adapter) -> Result<Discovery, Error> {
    let events = adapter
        .discover_devices()
        .await
        .map_err(|e| ble("starting discovery", e))?;
    Ok(Box::pin(events))
}

async fn next_event(discovery: &mut Option<Discovery>) -> Option<AdapterEvent> {
    match discovery {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

struct State<'a> {
    gateway: &'a Gateway,
    client: &'a Client,
    bluetooth: &'a BleSession,
    adapter: &'a Adapter,
    events: &'a UnboundedSender<GatewayEvent>,
    memory: HashMap<Address, Memory>,
    /// Pulls under way, by task.
    in_flight: HashMap<tokio::task::Id, Address>,
    pulls: JoinSet<Pulled>,
}

impl State<'_> {
    fn busy(&self, address: Address) -> bool {
        self.in_flight.values().any(|a| *a == address)
    }

    /// Whether the device may be connected at all: it is on an allow-list,
    /// or there is none. Only the name is read (once per rescan for a
    /// device not on the address list), not the whole description.
    async fn may_connect(&self, address: Address) -> bool {
        let gateway = self.gateway;
        if gateway.names.is_empty() && gateway.addresses.is_empty() {
            return true;
        }
        if gateway.addresses.contains(&address) {
            return true;
        }
        if gateway.names.is_empty() {
            return false;
        }
        let Ok(device) = self.adapter.device(address) else {
            return false;
        };
        match device.name().await {
            Ok(Some(name)) => gateway.names.contains(&name),
            _ => false,
        }
    }

    /// Starts pulls of the devices due one, while a connection is free.
    async fn schedule(&mut self) {
        if self.pulls.len() >= self.gateway.max_connections {
            return;
        }
        let listed = match self.adapter.device_addresses().await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the adapter's devices");
                return;
            }
        };
        let now = Instant::now();
        self.prune(&listed, now);
        let mut due = Vec::new();
        for address in listed {
            if self.busy(address)
                || self
                    .memory
                    .get(&address)
                    .is_some_and(|m| m.not_before > now)
            {
                continue;
            }
            if !self.may_connect(address).await {
                continue;
            }
            if let Some(seen) = describe(self.adapter, address).await {
                due.push(seen);
            }
        }
        // Linked devices first (they no longer advertise, and hold the
        // controller's resources), then those never pulled.
        due.sort_by_key(|d| (!d.connected, self.memory.contains_key(&d.address)));
        for seen in due {
            if self.pulls.len() >= self.gateway.max_connections {
                break;
            }
            if seen.connected && seen.ulogger_service == Some(false) {
                // Linked by some other program and resolved without our
                // service: connecting would change nothing, and pulling
                // would drop that program's link.
                let failed = ErrorKind::Ble {
                    step: crate::error::BLE_NOT_ULOGGER,
                    reason: format!(
                        "connected by another program, and its services have no uLogger service ({SERVICE_UUID}): not a uLogger device?"
                    ),
                };
                self.report(seen.address, seen.name, Err(failed.into()));
                continue;
            }
            let (client, bluetooth, adapter, options) = (
                self.client.clone(),
                self.bluetooth.clone(),
                self.gateway.adapter.clone(),
                self.gateway.options.clone(),
            );
            let (address, name) = (seen.address, seen.name);
            tracing::debug!(%address, ?name, connected = seen.connected, "pulling");
            let task = self.pulls.spawn(async move {
                let outcome = bluetooth.pull(&client, &adapter, address, options).await;
                (address, name, outcome)
            });
            self.in_flight.insert(task.id(), address);
        }
    }

    /// Forgets devices BlueZ no longer lists, once their hold is over (a
    /// backoff or a not-uLogger hold outlives BlueZ forgetting them), and
    /// keeps at most `max_remembered`, dropping the earliest due first.
    fn prune(&mut self, listed: &[Address], now: Instant) {
        let listed: HashSet<&Address> = listed.iter().collect();
        self.memory
            .retain(|address, m| listed.contains(address) || m.not_before > now);
        let excess = self
            .memory
            .len()
            .saturating_sub(self.gateway.max_remembered);
        if excess > 0 {
            let mut by_due: Vec<(Instant, Address)> = self
                .memory
                .iter()
                .map(|(a, m)| (m.not_before, *a))
                .collect();
            by_due.sort();
            for (_, address) in by_due.into_iter().take(excess) {
                self.memory.remove(&address);
            }
        }
    }

    /// BlueZ forgot the device (expired or removed): so does the gateway,
    /// unless a hold still runs or a pull is under way.
    fn forget(&mut self, address: Address) {
        let now = Instant::now();
        if !self.busy(address)
            && self
                .memory
                .get(&address)
                .is_some_and(|m| m.not_before <= now)
        {
            self.memory.remove(&address);
        }
    }

    fn finished(&mut self, joined: Result<(tokio::task::Id, Pulled), tokio::task::JoinError>) {
        match joined {
            Ok((id, (address, name, outcome))) => {
                self.in_flight.remove(&id);
                self.report(address, name, outcome);
            }
            Err(e) => {
                // A pull that panicked or was aborted: treat it as failed.
                if let Some(address) = self.in_flight.remove(&e.id()) {
                    let failed = ErrorKind::Ble {
                        step: "pulling",
                        reason: format!("the pull's task ended abnormally: {e}"),
                    };
                    self.report(address, None, Err(failed.into()));
                }
            }
        }
    }

    /// Remembers when the device is due next and tells the caller.
    fn report(
        &mut self,
        address: Address,
        name: Option<String>,
        outcome: Result<PullReport, Error>,
    ) {
        let now = Instant::now();
        let previous = self.memory.get(&address).map_or(0, |m| m.failures);
        let (failures, wait) = match &outcome {
            Ok(_) => (0, self.gateway.min_interval),
            Err(e) if matches!(e.kind(), ErrorKind::Ble { step, .. } if *step == crate::error::BLE_NOT_ULOGGER) => {
                (previous.saturating_add(1), self.gateway.not_ulogger_hold)
            }
            Err(_) => {
                let failures = previous.saturating_add(1);
                (failures, self.gateway.backoff_after(failures))
            }
        };
        self.memory.insert(
            address,
            Memory {
                not_before: now + wait,
                failures,
            },
        );
        // A receiver gone away is the caller's choice, not a failure here.
        let _ = self.events.send(GatewayEvent {
            address,
            name,
            outcome,
            failures,
            next_try_in: wait,
        });
    }

    /// Lets pulls under way end within the grace, then cuts the rest
    /// short and drops their links.
    async fn stop(&mut self) {
        let grace = self.gateway.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = self.pulls.join_next_with_id().await {
                self.finished(joined);
            }
        })
        .await;
        if drained.is_ok() {
            return;
        }
        let cut: Vec<Address> = self.in_flight.values().copied().collect();
        self.pulls.abort_all();
        while self.pulls.join_next().await.is_some() {}
        self.in_flight.clear();
        for address in cut {
            tracing::info!(%address, "pull cut short by the shutdown; the device keeps what was not stored");
            if let Ok(device) = self.adapter.device(address) {
                // Best effort, bounded: a link left up would keep the
                // device from advertising to the next gateway.
                let _ = tokio::time::timeout(Duration::from_secs(5), device.disconnect()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_upper_half_and_stays_bounded() {
        let gateway =
            Gateway::new("hci0").backoff(Duration::from_secs(5), Duration::from_secs(300));
        for failures in 1..=200u32 {
            let full = Duration::from_secs(5)
                .saturating_mul(1 << failures.saturating_sub(1).min(20))
                .min(Duration::from_secs(300));
            for _ in 0..20 {
                let wait = gateway.backoff_after(failures);
                assert!(wait >= full / 2 && wait <= full, "{failures}: {wait:?}");
            }
        }
        assert!(gateway.backoff_after(u32::MAX) <= Duration::from_secs(300));
        assert!(gateway.backoff_after(0) <= Duration::from_secs(5));
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let field = |g: Gateway| match g.check() {
            Err(e) => match e.kind() {
                ErrorKind::InvalidConfig { field, .. } => *field,
                other => panic!("{other:?}"),
            },
            Ok(()) => panic!("accepted"),
        };
        assert_eq!(
            field(Gateway::new("hci0").max_connections(0)),
            "max_connections"
        );
        assert_eq!(
            field(Gateway::new("hci0").max_connections(65)),
            "max_connections"
        );
        assert!(Gateway::new("hci0").max_connections(64).check().is_ok());
        assert_eq!(
            field(Gateway::new("hci0").rescan_interval(Duration::ZERO)),
            "rescan_interval"
        );
        assert_eq!(
            field(Gateway::new("hci0").backoff(Duration::from_secs(9), Duration::from_secs(1))),
            "backoff"
        );
        assert!(Gateway::new("hci0").check().is_ok());
    }
}
