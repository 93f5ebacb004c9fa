//! AWS IoT Core's per-connection limits (PROTOCOL §1) as the emulator
//! enforces them by default: 100 publishes/s (beyond: discarded), 512
//! KiB/s inbound (beyond: delayed), 50 subscriptions, 8 filters per
//! SUBSCRIBE; and `PlatformLimits::unlimited()` lifting them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use support::{client_options, RawClient, TestClient, CUSTOMER, SOON};
use tokio::io::AsyncWriteExt;
use tokio::time::MissedTickBehavior;
use ulogger_emulator::{
    Emulator, EmulatorConfig, EmulatorError, PlatformLimits, Record, RecordKind, Verdict,
};

/// The group layout the platform routes (group 0).
const METRICS_TOPIC: &str = "metrics/v0/42/0/7";
const CORE_DUMP_TOPIC: &str = "core-dump/v0/42/0";
/// Long enough for a few seconds of throttled reading.
const SLOW: Duration = Duration::from_secs(20);

fn emulator(limits: PlatformLimits) -> Emulator {
    Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true).limits(limits)).unwrap()
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: Vec<u8>) -> Packet {
    let mut publish = rumqttc::Publish::new(topic, qos, payload);
    publish.pkid = pkid;
    Packet::Publish(publish)
}

fn metrics(serial: usize) -> Vec<u8> {
    format!(r#"{{"device_serial":"SN-{serial}","metrics":[{{"name":"n","value":1}}]}}"#)
        .into_bytes()
}

/// Writes `packets` back to back in one write: as fast as a client can.
async fn blast(raw: &mut RawClient, packets: Vec<Packet>) {
    let mut out = BytesMut::new();
    for packet in packets {
        packet.write(&mut out, usize::MAX).unwrap();
    }
    raw.stream.write_all(&out).await.unwrap();
}

/// The next `count` records matching `pred`, in arrival order.
async fn records(
    emulator: &Emulator,
    count: usize,
    within: Duration,
    pred: impl Fn(&Record) -> bool,
) -> Vec<Record> {
    let mut watcher = emulator.watch_records();
    let deadline = tokio::time::Instant::now() + within;
    let mut found = Vec::new();
    while found.len() < count {
        let record = tokio::time::timeout_at(deadline, watcher.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} records: {found:?}", found.len()));
        if pred(&record) {
            found.push(record);
        }
    }
    found
}

fn is_rate_discard(record: &Record) -> bool {
    record.kind == RecordKind::Rejected
        && record
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("publish rate over"))
}

/// Packet ids of the next `count` PUBACKs, in the order they came.
async fn pubacks(raw: &mut RawClient, count: usize) -> Vec<u16> {
    let mut pkids = Vec::with_capacity(count);
    while pkids.len() < count {
        match raw.read(SOON).await {
            Some(Packet::PubAck(ack)) => pkids.push(ack.pkid),
            other => panic!("after {} PUBACKs: {other:?}", pkids.len()),
        }
    }
    pkids
}

async fn assert_still_open(raw: &mut RawClient) {
    raw.send(Packet::PingReq).await;
    match raw.read(SOON).await {
        Some(Packet::PingResp) => {}
        other => panic!("expected PINGRESP, got {other:?}"),
    }
}

/// Sends 300 QoS 1 metrics publishes in one burst; returns the PUBACKed
/// packet ids, and the records (stored or discarded) of all 300.
async fn burst_of_300(emulator: &Emulator, client_id: &str) -> (Vec<u16>, Vec<Record>) {
    let mut raw = RawClient::connect(emulator.addr(), client_id, 30).await;
    let packets = (1..=300u16)
        .map(|pkid| publish(METRICS_TOPIC, QoS::AtLeastOnce, pkid, metrics(pkid.into())))
        .collect();
    blast(&mut raw, packets).await;
    // Every publish ends as a stored message or a discard record.
    let records = records(emulator, 300, SOON, |r| {
        r.kind == RecordKind::Metrics || is_rate_discard(r)
    })
    .await;
    let stored = records
        .iter()
        .filter(|r| r.kind == RecordKind::Metrics)
        .count();
    let acked = pubacks(&mut raw, stored).await;
    assert_still_open(&mut raw).await;
    (acked, records)
}

