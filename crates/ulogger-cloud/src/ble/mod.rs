//! The gateway's radio-facing layer: pulls a device's logs and core dump
//! over Bluetooth LE through BlueZ, with [`bluer`] (decision 28), and
//! stores them in the client's outbox before the device may erase them.
//!
//! This layer is thin on purpose: the transfer protocol (ack 0, per-chunk
//! acks, re-acks on a stall, silence, holding back the final ack) is the
//! sans-I/O [`BlePull`]; this module only moves its
//! acks and the device's notifications over D-Bus and makes its buffers
//! durable. The rule it exists for: **the final acknowledgement, which
//! makes the device erase a buffer, is written only after
//! [`Client::enqueue_log`] (or [`Client::enqueue_core_dump`]) returned
//! `Ok`**, i.e. after the buffer is fsynced in the outbox.
//!
//! bluer talks to the system bus; it honours `DBUS_SYSTEM_BUS_ADDRESS`
//! (its `Session::new` opens a private libdbus connection to the system
//! bus, and libdbus reads that variable), which is how the tests point it
//! at a simulated BlueZ on a private bus.
//!
//! Needs the cargo feature `ble` (and libdbus at build and run time).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bluer::gatt::remote::{Characteristic as GattCharacteristic, CharacteristicWriteRequest};
use bluer::gatt::WriteOp;
use bluer::{AdapterEvent, Device, DeviceEvent, DeviceProperty, Session, Uuid};
use futures_util::stream::StreamExt;

use crate::wire::{
    self, BlePull, BufferKind, CoreDumpHeader, DeviceInfo, LogConfig, Metric, PullAction,
    PullConfig, PullSummary,
};
use crate::{Client, Error, ErrorKind, RecordId};

mod notifications;
mod relay;
mod seen;
mod thread;
mod tree;

use notifications::Notifications;
pub use relay::ConfigRelay;
use seen::SeenBuffers;

/// A device's Bluetooth address (`AA:BB:CC:DD:EE:FF`), re-exported from
/// bluer so callers need not depend on it; it parses with `str::parse`.
pub use bluer::Address;

mod gateway;
mod scan;

pub use gateway::{Gateway, GatewayEvent};
pub use scan::{identify, scan, SeenDevice};

/// The uLogger GATT service (PROTOCOL §6). Not advertised: it is found
/// after connecting, once BlueZ resolved the device's services.
pub const SERVICE_UUID: Uuid = Uuid::from_u128(0x691fe31f_1a06_4c7c_88c7_0993ec53f40c);
/// `log_data`: notifications carrying log chunks.
pub const LOG_DATA_UUID: Uuid = Uuid::from_u128(0x1828e769_1420_4363_ab28_04037d9ff755);
/// `log_ack`: the 2-byte acks, for both transfers.
pub const LOG_ACK_UUID: Uuid = Uuid::from_u128(0x3828e769_1420_4363_ab28_04037d9ff755);
/// `core_dump_data`: notifications carrying core-dump chunks.
pub const CORE_DUMP_DATA_UUID: Uuid = Uuid::from_u128(0x15b0fba5_59f9_4f25_bbd4_dd70ba04c6da);
/// `config`: the device's identity (PROTOCOL §4).
pub const CONFIG_UUID: Uuid = Uuid::from_u128(0x3ad8119d_8f9d_4297_9302_aa56f2283a72);
/// `log_config`: the 9-byte log configuration (PROTOCOL §7).
pub const LOG_CONFIG_UUID: Uuid = Uuid::from_u128(0x5828e769_1420_4363_ab28_04037d9ff755);
/// `rssi`: the link's RSSI as the device measures it, an `i8` in dBm
/// (newer firmware only).
pub const RSSI_UUID: Uuid = Uuid::from_u128(0x7828e769_1420_4363_ab28_04037d9ff755);

/// Deadlines of one [`pull_device`], phase by phase.
///
/// ```
/// use std::time::Duration;
/// use ulogger_cloud::ble::PullOptions;
/// let options = PullOptions::new().connect_timeout(Duration::from_secs(5));
/// assert_eq!(options.get_connect_timeout(), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct PullOptions {
    connect_timeout: Duration,
    services_timeout: Duration,
    write_timeout: Duration,
    pull: PullConfig,
    rejected_dir: Option<PathBuf>,
    stamp_epoch_time: bool,
    seen_dir: Option<PathBuf>,
    dedup: bool,
    relay: Option<ConfigRelay>,
    relay_configs: bool,
    heartbeat: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            // Discovery included: a device advertises every 100 ms to a few
            // seconds, and BlueZ's own connect gives up after about 20 s.
            connect_timeout: Duration::from_secs(20),
            services_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            pull: PullConfig::new(),
            stamp_epoch_time: true,
            rejected_dir: None,
            seen_dir: None,
            dedup: true,
            relay: None,
            relay_configs: true,
            heartbeat: true,
        }
    }
}

impl PullOptions {
    /// The defaults: 20 s to find and connect, 10 s to resolve services,
    /// read `config` and subscribe, 5 s per ack written, and
    /// [`PullConfig::new`] for the first chunk and the progress.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long finding the device (discovering it if BlueZ does not know
    /// it yet) and connecting may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long resolving services, reading `config` and subscribing to
    /// the data characteristics may take, together.
    pub fn services_timeout(mut self, timeout: Duration) -> Self {
        self.services_timeout = timeout;
        self
    }

    /// How long writing one ack may take.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// The transfer's own deadlines: the first chunk (silence means
    /// "nothing to send") and progress (re-acks on a stall, then give up).
    pub fn pull(mut self, config: PullConfig) -> Self {
        self.pull = config;
        self
    }

