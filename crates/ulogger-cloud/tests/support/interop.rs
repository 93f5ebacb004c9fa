//! mosquitto with mutual TLS and the emulator's cloud side attached to it,
//! for the interoperability tests.

use ulogger_cloud::MqttConfig;
use ulogger_emulator::testing::Mosquitto;
use ulogger_emulator::{AttachTo, CertPaths, Emulator, EmulatorConfig};

use super::{init_tracing, CUSTOMER};

/// A running mosquitto, the emulator's cloud attached to it, and client
/// settings that reach it.
pub struct Setup {
    pub emulator: Emulator,
    pub config: MqttConfig,
    pub certs: CertPaths,
    pub port: u16,
    _mosquitto: Mosquitto,
    _dir: tempfile::TempDir,
}

/// mosquitto with mutual TLS on certificates made for the test, and the
/// emulator's cloud side attached to it; `None` if mosquitto is missing
/// outside CI.
pub fn setup(group: Option<u32>, prefix: &str) -> Option<Setup> {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = CertPaths::generate(dir.path(), CUSTOMER).unwrap();
    let mosquitto = Mosquitto::mutual_tls(&certs)?;
    let port = mosquitto.addr().port();
    let emulator = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .group_id(group.unwrap_or(0))
            .legacy_topics(group.is_none())
            .topic_prefix(prefix)
            .attach(AttachTo::new("127.0.0.1", port).mutual_tls(
                &certs.ca_cert,
                &certs.client_cert,
                &certs.client_key,
            )),
    )
    .expect("the cloud side attaches to mosquitto");
    let mut config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(port)
        .topic_prefix(prefix)
        .ca_file(&certs.ca_cert)
        .client_cert(&certs.client_cert, &certs.client_key);
    config = match group {
        Some(group) => config.group_id(group),
        None => config.legacy_topics(),
    };
    Some(Setup {
        emulator,
        config,
        certs,
        port,
        _mosquitto: mosquitto,
        _dir: dir,
    })
}
