//! Clients that hold on to the emulator's resources: silent ones (keep-alive
//! 0 is not forever), ones that never send their CONNECT and ones that stop
//! in the middle of a packet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{Packet, QoS};
use support::{RawClient, CUSTOMER, SOON};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use ulogger_emulator::{Emulator, EmulatorConfig, EmulatorError, PlatformLimits};

fn emulator(config: EmulatorConfig) -> Emulator {
    Emulator::start(config.plaintext(true)).unwrap()
}

/// Connects with `keep_alive` and returns how long the silent connection
/// lasted before the emulator closed it.
async fn silent_for(emulator: &Emulator, client_id: &str, keep_alive: u16) -> Duration {
    let mut raw = RawClient::connect(emulator.addr(), client_id, keep_alive).await;
    let connected = Instant::now();
    assert!(raw.closed_within(SOON).await, "{client_id}: never closed");
    connected.elapsed()
}

#[tokio::test]
async fn keep_alive_0_is_closed_after_one_and_a_half_times_the_longest_keep_alive() {
    let longest = Duration::from_secs(1);
    let emulator = emulator(
        EmulatorConfig::new(CUSTOMER).limits(PlatformLimits::aws().max_keep_alive(longest)),
    );
    let lasted = silent_for(&emulator, "cust-42-keepalive-0", 0).await;
    assert!(
        lasted >= longest * 3 / 2 - Duration::from_millis(100),
        "closed after {lasted:?}"
    );
}

#[tokio::test]
async fn a_keep_alive_over_the_longest_gets_the_longest() {
    let longest = Duration::from_secs(1);
    let emulator = emulator(
        EmulatorConfig::new(CUSTOMER).limits(PlatformLimits::aws().max_keep_alive(longest)),
    );
    let lasted = silent_for(&emulator, "cust-42-keepalive-600", 600).await;
    assert!(
        lasted >= longest * 3 / 2 - Duration::from_millis(100),
        "closed after {lasted:?}"
    );
}

#[tokio::test]
async fn keep_alive_1_is_closed_after_one_and_a_half_seconds() {
    let emulator = emulator(EmulatorConfig::new(CUSTOMER));
    let lasted = silent_for(&emulator, "cust-42-keepalive-1", 1).await;
    assert!(
        lasted >= Duration::from_millis(1400) && lasted < Duration::from_millis(2500),
        "closed after {lasted:?}"
    );
}

#[test]
fn a_zero_longest_keep_alive_is_refused_at_start() {
    let config = EmulatorConfig::new(CUSTOMER)
        .plaintext(true)
        .limits(PlatformLimits::aws().max_keep_alive(Duration::ZERO));
    match Emulator::start(config) {
        Err(EmulatorError::InvalidConfig { field, .. }) => {
            assert_eq!(field, "limits.max_keep_alive");
        }
        other => panic!("{:?}", other.err()),
    }
}

/// The shortened stall timeout of these tests.
const STALL: Duration = Duration::from_millis(500);

/// A PUBLISH of `payload` bytes, encoded.
fn publish_bytes(payload: usize) -> BytesMut {
    let mut publish = rumqttc::Publish::new("metrics/v0/42/7", QoS::AtLeastOnce, vec![1; payload]);
    publish.pkid = 1;
    let mut out = BytesMut::new();
    Packet::Publish(publish)
        .write(&mut out, usize::MAX)
        .unwrap();
    out
}

/// Waits for the emulator to close `stream`; returns how long it took.
async fn closed_after(stream: TcpStream) -> Duration {
    let mut raw = RawClient::from_stream(stream);
    let started = Instant::now();
    assert!(raw.closed_within(SOON).await, "never closed");
    started.elapsed()
}

#[tokio::test]
async fn a_client_that_stops_halfway_through_a_publish_is_closed() {
    let emulator = emulator(EmulatorConfig::new(CUSTOMER).stall_timeout(STALL));
    let mut raw = RawClient::connect(emulator.addr(), "cust-42-half", 600).await;
    let mut bytes = publish_bytes(100 * 1024);
    bytes.truncate(bytes.len() / 2);
    raw.stream.write_all(&bytes).await.unwrap();
    let started = Instant::now();
    assert!(raw.closed_within(SOON).await, "a stalled client stayed");
    assert!(started.elapsed() >= STALL - Duration::from_millis(100));
    // Others are served as before.
    let mut other = RawClient::connect(emulator.addr(), "cust-42-whole", 600).await;
    other.send(Packet::PingReq).await;
    assert!(matches!(other.read(SOON).await, Some(Packet::PingResp)));
}

#[tokio::test]
async fn a_client_that_keeps_sending_its_packet_is_not_stalled() {
    let emulator = emulator(
        EmulatorConfig::new(CUSTOMER)
            .stall_timeout(STALL)
            .limits(PlatformLimits::unlimited()),
    );
    let mut raw = RawClient::connect(emulator.addr(), "cust-42-slow", 600).await;
    let bytes = publish_bytes(64);
    // In nine pieces, each well within the stall timeout, in all longer
    // than it.
    let pace = STALL / 5;
    for chunk in bytes.chunks(bytes.len() / 8 + 1) {
        raw.stream.write_all(chunk).await.unwrap();
        tokio::time::sleep(pace).await;
    }
    assert!(matches!(raw.read(SOON).await, Some(Packet::PubAck(_))));
}

#[tokio::test]
async fn a_connection_that_sends_no_connect_is_closed() {
    let emulator = emulator(EmulatorConfig::new(CUSTOMER).stall_timeout(STALL));
    let silent = TcpStream::connect(emulator.addr()).await.unwrap();
    let lasted = closed_after(silent).await;
    assert!(lasted >= STALL - Duration::from_millis(100), "{lasted:?}");
    let mut half = TcpStream::connect(emulator.addr()).await.unwrap();
    half.write_all(&[0x10, 40, 0, 4, b'M']).await.unwrap();
    closed_after(half).await;
}

#[test]
fn a_zero_stall_timeout_is_refused_at_start() {
    let config = EmulatorConfig::new(CUSTOMER)
        .plaintext(true)
        .stall_timeout(Duration::ZERO);
    match Emulator::start(config) {
        Err(EmulatorError::InvalidConfig { field, .. }) => assert_eq!(field, "stall_timeout"),
        other => panic!("{:?}", other.err()),
    }
}