    /// Where a buffer that fails validation is kept, durably, before it is
    /// acknowledged: `<serial>-<unix ms>-<n>.log` (or `.core`) and a
    /// `.reason` file beside it. Default: `ble-rejected/` in the client's
    /// outbox directory, so the device's only copy is never erased before
    /// it is on disk somewhere.
    pub fn rejected_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.rejected_dir = Some(dir.into());
        self
    }

    /// Whether a version-4 log whose `epoch_time_us` is 0 (a device
    /// without a wall clock) gets the gateway's clock of the moment its
    /// header arrived over BLE (PROTOCOL §5), before it goes into the
    /// outbox. Default: yes. Never the time of its upload, which may be
    /// hours later.
    pub fn stamp_epoch_time(mut self, yes: bool) -> Self {
        self.stamp_epoch_time = yes;
        self
    }

    /// Whether a buffer the device offers again (after a reset, or after
    /// a gateway stopped between storing it and its final ack) is
    /// recognised by content and acknowledged without being stored twice
    /// (PROTOCOL §5). Default: yes, with the record of each device's
    /// recent buffers in `ble-seen/` of the outbox directory (see
    /// [`seen_dir`](Self::seen_dir)). A buffer the same, byte for byte
    /// in its data, as one of the device's last 256 is taken for a
    /// re-offer: a device whose logs carry neither a time nor a counter
    /// could lose a genuine repeat, hence the switch.
    pub fn dedup(mut self, yes: bool) -> Self {
        self.dedup = yes;
        self
    }

    /// Where the record of each device's recent buffers is kept (see
    /// [`dedup`](Self::dedup)); default `ble-seen/` in the outbox
    /// directory.
    pub fn seen_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.seen_dir = Some(dir.into());
        self
    }

    /// Whether a log configuration the cloud pushed for the device and
    /// kept by a [`ConfigRelay`] is written to its `log_config`
    /// characteristic when it connects. Default: yes, from
    /// [`ConfigRelay::in_outbox`] unless [`relay`](Self::relay) names
    /// another.
    pub fn relay_configs(mut self, yes: bool) -> Self {
        self.relay_configs = yes;
        self
    }

    /// The relay whose pending configurations are written to devices.
    pub fn relay(mut self, relay: ConfigRelay) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Whether each connection sends, through the outbox, a heartbeat for
    /// the device (it has no connection of its own, PROTOCOL §8) and the
    /// metric `rssi` when the device serves its `rssi` characteristic.
    /// Default: yes.
    pub fn heartbeat(mut self, yes: bool) -> Self {
        self.heartbeat = yes;
        self
    }

    /// See [`rejected_dir`](Self::rejected_dir).
    pub fn get_rejected_dir(&self) -> Option<&Path> {
        self.rejected_dir.as_deref()
    }

    /// See [`connect_timeout`](Self::connect_timeout).
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// See [`services_timeout`](Self::services_timeout).
    pub fn get_services_timeout(&self) -> Duration {
        self.services_timeout
    }

    /// See [`write_timeout`](Self::write_timeout).
    pub fn get_write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// See [`pull`](Self::pull).
    pub fn get_pull(&self) -> PullConfig {
        self.pull
    }
}

/// A buffer made durable in the outbox and then finally acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredBuffer {
    /// A log or a core dump.
    pub kind: BufferKind,
    /// Its outbox record; [`Client::delivered`] waits for its delivery.
    pub record: RecordId,
    /// Its size in bytes.
    pub len: usize,
    /// When the outbox call returned: the final ack was written after it.
    pub durable_at: Instant,
}

/// A buffer that failed validation and was acknowledged anyway, so the
/// device is not stuck re-sending it.
///
/// Kept durably (`file`) in [`PullOptions::rejected_dir`], by default
/// `ble-rejected/` in the outbox directory, before the acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RejectedBuffer {
    /// A log or a core dump.
    pub kind: BufferKind,
    /// Why it was refused.
    pub reason: String,
    /// The buffer as the device sent it.
    pub data: Vec<u8>,
    /// The file it was kept in, fsynced before the acknowledgement
    /// (always set; an `Option` for the callers written against it).
    pub file: Option<PathBuf>,
}

/// What [`pull_device`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PullReport {
    /// The device, as its `config` characteristic names it.
    pub device: DeviceInfo,
    /// Buffers stored in the outbox, in the order the device sent them.
    pub stored: Vec<StoredBuffer>,
    /// Buffers refused and acknowledged (see [`RejectedBuffer`]).
    pub rejected: Vec<RejectedBuffer>,
    /// The transfer's counts (acks re-sent, notifications dropped, ...).
    pub summary: PullSummary,
    /// Buffers the device offered again, recognised by content, finally
    /// acknowledged without being stored twice ([`PullOptions::dedup`]).
    pub duplicates: usize,
    /// The RSSI the device measured, from its `rssi` characteristic.
    pub rssi: Option<i8>,
    /// The log configuration written to the device's `log_config`
    /// characteristic (see [`ConfigRelay`]).
    pub config_written: Option<LogConfig>,
}

impl fmt::Display for PullReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let logs = self
            .stored
            .iter()
            .filter(|b| b.kind == BufferKind::Log)
            .count();
        write!(
            f,
            "{}: {} log(s), {} core dump(s) stored, {} rejected, {} already stored, {} bytes, {} re-sent ack(s), {} dropped notification(s)",
            self.device.serial,
            logs,
            self.stored.len() - logs,
            self.rejected.len(),
            self.duplicates,
            self.summary.bytes,
            self.summary.reacks,
            self.summary.dropped
        )?;
        if let Some(config) = &self.config_written {
            write!(f, ", log configuration written (level {})", config.level)?;
        }
        Ok(())
    }
}

