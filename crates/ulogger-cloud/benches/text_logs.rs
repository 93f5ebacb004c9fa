//! Text logs (PROTOCOL §12) through [`ulogger_cloud::Client`]: the same
//! lines sent with `publish_text_logs` (published, complete on every
//! PUBACK), with `enqueue_text_logs` (durable in an outbox on disk, then
//! delivered in the background; timed until the last is acknowledged),
//! and, as the limit, the same prebuilt messages published by a plain
//! rumqttc client pipelined on its own connection.
//!
//! One run (`cargo bench -p ulogger-cloud --bench text_logs`): an emulator
//! with mutual TLS, the platform's limits off and records in `/dev/shm`
//! where it exists, verifying every batch before its PUBACK; `ROUNDS`
//! rounds of the three, interleaved; every round, the medians (lines/s)
//! and the ratios measured side by side.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use rumqttc::{Event, Packet, QoS};
use ulogger_bench::broker::{device, disconnect, raw_client, LocalCloud, APP, CUSTOMER};
use ulogger_bench::stats::median;
use ulogger_cloud::wire::{text_log_batches, TextEntry, TextLevel, Topics};
use ulogger_cloud::{Client, MqttConfig, OutboxConfig, Pacing, RegistrationLimit};
use ulogger_emulator::{Emulator, PlatformLimits};

/// Lines per round and side.
const LINES: usize = 20_000;
/// Text per line (bytes), a typical journal line.
const LINE: usize = 100;
const ROUNDS: usize = 5;

fn lines(round: usize) -> Vec<TextEntry> {
    (0..LINES)
        .map(|i| {
            let text = format!("round {round} line {i:06} ");
            let pad = LINE.saturating_sub(text.len());
            TextEntry::new(
                1_700_000_000.0 + i as f64 / 1000.0,
                TextLevel::Info,
                text + &"x".repeat(pad),
            )
        })
        .collect()
}

fn config(emulator: &Emulator) -> MqttConfig {
    let certs = emulator.certs().expect("TLS is on");
    MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(emulator.addr().port())
        .ca_file(&certs.ca_cert)
        .client_cert(&certs.client_cert, &certs.client_key)
        .pacing(Pacing::off())
        .registration_limit(RegistrationLimit::off())
}

fn main() {
    let cloud = LocalCloud::start(PlatformLimits::unlimited());
    let emulator = &cloud.emulator;
    let outbox_dir = tempfile::tempdir().expect("an outbox directory on disk");
    println!("ulogger-cloud text-log benchmark");
    println!(
        "  {LINES} lines of {LINE} bytes per side and round; emulator on {} (mutual TLS, limits off, verifies every batch); outbox in {}",
        emulator.addr(),
        outbox_dir.path().display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dev = device("GW-BENCH");
    let topic = Topics::new("", CUSTOMER, Some(0))
        .and_then(|t| t.logs(APP))
        .expect("logs topic");
    let (mut publish, mut outbox, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    runtime.block_on(async {
        let direct = Client::builder(config(emulator)).build().unwrap();
        let queued = Client::builder(config(emulator))
            .outbox(OutboxConfig::new(outbox_dir.path()))
            .build()
            .unwrap();
        direct.connected().await.unwrap();
        queued.connected().await.unwrap();
        let certs = emulator.certs().unwrap().clone();
        let (raw_client, mut events) = raw_client(&certs, emulator.addr().port(), "text", 4096)
            .await
            .unwrap();
        for round in 0..ROUNDS {
            let entries = lines(round);

            let start = Instant::now();
            direct.publish_text_logs(&dev, &entries).await.unwrap();
            publish.push(rate(start.elapsed()));

            let start = Instant::now();
            let ids = queued.enqueue_text_logs(&dev, &entries).await.unwrap();
            let durable = start.elapsed();
            for id in ids {
                queued.delivered(id).await.unwrap();
            }
            outbox.push(rate(start.elapsed()));

            // The limit: the same messages, built beforehand, pipelined.
            let batches = text_log_batches(&dev, 1 + round as u64 * 1_000, &entries).unwrap();
            let count = batches.len();
            let start = Instant::now();
            for batch in batches {
                raw_client
                    .publish(&topic, QoS::AtLeastOnce, false, batch.bytes)
                    .await
                    .unwrap();
            }
            let mut acked = 0;
            while acked < count {
                if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
                    acked += 1;
                }
            }
            raw.push(rate(start.elapsed()));
            println!(
                "  round {round}: publish_text_logs {:>9.0} lines/s | outbox {:>9.0} lines/s (durable after {} ms) | raw rumqttc {:>9.0} lines/s | {count} messages",
                publish[round],
                outbox[round],
                durable.as_millis(),
                raw[round]
            );
        }
        disconnect(&raw_client, &mut events).await;
        direct.shutdown().await;
        queued.shutdown().await;
    });
    let (publish, outbox, raw) = (median(&mut publish), median(&mut outbox), median(&mut raw));
    println!();
    println!("  median publish_text_logs: {publish:.0} lines/s, {:.2} of raw rumqttc ({raw:.0} lines/s, prebuilt, same run)", publish / raw);
    println!(
        "  median through the outbox: {outbox:.0} lines/s, {:.2} of publish_text_logs (same run)",
        outbox / publish
    );
    drop(runtime);
    cloud.shutdown();
}

fn rate(elapsed: Duration) -> f64 {
    LINES as f64 / elapsed.as_secs_f64()
}
