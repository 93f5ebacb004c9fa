//! `ulogger query logs` shows what the emulator decoded (issue 21, "The
//! local cloud decodes"): a firmware ELF and a log of that build uploaded
//! with the library's client, then the built binary reads the records
//! back as lines like `ulogger decode`'s and as JSON.
//!
//! The firmware is `ulogger-wire`'s C stand-in for the agent, compiled by
//! that crate's own helper (included by path, not copied). Without a C
//! compiler the test is skipped, except under CI (`CI=true`), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "../../ulogger-wire/tests/support/mod.rs"]
mod c_fixture;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::sandbox::*;
use ulogger_cloud::blocking::Client;
use ulogger_cloud::wire::DeviceInfo;
use ulogger_cloud::{ElfUpload, MqttConfig};
use ulogger_emulator::Emulator;

const DEVICE_TYPE: &str = "test board";
/// The version string the stand-in embeds.
const VERSION: &str = "1.2.3-test";

#[test]
fn decoded_records_come_back_as_lines_and_as_json() {
    let dir = c_fixture::scratch("cli-query-agent");
    let elf = dir.join("agent");
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ulogger-wire/tests/fixtures/agent.c");
    let flags = ["-std=gnu11", "-O1", "-w", "-no-pie", "-fno-pie"];
    if c_fixture::compile(&source, &elf, &flags).is_none() {
        return;
    }
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let run = Command::new(&elf).arg(&logs).output().unwrap();
    assert!(run.status.success());
    let oracle: Vec<String> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("M "))
        .map(str::to_owned)
        .collect();

    let emu = tls_emulator();
    let certs = emu.certs().unwrap();
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(emu.addr().port())
        .group_id(emu.group_id())
        .ca_file(&certs.ca_cert)
        .client_cert(&certs.client_cert, &certs.client_key);
    let client = Client::builder(config).build().unwrap();
    let upload =
        ElfUpload::new(APP, DEVICE_TYPE, VERSION, GIT_HASH).max_backoff(Duration::from_millis(50));
    client
        .upload_elf(&upload, std::fs::read(&elf).unwrap())
        .unwrap();
    let device = DeviceInfo::new(APP, "SN-DECODED", DEVICE_TYPE, VERSION, GIT_HASH);
    client
        .upload_log(&device, &std::fs::read(logs.join("v4.bin")).unwrap())
        .unwrap();

    let sandbox = Sandbox::new();
    let run = query(&sandbox, &emu, &["logs", "--serial", "SN-DECODED"]).expect_code(0);
    // v4.bin's records (v1.bin's two follow them in the oracle).
    for line in &oracle[..oracle.len() - 2] {
        let (level, rest) = line.split_once(' ').unwrap();
        let (module, message) = rest.split_once(' ').unwrap();
        let module = if module == "-" { "ALWAYS" } else { module };
        let shown = format!("record  {level:<8} {module:<10} {message}");
        assert!(
            run.stdout
                .lines()
                .any(|l| l.trim_end().ends_with(shown.trim_end())),
            "{shown:?} not in\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout
            .contains(&format!("decoded: {} records", oracle.len() - 2)),
        "{}",
        run.stdout
    );
    // Wall-clock times: the readout was 2023-11-14T22:13:20Z.
    assert!(run.stdout.contains("2023-11-14T22:11:"), "{}", run.stdout);

    let run = query(
        &sandbox,
        &emu,
        &["--json", "logs", "--serial", "SN-DECODED"],
    )
    .expect_code(0);
    let body: Value = serde_json::from_str(&run.stdout).unwrap();
    let records: Vec<&Value> = body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "record")
        .collect();
    assert_eq!(records.len(), oracle.len() - 2);
    let heartbeat = records
        .iter()
        .find(|r| r["metric"]["name"] == "heartbeat")
        .unwrap();
    assert_eq!(heartbeat["metric"]["value"], 1);
    assert_eq!(heartbeat["level"], "METRIC");
}

/// `ulogger query ARGS` with the emulator's URL and CA, the token in the
/// environment.
fn query(sandbox: &Sandbox, emu: &Emulator, args: &[&str]) -> Run {
    let mut all = strings(&["query"]);
    all.extend(strings(args));
    all.extend(strings(&["--api-url", &emu.http_url()]));
    all.extend(["--ca".to_owned(), s(&emu.certs().unwrap().ca_cert)]);
    sandbox.run_with_env(&[("ULOGGER_API_TOKEN", emu.api_token().to_owned())], &all)
}
