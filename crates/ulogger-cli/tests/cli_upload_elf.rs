//! `ulogger upload-elf` as a CI job runs it: the built binary against an
//! emulator started in this process, over mutual TLS, with a firmware ELF
//! compiled by the machine's C compiler.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::firmware::{self, VERSION};
use support::sandbox::*;
use ulogger_emulator::{Emulator, RecordKind};

const DEVICE_TYPE: &str = "sensor-board";

/// The test firmware in the sandbox, or `None` when the test is skipped.
fn firmware(sandbox: &Sandbox, with_modules: bool) -> Option<PathBuf> {
    firmware::compile(sandbox.dir.path(), with_modules)
}

/// Flags naming the firmware, after `connect_args`.
fn firmware_args() -> Vec<String> {
    strings(&[
        "--app-id",
        &APP.to_string(),
        "--device-type",
        DEVICE_TYPE,
        "--git-version",
        VERSION,
        "--git-hash",
        GIT_HASH,
        "--branch",
        "main",
    ])
}

fn requests(emu: &Emulator) -> usize {
    emu.records()
        .iter()
        .filter(|r| r.kind == RecordKind::ElfUploadRequest)
        .count()
}

#[test]
fn flags_upload_the_elf_and_say_what_devices_must_report() {
    let sandbox = Sandbox::new();
    let Some(elf) = firmware(&sandbox, true) else {
        return;
    };
    let emu = tls_emulator();
    let mut args = connect_args("upload-elf", &emu);
    args.extend(firmware_args());
    args.push(s(&elf));

    let run = sandbox.run(&args).expect_code(0);

    assert!(run.stdout.contains("uploaded"), "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!(
            "devices must report version \"{VERSION}\" and git hash \"{GIT_HASH}\""
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let stored = emu.find_elf(APP, DEVICE_TYPE, VERSION).expect("stored");
    assert_eq!(emu.read_elf(&stored).unwrap(), std::fs::read(&elf).unwrap());
    assert_eq!(
        (stored.git_hash.as_str(), stored.branch.as_str()),
        (GIT_HASH, "main")
    );
}

#[test]
fn the_reference_project_file_is_read_and_flags_override_it() {
    let sandbox = Sandbox::new();
    let Some(elf) = firmware(&sandbox, true) else {
        return;
    };
    let emu = tls_emulator();
    let certs = emu.certs().unwrap();
    let project_dir = sandbox.path("project");
    std::fs::create_dir_all(project_dir.join("build")).unwrap();
    std::fs::create_dir_all(project_dir.join("certs")).unwrap();
    std::fs::copy(&elf, project_dir.join("build/fw.axf")).unwrap();
    std::fs::copy(&certs.client_cert, project_dir.join("certs/c.pem.crt")).unwrap();
    std::fs::copy(&certs.client_key, project_dir.join("certs/k.pem.key")).unwrap();
    let project = sandbox.write(
        "ulogger.json",
        serde_json::json!({
            "customer_id": CUSTOMER,
            "group_id": 0,
            "application_id": APP,
            "device_type": DEVICE_TYPE,
            "version": VERSION,
            "git_hash": "from-json",
            "branch": "release",
            "file": "build/fw.axf",
            "cert_path": "certs/c.pem.crt",
            "key_path": "certs/k.pem.key",
        })
        .to_string()
        .as_bytes(),
    );
    let args = strings(&[
        "--json",
        "upload-elf",
        "--project",
        &s(&project),
        "--project-dir",
        &s(&project_dir),
        "--broker",
        "127.0.0.1",
        "--port",
        &emu.addr().port().to_string(),
        "--ca",
        &s(&certs.ca_cert),
        "--git-hash",
        "from-flag",
    ]);

    let run = sandbox.run(&args).expect_code(0);

    let result: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(result["status"], 200);
    assert_eq!(result["attempts"], 1);
    assert_eq!(result["debug_modules"], true);
    assert_eq!(result["git_hash"], "from-flag");
    assert_eq!(result["customer_id"], CUSTOMER);
    assert_eq!(result["warnings"], serde_json::json!([]));
    let stored = emu.find_elf(APP, DEVICE_TYPE, VERSION).expect("stored");
    assert_eq!(
        (stored.git_hash.as_str(), stored.branch.as_str()),
        ("from-flag", "release")
    );
    assert_eq!(stored.upload_id, result["upload_id"].as_u64().unwrap());
}

#[test]
fn the_reference_tools_variables_override_the_project_file() {
    let sandbox = Sandbox::new();
    let Some(elf) = firmware(&sandbox, true) else {
        return;
    };
    let emu = tls_emulator();
    let certs = emu.certs().unwrap();
    let project = sandbox.write(
        "ulogger.json",
        serde_json::json!({
            "customer_id": 1,
            "application_id": 99,
            "device_type": "not-this-one",
            "version": VERSION,
            "git_hash": GIT_HASH,
            "branch": "main",
            "file": s(&elf),
            "cert_path": "missing.pem.crt",
            "key_path": "missing.pem.key",
        })
        .to_string()
        .as_bytes(),
    );
    let env = [
        ("ULOGGER_CUSTOMER_ID", CUSTOMER.to_string()),
        ("ULOGGER_APPLICATION_ID", APP.to_string()),
        ("ULOGGER_DEVICE_TYPE", DEVICE_TYPE.to_owned()),
        (
            "ULOGGER_CERT_DATA",
            std::fs::read_to_string(&certs.client_cert).unwrap(),
        ),
        (
            "ULOGGER_KEY_DATA",
            std::fs::read_to_string(&certs.client_key).unwrap(),
        ),
    ];
    let args = strings(&[
        "upload-elf",
        "--project",
        &s(&project),
        "--broker",
        "127.0.0.1",
        "--port",
        &emu.addr().port().to_string(),
        "--ca",
        &s(&certs.ca_cert),
    ]);

    sandbox.run_with_env(&env, &args).expect_code(0);

    assert!(emu.find_elf(APP, DEVICE_TYPE, VERSION).is_some());
    assert_eq!(emu.stored_elfs().len(), 1);
}

#[test]
fn another_customers_certificate_fails_with_403_and_says_so() {
    let sandbox = Sandbox::new();
    let Some(elf) = firmware(&sandbox, true) else {
        return;
    };
    let emu = tls_emulator();
    let (cert, key) = emu
        .certs()
        .unwrap()
        .mint_client_cert("cust-4343-ci", sandbox.dir.path())
        .unwrap();
    let mut args = connect_args("upload-elf", &emu);
    args = replace(args, "--cert", s(&cert));
    args = replace(args, "--key", s(&key));
    args.extend(firmware_args());
    args.push(s(&elf));

    let run = sandbox.run(&args).expect_code(4);

    assert!(run.stderr.contains("HTTP 403"), "{}", run.stderr);
    assert!(run.stderr.contains("customer 4343"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "hint: use the certificate issued to customer {CUSTOMER}"
        )),
        "{}",
        run.stderr
    );
    assert!(emu.stored_elfs().is_empty());
}

