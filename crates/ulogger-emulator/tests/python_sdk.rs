//! The platform's own Python SDK (`ulogger-cloud` 1.2.3 on PyPI, over
//! paho-mqtt) against the emulator over mutual TLS, with the SDK's default
//! settings (group 0): whatever it sends must be routed and accepted, so
//! the emulator's rules cannot drift from what the platform's reference
//! client does. And the SDK 0.3.0 layout, without the group level, must be
//! recorded as unrouted, as the platform drops it.
//!
//! The SDK comes from the interpreter in `$ULOGGER_SDK_PYTHON` (`.ci/run`
//! installs it into a venv under `target/` and sets it), else `python3`.
//! Under `CI=true` a missing SDK fails the test; elsewhere it is skipped
//! with a notice, as mosquitto is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use rumqttc::QoS;
use support::device::{self, APP};
use support::{client_options, TestClient, CUSTOMER};
use ulogger_cloud::wire::{build_log, LogHeader};
use ulogger_emulator::{
    verify_telemetry, Emulator, EmulatorConfig, Record, RecordKind, TelemetryList, Verdict,
};

/// The SDK release this test pins (`.ci/run` installs the same).
const SDK_VERSION: &str = "1.2.3";
/// The whole SDK script: nine TLS connections, each waiting for its
/// PUBACK (the SDK's own timeouts are 10-15 s per call).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// Importing the SDK, to find out whether it is there.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const SERIAL: &str = "SN-PY-1";

/// What the script does, with the SDK's public API only. Every call
/// returns the SDK's own verdict (a token, or a bool that is true only
/// after the broker's PUBACK); the script prints them as one JSON line.
const SCRIPT: &str = r#"
import json
import logging
import sys

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(name)s %(levelname)s %(message)s")

import ulogger_cloud as sdk

with open(sys.argv[1]) as fh:
    params = json.load(fh)

# The defaults a customer gets: broker, port, certificate, key and
# customer id set; the group left at the SDK's default.
cfg = sdk.MqttConfig(
    broker=params["broker"],
    port=params["port"],
    cert_file=params["cert_file"],
    key_file=params["key_file"],
    customer_id=params["customer_id"],
)
app = params["app_id"]
serial = params["serial"]
device = sdk.DeviceInfo(app, serial, "py_board", "v1.2.3", "abc1234")
store = sdk.SessionStore()
results = {"version": sdk.__version__, "group_id": cfg.group_id}

results["token"] = sdk.get_or_fetch_token(device, cfg, store)
with open(params["log"], "rb") as fh:
    results["upload_log"] = sdk.upload_log(device, fh.read(), cfg, store)
with open(params["core_dump"], "rb") as fh:
    results["publish_core_dump"] = sdk.publish_core_dump(fh.read(), cfg)
results["publish_metrics"] = sdk.publish_metrics(
    serial, app,
    [{"name": "temp", "value": 21.5, "timestamp": 1700000000},
     {"name": "rssi", "value": -60}],
    cfg)
results["publish_events"] = sdk.publish_events(
    serial, app, [{"type": "boot", "timestamp": 1700000000}, {"type": "reset"}], cfg)
results["publish_heartbeat"] = sdk.publish_heartbeat(serial, app, cfg)
# 200 devices: over the SDK's 1 KiB threshold, so it gzips the batch.
results["publish_metrics_batch"] = sdk.publish_metrics_batch(
    [{"device_serial": "SN-PY-%03d" % i,
      "metrics": [{"name": "temp", "value": i, "timestamp": 1700000000},
                  {"name": "heartbeat", "value": 1}]}
     for i in range(200)],
    app, cfg)
results["publish_events_batch"] = sdk.publish_events_batch(
    [{"device_serial": "SN-PY-E%d" % i, "events": [{"type": "door"}], "app_id": 9}
     for i in range(3)],
    app, cfg)
print(json.dumps(results))
"#;

/// Runs `python` with `args` and `envs`, killing it after `timeout`
/// (`kill_on_drop`: the timed-out future drops the child). `Err` when it
/// cannot be started.
async fn run_python(
    python: &str,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &std::ffi::OsStr)],
    timeout: Duration,
) -> Result<Output, String> {
    let child = tokio::process::Command::new(python)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.map_err(|e| format!("{python}: {e}")),
        Err(_) => panic!("{python} {args:?} did not finish within {timeout:?}; killed"),
    }
}

