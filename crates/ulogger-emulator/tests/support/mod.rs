//! Helpers shared by the emulator's integration tests: brokers under test
//! (the emulator and, when installed, mosquitto), an ordinary MQTT client
//! (rumqttc) with its events in a channel, and a raw socket client for
//! what rumqttc will not do (stay silent past its keep-alive).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use ulogger_emulator::testing::Mosquitto;
use ulogger_emulator::{CertPaths, Emulator, EmulatorConfig};

/// Generous bound for things that should happen at once.
pub const SOON: Duration = Duration::from_secs(5);
/// How long to wait to conclude that something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

pub const CUSTOMER: u32 = 42;

/// A broker a test talks to, with how to reach it.
pub struct BrokerUnderTest {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The PKI behind `tls`.
    pub certs: Option<CertPaths>,
    pub emulator: Option<Emulator>,
    _mosquitto: Option<(Mosquitto, Option<tempfile::TempDir>)>,
}

impl BrokerUnderTest {
    pub fn emulator(plaintext: bool) -> BrokerUnderTest {
        let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(plaintext)).unwrap();
        let tls = emulator.certs().map(|c| c.client_config().unwrap());
        BrokerUnderTest {
            name: if plaintext {
                "emulator (plaintext)"
            } else {
                "emulator (TLS)"
            },
            addr: emulator.addr(),
            tls,
            certs: emulator.certs().cloned(),
            emulator: Some(emulator),
            _mosquitto: None,
        }
    }

    /// `None` when mosquitto is not installed (outside CI).
    pub fn mosquitto(plaintext: bool) -> Option<BrokerUnderTest> {
        if plaintext {
            let mosquitto = Mosquitto::plaintext()?;
            Some(BrokerUnderTest {
                name: "mosquitto (plaintext)",
                addr: mosquitto.addr(),
                tls: None,
                certs: None,
                emulator: None,
                _mosquitto: Some((mosquitto, None)),
            })
        } else {
            let dir = tempfile::tempdir().unwrap();
            let certs = CertPaths::generate(dir.path(), CUSTOMER).unwrap();
            let mosquitto = Mosquitto::mutual_tls(&certs)?;
            Some(BrokerUnderTest {
                name: "mosquitto (TLS)",
                addr: mosquitto.addr(),
                tls: Some(certs.client_config().unwrap()),
                certs: Some(certs),
                emulator: None,
                _mosquitto: Some((mosquitto, Some(dir))),
            })
        }
    }

    /// The emulator over TLS and plaintext, and mosquitto likewise when
    /// it is installed.
    pub fn all() -> Vec<BrokerUnderTest> {
        let mut brokers = vec![
            BrokerUnderTest::emulator(false),
            BrokerUnderTest::emulator(true),
        ];
        brokers.extend(BrokerUnderTest::mosquitto(false));
        brokers.extend(BrokerUnderTest::mosquitto(true));
        brokers
    }

    /// The emulator and mosquitto, plaintext only (for timing tests).
    pub fn plaintext() -> Vec<BrokerUnderTest> {
        let mut brokers = vec![BrokerUnderTest::emulator(true)];
        brokers.extend(BrokerUnderTest::mosquitto(true));
        brokers
    }

    pub fn options(&self, client_suffix: &str) -> MqttOptions {
        client_options(
            self.addr,
            self.tls.clone(),
            &format!("cust-{CUSTOMER}-{client_suffix}"),
        )
    }

    pub async fn connect(&self, client_suffix: &str) -> TestClient {
        TestClient::connect(self.options(client_suffix)).await
    }
}

pub fn client_options(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: &str,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    if let Some(tls) = tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    options
}

