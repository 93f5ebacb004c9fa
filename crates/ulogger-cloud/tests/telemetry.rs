//! Metrics, events and heartbeats end to end against the emulator, which
//! checks every payload against PROTOCOL §8 on its own terms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;
use ulogger_cloud::wire::{
    Compression, DeviceEvents, DeviceMetrics, Event, Metric, TelemetryError, TopicError,
    COMPRESSION_THRESHOLD, MAX_MESSAGE_SIZE,
};
use ulogger_cloud::{Client, ErrorKind, TelemetryReceipt};
use ulogger_emulator::{Emulator, EmulatorConfig, Record, RecordKind, Verdict};

/// The `n`th record of `kind` (counting from 1), once the emulator has it.
async fn nth(emu: &Emulator, kind: RecordKind, n: usize) -> Record {
    assert!(
        wait_for_count(emu, kind, n).await,
        "no {kind:?} record #{n}"
    );
    records_of(emu, kind).swap_remove(n - 1)
}

fn assert_ok(record: &Record, receipt: &TelemetryReceipt) {
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    assert_eq!(record.topic, receipt.topic);
    assert_eq!(record.size, receipt.size);
    assert_eq!(record.compressed, Some(receipt.compressed));
}

async fn every_call_is_recorded_ok(emu: Emulator, topic_start: &str) {
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let r = client
        .publish_metrics("SN-M", APP, &[Metric::new("temp", 21.5).at(1_700_000_000)])
        .await
        .unwrap();
    assert_eq!(
        r.topic,
        format!("{topic_start}metrics/v0/{}{APP}", ids(&emu))
    );
    let rec = nth(&emu, RecordKind::Metrics, 1).await;
    assert_ok(&rec, &r);
    assert_eq!(rec.serial.as_deref(), Some("SN-M"));
    assert_eq!(rec.app_id, Some(APP));

    let r = client
        .publish_heartbeat("SN-H", APP, Some(5))
        .await
        .unwrap();
    let rec = nth(&emu, RecordKind::Metrics, 2).await;
    assert_ok(&rec, &r);
    let stored: serde_json::Value = serde_json::from_slice(&stored_bytes(&emu, &rec)).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"device_serial": "SN-H", "metrics": [{"name": "heartbeat", "value": 1, "timestamp": 5}]})
    );

    let r = client
        .publish_events("SN-E", APP, &[Event::new("door_opened")])
        .await
        .unwrap();
    assert_eq!(
        r.topic,
        format!("{topic_start}events/v0/{}{APP}", ids(&emu))
    );
    assert_ok(&nth(&emu, RecordKind::Events, 1).await, &r);

    let r = client
        .publish_metrics_batch(
            APP,
            &[
                DeviceMetrics::new("SN-B1", vec![Metric::new("a", 1.0)]),
                DeviceMetrics::new("SN-B2", vec![Metric::new("b", -2.0)]).app_id(99),
            ],
        )
        .await
        .unwrap();
    let rec = nth(&emu, RecordKind::Metrics, 3).await;
    assert_ok(&rec, &r);
    assert_eq!(rec.serial.as_deref(), Some("SN-B1"));

    let r = client
        .publish_events_batch(
            APP,
            &[DeviceEvents::new("SN-B3", vec![Event::new("boot").at(1)]).app_id(3)],
        )
        .await
        .unwrap();
    assert_ok(&nth(&emu, RecordKind::Events, 2).await, &r);
    client.shutdown().await;
}

/// `C/` or `C/G/` as the topics carry them.
fn ids(emu: &Emulator) -> String {
    match emu.legacy_topics() {
        false => format!("{}/{}/", emu.customer_id(), emu.group_id()),
        true => format!("{}/", emu.customer_id()),
    }
}

#[tokio::test]
async fn every_call_is_recorded_ok_over_tls() {
    every_call_is_recorded_ok(tls_emulator(), "").await;
}

#[tokio::test]
async fn every_call_is_recorded_ok_with_group_and_prefix() {
    let emu = emulator(
        EmulatorConfig::new(CUSTOMER)
            .group_id(55)
            .topic_prefix("ulogger/"),
    );
    every_call_is_recorded_ok(emu, "ulogger/").await;
}

