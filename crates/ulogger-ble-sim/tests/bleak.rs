//! Interop: bleak, the Python BLE client the reference gateway uses, pulls
//! a log from the fake BlueZ over the private bus, as it would from
//! bluetoothd. The fake is then faithful to BlueZ's API as a third party
//! reads it, not only as we do.
//!
//! bleak comes from a venv whose python is named by `ULOGGER_BLEAK_PYTHON`
//! (`.ci/run` makes it); without it the test is skipped, except under
//! `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use ulogger_ble_sim::{FakeBluez, PrivateBus, SimulatedDevice};

fn bleak_python() -> Option<String> {
    match std::env::var("ULOGGER_BLEAK_PYTHON") {
        Ok(python) if !python.is_empty() => Some(python),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("ULOGGER_BLEAK_PYTHON is not set (.ci/run sets it)")
        }
        _ => {
            eprintln!("skipped: ULOGGER_BLEAK_PYTHON is not set");
            None
        }
    }
}

/// Notifications both ways bleak takes them: `PropertiesChanged` on
/// `Value` (its default, StartNotify) and AcquireNotify's socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bleak_pulls_a_log() {
    let Some(python) = bleak_python() else {
        return;
    };
    let bus = PrivateBus::start().unwrap();
    let bluez = FakeBluez::start(bus.address()).await.unwrap();
    for (address, name, mode) in [
        ("AA:BB:CC:DD:EE:01", "uLogger A", "start"),
        ("AA:BB:CC:DD:EE:02", "uLogger B", "acquire"),
    ] {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let (behaviour, record) = ChunkSender::new(data.clone(), config_value());
        bluez
            .add_device(SimulatedDevice::new(address, name, Box::new(behaviour)))
            .await
            .unwrap();
        let stdout = run_bleak(&python, bus.address(), address, name, mode).await;
        let line = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key:?} line in:\n{stdout}"))
                .to_owned()
        };
        assert_eq!(line("scanned "), format!("{address} {name}"));
        assert_eq!(line("config "), hex(&config_value()));
        assert_eq!(line("log "), hex(&data), "{mode}");
        assert!(stdout.lines().any(|l| l == "done"));
        let record = record.lock().unwrap();
        assert_eq!(record.acks, vec![0, 1000]);
        assert!(record.erased);
    }
}

/// Runs the bleak client to its end (at most 60 s) and returns its output.
async fn run_bleak(python: &str, bus: &str, address: &str, name: &str, mode: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bleak_client.py");
    let child = tokio::process::Command::new(python)
        .arg(script)
        .args([address, name, mode])
        // The private bus is the system bus for bleak, as for the gateway.
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the bleak client hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bleak ({mode}) failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
