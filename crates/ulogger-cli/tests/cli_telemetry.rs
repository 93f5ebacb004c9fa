//! `ulogger metrics`, `events` and `heartbeat` as a user runs them: the
//! built binary against an emulator started in this process (mutual TLS
//! unless a test says otherwise), whose cloud checks every payload
//! against PROTOCOL §8 on its own terms and records it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::net::TcpListener;
use std::process::Stdio;

use serde_json::{json, Value};
use support::sandbox::*;
use ulogger_cloud::wire::{metrics_payload, Compression, Metric, COMPRESSION_THRESHOLD};
use ulogger_emulator::{
    verify_telemetry, Emulator, EmulatorConfig, Record, RecordKind, TelemetryList, Verdict,
};

/// `subcommand` with the flags that reach `emu`, its topic layout and
/// the application id.
fn args_for(subcommand: &str, emu: &Emulator) -> Vec<String> {
    let mut args = connect_args(subcommand, emu);
    if emu.group_id() != 0 {
        args.extend(["--group-id".to_owned(), emu.group_id().to_string()]);
    }
    if !emu.topic_prefix().is_empty() {
        args.extend(["--prefix".to_owned(), emu.topic_prefix().to_owned()]);
    }
    args.extend(["--app-id".to_owned(), APP.to_string()]);
    args
}

fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(strings(more));
    args
}

/// The `n`th record of `kind` (from 1), once the cloud has it.
fn nth(emu: &Emulator, kind: RecordKind, n: usize) -> Record {
    let mut watcher = emu.watch_records();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let wait = async {
        let mut seen = 0;
        loop {
            let record = watcher.next().await;
            if record.kind == kind {
                seen += 1;
                if seen == n {
                    return record;
                }
            }
        }
    };
    runtime
        .block_on(async { tokio::time::timeout(PATIENCE, wait).await })
        .unwrap_or_else(|_| panic!("no {kind:?} record #{n} reached the cloud"))
}

fn stored_bytes(emu: &Emulator, record: &Record) -> Vec<u8> {
    std::fs::read(emu.data_dir().join(record.file.as_ref().unwrap())).unwrap()
}

/// The JSON the cloud stored for `record` (sent uncompressed).
fn stored_json(emu: &Emulator, record: &Record) -> Value {
    assert_eq!(record.compressed, Some(false), "{record:?}");
    serde_json::from_slice(&stored_bytes(emu, record)).unwrap()
}

/// The one JSON object a `--json` run printed.
fn report_of(run: &Run) -> Value {
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is one JSON object ({e}):\n{}", run.stdout))
}

/// Asserts that `record` was accepted and is what `report` said was sent.
fn assert_received(record: &Record, report: &Value) {
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    assert_eq!(record.topic, report["topic"].as_str().unwrap(), "{report}");
    assert_eq!(
        record.size as u64,
        report["size"].as_u64().unwrap(),
        "{report}"
    );
    assert_eq!(
        record.compressed,
        report["compressed"].as_bool(),
        "{report}"
    );
}

