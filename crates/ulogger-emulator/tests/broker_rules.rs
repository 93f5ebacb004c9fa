//! The platform broker's rules (PROTOCOL §1), each observed by an ordinary
//! client: the connection closes (or is refused), nothing is delivered,
//! and the emulator records why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rumqttc::{ConnectReturnCode, ConnectionError, QoS, SubscribeReasonCode};
use support::{client_options, BrokerUnderTest, RawClient, TestClient, CUSTOMER, QUIET, SOON};
use ulogger_emulator::{Emulator, EmulatorConfig, RecordKind, Verdict};

/// Publishes `payload` to `topic`; asserts the connection closes, a
/// subscriber to `#` gets nothing, and a rejection record names `reason`.
async fn assert_publish_closes(
    broker: &BrokerUnderTest,
    topic: &str,
    qos: QoS,
    size: usize,
    reason: &str,
) {
    let emulator = broker.emulator.as_ref().unwrap();
    let before = emulator.records().len();
    let mut watcher = broker.connect("watcher").await;
    watcher.subscribe("#", QoS::AtLeastOnce).await;

    if topic.contains(['+', '#']) {
        // rumqttc will not send a wildcard topic: use a raw client.
        let mut raw = RawClient::connect(broker.addr, "cust-42-offender", 30).await;
        let mut publish = rumqttc::Publish::new(topic, qos, vec![b'x'; size]);
        publish.pkid = 1;
        raw.send(rumqttc::Packet::Publish(publish)).await;
        assert!(
            raw.closed_within(SOON).await,
            "{topic:?}: connection stayed open"
        );
    } else {
        let mut offender = broker.connect("offender").await;
        offender
            .client
            .publish(topic, qos, false, vec![b'x'; size])
            .await
            .unwrap();
        assert!(
            offender.closed(SOON).await.is_some(),
            "{topic:?}: connection stayed open"
        );
    }
    assert!(
        watcher.next_publish(QUIET).await.is_none(),
        "{topic:?}: was delivered"
    );

    let records = emulator.records();
    let rejected = records[before..]
        .iter()
        .find(|r| r.kind == RecordKind::Rejected)
        .unwrap_or_else(|| panic!("{topic:?}: no rejection record in {records:?}"));
    assert_eq!(rejected.verdict, Verdict::Rejected);
    assert_eq!(rejected.client_id.as_deref(), Some("cust-42-offender"));
    let why = rejected.reason.as_deref().unwrap();
    assert!(
        why.contains(reason),
        "{topic:?}: reason {why:?} lacks {reason:?}"
    );
}

/// Publishes and asserts it is acknowledged and delivered.
async fn assert_publish_passes(broker: &BrokerUnderTest, topic: &str, size: usize) {
    let mut watcher = broker.connect("watcher-ok").await;
    watcher.subscribe("#", QoS::AtLeastOnce).await;
    let mut client = broker.connect("ok").await;
    client
        .publish(topic, QoS::AtLeastOnce, false, vec![b'y'; size])
        .await;
    let got = watcher.next_publish(SOON).await.expect("delivered");
    assert_eq!(got.topic, topic);
    assert_eq!(got.payload.len(), size);
}

#[tokio::test]
async fn a_payload_over_128_kib_closes_the_connection() {
    for broker in [
        BrokerUnderTest::emulator(false),
        BrokerUnderTest::emulator(true),
    ] {
        assert_publish_passes(&broker, "size/ok", 128 * 1024).await;
        assert_publish_closes(
            &broker,
            "size/big",
            QoS::AtLeastOnce,
            128 * 1024 + 1,
            "131073 bytes exceeds",
        )
        .await;
    }
}

#[tokio::test]
async fn a_packet_far_over_the_limit_is_refused_too() {
    let broker = BrokerUnderTest::emulator(true);
    assert_publish_closes(
        &broker,
        "size/huge",
        QoS::AtLeastOnce,
        600 * 1024,
        "exceeds",
    )
    .await;
}

#[tokio::test]
async fn wildcards_and_nul_in_a_publish_topic_close_the_connection() {
    let broker = BrokerUnderTest::emulator(true);
    assert_publish_closes(&broker, "a/+/b", QoS::AtLeastOnce, 1, "wildcard").await;
    assert_publish_closes(&broker, "a/#", QoS::AtMostOnce, 1, "wildcard").await;
    assert_publish_closes(&broker, "a/\0/b", QoS::AtLeastOnce, 1, "NUL").await;
}

#[tokio::test]
async fn a_topic_over_256_bytes_or_7_slashes_closes_the_connection() {
    let broker = BrokerUnderTest::emulator(true);
    assert_publish_passes(&broker, &"t".repeat(256), 1).await;
    assert_publish_closes(&broker, &"t".repeat(257), QoS::AtLeastOnce, 1, "257 bytes").await;
    assert_publish_passes(&broker, "1/2/3/4/5/6/7/8", 1).await;
    assert_publish_closes(
        &broker,
        "1/2/3/4/5/6/7/8/9",
        QoS::AtLeastOnce,
        1,
        "8 slashes",
    )
    .await;
}

#[tokio::test]
async fn a_qos2_publish_closes_the_connection_and_a_qos2_subscription_gets_qos1() {
    let broker = BrokerUnderTest::emulator(true);
    assert_publish_closes(&broker, "qos/two", QoS::ExactlyOnce, 1, "QoS 2").await;
    let mut client = broker.connect("sub2").await;
    let ack = client.subscribe("qos/+", QoS::ExactlyOnce).await;
    assert_eq!(
        ack.return_codes,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
}

#[tokio::test]
async fn a_client_id_without_the_customer_prefix_is_refused_at_connect() {
    let broker = BrokerUnderTest::emulator(false);
    let emulator = broker.emulator.as_ref().unwrap();
    for id in ["cust-43-device", "device-1", "cust-42"] {
        let mut client = TestClient::start(client_options(broker.addr, broker.tls.clone(), id));
        match client.connack().await {
            Err(ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(code, ConnectReturnCode::NotAuthorized, "{id}")
            }
            other => panic!("{id}: expected a refusal, got {other:?}"),
        }
        let record = emulator
            .wait_for_blocking(|r| r.client_id.as_deref() == Some(id), SOON)
            .unwrap();
        assert_eq!(record.kind, RecordKind::Rejected);
        assert!(
            record.reason.as_deref().unwrap().contains("cust-42-"),
            "{record:?}"
        );
    }
    assert!(emulator.connected_clients().is_empty());
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_disconnects_the_first() {
    let broker = BrokerUnderTest::emulator(false);
    let emulator = broker.emulator.as_ref().unwrap();
    let mut first = broker.connect("same").await;
    first.subscribe("takeover/t", QoS::AtLeastOnce).await;
    let mut second = broker.connect("same").await;
    assert!(
        first.closed(SOON).await.is_some(),
        "the first connection stayed open"
    );
    assert_eq!(emulator.connected_clients(), ["cust-42-same"]);

    // The survivor is the new connection, with its own (empty) session.
    second.subscribe("takeover/t", QoS::AtLeastOnce).await;
    let mut publisher = broker.connect("pub").await;
    publisher
        .publish("takeover/t", QoS::AtLeastOnce, false, "x")
        .await;
    assert!(second.next_publish(SOON).await.is_some());
}

#[tokio::test]
async fn an_emulator_for_another_customer_refuses_this_one() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER + 1).plaintext(true)).unwrap();
    let mut client = TestClient::start(client_options(emulator.addr(), None, "cust-42-x"));
    assert!(client.connack().await.is_err());
}
