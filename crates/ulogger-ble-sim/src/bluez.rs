//! The fake `org.bluez`: BlueZ 5's D-Bus objects for one adapter and its
//! simulated uLogger devices.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::UnixDatagram;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use zbus::fdo::{ObjectManager, Properties};
use zbus::message::Header;
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;
use zbus::{interface, Connection, ObjectServer};
use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant, Variant};

use crate::behaviour::{Characteristic, DeviceBehaviour, Notification, ReadError, SERVICE_UUID};
use crate::Error;

/// The adapter's object path, as BlueZ names the first controller.
pub const ADAPTER_PATH: &str = "/org/bluez/hci0";
const ADAPTER_ADDRESS: &str = "C0:FF:EE:00:00:01";
/// The default ATT MTU: the device's 20-byte notifications fit it (PROTOCOL §6).
const ATT_MTU: u16 = 23;
/// Attribute handle of the uLogger service; BlueZ names GATT objects by
/// handle (`service0010`, `char0011`), so paths look like a real device's.
const SERVICE_HANDLE: u16 = 0x0010;
/// How long connecting to the bus and owning `org.bluez` may take.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// bluetoothd's default `TemporaryTimeout`: a device found by discovery
/// and not connected is forgotten this long after it was last seen.
const DEFAULT_TEMPORARY_TIMEOUT: Duration = Duration::from_secs(30);
/// The firmware advertises every 100 ms or so.
const DEFAULT_ADVERTISING_INTERVAL: Duration = Duration::from_millis(100);

const ADAPTER_IFACE: &str = "org.bluez.Adapter1";
const DEVICE_IFACE: &str = "org.bluez.Device1";
const CHAR_IFACE: &str = "org.bluez.GattCharacteristic1";

/// The errors BlueZ answers with: `org.bluez.Error.<Name>` and a message.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.bluez.Error")]
enum BluezError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Failed(String),
    InProgress(String),
    NotPermitted(String),
    NotSupported(String),
    NotReady(String),
    InvalidArguments(String),
    InvalidOffset(String),
    DoesNotExist(String),
    AlreadyExists(String),
}

fn not_connected() -> BluezError {
    // BlueZ's exact words for any GATT call on a disconnected device.
    BluezError::Failed("Not connected".into())
}

/// A device to simulate: its advertisement and the behaviour behind it.
#[must_use]
pub struct SimulatedDevice {
    address: String,
    name: String,
    address_type: &'static str,
    rssi: i16,
    advertising_interval: Duration,
    ulogger_service: bool,
    behaviour: Box<dyn DeviceBehaviour>,
}

impl std::fmt::Debug for SimulatedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedDevice")
            .field("address", &self.address)
            .field("name", &self.name)
            .field("address_type", &self.address_type)
            .field("rssi", &self.rssi)
            .finish_non_exhaustive()
    }
}

impl SimulatedDevice {
    /// A device advertising `name` (not the service UUID, as the firmware)
    /// from the public address `address` (`AA:BB:CC:DD:EE:FF`), at -60 dBm.
    pub fn new(
        address: impl Into<String>,
        name: impl Into<String>,
        behaviour: Box<dyn DeviceBehaviour>,
    ) -> Self {
        Self {
            address: address.into(),
            name: name.into(),
            address_type: "public",
            rssi: -60,
            advertising_interval: DEFAULT_ADVERTISING_INTERVAL,
            ulogger_service: true,
            behaviour,
        }
    }

    /// The device is not a uLogger device: once connected it resolves no
    /// uLogger service (no GATT objects at all, `UUIDs` empty), as a
    /// phone or a headset a gateway meets while discovering. Its
    /// behaviour is never read or written.
    pub fn without_ulogger_service(mut self) -> Self {
        self.ulogger_service = false;
        self
    }

    /// The address is a random (static) one, as most BLE firmware uses.
    pub fn random_address(mut self) -> Self {
        self.address_type = "random";
        self
    }

    /// The advertisement's RSSI as the adapter reports it, in dBm.
    pub fn rssi(mut self, rssi: i16) -> Self {
        self.rssi = rssi;
        self
    }

    /// How often, while a client discovers and the device is not
    /// connected, BlueZ reports a new advertisement from it (an `RSSI`
    /// change on `Device1`); default 100 ms.
    pub fn advertising_interval(mut self, interval: Duration) -> Self {
        self.advertising_interval = interval;
        self
    }
}

/// A client's discovery filter (`SetDiscoveryFilter`), as far as it
/// decides what this fake reports.
#[derive(Debug, Default, Clone)]
struct DiscoveryFilter {
    uuids: Vec<String>,
    rssi: Option<i16>,
    pattern: Option<String>,
}

impl DiscoveryFilter {
    fn accepts(&self, dev: &Device) -> bool {
        // The uLogger firmware advertises no service UUID, so any UUID
        // filter hides it, as with real BlueZ (PROTOCOL §6).
        self.uuids.is_empty()
            && self.rssi.is_none_or(|min| dev.rssi >= min)
            && self.pattern.as_deref().is_none_or(|p| {
                p.is_empty() || dev.address.starts_with(p) || dev.name.starts_with(p)
            })
    }
}

#[derive(Debug)]
struct AdapterState {
    powered: bool,
    alias: String,
    discoverable: bool,
    pairable: bool,
    /// Clients (unique bus names) with a discovery session.
    sessions: HashSet<String>,
    filters: HashMap<String, DiscoveryFilter>,
}

impl AdapterState {
    fn discovering(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// BlueZ merges the discovering clients' filters: a device is reported
    /// when any of them wants it.
    fn wants(&self, dev: &Device) -> bool {
        dev.in_range.load(Ordering::Relaxed)
            && self
                .sessions
                .iter()
                .any(|s| self.filters.get(s).is_none_or(|f| f.accepts(dev)))
    }
}

/// What the bus-facing objects share (never the connection, so the object
/// server holding these does not keep itself alive).
#[derive(Debug)]
struct Registry {
    adapter: Mutex<AdapterState>,
    devices: Mutex<Vec<Arc<Device>>>,
    temporary_timeout: Mutex<Duration>,
    /// Devices connected now, and the most ever connected at once.
    links: Mutex<(usize, usize)>,
}

impl Registry {
    fn link_up(&self) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.0 += 1;
        links.1 = links.1.max(links.0);
    }

