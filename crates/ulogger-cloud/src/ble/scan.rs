//! Looking around before pulling: which devices the adapter sees
//! ([`scan`]) and which of them are uLogger devices ([`identify`]).
//!
//! The uLogger service UUID is not advertised (PROTOCOL §6), so discovery
//! is never filtered by service: only connecting tells a uLogger device
//! from a phone.

use std::collections::BTreeSet;
use std::time::Duration;

use bluer::{Adapter, AdapterEvent};
use futures_util::StreamExt;

use super::{ble, connect, find_gatt, timed_out, Address, BleSession, SERVICE_UUID};
use crate::wire::{self, DeviceInfo};
use crate::{Error, ErrorKind};

/// A device the adapter saw while [`scan`] discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeenDevice {
    /// Its Bluetooth address.
    pub address: Address,
    /// The name it advertises (`uLogger Example` in the demo firmware), if
    /// BlueZ learnt one.
    pub name: Option<String>,
    /// The last advertisement's signal strength in dBm, if BlueZ has one
    /// (a connected device does not advertise).
    pub rssi: Option<i16>,
    /// Whether BlueZ holds a link to it already (a gateway killed during a
    /// pull leaves one; such a device no longer advertises).
    pub connected: bool,
    /// Whether its resolved services include the uLogger service: `None`
    /// until BlueZ resolved them (after a connection), since the service
    /// is not advertised.
    pub ulogger_service: Option<bool>,
}

/// Discovers on adapter `adapter_name` (`hci0`) for `duration` and returns
/// every device BlueZ lists at the end, in address order: those it knew
/// before (possibly out of range by now, as BlueZ keeps a device about
/// 30 s after its last advertisement) and those found meanwhile.
///
/// Discovery is not filtered by service: uLogger devices do not advertise
/// theirs.
///
/// ```no_run
/// # async fn demo() -> Result<(), ulogger_cloud::Error> {
/// use std::time::Duration;
/// for seen in ulogger_cloud::ble::scan("hci0", Duration::from_secs(5)).await? {
///     println!("{} {:?} {:?} dBm", seen.address, seen.name, seen.rssi);
/// }
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`ErrorKind::Ble`] when bluetoothd cannot be reached over D-Bus (not
/// running, or no permission: the user needs the `bluetooth` group or a
/// D-Bus policy allowing `org.bluez`), the adapter does not exist, or
/// discovery cannot start (the adapter is powered off).
pub async fn scan(adapter_name: &str, duration: Duration) -> Result<Vec<SeenDevice>, Error> {
    let bluetooth = BleSession::new().await?;
    let adapter = bluetooth
        .session()
        .adapter(adapter_name)
        .map_err(|e| ble("opening the adapter", e))?;
    let mut events = Box::pin(
        adapter
            .discover_devices()
            .await
            .map_err(|e| ble("starting discovery", e))?,
    );
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + duration;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(AdapterEvent::DeviceAdded(address))) => {
                seen.insert(address);
            }
            Ok(Some(AdapterEvent::DeviceRemoved(address))) => {
                seen.remove(&address);
            }
            Ok(Some(_)) => {}
            // Discovery ended (the adapter went off) or the time is up.
            Ok(None) | Err(_) => break,
        }
    }
    drop(events);
    let mut out = Vec::with_capacity(seen.len());
    for address in seen {
        // Removed meanwhile: BlueZ forgot it, so do we.
        if let Some(device) = describe(&adapter, address).await {
            out.push(device);
        }
    }
    Ok(out)
}

/// What BlueZ says about a device, or `None` when it no longer lists it.
pub(super) async fn describe(adapter: &Adapter, address: Address) -> Option<SeenDevice> {
    let device = adapter.device(address).ok()?;
    let connected = device.is_connected().await.ok()?;
    let name = device.name().await.ok().flatten();
    let rssi = device.rssi().await.ok().flatten();
    let resolved = device.is_services_resolved().await.unwrap_or(false);
    let ulogger_service = if resolved {
        let uuids = device.uuids().await.ok().flatten().unwrap_or_default();
        Some(uuids.contains(&SERVICE_UUID))
    } else {
        None
    };
    Some(SeenDevice {
        address,
        name,
        rssi,
        connected,
        ulogger_service,
    })
}

/// Connects to `address` on adapter `adapter_name`, reads and decodes its
/// `config` characteristic (PROTOCOL §4) and disconnects, within
/// `timeout` in all. Nothing is pulled, acknowledged or erased. A device
/// linked already (a pull under way in a gateway, say) is read over that
/// link, which is left up.
///
/// ```no_run
/// # async fn demo() -> Result<(), ulogger_cloud::Error> {
/// use std::time::Duration;
/// let address = "AA:BB:CC:DD:EE:FF".parse().expect("an address");
/// let info = ulogger_cloud::ble::identify("hci0", address, Duration::from_secs(20)).await?;
/// println!("{} (app {})", info.serial, info.app_id);
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`ErrorKind::Ble`]: with step `checking the uLogger service` when the
/// device has no uLogger service (not a uLogger device), `decoding
/// config` when its identity is malformed (both
/// [`Error::is_invalid_input`]); otherwise BlueZ's failure or the
/// timeout (retryable).
pub async fn identify(
    adapter_name: &str,
    address: Address,
    timeout: Duration,
) -> Result<DeviceInfo, Error> {
    let bluetooth = BleSession::new().await?;
    let adapter = bluetooth
        .session()
        .adapter(adapter_name)
        .map_err(|e| ble("opening the adapter", e))?;
    let linked_before = match adapter.device(address) {
        Ok(device) => device.is_connected().await.unwrap_or(false),
        Err(_) => false,
    };
    let outcome = tokio::time::timeout(timeout, async {
        let device = connect(&adapter, address).await?;
        let gatt = find_gatt(&bluetooth.tree, adapter_name, &device).await?;
        let value = gatt
            .config
            .read()
            .await
            .map_err(|e| ble("reading config", e))?;
        wire::decode_ble_config(&value).map_err(|e| {
            Error::from(ErrorKind::Ble {
                step: crate::error::BLE_BAD_CONFIG,
                reason: e.to_string(),
            })
        })
    })
    .await
    .unwrap_or_else(|_| {
        Err(timed_out(
            "connecting, resolving services and reading config",
            timeout,
        ))
    });
    // Let a link made here go whatever happened: the device serves one
    // central at a time and does not advertise while linked. Bounded, best
    // effort. A link that was there before is someone else's.
    if linked_before {
        return outcome;
    }
    if let Ok(device) = adapter.device(address) {
        if device.is_connected().await.unwrap_or(false) {
            let _ = tokio::time::timeout(Duration::from_secs(5), device.disconnect()).await;
        }
    }
    outcome
}