#[tokio::test]
async fn a_burst_of_300_publishes_gets_about_100_pubacks_and_the_rest_are_discarded() {
    let emulator = emulator(PlatformLimits::aws());
    let (acked, records) = burst_of_300(&emulator, "cust-42-burst").await;

    let acks = acked.len();
    assert!(
        (100..300).contains(&acks),
        "{acks} of 300 acknowledged, expected the first 100-something"
    );
    // PUBACKs leave in arrival order; a discarded publish simply has none.
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "{acked:?}");
    assert_eq!(&acked[..100], &(1..=100).collect::<Vec<u16>>()[..]);

    let discards: Vec<&Record> = records.iter().filter(|r| is_rate_discard(r)).collect();
    assert_eq!(discards.len(), 300 - acks);
    assert_eq!(
        emulator.limit_stats().discarded_publishes,
        (300 - acks) as u64
    );
    for discard in &discards {
        assert_eq!(discard.verdict, Verdict::Rejected);
        assert_eq!(discard.client_id.as_deref(), Some("cust-42-burst"));
        assert_eq!(discard.topic, METRICS_TOPIC);
        assert_eq!(
            discard.reason.as_deref(),
            Some("publish rate over 100/s: discarded")
        );
    }
    // Discarded means not routed: the cloud got exactly the acknowledged.
    let stored = records
        .iter()
        .filter(|r| r.kind == RecordKind::Metrics)
        .count();
    assert_eq!(stored, acks);
}

#[tokio::test]
async fn without_limits_all_300_are_acknowledged() {
    let emulator = emulator(PlatformLimits::unlimited());
    let (acked, records) = burst_of_300(&emulator, "cust-42-burst").await;
    assert_eq!(acked, (1..=300).collect::<Vec<u16>>());
    assert!(records.iter().all(|r| r.kind == RecordKind::Metrics));
    assert_eq!(emulator.limit_stats().discarded_publishes, 0);
}

#[tokio::test]
async fn qos0_publishes_over_the_rate_are_discarded_too() {
    let emulator = emulator(PlatformLimits::aws());
    let mut raw = RawClient::connect(emulator.addr(), "cust-42-qos0", 30).await;
    let packets = (0..200)
        .map(|n| publish(METRICS_TOPIC, QoS::AtMostOnce, 0, metrics(n)))
        .collect();
    blast(&mut raw, packets).await;
    let records = records(&emulator, 200, SOON, |r| {
        r.kind == RecordKind::Metrics || is_rate_discard(r)
    })
    .await;
    let discarded = records.iter().filter(|r| is_rate_discard(r)).count();
    assert!((1..=100).contains(&discarded), "{discarded} discarded");
    assert_eq!(emulator.limit_stats().discarded_publishes, discarded as u64);
    assert_still_open(&mut raw).await;
}

#[tokio::test]
async fn a_client_at_a_steady_50_per_second_loses_nothing() {
    const COUNT: u16 = 125; // 2.5 s: past the bucket's first second
    let emulator = emulator(PlatformLimits::aws());
    let mut raw = RawClient::connect(emulator.addr(), "cust-42-steady", 30).await;
    // The interval paces the sender; it synchronises nothing.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for pkid in 1..=COUNT {
        pace.tick().await;
        raw.send(publish(
            METRICS_TOPIC,
            QoS::AtLeastOnce,
            pkid,
            metrics(pkid.into()),
        ))
        .await;
    }
    let acked = pubacks(&mut raw, COUNT.into()).await;
    assert_eq!(acked, (1..=COUNT).collect::<Vec<u16>>());
    assert_eq!(emulator.limit_stats().discarded_publishes, 0);
    assert!(!emulator
        .records()
        .iter()
        .any(|r| r.kind == RecordKind::Rejected));
}

fn filters(names: impl IntoIterator<Item = usize>) -> Vec<SubscribeFilter> {
    names
        .into_iter()
        .map(|n| SubscribeFilter::new(format!("subs/{n}"), QoS::AtLeastOnce))
        .collect()
}

