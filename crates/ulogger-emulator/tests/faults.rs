//! Each fault switch, and its effect as a client sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use rumqttc::{Packet, QoS};
use support::device::{self, APP, SERIAL};
use support::{client_options, TestClient, CUSTOMER, QUIET, SOON};
use ulogger_cloud::wire::{parse_boot_reply, Topics};
use ulogger_emulator::{
    BootReplyMode, Emulator, EmulatorConfig, Faults, RecordKind, WithholdPuback,
};

fn plaintext(faults: Faults) -> Emulator {
    Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true).faults(faults)).unwrap()
}

fn topics() -> Topics {
    Topics::new("", CUSTOMER, Some(0)).unwrap()
}

async fn client(emulator: &Emulator, suffix: &str) -> TestClient {
    TestClient::connect(client_options(
        emulator.addr(),
        None,
        &format!("cust-{CUSTOMER}-{suffix}"),
    ))
    .await
}

/// Publishes at QoS 1 and reports whether a PUBACK came.
async fn acked(client: &mut TestClient, topic: &str) -> bool {
    client
        .client
        .publish(topic, QoS::AtLeastOnce, false, "p")
        .await
        .unwrap();
    client
        .incoming(QUIET, |p| matches!(p, Packet::PubAck(_)))
        .await
        .is_some()
}

#[tokio::test]
async fn withholding_all_pubacks_still_delivers_and_can_be_switched_off() {
    let emulator = plaintext(Faults {
        withhold_puback: WithholdPuback::All,
        ..Faults::default()
    });
    let mut sub = client(&emulator, "sub").await;
    sub.subscribe("w/#", QoS::AtLeastOnce).await;
    let mut publisher = client(&emulator, "pub").await;
    assert!(
        !acked(&mut publisher, "w/1").await,
        "PUBACK sent despite the fault"
    );
    assert!(
        sub.next_publish(SOON).await.is_some(),
        "the message itself goes through"
    );

    emulator.faults().set_withhold_puback(WithholdPuback::None);
    assert!(acked(&mut publisher, "w/2").await);
}

#[tokio::test]
async fn withholding_pubacks_for_a_topic_filter_spares_other_topics() {
    let emulator = plaintext(Faults::default());
    let binlog = topics().binlog(APP).unwrap();
    emulator
        .faults()
        .set_withhold_puback(WithholdPuback::Topic("binlog/#".into()));
    let mut publisher = client(&emulator, "pub").await;
    assert!(!acked(&mut publisher, &binlog).await);
    assert!(acked(&mut publisher, "other/topic").await);
}

/// Registers and returns (elapsed until the first reply, replies seen).
async fn boot(emulator: &Emulator, wait: Duration) -> (Duration, Vec<Vec<u8>>) {
    let topics = topics();
    let mut c = client(emulator, "dev").await;
    c.subscribe(&topics.boot_reply(APP, SERIAL).unwrap(), QoS::AtLeastOnce)
        .await;
    let start = Instant::now();
    c.publish(
        &topics.boot(APP).unwrap(),
        QoS::AtLeastOnce,
        false,
        device::boot_payload(SERIAL),
    )
    .await;
    let mut replies = Vec::new();
    let mut first = None;
    while let Some(p) = c.next_publish(wait).await {
        first.get_or_insert(start.elapsed());
        replies.push(p.payload.to_vec());
    }
    (first.unwrap_or(Duration::MAX), replies)
}

#[tokio::test]
async fn boot_replies_can_be_delayed() {
    let emulator = plaintext(Faults::default());
    emulator
        .faults()
        .set_boot_reply_delay(Duration::from_millis(600));
    let (elapsed, replies) = boot(&emulator, Duration::from_secs(2)).await;
    assert!(
        elapsed >= Duration::from_millis(600),
        "reply after {elapsed:?}"
    );
    assert_eq!(replies.len(), 1);
    assert!(parse_boot_reply(&replies[0]).unwrap().is_some());
}

