//! Attach mode: the cloud side as an MQTT client of an external broker
//! (mosquitto, EMQX, a cluster), so the same behaviour runs on real
//! infrastructure.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};

use crate::broker::rules::MAX_PAYLOAD;
use crate::broker::{Mailbox, Message};
use crate::certs::client_tls_config;
use crate::config::AttachTo;
use crate::EmulatorError;

/// Pause between reconnection attempts after the first connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Builds the client; nothing is sent until the event loop is polled.
pub(crate) fn client(
    attach: &AttachTo,
    customer_id: u32,
) -> Result<(AsyncClient, EventLoop), EmulatorError> {
    let suffix: u32 = rand::rng().random();
    let client_id = format!("cust-{customer_id}-emulator-{suffix:08x}");
    let mut options = MqttOptions::new(client_id, attach.host.clone(), attach.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    // Room for the largest message the platform allows, plus headers.
    options.set_max_packet_size(MAX_PAYLOAD * 2, MAX_PAYLOAD * 2);
    if let Some((user, password)) = &attach.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &attach.tls {
        let client = tls
            .client
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        let config = client_tls_config(&tls.ca_cert, client)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // A boot reply follows right behind the PUBACK of the boot request; with
    // Nagle on, it waits for the broker's delayed ACK of that PUBACK (about
    // 40 ms on Linux) before it leaves.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    Ok((client, eventloop))
}

/// Drives the connection: subscribes to `filters` after every CONNACK
/// (sessions are clean), forwards publishes to the cloud's inbox, and
/// reconnects after failures. `ready` hears once: `Ok` after the first
/// full set of SUBACKs, or the first connection error.
pub(crate) async fn run(
    client: AsyncClient,
    mut eventloop: EventLoop,
    filters: Vec<String>,
    inbox: Mailbox,
    ready: std_mpsc::Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    let mut pending_subacks = 0usize;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let subscriptions = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                match client.try_subscribe_many(subscriptions) {
                    Ok(()) => pending_subacks = 1,
                    Err(e) => tracing::error!(error = %e, "cannot queue the subscription"),
                }
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                pending_subacks = pending_subacks.saturating_sub(1);
                let refused = suback
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if pending_subacks == 0 {
                    if let Some(ready) = ready.take() {
                        let outcome = if refused {
                            Err("the broker refused a subscription".to_string())
                        } else {
                            Ok(())
                        };
                        let _ = ready.send(outcome);
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let message = Message {
                    topic: publish.topic,
                    payload: publish.payload,
                    qos: publish.qos,
                    retain: publish.retain,
                };
                if inbox.forward(message).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e.to_string()));
                    return;
                }
                tracing::warn!(error = %e, "attached broker connection failed, reconnecting");
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}