    fn link_down(&self) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.0 = links.0.saturating_sub(1);
    }

    fn adapter(&self) -> MutexGuard<'_, AdapterState> {
        self.adapter.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn devices(&self) -> Vec<Arc<Device>> {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct Device {
    address: String,
    name: String,
    address_type: &'static str,
    rssi: i16,
    advertising_interval: Duration,
    /// Whether connecting resolves the uLogger service.
    ulogger_service: bool,
    /// `Connect` calls, and those that made a link.
    connect_attempts: AtomicU32,
    connects: AtomicU32,
    path: OwnedObjectPath,
    state: Mutex<DeviceState>,
    /// Advertising within the adapter's reach (a fault switch).
    in_range: AtomicBool,
    /// Wakes the device's driver: its deadline may have changed.
    wake: Notify,
    /// Notifications on their way to the air, in the order the behaviour
    /// made them; one driver task sends them, so order is kept.
    air: mpsc::UnboundedSender<Notification>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("address", &self.address)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

struct DeviceState {
    behaviour: Box<dyn DeviceBehaviour>,
    /// The Device1 object exists (the device was seen by a discovery).
    exported: bool,
    /// The GATT objects exist; like BlueZ's cache they stay after a
    /// disconnect.
    gatt_exported: bool,
    connected: bool,
    services_resolved: bool,
    paired: bool,
    trusted: bool,
    blocked: bool,
    alias: Option<String>,
    fail_connects: bool,
    drop_notifications: u32,
    /// The last advertisement's RSSI, as `Device1.RSSI` shows it.
    rssi: i16,
    /// When an advertisement or the link last showed the device is there.
    last_seen: Instant,
    /// Per characteristic, the clients that called StartNotify.
    notify_sessions: [HashSet<String>; 6],
    /// Per characteristic, BlueZ's cached `Value`.
    values: [Vec<u8>; 6],
    /// Per characteristic, the socket handed out by `AcquireNotify`.
    notify_io: [Option<AcquiredIo>; 6],
    /// Per characteristic, the socket handed out by `AcquireWrite`.
    write_io: [Option<AcquiredIo>; 6],
}

/// Our end of a socket pair handed to a client by `AcquireNotify` or
/// `AcquireWrite`, and the task that reads it. Dropping it closes our end
/// (the client reads end-of-file, as when bluetoothd drops a link).
struct AcquiredIo {
    fd: Arc<UnixDatagram>,
    task: JoinHandle<()>,
}

impl Drop for AcquiredIo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acquired {
    Notify,
    Write,
}

impl Acquired {
    fn property(self) -> &'static str {
        match self {
            Acquired::Notify => "NotifyAcquired",
            Acquired::Write => "WriteAcquired",
        }
    }
}

impl DeviceState {
    fn acquired(&mut self, kind: Acquired, ch: Characteristic) -> &mut Option<AcquiredIo> {
        match kind {
            Acquired::Notify => &mut self.notify_io[ch.index()],
            Acquired::Write => &mut self.write_io[ch.index()],
        }
    }

    fn notifying(&self, ch: Characteristic) -> bool {
        !self.notify_sessions[ch.index()].is_empty() || self.notify_io[ch.index()].is_some()
    }
}

/// A connected `SOCK_SEQPACKET` pair, as bluetoothd makes for the acquire
/// calls: one datagram per ATT value, and end-of-file when either side
/// closes. Our end is driven as a tokio `UnixDatagram`: `send` and `recv`
/// are the same calls on a connected seqpacket socket, and it needs
/// neither unsafe nor tokio's deprecated `AsyncFd::new`.
fn seqpacket_pair() -> io::Result<(UnixDatagram, OwnedFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    let ours = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(ours))?;
    Ok((ours, theirs))
}

/// Reads an acquired socket until the client closes it: on a write socket
/// each datagram is a write without response; a notify socket carries
/// nothing from the client, only its hang-up.
async fn serve_acquired(
    conn: Connection,
    dev: Arc<Device>,
    ch: Characteristic,
    kind: Acquired,
    fd: Arc<UnixDatagram>,
) {
    let mut buf = [0u8; 512];
    loop {
        match fd.recv(&mut buf).await {
            Ok(n) if n > 0 => {
                if kind == Acquired::Write {
                    let mut state = dev.state();
                    if state.connected {
                        let out = state.behaviour.write(ch, &buf[..n], Instant::now());
                        dev.send(out);
                    }
                    drop(state);
                    dev.wake.notify_one();
                }
            }
            // End-of-file (the client closed its end) or a dead socket.
            _ => break,
        }
    }
    let released = {
        let mut state = dev.state();
        let slot = state.acquired(kind, ch);
        if slot.as_ref().is_some_and(|a| Arc::ptr_eq(&a.fd, &fd)) {
            slot.take()
        } else {
            None
        }
    };
    if let Some(released) = released {
        if let Err(e) = emit_released(&conn, &dev, ch, kind).await {
            tracing::warn!(device = %dev.address, error = %e, "release not signalled");
        }
        // Last: dropping it aborts this very task.
        drop(released);
    }
}

async fn emit_released(
    conn: &Connection,
    dev: &Device,
    ch: Characteristic,
    kind: Acquired,
) -> zbus::Result<()> {
    let mut changes = vec![(kind.property(), Variant::from(false))];
    if kind == Acquired::Notify && !dev.state().notifying(ch) {
        changes.push(("Notifying", Variant::from(false)));
    }
    emit_changed(conn, &dev.char_path(ch), CHAR_IFACE, changes).await
}

impl Device {
    fn state(&self) -> MutexGuard<'_, DeviceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn service_path(&self) -> String {
        format!("{}/service{SERVICE_HANDLE:04x}", self.path.as_str())
    }

    fn char_path(&self, ch: Characteristic) -> String {
        format!("{}/char{:04x}", self.service_path(), char_handle(ch))
    }

    /// The CCC descriptor follows the declaration and the value.
    fn ccc_path(&self, ch: Characteristic) -> String {
        format!("{}/desc{:04x}", self.char_path(ch), char_handle(ch) + 2)
    }

    /// Queues what the behaviour sent; called with the state locked, so the
    /// queue's order is the behaviour's.
    fn send(&self, notifications: Vec<Notification>) {
        for n in notifications {
            // The receiver lives as long as the driver; after that nobody
            // listens, which is what a dropped notification means anyway.
            let _ = self.air.send(n);
        }
    }
}

/// A characteristic's declaration handle: declaration, value and (for
/// notify) CCC descriptor take three handles each after the service's.
fn char_handle(ch: Characteristic) -> u16 {
    // `index` is below 6, so the cast cannot truncate.
    SERVICE_HANDLE + 1 + 3 * ch.index() as u16
}

fn device_path(address: &str) -> String {
    format!("{ADAPTER_PATH}/dev_{}", address.replace(':', "_"))
}