#[tokio::test]
async fn malformed_boot_replies_carry_no_token() {
    let emulator = plaintext(Faults {
        boot_reply: BootReplyMode::Malformed,
        ..Faults::default()
    });
    let (_, replies) = boot(&emulator, QUIET).await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    for reply in &replies {
        assert_eq!(
            parse_boot_reply(reply),
            Ok(None),
            "{reply:?} is not an answer"
        );
    }
    assert!(emulator.issued_tokens().is_empty());
    let boot = emulator
        .wait_for(|r| r.kind == RecordKind::Boot, SOON)
        .await
        .unwrap();
    assert!(boot.reason.unwrap().contains("malformed"));
}

#[tokio::test]
async fn boot_registrations_can_go_unanswered() {
    let emulator = plaintext(Faults::default());
    emulator.faults().set_boot_reply(BootReplyMode::None);
    let (_, replies) = boot(&emulator, QUIET).await;
    assert!(replies.is_empty());
    assert!(emulator.issued_tokens().is_empty());
    // Back to normal: the next registration is answered.
    emulator.faults().set_boot_reply(BootReplyMode::Normal);
    let (_, replies) = boot(&emulator, QUIET).await;
    assert_eq!(replies.len(), 1);
}

#[tokio::test]
async fn a_connection_is_cut_after_its_byte_budget() {
    let emulator = plaintext(Faults::default());
    let mut sub = client(&emulator, "sub").await;
    sub.subscribe("budget/#", QoS::AtLeastOnce).await;
    // Connections made from now on may send 100 bytes: enough for CONNECT
    // and a small publish, not for a 200-byte one.
    emulator.faults().set_drop_after_bytes(Some(100));
    let mut limited = client(&emulator, "limited").await;
    limited
        .publish("budget/small", QoS::AtLeastOnce, false, vec![1u8; 10])
        .await;
    limited
        .client
        .publish("budget/big", QoS::AtLeastOnce, false, vec![2u8; 200])
        .await
        .unwrap();
    assert!(limited.closed(SOON).await.is_some(), "connection not cut");

    let small = sub.next_publish(SOON).await.unwrap();
    assert_eq!(small.topic, "budget/small");
    assert!(
        sub.next_publish(QUIET).await.is_none(),
        "the cut publish was delivered"
    );
    // The subscriber, connected before the switch, is unaffected.
    let mut publisher_before = sub;
    emulator.faults().set_drop_after_bytes(None);
    publisher_before
        .publish("budget/after", QoS::AtLeastOnce, false, vec![3u8; 500])
        .await;
}

#[tokio::test]
async fn clients_can_be_disconnected_on_demand() {
    let emulator = plaintext(Faults::default());
    let mut a = client(&emulator, "gw-a").await;
    let mut b = client(&emulator, "gw-b").await;
    let mut other = client(&emulator, "other").await;
    assert_eq!(
        emulator.connected_clients(),
        ["cust-42-gw-a", "cust-42-gw-b", "cust-42-other"]
    );

    assert_eq!(emulator.disconnect_client("cust-42-gw-"), 2);
    assert!(a.closed(SOON).await.is_some());
    assert!(b.closed(SOON).await.is_some());
    assert!(
        other.closed(QUIET).await.is_none(),
        "an unrelated client was dropped"
    );

    assert_eq!(emulator.disconnect_all(), 1);
    assert!(other.closed(SOON).await.is_some());
}

#[test]
fn faults_set_at_start_show_in_the_snapshot() {
    let faults = Faults {
        withhold_puback: WithholdPuback::Topic("a/b".into()),
        boot_reply_delay: Duration::from_millis(5),
        boot_reply: BootReplyMode::Malformed,
        drop_after_bytes: Some(1),
    };
    let emulator = plaintext(faults.clone());
    assert_eq!(emulator.faults().snapshot(), faults);
    emulator.faults().clear();
    assert_eq!(emulator.faults().snapshot(), Faults::default());
}
