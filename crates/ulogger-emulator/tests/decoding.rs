//! The emulator decodes binary logs with the uploaded firmware ELF
//! (issue 21, "The local cloud decodes"), over real sockets: the ELF
//! uploaded with the library's client (request over MQTT, PUT over
//! HTTP), logs uploaded by the same client, decoded records read back
//! with `GET /logs`.
//!
//! The firmware is `ulogger-wire`'s C stand-in for the agent
//! (`crates/ulogger-wire/tests/fixtures/agent.c`), compiled here with the
//! machine's C compiler by that crate's own helper (included by path, not
//! copied); its `printf` output is the oracle. Without a compiler the tests
//! are skipped, except under CI (`CI=true`), where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../ulogger-wire/tests/support/mod.rs"]
mod c_fixture;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ulogger_cloud::wire::DeviceInfo;
use ulogger_cloud::{Client, ElfUpload, MqttConfig, Security};
use ulogger_emulator::{Emulator, EmulatorConfig, PlatformLimits};

const CUSTOMER: u32 = 42;
const APP: u32 = 7;
const DEVICE_TYPE: &str = "test board";
/// The version string the stand-in embeds (`ulogger_firmware_version`).
const VERSION: &str = "1.2.3-test";

/// One build of the stand-in and the logs it wrote.
struct Build {
    elf: PathBuf,
    logs: PathBuf,
    /// "M <level> <module> <message>" per record of v4.bin.
    oracle: Vec<String>,
}

impl Build {
    fn log(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.logs.join(name)).unwrap()
    }

    fn elf(&self) -> Vec<u8> {
        std::fs::read(&self.elf).unwrap()
    }
}

/// Compiles and runs `agent.c` into `name`, with extra linker `flags`.
fn build(name: &str, flags: &[&str]) -> Option<Build> {
    let dir = c_fixture::scratch(name);
    let elf = dir.join("agent");
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ulogger-wire/tests/fixtures/agent.c");
    let mut all = vec!["-std=gnu11", "-O1", "-w", "-no-pie", "-fno-pie"];
    all.extend_from_slice(flags);
    c_fixture::compile(&source, &elf, &all)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let run = Command::new(&elf).arg(&logs).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = String::from_utf8(run.stdout).unwrap();
    // v4.bin's records come first; v1.bin's two follow.
    let mut oracle: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("M ").map(str::to_owned))
        .collect();
    oracle.truncate(oracle.len() - 2);
    Some(Build { elf, logs, oracle })
}

/// The firmware as its CI builds it.
fn firmware() -> Option<&'static Build> {
    static BUILD: OnceLock<Option<Build>> = OnceLock::new();
    BUILD.get_or_init(|| build("emulator-agent", &[])).as_ref()
}

/// Another build of the same source, linked elsewhere: none of its format
/// addresses is in the first build's image.
fn other_build() -> Option<&'static Build> {
    static BUILD: OnceLock<Option<Build>> = OnceLock::new();
    BUILD
        .get_or_init(|| build("emulator-agent-moved", &["-Wl,-Ttext-segment=0x20000000"]))
        .as_ref()
}

fn start() -> Emulator {
    Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .limits(PlatformLimits::unlimited()),
    )
    .unwrap()
}

fn client(emu: &Emulator) -> Client {
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(emu.addr().port())
        .group_id(emu.group_id())
        .security(Security::Plaintext);
    Client::builder(config).build().unwrap()
}

fn device(serial: &str, version: &str) -> DeviceInfo {
    DeviceInfo::new(APP, serial, DEVICE_TYPE, version, "abc1234")
}

fn elf_upload() -> ElfUpload {
    ElfUpload::new(APP, DEVICE_TYPE, VERSION, "abc1234").max_backoff(Duration::from_millis(50))
}

/// `GET target` with the emulator's token: the JSON body of a 200.
async fn get(emu: &Emulator, target: &str) -> Value {
    let mut stream = TcpStream::connect(emu.http_addr()).await.unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\n\r\n",
        emu.api_token()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&reply[..split]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_slice(&reply[split + 4..]).unwrap()
}

/// The device's log entries, oldest first: (binary entries, records).
async fn logs_of(emu: &Emulator, serial: &str) -> (Vec<Value>, Vec<Value>) {
    let body = get(
        emu,
        &format!("/logs?application_id={APP}&device_serial={serial}&limit=10000"),
    )
    .await;
    let mut items = body["logs"].as_array().unwrap().clone();
    items.reverse();
    let (binary, records) = items.into_iter().partition(|item| item["type"] == "binary");
    (binary, records)
}

