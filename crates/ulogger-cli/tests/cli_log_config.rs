//! `ulogger config watch` and `ulogger emulator push-config`: a log
//! configuration pushed through a running emulator reaches the watcher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;

use support::sandbox::{connect_args, device_args, s, strings, tls_emulator, Sandbox, APP};
use support::{Running, WAIT};
use ulogger_cloud::wire::{LogConfig, LogLevel};

/// Starts `args` with stdout piped, in `sandbox`.
fn start(sandbox: &Sandbox, args: &[String]) -> Running {
    let mut command = sandbox.command(&[]);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Running::spawn(command)
}

#[test]
fn watch_prints_a_configuration_pushed_through_the_emulator_binary() {
    let sandbox = Sandbox::new();
    let data = sandbox.path("emulator-data");
    let emulator = start(
        &sandbox,
        &strings(&[
            "--json",
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--data",
            &s(&data),
        ]),
    );
    let ready = emulator.json_line();
    assert_eq!(ready["event"], "ready");
    let config_file = ready["config_file"].as_str().unwrap().to_owned();

    let mut watch_args = strings(&["--json", "config", "watch", "--config", &config_file]);
    watch_args.extend(device_args("SN-WATCH"));
    let mut watcher = start(&sandbox, &watch_args);
    let watching = watcher.json_line();
    assert_eq!(watching["event"], "watching", "{watching}");
    assert!(
        watching["topic"].as_str().unwrap().ends_with("/SN-WATCH"),
        "{watching}"
    );

    let pushed = sandbox.run(&strings(&[
        "--json",
        "emulator",
        "push-config",
        "--data",
        &s(&data),
        "--app-id",
        &APP.to_string(),
        "--serial",
        "SN-WATCH",
        "--level",
        "warning",
        "--module-flags",
        "0xb",
        "--lifetime",
        // Ten minutes, with its unit (a bare number is seconds).
        "10m",
        "--modules",
        "net,fs,ui",
    ]));
    assert_eq!(pushed.code, Some(0), "{}", pushed.output());
    let receipt: serde_json::Value = serde_json::from_str(pushed.stdout.trim()).unwrap();
    assert_eq!(receipt["event"], "pushed");
    assert_eq!(receipt["topic"], watching["topic"]);

    // The connection's coming up is an event of the stream too.
    let mut seen = Vec::new();
    let line = loop {
        let line = watcher.json_line();
        if line["event"] == "log_config" {
            break line;
        }
        seen.push(line);
    };
    assert!(seen.iter().any(|e| e["event"] == "connected"), "{seen:#?}");
    assert_time(line["time"].as_str().unwrap());
    assert_eq!(
        line["config"],
        serde_json::json!({
            "level": "WARNING",
            "level_value": 2,
            "module_flags": 11,
            "timeout_secs": 600,
            "module_names": ["net", "fs", "ui"],
        })
    );

    // The lifetime's old name still works, hidden from --help.
    let pushed = sandbox.run(&strings(&[
        "emulator",
        "push-config",
        "--data",
        &s(&data),
        "--app-id",
        &APP.to_string(),
        "--serial",
        "SN-WATCH",
        "--level",
        "info",
        "--timeout",
        "90",
    ]));
    assert_eq!(pushed.code, Some(0), "{}", pushed.output());
    let line = loop {
        let line = watcher.json_line();
        if line["event"] == "log_config" {
            break line;
        }
    };
    assert_eq!(line["config"]["timeout_secs"], 90, "{line}");
    let status = watcher.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM ends a watch cleanly");
}

#[test]
fn push_config_help_names_the_lifetime_not_a_timeout() {
    let help = Sandbox::new()
        .run(&strings(&["emulator", "push-config", "--help"]))
        .expect_code(0);

    assert!(
        help.stdout.contains("--lifetime <SECS>")
            && help
                .stdout
                .contains("How long the device keeps this configuration"),
        "{}",
        help.stdout
    );
    assert!(!help.stdout.contains("--timeout <"), "{}", help.stdout);
}

