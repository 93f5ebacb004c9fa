//! The emulator's firmware model (`SimDevice`) as a [`DeviceBehaviour`],
//! so a simulated device behaves as the demo firmware does.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::{Characteristic, DeviceBehaviour, Notification, ReadError};
use ulogger_emulator::ble::{Notify, SimDevice};

/// The firmware's state machine behind the D-Bus layer; clones share it,
/// so a test keeps one to look at what the device erased and when.
#[derive(Clone)]
pub struct Firmware(pub Arc<Mutex<SimDevice>>);

impl Firmware {
    /// `device` behind the simulated BlueZ.
    pub fn new(device: SimDevice) -> Self {
        Firmware(Arc::new(Mutex::new(device)))
    }

    /// The device's state. A panic elsewhere while it was held does not
    /// hide it: the state machine has no invariant a half-done call breaks
    /// that a test could not see.
    pub fn device(&self) -> MutexGuard<'_, SimDevice> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn notifications(out: Vec<Notify>) -> Vec<Notification> {
    out.into_iter()
        .map(|n| match n {
            Notify::LogData(bytes) => (Characteristic::LogData, bytes),
            Notify::CoreDumpData(bytes) => (Characteristic::CoreDumpData, bytes),
        })
        .collect()
}

impl DeviceBehaviour for Firmware {
    fn connect(&mut self, now: Instant) {
        self.device().connect(now);
    }

    fn disconnect(&mut self) {
        self.device().disconnect();
    }

    fn read(&mut self, ch: Characteristic) -> Result<Vec<u8>, ReadError> {
        let device = self.device();
        match ch {
            Characteristic::Config => Ok(device.read_config()),
            Characteristic::Rssi => device
                .rssi()
                .map(|rssi| rssi.to_le_bytes().to_vec())
                .ok_or(ReadError::NotFound),
            _ => Err(ReadError::Failed("Read not permitted".into())),
        }
    }

    fn write(&mut self, ch: Characteristic, value: &[u8], now: Instant) -> Vec<Notification> {
        let mut device = self.device();
        match ch {
            Characteristic::LogAck => notifications(device.write_log_ack(value, now)),
            Characteristic::LogConfig => {
                device.write_log_config(value);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn tick(&mut self, now: Instant) -> Vec<Notification> {
        notifications(self.device().tick(now))
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.device().next_deadline()
    }
}
