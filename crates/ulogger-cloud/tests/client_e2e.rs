//! The client end to end against the emulator, over real sockets with
//! mutual TLS unless a test says otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use ulogger_cloud::wire::{LogHeader, MAX_MESSAGE_SIZE};
use ulogger_cloud::{Client, ErrorKind, MqttConfig, Pacing, Phase, Security, SessionStore};
use ulogger_emulator::{
    BootReplyMode, EmulatorConfig, PlatformLimits, PortHold, RecordKind, Verdict, WithholdPuback,
};

#[tokio::test]
async fn registration_returns_the_token_the_cloud_issued_and_stores_it() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-REG-1");

    let token = client.session_token(&dev).await.unwrap();

    let issued = emu.issued_tokens();
    assert_eq!(issued, vec![(APP, "SN-REG-1".to_owned(), token)]);
    assert_eq!(
        client.session_store().get("SN-REG-1", "abc1234").unwrap(),
        Some(token)
    );
    client.shutdown().await;
}

#[tokio::test]
async fn cached_token_needs_no_registration_and_new_firmware_registers_again() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-CACHE");

    let first = client.session_token(&dev).await.unwrap();
    let again = client.session_token(&dev).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(records_of(&emu, RecordKind::Boot).len(), 1);

    let mut updated = dev.clone();
    updated.git_hash = "fedcba9".to_owned();
    let second = client.session_token(&updated).await.unwrap();
    assert_eq!(records_of(&emu, RecordKind::Boot).len(), 2);
    assert_eq!(emu.issued_tokens().len(), 2);
    assert_eq!(emu.issued_tokens()[1].2, second);
    client.shutdown().await;
}

#[tokio::test]
async fn register_always_performs_the_handshake() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-REREG");
    let a = client.register(&dev).await.unwrap();
    let b = client.register(&dev).await.unwrap();
    assert_eq!(emu.issued_tokens().len(), 2);
    assert_eq!(
        client.session_store().get("SN-REREG", "abc1234").unwrap(),
        Some(b),
        "the newest token is the stored one (first was {a})"
    );
    client.shutdown().await;
}

#[tokio::test]
async fn uploaded_log_arrives_byte_for_byte_with_the_token_patched_in() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-UPLOAD");
    let mut log = v4_log(4000, 0);
    log.extend_from_slice(&[0xEE; 100]); // unused ring-buffer space travels too

    let receipt = client.upload_log(&dev, &log).await.unwrap();

    let record = emu
        .wait_for(|r| r.kind == RecordKind::BinaryLog, PATIENCE)
        .await
        .expect("the cloud stored the log");
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    assert_eq!(record.serial.as_deref(), Some("SN-UPLOAD"));
    assert_eq!(record.token, Some(receipt.token));
    let mut expected = log.clone();
    expected[1..5].copy_from_slice(&receipt.token.to_le_bytes());
    assert_eq!(stored_bytes(&emu, &record), expected);
    assert_eq!(receipt.size, log.len());
    assert_eq!(receipt.topic, format!("binlog/v0/{CUSTOMER}/0/{APP}"));
    assert_eq!(receipt.header.session_token, receipt.token);
    client.shutdown().await;
}

#[tokio::test]
async fn second_upload_uses_the_cached_token() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-TWICE");
    let a = client.upload_log(&dev, &v1_log(10)).await.unwrap();
    let b = client.upload_log(&dev, &v4_log(20, 0)).await.unwrap();
    assert_eq!(a.token, b.token);
    assert_eq!(records_of(&emu, RecordKind::Boot).len(), 1);
    let logs = wait_for_count(&emu, RecordKind::BinaryLog, 2).await;
    assert!(logs);
    assert!(records_of(&emu, RecordKind::BinaryLog)
        .iter()
        .all(|r| r.verdict == Verdict::Ok));
    client.shutdown().await;
}

#[tokio::test]
async fn stamping_writes_the_gateway_clock_into_v4_headers_left_at_zero() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu))
        .stamp_epoch_time(true)
        .build()
        .unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let receipt = client
        .upload_log(&device("SN-STAMP"), &v4_log(64, 0))
        .await
        .unwrap();
    let stamped = receipt.header.epoch_time_us.unwrap();
    assert!(stamped >= before, "{stamped} < {before}");
    let record = emu
        .wait_for(|r| r.kind == RecordKind::BinaryLog, PATIENCE)
        .await
        .unwrap();
    let header = LogHeader::parse(&stored_bytes(&emu, &record)).unwrap();
    assert_eq!(header.epoch_time_us, Some(stamped));
    assert_eq!(record.verdict, Verdict::Ok);
    client.shutdown().await;
}

