//! Per-device order: the logs of one device reach the cloud in the order
//! they were given, through the outbox and through concurrent uploads in
//! turns, over one connection or a pool, while other devices' uploads
//! still run beside them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;
use ulogger_cloud::wire::{build_log, LogHeader};
use ulogger_cloud::{Client, OutboxConfig, Pacing, RegistrationLimit};
use ulogger_emulator::{Emulator, EmulatorConfig, PlatformLimits, RecordKind};

/// A log whose data names its device and number: `{serial}/{n:05}`.
fn log(serial: &str, n: usize) -> Vec<u8> {
    build_log(
        LogHeader::new(4).unwrap(),
        format!("{serial}/{n:05}").as_bytes(),
    )
    .unwrap()
}

/// Each device's log numbers in the order the cloud received them.
fn arrivals(emu: &Emulator) -> BTreeMap<String, Vec<usize>> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for record in records_of(emu, RecordKind::BinaryLog) {
        assert!(record.is_ok(), "{record:?}");
        let bytes = stored_bytes(emu, &record);
        let text = std::str::from_utf8(&bytes[25..]).unwrap();
        let (serial, n) = text.split_once('/').unwrap();
        out.entry(serial.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    out
}

fn fast_emulator() -> Emulator {
    emulator(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .limits(PlatformLimits::unlimited()),
    )
}

const DEVICES: usize = 4;
const LOGS: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_delivers_each_device_in_enqueue_order_over_a_pool() {
    let emu = fast_emulator();
    let dir = tempfile::tempdir().unwrap();
    let client = Client::builder(
        config_for(&emu)
            .pacing(Pacing::off())
            .registration_limit(RegistrationLimit::off())
            .connections(3),
    )
    .outbox(OutboxConfig::new(dir.path()))
    .build()
    .unwrap();
    let mut ids = Vec::new();
    // Interleaved devices, each in its own order.
    for n in 0..LOGS {
        for d in 0..DEVICES {
            let serial = format!("SN-ORD-{d}");
            ids.push(
                client
                    .enqueue_log(&device(&serial), &log(&serial, n))
                    .await
                    .unwrap(),
            );
        }
    }
    for id in ids {
        tokio::time::timeout(Duration::from_secs(60), client.delivered(id))
            .await
            .expect("delivered in time")
            .unwrap();
    }
    let arrivals = arrivals(&emu);
    assert_eq!(arrivals.len(), DEVICES);
    for (serial, numbers) in arrivals {
        assert_eq!(numbers, (0..LOGS).collect::<Vec<_>>(), "{serial}");
    }
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_in_turns_arrive_in_turn_order() {
    let emu = fast_emulator();
    let client = Client::builder(
        config_for(&emu)
            .pacing(Pacing::off())
            .registration_limit(RegistrationLimit::off()),
    )
    .build()
    .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..LOGS {
        for d in 0..DEVICES {
            let serial = format!("SN-TURN-{d}");
            // Turns taken in order; the tasks run however they are scheduled.
            let turn = client.take_turn(&serial);
            let client = client.clone();
            tasks.spawn(async move {
                // A little disorder of its own before the upload.
                if n % 7 == 0 {
                    tokio::task::yield_now().await;
                }
                client
                    .upload_log_in_turn(turn, &device(&serial), &log(&serial, n))
                    .await
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    for (serial, numbers) in arrivals(&emu) {
        assert_eq!(numbers, (0..LOGS).collect::<Vec<_>>(), "{serial}");
    }
    client.shutdown().await;
}
