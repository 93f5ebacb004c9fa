//! Interoperability: the client against a real mosquitto configured for
//! mutual TLS (`require_certificate true`), with the emulator's cloud side
//! attached to it as an ordinary client. Under `CI=true` these tests fail
//! if mosquitto is missing; elsewhere they say so and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::interop::setup;
use support::*;
use ulogger_cloud::{Client, ErrorKind, MqttConfig, Phase};
use ulogger_emulator::{RecordKind, Verdict};

#[tokio::test]
async fn registration_and_upload_through_mosquitto_with_mutual_tls() {
    let Some(setup) = setup(Some(0), "") else {
        return;
    };
    let emu = &setup.emulator;
    let client = Client::builder(setup.config.clone()).build().unwrap();
    let dev = device("SN-MOSQ-1");

    let token = client.session_token(&dev).await.unwrap();
    assert_eq!(
        emu.issued_tokens(),
        vec![(APP, "SN-MOSQ-1".to_owned(), token)]
    );

    let log = v4_log(3000, 0);
    let receipt = client.upload_log(&dev, &log).await.unwrap();
    assert_eq!(receipt.token, token);
    let record = emu
        .wait_for(|r| r.kind == RecordKind::BinaryLog, PATIENCE)
        .await
        .expect("the cloud side received the log through mosquitto");
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    let mut expected = log;
    expected[1..5].copy_from_slice(&token.to_le_bytes());
    assert_eq!(stored_bytes(emu, &record), expected);

    // A second upload uses the cached token: still one registration.
    client.upload_log(&dev, &v1_log(50)).await.unwrap();
    assert_eq!(emu.issued_tokens().len(), 1);
    assert!(wait_for_count(emu, RecordKind::BinaryLog, 2).await);

    let dump = vec![0xC0u8; 2048];
    client.publish_core_dump(dump.clone()).await.unwrap();
    let record = emu
        .wait_for(|r| r.kind == RecordKind::CoreDump, PATIENCE)
        .await
        .unwrap();
    assert_eq!(stored_bytes(emu, &record), dump);
    client.shutdown().await;
}

#[tokio::test]
async fn group_layout_and_prefix_through_mosquitto() {
    let Some(setup) = setup(Some(31), "ulogger/") else {
        return;
    };
    let emu = &setup.emulator;
    let client = Client::builder(setup.config.clone()).build().unwrap();
    let receipt = client
        .upload_log(&device("SN-MOSQ-G"), &v4_log(100, 0))
        .await
        .unwrap();
    assert_eq!(
        receipt.topic,
        format!("ulogger/binlog/v0/{CUSTOMER}/31/{APP}")
    );
    let record = emu
        .wait_for(|r| r.kind == RecordKind::BinaryLog, PATIENCE)
        .await
        .unwrap();
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    client.shutdown().await;
}

#[tokio::test]
async fn mosquitto_refuses_a_client_without_a_certificate() {
    let Some(setup) = setup(Some(0), "") else {
        return;
    };
    // The broker is trusted (same CA) but we present no certificate.
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(setup.port)
        .ca_file(&setup.certs.ca_cert)
        .connect_timeout(std::time::Duration::from_secs(5));
    let client = Client::builder(config).build().unwrap();
    let err = client.connected().await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Connect { .. } | ErrorKind::ConnectionRefused { .. }
        ) || err.timeout_phase() == Some(Phase::Connect),
        "{err:?}"
    );
}
