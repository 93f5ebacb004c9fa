//! The outbox through outages: the cloud restarted five times while
//! producers enqueue, and a minute with no cloud at all. The client paces
//! and the emulator enforces the platform's limits, as in production.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::{device, emulator, free_port, CUSTOMER};
use tokio::task::JoinSet;
use ulogger_cloud::wire::{build_log, LogHeader};
use ulogger_cloud::{Client, MqttConfig, OutboxConfig, RecordId, Security};
use ulogger_emulator::{Emulator, EmulatorConfig, PortHold, Record, RecordKind};

/// A cloud on `port` keeping its records and tokens in `data`.
fn cloud(port: &PortHold, data: &Path) -> Emulator {
    emulator(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen_on(port)
            .data_dir(data),
    )
}

fn client(addr: SocketAddr, outbox: &Path) -> Client {
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(addr.port())
        .security(Security::Plaintext)
        .connect_timeout(Duration::from_secs(120));
    Client::builder(config)
        .outbox(OutboxConfig::new(outbox))
        .build()
        .unwrap()
}

fn numbered_log(n: usize) -> Vec<u8> {
    build_log(LogHeader::new(4).unwrap(), format!("log-{n:05}").as_bytes()).unwrap()
}

/// The numbered logs the cloud verified, over all its runs.
fn verified(data: &Path) -> (BTreeSet<usize>, usize) {
    let records = Record::read_index(data.join("index.jsonl")).unwrap();
    let logs: Vec<&Record> = records
        .iter()
        .filter(|r| r.kind == RecordKind::BinaryLog)
        .collect();
    let numbers = logs
        .iter()
        .map(|r| {
            assert!(r.is_ok(), "{r:?}");
            let bytes = std::fs::read(data.join(r.file.as_ref().unwrap())).unwrap();
            std::str::from_utf8(&bytes[25..]).unwrap()[4..]
                .parse()
                .unwrap()
        })
        .collect();
    (numbers, logs.len())
}

async fn wait_for_logs(emu: &Emulator, n: usize) {
    let mut watcher = emu.watch_records();
    let mut seen = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while seen < n {
            if watcher.next().await.kind == RecordKind::BinaryLog {
                seen += 1;
            }
        }
    })
    .await
    .expect("the cloud receives logs");
}

async fn all_delivered(client: &Client, ids: &[RecordId], within: Duration) {
    tokio::time::timeout(within, async {
        for id in ids {
            client.delivered(*id).await.unwrap();
        }
    })
    .await
    .expect("everything is delivered in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_logs_from_fifty_producers_arrive_through_five_cloud_restarts() {
    let port = free_port();
    let addr = port.addr();
    let data = tempfile::tempdir().unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let mut emu = cloud(&port, data.path());
    let client = client(addr, outbox.path());

    // 50 producers, 20 logs each, one every 300 ms: enqueueing goes on
    // while the cloud restarts.
    let mut producers = JoinSet::new();
    for p in 0..50 {
        let client = client.clone();
        producers.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            let mut ids = Vec::new();
            for i in 0..20 {
                tick.tick().await;
                let serial = format!("SN-P{:02}", p % 10);
                let id = client
                    .enqueue_log(&device(&serial), &numbered_log(p * 20 + i))
                    .await
                    .unwrap();
                ids.push(id);
            }
            ids
        });
    }
    for _ in 0..5 {
        wait_for_logs(&emu, 120).await;
        emu.shutdown().unwrap();
        emu = cloud(&port, data.path());
    }
    let mut ids = Vec::new();
    while let Some(done) = producers.join_next().await {
        ids.extend(done.unwrap());
    }
    assert_eq!(ids.len(), 1000);
    all_delivered(&client, &ids, Duration::from_secs(120)).await;
    client.shutdown().await;
    emu.shutdown().unwrap();

    let (numbers, copies) = verified(data.path());
    assert_eq!(numbers, (0..1000).collect(), "1,000 distinct logs arrived");
    eprintln!("1,000 logs through 5 restarts: {} copies in all", copies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_keeps_working_through_a_minute_without_a_cloud() {
    let port = free_port();
    let addr = port.addr();
    let data = tempfile::tempdir().unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let client = client(addr, outbox.path());

    // A log every 600 ms for a minute, with nothing listening.
    let mut tick = tokio::time::interval(Duration::from_millis(600));
    let mut ids = Vec::new();
    for n in 0..100 {
        tick.tick().await;
        ids.push(
            client
                .enqueue_log(&device("SN-OUT"), &numbered_log(n))
                .await
                .unwrap(),
        );
    }
    let status = client.outbox_status().unwrap();
    assert_eq!((status.queued, status.in_flight), (100, 0), "{status:?}");

    let emu = cloud(&port, data.path());
    // The connection's backoff is capped at 5 s by default.
    all_delivered(&client, &ids, Duration::from_secs(120)).await;
    client.shutdown().await;
    emu.shutdown().unwrap();
    let (numbers, _) = verified(data.path());
    assert_eq!(numbers, (0..100).collect());
}
