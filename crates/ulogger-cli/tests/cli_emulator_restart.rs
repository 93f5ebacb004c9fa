//! `ulogger emulator --data DIR` keeps its word across restarts: whatever
//! a client saw acknowledged is in the records, however the emulator is
//! stopped (SIGTERM or SIGKILL), and the tokens it issued stay valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use ulogger_cloud::wire::{build_log, DeviceInfo, LogHeader};
use ulogger_cloud::{Client, MqttConfig, SessionStore};
use ulogger_emulator::{Record, RecordKind, Verdict};

use support::Running;

const CUSTOMER: u32 = 9;
const UPLOADERS: usize = 8;

/// One emulator process on a data directory, with what its banner said.
struct Cloud {
    running: Running,
    addr: SocketAddr,
    ready: serde_json::Value,
}

impl Cloud {
    fn start(data: &Path, listen: &str) -> Cloud {
        let running = Running::start(&[
            "--json",
            "emulator",
            // About durability under load: eight unpaced uploaders reach
            // 60-85 uploads/s here, near AWS IoT's 100 publishes/s, past
            // which discards would stall uploads for their ack timeout.
            "--no-limits",
            "--listen",
            listen,
            "--data",
            data.to_str().unwrap(),
            "--customer-id",
            &CUSTOMER.to_string(),
        ]);
        let ready = running.json_line();
        assert_eq!(ready["event"], "ready", "{ready}");
        let addr = ready["address"].as_str().unwrap().parse().unwrap();
        Cloud {
            running,
            addr,
            ready,
        }
    }

    fn client(&self, store: &Arc<SessionStore>) -> Client {
        let path = |key: &str| self.ready[key].as_str().unwrap().to_string();
        let config = MqttConfig::new(CUSTOMER)
            .broker(self.addr.ip().to_string())
            .port(self.addr.port())
            .ca_file(path("ca"))
            .client_cert(path("cert"), path("key"))
            .connect_timeout(Duration::from_secs(60))
            .ack_timeout(Duration::from_secs(30));
        Client::builder(config)
            .session_store(store.clone())
            .build()
            .unwrap()
    }
}

fn device() -> DeviceInfo {
    DeviceInfo::new(3, "SN-RESTART", "board", "v1.0.0", "abc1234")
}

/// A log whose data names upload `n`.
fn log(n: u64) -> Vec<u8> {
    build_log(
        LogHeader::new(4).unwrap(),
        format!("upload-{n:08}").as_bytes(),
    )
    .unwrap()
}

/// Uploaders that keep going until stopped, noting each upload the broker
/// acknowledged.
struct Load {
    acked: Arc<Mutex<BTreeSet<u64>>>,
    count: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Load {
    fn start(client: &Client) -> Load {
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let (count_tx, count) = watch::channel(0);
        let count_tx = Arc::new(count_tx);
        let (stop, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for worker in 0..UPLOADERS as u64 {
            let (client, acked, count_tx) = (client.clone(), acked.clone(), count_tx.clone());
            let stop = stop.subscribe();
            tasks.spawn(async move {
                let mut n = worker;
                while !*stop.borrow() {
                    if client.upload_log(&device(), &log(n)).await.is_ok() {
                        let mut acked = acked.lock().unwrap();
                        acked.insert(n);
                        count_tx.send_replace(acked.len());
                    }
                    n += UPLOADERS as u64;
                }
            });
        }
        Load {
            acked,
            count,
            stop,
            tasks,
        }
    }

    /// Waits until `more` further uploads were acknowledged.
    async fn progress(&mut self, more: usize) {
        let target = *self.count.borrow() + more;
        tokio::time::timeout(
            Duration::from_secs(120),
            self.count.wait_for(|&n| n >= target),
        )
        .await
        .expect("uploads keep being acknowledged")
        .unwrap();
    }

    /// Stops the uploaders after their current upload.
    async fn finish(mut self) -> BTreeSet<u64> {
        self.stop.send_replace(true);
        while let Some(done) = self.tasks.join_next().await {
            done.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }

    /// Stops the uploaders now, abandoning the uploads under way.
    async fn abandon(mut self) -> BTreeSet<u64> {
        self.tasks.shutdown().await;
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// The uploads the records hold as verified logs; asserts on the way that
/// every record is whole (its payload file there, of its size).
fn uploads_in_records(data: &Path) -> (BTreeSet<u64>, Vec<Record>) {
    let records = Record::read_index(data.join("index.jsonl")).unwrap();
    let mut uploads = BTreeSet::new();
    for record in &records {
        if let Some(file) = &record.file {
            let bytes = std::fs::read(data.join(file)).unwrap();
            assert_eq!(bytes.len(), record.size, "{record:?}");
        }
        if record.kind != RecordKind::BinaryLog {
            continue;
        }
        assert_eq!(record.verdict, Verdict::Ok, "{record:?}");
        let bytes = std::fs::read(data.join(record.file.as_ref().unwrap())).unwrap();
        let text = std::str::from_utf8(&bytes[25..]).unwrap();
        uploads.insert(text.strip_prefix("upload-").unwrap().parse().unwrap());
    }
    (uploads, records)
}

fn registrations(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| r.kind == RecordKind::Boot)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_upload_survives_sigterm_restarts_and_tokens_stay_valid() {
    let data = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::start(data.path(), "127.0.0.1:0");
    let listen = cloud.addr.to_string();
    let store = Arc::new(SessionStore::in_memory());
    let client = cloud.client(&store);
    let mut load = Load::start(&client);
    for _ in 0..3 {
        load.progress(40).await;
        let status = tokio::task::block_in_place(|| cloud.running.terminate());
        assert!(
            status.success(),
            "SIGTERM ends the emulator cleanly: {status}"
        );
        cloud = Cloud::start(data.path(), &listen);
    }
    load.progress(40).await;
    let acked = load.finish().await;
    client.shutdown().await;
    let status = tokio::task::block_in_place(|| cloud.running.terminate());
    assert!(status.success(), "{status}");

    let (stored, records) = uploads_in_records(data.path());
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not in the records: {lost:?}"
    );
    // The token issued before the first restart was honoured after each.
    assert_eq!(registrations(&records), 1, "the cached token stayed valid");
    assert!(acked.len() >= 160);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_under_load_loses_nothing_acknowledged_and_leaves_whole_records() {
    let data = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::start(data.path(), "127.0.0.1:0");
    let listen = cloud.addr.to_string();
    let store = Arc::new(SessionStore::in_memory());
    let client = cloud.client(&store);
    let mut load = Load::start(&client);
    load.progress(60).await;
    tokio::task::block_in_place(|| {
        cloud.running.child.kill().unwrap();
        cloud.running.child.wait().unwrap();
    });
    let acked = load.abandon().await;
    drop(client);

    // Every line of the index parses and every payload is whole.
    let (stored, _) = uploads_in_records(data.path());
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not in the records: {lost:?}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(data.path().join("binlog"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();

    // The directory opens again, temporaries are cleared, and the token
    // issued before the kill still verifies.
    let mut cloud = Cloud::start(data.path(), &listen);
    let client = cloud.client(&store);
    let receipt = client.upload_log(&device(), &log(u64::MAX)).await.unwrap();
    client.shutdown().await;
    tokio::task::block_in_place(|| assert!(cloud.running.terminate().success()));
    let (after, records) = uploads_in_records(data.path());
    assert!(after.contains(&u64::MAX));
    assert_eq!(registrations(&records), 1, "token {} kept", receipt.token);
    for name in leftovers {
        assert!(
            !data.path().join("binlog").join(&name).exists(),
            "{name} was removed on opening"
        );
    }
}
