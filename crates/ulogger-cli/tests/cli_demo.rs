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
