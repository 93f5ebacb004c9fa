//! Bridge mode: the client on a connection the application holds.
//!
//! (a) An in-memory link with a fake cloud behind it (written here against
//! the public `MqttLink` trait) drives registration, uploads through the
//! outbox, telemetry and a log-configuration stream, and drops the link
//! with a publish in flight and the broker's session lost.
//! (b) The shipped rumqttc adapter against the emulator (mutual TLS) and
//! against mosquitto with mutual TLS and a bridge-style topic prefix; the
//! latter fails rather than skips under `CI=true` without mosquitto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::sync::{mpsc, oneshot, watch};
use ulogger_cloud::wire::{LogConfig, LogLevel, Metric};
use ulogger_cloud::{
    Client, Error, ErrorKind, IncomingMessage, LinkFuture, LinkInbox, LogConfigs, MqttConfig,
    MqttLink, OutboxConfig, Pacing, RumqttcLink,
};
use ulogger_emulator::{CertPaths, Emulator, RecordKind, Verdict, WithholdPuback};

// ---------------------------------------------------------------------
// (a) an in-memory link to a fake cloud
// ---------------------------------------------------------------------

/// A broker and cloud in memory: answers boot registrations, stores what
/// is published, keeps the last configuration pushed to a topic as its
/// retained message, and can hold PUBACKs and drop the connection.
#[derive(Clone, Default)]
struct FakeCloud {
    state: Arc<Mutex<FakeState>>,
    /// Counts SUBSCRIBEs, for the test to wait on.
    subscribes: Arc<watch::Sender<usize>>,
    /// Counts publishes held without a PUBACK, for the test to wait on.
    held: Arc<watch::Sender<usize>>,
}

#[derive(Default)]
struct FakeState {
    inbox: Option<LinkInbox>,
    up: bool,
    subscribed: HashMap<String, usize>,
    retained: HashMap<String, Bytes>,
    stored: Vec<(String, Bytes)>,
    next_token: u32,
    hold_acks: bool,
    held: Vec<oneshot::Sender<Result<(), Error>>>,
}

impl FakeCloud {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn connect(&self, session_present: bool) {
        let inbox = {
            let mut state = self.state();
            state.up = true;
            state.inbox.clone()
        };
        if let Some(inbox) = inbox {
            inbox.connected(session_present);
        }
    }

    /// The connection drops and the broker forgets the session: held
    /// publishes are never acknowledged, subscriptions are gone.
    fn drop_connection(&self) {
        let (inbox, held) = {
            let mut state = self.state();
            state.up = false;
            state.subscribed.clear();
            (state.inbox.clone(), std::mem::take(&mut state.held))
        };
        for done in held {
            let _ = done.send(Err(ErrorKind::ConnectionLost.into()));
        }
        if let Some(inbox) = inbox {
            inbox.disconnected("the test dropped the connection");
        }
    }

    /// Pushes a configuration as the cloud does, retained.
    fn push_config(&self, topic: &str, config: &LogConfig) {
        let payload = Bytes::from(config.encode());
        let inbox = {
            let mut state = self.state();
            state.retained.insert(topic.to_owned(), payload.clone());
            state
                .subscribed
                .contains_key(topic)
                .then(|| state.inbox.clone())
                .flatten()
        };
        if let Some(inbox) = inbox {
            inbox.deliver(IncomingMessage::new(topic, payload));
        }
    }

    fn stored_on(&self, prefix: &str) -> Vec<Bytes> {
        self.state()
            .stored
            .iter()
            .filter(|(t, _)| t.starts_with(prefix))
            .map(|(_, p)| p.clone())
            .collect()
    }

    async fn wait_for_subscribes(&self, n: usize) {
        let mut count = self.subscribes.subscribe();
        tokio::time::timeout(PATIENCE, count.wait_for(|c| *c >= n))
            .await
            .expect("the subscriptions within the test's patience")
            .unwrap();
    }

    async fn wait_for_held(&self, n: usize) {
        let mut held = self.held.subscribe();
        tokio::time::timeout(PATIENCE, held.wait_for(|c| *c >= n))
            .await
            .expect("held publishes within the test's patience")
            .unwrap();
    }

    /// The cloud side of one publish: store it, answer a boot request.
    fn receive(&self, topic: &str, payload: &Bytes) {
        let mut state = self.state();
        state.stored.push((topic.to_owned(), payload.clone()));
        if !topic.starts_with("boot/") {
            return;
        }
        let request: serde_json::Value = serde_json::from_slice(payload).unwrap();
        let serial = request["serial"].as_str().unwrap();
        let reply = format!("{topic}/{serial}");
        state.next_token += 1;
        let token = 9000 + state.next_token;
        if let Some(inbox) = state
            .subscribed
            .contains_key(&reply)
            .then(|| state.inbox.clone())
            .flatten()
        {
            drop(state);
            inbox.deliver(IncomingMessage::new(
                reply,
                format!("{{\"token\": {token}}}").into_bytes(),
            ));
        }
    }
}

