//! Simulated BlueZ for uLogger devices: the D-Bus surface of `bluetoothd`
//! on a private bus, so a BLE gateway's real BlueZ client code (bluer,
//! bleak, anything speaking BlueZ's D-Bus API) can be tested without a
//! radio.
//!
//! - [`PrivateBus`] starts a private `dbus-daemon`; its address goes in
//!   `DBUS_SYSTEM_BUS_ADDRESS`.
//! - [`FakeBluez`] owns `org.bluez` on that bus and exports what BlueZ 5
//!   exports: `ObjectManager` at `/`, `Adapter1` at `/org/bluez/hci0`,
//!   `Device1` per device (after `StartDiscovery`, as BlueZ), and the
//!   uLogger `GattService1`/`GattCharacteristic1` objects once connected.
//! - Behind each device sits a [`DeviceBehaviour`]: the firmware's state
//!   machine, which the D-Bus layer calls on connect, read, write and time.
//! - A [`DeviceHandle`] holds the radio's faults: failing connects, lost
//!   notifications, a dropped link, a device out of range.
//!
//! Notifications reach clients as BlueZ sends them: `PropertiesChanged` on
//! `Value` after `StartNotify`, or datagrams on `AcquireNotify`'s socket;
//! writes come through `WriteValue` or `AcquireWrite`'s socket. Decision 26
//! in `docs/decisions.md` lists what of BlueZ is reproduced and what not.
//!
//! ```no_run
//! # async fn demo(behaviour: Box<dyn ulogger_ble_sim::DeviceBehaviour>) -> Result<(), ulogger_ble_sim::Error> {
//! use ulogger_ble_sim::{FakeBluez, PrivateBus, SimulatedDevice};
//!
//! let bus = PrivateBus::start()?;
//! let bluez = FakeBluez::start(bus.address()).await?;
//! let device = bluez
//!     .add_device(SimulatedDevice::new("AA:BB:CC:DD:EE:FF", "uLogger Example", behaviour))
//!     .await?;
//! // A client on bus.address() now sees org.bluez; device.set_fail_connects(true)
//! // and device.drop_link() are the radio's faults.
//! # Ok(()) }
//! ```

mod behaviour;
mod bluez;
mod bus;
mod firmware;

pub use behaviour::{Characteristic, DeviceBehaviour, Notification, ReadError, SERVICE_UUID};
pub use bluez::{DeviceHandle, FakeBluez, SimulatedDevice, ADAPTER_PATH};
pub use bus::{PrivateBus, PrivateBusBuilder};
pub use firmware::Firmware;

/// What went wrong starting or driving the simulation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file, directory or process could not be made.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The private bus's daemon did not come up.
    #[error("the private D-Bus daemon did not start: {0}")]
    BusStart(String),
    /// Something did not happen in time (what is named).
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// D-Bus said no (connecting, owning `org.bluez`, exporting an object).
    #[error("D-Bus error: {0}")]
    DBus(#[from] zbus::Error),
    /// A device address that is not six `:`-separated hex bytes.
    #[error("invalid Bluetooth address {0:?} (expected AA:BB:CC:DD:EE:FF)")]
    InvalidAddress(String),
    /// A device with this address was added already.
    #[error("a device with address {0} exists already")]
    DuplicateDevice(String),
}

impl Error {
    /// Whether this is a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }
}

#[allow(dead_code)]
fn _assert_impls() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Error>();
    send_sync::<FakeBluez>();
    send_sync::<DeviceHandle>();
}
