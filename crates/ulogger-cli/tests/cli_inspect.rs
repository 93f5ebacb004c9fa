//! `ulogger inspect` on temporary log files, through the built binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ulogger_cloud::wire::{build_log, LogHeader};

mod support;
use support::{assert_code, stderr, stdout};

fn inspect(args: &[&Path], json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ulogger"));
    if json {
        cmd.arg("--json");
    }
    cmd.arg("inspect")
        .args(args)
        .env("ULOGGER_LOG", "off")
        .output()
        .unwrap()
}

fn json(out: &Output) -> Vec<serde_json::Value> {
    serde_json::from_str(&stdout(out)).unwrap()
}

/// A valid log of `version` with `data` and `unused` trailing zero bytes.
fn log(version: u8, data: &[u8], unused: usize) -> Vec<u8> {
    let mut header = LogHeader::new(version).unwrap();
    header.session_token = 0x1234_5678;
    if version <= 2 {
        header.sequence_number = Some(42);
    } else {
        header.anchor_tick = Some(1000);
        header.tick_rate_hz = Some(32_768);
    }
    if version == 4 {
        header.epoch_time_us = Some(1_700_000_000_123_456);
    }
    let mut buf = build_log(header, data).unwrap();
    buf.resize(buf.len() + unused, 0);
    buf
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn valid_logs_of_every_version_decode() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..=4u8)
        .map(|v| write(&dir, &format!("v{v}.bin"), &log(v, b"log data here", 7)))
        .collect();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();

    let out = inspect(&paths, true);
    assert_code(&out, 0);
    let reports = json(&out);
    assert_eq!(reports.len(), 5);
    for (v, report) in reports.iter().enumerate() {
        assert_eq!(report["ok"], true, "{report}");
        assert!(report.get("error").is_none());
        let h = &report["header"];
        assert_eq!(h["version"], v);
        assert_eq!(h["session_token"], 0x1234_5678);
        assert_eq!(h["used_bytes"], 13);
        assert_eq!(h["unused_bytes"], 7);
        assert_eq!(h["header_len"], [13, 13, 13, 17, 25][v]);
        if v <= 2 {
            assert_eq!(h["sequence_number"], 42);
            assert!(h.get("anchor_tick").is_none());
        } else {
            assert_eq!(h["anchor_tick"], 1000);
            assert_eq!(h["tick_rate_hz"], 32_768);
            assert!(h.get("sequence_number").is_none());
        }
        if v == 4 {
            assert_eq!(h["epoch_time_us"], 1_700_000_000_123_456u64);
            assert_eq!(h["epoch_time_utc"], "2023-11-14T22:13:20.123456Z");
        } else {
            assert!(h.get("epoch_time_us").is_none());
        }
    }

    let out = inspect(&paths, false);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("v4.bin: ok"), "{text}");
    assert!(text.contains("305419896 (0x12345678)"), "{text}");
    assert!(text.contains("2023-11-14T22:13:20.123456Z"), "{text}");
    assert!(text.contains("sequence number 42"), "{text}");
    assert!(text.contains("32768 Hz"), "{text}");
    assert!(text.contains("unused bytes    7"), "{text}");
}

#[test]
fn an_unknown_epoch_is_shown_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let mut header = LogHeader::new(4).unwrap();
    header.epoch_time_us = Some(0);
    let file = write(&dir, "v4.bin", &build_log(header, b"x").unwrap());
    let out = inspect(&[&file], false);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("epoch time      0 (unknown)"));
    let out = inspect(&[&file], true);
    let h = &json(&out)[0]["header"];
    assert_eq!(h["epoch_time_us"], 0);
    assert!(h.get("epoch_time_utc").is_none());
}