/// The interpreter that has the pinned SDK, or `None` (after a notice)
/// when there is none outside CI.
///
/// # Panics
///
/// Under `CI=true` when the SDK or python is missing, or is another
/// version: CI must run this test, not skip it.
async fn sdk_python() -> Option<String> {
    let python = std::env::var("ULOGGER_SDK_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = run_python(
        &python,
        &[
            "-c".as_ref(),
            "import ulogger_cloud; print(ulogger_cloud.__version__)".as_ref(),
        ],
        &[],
        PROBE_TIMEOUT,
    )
    .await;
    let problem = match probe {
        Err(e) => e,
        Ok(out) if !out.status.success() => format!(
            "{python} cannot import ulogger_cloud: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(out) => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if version == SDK_VERSION {
                return Some(python);
            }
            format!("{python} has ulogger_cloud {version}, this test pins {SDK_VERSION}")
        }
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "the Python SDK is required under CI=true: {problem} (.ci/run installs it \
             into a venv and sets ULOGGER_SDK_PYTHON)"
        );
    }
    eprintln!("Python SDK {SDK_VERSION} not available, skipping: {problem}");
    None
}

/// A valid version-4 log as a device hands it over: session token 0, the
/// gateway patches it in.
fn device_log() -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.anchor_tick = Some(1000);
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(1_700_000_000_000_000);
    let data: Vec<u8> = (0..2000u32).map(|i| (i * 31 % 251) as u8).collect();
    build_log(header, &data).unwrap()
}

/// A core-dump package's shape (PROTOCOL §10): a 264-byte header, then
/// a CrashCatcher dump starting with `cC`.
fn core_dump() -> Vec<u8> {
    let mut dump = vec![0u8; 264];
    dump.extend_from_slice(b"cC");
    dump.extend((0..3000u32).map(|i| (i % 253) as u8));
    let total = u32::try_from(dump.len()).unwrap();
    dump[0..4].copy_from_slice(&total.to_le_bytes());
    dump
}

fn stored(emulator: &Emulator, record: &Record) -> Vec<u8> {
    let file = record.file.as_ref().expect("the payload is stored");
    std::fs::read(emulator.data_dir().join(file)).unwrap()
}

fn of_kind(records: &[Record], kind: RecordKind) -> Vec<&Record> {
    records.iter().filter(|r| r.kind == kind).collect()
}

#[tokio::test]
async fn the_python_sdk_with_its_defaults_is_routed_and_accepted() {
    let Some(python) = sdk_python().await else {
        return;
    };
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER)).unwrap();
    let certs = emulator.certs().expect("TLS by default").clone();
    let dir = tempfile::tempdir().unwrap();
    let log = device_log();
    let dump = core_dump();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let params = serde_json::json!({
        "broker": "127.0.0.1",
        "port": emulator.addr().port(),
        "cert_file": certs.client_cert,
        "key_file": certs.client_key,
        "customer_id": CUSTOMER,
        "app_id": APP,
        "serial": SERIAL,
        "log": file("log.bin", &log),
        "core_dump": file("core.bin", &dump),
    });
    let params = file("params.json", params.to_string().as_bytes());
    let script = file("sdk_run.py", SCRIPT.as_bytes());

    // The SDK has no CA setting: it trusts OpenSSL's default store, which
    // SSL_CERT_FILE replaces. HOME keeps any file the SDK might write
    // (~/.ulogger) inside the test's directory.
    let output = run_python(
        &python,
        &[script.as_os_str(), params.as_os_str()],
        &[
            ("SSL_CERT_FILE", certs.ca_cert.as_os_str()),
            ("HOME", dir.path().as_os_str()),
        ],
        SCRIPT_TIMEOUT,
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK script failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let results: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no results from the script: {stdout}\n{stderr}"));

    assert_eq!(results["version"], SDK_VERSION);
    assert_eq!(results["group_id"], 0, "the SDK's default group");
    for call in [
        "upload_log",
        "publish_core_dump",
        "publish_metrics",
        "publish_events",
        "publish_heartbeat",
        "publish_metrics_batch",
        "publish_events_batch",
    ] {
        assert_eq!(results[call], true, "{call} failed:\n{stderr}");
    }
    let token = results["token"]
        .as_u64()
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or_else(|| panic!("no session token: {results}\n{stderr}"));
    // One registration: upload_log took the token the store cached.
    assert_eq!(
        emulator.issued_tokens(),
        vec![(APP, SERIAL.to_owned(), token)]
    );

    // Each call returned only after its PUBACK, which the emulator sends
    // once the message is recorded: everything is there now.
    let records = emulator.records();
    let rejected: Vec<_> = records.iter().filter(|r| !r.is_ok()).collect();
    assert!(
        rejected.is_empty(),
        "rejected or unrouted: {rejected:#?}\n{stderr}"
    );
    let mut seen: Vec<(RecordKind, &str)> =
        records.iter().map(|r| (r.kind, r.topic.as_str())).collect();
    seen.sort_by_key(|&(kind, topic)| (format!("{kind:?}"), topic));
    let ids = format!("{CUSTOMER}/0/{APP}");
    let reply = format!("boot/v0/{ids}/{SERIAL}");
    let boot = format!("boot/v0/{ids}");
    let binlog = format!("binlog/v0/{ids}");
    let dump_topic = format!("core-dump/v0/{CUSTOMER}/0");
    let metrics = format!("metrics/v0/{ids}");
    let events = format!("events/v0/{ids}");
    let mut expected = vec![
        (RecordKind::Boot, boot.as_str()),
        (RecordKind::BootReply, reply.as_str()),
        (RecordKind::BinaryLog, binlog.as_str()),
        (RecordKind::CoreDump, dump_topic.as_str()),
        (RecordKind::Metrics, metrics.as_str()),
        (RecordKind::Metrics, metrics.as_str()),
        (RecordKind::Metrics, metrics.as_str()),
        (RecordKind::Events, events.as_str()),
        (RecordKind::Events, events.as_str()),
    ];
    expected.sort_by_key(|&(kind, topic)| (format!("{kind:?}"), topic));
    assert_eq!(seen, expected);

    let boot = of_kind(&records, RecordKind::Boot)[0];
    assert_eq!(boot.serial.as_deref(), Some(SERIAL));
    let log_record = of_kind(&records, RecordKind::BinaryLog)[0];
    assert_eq!(log_record.token, Some(token));
    assert_eq!(log_record.serial.as_deref(), Some(SERIAL));
    // The whole buffer, only the token patched in.
    let mut patched = log;
    patched[1..5].copy_from_slice(&token.to_le_bytes());
    assert_eq!(stored(&emulator, log_record), patched);
    assert_eq!(
        stored(&emulator, of_kind(&records, RecordKind::CoreDump)[0]),
        dump
    );

    // In call order: metrics, heartbeat, the gzipped batch of 200.
    let metrics = of_kind(&records, RecordKind::Metrics);
    let counts: Vec<_> = metrics
        .iter()
        .map(|r| {
            let check = verify_telemetry(TelemetryList::Metrics, &stored(&emulator, r));
            assert!(check.is_ok(), "{check:?}");
            (r.compressed, check.devices, check.samples)
        })
        .collect();
    assert_eq!(
        counts,
        [
            (Some(false), 1, 2),
            (Some(false), 1, 1),
            (Some(true), 200, 400)
        ]
    );
    let heartbeat: serde_json::Value =
        serde_json::from_slice(&stored(&emulator, metrics[1])).unwrap();
    assert_eq!(
        heartbeat,
        serde_json::json!({"device_serial": SERIAL,
            "metrics": [{"name": "heartbeat", "value": 1}]})
    );
    let counts: Vec<_> = of_kind(&records, RecordKind::Events)
        .iter()
        .map(|r| {
            let check = verify_telemetry(TelemetryList::Events, &stored(&emulator, r));
            assert!(check.is_ok(), "{check:?}");
            (check.devices, check.samples)
        })
        .collect();
    assert_eq!(counts, [(1, 2), (3, 3)]);
}

