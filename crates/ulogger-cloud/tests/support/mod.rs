//! Fixtures shared by the client's end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod firmware;
pub mod interop;

use std::net::SocketAddr;
use std::time::Duration;

use ulogger_cloud::wire::{build_log, DeviceInfo, LogHeader};
use ulogger_cloud::{MqttConfig, Security};
use ulogger_emulator::{Emulator, EmulatorConfig, PortHold, Record, RecordKind};

pub const CUSTOMER: u32 = 4242;
pub const APP: u32 = 7;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A loopback port nothing listens on (yet), held for the emulators that
/// come and go on it ([`PortHold`]).
pub fn free_port() -> PortHold {
    PortHold::new().unwrap()
}

/// An address nothing will listen on, held for the rest of the run (so
/// that no other test's socket takes it meanwhile).
pub fn closed_addr() -> SocketAddr {
    Box::leak(Box::new(free_port())).addr()
}

pub fn emulator(config: EmulatorConfig) -> Emulator {
    init_tracing();
    Emulator::start(config).expect("emulator starts")
}

/// A TLS emulator for `CUSTOMER` with the default topic layout.
pub fn tls_emulator() -> Emulator {
    emulator(EmulatorConfig::new(CUSTOMER))
}

/// Client settings that reach `emu` the way it was started (mutual TLS
/// with its generated certificates, or plaintext), with its topic layout.
pub fn config_for(emu: &Emulator) -> MqttConfig {
    let mut config = MqttConfig::new(emu.customer_id())
        .broker("127.0.0.1")
        .port(emu.addr().port())
        .topic_prefix(emu.topic_prefix());
    config = config.group_id(emu.group_id());
    match emu.certs() {
        Some(certs) => config
            .ca_file(&certs.ca_cert)
            .client_cert(&certs.client_cert, &certs.client_key),
        None => config.security(Security::Plaintext),
    }
}

pub fn device(serial: &str) -> DeviceInfo {
    DeviceInfo::new(APP, serial, "test-board", "v1.0.0", "abc1234")
}

/// A valid version-4 log whose data is `len` bytes of a pattern, with
/// room for unused ring-buffer bytes after it.
pub fn v4_log(len: usize, token: u32) -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.session_token = token;
    header.anchor_tick = Some(1000);
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(0);
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    build_log(header, &data).unwrap()
}

pub fn v1_log(len: usize) -> Vec<u8> {
    let mut header = LogHeader::new(1).unwrap();
    header.sequence_number = Some(9);
    let data: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
    build_log(header, &data).unwrap()
}

pub fn records_of(emu: &Emulator, kind: RecordKind) -> Vec<Record> {
    emu.records()
        .into_iter()
        .filter(|r| r.kind == kind)
        .collect()
}

/// The bytes the emulator stored for `record`.
pub fn stored_bytes(emu: &Emulator, record: &Record) -> Vec<u8> {
    let file = record.file.as_ref().expect("record has a stored file");
    std::fs::read(emu.data_dir().join(file)).expect("stored payload readable")
}

/// Test output shows the client's log when `ULOGGER_LOG` is set.
pub fn init_tracing() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("ULOGGER_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// Waits until the emulator holds `n` records of `kind`; false on timeout.
pub async fn wait_for_count(emu: &Emulator, kind: RecordKind, n: usize) -> bool {
    let mut watcher = emu.watch_records();
    let mut seen = 0;
    tokio::time::timeout(PATIENCE, async {
        while seen < n {
            if watcher.next().await.kind == kind {
                seen += 1;
            }
        }
    })
    .await
    .is_ok()
}