#[tokio::test]
async fn core_dump_is_stored() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dump: Vec<u8> = (0..5000u32).map(|i| (i % 256) as u8).collect();
    let receipt = client.publish_core_dump(dump.clone()).await.unwrap();
    assert_eq!(receipt.topic, format!("core-dump/v0/{CUSTOMER}/0"));
    let record = emu
        .wait_for(|r| r.kind == RecordKind::CoreDump, PATIENCE)
        .await
        .unwrap();
    assert_eq!(stored_bytes(&emu, &record), dump);
    client.shutdown().await;
}

#[tokio::test]
async fn group_layout_with_a_prefix_reaches_the_cloud() {
    let emu = emulator(
        EmulatorConfig::new(CUSTOMER)
            .group_id(55)
            .topic_prefix("ulogger/"),
    );
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let receipt = client
        .upload_log(&device("SN-GROUP"), &v4_log(100, 0))
        .await
        .unwrap();
    assert_eq!(
        receipt.topic,
        format!("ulogger/binlog/v0/{CUSTOMER}/55/{APP}")
    );
    let record = emu
        .wait_for(|r| r.kind == RecordKind::BinaryLog, PATIENCE)
        .await
        .unwrap();
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    let boot = records_of(&emu, RecordKind::Boot);
    assert_eq!(
        boot[0].topic,
        format!("ulogger/boot/v0/{CUSTOMER}/55/{APP}")
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_devices_upload_concurrently_through_one_client() {
    // About concurrency through one connection, not rates: 200 publishes
    // would take 2 s paced, and break AWS IoT's 100 publishes/s unpaced.
    let emu = emulator(EmulatorConfig::new(CUSTOMER).limits(PlatformLimits::unlimited()));
    let client = Client::builder(
        config_for(&emu)
            .pacing(Pacing::off())
            .registration_limit(ulogger_cloud::RegistrationLimit::off()),
    )
    .build()
    .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let client = client.clone();
        tasks.spawn(async move {
            let dev = device(&format!("SN-MANY-{i:03}"));
            client.upload_log(&dev, &v4_log(512 + i, 0)).await
        });
    }
    let mut tokens = std::collections::HashSet::new();
    while let Some(result) = tasks.join_next().await {
        tokens.insert(result.unwrap().unwrap().token);
    }
    assert_eq!(emu.issued_tokens().len(), 100);
    assert!(wait_for_count(&emu, RecordKind::BinaryLog, 100).await);
    let logs = records_of(&emu, RecordKind::BinaryLog);
    assert!(logs.iter().all(|r| r.verdict == Verdict::Ok));
    assert_eq!(
        emu.connected_clients().len(),
        1,
        "one connection carries every device"
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_for_one_serial_share_one_registration() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-SINGLE");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = client.clone();
        let dev = dev.clone();
        tasks.spawn(async move { client.session_token(&dev).await });
    }
    let mut tokens = Vec::new();
    while let Some(result) = tasks.join_next().await {
        tokens.push(result.unwrap().unwrap());
    }
    assert_eq!(emu.issued_tokens().len(), 1);
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    client.shutdown().await;
}

#[tokio::test]
async fn a_withheld_puback_is_an_acknowledgement_timeout_never_success() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu).ack_timeout(Duration::from_millis(500)))
        .build()
        .unwrap();
    let dev = device("SN-NOACK");
    client.session_token(&dev).await.unwrap();
    emu.faults()
        .set_withhold_puback(WithholdPuback::Topic("binlog/#".to_owned()));

    let err = client.upload_log(&dev, &v1_log(10)).await.unwrap_err();

    assert_eq!(err.timeout_phase(), Some(Phase::Acknowledgement), "{err:?}");
    assert!(err.is_retryable());
    client.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_is_recovered_and_the_next_upload_succeeds() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-DROP");
    client.upload_log(&dev, &v1_log(10)).await.unwrap();
    let before = client.client_id().to_owned();

    assert_eq!(emu.disconnect_all(), 1);
    let receipt = client.upload_log(&dev, &v1_log(11)).await.unwrap();

    assert_eq!(client.client_id(), before);
    assert!(wait_for_count(&emu, RecordKind::BinaryLog, 2).await);
    assert_eq!(receipt.token, emu.issued_tokens()[0].2);
    client.shutdown().await;
}

