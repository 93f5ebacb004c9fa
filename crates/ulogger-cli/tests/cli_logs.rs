//! `ulogger logs` as a user runs it: lines from a file or a pipe become a
//! device's text logs, with levels, in order, through the outbox too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::process::Stdio;

use serde_json::Value;
use support::sandbox::*;
use ulogger_emulator::{Emulator, Record, RecordKind};

/// Every entry the emulator accepted, in arrival order: (level, text).
fn entries(emu: &Emulator) -> Vec<(u64, String)> {
    emu.records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::TextLogs)
        .flat_map(|r: Record| {
            assert!(r.is_ok(), "{r:?}");
            let body = std::fs::read_to_string(emu.data_dir().join(r.file.unwrap())).unwrap();
            body.lines()
                .skip(1)
                .map(|l| {
                    let entry: Value = serde_json::from_str(l).unwrap();
                    (
                        entry["lv"].as_u64().unwrap(),
                        entry["m"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn lines_from_standard_input_arrive_in_order_with_their_parsed_levels() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let mut args = connect_args("logs", &emu);
    args.extend(device_args("GW-LOGS-1"));
    args.extend(strings(&["--parse-level", "--json"]));
    let mut child = sandbox
        .command(&[])
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut lines = vec!["<3>disk failed".to_owned(), "[warn] low battery".to_owned()];
    lines.extend((0..2_000).map(|i| format!("plain line {i:05} {}", "z".repeat(80))));
    for line in &lines {
        writeln!(input, "{line}").unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let run = Run::from(out).expect_code(0);
    let summary: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(summary["lines"], 2002);
    assert!(summary["messages"].as_u64().unwrap() >= 2, "{summary}");

    let got = entries(&emu);
    let texts: Vec<&String> = got.iter().map(|(_, m)| m).collect();
    assert_eq!(
        texts,
        lines.iter().collect::<Vec<_>>(),
        "every line once, in order"
    );
    assert_eq!(got[0].0, 4, "<3> is an error");
    assert_eq!(got[1].0, 3, "[warn] is a warning");
    assert!(got[2..].iter().all(|(lv, _)| *lv == 2), "the rest is info");
}

#[test]
fn a_file_goes_through_the_outbox_at_the_given_level() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let file = sandbox.write("gateway.log", b"first\nsecond\n\xff not utf-8\n");
    let mut args = connect_args("logs", &emu);
    args.extend(device_args("GW-LOGS-2"));
    args.extend(strings(&["--level", "error", "--outbox"]));
    args.push(s(&sandbox.path("outbox")));
    args.push(s(&file));
    let run = sandbox.run(&args).expect_code(0);
    assert!(
        run.stderr
            .contains("3 lines of GW-LOGS-2 queued in the outbox"),
        "{}",
        run.stderr
    );
    let got = entries(&emu);
    assert_eq!(
        got,
        [
            (4, "first".to_owned()),
            (4, "second".to_owned()),
            (4, "\u{fffd} not utf-8".to_owned())
        ]
    );
}

#[test]
fn without_a_device_it_is_bad_input_naming_the_flag() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let run = sandbox.run(&connect_args("logs", &emu)).expect_code(2);
    assert!(run.stderr.contains("--app-id"), "{}", run.stderr);
}