#[test]
fn a_bad_checksum_is_invalid_but_the_header_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let mut buf = log(3, b"abc", 0);
    *buf.last_mut().unwrap() ^= 0x01;
    let file = write(&dir, "bad.bin", &buf);
    let out = inspect(&[&file], false);
    assert_code(&out, 2);
    let text = stdout(&out);
    assert!(
        text.contains("bad.bin: INVALID: log checksum mismatch"),
        "{text}"
    );
    assert!(text.contains("tick rate"), "{text}");
    assert!(stderr(&out).contains("1 of 1 files invalid"));

    let out = inspect(&[&file], true);
    assert_code(&out, 2);
    let report = &json(&out)[0];
    assert_eq!(report["ok"], false);
    assert!(report["error"]
        .as_str()
        .unwrap()
        .contains("checksum mismatch"));
    assert_eq!(report["header"]["version"], 3);
}

#[test]
fn truncated_unsupported_empty_and_missing_files_are_reported_each() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.bin", &log(2, b"0123456789", 0));
    let mut short = log(1, b"0123456789", 0);
    short.truncate(short.len() - 4);
    let truncated = write(&dir, "truncated.bin", &short);
    let mut v9 = log(1, b"x", 0);
    v9[0] = 9;
    let unsupported = write(&dir, "v9.bin", &v9);
    let header_cut = write(&dir, "header-cut.bin", &log(4, b"", 0)[..20]);
    let empty = write(&dir, "empty.bin", b"");
    let missing = dir.path().join("missing.bin");

    let files = [
        &good,
        &truncated,
        &unsupported,
        &header_cut,
        &empty,
        &missing,
    ];
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let out = inspect(&paths, true);
    assert_code(&out, 2);
    let reports = json(&out);
    let by_file = |name: &str| {
        reports
            .iter()
            .find(|r| r["file"].as_str().unwrap().ends_with(name))
            .unwrap()
    };
    assert_eq!(by_file("good.bin")["ok"], true);
    let expect = [
        ("truncated.bin", "10 data bytes follow it but only 6"),
        ("v9.bin", "unsupported log header version 9"),
        (
            "header-cut.bin",
            "needs 25 bytes but the buffer has only 20",
        ),
        ("empty.bin", "empty"),
        ("missing.bin", "cannot read the file"),
    ];
    for (name, needle) in expect {
        let report = by_file(name);
        assert_eq!(report["ok"], false, "{name}");
        let error = report["error"].as_str().unwrap();
        assert!(error.contains(needle), "{name}: {error}");
    }
    assert!(by_file("missing.bin").get("header").is_none());
    assert!(
        stderr(&out).contains("5 of 6 files invalid"),
        "{}",
        stderr(&out)
    );

    // Human output names every file too.
    let out = inspect(&paths, false);
    assert_code(&out, 2);
    let text = stdout(&out);
    for (name, _) in expect {
        assert!(text.contains(&format!("{name}: INVALID")), "{text}");
    }
    assert!(text.contains("good.bin: ok"));
}

#[test]
fn a_buffer_too_large_to_upload_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "huge.bin", &log(4, b"data", 200_000));
    let out = inspect(&[&file], true);
    assert_code(&out, 2);
    let report = &json(&out)[0];
    assert!(
        report["error"].as_str().unwrap().contains("131072"),
        "{report}"
    );
    assert_eq!(report["header"]["version"], 4);
}

#[test]
fn no_file_is_a_usage_error() {
    let out = inspect(&[], false);
    assert_code(&out, 2);
}

#[test]
fn a_folder_is_refused_with_its_files_named_the_shells_way() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.bin");
    fs::write(&file, log(1, b"x", 0)).unwrap();

    let out = inspect(&[&file, dir.path()], false);

    assert_code(&out, 2);
    assert_eq!(stdout(&out), "", "nothing inspected before the refusal");
    assert_eq!(
        stderr(&out),
        format!(
            "error: {} is a folder; inspect takes files, one message each\nhint: name the files in it: `ulogger inspect {}/*.bin`\n",
            dir.path().display(),
            dir.path().display()
        )
    );
}