#[test]
fn watch_prints_a_human_line_per_configuration() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let mut args = connect_args("config", &emu);
    args.insert(1, "watch".to_owned());
    args.extend(["--no-store".to_owned()]);
    args.extend(device_args("SN-WATCH-HUMAN"));
    let watcher = start(&sandbox, &args);
    // The watch says it is subscribed on stderr; stdout holds only
    // configurations, so push until the first one shows.
    let config = LogConfig::new(LogLevel::Error, 5, 30);
    let deadline = std::time::Instant::now() + WAIT;
    let line = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no line from the watch"
        );
        emu.push_config_blocking(APP, "SN-WATCH-HUMAN", &config)
            .unwrap();
        match watcher
            .lines
            .recv_timeout(std::time::Duration::from_millis(100))
        {
            Ok(line) => break line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(e) => panic!("the watch ended: {e}"),
        }
    };
    let (time, config) = line.split_once(' ').unwrap();
    assert_time(time);
    assert_eq!(config, "level=ERROR module_flags=0x00000005 timeout=30s");
}

/// A line's time: RFC 3339, UTC.
fn assert_time(time: &str) {
    let parsed = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{e}: {time}"));
    assert_eq!(parsed.offset(), time::UtcOffset::UTC, "{time}");
    assert!(time.ends_with('Z'), "{time}");
}

/// The watch says, with the time, when its connection goes down (and
/// why) and when it comes back; the configurations pushed after still
/// arrive.
#[test]
fn watch_says_when_the_connection_goes_down_and_comes_back() {
    let sandbox = Sandbox::new();
    let port = ulogger_emulator::PortHold::new().unwrap();
    let emu = support::sandbox::plaintext_emulator_on(&port);
    let mut args = vec!["--json".to_owned()];
    args.extend(connect_args("config", &emu));
    args.insert(2, "watch".to_owned());
    args.extend(["--no-store".to_owned()]);
    args.extend(device_args("SN-WATCH-LINK"));
    let mut watcher = start(&sandbox, &args);
    let event = |watcher: &Running, kind: &str| loop {
        let line = watcher.json_line();
        if line["event"] == kind {
            assert_time(line["time"].as_str().unwrap());
            return line;
        }
    };
    let up = event(&watcher, "connected");
    let client_id = up["client_id"].as_str().unwrap().to_owned();
    assert!(client_id.starts_with("cust-4242-"), "{up}");

    drop(emu);
    let down = event(&watcher, "disconnected");
    assert_eq!(down["client_id"], client_id.as_str(), "{down}");
    assert!(down["error"].is_string(), "{down}");
    let emu = support::sandbox::plaintext_emulator_on(&port);
    let again = event(&watcher, "connected");
    assert_eq!(again["client_id"], client_id.as_str(), "{again}");
    // Subscribed again (the SUBACK may trail the connection line: push
    // until one arrives): a push reaches the watch.
    let deadline = std::time::Instant::now() + WAIT;
    let config = loop {
        assert!(std::time::Instant::now() < deadline, "no configuration");
        emu.push_config_blocking(APP, "SN-WATCH-LINK", &LogConfig::new(LogLevel::Info, 1, 60))
            .unwrap();
        match watcher
            .lines
            .recv_timeout(std::time::Duration::from_millis(100))
        {
            Ok(line) => {
                let line: serde_json::Value = serde_json::from_str(&line).unwrap();
                if line["event"] == "log_config" {
                    break line;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(e) => panic!("the watch ended: {e}"),
        }
    };
    assert_eq!(config["config"]["level"], "INFO", "{config}");
    assert!(watcher.terminate().success());
}

#[test]
fn watch_once_needs_only_the_topic_ids_and_prints_the_current_configuration() {
    let emu = support::sandbox::plaintext_emulator();
    let sandbox = Sandbox::new();
    // The platform may keep a device's current configuration retained.
    let config = LogConfig::new(LogLevel::Warning, 3, 60);
    let topic = format!("config/v0/{}/0/{APP}/SN-ONCE", support::sandbox::CUSTOMER);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = rumqttc::MqttOptions::new(
            format!("cust-{}-retain", support::sandbox::CUSTOMER),
            "127.0.0.1",
            emu.addr().port(),
        );
        options.set_keep_alive(std::time::Duration::from_secs(5));
        let (client, mut events) = rumqttc::AsyncClient::new(options, 4);
        client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, true, config.encode())
            .await
            .unwrap();
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                events.poll().await.unwrap()
            {
                break;
            }
        }
    });
    // No device type, version or hash: the topic does not need them.
    let mut args = connect_args("config", &emu);
    args.insert(1, "watch".to_owned());
    args.extend(strings(&[
        "--app-id",
        &APP.to_string(),
        "--serial",
        "SN-ONCE",
        "--once",
        "--wait",
        "5",
    ]));
    let run = sandbox.run(&args);
    assert_eq!(run.code, Some(0), "{}", run.output());
    assert_eq!(
        run.stdout.trim(),
        "level=WARNING module_flags=0x00000003 timeout=60s"
    );

    // Nothing there: a timeout, exit 3, after the wait asked for.
    let args = other_serial_waiting_a_second(&args, "SN-NONE");
    let run = sandbox.run(&args);
    assert_eq!(run.code, Some(3), "{}", run.output());
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
}