#[test]
fn the_blocking_client_publishes_telemetry_too() {
    let emu = tls_emulator();
    let client = ulogger_cloud::blocking::Client::builder(config_for(&emu))
        .telemetry_compression(Compression::Always)
        .build()
        .unwrap();
    let r = client.publish_heartbeat("SN-BLOCK", APP, None).unwrap();
    assert!(r.compressed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rec = rt.block_on(nth(&emu, RecordKind::Metrics, 1));
    assert_ok(&rec, &r);
    client.shutdown();
}

#[test]
fn the_sdk_named_free_functions_publish_telemetry_each_on_its_own_connection() {
    let emu = tls_emulator();
    let config = config_for(&emu);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r =
        ulogger_cloud::blocking::publish_metrics(&config, "SN-FREE", APP, &[Metric::new("v", 3.0)])
            .unwrap();
    assert_ok(&rt.block_on(nth(&emu, RecordKind::Metrics, 1)), &r);
    let r = ulogger_cloud::blocking::publish_heartbeat(&config, "SN-FREE", APP, Some(5)).unwrap();
    assert_ok(&rt.block_on(nth(&emu, RecordKind::Metrics, 2)), &r);
    let r = ulogger_cloud::blocking::publish_events_batch(
        &config,
        APP,
        &[DeviceEvents::new("SN-FREE", vec![Event::new("boot")])],
    )
    .unwrap();
    assert_ok(&rt.block_on(nth(&emu, RecordKind::Events, 1)), &r);
    let r = rt
        .block_on(ulogger_cloud::compat::publish_events(
            &config,
            "SN-FREE",
            APP,
            &[Event::new("reset")],
        ))
        .unwrap();
    assert_ok(&rt.block_on(nth(&emu, RecordKind::Events, 2)), &r);
    let r = rt
        .block_on(ulogger_cloud::compat::publish_metrics_batch(
            &config,
            APP,
            &[DeviceMetrics::new("SN-FREE", vec![Metric::new("v", 4.0)])],
        ))
        .unwrap();
    assert_ok(&rt.block_on(nth(&emu, RecordKind::Metrics, 3)), &r);
    // Refused before sending: nothing more reaches the emulator.
    let err = ulogger_cloud::blocking::publish_metrics(&config, "SN-FREE", APP, &[]).unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    assert_eq!(records_of(&emu, RecordKind::Metrics).len(), 3);
}

/// Metrics whose JSON is `json_len` bytes or slightly less: a name padded
/// to size.
fn metrics_of_json_len(json_len: usize) -> Vec<Metric> {
    let bare = r#"{"device_serial":"SN-GZ","metrics":[{"name":"","value":1.0}]}"#.len();
    vec![Metric::new("n".repeat(json_len - bare), 1.0)]
}

#[tokio::test]
async fn auto_compression_starts_just_over_1024_bytes_on_both_sides() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let at = client
        .publish_metrics("SN-GZ", APP, &metrics_of_json_len(COMPRESSION_THRESHOLD))
        .await
        .unwrap();
    assert!(!at.compressed);
    assert_eq!(at.size, COMPRESSION_THRESHOLD);
    let rec = nth(&emu, RecordKind::Metrics, 1).await;
    assert_ok(&rec, &at);
    assert_eq!(rec.compressed, Some(false));

    let over = client
        .publish_metrics(
            "SN-GZ",
            APP,
            &metrics_of_json_len(COMPRESSION_THRESHOLD + 1),
        )
        .await
        .unwrap();
    assert!(over.compressed);
    let rec = nth(&emu, RecordKind::Metrics, 2).await;
    assert_ok(&rec, &over);
    assert_eq!(rec.compressed, Some(true));
    assert_eq!(&stored_bytes(&emu, &rec)[..2], &[0x1f, 0x8b]);
    client.shutdown().await;
}

