//! Plain MQTT 3.1.1 behaviour, run against the emulator and against
//! mosquitto (when installed; required under CI=true), over TLS and
//! plaintext, so the emulator cannot drift from a real broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use rumqttc::{Packet, QoS, SubscribeReasonCode};
use support::{BrokerUnderTest, RawClient, QUIET, SOON};

#[tokio::test]
async fn exact_plus_and_hash_subscriptions_route_as_mqtt_says() {
    for broker in BrokerUnderTest::all() {
        let name = broker.name;
        let mut exact = broker.connect("exact").await;
        let mut plus = broker.connect("plus").await;
        let mut hash = broker.connect("hash").await;
        exact.subscribe("route/a/b", QoS::AtLeastOnce).await;
        plus.subscribe("route/+/b", QoS::AtLeastOnce).await;
        hash.subscribe("route/#", QoS::AtLeastOnce).await;

        let mut publisher = broker.connect("pub").await;
        publisher
            .publish("route/a/b", QoS::AtLeastOnce, false, "1")
            .await;
        publisher
            .publish("route/x/b", QoS::AtLeastOnce, false, "2")
            .await;
        publisher
            .publish("route/a/b/c", QoS::AtLeastOnce, false, "3")
            .await;
        publisher
            .publish("route", QoS::AtLeastOnce, false, "4")
            .await;
        publisher
            .publish("other/a/b", QoS::AtLeastOnce, false, "5")
            .await;

        let got = |payloads: &mut Vec<String>, p: rumqttc::Publish| {
            payloads.push(String::from_utf8(p.payload.to_vec()).unwrap());
        };
        let mut exact_got = Vec::new();
        while let Some(p) = exact.next_publish(QUIET).await {
            got(&mut exact_got, p);
        }
        let mut plus_got = Vec::new();
        while let Some(p) = plus.next_publish(QUIET).await {
            got(&mut plus_got, p);
        }
        let mut hash_got = Vec::new();
        while let Some(p) = hash.next_publish(QUIET).await {
            got(&mut hash_got, p);
        }
        assert_eq!(exact_got, ["1"], "{name}: exact");
        assert_eq!(plus_got, ["1", "2"], "{name}: +");
        // `route/#` also matches its parent level `route`.
        assert_eq!(hash_got, ["1", "2", "3", "4"], "{name}: #");
    }
}

#[tokio::test]
async fn qos1_publish_is_acknowledged_and_delivered_at_the_granted_qos() {
    for broker in BrokerUnderTest::all() {
        let name = broker.name;
        let mut qos0_sub = broker.connect("sub0").await;
        let mut qos1_sub = broker.connect("sub1").await;
        let ack0 = qos0_sub.subscribe("ack/t", QoS::AtMostOnce).await;
        let ack1 = qos1_sub.subscribe("ack/t", QoS::AtLeastOnce).await;
        assert_eq!(
            ack0.return_codes,
            [SubscribeReasonCode::Success(QoS::AtMostOnce)],
            "{name}"
        );
        assert_eq!(
            ack1.return_codes,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            "{name}"
        );

        let mut publisher = broker.connect("pub").await;
        // `publish` waits for the PUBACK.
        publisher
            .publish("ack/t", QoS::AtLeastOnce, false, "q1")
            .await;
        let p0 = qos0_sub.next_publish(SOON).await.expect("QoS 0 subscriber");
        let p1 = qos1_sub.next_publish(SOON).await.expect("QoS 1 subscriber");
        assert_eq!(p0.qos, QoS::AtMostOnce, "{name}: min(pub, sub)");
        assert_eq!(p1.qos, QoS::AtLeastOnce, "{name}");
        assert!(p1.pkid != 0, "{name}: QoS 1 delivery has a packet id");

        publisher
            .publish("ack/t", QoS::AtMostOnce, false, "q0")
            .await;
        let p = qos1_sub.next_publish(SOON).await.unwrap();
        assert_eq!(
            p.qos,
            QoS::AtMostOnce,
            "{name}: a QoS 0 publish stays QoS 0"
        );
    }
}