async fn subscribe_many(client: &mut TestClient, filters: Vec<SubscribeFilter>) -> Vec<bool> {
    client.client.subscribe_many(filters).await.unwrap();
    match client
        .incoming(SOON, |p| matches!(p, Packet::SubAck(_)))
        .await
    {
        Some(Packet::SubAck(ack)) => ack
            .return_codes
            .iter()
            .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
            .collect(),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn connect(emulator: &Emulator, suffix: &str) -> TestClient {
    TestClient::start(client_options(
        emulator.addr(),
        None,
        &format!("cust-{CUSTOMER}-{suffix}"),
    ))
}

#[tokio::test]
async fn the_51st_subscription_is_refused_until_one_is_unsubscribed() {
    let emulator = emulator(PlatformLimits::aws());
    let mut client = connect(&emulator, "subscriber");
    client.connack().await.unwrap();
    for batch in 0..6 {
        let granted = subscribe_many(&mut client, filters(batch * 8..batch * 8 + 8)).await;
        assert_eq!(granted, [true; 8], "batch {batch}");
    }
    // 48 held. Two more fit, the third does not; subscribing again to one
    // held already replaces it and takes no slot.
    let granted = subscribe_many(&mut client, filters([48, 49, 50, 0])).await;
    assert_eq!(granted, [true, true, false, true]);
    assert_eq!(subscribe_many(&mut client, filters([51])).await, [false]);

    let refused: Vec<Record> = emulator
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::Rejected)
        .collect();
    let topics: Vec<&str> = refused.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["subs/50", "subs/51"]);
    for record in &refused {
        assert_eq!(record.client_id.as_deref(), Some("cust-42-subscriber"));
        let reason = record.reason.as_deref().unwrap();
        assert!(reason.contains("more than 50 subscriptions"), "{reason}");
    }
    assert_eq!(emulator.limit_stats().refused_filters, 2);

    client.client.unsubscribe("subs/0").await.unwrap();
    client
        .incoming(SOON, |p| matches!(p, Packet::UnsubAck(_)))
        .await
        .expect("UNSUBACK");
    assert_eq!(subscribe_many(&mut client, filters([51])).await, [true]);
    // The new subscription works.
    let mut publisher = connect(&emulator, "publisher");
    publisher.connack().await.unwrap();
    publisher
        .publish("subs/51", QoS::AtLeastOnce, false, "hello")
        .await;
    let got = client.next_publish(SOON).await.expect("delivered");
    assert_eq!(got.topic, "subs/51");
}

#[tokio::test]
async fn a_subscribe_with_9_filters_closes_the_connection() {
    let emulator = emulator(PlatformLimits::aws());
    let mut eight = connect(&emulator, "eight");
    eight.connack().await.unwrap();
    assert_eq!(subscribe_many(&mut eight, filters(0..8)).await, [true; 8]);

    let mut nine = connect(&emulator, "nine");
    nine.connack().await.unwrap();
    nine.client.subscribe_many(filters(0..9)).await.unwrap();
    assert!(
        nine.closed(SOON).await.is_some(),
        "the connection stayed open"
    );
    let record = emulator
        .wait_for(|r| r.kind == RecordKind::Rejected, SOON)
        .await
        .expect("a rejection record");
    assert_eq!(record.client_id.as_deref(), Some("cust-42-nine"));
    assert_eq!(
        record.reason.as_deref(),
        Some("SUBSCRIBE with 9 filters, more than 8: connection closed")
    );
    assert_eq!(emulator.limit_stats().refused_filters, 9);
    assert_eq!(emulator.connected_clients(), ["cust-42-eight"]);

    let unlimited = self::emulator(PlatformLimits::unlimited());
    let mut many = connect(&unlimited, "many");
    many.connack().await.unwrap();
    assert_eq!(subscribe_many(&mut many, filters(0..60)).await, [true; 60]);
}

/// Sends 2 MiB as 32 QoS 1 core dumps of 64 KiB (32 publishes: well
/// within the publish rate) and returns the time the broker took, from
/// the first stored record to the last.
async fn two_mib_span(emulator: &Emulator) -> Duration {
    let mut raw = RawClient::connect(emulator.addr(), "cust-42-bulk", 30).await;
    let packets = (1..=32u16)
        .map(|pkid| {
            publish(
                CORE_DUMP_TOPIC,
                QoS::AtLeastOnce,
                pkid,
                vec![0xa5; 64 * 1024],
            )
        })
        .collect();
    blast(&mut raw, packets).await;
    let dumps = records(emulator, 32, SLOW, |r| r.kind == RecordKind::CoreDump).await;
    assert_eq!(pubacks(&mut raw, 32).await, (1..=32).collect::<Vec<u16>>());
    let first = dumps.first().unwrap().time;
    let last = dumps.last().unwrap().time;
    last.duration_since(first).unwrap()
}