/// Pulls one device once: finds it on adapter `adapter_name` (`hci0`),
/// connects, reads its identity from `config`, subscribes to `log_data`
/// and `core_dump_data`, runs a [`BlePull`], stores each buffer with
/// `client`'s outbox and only then writes the final ack that makes the
/// device erase it, and disconnects.
///
/// `client` must have an outbox ([`ClientBuilder::outbox`](crate::ClientBuilder::outbox));
/// delivery to the cloud happens in its background, not here.
///
/// # Errors
///
/// [`ErrorKind::Ble`] when a step fails or passes its deadline (see
/// [`PullOptions`]) or the transfer gives up; [`ErrorKind::NoOutbox`] and
/// the outbox's errors (full, disk) when a buffer cannot be stored (and
/// [`ErrorKind::Ble`] when a refused one cannot be kept in
/// [`PullOptions::rejected_dir`]). In
/// every case the device keeps what was not finally acknowledged, and
/// what was stored before the error stays in the outbox (so a retry may
/// store a buffer twice if the link failed right after its storage).
pub async fn pull_device(
    client: &Client,
    adapter_name: &str,
    address: Address,
    options: PullOptions,
) -> Result<PullReport, Error> {
    // Refused before touching the radio: nothing could be stored.
    client.outbox()?;
    BleSession::new()
        .await?
        .pull(client, adapter_name, address, options)
        .await
}

/// One connection to bluetoothd, shared by every pull of a process.
///
/// Each connection subscribes to all of BlueZ's property changes, so with
/// one per pull every notification of every device is parsed once per
/// pull in progress; and bluer never closes a dropped one's socket. A
/// gateway serving many devices holds one of these and pulls through it
/// ([`pull_device`] opens one for a single pull).
#[derive(Clone)]
pub struct BleSession {
    session: Session,
    /// For the GATT table in one call (see `tree`).
    tree: tree::ObjectTree,
    /// Where both connections live and pulls run (see `thread`).
    thread: thread::BleThread,
}

impl fmt::Debug for BleSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BleSession").finish_non_exhaustive()
    }
}

impl BleSession {
    /// Connects to bluetoothd on the system bus (`DBUS_SYSTEM_BUS_ADDRESS`
    /// when set).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Ble`] when the bus or bluetoothd cannot be reached.
    pub async fn new() -> Result<BleSession, Error> {
        let thread = thread::BleThread::start().await?;
        // Connected from the thread, so that their sockets are its own.
        let (session, tree) = thread
            .run(async {
                let session = Session::new()
                    .await
                    .map_err(|e| ble("connecting to bluetoothd over D-Bus", e))?;
                let tree = tree::ObjectTree::connect().await?;
                Ok::<_, Error>((session, tree))
            })
            .await??;
        Ok(BleSession {
            session,
            tree,
            thread,
        })
    }

    /// bluer's session, for what this module does not wrap (scanning).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// [`pull_device`] through this connection.
    ///
    /// # Errors
    ///
    /// As [`pull_device`].
    pub async fn pull(
        &self,
        client: &Client,
        adapter_name: &str,
        address: Address,
        options: PullOptions,
    ) -> Result<PullReport, Error> {
        client.outbox()?;
        let (session, client, adapter_name) =
            (self.clone(), client.clone(), adapter_name.to_owned());
        self.thread
            .run(async move {
                session
                    .pull_here(&client, &adapter_name, address, options)
                    .await
            })
            .await?
    }

    /// [`pull`](Self::pull), on the BLE thread.
    async fn pull_here(
        &self,
        client: &Client,
        adapter_name: &str,
        address: Address,
        options: PullOptions,
    ) -> Result<PullReport, Error> {
        let adapter = self
            .session
            .adapter(adapter_name)
            .map_err(|e| ble("opening the adapter", e))?;
        let device = match tokio::time::timeout(options.connect_timeout, connect(&adapter, address))
            .await
        {
            Ok(connected) => connected?,
            Err(_) => {
                // A connect cut short may still complete in bluetoothd:
                // undo it, or the device would stay linked to a gateway
                // gone away.
                if let Ok(device) = adapter.device(address) {
                    // Best effort, bounded: the timeout is what gets reported.
                    let _ = tokio::time::timeout(options.write_timeout, device.disconnect()).await;
                }
                return Err(timed_out(
                    "finding and connecting the device",
                    options.connect_timeout,
                ));
            }
        };
        let outcome = pull_connected(client, &self.tree, adapter_name, &device, options).await;
        // Always let the link go: the device serves one central at a time,
        // and a link left up would keep it from advertising to the next pull.
        if let Err(e) = device.disconnect().await {
            tracing::warn!(%address, error = %e, "disconnecting after the pull failed");
        }
        outcome
    }
}

/// Finds the device (discovering it if BlueZ does not list it: BlueZ only
/// knows devices it saw) and connects, unless a link already exists (a
/// gateway restarted while BlueZ kept its link).
async fn connect(adapter: &bluer::Adapter, address: Address) -> Result<Device, Error> {
    let device = adapter
        .device(address)
        .map_err(|e| ble("opening the device", e))?;
    // One property read says whether BlueZ knows the device (listing its
    // devices would read every object it has).
    let connected = match device.is_connected().await {
        Ok(connected) => connected,
        Err(e) if e.kind == bluer::ErrorKind::NotFound => {
            discover(adapter, address).await?;
            device
                .is_connected()
                .await
                .map_err(|e| ble("reading the device's state", e))?
        }
        Err(e) => return Err(ble("reading the device's state", e)),
    };
    if !connected {
        device.connect().await.map_err(|e| ble("connecting", e))?;
    }
    Ok(device)
}

