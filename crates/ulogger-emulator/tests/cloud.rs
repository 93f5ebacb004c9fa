//! The cloud side: boot registration, log verification and storage, the
//! index, config push; built in and attached to mosquitto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rumqttc::QoS;
use support::device::{self, APP, SERIAL};
use support::{client_options, TestClient, CUSTOMER, QUIET, SOON};
use ulogger_cloud::wire::{parse_boot_reply, LogConfig, LogLevel, Topics};
use ulogger_emulator::testing::Mosquitto;
use ulogger_emulator::{
    AttachTo, CertPaths, Emulator, EmulatorConfig, Record, RecordKind, Verdict,
};

fn topics(emulator: &Emulator) -> Topics {
    Topics::new(
        emulator.topic_prefix(),
        emulator.customer_id(),
        Some(emulator.group_id()),
    )
    .unwrap()
}

async fn device_client(emulator: &Emulator, suffix: &str) -> TestClient {
    let tls = emulator.certs().map(|c| c.client_config().unwrap());
    TestClient::connect(client_options(
        emulator.addr(),
        tls,
        &format!("cust-{CUSTOMER}-{suffix}"),
    ))
    .await
}

/// Registers `serial` the way a device does; returns the token.
async fn register(client: &mut TestClient, topics: &Topics, serial: &str) -> u32 {
    client
        .subscribe(&topics.boot_reply(APP, serial).unwrap(), QoS::AtLeastOnce)
        .await;
    client
        .publish(
            &topics.boot(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            device::boot_payload(serial),
        )
        .await;
    let reply = client.next_publish(SOON).await.expect("a boot reply");
    assert!(!reply.retain, "boot replies are not retained");
    parse_boot_reply(&reply.payload).unwrap().expect("a token")
}

#[tokio::test]
async fn a_registered_token_makes_a_later_log_verify_ok_in_both_topic_layouts() {
    let configs = [
        EmulatorConfig::new(CUSTOMER),
        EmulatorConfig::new(CUSTOMER)
            .group_id(3)
            .topic_prefix("ulogger/")
            .plaintext(true),
    ];
    for config in configs {
        let emulator = Emulator::start(config).unwrap();
        let topics = topics(&emulator);
        let mut client = device_client(&emulator, "gw").await;
        let token = register(&mut client, &topics, SERIAL).await;
        assert_eq!(emulator.issued_tokens(), [(APP, SERIAL.to_string(), token)]);

        let log = device::log(token, b"hello from the device");
        client
            .publish(
                &topics.binlog(APP).unwrap(),
                QoS::AtLeastOnce,
                false,
                log.clone(),
            )
            .await;
        let record = emulator
            .wait_for(|r| r.kind == RecordKind::BinaryLog, SOON)
            .await
            .expect("a binary-log record");
        assert_eq!(record.verdict, Verdict::Ok, "{record:?}");
        assert_eq!(record.token, Some(token));
        assert_eq!(
            record.serial.as_deref(),
            Some(SERIAL),
            "serial of the token"
        );
        assert_eq!(record.app_id, Some(APP));
        assert_eq!(record.size, log.len());
        let stored = std::fs::read(emulator.data_dir().join(record.file.unwrap())).unwrap();
        assert_eq!(stored, log, "stored byte-exact");

        let kinds: Vec<RecordKind> = emulator.records().iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                RecordKind::Boot,
                RecordKind::BootReply,
                RecordKind::BinaryLog
            ]
        );
    }
}

