//! The gateway's radio-facing layer (`ulogger_cloud::ble::pull_device`, on
//! bluer) against the simulated BlueZ with the firmware's state machine
//! behind it, and the emulator as the cloud: the log is in the outbox
//! before the device erases it, it reaches the cloud byte-exact with the
//! session token patched in, and a second pull finds nothing.
//!
//! One test in this binary: it sets `DBUS_SYSTEM_BUS_ADDRESS`, which is
//! process-wide, to point bluer at the private bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::time::timeout;
use ulogger_ble_sim::{Firmware, SimulatedDevice};
use ulogger_cloud::ble::{pull_device, Address, PullOptions};
use ulogger_cloud::wire::{self, BufferKind, LogHeader, PullConfig};
use ulogger_cloud::{Client, MqttConfig, OutboxConfig, Security};
use ulogger_emulator::ble::{Erased, SimDevice};
use ulogger_emulator::{Emulator, EmulatorConfig, PortHold, RecordKind};

const CUSTOMER: u32 = 4242;

/// A valid v4 log as the device reads it: session token 0, and epoch 0
/// (the device has no wall clock).
fn device_log() -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.anchor_tick = Some(1000);
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(0);
    let data: Vec<u8> = (0..700u32).map(|i| (i * 31 % 251) as u8).collect();
    wire::build_log(header, &data).unwrap()
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn options() -> PullOptions {
    // Short silence: the second pull meets a device with nothing to send.
    PullOptions::new().pull(PullConfig::new().first_chunk_timeout(Duration::from_millis(1500)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_device_stores_the_log_before_the_device_erases_it() {
    let log = device_log();
    let firmware = Firmware(Arc::new(Mutex::new(SimDevice::new(
        config_value(),
        log.clone(),
        None,
    ))));
    let (_bus, bluez) = bluez_for_bluer().await;
    bluez
        .add_device(SimulatedDevice::new(
            DEVICE,
            NAME,
            Box::new(firmware.clone()),
        ))
        .await
        .unwrap();

    // The cloud is not up yet: what the pull stores stays in the outbox.
    // Held while the cloud is away, so that it comes up on it.
    let hold = PortHold::new().unwrap();
    let port = hold.addr();
    let outbox = tempfile::tempdir().unwrap();
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(port.port())
        .security(Security::Plaintext)
        .connect_timeout(Duration::from_secs(60));
    let client = Client::builder(config)
        .outbox(OutboxConfig::new(outbox.path()))
        .build()
        .unwrap();
    let address: Address = DEVICE.parse().unwrap();

    let pull_started = unix_us();
    let report = timeout(STEP * 3, pull_device(&client, "hci0", address, options()))
        .await
        .expect("the pull finished in time")
        .expect("the pull succeeded");
    let pull_ended = unix_us();
    assert_eq!(report.device.serial, "AABBCCDDEEFF");
    assert_eq!(report.device.app_id, 7);
    assert_eq!(report.stored.len(), 1, "{report:?}");
    assert!(report.rejected.is_empty(), "{report:?}");
    let stored = &report.stored[0];
    assert_eq!((stored.kind, stored.len), (BufferKind::Log, log.len()));
    let status = client.outbox_status().unwrap();
    // The log, and the heartbeat a connection sends for its device.
    assert_eq!(status.queued + status.in_flight, 2, "{status:?}");

    // Erased once, and only after the outbox call had returned.
    {
        let device = firmware.0.lock().unwrap();
        let erasures: Vec<_> = device.erasures().collect();
        assert_eq!(erasures.len(), 1, "{erasures:?}");
        let (erased, at) = &erasures[0];
        assert_eq!(**erased, Erased::Logs(log.clone()));
        assert!(
            *at >= stored.durable_at,
            "the device erased the log before it was durable"
        );
        assert!(device.logs().is_empty());
    }

    // The cloud comes up: the log arrives as the device wrote it, with the
    // session token the cloud assigned patched in.
    let emulator = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen_on(&hold),
    )
    .unwrap();
    timeout(STEP * 3, client.delivered(stored.record))
        .await
        .expect("delivered in time")
        .unwrap();
    let logs: Vec<_> = emulator
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::BinaryLog)
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].is_ok(), "{:?}", logs[0]);
    let arrived = std::fs::read(emulator.data_dir().join(logs[0].file.as_ref().unwrap())).unwrap();
    let header = LogHeader::parse(&arrived).unwrap();
    let token = header.session_token;
    assert_ne!(token, 0, "the token was patched in");
    // The gateway's clock of the pull, not of the upload after the outage.
    let epoch = header.epoch_time_us.unwrap();
    assert!(
        (pull_started..=pull_ended).contains(&epoch),
        "epoch {epoch} not within the pull ({pull_started}..={pull_ended})"
    );
    let mut expected = log.clone();
    wire::patch_session_token(&mut expected, token).unwrap();
    wire::patch_epoch_time_us(&mut expected, epoch).unwrap();
    assert_eq!(arrived, expected);

    // Nothing left on the device: the second pull meets silence.
    let again = timeout(STEP * 3, pull_device(&client, "hci0", address, options()))
        .await
        .expect("the second pull finished in time")
        .expect("the second pull succeeded");
    assert!(
        again.stored.is_empty() && again.rejected.is_empty(),
        "{again:?}"
    );
    assert_eq!(firmware.0.lock().unwrap().erasures().count(), 1);
    client.shutdown().await;
}