fn valid_address(address: &str) -> bool {
    let parts: Vec<&str> = address.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn sender(header: &Header<'_>) -> String {
    header
        .sender()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}

/// Emits `PropertiesChanged` for `iface` at `path`. The properties are read
/// from shared state by their getters, so no interface lock is needed and
/// this works from method handlers and from the device drivers alike.
async fn emit_changed(
    conn: &Connection,
    path: &str,
    iface: &'static str,
    changes: Vec<(&'static str, Variant<'_>)>,
) -> zbus::Result<()> {
    let emitter = SignalEmitter::new(conn, path)?;
    let changed: HashMap<&str, Variant<'_>> = changes.into_iter().collect();
    Properties::properties_changed(
        &emitter,
        InterfaceName::from_static_str_unchecked(iface),
        changed,
        Cow::Borrowed(&[]),
    )
    .await
}

/// The fake BlueZ daemon: owns `org.bluez` on a bus and serves one adapter,
/// `hci0`, and the devices added to it.
///
/// Dropping it closes its bus connection (the name goes away) and stops
/// the devices.
#[derive(Debug)]
pub struct FakeBluez {
    conn: Connection,
    registry: Arc<Registry>,
    drivers: Mutex<Vec<JoinHandle<()>>>,
}

impl FakeBluez {
    /// Connects to the bus at `bus_address`, exports the object manager and
    /// the powered adapter, and owns `org.bluez`. Must run inside a tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`Error::DBus`] when the bus refuses, [`Error::Timeout`] after 10 s.
    pub async fn start(bus_address: &str) -> Result<Self, Error> {
        let registry = Arc::new(Registry {
            adapter: Mutex::new(AdapterState {
                powered: true,
                alias: "ulogger-sim".into(),
                discoverable: false,
                pairable: false,
                sessions: HashSet::new(),
                filters: HashMap::new(),
            }),
            devices: Mutex::new(Vec::new()),
            temporary_timeout: Mutex::new(DEFAULT_TEMPORARY_TIMEOUT),
            links: Mutex::new((0, 0)),
        });
        let adapter = AdapterIface {
            registry: registry.clone(),
        };
        // The name last, so a client that sees `org.bluez` finds the tree
        // ready, as after bluetoothd's start.
        let build = zbus::connection::Builder::address(bus_address)
            .serve_at("/", ObjectManager)
            .serve_at(ADAPTER_PATH, adapter)
            .name("org.bluez")
            .build();
        let conn = tokio::time::timeout(START_TIMEOUT, build)
            .await
            .map_err(|_| Error::Timeout("connecting the fake BlueZ to the bus"))??;
        // Subscribed before `start` returns, so no client can leave unseen.
        let departures = zbus::fdo::DBusProxy::new(&conn)
            .await?
            .receive_name_owner_changed()
            .await?;
        let watcher = tokio::spawn(watch_clients(conn.clone(), registry.clone(), departures));
        Ok(Self {
            conn,
            registry,
            drivers: Mutex::new(vec![watcher]),
        })
    }

    /// Puts a device in range. It shows up on the bus once a client
    /// discovers (or at once, if one is discovering).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`], [`Error::DuplicateDevice`], or
    /// [`Error::DBus`] when its object cannot be exported.
    pub async fn add_device(&self, device: SimulatedDevice) -> Result<DeviceHandle, Error> {
        let address = device.address.to_ascii_uppercase();
        if !valid_address(&address) {
            return Err(Error::InvalidAddress(device.address));
        }
        let (air, rx) = mpsc::unbounded_channel();
        let dev = Arc::new(Device {
            path: OwnedObjectPath::try_from(device_path(&address))?,
            address,
            name: device.name,
            address_type: device.address_type,
            rssi: device.rssi,
            advertising_interval: device.advertising_interval,
            ulogger_service: device.ulogger_service,
            connect_attempts: AtomicU32::new(0),
            connects: AtomicU32::new(0),
            state: Mutex::new(DeviceState {
                behaviour: device.behaviour,
                exported: false,
                gatt_exported: false,
                connected: false,
                services_resolved: false,
                paired: false,
                trusted: false,
                blocked: false,
                alias: None,
                fail_connects: false,
                drop_notifications: 0,
                rssi: device.rssi,
                last_seen: Instant::now(),
                notify_sessions: Default::default(),
                values: Default::default(),
                notify_io: Default::default(),
                write_io: Default::default(),
            }),
            in_range: AtomicBool::new(true),
            wake: Notify::new(),
            air,
        });
        {
            let mut devices = self
                .registry
                .devices
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if devices.iter().any(|d| d.address == dev.address) {
                return Err(Error::DuplicateDevice(dev.address.clone()));
            }
            devices.push(dev.clone());
        }
        let driver = tokio::spawn(drive(
            dev.clone(),
            self.registry.clone(),
            self.conn.clone(),
            rx,
        ));
        self.drivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(driver);
        let wanted = self.registry.adapter().wants(&dev);
        if wanted {
            export_device(self.conn.object_server(), &self.registry, &dev).await?;
        }
        Ok(DeviceHandle {
            dev,
            registry: self.registry.clone(),
            conn: self.conn.clone(),
        })
    }

    /// How long after it was last seen a device not connected is dropped
    /// from the bus (`InterfacesRemoved`), like bluetoothd's
    /// `TemporaryTimeout` (default 30 s).
    pub fn set_temporary_timeout(&self, timeout: Duration) {
        *self
            .registry
            .temporary_timeout
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = timeout;
    }

    /// How many devices have a link now.
    pub fn connected_count(&self) -> usize {
        self.registry
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// The most devices that had a link at the same time since the start:
    /// what a gateway's cap on concurrent connections is checked against.
    pub fn max_concurrent_connections(&self) -> usize {
        self.registry
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
    }
}

impl Drop for FakeBluez {
    fn drop(&mut self) {
        // Acquired sockets' tasks hold the connection: end them too, so
        // `org.bluez` goes away with this value.
        for dev in self.registry.devices() {
            let mut state = dev.state();
            state.notify_io = Default::default();
            state.write_io = Default::default();
        }
        for driver in self
            .drivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            driver.abort();
        }
    }
}

/// Ends the sessions of clients that leave the bus, as bluetoothd does: a
/// killed gateway's discovery and notification sessions do not outlive it
/// (its connections to devices do).
async fn watch_clients(
    conn: Connection,
    registry: Arc<Registry>,
    mut departures: zbus::fdo::NameOwnerChangedStream,
) {
    while let Some(signal) = departures.next().await {
        let Ok(args) = signal.args() else { continue };
        if args.new_owner().is_some() || !args.name().as_str().starts_with(':') {
            continue;
        }
        if let Err(e) = forget_client(&conn, &registry, args.name().as_str()).await {
            tracing::warn!(client = %args.name(), error = %e, "sessions of a departed client");
        }
    }
}

async fn forget_client(conn: &Connection, registry: &Registry, client: &str) -> zbus::Result<()> {
    let stopped = {
        let mut adapter = registry.adapter();
        adapter.filters.remove(client);
        adapter.sessions.remove(client) && adapter.sessions.is_empty()
    };
    if stopped {
        emit_changed(
            conn,
            ADAPTER_PATH,
            ADAPTER_IFACE,
            vec![("Discovering", Variant::from(false))],
        )
        .await?;
    }
    for dev in registry.devices() {
        let ended: Vec<Characteristic> = {
            let mut state = dev.state();
            Characteristic::ALL
                .into_iter()
                .filter(|ch| {
                    let sessions = &mut state.notify_sessions[ch.index()];
                    sessions.remove(client) && sessions.is_empty()
                })
                .collect()
        };
        for ch in ended {
            emit_changed(
                conn,
                &dev.char_path(ch),
                CHAR_IFACE,
                vec![("Notifying", Variant::from(false))],
            )
            .await?;
        }
    }
    Ok(())
}

/// A simulated device's radio-side controls: the faults a test injects.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    dev: Arc<Device>,
    registry: Arc<Registry>,
    conn: Connection,
}

