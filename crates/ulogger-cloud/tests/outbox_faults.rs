//! The outbox when a write or an fsync fails: the batch it covered fails
//! to its callers with a clear error, the outbox recovers by itself (the
//! next enqueue succeeds and is delivered), and no record reported durable
//! is lost. Faults come from the library's fault points (`failpoints`
//! feature, see `src/crash.rs`), set in this process with `fail::cfg`;
//! `cargo test --workspace` builds the library with the feature (the CLI's
//! tests ask for it), or run `cargo test -p ulogger-cloud --features
//! failpoints --test outbox_faults`.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{closed_addr, device, emulator, free_port, init_tracing, records_of, CUSTOMER};
use ulogger_cloud::{Client, Error, MqttConfig, Outbox, OutboxConfig, RecordId, Security};
use ulogger_emulator::{EmulatorConfig, RecordKind};

const WAIT: Duration = Duration::from_secs(30);

/// Fault points are global to the process: one test at a time.
static FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn client(addr: SocketAddr, outbox: OutboxConfig) -> Client {
    init_tracing();
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(addr.port())
        .security(Security::Plaintext)
        .connect_timeout(Duration::from_secs(60));
    Client::builder(config).outbox(outbox).build().unwrap()
}

/// A log whose data says which one it is.
fn numbered_log(n: usize) -> Vec<u8> {
    let mut header = ulogger_cloud::wire::LogHeader::new(4).unwrap();
    header.epoch_time_us = Some(0);
    ulogger_cloud::wire::build_log(header, format!("log-{n:05}").as_bytes()).unwrap()
}

async fn enqueue(client: &Client, n: usize) -> Result<RecordId, Error> {
    client.enqueue_log(&device("SN-F"), &numbered_log(n)).await
}

/// The error and its causes, one line.
fn chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-") && n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

/// Enqueues log 0 offline, makes the enqueue of log 1 meet `point`
/// configured as `action`, then enqueues logs 2 and 3. Checks that only
/// log 1 failed (with `check`), that a reopened outbox holds exactly the
/// others, and that a client with a broker delivers exactly them.
async fn a_fault_fails_one_batch_only(point: &str, action: &str, check: impl Fn(&Error)) {
    let _one_at_a_time = FAULTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let outbox_dir = dir.path().join("spool/outbox");
    let port = free_port();
    let addr = port.addr();
    let first = client(addr, OutboxConfig::new(&outbox_dir));
    let mut reported = vec![enqueue(&first, 0).await.unwrap()];
    {
        // Removed on drop, even if an assertion fails.
        let _fault = fail::FailGuard::new(point, action).unwrap();
        let err = enqueue(&first, 1).await.unwrap_err();
        check(&err);
    }
    for n in [2, 3] {
        reported.push(
            enqueue(&first, n)
                .await
                .unwrap_or_else(|e| panic!("enqueue {n} after the fault: {}", chain(&e))),
        );
    }
    first.shutdown().await;
    drop(first);

    // Everything reported durable is on disk, and nothing else.
    let reopened = Outbox::open(OutboxConfig::new(&outbox_dir)).unwrap();
    let held: Vec<RecordId> = reopened.records().iter().map(|r| r.id).collect();
    assert_eq!(held, reported);
    drop(reopened);

    let emu = emulator(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen_on(&port),
    );
    let second = client(addr, OutboxConfig::new(&outbox_dir));
    tokio::time::timeout(WAIT, async {
        for id in &reported {
            second.delivered(*id).await.unwrap();
        }
    })
    .await
    .expect("delivered in time");
    let mut delivered: Vec<String> = records_of(&emu, RecordKind::BinaryLog)
        .iter()
        .map(|r| {
            let bytes = support::stored_bytes(&emu, r);
            String::from_utf8_lossy(&bytes[bytes.len() - 9..]).into_owned()
        })
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["log-00000", "log-00002", "log-00003"]);
    second.shutdown().await;
}

#[tokio::test]
async fn an_fsync_eio_on_the_segment_fails_that_batch_and_the_next_enqueue_is_delivered() {
    a_fault_fails_one_batch_only("outbox-sync-segment", "1*return(eio)", |err| {
        let text = chain(err);
        assert!(text.contains("cannot sync outbox file"), "{text}");
        assert!(text.contains("seg-"), "names the segment: {text}");
        assert!(text.contains("os error 5"), "{text}");
        assert!(!err.is_disk_full(), "{text}");
    })
    .await;
}