/// Discovers until BlueZ lists `address` (BlueZ only knows devices it saw).
async fn discover(adapter: &bluer::Adapter, address: Address) -> Result<(), Error> {
    // Discovery lasts as long as this stream; dropped once it is found.
    let mut events = Box::pin(
        adapter
            .discover_devices()
            .await
            .map_err(|e| ble("starting discovery", e))?,
    );
    loop {
        match events.next().await {
            Some(AdapterEvent::DeviceAdded(found)) if found == address => return Ok(()),
            Some(_) => {}
            None => {
                return Err(ErrorKind::Ble {
                    step: "discovering the device",
                    reason: "discovery ended before the device was seen".into(),
                }
                .into())
            }
        }
    }
}

/// The uLogger characteristics a pull uses.
struct Gatt {
    config: GattCharacteristic,
    log_data: GattCharacteristic,
    log_ack: GattCharacteristic,
    core_dump_data: GattCharacteristic,
    /// Absent on a device that takes no configuration.
    log_config: Option<GattCharacteristic>,
    /// Newer firmware only.
    rssi: Option<GattCharacteristic>,
}

async fn find_gatt(tree: &tree::ObjectTree, adapter: &str, device: &Device) -> Result<Gatt, Error> {
    services_resolved(device).await?;
    let address = device.address();
    let kept = tree.gatt(adapter, address, DBUS_CALL_TIMEOUT).await?;
    match gatt_in(&kept, device).await {
        Ok(gatt) => Ok(gatt),
        // What the session kept lacks the service or a characteristic:
        // ask bluetoothd itself once before saying the device lacks it.
        Err(_) => {
            let fresh = tree.gatt_fresh(adapter, address, DBUS_CALL_TIMEOUT).await?;
            gatt_in(&fresh, device).await
        }
    }
}

/// Returns once bluetoothd has read the device's GATT table. (bluer's
/// `Device::services` waits the same way, and then lists bluetoothd's
/// whole object tree, which the session keeps already.)
async fn services_resolved(device: &Device) -> Result<(), Error> {
    let step = "resolving the uLogger service";
    let resolved = || async {
        device
            .is_services_resolved()
            .await
            .map_err(|e| ble(step, e))
    };
    if resolved().await? {
        return Ok(());
    }
    // Not yet (bluetoothd is still reading the table): watch, then look
    // again, so that a change between the two is not missed.
    let mut changes = device.events().await.map_err(|e| ble(step, e))?;
    if resolved().await? {
        return Ok(());
    }
    let lost = || -> Error {
        ErrorKind::Ble {
            step,
            reason: "the link was lost before the device's services were read".into(),
        }
        .into()
    };
    if !device.is_connected().await.map_err(|e| ble(step, e))? {
        return Err(lost());
    }
    while let Some(event) = changes.next().await {
        match event {
            DeviceEvent::PropertyChanged(DeviceProperty::ServicesResolved(true)) => return Ok(()),
            DeviceEvent::PropertyChanged(DeviceProperty::Connected(false)) => return Err(lost()),
            _ => {}
        }
    }
    Err(lost())
}

/// The uLogger characteristics in a device's GATT table.
async fn gatt_in(table: &tree::GattTable, device: &Device) -> Result<Gatt, Error> {
    // Not a D-Bus failure but the device's answer: no retry will help.
    let step = crate::error::BLE_NOT_ULOGGER;
    let Some(service_id) = table.service(SERVICE_UUID) else {
        return Err(ErrorKind::Ble {
            step,
            reason: format!(
                "the device has no uLogger service ({SERVICE_UUID}): not a uLogger device?"
            ),
        }
        .into());
    };
    let service = device
        .service(service_id)
        .await
        .map_err(|e| ble("resolving the uLogger service", e))?;
    let (mut config, mut log_data, mut log_ack, mut core_dump_data) = (None, None, None, None);
    let (mut log_config, mut rssi) = (None, None);
    for (id, uuid) in table.characteristics_of(service_id) {
        let slot = match uuid {
            CONFIG_UUID => &mut config,
            LOG_DATA_UUID => &mut log_data,
            LOG_ACK_UUID => &mut log_ack,
            CORE_DUMP_DATA_UUID => &mut core_dump_data,
            LOG_CONFIG_UUID => &mut log_config,
            RSSI_UUID => &mut rssi,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(
                service
                    .characteristic(id)
                    .await
                    .map_err(|e| ble("resolving the uLogger service", e))?,
            );
        }
    }
    let missing = |name: &str| -> Error {
        ErrorKind::Ble {
            step,
            reason: format!("the uLogger service has no {name} characteristic"),
        }
        .into()
    };
    Ok(Gatt {
        config: config.ok_or_else(|| missing("config"))?,
        log_data: log_data.ok_or_else(|| missing("log_data"))?,
        log_ack: log_ack.ok_or_else(|| missing("log_ack"))?,
        core_dump_data: core_dump_data.ok_or_else(|| missing("core_dump_data"))?,
        log_config,
        rssi,
    })
}

