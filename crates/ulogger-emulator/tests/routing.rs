//! The platform's topic rules: what the broker acknowledges but no rule
//! routes is recorded as unrouted with its cause; every group is routed;
//! the legacy layout only when asked; devices' own boot variants; text
//! logs and their duplicates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rumqttc::QoS;
use support::device::{self, APP};
use support::{client_options, TestClient, CUSTOMER, QUIET, SOON};
use ulogger_cloud::wire::parse_boot_reply;
use ulogger_emulator::{Emulator, EmulatorConfig, RecordKind, Verdict};

async fn client(emulator: &Emulator, suffix: &str) -> TestClient {
    let tls = emulator.certs().map(|c| c.client_config().unwrap());
    TestClient::connect(client_options(
        emulator.addr(),
        tls,
        &format!("cust-{CUSTOMER}-{suffix}"),
    ))
    .await
}

#[tokio::test]
async fn a_publish_no_rule_matches_is_acknowledged_and_recorded_as_unrouted_with_its_cause() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let mut gw = client(&emulator, "gw").await;
    // The original layout, without the group level: the broker takes it
    // (PUBACK), and the platform's rule binlog/v0/+/+/+ does not match.
    let legacy = format!("binlog/v0/{CUSTOMER}/{APP}");
    gw.publish(&legacy, QoS::AtLeastOnce, false, device::log(1, b"x"))
        .await;
    let record = emulator
        .wait_for(|r| r.kind == RecordKind::Unrouted, SOON)
        .await
        .expect("an unrouted record");
    assert_eq!(record.topic, legacy);
    assert_eq!(record.verdict, Verdict::Rejected);
    assert_eq!(
        record.reason.as_deref(),
        Some(
            "binlog/v0/42/7: no group level; the platform routes \
             binlog/v0/{customer}/{group}/{app} (group 0 for none)"
        )
    );
    assert!(record.file.is_some(), "the payload is kept to look at");

    // Other shapes are unrouted too, each with its own cause; nothing is
    // taken for a binary log.
    for (topic, cause) in [
        (
            format!("binlog/v0/{CUSTOMER}/0/{APP}/extra"),
            "4 levels after v0",
        ),
        (
            format!("metrics/v0/{CUSTOMER}/zero/{APP}"),
            "not a decimal id",
        ),
        (format!("core-dump/v0/{CUSTOMER}"), "no group level"),
        (
            format!("events/v0/{}/0/{APP}", CUSTOMER + 1),
            "customer id 43",
        ),
    ] {
        gw.publish(&topic, QoS::AtLeastOnce, false, b"{}".to_vec())
            .await;
        let record = emulator
            .wait_for(|r| r.kind == RecordKind::Unrouted && r.topic == topic, SOON)
            .await
            .unwrap_or_else(|| panic!("{topic} not recorded"));
        let reason = record.reason.unwrap();
        assert!(reason.contains(cause), "{topic}: {reason}");
    }
    let records = emulator.records();
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind == RecordKind::Unrouted)
            .count(),
        5
    );
    assert!(!records.iter().any(|r| r.kind == RecordKind::BinaryLog));
}

#[tokio::test]
async fn the_legacy_layout_is_routed_only_when_the_emulator_is_told_to() {
    let emulator = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .legacy_topics(true),
    )
    .unwrap();
    let mut gw = client(&emulator, "gw").await;
    let reply = format!("boot/v0/{CUSTOMER}/{APP}/SN-OLD");
    gw.subscribe(&reply, QoS::AtLeastOnce).await;
    gw.publish(
        &format!("boot/v0/{CUSTOMER}/{APP}"),
        QoS::AtLeastOnce,
        false,
        device::boot_payload("SN-OLD"),
    )
    .await;
    let answer = gw.next_publish(SOON).await.expect("a boot reply");
    assert_eq!(answer.topic, reply);
    let token = parse_boot_reply(&answer.payload).unwrap().unwrap();
    gw.publish(
        &format!("binlog/v0/{CUSTOMER}/{APP}"),
        QoS::AtLeastOnce,
        false,
        device::log(token, b"old layout"),
    )
    .await;
    let record = emulator
        .wait_for(|r| r.kind == RecordKind::BinaryLog, SOON)
        .await
        .unwrap();
    assert!(record.is_ok(), "{record:?}");
    assert_eq!(record.serial.as_deref(), Some("SN-OLD"));
    // The cloud's own reply was not taken for a request.
    assert!(!emulator
        .records()
        .iter()
        .any(|r| r.kind == RecordKind::Unrouted || !r.is_ok()));
}

#[tokio::test]
async fn every_group_is_routed_and_answered_in_its_own_group() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let mut gw = client(&emulator, "gw").await;
    let reply = format!("boot/v0/{CUSTOMER}/5/{APP}/SN-G5");
    gw.subscribe(&reply, QoS::AtLeastOnce).await;
    gw.publish(
        &format!("boot/v0/{CUSTOMER}/5/{APP}"),
        QoS::AtLeastOnce,
        false,
        device::boot_payload("SN-G5"),
    )
    .await;
    let answer = gw.next_publish(SOON).await.expect("a boot reply");
    assert_eq!(answer.topic, reply);
    assert!(parse_boot_reply(&answer.payload).unwrap().is_some());
}

