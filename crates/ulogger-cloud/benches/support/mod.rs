//! What the benchmarks share: the ids they use, the logs they send, and
//! how they report figures.
#![allow(dead_code, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, TlsConfiguration, Transport,
};
use ulogger_cloud::wire::{build_log, header_len, DeviceInfo, LogHeader};
use ulogger_emulator::CertPaths;

pub const CUSTOMER: u32 = 4242;
pub const APP: u32 = 7;
/// Bytes of every log sent (header included).
pub const LOG_SIZE: usize = 4 * 1024;
/// Where the cloud's records go when it exists: the file the cloud writes
/// before answering is otherwise disk latency, not the client's.
pub const SHM: &str = "/dev/shm";
/// mosquitto.conf lines beyond the fixture's: no Nagle delays on the
/// broker's side, and no dropping of the cloud's backlog (the default
/// 1,000 queued messages would drop logs the cloud could not take yet,
/// which would only make the verified count meaningless).
pub const MOSQUITTO_EXTRA: &str = "set_tcp_nodelay true\nmax_queued_messages 0";

pub fn device(serial: &str) -> DeviceInfo {
    DeviceInfo::new(APP, serial, "bench-board", "v1.0.0", "abc1234")
}

/// A valid version-4 log of exactly `LOG_SIZE` bytes carrying `token`,
/// numbered `i` in its anchor tick.
pub fn valid_log(i: usize, token: u32) -> Bytes {
    let mut header = LogHeader::new(4).expect("version 4");
    header.session_token = token;
    header.anchor_tick = Some(i as u32);
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(1_700_000_000_000_000 + i as u64);
    let header_len = header_len(4).expect("version 4 has a header");
    let data: Vec<u8> = (0..LOG_SIZE - header_len)
        .map(|j| ((i * 7 + j * 31) % 251) as u8)
        .collect();
    let log = build_log(header, &data).expect("valid log");
    assert_eq!(log.len(), LOG_SIZE);
    Bytes::from(log)
}

pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// Unacknowledged publishes per connection, for the client and the
/// baselines alike (the platform's limit).
pub const MAX_INFLIGHT: u16 = 100;

/// A connected plain rumqttc client to the broker on `port`: mutual TLS
/// with `certs`, TCP_NODELAY, [`MAX_INFLIGHT`] in flight, `capacity`
/// queued requests.
pub async fn raw_client(
    certs: &CertPaths,
    port: u16,
    name: &str,
    capacity: usize,
) -> Result<(AsyncClient, EventLoop), String> {
    let mut options = MqttOptions::new(format!("cust-{CUSTOMER}-raw-{name}"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_inflight(MAX_INFLIGHT);
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    let tls = certs
        .client_config()
        .map_err(|e| format!("raw TLS config: {e}"))?;
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (raw, mut events) = AsyncClient::new(options, capacity);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((raw, events)),
            Ok(_) => {}
            Err(e) => return Err(format!("raw client {name} connecting: {e}")),
        }
    }
}

/// Disconnects a rumqttc client cleanly: drives its event loop until the
/// DISCONNECT went out.
pub async fn disconnect(raw: &AsyncClient, events: &mut EventLoop) {
    if raw.disconnect().await.is_err() {
        return;
    }
    for _ in 0..16 {
        match events.poll().await {
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