#[test]
fn metrics_from_arguments_reach_the_cloud_as_given() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let args = with(
        args_for("metrics", &emu),
        &[
            "--json",
            "--serial",
            "SN-M",
            "temp=21.5",
            "rssi=-60@1700000000",
        ],
    );
    let run = sandbox.run(&args).expect_code(0);

    let report = report_of(&run);
    assert_eq!(report["kind"], "metrics", "{report}");
    assert_eq!(report["topic"], format!("metrics/v0/{CUSTOMER}/0/{APP}"));
    assert_eq!(report["serial"], "SN-M");
    assert_eq!(
        (report["devices"].as_u64(), report["samples"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(report["compressed"], false);
    let record = nth(&emu, RecordKind::Metrics, 1);
    assert_received(&record, &report);
    assert_eq!(record.serial.as_deref(), Some("SN-M"));
    assert_eq!(record.app_id, Some(APP));
    assert_eq!(
        stored_json(&emu, &record),
        json!({"device_serial": "SN-M", "metrics": [
            {"name": "temp", "value": 21.5},
            {"name": "rssi", "value": -60, "timestamp": 1_700_000_000u64}]})
    );

    // Human output names the device, the count and the topic.
    let args = with(
        args_for("metrics", &emu),
        &["--serial", "SN-M", "--timestamp", "5", "temp=22"],
    );
    let run = sandbox.run(&args).expect_code(0);
    assert!(
        run.stdout
            .contains("SN-M: 1 metric published to metrics/v0/"),
        "{}",
        run.stdout
    );
    let record = nth(&emu, RecordKind::Metrics, 2);
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    assert_eq!(
        stored_json(&emu, &record)["metrics"],
        // `temp=22` is the integer 22, as the user wrote it.
        json!([{"name": "temp", "value": 22, "timestamp": 5}])
    );
}

#[test]
fn events_from_arguments_with_a_default_timestamp() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let args = with(
        args_for("events", &emu),
        &[
            "--json",
            "--serial",
            "SN-E",
            "--timestamp",
            "1600000000",
            "boot",
            "reset@1700000000",
        ],
    );
    let run = sandbox.run(&args).expect_code(0);
    let report = report_of(&run);
    assert_eq!(report["kind"], "events", "{report}");
    assert_eq!(report["topic"], format!("events/v0/{CUSTOMER}/0/{APP}"));
    let record = nth(&emu, RecordKind::Events, 1);
    assert_received(&record, &report);
    assert_eq!(
        stored_json(&emu, &record),
        json!({"device_serial": "SN-E", "events": [
            {"type": "boot", "timestamp": 1_600_000_000u64},
            {"type": "reset", "timestamp": 1_700_000_000u64}]})
    );
}

#[test]
fn heartbeat_of_one_device_and_of_several_in_one_batch() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let args = with(
        args_for("heartbeat", &emu),
        &["--json", "--serial", "SN-H1", "--timestamp", "77"],
    );
    let report = report_of(&sandbox.run(&args).expect_code(0));
    let record = nth(&emu, RecordKind::Metrics, 1);
    assert_received(&record, &report);
    assert_eq!(
        stored_json(&emu, &record),
        json!({"device_serial": "SN-H1", "metrics": [{"name": "heartbeat", "value": 1, "timestamp": 77}]})
    );

    let args = with(
        args_for("heartbeat", &emu),
        &[
            "--json", "--serial", "SN-H1", "--serial", "SN-H2", "--serial", "SN-H3",
        ],
    );
    let report = report_of(&sandbox.run(&args).expect_code(0));
    assert_eq!(
        (report["devices"].as_u64(), report["samples"].as_u64()),
        (Some(3), Some(3))
    );
    let record = nth(&emu, RecordKind::Metrics, 2);
    assert_received(&record, &report);
    let beat = json!([{"name": "heartbeat", "value": 1}]);
    assert_eq!(
        stored_json(&emu, &record),
        json!({"devices": [
            {"device_serial": "SN-H1", "metrics": beat},
            {"device_serial": "SN-H2", "metrics": beat},
            {"device_serial": "SN-H3", "metrics": beat}]})
    );
}

