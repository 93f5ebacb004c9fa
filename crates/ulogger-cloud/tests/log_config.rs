//! Log configurations pushed by the cloud (PROTOCOL §7), end to end
//! against the emulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;
use ulogger_cloud::wire::{LogConfig, LogConfigError, LogLevel};
use ulogger_cloud::{Client, ErrorKind, LogConfigs, Phase};
use ulogger_emulator::{Emulator, EmulatorConfig, PlatformLimits};

fn config(level: LogLevel, flags: u32) -> LogConfig {
    LogConfig::new(level, flags, 600)
}

/// The stream's next item, failing the test if none comes in time.
async fn next(configs: &mut LogConfigs) -> Result<LogConfig, ulogger_cloud::Error> {
    tokio::time::timeout(PATIENCE, configs.next())
        .await
        .expect("an item within the test's patience")
        .expect("the stream goes on")
}

/// Publishes `payload` to `topic` at QoS 1 as an ordinary MQTT client of a
/// plaintext emulator, and returns once the broker acknowledged it.
async fn publish_by_hand(emu: &Emulator, topic: &str, payload: &[u8], retain: bool) {
    let mut options = rumqttc::MqttOptions::new(
        format!("cust-{CUSTOMER}-cloud-by-hand"),
        "127.0.0.1",
        emu.addr().port(),
    );
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                events.poll().await.unwrap()
            {
                break;
            }
        }
    })
    .await
    .expect("the broker acknowledged the publish");
    client.disconnect().await.unwrap();
}

fn config_topic(serial: &str) -> String {
    format!("config/v0/{CUSTOMER}/0/{APP}/{serial}")
}

#[tokio::test]
async fn a_pushed_configuration_reaches_wait_for_log_config() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-CFG-WAIT");
    let pushed = config(LogLevel::Warning, 0b1011).with_module_names(vec!["net".into()]);

    let mut waiting = {
        let client = client.clone();
        let dev = dev.clone();
        tokio::spawn(async move { client.wait_for_log_config(&dev, PATIENCE).await })
    };
    // The waiter subscribes in its own time, and a push before that reaches
    // nobody (it is neither retained nor queued): push until one arrives.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let got = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no configuration reached the waiter"
        );
        emu.push_config(APP, &dev.serial, &pushed).await.unwrap();
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await {
            break got.unwrap();
        }
    };
    assert_eq!(got.unwrap(), pushed);
    client.shutdown().await;
}

#[tokio::test]
async fn a_retained_configuration_is_what_wait_for_log_config_returns() {
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let dev = device("SN-CFG-WAIT-RETAINED");
    let current = config(LogLevel::Error, 5);
    publish_by_hand(&emu, &config_topic(&dev.serial), &current.encode(), true).await;
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let got = client.wait_for_log_config(&dev, PATIENCE).await.unwrap();

    assert_eq!(got, current);
    client.shutdown().await;
}

#[tokio::test]
async fn a_configuration_pushed_after_subscribing_is_the_streams_first_item() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-CFG-FIRST");
    let mut configs = client.log_configs(&dev).await.unwrap();
    assert_eq!(configs.topic(), config_topic("SN-CFG-FIRST"));
    let pushed = config(LogLevel::Debug, u32::MAX);

    emu.push_config(APP, &dev.serial, &pushed).await.unwrap();

    assert_eq!(next(&mut configs).await.unwrap(), pushed);
    drop(configs);
    client.shutdown().await;
}

#[tokio::test]
async fn waiting_for_a_configuration_that_never_comes_is_a_typed_timeout() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    client.connected().await.unwrap();

    let err = client
        .wait_for_log_config(&device("SN-CFG-NONE"), Duration::from_millis(300))
        .await
        .unwrap_err();

    assert!(matches!(err.kind(), ErrorKind::Timeout(Phase::LogConfig)));
    assert_eq!(err.timeout_phase(), Some(Phase::LogConfig));
    client.shutdown().await;
}

#[tokio::test]
async fn the_stream_gets_each_configuration_once_across_a_reconnect() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-CFG-RECONNECT");
    let mut configs = client.log_configs(&dev).await.unwrap();
    let before = config(LogLevel::Info, 1);
    let after = config(LogLevel::Error, 2);
    let sentinel = config(LogLevel::Critical, 3);

    emu.push_config(APP, &dev.serial, &before).await.unwrap();
    assert_eq!(next(&mut configs).await.unwrap(), before);

    assert_eq!(emu.disconnect_all(), 1);
    // A registration completes on the new connection only, after the
    // client restored its subscriptions there (they are written first).
    client.register(&device("SN-CFG-SYNC")).await.unwrap();
    emu.push_config(APP, &dev.serial, &after).await.unwrap();
    emu.push_config(APP, &dev.serial, &sentinel).await.unwrap();

    assert_eq!(next(&mut configs).await.unwrap(), after);
    assert_eq!(
        next(&mut configs).await.unwrap(),
        sentinel,
        "nothing came twice"
    );
    drop(configs);
    client.shutdown().await;
}

