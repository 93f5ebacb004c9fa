//! Interoperability: the client against a real mosquitto configured for
//! mutual TLS (`require_certificate true`), with the emulator's cloud side
//! attached to it as an ordinary client. Under `CI=true` these tests fail
//! if mosquitto is missing; elsewhere they say so and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rumqttc::{
    AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use support::interop::{setup, Setup};
use support::*;
use tokio::sync::{mpsc, oneshot};
use ulogger_cloud::wire::{DeviceEvents, DeviceMetrics, Event as DeviceEvent, Metric};
use ulogger_cloud::{Client, ErrorKind, MqttConfig, Phase};
use ulogger_emulator::{RecordKind, Verdict};

#[tokio::test]
async fn registration_and_upload_through_mosquitto_with_mutual_tls() {
    let Some(setup) = setup(Some(0), "") else {
        return;
    };
    let emu = &setup.emulator;
    let client = Client::builder(setup.config.clone()).build().unwrap();
    let dev = device("SN-MOSQ-1");

    let token = client.session_token(&dev).await.unwrap();
    assert_eq!(
        emu.issued_tokens(),
        vec![(APP, "SN-MOSQ-1".to_owned(), token)]
    );

    let log = v4_log(3000, 0);
    let receipt = client.upload_log(&dev, &log).await.unwrap();
    assert_eq!(receipt.token, token);
    let record = emu
        .wait_for(|r| r.kind == RecordKind::BinaryLog, PATIENCE)
        .await
        .expect("the cloud side received the log through mosquitto");
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    let mut expected = log;
    expected[1..5].copy_from_slice(&token.to_le_bytes());
    assert_eq!(stored_bytes(emu, &record), expected);

    // A second upload uses the cached token: still one registration.
    client.upload_log(&dev, &v1_log(50)).await.unwrap();
    assert_eq!(emu.issued_tokens().len(), 1);
    assert!(wait_for_count(emu, RecordKind::BinaryLog, 2).await);

    let dump = vec![0xC0u8; 2048];
    client.publish_core_dump(dump.clone()).await.unwrap();
    let record = emu
        .wait_for(|r| r.kind == RecordKind::CoreDump, PATIENCE)
        .await
        .unwrap();
    assert_eq!(stored_bytes(emu, &record), dump);
    client.shutdown().await;
}

#[tokio::test]
async fn group_layout_and_prefix_through_mosquitto() {
    let Some(setup) = setup(Some(31), "ulogger/") else {
        return;
    };
    let emu = &setup.emulator;
    let client = Client::builder(setup.config.clone()).build().unwrap();
    let receipt = client
        .upload_log(&device("SN-MOSQ-G"), &v4_log(100, 0))
        .await
        .unwrap();
    assert_eq!(
        receipt.topic,
        format!("ulogger/binlog/v0/{CUSTOMER}/31/{APP}")
    );
    let record = emu
        .wait_for(|r| r.kind == RecordKind::BinaryLog, PATIENCE)
        .await
        .unwrap();
    assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
    client.shutdown().await;
}

#[tokio::test]
async fn mosquitto_refuses_a_client_without_a_certificate() {
    let Some(setup) = setup(Some(0), "") else {
        return;
    };
    // The broker is trusted (same CA) but we present no certificate.
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(setup.port)
        .ca_file(&setup.certs.ca_cert)
        .connect_timeout(std::time::Duration::from_secs(5));
    let client = Client::builder(config).build().unwrap();
    let err = client.connected().await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Connect { .. } | ErrorKind::ConnectionRefused { .. }
        ) || err.timeout_phase() == Some(Phase::Connect),
        "{err:?}"
    );
}

/// The platform's topic rules (PROTOCOL §2): what the cloud stores is what
/// these filters match; the broker acknowledges and drops the rest.
const PLATFORM_RULES: [&str; 6] = [
    "binlog/v0/+/+/+",
    "boot/v0/+/+/+",
    "metrics/v0/+/+/+",
    "events/v0/+/+/+",
    "logs/v0/+/+/+",
    "core-dump/v0/+/+",
];

/// A message as a subscriber received it.
type Delivered = (String, Vec<u8>);

