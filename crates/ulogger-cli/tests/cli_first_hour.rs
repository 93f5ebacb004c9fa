//! A new user's first commands work as printed: `ulogger emulator` shows
//! an upload command (and a config file) that, copied as they are, put a
//! verified log in the emulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::sandbox::{strings, Sandbox};
use support::Running;

/// A printed command line as a shell splits it (words separated by
/// spaces, single quotes kept out), without the leading `ulogger`.
fn split(command: &str) -> Vec<String> {
    let mut words: Vec<String> = command
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_owned())
        .collect();
    assert_eq!(words.remove(0), "ulogger", "{command}");
    words
}

/// Waits for the emulator's record line of a binary log and returns its verdict.
fn next_log_verdict(running: &Running) -> String {
    let line = running.line_containing("binary-log");
    verdict(&line).to_owned()
}

/// The verdict of an emulator's record line: the word after the time
/// and the kind.
fn verdict(line: &str) -> &str {
    line.split_whitespace().nth(2).unwrap()
}

#[test]
fn the_printed_upload_commands_work_as_printed() {
    let data = tempfile::tempdir().unwrap();
    let running = Running::emulator(&["--data", data.path().to_str().unwrap()]);
    let with_flags = format!("ulogger upload {}", running.field("ulogger upload"));
    assert!(!with_flags.contains("..."), "{with_flags}");
    let with_config = format!("ulogger upload {}", running.field("ulogger upload"));
    assert!(with_config.contains("--config"), "{with_config}");
    let config = data.path().join("client.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("customer_id = 1") && text.contains("ca = "),
        "{text}"
    );

    let sandbox = Sandbox::new();
    sandbox.run(&split(&with_flags)).expect_code(0);
    assert_eq!(next_log_verdict(&running), "ok");
    sandbox.run(&split(&with_config)).expect_code(0);
    assert_eq!(next_log_verdict(&running), "ok");
}

#[test]
fn the_json_ready_line_carries_the_upload_command_and_config_file() {
    let data = tempfile::tempdir().unwrap();
    let running = Running::emulator_json(&[
        "--plaintext",
        "--group-id",
        "3",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    let ready = running.json_line();
    assert_eq!(ready["event"], "ready");
    let config = ready["config_file"].as_str().unwrap();
    let beat = ready["heartbeat_command"].as_str().unwrap();
    assert!(beat.starts_with("ulogger heartbeat --config "), "{ready}");
    let http_beat = ready["http_heartbeat_command"].as_str().unwrap();
    assert!(
        http_beat.contains("ulogger heartbeat --api-url http://"),
        "{ready}"
    );
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains("plaintext = true") && text.contains("group_id = 3"),
        "{text}"
    );

    let sandbox = Sandbox::new();
    let command = ready["upload_command"].as_str().unwrap();
    sandbox.run(&split(command)).expect_code(0);
    let mut config_run = strings(&["upload", "--config", config, "--device-info"]);
    config_run.push(ready["device_info"].as_str().unwrap().to_owned());
    config_run.push(ready["sample_log"].as_str().unwrap().to_owned());
    sandbox.run(&config_run).expect_code(0);
    let mut verified = 0;
    while verified < 2 {
        let record = running.json_line();
        if record["kind"] == "binary-log" {
            assert_eq!(record["verdict"], "ok", "{record}");
            verified += 1;
        }
    }
}

#[test]
fn the_printed_heartbeat_commands_work_as_printed_over_mqtt_and_https() {
    let data = tempfile::tempdir().unwrap();
    let running = Running::emulator(&["--data", data.path().to_str().unwrap()]);
    let mqtt = format!("ulogger heartbeat {}", running.field("ulogger heartbeat"));
    let https = running.field("ULOGGER_API_TOKEN=");
    let (token, command) = https.split_once(' ').unwrap();
    assert!(token.starts_with("ulg_"), "{https}");
    assert!(command.contains("--api-url https://"), "{https}");

    let sandbox = Sandbox::new();
    let run = sandbox.run(&split(&mqtt)).expect_code(0);
    assert!(
        run.stdout.contains("published to metrics/v0/"),
        "{}",
        run.stdout
    );
    let line = running.line_containing("metrics");
    assert_eq!(verdict(&line), "ok", "{line}");

    let run = sandbox
        .run_with_env(&[("ULOGGER_API_TOKEN", token.to_owned())], &split(command))
        .expect_code(0);
    assert!(run.stdout.contains("posted to https://"), "{}", run.stdout);
    let line = running.line_containing("metrics");
    assert_eq!(verdict(&line), "ok", "{line}");
}