#[test]
fn batch_files_from_a_file_and_from_standard_input() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let metrics = json!({"devices": [
        {"device_serial": "SN-B1", "metrics": [{"name": "t", "value": 1.5, "timestamp": 9}]},
        {"device_serial": "SN-B2", "metrics": [{"name": "u", "value": -2.0}, {"name": "v", "value": 3.0}], "app_id": 12}]});
    let file = sandbox.write("metrics.json", metrics.to_string().as_bytes());
    let args = with(args_for("metrics", &emu), &["--json", "--batch", &s(&file)]);
    let report = report_of(&sandbox.run(&args).expect_code(0));
    assert_eq!(
        (report["devices"].as_u64(), report["samples"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(report.get("serial"), None, "{report}");
    let record = nth(&emu, RecordKind::Metrics, 1);
    assert_received(&record, &report);
    assert_eq!(record.serial.as_deref(), Some("SN-B1"));
    assert_eq!(stored_json(&emu, &record), metrics);

    let events = json!({"devices": [
        {"device_serial": "SN-B3", "events": [{"type": "boot"}], "app_id": 4},
        {"device_serial": "SN-B4", "events": [{"type": "door", "timestamp": 1}]}]});
    let args = with(args_for("events", &emu), &["--json", "--batch", "-"]);
    let mut child = sandbox
        .command(&[])
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(events.to_string().as_bytes())
        .unwrap();
    let run = Run::from(child.wait_with_output().unwrap()).expect_code(0);
    let report = report_of(&run);
    let record = nth(&emu, RecordKind::Events, 1);
    assert_received(&record, &report);
    assert_eq!(stored_json(&emu, &record), events);
}

#[test]
fn the_group_layout_and_a_topic_prefix() {
    let emu = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .group_id(31)
            .topic_prefix("ulogger/"),
    )
    .expect("emulator starts");
    let sandbox = Sandbox::new();
    for (n, (command, sample, list, kind)) in [
        ("metrics", "t=1", "metrics", RecordKind::Metrics),
        ("events", "boot", "events", RecordKind::Events),
        ("heartbeat", "", "metrics", RecordKind::Metrics),
    ]
    .into_iter()
    .enumerate()
    {
        let mut args = with(args_for(command, &emu), &["--json", "--serial", "SN-G"]);
        if !sample.is_empty() {
            args.push(sample.to_owned());
        }
        let report = report_of(&sandbox.run(&args).expect_code(0));
        assert_eq!(
            report["topic"],
            format!("ulogger/{list}/v0/{CUSTOMER}/31/{APP}"),
            "{command}"
        );
        let record = nth(&emu, kind, if n == 2 { 2 } else { 1 });
        assert_received(&record, &report);
        assert_eq!(record.app_id, Some(APP));
    }
}

#[test]
fn gzip_starts_just_over_1024_bytes_and_can_be_forced_either_way() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    // The most "m=1" samples whose JSON still fits under the threshold,
    // by the library's own builder (the CLI sends exactly these bytes).
    let json_len = |n: usize| {
        // `m=1` is the integer 1 on the wire, as the CLI sends it.
        metrics_payload("SN-GZ", &vec![Metric::new("m", 1); n], Compression::Never)
            .unwrap()
            .json_len
    };
    let under = (1..200)
        .take_while(|&n| json_len(n) <= COMPRESSION_THRESHOLD)
        .last()
        .unwrap();
    assert!(json_len(under + 1) > COMPRESSION_THRESHOLD);
    let run = |count: usize, extra: &[&str]| {
        let mut args = with(args_for("metrics", &emu), &["--json", "--serial", "SN-GZ"]);
        args.extend(strings(extra));
        args.extend(std::iter::repeat_n("m=1".to_owned(), count));
        report_of(&sandbox.run(&args).expect_code(0))
    };

    let cases = [
        (under, &[][..], false),
        (under + 1, &[][..], true),
        (1, &["--compression", "always"][..], true),
        (under + 1, &["--compression", "never"][..], false),
    ];
    for (n, (count, extra, compressed)) in cases.into_iter().enumerate() {
        let report = run(count, extra);
        assert_eq!(
            report["compressed"], compressed,
            "{count} samples {extra:?}: {report}"
        );
        let record = nth(&emu, RecordKind::Metrics, n + 1);
        assert_received(&record, &report);
        assert_eq!(record.compressed, Some(compressed));
        // The cloud's own decoder counts what it got (gunzipped or not).
        let check = verify_telemetry(TelemetryList::Metrics, &stored_bytes(&emu, &record));
        assert!(check.is_ok(), "{check:?}");
        assert_eq!((check.devices, check.samples), (1, count));
        if !compressed {
            assert_eq!(record.size, json_len(count));
        } else if count > 1 {
            assert!(record.size < json_len(count), "{record:?}");
        }
    }
}