/// Resolves services, reads `config` and subscribes: the "services" phase.
async fn prepare(
    tree: &tree::ObjectTree,
    adapter: &str,
    device: &Device,
) -> Result<(Gatt, DeviceInfo, Notifications, Acks), Error> {
    let gatt = find_gatt(tree, adapter, device).await?;
    // Asked together: their replies come in together, one wake-up for
    // several calls. A bad config drops the sockets acquired with it.
    let (value, acquired) = tokio::join!(gatt.config.read(), acquire(&gatt));
    let value = value.map_err(|e| ble("reading config", e))?;
    let info = wire::decode_ble_config(&value).map_err(|e| ErrorKind::Ble {
        step: crate::error::BLE_BAD_CONFIG,
        reason: e.to_string(),
    })?;
    let (notifications, acks) = match acquired {
        Ok(acquired) => acquired,
        Err(e) => {
            // BlueZ hands out sockets only when it can (and a characteristic
            // already acquired elsewhere refuses): the D-Bus calls work always.
            tracing::debug!(serial = %info.serial, error = %e, "no acquired sockets; notifications as signals");
            let step = "subscribing to notifications";
            let logs = gatt.log_data.notify().await.map_err(|e| ble(step, e))?;
            let dumps = gatt
                .core_dump_data
                .notify()
                .await
                .map_err(|e| ble(step, e))?;
            let notifications = Notifications::signals(logs, dumps);
            let acks = Acks {
                log_ack: gatt.log_ack.clone(),
                socket: None,
                acquire: false,
            };
            (notifications, acks)
        }
    };
    Ok((gatt, info, notifications, acks))
}

/// The transfer on BlueZ's per-characteristic sockets (`AcquireNotify`,
/// `AcquireWrite`): one datagram per chunk and per ack, instead of a
/// `PropertiesChanged` signal broadcast on the bus and a `WriteValue`
/// call with its reply (measured in `docs/benchmarks.md`).
async fn acquire(gatt: &Gatt) -> Result<(Notifications, Acks), bluer::Error> {
    let (logs, dumps, acks) = tokio::try_join!(
        gatt.log_data.notify_io(),
        gatt.core_dump_data.notify_io(),
        gatt.log_ack.write_io(),
    )?;
    let notifications = Notifications::sockets(logs, dumps);
    let acks = Acks {
        log_ack: gatt.log_ack.clone(),
        socket: Some(acks),
        acquire: true,
    };
    Ok((notifications, acks))
}

/// Where acks are written.
///
/// Per-chunk acks go without response (PROTOCOL §6), on `AcquireWrite`'s
/// socket when BlueZ gave one. The final ack, the device's delete
/// command, always goes as a write request: its response says the device
/// has it, where a datagram still queued when the link is dropped would be
/// lost (and the buffer offered again). BlueZ refuses `WriteValue` while
/// the socket is held, so the socket is released first (and acquired
/// again for the next transfer's acks).
struct Acks {
    log_ack: GattCharacteristic,
    socket: Option<bluer::gatt::CharacteristicWriter>,
    /// Whether to ask for a socket (again) when there is none.
    acquire: bool,
}

impl Acks {
    async fn write(&mut self, ack: [u8; 2], limit: Duration) -> Result<(), Error> {
        if self.socket.is_none() && self.acquire {
            match tokio::time::timeout(limit, self.log_ack.write_io()).await {
                Ok(Ok(socket)) => self.socket = Some(socket),
                // Calls from now on: they always work.
                _ => self.acquire = false,
            }
        }
        let failed = |e: std::io::Error| {
            Error::with_source(
                ErrorKind::Ble {
                    step: "writing an ack",
                    reason: e.to_string(),
                },
                e,
            )
        };
        match &self.socket {
            // A socket with room takes the datagram at once (the usual
            // case: one ack in flight): no timer armed, no task woken.
            Some(socket) => match socket.try_send(&ack) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::timeout(limit, socket.send(&ack))
                        .await
                        .map_err(|_| timed_out("writing an ack", limit))?
                        .map_err(failed)
                }
                Err(e) => Err(failed(e)),
            },
            None => write_ack(&self.log_ack, ack, WriteOp::Command, limit).await,
        }
    }

    /// Writes the final ack with a response, releasing the socket first.
    async fn write_final(&mut self, ack: [u8; 2], limit: Duration) -> Result<(), Error> {
        let had_socket = self.socket.take().is_some();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match write_ack(&self.log_ack, ack, WriteOp::Request, left).await {
                // BlueZ has not yet seen the socket closed: it will shortly.
                Err(e) if had_socket && write_acquired(&e) && !left.is_zero() => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                other => return other,
            }
        }
    }
}

/// Whether BlueZ refused a write because a socket for it is still held.
fn write_acquired(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<bluer::Error>())
        .is_some_and(|e| e.kind == bluer::ErrorKind::NotPermitted)
}