#[tokio::test]
async fn a_device_that_sends_its_serial_as_a_number_and_subscribes_late_gets_its_token() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    // As the Wi-Fi demo firmware does: client id cust-{C}-{S}, the request
    // first, the reply topic subscribed only after the PUBACK.
    let mut dev = client(&emulator, "1001").await;
    let request =
        br#"{"device_type": "wifi_board", "git": "abc1234", "serial": 1001, "version": "v1.0.0"}"#;
    dev.publish(
        &format!("boot/v0/{CUSTOMER}/0/{APP}"),
        QoS::AtLeastOnce,
        false,
        request.to_vec(),
    )
    .await;
    let boot = emulator
        .wait_for(|r| r.kind == RecordKind::BootReply, SOON)
        .await
        .expect("the cloud answered");
    assert_eq!(boot.serial.as_deref(), Some("1001"));
    // Only now does the device subscribe; the reply still reaches it.
    dev.subscribe(
        &format!("boot/v0/{CUSTOMER}/0/{APP}/1001"),
        QoS::AtLeastOnce,
    )
    .await;
    let answer = dev.next_publish(SOON).await.expect("the late reply");
    // A bare decimal number, which is how the firmware reads it.
    let text = std::str::from_utf8(&answer.payload).unwrap();
    let token = boot.token.unwrap();
    assert_eq!(text, format!("{{\"token\":{token}}}"));
    // Once delivered, it is not delivered again.
    dev.subscribe(&format!("boot/v0/{CUSTOMER}/0/{APP}/+"), QoS::AtLeastOnce)
        .await;
    assert!(dev.next_publish(QUIET).await.is_none());
    let request = emulator
        .records()
        .into_iter()
        .find(|r| r.kind == RecordKind::Boot)
        .unwrap();
    assert!(request.is_ok(), "{request:?}");
}

#[tokio::test]
async fn malformed_payloads_on_routed_topics_are_dead_lettered_with_their_reason() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let mut gw = client(&emulator, "gw").await;
    gw.publish(
        &format!("boot/v0/{CUSTOMER}/0/{APP}"),
        QoS::AtLeastOnce,
        false,
        b"{\"serial\": \"x\"}".to_vec(),
    )
    .await;
    let record = emulator
        .wait_for(|r| r.kind == RecordKind::Boot, SOON)
        .await
        .unwrap();
    assert_eq!(record.verdict, Verdict::Rejected);
    assert!(
        record.reason.as_deref().unwrap().contains("device_type"),
        "{record:?}"
    );
}

#[tokio::test]
async fn text_logs_are_verified_recorded_and_duplicate_sequences_dropped() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let mut gw = client(&emulator, "gw").await;
    let topic = format!("logs/v0/{CUSTOMER}/0/{APP}");
    let batch = |sequence: u64| {
        format!(
            "{{\"sequence\": {sequence}, \"device_type\": \"gw\", \"version\": \"1\", \"git\": \"a\", \"serial\": \"GW-1\"}}\n\
             {{\"t\": 1700000000.25, \"lv\": 2, \"m\": \"started\"}}\n\
             {{\"t\": 1700000001.5, \"lv\": 4, \"m\": \"disk full\"}}\n"
        )
        .into_bytes()
    };
    for sequence in [10, 11, 10] {
        gw.publish(&topic, QoS::AtLeastOnce, false, batch(sequence))
            .await;
    }
    gw.publish(&topic, QoS::AtLeastOnce, false, b"not json".to_vec())
        .await;
    let logs: Vec<_> = emulator
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::TextLogs)
        .collect();
    assert_eq!(logs.len(), 4, "{logs:?}");
    assert!(logs[0].is_ok() && logs[1].is_ok());
    assert_eq!(logs[0].entries, Some(2));
    assert_eq!(logs[0].serial.as_deref(), Some("GW-1"));
    assert!(logs[2]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("duplicate of sequence 10"));
    assert!(logs[3].reason.as_deref().unwrap().contains("line 1"));
}

#[tokio::test]
async fn configurations_pushed_by_other_clients_are_recorded_like_the_clouds_own() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let mut pusher = client(&emulator, "push-config").await;
    let topic = format!("config/v0/{CUSTOMER}/0/{APP}/SN-CFG");
    let config = ulogger_cloud::wire::LogConfig::new(ulogger_cloud::wire::LogLevel::Info, 1, 60);
    pusher
        .publish(&topic, QoS::AtLeastOnce, false, config.encode())
        .await;
    pusher
        .publish(&topic, QoS::AtLeastOnce, false, b"\x01".to_vec())
        .await;
    let configs: Vec<_> = emulator
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::Config)
        .collect();
    assert_eq!(configs.len(), 2, "{configs:?}");
    assert!(configs[0].is_ok());
    assert_eq!(configs[0].serial.as_deref(), Some("SN-CFG"));
    assert_eq!(configs[0].app_id, Some(APP));
    assert!(configs[1]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("not a log configuration"));

    // The cloud's own push is recorded once, not again as heard back.
    emulator.push_config(APP, "SN-OWN", &config).await.unwrap();
    let own = emulator
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::Config && r.serial.as_deref() == Some("SN-OWN"))
        .count();
    assert_eq!(own, 1);
}
