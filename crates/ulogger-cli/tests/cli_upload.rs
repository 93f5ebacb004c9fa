//! `ulogger upload`, `register` and `core-dump` as a user runs them: the
//! built binary against an emulator started in this process, over mutual
//! TLS unless a test says otherwise.
//!
//! Every run gets a fresh `HOME`/`ULOGGER_HOME` and no inherited `ULOGGER_*`
//! variables, so nothing on the machine running the tests is read or
//! touched, and each test sees only the settings it gives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Instant;

use support::sandbox::*;
use ulogger_cloud::wire::{CoreDumpHeader, DeviceInfo};
use ulogger_emulator::{BootReplyMode, Emulator, Record, RecordKind, Verdict};

/// The binary-log record of `size` bytes, once the cloud has it.
fn wait_for_log(emu: &Emulator, size: usize) -> Record {
    emu.wait_for_blocking(
        |r| r.kind == RecordKind::BinaryLog && r.size == size,
        PATIENCE,
    )
    .unwrap_or_else(|| panic!("a {size}-byte log reached the cloud"))
}

fn records_of(emu: &Emulator, kind: RecordKind) -> Vec<Record> {
    emu.records()
        .into_iter()
        .filter(|r| r.kind == kind)
        .collect()
}

fn stored_bytes(emu: &Emulator, record: &Record) -> Vec<u8> {
    let file = record.file.as_ref().expect("record has a stored file");
    std::fs::read(emu.data_dir().join(file)).unwrap()
}

/// The only token `emu` has issued, checked to be for `serial`.
fn only_issued_token(emu: &Emulator, serial: &str) -> u32 {
    let issued = emu.issued_tokens();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!((issued[0].0, issued[0].1.as_str()), (APP, serial));
    issued[0].2
}

#[test]
fn two_logs_are_uploaded_and_a_second_run_reuses_the_cached_token() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let store = sandbox.path("tokens.json");
    let first = sandbox.write("first.bin", &v4_log(300));
    let second = sandbox.write("second.bin", &v1_log(40));
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-UP"));
    args.extend(["--store".to_owned(), s(&store)]);

    let mut run_args = args.clone();
    run_args.extend([s(&first), s(&second)]);
    let run = sandbox.run(&run_args).expect_code(0);

    for file in [&first, &second] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(&s(file)))
            .unwrap_or_else(|| panic!("stdout names {}:\n{}", file.display(), run.stdout));
        assert!(line.contains("uploaded"), "{line}");
    }
    let token = only_issued_token(&emu, "SN-UP");
    for size in [v4_log(300).len(), v1_log(40).len()] {
        let record = wait_for_log(&emu, size);
        assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
        assert_eq!(record.serial.as_deref(), Some("SN-UP"));
        assert_eq!(record.token, Some(token));
    }
    let cached: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    assert_eq!(cached["SN-UP"]["token"], token, "{cached}");
    assert_eq!(cached["SN-UP"]["git_hash"], GIT_HASH, "{cached}");

    // A new process, the same store: no new registration.
    let third = sandbox.write("third.bin", &v4_log(500));
    let mut run_args = args;
    run_args.push(s(&third));
    let run = sandbox.run(&run_args).expect_code(0);
    assert!(run.stdout.contains(&s(&third)), "{}", run.stdout);
    let record = wait_for_log(&emu, v4_log(500).len());
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    assert_eq!(record.token, Some(token));
    assert_eq!(records_of(&emu, RecordKind::Boot).len(), 1);
    assert_eq!(emu.issued_tokens().len(), 1);
}