async fn pull_connected(
    client: &Client,
    tree: &tree::ObjectTree,
    adapter: &str,
    device: &Device,
    options: PullOptions,
) -> Result<PullReport, Error> {
    let prepared = tokio::time::timeout(options.services_timeout, prepare(tree, adapter, device))
        .await
        .map_err(|_| {
            timed_out(
                "resolving services, reading config and subscribing",
                options.services_timeout,
            )
        })
        .and_then(|prepared| prepared);
    let (gatt, info, mut notifications, mut acks) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            // The session's copy of the device's GATT table may be what
            // failed (gone stale): the next pull reads it afresh.
            tree.forget(adapter, device.address());
            return Err(e);
        }
    };
    let mut report = PullReport {
        device: info,
        stored: Vec::new(),
        rejected: Vec::new(),
        summary: PullSummary::default(),
        duplicates: 0,
        rssi: None,
        config_written: None,
    };
    let options = &options;
    greet(client, &gatt, options, &mut report).await;
    let seen = open_seen(client, options, &report.device.serial).await?;
    let mut pull = BlePull::new(options.pull, Instant::now());
    let mut timer = PullTimer::new();
    let mut action = pull.poll(Instant::now());
    // The ack after a buffer was declared durable is its final ack.
    let mut final_ack_next = false;
    loop {
        match action {
            PullAction::WriteAck(ack) if final_ack_next => {
                final_ack_next = false;
                acks.write_final(ack, options.write_timeout).await?;
            }
            PullAction::WriteAck(ack) => {
                acks.write(ack, options.write_timeout).await?;
            }
            PullAction::Deliver(delivery) => {
                let id = delivery.id;
                let key = seen::content_key(delivery.kind, &delivery.data);
                let next = if seen.as_ref().is_some_and(|s| s.lock().contains(&key)) {
                    // Stored before (a re-offer after a reset, or after a
                    // gateway stopped short of the final ack): erasing it
                    // on the device loses nothing.
                    tracing::info!(serial = %report.device.serial, kind = ?delivery.kind, len = delivery.data.len(), "the device offered a buffer stored before: acknowledged, not stored twice");
                    report.duplicates += 1;
                    pull.durable(id, Instant::now())
                } else {
                    let kept = store(client, options, &mut report, delivery).await?;
                    // Only now, after the buffer is durable: a crash before
                    // this line may store it twice, never lose it.
                    if let Some(seen) = &seen {
                        remember(seen, key, &report.device.serial).await;
                    }
                    match kept {
                        Kept::Stored => pull.durable(id, Instant::now()),
                        Kept::Rejected => pull.rejected_durably(id, Instant::now()),
                    }
                };
                final_ack_next = true;
                action = next.map_err(|e| ErrorKind::Ble {
                    step: "acknowledging a stored buffer",
                    reason: e.to_string(),
                })?;
                continue;
            }
            PullAction::Finished(summary) => {
                report.summary = summary;
                return Ok(report);
            }
            PullAction::GiveUp(reason) => {
                return Err(ErrorKind::Ble {
                    step: "transferring",
                    reason: reason.to_string(),
                }
                .into())
            }
            PullAction::Dropped(reason) => {
                tracing::debug!(serial = %report.device.serial, %reason, "notification dropped");
            }
            _ => {}
        }
        if pull.is_over() {
            // The final ack was the last word; poll says how it ended.
            action = pull.poll(Instant::now());
            continue;
        }
        timer.aim(pull.deadline());
        action = tokio::select! {
            notified = notifications.next() => match notified {
                Some((from, value)) => {
                    let action = pull.on_notification(from, value, Instant::now());
                    if matches!(action, PullAction::WriteAck(_) | PullAction::Deliver(_)) {
                        // A chunk accepted in order: the device now waits
                        // for our ack, and sends nothing before it.
                        notifications.quiet();
                    }
                    action
                }
                None => {
                    return Err(ErrorKind::Ble {
                        step: "receiving",
                        reason: "the notifications ended: the link was lost".into(),
                    }
                    .into())
                }
            },
            () = timer.fired() => pull.poll(Instant::now()),
        };
    }
}

/// The one timer of a pull, for [`BlePull::deadline`].
///
/// Every chunk moves the deadline later; setting a timer per chunk would
/// cost more than moving the chunk. So the timer is moved only when a
/// deadline comes *earlier* than the one it is set for, and otherwise
/// fires early: [`BlePull::poll`] before the deadline does nothing, and
/// the next [`aim`](Self::aim) sets it for the real one. It fires at most
/// once per stall timeout instead of never being armed for less than a
/// chunk.
struct PullTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// What `sleep` is set for; `None` when it is not (or has fired).
    armed: Option<Instant>,
}