#[tokio::test]
async fn a_write_enospc_fails_that_batch_and_the_next_enqueue_is_delivered() {
    a_fault_fails_one_batch_only("outbox-write-segment", "1*return(enospc)", |err| {
        let text = chain(err);
        assert!(text.contains("cannot append to outbox file"), "{text}");
        assert!(err.is_disk_full(), "{text}");
    })
    .await;
}

/// The failure that used to stop the outbox until a restart: a new
/// segment whose directory sync failed left its file behind, and every
/// later append failed with "File exists".
#[tokio::test]
async fn an_fsync_eio_on_the_directory_of_a_new_segment_fails_that_batch_only() {
    let _one_at_a_time = FAULTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(OutboxConfig::new(dir.path())).unwrap();
    let port = free_port();
    let addr = port.addr();
    drop(outbox);
    let client = client(addr, OutboxConfig::new(dir.path()));
    {
        let _fault = fail::FailGuard::new("sync-dir", "1*return(eio)").unwrap();
        let err = enqueue(&client, 0).await.unwrap_err();
        let text = chain(&err);
        assert!(text.contains("cannot sync outbox file"), "{text}");
        assert!(text.contains("os error 5"), "{text}");
    }
    // The file whose name may not be on disk is gone, unused.
    assert!(segment_names(dir.path()).is_empty());
    let mut reported = Vec::new();
    for n in 1..4 {
        reported.push(enqueue(&client, n).await.unwrap());
    }
    assert_eq!(segment_names(dir.path()), ["seg-0000000000000002.log"]);
    client.shutdown().await;
    drop(client);
    let reopened = Outbox::open(OutboxConfig::new(dir.path())).unwrap();
    let held: Vec<RecordId> = reopened.records().iter().map(|r| r.id).collect();
    assert_eq!(held, reported);
}

