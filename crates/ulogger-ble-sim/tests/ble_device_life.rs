//! What a gateway does for a device across its connections, through
//! `ulogger_cloud::ble::pull_device` on bluer, the simulated BlueZ with
//! the firmware's state machine, and the emulator as the cloud:
//!
//! - a log the device offers again after a reset (new readout tick and
//!   time, same data) is recognised by content: acknowledged, so the
//!   device lets go of it, and not stored twice;
//! - each connection queues a heartbeat and the device's RSSI;
//! - a log configuration the cloud pushes while the device is away is
//!   kept on disk and written to the device when it next connects;
//! - a core dump that names another device is kept apart, not sent, and
//!   a valid one is sent.
//!
//! One test in this binary: it sets `DBUS_SYSTEM_BUS_ADDRESS`, which is
//! process-wide, to point bluer at the private bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::time::timeout;
use ulogger_ble_sim::{Firmware, SimulatedDevice};
use ulogger_cloud::ble::{pull_device, Address, ConfigRelay, PullOptions};
use ulogger_cloud::wire::{
    self, BufferKind, CoreDumpHeader, DeviceInfo, LogConfig, LogHeader, LogLevel, PullConfig,
};
use ulogger_cloud::{Client, MqttConfig, OutboxConfig, Security};
use ulogger_emulator::ble::{Erased, SimDevice};
use ulogger_emulator::{Emulator, EmulatorConfig, RecordKind};

const CUSTOMER: u32 = 4242;

/// A v4 log as a device reads it out at tick `anchor`: the same data
/// gives the same log, whatever the readout fields.
fn device_log(anchor: u32, epoch: u64) -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.anchor_tick = Some(anchor);
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(epoch);
    let data: Vec<u8> = (0..400u32).map(|i| (i * 17 % 251) as u8).collect();
    wire::build_log(header, &data).unwrap()
}

fn identity() -> DeviceInfo {
    wire::decode_ble_config(&config_value()).unwrap()
}

fn options() -> PullOptions {
    // Short silence: a device with nothing left ends the pull quickly.
    PullOptions::new().pull(PullConfig::new().first_chunk_timeout(Duration::from_millis(1500)))
}

async fn pull(client: &Client, address: Address) -> ulogger_cloud::ble::PullReport {
    timeout(STEP * 3, pull_device(client, "hci0", address, options()))
        .await
        .expect("the pull finished in time")
        .expect("the pull succeeded")
}