#[test]
fn json_output_is_an_array_of_per_file_reports() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let v4 = sandbox.write("a.bin", &v4_log(64));
    let v1 = sandbox.write("b.bin", &v1_log(64));
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-JSON"));
    args.extend(strings(&["--no-store", "--json"]));
    args.extend([s(&v4), s(&v1)]);

    let run = sandbox.run(&args).expect_code(0);

    let reports: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}):\n{}", run.stdout));
    let reports = reports.as_array().expect("a JSON array");
    let token = only_issued_token(&emu, "SN-JSON");
    assert_eq!(reports.len(), 2, "{reports:?}");
    for (report, (file, version)) in reports.iter().zip([(&v4, 4), (&v1, 1)]) {
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["file"], s(file), "{report}");
        assert_eq!(report["token"], token, "{report}");
        assert_eq!(report["header_version"], version, "{report}");
        assert_eq!(
            report["topic"],
            format!("binlog/v0/{CUSTOMER}/0/{APP}"),
            "{report}"
        );
    }
}

#[test]
fn an_invalid_log_is_reported_and_the_valid_one_still_goes_up() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let mut bad = v1_log(10);
    let last = bad.len() - 1;
    bad[last] ^= 0xFF; // a data byte: the checksum no longer matches
    let bad_file = sandbox.write("corrupt.bin", &bad);
    let good = v4_log(77);
    let good_file = sandbox.write("good.bin", &good);
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-MIXED"));
    args.push("--no-store".to_owned());
    args.extend([s(&bad_file), s(&good_file)]);

    let run = sandbox.run(&args).expect_code(2);

    let output = run.output();
    let bad_line = output
        .lines()
        .find(|l| l.contains(&s(&bad_file)))
        .unwrap_or_else(|| panic!("the bad file is named:\n{output}"));
    assert!(bad_line.contains("checksum"), "{bad_line}");
    assert!(
        output
            .lines()
            .any(|l| l.contains(&s(&good_file)) && l.contains("uploaded")),
        "{output}"
    );
    let record = wait_for_log(&emu, good.len());
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    // The bad log was refused locally, so it can never arrive later.
    assert_eq!(records_of(&emu, RecordKind::BinaryLog).len(), 1);
}

#[test]
fn device_identity_comes_from_a_dump_and_a_flag_overrides_one_field() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let dump = DeviceInfo::new(APP, "SN-FROM-DUMP", "dump-board", "v2.0.0", "0ddba11").encode();
    let dump_file = sandbox.write("device-info.bin", &dump);
    let mut args = connect_args("register", &emu);
    args.extend(["--device-info".to_owned(), s(&dump_file)]);
    // The same serial may be repeated; a firmware field overridden.
    args.extend(strings(&[
        "--serial",
        "SN-FROM-DUMP",
        "--git-version",
        "v2.0.1",
        "--no-store",
    ]));

    let run = sandbox.run(&args).expect_code(0);

    let token = only_issued_token(&emu, "SN-FROM-DUMP");
    assert_eq!(run.stdout.trim(), format!("SN-FROM-DUMP: token {token}"));
    let boot = records_of(&emu, RecordKind::Boot);
    assert_eq!(boot.len(), 1);
    assert_eq!(boot[0].app_id, Some(APP));
    let payload: serde_json::Value = serde_json::from_slice(&stored_bytes(&emu, &boot[0])).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({
            "device_type": "dump-board",
            "git": "0ddba11",
            "serial": "SN-FROM-DUMP",
            "version": "v2.0.1",
        })
    );
}