/// After a failed fsync the segment is sealed: the records synced into it
/// before stay, and later batches go to a fresh segment.
#[tokio::test]
async fn after_a_failed_fsync_appends_move_to_a_fresh_segment() {
    let _one_at_a_time = FAULTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(closed_addr(), OutboxConfig::new(dir.path()));
    let kept = enqueue(&client, 0).await.unwrap();
    let syncs = Arc::new(AtomicUsize::new(0));
    {
        let _fault = fail::FailGuard::new("outbox-sync-segment", "1*return(eio)").unwrap();
        enqueue(&client, 1).await.unwrap_err();
    }
    {
        let counted = syncs.clone();
        let _count = fail::FailGuard::with_callback("outbox-sync-segment", move || {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        let after = enqueue(&client, 2).await.unwrap();
        assert!(after > kept);
    }
    assert_eq!(syncs.load(Ordering::SeqCst), 1, "the new batch was synced");
    assert_eq!(
        segment_names(dir.path()),
        ["seg-0000000000000001.log", "seg-0000000000000002.log"]
    );
    // The old segment holds the first record whole, not the failed batch.
    let first = std::fs::read(dir.path().join("seg-0000000000000001.log")).unwrap();
    assert!(
        first.ends_with(b"log-00000"),
        "cut back to its last synced record"
    );
    client.shutdown().await;
}

/// Counts the hits of fault point `name` while the guard lives.
fn count_hits(name: &str) -> (Arc<AtomicUsize>, fail::FailGuard) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let guard = fail::FailGuard::with_callback(name, move || {
        counted.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    (hits, guard)
}

/// Acks are synced once `ack_sync_every` of them wait, long before the
/// interval, and the acks file a delivery creates is synced into the
/// directory before any ack in it counts.
#[tokio::test]
async fn acks_are_synced_once_enough_of_them_wait() {
    let _one_at_a_time = FAULTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let config = OutboxConfig::new(dir.path())
        .ack_sync_every(3)
        .ack_sync_interval(Duration::from_secs(3600));
    let client = client(emu.addr(), config);
    let (ack_syncs, _acks) = count_hits("outbox-sync-acks");
    let (dir_syncs, _dirs) = count_hits("sync-dir");

    let first = enqueue(&client, 0).await.unwrap();
    assert_eq!(dir_syncs.load(Ordering::SeqCst), 1, "the new segment");
    tokio::time::timeout(WAIT, client.delivered(first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dir_syncs.load(Ordering::SeqCst), 2, "then its acks file");
    let second = enqueue(&client, 1).await.unwrap();
    tokio::time::timeout(WAIT, client.delivered(second))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ack_syncs.load(Ordering::SeqCst),
        0,
        "2 acks wait, 3 are needed"
    );

    let third = enqueue(&client, 2).await.unwrap();
    tokio::time::timeout(WAIT, client.delivered(third))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack_syncs.load(Ordering::SeqCst), 1, "synced at the third");
    client.shutdown().await;
}

/// An ack is synced within `ack_sync_interval` even when no other follows.
#[tokio::test]
async fn an_ack_is_synced_within_the_interval() {
    let _one_at_a_time = FAULTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let config = OutboxConfig::new(dir.path())
        .ack_sync_every(1000)
        .ack_sync_interval(Duration::from_millis(50));
    let client = client(emu.addr(), config);
    let (synced, mut syncs) = tokio::sync::mpsc::unbounded_channel();
    let _acks = fail::FailGuard::with_callback("outbox-sync-acks", move || {
        let _ = synced.send(());
    })
    .unwrap();
    let id = enqueue(&client, 0).await.unwrap();
    tokio::time::timeout(WAIT, client.delivered(id))
        .await
        .unwrap()
        .unwrap();
    // Nothing else happens: no append, no ack, no shutdown.
    tokio::time::timeout(WAIT, syncs.recv())
        .await
        .expect("the ack is synced once its interval is over")
        .unwrap();
    client.shutdown().await;
}

/// A new outbox directory is synced into its parent, and each new parent
/// into its own, before `open` returns; if a sync fails, so does `open`.
#[tokio::test]
async fn a_new_outbox_directory_is_synced_up_to_one_that_existed_before_open_returns() {
    let _one_at_a_time = FAULTS.lock().await;
    let root = tempfile::tempdir().unwrap();
    // Fault points read their configuration at their first use (in any
    // open): that must not wipe the one set below.
    drop(Outbox::open(OutboxConfig::new(root.path().join("warm-up"))).unwrap());

    {
        let (dir_syncs, _dirs) = count_hits("sync-dir");
        let outbox = Outbox::open(OutboxConfig::new(root.path().join("a/b/outbox"))).unwrap();
        // b (holding outbox), a (holding b), the root (holding a).
        assert_eq!(dir_syncs.load(Ordering::SeqCst), 3);
        drop(outbox);
    }
    let _fault = fail::FailGuard::new("sync-dir", "return(eio)").unwrap();
    let err = Outbox::open(OutboxConfig::new(root.path().join("c/outbox"))).unwrap_err();
    let text = chain(&err);
    assert!(text.contains("cannot create outbox file"), "{text}");
    assert!(text.contains("os error 5"), "{text}");
}

/// An ack that cannot be written costs a second delivery after a restart,
/// never a record; the acks after it still count.
#[tokio::test]
async fn a_failed_ack_write_means_sent_again_after_a_restart_not_lost() {
    let _one_at_a_time = FAULTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = port.addr();
    let client = client(addr, OutboxConfig::new(dir.path()));
    let unacked = enqueue(&client, 0).await.unwrap();
    let _emu;
    {
        let _fault = fail::FailGuard::new("outbox-write-acks", "1*return(eio)").unwrap();
        // Only now can it be delivered (and acknowledged).
        _emu = emulator(
            EmulatorConfig::new(CUSTOMER)
                .plaintext(true)
                .listen_on(&port),
        );
        tokio::time::timeout(WAIT, client.delivered(unacked))
            .await
            .unwrap()
            .unwrap();
    }
    let acked = enqueue(&client, 1).await.unwrap();
    tokio::time::timeout(WAIT, client.delivered(acked))
        .await
        .unwrap()
        .unwrap();
    client.shutdown().await;
    drop(client);

    let reopened = Outbox::open(OutboxConfig::new(dir.path())).unwrap();
    let held: Vec<RecordId> = reopened.records().iter().map(|r| r.id).collect();
    assert_eq!(
        held,
        [unacked],
        "only the record whose ack was lost is back"
    );
}
