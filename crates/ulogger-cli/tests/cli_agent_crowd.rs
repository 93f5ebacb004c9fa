//! `ulogger agent` with ten thousand files dropped at once among entries
//! that are no log files: a socket, a folder named like a log, a 0-byte
//! file, a name that is not UTF-8. Every log arrives exactly once, the
//! empty file is set aside with its reason, the socket and the folder are
//! left in place with one warning each, and nothing blocks or is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(unix)]

mod support;

use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use support::sandbox::*;
use support::Running;
use ulogger_emulator::{Emulator, EmulatorConfig, PlatformLimits, RecordKind};

const DEVICE_TOML: &str = r#"app_id = 7
serial = "SN-CROWD"
device_type = "board"
git_version = "v1.0.0"
git_hash = "abc1234"
"#;

const FILES: usize = 10_000;
const FOLDERS: usize = 10;

fn logs_received(emu: &Emulator) -> usize {
    emu.records()
        .iter()
        .filter(|r| r.kind == RecordKind::BinaryLog)
        .count()
}

#[test]
fn ten_thousand_files_at_once_among_odd_entries_each_arrive_once() {
    let sandbox = Sandbox::new();
    let emu = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .limits(PlatformLimits::unlimited()),
    )
    .unwrap();
    let inbox = sandbox.path("inbox");
    for folder in 0..FOLDERS {
        let device = inbox.join(format!("board-{folder}"));
        std::fs::create_dir_all(&device).unwrap();
        std::fs::write(device.join("device.toml"), DEVICE_TOML).unwrap();
    }
    for n in 0..FILES {
        let device = inbox.join(format!("board-{}", n % FOLDERS));
        std::fs::write(device.join(format!("log-{n:05}.bin")), numbered_log(n)).unwrap();
    }
    let odd = inbox.join("board-0");
    let _socket = std::os::unix::net::UnixListener::bind(odd.join("sock.bin")).unwrap();
    std::fs::create_dir(odd.join("folder.bin")).unwrap();
    std::fs::write(odd.join("empty.bin"), b"").unwrap();
    let not_utf8 = std::ffi::OsStr::from_bytes(b"log-\xff.bin");
    std::fs::write(odd.join(not_utf8), numbered_log(FILES)).unwrap();

    let log = sandbox.path("agent.log");
    let mut command = sandbox.command(&[("ULOGGER_LOG", "warn".to_owned())]);
    command
        .args([
            "agent",
            "--broker",
            "127.0.0.1",
            "--plaintext",
            "--no-store",
            "--no-pacing",
            "--scan-interval",
            "20",
        ])
        .args(["--customer-id", &CUSTOMER.to_string()])
        .args(["--port", &emu.addr().port().to_string()])
        .args(["--inbox", &s(&inbox)])
        .args(["--outbox", &s(&sandbox.path("outbox"))])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut running = Running::spawn(command);

    let deadline = Instant::now() + Duration::from_secs(240);
    while logs_received(&emu) < FILES + 1 {
        assert!(
            Instant::now() < deadline,
            "only {} of {} logs arrived",
            logs_received(&emu),
            FILES + 1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rejected = sandbox.path("rejected/board-0/empty.bin");
    while !rejected.with_extension("bin.reason").is_file() {
        assert!(
            Instant::now() < deadline,
            "the empty file was not set aside"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(running.terminate().success());

    let copies = copies(&emu);
    assert_eq!(copies.len(), FILES + 1);
    assert!(copies.values().all(|&n| n == 1), "a log arrived twice");
    assert!(rejected.is_file());
    // What is left is exactly what is not a log file to take.
    let mut left: Vec<String> = std::fs::read_dir(&odd)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["device.toml", "folder.bin", "sock.bin"]);
    for folder in 1..FOLDERS {
        let names: Vec<_> = std::fs::read_dir(inbox.join(format!("board-{folder}")))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["device.toml"], "board-{folder}");
    }
    let log = std::fs::read_to_string(&log).unwrap();
    for entry in ["sock.bin", "folder.bin"] {
        let warnings = log
            .lines()
            .filter(|l| l.contains("not taken from the inbox") && l.contains(entry))
            .count();
        assert_eq!(warnings, 1, "{entry} warned about once:\n{log}");
    }
    assert!(log.contains("a socket"), "{log}");
}