#[tokio::test]
async fn bad_checksums_and_unknown_tokens_are_stored_with_the_reason() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let topics = topics(&emulator);
    let mut client = device_client(&emulator, "gw").await;
    let token = register(&mut client, &topics, SERIAL).await;
    let binlog = topics.binlog(APP).unwrap();

    let mut corrupt = device::log(token, b"some data");
    *corrupt.last_mut().unwrap() ^= 0x55;
    client
        .publish(&binlog, QoS::AtLeastOnce, false, corrupt.clone())
        .await;
    let unknown = device::log(token.wrapping_add(1), b"data");
    client
        .publish(&binlog, QoS::AtLeastOnce, false, unknown)
        .await;
    // A token issued for another application does not count either.
    let other_app = topics.binlog(APP + 1).unwrap();
    client
        .publish(
            &other_app,
            QoS::AtLeastOnce,
            false,
            device::log(token, b"x"),
        )
        .await;
    client
        .publish(&binlog, QoS::AtLeastOnce, false, vec![9u8; 3])
        .await;

    let logs: Vec<Record> = loop {
        let logs: Vec<Record> = emulator
            .records()
            .into_iter()
            .filter(|r| r.kind == RecordKind::BinaryLog)
            .collect();
        if logs.len() == 4 {
            break logs;
        }
        emulator
            .wait_for(|r| r.kind == RecordKind::BinaryLog && r.size == 3, SOON)
            .await
            .expect("all four logs recorded");
    };
    assert!(
        logs.iter().all(|r| r.verdict == Verdict::Rejected),
        "{logs:?}"
    );
    let reasons: Vec<&str> = logs.iter().map(|r| r.reason.as_deref().unwrap()).collect();
    assert!(reasons[0].contains("checksum"), "{}", reasons[0]);
    assert_eq!(
        logs[0].token,
        Some(token),
        "the header still names its token"
    );
    assert!(
        reasons[1].contains("unknown session token"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains(&format!("application {}", APP + 1)),
        "{}",
        reasons[2]
    );
    assert!(reasons[3].contains("shorter"), "{}", reasons[3]);
    // Rejected logs are stored too, for a person to inspect.
    let stored = std::fs::read(emulator.data_dir().join(logs[0].file.as_ref().unwrap())).unwrap();
    assert_eq!(stored, corrupt);
}

#[tokio::test]
async fn the_index_file_holds_one_parsable_line_per_record() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let topics = topics(&emulator);
    let mut client = device_client(&emulator, "gw").await;
    let token = register(&mut client, &topics, SERIAL).await;
    client
        .publish(
            &topics.binlog(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            device::log(token, b"a"),
        )
        .await;
    client
        .publish(
            &topics.core_dump().unwrap(),
            QoS::AtLeastOnce,
            false,
            vec![0xAB; 1000],
        )
        .await;
    let metrics = br#"{"device_serial":"SN-0001","metrics":[{"name":"heartbeat","value":1}]}"#;
    client
        .publish(
            &topics.metrics(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            metrics.to_vec(),
        )
        .await;
    let events = br#"{"device_serial":"SN-0001","events":[{"type":"boot"}]}"#;
    client
        .publish(
            &topics.events(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            events.to_vec(),
        )
        .await;
    emulator
        .wait_for(|r| r.kind == RecordKind::Events, SOON)
        .await
        .unwrap();

    let from_file = Record::read_index(emulator.index_path()).unwrap();
    assert_eq!(from_file, emulator.records());
    let kinds: Vec<RecordKind> = from_file.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RecordKind::Boot,
            RecordKind::BootReply,
            RecordKind::BinaryLog,
            RecordKind::CoreDump,
            RecordKind::Metrics,
            RecordKind::Events
        ]
    );
    let dump = &from_file[3];
    assert_eq!((dump.size, dump.verdict), (1000, Verdict::Ok));
    assert!(dump.file.as_ref().unwrap().starts_with("core-dump"));
    assert_eq!(from_file[4].serial.as_deref(), Some(SERIAL));
    // Every line is a JSON object with the documented keys.
    let text = std::fs::read_to_string(emulator.index_path()).unwrap();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in [
            "time", "kind", "topic", "app_id", "serial", "token", "size", "verdict", "reason",
            "file",
        ] {
            assert!(value.get(key).is_some(), "{key} missing in {line}");
        }
    }
}

#[tokio::test]
async fn a_malformed_boot_request_is_recorded_and_not_answered() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let topics = topics(&emulator);
    let mut client = device_client(&emulator, "gw").await;
    client
        .subscribe(&topics.boot_reply(APP, SERIAL).unwrap(), QoS::AtLeastOnce)
        .await;
    client
        .publish(
            &topics.boot(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            br#"{"serial":"SN-0001"}"#.to_vec(),
        )
        .await;
    let record = emulator
        .wait_for(|r| r.kind == RecordKind::Boot, SOON)
        .await
        .unwrap();
    assert_eq!(record.verdict, Verdict::Rejected);
    assert!(record.reason.unwrap().contains("device_type"));
    assert!(client.next_publish(QUIET).await.is_none());
    assert!(emulator.issued_tokens().is_empty());
}

