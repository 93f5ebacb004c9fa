//! Text logs (PROTOCOL §12) end to end: split into messages that fit,
//! numbered in order, verified and recorded by the emulator; through the
//! outbox across an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;
use ulogger_cloud::wire::{TextEntry, TextLevel, MAX_MESSAGE_SIZE};
use ulogger_cloud::{Client, ErrorKind, MqttConfig, OutboxConfig, Security};
use ulogger_emulator::{Emulator, EmulatorConfig, PortHold, Record, RecordKind};

fn entries(n: usize, width: usize) -> Vec<TextEntry> {
    (0..n)
        .map(|i| {
            TextEntry::new(
                1_700_000_000.0 + i as f64 / 8.0,
                TextLevel::Info,
                format!("line {i:06} {}", "x".repeat(width)),
            )
        })
        .collect()
}

/// The text-log records, with the sequence each body carries, in arrival
/// order; asserts each was accepted.
fn received(emu: &Emulator) -> Vec<(Record, u64, Vec<String>)> {
    records_of(emu, RecordKind::TextLogs)
        .into_iter()
        .map(|record| {
            assert!(record.is_ok(), "{record:?}");
            let body = String::from_utf8(stored_bytes(emu, &record)).unwrap();
            let mut lines = body.lines();
            let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
            let messages = lines
                .map(|l| {
                    let entry: serde_json::Value = serde_json::from_str(l).unwrap();
                    entry["m"].as_str().unwrap().to_owned()
                })
                .collect();
            (record, header["sequence"].as_u64().unwrap(), messages)
        })
        .collect()
}

#[tokio::test]
async fn many_lines_arrive_in_order_in_messages_under_the_limit() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("GW-TEXT-1");
    let lines = entries(3_000, 120);
    let receipt = client.publish_text_logs(&dev, &lines).await.unwrap();
    assert_eq!(receipt.topic, format!("logs/v0/{CUSTOMER}/0/{APP}"));
    assert!(receipt.sequences.len() > 1, "{receipt:?}");
    assert!(receipt.sequences.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(wait_for_count(&emu, RecordKind::TextLogs, receipt.sequences.len()).await);

    let got = received(&emu);
    let sequences: Vec<u64> = got.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(sequences, receipt.sequences, "in order, once each");
    let messages: Vec<String> = got.iter().flat_map(|(_, _, m)| m.clone()).collect();
    let expected: Vec<String> = lines.iter().map(|e| e.message.clone()).collect();
    assert_eq!(messages, expected);
    assert!(got.iter().all(|(r, _, _)| r.size <= MAX_MESSAGE_SIZE));
    assert_eq!(got[0].0.serial.as_deref(), Some("GW-TEXT-1"));

    // A second call numbers above the first (from the clock in
    // microseconds, so a restarted gateway does too).
    let more = client
        .publish_text_logs(&dev, &entries(1, 1))
        .await
        .unwrap();
    assert_eq!(more.sequences.len(), 1);
    assert!(more.sequences[0] > *receipt.sequences.last().unwrap());

    // Nothing to send, or a line that cannot fit, is refused before
    // anything goes.
    let err = client.publish_text_logs(&dev, &[]).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidTextLogs(_)), "{err}");
    let huge = [TextEntry::new(
        1.0,
        TextLevel::Error,
        "y".repeat(MAX_MESSAGE_SIZE),
    )];
    let err = client.publish_text_logs(&dev, &huge).await.unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("entry 0"),
        "{err}"
    );
    client.shutdown().await;
}

#[tokio::test]
async fn text_logs_wait_in_the_outbox_through_an_outage_and_arrive_once_in_order() {
    // Held while the cloud is away, so that it comes back on it.
    let port = PortHold::new().unwrap();
    let addr = port.addr();
    let outbox = tempfile::tempdir().unwrap();
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(addr.port())
        .security(Security::Plaintext)
        .connect_timeout(Duration::from_secs(60));
    let dev = device("GW-TEXT-2");
    let mut expected = Vec::new();
    let mut ids = Vec::new();
    {
        // No cloud at all: the batches are only stored.
        let client = Client::builder(config.clone())
            .outbox(OutboxConfig::new(outbox.path()))
            .build()
            .unwrap();
        for round in 0..3 {
            let lines = entries(400 + round, 300);
            ids.extend(client.enqueue_text_logs(&dev, &lines).await.unwrap());
            expected.extend(lines.into_iter().map(|e| e.message));
        }
        client.shutdown().await;
    }
    // The cloud comes up; a new client on the same outbox delivers.
    let emu = emulator(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen_on(&port),
    );
    let client = Client::builder(config)
        .outbox(OutboxConfig::new(outbox.path()))
        .build()
        .unwrap();
    let status = client.outbox_status().unwrap();
    assert_eq!(status.queued, ids.len(), "{status:?}");
    assert!(ids.len() > 3, "several messages per call");
    for id in ids.iter().copied() {
        tokio::time::timeout(Duration::from_secs(60), client.delivered(id))
            .await
            .expect("delivered in time")
            .unwrap();
    }
    let got = received(&emu);
    assert_eq!(got.len(), ids.len());
    assert!(
        got.windows(2).all(|w| w[1].1 > w[0].1),
        "sequences increase"
    );
    let messages: Vec<String> = got.iter().flat_map(|(_, _, m)| m.clone()).collect();
    assert_eq!(messages, expected, "every line once, in order");
    client.shutdown().await;
}