/// "<level> <module> <message>" as the oracle prints it.
fn oracle_line(record: &Value) -> String {
    format!(
        "{} {} {}",
        record["level"].as_str().unwrap(),
        record["module"].as_str().unwrap_or("-"),
        record["message"].as_str().unwrap()
    )
}

/// The decoded records of one log, in log order (the API answers newest
/// first; records of one log that share a time keep their order by offset).
fn in_log_order(mut records: Vec<Value>) -> Vec<Value> {
    records.sort_by_key(|r| r["offset"].as_u64().unwrap());
    records
}

#[tokio::test]
async fn a_log_of_an_uploaded_build_is_decoded_on_arrival() {
    let Some(fw) = firmware() else { return };
    let emu = start();
    let client = client(&emu);
    let receipt = client.upload_elf(&elf_upload(), fw.elf()).await.unwrap();
    assert_eq!(receipt.status, 200);

    client
        .upload_log(&device("SN-ARRIVE", VERSION), &fw.log("v4.bin"))
        .await
        .unwrap();

    let (binary, records) = logs_of(&emu, "SN-ARRIVE").await;
    assert_eq!(binary.len(), 1);
    let decoding = &binary[0]["decoding"];
    assert_eq!(decoding["state"], "decoded", "{decoding}");
    assert_eq!(decoding["records"], fw.oracle.len());
    assert_eq!(decoding["with_problems"], 0, "{decoding}");
    assert_eq!(binary[0]["device_type"], DEVICE_TYPE);
    assert_eq!(binary[0]["firmware_version"], VERSION);
    let records = in_log_order(records);
    let lines: Vec<String> = records.iter().map(oracle_line).collect();
    assert_eq!(lines, fw.oracle, "every message as the firmware's printf");
    // A version 4 header dates the records by the device's wall clock:
    // the readout is 2023-11-14T22:13:20Z, 100 s of ticks after the start.
    let first = &records[0];
    assert_eq!(first["time"]["kind"], "wall");
    let readout = 1_700_000_000.0;
    let ts = first["timestamp"].as_f64().unwrap();
    assert!(ts < readout && ts > readout - 100.0, "{first}");
    // Metrics come typed: an integer stays an integer, a double a float.
    let metric = |name: &str| {
        records
            .iter()
            .find(|r| r["metric"]["name"] == name)
            .map(|r| r["metric"]["value"].clone())
            .unwrap()
    };
    assert_eq!(metric("temperature"), serde_json::json!(-12));
    assert_eq!(metric("uptime_s"), serde_json::json!(3_000_000_000u64));
    assert!(metric("voltage").is_f64());
    assert_eq!(metric("heartbeat"), serde_json::json!(1));
    client.shutdown().await;
}

#[tokio::test]
async fn a_log_waits_for_its_elf_and_is_decoded_when_it_arrives() {
    let Some(fw) = firmware() else { return };
    let emu = start();
    let client = client(&emu);
    client
        .upload_log(&device("SN-EARLY", VERSION), &fw.log("v3.bin"))
        .await
        .unwrap();
    // A device of another firmware version is not decoded by this ELF.
    client
        .upload_log(&device("SN-OTHER-VERSION", "9.9.9"), &fw.log("v3.bin"))
        .await
        .unwrap();

    let (binary, records) = logs_of(&emu, "SN-EARLY").await;
    assert!(records.is_empty());
    assert_eq!(binary[0]["decoding"]["state"], "no_elf");
    assert_eq!(
        binary[0]["decoding"]["reason"],
        format!("no ELF for {DEVICE_TYPE} {VERSION}")
    );

    client.upload_elf(&elf_upload(), fw.elf()).await.unwrap();

    // Decoded before the PUT was answered.
    let (binary, records) = logs_of(&emu, "SN-EARLY").await;
    assert_eq!(binary[0]["decoding"]["state"], "decoded", "{}", binary[0]);
    let lines: Vec<String> = in_log_order(records).iter().map(oracle_line).collect();
    assert_eq!(lines, fw.oracle);
    let (binary, records) = logs_of(&emu, "SN-OTHER-VERSION").await;
    assert!(records.is_empty());
    assert_eq!(
        binary[0]["decoding"]["reason"],
        format!("no ELF for {DEVICE_TYPE} 9.9.9")
    );
    // A version 3 header has no wall clock: uptime, dated by arrival.
    let (_, records) = logs_of(&emu, "SN-EARLY").await;
    assert!(records.iter().all(|r| r["time"]["kind"] == "uptime"));
    client.shutdown().await;
}

