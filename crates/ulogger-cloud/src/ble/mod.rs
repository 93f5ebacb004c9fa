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
use bluer::{AdapterEvent, Device, Session, Uuid};
use futures_util::stream::{self, Stream, StreamExt};

use crate::wire::{
    self, BlePull, BufferKind, Characteristic, DeviceInfo, PullAction, PullConfig, PullSummary,
};
use crate::{Client, Error, ErrorKind, RecordId};

/// A device's Bluetooth address (`AA:BB:CC:DD:EE:FF`), re-exported from
/// bluer so callers need not depend on it; it parses with `str::parse`.
pub use bluer::Address;

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
            "{}: {} log(s), {} core dump(s) stored, {} rejected, {} bytes, {} re-sent ack(s), {} dropped notification(s)",
            self.device.serial,
            logs,
            self.stored.len() - logs,
            self.rejected.len(),
            self.summary.bytes,
            self.summary.reacks,
            self.summary.dropped
        )
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
    let session = Session::new()
        .await
        .map_err(|e| ble("connecting to bluetoothd over D-Bus", e))?;
    let adapter = session
        .adapter(adapter_name)
        .map_err(|e| ble("opening the adapter", e))?;
    let device =
        match tokio::time::timeout(options.connect_timeout, connect(&adapter, address)).await {
            Ok(connected) => connected?,
            Err(_) => {
                // A connect cut short may still complete in bluetoothd: undo
                // it, or the device would stay linked to a gateway gone away.
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
    let outcome = pull_connected(client, &device, options).await;
    // Always let the link go: the device serves one central at a time, and
    // a link left up would keep it from advertising to the next pull.
    if let Err(e) = device.disconnect().await {
        tracing::warn!(%address, error = %e, "disconnecting after the pull failed");
    }
    outcome
}

/// Finds the device (discovering it if BlueZ does not list it: BlueZ only
/// knows devices it saw) and connects, unless a link already exists (a
/// gateway restarted while BlueZ kept its link).
async fn connect(adapter: &bluer::Adapter, address: Address) -> Result<Device, Error> {
    let known = adapter
        .device_addresses()
        .await
        .map_err(|e| ble("listing the adapter's devices", e))?;
    if !known.contains(&address) {
        // Discovery lasts as long as this stream; dropped once it is found.
        let mut events = Box::pin(
            adapter
                .discover_devices()
                .await
                .map_err(|e| ble("starting discovery", e))?,
        );
        loop {
            match events.next().await {
                Some(AdapterEvent::DeviceAdded(found)) if found == address => break,
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
    let device = adapter
        .device(address)
        .map_err(|e| ble("opening the device", e))?;
    let connected = device
        .is_connected()
        .await
        .map_err(|e| ble("reading the device's state", e))?;
    if !connected {
        device.connect().await.map_err(|e| ble("connecting", e))?;
    }
    Ok(device)
}

/// The uLogger characteristics a pull uses.
struct Gatt {
    config: GattCharacteristic,
    log_data: GattCharacteristic,
    log_ack: GattCharacteristic,
    core_dump_data: GattCharacteristic,
}

async fn find_gatt(device: &Device) -> Result<Gatt, Error> {
    let step = "resolving the uLogger service";
    let mut service = None;
    for candidate in device.services().await.map_err(|e| ble(step, e))? {
        if candidate.uuid().await.map_err(|e| ble(step, e))? == SERVICE_UUID {
            service = Some(candidate);
            break;
        }
    }
    // Not a D-Bus failure but the device's answer: no retry will help.
    let step = crate::error::BLE_NOT_ULOGGER;
    let Some(service) = service else {
        return Err(ErrorKind::Ble {
            step,
            reason: format!(
                "the device has no uLogger service ({SERVICE_UUID}): not a uLogger device?"
            ),
        }
        .into());
    };
    let (mut config, mut log_data, mut log_ack, mut core_dump_data) = (None, None, None, None);
    let resolving = "resolving the uLogger service";
    for ch in service
        .characteristics()
        .await
        .map_err(|e| ble(resolving, e))?
    {
        match ch.uuid().await.map_err(|e| ble(resolving, e))? {
            CONFIG_UUID => config = Some(ch),
            LOG_DATA_UUID => log_data = Some(ch),
            LOG_ACK_UUID => log_ack = Some(ch),
            CORE_DUMP_DATA_UUID => core_dump_data = Some(ch),
            _ => {}
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
    })
}

type Notifications = Pin<Box<dyn Stream<Item = (Characteristic, Vec<u8>)> + Send>>;

/// Resolves services, reads `config` and subscribes: the "services" phase.
async fn prepare(device: &Device) -> Result<(Gatt, DeviceInfo, Notifications), Error> {
    let gatt = find_gatt(device).await?;
    let value = gatt
        .config
        .read()
        .await
        .map_err(|e| ble("reading config", e))?;
    let info = wire::decode_ble_config(&value).map_err(|e| ErrorKind::Ble {
        step: crate::error::BLE_BAD_CONFIG,
        reason: e.to_string(),
    })?;
    let step = "subscribing to notifications";
    let logs = gatt.log_data.notify().await.map_err(|e| ble(step, e))?;
    let dumps = gatt
        .core_dump_data
        .notify()
        .await
        .map_err(|e| ble(step, e))?;
    let notifications: Notifications = Box::pin(stream::select(
        logs.map(|v| (Characteristic::LogData, v)),
        dumps.map(|v| (Characteristic::CoreDumpData, v)),
    ));
    Ok((gatt, info, notifications))
}

async fn pull_connected(
    client: &Client,
    device: &Device,
    options: PullOptions,
) -> Result<PullReport, Error> {
    let (gatt, info, mut notifications) =
        tokio::time::timeout(options.services_timeout, prepare(device))
            .await
            .map_err(|_| {
                timed_out(
                    "resolving services, reading config and subscribing",
                    options.services_timeout,
                )
            })??;
    let mut report = PullReport {
        device: info,
        stored: Vec::new(),
        rejected: Vec::new(),
        summary: PullSummary::default(),
    };
    let mut pull = BlePull::new(options.pull, Instant::now());
    let options = &options;
    let mut action = pull.poll(Instant::now());
    loop {
        match action {
            PullAction::WriteAck(ack) => {
                write_ack(&gatt.log_ack, ack, options.write_timeout).await?;
            }
            PullAction::Deliver(mut delivery) => {
                let kind = delivery.kind;
                if kind == BufferKind::Log && options.stamp_epoch_time {
                    stamp_arrival(&mut delivery.data, delivery.header_arrived_at);
                }
                let stored = match kind {
                    BufferKind::Log => client.enqueue_log(&report.device, &delivery.data).await,
                    BufferKind::CoreDump => client.enqueue_core_dump(&delivery.data).await,
                };
                // The outbox call returned: from here on the buffer survives
                // a crash, and only now may the device be told to erase it.
                let now = Instant::now();
                let next = match stored {
                    Ok(record) => {
                        report.stored.push(StoredBuffer {
                            kind,
                            record,
                            len: delivery.data.len(),
                            durable_at: now,
                        });
                        pull.durable(delivery.id, now)
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::InvalidLog(_)) => {
                        let reason = e.to_string();
                        // The outbox directory exists: the log was just
                        // refused by it.
                        let dir = match &options.rejected_dir {
                            Some(dir) => dir.clone(),
                            None => client.outbox()?.dir().join(DEFAULT_REJECTED_DIR),
                        };
                        let file = Some(
                            keep_rejected(
                                &dir,
                                &report.device.serial,
                                report.rejected.len(),
                                &delivery.data,
                                &reason,
                            )
                            .await?,
                        );
                        tracing::warn!(serial = %report.device.serial, error = %e, file = ?file, "a log from the device failed validation; acknowledged so it is not re-sent for ever");
                        report.rejected.push(RejectedBuffer {
                            kind,
                            reason,
                            data: delivery.data,
                            file,
                        });
                        pull.rejected_durably(delivery.id, Instant::now())
                    }
                    // Not stored: no final ack, the device keeps the buffer.
                    Err(e) => return Err(e),
                };
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
        let deadline = pull.deadline();
        action = tokio::select! {
            notified = notifications.next() => match notified {
                Some((from, value)) => pull.on_notification(from, &value, Instant::now()),
                None => {
                    return Err(ErrorKind::Ble {
                        step: "receiving",
                        reason: "the notifications ended: the link was lost".into(),
                    }
                    .into())
                }
            },
            () = until(deadline) => pull.poll(Instant::now()),
        };
    }
}

/// Writes an ack without response, as the device expects (PROTOCOL §6).
async fn write_ack(
    log_ack: &GattCharacteristic,
    ack: [u8; 2],
    limit: Duration,
) -> Result<(), Error> {
    let request = CharacteristicWriteRequest {
        op_type: WriteOp::Command,
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
const DEFAULT_REJECTED_DIR: &str = "ble-rejected";

async fn keep_rejected(
    dir: &Path,
    serial: &str,
    n: usize,
    data: &[u8],
    reason: &str,
) -> Result<PathBuf, Error> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // The serial comes from the device: keep only what is safe in a name.
    let serial: String = serial
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{serial}-{millis}-{n}.log"));
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

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
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
