//! `ulogger demo`, the README's first command, does the whole job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn demo(args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .arg("demo")
        .args(args)
        .env("HOME", home.path())
        .env("ULOGGER_HOME", home.path())
        .env("ULOGGER_LOG", "off")
        .output()
        .unwrap()
}

#[test]
fn demo_registers_uploads_twice_with_one_token_and_the_cloud_accepts_both() {
    let out = demo(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    let token = report["token"].as_u64().unwrap();
    let uploads = report["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 2);
    for upload in uploads {
        assert_eq!(upload["token"].as_u64(), Some(token));
        assert!(
            upload["epoch_time_us"].as_u64().unwrap() > 0,
            "stamped by the gateway"
        );
    }
    let records = report["cloud_records"].as_array().unwrap();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "boot").count(),
        1,
        "one registration: the second upload used the cached token ({kinds:?})"
    );
    let logs: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "binary-log")
        .collect();
    assert_eq!(logs.len(), 2);
    for log in logs {
        assert_eq!(log["verdict"], "ok");
        assert_eq!(log["token"].as_u64(), Some(token));
    }
}

#[test]
fn demo_keeps_its_records_when_given_a_data_dir() {
    let data = tempfile::tempdir().unwrap();
    let out = demo(&["--data", data.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("What the cloud received"), "{stdout}");
    let index = std::fs::read_to_string(data.path().join("index.jsonl")).unwrap();
    assert!(
        index
            .lines()
            .filter(|l| l.contains("\"binary-log\""))
            .count()
            == 2,
        "{index}"
    );
}

/// Whether `dbus-daemon` is on `PATH`. Without it the BLE demo cannot run
/// here; that skips its test, except under `CI=true`, where it fails.
#[cfg(all(feature = "ble", target_os = "linux"))]
fn have_dbus_daemon() -> bool {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("dbus-daemon").is_file())
    });
    if !found {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "dbus-daemon is missing (install the dbus-daemon package)"
        );
        eprintln!("skipped: dbus-daemon is not installed");
    }
    found
}

#[cfg(all(feature = "ble", target_os = "linux"))]
#[test]
fn ble_demo_pulls_every_simulated_device_and_the_cloud_gets_every_log_and_the_core_dump() {
    if !have_dbus_daemon() {
        return;
    }
    let out = demo(&["--json", "--ble"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["logs_delivered"], 3, "{report}");
    assert_eq!(report["core_dumps_delivered"], 1, "{report}");
    let devices = report["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3);
    for device in devices {
        assert_eq!(device["logs"], 1, "{device}");
        assert_eq!(device["erased"], true, "{device}");
        assert_eq!(device["rejected"], 0, "{device}");
    }
    let records = report["cloud_records"].as_array().unwrap();
    let logs: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "binary-log")
        .collect();
    assert_eq!(logs.len(), 3, "{records:?}");
    let mut serials: Vec<&str> = logs.iter().map(|r| r["serial"].as_str().unwrap()).collect();
    serials.sort_unstable();
    assert_eq!(serials, ["DEMO-BLE-01", "DEMO-BLE-02", "DEMO-BLE-03"]);
    for log in &logs {
        assert_eq!(log["verdict"], "ok", "{log}");
        assert!(
            log["token"].as_u64().unwrap() > 0,
            "the gateway patched a token in: {log}"
        );
    }
    let dumps: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "core-dump")
        .collect();
    assert_eq!(dumps.len(), 1, "{records:?}");
    assert_eq!(dumps[0]["verdict"], "ok", "{}", dumps[0]);
}

#[cfg(all(feature = "ble", target_os = "linux"))]
#[test]
fn ble_demo_without_dbus_daemon_names_the_package_to_install() {
    let empty = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .args(["demo", "--ble"])
        .env("PATH", empty.path())
        .env("HOME", home.path())
        .env("ULOGGER_HOME", home.path())
        .env("ULOGGER_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`dbus-daemon` was not found") && stderr.contains("install the package"),
        "{stderr}"
    );
}