#[tokio::test]
async fn an_unacknowledged_publish_is_resent_after_a_reconnect() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-RESEND");
    client.session_token(&dev).await.unwrap();
    // The broker takes the log but its PUBACK is lost; then the link drops.
    emu.faults()
        .set_withhold_puback(WithholdPuback::Topic("binlog/#".to_owned()));
    let upload = {
        let client = client.clone();
        let dev = dev.clone();
        tokio::spawn(async move { client.upload_log(&dev, &v4_log(20_000, 0)).await })
    };
    emu.wait_for(|r| r.kind == RecordKind::BinaryLog, PATIENCE)
        .await
        .expect("the first copy reached the cloud");
    emu.faults().set_withhold_puback(WithholdPuback::None);
    assert_eq!(emu.disconnect_all(), 1);

    let receipt = upload
        .await
        .unwrap()
        .expect("completed by the re-sent copy's PUBACK");

    let copies = wait_for_count(&emu, RecordKind::BinaryLog, 2).await;
    assert!(copies, "at-least-once: the re-sent copy arrived");
    for record in records_of(&emu, RecordKind::BinaryLog) {
        assert_eq!(record.verdict, Verdict::Ok);
        assert_eq!(record.size, receipt.size);
    }
    client.shutdown().await;
}

#[tokio::test]
async fn a_malformed_boot_reply_times_out_and_nothing_is_published() {
    let emu = tls_emulator();
    emu.faults().set_boot_reply(BootReplyMode::Malformed);
    let client = Client::builder(config_for(&emu).token_timeout(Duration::from_millis(700)))
        .build()
        .unwrap();

    let err = client
        .upload_log(&device("SN-MALFORMED"), &v1_log(10))
        .await
        .unwrap_err();

    assert_eq!(err.timeout_phase(), Some(Phase::BootReply), "{err:?}");
    // What arrived instead is said, not only that time ran out.
    let cause = std::error::Error::source(&err)
        .expect("a cause")
        .to_string();
    assert!(
        cause.contains("2 message(s)") && cause.contains("JSON without a token"),
        "{cause}"
    );
    assert!(records_of(&emu, RecordKind::BinaryLog).is_empty());
    assert!(client
        .session_store()
        .get("SN-MALFORMED", "abc1234")
        .unwrap()
        .is_none());
    client.shutdown().await;
}

#[tokio::test]
async fn a_missing_boot_reply_times_out_and_nothing_is_published() {
    let emu = tls_emulator();
    emu.faults().set_boot_reply(BootReplyMode::None);
    let client = Client::builder(config_for(&emu).token_timeout(Duration::from_millis(500)))
        .build()
        .unwrap();
    let err = client
        .upload_log(&device("SN-SILENT"), &v1_log(10))
        .await
        .unwrap_err();
    assert_eq!(err.timeout_phase(), Some(Phase::BootReply), "{err:?}");
    assert!(records_of(&emu, RecordKind::BinaryLog).is_empty());
    client.shutdown().await;
}

#[tokio::test]
async fn a_late_boot_reply_within_the_timeout_is_accepted() {
    let emu = tls_emulator();
    emu.faults()
        .set_boot_reply_delay(Duration::from_millis(300));
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let token = client.session_token(&device("SN-LATE")).await.unwrap();
    assert_eq!(emu.issued_tokens()[0].2, token);
    client.shutdown().await;
}

#[tokio::test]
async fn invalid_serial_and_oversized_payload_are_refused_locally() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let err = client
        .upload_log(&device("x/#"), &v1_log(10))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidTopic(_)), "{err:?}");
    assert!(err.to_string().contains('/'), "{err}");

    let err = client
        .publish_core_dump(vec![0u8; 200 * 1024])
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::PayloadTooLarge { size, limit }
            if *size == 200 * 1024 && *limit == MAX_MESSAGE_SIZE),
        "{err:?}"
    );
    let mut bad = v1_log(10);
    bad[13] ^= 0xFF;
    let err = client
        .upload_log(&device("SN-BAD"), &bad)
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidLog(_)), "{err:?}");
    assert!(err.is_invalid_input());

    assert!(
        emu.records().is_empty(),
        "nothing reached the cloud: {:?}",
        emu.records()
    );
    client.shutdown().await;
}