impl DeviceHandle {
    /// The device's object path (`/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF`).
    pub fn path(&self) -> &str {
        self.dev.path.as_str()
    }

    /// The object path of a characteristic's `GattCharacteristic1`.
    pub fn characteristic_path(&self, ch: Characteristic) -> String {
        self.dev.char_path(ch)
    }

    /// Whether a central is connected.
    pub fn is_connected(&self) -> bool {
        self.dev.state().connected
    }

    /// How many `Connect` calls reached the device while it had no link,
    /// failed ones included (a gateway's retries and backoff show here).
    pub fn connect_attempts(&self) -> u32 {
        self.dev.connect_attempts.load(Ordering::Relaxed)
    }

    /// How many links were made to the device.
    pub fn connects(&self) -> u32 {
        self.dev.connects.load(Ordering::Relaxed)
    }

    /// Make `Connect` fail (as a device out of range or busy does) until
    /// switched off.
    pub fn set_fail_connects(&self, fail: bool) {
        self.dev.state().fail_connects = fail;
    }

    /// Move the device out of the adapter's reach (it stops being seen,
    /// a link drops, connects fail, and it expires after the temporary
    /// timeout) or back in (a running discovery finds it again).
    ///
    /// # Errors
    ///
    /// [`Error::DBus`] when the signals cannot be sent.
    pub async fn set_in_range(&self, in_range: bool) -> Result<(), Error> {
        self.dev.in_range.store(in_range, Ordering::Relaxed);
        if in_range {
            let wanted = self.registry.adapter().wants(&self.dev);
            if wanted {
                export_device(self.conn.object_server(), &self.registry, &self.dev).await?;
            }
        } else {
            disconnect(&self.conn, &self.registry, &self.dev).await?;
        }
        Ok(())
    }

    /// Lose the next `count` notifications on the air.
    pub fn drop_notifications(&self, count: u32) {
        self.dev.state().drop_notifications = count;
    }

    /// Runs `f` on the behaviour (to inspect it or change it, a device
    /// reset, say), then lets the device re-read its deadline.
    pub fn with_behaviour<R>(&self, f: impl FnOnce(&mut dyn DeviceBehaviour) -> R) -> R {
        let out = f(self.dev.state().behaviour.as_mut());
        self.dev.wake.notify_one();
        out
    }

    /// The link is lost (the device reset or went out of range): the
    /// central sees `ServicesResolved` and then `Connected` go false.
    ///
    /// # Errors
    ///
    /// [`Error::DBus`] when the signals cannot be sent.
    pub async fn drop_link(&self) -> Result<(), Error> {
        disconnect(&self.conn, &self.registry, &self.dev).await?;
        Ok(())
    }
}

/// The device's driver: sends queued notifications in order and calls the
/// behaviour's `tick` at its deadlines.
async fn drive(
    dev: Arc<Device>,
    registry: Arc<Registry>,
    conn: Connection,
    mut rx: mpsc::UnboundedReceiver<Notification>,
) {
    let mut adverts = tokio::time::interval(dev.advertising_interval);
    adverts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = dev.state().behaviour.next_deadline();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Queued notifications first: a tick's must follow them.
            biased;
            n = rx.recv() => match n {
                Some((ch, value)) => {
                    if let Err(e) = notify(&conn, &dev, ch, value).await {
                        tracing::warn!(device = %dev.address, error = %e, "notification not sent");
                    }
                }
                None => return,
            },
            () = dev.wake.notified() => {}
            _ = adverts.tick() => {
                if let Err(e) = advertise(&conn, &registry, &dev).await {
                    tracing::warn!(device = %dev.address, error = %e, "advertisement not reported");
                }
            }
            () = sleep => {
                let mut state = dev.state();
                let out = state.behaviour.tick(Instant::now());
                dev.send(out);
            }
        }
    }
}

/// One advertising interval: while a client discovers, BlueZ reports
/// each advertisement as a changed `RSSI` (only a change is signalled, so
/// the value alternates by 1 dB, as a real one jitters). Clients such as
/// bleak see a device through these, not only through its
/// `InterfacesAdded`, which may come before their scan listens. A device
/// not seen for the temporary timeout, and not connected or paired, is
/// forgotten as bluetoothd does.
async fn advertise(conn: &Connection, registry: &Registry, dev: &Arc<Device>) -> zbus::Result<()> {
    enum Step {
        Nothing,
        Report(i16),
        Expire,
    }
    let now = Instant::now();
    let wanted = registry.adapter().wants(dev);
    let timeout = *registry
        .temporary_timeout
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let step = {
        let mut state = dev.state();
        if !state.exported {
            // Not found yet: a discovery exports it.
            Step::Nothing
        } else if state.connected {
            // The firmware stops advertising while it serves a central.
            state.last_seen = now;
            Step::Nothing
        } else if wanted {
            state.last_seen = now;
            state.rssi = if state.rssi == dev.rssi {
                dev.rssi - 1
            } else {
                dev.rssi
            };
            Step::Report(state.rssi)
        } else if !state.paired && now.duration_since(state.last_seen) >= timeout {
            Step::Expire
        } else {
            Step::Nothing
        }
    };
    match step {
        Step::Nothing => Ok(()),
        Step::Report(rssi) => {
            emit_changed(
                conn,
                dev.path.as_str(),
                DEVICE_IFACE,
                vec![("RSSI", Variant::from(rssi))],
            )
            .await
        }
        Step::Expire => {
            tracing::debug!(device = %dev.address, "not seen for the temporary timeout: removed");
            forget_device(conn.object_server(), dev).await
        }
    }
}

/// Takes a device (not connected) off the bus, with what BlueZ keeps per
/// device object.
async fn forget_device(server: &ObjectServer, dev: &Arc<Device>) -> zbus::Result<()> {
    {
        let mut state = dev.state();
        state.notify_sessions = Default::default();
        state.values = Default::default();
        state.paired = false;
        state.trusted = false;
    }
    unexport_device(server, dev).await
}

