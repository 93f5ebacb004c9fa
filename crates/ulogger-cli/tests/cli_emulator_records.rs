//! `ulogger emulator records`: what an emulator received, listed from its
//! data directory while it runs or after it stopped, and followed live.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::sandbox::*;
use support::Running;
use ulogger_emulator::{Emulator, EmulatorConfig};

fn emulator_in(data: &Path) -> Emulator {
    Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true).data_dir(data))
        .expect("emulator starts")
}

/// Uploads a `len`-byte log for `serial` and returns once it was acknowledged.
fn upload(sandbox: &Sandbox, emu: &Emulator, serial: &str, len: usize) {
    let log = sandbox.write(&format!("{serial}-{len}.bin"), &v4_log(len));
    let mut args = connect_args("upload", emu);
    args.extend(device_args(serial));
    args.extend(strings(&["--no-store", &s(&log)]));
    sandbox.run(&args).expect_code(0);
}

#[test]
fn a_stopped_emulators_records_are_listed_as_a_table_or_json() {
    let data = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new();
    let emu = emulator_in(data.path());
    upload(&sandbox, &emu, "SN-LIST", 123);
    emu.shutdown().unwrap();

    let list = |extra: &[&str]| {
        let mut args = strings(&["emulator", "records", "--data", &s(data.path())]);
        args.extend(strings(extra));
        sandbox.run(&args).expect_code(0).stdout
    };
    let table = list(&[]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("REASON"),
        "{table}"
    );
    let log = lines
        .iter()
        .find(|l| l.contains("binary-log"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(log.contains(" ok ") && log.contains("SN-LIST"), "{log}");
    assert!(log.contains(&(25 + 123).to_string()), "{log}");
    assert!(table.contains("boot"), "{table}");

    let json = list(&["--json", "--kind", "binary-log"]);
    let records: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{json}");
    assert_eq!(records[0]["kind"], "binary-log");
    assert_eq!(records[0]["verdict"], "ok");
    assert_eq!(records[0]["serial"], "SN-LIST");
}

#[test]
fn a_missing_index_is_bad_input() {
    let sandbox = Sandbox::new();
    let run = sandbox
        .run(&strings(&[
            "emulator",
            "records",
            "--data",
            &s(&sandbox.path("none")),
        ]))
        .expect_code(2);
    assert!(run.stderr.contains("index.jsonl"), "{}", run.stderr);
}

#[test]
fn follow_prints_records_appended_after_it_started() {
    let data = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new();
    let emu = emulator_in(data.path());
    upload(&sandbox, &emu, "SN-BEFORE", 10);
    let following = Running::start(&[
        "--json",
        "emulator",
        "records",
        "--follow",
        "--kind",
        "binary-log",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    // Once the earlier record is printed, the follower is reading.
    assert_eq!(following.json_line()["serial"], "SN-BEFORE");
    upload(&sandbox, &emu, "SN-AFTER", 20);
    let record = following.json_line();
    assert_eq!(record["serial"], "SN-AFTER", "{record}");
    assert_eq!(record["verdict"], "ok");
}

#[test]
fn follow_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new();
    let emu = emulator_in(data.path());
    upload(&sandbox, &emu, "SN-STOP", 10);
    let mut following = Running::start(&[
        "emulator",
        "records",
        "--follow",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    following.line_containing("SN-STOP");
    assert!(following.terminate().success());
}