#[test]
fn a_serial_or_app_id_that_contradicts_the_dump_is_refused() {
    let sandbox = Sandbox::new();
    let dump = DeviceInfo::new(APP, "SN-FROM-DUMP", "board", "v1", GIT_HASH).encode();
    let dump_file = sandbox.write("device-info.bin", &dump);
    // Nothing listens there: had the command connected, it would exit 3.
    let base = strings(&[
        "register",
        "--customer-id",
        "1",
        "--broker",
        "127.0.0.1",
        "--port",
        &closed_port().to_string(),
        "--plaintext",
        "--no-store",
        "--device-info",
        &s(&dump_file),
    ]);

    let mut args = base.clone();
    args.extend(strings(&["--serial", "SN-OTHER"]));
    let run = sandbox.run(&args).expect_code(2);
    assert_eq!(
        run.stderr,
        format!(
            "error: --serial \"SN-OTHER\" contradicts the device-info dump {} (--device-info), whose serial is \"SN-FROM-DUMP\"\n\
             hint: a dump names its device: drop --serial (and ULOGGER_SERIAL), or give that device's dump\n",
            s(&dump_file)
        )
    );

    let config = sandbox.write("config.toml", b"app_id = 8\n");
    let mut args = base.clone();
    args.extend(strings(&["--config", &s(&config)]));
    let run = sandbox.run(&args).expect_code(2);
    assert!(
        run.stderr.starts_with(&format!(
            "error: app_id = 8 in the config file contradicts the device-info dump {} (--device-info), whose app-id is 7",
            s(&dump_file)
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn a_folder_given_to_upload_is_refused_before_connecting() {
    let sandbox = Sandbox::new();
    let folder = sandbox.path("logs");
    std::fs::create_dir(&folder).unwrap();
    let log = sandbox.write("logs/a.bin", &v1_log(10));
    let mut args = strings(&[
        "upload",
        "--customer-id",
        "1",
        "--broker",
        "127.0.0.1",
        "--port",
        &closed_port().to_string(),
        "--plaintext",
        "--no-store",
    ]);
    args.extend(device_args("SN-FOLDER"));
    args.extend([s(&log), s(&folder)]);

    let run = sandbox.run(&args).expect_code(2);

    assert_eq!(
        run.stderr.lines().next().unwrap(),
        format!(
            "error: {} is a folder; upload takes files, one message each",
            s(&folder)
        )
    );
    // Through the outbox too, before it is created.
    let outbox = sandbox.path("outbox");
    args.extend(["--outbox".to_owned(), s(&outbox)]);
    sandbox.run(&args).expect_code(2);
    assert!(!outbox.exists());
}

#[test]
fn a_log_given_as_device_info_is_refused_as_what_it_is() {
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let args = strings(&[
        "upload",
        "--customer-id",
        "1",
        "--broker",
        "127.0.0.1",
        "--port",
        &closed_port().to_string(),
        "--plaintext",
        "--no-store",
        "--device-info",
        &s(&log),
        &s(&log),
    ]);

    let run = sandbox.run(&args).expect_code(2);

    assert_eq!(
        run.stderr.lines().next().unwrap(),
        format!(
            "error: {} (--device-info) is a binary log, not a device-info dump",
            s(&log)
        )
    );
    assert!(
        run.stderr.contains(
            "hint: --device-info takes the raw bytes of the device's BLE config characteristic"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn each_missing_device_field_is_bad_input_naming_its_flag() {
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let full = device_args("SN-MISSING");
    // Nothing listens there: had the command gone on to connect, it would
    // exit 3, not 2.
    let base = strings(&[
        "upload",
        "--broker",
        "127.0.0.1",
        "--port",
        &closed_port().to_string(),
        "--customer-id",
        "1",
        "--plaintext",
        "--no-store",
        "--timeout",
        "2",
    ]);
    for flag in [
        "--app-id",
        "--serial",
        "--device-type",
        "--git-version",
        "--git-hash",
    ] {
        let at = full.iter().position(|a| a == flag).unwrap();
        let mut args = base.clone();
        args.extend(full[..at].iter().cloned());
        args.extend(full[at + 2..].iter().cloned());
        args.push(s(&log));

        let run = sandbox.run(&args).expect_code(2);
        assert!(run.stderr.contains(flag), "{flag}: {}", run.stderr);
    }
}

#[test]
fn a_serial_no_topic_can_hold_is_refused_once_before_connecting() {
    let sandbox = Sandbox::new();
    let logs = [
        sandbox.write("a.bin", &v1_log(10)),
        sandbox.write("b.bin", &v1_log(10)),
    ];
    // Nothing listens there: had the command connected, it would exit 3.
    let mut args = strings(&[
        "upload",
        "--broker",
        "127.0.0.1",
        "--port",
        &closed_port().to_string(),
        "--customer-id",
        "1",
        "--plaintext",
        "--no-store",
    ]);
    args.extend(replace(device_args("SN"), "--serial", "SN/1+".into()));
    args.extend(logs.iter().map(|l| s(l)));

    let run = sandbox.run(&args).expect_code(2);

    assert_eq!(
        run.stderr,
        "error: --serial: device serial \"SN/1+\" has invalid character '/' at position 2 (allowed: A-Z a-z 0-9 _ - . :)\n"
    );
}

#[test]
fn a_missing_customer_id_is_bad_input() {
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let mut args = strings(&[
        "upload",
        "--broker",
        "127.0.0.1",
        "--port",
        &closed_port().to_string(),
        "--plaintext",
        "--no-store",
        "--timeout",
        "2",
    ]);
    args.extend(device_args("SN-NOCUST"));
    args.push(s(&log));

    let run = sandbox.run(&args).expect_code(2);

    assert!(run.stderr.contains("--customer-id"), "{}", run.stderr);
}

#[test]
fn register_prints_the_token_the_cloud_issued_and_caches_it() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let store = sandbox.path("tokens.json");
    let mut args = connect_args("register", &emu);
    args.extend(device_args("SN-REG"));
    args.extend(["--store".to_owned(), s(&store)]);

    let run = sandbox.run(&args).expect_code(0);

    let token = only_issued_token(&emu, "SN-REG");
    assert_eq!(run.stdout.trim(), format!("SN-REG: token {token}"));
    let cached: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    assert_eq!(cached["SN-REG"]["token"], token, "{cached}");
}

#[test]
fn a_core_dump_arrives_byte_for_byte() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let mut body = b"cC".to_vec();
    body.extend((0..4734u32).map(|i| (i * 7 % 256) as u8));
    let info = DeviceInfo::new(APP, "SN-CRASH", "board", "v1", GIT_HASH);
    let dump = CoreDumpHeader::encode_package(&info, &body);
    let file = sandbox.write("core.dump", &dump);
    let mut args = connect_args("core-dump", &emu);
    args.extend(["--no-store".to_owned(), s(&file)]);

    let run = sandbox.run(&args).expect_code(0);

    assert!(run.stdout.contains(&s(&file)), "{}", run.stdout);
    assert!(run.stdout.contains("5000 bytes"), "{}", run.stdout);
    let record = emu
        .wait_for_blocking(|r| r.kind == RecordKind::CoreDump, PATIENCE)
        .expect("the cloud stored the core dump");
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    assert_eq!(record.topic, format!("core-dump/v0/{CUSTOMER}/0"));
    assert_eq!(stored_bytes(&emu, &record), dump);
}

#[test]
fn an_empty_or_invalid_core_dump_is_refused_before_connecting() {
    let sandbox = Sandbox::new();
    // Nothing listens there: had the command connected, it would exit 3.
    let args = |file: &Path| {
        strings(&[
            "core-dump",
            "--customer-id",
            "1",
            "--broker",
            "127.0.0.1",
            "--port",
            &closed_port().to_string(),
            "--plaintext",
            "--no-store",
            &s(file),
        ])
    };

    let empty = sandbox.write("empty.core", b"");
    let run = sandbox.run(&args(&empty)).expect_code(2);
    assert_eq!(
        run.stderr.lines().next().unwrap(),
        format!("error: the core dump {} is empty (0 bytes)", s(&empty))
    );
    assert!(
        run.stderr
            .contains("hint: read the dump from the device's crash region again"),
        "{}",
        run.stderr
    );

    let info = DeviceInfo::new(APP, "SN-CRASH", "board", "v1", GIT_HASH);
    let mut package = CoreDumpHeader::encode_package(&info, b"cC\x01\x02");
    let last = package.len() - 1;
    package[last] ^= 0xff;
    let corrupt = sandbox.write("corrupt.core", &package);
    let run = sandbox.run(&args(&corrupt)).expect_code(2);
    assert!(
        run.stderr.starts_with(&format!(
            "error: {} is not a valid core dump: core dump checksum mismatch",
            s(&corrupt)
        )),
        "{}",
        run.stderr
    );

    let log = sandbox.write("log.bin", &v1_log(10));
    let run = sandbox.run(&args(&log)).expect_code(2);
    assert!(
        run.stderr
            .contains("hint: this file is a binary log: send it with `ulogger upload`"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_unreachable_broker_is_a_network_failure() {
    let emu = tls_emulator(); // only for its certificates
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let mut args = replace(
        connect_args("upload", &emu),
        "--port",
        closed_port().to_string(),
    );
    args.extend(device_args("SN-UNREACHABLE"));
    args.extend(strings(&["--no-store", "--timeout", "2"]));
    args.push(s(&log));

    let started = Instant::now();
    let run = sandbox.run(&args).expect_code(3);

    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    assert!(run.stderr.contains("error:"), "{}", run.stderr);
    assert!(emu.records().is_empty(), "{:?}", emu.records());
}

#[test]
fn no_boot_reply_times_out_as_a_network_failure_and_nothing_is_uploaded() {
    let emu = tls_emulator();
    emu.faults().set_boot_reply(BootReplyMode::None);
    let sandbox = Sandbox::new();
    let store = sandbox.path("tokens.json");
    let log = sandbox.write("log.bin", &v1_log(10));
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-SILENT"));
    args.extend(strings(&["--token-timeout", "1", "--store"]));
    args.extend([s(&store), s(&log)]);

    let run = sandbox.run(&args).expect_code(3);

    assert!(run.output().contains("boot reply"), "{}", run.output());
    assert_eq!(records_of(&emu, RecordKind::Boot).len(), 1);
    assert!(records_of(&emu, RecordKind::BinaryLog).is_empty());
    let cached = std::fs::read_to_string(&store).unwrap_or_default();
    assert!(!cached.contains("SN-SILENT"), "{cached}");
}

#[test]
fn a_broker_certificate_from_another_ca_is_a_network_failure_naming_the_certificate() {
    let emu = tls_emulator();
    let other = tls_emulator();
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    // Trust the other emulator's CA only.
    let mut args = replace(
        connect_args("upload", &emu),
        "--ca",
        s(&other.certs().unwrap().ca_cert),
    );
    args.extend(device_args("SN-WRONG-CA"));
    args.extend(strings(&["--no-store", "--timeout", "20"]));
    args.push(s(&log));

    let started = Instant::now();
    let run = sandbox.run(&args).expect_code(3);

    assert!(
        started.elapsed() < PATIENCE,
        "a trust failure must not wait for the connect timeout: {:?}",
        started.elapsed()
    );
    assert!(
        run.stderr.to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );
    assert!(records_of(&emu, RecordKind::Boot).is_empty());
}

#[test]
fn settings_come_from_flags_over_environment_over_the_config_file() {
    let emu = tls_emulator();
    let certs = emu.certs().unwrap();
    let sandbox = Sandbox::new();
    let good_port = emu.addr().port().to_string();
    let bad_port = closed_port().to_string();
    let config_text = |port: &str| {
        format!(
            "customer_id = {CUSTOMER}\nbroker = \"127.0.0.1\"\nport = {port}\n\
             ca = {:?}\ncert = {:?}\nkey = {:?}\ntimeout = 2\n",
            s(&certs.ca_cert),
            s(&certs.client_cert),
            s(&certs.client_key),
        )
    };
    let good_config = sandbox.write("good.toml", config_text(&good_port).as_bytes());
    let bad_config = sandbox.write("bad.toml", config_text(&bad_port).as_bytes());
    let register = |config: &Path, serial: &str| {
        let mut args = strings(&["register", "--no-store", "--config"]);
        args.push(s(config));
        args.extend(device_args(serial));
        args
    };
    let port_env = |port: &str| [("ULOGGER_PORT", port.to_owned())];

    // The file alone is enough.
    sandbox
        .run(&register(&good_config, "SN-FILE"))
        .expect_code(0);
    // Its wrong port is really used...
    sandbox
        .run(&register(&bad_config, "SN-FILE-BAD"))
        .expect_code(3);
    // ...unless the environment corrects it...
    sandbox
        .run_with_env(&port_env(&good_port), &register(&bad_config, "SN-ENV"))
        .expect_code(0);
    // ...and a flag beats a wrong environment.
    let mut args = register(&bad_config, "SN-FLAG");
    args.extend(["--port".to_owned(), good_port.clone()]);
    sandbox
        .run_with_env(&port_env(&bad_port), &args)
        .expect_code(0);
    // The environment can also name the file.
    let mut args = strings(&["register", "--no-store"]);
    args.extend(device_args("SN-ENV-CONFIG"));
    sandbox
        .run_with_env(&[("ULOGGER_CONFIG", s(&good_config))], &args)
        .expect_code(0);
    // Without any of those, $ULOGGER_HOME/config.toml is read.
    std::fs::create_dir_all(sandbox.ulogger_home()).unwrap();
    std::fs::copy(&good_config, sandbox.ulogger_home().join("config.toml")).unwrap();
    sandbox.run(&args).expect_code(0);

    let serials: Vec<String> = emu.issued_tokens().into_iter().map(|t| t.1).collect();
    assert_eq!(
        serials,
        [
            "SN-FILE",
            "SN-ENV",
            "SN-FLAG",
            "SN-ENV-CONFIG",
            "SN-ENV-CONFIG"
        ]
    );
}

#[test]
fn plaintext_is_used_only_when_asked_for_and_never_as_a_fallback() {
    let plain = plaintext_emulator();
    let sandbox = Sandbox::new();
    let log = v1_log(33);
    let file = sandbox.write("log.bin", &log);

    let mut args = connect_args("upload", &plain);
    args.extend(device_args("SN-PLAIN"));
    args.extend(strings(&["--no-store", "--timeout", "2"]));
    args.push(s(&file));
    sandbox.run(&args).expect_code(0);
    let record = wait_for_log(&plain, log.len());
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);

    // Plaintext against a TLS broker fails.
    let tls = tls_emulator();
    let mut args = replace(
        connect_args("upload", &plain),
        "--port",
        tls.addr().port().to_string(),
    );
    args.extend(device_args("SN-PLAIN-TO-TLS"));
    args.extend(strings(&["--no-store", "--timeout", "2"]));
    args.push(s(&file));
    sandbox.run(&args).expect_code(3);
    // Asking for plaintext while giving TLS files is a contradiction, not
    // a reason to drop TLS.
    let mut args = connect_args("upload", &tls);
    args.extend(device_args("SN-PLAIN-AND-TLS"));
    args.extend(strings(&["--plaintext", "--no-store", "--timeout", "2"]));
    args.push(s(&file));
    let run = sandbox.run(&args).expect_code(2);
    assert!(run.stderr.contains("plaintext"), "{}", run.stderr);
    assert!(tls.issued_tokens().is_empty());

    // TLS against the plaintext broker fails too.
    let mut args = replace(
        connect_args("upload", &tls),
        "--port",
        plain.addr().port().to_string(),
    );
    args.extend(device_args("SN-TLS-TO-PLAIN"));
    args.extend(strings(&["--no-store", "--timeout", "2"]));
    args.push(s(&file));
    sandbox.run(&args).expect_code(3);
    assert_eq!(
        plain
            .issued_tokens()
            .into_iter()
            .map(|t| t.1)
            .collect::<Vec<_>>(),
        ["SN-PLAIN"]
    );
}

#[test]
fn pacing_can_be_turned_off_by_flag_environment_or_config_file() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let register = |serial: &str, extra: &[&str]| {
        let mut args = connect_args("register", &emu);
        args.push("--no-store".to_owned());
        args.extend(strings(extra));
        args.extend(device_args(serial));
        args
    };
    sandbox
        .run(&register("SN-NOPACE-FLAG", &["--no-pacing"]))
        .expect_code(0);
    sandbox
        .run_with_env(
            &[("ULOGGER_NO_PACING", "true".to_owned())],
            &register("SN-NOPACE-ENV", &[]),
        )
        .expect_code(0);
    let config = sandbox.write("unpaced.toml", b"no_pacing = true\n");
    sandbox
        .run(&register("SN-NOPACE-FILE", &["--config", &s(&config)]))
        .expect_code(0);
    assert_eq!(emu.issued_tokens().len(), 3);
}