impl PullTimer {
    fn new() -> PullTimer {
        PullTimer {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    /// Makes sure the timer fires no later than `deadline`.
    fn aim(&mut self, deadline: Option<Instant>) {
        match (deadline, self.armed) {
            (Some(wanted), Some(armed)) if wanted >= armed => {}
            (Some(wanted), _) => {
                self.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(wanted));
                self.armed = Some(wanted);
            }
            (None, _) => self.armed = None,
        }
    }

    /// Completes when the timer fires; never while it is not armed.
    async fn fired(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}

/// What became of a buffer the device handed over.
enum Kept {
    /// In the outbox.
    Stored,
    /// Refused, and kept in the rejected folder.
    Rejected,
}

/// Stores `delivery` durably: in the outbox, or, when it fails validation
/// (a log's checksum, a core dump's header or identity), in the rejected
/// folder with its reason. `Ok` only once it is on disk.
async fn store(
    client: &Client,
    options: &PullOptions,
    report: &mut PullReport,
    mut delivery: wire::Delivery,
) -> Result<Kept, Error> {
    let kind = delivery.kind;
    let refused = match kind {
        BufferKind::Log => {
            if options.stamp_epoch_time {
                stamp_arrival(&mut delivery.data, delivery.header_arrived_at);
            }
            match client.enqueue_log(&report.device, &delivery.data).await {
                Ok(record) => Ok(record),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidLog(_)) => Err(e.to_string()),
                // Not stored: no final ack, the device keeps the buffer.
                Err(e) => return Err(e),
            }
        }
        _ => match check_core_dump(&delivery.data, &report.device) {
            Ok(()) => Ok(client.enqueue_core_dump(&delivery.data).await?),
            Err(reason) => Err(reason),
        },
    };
    match refused {
        Ok(record) => {
            report.stored.push(StoredBuffer {
                kind,
                record,
                len: delivery.data.len(),
                durable_at: Instant::now(),
            });
            Ok(Kept::Stored)
        }
        Err(reason) => {
            let dir = match &options.rejected_dir {
                Some(dir) => dir.clone(),
                None => client.outbox()?.dir().join(DEFAULT_REJECTED_DIR),
            };
            let file = keep_rejected(
                &dir,
                &report.device.serial,
                report.rejected.len(),
                kind,
                &delivery.data,
                &reason,
            )
            .await?;
            tracing::warn!(serial = %report.device.serial, ?kind, %reason, file = %file.display(), "a buffer from the device failed validation: kept apart, not sent, and acknowledged so it is not re-sent for ever");
            report.rejected.push(RejectedBuffer {
                kind,
                reason,
                data: delivery.data,
                file: Some(file),
            });
            Ok(Kept::Rejected)
        }
    }
}

/// Checks a core-dump package (PROTOCOL §10) and that it is this device's:
/// the cloud files a core dump under the identity inside it, so one
/// naming another device or application would land on the wrong device.
/// A different git hash or version is expected (firmware updated since
/// the crash) and only noted.
fn check_core_dump(package: &[u8], device: &DeviceInfo) -> Result<(), String> {
    let header = CoreDumpHeader::decode(package).map_err(|e| e.to_string())?;
    if header.app_id != device.app_id {
        return Err(format!(
            "the core dump is of application {}, the device says it runs application {}",
            header.app_id, device.app_id
        ));
    }
    if header.serial != device.serial {
        return Err(format!(
            "the core dump names device {:?}, the device says it is {:?}",
            header.serial, device.serial
        ));
    }
    if header.git_hash != device.git_hash {
        tracing::info!(serial = %device.serial, crashed = %header.git_hash, running = %device.git_hash, "the core dump is of an earlier firmware build");
    }
    Ok(())
}

/// What a connection does before the transfer: writes a pending log
/// configuration, reads the RSSI, queues a heartbeat. None of it may cost
/// the logs: a failure is logged and the pull goes on.
async fn greet(client: &Client, gatt: &Gatt, options: &PullOptions, report: &mut PullReport) {
    let serial = report.device.serial.clone();
    if options.relay_configs {
        if let Some(written) = relay_config(client, gatt, options, &serial).await {
            report.config_written = Some(written);
        }
    }
    if !options.heartbeat {
        return;
    }
    if let Some(rssi) = &gatt.rssi {
        match tokio::time::timeout(options.write_timeout, rssi.read()).await {
            Ok(Ok(value)) => match <[u8; 1]>::try_from(value.as_slice()) {
                Ok([byte]) => report.rssi = Some(i8::from_le_bytes([byte])),
                Err(_) => {
                    tracing::warn!(%serial, len = value.len(), "the rssi characteristic is not one byte: ignored")
                }
            },
            // Older firmware lists it and answers "not found", or none.
            Ok(Err(e)) => tracing::debug!(%serial, error = %e, "no rssi from the device"),
            Err(_) => tracing::debug!(%serial, "reading rssi timed out"),
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .ok();
    let mut metrics = vec![Metric::heartbeat()];
    if let Some(rssi) = report.rssi {
        metrics.push(Metric::new("rssi", i64::from(rssi)));
    }
    for metric in &mut metrics {
        metric.timestamp = now;
    }
    if let Err(e) = client
        .enqueue_metrics(&serial, report.device.app_id, &metrics)
        .await
    {
        tracing::warn!(%serial, error = %e, "the device's heartbeat could not be queued");
    }
}

/// Writes the configuration kept for the device, if any, to its
/// `log_config` characteristic (with a response: the device got it), and
/// forgets it once written. Returns what was written.
async fn relay_config(
    client: &Client,
    gatt: &Gatt,
    options: &PullOptions,
    serial: &str,
) -> Option<LogConfig> {
    let relay = match &options.relay {
        Some(relay) => relay.clone(),
        None => ConfigRelay::in_outbox(client).ok()?,
    };
    let pending = match relay.pending(serial) {
        Ok(pending) => pending?,
        Err(e) => {
            tracing::warn!(%serial, error = %e, "the pending log configuration could not be read");
            return None;
        }
    };
    let Some(characteristic) = &gatt.log_config else {
        tracing::warn!(%serial, "a log configuration waits for the device, but it has no log_config characteristic: kept");
        return None;
    };
    let request = CharacteristicWriteRequest {
        op_type: WriteOp::Request,
        ..Default::default()
    };
    let value = pending.ble_value();
    match tokio::time::timeout(
        options.write_timeout,
        characteristic.write_ext(&value, &request),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%serial, error = %e, "writing the log configuration failed: kept for the next connection");
            return None;
        }
        Err(_) => {
            tracing::warn!(%serial, "writing the log configuration timed out: kept for the next connection");
            return None;
        }
    }
    if let Err(e) = relay.delivered(serial, &pending) {
        tracing::warn!(%serial, error = %e, "the log configuration was written but could not be forgotten: it will be written again");
    }
    tracing::info!(%serial, level = %pending.level, "log configuration written to the device");
    Some(pending)
}

type Seen = std::sync::Arc<SeenLock>;

/// The device's record of buffers, shared with the blocking tasks that
/// append to it.
struct SeenLock(std::sync::Mutex<SeenBuffers>);

impl SeenLock {
    fn lock(&self) -> std::sync::MutexGuard<'_, SeenBuffers> {
        // Appends leave it whole or with a line not yet counted.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Opens the device's record of buffers (see [`PullOptions::dedup`]).
async fn open_seen(
    client: &Client,
    options: &PullOptions,
    serial: &str,
) -> Result<Option<Seen>, Error> {
    if !options.dedup {
        return Ok(None);
    }
    let dir = match &options.seen_dir {
        Some(dir) => dir.clone(),
        None => client.outbox()?.dir().join(DEFAULT_SEEN_DIR),
    };
    let who = serial.to_owned();
    let opened =
        tokio::task::spawn_blocking(move || SeenBuffers::open(&dir, &who).map_err(|e| (dir, e)))
            .await;
    match opened {
        Ok(Ok(seen)) => Ok(Some(std::sync::Arc::new(SeenLock(std::sync::Mutex::new(
            seen,
        ))))),
        // Without it a re-offered buffer would be stored twice, and this
        // pull cannot tell: refuse before any final ack.
        Ok(Err((dir, e))) => Err(Error::with_source(
            ErrorKind::Ble {
                step: "opening the record of the device's buffers",
                reason: format!("{}: {e} (or turn deduplication off)", dir.display()),
            },
            e,
        )),
        Err(join) => Err(ErrorKind::Ble {
            step: "opening the record of the device's buffers",
            reason: join.to_string(),
        }
        .into()),
    }
}

/// Records a stored buffer's key. A failure only risks a duplicate later,
/// never a loss: logged, and the pull goes on.
async fn remember(seen: &Seen, key: seen::ContentKey, serial: &str) {
    let seen = std::sync::Arc::clone(seen);
    let recorded = tokio::task::spawn_blocking(move || seen.lock().record(key)).await;
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%serial, error = %e, "a stored buffer could not be recorded: if the device offers it again it will be stored twice");
        }
        Err(e) => tracing::warn!(%serial, error = %e, "recording a stored buffer stopped"),
    }
}