#[test]
fn settings_come_from_the_config_file() {
    let emu = tls_emulator();
    let certs = emu.certs().unwrap();
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "config.toml",
        format!(
            "customer_id = {CUSTOMER}\nbroker = \"127.0.0.1\"\nport = {}\nca = {:?}\ncert = {:?}\nkey = {:?}\napp_id = {APP}\nserial = \"SN-CFG\"\n",
            emu.addr().port(),
            s(&certs.ca_cert),
            s(&certs.client_cert),
            s(&certs.client_key),
        )
        .as_bytes(),
    );
    let run = sandbox
        .run(&strings(&["heartbeat", "--config", &s(&config)]))
        .expect_code(0);
    assert!(
        run.stdout.contains("SN-CFG: 1 metric published"),
        "{}",
        run.stdout
    );
    let record = nth(&emu, RecordKind::Metrics, 1);
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    assert_eq!(record.serial.as_deref(), Some("SN-CFG"));
    // The environment's serial beats the file's; a flag beats both.
    sandbox
        .run_with_env(
            &[("ULOGGER_SERIAL", "SN-ENV".to_owned())],
            &strings(&["events", "--config", &s(&config), "boot"]),
        )
        .expect_code(0);
    assert_eq!(
        nth(&emu, RecordKind::Events, 1).serial.as_deref(),
        Some("SN-ENV")
    );
    sandbox
        .run_with_env(
            &[("ULOGGER_SERIAL", "SN-ENV".to_owned())],
            &strings(&[
                "events",
                "--config",
                &s(&config),
                "--serial",
                "SN-FLAG",
                "boot",
            ]),
        )
        .expect_code(0);
    assert_eq!(
        nth(&emu, RecordKind::Events, 2).serial.as_deref(),
        Some("SN-FLAG")
    );
}

