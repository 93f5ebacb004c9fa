//! Starting, stopping and restarting an emulator, from any context.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::TcpStream;
use std::time::Duration;

use support::{client_options, TestClient, CUSTOMER, SOON};
use ulogger_emulator::{Emulator, EmulatorConfig, EmulatorError, PortHold, Record, RecordKind};

#[test]
fn dropping_the_emulator_closes_its_port_and_removes_its_temp_dir() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER)).unwrap();
    let addr = emulator.addr();
    let dir = emulator.data_dir().to_path_buf();
    assert_ne!(addr.port(), 0, "the bound port is reported");
    assert!(dir.join("certs").join("ca.pem").is_file());
    TcpStream::connect(addr).unwrap();
    drop(emulator);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after drop"
    );
    assert!(!dir.exists(), "temporary data directory left behind");
}

#[tokio::test]
async fn dropping_inside_an_async_runtime_with_live_clients_is_clean() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let mut client =
        TestClient::connect(client_options(emulator.addr(), None, "cust-42-live")).await;
    assert_eq!(emulator.connected_clients(), ["cust-42-live"]);
    emulator.shutdown().unwrap();
    assert!(
        client.closed(SOON).await.is_some(),
        "connection outlived the emulator"
    );
}

#[test]
fn wait_for_needs_no_timer_in_the_callers_runtime() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    // A runtime without the time driver: wait_for must not need it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let found = runtime.block_on(emulator.wait_for(|_| true, Duration::from_millis(50)));
    assert!(found.is_none());
    let config = ulogger_cloud::wire::LogConfig::new(ulogger_cloud::wire::LogLevel::Info, 0, 0);
    runtime
        .block_on(emulator.push_config(1, "SN", &config))
        .unwrap();
    let found = runtime.block_on(emulator.wait_for(|r| r.kind == RecordKind::Config, SOON));
    assert!(found.is_some());
}

#[tokio::test]
async fn the_record_watcher_sees_records_in_order() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let mut watcher = emulator.watch_records();
    let config = ulogger_cloud::wire::LogConfig::new(ulogger_cloud::wire::LogLevel::Info, 0, 0);
    for serial in ["A", "B"] {
        emulator.push_config(1, serial, &config).await.unwrap();
    }
    let first = tokio::time::timeout(SOON, watcher.next()).await.unwrap();
    let second = tokio::time::timeout(SOON, watcher.next()).await.unwrap();
    assert_eq!(first.serial.as_deref(), Some("A"));
    assert_eq!(second.serial.as_deref(), Some("B"));
    assert!(watcher.drain().is_empty());
}

#[test]
fn a_persistent_data_dir_keeps_certificates_and_appends_to_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let config = || EmulatorConfig::new(CUSTOMER).data_dir(dir.path());
    let first = Emulator::start(config()).unwrap();
    let ca = std::fs::read(&first.certs().unwrap().ca_cert).unwrap();
    first
        .push_config_blocking(
            1,
            "SN",
            &ulogger_cloud::wire::LogConfig::new(ulogger_cloud::wire::LogLevel::Info, 0, 0),
        )
        .unwrap();
    drop(first);
    assert!(dir.path().exists(), "a given data directory is kept");

    let second = Emulator::start(config()).unwrap();
    assert_eq!(std::fs::read(&second.certs().unwrap().ca_cert).unwrap(), ca);
    let index = Record::read_index(second.index_path()).unwrap();
    assert_eq!(index.len(), 1, "earlier records stay in the index");
}

#[test]
fn listening_on_a_taken_port_is_a_typed_error() {
    let first = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap();
    let err = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen(first.addr()),
    )
    .unwrap_err();
    assert!(
        matches!(err, EmulatorError::Listen { addr, .. } if addr == first.addr()),
        "{err}"
    );
}

#[test]
fn a_held_port_refuses_while_no_broker_is_on_it_and_is_nobody_elses() {
    let hold = PortHold::new().unwrap();
    let addr = hold.addr();
    let refused = |why: &str| {
        let err = TcpStream::connect(addr).expect_err(why);
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{why}: {err}"
        );
    };
    let taken = |why: &str| {
        let err = std::net::TcpListener::bind(addr).expect_err(why);
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{why}: {err}");
    };
    refused("nothing listens yet");
    taken("the hold has it");
    // An emulator told only the address cannot take a held port either.
    let err = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true).listen(addr))
        .expect_err("the port is held");
    assert!(matches!(err, EmulatorError::Listen { .. }), "{err}");

    for round in 0..2 {
        let emulator = Emulator::start(
            EmulatorConfig::new(CUSTOMER)
                .plaintext(true)
                .listen_on(&hold),
        )
        .unwrap();
        assert_eq!(emulator.addr(), addr, "round {round}");
        TcpStream::connect(addr).unwrap();
        drop(emulator);
        refused("the broker went away");
        taken("the hold keeps it after the broker");
    }
}

#[test]
fn a_topic_prefix_with_a_wildcard_is_refused() {
    let err = Emulator::start(EmulatorConfig::new(CUSTOMER).topic_prefix("a/+/")).unwrap_err();
    assert!(
        matches!(
            err,
            EmulatorError::InvalidConfig {
                field: "topic_prefix",
                ..
            }
        ),
        "{err}"
    );
}