fn big_batch() -> Vec<DeviceMetrics> {
    (0..200)
        .map(|d| {
            DeviceMetrics::new(
                format!("SN-{d:04}"),
                (0..20)
                    .map(|m| Metric::new(format!("metric_{m}"), f64::from(m)).at(1_700_000_000))
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_uncompressed_batch_over_128_kib_is_refused_locally() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu))
        .telemetry_compression(Compression::Never)
        .build()
        .unwrap();

    let err = client
        .publish_metrics_batch(APP, &big_batch())
        .await
        .unwrap_err();
    match err.kind() {
        ErrorKind::PayloadTooLarge { size, limit } => {
            assert!(*size > MAX_MESSAGE_SIZE);
            assert_eq!(*limit, MAX_MESSAGE_SIZE);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_invalid_input());

    // Nothing went out: the next message is the first the cloud sees.
    let r = client
        .publish_heartbeat("SN-AFTER", APP, None)
        .await
        .unwrap();
    let rec = nth(&emu, RecordKind::Metrics, 1).await;
    assert_eq!(rec.serial.as_deref(), Some("SN-AFTER"));
    assert_ok(&rec, &r);
    assert_eq!(records_of(&emu, RecordKind::Metrics).len(), 1);
    client.shutdown().await;
}

#[tokio::test]
async fn the_same_batch_compressed_goes_through() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let r = client
        .publish_metrics_batch(APP, &big_batch())
        .await
        .unwrap();
    assert!(r.compressed && r.size <= MAX_MESSAGE_SIZE);
    let rec = nth(&emu, RecordKind::Metrics, 1).await;
    assert_ok(&rec, &r);
    assert_eq!(rec.serial.as_deref(), Some("SN-0000"));
    client.shutdown().await;
}

#[tokio::test]
async fn bad_samples_are_refused_before_sending() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let err = client
        .publish_metrics_batch(
            APP,
            &[
                DeviceMetrics::new("SN-OK", vec![Metric::heartbeat()]),
                DeviceMetrics::new("", vec![Metric::heartbeat()]),
            ],
        )
        .await
        .unwrap_err();
    assert!(err.is_invalid_input());
    assert!(
        matches!(
            err.kind(),
            ErrorKind::InvalidTelemetry(TelemetryError::InvalidSerial {
                index: 1,
                reason: TopicError::EmptySerial,
                ..
            })
        ),
        "{err:?}"
    );

    let err = client
        .publish_metrics("SN-NAN", APP, &[Metric::new("t", f64::NAN)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::InvalidTelemetry(TelemetryError::NonFiniteValue { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("NaN"), "{err}");

    let err = client.publish_events("SN-E", APP, &[]).await.unwrap_err();
    assert!(matches!(
        err.kind(),
        ErrorKind::InvalidTelemetry(TelemetryError::NoSamples { .. })
    ));

    let r = client
        .publish_heartbeat("SN-AFTER", APP, None)
        .await
        .unwrap();
    let rec = nth(&emu, RecordKind::Metrics, 1).await;
    assert_ok(&rec, &r);
    assert!(records_of(&emu, RecordKind::Events).is_empty());
    assert_eq!(records_of(&emu, RecordKind::Metrics).len(), 1);
    client.shutdown().await;
}

#[tokio::test]
async fn a_hand_published_bad_payload_is_recorded_rejected_with_a_reason() {
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let mut options = rumqttc::MqttOptions::new(
        format!("cust-{CUSTOMER}-raw"),
        "127.0.0.1",
        emu.addr().port(),
    );
    options.set_keep_alive(Duration::from_secs(5));
    let (raw, mut events) = rumqttc::AsyncClient::new(options, 10);
    raw.publish(
        format!("metrics/v0/{CUSTOMER}/0/{APP}"),
        rumqttc::QoS::AtLeastOnce,
        false,
        br#"{"device_serial":"SN-RAW","metrics":[{"name":"t","value":"hot"}]}"#.to_vec(),
    )
    .await
    .unwrap();
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = events.poll().await.unwrap() {
            break;
        }
    }
    let rec = nth(&emu, RecordKind::Metrics, 1).await;
    assert_eq!(rec.verdict, Verdict::Rejected);
    assert_eq!(rec.serial.as_deref(), Some("SN-RAW"));
    assert_eq!(rec.compressed, Some(false));
    let reason = rec.reason.unwrap();
    assert!(reason.contains("metrics[0].value"), "{reason}");
}