/// Each bad input: exit 2, a message naming what was wrong, and no
/// connection at all, neither to the emulator (no record) nor to a
/// listener standing in for a broker (nothing to accept).
#[test]
fn bad_input_exits_2_naming_the_flag_or_entry_and_sends_nothing() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let empty_list = sandbox.write(
        "empty-list.json",
        br#"{"devices": [{"device_serial": "SN-1", "metrics": [{"name": "a", "value": 1}]},
                         {"device_serial": "SN-2", "metrics": []}]}"#,
    );
    let empty_serial = sandbox.write(
        "empty-serial.json",
        br#"{"devices": [{"device_serial": "", "events": [{"type": "boot"}]}]}"#,
    );
    let missing = sandbox.path("no-such-batch.json");
    // A wrong path to something huge: refused from its size, not read.
    let disk_image = sandbox.path("disk.img");
    std::fs::File::create(&disk_image)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    // A too-large message is refused locally too: 6,000 distinct samples
    // are over 128 KiB of JSON.
    let huge: Vec<Value> = (0..6000)
        .map(|i| json!({"name": format!("metric_{i}"), "value": i}))
        .collect();
    let huge = sandbox.write(
        "huge.json",
        json!({"devices": [{"device_serial": "SN-1", "metrics": huge}]})
            .to_string()
            .as_bytes(),
    );
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["metrics", "--serial", "", "t=1"],
            "--serial \"\"".into(),
        ),
        (
            vec!["heartbeat", "--serial", "SN-1", "--serial", "x/#"],
            "--serial \"x/#\"".into(),
        ),
        (
            vec!["metrics", "--serial", "SN-1", "t=NaN"],
            "metric \"t=NaN\"".into(),
        ),
        (
            vec!["metrics", "--serial", "SN-1", "t=1", "temp"],
            "metric \"temp\"".into(),
        ),
        (
            vec!["metrics", "--serial", "SN-1", "t=fast"],
            "\"fast\" is not a number".into(),
        ),
        (
            vec!["events", "--serial", "SN-1", "boot@yesterday"],
            "event \"boot@yesterday\"".into(),
        ),
        (
            vec!["metrics", "--batch", empty_list.to_str().unwrap()],
            "devices[1].metrics is empty".into(),
        ),
        (
            vec!["events", "--batch", empty_serial.to_str().unwrap()],
            "devices[0].device_serial".into(),
        ),
        (
            vec!["metrics", "--batch", missing.to_str().unwrap()],
            format!("cannot read the batch file {}", s(&missing)),
        ),
        (
            vec!["metrics", "--batch", disk_image.to_str().unwrap()],
            format!(
                "the batch file {}: the file is {} bytes, more than a batch file may be (16777216 bytes)",
                s(&disk_image),
                1u64 << 40
            ),
        ),
        (
            vec![
                "metrics",
                "--compression",
                "never",
                "--batch",
                huge.to_str().unwrap(),
            ],
            "at most 131072".into(),
        ),
    ];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let listener_port = listener.local_addr().unwrap().port().to_string();
    for (args, want) in &cases {
        let full = with(args_for(args[0], &emu), &args[1..]);
        let run = sandbox.run(&full).expect_code(2);
        assert!(
            run.stderr.contains(want.as_str()),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(
            run.stderr
                .lines()
                .filter(|l| l.starts_with("error:"))
                .count(),
            1,
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
        // Against a listener, nothing ever connects.
        let full = replace(full, "--port", listener_port.clone());
        sandbox.run(&full).expect_code(2);
    }
    assert_eq!(emu.records(), vec![], "nothing reached the cloud");
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept();
    assert!(
        accepted
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "a bad-input run connected: {accepted:?}"
    );

    // A missing application id names its three sources.
    let mut args = connect_args("heartbeat", &emu);
    args.extend(strings(&["--serial", "SN-1"]));
    let run = sandbox.run(&args).expect_code(2);
    assert!(
        run.stderr.contains("--app-id") && run.stderr.contains("ULOGGER_APP_ID"),
        "{}",
        run.stderr
    );
    // With --json the report is one JSON object on stderr.
    let args = with(
        args_for("metrics", &emu),
        &["--json", "--serial", "SN-1", "t=inf"],
    );
    let run = sandbox.run(&args).expect_code(2);
    let error: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(error["error"]["kind"], "bad_input", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("t=inf"),
        "{error}"
    );
    assert_eq!(emu.records(), vec![]);
}

#[test]
fn an_unreachable_broker_is_a_network_failure() {
    let sandbox = Sandbox::new();
    let mut args = strings(&[
        "heartbeat",
        "--broker",
        "127.0.0.1",
        "--plaintext",
        "--timeout",
        "2",
        "--app-id",
        "7",
        "--serial",
        "SN-1",
        "--customer-id",
    ]);
    args.push(CUSTOMER.to_string());
    args.extend(["--port".to_owned(), closed_port().to_string()]);
    let run = sandbox.run(&args).expect_code(3);
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{}",
        run.stderr
    );
}

/// `subcommand` sent over the emulator's HTTPS API instead of MQTT: the
/// token comes from `ULOGGER_API_TOKEN` (as a user should pass it).
fn https_args(subcommand: &str, emu: &Emulator) -> Vec<String> {
    let ca = emu.certs().expect("a TLS emulator").ca_cert.clone();
    strings(&[
        subcommand,
        "--api-url",
        &emu.http_url(),
        "--ca",
        &s(&ca),
        "--group-id",
        "3",
        "--app-id",
        &APP.to_string(),
    ])
}