#[tokio::test]
async fn plaintext_works_only_when_asked_for() {
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let config = config_for(&emu);
    let client = Client::builder(config.clone()).build().unwrap();
    client
        .upload_log(&device("SN-PLAIN"), &v1_log(10))
        .await
        .unwrap();
    client.shutdown().await;

    // TLS against a plaintext broker fails; it never falls back.
    let tls = config
        .security(Security::Tls)
        .connect_timeout(Duration::from_secs(2));
    let client = Client::builder(tls).build().unwrap();
    let err = client.connected().await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Connect { .. } | ErrorKind::Timeout(Phase::Connect)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_broker_certificate_from_another_ca_fails_fast_and_names_tls() {
    let emu = tls_emulator();
    let other = tls_emulator();
    let certs = emu.certs().unwrap();
    let config = config_for(&emu)
        .ca_file(&other.certs().unwrap().ca_cert)
        .client_cert(&certs.client_cert, &certs.client_key)
        .connect_timeout(Duration::from_secs(30));
    let client = Client::builder(config).build().unwrap();
    let started = std::time::Instant::now();
    let err = client
        .upload_log(&device("SN-WRONGCA"), &v1_log(10))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a TLS trust failure must not wait for the connect timeout"
    );
    assert!(matches!(err.kind(), ErrorKind::Connect { .. }), "{err:?}");
    let chain = format!("{:?}", std::error::Error::source(&err));
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");
}

#[test]
fn blocking_client_uploads_from_plain_threads() {
    let emu = tls_emulator();
    let client = ulogger_cloud::blocking::Client::builder(config_for(&emu))
        .build()
        .unwrap();
    let receipt = client
        .upload_log(&device("SN-BLOCKING"), &v4_log(300, 0))
        .unwrap();
    assert_eq!(receipt.token, emu.issued_tokens()[0].2);
    let record = emu
        .wait_for_blocking(|r| r.kind == RecordKind::BinaryLog, PATIENCE)
        .unwrap();
    assert_eq!(record.verdict, Verdict::Ok);
    client.shutdown();
}

#[test]
fn free_functions_share_the_store_between_calls() {
    let emu = tls_emulator();
    let config = config_for(&emu);
    let store = Arc::new(SessionStore::in_memory());
    let dev = device("SN-FREE");
    let token = ulogger_cloud::blocking::get_or_fetch_token(&config, &dev, &store).unwrap();
    let receipt = ulogger_cloud::blocking::upload_log(&config, &dev, &v1_log(10), &store).unwrap();
    assert_eq!(receipt.token, token);
    assert_eq!(
        emu.issued_tokens().len(),
        1,
        "the second call used the store"
    );
    let fresh = ulogger_cloud::blocking::get_session_token(&config, &dev).unwrap();
    assert_eq!(emu.issued_tokens().len(), 2);
    assert_eq!(emu.issued_tokens()[1].2, fresh);
}

#[tokio::test]
async fn a_retained_message_on_the_reply_topic_is_never_the_answer() {
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    // Someone left a retained "answer" on the device's reply topic.
    let mut options = rumqttc::MqttOptions::new(
        format!("cust-{CUSTOMER}-planter"),
        "127.0.0.1",
        emu.addr().port(),
    );
    options.set_keep_alive(Duration::from_secs(5));
    let (planter, mut events) = rumqttc::AsyncClient::new(options, 10);
    let reply_topic = format!("boot/v0/{CUSTOMER}/0/{APP}/SN-RETAINED");
    planter
        .publish(
            reply_topic,
            rumqttc::QoS::AtLeastOnce,
            true,
            b"{\"token\": 12345}".to_vec(),
        )
        .await
        .unwrap();
    loop {
        match events.poll().await.unwrap() {
            rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) => break,
            _ => continue,
        }
    }
    // The real answer comes later than the retained one is replayed.
    emu.faults()
        .set_boot_reply_delay(Duration::from_millis(200));
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let token = client.session_token(&device("SN-RETAINED")).await.unwrap();

    assert_eq!(emu.issued_tokens()[0].2, token);
    assert_ne!(token, 12345);
    client.shutdown().await;
}

