//! `ulogger ble pull` against the simulated BlueZ (a private bus, named to
//! the binary through `DBUS_SYSTEM_BUS_ADDRESS`) with the demo firmware's
//! state machine behind it, and the emulator as the cloud: the log is
//! pulled, delivered byte-exact (token patched in), erased on the device
//! once, and a second pull finds nothing.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{assert_code, stdout};
use ulogger_ble_sim::{FakeBluez, Firmware, PrivateBus, SimulatedDevice};
use ulogger_cloud::wire::{self, LogHeader};
use ulogger_emulator::ble::{Erased, SimDevice};
use ulogger_emulator::{Emulator, EmulatorConfig, RecordKind};

const CUSTOMER: u32 = 4242;
const ADDRESS: &str = "AA:BB:CC:DD:EE:FF";
/// Every await is bounded: a hang fails the test.
const STEP: Duration = Duration::from_secs(60);

/// The demo's `config` value: app 7, serial AABBCCDDEEFF.
fn config_value() -> Vec<u8> {
    let mut v = 7u32.to_le_bytes().to_vec();
    for s in ["AABBCCDDEEFF", "demo", "1.2.4", "no_cache"] {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    v
}

fn device_log() -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.anchor_tick = Some(1000);
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(1_700_000_000_000_000);
    let data: Vec<u8> = (0..500u32).map(|i| (i * 17 % 251) as u8).collect();
    wire::build_log(header, &data).unwrap()
}

async fn pull(bus: &str, emulator: &Emulator, outbox: &std::path::Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ulogger"));
    command
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        // No config file of the machine's: only the flags below count.
        .env("ULOGGER_HOME", outbox.with_extension("home"))
        .env_remove("ULOGGER_CONFIG")
        .args([
            "--json",
            "ble",
            "pull",
            "--address",
            ADDRESS,
            "--no-store",
            "--plaintext",
        ])
        .args(["--broker", "127.0.0.1", "--port"])
        .arg(emulator.addr().port().to_string())
        .args(["--customer-id", &CUSTOMER.to_string(), "--outbox"])
        .arg(outbox);
    // The fake BlueZ runs on this test's runtime: wait for the binary off it.
    let run = tokio::task::spawn_blocking(move || command.output().unwrap());
    tokio::time::timeout(STEP, run)
        .await
        .expect("ulogger ble pull finished in time")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ble_pull_delivers_the_log_and_a_second_pull_finds_nothing() {
    let log = device_log();
    let firmware = Firmware::new(SimDevice::new(config_value(), log.clone(), None));
    let bus = PrivateBus::start().unwrap();
    let bluez = tokio::time::timeout(STEP, FakeBluez::start(bus.address()))
        .await
        .unwrap()
        .unwrap();
    bluez
        .add_device(SimulatedDevice::new(
            ADDRESS,
            "uLogger Example",
            Box::new(firmware.clone()),
        ))
        .await
        .unwrap();
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let outbox = tempfile::tempdir().unwrap();

    let out = pull(bus.address(), &emulator, outbox.path()).await;
    assert_code(&out, 0);
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["serial"], "AABBCCDDEEFF", "{summary}");
    assert_eq!(summary["stored"], 1, "{summary}");
    assert_eq!(summary["delivered"], 1, "{summary}");
    assert_eq!(summary["rejected"], 0, "{summary}");

    let erasures: Vec<_> = firmware
        .device()
        .erasures()
        .map(|(e, _)| e.clone())
        .collect();
    assert_eq!(erasures, [Erased::Logs(log.clone())]);
    let logs: Vec<_> = emulator
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::BinaryLog)
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let arrived = std::fs::read(emulator.data_dir().join(logs[0].file.as_ref().unwrap())).unwrap();
    let token = LogHeader::parse(&arrived).unwrap().session_token;
    assert_ne!(token, 0, "the token was patched in");
    let mut expected = log;
    wire::patch_session_token(&mut expected, token).unwrap();
    assert_eq!(arrived, expected);

    // The device has nothing left: silence, nothing stored, no erasure.
    let out = pull(bus.address(), &emulator, outbox.path()).await;
    assert_code(&out, 0);
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["stored"], 0, "{summary}");
    assert_eq!(firmware.device().erasures().count(), 1);
}