/// Waits, polling, until `check` holds (bounded by `STEP`).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_across_connections_resets_configs_and_crashes() {
    let (_bus, bluez) = bluez_for_bluer().await;
    let emulator = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(emulator.addr().port())
        .security(Security::Plaintext);
    let client = Client::builder(config)
        .outbox(OutboxConfig::new(outbox.path()))
        .build()
        .unwrap();

    let first = device_log(1_000, 0);
    let firmware = Firmware::new(SimDevice::new(config_value(), first.clone(), None));
    firmware.device().set_rssi(Some(-61));
    bluez
        .add_device(SimulatedDevice::new(
            DEVICE,
            NAME,
            Box::new(firmware.clone()),
        ))
        .await
        .unwrap();
    let address: Address = DEVICE.parse().unwrap();

    // First connection: the log is stored, and a heartbeat with the RSSI
    // the device measured goes along.
    let report = pull(&client, address).await;
    assert_eq!(report.stored.len(), 1, "{report:?}");
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.rssi, Some(-61));
    timeout(STEP, client.delivered(report.stored[0].record))
        .await
        .unwrap()
        .unwrap();
    let metrics_arrived = || {
        emulator
            .records()
            .into_iter()
            .filter(|r| r.kind == RecordKind::Metrics && r.is_ok())
            .filter_map(|r| std::fs::read(emulator.data_dir().join(r.file?)).ok())
            .any(|payload| {
                let text = String::from_utf8_lossy(&payload);
                text.contains("AABBCCDDEEFF")
                    && text.contains("\"heartbeat\"")
                    && text.contains("\"rssi\"")
                    && text.contains("-61")
            })
    };
    until("the heartbeat and rssi in the cloud", metrics_arrived).await;

    // The device resets: agent 1.2.4+ re-offers what it had consumed, read
    // out again at a new tick and time. Recognised, acknowledged (the
    // device lets go), not stored again.
    let again = device_log(5, 1_700_000_000_000_000);
    assert_ne!(again, first);
    firmware.device().add_logs(&again);
    let report = pull(&client, address).await;
    assert!(report.stored.is_empty(), "{report:?}");
    assert_eq!(report.duplicates, 1, "{report:?}");
    assert!(firmware.device().logs().is_empty());
    // A new log of the same device is no duplicate.
    let mut newer = device_log(9, 0);
    let last = newer.len() - 1;
    newer[last] ^= 0xFF;
    let header_len = LogHeader::parse(&newer).unwrap().header_len();
    let checksum = wire::compute_checksum(&newer[header_len..]);
    let mut header = LogHeader::parse(&newer).unwrap();
    header.checksum = checksum;
    header.write_to(&mut newer).unwrap();
    firmware.device().add_logs(&newer);
    let report = pull(&client, address).await;
    assert_eq!(
        (report.stored.len(), report.duplicates),
        (1, 0),
        "{report:?}"
    );

    // The cloud pushes a configuration while the device is away: the
    // gateway keeps it on disk, and writes its 9-byte head when the
    // device next connects.
    let relay = ConfigRelay::in_outbox(&client).unwrap();
    let watch = relay.watch(&client, &identity()).await.unwrap();
    let pushed = LogConfig::new(LogLevel::Warning, 0b1011, 900)
        .with_module_names(vec!["net".into(), "power".into()]);
    emulator
        .push_config(7, "AABBCCDDEEFF", &pushed)
        .await
        .unwrap();
    until("the pushed configuration kept", || {
        relay.pending("AABBCCDDEEFF").unwrap().is_some()
    })
    .await;
    assert!(firmware.device().log_config().is_none());
    let report = pull(&client, address).await;
    assert_eq!(report.config_written.as_ref(), Some(&pushed));
    assert_eq!(
        firmware.device().log_config(),
        Some(&pushed.ble_value()[..])
    );
    assert_eq!(relay.pending("AABBCCDDEEFF").unwrap(), None);
    watch.abort();

    // A core dump naming another device is kept apart with its reason
    // (the cloud would file it under that other device), and acknowledged;
    // the device's own is sent.
    let mut stranger = identity();
    stranger.serial = "SOMEONE-ELSE".into();
    let mut body = b"cC".to_vec();
    body.extend((0..200u32).map(|i| (i % 7) as u8));
    let foreign = CoreDumpHeader::encode_package(&stranger, &body);
    firmware.device().set_core_dump(foreign.clone());
    let report = pull(&client, address).await;
    assert!(report.stored.is_empty(), "{report:?}");
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(report.rejected[0].kind, BufferKind::CoreDump);
    assert!(
        report.rejected[0].reason.contains("SOMEONE-ELSE"),
        "{}",
        report.rejected[0].reason
    );
    let kept = report.rejected[0].file.clone().unwrap();
    assert_eq!(kept.extension().unwrap(), "core");
    assert_eq!(std::fs::read(&kept).unwrap(), foreign);
    let own = CoreDumpHeader::encode_package(&identity(), &body);
    firmware.device().set_core_dump(own.clone());
    let report = pull(&client, address).await;
    assert_eq!(report.stored.len(), 1, "{report:?}");
    assert_eq!(report.stored[0].kind, BufferKind::CoreDump);
    timeout(STEP, client.delivered(report.stored[0].record))
        .await
        .unwrap()
        .unwrap();
    let erased: Vec<_> = firmware
        .device()
        .erasures()
        .map(|(e, _)| e.clone())
        .collect();
    assert!(
        erased
            .iter()
            .any(|e| matches!(e, Erased::LogsAndCoreDump { core_dump, .. } if *core_dump == own)),
        "{erased:?}"
    );

    // Exactly two logs and one core dump reached the cloud.
    let count = |kind| {
        emulator
            .records()
            .iter()
            .filter(|r| r.kind == kind && r.is_ok())
            .count()
    };
    assert_eq!(count(RecordKind::BinaryLog), 2);
    assert_eq!(count(RecordKind::CoreDump), 1);
    client.shutdown().await;
}
