//! Interoperability of MQTT telemetry: metrics, events, heartbeats and a
//! gzip-compressed batch from the client, through a real mosquitto
//! configured for mutual TLS (`require_certificate true`), to the
//! emulator's cloud side attached to it as an ordinary client, which
//! checks each payload against PROTOCOL §8. Under `CI=true` these tests
//! fail if mosquitto is missing; elsewhere they say so and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::interop::{setup, Setup};
use support::*;
use ulogger_cloud::wire::{DeviceEvents, DeviceMetrics, Event, Metric};
use ulogger_cloud::{Client, TelemetryReceipt};
use ulogger_emulator::{verify_telemetry, Emulator, Record, RecordKind, TelemetryList, Verdict};

/// The next record of `kind` after `seen` of them, once the cloud has it.
async fn next_of(emu: &Emulator, kind: RecordKind, seen: usize) -> Record {
    assert!(
        wait_for_count(emu, kind, seen + 1).await,
        "{kind:?} record #{} did not reach the cloud through mosquitto",
        seen + 1
    );
    records_of(emu, kind).swap_remove(seen)
}

/// The record is the message the receipt describes, accepted, and the
/// cloud's decoder counts `devices` and `samples` in what it stored.
fn assert_accepted(
    emu: &Emulator,
    record: &Record,
    receipt: &TelemetryReceipt,
    list: TelemetryList,
    (devices, samples): (usize, usize),
) {
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    assert_eq!(record.topic, receipt.topic);
    assert_eq!(record.size, receipt.size);
    assert_eq!(record.compressed, Some(receipt.compressed));
    assert_eq!(record.app_id, Some(APP));
    let check = verify_telemetry(list, &stored_bytes(emu, record));
    assert!(check.is_ok(), "{check:?}");
    assert_eq!((check.devices, check.samples), (devices, samples));
}

/// Every telemetry call through mosquitto, in the emulator's topic layout.
async fn every_call_reaches_the_cloud(setup: Setup) {
    let emu = &setup.emulator;
    let ids = if emu.legacy_topics() {
        format!("{CUSTOMER}/{APP}")
    } else {
        format!("{CUSTOMER}/{}/{APP}", emu.group_id())
    };
    let topic = |list: &str| format!("{}{list}/v0/{ids}", emu.topic_prefix());
    let client = Client::builder(setup.config.clone()).build().unwrap();

    let metrics = [
        Metric::new("temp", 21.5).at(1_700_000_000),
        Metric::new("rssi", -60.0),
    ];
    let receipt = client
        .publish_metrics("SN-MOSQ-M", APP, &metrics)
        .await
        .unwrap();
    assert_eq!(receipt.topic, topic("metrics"));
    assert!(!receipt.compressed);
    let record = next_of(emu, RecordKind::Metrics, 0).await;
    assert_accepted(emu, &record, &receipt, TelemetryList::Metrics, (1, 2));
    assert_eq!(record.serial.as_deref(), Some("SN-MOSQ-M"));

    let receipt = client
        .publish_events(
            "SN-MOSQ-E",
            APP,
            &[Event::new("boot").at(1), Event::new("reset")],
        )
        .await
        .unwrap();
    assert_eq!(receipt.topic, topic("events"));
    let record = next_of(emu, RecordKind::Events, 0).await;
    assert_accepted(emu, &record, &receipt, TelemetryList::Events, (1, 2));
    assert_eq!(record.serial.as_deref(), Some("SN-MOSQ-E"));

    let receipt = client
        .publish_heartbeat("SN-MOSQ-H", APP, Some(u64::MAX))
        .await
        .unwrap();
    let record = next_of(emu, RecordKind::Metrics, 1).await;
    assert_accepted(emu, &record, &receipt, TelemetryList::Metrics, (1, 1));
    let stored: serde_json::Value = serde_json::from_slice(&stored_bytes(emu, &record)).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"device_serial": "SN-MOSQ-H", "metrics": [
            {"name": "heartbeat", "value": 1, "timestamp": u64::MAX}]})
    );

    // 200 devices: well over the 1,024-byte threshold, so gzip.
    let batch: Vec<DeviceMetrics> = (0..200)
        .map(|i| {
            DeviceMetrics::new(
                format!("SN-MOSQ-{i:03}"),
                vec![
                    Metric::new("temp", f64::from(i)).at(1_700_000_000),
                    Metric::heartbeat(),
                ],
            )
        })
        .collect();
    let receipt = client.publish_metrics_batch(APP, &batch).await.unwrap();
    assert!(receipt.compressed, "{receipt:?}");
    let record = next_of(emu, RecordKind::Metrics, 2).await;
    assert_accepted(emu, &record, &receipt, TelemetryList::Metrics, (200, 400));
    assert_eq!(record.serial.as_deref(), Some("SN-MOSQ-000"));

    let batch: Vec<DeviceEvents> = (0..3)
        .map(|i| DeviceEvents::new(format!("SN-MOSQ-E{i}"), vec![Event::new("door")]).app_id(9))
        .collect();
    let receipt = client.publish_events_batch(APP, &batch).await.unwrap();
    let record = next_of(emu, RecordKind::Events, 1).await;
    assert_accepted(emu, &record, &receipt, TelemetryList::Events, (3, 3));
    client.shutdown().await;
}

#[tokio::test]
async fn telemetry_through_mosquitto_with_mutual_tls() {
    let Some(setup) = setup(Some(0), "") else {
        return;
    };
    every_call_reaches_the_cloud(setup).await;
}

#[tokio::test]
async fn telemetry_through_mosquitto_with_the_legacy_layout_where_a_bridge_asks_for_it() {
    let Some(setup) = setup(None, "") else { return };
    every_call_reaches_the_cloud(setup).await;
}

#[tokio::test]
async fn telemetry_through_mosquitto_with_the_group_layout_and_a_prefix() {
    let Some(setup) = setup(Some(31), "ulogger/") else {
        return;
    };
    assert_eq!(setup.emulator.topic_prefix(), "ulogger/");
    every_call_reaches_the_cloud(setup).await;
}
