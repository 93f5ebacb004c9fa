//! Broker fixtures (feature `broker`): the ids and logs the client's
//! benches use, mosquitto with the emulator's cloud attached over mutual
//! TLS, an emulator alone with the platform's limits off, and plain
//! rumqttc clients as baselines.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, TlsConfiguration, Transport,
};
use tempfile::TempDir;
use ulogger_emulator::testing::{find_mosquitto, Mosquitto, MosquittoTls};
use ulogger_emulator::{AttachTo, CertPaths, Emulator, EmulatorConfig, PlatformLimits};
use ulogger_wire::{build_log, header_len, DeviceInfo, LogHeader};

/// The customer id of every bench.
pub const CUSTOMER: u32 = 4242;
/// The application id of the benches' devices.
pub const APP: u32 = 7;
/// Bytes of every log [`valid_log`] makes (header included).
pub const LOG_SIZE: usize = 4 * 1024;
/// Where the cloud's records go when it exists: the file the cloud writes
/// before answering is otherwise disk latency, not the client's.
pub const SHM: &str = "/dev/shm";
/// mosquitto.conf lines beyond the fixture's: no Nagle delays on the
/// broker's side, and no dropping of the cloud's backlog (the default
/// 1,000 queued messages would drop logs the cloud could not take yet,
/// which would only make the verified count meaningless).
pub const MOSQUITTO_EXTRA: &str = "set_tcp_nodelay true\nmax_queued_messages 0";
/// Unacknowledged publishes per connection, for the client and the
/// baselines alike (the platform's limit).
pub const MAX_INFLIGHT: u16 = 100;

/// A bench device of [`APP`] named `serial`.
pub fn device(serial: &str) -> DeviceInfo {
    DeviceInfo::new(APP, serial, "bench-board", "v1.0.0", "abc1234")
}

/// A valid version-4 log of exactly [`LOG_SIZE`] bytes carrying `token`,
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

/// The mosquitto binary, or a panic saying that the `bench` benchmark
/// needs it and how to install it (benches never skip).
pub fn require_mosquitto(bench: &str) -> PathBuf {
    find_mosquitto().unwrap_or_else(|| {
        panic!(
            "the {bench} benchmark needs mosquitto and found none \
             (install it: apt-get install -y mosquitto; or set MOSQUITTO=/path/to/mosquitto)"
        )
    })
}

/// The first line of `mosquitto -h` (its version).
pub fn mosquitto_version(binary: &std::path::Path) -> String {
    std::process::Command::new(binary)
        .arg("-h")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "version unknown".to_owned())
}

/// A fresh directory in [`SHM`] (memory), if there is one.
pub fn shm_dir() -> Option<TempDir> {
    tempfile::tempdir_in(SHM).ok()
}

/// mosquitto over mutual TLS (with [`MOSQUITTO_EXTRA`]) and the emulator's
/// cloud attached to it as an ordinary client, its records in memory
/// where it can ([`SHM`], else the emulator's own temporary directory,
/// which it does not fsync): the platform's shape, with the broker not
/// ours. Dropping it stops the cloud, then the broker (the fields'
/// order), then removes the records.
pub struct MosquittoCloud {
    /// The cloud side (answers boot registrations, verifies logs).
    pub emulator: Emulator,
    /// The broker the clients under test connect to.
    pub mosquitto: Mosquitto,
    /// The certificates of the broker and of every client.
    pub certs: CertPaths,
    _cloud_dir: Option<TempDir>,
}

impl MosquittoCloud {
    /// Generates certificates in `certs_dir` and starts both; panics if
    /// either cannot start (call [`require_mosquitto`] first for a clear
    /// message when mosquitto is missing).
    pub fn start(certs_dir: &std::path::Path) -> MosquittoCloud {
        let certs = CertPaths::generate(certs_dir, CUSTOMER).expect("certificates generated");
        let mosquitto =
            Mosquitto::start_with_config(MosquittoTls::Mutual(certs.clone()), MOSQUITTO_EXTRA)
                .expect("mosquitto was found before, so it starts or panics");
        let cloud_dir = shm_dir();
        let attach = AttachTo::new("127.0.0.1", mosquitto.addr().port()).mutual_tls(
            &certs.ca_cert,
            &certs.client_cert,
            &certs.client_key,
        );
        let mut cloud = EmulatorConfig::new(CUSTOMER).attach(attach);
        if let Some(dir) = &cloud_dir {
            cloud = cloud.data_dir(dir.path());
        }
        let emulator = Emulator::start(cloud).unwrap_or_else(|e| {
            panic!("the emulator's cloud side cannot attach to mosquitto: {e}")
        });
        MosquittoCloud {
            emulator,
            mosquitto,
            certs,
            _cloud_dir: cloud_dir,
        }
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.mosquitto.addr().port()
    }
}

/// The emulator alone (its own broker, mutual TLS) with `limits`, its
/// records in memory where it can ([`SHM`]). Dropping it stops the
/// emulator, then removes its records.
pub struct LocalCloud {
    /// The emulator.
    pub emulator: Emulator,
    _cloud_dir: Option<TempDir>,
}

impl LocalCloud {
    /// Starts it with `limits` (often [`PlatformLimits::unlimited`]: the
    /// client under test is not paced).
    pub fn start(limits: PlatformLimits) -> LocalCloud {
        let cloud_dir = shm_dir();
        let mut config = EmulatorConfig::new(CUSTOMER).limits(limits);
        if let Some(dir) = &cloud_dir {
            config = config.data_dir(dir.path());
        }
        LocalCloud {
            emulator: Emulator::start(config).expect("the emulator starts"),
            _cloud_dir: cloud_dir,
        }
    }

    /// The emulator's certificates (it runs with TLS).
    pub fn certs(&self) -> &CertPaths {
        self.emulator.certs().expect("TLS is on")
    }

    /// Its broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.emulator.addr().port()
    }

    /// Stops the emulator, panicking if any of its tasks had panicked,
    /// then removes its records.
    pub fn shutdown(self) {
        self.emulator
            .shutdown()
            .expect("the emulator ran without a panic");
    }
}

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
