//! A file or folder the user may not use is bad input (exit 2) with what
//! to do, not an internal error (exit 1), whichever command meets it.
//! Tests run as root, whom permissions do not stop: as root the binary
//! runs as `nobody` (a copy kept in the sandbox, which `nobody` can
//! reach), so the modes below make the real calls fail with EACCES.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use support::sandbox::*;

const HINT: &str = "hint: the user running ulogger may not use that file or folder";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The binary as a user whom permissions stop, in `sandbox`.
fn unprivileged(sandbox: &Sandbox) -> Command {
    let root = std::fs::metadata(sandbox.dir.path()).unwrap().uid() == 0;
    if !root {
        return sandbox.command(&[]);
    }
    chmod(sandbox.dir.path(), 0o777);
    let copy = sandbox.path("ulogger-as-nobody");
    if !copy.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_ulogger"), &copy).unwrap();
        chmod(&copy, 0o755);
    }
    let template = sandbox.command(&[]);
    let mut command = Command::new(&copy);
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command.uid(65534).gid(65534);
    command
}

/// Held while a copy of the binary is written and while a child is
/// started: a child forked while another test's copy is still open for
/// writing would keep it open, and running the copy would then fail with
/// ETXTBSY ("text file busy").
static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(sandbox: &Sandbox, args: &[String]) -> Run {
    let child = {
        let _spawning = SPAWNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        unprivileged(sandbox)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    Run::from(child.wait_with_output().unwrap())
}

#[test]
fn a_folder_that_may_not_be_written_is_bad_input_with_what_to_do() {
    let sandbox = Sandbox::new();
    let locked = sandbox.path("locked");
    std::fs::create_dir_all(&locked).unwrap();
    chmod(&locked, 0o555);

    // A file the command writes.
    let run_ = run(
        &sandbox,
        &strings(&["make-log", "-o", &s(&locked.join("log.bin"))]),
    )
    .expect_code(2);
    assert!(run_.stderr.contains("Permission denied"), "{}", run_.stderr);
    assert!(run_.stderr.contains(HINT), "{}", run_.stderr);

    // An outbox the command creates (through the library).
    let log = sandbox.write("log.bin", &v1_log(10));
    chmod(&log, 0o644);
    let mut args = strings(&[
        "upload",
        "--customer-id",
        "1",
        "--no-store",
        "--outbox",
        &s(&locked.join("outbox")),
    ]);
    args.extend(device_args("SN-PERMISSION"));
    args.push(s(&log));
    let run_ = run(&sandbox, &args).expect_code(2);
    assert!(run_.stderr.contains("Permission denied"), "{}", run_.stderr);
    assert!(run_.stderr.contains(HINT), "{}", run_.stderr);

    // With --json, the same kind in the report.
    let mut json = vec!["--json".to_owned()];
    json.extend(strings(&["make-log", "-o", &s(&locked.join("log.bin"))]));
    let run_ = run(&sandbox, &json).expect_code(2);
    let report: serde_json::Value = serde_json::from_str(run_.stderr.trim()).unwrap();
    assert_eq!(report["error"]["kind"], "bad_input", "{report}");
    assert!(
        report["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("give it access"),
        "{report}"
    );
    chmod(&locked, 0o755);
}

#[test]
fn a_config_file_that_may_not_be_read_is_bad_input_with_what_to_do() {
    let sandbox = Sandbox::new();
    let config = sandbox.write("config.toml", b"customer_id = 1\n");
    chmod(&config, 0o000);
    let run_ = run(
        &sandbox,
        &strings(&["config", "show", "--config", &s(&config)]),
    )
    .expect_code(2);
    assert!(
        run_.stderr.contains("cannot read the config file"),
        "{}",
        run_.stderr
    );
    assert!(run_.stderr.contains(HINT), "{}", run_.stderr);
}