impl MqttLink for FakeCloud {
    fn attach(&self, inbox: LinkInbox) {
        let up = {
            let mut state = self.state();
            state.inbox = Some(inbox.clone());
            state.up
        };
        if up {
            inbox.connected(true);
        }
    }

    fn publish(&self, topic: String, payload: Bytes) -> LinkFuture<'_> {
        Box::pin(async move {
            let held = {
                let mut state = self.state();
                if !state.up {
                    return Err(ErrorKind::ConnectionLost.into());
                }
                if state.hold_acks {
                    let (tx, rx) = oneshot::channel();
                    state.held.push(tx);
                    self.held.send_modify(|c| *c += 1);
                    Some(rx)
                } else {
                    None
                }
            };
            if let Some(rx) = held {
                return rx.await.unwrap_or(Err(ErrorKind::ConnectionLost.into()));
            }
            self.receive(&topic, &payload);
            Ok(())
        })
    }

    fn subscribe(&self, filter: String) -> LinkFuture<'_> {
        Box::pin(async move {
            let (inbox, retained) = {
                let mut state = self.state();
                if !state.up {
                    return Err(ErrorKind::ConnectionLost.into());
                }
                *state.subscribed.entry(filter.clone()).or_default() += 1;
                (state.inbox.clone(), state.retained.get(&filter).cloned())
            };
            // A broker replays the retained message on every SUBSCRIBE.
            if let (Some(inbox), Some(payload)) = (inbox, retained) {
                inbox.deliver(IncomingMessage::new(filter, payload).retain(true));
            }
            self.subscribes.send_modify(|c| *c += 1);
            Ok(())
        })
    }

    fn unsubscribe(&self, filter: String) -> LinkFuture<'_> {
        Box::pin(async move {
            self.state().subscribed.remove(&filter);
            Ok(())
        })
    }
}

fn fake_config() -> MqttConfig {
    // Connection settings (broker, TLS files) are unused in bridge mode;
    // these files do not even exist.
    MqttConfig::new(CUSTOMER)
        .client_cert("/nonexistent/gw.pem.crt", "/nonexistent/gw.pem.key")
        .pacing(Pacing::off())
}

async fn next_config(configs: &mut LogConfigs) -> LogConfig {
    tokio::time::timeout(PATIENCE, configs.next())
        .await
        .expect("a configuration within the test's patience")
        .expect("the stream goes on")
        .expect("a valid configuration")
}

