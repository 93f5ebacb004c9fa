//! A small device behaviour and D-Bus client helpers for the tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ulogger_ble_sim::{Characteristic, DeviceBehaviour, Notification, ReadError};
use zbus::fdo::{ObjectManagerProxy, PropertiesProxy};
use zbus::names::InterfaceName;
use zbus::{Connection, OwnedVariant};

/// Every await in the tests is bounded by this: a hang fails, it never stalls CI.
pub const STEP: Duration = Duration::from_secs(10);

pub const DEVICE: &str = "AA:BB:CC:DD:EE:FF";
pub const DEVICE_PATH: &str = "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF";
pub const NAME: &str = "uLogger Example";

/// What the test device saw, shared with the test.
#[derive(Debug, Default)]
pub struct Record {
    pub acks: Vec<u16>,
    pub erased: bool,
    pub log_configs: Vec<Vec<u8>>,
}

/// Sends a fixed buffer in 16-byte chunks (PROTOCOL §6 framing): all of it
/// on ack 0, the chunk at the offset on any other ack, nothing after an ack
/// at or past the end, which erases the buffer. With `auto_start`, chunk 0
/// goes out by itself that long after a connect, as the firmware's timer.
pub struct ChunkSender {
    pub data: Vec<u8>,
    pub config: Vec<u8>,
    pub auto_start: Option<Duration>,
    pub record: Arc<Mutex<Record>>,
    connected: bool,
    deadline: Option<Instant>,
}

impl ChunkSender {
    pub fn new(data: Vec<u8>, config: Vec<u8>) -> (Self, Arc<Mutex<Record>>) {
        let record = Arc::new(Mutex::new(Record::default()));
        (
            Self {
                data,
                config,
                auto_start: None,
                record: record.clone(),
                connected: false,
                deadline: None,
            },
            record,
        )
    }

    fn chunk(&self, offset: usize) -> Notification {
        let end = (offset + 16).min(self.data.len());
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(&(offset as u16).to_le_bytes());
        out.extend_from_slice(&(self.data.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.data[offset..end]);
        (Characteristic::LogData, out)
    }
}

impl DeviceBehaviour for ChunkSender {
    fn connect(&mut self, now: Instant) {
        self.connected = true;
        self.deadline = self.auto_start.map(|d| now + d);
    }

    fn disconnect(&mut self) {
        self.connected = false;
        self.deadline = None;
    }

    fn read(&mut self, ch: Characteristic) -> Result<Vec<u8>, ReadError> {
        match ch {
            Characteristic::Config => Ok(self.config.clone()),
            Characteristic::Rssi => Ok(vec![(-55i8) as u8]),
            _ => Err(ReadError::NotFound),
        }
    }

    fn write(&mut self, ch: Characteristic, value: &[u8], _now: Instant) -> Vec<Notification> {
        let mut record = self.record.lock().unwrap();
        if ch == Characteristic::LogConfig {
            record.log_configs.push(value.to_vec());
            return Vec::new();
        }
        let ack = u16::from_le_bytes([value[0], value[1]]);
        record.acks.push(ack);
        let ack = usize::from(ack);
        if record.erased {
            Vec::new()
        } else if ack == 0 {
            (0..self.data.len())
                .step_by(16)
                .map(|o| self.chunk(o))
                .collect()
        } else if ack < self.data.len() {
            vec![self.chunk(ack)]
        } else {
            record.erased = true;
            Vec::new()
        }
    }

    fn tick(&mut self, _now: Instant) -> Vec<Notification> {
        self.deadline = None;
        if self.connected && !self.record.lock().unwrap().erased {
            vec![self.chunk(0)]
        } else {
            Vec::new()
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// A device identification value (PROTOCOL §4).
pub fn config_value() -> Vec<u8> {
    let mut v = 7u32.to_le_bytes().to_vec();
    for s in ["AABBCCDDEEFF", "demo", "1.2.4", "no_cache"] {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    v
}

pub async fn client(address: &str) -> Connection {
    tokio::time::timeout(STEP, zbus::connection::Builder::address(address).build())
        .await
        .expect("client connect timed out")
        .expect("client connect")
}

pub async fn object_manager(conn: &Connection) -> ObjectManagerProxy<'static> {
    ObjectManagerProxy::builder(conn)
        .destination("org.bluez")
        .path("/")
        .build()
        .await
        .unwrap()
}

pub async fn properties(conn: &Connection, path: &str) -> PropertiesProxy<'static> {
    PropertiesProxy::builder(conn)
        .destination("org.bluez")
        .path(path.to_owned())
        .build()
        .await
        .unwrap()
}

pub async fn proxy(conn: &Connection, path: &str, iface: &'static str) -> zbus::Proxy<'static> {
    zbus::Proxy::new(conn, "org.bluez", path.to_owned(), iface)
        .await
        .unwrap()
}

pub async fn get(conn: &Connection, path: &str, iface: &'static str, name: &str) -> OwnedVariant {
    properties(conn, path)
        .await
        .get(InterfaceName::from_static_str_unchecked(iface), name)
        .await
        .unwrap()
}

pub type Options = HashMap<&'static str, zbus::Variant<'static>>;

/// The D-Bus error name and message of a failed call.
pub fn method_error(e: &zbus::Error) -> (String, String) {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            (name.as_str().to_owned(), msg.clone().unwrap_or_default())
        }
        zbus::Error::FDO(fdo) => {
            use zbus::DBusError;
            (
                fdo.name().as_str().to_owned(),
                fdo.description().unwrap_or_default().to_owned(),
            )
        }
        other => panic!("not a method error: {other:?}"),
    }
}

/// A private bus with the fake BlueZ on it, and bluer (libdbus) pointed
/// at it as any BlueZ client finds "the system bus":
/// `DBUS_SYSTEM_BUS_ADDRESS`, process-wide, so one such test a binary.
pub async fn bluez_for_bluer() -> (ulogger_ble_sim::PrivateBus, ulogger_ble_sim::FakeBluez) {
    let bus = ulogger_ble_sim::PrivateBus::start().unwrap();
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", bus.address());
    let bluez = tokio::time::timeout(STEP, ulogger_ble_sim::FakeBluez::start(bus.address()))
        .await
        .unwrap()
        .unwrap();
    (bus, bluez)
}

/// A client whose cloud never answers (a loopback port nobody listens
/// on), so what a pull stores stays in its outbox at `outbox`.
pub fn offline_client(customer: u32, outbox: &std::path::Path) -> ulogger_cloud::Client {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ulogger_cloud::MqttConfig::new(customer)
        .broker("127.0.0.1")
        .port(port)
        .security(ulogger_cloud::Security::Plaintext)
        .connect_timeout(Duration::from_secs(60));
    ulogger_cloud::Client::builder(config)
        .outbox(ulogger_cloud::OutboxConfig::new(outbox))
        .build()
        .unwrap()
}