#[tokio::test]
async fn shutdown_persists_the_recency_that_cached_lookups_refreshed() {
    let emu = tls_emulator();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session_tokens.json");
    let client = Client::builder(config_for(&emu))
        .session_store(SessionStore::open(&path).unwrap())
        .build()
        .unwrap();
    client.session_token(&device("SN-OLD")).await.unwrap();
    client.session_token(&device("SN-NEW")).await.unwrap();
    // A cache hit makes SN-OLD the most recently used.
    client.session_token(&device("SN-OLD")).await.unwrap();
    client.shutdown().await;

    let order: Vec<String> = SessionStore::open(&path)
        .unwrap()
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.serial)
        .collect();
    assert_eq!(order, ["SN-NEW", "SN-OLD"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_beyond_the_queue_fail_in_time_when_the_broker_is_unreachable() {
    // A port nobody listens on: every attempt is refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(port)
        .security(Security::Plaintext)
        .max_inflight(1)
        .connect_timeout(Duration::from_millis(500));
    let client = Client::builder(config).build().unwrap();
    // Far more callers than the command queue holds.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let client = client.clone();
        tasks.spawn(async move { client.publish_core_dump(vec![1u8; 16]).await });
    }
    let all_done = tokio::time::timeout(Duration::from_secs(20), async {
        let mut failures = 0;
        while let Some(result) = tasks.join_next().await {
            let err = result.unwrap().unwrap_err();
            assert_eq!(err.timeout_phase(), Some(Phase::Connect), "{err:?}");
            failures += 1;
        }
        failures
    })
    .await;
    assert_eq!(all_done, Ok(300), "every caller got its error; none hung");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_publishes_whose_callers_gave_up() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu).ack_timeout(Duration::from_secs(60)))
        .build()
        .unwrap();
    client.connected().await.unwrap();
    emu.faults().set_withhold_puback(WithholdPuback::All);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        client.publish_core_dump(vec![1u8; 32]),
    )
    .await;
    assert!(gave_up.is_err(), "the PUBACK is withheld");
    // Waiting for that PUBACK would take the whole 60 s ack timeout.
    tokio::time::timeout(Duration::from_secs(10), client.shutdown())
        .await
        .expect("shutdown returns without waiting for an abandoned publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_back_within_seconds_of_the_brokers_return_after_an_outage() {
    // The port is held through the outage, so that the broker comes back on it.
    let port = PortHold::new().unwrap();
    let emu = emulator(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen_on(&port),
    );
    let client = Client::builder(config_for(&emu).connect_timeout(Duration::from_secs(60)))
        .build()
        .unwrap();
    client.connected().await.unwrap();
    drop(emu);
    // An outage long enough for the backoff to pass 8 s uncapped.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let emu = emulator(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen_on(&port),
    );
    let back = tokio::time::Instant::now();
    let receipt = client.publish_core_dump(vec![2u8; 16]).await.unwrap();
    let took = back.elapsed();
    eprintln!("back {took:?} after the broker returned");
    assert!(
        took <= Duration::from_secs(7),
        "reconnected {took:?} after the broker's return (cap 5 s)"
    );
    assert_eq!(receipt.size, 16);
    assert_eq!(records_of(&emu, RecordKind::CoreDump).len(), 1);
    client.shutdown().await;
}

/// `connection_changes` says each coming up and going down once (not each
/// failed attempt), with why it went down, and ends at shutdown.
#[tokio::test]
async fn connection_changes_report_up_down_and_closed() {
    use ulogger_cloud::ConnectionState;

    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let mut changes = client.connection_changes();
    async fn next(
        changes: &mut ulogger_cloud::ConnectionChanges,
    ) -> Option<ulogger_cloud::ConnectionEvent> {
        tokio::time::timeout(PATIENCE, changes.next())
            .await
            .expect("a connection change in time")
    }

    let up = next(&mut changes).await.unwrap();
    assert!(matches!(up.state, ConnectionState::Up), "{up:?}");
    assert_eq!(up.connection, 0);
    assert_eq!(up.client_id, client.client_id());
    assert!(client.is_connected());

    assert_eq!(emu.disconnect_all(), 1);
    let down = next(&mut changes).await.unwrap();
    match &down.state {
        ConnectionState::Down { error: Some(e) } => assert!(e.is_retryable(), "{e:?}"),
        other => panic!("down with a cause: {other:?}"),
    }
    let again = next(&mut changes).await.unwrap();
    assert!(matches!(again.state, ConnectionState::Up), "{again:?}");

    // A watch made while up starts with it up.
    let mut late = client.connection_changes();
    let up = next(&mut late).await.unwrap();
    assert!(matches!(up.state, ConnectionState::Up), "{up:?}");

    client.shutdown().await;
    let closed = next(&mut changes).await.unwrap();
    assert!(
        matches!(closed.state, ConnectionState::Closed),
        "{closed:?}"
    );
    assert!(next(&mut changes).await.is_none());
    assert!(!client.is_connected());
}