/// One notification on the air: BlueZ caches it as the characteristic's
/// `Value` and tells subscribed clients with `PropertiesChanged`.
async fn notify(
    conn: &Connection,
    dev: &Device,
    ch: Characteristic,
    value: Vec<u8>,
) -> zbus::Result<()> {
    let acquired = {
        let mut state = dev.state();
        // Without a subscription the CCC descriptor is off and the device's
        // notification never reaches BlueZ.
        if !state.connected || !state.notifying(ch) {
            tracing::debug!(device = %dev.address, ?ch, "notification lost: nobody subscribed");
            return Ok(());
        }
        if state.drop_notifications > 0 {
            state.drop_notifications -= 1;
            tracing::debug!(device = %dev.address, ?ch, "notification dropped by fault switch");
            return Ok(());
        }
        match &state.notify_io[ch.index()] {
            Some(io) => Some(io.fd.clone()),
            None => {
                state.values[ch.index()].clone_from(&value);
                None
            }
        }
    };
    if let Some(fd) = acquired {
        // Through the acquired socket; `Value` is not touched (BlueZ's
        // docs), and a client that stopped reading holds the device up.
        if let Err(e) = fd.send(&value).await {
            tracing::debug!(device = %dev.address, ?ch, error = %e, "notification lost: socket closed");
        }
        return Ok(());
    }
    emit_changed(
        conn,
        &dev.char_path(ch),
        CHAR_IFACE,
        vec![("Value", Variant::from(value))],
    )
    .await
}

async fn export_device(
    server: &ObjectServer,
    registry: &Arc<Registry>,
    dev: &Arc<Device>,
) -> zbus::Result<()> {
    {
        let mut state = dev.state();
        if state.exported {
            return Ok(());
        }
        state.exported = true;
        state.last_seen = Instant::now();
    }
    server
        .at(
            &dev.path,
            DeviceIface {
                dev: dev.clone(),
                registry: registry.clone(),
            },
        )
        .await?;
    Ok(())
}

async fn export_gatt(server: &ObjectServer, dev: &Arc<Device>) -> zbus::Result<()> {
    {
        let mut state = dev.state();
        if state.gatt_exported {
            return Ok(());
        }
        state.gatt_exported = true;
    }
    server
        .at(dev.service_path(), ServiceIface { dev: dev.clone() })
        .await?;
    for ch in Characteristic::ALL {
        server
            .at(
                dev.char_path(ch),
                CharIface {
                    dev: dev.clone(),
                    ch,
                },
            )
            .await?;
        if ch.can_notify() {
            server
                .at(
                    dev.ccc_path(ch),
                    CccIface {
                        dev: dev.clone(),
                        ch,
                    },
                )
                .await?;
        }
    }
    Ok(())
}

async fn unexport_device(server: &ObjectServer, dev: &Arc<Device>) -> zbus::Result<()> {
    let gatt = {
        let mut state = dev.state();
        state.exported = false;
        std::mem::take(&mut state.gatt_exported)
    };
    if gatt {
        for ch in Characteristic::ALL {
            if ch.can_notify() {
                server.remove::<CccIface, _>(dev.ccc_path(ch)).await?;
            }
            server.remove::<CharIface, _>(dev.char_path(ch)).await?;
        }
        server.remove::<ServiceIface, _>(dev.service_path()).await?;
    }
    server.remove::<DeviceIface, _>(&dev.path).await?;
    Ok(())
}

/// Link down, by either side: resets the device and tells clients in
/// BlueZ's order (ServicesResolved, then Connected).
async fn disconnect(conn: &Connection, registry: &Registry, dev: &Device) -> zbus::Result<()> {
    {
        let mut state = dev.state();
        if !state.connected {
            return Ok(());
        }
        state.connected = false;
        state.services_resolved = false;
        if dev.ulogger_service {
            state.behaviour.disconnect();
        }
    }
    registry.link_down();
    dev.wake.notify_one();
    // bluetoothd closes acquired sockets with the link.
    for kind in [Acquired::Notify, Acquired::Write] {
        for ch in Characteristic::ALL {
            let released = dev.state().acquired(kind, ch).take();
            if let Some(released) = released {
                drop(released);
                emit_released(conn, dev, ch, kind).await?;
            }
        }
    }
    let path = dev.path.as_str();
    emit_changed(
        conn,
        path,
        DEVICE_IFACE,
        vec![("ServicesResolved", Variant::from(false))],
    )
    .await?;
    emit_changed(
        conn,
        path,
        DEVICE_IFACE,
        vec![("Connected", Variant::from(false))],
    )
    .await
}

struct AdapterIface {
    registry: Arc<Registry>,
}