#[test]
fn an_api_token_sends_over_https_and_never_shows_the_token() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let token = vec![("ULOGGER_API_TOKEN", emu.api_token().to_owned())];

    let args = with(
        https_args("metrics", &emu),
        &["--json", "--serial", "SN-H", "temp=21.5@1700000000"],
    );
    let run = sandbox.run_with_env(&token, &args).expect_code(0);
    let report = report_of(&run);
    assert_eq!(
        report["url"],
        format!("{}/publish/metrics", emu.http_url().trim_end_matches('/')),
        "{report}"
    );
    assert_eq!(
        (report["status"].as_u64(), report["attempts"].as_u64()),
        (Some(200), Some(1))
    );
    let record = nth(&emu, RecordKind::Metrics, 1);
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    assert_eq!(record.serial.as_deref(), Some("SN-H"));
    let body: Value = serde_json::from_slice(&stored_bytes(&emu, &record)).unwrap();
    assert_eq!(
        (&body["app_id"], &body["group_id"]),
        (&json!(APP.to_string()), &json!("3"))
    );

    // Heartbeats of several devices go as one batch; human output says where.
    let args = with(
        https_args("heartbeat", &emu),
        &["--serial", "SN-1", "--serial", "SN-2"],
    );
    let run = sandbox.run_with_env(&token, &args).expect_code(0);
    assert!(
        run.stdout
            .contains("2 devices: 2 metrics posted to https://"),
        "{}",
        run.stdout
    );
    assert_eq!(nth(&emu, RecordKind::Metrics, 2).verdict, Verdict::Ok);
    let run = sandbox
        .run_with_env(
            &token,
            &with(https_args("events", &emu), &["--serial", "SN-H", "boot"]),
        )
        .expect_code(0);
    assert!(run.stdout.contains("posted to"), "{}", run.stdout);
    assert_eq!(nth(&emu, RecordKind::Events, 1).verdict, Verdict::Ok);

    // The token is not echoed by --help (it is in the environment) nor by
    // config show.
    let help = sandbox
        .run_with_env(&token, &strings(&["metrics", "--help"]))
        .expect_code(0);
    assert!(
        !help.output().contains(emu.api_token()),
        "{}",
        help.output()
    );
    let shown = sandbox
        .run_with_env(&token, &strings(&["config", "show"]))
        .expect_code(0);
    assert!(
        !shown.output().contains(emu.api_token()),
        "{}",
        shown.output()
    );
    assert!(shown.stdout.contains("api_token"), "{}", shown.stdout);
    // No MQTT went anywhere: the broker saw no connection.
    assert!(emu.connected_clients().is_empty());
}

#[test]
fn a_wrong_api_token_is_refused_once_with_the_servers_message_and_not_shown() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let wrong = "ulg_this_is_not_the_token_0123456789";
    let args = with(https_args("heartbeat", &emu), &["--serial", "SN-W"]);
    let run = sandbox
        .run_with_env(&[("ULOGGER_API_TOKEN", wrong.to_owned())], &args)
        .expect_code(4);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(errors[0].contains("401"), "{}", run.stderr);
    assert!(
        run.stderr.contains("ULOGGER_API_TOKEN"),
        "a hint names the variable: {}",
        run.stderr
    );
    assert!(!run.output().contains(wrong), "{}", run.output());
    assert_eq!(emu.http_requests(), 1, "a 401 is not retried");
}

#[test]
fn https_without_a_group_id_sends_group_0_as_over_mqtt() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let args: Vec<String> = https_args("heartbeat", &emu)
        .into_iter()
        .filter(|a| a != "--group-id" && a != "3")
        .chain(strings(&["--serial", "SN-G"]))
        .collect();
    sandbox
        .run_with_env(&[("ULOGGER_API_TOKEN", emu.api_token().to_owned())], &args)
        .expect_code(0);
    let record = nth(&emu, RecordKind::Metrics, 1);
    assert!(record.is_ok(), "{record:?}");
    assert_eq!(stored_json(&emu, &record)["group_id"], "0");
}

#[test]
fn the_api_token_and_url_can_come_from_the_config_file() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let ca = emu.certs().unwrap().ca_cert.clone();
    let config = format!(
        "api_token = {:?}\napi_url = {:?}\nca = {:?}\ngroup_id = 3\napp_id = {APP}\nserial = \"SN-CF\"\n",
        emu.api_token(),
        emu.http_url(),
        s(&ca)
    );
    let path = sandbox.write("client.toml", config.as_bytes());
    let run = sandbox
        .run(&strings(&["heartbeat", "--config", &s(&path)]))
        .expect_code(0);
    assert!(
        run.stdout.contains("SN-CF: 1 metric posted to"),
        "{}",
        run.stdout
    );
    assert_eq!(nth(&emu, RecordKind::Metrics, 1).verdict, Verdict::Ok);
    assert!(!run.output().contains(emu.api_token()));
}