#[tokio::test]
async fn a_log_of_another_build_reports_its_addresses_and_guesses_nothing() {
    let (Some(fw), Some(moved)) = (firmware(), other_build()) else {
        return;
    };
    let emu = start();
    let client = client(&emu);
    client.upload_elf(&elf_upload(), fw.elf()).await.unwrap();
    // The stale-ELF case: the device reports the version the ELF was
    // uploaded under, but runs another build.
    client
        .upload_log(&device("SN-MOVED", VERSION), &moved.log("v4.bin"))
        .await
        .unwrap();

    let (binary, records) = logs_of(&emu, "SN-MOVED").await;
    let decoding = &binary[0]["decoding"];
    assert_eq!(decoding["state"], "decoded");
    assert_eq!(decoding["other_build"], moved.oracle.len(), "{decoding}");
    assert_eq!(records.len(), moved.oracle.len());
    for record in &records {
        assert_eq!(record["message"], "", "nothing guessed: {record}");
        let problems = record["problems"].as_array().unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p["kind"] == "unknown_format_address"),
            "{record}"
        );
        let address = record["format_address"].as_u64().unwrap();
        assert!(address >= 0x2000_0000, "{address:#x}");
    }
    client.shutdown().await;
}

#[tokio::test]
async fn per_record_problems_are_kept_with_their_records() {
    let Some(fw) = firmware() else { return };
    let emu = start();
    let client = client(&emu);
    client.upload_elf(&elf_upload(), fw.elf()).await.unwrap();
    client
        .upload_log(&device("SN-ERRORS", VERSION), &fw.log("errors.bin"))
        .await
        .unwrap();
    let (binary, records) = logs_of(&emu, "SN-ERRORS").await;
    let records = in_log_order(records);
    assert_eq!(binary[0]["decoding"]["state"], "decoded");
    let kinds: Vec<String> = records
        .iter()
        .map(|r| {
            r["problems"]
                .as_array()
                .unwrap()
                .first()
                .map_or("ok".to_owned(), |p| p["kind"].as_str().unwrap().to_owned())
        })
        .collect();
    assert!(
        kinds.contains(&"unknown_format_address".to_owned()),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"too_few_arguments".to_owned()), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("frame_truncated"));
    assert!(records.iter().any(|r| r["message"] == "good 1"));
    client.shutdown().await;
}

/// A well-formed ELF header of a big-endian executable with nothing in
/// it: the upload's check takes it, the decoder does not (uLogger logs
/// come from little-endian firmware).
fn big_endian_elf() -> Vec<u8> {
    let mut elf = vec![0u8; 64];
    elf[..8].copy_from_slice(b"\x7fELF\x02\x02\x01\x00");
    elf[16..18].copy_from_slice(&2u16.to_be_bytes()); // an executable
    elf[18..20].copy_from_slice(&40u16.to_be_bytes()); // ARM
    elf[20..24].copy_from_slice(&1u32.to_be_bytes());
    elf[52..54].copy_from_slice(&64u16.to_be_bytes());
    elf[54..56].copy_from_slice(&56u16.to_be_bytes());
    elf[58..60].copy_from_slice(&64u16.to_be_bytes());
    elf
}

#[tokio::test]
async fn an_elf_that_does_not_read_keeps_the_log_waiting_for_a_good_one() {
    let Some(fw) = firmware() else { return };
    let emu = start();
    let client = client(&emu);
    client
        .upload_elf(&elf_upload(), big_endian_elf())
        .await
        .unwrap();
    client
        .upload_log(&device("SN-BAD-ELF", VERSION), &fw.log("v4.bin"))
        .await
        .unwrap();
    let (binary, records) = logs_of(&emu, "SN-BAD-ELF").await;
    assert!(records.is_empty());
    let decoding = &binary[0]["decoding"];
    assert_eq!(decoding["state"], "bad_elf", "{decoding}");
    let reason = decoding["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "the ELF for {DEVICE_TYPE} {VERSION} does not read: "
        )),
        "{reason}"
    );

    client.upload_elf(&elf_upload(), fw.elf()).await.unwrap();
    let (binary, records) = logs_of(&emu, "SN-BAD-ELF").await;
    assert_eq!(binary[0]["decoding"]["state"], "decoded");
    assert_eq!(records.len(), fw.oracle.len());
    client.shutdown().await;
}

