//! `ulogger emulator` as a user runs it: start the binary on a free port,
//! read how to connect from its output, connect an ordinary MQTT client
//! with the printed certificate paths, see the record line, stop it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};

use support::{Running, WAIT};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

#[tokio::test]
async fn the_printed_address_and_certificates_let_a_client_connect() {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    let running = Running::emulator(&["--data", data_arg, "--customer-id", "77"]);
    // e.g. "address:     127.0.0.1:40123 (MQTT, mutual TLS)"
    let address = running.field("address:");
    let addr: std::net::SocketAddr = address.split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(addr.port(), 0);
    assert_eq!(running.field("customer id:"), "77");
    let ca = running.field("CA:");
    let cert = running.field("client cert:");
    let key = running.field("client key:");
    let limits = running.field("limits:");
    assert!(
        limits.contains("100 publishes/s") && limits.contains("--no-limits"),
        "{limits}"
    );
    let upload = running.field("ulogger upload");
    assert!(
        upload.contains(&format!("--port {}", addr.port())),
        "{upload}"
    );
    assert!(upload.contains(&format!("--ca {ca}")), "{upload}");

    let tls = ulogger_emulator::client_tls_config(ca.as_ref(), Some((cert.as_ref(), key.as_ref())))
        .unwrap();
    let mut options = MqttOptions::new("cust-77-cli-test", addr.ip().to_string(), addr.port());
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let connected = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("cannot connect to the printed address: {e}"),
            }
        }
    });
    connected.await.unwrap();

    // A core dump shows up as a record line.
    client
        .publish("core-dump/v0/77", QoS::AtLeastOnce, false, vec![0u8; 64])
        .await
        .unwrap();
    let acked = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    });
    acked.await.unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let line = running.line_containing("core-dump/v0/77");
        (running, line)
    })
    .await
    .unwrap()
    .1;
    assert!(line.contains("size=64"), "{line}");
    // Each record line starts with when it was received (RFC 3339, UTC).
    let (time, record) = line.split_once(' ').unwrap();
    let received =
        time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(received.offset(), time::UtcOffset::UTC, "{line}");
    assert!(record.contains(" core-dump/v0/77 "), "{line}");
    assert!(data.path().join("index.jsonl").is_file());
}

#[test]
fn json_output_reports_a_plaintext_emulator() {
    let data = tempfile::tempdir().unwrap();
    let running = Running::emulator_json(&[
        "--plaintext",
        "--data",
        data.path().to_str().unwrap(),
        "--group-id",
        "5",
    ]);
    let first = running.lines.recv_timeout(WAIT).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(ready["event"], "ready");
    assert_eq!(ready["tls"], false);
    assert_eq!(ready["limits"], true, "AWS IoT's limits are on by default");
    assert_eq!(ready["group_id"], 5);
    let addr: std::net::SocketAddr = ready["address"].as_str().unwrap().parse().unwrap();
    std::net::TcpStream::connect(addr).unwrap();
    assert!(ready["upload_flags"]
        .as_str()
        .unwrap()
        .contains("--plaintext"));
}

#[test]
fn a_taken_port_is_a_network_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .args(["emulator", "--plaintext", "--listen", &addr, "--data"])
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
}

#[test]
fn no_limits_lifts_the_platform_limits_and_says_so() {
    let data = tempfile::tempdir().unwrap();
    let running = Running::emulator_json(&[
        "--plaintext",
        "--no-limits",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    let first = running.lines.recv_timeout(WAIT).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(ready["event"], "ready");
    assert_eq!(ready["limits"], false);

    let data = tempfile::tempdir().unwrap();
    let running = Running::emulator(&[
        "--plaintext",
        "--no-limits",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    assert_eq!(running.field("limits:"), "none (--no-limits)");
}

#[test]
fn the_help_shows_no_limits() {
    let out = Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .args(["emulator", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--no-limits"), "{help}");
    assert!(help.contains("100 publishes/s"), "{help}");
    // Attach mode runs no broker, so there are no limits to lift.
    let status = Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .args(["emulator", "--no-limits", "--attach", "127.0.0.1:1883"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
}

/// The running emulator says, with the time, when a client connects and
/// when it goes (`client-connected`, `client-disconnected` with `--json`).
#[test]
fn client_connections_coming_and_going_are_lines_of_their_own() {
    let data = tempfile::tempdir().unwrap();
    let running = Running::emulator_json(&["--plaintext", "--data", data.path().to_str().unwrap()]);
    let ready = running.json_line();
    assert_eq!(ready["event"], "ready");
    // The heartbeat command it printed: connects, publishes, disconnects.
    let beat: Vec<String> = ready["heartbeat_command"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|w| w.trim_matches('\'').to_owned())
        .collect();
    let sent = Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .args(&beat)
        .env("ULOGGER_LOG", "off")
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    let event = |kind: &str| loop {
        let line = running.json_line();
        if line["event"] == kind {
            return line;
        }
    };
    let connected = event("client-connected");
    let client_id = connected["client_id"].as_str().unwrap().to_owned();
    assert!(client_id.starts_with("cust-"), "{connected}");
    assert!(
        connected["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{connected}"
    );
    let time = connected["time"].as_str().unwrap();
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).unwrap();
    let gone = event("client-disconnected");
    assert_eq!(gone["client_id"], client_id.as_str(), "{gone}");
    assert_eq!(gone["peer"], connected["peer"], "{gone}");
}
