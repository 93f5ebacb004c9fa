//! The emulator's firmware model behind the simulated BlueZ, shared by
//! the tests that pull a device over D-Bus.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use ulogger_ble_sim::{Characteristic, DeviceBehaviour, Notification, ReadError};
use ulogger_emulator::ble::{Notify, SimDevice};

/// The firmware's state machine behind the D-Bus layer, shared with the
/// test so it can look at what the device erased and when.
#[derive(Clone)]
pub struct Firmware(pub Arc<Mutex<SimDevice>>);

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
        self.0.lock().unwrap().connect(now);
    }

    fn disconnect(&mut self) {
        self.0.lock().unwrap().disconnect();
    }

    fn read(&mut self, ch: Characteristic) -> Result<Vec<u8>, ReadError> {
        let device = self.0.lock().unwrap();
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
        let mut device = self.0.lock().unwrap();
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
        notifications(self.0.lock().unwrap().tick(now))
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.0.lock().unwrap().next_deadline()
    }
}
