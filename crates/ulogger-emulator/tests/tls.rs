//! Mutual TLS is required: a client must present a certificate chained to
//! the broker's CA. Checked on the emulator and on mosquitto configured
//! the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rumqttc::QoS;
use support::{client_options, BrokerUnderTest, TestClient, CUSTOMER};
use ulogger_emulator::{client_tls_config, CertPaths, Emulator, EmulatorConfig};

fn tls_brokers() -> Vec<(BrokerUnderTest, CertPaths)> {
    let mut brokers = vec![BrokerUnderTest::emulator(false)];
    brokers.extend(BrokerUnderTest::mosquitto(false));
    brokers
        .into_iter()
        .map(|b| {
            let certs = b.certs.clone().unwrap();
            (b, certs)
        })
        .collect()
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    for (broker, certs) in tls_brokers() {
        let tls = client_tls_config(&certs.ca_cert, None).unwrap();
        let options = client_options(broker.addr, Some(tls), "cust-42-nocert");
        let mut client = TestClient::start(options);
        assert!(
            client.connack().await.is_err(),
            "{}: connected without a client certificate",
            broker.name
        );
    }
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let other = tempfile::tempdir().unwrap();
    let other_ca = CertPaths::generate(other.path(), CUSTOMER).unwrap();
    for (broker, certs) in tls_brokers() {
        // Trusts the right server, presents a certificate of another CA.
        let tls = client_tls_config(
            &certs.ca_cert,
            Some((&other_ca.client_cert, &other_ca.client_key)),
        )
        .unwrap();
        let options = client_options(broker.addr, Some(tls), "cust-42-othercert");
        let mut client = TestClient::start(options);
        assert!(
            client.connack().await.is_err(),
            "{}: connected with a foreign certificate",
            broker.name
        );
    }
}

#[tokio::test]
async fn the_generated_and_minted_client_certificates_are_accepted() {
    for (broker, certs) in tls_brokers() {
        let mut client = broker.connect("good").await;
        client.publish("tls/ok", QoS::AtLeastOnce, false, "x").await;

        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certs
            .mint_client_cert("cust-42-second", dir.path())
            .unwrap();
        let tls = client_tls_config(&certs.ca_cert, Some((&cert, &key))).unwrap();
        let mut second =
            TestClient::connect(client_options(broker.addr, Some(tls), "cust-42-second")).await;
        second.publish("tls/ok", QoS::AtLeastOnce, false, "y").await;
    }
}

#[tokio::test]
async fn the_server_certificate_is_valid_for_localhost_too() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER)).unwrap();
    let certs = emulator.certs().unwrap();
    let mut options =
        rumqttc::MqttOptions::new("cust-42-byname", "localhost", emulator.addr().port());
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(certs.client_config().unwrap()),
    ));
    TestClient::connect(options).await;
}

#[tokio::test]
async fn a_plaintext_client_cannot_talk_to_the_tls_port() {
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER)).unwrap();
    let options = client_options(emulator.addr(), None, "cust-42-plain");
    let mut client = TestClient::start(options);
    assert!(client.connack().await.is_err());
    assert!(emulator.connected_clients().is_empty());
}
