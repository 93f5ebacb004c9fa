//! `ulogger make-log` as a new user runs it: logs of every header version
//! that `inspect` accepts and the emulator verifies, a device-info dump
//! `upload` takes, and bad input refused with the flag named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::sandbox::*;
use ulogger_cloud::wire::{validate_checksum, DeviceInfo};
use ulogger_emulator::{Record, RecordKind};

#[test]
fn logs_of_every_version_pass_inspect_and_the_emulator_verifies_them() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let device_info = sandbox.path("device-info.bin");
    let mut files = Vec::new();
    for (version, size) in [(0u8, 0u32), (1, 1), (2, 300), (3, 4096), (4, 65_535)] {
        let out = sandbox.path(&format!("v{version}.bin"));
        let mut args = strings(&["make-log", "--header-version"]);
        args.extend([version.to_string(), "--size".into(), size.to_string()]);
        args.extend(strings(&["--seed", "7", "-o", &s(&out)]));
        if version == 4 {
            args.extend(strings(&["--device-info", &s(&device_info)]));
            args.extend(strings(&[
                "--app-id",
                &APP.to_string(),
                "--serial",
                "SN-MAKE",
            ]));
        }
        sandbox.run(&args).expect_code(0);
        let header = validate_checksum(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            (header.version, u32::from(header.used_bytes)),
            (version, size)
        );
        files.push(s(&out));
    }
    let info = DeviceInfo::decode(&std::fs::read(&device_info).unwrap()).unwrap();
    assert_eq!((info.app_id, info.serial.as_str()), (APP, "SN-MAKE"));

    let mut inspect = strings(&["inspect"]);
    inspect.extend(files.clone());
    sandbox.run(&inspect).expect_code(0);

    let mut upload = connect_args("upload", &emu);
    upload.extend(strings(&["--no-store", "--device-info", &s(&device_info)]));
    upload.extend(files.clone());
    sandbox.run(&upload).expect_code(0);
    let logs: Vec<Record> = emu
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::BinaryLog)
        .collect();
    assert_eq!(logs.len(), files.len(), "{logs:?}");
    for log in &logs {
        assert!(log.is_ok(), "{log:?}");
        assert_eq!(log.serial.as_deref(), Some("SN-MAKE"));
    }
}

#[test]
fn count_writes_numbered_files_into_a_directory_and_the_seed_repeats_them() {
    let sandbox = Sandbox::new();
    let make = |dir: &str, seed: &str| {
        sandbox
            .run(&strings(&[
                "make-log",
                "--count",
                "3",
                "--size",
                "100",
                "--seed",
                seed,
                "--out",
                &s(&sandbox.path(dir)),
            ]))
            .expect_code(0);
        (0..3)
            .map(|i| std::fs::read(sandbox.path(dir).join(format!("log-{i:05}.bin"))).unwrap())
            .collect::<Vec<_>>()
    };
    let first = make("a", "1");
    assert_ne!(first[0], first[1], "each file has its own data");
    assert_eq!(make("b", "1"), first, "the same seed, the same logs");
    assert_ne!(make("c", "2"), first);
}

#[test]
fn a_bad_version_or_size_is_bad_input_naming_the_flag() {
    let sandbox = Sandbox::new();
    for (flag, value) in [("--header-version", "5"), ("--size", "70000")] {
        let out = s(&sandbox.path("log.bin"));
        let run = sandbox
            .run(&strings(&["make-log", flag, value, "-o", &out]))
            .expect_code(2);
        assert!(run.stderr.contains(flag), "{}", run.stderr);
        assert!(!sandbox.path("log.bin").exists());
    }
}