#[tokio::test]
async fn in_memory_link_registers_uploads_publishes_and_streams_configs_across_a_drop() {
    init_tracing();
    let cloud = FakeCloud::default();
    cloud.connect(false);
    let dir = tempfile::tempdir().unwrap();
    let client = Client::builder_with_link(fake_config(), cloud.clone())
        .outbox(OutboxConfig::new(dir.path()))
        .build()
        .unwrap();
    client.connected().await.unwrap();
    let dev = device("SN-BRIDGE-1");

    // Registration through the link.
    let token = client.session_token(&dev).await.unwrap();
    assert_eq!(token, 9001);
    assert_eq!(
        cloud
            .stored_on(&format!("boot/v0/{CUSTOMER}/0/{APP}"))
            .len(),
        1
    );

    // An upload, token patched in.
    let log = v4_log(200, 0);
    let receipt = client.upload_log(&dev, &log).await.unwrap();
    assert_eq!(receipt.topic, format!("binlog/v0/{CUSTOMER}/0/{APP}"));
    let mut expected = log.clone();
    expected[1..5].copy_from_slice(&token.to_le_bytes());
    assert_eq!(cloud.stored_on("binlog/"), vec![Bytes::from(expected)]);

    // Telemetry.
    let receipt = client
        .publish_metrics(&dev.serial, APP, &[Metric::new("temp", 21.5)])
        .await
        .unwrap();
    assert_eq!(receipt.topic, format!("metrics/v0/{CUSTOMER}/0/{APP}"));
    let metrics: serde_json::Value =
        serde_json::from_slice(&cloud.stored_on("metrics/")[0]).unwrap();
    assert_eq!(metrics["device_serial"], "SN-BRIDGE-1");
    assert_eq!(metrics["metrics"][0]["value"], 21.5);

    // A configuration stream: the first push arrives.
    let topic = format!("config/v0/{CUSTOMER}/0/{APP}/{}", dev.serial);
    let mut configs = client.log_configs(&dev).await.unwrap();
    let first = LogConfig::new(LogLevel::Warning, 0b101, 600);
    cloud.push_config(&topic, &first);
    assert_eq!(next_config(&mut configs).await, first);
    let subscribes_before = *cloud.subscribes.borrow();

    // An outbox upload and a direct upload are in flight when the link
    // drops and the broker loses the session.
    cloud.state().hold_acks = true;
    let queued_log = v1_log(77);
    let id = client.enqueue_log(&dev, &queued_log).await.unwrap();
    let direct = {
        let client = client.clone();
        let dev = dev.clone();
        tokio::spawn(async move { client.upload_log(&dev, &v1_log(33)).await })
    };
    cloud.wait_for_held(2).await;
    cloud.drop_connection();
    let err = direct.await.unwrap().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ConnectionLost) && err.is_retryable(),
        "{err:?}"
    );
    cloud.state().hold_acks = false;
    cloud.connect(false);

    // The outbox re-sends its record once the link is back.
    tokio::time::timeout(PATIENCE, client.delivered(id))
        .await
        .expect("delivered within the test's patience")
        .unwrap();
    let binlogs = cloud.stored_on("binlog/");
    assert_eq!(binlogs.len(), 2, "the first upload and the re-sent record");
    assert_eq!(&binlogs[1][13..], &queued_log[13..]);

    // The client subscribed again by itself: the retained configuration
    // replayed on that subscription is not yielded twice, the next one
    // arrives once.
    cloud.wait_for_subscribes(subscribes_before + 1).await;
    let second = LogConfig::new(LogLevel::Error, 0b1, 60);
    cloud.push_config(&topic, &second);
    assert_eq!(next_config(&mut configs).await, second);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), configs.next())
            .await
            .is_err(),
        "nothing more than the two configurations"
    );

    client.shutdown().await;
    assert!(
        configs.next().await.is_none(),
        "the stream ends at shutdown"
    );
    assert!(
        cloud.state().up,
        "shutdown leaves the application's link up"
    );
}

#[test]
fn the_blocking_client_works_on_a_link_too() {
    let cloud = FakeCloud::default();
    cloud.connect(false);
    let client = ulogger_cloud::blocking::Client::builder_with_link(fake_config(), cloud.clone())
        .build()
        .unwrap();
    let dev = device("SN-BLOCKING");
    let token = client.session_token(&dev).unwrap();
    let receipt = client.upload_log(&dev, &v1_log(20)).unwrap();
    assert_eq!(receipt.token, token);
    assert_eq!(cloud.stored_on("binlog/").len(), 1);
    client.shutdown();
}

#[tokio::test]
async fn bridged_connection_settings_are_not_read_but_topic_checks_and_connections_are() {
    let cloud = FakeCloud::default();
    // Missing TLS files do not matter...
    let client = Client::builder(fake_config()).link(cloud.clone()).build();
    assert!(client.is_ok(), "{:?}", client.err());
    // ...a bad topic prefix does, and so does a pool size.
    let err = Client::builder(fake_config().topic_prefix("a/#/"))
        .link(cloud.clone())
        .build()
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
    let err = Client::builder(fake_config().connections(2))
        .link(cloud)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::InvalidConfig {
                field: "connections",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_link_that_never_comes_up_times_out_with_its_reason() {
    let cloud = FakeCloud::default();
    let config = fake_config().connect_timeout(Duration::from_millis(200));
    let client = Client::builder(config).link(cloud.clone()).build().unwrap();
    cloud.drop_connection();
    let err = client
        .upload_log(&device("SN-DOWN"), &v1_log(10))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let chain = format!("{:?}", std::error::Error::source(&err));
    assert!(chain.contains("the test dropped the connection"), "{chain}");
}

#[tokio::test]
async fn pacing_applies_to_a_bridged_link() {
    let cloud = FakeCloud::default();
    cloud.connect(true);
    let config = fake_config().pacing(Pacing::platform().publish_rate(20));
    let client = Client::builder(config).link(cloud.clone()).build().unwrap();
    let start = tokio::time::Instant::now();
    for _ in 0..12 {
        client.publish_core_dump(vec![1u8; 10]).await.unwrap();
    }
    // At 20/s with a burst of two, 12 publishes span at least 0.5 s: a
    // lower bound, which a slow machine cannot break. Unpaced, the fake
    // link takes microseconds.
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(cloud.stored_on("core-dump/").len(), 12);
}

// ---------------------------------------------------------------------
// (b) the rumqttc adapter
// ---------------------------------------------------------------------

/// The application's side: a rumqttc client over mutual TLS, its event
/// loop polled through the link; every event is also passed on to the
/// test, as an application would use it.
fn rumqttc_app(
    certs: &CertPaths,
    port: u16,
    client_id: &str,
) -> (RumqttcLink, mpsc::UnboundedReceiver<rumqttc::Event>) {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(certs.client_config().unwrap()),
    ));
    let (mqtt, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    let link = RumqttcLink::new(mqtt);
    let (tx, rx) = mpsc::unbounded_channel();
    let feed = link.clone();
    tokio::spawn(async move {
        loop {
            match feed.poll(&mut eventloop).await {
                Ok(event) => {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
                // The application's own reconnect policy.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (link, rx)
}

/// Waits for an event the application sees.
async fn wait_event(
    events: &mut mpsc::UnboundedReceiver<rumqttc::Event>,
    what: impl Fn(&rumqttc::Event) -> bool,
) {
    tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.recv().await {
            if what(&event) {
                return;
            }
        }
        panic!("the event loop ended");
    })
    .await
    .expect("the event within the test's patience");
}

fn is_connack(event: &rumqttc::Event) -> bool {
    matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))
}

fn is_suback(event: &rumqttc::Event) -> bool {
    matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))
}

