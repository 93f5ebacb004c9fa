//! `ulogger ble pull` against the simulated BlueZ (a private bus, named to
//! the binary through `DBUS_SYSTEM_BUS_ADDRESS`) with the demo firmware's
//! state machine behind it, and the emulator as the cloud: the log is
//! pulled, delivered byte-exact (token patched in), erased on the device
//! once, and a second pull finds nothing. `ulogger ble scan` lists and
//! identifies the simulated devices, and `ulogger agent --ble` pulls two
//! devices continuously, delivers their logs and stops on SIGTERM.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{assert_code, stdout, Running};
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

fn config_for(serial: &str) -> Vec<u8> {
    let mut v = 7u32.to_le_bytes().to_vec();
    for s in [serial, "demo", "1.2.4", "no_cache"] {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    v
}

/// Two demo devices with a log each, and a phone (no uLogger service).
async fn three_devices(bluez: &FakeBluez) -> Vec<(Firmware, Vec<u8>)> {
    let mut out = Vec::new();
    for (address, serial) in [
        ("AA:BB:CC:00:00:01", "AABBCC000001"),
        ("AA:BB:CC:00:00:02", "AABBCC000002"),
    ] {
        let log = device_log();
        let firmware = Firmware::new(SimDevice::new(config_for(serial), log.clone(), None));
        bluez
            .add_device(SimulatedDevice::new(
                address,
                "uLogger Example",
                Box::new(firmware.clone()),
            ))
            .await
            .unwrap();
        out.push((firmware, log));
    }
    bluez
        .add_device(
            SimulatedDevice::new(
                "11:22:33:44:55:66",
                "Someone's phone",
                Box::new(Firmware::new(SimDevice::new(Vec::new(), Vec::new(), None))),
            )
            .without_ulogger_service(),
        )
        .await
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ble_scan_lists_and_identifies_the_devices_in_range() {
    let bus = PrivateBus::start().unwrap();
    let bluez = tokio::time::timeout(STEP, FakeBluez::start(bus.address()))
        .await
        .unwrap()
        .unwrap();
    let devices = three_devices(&bluez).await;
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ulogger"));
    command
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .env("ULOGGER_HOME", home.path())
        .env_remove("ULOGGER_CONFIG")
        .args(["--json", "ble", "scan", "--timeout", "1", "--identify"]);
    let run = tokio::task::spawn_blocking(move || command.output().unwrap());
    let out = tokio::time::timeout(STEP, run).await.unwrap().unwrap();
    assert_code(&out, 0);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let by_address = |a: &str| {
        lines
            .iter()
            .find(|l| l["address"] == a)
            .unwrap_or_else(|| panic!("{a} not listed: {lines:?}"))
    };
    for (address, serial) in [
        ("AA:BB:CC:00:00:01", "AABBCC000001"),
        ("AA:BB:CC:00:00:02", "AABBCC000002"),
    ] {
        let line = by_address(address);
        assert_eq!(line["name"], "uLogger Example", "{line}");
        assert_eq!(line["ulogger"], true, "{line}");
        assert_eq!(line["identity"]["serial"], serial, "{line}");
        assert_eq!(line["identity"]["app_id"], 7, "{line}");
        assert_eq!(line["connected"], false, "{line}");
        assert!(line["rssi"].is_i64(), "{line}");
    }
    let phone = by_address("11:22:33:44:55:66");
    assert_eq!(phone["ulogger"], false, "{phone}");
    // Identifying reads; it never pulls, acknowledges or erases.
    for (firmware, _) in &devices {
        assert_eq!(firmware.device().erasures().count(), 0);
        assert!(!firmware.device().is_connected());
    }
    assert_eq!(bluez.connected_count(), 0, "a link was left up");
}

/// The agent's lines until `n` events of each kind in `wanted` came,
/// blocking this worker without starving the fake BlueZ, which runs on
/// the test's runtime.
fn agent_events(running: &Running, wanted: &[(&str, usize)]) -> Vec<serde_json::Value> {
    tokio::task::block_in_place(|| {
        let mut out: Vec<serde_json::Value> = Vec::new();
        let count = |out: &[serde_json::Value], kind: &str| {
            out.iter().filter(|l| l["event"] == kind).count()
        };
        while wanted.iter().any(|(kind, n)| count(&out, kind) < *n) {
            let line = running.json_line();
            assert_ne!(line["event"], "ble-failed", "{line}");
            out.push(line);
        }
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_ble_delivers_two_devices_logs_and_stops_on_sigterm() {
    let bus = PrivateBus::start().unwrap();
    let bluez = tokio::time::timeout(STEP, FakeBluez::start(bus.address()))
        .await
        .unwrap()
        .unwrap();
    let devices = three_devices(&bluez).await;
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The BLE settings from the config file, BLE itself from its flag.
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    std::fs::write(
        dir.path().join("home/config.toml"),
        "ble_names = [\"uLogger Example\"]\nble_min_interval = \"1s\"\n",
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ulogger"));
    command
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .env("ULOGGER_HOME", dir.path().join("home"))
        .env_remove("ULOGGER_CONFIG")
        .args(["--json", "agent", "--ble", "--no-store", "--plaintext"])
        .args(["--broker", "127.0.0.1", "--port"])
        .arg(emulator.addr().port().to_string())
        .args(["--customer-id", &CUSTOMER.to_string(), "--outbox"])
        .arg(dir.path().join("outbox"))
        .stdout(std::process::Stdio::piped());
    let mut running = Running::spawn(command);

    let lines = agent_events(
        &running,
        &[
            ("started", 1),
            ("ble-pulled", 2),
            ("delivered", 2),
            ("ble-relaying", 2),
        ],
    );
    let of = |kind: &'static str| lines.iter().filter(move |l| l["event"] == kind);
    let started = of("started").next().unwrap();
    assert_eq!(started["ble"], true, "{started}");
    assert_eq!(started["inbox"], serde_json::Value::Null, "{started}");
    let mut pulled: Vec<String> = of("ble-pulled")
        .map(|l| {
            assert_eq!(l["stored"], 1, "{l}");
            l["serial"].as_str().unwrap().to_owned()
        })
        .collect();
    pulled.sort();
    assert_eq!(pulled, ["AABBCC000001", "AABBCC000002"]);

    // The cloud pushes a configuration for the first device while it is
    // between pulls: kept, and written at its next connection.
    let pushed =
        ulogger_cloud::wire::LogConfig::new(ulogger_cloud::wire::LogLevel::Error, 0b11, 300);
    emulator
        .push_config(7, "AABBCC000001", &pushed)
        .await
        .unwrap();
    let written = agent_events(&running, &[("ble-config-written", 1)]);
    let written = written
        .iter()
        .find(|l| l["event"] == "ble-config-written")
        .unwrap();
    assert_eq!(written["serial"], "AABBCC000001", "{written}");
    assert_eq!(
        devices[0].0.device().log_config(),
        Some(&pushed.ble_value()[..])
    );
    assert_eq!(devices[1].0.device().log_config(), None);

    let status = tokio::task::block_in_place(|| running.terminate());
    assert!(status.success(), "the agent did not stop cleanly: {status}");
    // Its last word: the summary, with the BLE counts.
    let rest: Vec<serde_json::Value> = tokio::task::block_in_place(|| {
        running
            .lines
            .iter()
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect()
    });
    let summary = rest
        .iter()
        .rfind(|l| l["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary after SIGTERM: {rest:?}"));
    assert_eq!(summary["ble"]["stored"], 2, "{summary}");
    assert_eq!(summary["ble"]["failed"], 0, "{summary}");
    let logs: Vec<_> = emulator
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::BinaryLog)
        .collect();
    assert_eq!(logs.len(), 2, "{logs:?}");
    for (firmware, log) in &devices {
        let erasures: Vec<_> = firmware
            .device()
            .erasures()
            .map(|(e, _)| e.clone())
            .collect();
        assert_eq!(erasures, [Erased::Logs(log.clone())]);
    }
    // The phone is not on the name list: never connected.
    assert_eq!(
        bluez.max_concurrent_connections().min(2),
        bluez.max_concurrent_connections()
    );
    assert_eq!(bluez.connected_count(), 0, "a link was left up");

    // Restarted, with no device it may pull: the devices the first run
    // watched are watched again at once, so a configuration pushed
    // before one next comes by is kept for it.
    let config = dir.path().join("restart.toml");
    std::fs::write(
        &config,
        "ble = true\nble_addresses = [\"00:00:00:00:00:01\"]\n",
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ulogger"));
    command
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .env("ULOGGER_HOME", dir.path().join("home"))
        .env_remove("ULOGGER_CONFIG")
        .args(["--json", "agent", "--no-store", "--plaintext", "--config"])
        .arg(&config)
        .args(["--broker", "127.0.0.1", "--port"])
        .arg(emulator.addr().port().to_string())
        .args(["--customer-id", &CUSTOMER.to_string(), "--outbox"])
        .arg(dir.path().join("outbox"))
        .stdout(std::process::Stdio::piped());
    let mut restarted = Running::spawn(command);
    let lines = agent_events(&restarted, &[("started", 1), ("ble-relaying", 2)]);
    assert!(
        !lines.iter().any(|l| l["event"] == "ble-pulled"),
        "{lines:?}"
    );
    let later = ulogger_cloud::wire::LogConfig::new(ulogger_cloud::wire::LogLevel::Debug, 1, 60);
    emulator
        .push_config(7, "AABBCC000002", &later)
        .await
        .unwrap();
    let relay = ulogger_cloud::ble::ConfigRelay::new(dir.path().join("outbox/ble-config"));
    let deadline = std::time::Instant::now() + STEP;
    while relay.pending("AABBCC000002").unwrap() != Some(later.clone()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the configuration pushed after the restart was not kept"
        );
        tokio::task::yield_now().await;
    }
    let status = tokio::task::block_in_place(|| restarted.terminate());
    assert!(
        status.success(),
        "the restarted agent did not stop cleanly: {status}"
    );
}