#[interface(name = "org.bluez.Adapter1")]
impl AdapterIface {
    async fn start_discovery(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<(), BluezError> {
        let client = sender(&header);
        let (started, wanted) = {
            let mut adapter = self.registry.adapter();
            if !adapter.powered {
                return Err(BluezError::NotReady("Resource Not Ready".into()));
            }
            if adapter.sessions.contains(&client) {
                return Err(BluezError::InProgress(
                    "Operation already in progress".into(),
                ));
            }
            let started = adapter.sessions.is_empty();
            adapter.sessions.insert(client);
            let wanted: Vec<_> = self
                .registry
                .devices()
                .into_iter()
                .filter(|d| adapter.wants(d))
                .collect();
            (started, wanted)
        };
        if started {
            emit_changed(
                conn,
                ADAPTER_PATH,
                ADAPTER_IFACE,
                vec![("Discovering", Variant::from(true))],
            )
            .await?;
        }
        // In range and advertising, so found at once (a real scan takes a
        // few advertising intervals).
        for dev in wanted {
            export_device(server, &self.registry, &dev).await?;
        }
        Ok(())
    }

    async fn stop_discovery(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BluezError> {
        let stopped = {
            let mut adapter = self.registry.adapter();
            if !adapter.sessions.remove(&sender(&header)) {
                return Err(BluezError::Failed("No discovery started".into()));
            }
            adapter.sessions.is_empty()
        };
        if stopped {
            emit_changed(
                conn,
                ADAPTER_PATH,
                ADAPTER_IFACE,
                vec![("Discovering", Variant::from(false))],
            )
            .await?;
        }
        Ok(())
    }

    async fn set_discovery_filter(
        &self,
        #[zbus(header)] header: Header<'_>,
        properties: HashMap<String, OwnedVariant>,
    ) -> Result<(), BluezError> {
        let mut filter = DiscoveryFilter::default();
        for (key, value) in &properties {
            let bad = || BluezError::InvalidArguments("Invalid arguments in method call".into());
            match key.as_str() {
                "UUIDs" => {
                    filter.uuids = Vec::<String>::try_from(value.try_clone().map_err(|_| bad())?)
                        .map_err(|_| bad())?;
                }
                "RSSI" => filter.rssi = Some(i16::try_from(value).map_err(|_| bad())?),
                "Pattern" => {
                    filter.pattern = Some(
                        String::try_from(value.try_clone().map_err(|_| bad())?)
                            .map_err(|_| bad())?,
                    )
                }
                "Transport" => {
                    let t = String::try_from(value.try_clone().map_err(|_| bad())?)
                        .map_err(|_| bad())?;
                    if !["auto", "le", "bredr"].contains(&t.as_str()) {
                        return Err(bad());
                    }
                }
                // Accepted and without effect here: one advertisement per
                // device, no path loss model, no general/limited mode.
                "Pathloss" | "DuplicateData" | "Discoverable" => {}
                _ => return Err(bad()),
            }
        }
        let client = sender(&header);
        let mut adapter = self.registry.adapter();
        if properties.is_empty() {
            adapter.filters.remove(&client);
        } else {
            adapter.filters.insert(client, filter);
        }
        Ok(())
    }

    async fn get_discovery_filters(&self) -> Vec<String> {
        [
            "UUIDs",
            "RSSI",
            "Pathloss",
            "Transport",
            "DuplicateData",
            "Discoverable",
            "Pattern",
        ]
        .map(String::from)
        .to_vec()
    }

    async fn remove_device(
        &self,
        device: OwnedObjectPath,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<(), BluezError> {
        let Some(dev) = self
            .registry
            .devices()
            .into_iter()
            .find(|d| d.path == device && d.state().exported)
        else {
            return Err(BluezError::DoesNotExist("Does Not Exist".into()));
        };
        disconnect(conn, &self.registry, &dev).await?;
        forget_device(server, &dev).await?;
        // Still in range and advertising: a running discovery finds it again.
        let wanted = self.registry.adapter().wants(&dev);
        if wanted {
            export_device(server, &self.registry, &dev).await?;
        }
        Ok(())
    }

    #[zbus(property)]
    async fn address(&self) -> String {
        ADAPTER_ADDRESS.into()
    }

    #[zbus(property)]
    async fn address_type(&self) -> String {
        "public".into()
    }

    #[zbus(property)]
    async fn name(&self) -> String {
        "ulogger-sim".into()
    }

    #[zbus(property)]
    async fn alias(&self) -> String {
        self.registry.adapter().alias.clone()
    }

    #[zbus(property)]
    async fn set_alias(&mut self, alias: String) {
        self.registry.adapter().alias = alias;
    }

    #[zbus(property)]
    async fn class(&self) -> u32 {
        0
    }

    #[zbus(property)]
    async fn powered(&self) -> bool {
        self.registry.adapter().powered
    }

    /// Powering off, as bluetoothd does, ends every discovery session and
    /// drops every link; devices stay on the bus.
    #[zbus(property)]
    async fn set_powered(
        &mut self,
        powered: bool,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<()> {
        let stopped = {
            let mut adapter = self.registry.adapter();
            adapter.powered = powered;
            let discovering = adapter.discovering();
            if !powered {
                adapter.sessions.clear();
            }
            discovering && !powered
        };
        // Powered itself is signalled by zbus after the setter.
        let state = if powered { "on" } else { "off" };
        emit_changed(
            conn,
            ADAPTER_PATH,
            ADAPTER_IFACE,
            vec![("PowerState", Variant::from(state))],
        )
        .await?;
        if powered {
            return Ok(());
        }
        if stopped {
            emit_changed(
                conn,
                ADAPTER_PATH,
                ADAPTER_IFACE,
                vec![("Discovering", Variant::from(false))],
            )
            .await?;
        }
        for dev in self.registry.devices() {
            disconnect(conn, &self.registry, &dev).await?;
        }
        Ok(())
    }

    #[zbus(property)]
    async fn power_state(&self) -> String {
        if self.registry.adapter().powered {
            "on".into()
        } else {
            "off".into()
        }
    }

    #[zbus(property)]
    async fn discoverable(&self) -> bool {
        self.registry.adapter().discoverable
    }

    #[zbus(property)]
    async fn set_discoverable(&mut self, discoverable: bool) {
        self.registry.adapter().discoverable = discoverable;
    }

    #[zbus(property)]
    async fn discoverable_timeout(&self) -> u32 {
        180
    }

    #[zbus(property)]
    async fn pairable(&self) -> bool {
        self.registry.adapter().pairable
    }

    #[zbus(property)]
    async fn set_pairable(&mut self, pairable: bool) {
        self.registry.adapter().pairable = pairable;
    }

    #[zbus(property)]
    async fn pairable_timeout(&self) -> u32 {
        0
    }

    #[zbus(property)]
    async fn discovering(&self) -> bool {
        self.registry.adapter().discovering()
    }

    #[zbus(property, name = "UUIDs")]
    async fn uuids(&self) -> Vec<String> {
        Vec::new()
    }

    #[zbus(property)]
    async fn modalias(&self) -> String {
        "usb:v1D6Bp0246d0542".into()
    }

    #[zbus(property)]
    async fn roles(&self) -> Vec<String> {
        vec!["central".into(), "peripheral".into()]
    }
}

struct DeviceIface {
    dev: Arc<Device>,
    registry: Arc<Registry>,
}

impl DeviceIface {
    async fn connect_le(&self, conn: &Connection, server: &ObjectServer) -> Result<(), BluezError> {
        if !self.registry.adapter().powered {
            return Err(BluezError::NotReady("Resource Not Ready".into()));
        }
        {
            let mut state = self.dev.state();
            if state.connected {
                return Ok(());
            }
            self.dev.connect_attempts.fetch_add(1, Ordering::Relaxed);
            if state.fail_connects || state.blocked || !self.dev.in_range.load(Ordering::Relaxed) {
                // What bluetoothd reports when the connection attempt fails.
                return Err(BluezError::Failed("le-connection-abort-by-local".into()));
            }
            state.connected = true;
            self.dev.connects.fetch_add(1, Ordering::Relaxed);
            self.registry.link_up();
            if self.dev.ulogger_service {
                state.behaviour.connect(Instant::now());
            }
        }
        self.dev.wake.notify_one();
        let path = self.dev.path.as_str();
        emit_changed(
            conn,
            path,
            DEVICE_IFACE,
            vec![("Connected", Variant::from(true))],
        )
        .await?;
        if self.dev.ulogger_service {
            export_gatt(server, &self.dev).await?;
        }
        {
            let mut state = self.dev.state();
            if !state.connected {
                // Lost while resolving: BlueZ fails the pending Connect.
                return Err(BluezError::Failed(
                    "Software caused connection abort".into(),
                ));
            }
            state.services_resolved = true;
        }
        emit_changed(
            conn,
            path,
            DEVICE_IFACE,
            vec![
                (
                    "UUIDs",
                    Variant::from(if self.dev.ulogger_service {
                        vec![SERVICE_UUID.to_owned()]
                    } else {
                        Vec::new()
                    }),
                ),
                ("ServicesResolved", Variant::from(true)),
            ],
        )
        .await?;
        Ok(())
    }
}

#[interface(name = "org.bluez.Device1")]
impl DeviceIface {
    /// Like BlueZ for an LE device, the reply comes once the services are
    /// resolved.
    async fn connect(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<(), BluezError> {
        self.connect_le(conn, server).await
    }

    async fn disconnect(&self, #[zbus(connection)] conn: &Connection) -> Result<(), BluezError> {
        disconnect(conn, &self.registry, &self.dev).await?;
        Ok(())
    }

    /// ConnectProfile is BlueZ's BR/EDR profile connection; the uLogger
    /// service is taken as a request to connect (real BlueZ refuses it for
    /// an LE-only device), anything else fails as BlueZ does.
    async fn connect_profile(
        &self,
        uuid: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<(), BluezError> {
        if uuid.eq_ignore_ascii_case(SERVICE_UUID) {
            self.connect_le(conn, server).await
        } else {
            Err(BluezError::Failed(
                "br-connection-profile-unavailable".into(),
            ))
        }
    }

    async fn disconnect_profile(
        &self,
        uuid: String,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BluezError> {
        if uuid.eq_ignore_ascii_case(SERVICE_UUID) {
            disconnect(conn, &self.registry, &self.dev).await?;
            Ok(())
        } else {
            Err(BluezError::Failed(
                "br-connection-profile-unavailable".into(),
            ))
        }
    }

    /// Just Works pairing: the firmware asks for no security (PROTOCOL §6).
    async fn pair(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), BluezError> {
        {
            let mut state = self.dev.state();
            if state.paired {
                return Err(BluezError::AlreadyExists("Already Exists".into()));
            }
            state.paired = true;
        }
        self.paired_changed(&emitter).await?;
        self.bonded_changed(&emitter).await?;
        Ok(())
    }

    async fn cancel_pairing(&self) -> Result<(), BluezError> {
        Err(BluezError::DoesNotExist("Does Not Exist".into()))
    }

    #[zbus(property)]
    async fn address(&self) -> String {
        self.dev.address.clone()
    }

    #[zbus(property)]
    async fn address_type(&self) -> String {
        self.dev.address_type.into()
    }

    #[zbus(property)]
    async fn name(&self) -> String {
        self.dev.name.clone()
    }

    #[zbus(property)]
    async fn alias(&self) -> String {
        self.dev
            .state()
            .alias
            .clone()
            .unwrap_or_else(|| self.dev.name.clone())
    }

    /// An empty alias goes back to the name, as in BlueZ.
    #[zbus(property)]
    async fn set_alias(&mut self, alias: String) {
        self.dev.state().alias = (!alias.is_empty()).then_some(alias);
    }

    #[zbus(property)]
    async fn adapter(&self) -> OwnedObjectPath {
        OwnedObjectPath::from(ObjectPath::from_static_str_unchecked(ADAPTER_PATH))
    }

    #[zbus(property, name = "RSSI")]
    async fn rssi(&self) -> i16 {
        self.dev.state().rssi
    }

    #[zbus(property)]
    async fn connected(&self) -> bool {
        self.dev.state().connected
    }

    #[zbus(property)]
    async fn services_resolved(&self) -> bool {
        self.dev.state().services_resolved
    }

    /// Nothing from the advertisement (the firmware advertises no UUID);
    /// the GATT service once it has been resolved.
    #[zbus(property, name = "UUIDs")]
    async fn uuids(&self) -> Vec<String> {
        if self.dev.state().gatt_exported {
            vec![SERVICE_UUID.to_owned()]
        } else {
            Vec::new()
        }
    }

    #[zbus(property)]
    async fn paired(&self) -> bool {
        self.dev.state().paired
    }

    #[zbus(property)]
    async fn bonded(&self) -> bool {
        self.dev.state().paired
    }

    #[zbus(property)]
    async fn trusted(&self) -> bool {
        self.dev.state().trusted
    }

    #[zbus(property)]
    async fn set_trusted(&mut self, trusted: bool) {
        self.dev.state().trusted = trusted;
    }

    #[zbus(property)]
    async fn blocked(&self) -> bool {
        self.dev.state().blocked
    }

    #[zbus(property)]
    async fn set_blocked(&mut self, blocked: bool) {
        self.dev.state().blocked = blocked;
    }

    #[zbus(property)]
    async fn legacy_pairing(&self) -> bool {
        false
    }
}

struct ServiceIface {
    dev: Arc<Device>,
}

#[interface(name = "org.bluez.GattService1")]
impl ServiceIface {
    #[zbus(property, name = "UUID")]
    async fn uuid(&self) -> String {
        SERVICE_UUID.into()
    }

    #[zbus(property)]
    async fn primary(&self) -> bool {
        true
    }

    #[zbus(property)]
    async fn device(&self) -> OwnedObjectPath {
        self.dev.path.clone()
    }

    #[zbus(property)]
    async fn includes(&self) -> Vec<OwnedObjectPath> {
        Vec::new()
    }

    #[zbus(property)]
    async fn handle(&self) -> u16 {
        SERVICE_HANDLE
    }
}

struct CharIface {
    dev: Arc<Device>,
    ch: Characteristic,
}

fn option_u16(options: &HashMap<String, OwnedVariant>, key: &str) -> Result<u16, BluezError> {
    match options.get(key) {
        None => Ok(0),
        Some(v) => u16::try_from(v)
            .map_err(|_| BluezError::InvalidArguments("Invalid arguments in method call".into())),
    }
}

#[interface(name = "org.bluez.GattCharacteristic1")]
impl CharIface {
    async fn read_value(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<u8>, BluezError> {
        if !self.ch.can_read() {
            return Err(BluezError::NotPermitted("Read not permitted".into()));
        }
        let offset = usize::from(option_u16(&options, "offset")?);
        let value = {
            let mut state = self.dev.state();
            if !state.connected {
                return Err(not_connected());
            }
            let value = state.behaviour.read(self.ch).map_err(|e| match e {
                ReadError::NotFound => BluezError::Failed("Attribute Not Found".into()),
                ReadError::Failed(m) => BluezError::Failed(m),
            })?;
            let Some(tail) = value.get(offset..) else {
                return Err(BluezError::InvalidOffset("Invalid offset".into()));
            };
            let tail = tail.to_vec();
            state.values[self.ch.index()].clone_from(&value);
            tail
        };
        // BlueZ caches what it read as Value and says so.
        let cached = self.dev.state().values[self.ch.index()].clone();
        emit_changed(
            conn,
            &self.dev.char_path(self.ch),
            CHAR_IFACE,
            vec![("Value", Variant::from(cached))],
        )
        .await?;
        Ok(value)
    }

    /// `type` is `request` (default), `command` (write without response)
    /// or `reliable`; only offset 0 is supported (no prepared writes).
    async fn write_value(
        &self,
        value: Vec<u8>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), BluezError> {
        let kind = match options.get("type") {
            None => "request".to_owned(),
            Some(v) => String::try_from(v.try_clone().map_err(BluezError::from_zvariant)?)
                .map_err(BluezError::from_zvariant)?,
        };
        let allowed = match kind.as_str() {
            "request" => self.ch.can_write_request(),
            "command" => self.ch.can_write_command(),
            "reliable" => false,
            _ => {
                return Err(BluezError::InvalidArguments(
                    "Invalid arguments in method call".into(),
                ))
            }
        };
        if !allowed {
            return Err(BluezError::NotPermitted("Write not permitted".into()));
        }
        if option_u16(&options, "offset")? != 0 {
            return Err(BluezError::NotSupported(
                "Operation is not supported".into(),
            ));
        }
        {
            let mut state = self.dev.state();
            if !state.connected {
                return Err(not_connected());
            }
            if state.write_io[self.ch.index()].is_some() {
                return Err(BluezError::NotPermitted("Write acquired".into()));
            }
            let out = state.behaviour.write(self.ch, &value, Instant::now());
            self.dev.send(out);
        }
        self.dev.wake.notify_one();
        Ok(())
    }

    async fn start_notify(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), BluezError> {
        if !self.ch.can_notify() {
            return Err(BluezError::NotSupported(
                "Operation is not supported".into(),
            ));
        }
        let first = {
            let mut state = self.dev.state();
            if !state.connected {
                return Err(not_connected());
            }
            if state.notify_io[self.ch.index()].is_some() {
                return Err(BluezError::NotPermitted("Notify acquired".into()));
            }
            let sessions = &mut state.notify_sessions[self.ch.index()];
            if !sessions.insert(sender(&header)) {
                return Err(BluezError::InProgress("In Progress".into()));
            }
            sessions.len() == 1
        };
        if first {
            self.notifying_changed(&emitter).await?;
        }
        Ok(())
    }

    /// Notifications through a socket instead of `PropertiesChanged`: one
    /// datagram each; closing the socket ends them. Returns the socket and
    /// the ATT MTU.
    async fn acquire_notify(
        &self,
        _options: HashMap<String, OwnedVariant>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(zbus::OwnedFd, u16), BluezError> {
        if !self.ch.can_notify() {
            return Err(BluezError::NotSupported(
                "Operation is not supported".into(),
            ));
        }
        self.acquire(conn, Acquired::Notify).await
    }

    /// Writes without response through a socket: each datagram the client
    /// sends is one write. Returns the socket and the ATT MTU.
    async fn acquire_write(
        &self,
        _options: HashMap<String, OwnedVariant>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(zbus::OwnedFd, u16), BluezError> {
        if !self.ch.can_write_command() {
            return Err(BluezError::NotSupported(
                "Operation is not supported".into(),
            ));
        }
        self.acquire(conn, Acquired::Write).await
    }

    async fn stop_notify(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), BluezError> {
        let last = {
            let mut state = self.dev.state();
            let sessions = &mut state.notify_sessions[self.ch.index()];
            if !sessions.remove(&sender(&header)) {
                return Err(BluezError::Failed("No notify session started".into()));
            }
            sessions.is_empty()
        };
        if last {
            self.notifying_changed(&emitter).await?;
        }
        Ok(())
    }

    #[zbus(property, name = "UUID")]
    async fn uuid(&self) -> String {
        self.ch.uuid().into()
    }

    #[zbus(property)]
    async fn service(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(self.dev.service_path()).unwrap_or_else(|_| self.dev.path.clone())
    }

    #[zbus(property)]
    async fn value(&self) -> Vec<u8> {
        self.dev.state().values[self.ch.index()].clone()
    }

    #[zbus(property)]
    async fn notifying(&self) -> bool {
        self.dev.state().notifying(self.ch)
    }

    #[zbus(property)]
    async fn notify_acquired(&self) -> bool {
        self.dev.state().notify_io[self.ch.index()].is_some()
    }

    #[zbus(property)]
    async fn write_acquired(&self) -> bool {
        self.dev.state().write_io[self.ch.index()].is_some()
    }

    #[zbus(property)]
    async fn flags(&self) -> Vec<String> {
        self.ch.flags().iter().map(|f| (*f).to_owned()).collect()
    }

    #[zbus(property, name = "MTU")]
    async fn mtu(&self) -> u16 {
        ATT_MTU
    }

    #[zbus(property)]
    async fn handle(&self) -> u16 {
        char_handle(self.ch)
    }
}

/// The Client Characteristic Configuration descriptor of a notifying
/// characteristic. BlueZ lists it but keeps it to itself: clients turn
/// notifications on with StartNotify or AcquireNotify, and a write is
/// refused.
struct CccIface {
    dev: Arc<Device>,
    ch: Characteristic,
}

/// The CCC descriptor's 16-bit UUID in the Bluetooth base UUID.
const CCC_UUID: &str = "00002902-0000-1000-8000-00805f9b34fb";

#[interface(name = "org.bluez.GattDescriptor1")]
impl CccIface {
    async fn read_value(
        &self,
        _options: HashMap<String, OwnedVariant>,
    ) -> Result<Vec<u8>, BluezError> {
        let state = self.dev.state();
        if !state.connected {
            return Err(not_connected());
        }
        Ok(vec![u8::from(state.notifying(self.ch)), 0])
    }

    async fn write_value(
        &self,
        _value: Vec<u8>,
        _options: HashMap<String, OwnedVariant>,
    ) -> Result<(), BluezError> {
        Err(BluezError::NotPermitted("Write not permitted".into()))
    }

    #[zbus(property, name = "UUID")]
    async fn uuid(&self) -> String {
        CCC_UUID.into()
    }

    #[zbus(property)]
    async fn characteristic(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(self.dev.char_path(self.ch))
            .unwrap_or_else(|_| self.dev.path.clone())
    }

    #[zbus(property)]
    async fn value(&self) -> Vec<u8> {
        Vec::new()
    }

    #[zbus(property)]
    async fn handle(&self) -> u16 {
        char_handle(self.ch) + 2
    }
}

impl CharIface {
    async fn acquire(
        &self,
        conn: &Connection,
        kind: Acquired,
    ) -> Result<(zbus::OwnedFd, u16), BluezError> {
        let (ours, theirs) =
            seqpacket_pair().map_err(|e| BluezError::Failed(format!("socketpair: {e}")))?;
        let ours = Arc::new(ours);
        {
            let mut state = self.dev.state();
            if !state.connected {
                return Err(not_connected());
            }
            if kind == Acquired::Notify && !state.notify_sessions[self.ch.index()].is_empty() {
                return Err(BluezError::NotPermitted("Notify already started".into()));
            }
            let slot = state.acquired(kind, self.ch);
            if slot.is_some() {
                return Err(BluezError::NotPermitted(match kind {
                    Acquired::Notify => "Notify acquired".into(),
                    Acquired::Write => "Write acquired".into(),
                }));
            }
            let task = tokio::spawn(serve_acquired(
                conn.clone(),
                self.dev.clone(),
                self.ch,
                kind,
                ours.clone(),
            ));
            *slot = Some(AcquiredIo { fd: ours, task });
        }
        let mut changes = vec![(kind.property(), Variant::from(true))];
        if kind == Acquired::Notify {
            changes.push(("Notifying", Variant::from(true)));
        }
        emit_changed(conn, &self.dev.char_path(self.ch), CHAR_IFACE, changes).await?;
        Ok((zbus::OwnedFd::from(theirs), ATT_MTU))
    }
}

impl BluezError {
    fn from_zvariant(_: zbus::Error) -> Self {
        BluezError::InvalidArguments("Invalid arguments in method call".into())
    }
}