/// Writes an ack without response, as the device expects (PROTOCOL §6).
async fn write_ack(
    log_ack: &GattCharacteristic,
    ack: [u8; 2],
    op_type: WriteOp,
    limit: Duration,
) -> Result<(), Error> {
    let request = CharacteristicWriteRequest {
        op_type,
        ..Default::default()
    };
    tokio::time::timeout(limit, log_ack.write_ext(&ack, &request))
        .await
        .map_err(|_| timed_out("writing an ack", limit))?
        .map_err(|e| ble("writing an ack", e))
}

/// Writes a refused buffer and its reason into `dir` and returns once both
/// and their directory entries are on disk: only then may it be acked.
/// Writes into a v4 log whose `epoch_time_us` is 0 the wall-clock time of
/// `arrived` (when its header came over BLE). Anything else is left as
/// the device sent it; a log that does not parse is refused later, whole.
fn stamp_arrival(log: &mut [u8], arrived: Instant) {
    let Ok(header) = crate::wire::LogHeader::parse(log) else {
        return;
    };
    if header.epoch_time_us != Some(0) {
        return;
    }
    let then = std::time::SystemTime::now()
        .checked_sub(Instant::now().saturating_duration_since(arrived))
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_micros()).ok());
    if let Some(us) = then {
        // A v4 header parsed just above: the field is there.
        let _ = crate::wire::patch_epoch_time_us(log, us);
    }
}

/// The folder, inside the outbox directory, that keeps rejected buffers
/// when no other is given (the outbox reads only its `seg-*` files).
/// bluetoothd's answer to a call of ours; the pull's phase deadlines
/// ([`PullOptions::services_timeout`]) are what bound a pull.
const DBUS_CALL_TIMEOUT: Duration = Duration::from_secs(30);

const DEFAULT_REJECTED_DIR: &str = "ble-rejected";

/// The folder, inside the outbox directory, that keeps each device's
/// record of recent buffers when no other is given.
const DEFAULT_SEEN_DIR: &str = "ble-seen";

async fn keep_rejected(
    dir: &Path,
    serial: &str,
    n: usize,
    kind: BufferKind,
    data: &[u8],
    reason: &str,
) -> Result<PathBuf, Error> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // The serial comes from the device: the name the seen records use.
    let serial = seen::file_name(serial);
    let extension = match kind {
        BufferKind::Log => "log",
        _ => "core",
    };
    let path = dir.join(format!("{serial}-{millis}-{n}.{extension}"));
    let (dir, data, reason, target) = (
        dir.to_path_buf(),
        data.to_vec(),
        reason.to_owned(),
        path.clone(),
    );
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        crate::durable::create_dir_all(&dir)?;
        for (file, bytes) in [
            (target.clone(), data),
            (target.with_extension("reason"), reason.into_bytes()),
        ] {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
        }
        crate::durable::sync_dir(&dir)
    })
    .await;
    let failed = |e: std::io::Error| {
        Error::with_source(
            ErrorKind::Ble {
                step: "keeping a refused buffer",
                reason: format!("cannot write {}: {e}", path.display()),
            },
            e,
        )
    };
    match written {
        Ok(Ok(())) => Ok(path),
        Ok(Err(e)) => Err(failed(e)),
        Err(join) => Err(failed(std::io::Error::other(join))),
    }
}

fn ble(step: &'static str, e: bluer::Error) -> Error {
    Error::with_source(
        ErrorKind::Ble {
            step,
            reason: e.to_string(),
        },
        e,
    )
}

fn timed_out(step: &'static str, after: Duration) -> Error {
    ErrorKind::Ble {
        step,
        reason: format!("timed out after {after:?}"),
    }
    .into()
}