#[tokio::test]
async fn a_retained_configuration_is_delivered_once_not_again_on_resubscription() {
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let dev = device("SN-CFG-RETAINED");
    let current = config(LogLevel::Warning, 7);
    publish_by_hand(&emu, &config_topic(&dev.serial), &current.encode(), true).await;
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let mut configs = client.log_configs(&dev).await.unwrap();
    assert_eq!(
        next(&mut configs).await.unwrap(),
        current,
        "the retained one is the current configuration"
    );

    assert_eq!(emu.disconnect_all(), 1);
    client.register(&device("SN-CFG-SYNC2")).await.unwrap();
    let newer = config(LogLevel::Debug, 8);
    emu.push_config(APP, &dev.serial, &newer).await.unwrap();

    assert_eq!(
        next(&mut configs).await.unwrap(),
        newer,
        "the retained configuration replayed on resubscription was skipped"
    );
    drop(configs);
    client.shutdown().await;
}

#[tokio::test]
async fn a_malformed_payload_is_an_error_item_and_the_stream_goes_on() {
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let dev = device("SN-CFG-BAD");
    let mut configs = client.log_configs(&dev).await.unwrap();

    publish_by_hand(&emu, &config_topic(&dev.serial), b"\x01\x02", false).await;
    let good = config(LogLevel::Info, 42);
    emu.push_config(APP, &dev.serial, &good).await.unwrap();

    let err = next(&mut configs).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::InvalidLogConfig(LogConfigError::TooShort { len: 2, .. })
        ),
        "{err:?}"
    );
    assert_eq!(next(&mut configs).await.unwrap(), good);
    drop(configs);
    client.shutdown().await;
}

#[tokio::test]
async fn dropping_the_stream_unsubscribes() {
    // The broker allows one subscription per connection: each new stream
    // is granted only if the one before was given up at the broker too.
    let emu = emulator(
        EmulatorConfig::new(CUSTOMER).limits(PlatformLimits::aws().max_subscriptions(Some(1))),
    );
    let client = Client::builder(config_for(&emu).max_subscriptions(10))
        .build()
        .unwrap();

    for i in 0..3 {
        let dev = device(&format!("SN-CFG-DROP-{i}"));
        let mut configs = tokio::time::timeout(PATIENCE, client.log_configs(&dev))
            .await
            .expect("subscribed in time")
            .expect("the broker granted the subscription");
        let pushed = config(LogLevel::Info, i);
        emu.push_config(APP, &dev.serial, &pushed).await.unwrap();
        assert_eq!(next(&mut configs).await.unwrap(), pushed);
        drop(configs);
    }
    assert_eq!(emu.limit_stats().refused_filters, 0);
    client.shutdown().await;
}

#[test]
fn the_blocking_client_waits_for_and_streams_configurations() {
    let emu = tls_emulator();
    let client = ulogger_cloud::blocking::Client::builder(config_for(&emu))
        .build()
        .unwrap();
    let dev = device("SN-CFG-BLOCKING");
    let mut configs = client.log_configs(&dev).unwrap();
    let first = config(LogLevel::Info, 1);
    let second = config(LogLevel::Error, 2);

    emu.push_config_blocking(APP, &dev.serial, &first).unwrap();
    emu.push_config_blocking(APP, &dev.serial, &second).unwrap();

    assert_eq!(configs.next().unwrap().unwrap(), first);
    assert_eq!(configs.next().unwrap().unwrap(), second);
    drop(configs);

    let err = client
        .wait_for_log_config(&dev, Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(err.timeout_phase(), Some(Phase::LogConfig));
    client.shutdown();
}

#[tokio::test]
async fn the_stream_ends_when_the_client_shuts_down() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let mut configs = client.log_configs(&device("SN-CFG-END")).await.unwrap();

    client.shutdown().await;

    let end = tokio::time::timeout(PATIENCE, configs.next())
        .await
        .expect("the stream ends at once");
    assert!(end.is_none());
    let err = client.log_configs(&device("SN-CFG-END")).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Shutdown), "{err:?}");
}
