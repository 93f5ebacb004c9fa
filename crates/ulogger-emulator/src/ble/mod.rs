//! Simulated BLE devices: the device side of the uLogger BLE service
//! (PROTOCOL §6) as the firmware behaves, sans I/O, for tests and for
//! showing the whole path without hardware. A transport (e.g. a fake BlueZ
//! on D-Bus) drives a [`SimDevice`] with writes and the time, and sends
//! the [`Notify`] values it returns.

mod device;
#[cfg(test)]
mod device_tests;

pub use device::{DeviceEvent, Erased, Notify, SimDevice, CORE_DUMP_DELAY, TICK};