/// `args` for another serial, waiting one second.
fn other_serial_waiting_a_second(args: &[String], serial: &str) -> Vec<String> {
    let mut args = args.to_vec();
    let at = args.iter().position(|a| a == "--serial").unwrap();
    args[at + 1] = serial.to_owned();
    let at = args.iter().position(|a| a == "--wait").unwrap();
    args[at + 1] = "1".to_owned();
    args
}

#[test]
fn push_config_says_a_plaintext_client_toml_against_tls_in_words() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let data = sandbox.path("stale-data");
    std::fs::create_dir(&data).unwrap();
    let port = emu.addr().port();
    std::fs::write(
        data.join("client.toml"),
        format!("customer_id = 4242\nbroker = \"127.0.0.1\"\nport = {port}\nplaintext = true\n"),
    )
    .unwrap();

    let run = sandbox
        .run(&strings(&[
            "emulator",
            "push-config",
            "--data",
            &s(&data),
            "--app-id",
            &APP.to_string(),
            "--serial",
            "SN-STALE",
            "--level",
            "info",
        ]))
        .expect_code(3);

    assert_eq!(
        run.stderr,
        format!(
            "error: 127.0.0.1:{port} did not answer in MQTT\n\
             hint: {}/client.toml says plaintext, but the emulator there speaks TLS: it may be from an emulator started with --plaintext before; point --data at the running emulator's directory\n",
            s(&data)
        )
    );
}

/// A config file that speaks plaintext to `emu`, a TLS emulator.
fn plaintext_against_tls(sandbox: &Sandbox, emu: &ulogger_emulator::Emulator) -> String {
    let config = sandbox.write(
        "plain.toml",
        format!(
            "customer_id = 4242\nbroker = \"127.0.0.1\"\nport = {}\nplaintext = true\n",
            emu.addr().port()
        )
        .as_bytes(),
    );
    s(&config)
}

const NOT_MQTT: &str = "the broker's answer is not MQTT (-v shows the decoder's error)";
const DROP_PLAINTEXT: &str = "the broker does not answer plaintext MQTT: it probably expects TLS (port 8883); drop --plaintext (and ULOGGER_PLAINTEXT, plaintext in the config file)";

#[test]
fn watch_once_fails_with_the_connections_cause_not_a_timeout() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let config = plaintext_against_tls(&sandbox, &emu);
    let mut args = strings(&[
        "config", "watch", "--once", "--wait", "30", "--config", &config,
    ]);
    args.extend(device_args("SN-ONCE-TLS"));

    let started = std::time::Instant::now();
    let run = sandbox.run(&args).expect_code(3);

    assert!(started.elapsed() < WAIT, "{:?}", started.elapsed());
    assert_eq!(
        run.stderr,
        format!("error: {NOT_MQTT}\nhint: {DROP_PLAINTEXT}\n")
    );
}

#[test]
fn a_watch_that_cannot_connect_says_why_once_and_keeps_trying() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let config = plaintext_against_tls(&sandbox, &emu);
    let mut args = strings(&["--json", "config", "watch", "--config", &config]);
    args.extend(device_args("SN-WATCH-TLS"));
    let mut watcher = start(&sandbox, &args);

    let failed = watcher.json_line();
    assert_eq!(failed["event"], "connect_failed", "{failed}");
    assert_eq!(failed["error"], NOT_MQTT);
    assert_eq!(failed["hint"], DROP_PLAINTEXT);
    assert_eq!(
        watcher.terminate().code(),
        Some(0),
        "SIGTERM ends it cleanly"
    );
    // Everything it printed until it ended (the reader stops at EOF).
    let rest: Vec<String> = watcher.lines.iter().collect();
    assert!(rest.is_empty(), "said once: {rest:?}");
}