/// An rumqttc client whose event loop runs in a task; events arrive on a
/// channel. The loop stops at the first error (no reconnection), so a
/// closed connection is observable.
pub struct TestClient {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    task: tokio::task::JoinHandle<()>,
    /// Messages that arrived while waiting for something else.
    held: std::collections::VecDeque<rumqttc::Publish>,
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestClient {
    /// Starts the client without waiting for anything.
    pub fn start(options: MqttOptions) -> TestClient {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    return;
                }
            }
        });
        TestClient {
            client,
            events,
            task,
            held: std::collections::VecDeque::new(),
        }
    }

    /// Starts the client and waits for a successful CONNACK.
    pub async fn connect(options: MqttOptions) -> TestClient {
        let mut client = TestClient::start(options);
        match client.connack().await {
            Ok(()) => client,
            Err(e) => panic!("connection failed: {e}"),
        }
    }

    /// Waits for the CONNACK; the error when the connection fails instead.
    pub async fn connack(&mut self) -> Result<(), ConnectionError> {
        loop {
            match self.next_event(SOON).await {
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => panic!("no CONNACK within {SOON:?}"),
            }
        }
    }

    pub async fn next_event(&mut self, wait: Duration) -> Option<Result<Event, ConnectionError>> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next incoming packet matching `pred`, within `wait`; fails the
    /// test on a connection error.
    pub async fn incoming(
        &mut self,
        wait: Duration,
        pred: impl Fn(&Packet) -> bool,
    ) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Ok(Event::Incoming(packet)) if pred(&packet) => return Some(packet),
                // A message may arrive before the PUBACK of the publish
                // that caused it (a boot reply): keep it for next_publish.
                Ok(Event::Incoming(Packet::Publish(publish))) => self.held.push_back(publish),
                Ok(_) => {}
                Err(e) => panic!("connection failed while waiting: {e}"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> rumqttc::SubAck {
        self.client.subscribe(filter, qos).await.unwrap();
        match self
            .incoming(SOON, |p| matches!(p, Packet::SubAck(_)))
            .await
        {
            Some(Packet::SubAck(ack)) => ack,
            _ => panic!("no SUBACK for {filter}"),
        }
    }

    /// Publishes; at QoS 1 waits for the PUBACK.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .unwrap();
        if qos == QoS::AtLeastOnce {
            self.incoming(SOON, |p| matches!(p, Packet::PubAck(_)))
                .await
                .unwrap_or_else(|| panic!("no PUBACK for {topic}"));
        } else {
            self.outgoing(|o| matches!(o, Outgoing::Publish(_))).await;
        }
    }

    /// Waits until the event loop has written a packet matching `pred`.
    pub async fn outgoing(&mut self, pred: impl Fn(&Outgoing) -> bool) {
        loop {
            match self.next_event(SOON).await {
                Some(Ok(Event::Outgoing(o))) if pred(&o) => return,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("packet not sent within {SOON:?}"),
            }
        }
    }

    pub async fn next_publish(&mut self, wait: Duration) -> Option<rumqttc::Publish> {
        if let Some(held) = self.held.pop_front() {
            return Some(held);
        }
        match self
            .incoming(wait, |p| matches!(p, Packet::Publish(_)))
            .await?
        {
            Packet::Publish(p) => Some(p),
            _ => None,
        }
    }

    /// Waits for the connection to fail or close; returns the error, or
    /// `None` when it is still up after `wait`. Other events are skipped.
    pub async fn closed(&mut self, wait: Duration) -> Option<ConnectionError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Ok(_) => {}
                Err(e) => return Some(e),
            }
        }
    }
}

/// A bare TCP MQTT client driven packet by packet (plaintext only).
pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, client_id: &str, keep_alive: u16) -> RawClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut raw = RawClient {
            stream,
            buf: BytesMut::new(),
        };
        let mut connect = rumqttc::Connect::new(client_id);
        connect.keep_alive = keep_alive;
        raw.send(Packet::Connect(connect)).await;
        match raw.read(SOON).await {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "CONNACK");
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    /// A client over `stream`, which has not necessarily sent CONNECT.
    pub fn from_stream(stream: TcpStream) -> RawClient {
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next packet, or `None` on close or after `wait`.
    pub async fn read(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match Packet::read(&mut self.buf, 1024 * 1024) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from broker: {e}"),
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// True when the broker closes the connection within `wait` (packets
    /// it sends before are skipped).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut scratch = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// A simulated device's identity and the messages it sends.
pub mod device {
    use ulogger_cloud::wire::{build_log, BootRequest, LogHeader};

    pub const APP: u32 = 7;
    pub const SERIAL: &str = "SN-0001";

    pub fn boot_payload(serial: &str) -> Vec<u8> {
        BootRequest {
            device_type: "test_board".into(),
            git: "abcdef0".into(),
            serial: serial.into(),
            version: "v1.2.3".into(),
        }
        .to_payload()
    }

    /// A valid version-4 log carrying `token`.
    pub fn log(token: u32, data: &[u8]) -> Vec<u8> {
        let mut header = LogHeader::new(4).unwrap();
        header.session_token = token;
        build_log(header, data).unwrap()
    }
}