/// A plain MQTT subscriber on mosquitto, beside the client and the
/// attached cloud: every message the broker delivers for its filters, in
/// arrival order.
struct Tap {
    name: &'static str,
    messages: mpsc::UnboundedReceiver<Result<Delivered, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    /// Connects and subscribes (QoS 1) to `filters`; returns after the
    /// SUBACK, so every later publish that matches reaches it.
    async fn subscribe(setup: &Setup, name: &'static str, filters: &[&str]) -> Tap {
        let mut options = MqttOptions::new(
            format!("cust-{CUSTOMER}-tap-{name}"),
            "127.0.0.1",
            setup.port,
        );
        options.set_max_packet_size(256 * 1024, 256 * 1024);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            setup.certs.client_config().unwrap(),
        )));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce)),
            )
            .await
            .unwrap();
        let (suback_tx, suback) = oneshot::channel();
        let (tx, messages) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // The client handle must outlive the loop, or rumqttc ends it.
            let _client = client;
            let mut suback_tx = Some(suback_tx);
            loop {
                let delivered = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if let Some(tx) = suback_tx.take() {
                            let _ = tx.send(ack.return_codes);
                        }
                        continue;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => Ok((p.topic, p.payload.to_vec())),
                    Ok(_) => continue,
                    Err(e) => Err(format!("{name}: {e}")),
                };
                let failed = delivered.is_err();
                if tx.send(delivered).is_err() || failed {
                    return;
                }
            }
        });
        let codes = tokio::time::timeout(PATIENCE, suback)
            .await
            .unwrap_or_else(|_| panic!("{name}: no SUBACK"))
            .unwrap_or_else(|_| panic!("{name}: connection failed before its SUBACK"));
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); filters.len()],
            "{name}"
        );
        Tap {
            name,
            messages,
            task,
        }
    }

    /// Takes messages until `done` holds for what it has taken, then
    /// returns them; on timeout, what it has with `Err`.
    async fn until(
        &mut self,
        done: impl Fn(&[Delivered]) -> bool,
    ) -> Result<Vec<Delivered>, Vec<Delivered>> {
        let mut taken = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(&taken) {
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(Ok(message))) => taken.push(message),
                Ok(Some(Err(e))) => panic!("subscriber {e}"),
                Ok(None) => panic!("subscriber {} stopped", self.name),
                Err(_) => return Err(taken),
            }
        }
        Ok(taken)
    }
}

/// What the cloud itself publishes: boot replies (a level more than the
/// boot rule's: the serial) and log configurations.
fn from_the_cloud(topic: &str) -> bool {
    topic.starts_with("config/") || (topic.starts_with("boot/") && topic.split('/').count() == 6)
}

/// Every message our client sends with its default settings is one the
/// platform routes: a subscriber on exactly the platform's rule filters
/// receives everything a subscriber on `#` sees from the device side.
#[tokio::test]
async fn every_message_of_the_default_settings_matches_a_platform_rule_through_mosquitto() {
    let Some(setup) = setup(Some(0), "") else {
        return;
    };
    let mut everything = Tap::subscribe(&setup, "all", &["#"]).await;
    let mut routed = Tap::subscribe(&setup, "rules", &PLATFORM_RULES).await;
    // `MqttConfig::new`'s topic layout, not the fixture's explicit group.
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(setup.port)
        .ca_file(&setup.certs.ca_cert)
        .client_cert(&setup.certs.client_cert, &setup.certs.client_key);
    let client = Client::builder(config).build().unwrap();
    let dev = device("SN-MOSQ-RULES");
    let serial = "SN-MOSQ-RULES";

    // One message each, every call returning after the broker's PUBACK.
    client.session_token(&dev).await.unwrap();
    client.upload_log(&dev, &v4_log(500, 0)).await.unwrap();
    client.publish_core_dump(vec![0x63u8; 600]).await.unwrap();
    client
        .publish_metrics(serial, APP, &[Metric::new("temp", 21.5)])
        .await
        .unwrap();
    client
        .publish_events(serial, APP, &[DeviceEvent::new("boot")])
        .await
        .unwrap();
    client.publish_heartbeat(serial, APP, None).await.unwrap();
    let metrics: Vec<DeviceMetrics> = (0..50)
        .map(|i| DeviceMetrics::new(format!("SN-MOSQ-{i:02}"), vec![Metric::heartbeat()]))
        .collect();
    client.publish_metrics_batch(APP, &metrics).await.unwrap();
    let events = vec![DeviceEvents::new(serial, vec![DeviceEvent::new("door")])];
    client.publish_events_batch(APP, &events).await.unwrap();
    const SENT: usize = 8;

    let device_side = |taken: &[Delivered]| {
        taken
            .iter()
            .filter(|(topic, _)| !from_the_cloud(topic))
            .count()
    };
    let seen = everything
        .until(|taken| device_side(taken) == SENT)
        .await
        .unwrap_or_else(|seen| panic!("`#` saw {seen:?}, not all {SENT} messages"));
    let (cloud, mut sent): (Vec<_>, Vec<_>) = seen
        .into_iter()
        .partition(|(topic, _)| from_the_cloud(topic));
    let cloud: Vec<&str> = cloud.iter().map(|(topic, _)| topic.as_str()).collect();
    assert_eq!(cloud, [format!("boot/v0/{CUSTOMER}/0/{APP}/{serial}")]);

    let mut matched = match routed.until(|taken| taken.len() == SENT).await {
        Ok(matched) => matched,
        Err(matched) => {
            let missing: Vec<&str> = sent
                .iter()
                .filter(|message| !matched.contains(message))
                .map(|(topic, _)| topic.as_str())
                .collect();
            panic!("no platform rule matches {missing:?}");
        }
    };
    sent.sort();
    matched.sort();
    let topics = |messages: &[Delivered]| -> Vec<String> {
        messages.iter().map(|(topic, _)| topic.clone()).collect()
    };
    assert_eq!(topics(&matched), topics(&sent));
    assert!(sent == matched, "the same topics, other payloads");

    // The attached cloud stored them all too: nothing unrouted. Messages
    // from one connection arrive in order, so the last one comes last.
    assert!(wait_for_count(&setup.emulator, RecordKind::Events, 2).await);
    let records = setup.emulator.records();
    let refused: Vec<_> = records.iter().filter(|r| !r.is_ok()).collect();
    assert!(refused.is_empty(), "{refused:#?}");
    client.shutdown().await;
}