#[tokio::test]
async fn a_kept_data_directory_keeps_waiting_logs_for_an_elf_uploaded_after_a_restart() {
    let Some(fw) = firmware() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .limits(PlatformLimits::unlimited())
            .data_dir(dir.path())
    };
    let emu = Emulator::start(config()).unwrap();
    let first = client(&emu);
    first
        .upload_log(&device("SN-RESTART", VERSION), &fw.log("v4.bin"))
        .await
        .unwrap();
    first.shutdown().await;
    emu.shutdown().unwrap();

    let emu = Emulator::start(config()).unwrap();
    let client = client(&emu);
    let (binary, _) = logs_of(&emu, "SN-RESTART").await;
    assert_eq!(binary[0]["decoding"]["state"], "no_elf");
    client.upload_elf(&elf_upload(), fw.elf()).await.unwrap();
    let (binary, records) = logs_of(&emu, "SN-RESTART").await;
    assert_eq!(binary[0]["decoding"]["state"], "decoded");
    let lines: Vec<String> = in_log_order(records).iter().map(oracle_line).collect();
    assert_eq!(lines, fw.oracle);
    client.shutdown().await;
}

#[tokio::test]
async fn an_elf_uploaded_again_for_the_same_firmware_decodes_its_logs_again() {
    let (Some(fw), Some(moved)) = (firmware(), other_build()) else {
        return;
    };
    let emu = start();
    let client = client(&emu);
    // The wrong build is uploaded first under the firmware's version...
    client.upload_elf(&elf_upload(), moved.elf()).await.unwrap();
    client
        .upload_log(&device("SN-REPLACED", VERSION), &fw.log("v4.bin"))
        .await
        .unwrap();
    let (binary, records) = logs_of(&emu, "SN-REPLACED").await;
    let first = binary[0]["decoding"].clone();
    assert_eq!(first["state"], "decoded", "{first}");
    assert_eq!(first["other_build"], fw.oracle.len(), "{first}");
    assert!(records.iter().all(|r| r["message"] == ""));

    // ...then the right one, for the same customer, application, device
    // type and version: it replaces the first, and the log is decoded again.
    let receipt = client.upload_elf(&elf_upload(), fw.elf()).await.unwrap();
    assert_eq!(receipt.status, 200);
    let (binary, records) = logs_of(&emu, "SN-REPLACED").await;
    assert_eq!(binary.len(), 1);
    let decoding = &binary[0]["decoding"];
    assert_eq!(decoding["state"], "decoded", "{decoding}");
    assert_eq!(decoding["other_build"], 0, "{decoding}");
    assert_ne!(decoding["elf"]["upload_id"], first["elf"]["upload_id"]);
    // The first decoding's records are gone: each record once, as printed.
    let lines: Vec<String> = in_log_order(records).iter().map(oracle_line).collect();
    assert_eq!(lines, fw.oracle);
    let stored = emu.find_elf(APP, DEVICE_TYPE, VERSION).unwrap();
    assert_eq!(emu.read_elf(&stored).unwrap(), fw.elf());
    client.shutdown().await;
}

/// A kept data directory with one log of `serial` stored by a run that
/// had `fw`'s ELF (uploaded first when `with_elf`), the emulator stopped.
async fn kept_dir_with_a_log(fw: &Build, serial: &str, with_elf: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(kept(dir.path())).unwrap();
    let client = client(&emu);
    if with_elf {
        client.upload_elf(&elf_upload(), fw.elf()).await.unwrap();
    }
    client
        .upload_log(&device(serial, VERSION), &fw.log("v4.bin"))
        .await
        .unwrap();
    client.shutdown().await;
    emu.shutdown().unwrap();
    dir
}

fn kept(dir: &Path) -> EmulatorConfig {
    EmulatorConfig::new(CUSTOMER)
        .plaintext(true)
        .limits(PlatformLimits::unlimited())
        .data_dir(dir)
}