/// SDK 0.3.0 and old firmware published without the group level. The
/// broker acknowledges that, and no platform rule matches it: recorded as
/// unrouted, never as an upload.
#[tokio::test]
async fn the_sdk_0_3_0_layout_without_a_group_is_acknowledged_and_unrouted() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER)).unwrap();
    let tls = emulator.certs().map(|c| c.client_config().unwrap());
    let mut gateway = TestClient::connect(client_options(
        emulator.addr(),
        tls,
        &format!("cust-{CUSTOMER}-{SERIAL}-1234"),
    ))
    .await;
    let topics = [
        (
            format!("boot/v0/{CUSTOMER}/{APP}"),
            device::boot_payload(SERIAL),
        ),
        (format!("binlog/v0/{CUSTOMER}/{APP}"), device_log()),
        (format!("core-dump/v0/{CUSTOMER}"), core_dump()),
        (
            format!("metrics/v0/{CUSTOMER}/{APP}"),
            br#"{"device_serial": "SN-PY-1", "metrics": [{"name": "heartbeat", "value": 1}]}"#
                .to_vec(),
        ),
    ];
    for (topic, payload) in &topics {
        // `publish` returns once the PUBACK is in, so the record is too.
        gateway
            .publish(topic, QoS::AtLeastOnce, false, payload.clone())
            .await;
    }
    let records = emulator.records();
    let unrouted: Vec<&str> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Unrouted && r.verdict == Verdict::Rejected)
        .inspect(|r| {
            let reason = r.reason.as_deref().unwrap_or_default();
            assert!(reason.contains("no group level"), "{reason}");
        })
        .map(|r| r.topic.as_str())
        .collect();
    let sent: Vec<&str> = topics.iter().map(|(topic, _)| topic.as_str()).collect();
    assert_eq!(unrouted, sent);
    assert_eq!(records.len(), sent.len(), "{records:#?}");
    assert!(emulator.issued_tokens().is_empty());
}
