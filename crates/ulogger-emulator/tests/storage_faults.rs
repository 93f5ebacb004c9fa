//! The emulator acknowledges only what it stored and synced: with a write
//! or an fsync of the index, a payload or a directory failing (EIO, or
//! ENOSPC for a write), the message gets no PUBACK, the connection closes
//! (the client sends it again), and the index holds no line for it, not
//! even a torn one; once storage works again the message sent again is
//! stored and acknowledged, and a restart reads back exactly what was.
//!
//! One test in this binary: fault points are process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rumqttc::{Event, Packet, QoS};
use serde_json::json;
use support::device::APP;
use support::{client_options, TestClient, CUSTOMER, SOON};
use ulogger_cloud::wire::Topics;
use ulogger_emulator::{Emulator, EmulatorConfig, PlatformLimits, Record};

fn start(dir: &std::path::Path) -> Emulator {
    Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .limits(PlatformLimits::unlimited())
            .data_dir(dir),
    )
    .unwrap()
}

async fn device_client(emu: &Emulator, suffix: &str) -> TestClient {
    TestClient::connect(client_options(
        emu.addr(),
        None,
        &format!("cust-{CUSTOMER}-{suffix}"),
    ))
    .await
}

fn metrics(n: u32) -> String {
    json!({"device_serial": "S", "metrics": [{"name": "n", "value": n}]}).to_string()
}

/// Publishes at QoS 1 and asserts that no PUBACK comes: the connection
/// closes instead.
async fn refused(client: &mut TestClient, topic: &str, payload: String) {
    client
        .client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    loop {
        match client
            .next_event(SOON)
            .await
            .expect("the connection closes")
        {
            Ok(Event::Incoming(Packet::PubAck(_))) => panic!("a PUBACK for a message not stored"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

#[tokio::test]
async fn a_failed_write_or_fsync_of_what_is_stored_withholds_the_puback() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path());
    let topic = Topics::new("", CUSTOMER, Some(emu.group_id()))
        .unwrap()
        .metrics(APP)
        .unwrap();
    let mut client = device_client(&emu, "gw").await;
    client
        .publish(&topic, QoS::AtLeastOnce, false, metrics(0))
        .await;
    assert_eq!(emu.records().len(), 1);

    let faults = [
        ("emulator-write-index", "1*return(enospc)"),
        ("emulator-sync-index", "1*return(eio)"),
        ("emulator-write-file", "1*return(enospc)"),
        ("emulator-sync-file", "1*return(eio)"),
    ];
    for (n, (point, action)) in faults.iter().enumerate() {
        fail::cfg(*point, action).unwrap();
        let mut client = device_client(&emu, &format!("f{n}")).await;
        refused(&mut client, &topic, metrics(100 + n as u32)).await;
        fail::remove(*point);
        assert_eq!(emu.records().len(), 1, "{point}: {:?}", emu.records());
        let lines = Record::read_index(emu.index_path()).unwrap();
        assert_eq!(
            lines.len(),
            1,
            "{point}: the index holds only what was stored"
        );
    }
    // A directory fsync fails while the first payload of a new kind makes
    // its folder: not acknowledged either.
    fail::cfg("emulator-sync-dir", "1*return(eio)").unwrap();
    let events = Topics::new("", CUSTOMER, Some(emu.group_id()))
        .unwrap()
        .events(APP)
        .unwrap();
    let mut client = device_client(&emu, "dir").await;
    let event = json!({"device_serial": "S", "events": [{"type": "boot"}]}).to_string();
    refused(&mut client, &events, event.clone()).await;
    fail::remove("emulator-sync-dir");
    assert_eq!(emu.records().len(), 1);

    // Storage works again: the messages sent again are stored and acked.
    let mut client = device_client(&emu, "again").await;
    client
        .publish(&topic, QoS::AtLeastOnce, false, metrics(1))
        .await;
    client
        .publish(&events, QoS::AtLeastOnce, false, event)
        .await;
    assert_eq!(emu.records().len(), 3);
    let index = emu.index_path();
    emu.shutdown().unwrap();

    // A restart reads back exactly what was acknowledged.
    let lines = Record::read_index(&index).unwrap();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for record in &lines {
        let file = dir.path().join(record.file.as_ref().unwrap());
        assert!(file.is_file(), "{file:?}");
    }
    let emu = start(dir.path());
    let mut client = device_client(&emu, "after").await;
    client
        .publish(&topic, QoS::AtLeastOnce, false, metrics(2))
        .await;
    assert_eq!(Record::read_index(emu.index_path()).unwrap().len(), 4);
}