#[test]
fn an_outage_is_retried_until_the_upload_goes_through() {
    let sandbox = Sandbox::new();
    let Some(elf) = firmware(&sandbox, true) else {
        return;
    };
    let emu = tls_emulator();
    emu.faults().fail_elf_puts(2);
    let mut args = connect_args("upload-elf", &emu);
    args.extend(firmware_args());
    args.extend(strings(&["--retries", "2", &s(&elf)]));

    let run = sandbox.run(&args).expect_code(0);

    assert!(run.stdout.contains("after 3 attempts"), "{}", run.stdout);
    assert_eq!(requests(&emu), 3);
    assert_eq!(emu.stored_elfs().len(), 1);

    // Longer than the retries: a failure, with the status.
    emu.faults().fail_elf_puts(5);
    let mut args = connect_args("upload-elf", &emu);
    args.extend(firmware_args());
    args.extend(strings(&["--retries", "1", &s(&elf)]));
    let run = sandbox.run(&args).expect_code(3);
    assert!(run.stderr.contains("HTTP 503"), "{}", run.stderr);
    assert!(
        run.stderr.contains("hint: raise --retries (now 1)"),
        "{}",
        run.stderr
    );
}

#[test]
fn no_answer_times_out_with_a_hint() {
    let sandbox = Sandbox::new();
    let Some(elf) = firmware(&sandbox, true) else {
        return;
    };
    let emu = tls_emulator();
    emu.faults().ignore_elf_upload_requests(1);
    let mut args = connect_args("upload-elf", &emu);
    args.extend(firmware_args());
    // With a unit, as every duration takes one.
    args.extend(strings(&["--reply-timeout", "1000ms", &s(&elf)]));

    let run = sandbox.run(&args).expect_code(3);

    assert!(
        run.stderr
            .contains("timed out waiting for the cloud's upload URL"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: if the cloud is only slow, raise --reply-timeout (now 1 s)"),
        "{}",
        run.stderr
    );
    assert_eq!(requests(&emu), 1);
}

#[test]
fn a_file_that_is_not_an_elf_is_refused_before_connecting() {
    let sandbox = Sandbox::new();
    let hex = sandbox.write("fw.hex", b":020000040800F2\n:00000001FF\n");
    let project_json = sandbox.write("project.json", b"{\"customer_id\": 1}");
    let mut args = strings(&["upload-elf", "--broker", "127.0.0.1", "--customer-id", "1"]);
    // Nothing listens there: a connection attempt would fail with code 3.
    args.extend(["--port".to_owned(), closed_port().to_string()]);
    args.extend(firmware_args());

    let mut with_hex = args.clone();
    with_hex.push(s(&hex));
    let run = sandbox.run(&with_hex).expect_code(2);
    assert!(run.stderr.contains("not an ELF file"), "{}", run.stderr);
    assert!(run.stderr.contains("3a 30 32 30"), "{}", run.stderr);

    // The reference tool's `--json FILE` habit: the JSON given as the ELF.
    let mut with_json = args.clone();
    with_json.push(s(&project_json));
    let run = sandbox.run(&with_json).expect_code(2);
    assert!(run.stderr.contains("--project FILE"), "{}", run.stderr);

    let mut bad_type = replace(args, "--device-type", "board/#".to_owned());
    bad_type.push(s(&hex));
    let run = sandbox.run(&bad_type).expect_code(2);
    assert!(
        run.stderr.contains("cannot go into the upload topic"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_missing_module_table_is_warned_about_and_uploaded_anyway() {
    let sandbox = Sandbox::new();
    let Some(elf) = firmware(&sandbox, false) else {
        return;
    };
    let emu = tls_emulator();
    let mut args = connect_args("upload-elf", &emu);
    args.extend(firmware_args());
    args = replace(args, "--git-version", "v9.9.9-elsewhere".to_owned());
    args.push(s(&elf));

    let run = sandbox.run(&args).expect_code(0);

    assert!(
        run.stderr
            .contains("warning: the ELF has no .ulogger.debug_modules section"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("the version string \"v9.9.9-elsewhere\" does not occur in the ELF"),
        "{}",
        run.stderr
    );
    assert!(emu.find_elf(APP, DEVICE_TYPE, "v9.9.9-elsewhere").is_some());
}

#[test]
fn sigterm_ends_the_upload_and_removes_the_key_written_from_the_environment() {
    let sandbox = Sandbox::new();
    let Some(elf) = firmware(&sandbox, true) else {
        return;
    };
    let emu = tls_emulator();
    let certs = emu.certs().unwrap();
    emu.faults().ignore_elf_upload_requests(1);
    let tmp = sandbox.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let env = [
        ("TMPDIR", s(&tmp)),
        (
            "ULOGGER_CERT_DATA",
            std::fs::read_to_string(&certs.client_cert).unwrap(),
        ),
        (
            "ULOGGER_KEY_DATA",
            std::fs::read_to_string(&certs.client_key).unwrap(),
        ),
    ];
    let mut args = strings(&[
        "upload-elf",
        "--broker",
        "127.0.0.1",
        "--customer-id",
        &CUSTOMER.to_string(),
        "--port",
        &emu.addr().port().to_string(),
        "--ca",
        &s(&certs.ca_cert),
        "--reply-timeout",
        "600",
    ]);
    args.extend(firmware_args());
    args.push(s(&elf));
    let mut command = sandbox.command(&env);
    command.args(&args).stdout(std::process::Stdio::piped());
    let mut running = support::Running::spawn(command);
    assert!(
        emu.wait_for_blocking(|r| r.kind == RecordKind::ElfUploadRequest, PATIENCE)
            .is_some(),
        "the request reached the cloud"
    );
    let written: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert_eq!(written.len(), 1, "the PEM directory while it runs");

    let status = running.terminate();

    assert_eq!(status.code(), Some(130));
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "removed");
}