#[tokio::test]
async fn a_pushed_config_reaches_the_device_byte_exact() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).group_id(9)).unwrap();
    let topics = topics(&emulator);
    let mut client = device_client(&emulator, "dev").await;
    client
        .subscribe(&topics.config(APP, SERIAL).unwrap(), QoS::AtLeastOnce)
        .await;
    let config = LogConfig::new(LogLevel::Warning, 0b1011, 600)
        .with_module_names(vec!["net".into(), "ble".into()]);
    emulator.push_config(APP, SERIAL, &config).await.unwrap();
    let got = client.next_publish(SOON).await.expect("the config");
    assert_eq!(got.topic, topics.config(APP, SERIAL).unwrap());
    assert_eq!(got.payload.as_ref(), config.encode().as_slice());
    assert_eq!(LogConfig::decode(&got.payload).unwrap(), config);
    let record = emulator
        .wait_for(|r| r.kind == RecordKind::Config, SOON)
        .await
        .unwrap();
    assert_eq!(record.serial.as_deref(), Some(SERIAL));

    // An id that cannot go into a topic is refused up front.
    let err = emulator.push_config(APP, "x/#", &config).await.unwrap_err();
    assert!(err.to_string().contains("serial"), "{err}");
}

#[test]
fn the_blocking_api_works_from_plain_threads() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let config = LogConfig::new(LogLevel::Debug, 1, 1);
    emulator.push_config_blocking(APP, SERIAL, &config).unwrap();
    let record = emulator
        .wait_for_blocking(|r| r.kind == RecordKind::Config, SOON)
        .unwrap();
    assert_eq!(record.size, 9);
    assert!(emulator
        .wait_for_blocking(|r| r.kind == RecordKind::Boot, QUIET)
        .is_none());
}

/// Runs a registration, an upload and a config push through an external
/// broker that the emulator's cloud side is attached to.
async fn attached_round_trip(emulator: &Emulator, device_options: rumqttc::MqttOptions) {
    let topics = topics(emulator);
    let mut client = TestClient::connect(device_options).await;
    let token = register(&mut client, &topics, SERIAL).await;
    client
        .publish(
            &topics.binlog(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            device::log(token, b"attached"),
        )
        .await;
    let record = emulator
        .wait_for(|r| r.kind == RecordKind::BinaryLog, SOON)
        .await
        .unwrap();
    assert_eq!(record.verdict, Verdict::Ok, "{record:?}");
    assert_eq!(record.serial.as_deref(), Some(SERIAL));

    client
        .subscribe(&topics.config(APP, SERIAL).unwrap(), QoS::AtLeastOnce)
        .await;
    let config = LogConfig::new(LogLevel::Info, 7, 30);
    emulator.push_config(APP, SERIAL, &config).await.unwrap();
    let got = client
        .next_publish(SOON)
        .await
        .expect("config through mosquitto");
    assert_eq!(got.payload.as_ref(), config.encode().as_slice());
}

#[tokio::test]
async fn attach_mode_serves_devices_on_a_plaintext_mosquitto() {
    let Some(mosquitto) = Mosquitto::plaintext() else {
        return;
    };
    let addr = mosquitto.addr();
    let emulator = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .group_id(5)
            .attach(AttachTo::new(addr.ip().to_string(), addr.port())),
    )
    .unwrap();
    assert_eq!(emulator.addr(), addr);
    assert!(emulator.certs().is_none());
    attached_round_trip(&emulator, client_options(addr, None, "cust-42-device")).await;
}

#[tokio::test]
async fn attach_mode_serves_devices_on_a_mutual_tls_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertPaths::generate(dir.path(), CUSTOMER).unwrap();
    let Some(mosquitto) = Mosquitto::mutual_tls(&certs) else {
        return;
    };
    let addr = mosquitto.addr();
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).attach(
        AttachTo::new("localhost", addr.port()).mutual_tls(
            &certs.ca_cert,
            &certs.client_cert,
            &certs.client_key,
        ),
    ))
    .unwrap();
    let device = client_options(addr, Some(certs.client_config().unwrap()), "cust-42-device");
    attached_round_trip(&emulator, device).await;
}

#[test]
fn attach_mode_reports_an_unreachable_broker() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err =
        Emulator::start(EmulatorConfig::new(CUSTOMER).attach(AttachTo::new("127.0.0.1", port)))
            .unwrap_err();
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}