/// Registration, an upload the cloud verifies, a metrics publish and a
/// pushed configuration, through `link`.
async fn exercise(client: &Client, emu: &Emulator, serial: &str) -> LogConfigs {
    let dev = device(serial);
    let token = client.session_token(&dev).await.unwrap();
    assert!(emu
        .issued_tokens()
        .contains(&(APP, serial.to_owned(), token)));

    let log = v4_log(3000, 0);
    let receipt = client.upload_log(&dev, &log).await.unwrap();
    assert_eq!(receipt.token, token);
    let record = emu
        .wait_for(|r| r.kind == RecordKind::BinaryLog, PATIENCE)
        .await
        .expect("the cloud received the log");
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    let mut expected = log;
    expected[1..5].copy_from_slice(&token.to_le_bytes());
    assert_eq!(stored_bytes(emu, &record), expected);

    client
        .publish_metrics(serial, APP, &[Metric::new("battery", 87.0)])
        .await
        .unwrap();
    let record = emu
        .wait_for(|r| r.kind == RecordKind::Metrics, PATIENCE)
        .await
        .expect("the cloud received the metrics");
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);

    let mut configs = client.log_configs(&dev).await.unwrap();
    let pushed = LogConfig::new(LogLevel::Info, 0xF0, 300);
    emu.push_config(APP, serial, &pushed).await.unwrap();
    assert_eq!(next_config(&mut configs).await, pushed);
    configs
}

#[tokio::test]
async fn rumqttc_adapter_against_the_emulator_survives_a_dropped_connection() {
    let emu = tls_emulator();
    let certs = emu.certs().unwrap().clone();
    let app_id = format!("cust-{CUSTOMER}-app-bridge");
    let (link, mut events) = rumqttc_app(&certs, emu.addr().port(), &app_id);
    wait_event(&mut events, is_connack).await;
    let config = MqttConfig::new(CUSTOMER).pacing(Pacing::off());
    let client = Client::builder(config).link(link).build().unwrap();
    client.connected().await.unwrap();

    let mut configs = exercise(&client, &emu, "SN-RUMQTTC-1").await;

    // The broker drops the application's connection; rumqttc reconnects
    // with a clean session and the client subscribes again.
    assert_eq!(emu.disconnect_client(&app_id), 1);
    wait_event(&mut events, is_connack).await;
    wait_event(&mut events, is_suback).await;
    let again = LogConfig::new(LogLevel::Critical, 1, 30);
    emu.push_config(APP, "SN-RUMQTTC-1", &again).await.unwrap();
    assert_eq!(next_config(&mut configs).await, again);

    // Uploads go on after the reconnect.
    client
        .upload_log(&device("SN-RUMQTTC-1"), &v1_log(40))
        .await
        .unwrap();
    // (The watcher counts from the first record: this is the second log.)
    assert!(wait_for_count(&emu, RecordKind::BinaryLog, 2).await);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), configs.next())
            .await
            .is_err(),
        "no duplicate configuration"
    );
    client.shutdown().await;
}

