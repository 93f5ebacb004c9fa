//! `ulogger emulator records`: what an emulator received, listed from its
//! data directory while it runs or after it stopped, and followed live.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "../../ulogger-wire/tests/support/mod.rs"]
mod c_fixture;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::sandbox::*;
use support::Running;
use ulogger_cloud::blocking::Client;
use ulogger_cloud::wire::DeviceInfo;
use ulogger_cloud::{ElfUpload, MqttConfig, Security};
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

/// `ulogger-wire`'s C stand-in for the agent, compiled (by that crate's
/// own helper) and run: its ELF, its v4 log and how many records that
/// log holds. `None` without a C compiler (a failure under `CI=true`).
fn stand_in_firmware() -> Option<(Vec<u8>, Vec<u8>, usize)> {
    let dir = c_fixture::scratch("cli-records-agent");
    let elf = dir.join("agent");
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ulogger-wire/tests/fixtures/agent.c");
    c_fixture::compile(
        &source,
        &elf,
        &["-std=gnu11", "-O1", "-w", "-no-pie", "-fno-pie"],
    )?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let run = Command::new(&elf).arg(&logs).output().unwrap();
    assert!(run.status.success());
    // The oracle lines of v4.bin's records, then v1.bin's two.
    let records = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("M "))
        .count()
        - 2;
    let log = std::fs::read(logs.join("v4.bin")).unwrap();
    Some((std::fs::read(&elf).unwrap(), log, records))
}

#[test]
fn each_binary_log_shows_its_decoding_state_as_text_and_json() {
    const VERSION: &str = "1.2.3-test";
    const DEVICE_TYPE: &str = "test board";
    let Some((elf, log, records)) = stand_in_firmware() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let emu = emulator_in(data.path());
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(emu.addr().port())
        .group_id(emu.group_id())
        .security(Security::Plaintext);
    let client = Client::builder(config).build().unwrap();
    let upload = |version: &str, elf: &[u8]| {
        let upload = ElfUpload::new(APP, DEVICE_TYPE, version, GIT_HASH)
            .max_backoff(Duration::from_millis(50));
        client.upload_elf(&upload, elf.to_vec()).unwrap();
    };
    upload(VERSION, &elf);
    // A big-endian ELF with nothing in it: the upload takes it, the
    // decoder does not (uLogger firmware is little-endian).
    let mut empty = vec![0u8; 64];
    empty[..8].copy_from_slice(b"\x7fELF\x02\x02\x01\x00");
    empty[16..18].copy_from_slice(&2u16.to_be_bytes());
    empty[18..20].copy_from_slice(&40u16.to_be_bytes());
    empty[20..24].copy_from_slice(&1u32.to_be_bytes());
    for (at, value) in [(52, 64u16), (54, 56), (58, 64)] {
        empty[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }
    upload("6.6.6", &empty);
    for (serial, version) in [
        ("SN-DECODED", VERSION),
        ("SN-NO-ELF", "9.9.9"),
        ("SN-BAD-ELF", "6.6.6"),
    ] {
        let device = DeviceInfo::new(APP, serial, DEVICE_TYPE, version, GIT_HASH);
        client.upload_log(&device, &log).unwrap();
    }
    client.shutdown();

    let sandbox = Sandbox::new();
    let list = |extra: &[&str]| {
        let mut args = strings(&["emulator", "records", "--data", &s(data.path())]);
        args.extend(strings(extra));
        sandbox.run(&args).expect_code(0).stdout
    };
    // While the emulator runs, as JSON lines.
    let json = list(&["--json", "--kind", "binary-log"]);
    let by_serial = |serial: &str| -> Value {
        json.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|r| r["serial"] == serial)
            .unwrap_or_else(|| panic!("{serial}: {json}"))
    };
    let decoded = by_serial("SN-DECODED");
    assert_eq!(decoded["decoding"]["state"], "decoded", "{decoded}");
    assert_eq!(decoded["decoding"]["records"], records, "{decoded}");
    let waiting = by_serial("SN-NO-ELF");
    assert_eq!(waiting["decoding"]["state"], "no_elf", "{waiting}");
    assert_eq!(
        waiting["decoding"]["reason"],
        format!("no ELF for {DEVICE_TYPE} 9.9.9")
    );
    let failed = by_serial("SN-BAD-ELF");
    assert_eq!(failed["decoding"]["state"], "bad_elf", "{failed}");
    let reason = failed["decoding"]["reason"].as_str().unwrap();
    assert!(reason.contains("does not read"), "{reason}");
    emu.shutdown().unwrap();

    // After it stopped, as a table.
    let table = list(&[]);
    let header = table.lines().next().unwrap();
    assert!(header.contains("DECODING"), "{table}");
    let row = |serial: &str| {
        table
            .lines()
            .find(|l| l.contains(" binary-log ") && l.contains(serial))
            .unwrap_or_else(|| panic!("{serial}: {table}"))
            .to_owned()
    };
    let decoded = row("SN-DECODED");
    assert!(decoded.contains(" decoded "), "{decoded}");
    assert!(
        decoded.ends_with(&format!("{records} records")),
        "{decoded}"
    );
    let waiting = row("SN-NO-ELF");
    assert!(
        waiting.contains(" no_elf ") && waiting.ends_with("no ELF for test board 9.9.9"),
        "{waiting}"
    );
    let failed = row("SN-BAD-ELF");
    assert!(
        failed.contains(" bad_elf ") && failed.contains("does not read"),
        "{failed}"
    );
    // Records that are not logs have no state.
    let boot = table.lines().find(|l| l.contains(" boot ")).unwrap();
    assert!(boot.ends_with(" -"), "{boot}");
}
