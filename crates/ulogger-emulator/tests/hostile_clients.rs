//! Clients that hold on to the emulator's resources: silent ones (keep-alive
//! 0 is not forever) and ones that stop in the middle of a packet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{RawClient, CUSTOMER, SOON};
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