#[tokio::test]
async fn rumqttc_adapter_completes_each_publish_on_its_own_puback() {
    let emu = tls_emulator();
    let certs = emu.certs().unwrap().clone();
    let (link, mut events) = rumqttc_app(
        &certs,
        emu.addr().port(),
        &format!("cust-{CUSTOMER}-app-acks"),
    );
    wait_event(&mut events, is_connack).await;
    let config = MqttConfig::new(CUSTOMER)
        .pacing(Pacing::off())
        .ack_timeout(Duration::from_secs(1));
    let client = Client::builder(config).link(link).build().unwrap();
    // The broker takes the core dump but never acknowledges it.
    emu.faults()
        .set_withhold_puback(WithholdPuback::Topic(format!("core-dump/v0/{CUSTOMER}/0")));
    let dump = {
        let client = client.clone();
        tokio::spawn(async move { client.publish_core_dump(vec![0xD0u8; 64]).await })
    };
    assert!(wait_for_count(&emu, RecordKind::CoreDump, 1).await);
    // A later publish's PUBACK completes that publish, not the core dump.
    client
        .publish_metrics("SN-ACKS", APP, &[Metric::new("x", 1.0)])
        .await
        .unwrap();
    let err = dump.await.unwrap().unwrap_err();
    assert_eq!(
        err.timeout_phase(),
        Some(ulogger_cloud::Phase::Acknowledgement),
        "{err:?}"
    );
    client.shutdown().await;
}

#[tokio::test]
async fn rumqttc_adapter_fails_what_a_clean_session_discarded_and_the_outbox_resends_it() {
    let emu = tls_emulator();
    let certs = emu.certs().unwrap().clone();
    let app_id = format!("cust-{CUSTOMER}-app-clean");
    let (link, mut events) = rumqttc_app(&certs, emu.addr().port(), &app_id);
    wait_event(&mut events, is_connack).await;
    let dir = tempfile::tempdir().unwrap();
    // An acknowledgement timeout far beyond the test's patience: only
    // the adapter's verdict can end the wait in time.
    let config = MqttConfig::new(CUSTOMER)
        .pacing(Pacing::off())
        .ack_timeout(Duration::from_secs(3600));
    let client = Client::builder(config)
        .link(link)
        .outbox(OutboxConfig::new(dir.path()))
        .build()
        .unwrap();
    let topic = format!("core-dump/v0/{CUSTOMER}/0");
    emu.faults()
        .set_withhold_puback(WithholdPuback::Topic(topic.clone()));
    let direct = {
        let client = client.clone();
        tokio::spawn(async move { client.publish_core_dump(vec![0xD1u8; 64]).await })
    };
    let queued = client.enqueue_core_dump(&[0xD2u8; 64]).await.unwrap();
    assert!(wait_for_count(&emu, RecordKind::CoreDump, 2).await);

    // The connection drops; rumqttc reconnects without a session and
    // discards both unacknowledged publishes.
    emu.faults().set_withhold_puback(WithholdPuback::None);
    assert_eq!(emu.disconnect_client(&app_id), 1);
    let err = tokio::time::timeout(PATIENCE, direct)
        .await
        .expect("the adapter fails the discarded publish at the new CONNACK")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ConnectionLost) && err.is_retryable(),
        "{err:?}"
    );
    // The outbox's delivery is retried on the new connection, and acked.
    tokio::time::timeout(PATIENCE, client.delivered(queued))
        .await
        .expect("the outbox re-sent its record")
        .unwrap();
    let dumps = records_of(&emu, RecordKind::CoreDump);
    assert_eq!(dumps.len(), 3, "two before the drop, the re-sent one after");
    assert_eq!(stored_bytes(&emu, &dumps[2]), vec![0xD2u8; 64]);
    client.shutdown().await;
}

#[tokio::test]
async fn rumqttc_adapter_through_mosquitto_with_mutual_tls_and_a_bridge_prefix() {
    let prefix = "ulogger/";
    // The cloud side listens under the prefix, as a broker bridge would
    // map `ulogger/#` to the cloud.
    let Some(setup) = support::interop::setup(Some(31), prefix) else {
        return;
    };
    let (emu, certs, port) = (&setup.emulator, &setup.certs, setup.port);
    let (link, mut events) = rumqttc_app(certs, port, &format!("cust-{CUSTOMER}-app-mosq"));
    wait_event(&mut events, is_connack).await;
    let config = MqttConfig::new(CUSTOMER)
        .group_id(31)
        .topic_prefix(prefix)
        .pacing(Pacing::off());
    let client = Client::builder(config).link(link.clone()).build().unwrap();

    let _configs = exercise(&client, emu, "SN-MOSQ-BRIDGE").await;

    // The application's own publishes go through the link too, and
    // complete on their PUBACK.
    link.publish("app/status".to_owned(), Bytes::from_static(b"ok"))
        .await
        .unwrap();
    client.shutdown().await;
}