/// Runs `sql` on the record database of a stopped emulator.
fn edit_database(dir: &Path, sql: &str) {
    let db = rusqlite::Connection::open(dir.join(ulogger_emulator::DATABASE_FILE)).unwrap();
    db.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn logs_stored_before_the_emulator_decoded_are_decoded_at_the_next_start() {
    let Some(fw) = firmware() else { return };
    let dir = kept_dir_with_a_log(fw, "SN-OLD", true).await;
    // Make the directory what an emulator from before decoding left: no
    // decoding states, no decoded records, log entries without
    // `decoding`, and tokens kept without device type and version.
    edit_database(
        dir.path(),
        "DROP TABLE binary_logs;
         DELETE FROM log_entries WHERE json_extract(item, '$.type') = 'record';
         UPDATE log_entries SET item = json_remove(item, '$.decoding', '$.device_type', \
         '$.firmware_version');",
    );
    let tokens = dir.path().join("tokens.jsonl");
    let old: String = std::fs::read_to_string(&tokens)
        .unwrap()
        .lines()
        .map(|line| {
            let mut entry: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
            assert!(entry.remove("device_type").is_some() && entry.remove("version").is_some());
            format!("{}\n", Value::Object(entry))
        })
        .collect();
    std::fs::write(&tokens, old).unwrap();

    // The ELF is there, and the token's boot registration names the
    // firmware: decoded by the time `start` returns.
    let emu = Emulator::start(kept(dir.path())).unwrap();
    let (binary, records) = logs_of(&emu, "SN-OLD").await;
    assert_eq!(binary.len(), 1);
    let decoding = &binary[0]["decoding"];
    assert_eq!(decoding["state"], "decoded", "{}", binary[0]);
    assert_eq!(binary[0]["firmware_version"], VERSION);
    let lines: Vec<String> = in_log_order(records).iter().map(oracle_line).collect();
    assert_eq!(lines, fw.oracle);
    emu.shutdown().unwrap();

    // Once a log has its state, a start leaves it alone.
    let emu = Emulator::start(kept(dir.path())).unwrap();
    let (binary, records) = logs_of(&emu, "SN-OLD").await;
    assert_eq!((binary.len(), records.len()), (1, fw.oracle.len()));
}

#[tokio::test]
async fn an_old_log_without_its_elf_gets_its_state_at_start_and_waits_for_the_elf() {
    let Some(fw) = firmware() else { return };
    let dir = kept_dir_with_a_log(fw, "SN-OLD-WAIT", false).await;
    edit_database(
        dir.path(),
        "DROP TABLE binary_logs;
         UPDATE log_entries SET item = json_remove(item, '$.decoding');",
    );
    let emu = Emulator::start(kept(dir.path())).unwrap();
    let (binary, records) = logs_of(&emu, "SN-OLD-WAIT").await;
    assert!(records.is_empty());
    assert_eq!(binary[0]["decoding"]["state"], "no_elf", "{}", binary[0]);
    let client = client(&emu);
    client.upload_elf(&elf_upload(), fw.elf()).await.unwrap();
    let (binary, records) = logs_of(&emu, "SN-OLD-WAIT").await;
    assert_eq!(binary[0]["decoding"]["state"], "decoded");
    assert_eq!(records.len(), fw.oracle.len());
    client.shutdown().await;
}

#[tokio::test]
async fn a_log_left_waiting_with_its_elf_stored_is_decoded_at_the_next_start() {
    let Some(fw) = firmware() else { return };
    let dir = kept_dir_with_a_log(fw, "SN-CUT", true).await;
    // As if the emulator stopped between storing the ELF and decoding
    // the logs that waited for it.
    edit_database(
        dir.path(),
        "UPDATE binary_logs SET state = 'no_elf';
         DELETE FROM log_entries WHERE json_extract(item, '$.type') = 'record';
         UPDATE log_entries SET item = json_set(item, '$.decoding', \
         json_object('state', 'no_elf', 'reason', 'no ELF'));",
    );
    let emu = Emulator::start(kept(dir.path())).unwrap();
    let (binary, records) = logs_of(&emu, "SN-CUT").await;
    assert_eq!(binary[0]["decoding"]["state"], "decoded", "{}", binary[0]);
    let lines: Vec<String> = in_log_order(records).iter().map(oracle_line).collect();
    assert_eq!(lines, fw.oracle);
}