#[tokio::test]
async fn retained_messages_reach_later_subscribers_and_empty_payload_clears() {
    for broker in BrokerUnderTest::all() {
        let name = broker.name;
        let mut publisher = broker.connect("pub").await;
        publisher
            .publish("keep/a", QoS::AtLeastOnce, true, "old")
            .await;
        publisher
            .publish("keep/a", QoS::AtLeastOnce, true, "new")
            .await;
        publisher
            .publish("keep/b", QoS::AtLeastOnce, true, "b")
            .await;
        publisher
            .publish("keep/c", QoS::AtLeastOnce, false, "not kept")
            .await;

        let mut late = broker.connect("late").await;
        late.subscribe("keep/+", QoS::AtLeastOnce).await;
        let mut got = Vec::new();
        while let Some(p) = late.next_publish(QUIET).await {
            assert!(
                p.retain,
                "{name}: retained delivery carries the retain flag"
            );
            got.push((
                p.topic.clone(),
                String::from_utf8(p.payload.to_vec()).unwrap(),
            ));
        }
        got.sort();
        assert_eq!(
            got,
            [
                ("keep/a".to_string(), "new".to_string()),
                ("keep/b".into(), "b".into())
            ],
            "{name}"
        );

        // A live delivery of a retained publish has retain = 0.
        publisher
            .publish("keep/a", QoS::AtLeastOnce, true, "live")
            .await;
        let live = late.next_publish(SOON).await.unwrap();
        assert!(!live.retain, "{name}: live delivery");

        publisher
            .publish("keep/a", QoS::AtLeastOnce, true, "")
            .await;
        let mut later = broker.connect("later").await;
        later.subscribe("keep/a", QoS::AtLeastOnce).await;
        assert!(later.next_publish(QUIET).await.is_none(), "{name}: cleared");
    }
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    for broker in BrokerUnderTest::all() {
        let name = broker.name;
        let mut sub = broker.connect("sub").await;
        sub.subscribe("unsub/t", QoS::AtLeastOnce).await;
        sub.client.unsubscribe("unsub/t").await.unwrap();
        sub.incoming(SOON, |p| matches!(p, Packet::UnsubAck(_)))
            .await
            .expect("UNSUBACK");
        let mut publisher = broker.connect("pub").await;
        publisher
            .publish("unsub/t", QoS::AtLeastOnce, false, "x")
            .await;
        assert!(sub.next_publish(QUIET).await.is_none(), "{name}");
    }
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives() {
    let brokers = BrokerUnderTest::plaintext();
    // Both brokers are checked at once: each check waits in real time.
    let checks: Vec<_> = brokers
        .iter()
        .map(|broker| (broker.name, broker.addr, broker.emulator.is_some()))
        .map(|(name, addr, is_emulator)| {
            tokio::spawn(async move {
                let mut raw = RawClient::connect(addr, "cust-42-silent", 1).await;
                let start = Instant::now();
                // Mosquitto checks keep-alives only every few seconds; the
                // emulator is held to a tight bound.
                let bound = if is_emulator {
                    Duration::from_secs(3)
                } else {
                    Duration::from_secs(10)
                };
                let closed = raw.closed_within(bound).await;
                let elapsed = start.elapsed();
                assert!(
                    closed,
                    "{name}: silent client still connected after {bound:?}"
                );
                assert!(
                    elapsed >= Duration::from_millis(1400),
                    "{name}: dropped after {elapsed:?}, before 1.5 x keep-alive"
                );
                // A client that pings within its keep-alive stays.
                let mut pinging = RawClient::connect(addr, "cust-42-pinging", 1).await;
                for _ in 0..3 {
                    pinging.send(Packet::PingReq).await;
                    assert_eq!(pinging.read(SOON).await, Some(Packet::PingResp), "{name}");
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
            })
        })
        .collect();
    for check in checks {
        check.await.unwrap();
    }
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    for broker in BrokerUnderTest::all() {
        let mut first = broker.connect("twin").await;
        let mut second = broker.connect("twin").await;
        assert!(
            first.closed(SOON).await.is_some(),
            "{}: first connection kept",
            broker.name
        );
        second.subscribe("twin/t", QoS::AtLeastOnce).await;
        let mut publisher = broker.connect("pub").await;
        publisher
            .publish("twin/t", QoS::AtLeastOnce, false, "x")
            .await;
        assert!(second.next_publish(SOON).await.is_some(), "{}", broker.name);
    }
}