#[tokio::test]
async fn two_mib_at_512_kib_per_second_take_about_three_seconds() {
    let limited = emulator(PlatformLimits::aws());
    let unlimited = emulator(PlatformLimits::unlimited());
    let (limited_span, unlimited_span) =
        tokio::join!(two_mib_span(&limited), two_mib_span(&unlimited));
    // 512 KiB pass at once (the bucket starts full), the other 1.5 MiB at
    // 512 KiB/s: 3 s, less the little time before the first record.
    assert!(
        limited_span >= Duration::from_millis(2_700),
        "limited: {limited_span:?}"
    );
    assert!(
        unlimited_span * 2 < limited_span,
        "unlimited: {unlimited_span:?}, limited: {limited_span:?}"
    );
    // The planned waits; on a busy machine slow reading also refills the
    // bucket, so this is only known to be above zero.
    assert!(limited.limit_stats().read_delay > Duration::ZERO);
    assert_eq!(unlimited.limit_stats().read_delay, Duration::ZERO);
    // Delayed, not dropped.
    assert!(!limited
        .records()
        .iter()
        .any(|r| r.kind == RecordKind::Rejected));
}

#[tokio::test]
async fn reading_held_back_by_the_byte_rate_does_not_expire_keep_alive() {
    // 16 KiB/s and a 48 KiB publish: about 2 s of reading held back,
    // longer than 1.5 x the 1 s keep-alive.
    let emulator = emulator(PlatformLimits::aws().bytes_per_second(Some(16 * 1024)));
    let mut raw = RawClient::connect(emulator.addr(), "cust-42-slow", 1).await;
    blast(
        &mut raw,
        vec![
            publish(CORE_DUMP_TOPIC, QoS::AtLeastOnce, 1, vec![1; 48 * 1024]),
            Packet::PingReq,
        ],
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match raw.read(SLOW).await {
            Some(packet) => got.push(packet),
            None => panic!("closed after {got:?}"),
        }
    }
    // The PUBACK waits for the cloud to store the dump, so the PINGRESP
    // may overtake it.
    assert!(
        got.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "{got:?}"
    );
    assert!(got.iter().any(|p| matches!(p, Packet::PingResp)), "{got:?}");
    assert!(emulator.limit_stats().read_delay > Duration::ZERO);
    // Keep-alive still works: silence now is the client's own.
    assert!(raw.closed_within(SOON).await, "keep-alive never expired");
}

#[test]
fn zero_limits_are_refused_at_start() {
    for limits in [
        PlatformLimits::aws().publishes_per_second(Some(0)),
        PlatformLimits::aws().bytes_per_second(Some(0)),
        PlatformLimits::aws().max_subscriptions(Some(0)),
        PlatformLimits::aws().max_filters_per_subscribe(Some(0)),
    ] {
        match Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true).limits(limits)) {
            Err(EmulatorError::InvalidConfig { field, .. }) => {
                assert!(field.starts_with("limits."), "{field}")
            }
            other => panic!("{limits:?}: {other:?}"),
        }
    }
}

#[test]
fn extreme_limits_start_and_the_handle_reports_them() {
    let extreme = PlatformLimits::aws()
        .publishes_per_second(Some(u64::MAX))
        .bytes_per_second(Some(u64::MAX))
        .max_subscriptions(Some(usize::MAX))
        .max_filters_per_subscribe(Some(usize::MAX));
    let emulator = emulator(extreme);
    assert_eq!(emulator.limits(), extreme);
    assert_eq!(
        self::emulator(PlatformLimits::aws()).limits(),
        PlatformLimits::aws()
    );
    assert_eq!(
        Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true))
            .unwrap()
            .limits(),
        PlatformLimits::aws(),
        "AWS IoT's limits are the default"
    );
}

#[tokio::test]
async fn extreme_limits_let_a_burst_through() {
    let extreme = PlatformLimits::aws()
        .publishes_per_second(Some(u64::MAX))
        .bytes_per_second(Some(u64::MAX))
        .max_subscriptions(Some(usize::MAX))
        .max_filters_per_subscribe(Some(usize::MAX));
    let emulator = emulator(extreme);
    let (acked, _) = burst_of_300(&emulator, "cust-42-extreme").await;
    assert_eq!(acked.len(), 300);
    assert_eq!(emulator.limit_stats(), Default::default());
}
